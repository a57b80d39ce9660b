//! Label sets of the per-task series: Nomad's own allocation-metric labels (`namespace`, `job`,
//! `task_group`, `task`, `alloc_id`, as on `nomad_client_allocs_*`) plus one or two bounded
//! labels per family. No label ever takes a pid or a command line.

use prometheus_client::encoding::EncodeLabelSet;

use crate::telemetry::fact::TaskIdentity;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TaskLabels {
    pub namespace: String,
    pub job: String,
    pub task_group: String,
    pub task: String,
    pub alloc_id: String,
}

impl TaskLabels {
    #[must_use]
    pub fn of(t: &TaskIdentity) -> Self {
        Self {
            namespace: t.namespace.clone(),
            job: if t.job_name.is_empty() {
                t.job_id.clone()
            } else {
                t.job_name.clone()
            },
            task_group: t.task_group.clone(),
            task: t.task_name.clone(),
            alloc_id: t.alloc_id.clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OomLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub victim: &'static str,
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub victim: &'static str,
    pub sender_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub signal: String,
    pub sender_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PressureLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub resource: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub trace_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    #[prometheus(flatten)]
    pub task: TaskLabels,
    pub reason: &'static str,
    pub exit_code: String,
    pub signal: String,
    pub sender_class: &'static str,
    pub trace_id: String,
}

/// Values of `victim`.
pub const VICTIMS: [&str; 2] = ["main", "child"];
/// Values of `scope` (OOM kills).
pub const OOM_SCOPES: [&str; 3] = ["cgroup", "system", "unknown"];
/// Values of `sender_class`.
pub const SENDER_CLASSES: [&str; 6] = [
    "same_process",
    "same_task",
    "driver",
    "other_allocation",
    "host",
    "kernel",
];
/// Values of `event` (memory.events).
pub const MEMORY_EVENTS: [&str; 4] = ["high", "max", "oom", "oom_kill"];
/// Values of (`resource`, `kind`) (PSI).
pub const PRESSURES: [(&str, &str); 6] = [
    ("memory", "some"),
    ("memory", "full"),
    ("cpu", "some"),
    ("cpu", "full"),
    ("io", "some"),
    ("io", "full"),
];
