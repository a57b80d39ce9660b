//! Acting on stray processes: the periodic escape check (from the observer's tick) and the leak
//! sweep when a task's main process has ended. Each stray is SIGKILLed through the [`Reaper`]
//! seam, which pins it by PID and start time and re-checks, once pinned, that the kernel still
//! tracks it for the task (`TRACKED` loses a PID when its process exits, so a recycled PID never
//! passes); then one task event is sent through the notice stream.
//!
//! [`Reaper`]: crate::observer::Reaper

use std::time::Duration;

use super::{Observer, lock};
use crate::observer::{error::ReapError, key::TaskKey, reap::Reaped, stray::Stray};

/// How long leak suspects get to finish dying before they count (a process SIGKILLed by the
/// stop an instant ago may not show it yet).
const LEAK_SETTLE: Duration = Duration::from_millis(50);
/// Sweeps of a task's leftovers: a leaked process may fork while the previous sweep kills.
const LEAK_SWEEPS: usize = 3;

impl Observer {
    /// Kills `stray` of task `key` if it is still that process and still the task's.
    fn kill_stray(&self, key: TaskKey, stray: &Stray) -> Result<Reaped, ReapError> {
        let still_ours = || {
            self.backend
                .task_of(stray.pid)
                .is_ok_and(|task| task == Some(key.0))
        };
        self.reaper.kill(stray.pid, stray.start_time, &still_ours)
    }

    /// Runs the escape check if it is due at `now`.
    pub(super) fn maybe_check_escapes(&self, now: u64) {
        if lock(&self.state).escape_check_due(now) {
            self.check_escapes(now);
        }
    }

    /// Finds processes of running tasks outside their task's cgroup, kills them and reports each
    /// once.
    pub(crate) fn check_escapes(&self, now: u64) {
        let suspects = lock(&self.state).escape_suspects();
        for (key, stray) in suspects {
            let result = self.kill_stray(key, &stray);
            match &result {
                Ok(r) => tracing::warn!(
                    task_key = %key,
                    pid = stray.pid,
                    comm = %stray.comm,
                    cgroup = stray.cgroup.as_deref().unwrap_or_default(),
                    result = r.name(),
                    "a task process left the task's cgroup"
                ),
                Err(e) => tracing::warn!(
                    task_key = %key,
                    pid = stray.pid,
                    error = %e,
                    "a task process left the task's cgroup and could not be killed"
                ),
            }
            let mut state = lock(&self.state);
            let notice = state.report_escape(key, &stray, &result, now);
            self.publish(state, notice);
        }
    }

    /// Processes the kernel still tracks for task `key` that are alive and not dying.
    fn leak_suspects(&self, key: TaskKey) -> Vec<Stray> {
        let mut pids: Vec<u32> = match self.backend.tracked() {
            Ok(all) => all
                .into_iter()
                .filter_map(|(pid, task)| (task == key.0).then_some(pid))
                .collect(),
            Err(e) => {
                tracing::warn!(task_key = %key, error = %e, "cannot read the kernel's tracked processes; using the observer's table");
                lock(&self.state).pids(key)
            }
        };
        pids.sort_unstable();
        lock(&self.state).leak_suspects(key, &pids)
    }

    /// Once task `key`'s main process has ended: kills every process the kernel still tracks for
    /// it that is alive (after a short settle, so processes the stop already SIGKILLed are not
    /// counted) and sends one task event naming them. Returns how many outlived it (killed, or
    /// that could not be killed).
    pub async fn reap_leaks(&self, key: TaskKey) -> usize {
        let first = self.leak_suspects(key);
        if first.is_empty() {
            return 0;
        }
        tokio::time::sleep(LEAK_SETTLE).await;
        let confirmed: Vec<Stray> = self
            .leak_suspects(key)
            .into_iter()
            .filter(|s| {
                first
                    .iter()
                    .any(|f| f.pid == s.pid && f.start_time == s.start_time)
            })
            .collect();
        self.kill_leaks(key, confirmed)
    }

    /// [`Observer::reap_leaks`] without the settle (a task that ended long ago, found at
    /// recovery).
    pub fn reap_leaks_now(&self, key: TaskKey) -> usize {
        let suspects = self.leak_suspects(key);
        self.kill_leaks(key, suspects)
    }

    fn kill_leaks(&self, key: TaskKey, mut batch: Vec<Stray>) -> usize {
        let mut results: Vec<(Stray, Result<Reaped, ReapError>)> = Vec::new();
        for _ in 0..LEAK_SWEEPS {
            if batch.is_empty() {
                break;
            }
            for stray in batch {
                let result = self.kill_stray(key, &stray);
                results.push((stray, result));
            }
            // What the killed processes forked meanwhile (the killed ones now have SIGKILL
            // pending or are gone, so they are not found again).
            batch = self
                .leak_suspects(key)
                .into_iter()
                .filter(|s| {
                    !results
                        .iter()
                        .any(|(r, _)| r.pid == s.pid && r.start_time == s.start_time)
                })
                .collect();
        }
        let found = results
            .iter()
            .filter(|(_, r)| matches!(r, Ok(Reaped::Killed) | Err(_)))
            .count();
        let mut state = lock(&self.state);
        let notice = state.leak_report(key, &results, super::monotonic_ns());
        if let Some(n) = &notice {
            tracing::warn!(task_key = %key, message = %n.message, "processes outlived their task");
        }
        self.publish(state, notice);
        found
    }
}
