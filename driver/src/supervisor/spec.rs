//! The launch spec: everything a supervisor needs to start a task's process, resolved and
//! validated by the plugin before the supervisor runs (so errors surface from StartTask).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::isolation::identity::Identity;

/// What a task's process needs to register itself with the probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfTrack {
    /// `<pin root>/v<N>/maps`, holding `TRACKED` and `FACTS`.
    pub maps_dir: PathBuf,
    /// The task's key in those maps.
    pub key: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Nomad task id, for log lines.
    pub task_id: String,
    /// Absolute path of the program, as the task sees it (inside its root when isolated).
    pub program: PathBuf,
    /// argv[0] as given in the job's `command`.
    pub argv0: String,
    pub args: Vec<String>,
    /// The complete environment of the task.
    pub env: BTreeMap<String, String>,
    /// Working directory, as the task sees it.
    pub cwd: PathBuf,
    /// Log FIFOs Nomad created (or /dev/null when logs are disabled), host paths.
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    /// Files the task process writes "0" to, to join its cgroups before it execs the command
    /// (v1 `tasks`, v2 `cgroup.procs`; specs of older versions named `cgroup.procs` on v1 too).
    #[serde(alias = "cgroup_procs")]
    pub cgroup_join: Vec<PathBuf>,
    /// cgroup v2: the scope the task's process is created in (clone3 `CLONE_INTO_CGROUP`), so
    /// it joins no `cgroup.procs` of that directory.
    #[serde(default)]
    pub cgroup_into: Option<PathBuf>,
    /// The probes' pinned maps, where the task's process registers itself before it execs so
    /// its exec and everything it forks are seen from the first instruction; None when the
    /// probes are not loaded or not pinned (the plugin then registers it after the start).
    #[serde(default)]
    pub self_track: Option<SelfTrack>,
    /// Value for `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<i32>,
    /// Run the task in a new pid namespace, under a small init that reaps and reports.
    pub pid_ns: bool,
    /// Private mount (and ipc/net) namespace and root; None runs on the host's view (raw mode).
    pub sandbox: Option<Sandbox>,
    /// User to switch to; None keeps the supervisor's (root).
    pub identity: Option<Identity>,
    /// Capability names (no `CAP_`) the task keeps; None leaves capabilities as they are.
    pub caps: Option<Vec<String>>,
    pub no_new_privs: bool,
    /// Seccomp filters installed last before exec; None runs unconfined.
    #[serde(default)]
    pub seccomp: Option<crate::seccomp::SeccompSpec>,
    /// stdout and stderr go to systemd-journald instead of the log FIFOs.
    #[serde(default)]
    pub journal: Option<JournalSpec>,
}

/// Where and how the task's output goes to the journal (`logging { driver = "journald" }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalSpec {
    /// journald's native datagram socket.
    pub socket: PathBuf,
    /// `SYSLOG_IDENTIFIER`.
    pub identifier: String,
    /// Fields added to every entry (`NOMAD_ALLOC_ID`, …).
    pub fields: Vec<(String, String)>,
}

/// A read-only filesystem image mounted through a loop device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMount {
    /// The image file on the host.
    pub source: PathBuf,
    /// Where it appears inside the task; `/` for the root image.
    pub target: PathBuf,
}

/// The task's private filesystem view and namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    /// Empty host directory on which the task's root (a small tmpfs) is assembled.
    pub root: PathBuf,
    /// Bind mounts, parents before children.
    pub mounts: Vec<Bind>,
    /// Device nodes Nomad's device plugins assigned to the task, bound after the task's /dev
    /// is assembled (so a `/dev/...` target is not hidden by it).
    #[serde(default)]
    pub devices: Vec<Bind>,
    pub ipc_ns: bool,
    /// Network namespace to join (Nomad's group network), None for the host's.
    pub netns: Option<PathBuf>,
    /// pivot_root (default) or chroot (`no_pivot_root`).
    pub pivot_root: bool,
    /// Filesystem images (`root_image`, `mount_image`), root first. With a root image the
    /// task's root holds the image's top-level entries instead of `chroot_env`.
    #[serde(default)]
    pub images: Vec<ImageMount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute path inside the task.
    pub target: PathBuf,
    pub readonly: bool,
    /// Device nodes on this mount cannot be opened: writable task directories get it, so a task
    /// allowed CAP_MKNOD cannot make itself a host device node there.
    #[serde(default)]
    pub nodev: bool,
}
