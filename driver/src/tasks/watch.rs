//! Waiting for a supervisor to exit (through its pidfd, so it works for supervisors started by an
//! earlier plugin process too) and turning its exit record into the task's outcome, explained by
//! the observer, after killing whatever of the task outlived it (leaks).

use std::path::Path;
use std::sync::Arc;

use bpfexec_proto::drivers;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::observe::Observation;
use super::state::{DriverState, Outcome};
use crate::procfs::PidFd;
use crate::supervisor::record::{self, EXIT_FILE, ExitRecord};

/// Reads the exit record a supervisor left, if any.
pub fn read_outcome(dir: &Path) -> Result<Option<Outcome>, String> {
    record::read_json::<ExitRecord>(dir, EXIT_FILE)
        .map(|r| r.map(Outcome::from))
        .map_err(|e| format!("cannot read the exit record: {e}"))
}

/// Marks an outcome OOM-killed when the task cgroup's OOM-kill counter moved while the task ran
/// and the task ended by SIGKILL: its main process was killed, or (exit code 137) it exited
/// because a process it waited for was. A clean or ordinary failing exit is never OOM.
pub fn with_oom(mut outcome: Outcome, state: &DriverState) -> Outcome {
    if (outcome.signal == libc::SIGKILL || outcome.exit_code == 128 + libc::SIGKILL)
        && let Some(after) = state
            .cgroups
            .as_ref()
            .and_then(crate::cgroups::limits::oom_kills)
        && after > state.oom_kills_before
    {
        outcome.oom_killed = true;
    }
    outcome
}

/// Resolves the task's outcome once the supervisor behind `pidfd` has exited.
pub fn spawn(
    pidfd: PidFd,
    config: drivers::TaskConfig,
    state: DriverState,
    observation: Arc<Observation>,
    tx: watch::Sender<Option<Outcome>>,
) {
    tokio::spawn(async move {
        let pid = pidfd.pid();
        let dir = state.dir.clone();
        wait_exit(pidfd).await;
        let outcome = match read_outcome(&dir) {
            Ok(Some(outcome)) => observation.explain(&config, &state, outcome).await,
            Ok(None) => helper_gone(pid, &config, &state, &observation).await,
            Err(e) => Outcome::lost(e),
        };
        // Before Nomad learns the task ended: nothing of it may run on.
        observation.reap_leaks(&state).await;
        tracing::info!(
            pid,
            exit_code = outcome.exit_code,
            signal = outcome.signal,
            "task exited"
        );
        let _ = tx.send(Some(outcome));
    });
}

/// The helper `pid` ended without an exit record (killed, say): the task's end as the probes
/// saw it. Without a pid namespace the main process outlives its helper; it is waited for.
async fn helper_gone(
    pid: u32,
    config: &drivers::TaskConfig,
    state: &DriverState,
    observation: &Observation,
) -> Outcome {
    if let Some(o) = observation.explain_helper_death(config, state).await {
        return o;
    }
    if let Ok(main) = PidFd::open(state.pid, Some(state.start_time)) {
        wait_exit(main).await;
    }
    if let Some(o) = observation.explain_helper_death(config, state).await {
        return o;
    }
    Outcome::lost(format!(
        "the task's supervisor (pid {pid}) ended without recording an exit status; see {}",
        state.dir.join(record::LOG_FILE).display()
    ))
}

/// Returns once the process behind `pidfd` has exited.
async fn wait_exit(pidfd: PidFd) {
    // SAFETY: the AsyncFd owns the PidFd, whose OwnedFd stays open (and refers to the same
    // pidfd) for as long as the AsyncFd is registered.
    let registered = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) };
    match registered {
        Ok(fd) => loop {
            let Ok(mut guard) = fd.readable().await else {
                break;
            };
            if guard.get_inner().has_exited() {
                return;
            }
            guard.clear_ready();
        },
        Err(e) => {
            let (pidfd, error) = e.into_parts();
            tracing::warn!(%error, "cannot register the supervisor's pidfd; polling instead");
            while !pidfd.has_exited() {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}
