//! Filesystem images a task mounts read-only, like systemd's `RootImage=` and `MountImages=`:
//! `root_image = "local/rootfs.squashfs"` makes the image the task's root (instead of the
//! `chroot_env` binds), and each `mount_image { source = … target = … }` mounts one at a path
//! inside the task. Sources are paths in the task's directory (typically an `artifact` in
//! `local/`); the image must be squashfs.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMount {
    /// Relative to the task directory (e.g. `local/tools.squashfs`) or absolute in the task's view.
    pub source: String,
    /// Absolute path inside the task.
    pub target: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Images {
    pub root: Option<String>,
    pub mounts: Vec<ImageMount>,
}

impl Images {
    pub fn is_set(&self) -> bool {
        self.root.is_some() || !self.mounts.is_empty()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct RawMount {
    source: Option<String>,
    target: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    root_image: Option<String>,
    mount_image: Option<Vec<RawMount>>,
}

fn has_dotdot(p: &str) -> bool {
    Path::new(p).components().any(|c| c == Component::ParentDir)
}

fn check_source(field: &'static str, source: &str) -> Result<(), ConfigError> {
    if source.trim().is_empty() || has_dotdot(source) {
        return Err(ConfigError::Invalid {
            field,
            problem: format!("{source:?} is not an image path"),
            fix: "name a squashfs file in the task's directory without \"..\", e.g. \"local/app.squashfs\" (from an artifact)".into(),
        });
    }
    Ok(())
}

impl Raw {
    pub fn validate(self) -> Result<Images, ConfigError> {
        let root = self.root_image.filter(|s| !s.is_empty());
        if let Some(r) = &root {
            check_source("root_image", r)?;
        }
        let mut mounts = Vec::new();
        for m in self.mount_image.unwrap_or_default() {
            let source = m.source.unwrap_or_default();
            check_source("mount_image.source", &source)?;
            let target = m.target.unwrap_or_default();
            if !target.starts_with('/') || target == "/" || has_dotdot(&target) {
                return Err(ConfigError::Invalid {
                    field: "mount_image.target",
                    problem: format!("{target:?} is not an absolute path below /"),
                    fix: "give the absolute path inside the task where the image appears, e.g. target = \"/opt/tools\" (use root_image for /)".into(),
                });
            }
            mounts.push(ImageMount { source, target });
        }
        Ok(Images { root, mounts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(source: &str, target: &str) -> RawMount {
        RawMount {
            source: Some(source.into()),
            target: Some(target.into()),
        }
    }

    #[test]
    fn valid_images() {
        let i = Raw {
            root_image: Some("local/root.squashfs".into()),
            mount_image: Some(vec![mount("local/tools.squashfs", "/opt/tools")]),
        }
        .validate()
        .expect("valid");
        assert_eq!(i.root.as_deref(), Some("local/root.squashfs"));
        assert_eq!(i.mounts[0].target, "/opt/tools");
        assert!(i.is_set());
        assert!(!Raw::default().validate().expect("none").is_set());
    }

    #[test]
    fn bad_images_name_the_field() {
        for (raw, field) in [
            (
                Raw {
                    root_image: Some("../../etc/x".into()),
                    mount_image: None,
                },
                "root_image",
            ),
            (
                Raw {
                    root_image: None,
                    mount_image: Some(vec![mount("", "/x")]),
                },
                "mount_image.source",
            ),
            (
                Raw {
                    root_image: None,
                    mount_image: Some(vec![mount("local/a", "relative")]),
                },
                "mount_image.target",
            ),
            (
                Raw {
                    root_image: None,
                    mount_image: Some(vec![mount("local/a", "/")]),
                },
                "mount_image.target",
            ),
        ] {
            let err = raw.validate().expect_err(field).to_string();
            assert!(err.contains(field), "{err}");
        }
    }
}
