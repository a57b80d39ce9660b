//! Task identity for the observer: the 64-bit key the probes carry in every record (stable across
//! driver restarts because it is derived from the Nomad task id) and the Nomad-side metadata.

use serde::{Deserialize, Serialize};

/// The key a task's processes carry in the kernel's `TRACKED` map. Never 0 (0 means "untracked"
/// in the probe records).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskKey(pub u64);

impl TaskKey {
    /// FNV-1a 64 of the Nomad task id (`<alloc>/<task>/<invocation>`): the same id gives the same
    /// key in every driver process, which is what lets a restarted driver find its pinned state.
    #[must_use]
    pub fn from_task_id(task_id: &str) -> Self {
        let h = task_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(if h == 0 { 1 } else { h })
    }

    /// The raw key (as stored in the kernel maps).
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What Nomad and the supervisor say about a task, given to [`super::Observer::track`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMeta {
    /// Nomad task id (`TaskConfig.id`).
    pub task_id: String,
    pub alloc_id: String,
    pub task_name: String,
    /// Host PID of the task's main process (the one the supervisor waits for).
    pub main_pid: u32,
    /// Start time of the main process in clock ticks since boot (`/proc/<pid>/stat` field 22);
    /// 0 when unknown. Guards against a recycled PID on recovery.
    pub main_start_time: u64,
    /// The task's supervisor process, whose signals count as the driver's.
    pub supervisor_pid: Option<u32>,
    /// Host path of the task's memory cgroup, for when its main process is already gone (a
    /// task recovered after it ended while the driver was down).
    #[serde(default)]
    pub memcg_dir: Option<std::path::PathBuf>,
    /// The task's own cgroup (v1 freezer, v2 scope); a task process found outside it while the
    /// task runs is an escape. `None`: no task cgroup, no escape check.
    #[serde(default)]
    pub home: Option<crate::cgroups::CgroupHome>,
    /// cgroup v1: the task's cpu and memory cgroups, judged like `home` (a process that leaves
    /// only one of them escapes its limits too).
    #[serde(default)]
    pub other_homes: Vec<crate::cgroups::CgroupHome>,
}

impl TaskMeta {
    /// A short allocation id (first 8 characters), as Nomad prints it.
    #[must_use]
    pub fn short_alloc(&self) -> &str {
        self.alloc_id.get(..8).unwrap_or(&self.alloc_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_never_zero() {
        let a = TaskKey::from_task_id("4f1c/web/abcd");
        assert_eq!(a, TaskKey::from_task_id("4f1c/web/abcd"));
        assert_ne!(a, TaskKey::from_task_id("4f1c/web/abce"));
        assert_ne!(a.get(), 0);
        assert_eq!(TaskKey::from_task_id("").get(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(format!("{}", TaskKey(0xab)), "00000000000000ab");
    }

    #[test]
    fn short_alloc_handles_short_ids() {
        let mut m = TaskMeta {
            alloc_id: "0123456789".into(),
            ..TaskMeta::default()
        };
        assert_eq!(m.short_alloc(), "01234567");
        m.alloc_id = "abc".into();
        assert_eq!(m.short_alloc(), "abc");
    }
}
