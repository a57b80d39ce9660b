//! A task an earlier plugin process launched but never handed to Nomad. Nomad's task runner
//! retries StartTask with the same task id when the plugin died during it (ErrPluginShutdown):
//! the task that launch started is adopted like a recovered one, never started a second time,
//! and what a launch that started nothing left (cgroups, ephemeral user, state dir) is removed
//! first. DestroyTask of a task this plugin does not know removes the same leftovers, and so
//! does a periodic sweep for tasks Nomad abandoned (its task runner gave up re-attaching after a
//! plugin death, so no RecoverTask or DestroyTask ever comes): those whose allocation directory
//! Nomad has garbage-collected. Reads the planned state the plugin writes before a launch and the
//! start report the supervisor writes (`supervisor::record`).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::devcg;
use super::ephemeral;
use super::launch::START_TIMEOUT;
use super::state::DriverState;
use super::stop;
use crate::errors::DriverError;
use crate::procfs::{self, PidFd};
use crate::supervisor::SUPERVISE_ARG;
use crate::supervisor::record::{self, PLANNED_FILE, START_REPORT_FILE, StartReport};

const POLL: Duration = Duration::from_millis(50);

/// Records the task's planned state in its state dir, before its supervisor is launched.
pub fn record_plan(planned: &DriverState) -> Result<(), DriverError> {
    let dir = &planned.dir;
    std::fs::create_dir_all(dir)
        .and_then(|()| record::write_json(dir, PLANNED_FILE, planned))
        .map_err(|e| DriverError::io(format!("writing the planned state in {}", dir.display()), e))
}

/// The state of the task an earlier plugin process launched for `task_id` in `dir`, to recover
/// it from; None when there is none (what a launch that started no task left is removed). A
/// supervisor still starting the task is given the launch's own time limit to report; one that
/// does not is killed.
pub async fn earlier_attempt(dir: &Path, task_id: &str) -> Option<DriverState> {
    if std::fs::symlink_metadata(dir).is_err() {
        return None;
    }
    let planned = planned(dir);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // Looked up before the report is read: with none alive then, no one can still write it.
        let alive = supervisors(dir);
        match record::read_json::<StartReport>(dir, START_REPORT_FILE) {
            Ok(Some(StartReport::Started {
                pid,
                start_time,
                supervisor_pid,
                supervisor_start_time,
            })) => {
                if let Some(planned) = planned {
                    return Some(planned.with_processes(
                        pid,
                        start_time,
                        supervisor_pid,
                        supervisor_start_time,
                    ));
                }
                // A report without a plan cannot be recovered: the task is ended instead.
                kill(&alive);
                break;
            }
            Ok(Some(StartReport::Failed { .. })) | Err(_) => break,
            Ok(None) => {}
        }
        if alive.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                task_id,
                "an earlier plugin's launch of this task did not report within the start limit; killing it"
            );
            kill(&alive);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    discard(dir, task_id, planned.as_ref()).await;
    None
}

/// DestroyTask of a task this plugin process does not know (its RecoverTask failed, or its
/// StartTask died with an earlier plugin): ends what still runs of it (only with `force`) and
/// removes its cgroups, ephemeral user and state dir.
pub async fn destroy_unknown(dir: &Path, task_id: &str, force: bool) -> Result<(), DriverError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let alive = supervisors(dir);
    if !alive.is_empty() {
        if !force {
            return Err(DriverError::StillRunning {
                task: task_id.to_owned(),
                hint: "stop it first or destroy with force",
            });
        }
        kill(&alive);
    }
    discard(dir, task_id, planned(dir).as_ref()).await;
    Ok(())
}

/// Ends and removes every task under `<state_dir>/tasks` that `known` does not name and whose
/// allocation directory is gone: Nomad has garbage-collected its allocation, so nothing will
/// ever recover or destroy it. Finishes removals a killed plugin left halfway. Returns the task
/// ids removed.
pub async fn sweep(state_dir: &Path, known: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("tasks")) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        if dir
            .to_str()
            .is_some_and(|d| d.ends_with(record::REMOVING_SUFFIX))
        {
            // A removal the plugin was killed in the middle of.
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not finish removing a task state directory");
            }
            continue;
        }
        let Some(planned) = planned(&dir) else {
            continue;
        };
        let abandoned = planned
            .alloc_dir
            .as_ref()
            .is_some_and(|a| std::fs::symlink_metadata(a).is_err());
        if !abandoned || known(&planned.task_id) {
            continue;
        }
        tracing::warn!(
            task_id = %planned.task_id,
            "Nomad garbage-collected the allocation of a task it never recovered or destroyed (it gave up re-attaching after a plugin death): ending what is left of it"
        );
        if destroy_unknown(&dir, &planned.task_id, true).await.is_ok() {
            removed.push(planned.task_id);
        }
    }
    removed
}

/// The supervisor processes (first process and namespace init) of the task in `dir`.
fn supervisors(dir: &Path) -> Vec<(u32, u64)> {
    procfs::find_by_args(&[SUPERVISE_ARG.as_bytes(), dir.as_os_str().as_bytes()])
}

fn kill(procs: &[(u32, u64)]) {
    for (pid, start_time) in procs {
        if let Ok(fd) = PidFd::open(*pid, Some(*start_time)) {
            let _ = fd.send_signal(libc::SIGKILL);
        }
    }
}

/// Kills what runs in the task's cgroup, then removes what is left of the task.
async fn discard(dir: &Path, task_id: &str, planned: Option<&DriverState>) {
    if let Some(cg) = planned.and_then(|p| p.cgroups.as_ref()) {
        stop::kill_cgroup(task_id, cg).await;
    }
    if remove_leftovers(dir, task_id, planned).await {
        tracing::info!(task_id, dir = %dir.display(), "removed what was left of the task");
    }
}

/// Removes the cgroups the driver made for a task that no longer runs, releases its ephemeral
/// user and removes its state dir (DestroyTask, and tasks found in the state dir only); false
/// when the state dir could not be removed.
pub async fn remove_leftovers(dir: &Path, task_id: &str, state: Option<&DriverState>) -> bool {
    if let Some(cg) = state.and_then(|s| s.cgroups.as_ref()) {
        devcg::remove_owned(task_id, cg).await;
    }
    if let Some(uid) = state.and_then(|s| s.ephemeral_id)
        && let Some(state_dir) = dir.parent().and_then(Path::parent)
    {
        ephemeral::release(state_dir, uid, task_id);
    }
    match record::remove_task_dir(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(task_id, error = %e, "could not remove the task's state directory");
            false
        }
    }
}

/// The planned state recorded in `dir`, if readable.
fn planned(dir: &Path) -> Option<DriverState> {
    record::read_json::<DriverState>(dir, PLANNED_FILE)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::record::REMOVING_SUFFIX;
    use std::path::PathBuf;

    #[tokio::test]
    async fn no_dir_means_nothing_earlier() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("tasks").join("t");
        assert!(earlier_attempt(&dir, "t").await.is_none());
        destroy_unknown(&dir, "t", false)
            .await
            .expect("nothing to do");
    }

    #[tokio::test]
    async fn a_reported_start_is_adopted_with_the_plan() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        record_plan(&DriverState::sample(&dir)).expect("plan");
        let report = StartReport::Started {
            pid: 41,
            start_time: 42,
            supervisor_pid: 43,
            supervisor_start_time: 44,
        };
        record::write_json(&dir, START_REPORT_FILE, &report).expect("report");
        let st = earlier_attempt(&dir, "t").await.expect("adopted");
        assert_eq!((st.pid, st.start_time), (41, 42));
        assert_eq!((st.supervisor_pid, st.supervisor_start_time), (43, 44));
        assert_eq!(st.started_at_ms, 14);
        assert!(dir.exists(), "an adopted task keeps its state dir");
    }

    #[tokio::test]
    async fn a_launch_that_started_nothing_is_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        for report in [
            None,
            Some(StartReport::Failed {
                error: "no such file".into(),
            }),
        ] {
            let dir = root.path().join("t");
            record_plan(&DriverState::sample(&dir)).expect("plan");
            if let Some(r) = &report {
                record::write_json(&dir, START_REPORT_FILE, r).expect("report");
            }
            assert!(earlier_attempt(&dir, "t").await.is_none());
            assert!(!dir.exists(), "{report:?}: leftovers removed");
        }
    }

    #[tokio::test]
    async fn the_sweep_removes_only_unknown_tasks_of_collected_allocations() {
        let root = tempfile::tempdir().expect("tempdir");
        let alloc = root.path().join("alloc-live");
        std::fs::create_dir_all(&alloc).expect("alloc dir");
        let task = |name: &str, alloc_dir: Option<PathBuf>| {
            let dir = root.path().join("tasks").join(name);
            record_plan(&DriverState {
                task_id: name.to_owned(),
                alloc_dir,
                ..DriverState::sample(&dir)
            })
            .expect("plan");
            dir
        };
        let gone = task("gone", Some(root.path().join("alloc-gone")));
        let live = task("live", Some(alloc.clone()));
        let known = task("known", Some(root.path().join("alloc-gone")));
        let old = task("old-format", None);
        let halfway = root
            .path()
            .join("tasks")
            .join(format!("x{REMOVING_SUFFIX}"));
        std::fs::create_dir_all(halfway.join("sub")).expect("halfway");
        let removed = sweep(root.path(), |id| id == "known").await;
        assert_eq!(removed, vec!["gone".to_owned()]);
        assert!(!gone.exists() && !halfway.exists());
        assert!(live.exists() && known.exists() && old.exists());
    }

    #[tokio::test]
    async fn unknown_tasks_leave_no_state_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("t");
        record_plan(&DriverState::sample(&dir)).expect("plan");
        std::fs::write(dir.join(record::EXIT_FILE), "{}").expect("exit");
        destroy_unknown(&dir, "t", false).await.expect("destroyed");
        assert!(!dir.exists());
    }
}
