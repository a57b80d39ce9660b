//! What the driver stores in Nomad's `TaskHandle.driver_state` (opaque JSON to Nomad) so a new
//! plugin process can find a task again, and how a task ended.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::TaskCgroups;
use crate::supervisor::record::ExitRecord;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverState {
    pub version: u32,
    pub task_id: String,
    /// `<state_dir>/tasks/<task>`: spec, exit record and supervisor log.
    pub dir: PathBuf,
    pub supervisor_pid: u32,
    pub supervisor_start_time: u64,
    /// The task's main process (also its process-group id).
    pub pid: u32,
    pub start_time: u64,
    pub started_at_ms: u64,
    pub cgroups: Option<TaskCgroups>,
    /// Stop and `alloc signal` reach every process of the task, not only its process group.
    #[serde(default)]
    pub signal_all_processes: bool,
    /// The task cgroup's OOM-kill counter before the task started.
    #[serde(default)]
    pub oom_kills_before: u64,
    /// The task's `pids_max`, watched for hits (`pids.events`) while it runs.
    #[serde(default)]
    pub pids_max: Option<u64>,
    /// `pids.events` `max` before the task started.
    #[serde(default)]
    pub pids_hits_before: u64,
    /// The ephemeral uid (= gid) the task runs as, released when it is destroyed.
    #[serde(default)]
    pub ephemeral_id: Option<u32>,
    /// The allocation's directory: once Nomad has garbage-collected it, a task this plugin was
    /// never asked to recover or destroy is known to be abandoned (adopt::sweep).
    #[serde(default)]
    pub alloc_dir: Option<PathBuf>,
}

impl DriverState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The state planned before the launch, with the processes the supervisor reported.
    #[must_use]
    pub fn with_processes(
        self,
        pid: u32,
        start_time: u64,
        supervisor_pid: u32,
        supervisor_start_time: u64,
    ) -> Self {
        Self {
            supervisor_pid,
            supervisor_start_time,
            pid,
            start_time,
            ..self
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.is_empty() {
            return Err("the task handle carries no driver state".into());
        }
        let st: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("driver state is not ours: {e}"))?;
        if st.version != STATE_VERSION {
            return Err(format!(
                "driver state version {} is not supported (want {STATE_VERSION})",
                st.version
            ));
        }
        Ok(st)
    }
}

/// How a task ended, as reported to Nomad in `WaitTask`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub signal: i32,
    pub oom_killed: bool,
    pub core_dumped: bool,
    /// Set when the driver could not learn the true status (Nomad then treats the task as failed).
    pub err: Option<String>,
    pub finished_at_ms: u64,
}

impl From<ExitRecord> for Outcome {
    fn from(r: ExitRecord) -> Self {
        Self {
            exit_code: r.exit_code,
            signal: r.signal,
            oom_killed: false,
            core_dumped: r.core_dumped,
            err: None,
            finished_at_ms: r.finished_at_ms,
        }
    }
}

impl Outcome {
    pub fn lost(reason: String) -> Self {
        Self {
            exit_code: -1,
            signal: 0,
            oom_killed: false,
            core_dumped: false,
            err: Some(reason),
            finished_at_ms: crate::supervisor::record::now_ms(),
        }
    }
}

#[cfg(test)]
impl DriverState {
    /// A task's state for tests: task `a/t/1` in `dir`, processes 10 to 13, started at 14.
    pub(crate) fn sample(dir: &std::path::Path) -> Self {
        Self {
            version: STATE_VERSION,
            task_id: "a/t/1".into(),
            dir: dir.to_path_buf(),
            supervisor_pid: 10,
            supervisor_start_time: 11,
            pid: 12,
            start_time: 13,
            started_at_ms: 14,
            cgroups: None,
            signal_all_processes: false,
            oom_kills_before: 0,
            pids_max: None,
            pids_hits_before: 0,
            ephemeral_id: None,
            alloc_dir: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DriverState {
        DriverState::sample(std::path::Path::new("/run/bpfexec/tasks/a_t_1"))
    }

    #[test]
    fn round_trips() {
        let st = sample();
        assert_eq!(DriverState::decode(&st.encode()).expect("decode"), st);
    }

    #[test]
    fn rejects_empty_foreign_and_future_state() {
        assert!(DriverState::decode(b"").is_err());
        assert!(DriverState::decode(b"\x81\xa1a\x01").is_err());
        let mut st = sample();
        st.version = 99;
        assert!(
            DriverState::decode(&st.encode())
                .expect_err("future")
                .contains("version 99")
        );
    }
}
