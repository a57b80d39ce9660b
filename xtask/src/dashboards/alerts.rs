//! bpfexec's recording and alerting rules: the events only bpfexec sees (OOM kills of a task
//! or of a child, kills from outside the allocation, escapes, leaks, crash loops, memory
//! pressure, process-count limit hits) and the driver's own health (probes, event loss, map
//! use, trace export, the metrics endpoint). Series and labels are those of the telemetry
//! contract.

use super::rules::{Alert, Group, Rule, Severity};

/// The labels that name one task of one allocation.
pub const TASK: &str = "namespace, exported_job, task_group, task, alloc_id";

/// Recorded per-task event counts over a window, and the counter they come from.
const TASK_EVENTS: [(&str, &str, &str); 8] = [
    (
        "task:bpfexec_task_exits:increase5m",
        "bpfexec_task_exits_total",
        "5m",
    ),
    (
        "task:bpfexec_task_exits:increase15m",
        "bpfexec_task_exits_total",
        "15m",
    ),
    (
        "task:bpfexec_task_oom_kills:increase5m",
        "bpfexec_task_oom_kills_total",
        "5m",
    ),
    (
        "task:bpfexec_task_signal_kills:increase5m",
        "bpfexec_task_signal_kills_total",
        "5m",
    ),
    (
        "task:bpfexec_task_escapes:increase5m",
        "bpfexec_task_escapes_total",
        "5m",
    ),
    (
        "task:bpfexec_task_leaked_processes:increase5m",
        "bpfexec_task_leaked_processes_total",
        "5m",
    ),
    (
        "task:bpfexec_task_memory_events:increase5m",
        "bpfexec_task_memory_events_total",
        "5m",
    ),
    (
        "task:bpfexec_task_pids_limit_hits:increase5m",
        "bpfexec_task_pids_limit_hits_total",
        "5m",
    ),
];

/// Events of a per-task counter within `window`, in whole numbers: the change over the
/// window. A series that appeared within the window while Prometheus was already scraping its
/// target (it has fewer samples in the window than the target's `up`) counts from 0: task
/// series start at 0 when the task starts, so a task OOM-killed before its first scrape still
/// counts, which `increase()` would miss. A series a fresh Prometheus sees for the first time
/// (as many samples as `up`) does not count its old events again. A counter reset (plugin
/// restart) never counts negative.
fn events_within(counter: &str, window: &str) -> String {
    format!(
        "clamp_min(\n  {counter}\n  - (\n    {counter} offset {window}\n    or (\n      {counter} * 0\n      and count_over_time({counter}[{window}])\n        < on (instance, job) group_left () count_over_time(up[{window}])\n    )\n    or {counter}\n  ),\n  0\n)"
    )
}

pub fn recording_groups() -> Vec<Group> {
    vec![Group {
        name: "bpfexec-task-events",
        rules: TASK_EVENTS
            .iter()
            .map(|&(record, counter, window)| Rule::Record {
                record,
                expr: events_within(counter, window),
            })
            .collect(),
    }]
}

pub fn alert_groups() -> Vec<Group> {
    vec![
        Group {
            name: "bpfexec-tasks",
            rules: task_alerts().into_iter().map(Rule::Alert).collect(),
        },
        Group {
            name: "bpfexec-driver",
            rules: driver_alerts().into_iter().map(Rule::Alert).collect(),
        },
    ]
}

const FAILED_REASONS: &str = "exited_error|signaled|oom_killed|exec_failed|lost";

fn task_alerts() -> Vec<Alert> {
    vec![
        Alert {
            name: "BpfexecTaskOOMKilled",
            expr: "task:bpfexec_task_exits:increase5m{reason=\"oom_killed\"} > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "Task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} was OOM-killed",
            description: "The kernel's OOM killer ended task {{ $labels.task }} of job {{ $labels.exported_job }} (namespace {{ $labels.namespace }}, allocation {{ $labels.alloc_id }}) {{ $value }} time(s) in the last 5 minutes.\n\
                          The Driver task event (nomad alloc status {{ $labels.alloc_id }}) names the victim process and its RSS, and says whether the task's own memory limit or the whole host ran out.\n\
                          What to do: raise the task's resources.memory (or memory_max), or find what grew: the bpfexec / Tasks dashboard shows the task's memory use, limit hits and pressure before the kill.",
        },
        Alert {
            name: "BpfexecChildProcessOOMKilled",
            expr: "sum without (scope) (task:bpfexec_task_oom_kills:increase5m{victim=\"child\"}) > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "A process of task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} was OOM-killed",
            description: "The kernel's OOM killer killed {{ $value }} process(es) started by task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) in the last 5 minutes. The task's main process survived, so Nomad sees nothing: no restart, no OOM flag; a worker or helper may be silently gone.\n\
                          The Driver task event (nomad alloc status {{ $labels.alloc_id }}) names the victim's pid, command and RSS.\n\
                          What to do: give the task more memory (resources.memory / memory_max) or bound the child's memory use.",
        },
        Alert {
            name: "BpfexecTaskKilledFromOutside",
            expr: "task:bpfexec_task_signal_kills:increase5m{victim=\"main\", sender_class=~\"other_allocation|host\"} > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "Task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} was killed by a signal from outside its allocation ({{ $labels.sender_class }})",
            description: "The main process of task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) was killed by a signal that neither Nomad nor the task itself sent: sender class {{ $labels.sender_class }} (host: a process outside every Nomad task, e.g. an operator's kill, a script or a host agent; other_allocation: a process of another Nomad task).\n\
                          The Driver task event (nomad alloc status {{ $labels.alloc_id }}) names the signal and the sender's pid, command and uid.\n\
                          What to do: find who sent it; stop or signal tasks through Nomad (nomad alloc stop / nomad alloc signal) so the scheduler knows.",
        },
        Alert {
            name: "BpfexecTaskCrashLooping",
            expr: format!(
                "sum by (namespace, exported_job, task_group, task) (task:bpfexec_task_exits:increase15m{{reason=~\"{FAILED_REASONS}\"}}) >= 3"
            ),
            for_: "0m",
            severity: Severity::Warning,
            summary: "Task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} is crash-looping",
            description: "Task {{ $labels.task }} of job {{ $labels.exported_job }} (namespace {{ $labels.namespace }}) ended with a failure {{ $value }} times in the last 15 minutes, across its allocations (exited with an error, killed by a signal, OOM-killed, could not exec, or lost).\n\
                          The Recent task ends table of the bpfexec / Tasks dashboard gives each run's reason, exit code, signal and sender, with a link to its trace; nomad alloc logs -stderr shows what the task printed.\n\
                          What to do: fix the cause the reasons point to; Nomad keeps restarting and rescheduling the task meanwhile.",
        },
        Alert {
            name: "BpfexecProcessEscapedCgroup",
            expr: "task:bpfexec_task_escapes:increase5m > 0".to_owned(),
            for_: "0m",
            severity: Severity::Critical,
            summary: "A process of task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} escaped its cgroup",
            description: "{{ $value }} process(es) of task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) left the task's cgroup in the last 5 minutes; the driver killed them. A process outside its task's cgroup escapes the memory and CPU limits Nomad set, and Nomad's stop would not find it.\n\
                          The Driver task event names the process and the cgroup it moved to.\n\
                          What to do: find what moved it (a root task writing to cgroupfs, cgexec, systemd-run); run the task as a non-root user and without CAP_SYS_ADMIN.",
        },
        Alert {
            name: "BpfexecProcessesLeaked",
            expr: "task:bpfexec_task_leaked_processes:increase5m > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "Processes outlived task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }}",
            description: "{{ $value }} process(es) of task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) were still alive after the task's main process ended, in the last 5 minutes; the driver killed them. Left alone they would have kept running outside Nomad's control.\n\
                          The Driver task event names them. This concerns tasks with isolation = \"none\" or pid_mode = \"host\", whose children call setsid or daemonize.\n\
                          What to do: make the task wait for its children (or not daemonize them), or run it with a private pid namespace.",
        },
        Alert {
            name: "BpfexecTaskPidsLimitReached",
            expr: "task:bpfexec_task_pids_limit_hits:increase5m > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "Task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} reached its process-count limit",
            description: "The kernel refused {{ $value }} fork(s) or clone(s) of task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) in the last 5 minutes because the task reached its pids_max. The process that tried got EAGAIN: a worker pool may be short of workers, or a fork bomb was contained.\n\
                          The Driver task event (nomad alloc status {{ $labels.alloc_id }}) names the limit; the bpfexec / Tasks dashboard shows live processes and the fork rate.\n\
                          What to do: raise pids_max in the task's config if the task needs more processes, or find what forks in a loop.",
        },
        Alert {
            name: "BpfexecTaskMemoryPressure",
            expr: format!(
                "(\n  max by ({TASK}) (nomad_client_allocs_memory_rss)\n    / max by ({TASK}) (bpfexec_task_memory_limit_bytes)\n    > 0.9\n  or\n  max by ({TASK}) (rate(bpfexec_task_pressure_seconds_total{{resource=\"memory\", kind=\"full\"}}[5m]))\n    > 0.1\n)\nand on ({TASK})\nmax by ({TASK}) (bpfexec_task_running) == 1"
            ),
            for_: "2m",
            severity: Severity::Warning,
            summary: "Task {{ $labels.exported_job }}/{{ $labels.task_group }}/{{ $labels.task }} is close to an OOM kill",
            description: "Task {{ $labels.task }} of job {{ $labels.exported_job }} (allocation {{ $labels.alloc_id }}) has been under memory pressure for 2 minutes: its resident memory (which only an OOM kill can free) is above 90% of its memory limit, or (cgroup v2) its processes were completely stalled on memory more than 10% of the time. An OOM kill is likely next.\n\
                          The bpfexec / Tasks dashboard shows the memory use of the limit, limit hits and pressure stall time; the RSS comes from Nomad's allocation metrics (telemetry publish_allocation_metrics = true).\n\
                          What to do: raise resources.memory (or memory_max) before the kernel kills the task, or find what is growing.",
        },
    ]
}

fn driver_alerts() -> Vec<Alert> {
    vec![
        Alert {
            name: "BpfexecDriverMetricsDown",
            expr: "up{job=\"bpfexec\"} == 0".to_owned(),
            for_: "5m",
            severity: Severity::Critical,
            summary: "The bpfexec driver's metrics endpoint {{ $labels.instance }} is down",
            description: "Prometheus could not scrape the bpfexec driver at {{ $labels.instance }} for 5 minutes, so none of the bpfexec alerts can fire for tasks on that client.\n\
                          Either the Nomad agent or the plugin is not running, or the plugin's http_addr is not set to this address.\n\
                          What to do: check nomad node status -self -verbose (driver.bpfexec and its health) and the agent log; the alert expects the scrape job to be named bpfexec, as in the shipped scrape configuration.",
        },
        Alert {
            name: "BpfexecProbesNotLoaded",
            expr: "bpfexec_probes_loaded == 0".to_owned(),
            for_: "5m",
            severity: Severity::Critical,
            summary: "bpfexec's eBPF probes are not loaded on {{ $labels.instance }}",
            description: "The bpfexec driver on {{ $labels.instance }} runs without its eBPF probes. Tasks still run, but exit reasons, OOM victims, signal senders, escapes and leaks are not seen, and the task alerts cannot fire for tasks on this client.\n\
                          What to do: the node attribute driver.bpfexec.probes.error (nomad node status -self -verbose) says why: no BTF, tracefs not mountable, missing tracepoints, or the agent not running as root.",
        },
        Alert {
            name: "BpfexecObserverLosingEvents",
            expr: "sum by (instance, job) (increase(bpfexec_ringbuf_lost_records_total[10m]) + increase(bpfexec_observer_lagged_events_total[10m])) > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "bpfexec on {{ $labels.instance }} is losing kernel events",
            description: "The eBPF probes on {{ $labels.instance }} dropped records (ring buffer full) or the observer fell behind in the last 10 minutes. While this lasts, exit reasons, OOM victims, signal senders, escapes and leaks may be missing for tasks on this client.\n\
                          It takes a burst of process activity (exec, fork or signal storms) larger than the ring buffer absorbs, or a plugin starved of CPU.\n\
                          What to do: look at the bpfexec / Observer health dashboard (events by kind, plugin CPU, lag) to find the storm and the task causing it.",
        },
        Alert {
            name: "BpfexecTrackedProcessMapFull",
            expr: "bpfexec_map_entries{map=\"tracked\"} / bpfexec_map_capacity{map=\"tracked\"} > 0.9".to_owned(),
            for_: "5m",
            severity: Severity::Warning,
            summary: "bpfexec's tracked-process map on {{ $labels.instance }} is over 90% full",
            description: "The probes' map of tracked task processes on {{ $labels.instance }} has been over 90% full for 5 minutes. When it is full, new processes of tasks are not tracked: their execs, signals and OOM kills are missed and escapes and leaks go unseen.\n\
                          What to do: find the task with the most live processes (bpfexec / Tasks dashboard, Live processes) and bound it, or spread tasks over more clients.",
        },
        Alert {
            name: "BpfexecOTLPExportFailing",
            expr: "sum by (instance, job) (increase(bpfexec_otlp_export_errors_total[5m])) > 0".to_owned(),
            for_: "10m",
            severity: Severity::Warning,
            summary: "bpfexec on {{ $labels.instance }} cannot export traces",
            description: "The bpfexec driver on {{ $labels.instance }} has failed to export task traces to its OTLP collector for 10 minutes; the spans of those task runs are lost, and the trace links of the Tasks dashboard lead nowhere.\n\
                          What to do: check the plugin's otlp block (endpoint, protocol grpc or http/protobuf, headers) and that the collector is up and reachable from the client.",
        },
        Alert {
            name: "BpfexecSinkDroppingFacts",
            expr: "sum by (instance, job, sink) (increase(bpfexec_sink_dropped_facts_total[10m])) > 0".to_owned(),
            for_: "0m",
            severity: Severity::Warning,
            summary: "bpfexec on {{ $labels.instance }} dropped task facts for its {{ $labels.sink }} sink",
            description: "The {{ $labels.sink }} sink of the bpfexec driver on {{ $labels.instance }} could not keep up and lost task facts (ends, kills, escapes) in the last 10 minutes: nomad_events means task events missing in Nomad, metrics means counters lower than what happened, traces means spans missing.\n\
                          What to do: look for a burst of task activity on the Observer health dashboard; for traces, check that the OTLP collector keeps up.",
        },
    ]
}
