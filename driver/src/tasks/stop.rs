//! Stopping a task the way Nomad expects (plugins/drivers StopTask): the task's kill signal to its
//! process group (or every process with `signal_all_processes`), a grace period of
//! `kill_timeout`, then SIGKILL to every process left in the task's cgroup and to its process
//! group, and block until the task is gone. Processes outside both (a `setsid` into another
//! cgroup) are the leak sweep's (`watch`), which runs when the main process has ended.

use std::time::Duration;

use super::Task;
use crate::cgroups::TaskCgroups;
use crate::errors::DriverError;
use crate::procfs;

/// How long to wait after SIGKILL before reporting failure (exec waits 15 s too).
const AFTER_KILL: Duration = Duration::from_secs(15);

pub async fn stop(task: &Task, timeout: Duration, signal: i32) -> Result<(), DriverError> {
    if !task.is_running() {
        return Ok(());
    }
    if !timeout.is_zero() && signal != libc::SIGKILL {
        task.signal_task(signal)?;
        if task.wait_for(timeout).await {
            return Ok(());
        }
        tracing::info!(task_id = %task.state.task_id, timeout_ms = timeout.as_millis() as u64, "kill_timeout expired; sending SIGKILL");
    }
    kill_everything(task).await;
    if task.wait_for(AFTER_KILL).await {
        Ok(())
    } else {
        Err(DriverError::StillRunning {
            task: task.state.task_id.clone(),
            hint: "it survived SIGKILL for 15s",
        })
    }
}

/// SIGKILL to everything in the task's cgroup, then to its process group and main process. The
/// cgroup goes first so that, when the main process's end wakes the leak sweep, every process
/// still in the cgroup has its SIGKILL already and is not mistaken for one that outlived the task.
pub async fn kill_everything(task: &Task) {
    if let Some(cg) = &task.state.cgroups {
        kill_cgroup(&task.state.task_id, cg).await;
    }
    if task.main.is_some() {
        let _ = procfs::signal_group(task.state.pid, libc::SIGKILL);
    }
    let _ = task.signal_main(libc::SIGKILL);
}

/// SIGKILL to every process in the task's own cgroup (off the async runtime: v1 freezes it).
pub async fn kill_cgroup(task_id: &str, cg: &TaskCgroups) {
    let cg = cg.clone();
    let killed = tokio::task::spawn_blocking(move || crate::cgroups::kill_all(&cg)).await;
    match killed {
        Ok(Ok(n)) if n > 0 => {
            tracing::info!(
                task_id,
                processes = n,
                "killed the processes in the task cgroup"
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(task_id, error = %e, "could not kill the task cgroup");
        }
        _ => {}
    }
}
