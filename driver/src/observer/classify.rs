//! Exit classification: turns a task's facts (signals that reached its main process, OOM kills,
//! execs) and the main process's wait status into an [`ExitReason`]. OOM is reported only when the
//! task ended because of an OOM kill: the main process was the victim, or it died of a kernel
//! SIGKILL right after an OOM kill in the task (group kill), or it exited non-zero right after
//! one of its children was OOM-killed — never because of an unrelated earlier OOM.

use super::facts::{ObservedFacts, OomSeen, SignalSeen};
use super::memcg::OomScope;
use super::reason::{ExitReason, MainExit, Sender, SenderClass};
use super::signals::code;

/// Exit code a shell reports for a child killed by SIGKILL.
const SHELL_SIGKILL_CODE: i32 = 128 + libc::SIGKILL;

/// What classification needs from the observer besides the facts.
pub(crate) trait ClassifyContext {
    /// Who sent a signal, relative to this task.
    fn sender(&self, s: &SignalSeen) -> Sender;
    /// The scope of an OOM kill whose scope was not decided when it happened.
    fn oom_scope(&self, o: &OomSeen) -> OomScope;
    /// Parent of a (possibly exited) process of the task.
    fn parent_of(&self, pid: u32) -> Option<u32>;
    /// The main process was tracked before it exec'd the task's program.
    fn tracked_before_exec(&self) -> bool;
    /// Some process of the task exec'd since tracking began.
    fn any_exec(&self) -> bool;
    /// `CLOCK_MONOTONIC` now, for a main exit the probes did not see.
    fn now_ktime(&self) -> u64;
    /// How close an OOM kill must precede the main's end to be its cause.
    fn oom_window_ns(&self) -> u64;
}

fn oom_reason(
    ctx: &dyn ClassifyContext,
    o: &OomSeen,
    main_process: bool,
    exit: &MainExit,
) -> ExitReason {
    ExitReason::OomKilled {
        scope: o.scope.clone().unwrap_or_else(|| ctx.oom_scope(o)),
        victim_pid: o.victim_pid,
        victim_comm: o.comm.clone(),
        rss_kb: o.rss_kb,
        main_process,
        exit_code: exit.exit_code,
        signal: exit.signal,
    }
}

/// Classifies the end of a task.
pub(crate) fn classify(
    facts: &ObservedFacts,
    exit: &MainExit,
    ctx: &dyn ClassifyContext,
) -> ExitReason {
    if exit.exec_error.is_some() {
        return ExitReason::from_wait_status(exit);
    }
    let end = facts.main_exit_ktime.unwrap_or_else(|| ctx.now_ktime());
    let window = ctx.oom_window_ns();
    let killed =
        exit.signal == libc::SIGKILL || (exit.signal == 0 && exit.exit_code == SHELL_SIGKILL_CODE);

    if killed {
        // The OOM killer picked the main process.
        if let Some(o) = facts.main_oom().filter(|o| o.ktime_ns <= end) {
            return oom_reason(ctx, o, true, exit);
        }
    }
    if exit.signal == libc::SIGKILL {
        // A kernel SIGKILL right after an OOM kill elsewhere in the task: the OOM killer took
        // the whole group (memory.oom.group) or the kill reached the main process through it.
        let kernel_kill = facts
            .signals
            .get(&libc::SIGKILL)
            .filter(|s| s.code == code::SI_KERNEL && s.ktime_ns <= end);
        if let Some(k) = kernel_kill
            && let Some(o) = facts.oom_before(k.ktime_ns, window)
        {
            return oom_reason(ctx, o, o.victim_pid == facts.main_pid, exit);
        }
    }
    if exit.signal != 0 {
        let seen = facts
            .signals
            .get(&exit.signal)
            .filter(|s| s.ktime_ns <= end);
        let sender = seen.map(|s| ctx.sender(s));
        let escalation_after = match (&sender, seen) {
            (Some(s), Some(kill))
                if exit.signal == libc::SIGKILL && s.class == SenderClass::Driver =>
            {
                facts
                    .signals
                    .values()
                    .filter(|e| e.sig != libc::SIGKILL && e.ktime_ns < kill.ktime_ns)
                    .filter(|e| ctx.sender(e).class == SenderClass::Driver)
                    .max_by_key(|e| e.ktime_ns)
                    .map(|e| e.sig)
            }
            _ => None,
        };
        return ExitReason::Signaled {
            signal: exit.signal,
            sender,
            core_dumped: exit.core_dumped,
            escalation_after,
        };
    }
    if exit.exit_code != 0 {
        // The main process gave up right after a child of it was OOM-killed.
        if let Some(o) = facts.oom_before(end, window).filter(|o| {
            o.victim_pid != facts.main_pid
                && (ctx.parent_of(o.victim_pid) == Some(facts.main_pid)
                    || exit.exit_code == SHELL_SIGKILL_CODE)
        }) {
            return oom_reason(ctx, o, false, exit);
        }
        // Tracked before its exec, and nothing in the task ever exec'd: the program never ran
        // (a launcher that forks a child which execs does not count as a failure).
        if ctx.tracked_before_exec() && facts.main_exec_ktime.is_none() && !ctx.any_exec() {
            return ExitReason::ExecFailed {
                exit_code: exit.exit_code,
                detail: None,
            };
        }
    }
    ExitReason::Exited {
        code: exit.exit_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    struct Ctx {
        parent: Option<u32>,
        before_exec: bool,
        any_exec: bool,
    }

    impl ClassifyContext for Ctx {
        fn sender(&self, s: &SignalSeen) -> Sender {
            let class = match s.sender_pid {
                1 => SenderClass::Driver,
                _ if s.code == code::SI_KERNEL => SenderClass::Kernel,
                _ => SenderClass::Host,
            };
            Sender {
                pid: s.sender_pid,
                comm: s.sender_comm.clone(),
                uid: Some(s.sender_uid),
                class,
                code: s.code,
            }
        }
        fn oom_scope(&self, _: &OomSeen) -> OomScope {
            OomScope::System
        }
        fn parent_of(&self, _: u32) -> Option<u32> {
            self.parent
        }
        fn tracked_before_exec(&self) -> bool {
            self.before_exec
        }
        fn any_exec(&self) -> bool {
            self.any_exec
        }
        fn now_ktime(&self) -> u64 {
            100 * S
        }
        fn oom_window_ns(&self) -> u64 {
            5 * S
        }
    }

    const CTX: Ctx = Ctx {
        parent: Some(10),
        before_exec: false,
        any_exec: false,
    };

    fn sig(facts: &mut ObservedFacts, t: u64, sig: i32, code: i32, pid: u32) {
        facts.record_signal(SignalSeen {
            ktime_ns: t,
            sig,
            code,
            sender_pid: pid,
            sender_uid: 0,
            sender_comm: format!("p{pid}"),
            sender_task: 0,
        });
    }

    fn oom(facts: &mut ObservedFacts, t: u64, victim: u32) {
        facts.record_oom(OomSeen {
            ktime_ns: t,
            victim_pid: victim,
            comm: "hog".into(),
            rss_kb: 512 * 1024,
            scope: Some(OomScope::Cgroup {
                cgroup: "/t".into(),
            }),
        });
    }

    fn facts(exit_at: u64) -> ObservedFacts {
        let mut f = ObservedFacts::new(10);
        f.main_exec_ktime = Some(1);
        f.main_exit_ktime = Some(exit_at);
        f
    }

    #[test]
    fn plain_exits() {
        let f = facts(10 * S);
        assert_eq!(
            classify(&f, &MainExit::new(0, 0, false), &CTX),
            ExitReason::Exited { code: 0 }
        );
        assert_eq!(
            classify(&f, &MainExit::new(3, 0, false), &CTX),
            ExitReason::Exited { code: 3 }
        );
    }

    #[test]
    fn main_oom_victim_is_oom() {
        let mut f = facts(10 * S);
        oom(&mut f, 9 * S, 10);
        sig(&mut f, 9 * S, 9, code::SI_KERNEL, 77);
        let r = classify(&f, &MainExit::new(137, 9, false), &CTX);
        assert!(
            matches!(
                r,
                ExitReason::OomKilled {
                    main_process: true,
                    victim_pid: 10,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn earlier_child_oom_and_clean_exit_is_not_oom() {
        let mut f = facts(60 * S);
        oom(&mut f, 10 * S, 11);
        assert_eq!(
            classify(&f, &MainExit::new(0, 0, false), &CTX),
            ExitReason::Exited { code: 0 }
        );
        // Even a failing exit long after the child OOM is not blamed on it.
        assert_eq!(
            classify(&f, &MainExit::new(1, 0, false), &CTX),
            ExitReason::Exited { code: 1 }
        );
        // Nor is a later SIGTERM death.
        sig(&mut f, 59 * S, 15, 0, 4242);
        assert!(matches!(
            classify(&f, &MainExit::new(143, 15, false), &CTX),
            ExitReason::Signaled {
                signal: 15,
                sender: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn main_exits_because_child_was_oom_killed() {
        let mut f = facts(11 * S);
        oom(&mut f, 10 * S, 11);
        let r = classify(&f, &MainExit::new(137, 0, false), &CTX);
        assert!(
            matches!(
                r,
                ExitReason::OomKilled {
                    main_process: false,
                    victim_pid: 11,
                    exit_code: 137,
                    ..
                }
            ),
            "{r:?}"
        );
        // Not a child of main and not the shell's 137: exits 1 -> plain exit.
        let ctx = Ctx {
            parent: Some(99),
            before_exec: false,
            any_exec: false,
        };
        assert_eq!(
            classify(&f, &MainExit::new(1, 0, false), &ctx),
            ExitReason::Exited { code: 1 }
        );
    }

    #[test]
    fn kernel_sigkill_after_child_oom_is_group_oom() {
        let mut f = facts(11 * S);
        oom(&mut f, 10 * S, 11);
        sig(&mut f, 10 * S + 5, 9, code::SI_KERNEL, 55);
        let r = classify(&f, &MainExit::new(137, 9, false), &CTX);
        assert!(
            matches!(
                r,
                ExitReason::OomKilled {
                    main_process: false,
                    ..
                }
            ),
            "{r:?}"
        );
        // A SIGKILL from a host process after a child OOM is a kill, not an OOM.
        let mut f = facts(11 * S);
        oom(&mut f, 10 * S, 11);
        sig(&mut f, 10 * S + 5, 9, 0, 4242);
        assert!(matches!(
            classify(&f, &MainExit::new(137, 9, false), &CTX),
            ExitReason::Signaled { .. }
        ));
    }

    #[test]
    fn driver_escalation_is_recognised() {
        let mut f = facts(20 * S);
        sig(&mut f, 10 * S, 15, 0, 1);
        sig(&mut f, 15 * S, 9, 0, 1);
        let r = classify(&f, &MainExit::new(137, 9, false), &CTX);
        let ExitReason::Signaled {
            escalation_after,
            sender: Some(s),
            ..
        } = &r
        else {
            panic!("{r:?}")
        };
        assert_eq!(
            (*escalation_after, &s.class),
            (Some(15), &SenderClass::Driver)
        );
        let (oom, msg, a) = r.to_nomad();
        assert!(!oom);
        assert!(
            msg.contains("kill_timeout escalation after SIGTERM"),
            "{msg}"
        );
        assert_eq!(a["escalation_after"], "SIGTERM");
    }

    #[test]
    fn signal_after_exit_is_not_the_cause_and_unknown_sender_is_none() {
        let mut f = facts(10 * S);
        sig(&mut f, 11 * S, 15, 0, 4242);
        assert!(matches!(
            classify(&f, &MainExit::new(143, 15, false), &CTX),
            ExitReason::Signaled { sender: None, .. }
        ));
    }

    #[test]
    fn exec_failures() {
        let mut f = facts(10 * S);
        f.main_exec_ktime = None;
        let ctx = Ctx {
            parent: None,
            before_exec: true,
            any_exec: false,
        };
        assert_eq!(
            classify(&f, &MainExit::new(127, 0, false), &ctx),
            ExitReason::ExecFailed {
                exit_code: 127,
                detail: None
            }
        );
        // Exec seen: a real exit code.
        f.main_exec_ktime = Some(2);
        assert_eq!(
            classify(&f, &MainExit::new(127, 0, false), &ctx),
            ExitReason::Exited { code: 127 }
        );
        // A launcher whose child exec'd the program: not an exec failure.
        f.main_exec_ktime = None;
        let launcher = Ctx {
            parent: None,
            before_exec: true,
            any_exec: true,
        };
        assert_eq!(
            classify(&f, &MainExit::new(127, 0, false), &launcher),
            ExitReason::Exited { code: 127 }
        );
        // The launcher's own report wins.
        let mut exit = MainExit::new(127, 0, false);
        exit.exec_error = Some("No such file or directory".into());
        assert!(matches!(
            classify(&f, &exit, &CTX),
            ExitReason::ExecFailed {
                detail: Some(_),
                ..
            }
        ));
    }
}
