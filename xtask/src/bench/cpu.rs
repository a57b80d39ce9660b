//! CPU time of a set of processes with nanosecond resolution, for short measurements: the sum
//! over their threads of `/proc/<pid>/task/<tid>/schedstat`'s first field (time on a CPU, ns;
//! the scheduler's own accounting), compared thread by thread, cross-checked against
//! `/proc/<pid>/stat`'s utime + stime (all threads, also exited ones, but in 10 ms ticks: a
//! 2-second storm would read its plugin CPU with ±0.5 percentage-point steps).

use std::collections::BTreeMap;

use super::storm::cpu_seconds;

/// Per-thread CPU nanoseconds and the tick-based total, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// (pid, tid) → ns on a CPU.
    threads: BTreeMap<(i32, i32), u64>,
    /// utime + stime of the processes, seconds.
    ticks_s: f64,
}

/// The first field of a `schedstat` file.
fn schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

impl Snapshot {
    /// Reads `pids` now (vanished processes or threads are skipped).
    pub fn read(pids: &[i32]) -> Self {
        let mut threads = BTreeMap::new();
        for &pid in pids {
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for entry in dir.flatten() {
                let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
                    continue;
                };
                let text =
                    std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
                if let Some(ns) = schedstat_ns(&text) {
                    threads.insert((pid, tid), ns);
                }
            }
        }
        Snapshot {
            threads,
            ticks_s: pids.iter().copied().map(cpu_seconds).sum(),
        }
    }

    /// CPU seconds used since `before`: by thread (a thread that ended in between loses what
    /// it used since `before`), or the tick delta when that is clearly larger (more than two
    /// ticks: a busy thread ended).
    pub fn since(&self, before: &Snapshot) -> f64 {
        let ns: u64 = self
            .threads
            .iter()
            .map(|(k, now)| now.saturating_sub(before.threads.get(k).copied().unwrap_or(0)))
            .sum();
        let precise = ns as f64 / 1e9;
        let ticks = self.ticks_s - before.ticks_s;
        if ticks > precise + 0.02 {
            ticks
        } else {
            precise
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(threads: &[((i32, i32), u64)], ticks_s: f64) -> Snapshot {
        Snapshot {
            threads: threads.iter().copied().collect(),
            ticks_s,
        }
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(schedstat_ns("100244 67804 2\n"), Some(100_244));
        assert_eq!(schedstat_ns(""), None);
    }

    #[test]
    fn sums_per_thread_and_falls_back_to_ticks() {
        let before = snap(&[((1, 1), 1_000_000_000), ((1, 2), 500_000_000)], 1.5);
        // Thread 2 used 12.5 ms, thread 3 is new with 2 ms; ticks only saw 10 ms.
        let after = snap(
            &[
                ((1, 1), 1_000_000_000),
                ((1, 2), 512_500_000),
                ((1, 3), 2_000_000),
            ],
            1.51,
        );
        assert!((after.since(&before) - 0.0145).abs() < 1e-9);
        // Thread 2 ended after using 300 ms: the ticks saw it.
        let ended = snap(&[((1, 1), 1_000_000_000)], 1.8);
        assert!((ended.since(&before) - 0.3).abs() < 1e-9);
        assert!(Snapshot::read(&[]).since(&Snapshot::default()).abs() < 1e-12);
    }
}
