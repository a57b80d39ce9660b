//! Device control of an isolated task: the standard nodes and the devices Nomad assigned (with
//! their `r`/`w`/`m`), nothing else. On cgroup v1 a devices cgroup of the driver's own (see
//! `cgroups::devices`), made at start and removed with the task; on cgroup v2 a device program
//! attached to the task's scope (see `cgroups::device_program`), gone with the scope. Where no mechanism can enforce
//! the rules, the task fails naming why, unless the operator accepted running without device
//! control (`allow_unrestricted_devices`), which the fingerprint then reports.

use std::path::Path;

use bpfexec_proto::drivers;

use crate::cgroups::created::Ledger;
use crate::cgroups::{CgroupMode, TaskCgroups, device_program, devices};
use crate::config::plugin::PluginConfig;
use crate::errors::DriverError;
use crate::supervisor::sandbox::DEV_NODES;

/// How device rules are enforced on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceControl {
    /// A v1 devices cgroup per task.
    CgroupV1,
    /// A BPF_CGROUP_DEVICE program on each task's v2 scope.
    BpfV2,
    /// Nothing here can enforce them: why.
    Unavailable(String),
}

impl DeviceControl {
    /// What this host offers, given the cgroup mode the driver detected under `root`.
    #[must_use]
    pub fn detect(mode: Option<CgroupMode>, root: &Path) -> Self {
        match mode {
            Some(CgroupMode::V1) if devices::available(root) => Self::CgroupV1,
            Some(CgroupMode::V1) => Self::Unavailable(format!(
                "the cgroup v1 devices controller is not mounted at {}",
                devices::hierarchy(root).display()
            )),
            Some(CgroupMode::V2) if device_program::built() => Self::BpfV2,
            Some(CgroupMode::V2) => {
                Self::Unavailable(device_program::DeviceProgramError::NotBuilt.to_string())
            }
            None => Self::Unavailable(format!(
                "no cgroup hierarchy was found at {}",
                root.display()
            )),
        }
    }

    /// The fingerprint's `driver.bpfexec.devices` value: the mechanism, `unenforced` when the
    /// operator accepted running without one, `unavailable` when isolated tasks will fail.
    #[must_use]
    pub fn attribute(&self, plugin: &PluginConfig) -> &'static str {
        match self {
            Self::CgroupV1 => "cgroup-v1",
            Self::BpfV2 => "bpf-cgroup-device",
            Self::Unavailable(_) if plugin.allow_unrestricted_devices => "unenforced",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Puts the task's device rules in place before it starts. On v1 the task's devices cgroup is
/// recorded in `cg.owned` (so `join_files` has it and destroy removes it); on v2 the program is
/// attached to the scope before the task's process is created in it.
pub fn restrict(
    cgroups: Option<&mut TaskCgroups>,
    root: &Path,
    cfg: &drivers::TaskConfig,
    plugin: &PluginConfig,
) -> Result<(), DriverError> {
    let refuse = |reason: String, recoverable| DriverError::Start {
        task: cfg.id.clone(),
        reason,
        recoverable,
    };
    let mut rules = devices::standard_rules(&DEV_NODES);
    for d in &cfg.devices {
        let rule = devices::DeviceRule::for_node(Path::new(&d.host_path), &d.cgroup_permissions)
            .map_err(|e| refuse(format!("device {:?}: {e}", d.host_path), false))?;
        rules.push(rule);
    }
    let why = match cgroups {
        Some(cg) if cg.mode == CgroupMode::V1 => {
            let dir = devices::task_dir(root, &cfg.alloc_id, &cfg.name);
            match devices::create(&dir, &rules, &Ledger::host()) {
                Ok(()) => {
                    cg.owned.push(dir);
                    return Ok(());
                }
                Err(devices::DevicesError::NoHierarchy(at)) => format!(
                    "the cgroup v1 devices controller is not mounted at {}",
                    at.display()
                ),
                Err(devices::DevicesError::Io(e)) => {
                    let _ = devices::remove(&dir, &Ledger::host());
                    return Err(refuse(
                        format!(
                            "cannot restrict the task's devices in {}: {e}",
                            dir.display()
                        ),
                        true,
                    ));
                }
            }
        }
        Some(cg) => match cg.own_dir().map(|dir| device_program::attach(dir, &rules)) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => e.to_string(),
            None => "the task has no cgroup v2 scope".into(),
        },
        None => "Nomad gave the task no cgroup to attach device rules to".into(),
    };
    unenforced(&why, cfg, plugin)
}

/// No device control for the task: refused, unless the operator accepted it.
fn unenforced(
    why: &str,
    cfg: &drivers::TaskConfig,
    plugin: &PluginConfig,
) -> Result<(), DriverError> {
    if plugin.allow_unrestricted_devices {
        tracing::warn!(task_id = %cfg.id, reason = why, "task runs without device control (allow_unrestricted_devices = true)");
        return Ok(());
    }
    Err(DriverError::Start {
        task: cfg.id.clone(),
        reason: format!(
            "cannot restrict the task's devices: {why}. Without it the task's processes could \
             use any host device node they can reach. Fix the host, or set \
             allow_unrestricted_devices = true in the plugin config to run isolated tasks \
             without device control"
        ),
        recoverable: false,
    })
}

/// Removes the cgroups the driver made for a task (its processes are gone by now). The removal
/// may retry for a moment, so it runs on the blocking pool.
pub async fn remove_owned(task_id: &str, cg: &TaskCgroups) {
    for dir in cg.owned.clone() {
        let removed = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || devices::remove(&dir, &Ledger::host())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::warn!(task_id, dir = %dir.display(), error = %e, "could not remove the task's devices cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> drivers::TaskConfig {
        drivers::TaskConfig {
            id: "a1/web/x".into(),
            alloc_id: "a1".into(),
            name: "web".into(),
            ..Default::default()
        }
    }

    #[test]
    fn no_mechanism_fails_the_task_naming_why_and_the_fix() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut v2 = TaskCgroups {
            mode: CgroupMode::V2,
            dirs: vec![root.path().join("scope")],
            owned: Vec::new(),
        };
        let plugin = PluginConfig::default();
        for cg in [Some(&mut v2.clone()), None] {
            let err = restrict(cg, root.path(), &task(), &plugin)
                .expect_err("must refuse")
                .to_string();
            assert!(err.contains("cannot restrict the task's devices"), "{err}");
            assert!(err.contains("allow_unrestricted_devices"), "{err}");
        }
        let accepting = PluginConfig {
            allow_unrestricted_devices: true,
            ..PluginConfig::default()
        };
        restrict(Some(&mut v2), root.path(), &task(), &accepting).expect("accepted");
        assert!(v2.owned.is_empty());
    }

    #[test]
    fn v1_without_the_devices_controller_is_refused() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut v1 = TaskCgroups::for_task(CgroupMode::V1, root.path(), "/x/cpuset", "a1", "web")
            .expect("cg");
        let err = restrict(
            Some(&mut v1),
            root.path(),
            &task(),
            &PluginConfig::default(),
        )
        .expect_err("no devices hierarchy")
        .to_string();
        assert!(err.contains("devices controller is not mounted"), "{err}");
        let plugin = PluginConfig::default();
        assert_eq!(
            DeviceControl::detect(Some(CgroupMode::V1), root.path()).attribute(&plugin),
            "unavailable"
        );
    }
}
