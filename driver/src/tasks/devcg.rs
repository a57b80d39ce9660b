//! The v1 devices cgroup of an isolated task (see `cgroups::devices`): made at start with the
//! standard nodes and the devices Nomad assigned, removed with the task.

use std::path::Path;

use bpfexec_proto::drivers;

use crate::cgroups::{CgroupMode, TaskCgroups, devices};
use crate::errors::DriverError;
use crate::supervisor::sandbox::DEV_NODES;

/// Creates the task's devices cgroup and records it in `cg.owned` (so `join_files` has it).
/// Nothing on cgroup v2, or when the v1 devices hierarchy (or Nomad's `nomad` directory in it)
/// is missing.
pub fn restrict(
    cg: &mut TaskCgroups,
    root: &Path,
    cfg: &drivers::TaskConfig,
) -> Result<(), DriverError> {
    if cg.mode != CgroupMode::V1 {
        return Ok(());
    }
    let refuse = |reason: String| DriverError::Start {
        task: cfg.id.clone(),
        reason,
        recoverable: false,
    };
    let mut rules = devices::standard_rules(&DEV_NODES);
    for d in &cfg.devices {
        let rule = devices::DeviceRule::for_node(Path::new(&d.host_path), &d.cgroup_permissions)
            .map_err(|e| refuse(format!("device {:?}: {e}", d.host_path)))?;
        rules.push(rule);
    }
    let dir = devices::task_dir(root, &cfg.alloc_id, &cfg.name);
    match devices::create(&dir, &rules) {
        Ok(true) => {
            cg.owned.push(dir);
            Ok(())
        }
        Ok(false) => Ok(()),
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

/// Removes the cgroups the driver made for a task (its processes are gone by now). The removal
/// may retry for a moment, so it runs on the blocking pool.
pub async fn remove_owned(task_id: &str, cg: &TaskCgroups) {
    for dir in cg.owned.clone() {
        let removed = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || devices::remove(&dir)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = removed {
            tracing::warn!(task_id, dir = %dir.display(), error = %e, "could not remove the task's devices cgroup");
        }
    }
}
