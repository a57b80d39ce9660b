//! Registering tasks with the kernel: the main process and the processes (and threads) it
//! already has go into the pinned `TRACKED` / `THREADS` maps, its helper into `HELPERS`, and the
//! task gets a `FACTS` record;
//! on recovery the pinned state is re-read, PIDs that died unseen are dropped, and processes the
//! probes could not see are added from procfs.

use bpfexec_common::TaskFacts;

use super::{Observer, TrackReport, lock, monotonic_ns};
use crate::observer::{
    error::ObserverError,
    key::{TaskKey, TaskMeta},
    proc::{ProcStat, descendants},
};
use crate::probes::ProbeError;

/// Passes over /proc when seeding a task's processes (forks racing with the scan).
const SCAN_PASSES: usize = 4;

impl Observer {
    fn kernel_err(meta: &TaskMeta) -> impl Fn(ProbeError) -> ObserverError + '_ {
        |source| ObserverError::Kernel {
            task_id: meta.task_id.clone(),
            source,
        }
    }

    fn main_alive(&self, meta: &TaskMeta) -> Option<ProcStat> {
        self.proc
            .stat(meta.main_pid)
            .filter(ProcStat::is_alive)
            .filter(|s| meta.main_start_time == 0 || s.start_time == meta.main_start_time)
    }

    /// Starts tracking a task whose main process just started: registers it in the kernel (its
    /// forks are then tracked by the probes) and adds the processes it already has.
    pub fn track(&self, key: TaskKey, meta: TaskMeta) -> Result<TrackReport, ObserverError> {
        let Some(stat) = self.main_alive(&meta) else {
            return Err(ObserverError::MainGone {
                task_id: meta.task_id,
                pid: meta.main_pid,
            });
        };
        let err = Self::kernel_err(&meta);
        // Tracking twice (a repeated StartTask) must not wipe what the probes recorded.
        let existing = self.backend.facts(key.0).map_err(&err)?;
        if existing.is_none_or(|f| f.main_pid != meta.main_pid) {
            let facts = TaskFacts {
                main_pid: meta.main_pid,
                tracked_ktime_ns: monotonic_ns(),
                live_processes: 1,
                ..TaskFacts::default()
            };
            self.backend.put_facts(key.0, &facts).map_err(&err)?;
        }
        self.backend.track_pid(meta.main_pid, key.0).map_err(&err)?;
        self.track_threads(meta.main_pid).map_err(&err)?;
        if let Some(helper) = meta.supervisor_pid {
            self.backend
                .track_helper(helper, Some(key.0))
                .map_err(&err)?;
        }
        // Facts naming this main process on the first tracking were written by the process
        // itself between fork and exec (see `supervisor::child`): it was seen from the start.
        let self_registered = existing.is_some_and(|f| f.main_pid == meta.main_pid);
        let before_exec = self_registered || self.is_pre_exec(meta.main_pid);
        let main = meta.main_pid;
        self.register(key, meta.clone(), before_exec);
        lock(&self.state).seed(key, main, stat.ppid, monotonic_ns());
        // A process that registered itself before its exec could not fork before it either:
        // the probes track every descendant and their records fill the tree, so the scan of
        // /proc (a millisecond or more per pass on a busy host) is only for the other case.
        let processes = 1 + if self_registered {
            0
        } else {
            self.scan(key, &[main]).map_err(&err)?
        };
        Ok(TrackReport {
            processes,
            kernel_facts_reused: existing.is_some_and(|f| f.main_pid == main),
            main_alive: true,
        })
    }

    /// Resumes a task after a driver restart: keeps the pinned kernel state (tracked PIDs,
    /// facts), drops PIDs that died unseen, and adds processes the probes could not see.
    pub fn recover(&self, key: TaskKey, meta: TaskMeta) -> Result<TrackReport, ObserverError> {
        let err = Self::kernel_err(&meta);
        let existing = self.backend.facts(key.0).map_err(&err)?;
        let main_alive = self.main_alive(&meta);
        let main = meta.main_pid;
        if existing.is_none() {
            let facts = TaskFacts {
                main_pid: main,
                tracked_ktime_ns: monotonic_ns(),
                ..TaskFacts::default()
            };
            self.backend.put_facts(key.0, &facts).map_err(&err)?;
        }
        if let Some(helper) = meta.supervisor_pid {
            self.backend
                .track_helper(helper, Some(key.0))
                .map_err(&err)?;
        }
        let mut roots = Vec::new();
        let now = monotonic_ns();
        for (pid, _) in self
            .backend
            .tracked()
            .map_err(&err)?
            .into_iter()
            .filter(|(_, k)| *k == key.0)
        {
            match self.proc.stat(pid).filter(ProcStat::is_alive) {
                Some(st) => {
                    lock(&self.state).seed(key, pid, st.ppid, now);
                    roots.push(pid);
                }
                // It ended while nothing removed it (probes were detached).
                None => self.backend.untrack_pid(pid).map_err(&err)?,
            }
        }
        if let Some(st) = &main_alive
            && !roots.contains(&main)
        {
            self.backend.track_pid(main, key.0).map_err(&err)?;
            self.track_threads(main).map_err(&err)?;
            lock(&self.state).seed(key, main, st.ppid, now);
            roots.push(main);
        }
        let found = self.scan(key, &roots).map_err(&err)?;
        drop(err);
        self.register(key, meta, false);
        if let Some(k) = existing {
            // Make the pinned record's view (e.g. an exit seen while we were away) ours at once.
            lock(&self.state).classify_merge(key, &k);
        }
        Ok(TrackReport {
            processes: roots.len() + found,
            kernel_facts_reused: existing.is_some(),
            main_alive: main_alive.is_some(),
        })
    }

    fn register(&self, key: TaskKey, meta: TaskMeta, before_exec: bool) {
        let mut state = lock(&self.state);
        let queued = state.register(key, meta, before_exec, monotonic_ns());
        self.publish(state, queued);
    }

    /// True when `pid` still runs this driver's binary (the supervisor's child before exec).
    fn is_pre_exec(&self, pid: u32) -> bool {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        exe.is_some() && exe == self.self_exe
    }

    /// Tracks the live descendants of `roots` found in procfs; returns how many were added.
    fn scan(&self, key: TaskKey, roots: &[u32]) -> Result<usize, ProbeError> {
        let mut known: Vec<u32> = roots.to_vec();
        let mut added = 0;
        for _ in 0..SCAN_PASSES {
            let new: Vec<(u32, u32)> = descendants(self.proc.as_ref(), &known)
                .into_iter()
                .filter(|(pid, _)| !known.contains(pid))
                .collect();
            if new.is_empty() {
                break;
            }
            for (pid, ppid) in new {
                self.backend.track_pid(pid, key.0)?;
                self.track_threads(pid)?;
                lock(&self.state).seed(key, pid, ppid, monotonic_ns());
                known.push(pid);
                added += 1;
            }
        }
        Ok(added)
    }

    /// Registers the threads `pid` already has (signals aimed at them are then attributed).
    fn track_threads(&self, pid: u32) -> Result<(), ProbeError> {
        for tid in self.proc.threads(pid) {
            self.backend.track_thread(tid, pid)?;
        }
        Ok(())
    }
}
