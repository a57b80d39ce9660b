//! raw_exec's `cgroup_v1_override` (controller → cgroup path) and `cgroup_v2_override` (one
//! path): the task joins these existing cgroups instead of the ones Nomad made for it. A relative
//! path is taken below the controller's hierarchy (v1: `<root>/<controller>/<path>`) or the
//! unified root (v2: `<root>/<path>`), an absolute one as it is, as Nomad's `cgroupslib` does.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// cgroup v1 controller names a v1 override may name.
pub const V1_CONTROLLERS: [&str; 13] = [
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupOverride {
    /// Controller → path (relative to the controller's hierarchy, or absolute).
    pub v1: BTreeMap<String, String>,
    /// Path relative to the unified root, or absolute.
    pub v2: Option<String>,
}

impl CgroupOverride {
    pub fn is_set(&self) -> bool {
        !self.v1.is_empty() || self.v2.is_some()
    }

    /// The cgroup directories to join on a v1 host with hierarchies under `root`.
    pub fn v1_dirs(&self, root: &Path) -> Vec<PathBuf> {
        self.v1
            .iter()
            .map(|(controller, path)| absolute(&root.join(controller), path))
            .collect()
    }

    /// The cgroup directory to join on a v2 host mounted at `root`.
    pub fn v2_dir(&self, root: &Path) -> Option<PathBuf> {
        self.v2.as_deref().map(|p| absolute(root, p))
    }
}

fn absolute(base: &Path, path: &str) -> PathBuf {
    if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        base.join(path)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    cgroup_v1_override: Option<super::MapOrList<String>>,
    cgroup_v2_override: Option<String>,
}

fn check_path(field: &'static str, path: &str) -> Result<(), ConfigError> {
    if path.trim().is_empty()
        || Path::new(path)
            .components()
            .any(|c| c == Component::ParentDir)
    {
        return Err(ConfigError::Invalid {
            field,
            problem: format!("{path:?} is not a cgroup path"),
            fix: "give a path without \"..\", relative to the cgroup hierarchy (e.g. \"custom/app\") or absolute".into(),
        });
    }
    Ok(())
}

impl Raw {
    pub fn validate(self) -> Result<CgroupOverride, ConfigError> {
        let v1 = self
            .cgroup_v1_override
            .map(super::MapOrList::into_map)
            .unwrap_or_default();
        let v2 = self.cgroup_v2_override.filter(|p| !p.is_empty());
        if !v1.is_empty() && v2.is_some() {
            return Err(ConfigError::Invalid {
                field: "cgroup_v1_override",
                problem: "is set together with cgroup_v2_override".into(),
                fix: "set only the one for this client's cgroup version (see the node attribute driver.bpfexec.cgroup_mode)".into(),
            });
        }
        for (controller, path) in &v1 {
            if !V1_CONTROLLERS.contains(&controller.as_str()) {
                return Err(ConfigError::Invalid {
                    field: "cgroup_v1_override",
                    problem: format!("{controller:?} is not a cgroup v1 controller"),
                    fix: format!("use controller names such as {}", V1_CONTROLLERS.join(", ")),
                });
            }
            check_path("cgroup_v1_override", path)?;
        }
        if let Some(p) = &v2 {
            check_path("cgroup_v2_override", p)?;
        }
        Ok(CgroupOverride { v1, v2 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v1: &[(&str, &str)], v2: Option<&str>) -> Raw {
        Raw {
            cgroup_v1_override: Some(super::super::MapOrList::List(vec![
                v1.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ])),
            cgroup_v2_override: v2.map(str::to_owned),
        }
    }

    #[test]
    fn paths_resolve_like_nomad() {
        let o = raw(
            &[
                ("pids", "custom/app"),
                ("memory", "/sys/fs/cgroup/memory/x"),
            ],
            None,
        )
        .validate()
        .expect("valid");
        assert_eq!(
            o.v1_dirs(Path::new("/sys/fs/cgroup")),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/x"),
                PathBuf::from("/sys/fs/cgroup/pids/custom/app"),
            ]
        );
        let o = raw(&[], Some("custom.slice/app.scope"))
            .validate()
            .expect("valid");
        assert_eq!(
            o.v2_dir(Path::new("/sys/fs/cgroup")),
            Some(PathBuf::from("/sys/fs/cgroup/custom.slice/app.scope"))
        );
        assert!(o.is_set());
        assert!(!Raw::default().validate().expect("empty").is_set());
    }

    #[test]
    fn bad_overrides_name_the_field() {
        for (r, field) in [
            (raw(&[("pids", "a")], Some("b")), "cgroup_v1_override"),
            (raw(&[("cpu_shares", "a")], None), "cgroup_v1_override"),
            (raw(&[("pids", "../escape")], None), "cgroup_v1_override"),
            (raw(&[], Some("a/../../b")), "cgroup_v2_override"),
        ] {
            let err = r.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
