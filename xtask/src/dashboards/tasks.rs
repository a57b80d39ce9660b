//! The "bpfexec / Tasks" dashboard: why tasks ended (by reason, with the exit status, the
//! signal's sender and a link to the run's trace), OOM kills, signals, processes, escapes and
//! leaks, start time, and memory pressure next to Nomad's own allocation metrics for the same
//! task. Built on the per-task series of the telemetry contract (labels `namespace`,
//! `exported_job`, `task_group`, `task`, `alloc_id`, as for Nomad's `nomad_client_allocs_*`).

use super::board::{AnnotationSpec, Board, DatasourceVar, Filter, Row, Scope, Viz, panel, q};

pub const UID: &str = "bpfexec-tasks";

/// The label filters of the Tasks dashboard, in picker order.
pub fn scope() -> Scope {
    Scope {
        source: "bpfexec_task_starts_total",
        filters: vec![
            Filter {
                label: "namespace",
                var: "namespace",
                title: "Namespace",
                description: "Nomad namespace of the tasks shown",
            },
            Filter {
                label: "exported_job",
                var: "job",
                title: "Job",
                description: "Nomad job (the job's `job` label, renamed `exported_job` by the scrape)",
            },
            Filter {
                label: "task_group",
                var: "group",
                title: "Group",
                description: "Task group",
            },
            Filter {
                label: "task",
                var: "task",
                title: "Task",
                description: "Task name",
            },
            Filter {
                label: "alloc_id",
                var: "alloc",
                title: "Allocation",
                description: "Allocation id",
            },
        ],
    }
}

/// The labels that name one task of one allocation.
const TASK_BY: &str = "namespace, exported_job, task_group, task, alloc_id";
/// Legend of a per-allocation series.
const TASK_LEGEND: &str = "{{exported_job}}/{{task_group}}/{{task}} {{alloc_id}}";

/// Events per graph interval of a per-task counter, exact and in whole numbers: the change of
/// each series over one interval, where a series seen for the first time counts from 0 (task
/// series start at 0 when the task starts, so a task that died before its first scrape is still
/// counted) and a counter reset (plugin restart) never counts negative.
pub fn per_interval(sel: &str) -> String {
    format!("clamp_min({sel} - ({sel} offset $__interval or {sel} * 0), 0)")
}

/// The trace of a run in the `$traces` datasource (Jaeger or Tempo), opened in Explore.
fn trace_link() -> String {
    concat!(
        "/explore?schemaVersion=1&panes={\"trace\":{\"datasource\":\"${traces}\",",
        "\"queries\":[{\"refId\":\"A\",\"datasource\":{\"uid\":\"${traces}\"},",
        "\"query\":\"${__value.raw}\"}],",
        "\"range\":{\"from\":\"${__from}\",\"to\":\"${__to}\"}}}"
    )
    .to_owned()
}

pub fn board() -> Board {
    let s = scope();
    Board {
        uid: UID,
        title: "bpfexec / Tasks",
        description: "Why bpfexec tasks ended and what their processes did: exit reasons, OOM kills, \
                      signals by sender, escapes and leaks, start time and memory pressure, next to \
                      Nomad's own allocation metrics.",
        datasources: vec![DatasourceVar {
            name: "traces",
            label: "Traces",
            plugin: "jaeger",
            description: "Where the driver's OTLP traces go (Jaeger; change the variable's type \
                          to tempo for Tempo): the trace links of the task ends table open there",
        }],
        annotations: vec![AnnotationSpec {
            name: "Task ends",
            expr: format!("{} * 1000", s.sel("bpfexec_task_end_timestamp_seconds", "")),
            title: "{{exported_job}}/{{task}} ended: {{reason}}",
            text: "exit code {{exit_code}}, signal {{signal}} from {{sender_class}}; alloc \
                   {{alloc_id}}; trace {{trace_id}}",
            tags: "reason",
        }],
        rows: vec![
            ends_row(&s),
            kills_row(&s),
            processes_row(&s),
            memory_row(&s),
        ],
        scope: s,
    }
}

fn ends_row(s: &Scope) -> Row {
    let exits = s.sel("bpfexec_task_exits_total", "");
    let failed = s.sel("bpfexec_task_exits_total", "reason!=\"exited_ok\"");
    Row {
        title: "Why tasks ended",
        panels: vec![
            panel(
                Viz::Bars,
                "Task ends by reason",
                "short",
                "Task runs that ended in each interval, by the reason the driver determined: \
                 exited_ok and exited_error (exit code 0 / non-zero), signaled (killed by a \
                 signal), oom_killed (the kernel's OOM killer ended it), driver_killed (stopped \
                 by Nomad, e.g. kill_timeout escalation), exec_failed (the command could not \
                 start), lost (no exit status could be recovered). The table below names each \
                 run.",
            )
            .query(q(
                format!("sum by (reason) ({}) > 0", per_interval(&exits)),
                "{{reason}}",
            )),
            panel(
                Viz::Bars,
                "Failed task ends by task",
                "short",
                "Task runs that ended for any reason but a clean exit, per task: which task is \
                 failing. Repeated bars for one task mean it is crash-looping (see the \
                 BpfexecTaskCrashLooping alert).",
            )
            .query(q(
                format!(
                    "sum by (exported_job, task_group, task) ({}) > 0",
                    per_interval(&failed)
                ),
                "{{exported_job}}/{{task_group}}/{{task}}",
            )),
            panel(
                Viz::Table,
                "Recent task ends",
                "dateTimeAsIso",
                "The last runs of each task that ended (the driver keeps the last 5 per task, \
                 until metrics_retention after the task is destroyed): when, why, the exit code, \
                 the signal and who sent it (same_process, same_task, driver, other_allocation, \
                 host, kernel). Click a trace id to open the run's trace (process tree, execs, \
                 signals, the OOM victim) in the Traces datasource.",
            )
            .size(24, 9)
            .query(q(
                format!("{} * 1000", s.sel("bpfexec_task_end_timestamp_seconds", "")),
                "",
            ))
            .columns(&[
                ("Value", "Ended"),
                ("exported_job", "Job"),
                ("task_group", "Group"),
                ("task", "Task"),
                ("reason", "Reason"),
                ("exit_code", "Exit code"),
                ("signal", "Signal"),
                ("sender_class", "Signal from"),
                ("alloc_id", "Allocation"),
                ("namespace", "Namespace"),
                ("trace_id", "Trace"),
            ])
            .link("trace_id", "Open the trace of this run", trace_link())
            .sort_desc("Ended"),
            panel(
                Viz::Lines,
                "Restarts",
                "short",
                "Restarts of each allocation's task so far (runs started minus one). Nomad \
                 restarts a task in place according to its restart block; a new allocation \
                 starts from 0.",
            )
            .query(q(
                format!(
                    "max by ({TASK_BY}) ({}) - 1",
                    s.sel("bpfexec_task_starts_total", "")
                ),
                TASK_LEGEND,
            )),
            panel(
                Viz::Lines,
                "Start time (StartTask to exec)",
                "s",
                "Percentiles of the time from the driver receiving StartTask to the task's \
                 command being exec'd (isolation, cgroups and mounts included), over the starts \
                 in each interval. Empty intervals had no start.",
            )
            .query(start_quantile(s, "0.5"))
            .query(start_quantile(s, "0.9"))
            .query(start_quantile(s, "0.99")),
        ],
    }
}

fn start_quantile(s: &Scope, quantile: &str) -> super::board::Query {
    q(
        format!(
            "histogram_quantile({quantile}, sum by (le) ({}))",
            per_interval(&s.sel("bpfexec_task_start_duration_seconds_bucket", ""))
        ),
        &format!("p{}", quantile.trim_start_matches("0.")),
    )
}

fn kills_row(s: &Scope) -> Row {
    Row {
        title: "OOM kills and signals",
        panels: vec![
            panel(
                Viz::Bars,
                "OOM kills by victim",
                "short",
                "Processes of the task killed by the kernel's OOM killer: victim main (the \
                 task's own process: the task ends oom_killed) or child (a process it started; \
                 the task may carry on). Scope cgroup means the task hit its own memory limit, \
                 system that the whole host ran out of memory. The victim's pid, command and RSS \
                 are in the Driver task event and in the run's trace.",
            )
            .query(q(
                format!(
                    "sum by (exported_job, task, victim, scope) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_oom_kills_total", ""))
                ),
                "{{exported_job}}/{{task}}: {{victim}} ({{scope}})",
            )),
            panel(
                Viz::Bars,
                "Processes killed by a signal, by sender",
                "short",
                "Processes of the task that a signal ended, by who sent it: same_process, \
                 same_task (another process of the task), driver (stop, kill_timeout), \
                 other_allocation (a process of another Nomad task), host (a process outside \
                 Nomad's tasks: an operator, a script), kernel (a fault such as SIGSEGV). Kills \
                 from other_allocation or host fire BpfexecTaskKilledFromOutside.",
            )
            .query(q(
                format!(
                    "sum by (exported_job, task, victim, sender_class) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_signal_kills_total", ""))
                ),
                "{{exported_job}}/{{task}}: {{victim}} by {{sender_class}}",
            )),
            panel(
                Viz::Bars,
                "Signals received, by sender",
                "short",
                "Signals delivered to the task's processes, by signal and sender class, \
                 whether or not they ended a process (SIGCHLD, SIGURG and SIGWINCH are not \
                 counted).",
            )
            .query(q(
                format!(
                    "sum by (signal, sender_class) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_signals_received_total", ""))
                ),
                "{{signal}} from {{sender_class}}",
            )),
        ],
    }
}

fn processes_row(s: &Scope) -> Row {
    Row {
        title: "Processes",
        panels: vec![
            panel(
                Viz::Lines,
                "Live processes",
                "short",
                "Processes of the task that are alive now, as the eBPF probes track them by \
                 lineage (including any that left the task's process group).",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by ({TASK_BY}) ({})",
                    s.sel("bpfexec_task_processes", "")
                ),
                TASK_LEGEND,
            )),
            panel(
                Viz::Lines,
                "Exec and fork rate",
                "ops",
                "Successful execs and new processes per second in each task: a busy shell \
                 loop or a fork storm shows here first.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (exported_job, task) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_task_execs_total", "")
                ),
                "{{exported_job}}/{{task}} execs",
            ))
            .query(q(
                format!(
                    "sum by (exported_job, task) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_task_forks_total", "")
                ),
                "{{exported_job}}/{{task}} forks",
            )),
            panel(
                Viz::Bars,
                "Escapes and leaks",
                "short",
                "Processes the driver killed because they left the task's cgroup (escaped the \
                 limits Nomad set) or outlived the task's main process (leaked past the task's \
                 end). Each is also a Driver task event naming the process.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (exported_job, task) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_escapes_total", ""))
                ),
                "{{exported_job}}/{{task}} escaped",
            ))
            .query(q(
                format!(
                    "sum by (exported_job, task) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_leaked_processes_total", ""))
                ),
                "{{exported_job}}/{{task}} leaked",
            )),
            panel(
                Viz::Bars,
                "Process-count limit hits",
                "short",
                "Forks and clones the kernel refused because the task reached its process-count \
                 limit (the pids_max task option: pids.max on cgroup v2, the pids controller on \
                 v1). The process that tried to fork got EAGAIN; a fork bomb stays inside its \
                 task. Each first hit is also a Driver task event.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (exported_job, task) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_pids_limit_hits_total", ""))
                ),
                "{{exported_job}}/{{task}} refused forks",
            )),
        ],
    }
}

fn memory_row(s: &Scope) -> Row {
    let usage = s.sel("bpfexec_task_memory_usage_bytes", "");
    let limit = s.sel("bpfexec_task_memory_limit_bytes", "");
    Row {
        title: "Memory pressure (bpfexec) and Nomad's view of the same task",
        panels: vec![
            panel(
                Viz::Lines,
                "Memory use of the limit",
                "percentunit",
                "The task cgroup's memory usage as a share of its hard limit (memory_max, or \
                 memory when no max is set). Near 100% the kernel reclaims page cache and then \
                 OOM-kills; usage includes reclaimable cache, so read it with the limit hits \
                 and pressure panels next to it.",
            )
            .range(0.0, 1.0)
            .query(q(format!("{usage} / {limit}"), TASK_LEGEND)),
            panel(
                Viz::Bars,
                "Memory limit hits and OOM events",
                "short",
                "The cgroup's memory events in each interval: max (allocations that hit the \
                 hard limit and forced reclaim; v1: memory.failcnt), high (over memory.high, v2), \
                 oom and oom_kill. Limit hits climbing before an OOM kill show a task outgrowing \
                 its memory.",
            )
            .query(q(
                format!(
                    "sum by (exported_job, task, event) ({}) > 0",
                    per_interval(&s.sel("bpfexec_task_memory_events_total", ""))
                ),
                "{{exported_job}}/{{task}} {{event}}",
            )),
            panel(
                Viz::Lines,
                "Pressure stall time (PSI, cgroup v2)",
                "percentunit",
                "Share of time some (or all, full) of the task's processes were stalled waiting \
                 for memory, CPU or IO (the cgroup's pressure files). Rising memory stall means \
                 reclaim is slowing the task down before an OOM. cgroup v2 only: empty on v1 \
                 clients.",
            )
            .min(0.0)
            .query(q(
                format!(
                    "sum by (exported_job, task, resource, kind) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_task_pressure_seconds_total", "")
                ),
                "{{exported_job}}/{{task}} {{resource}} {{kind}}",
            )),
            panel(
                Viz::Lines,
                "Memory usage and limit",
                "bytes",
                "The task cgroup's memory usage and hard limit as the driver reads them \
                 (absent limit: unlimited).",
            )
            .query(q(
                format!("sum by ({TASK_BY}) ({usage})"),
                "usage {{exported_job}}/{{task}} {{alloc_id}}",
            ))
            .query(q(
                format!("sum by ({TASK_BY}) ({limit})"),
                "limit {{exported_job}}/{{task}} {{alloc_id}}",
            )),
            panel(
                Viz::Lines,
                "Nomad: task memory (RSS, usage, allocated)",
                "bytes",
                "Nomad's own allocation metrics for the same bpfexec tasks \
                 (nomad_client_allocs_memory_*; the agent needs telemetry { \
                 publish_allocation_metrics = true, prometheus_metrics = true }): RSS and usage \
                 as the driver reports them to Nomad, and the memory Nomad allocated.",
            )
            .query(nomad(s, "nomad_client_allocs_memory_rss", "RSS"))
            .query(nomad(s, "nomad_client_allocs_memory_usage", "usage"))
            .query(nomad(
                s,
                "nomad_client_allocs_memory_allocated",
                "allocated",
            )),
            panel(
                Viz::Lines,
                "Nomad: task CPU",
                "percent",
                "Nomad's own CPU metric for the same bpfexec tasks \
                 (nomad_client_allocs_cpu_total_percent, 100% = one core).",
            )
            .query(nomad(s, "nomad_client_allocs_cpu_total_percent", "CPU")),
        ],
    }
}

/// A Nomad allocation metric, kept to the bpfexec tasks in scope (joined on the task labels).
fn nomad(s: &Scope, metric: &str, what: &str) -> super::board::Query {
    q(
        format!(
            "sum by ({TASK_BY}) ({} and on ({TASK_BY}) {})",
            s.sel(metric, ""),
            s.sel("bpfexec_task_running", "")
        ),
        &format!("{what} {{{{exported_job}}}}/{{{{task}}}} {{{{alloc_id}}}}"),
    )
}
