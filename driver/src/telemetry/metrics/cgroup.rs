//! Memory pressure of a task's cgroup, sampled for metrics: cgroup v2 `memory.events` (high, max,
//! oom, oom_kill), `memory.current`/`memory.max`, and PSI totals from `memory.pressure`,
//! `cpu.pressure`, `io.pressure`; cgroup v1 `memory.failcnt` (charges refused at the limit: the
//! `max` events), `memory.oom_control` `oom_kill`, `memory.usage_in_bytes` and
//! `memory.limit_in_bytes` (v1 has neither `high` events nor PSI per cgroup).

use std::path::Path;

use crate::cgroups::CgroupMode;

/// v1 "unlimited" is PAGE_COUNTER_MAX in bytes; anything this large means no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// One reading of a task's cgroup.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CgroupSample {
    /// (event, count) for the events this cgroup version has.
    pub memory_events: Vec<(&'static str, u64)>,
    pub usage_bytes: Option<u64>,
    /// None when unlimited.
    pub limit_bytes: Option<u64>,
    /// (resource, kind, total seconds of stall).
    pub pressure: Vec<(&'static str, &'static str, f64)>,
}

/// Reads a cgroup file as text (the seam unit tests fake).
pub trait ReadFile {
    fn read(&self, path: &Path) -> Option<String>;
}

/// The real cgroupfs.
pub struct LiveFiles;

impl ReadFile for LiveFiles {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

fn keyed(text: &str) -> impl Iterator<Item = (&str, u64)> + '_ {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        Some((it.next()?, it.next()?.parse().ok()?))
    })
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=1234` lines: (kind, total µs).
fn psi_totals(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let mut it = l.split_whitespace();
        let kind = it.next()?;
        let total = it.find_map(|f| f.strip_prefix("total="))?.parse().ok()?;
        Some((kind, total))
    })
}

/// Samples the memory cgroup `dir` of a task.
pub fn sample(files: &dyn ReadFile, mode: CgroupMode, dir: &Path) -> CgroupSample {
    let read = |name: &str| files.read(&dir.join(name));
    let num = |name: &str| read(name).and_then(|t| t.trim().parse::<u64>().ok());
    let mut s = CgroupSample::default();
    match mode {
        CgroupMode::V2 => {
            if let Some(text) = read("memory.events") {
                for (k, v) in keyed(&text) {
                    if let Some(name) = ["high", "max", "oom", "oom_kill"]
                        .into_iter()
                        .find(|n| *n == k)
                    {
                        s.memory_events.push((name, v));
                    }
                }
            }
            s.usage_bytes = num("memory.current");
            s.limit_bytes = num("memory.max");
            for (resource, file) in [
                ("memory", "memory.pressure"),
                ("cpu", "cpu.pressure"),
                ("io", "io.pressure"),
            ] {
                let Some(text) = read(file) else { continue };
                for (kind, micros) in psi_totals(&text) {
                    let kind = match kind {
                        "some" => "some",
                        "full" => "full",
                        _ => continue,
                    };
                    s.pressure.push((resource, kind, micros as f64 / 1e6));
                }
            }
        }
        CgroupMode::V1 => {
            if let Some(n) = num("memory.failcnt") {
                s.memory_events.push(("max", n));
            }
            if let Some(text) = read("memory.oom_control")
                && let Some((_, n)) = keyed(&text).find(|(k, _)| *k == "oom_kill")
            {
                s.memory_events.push(("oom_kill", n));
            }
            s.usage_bytes = num("memory.usage_in_bytes");
            s.limit_bytes = num("memory.limit_in_bytes").filter(|l| *l < V1_UNLIMITED);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;

    struct Fake(HashMap<PathBuf, String>);

    impl ReadFile for Fake {
        fn read(&self, path: &Path) -> Option<String> {
            self.0.get(path).cloned()
        }
    }

    fn fake(dir: &str, files: &[(&str, &str)]) -> Fake {
        Fake(
            files
                .iter()
                .map(|(n, t)| (Path::new(dir).join(n), (*t).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn v2_reads_events_usage_and_psi() {
        let f = fake(
            "/cg/t.scope",
            &[
                (
                    "memory.events",
                    "low 0\nhigh 3\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
                ),
                ("memory.current", "1048576\n"),
                ("memory.max", "max\n"),
                (
                    "memory.pressure",
                    "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n\
                     full avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n",
                ),
                (
                    "cpu.pressure",
                    "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
                ),
            ],
        );
        let s = sample(&f, CgroupMode::V2, Path::new("/cg/t.scope"));
        assert_eq!(
            s.memory_events,
            vec![("high", 3), ("max", 12), ("oom", 1), ("oom_kill", 1)]
        );
        assert_eq!(s.usage_bytes, Some(1_048_576));
        assert_eq!(s.limit_bytes, None, "\"max\" is no limit");
        assert_eq!(
            s.pressure,
            vec![
                ("memory", "some", 2.5),
                ("memory", "full", 0.001),
                ("cpu", "some", 7e-6)
            ]
        );
    }

    #[test]
    fn v1_maps_failcnt_and_oom_control() {
        let f = fake(
            "/cg/memory/nomad/a.t",
            &[
                ("memory.failcnt", "42\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
                ),
                ("memory.usage_in_bytes", "4096\n"),
                ("memory.limit_in_bytes", "9223372036854771712\n"),
            ],
        );
        let s = sample(&f, CgroupMode::V1, Path::new("/cg/memory/nomad/a.t"));
        assert_eq!(s.memory_events, vec![("max", 42), ("oom_kill", 2)]);
        assert_eq!(s.usage_bytes, Some(4096));
        assert_eq!(s.limit_bytes, None);
        assert!(s.pressure.is_empty());
    }
}
