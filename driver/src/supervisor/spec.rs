//! The launch spec: everything a supervisor needs to start a task's process, resolved and
//! validated by the plugin before the supervisor runs (so errors surface from StartTask).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Nomad task id, for log lines.
    pub task_id: String,
    /// Absolute path of the program to execute.
    pub program: PathBuf,
    /// argv[0] as given in the job's `command`.
    pub argv0: String,
    pub args: Vec<String>,
    /// The complete environment of the task (Nomad's env map).
    pub env: BTreeMap<String, String>,
    /// Working directory of the task.
    pub cwd: PathBuf,
    /// Log FIFOs Nomad created (or /dev/null when logs are disabled).
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// `cgroup.procs` files the task process joins before it execs the command.
    pub cgroup_procs: Vec<PathBuf>,
}
