//! The parts of Nomad's HTTP API objects (`structs.Allocation`, `TaskState`, `TaskEvent`,
//! `Node`, `DriverInfo`) the suite reads. Field names are Nomad's JSON names.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Deserialize;

/// An allocation (from `/v1/allocation/<id>` or a job's allocation list).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Alloc {
    /// Allocation id (UUID).
    #[serde(rename = "ID")]
    pub id: String,
    /// Job id.
    #[serde(rename = "JobID")]
    pub job_id: String,
    /// Task group name.
    pub task_group: String,
    /// `pending`, `running`, `complete`, `failed` or `lost`.
    pub client_status: String,
    /// `run`, `stop` or `evict`.
    pub desired_status: String,
    /// Raft index at creation (orders allocations of a job).
    pub create_index: u64,
    /// Per-task state.
    pub task_states: Option<BTreeMap<String, TaskState>>,
}

/// The client-side state of one task.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    /// `pending`, `running` or `dead`.
    pub state: String,
    /// Whether the task failed.
    pub failed: bool,
    /// Restart count.
    pub restarts: u64,
    /// Task events, oldest first.
    pub events: Option<Vec<TaskEvent>>,
}

/// One task event (`Received`, `Task Setup`, `Started`, `Terminated`, `Killing`, `Killed`,
/// `Signaling`, `Failed Validation`, `Driver Failure`, `Driver`, …).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    /// Event type.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Unix time in nanoseconds.
    pub time: i64,
    /// Human-readable message (what `nomad alloc status` prints).
    pub display_message: String,
    /// Structured details, all strings: `exit_code`, `signal`, `oom_killed`,
    /// `validation_error`, `driver_error`, `kill_timeout`, …
    pub details: Option<BTreeMap<String, String>>,
    /// Deprecated top-level copies Nomad still fills.
    pub exit_code: i64,
    /// Signal number that ended the task (for `Terminated`).
    pub signal: i64,
    /// Message of a `Failed Validation` event.
    pub validation_error: String,
    /// Message of a `Driver Failure` event.
    pub driver_error: String,
    /// Message of a `Setup Failure` event.
    pub setup_error: String,
    /// Free-form message (e.g. of a `Terminated` event).
    pub message: String,
}

impl TaskEvent {
    /// A detail value by key.
    #[must_use]
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details.as_ref()?.get(key).map(String::as_str)
    }

    /// A detail parsed as an integer (`exit_code`, `signal`).
    #[must_use]
    pub fn detail_i64(&self, key: &str) -> Option<i64> {
        self.detail(key)?.trim().parse().ok()
    }

    /// Every message-bearing field and detail joined, for "does the event mention X" checks.
    #[must_use]
    pub fn all_text(&self) -> String {
        let mut parts = vec![
            self.display_message.clone(),
            self.validation_error.clone(),
            self.driver_error.clone(),
            self.setup_error.clone(),
            self.message.clone(),
        ];
        if let Some(d) = &self.details {
            parts.extend(d.iter().map(|(k, v)| format!("{k}={v}")));
        }
        parts.retain(|p| !p.is_empty());
        parts.join(" | ")
    }
}

impl fmt::Display for TaskEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.display_message)?;
        if let Some(d) = self.details.as_ref().filter(|d| !d.is_empty()) {
            write!(f, " {d:?}")?;
        }
        Ok(())
    }
}

impl Alloc {
    /// Events of `task` (empty if the task has no state yet).
    #[must_use]
    pub fn events(&self, task: &str) -> Vec<TaskEvent> {
        self.task_states
            .as_ref()
            .and_then(|s| s.get(task))
            .and_then(|t| t.events.clone())
            .unwrap_or_default()
    }

    /// The last event of `task` with type `kind`.
    #[must_use]
    pub fn last_event(&self, task: &str, kind: &str) -> Option<TaskEvent> {
        self.events(task).into_iter().rev().find(|e| e.kind == kind)
    }

    /// Whether the client status is terminal (`complete`, `failed`, `lost`).
    #[must_use]
    pub fn is_terminal(&self) -> bool {
        matches!(self.client_status.as_str(), "complete" | "failed" | "lost")
    }

    /// Multi-line summary: status line plus every task's events.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut out = format!(
            "alloc {} (job {}) client_status={} desired_status={}",
            self.id, self.job_id, self.client_status, self.desired_status
        );
        for (task, state) in self.task_states.iter().flatten() {
            let _ = write!(
                out,
                "\n  task {task}: state={} failed={} restarts={}",
                state.state, state.failed, state.restarts
            );
            for e in state.events.iter().flatten() {
                let _ = write!(out, "\n    - {e}");
            }
        }
        out
    }
}

/// A client node (`/v1/node/<id>`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub name: String,
    /// `initializing`, `ready` or `down`.
    pub status: String,
    /// Node attributes (driver fingerprint attributes included).
    pub attributes: BTreeMap<String, String>,
    /// Per-driver fingerprint state.
    pub drivers: BTreeMap<String, DriverInfo>,
}

/// Fingerprint state of one driver on a node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DriverInfo {
    /// Attributes the driver reported.
    pub attributes: Option<BTreeMap<String, String>>,
    /// Detected (health not UNDETECTED).
    pub detected: bool,
    /// Healthy.
    pub healthy: bool,
    /// Health description.
    pub health_description: String,
}

/// A node list entry (`/v1/nodes`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeStub {
    /// Node id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node name.
    pub name: String,
    /// `initializing`, `ready` or `down`.
    pub status: String,
}
