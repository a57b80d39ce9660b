//! The live process tree of one task and its bounded exec history, built from fork/exec/exit
//! events (and seeded from procfs when tracking starts or resumes), with a serde snapshot for the
//! driver's JSON endpoint.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

/// One live process of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessNode {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// Arguments (from `/proc/<pid>/cmdline` at exec time, else the exec'd path).
    pub cmdline: Vec<String>,
    /// Path of the last exec (`None` when it has not exec'd since it was tracked).
    pub exe: Option<String>,
    /// Start time in clock ticks since boot, as `ps` shows it (filled when the snapshot is
    /// taken, while the process lives).
    pub start_time_ticks: Option<u64>,
    /// Wall-clock start (fork) time, milliseconds since the Unix epoch.
    pub started_at_ms: Option<u64>,
}

/// One successful exec in the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExecEntry {
    pub at_ms: u64,
    pub pid: u32,
    pub ppid: u32,
    pub filename: String,
    pub cmdline: Vec<String>,
}

/// Snapshot of a task's processes (`Observer::tree`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessTree {
    pub task_key: String,
    pub task_id: String,
    pub alloc_id: String,
    pub task_name: String,
    pub main_pid: u32,
    /// Live processes, ordered by PID.
    pub processes: Vec<ProcessNode>,
    /// Processes whose parent is not in the task (normally just the main process).
    pub roots: Vec<u32>,
    /// The most recent execs, oldest first.
    pub execs: Vec<ExecEntry>,
    /// Execs that fell out of the bounded history.
    pub execs_dropped: u64,
    /// Processes of the task that exited since tracking began.
    pub exited: u64,
}

/// The live processes and exec history of one task.
#[derive(Clone, Debug, Default)]
pub struct ProcTable {
    live: BTreeMap<u32, ProcessNode>,
    execs: VecDeque<ExecEntry>,
    exec_cap: usize,
    execs_dropped: u64,
    exited: u64,
}

impl ProcTable {
    #[must_use]
    pub fn new(exec_cap: usize) -> Self {
        Self {
            exec_cap: exec_cap.max(1),
            ..Self::default()
        }
    }

    /// Adds (or refreshes) a process known from procfs.
    pub fn seed(&mut self, pid: u32, parent: u32, comm: String, cmdline: Vec<String>) {
        self.live
            .entry(pid)
            .and_modify(|n| n.ppid = parent)
            .or_insert(ProcessNode {
                pid,
                ppid: parent,
                comm,
                cmdline,
                exe: None,
                start_time_ticks: None,
                started_at_ms: None,
            });
    }

    /// A new process: it starts as a copy of its parent.
    pub fn fork(&mut self, parent: u32, pid: u32, comm: String, at_ms: u64) {
        let cmdline = self
            .live
            .get(&parent)
            .map(|p| p.cmdline.clone())
            .unwrap_or_default();
        let exe = self.live.get(&parent).and_then(|p| p.exe.clone());
        self.live.insert(
            pid,
            ProcessNode {
                pid,
                ppid: parent,
                comm,
                cmdline,
                exe,
                start_time_ticks: None,
                started_at_ms: Some(at_ms),
            },
        );
    }

    /// `pid` exec'd `filename`; `cmdline` is what procfs said, if it could be read in time.
    pub fn exec(
        &mut self,
        pid: u32,
        filename: String,
        comm: String,
        cmdline: Option<Vec<String>>,
        at_ms: u64,
    ) {
        let cmdline = cmdline
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| vec![filename.clone()]);
        let node = self.live.entry(pid).or_insert_with(|| ProcessNode {
            pid,
            ppid: 0,
            comm: comm.clone(),
            cmdline: Vec::new(),
            exe: None,
            start_time_ticks: None,
            started_at_ms: None,
        });
        node.comm = comm;
        node.cmdline.clone_from(&cmdline);
        node.exe = Some(filename.clone());
        let parent = node.ppid;
        if self.execs.len() == self.exec_cap {
            self.execs.pop_front();
            self.execs_dropped += 1;
        }
        self.execs.push_back(ExecEntry {
            at_ms,
            pid,
            ppid: parent,
            filename,
            cmdline,
        });
    }

    /// `pid` is gone; returns its last node.
    pub fn exit(&mut self, pid: u32) -> Option<ProcessNode> {
        let node = self.live.remove(&pid)?;
        self.exited += 1;
        Some(node)
    }

    #[must_use]
    pub fn get(&self, pid: u32) -> Option<&ProcessNode> {
        self.live.get(&pid)
    }

    /// Execs seen since tracking began.
    #[must_use]
    pub fn exec_count(&self) -> u64 {
        self.execs.len() as u64 + self.execs_dropped
    }

    /// Live PIDs.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.keys().copied()
    }

    #[cfg(test)]
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    #[cfg(test)]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The snapshot parts: (processes, roots, execs, execs dropped, exited).
    #[must_use]
    pub fn snapshot(&self) -> (Vec<ProcessNode>, Vec<u32>, Vec<ExecEntry>, u64, u64) {
        let processes: Vec<ProcessNode> = self.live.values().cloned().collect();
        let roots = processes
            .iter()
            .filter(|p| !self.live.contains_key(&p.ppid))
            .map(|p| p.pid)
            .collect();
        (
            processes,
            roots,
            self.execs.iter().cloned().collect(),
            self.execs_dropped,
            self.exited,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_exec_exit_build_the_tree() {
        let mut t = ProcTable::new(2);
        t.seed(
            10,
            1,
            "sh".into(),
            vec!["sh".into(), "-c".into(), "x".into()],
        );
        t.fork(10, 11, "sh".into(), 5);
        assert_eq!(
            t.get(11).map(|n| n.cmdline.len()),
            Some(3),
            "child inherits argv"
        );
        t.exec(
            11,
            "/usr/bin/sleep".into(),
            "sleep".into(),
            Some(vec!["sleep".into(), "9".into()]),
            6,
        );
        t.fork(11, 12, "sleep".into(), 7);
        t.exec(12, "/bin/true".into(), "true".into(), None, 8);
        assert_eq!(
            t.get(12).map(|n| n.cmdline.clone()),
            Some(vec!["/bin/true".to_owned()])
        );
        t.exec(10, "/bin/sh".into(), "sh".into(), None, 9);
        let (procs, roots, execs, dropped, exited) = t.snapshot();
        assert_eq!(
            procs.iter().map(|p| (p.pid, p.ppid)).collect::<Vec<_>>(),
            [(10, 1), (11, 10), (12, 11)]
        );
        assert_eq!(roots, [10]);
        assert_eq!(
            execs.iter().map(|e| e.pid).collect::<Vec<_>>(),
            [12, 10],
            "bounded history"
        );
        assert_eq!((dropped, exited), (1, 0));
        assert_eq!(t.exit(11).map(|n| n.comm), Some("sleep".to_owned()));
        assert!(t.exit(11).is_none());
        let (_, roots, _, _, exited) = t.snapshot();
        assert_eq!((roots, exited), (vec![10, 12], 1));
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
    }
}
