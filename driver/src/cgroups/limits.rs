//! Resource limits written into the task's cgroups, the way Nomad's exec (libcontainer) does:
//! hard memory = `memory_max` if set else `memory`, soft = `memory` when oversubscribed, CPU
//! shares (v1) or weight (v2), reserved cores in cpuset.cpus; on v1 swappiness 0 when writable
//! (unless the task allows itself swap). `memory_max = -1` (raw_exec's escape hatch, Nomad's
//! `memoryNoLimit`) means no hard limit: v2 `memory.max = max`, v1 `-1`, `memory` as the soft one.

use std::fs;
use std::io;
use std::path::Path;

use super::{CgroupMode, TaskCgroups};

/// What Nomad asked for, from `Resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_mb: i64,
    pub memory_max_mb: i64,
    pub cpu_shares: i64,
    pub cpuset_cpus: String,
    /// The task set `swap_max` above zero: leave v1 swappiness alone.
    pub allow_swap: bool,
}

/// Nomad's `memory_max` sentinel for "no hard limit".
pub const MEMORY_NO_LIMIT: i64 = -1;

impl Limits {
    pub fn from_resources(r: Option<&bpfexec_proto::drivers::Resources>) -> Self {
        let Some(r) = r else { return Self::default() };
        let alloc = r.allocated_resources.as_ref();
        let linux = r.linux_resources.as_ref();
        Self {
            memory_mb: alloc
                .and_then(|a| a.memory.as_ref())
                .map_or(0, |m| m.memory_mb),
            memory_max_mb: alloc
                .and_then(|a| a.memory.as_ref())
                .map_or(0, |m| m.memory_max_mb),
            cpu_shares: linux.map_or(0, |l| l.cpu_shares),
            cpuset_cpus: linux.map(|l| l.cpuset_cpus.clone()).unwrap_or_default(),
            allow_swap: false,
        }
    }

    /// The hard memory limit in bytes (`Unlimited` for `memory_max = -1`); None: none asked.
    pub fn hard(&self) -> Option<super::extra::MemoryHard> {
        use super::extra::MemoryHard;
        if self.memory_max_mb == MEMORY_NO_LIMIT {
            return Some(MemoryHard::Unlimited);
        }
        let mb = if self.memory_max_mb > 0 {
            self.memory_max_mb
        } else {
            self.memory_mb
        };
        (mb > 0).then_some(MemoryHard::Bytes(mb * 1024 * 1024))
    }

    fn soft_bytes(&self) -> Option<i64> {
        (self.memory_max_mb != 0 && self.memory_mb > 0).then_some(self.memory_mb * 1024 * 1024)
    }

    fn shares(&self) -> Option<u64> {
        (self.cpu_shares > 0).then(|| self.cpu_shares.clamp(2, 262_144) as u64)
    }
}

/// cgroup v2 cpu.weight from v1-style shares (the formula runc and Nomad use).
pub fn weight_from_shares(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// The (file, value) writes for `limits` on `cg`, in order.
pub fn plan(cg: &TaskCgroups, limits: &Limits) -> Vec<(std::path::PathBuf, String)> {
    let mut w = Vec::new();
    match cg.mode {
        CgroupMode::V2 => {
            let Some(dir) = cg.own_dir() else { return w };
            if let Some(hard) = limits.hard() {
                w.push((dir.join("memory.max"), hard_text(hard, "max")));
            }
            if let Some(b) = limits.soft_bytes() {
                w.push((dir.join("memory.low"), b.to_string()));
            }
            if let Some(s) = limits.shares() {
                w.push((dir.join("cpu.weight"), weight_from_shares(s).to_string()));
            }
            if !limits.cpuset_cpus.is_empty() {
                w.push((dir.join("cpuset.cpus"), limits.cpuset_cpus.clone()));
            }
        }
        CgroupMode::V1 => {
            if let Some(mem) = cg.memory_dir() {
                if let Some(hard) = limits.hard() {
                    w.push((mem.join("memory.limit_in_bytes"), hard_text(hard, "-1")));
                }
                if let Some(b) = limits.soft_bytes() {
                    w.push((mem.join("memory.soft_limit_in_bytes"), b.to_string()));
                }
            }
            if let (Some(cpu), Some(s)) = (cg.dirs.get(1), limits.shares()) {
                w.push((cpu.join("cpu.shares"), s.to_string()));
            }
            // Only a task-owned cpuset (reserved cores) is ours to write.
            if let Some(cpuset) = cg.dirs.get(3)
                && !limits.cpuset_cpus.is_empty()
                && !cpuset.ends_with("share")
            {
                w.push((cpuset.join("cpuset.cpus"), limits.cpuset_cpus.clone()));
            }
        }
    }
    w
}

fn hard_text(hard: super::extra::MemoryHard, unlimited: &str) -> String {
    match hard {
        super::extra::MemoryHard::Bytes(b) => b.to_string(),
        super::extra::MemoryHard::Unlimited => unlimited.to_owned(),
    }
}

/// Applies `limits`; on v1 also tries swappiness 0 (best effort, like exec).
pub fn apply(cg: &TaskCgroups, limits: &Limits) -> io::Result<()> {
    for (file, value) in plan(cg, limits) {
        if !file.parent().is_some_and(Path::is_dir) {
            continue;
        }
        fs::write(&file, &value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing {value} to {}: {e}", file.display()),
            )
        })?;
    }
    if cg.mode == CgroupMode::V1
        && !limits.allow_swap
        && let Some(mem) = cg.memory_dir()
    {
        let _ = fs::write(mem.join("memory.swappiness"), "0");
    }
    Ok(())
}

/// The cgroup's OOM-kill counter: v2 `memory.events` oom_kill, v1 `memory.oom_control` oom_kill.
pub fn oom_kills(cg: &TaskCgroups) -> Option<u64> {
    let dir = cg.memory_dir()?;
    let file = match cg.mode {
        CgroupMode::V2 => dir.join("memory.events"),
        CgroupMode::V1 => dir.join("memory.oom_control"),
    };
    super::read_keyed(&file)
        .into_iter()
        .find(|(k, _)| k == "oom_kill")
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(dir: &Path) -> TaskCgroups {
        TaskCgroups {
            mode: CgroupMode::V2,
            dirs: vec![dir.to_path_buf()],
            owned: Vec::new(),
        }
    }

    #[test]
    fn weight_formula_matches_runc() {
        assert_eq!(weight_from_shares(2), 1);
        assert_eq!(weight_from_shares(1024), 39);
        assert_eq!(weight_from_shares(262_144), 10_000);
        assert_eq!(weight_from_shares(1), 1);
    }

    #[test]
    fn v2_writes_max_low_weight_and_cpuset_into_a_fake_scope() {
        let root = tempfile::tempdir().expect("tempdir");
        let scope = root.path().join("nomad.slice/reserve.slice/a1.web.scope");
        fs::create_dir_all(&scope).expect("mkdir");
        let cg = v2(&scope);
        let limits = Limits {
            memory_mb: 256,
            memory_max_mb: 512,
            cpu_shares: 500,
            cpuset_cpus: "1".into(),
            allow_swap: false,
        };
        apply(&cg, &limits).expect("apply");
        let read = |f: &str| fs::read_to_string(scope.join(f)).expect(f);
        assert_eq!(read("memory.max"), (512 * 1024 * 1024).to_string());
        assert_eq!(read("memory.low"), (256 * 1024 * 1024).to_string());
        assert_eq!(read("cpu.weight"), weight_from_shares(500).to_string());
        assert_eq!(read("cpuset.cpus"), "1");
    }

    #[test]
    fn v2_without_oversubscription_sets_no_low() {
        let cg = v2(Path::new("/x"));
        let w = plan(
            &cg,
            &Limits {
                memory_mb: 300,
                ..Default::default()
            },
        );
        assert_eq!(
            w,
            vec![(
                Path::new("/x/memory.max").to_path_buf(),
                (300 * 1024 * 1024).to_string()
            )]
        );
    }

    #[test]
    fn v1_writes_each_controller_and_never_the_shared_cpuset() {
        let root = tempfile::tempdir().expect("tempdir");
        let cg = TaskCgroups::for_task(
            CgroupMode::V1,
            root.path(),
            &root.path().join("cpuset/nomad/share").display().to_string(),
            "a",
            "t",
        )
        .expect("cg");
        for d in &cg.dirs {
            fs::create_dir_all(d).expect("mkdir");
        }
        let limits = Limits {
            memory_mb: 64,
            memory_max_mb: 0,
            cpu_shares: 100,
            cpuset_cpus: "0".into(),
            allow_swap: false,
        };
        apply(&cg, &limits).expect("apply");
        let mem = root.path().join("memory/nomad/a.t");
        assert_eq!(
            fs::read_to_string(mem.join("memory.limit_in_bytes")).expect("limit"),
            (64 * 1024 * 1024).to_string()
        );
        assert!(!mem.join("memory.soft_limit_in_bytes").exists());
        assert_eq!(
            fs::read_to_string(root.path().join("cpu/nomad/a.t/cpu.shares")).expect("shares"),
            "100"
        );
        assert!(!root.path().join("cpuset/nomad/share/cpuset.cpus").exists());
    }

    #[test]
    fn memory_max_minus_one_lifts_the_hard_limit_on_both_versions() {
        let limits = Limits {
            memory_mb: 100,
            memory_max_mb: MEMORY_NO_LIMIT,
            ..Default::default()
        };
        let w = plan(&v2(Path::new("/s")), &limits);
        assert_eq!(
            w,
            vec![
                (Path::new("/s/memory.max").to_path_buf(), "max".to_owned()),
                (
                    Path::new("/s/memory.low").to_path_buf(),
                    (100 * 1024 * 1024).to_string()
                ),
            ]
        );
        let v1 = TaskCgroups {
            mode: CgroupMode::V1,
            dirs: vec!["/f".into(), "/c".into(), "/m".into()],
            owned: Vec::new(),
        };
        let w = plan(&v1, &limits);
        assert_eq!(
            w[..2],
            [
                (
                    Path::new("/m/memory.limit_in_bytes").to_path_buf(),
                    "-1".to_owned()
                ),
                (
                    Path::new("/m/memory.soft_limit_in_bytes").to_path_buf(),
                    (100 * 1024 * 1024).to_string()
                ),
            ]
        );
    }

    #[test]
    fn swap_allowed_keeps_v1_swappiness() {
        let root = tempfile::tempdir().expect("tempdir");
        let cg = TaskCgroups {
            mode: CgroupMode::V1,
            dirs: vec![root.path().into(), root.path().into(), root.path().into()],
            owned: Vec::new(),
        };
        let mut limits = Limits {
            allow_swap: true,
            ..Default::default()
        };
        apply(&cg, &limits).expect("apply");
        assert!(!root.path().join("memory.swappiness").exists());
        limits.allow_swap = false;
        apply(&cg, &limits).expect("apply");
        assert!(root.path().join("memory.swappiness").exists());
    }

    #[test]
    fn oom_counters_parse_on_both_versions() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::write(
            root.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .expect("w");
        assert_eq!(oom_kills(&v2(root.path())), Some(1));
        let v1 = TaskCgroups {
            mode: CgroupMode::V1,
            dirs: vec!["/f".into(), "/c".into(), root.path().to_path_buf()],
            owned: Vec::new(),
        };
        fs::write(
            root.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .expect("w");
        assert_eq!(oom_kills(&v1), Some(2));
    }
}
