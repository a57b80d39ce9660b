//! Typed errors of the observer's driver-facing calls.

use crate::probes::ProbeError;

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error(
        "task {task_id}: main process {pid} is not running (or its PID now belongs to another \
         process), so it cannot be tracked"
    )]
    MainGone { task_id: String, pid: u32 },
    #[error("task {task_id}: updating the kernel's task tracking failed: {source}")]
    Kernel {
        task_id: String,
        #[source]
        source: ProbeError,
    },
}

/// Why a stray task process could not be killed.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("cannot open a pidfd for pid {pid}: {source}")]
    Open {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot SIGKILL pid {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}
