//! The "bpfexec / Observer health" dashboard, per Nomad client (the driver's scrape target,
//! `instance`): are the eBPF probes loaded, how many events they deliver and lose, how far the
//! observer lags, what the probes cost per program, how full the tracked-process map is, the
//! plugin's own CPU and memory, and the OTLP trace export. Built on the driver-health series of
//! the telemetry contract.

use super::board::{Board, Filter, Row, Scope, Viz, panel, q};
use super::tasks::per_interval;

pub const UID: &str = "bpfexec-observer";

pub fn scope() -> Scope {
    Scope {
        source: "bpfexec_build_info",
        filters: vec![Filter {
            label: "instance",
            var: "instance",
            title: "Client",
            description: "The driver's metrics endpoint (http_addr) on each Nomad client",
        }],
    }
}

pub fn board() -> Board {
    let s = scope();
    Board {
        uid: UID,
        title: "bpfexec / Observer health",
        description: "Health of the bpfexec driver on each Nomad client: eBPF probes, events and \
                      losses, observer lag, probe cost, map use, the plugin process and the OTLP \
                      trace export.",
        datasources: Vec::new(),
        annotations: Vec::new(),
        rows: vec![
            probes_row(&s),
            events_row(&s),
            cost_row(&s),
            plugin_row(&s),
            export_row(&s),
        ],
        scope: s,
    }
}

fn on_off(spec: super::board::PanelSpec, off: &'static str) -> super::board::PanelSpec {
    spec.mapping("1", "on", "green").mapping("0", off, "red")
}

fn probes_row(s: &Scope) -> Row {
    Row {
        title: "eBPF probes",
        panels: vec![
            panel(
                Viz::Stat,
                "Probes loaded",
                "none",
                "Whether the driver's eBPF probes are loaded on the client. Without them tasks \
                 still run, but exit reasons, OOM victims, signal senders, escapes and leaks are \
                 not seen: the node attribute driver.bpfexec.probes.error says why (no BTF, \
                 tracefs not mountable, missing tracepoints). Fires BpfexecProbesNotLoaded.",
            )
            .size(6, 4)
            .mapping("1", "loaded", "green")
            .mapping("0", "NOT loaded", "red")
            .query(q(
                format!("max by (instance) ({})", s.sel("bpfexec_probes_loaded", "")),
                "{{instance}}",
            )),
            panel(
                Viz::Stat,
                "Attached probe programs",
                "none",
                "How many of the driver's probe programs are attached to their tracepoints (the \
                 table below names them).",
            )
            .size(6, 4)
            .query(q(
                format!(
                    "sum by (instance) ({})",
                    s.sel("bpfexec_probe_attached", "")
                ),
                "{{instance}}",
            )),
            on_off(
                panel(
                    Viz::Stat,
                    "BPF run-time statistics",
                    "none",
                    "Whether the kernel counts the probes' run time (kernel.bpf_stats_enabled); \
                     the probe cost panels are empty while it is off.",
                ),
                "off",
            )
            .size(6, 4)
            .query(q(
                format!(
                    "max by (instance) ({})",
                    s.sel("bpfexec_bpf_stats_enabled", "")
                ),
                "{{instance}}",
            )),
            on_off(
                panel(
                    Viz::Stat,
                    "OTLP trace export",
                    "none",
                    "Whether the driver exports traces over OTLP (the plugin's otlp block, or \
                     OTEL_EXPORTER_OTLP_ENDPOINT in the agent's environment).",
                ),
                "off",
            )
            .size(6, 4)
            .query(q(
                format!("max by (instance) ({})", s.sel("bpfexec_otlp_enabled", "")),
                "{{instance}}",
            )),
            panel(
                Viz::Table,
                "Driver build",
                "none",
                "Driver version, cgroup mode and kernel per client.",
            )
            .size(12, 6)
            .query(q(s.sel("bpfexec_build_info", ""), ""))
            .columns(&[
                ("instance", "Client"),
                ("version", "Version"),
                ("cgroup_mode", "cgroup"),
                ("kernel", "Kernel"),
            ]),
            panel(
                Viz::Table,
                "Probe programs",
                "none",
                "Each probe program attached on each client (1 = attached).",
            )
            .size(12, 6)
            .query(q(s.sel("bpfexec_probe_attached", ""), ""))
            .columns(&[
                ("instance", "Client"),
                ("program", "Program"),
                ("Value", "Attached"),
            ]),
        ],
    }
}

fn events_row(s: &Scope) -> Row {
    Row {
        title: "Events, losses and lag",
        panels: vec![
            panel(
                Viz::Lines,
                "Probe events by kind",
                "cps",
                "Events the observer processed per second: exec, fork, exit, signal and oom, \
                 from every process on the client (tracked tasks and the rest).",
            )
            .size(8, 8)
            .query(q(
                format!(
                    "sum by (instance, kind) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_observer_events_total", "")
                ),
                "{{instance}} {{kind}}",
            )),
            panel(
                Viz::Bars,
                "Events lost",
                "short",
                "Records the probes dropped because the ring buffer was full, and events the \
                 observer fell behind on. Any loss means an exit reason, OOM victim or signal \
                 sender may be missing: fires BpfexecObserverLosingEvents.",
            )
            .size(8, 8)
            .query(q(
                format!(
                    "sum by (instance) (increase({}[$__rate_interval]))",
                    s.sel("bpfexec_ringbuf_lost_records_total", "")
                ),
                "{{instance}} ring buffer full",
            ))
            .query(q(
                format!(
                    "sum by (instance) (increase({}[$__rate_interval]))",
                    s.sel("bpfexec_observer_lagged_events_total", "")
                ),
                "{{instance}} observer fell behind",
            )),
            panel(
                Viz::Lines,
                "Observer lag",
                "s",
                "Age of the newest event when the observer handled it (the maximum over each \
                 scrape interval): how late the driver learns what the kernel saw.",
            )
            .size(8, 8)
            .query(q(
                format!(
                    "max by (instance) ({})",
                    s.sel("bpfexec_observer_lag_seconds", "")
                ),
                "{{instance}}",
            )),
        ],
    }
}

fn cost_row(s: &Scope) -> Row {
    Row {
        title: "Probe cost and maps",
        panels: vec![
            panel(
                Viz::Lines,
                "Probe CPU time per program",
                "percentunit",
                "Kernel CPU time spent in each probe program, as a share of one CPU (needs \
                 kernel.bpf_stats_enabled=1).",
            )
            .size(8, 8)
            .query(q(
                format!(
                    "sum by (instance, program) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_probe_run_seconds_total", "")
                ),
                "{{instance}} {{program}}",
            )),
            panel(
                Viz::Lines,
                "Probe time per run",
                "s",
                "Average kernel time of one run of each probe program (run time / runs; needs \
                 kernel.bpf_stats_enabled=1).",
            )
            .size(8, 8)
            .query(q(
                format!(
                    "sum by (instance, program) (rate({}[$__rate_interval])) / sum by (instance, program) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_probe_run_seconds_total", ""),
                    s.sel("bpfexec_probe_runs_total", "")
                ),
                "{{instance}} {{program}}",
            )),
            panel(
                Viz::Lines,
                "Map use",
                "percentunit",
                "Entries of each pinned probe map as a share of its capacity. The tracked \
                 map holds one entry per process of every task: when it is full, new processes \
                 are not tracked (fires BpfexecTrackedProcessMapFull above 90%).",
            )
            .size(8, 8)
            .range(0.0, 1.0)
            .query(q(
                format!(
                    "{} / {}",
                    s.sel("bpfexec_map_entries", ""),
                    s.sel("bpfexec_map_capacity", "")
                ),
                "{{instance}} {{map}}",
            )),
        ],
    }
}

/// A `process_*` series of the driver only (Nomad's own endpoint has the same names).
fn driver_process(s: &Scope, expr: &str) -> String {
    format!(
        "{expr} and on (instance, job) {}",
        s.sel("bpfexec_build_info", "")
    )
}

fn plugin_row(s: &Scope) -> Row {
    Row {
        title: "Plugin process",
        panels: vec![
            panel(
                Viz::Lines,
                "Plugin CPU",
                "percentunit",
                "CPU used by the driver's plugin process (observer, gRPC, telemetry), as a share \
                 of one CPU. The per-task helper processes are not included.",
            )
            .size(6, 7)
            .query(q(
                driver_process(
                    s,
                    &format!(
                        "rate({}[$__rate_interval])",
                        s.sel("process_cpu_seconds_total", "")
                    ),
                ),
                "{{instance}}",
            )),
            panel(
                Viz::Lines,
                "Plugin memory",
                "bytes",
                "Resident memory of the driver's plugin process.",
            )
            .size(6, 7)
            .query(q(
                driver_process(s, &s.sel("process_resident_memory_bytes", "")),
                "{{instance}}",
            )),
            panel(
                Viz::Lines,
                "Plugin open file descriptors",
                "short",
                "File descriptors the plugin holds (pidfds of tasks, probe maps, sockets).",
            )
            .size(6, 7)
            .query(q(
                driver_process(s, &s.sel("process_open_fds", "")),
                "{{instance}}",
            )),
            panel(
                Viz::Lines,
                "Tasks known to the plugin",
                "short",
                "Tasks the plugin tracks, running or exited (an exited task stays until Nomad \
                 destroys it).",
            )
            .size(6, 7)
            .query(q(
                format!("sum by (instance, state) ({})", s.sel("bpfexec_tasks", "")),
                "{{instance}} {{state}}",
            )),
        ],
    }
}

fn export_row(s: &Scope) -> Row {
    Row {
        title: "Telemetry export",
        panels: vec![
            panel(
                Viz::Lines,
                "OTLP spans exported and dropped",
                "cps",
                "Spans per second the OTLP collector accepted, and spans lost by reason \
                 (queue_full: the export queue overflowed; export_failed: the collector refused \
                 or could not be reached; shutdown).",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (instance) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_otlp_spans_exported_total", "")
                ),
                "{{instance}} exported",
            ))
            .query(q(
                format!(
                    "sum by (instance, reason) (rate({}[$__rate_interval]))",
                    s.sel("bpfexec_otlp_spans_dropped_total", "")
                ),
                "{{instance}} dropped: {{reason}}",
            )),
            panel(
                Viz::Bars,
                "OTLP export errors",
                "short",
                "Failed OTLP export calls (after the exporter's retries). Persistent errors fire \
                 BpfexecOTLPExportFailing: check the otlp endpoint, protocol and headers and that \
                 the collector is up.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (instance) (increase({}[$__rate_interval]))",
                    s.sel("bpfexec_otlp_export_errors_total", "")
                ),
                "{{instance}}",
            )),
            panel(
                Viz::Bars,
                "Facts dropped by slow sinks",
                "short",
                "Task facts (ends, kills, escapes) a slow sink lost because its bounded queue \
                 was full: nomad_events (task events), metrics, traces.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (instance, sink) (increase({}[$__rate_interval]))",
                    s.sel("bpfexec_sink_dropped_facts_total", "")
                ),
                "{{instance}} {{sink}}",
            )),
            panel(
                Viz::Bars,
                "Process spans over the cap",
                "short",
                "Process spans not exported because a task run started more processes than \
                 the otlp block's max_process_spans allows.",
            )
            .size(6, 8)
            .query(q(
                format!(
                    "sum by (instance) ({})",
                    per_interval(&s.sel("bpfexec_task_process_spans_capped_total", ""))
                ),
                "{{instance}}",
            )),
        ],
    }
}
