//! Questions asked of the observer's state: exit classification (with the facts merged from the
//! kernel's pinned record) and process-tree snapshots refreshed from procfs.

use std::collections::HashSet;

use bpfexec_common::TaskFacts;

use super::{ObserverState, TaskKey};
use crate::observer::{
    classify::{ClassifyContext, classify},
    facts::{OomSeen, SignalSeen},
    memcg::OomScope,
    proc::ProcStat,
    reason::{ExitReason, MainExit, Sender},
    tree::ProcessTree,
};

impl ObserverState {
    /// Folds the kernel's facts record of `key` into what was observed.
    pub fn classify_merge(&mut self, key: TaskKey, kernel: &TaskFacts) {
        if let Some(t) = self.tasks.get_mut(&key) {
            t.facts.merge_kernel(kernel);
            if t.facts.main_exit_ktime.is_some() {
                t.main_exit_seen = true;
            }
        }
    }

    /// Classifies the end of task `key` from what was observed and the kernel's record.
    pub fn classify(
        &mut self,
        key: TaskKey,
        exit: &MainExit,
        kernel: Option<&TaskFacts>,
        now: u64,
    ) -> ExitReason {
        let Some(t) = self.tasks.get_mut(&key) else {
            return ExitReason::from_wait_status(exit);
        };
        if let Some(k) = kernel {
            t.facts.merge_kernel(k);
        }
        let facts = t.facts.clone();
        let ctx = Ctx {
            state: self,
            key,
            now,
        };
        classify(&facts, exit, &ctx)
    }

    /// The end of task `key` whose helper (`helper_pid`) ended without recording the main
    /// process's status: the main process's end as the probes saw it (a SIGKILL before its exit,
    /// which is how a pid namespace dies with its init; other ends leave the status unknown) and
    /// who signalled the helper. None while the main process has not been seen to exit.
    pub fn classify_helper_death(
        &mut self,
        key: TaskKey,
        helper_pid: u32,
        kernel: Option<&TaskFacts>,
        now: u64,
    ) -> Option<(Option<MainExit>, ExitReason)> {
        let t = self.tasks.get_mut(&key)?;
        if let Some(k) = kernel {
            t.facts.merge_kernel(k);
        }
        let facts = t.facts.clone();
        let end = facts.main_exit_ktime?;
        let main = facts
            .signals
            .get(&libc::SIGKILL)
            .filter(|s| s.ktime_ns <= end)
            .map(|_| MainExit::new(128 + libc::SIGKILL, libc::SIGKILL, false));
        let task_end = main.as_ref().map(|m| {
            let ctx = Ctx {
                state: self,
                key,
                now,
            };
            Box::new(classify(&facts, m, &ctx))
        });
        let helper_sender = facts
            .helper_signal
            .as_ref()
            .map(|s| self.sender_of(key, helper_pid, s));
        let reason = ExitReason::HelperDied {
            helper_pid,
            helper_signal: facts.helper_signal.as_ref().map(|s| s.sig),
            helper_sender,
            task_end,
        };
        Some((main, reason))
    }

    /// Snapshot of task `key`'s processes, with start times and parents refreshed from procfs.
    pub fn tree(&self, key: TaskKey) -> Option<ProcessTree> {
        let t = self.tasks.get(&key)?;
        let meta = t.meta.clone().unwrap_or_default();
        let (mut processes, _, execs, execs_dropped, exited) = t.table.snapshot();
        for p in &mut processes {
            if let Some(st) = self.proc.stat(p.pid).filter(ProcStat::is_alive) {
                p.start_time_ticks = Some(st.start_time);
                p.ppid = st.ppid;
            }
        }
        let pids: HashSet<u32> = processes.iter().map(|p| p.pid).collect();
        let roots = processes
            .iter()
            .filter(|p| !pids.contains(&p.ppid))
            .map(|p| p.pid)
            .collect();
        Some(ProcessTree {
            task_key: key.to_string(),
            task_id: meta.task_id,
            alloc_id: meta.alloc_id,
            task_name: meta.task_name,
            main_pid: t.facts.main_pid,
            processes,
            roots,
            execs,
            execs_dropped,
            exited,
        })
    }
}

struct Ctx<'a> {
    state: &'a ObserverState,
    key: TaskKey,
    now: u64,
}

impl ClassifyContext for Ctx<'_> {
    fn sender(&self, s: &SignalSeen) -> Sender {
        let main = self
            .state
            .tasks
            .get(&self.key)
            .map_or(0, |t| t.facts.main_pid);
        self.state.sender_of(self.key, main, s)
    }

    fn oom_scope(&self, o: &OomSeen) -> OomScope {
        // Only known from the kernel record (e.g. it happened while the driver was down):
        // any limit hit the cgroup ever recorded counts.
        let Some(t) = self.state.tasks.get(&self.key) else {
            return OomScope::Unknown;
        };
        let mut watch = t.memcg.clone();
        watch.forget_baseline();
        watch.scope_of_kill(self.state.cgroups.as_ref(), o.ktime_ns)
    }

    fn parent_of(&self, pid: u32) -> Option<u32> {
        let t = self.state.tasks.get(&self.key)?;
        t.table
            .get(pid)
            .map(|n| n.ppid)
            .or_else(|| t.exited_parents.get(&pid).copied())
    }

    fn tracked_before_exec(&self) -> bool {
        self.state
            .tasks
            .get(&self.key)
            .is_some_and(|t| t.tracked_before_exec)
    }

    fn any_exec(&self) -> bool {
        self.state
            .tasks
            .get(&self.key)
            .is_some_and(|t| t.table.exec_count() > 0)
    }

    fn now_ktime(&self) -> u64 {
        self.now
    }

    fn oom_window_ns(&self) -> u64 {
        self.state.config.oom_window_ns
    }
}
