//! Task facts: what the driver learns about a task's life, produced once (by the observer from
//! the probes' events, and by the task table from Nomad's calls) and read by every sink (Nomad
//! task events, Prometheus metrics, OTLP traces). Facts are plain data; sinks decide what to do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bpfexec_proto::drivers;

use crate::observer::{ExitReason, OomScope, ProcessNode, Sender, TaskKey};

/// Who a task is, as Nomad names it (the labels of its metrics, the attributes of its trace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskIdentity {
    /// Nomad's task id (`<alloc id>/<task>/<invocation>`): one per run of the task.
    pub task_id: String,
    pub alloc_id: String,
    pub namespace: String,
    pub job_id: String,
    pub job_name: String,
    pub task_group: String,
    pub task_name: String,
    pub node_id: String,
    pub node_name: String,
}

impl TaskIdentity {
    /// From the TaskConfig Nomad sends with StartTask and in recovered handles.
    #[must_use]
    pub fn of(cfg: &drivers::TaskConfig) -> Self {
        Self {
            task_id: cfg.id.clone(),
            alloc_id: cfg.alloc_id.clone(),
            namespace: cfg.namespace.clone(),
            job_id: cfg.job_id.clone(),
            job_name: cfg.job_name.clone(),
            task_group: cfg.task_group_name.clone(),
            task_name: cfg.name.clone(),
            node_id: cfg.node_id.clone(),
            node_name: cfg.node_name.clone(),
        }
    }

    /// The key the probes carry for this task's processes.
    #[must_use]
    pub fn key(&self) -> TaskKey {
        TaskKey::from_task_id(&self.task_id)
    }
}

/// The task's main process as the driver started it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MainProcess {
    pub pid: u32,
    /// The command as configured (path inside the task, or a name looked up on its PATH).
    pub command: String,
    pub args: Vec<String>,
    /// The user the task runs as.
    pub user: String,
}

/// How long each step of StartTask took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartPhases {
    /// Decoding the config and planning the isolation.
    pub plan: Duration,
    /// Resource limits and the devices cgroup.
    pub cgroups: Duration,
    /// Starting the supervisor until the command was exec'd.
    pub launch: Duration,
}

/// One process's part in a task: the lineage events the probes report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessFact {
    /// `parent` created `child`.
    Fork {
        parent: u32,
        child: u32,
        comm: String,
    },
    /// `pid` now runs `filename`.
    Exec {
        pid: u32,
        filename: String,
        comm: String,
        /// Command line as procfs showed it right after the exec (None when it was already gone).
        cmdline: Option<Vec<String>>,
    },
    /// `pid` ended.
    Exit { pid: u32, comm: String },
}

/// How the task itself ended: for a task whose helper died, the end the probes saw (when they
/// saw one), else the reason as given.
#[must_use]
pub fn task_end(reason: &ExitReason) -> &ExitReason {
    match reason {
        ExitReason::HelperDied {
            task_end: Some(end),
            ..
        } => task_end(end),
        other => other,
    }
}

/// How a task run ended, in the categories operators alert on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndKind {
    ExitedOk,
    ExitedError,
    Signaled,
    OomKilled,
    /// Killed by the driver's own stop (kill signal or the kill_timeout escalation).
    DriverKilled,
    ExecFailed,
    /// The driver lost the task's exit status.
    Lost,
}

impl EndKind {
    pub const ALL: [EndKind; 7] = [
        Self::ExitedOk,
        Self::ExitedError,
        Self::Signaled,
        Self::OomKilled,
        Self::DriverKilled,
        Self::ExecFailed,
        Self::Lost,
    ];

    /// The `reason` label value.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::ExitedOk => "exited_ok",
            Self::ExitedError => "exited_error",
            Self::Signaled => "signaled",
            Self::OomKilled => "oom_killed",
            Self::DriverKilled => "driver_killed",
            Self::ExecFailed => "exec_failed",
            Self::Lost => "lost",
        }
    }

    /// The category of an explained end (`None`: the exit status was lost).
    #[must_use]
    pub fn of(reason: Option<&ExitReason>) -> Self {
        match reason.map(task_end) {
            // Lost, or the helper died and the probes could not tell how the task ended.
            None | Some(ExitReason::HelperDied { .. }) => Self::Lost,
            Some(ExitReason::Exited { code: 0 }) => Self::ExitedOk,
            Some(ExitReason::Exited { .. }) => Self::ExitedError,
            Some(ExitReason::OomKilled { .. }) => Self::OomKilled,
            Some(ExitReason::ExecFailed { .. }) => Self::ExecFailed,
            Some(ExitReason::Signaled {
                sender: Some(s), ..
            }) if s.class == crate::observer::SenderClass::Driver => Self::DriverKilled,
            Some(ExitReason::Signaled { .. }) => Self::Signaled,
        }
    }

    /// A failed end (span status Error, crash-loop alerts).
    #[must_use]
    pub fn failed(self) -> bool {
        !matches!(self, Self::ExitedOk)
    }
}

/// A task run's end.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskEnd {
    pub at: SystemTime,
    pub exit_code: i32,
    pub signal: i32,
    pub oom_killed: bool,
    pub kind: EndKind,
    /// The observer's explanation; None when the exit status was lost.
    pub reason: Option<ExitReason>,
    /// The one-line text of the task event (or the loss).
    pub message: String,
    /// The task event's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// One fact about a task.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// StartTask succeeded: the command runs.
    Started {
        task: Arc<TaskIdentity>,
        at: SystemTime,
        /// StartTask received -> command exec'd (None when not measured).
        start_duration: Option<Duration>,
        phases: StartPhases,
        main: MainProcess,
    },
    /// A restarted plugin re-attached to a task (RecoverTask).
    Recovered {
        task: Arc<TaskIdentity>,
        /// When the run started (from the task's saved state).
        started_at: SystemTime,
        main: MainProcess,
        running: bool,
        /// The live processes the observer found for it.
        processes: Vec<ProcessNode>,
    },
    /// Lineage events of the task's processes.
    Process {
        key: TaskKey,
        at: SystemTime,
        fact: ProcessFact,
    },
    /// A signal reached a process of the task.
    SignalReceived {
        key: TaskKey,
        at: SystemTime,
        pid: u32,
        main: bool,
        signal: i32,
        sender: Sender,
    },
    /// A process of the task other than the main one died of a signal (the main process's
    /// death is in [`Fact::Ended`]).
    ChildKilled {
        key: TaskKey,
        at: SystemTime,
        pid: u32,
        signal: i32,
        sender: Sender,
    },
    /// The OOM killer chose a process of the task.
    OomKill {
        key: TaskKey,
        at: SystemTime,
        pid: u32,
        comm: String,
        rss_kb: u64,
        main: bool,
        scope: OomScope,
    },
    /// A process left the task's cgroup and was killed.
    Escaped {
        key: TaskKey,
        at: SystemTime,
        pid: u32,
        comm: String,
        cgroup: String,
    },
    /// Processes outlived the task's main process and were killed.
    Leaked {
        key: TaskKey,
        at: SystemTime,
        pids: Vec<(u32, String)>,
    },
    /// The task's pids controller has refused `hits_total` forks or clones so far.
    PidsLimit {
        key: TaskKey,
        at: SystemTime,
        pids_max: u64,
        hits_total: u64,
    },
    /// A live notice for Nomad's task events (text already written).
    Notice {
        key: TaskKey,
        task_id: String,
        alloc_id: String,
        task_name: String,
        message: String,
        annotations: BTreeMap<String, String>,
    },
    /// The run ended.
    Ended {
        task: Arc<TaskIdentity>,
        end: TaskEnd,
    },
    /// DestroyTask: the driver forgot the run.
    Destroyed { task: Arc<TaskIdentity> },
}

impl Fact {
    /// The task run the fact is about.
    #[must_use]
    pub fn key(&self) -> TaskKey {
        match self {
            Self::Process { key, .. }
            | Self::SignalReceived { key, .. }
            | Self::ChildKilled { key, .. }
            | Self::OomKill { key, .. }
            | Self::Escaped { key, .. }
            | Self::Leaked { key, .. }
            | Self::PidsLimit { key, .. }
            | Self::Notice { key, .. } => *key,
            Self::Started { task, .. }
            | Self::Recovered { task, .. }
            | Self::Ended { task, .. }
            | Self::Destroyed { task } => task.key(),
        }
    }

    /// Lineage and signal facts come in storms; the Nomad event sink does not want them.
    #[must_use]
    pub fn is_process_level(&self) -> bool {
        matches!(self, Self::Process { .. } | Self::SignalReceived { .. })
    }
}
