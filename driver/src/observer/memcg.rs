//! OOM scope: was an OOM kill caused by a memory cgroup limit or by the whole host running out?
//! `oom/mark_victim` does not say, so the observer reads the victim's memory cgroup counters:
//! cgroup v2 `memory.events` `oom` (incremented only when that cgroup hit its `memory.max`), and on
//! cgroup v1 `memory.failcnt` (charges refused at `memory.limit_in_bytes`) of a cgroup that has a
//! limit. A counter that moved since the last reading taken before the kill (at tracking time,
//! then periodically; each reading carries its `CLOCK_MONOTONIC` time, the clock of the kill's
//! record) marks that cgroup as the constraint; no moved counter means a system-wide OOM. A
//! reading taken after the kill but before its record was processed (the ring buffer drains
//! later under load) already holds the kill and is not the baseline for it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the OOM pressure came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum OomScope {
    /// A memory cgroup reached its limit; `cgroup` is its path inside the hierarchy.
    Cgroup { cgroup: String },
    /// The host ran out of memory.
    System,
    /// The task's memory cgroup could not be read.
    Unknown,
}

/// v1 "unlimited" is `PAGE_COUNTER_MAX` rounded to pages; anything this large means no limit.
const UNLIMITED: u64 = 1 << 62;

/// Counters of one memory cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgCounters {
    /// The cgroup has a memory limit.
    pub limited: bool,
    /// v1 `memory.failcnt`.
    pub failcnt: Option<u64>,
    /// v2 `memory.events` `oom`.
    pub oom_events: Option<u64>,
}

impl MemcgCounters {
    /// This cgroup hit its limit since `before` (or ever, when there is no earlier reading).
    fn limit_hit_since(&self, before: Option<&Self>) -> bool {
        let moved = |now: Option<u64>, then: Option<u64>| match (now, then) {
            (Some(n), Some(t)) => n > t,
            (Some(n), None) => n > 0,
            _ => false,
        };
        moved(self.oom_events, before.and_then(|b| b.oom_events))
            || (self.limited && moved(self.failcnt, before.and_then(|b| b.failcnt)))
    }
}

/// Reads cgroupfs files (a seam for tests).
pub trait CgroupFiles: Send + Sync {
    fn read(&self, path: &Path) -> Option<String>;
}

/// The real cgroupfs.
#[derive(Clone, Copy, Debug, Default)]
pub struct LiveCgroupFs;

impl CgroupFiles for LiveCgroupFs {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}

/// Mount points of the memory controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemcgRoots {
    /// cgroup v1 hierarchy with the `memory` controller.
    pub v1_memory: Option<PathBuf>,
    /// cgroup2 mount (used when no v1 memory hierarchy exists).
    pub v2: Option<PathBuf>,
}

impl MemcgRoots {
    /// Parses `/proc/self/mountinfo` (proc(5)): mount point is field 5, and after the ` - `
    /// separator come the filesystem type, the source and the super options.
    #[must_use]
    pub fn from_mountinfo(text: &str) -> Self {
        let mut roots = Self::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut right = right.split_whitespace();
            let fstype = right.next().unwrap_or_default();
            let options = right.nth(1).unwrap_or_default();
            if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
                roots
                    .v1_memory
                    .get_or_insert_with(|| PathBuf::from(mount_point));
            } else if fstype == "cgroup2" {
                roots.v2.get_or_insert_with(|| PathBuf::from(mount_point));
            }
        }
        roots
    }

    /// From this process's mountinfo.
    #[must_use]
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| Self::from_mountinfo(&t))
            .unwrap_or_default()
    }

    /// A memory cgroup directory (host path) as (hierarchy root, path inside it).
    #[must_use]
    pub fn split(&self, dir: &Path) -> Option<(PathBuf, String)> {
        [&self.v1_memory, &self.v2]
            .into_iter()
            .flatten()
            .find_map(|root| {
                let rel = dir.strip_prefix(root).ok()?;
                Some((root.clone(), format!("/{}", rel.display())))
            })
            .filter(|(_, rel)| rel != "/")
    }

    /// The memory cgroup of a process, from the text of `/proc/<pid>/cgroup`, as (hierarchy
    /// root, path inside it).
    #[must_use]
    pub fn locate(&self, proc_cgroup: &str) -> Option<(PathBuf, String)> {
        for line in proc_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if let Some(root) = &self.v1_memory
                && controllers.split(',').any(|c| c == "memory")
            {
                return Some((root.clone(), path.to_owned()));
            }
        }
        let root = self.v2.as_ref().filter(|_| self.v1_memory.is_none())?;
        proc_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|path| (root.clone(), path.to_owned()))
    }
}

/// Readings of one watched cgroup kept as possible baselines: one a second covers a backlog of
/// half a minute between a kill and its record's processing.
const READINGS_KEPT: usize = 32;

/// A reading is a baseline for a kill only if taken this long before it: the `oom` counter
/// moves while the kernel is still choosing the victim, just before `mark_victim`.
const BASELINE_MARGIN_NS: u64 = 250_000_000;

/// One watched cgroup: (host dir, path inside the hierarchy, readings oldest first as
/// (`CLOCK_MONOTONIC` ns when taken, counters)).
type Level = (PathBuf, String, VecDeque<(u64, MemcgCounters)>);

/// A task's memory cgroup and its ancestors (innermost first, the hierarchy root excluded) with
/// the recent counters read from each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemcgWatch {
    levels: Vec<Level>,
}

impl MemcgWatch {
    /// Watches the memory cgroup `path` under `root` and its ancestors below `root`, with a
    /// first reading at `now_ns`.
    pub fn new(files: &dyn CgroupFiles, root: &Path, path: &str, now_ns: u64) -> Self {
        let mut levels = Vec::new();
        let mut rel = path.trim_end_matches('/').to_owned();
        while !rel.is_empty() && rel != "/" {
            let dir = root.join(rel.trim_start_matches('/'));
            let readings = read_counters(files, &dir)
                .map(|c| (now_ns, c))
                .into_iter()
                .collect();
            levels.push((dir, rel.clone(), readings));
            rel = match rel.rfind('/') {
                Some(i) => rel[..i].to_owned(),
                None => String::new(),
            };
        }
        Self { levels }
    }

    /// Decides the scope of an OOM kill at `kill_ns` (the record's `CLOCK_MONOTONIC` time): the
    /// innermost cgroup whose counters moved since the newest reading from before the kill (any
    /// limit hit counts where there is none).
    pub fn scope_of_kill(&self, files: &dyn CgroupFiles, kill_ns: u64) -> OomScope {
        if self.levels.is_empty() {
            return OomScope::Unknown;
        }
        let mut readable = false;
        for (dir, rel, readings) in &self.levels {
            let Some(now) = read_counters(files, dir) else {
                continue;
            };
            readable = true;
            let before = readings
                .iter()
                .rev()
                .find(|(at, _)| at.saturating_add(BASELINE_MARGIN_NS) <= kill_ns)
                .map(|(_, c)| c);
            if now.limit_hit_since(before) {
                return OomScope::Cgroup {
                    cgroup: rel.clone(),
                };
            }
        }
        if readable {
            OomScope::System
        } else {
            OomScope::Unknown
        }
    }

    /// Takes new readings at `now_ns` (called periodically).
    pub fn refresh(&mut self, files: &dyn CgroupFiles, now_ns: u64) {
        for (dir, _, readings) in &mut self.levels {
            if let Some(now) = read_counters(files, dir) {
                if readings.len() >= READINGS_KEPT {
                    readings.pop_front();
                }
                readings.push_back((now_ns, now));
            }
        }
    }

    /// Forgets the readings, so any counter above zero counts (for kills seen only later, e.g.
    /// while the driver was down).
    pub fn forget_baseline(&mut self) {
        for level in &mut self.levels {
            level.2.clear();
        }
    }

    /// Innermost watched cgroup path.
    #[must_use]
    pub fn innermost(&self) -> Option<&str> {
        self.levels.first().map(|l| l.1.as_str())
    }
}

fn read_counters(files: &dyn CgroupFiles, dir: &Path) -> Option<MemcgCounters> {
    if let Some(events) = files.read(&dir.join("memory.events")) {
        let oom = events.lines().find_map(|l| {
            l.strip_prefix("oom ")
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let limited = files
            .read(&dir.join("memory.max"))
            .is_some_and(|m| m.trim() != "max");
        return Some(MemcgCounters {
            limited,
            failcnt: None,
            oom_events: oom,
        });
    }
    let limit = files
        .read(&dir.join("memory.limit_in_bytes"))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let failcnt = files
        .read(&dir.join("memory.failcnt"))
        .and_then(|f| f.trim().parse::<u64>().ok());
    Some(MemcgCounters {
        limited: limit < UNLIMITED,
        failcnt,
        oom_events: None,
    })
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory cgroupfs for unit tests.
    use std::{
        collections::HashMap,
        path::{Path, PathBuf},
        sync::Mutex,
    };

    use super::CgroupFiles;

    #[derive(Default)]
    pub struct FakeCgroupFs(pub Mutex<HashMap<PathBuf, String>>);

    impl FakeCgroupFs {
        pub fn set(&self, path: &str, text: &str) {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(PathBuf::from(path), text.to_owned());
        }
    }

    impl CgroupFiles for FakeCgroupFs {
        fn read(&self, path: &Path) -> Option<String> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(path)
                .cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeCgroupFs, *};

    const HYBRID: &str = "\
25 1 0:22 / /sys rw - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";

    #[test]
    fn finds_roots_and_locates_v1_memory() {
        let roots = MemcgRoots::from_mountinfo(HYBRID);
        assert_eq!(
            roots.v1_memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            roots.v2.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let (root, path) = roots
            .locate("5:cpu:/x\n4:memory:/nomad/a-b\n0::/\n")
            .expect("memory cgroup");
        assert_eq!(
            (root.as_path(), path.as_str()),
            (Path::new("/sys/fs/cgroup/memory"), "/nomad/a-b")
        );
        let v2_only = MemcgRoots {
            v1_memory: None,
            v2: Some("/sys/fs/cgroup".into()),
        };
        assert_eq!(
            v2_only.locate("0::/nomad.slice/x.scope\n").map(|l| l.1),
            Some("/nomad.slice/x.scope".to_owned())
        );
    }

    #[test]
    fn splits_a_known_cgroup_dir_into_root_and_path() {
        let roots = MemcgRoots::from_mountinfo(HYBRID);
        assert_eq!(
            roots.split(Path::new("/sys/fs/cgroup/memory/nomad/a.t")),
            Some((
                PathBuf::from("/sys/fs/cgroup/memory"),
                "/nomad/a.t".to_owned()
            ))
        );
        assert_eq!(roots.split(Path::new("/sys/fs/cgroup/memory")), None);
        assert_eq!(roots.split(Path::new("/elsewhere/x")), None);
    }

    /// One second in ns (readings and kills in the tests are whole seconds apart).
    const S: u64 = 1_000_000_000;

    #[test]
    fn v1_failcnt_of_a_limited_cgroup_marks_cgroup_scope() {
        let fs = FakeCgroupFs::default();
        let dir = "/sys/fs/cgroup/memory/nomad/t";
        fs.set(&format!("{dir}/memory.limit_in_bytes"), "33554432\n");
        fs.set(&format!("{dir}/memory.failcnt"), "0\n");
        fs.set(
            "/sys/fs/cgroup/memory/nomad/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        fs.set("/sys/fs/cgroup/memory/nomad/memory.failcnt", "0\n");
        let mut w = MemcgWatch::new(&fs, Path::new("/sys/fs/cgroup/memory"), "/nomad/t", S);
        assert_eq!(w.innermost(), Some("/nomad/t"));
        // No counter moved: the host ran out.
        assert_eq!(w.scope_of_kill(&fs, 2 * S), OomScope::System);
        fs.set(&format!("{dir}/memory.failcnt"), "17\n");
        assert_eq!(
            w.scope_of_kill(&fs, 3 * S),
            OomScope::Cgroup {
                cgroup: "/nomad/t".into()
            }
        );
        // A reading after that kill is the baseline of the next one.
        w.refresh(&fs, 4 * S);
        assert_eq!(w.scope_of_kill(&fs, 5 * S), OomScope::System);
        // Without a baseline, any failures count.
        w.forget_baseline();
        assert!(matches!(
            w.scope_of_kill(&fs, 6 * S),
            OomScope::Cgroup { .. }
        ));
    }

    #[test]
    fn v2_oom_event_of_a_parent_is_found() {
        let fs = FakeCgroupFs::default();
        fs.set(
            "/cg/alloc/task/memory.events",
            "low 0\nhigh 0\nmax 3\noom 0\noom_kill 1\n",
        );
        fs.set("/cg/alloc/task/memory.max", "max\n");
        fs.set("/cg/alloc/memory.events", "oom 0\noom_kill 0\n");
        fs.set("/cg/alloc/memory.max", "268435456\n");
        let mut w = MemcgWatch::new(&fs, Path::new("/cg"), "/alloc/task", S);
        fs.set("/cg/alloc/memory.events", "oom 1\noom_kill 1\n");
        assert_eq!(
            w.scope_of_kill(&fs, 2 * S),
            OomScope::Cgroup {
                cgroup: "/alloc".into()
            }
        );
        w.refresh(&fs, 3 * S);
        assert_eq!(w.scope_of_kill(&fs, 4 * S), OomScope::System);
    }

    /// The periodic reading taken after a kill, before its record was processed, already holds
    /// the kill: the kill is judged against the reading from before it.
    #[test]
    fn a_reading_after_the_kill_is_not_its_baseline() {
        let fs = FakeCgroupFs::default();
        fs.set("/cg/task/memory.events", "oom 0\noom_kill 0\n");
        fs.set("/cg/task/memory.max", "33554432\n");
        let mut w = MemcgWatch::new(&fs, Path::new("/cg"), "/task", S);
        w.refresh(&fs, 2 * S);
        // The kill at 3 s; the refresh at 4 s (records still queued) sees it.
        fs.set("/cg/task/memory.events", "oom 1\noom_kill 1\n");
        w.refresh(&fs, 4 * S);
        let cgroup = OomScope::Cgroup {
            cgroup: "/task".into(),
        };
        assert_eq!(w.scope_of_kill(&fs, 3 * S), cgroup);
        // A reading just before the kill (inside the margin) may already hold it too.
        let mut w = MemcgWatch::new(&fs, Path::new("/cg"), "/task", S);
        fs.set("/cg/task/memory.events", "oom 2\noom_kill 2\n");
        w.refresh(&fs, 5 * S - BASELINE_MARGIN_NS / 2);
        assert_eq!(w.scope_of_kill(&fs, 5 * S), cgroup);
        // Only the newest readings are kept.
        for i in 0..READINGS_KEPT as u64 + 3 {
            w.refresh(&fs, (10 + i) * S);
        }
        assert!(w.levels[0].2.len() <= READINGS_KEPT);
    }

    #[test]
    fn unreadable_cgroups_give_unknown() {
        let fs = FakeCgroupFs::default();
        let w = MemcgWatch::new(&fs, Path::new("/cg"), "/gone", S);
        assert_eq!(w.scope_of_kill(&fs, 2 * S), OomScope::Unknown);
        let empty = MemcgWatch::default();
        assert_eq!(empty.scope_of_kill(&fs, 2 * S), OomScope::Unknown);
    }
}
