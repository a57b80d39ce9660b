//! Facts about a task run that arrive before the sink knows the run (the probes see a task's
//! first exec before StartTask returns; after a restart the pinned ring buffer's backlog comes
//! before RecoverTask), held in bounds until its start or recovery fact, then replayed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::fact::Fact;
use crate::observer::TaskKey;

/// Facts held per task run, and runs held for.
const PER_RUN: usize = 512;
const RUNS: usize = 256;
/// Facts of a run that never started here (a backlog of a task destroyed while no plugin ran)
/// are given up after this long.
const TTL: Duration = Duration::from_secs(120);

#[derive(Default)]
pub struct Pending {
    held: HashMap<TaskKey, (Instant, Vec<Fact>)>,
}

impl Pending {
    /// Holds `fact` (dropped when the bounds are reached).
    pub fn hold(&mut self, fact: &Fact) {
        let key = fact.key();
        if self.held.len() >= RUNS && !self.held.contains_key(&key) {
            self.held.retain(|_, (since, _)| since.elapsed() < TTL);
            if self.held.len() >= RUNS {
                return;
            }
        }
        let (_, facts) = self
            .held
            .entry(key)
            .or_insert_with(|| (Instant::now(), Vec::new()));
        if facts.len() < PER_RUN {
            facts.push(fact.clone());
        }
    }

    /// The facts held for `key`, oldest first.
    pub fn take(&mut self, key: TaskKey) -> Vec<Fact> {
        self.held.remove(&key).map(|(_, f)| f).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::fact::ProcessFact;

    fn exit(key: u64, pid: u32) -> Fact {
        Fact::Process {
            key: TaskKey(key),
            at: std::time::UNIX_EPOCH,
            fact: ProcessFact::Exit {
                pid,
                comm: String::new(),
            },
        }
    }

    #[test]
    fn holds_in_bounds_and_gives_back_in_order() {
        let mut p = Pending::default();
        for pid in 0..(PER_RUN as u32 + 10) {
            p.hold(&exit(1, pid));
        }
        for key in 2..(RUNS as u64 + 10) {
            p.hold(&exit(key, 1));
        }
        let got = p.take(TaskKey(1));
        assert_eq!(got.len(), PER_RUN);
        assert_eq!(got[0], exit(1, 0));
        assert!(p.take(TaskKey(1)).is_empty());
        assert_eq!(p.held.len(), RUNS - 1);
    }
}
