//! What the observer knows about a task's main process and its OOM kills: built from live events
//! and merged with the probes' pinned `FACTS` record, which the kernel keeps up to date even
//! when ring-buffer records are lost or no driver is running.

use std::collections::{BTreeMap, VecDeque};

use bpfexec_common::{OomFact, SignalFact, TaskFacts};

use super::memcg::OomScope;
use crate::probes::events::c_string;

/// OOM kills remembered per task.
const OOM_HISTORY: usize = 32;

/// One generation of a signal aimed at the main process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalSeen {
    pub ktime_ns: u64,
    pub sig: i32,
    pub code: i32,
    pub sender_pid: u32,
    pub sender_uid: u32,
    pub sender_comm: String,
    /// Task key of the sender (0: not a task process).
    pub sender_task: u64,
}

impl SignalSeen {
    fn from_fact(f: &SignalFact) -> Self {
        Self {
            ktime_ns: f.ktime_ns,
            sig: f.sig,
            code: f.code,
            sender_pid: f.sender_pid,
            sender_uid: f.sender_uid,
            sender_comm: c_string(&f.sender_comm),
            sender_task: f.sender_task,
        }
    }
}

/// One OOM kill of a process of the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomSeen {
    pub ktime_ns: u64,
    pub victim_pid: u32,
    pub comm: String,
    /// anon + file + shmem RSS at the kill, KiB.
    pub rss_kb: u64,
    /// Decided when the event was handled; `None` when only known from the kernel record.
    pub scope: Option<OomScope>,
}

impl OomSeen {
    fn from_fact(f: &OomFact) -> Self {
        Self {
            ktime_ns: f.ktime_ns,
            victim_pid: f.victim_pid,
            comm: c_string(&f.comm),
            rss_kb: f.anon_rss_kb + f.file_rss_kb + f.shmem_rss_kb,
            scope: None,
        }
    }
}

/// The observer's facts about one task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedFacts {
    pub main_pid: u32,
    /// Last successful exec of the main process since tracking.
    pub main_exec_ktime: Option<u64>,
    pub main_exit_ktime: Option<u64>,
    /// Per signal number, the last generation that reached the main process.
    pub signals: BTreeMap<i32, SignalSeen>,
    /// Recent OOM kills in the task, oldest first.
    pub ooms: VecDeque<OomSeen>,
    /// The last signal generated for the task's helper (its supervisor or namespace init).
    pub helper_signal: Option<SignalSeen>,
}

impl ObservedFacts {
    #[cfg(test)]
    #[must_use]
    pub fn new(main_pid: u32) -> Self {
        Self {
            main_pid,
            ..Self::default()
        }
    }

    pub fn record_signal(&mut self, seen: SignalSeen) {
        match self.signals.get(&seen.sig) {
            Some(old) if old.ktime_ns > seen.ktime_ns => {}
            _ => {
                self.signals.insert(seen.sig, seen);
            }
        }
    }

    pub fn record_oom(&mut self, seen: OomSeen) {
        if let Some(known) = self
            .ooms
            .iter_mut()
            .find(|o| o.ktime_ns == seen.ktime_ns && o.victim_pid == seen.victim_pid)
        {
            if known.scope.is_none() {
                known.scope = seen.scope;
            }
            return;
        }
        let at = self
            .ooms
            .iter()
            .position(|o| o.ktime_ns > seen.ktime_ns)
            .unwrap_or(self.ooms.len());
        self.ooms.insert(at, seen);
        while self.ooms.len() > OOM_HISTORY {
            self.ooms.pop_front();
        }
    }

    /// Folds in the kernel's record: anything it saw that the event stream missed.
    pub fn merge_kernel(&mut self, k: &TaskFacts) {
        if self.main_pid == 0 {
            self.main_pid = k.main_pid;
        }
        let later = |a: Option<u64>, b: u64| match (a, b) {
            (a, 0) => a,
            (Some(a), b) => Some(a.max(b)),
            (None, b) => Some(b),
        };
        self.main_exec_ktime = later(self.main_exec_ktime, k.main_exec_ktime_ns);
        self.main_exit_ktime = later(self.main_exit_ktime, k.main_exit_ktime_ns);
        for f in k.signals.iter().filter(|f| f.ktime_ns != 0) {
            self.record_signal(SignalSeen::from_fact(f));
        }
        for f in [&k.last_oom, &k.main_oom] {
            if f.ktime_ns != 0 {
                self.record_oom(OomSeen::from_fact(f));
            }
        }
        if k.helper_signal.ktime_ns != 0
            && self
                .helper_signal
                .as_ref()
                .is_none_or(|h| h.ktime_ns <= k.helper_signal.ktime_ns)
        {
            self.helper_signal = Some(SignalSeen::from_fact(&k.helper_signal));
        }
    }

    /// The OOM kill of the main process, if any.
    #[must_use]
    pub fn main_oom(&self) -> Option<&OomSeen> {
        self.ooms
            .iter()
            .rev()
            .find(|o| o.victim_pid == self.main_pid)
    }

    /// The latest OOM kill at or before `ktime` and at most `window_ns` before it.
    #[must_use]
    pub fn oom_before(&self, ktime: u64, window_ns: u64) -> Option<&OomSeen> {
        self.ooms
            .iter()
            .rev()
            .find(|o| o.ktime_ns <= ktime && ktime - o.ktime_ns <= window_ns)
    }
}

#[cfg(test)]
mod tests {
    use bpfexec_common::COMM_LEN;

    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn kernel_facts_fill_gaps_and_newer_signals_win() {
        let mut f = ObservedFacts::new(10);
        f.record_signal(SignalSeen {
            ktime_ns: 50,
            sig: 15,
            code: 0,
            sender_pid: 1,
            sender_uid: 0,
            sender_comm: "old".into(),
            sender_task: 0,
        });
        let mut k = TaskFacts {
            main_pid: 10,
            main_exit_ktime_ns: 300,
            ..TaskFacts::default()
        };
        k.signals[15] = SignalFact {
            ktime_ns: 100,
            sig: 15,
            sender_pid: 4242,
            sender_comm: comm("kill-bot"),
            ..SignalFact::default()
        };
        k.signals[9] = SignalFact {
            ktime_ns: 40,
            sig: 9,
            sender_pid: 7,
            ..SignalFact::default()
        };
        k.last_oom = OomFact {
            ktime_ns: 200,
            victim_pid: 11,
            anon_rss_kb: 1000,
            file_rss_kb: 24,
            comm: comm("tail"),
            ..OomFact::default()
        };
        f.merge_kernel(&k);
        f.merge_kernel(&k);
        assert_eq!(f.signals[&15].sender_comm, "kill-bot");
        assert_eq!(f.signals[&9].sender_pid, 7);
        assert_eq!(f.main_exit_ktime, Some(300));
        assert_eq!(f.main_exec_ktime, None);
        assert_eq!(f.ooms.len(), 1, "merging twice does not duplicate");
        assert_eq!(f.ooms[0].rss_kb, 1024);
        assert!(f.main_oom().is_none());
        assert!(f.oom_before(250, 100).is_some());
        assert!(f.oom_before(250, 10).is_none());
        assert!(f.oom_before(150, 1000).is_none());
    }

    #[test]
    fn oom_history_is_bounded_and_ordered() {
        let mut f = ObservedFacts::new(1);
        for t in (1..=40).rev() {
            f.record_oom(OomSeen {
                ktime_ns: t,
                victim_pid: 2,
                comm: "x".into(),
                rss_kb: 1,
                scope: None,
            });
        }
        assert_eq!(f.ooms.len(), OOM_HISTORY);
        assert!(
            f.ooms
                .iter()
                .zip(f.ooms.iter().skip(1))
                .all(|(a, b)| a.ktime_ns < b.ktime_ns)
        );
    }
}
