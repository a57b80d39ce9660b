//! The v1 devices cgroup of an isolated task (see `cgroups::devices`): made at start with the
//! standard nodes and the devices Nomad assigned, removed with the task.

use std::path::{Path, PathBuf};

use bpfexec_proto::drivers;

use crate::cgroups::{CgroupMode, TaskCgroups, devices};
use crate::errors::DriverError;

/// Creates the task's devices cgroup and records it as owned; returns the file the task's
/// process writes to join it. `None` on cgroup v2, or when the v1 devices hierarchy (or Nomad's
/// `nomad` directory in it) is missing.
pub fn restrict(
    cg: &mut TaskCgroups,
    root: &Path,
    cfg: &drivers::TaskConfig,
) -> Result<Option<PathBuf>, DriverError> {
    if cg.mode != CgroupMode::V1 {
        return Ok(None);
    }
    let refuse = |reason: String| DriverError::Start {
        task: cfg.id.clone(),
        reason,
        recoverable: false,
    };
    let mut rules = devices::standard_rules();
    for d in &cfg.devices {
        let rule = devices::DeviceRule::for_node(Path::new(&d.host_path), &d.cgroup_permissions)
            .map_err(|e| refuse(format!("device {:?}: {e}", d.host_path)))?;
        rules.push(rule);
    }
    let dir = devices::task_dir(root, &cfg.alloc_id, &cfg.name);
    match devices::create(&dir, &rules) {
        Ok(true) => {
            cg.owned.push(dir.clone());
            Ok(Some(dir.join("tasks")))
        }
        Ok(false) => Ok(None),
        Err(e) => {
            let _ = devices::remove(&dir);
            Err(DriverError::Start {
                task: cfg.id.clone(),
                reason: format!(
                    "cannot restrict the task's devices in {}: {e}",
                    dir.display()
                ),
                recoverable: true,
            })
        }
    }
}

/// Removes the cgroups the driver made for a task (its processes are gone by now).
pub fn remove_owned(task_id: &str, cg: &TaskCgroups) {
    for dir in &cg.owned {
        if let Err(e) = devices::remove(dir) {
            tracing::warn!(task_id, dir = %dir.display(), error = %e, "could not remove the task's devices cgroup");
        }
    }
}
