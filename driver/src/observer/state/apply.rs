//! Applying probe events to the observer's state: process tree, main-process facts, OOM kills
//! (scope decided on the spot from the memory cgroup), and signals held for notices.

use std::{collections::BTreeMap, sync::Arc};

use bpfexec_common::{CLONE_PARENT, signal_result};

use super::{DeferredOom, ObserverState, TaskKey};
use crate::observer::{
    facts::{OomSeen, SignalSeen},
    notice::{Notice, PendingSignal, child_oom},
    reason::SenderClass,
    signals::{is_crash, is_quiet, may_terminate},
};
use crate::probes::ProcessEvent;
use crate::telemetry::fact::{Fact, ProcessFact};

/// Signals held per task at most.
const MAX_PENDING: usize = 256;
/// Of those, signals held only to learn whether they killed a child (no notice).
const MAX_QUIET_PENDING: usize = 64;
/// Notices kept for a task the driver has not claimed yet.
const MAX_QUEUED: usize = 32;
/// Parents of exited processes remembered per task.
const MAX_EXITED_PARENTS: usize = 4096;

impl ObserverState {
    /// Applies one probe event; returns the notices it makes due.
    pub fn apply(&mut self, ev: &ProcessEvent) -> Vec<Notice> {
        let now = ev.ktime_ns();
        let mut out = Vec::new();
        match ev {
            ProcessEvent::Fork {
                task,
                parent_pid,
                child_pid,
                clone_flags,
                child_comm,
                ..
            } => {
                let at = self.wall_ms(now);
                let t = self.entry(TaskKey(*task), now);
                // CLONE_PARENT: the new process is a sibling of its creator.
                let parent = if clone_flags & CLONE_PARENT != 0 {
                    t.table.get(*parent_pid).map_or(*parent_pid, |p| p.ppid)
                } else {
                    *parent_pid
                };
                t.table.fork(parent, *child_pid, child_comm.clone(), at);
                let fact = ProcessFact::Fork {
                    parent,
                    child: *child_pid,
                    comm: child_comm.clone(),
                };
                self.emit_process(TaskKey(*task), now, fact);
            }
            ProcessEvent::Exec {
                task,
                pid,
                filename,
                comm,
                ..
            } => {
                let file = filename.to_string_lossy().into_owned();
                self.on_exec(TaskKey(*task), *pid, file, comm, now);
            }
            ProcessEvent::Exit {
                task, pid, comm, ..
            } => self.on_exit(TaskKey(*task), *pid, comm, now),
            ProcessEvent::Signal { target_task: 0, .. } => {}
            ProcessEvent::Signal {
                sender_pid,
                sender_uid,
                sender_comm,
                sender_task,
                target_tgid,
                target_comm,
                target_task,
                sig,
                code,
                result,
                ..
            } => {
                if *result == signal_result::DELIVERED || *result == signal_result::LOSE_INFO {
                    let seen = SignalSeen {
                        ktime_ns: now,
                        sig: *sig,
                        code: *code,
                        sender_pid: *sender_pid,
                        sender_uid: *sender_uid,
                        sender_comm: sender_comm.clone(),
                        sender_task: *sender_task,
                    };
                    self.on_signal(TaskKey(*target_task), *target_tgid, target_comm, seen);
                }
            }
            ProcessEvent::OomVictim {
                task,
                pid,
                comm,
                anon_rss_kb,
                file_rss_kb,
                shmem_rss_kb,
                ..
            } => {
                let rss_kb = anon_rss_kb + file_rss_kb + shmem_rss_kb;
                out.extend(self.on_oom(TaskKey(*task), *pid, comm, rss_kb, now));
            }
        }
        out.extend(self.flush(now));
        out
    }

    fn on_exec(&mut self, key: TaskKey, pid: u32, file: String, comm: &str, now: u64) {
        let at = self.wall_ms(now);
        // Only trust procfs if it still shows the program this event is about.
        let cmdline = self
            .proc
            .stat(pid)
            .filter(|s| s.comm == comm)
            .and_then(|_| self.proc.cmdline(pid));
        let t = self.entry(key, now);
        if pid == t.facts.main_pid {
            t.facts.main_exec_ktime = Some(now);
        }
        t.table
            .exec(pid, file.clone(), comm.to_owned(), cmdline.clone(), at);
        let fact = ProcessFact::Exec {
            pid,
            filename: file,
            comm: comm.to_owned(),
            cmdline,
        };
        self.emit_process(key, now, fact);
    }

    fn emit_process(&mut self, key: TaskKey, now: u64, fact: ProcessFact) {
        let at = self.wall(now);
        self.emit_fact(Fact::Process { key, at, fact });
    }

    fn on_exit(&mut self, key: TaskKey, pid: u32, comm: &str, now: u64) {
        let fact = ProcessFact::Exit {
            pid,
            comm: comm.to_owned(),
        };
        self.emit_process(key, now, fact);
        let t = self.entry(key, now);
        if let Some(node) = t.table.exit(pid) {
            if t.exited_parents.len() >= MAX_EXITED_PARENTS {
                t.exited_parents.clear();
            }
            t.exited_parents.insert(pid, node.ppid);
        }
        if pid == t.facts.main_pid {
            t.main_exit_seen = true;
            t.facts.main_exit_ktime = Some(now);
        }
        for p in t.pending.iter_mut().filter(|p| p.target_pid == pid) {
            p.fatal = true;
        }
    }

    fn on_signal(&mut self, key: TaskKey, target: u32, target_comm: &str, seen: SignalSeen) {
        let now = seen.ktime_ns;
        let sig = seen.sig;
        let kernel_fault = seen.code > 0;
        let sender = self.sender_of(key, target, &seen);
        let at = self.wall(now);
        let t = self.entry(key, now);
        let is_main = target == t.facts.main_pid;
        if is_main {
            t.facts.record_signal(seen);
        }
        let notify = !is_quiet(sig)
            && match sender.class {
                SenderClass::Host | SenderClass::OtherAllocation { .. } => true,
                SenderClass::Kernel => is_crash(sig) && kernel_fault,
                _ => false,
            };
        // Other signals that may end their target are held too (a bounded few), to learn
        // whether they killed a child; they make no notice.
        let held_quietly = t.pending.iter().filter(|p| !p.notify).count();
        let track = notify || (may_terminate(sig) && held_quietly < MAX_QUIET_PENDING);
        if track && t.pending.len() < MAX_PENDING {
            t.pending.push(PendingSignal {
                ktime_ns: now,
                target_pid: target,
                target_comm: target_comm.to_owned(),
                target_is_main: is_main,
                sig,
                sender: sender.clone(),
                fatal: false,
                notify,
            });
        }
        self.emit_fact(Fact::SignalReceived {
            key,
            at,
            pid: target,
            main: is_main,
            signal: sig,
            sender,
        });
    }

    pub(super) fn on_oom(
        &mut self,
        key: TaskKey,
        victim: u32,
        comm: &str,
        rss_kb: u64,
        now: u64,
    ) -> Option<Notice> {
        let main = self.entry(key, now).facts.main_pid;
        // The victim is (or was, a moment ago) in the cgroup whose limit matters.
        if self.locate_memcg(victim).is_some() {
            self.follow_memcg(key, victim, false, now);
        } else if main != 0 {
            self.follow_memcg(key, main, false, now);
        }
        let cgroups = Arc::clone(&self.cgroups);
        let t = self.entry(key, now);
        if t.meta.is_none() && t.memcg.innermost().is_none() {
            // A backlog record of a task not claimed yet whose processes are gone: its memory
            // cgroup is known once the driver names the task (`register`), which replays this.
            t.deferred_ooms.push(DeferredOom {
                victim,
                comm: comm.to_owned(),
                rss_kb,
                ktime_ns: now,
            });
            return None;
        }
        let scope = t.memcg.scope_of_kill(cgroups.as_ref(), now);
        t.facts.record_oom(OomSeen {
            ktime_ns: now,
            victim_pid: victim,
            comm: comm.to_owned(),
            rss_kb,
            scope: Some(scope.clone()),
        });
        let main = victim == t.facts.main_pid;
        let at = self.wall(now);
        self.emit_fact(Fact::OomKill {
            key,
            at,
            pid: victim,
            comm: comm.to_owned(),
            rss_kb,
            main,
            scope: scope.clone(),
        });
        if main {
            return None;
        }
        let (m, a) = child_oom(victim, comm, rss_kb, &scope);
        self.emit(key, m, a, now)
    }

    /// Emits (or queues, or rate-limits) one notice.
    pub(super) fn emit(
        &mut self,
        key: TaskKey,
        message: String,
        mut annotations: BTreeMap<String, String>,
        now: u64,
    ) -> Option<Notice> {
        let t = self.tasks.get_mut(&key)?;
        let before = t.limit.suppressed;
        if !t.limit.allow(now) {
            return None;
        }
        if before > 0 {
            annotations.insert("suppressed_before".into(), before.to_string());
            t.limit.suppressed = 0;
        }
        if let Some(meta) = &t.meta {
            return Some(Notice::new(key, meta, message, annotations));
        }
        if t.queued.len() < MAX_QUEUED {
            t.queued.push((message, annotations));
        }
        None
    }

    /// Turns held signals that were fatal or are older than the notice delay into notices.
    pub(super) fn flush(&mut self, now: u64) -> Vec<Notice> {
        let delay = self.config.notice_delay_ns;
        let mut due = Vec::new();
        let mut killed = Vec::new();
        for (key, t) in &mut self.tasks {
            if t.pending.is_empty() {
                continue;
            }
            let (ready, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut t.pending)
                .into_iter()
                .partition(|p| p.fatal || p.ktime_ns + delay <= now);
            t.pending = keep;
            for p in &ready {
                let oom_victim = t.facts.ooms.iter().any(|o| o.victim_pid == p.target_pid);
                if p.fatal && !p.target_is_main && !oom_victim {
                    killed.push((*key, p.ktime_ns, p.target_pid, p.sig, p.sender.clone()));
                }
            }
            due.extend(
                ready
                    .iter()
                    .filter(|p| p.notify)
                    .filter_map(PendingSignal::render)
                    .map(|r| (*key, r)),
            );
        }
        for (key, ktime, pid, signal, sender) in killed {
            let at = self.wall(ktime);
            self.emit_fact(Fact::ChildKilled {
                key,
                at,
                pid,
                signal,
                sender,
            });
        }
        due.into_iter()
            .filter_map(|(key, (m, a))| self.emit(key, m, a, now))
            .collect()
    }
}
