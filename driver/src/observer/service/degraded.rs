//! Degraded observation: the probes count, in a task's pinned facts, the new processes (and
//! threads) of the task that did not fit in the tracked-process map (the task's share,
//! `tracked_processes_per_task`, or the map's capacity, `tracked_processes`). Those processes
//! are attributed to no task at all, never to a wrong one, but the task's events, tree, exit
//! reason and leak killing miss them. The counts are read every second while the task runs and
//! once at its end; a rise is a task event (the first at once, later ones at most every 30 s).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Observer, lock};
use crate::observer::{key::TaskKey, notice::Notice};

/// Least time between two degraded-observation events of one task (the first goes out at once).
const REPEAT: Duration = Duration::from_secs(30);

/// What was last reported for a task.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reported {
    processes: u64,
    threads: u64,
    at: Option<Instant>,
}

/// The tracked-process map's limits, for the event text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackLimits {
    pub capacity: u32,
    pub per_task: u32,
}

/// The task event for `processes` untracked processes and `threads` untracked threads so far.
pub fn event(
    processes: u64,
    threads: u64,
    limits: TrackLimits,
) -> (String, BTreeMap<String, String>) {
    let mut a = BTreeMap::new();
    a.insert("reason".to_owned(), "observation_degraded".to_owned());
    a.insert("untracked_processes".to_owned(), processes.to_string());
    a.insert("untracked_threads".to_owned(), threads.to_string());
    a.insert(
        "tracked_processes_per_task".to_owned(),
        limits.per_task.to_string(),
    );
    a.insert("tracked_processes".to_owned(), limits.capacity.to_string());
    let what = match (processes, threads) {
        (p, 0) => format!(
            "{p} new process{} of this task",
            if p == 1 { "" } else { "es" }
        ),
        (0, t) => format!(
            "{t} new thread{} of this task",
            if t == 1 { "" } else { "s" }
        ),
        (p, t) => format!(
            "{p} new process{} and {t} thread{} of this task",
            if p == 1 { "" } else { "es" },
            if t == 1 { "" } else { "s" }
        ),
    };
    let message = format!(
        "Observation degraded: {what} could not be tracked (the task may hold {} of the {} \
         entries of the probes' process map: tracked_processes_per_task, tracked_processes); \
         their execs, exits and signals are missing from this task's events, tree and exit \
         reason, and they are not killed as leaks; limit the task's processes (pids_max) or \
         raise tracked_processes_per_task",
        limits.per_task, limits.capacity
    );
    (message, a)
}

impl Observer {
    /// The untracked counts the probes keep for `key` (processes, threads).
    pub fn untracked(&self, key: TaskKey) -> (u64, u64) {
        self.backend
            .facts(key.0)
            .ok()
            .flatten()
            .map_or((0, 0), |f| (f.untracked_processes, f.untracked_threads))
    }

    /// Publishes a degraded-observation event for every running task whose untracked counts
    /// rose (rate-limited per task).
    pub(crate) fn check_untracked(&self) {
        let running = lock(&self.state).running_metas();
        let mut notices = Vec::new();
        for (key, meta) in running {
            if let Some((message, a)) = self.untracked_due(key, false) {
                notices.push(Notice::new(key, &meta, message, a));
            }
        }
        if !notices.is_empty() {
            let state = lock(&self.state);
            self.publish(state, notices);
        }
    }

    /// The degraded-observation event for `key` if its counts rose since the last one (at once
    /// when `at_end`, otherwise at most every [`REPEAT`]).
    pub fn untracked_due(
        &self,
        key: TaskKey,
        at_end: bool,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let (processes, threads) = self.untracked(key);
        let mut reported = lock(&self.untracked_reported);
        let last = reported.entry(key).or_default();
        let rose = processes > last.processes || threads > last.threads;
        let due = at_end || last.at.is_none_or(|t| t.elapsed() >= REPEAT);
        if !(rose && due) {
            return None;
        }
        *last = Reported {
            processes,
            threads,
            at: Some(Instant::now()),
        };
        Some(event(processes, threads, self.track_limits))
    }

    /// Forgets what was reported for `key`.
    pub(crate) fn forget_untracked(&self, key: TaskKey) {
        lock(&self.untracked_reported).remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_counts_and_options() {
        let limits = TrackLimits {
            capacity: 1024,
            per_task: 256,
        };
        let (m, a) = event(3, 0, limits);
        assert!(
            m.starts_with("Observation degraded: 3 new processes of this task"),
            "{m}"
        );
        assert!(m.contains("256 of the 1024"), "{m}");
        assert!(m.contains("tracked_processes_per_task"), "{m}");
        assert_eq!(a["reason"], "observation_degraded");
        assert_eq!(a["untracked_processes"], "3");
        let (m, _) = event(1, 2, limits);
        assert!(m.contains("1 new process and 2 threads"), "{m}");
    }
}
