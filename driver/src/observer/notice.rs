//! Live notices while a task runs (forwarded as Nomad task events): a child process OOM-killed,
//! a signal from outside the task that the target survived or that killed a child, a child that
//! crashed. Signals are held briefly to learn whether they were fatal; notices are rate-limited
//! per task so a signal storm cannot flood Nomad's event list.

use std::collections::BTreeMap;

use serde::Serialize;

use super::key::{TaskKey, TaskMeta};
use super::memcg::OomScope;
use super::reason::{Sender, SenderClass, describe_sender, insert_sender, scope_text};
use super::signals::{code_description, signal_name};
use crate::telemetry::fact::Fact;

/// Notices a task may emit in a burst.
const BURST: u32 = 20;
/// One more notice becomes available every this many nanoseconds.
const REFILL_NS: u64 = 3_000_000_000;

/// A task event produced while the task runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub task_key: TaskKey,
    pub task_id: String,
    pub alloc_id: String,
    pub task_name: String,
    pub message: String,
    pub annotations: BTreeMap<String, String>,
}

impl Notice {
    pub(crate) fn new(
        key: TaskKey,
        meta: &TaskMeta,
        message: String,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        Self {
            task_key: key,
            task_id: meta.task_id.clone(),
            alloc_id: meta.alloc_id.clone(),
            task_name: meta.task_name.clone(),
            message,
            annotations,
        }
    }
}

impl From<Notice> for Fact {
    fn from(n: Notice) -> Self {
        Fact::Notice {
            key: n.task_key,
            task_id: n.task_id,
            alloc_id: n.alloc_id,
            task_name: n.task_name,
            message: n.message,
            annotations: n.annotations,
        }
    }
}

impl Notice {
    /// The notice a fact carries, if it is one.
    #[must_use]
    pub fn from_fact(f: &Fact) -> Option<Self> {
        match f {
            Fact::Notice {
                key,
                task_id,
                alloc_id,
                task_name,
                message,
                annotations,
            } => Some(Self {
                task_key: *key,
                task_id: task_id.clone(),
                alloc_id: alloc_id.clone(),
                task_name: task_name.clone(),
                message: message.clone(),
                annotations: annotations.clone(),
            }),
            _ => None,
        }
    }
}

/// A signal to a task process, held until we know whether the target died of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSignal {
    pub ktime_ns: u64,
    pub target_pid: u32,
    pub target_comm: String,
    pub target_is_main: bool,
    pub sig: i32,
    pub sender: Sender,
    pub fatal: bool,
    /// A notice is due for it (otherwise it is held only to learn whether it was fatal).
    pub notify: bool,
}

impl PendingSignal {
    /// The notice text, or `None` when nothing should be said (the main process died of it: the
    /// exit reason tells that story; a kernel signal the process survived: it handled it).
    pub fn render(&self) -> Option<(String, BTreeMap<String, String>)> {
        let name = signal_name(self.sig);
        let mut a = BTreeMap::new();
        a.insert("signal".to_owned(), name.clone());
        a.insert("target_pid".to_owned(), self.target_pid.to_string());
        a.insert("target_comm".to_owned(), self.target_comm.clone());
        insert_sender(&mut a, &self.sender);
        let target = format!("pid {} ({})", self.target_pid, self.target_comm);
        let message = match (&self.sender.class, self.fatal) {
            (_, true) if self.target_is_main => return None,
            (SenderClass::Kernel, false) => return None,
            (SenderClass::Kernel, true) => {
                a.insert("reason".into(), "child_crashed".into());
                let what = code_description(self.sig, self.sender.code).unwrap_or("kernel signal");
                format!("Child process {target} crashed: {name} ({what})")
            }
            (_, true) => {
                a.insert("reason".into(), "child_killed".into());
                format!(
                    "Child process {target} was killed by {name} {}",
                    describe_sender(self.sig, &self.sender)
                )
            }
            (_, false) => {
                a.insert("reason".into(), "signal_received".into());
                format!(
                    "{} {target} received {name} {} and kept running",
                    if self.target_is_main {
                        "Main process"
                    } else {
                        "Process"
                    },
                    describe_sender(self.sig, &self.sender)
                )
            }
        };
        Some((message, a))
    }
}

/// The notice for an OOM kill of a process that is not the main process.
pub fn child_oom(
    victim_pid: u32,
    comm: &str,
    rss_kb: u64,
    scope: &OomScope,
) -> (String, BTreeMap<String, String>) {
    let mut a = BTreeMap::new();
    a.insert("reason".to_owned(), "child_oom_killed".to_owned());
    a.insert("victim_pid".to_owned(), victim_pid.to_string());
    a.insert("victim_comm".to_owned(), comm.to_owned());
    a.insert("victim_rss_kb".to_owned(), rss_kb.to_string());
    let cause = scope_text(&mut a, scope);
    (
        format!(
            "Child process pid {victim_pid} ({comm}, {} MiB RSS) was OOM-killed ({cause}); the \
             main process was not the victim",
            rss_kb / 1024
        ),
        a,
    )
}

/// Per-task token bucket.
#[derive(Clone, Debug)]
pub struct RateLimit {
    tokens: u32,
    last_ns: u64,
    pub suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            tokens: BURST,
            last_ns: 0,
            suppressed: 0,
        }
    }
}

impl RateLimit {
    /// Takes a token at `now_ns`; false (and counted as suppressed) when none is left.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let refill = now_ns.saturating_sub(self.last_ns) / REFILL_NS;
        if refill > 0 {
            self.tokens = (self.tokens + u32::try_from(refill).unwrap_or(u32::MAX)).min(BURST);
            self.last_ns = now_ns;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(class: SenderClass, code: i32) -> Sender {
        Sender {
            pid: 4242,
            comm: "kill-bot".into(),
            uid: Some(0),
            class,
            code,
        }
    }

    fn pending(class: SenderClass, sig: i32, code: i32, main: bool, fatal: bool) -> PendingSignal {
        PendingSignal {
            ktime_ns: 1,
            target_pid: 80,
            target_comm: "worker".into(),
            target_is_main: main,
            sig,
            sender: sender(class, code),
            fatal,
            notify: true,
        }
    }

    #[test]
    fn renders_survived_fatal_and_crash() {
        let (m, a) = pending(SenderClass::Host, 10, 0, true, false)
            .render()
            .expect("notice");
        assert_eq!(
            m,
            "Main process pid 80 (worker) received SIGUSR1 from pid 4242 (kill-bot, uid 0), a \
             host process and kept running"
        );
        assert_eq!(a["reason"], "signal_received");
        assert_eq!(a["sender_class"], "host");
        let (m, _) = pending(SenderClass::Host, 15, 0, false, true)
            .render()
            .expect("notice");
        assert!(
            m.starts_with("Child process pid 80 (worker) was killed by SIGTERM from pid 4242"),
            "{m}"
        );
        assert!(
            pending(SenderClass::Host, 15, 0, true, true)
                .render()
                .is_none()
        );
        let (m, a) = pending(SenderClass::Kernel, 11, 1, false, true)
            .render()
            .expect("notice");
        assert_eq!(
            m,
            "Child process pid 80 (worker) crashed: SIGSEGV (segmentation fault: address not mapped)"
        );
        assert_eq!(a["reason"], "child_crashed");
        assert!(
            pending(SenderClass::Kernel, 11, 1, false, false)
                .render()
                .is_none()
        );
    }

    #[test]
    fn child_oom_text() {
        let (m, a) = child_oom(
            80,
            "tail",
            30 * 1024,
            &OomScope::Cgroup {
                cgroup: "/t".into(),
            },
        );
        assert_eq!(
            m,
            "Child process pid 80 (tail, 30 MiB RSS) was OOM-killed (memory limit of cgroup /t); \
             the main process was not the victim"
        );
        assert_eq!(a["oom_scope"], "cgroup");
    }

    #[test]
    fn rate_limit_bursts_then_refills() {
        let mut r = RateLimit::default();
        assert!((0..BURST).all(|_| r.allow(0)));
        assert!(!r.allow(1));
        assert_eq!(r.suppressed, 1);
        assert!(r.allow(REFILL_NS * 2));
        assert!(r.allow(REFILL_NS * 2));
        assert!(!r.allow(REFILL_NS * 2));
    }
}
