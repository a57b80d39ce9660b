//! The driver's local JSON endpoint (`http_addr` in the plugin config: `/v1/tree`,
//! `/v1/observer`) and `ps`, to compare the observer's process trees with what the host shows.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};

use crate::api::Client;

/// The driver's local JSON endpoint (`http_addr` in the plugin config): `/v1/tree` and
/// `/v1/observer`.
pub struct DriverHttp(Client);

/// One process of a task's tree as `/v1/tree` reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TreeNode {
    /// Host pid.
    pub pid: u32,
    /// Parent pid.
    pub ppid: u32,
    /// Process name.
    pub comm: String,
    /// Arguments.
    pub cmdline: Vec<String>,
    /// Start time in clock ticks after boot (as `ps` computes it).
    pub start_time_ticks: Option<u64>,
    /// Fork time, milliseconds since the epoch.
    pub started_at_ms: Option<u64>,
}

/// One exec of a task's exec history.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TreeExec {
    /// Pid that exec'd.
    pub pid: u32,
    /// Path exec'd.
    pub filename: String,
    /// Its arguments.
    pub cmdline: Vec<String>,
}

/// `/v1/tree` of one task.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Tree {
    /// Allocation id.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// Host pid of the main process.
    pub main_pid: u32,
    /// Live processes.
    pub processes: Vec<TreeNode>,
    /// Processes whose parent is not in the task.
    pub roots: Vec<u32>,
    /// Recent execs, oldest first.
    pub execs: Vec<TreeExec>,
    /// Processes of the task that exited since tracking began.
    pub exited: u64,
}

impl DriverHttp {
    /// The endpoint at `127.0.0.1:port`.
    #[must_use]
    pub fn new(port: u16) -> Self {
        Self(Client::new(&format!("http://127.0.0.1:{port}")))
    }

    /// `GET /v1/tree?alloc=…&task=…`.
    pub fn tree(&self, alloc: &str, task: &str) -> Result<Tree> {
        self.0
            .get_json(&format!("/v1/tree?alloc={alloc}&task={task}"))
    }

    /// `GET /v1/observer`: the observer's counters (`lost_events`, `events_processed`, …).
    pub fn observer(&self) -> Result<serde_json::Value> {
        self.0.get_json("/v1/observer")
    }
}

/// One process as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsRow {
    /// Parent pid.
    pub ppid: u32,
    /// Process name.
    pub comm: String,
    /// Arguments joined by spaces.
    pub args: String,
    /// Seconds since it started (`etimes`).
    pub age_s: u64,
}

/// `ps -e -o pid=,ppid=,etimes=,comm=,args=`, restricted to `root` and its descendants.
pub fn ps_tree(root: u32) -> Result<BTreeMap<u32, PsRow>> {
    let out = std::process::Command::new("ps")
        .args(["-e", "-o", "pid=,ppid=,etimes=,comm=,args="])
        .output()
        .context("running ps")?;
    ensure!(out.status.success(), "ps failed: {out:?}");
    let mut all = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(pid), Some(parent), Some(age), Some(comm)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let row = PsRow {
            ppid: parent.parse()?,
            age_s: age.parse()?,
            comm: comm.to_owned(),
            args: f.collect::<Vec<_>>().join(" "),
        };
        all.insert(pid.parse::<u32>()?, row);
    }
    let mut tree = BTreeMap::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(row) = all.get(&p) {
            tree.insert(p, row.clone());
            stack.extend(all.iter().filter(|(_, r)| r.ppid == p).map(|(c, _)| *c));
        }
    }
    Ok(tree)
}
