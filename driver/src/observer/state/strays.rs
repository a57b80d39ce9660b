//! Finding stray processes in the observer's state, through the procfs seam: escapes (a process
//! of a running task whose `/proc/<pid>/cgroup` line for the task's hierarchy is outside the
//! task's own cgroup) and leaks (tracked processes still alive after the main process ended).
//! A process that is a zombie, has begun `do_exit` (the kernel may already show it in the root
//! cgroup) or has a SIGKILL pending is on its way out and is never a stray.

use std::sync::Arc;

use super::{ObserverState, TaskKey};
use crate::cgroups::CgroupHome;
use crate::observer::{
    error::ReapError,
    notice::Notice,
    proc::{ProcSource, ProcStat},
    reap::Reaped,
    stray::{Stray, escape_notice, leak_notice},
};
use crate::telemetry::fact::Fact;

/// Where one process stands relative to its task's cgroup.
enum Verdict {
    /// In the task's cgroup or below it.
    Home,
    /// Outside it, alive and not dying.
    Away(Stray),
    /// Gone, dying, or unreadable: no judgement.
    Unknown,
}

/// Judges `pid` against `home`; the process is read twice so one that exits in between (and
/// whose cgroup the kernel may have rewritten) is not mistaken for an escapee.
fn judge(proc: &dyn ProcSource, home: &CgroupHome, pid: u32) -> Verdict {
    let Some(before) = proc.stat(pid).filter(ProcStat::is_running) else {
        return Verdict::Unknown;
    };
    let Some(text) = proc.cgroup(pid) else {
        return Verdict::Unknown;
    };
    let Some(path) = home.path_in(&text) else {
        return Verdict::Unknown;
    };
    if home.contains(path) {
        return Verdict::Home;
    }
    let Some(after) = proc
        .stat(pid)
        .filter(ProcStat::is_running)
        .filter(|s| s.start_time == before.start_time)
    else {
        return Verdict::Unknown;
    };
    if proc.kill_pending(pid) {
        return Verdict::Unknown;
    }
    Verdict::Away(Stray {
        pid,
        start_time: after.start_time,
        comm: after.comm,
        cgroup: Some(path.to_owned()),
        left: Some(home.clone()),
    })
}

/// Judges `pid` against each of the task's homes: away from any one is away.
fn judge_all(proc: &dyn ProcSource, homes: &[&CgroupHome], pid: u32) -> Verdict {
    let mut verdict = Verdict::Unknown;
    for home in homes {
        match judge(proc, home, pid) {
            Verdict::Away(s) => return Verdict::Away(s),
            Verdict::Home => verdict = Verdict::Home,
            Verdict::Unknown => {}
        }
    }
    verdict
}

impl ObserverState {
    /// True (and the next check scheduled) when the periodic escape check is due at `now`.
    pub fn escape_check_due(&mut self, now: u64) -> bool {
        let every = self.config.escape_check_ns;
        if every == 0 || now < self.next_escape_check_ns {
            return false;
        }
        self.next_escape_check_ns = now.saturating_add(every);
        true
    }

    /// Processes of running tasks that are outside their task's own cgroup now and were not
    /// reported yet. Only tasks with a known cgroup, whose processes were seen in it, count.
    pub fn escape_suspects(&mut self) -> Vec<(TaskKey, Stray)> {
        let proc = Arc::clone(&self.proc);
        let mut out = Vec::new();
        for (key, t) in &mut self.tasks {
            if t.main_exit_seen {
                continue;
            }
            let Some(meta) = t.meta.as_ref() else {
                continue;
            };
            let Some(home) = meta.home.as_ref() else {
                continue;
            };
            let homes: Vec<&CgroupHome> = std::iter::once(home).chain(&meta.other_homes).collect();
            let mut away = Vec::new();
            for pid in t.table.pids() {
                match judge_all(proc.as_ref(), &homes, pid) {
                    Verdict::Home => t.home_seen = true,
                    Verdict::Away(s) if !t.escapes_reported.contains(&(s.pid, s.start_time)) => {
                        away.push(s);
                    }
                    Verdict::Away(_) | Verdict::Unknown => {}
                }
            }
            let table = &t.table;
            t.escapes_reported
                .retain(|(pid, _)| table.get(*pid).is_some());
            if t.home_seen {
                out.extend(away.into_iter().map(|s| (*key, s)));
            }
        }
        out
    }

    /// Records that `stray` of task `key` escaped and what killing it did; returns the notice
    /// (rate-limited like every live notice; the escapee is never reported again).
    pub fn report_escape(
        &mut self,
        key: TaskKey,
        stray: &Stray,
        result: &Result<Reaped, ReapError>,
        now: u64,
    ) -> Option<Notice> {
        let t = self.tasks.get_mut(&key)?;
        t.escapes_reported.insert((stray.pid, stray.start_time));
        let (message, annotations) = escape_notice(stray, result)?;
        let at = self.wall(now);
        self.emit_fact(Fact::Escaped {
            key,
            at,
            pid: stray.pid,
            comm: stray.comm.clone(),
            cgroup: stray.cgroup.clone().unwrap_or_default(),
        });
        self.emit(key, message, annotations, now)
    }

    /// Of `pids` (the processes the kernel still tracks for task `key`), those that are alive,
    /// not dying and not the main process: the task's leaks once its main process has ended.
    pub fn leak_suspects(&self, key: TaskKey, pids: &[u32]) -> Vec<Stray> {
        let main = self
            .tasks
            .get(&key)
            .map(|t| t.facts.main_pid)
            .filter(|p| *p != 0);
        pids.iter()
            .copied()
            .filter(|pid| Some(*pid) != main)
            .filter_map(|pid| {
                let st = self.proc.stat(pid).filter(ProcStat::is_running)?;
                (!self.proc.kill_pending(pid)).then_some(Stray {
                    pid,
                    start_time: st.start_time,
                    comm: st.comm,
                    cgroup: None,
                    left: None,
                })
            })
            .collect()
    }

    /// The one leak notice of task `key` (not rate-limited: at most one per task end).
    pub fn leak_report(
        &mut self,
        key: TaskKey,
        results: &[(Stray, Result<Reaped, ReapError>)],
        now: u64,
    ) -> Option<Notice> {
        let (message, annotations) = leak_notice(results)?;
        let pids = results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Reaped::Killed) | Err(_)))
            .map(|(s, _)| (s.pid, s.comm.clone()))
            .collect();
        let at = self.wall(now);
        self.emit_fact(Fact::Leaked { key, at, pids });
        let meta = self.meta_of(key)?;
        Some(Notice::new(key, meta, message, annotations))
    }
}
