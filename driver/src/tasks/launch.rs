//! Starting a task: write the launch spec, start the task's supervisor in its own session and
//! read its one-line start report.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::errors::DriverError;
use crate::supervisor::record::{self, LOG_FILE, SPEC_FILE, StartReport};
use crate::supervisor::{SUPERVISE_ARG, spec::LaunchSpec};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A started task: the process Nomad's plugin spawned, and what it reported.
pub struct Launched {
    /// The first supervisor process (a child of this plugin process; reap it).
    pub launcher: tokio::process::Child,
    pub pid: u32,
    pub start_time: u64,
    /// The process that waits for the task and records its exit.
    pub supervisor_pid: u32,
    pub supervisor_start_time: u64,
}

fn start_err(task: &str, reason: impl Into<String>) -> DriverError {
    DriverError::Start {
        task: task.to_owned(),
        reason: reason.into(),
        recoverable: false,
    }
}

/// Writes the spec and starts the supervisor; returns once the task process exists.
pub async fn launch(dir: &Path, spec: &LaunchSpec) -> Result<Launched, DriverError> {
    let task = spec.task_id.as_str();
    std::fs::create_dir_all(dir)
        .map_err(|e| DriverError::io(format!("creating {}", dir.display()), e))?;
    record::write_json(dir, SPEC_FILE, spec)
        .and_then(|()| record::reserve_exit(dir))
        .map_err(|e| DriverError::io(format!("writing the launch spec in {}", dir.display()), e))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(LOG_FILE))
        .map_err(|e| DriverError::io(format!("opening {}", dir.join(LOG_FILE).display()), e))?;
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("nomad-driver-bpfexec")
        .arg(SUPERVISE_ARG)
        .arg(dir)
        // The supervisor reads nothing from its environment and gives the task the one in the
        // spec; the plugin's own (a long LD_LIBRARY_PATH under cargo, say) would only slow the
        // dynamic loader down.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(false);
    // No pre_exec hook, so the standard library can spawn with posix_spawn (vfork-style), which
    // is much cheaper than forking this multi-threaded process; the supervisor calls setsid(2)
    // itself as its first act.
    let mut supervisor = cmd
        .spawn()
        .map_err(|e| DriverError::io("starting the task supervisor", e))?;
    let stdout = supervisor
        .stdout
        .take()
        .ok_or_else(|| start_err(task, "no pipe to the supervisor"))?;
    let mut line = String::new();
    let read =
        tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
    let report = match read {
        Ok(Ok(n)) if n > 0 => serde_json::from_str::<StartReport>(line.trim_end())
            .map_err(|e| start_err(task, format!("the supervisor answered {line:?}: {e}")))?,
        Ok(Ok(_)) => return Err(start_err(task, supervisor_died_message(dir))),
        Ok(Err(e)) => return Err(DriverError::io("reading the supervisor's start report", e)),
        Err(_) => {
            let _ = supervisor.start_kill();
            return Err(DriverError::Start {
                task: task.to_owned(),
                reason: format!(
                    "the task did not start within {}s (are the log FIFOs readable?)",
                    START_TIMEOUT.as_secs()
                ),
                recoverable: true,
            });
        }
    };
    match report {
        StartReport::Started {
            pid,
            start_time,
            supervisor_pid,
            supervisor_start_time,
        } => Ok(Launched {
            launcher: supervisor,
            pid,
            start_time,
            supervisor_pid,
            supervisor_start_time,
        }),
        StartReport::Failed { error } => {
            let _ = supervisor.wait().await;
            Err(start_err(task, error))
        }
    }
}

fn supervisor_died_message(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join(LOG_FILE)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    format!(
        "the supervisor exited before starting the task; its log says: {}",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )
}
