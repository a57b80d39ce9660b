//! The task's cgroups, as Nomad's client lays them out (`client/lib/cgroupslib`): Nomad creates
//! them before StartTask and removes them after the task; the driver only puts the task in them,
//! reads them and, at stop, kills what is left in them. Works on cgroup v1 and v2.
//!
//! v2: `LinuxResources.cpuset_cgroup` is the task's scope directory itself.
//! v1: `cpuset_cgroup` is the cpuset directory only; the freezer, cpu and memory directories are
//! `<root>/<controller>/nomad/<allocID>.<task>`.

pub mod created;
pub mod device_program;
pub mod devices;
pub mod extra;
mod home;
mod kill;
pub mod limits;
pub mod owned;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use home::CgroupHome;
pub use kill::kill_all;

pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const V1_CONTROLLERS: [&str; 3] = ["freezer", "cpu", "memory"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    V1,
    V2,
}

impl CgroupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// Detects the mode the way Nomad does: cgroup2 mounted at the root means v2, else v1.
pub fn detect_mode(root: &Path) -> io::Result<CgroupMode> {
    let st = nix::sys::statfs::statfs(root).map_err(io::Error::from)?;
    if st.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC {
        Ok(CgroupMode::V2)
    } else if root.join("memory").is_dir() || root.join("cpuset").is_dir() {
        Ok(CgroupMode::V1)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no cgroup hierarchy found at {}", root.display()),
        ))
    }
}

/// The cgroup directories of one task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskCgroups {
    pub mode: CgroupMode,
    /// v2: the scope. v1: freezer, cpu, memory, then cpuset.
    pub dirs: Vec<PathBuf>,
    /// Directories the driver created for the task (v1 `devices`): joined like the others and
    /// removed when the task is destroyed.
    #[serde(default)]
    pub owned: Vec<PathBuf>,
}

impl TaskCgroups {
    /// Derives the task's cgroup directories from what Nomad passed in `cpuset_cgroup`.
    /// Returns `None` when Nomad gave no cgroup (cgroups disabled on the client).
    pub fn for_task(
        mode: CgroupMode,
        root: &Path,
        cpuset_cgroup: &str,
        alloc_id: &str,
        task: &str,
    ) -> Option<Self> {
        if cpuset_cgroup.is_empty() {
            return None;
        }
        let dirs = match mode {
            CgroupMode::V2 => vec![PathBuf::from(cpuset_cgroup)],
            CgroupMode::V1 => {
                let scope = format!("{alloc_id}.{task}");
                let mut dirs: Vec<PathBuf> = V1_CONTROLLERS
                    .iter()
                    .map(|c| root.join(c).join("nomad").join(&scope))
                    .collect();
                dirs.push(PathBuf::from(cpuset_cgroup));
                dirs
            }
        };
        Some(Self {
            mode,
            dirs,
            owned: Vec::new(),
        })
    }

    /// The files the task's process writes "0" to, to join its cgroups: those whose directory
    /// exists. On v1 that is each hierarchy's `tasks` file: moving only the writing thread
    /// (the process is single-threaded there) lets the kernel skip the global threadgroup
    /// write lock, whose RCU grace period made every `cgroup.procs` join cost 6-26 ms on this
    /// machine. v2 refuses single-thread moves between domain cgroups, so there it is
    /// `cgroup.procs`.
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = match self.mode {
            CgroupMode::V1 => "tasks",
            CgroupMode::V2 => "cgroup.procs",
        };
        self.dirs
            .iter()
            .chain(&self.owned)
            .filter(|d| d.is_dir())
            .map(|d| d.join(file))
            .collect()
    }

    /// The directories Nomad should have made for the task that do not exist (the task would
    /// run without their limits).
    pub fn missing_dirs(&self) -> Vec<&Path> {
        self.dirs
            .iter()
            .filter(|d| !d.is_dir())
            .map(PathBuf::as_path)
            .collect()
    }

    /// The directory that holds exactly the task's processes (v1 freezer or v2 scope); the v1
    /// cpuset directory is shared by every task that does not reserve cores, so it never counts.
    pub fn own_dir(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// The v2 scope, which the task's process is created in (v1: none).
    pub fn v2_scope(&self) -> Option<&Path> {
        match self.mode {
            CgroupMode::V2 => self.own_dir(),
            CgroupMode::V1 => None,
        }
    }

    /// The v1 memory directory or the v2 scope.
    pub fn memory_dir(&self) -> Option<&Path> {
        match self.mode {
            CgroupMode::V2 => self.dirs.first(),
            CgroupMode::V1 => self.dirs.get(2),
        }
        .map(PathBuf::as_path)
    }

    /// Pids currently in the task's own cgroup.
    pub fn pids(&self) -> Vec<u32> {
        self.own_dir()
            .map(|d| read_pids(&d.join("cgroup.procs")))
            .unwrap_or_default()
    }
}

pub fn read_pids(procs_file: &Path) -> Vec<u32> {
    fs::read_to_string(procs_file)
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Reads a flat-keyed cgroup file such as `memory.stat` or `cpu.stat`.
pub fn read_keyed(path: &Path) -> Vec<(String, u64)> {
    fs::read_to_string(path)
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a single-number cgroup file such as `memory.usage_in_bytes`.
pub fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_uses_the_scope_nomad_gave() {
        let cg = TaskCgroups::for_task(
            CgroupMode::V2,
            Path::new("/sys/fs/cgroup"),
            "/sys/fs/cgroup/nomad.slice/share.slice/a1.web.scope",
            "a1",
            "web",
        )
        .expect("cgroup");
        assert_eq!(
            cg.dirs,
            vec![PathBuf::from(
                "/sys/fs/cgroup/nomad.slice/share.slice/a1.web.scope"
            )]
        );
        assert_eq!(cg.memory_dir(), cg.own_dir());
    }

    #[test]
    fn v1_derives_controllers_like_nomad() {
        let cg = TaskCgroups::for_task(
            CgroupMode::V1,
            Path::new("/cg"),
            "/cg/cpuset/nomad/share",
            "a1",
            "web",
        )
        .expect("cgroup");
        let want: Vec<PathBuf> = [
            "/cg/freezer/nomad/a1.web",
            "/cg/cpu/nomad/a1.web",
            "/cg/memory/nomad/a1.web",
            "/cg/cpuset/nomad/share",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(cg.dirs, want);
        assert_eq!(cg.own_dir(), Some(Path::new("/cg/freezer/nomad/a1.web")));
        assert_eq!(cg.memory_dir(), Some(Path::new("/cg/memory/nomad/a1.web")));
    }

    #[test]
    fn no_cgroup_when_nomad_gives_none() {
        assert!(TaskCgroups::for_task(CgroupMode::V1, Path::new("/cg"), "", "a", "t").is_none());
    }

    #[test]
    fn join_files_only_for_existing_dirs_and_pids_parse() {
        let root = tempfile::tempdir().expect("tempdir");
        let scope = root.path().join("freezer/nomad/a.t");
        fs::create_dir_all(&scope).expect("mkdir");
        fs::write(scope.join("cgroup.procs"), "12\n34\n").expect("write");
        let cg =
            TaskCgroups::for_task(CgroupMode::V1, root.path(), "/nonexistent/cpuset", "a", "t")
                .expect("cg");
        assert_eq!(cg.join_files(), vec![scope.join("tasks")]);
        assert_eq!(cg.pids(), vec![12, 34]);
        let v2 = TaskCgroups::for_task(
            CgroupMode::V2,
            root.path(),
            &scope.to_string_lossy(),
            "a",
            "t",
        )
        .expect("cg");
        assert_eq!(v2.join_files(), vec![scope.join("cgroup.procs")]);
    }

    #[test]
    fn keyed_files_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("memory.stat");
        fs::write(&f, "anon 4096\nfile 8192\nbogus\n").expect("write");
        assert_eq!(
            read_keyed(&f),
            vec![("anon".into(), 4096), ("file".into(), 8192)]
        );
    }
}
