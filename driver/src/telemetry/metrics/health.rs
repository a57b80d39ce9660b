//! The driver's own health series (no task labels): build, probes, observer throughput and loss,
//! probe run time, map fill, tasks by state, sink drops, OTLP export counters and the plugin
//! process's CPU and memory (Prometheus client conventions: `process_*`). Refreshed from a
//! [`HealthSnapshot`] that the runtime gathers; kernel counters read as totals are turned into
//! counter increments.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::grow_u64;
use crate::observer::ObserverStats;
use crate::probes::ProbeStats;

type F64Gauge = Gauge<f64, AtomicU64>;
type F64Counter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    cgroup_mode: String,
    kernel: String,
}

macro_rules! label_struct {
    ($name:ident, $field:ident) => {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct $name {
            $field: String,
        }
    };
}
label_struct!(ProgramLabel, program);
label_struct!(KindLabel, kind);
label_struct!(MapLabel, map);
label_struct!(StateLabel, state);
label_struct!(SinkLabel, sink);
label_struct!(ReasonLabel, reason);

/// OTLP exporter counters (totals).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OtlpTotals {
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub dropped_shutdown: u64,
    pub export_errors: u64,
}

/// The plugin process's own usage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub start_time_seconds: f64,
}

/// What the health series show, gathered by the runtime.
#[derive(Clone, Debug, Default)]
pub struct HealthSnapshot {
    pub probes_loaded: bool,
    /// Attached probe programs (`sched_process_exec`, ...).
    pub attached: Vec<String>,
    pub observer: Option<ObserverStats>,
    /// Probe run time and map fill (refreshed seldom).
    pub probes: Option<ProbeStats>,
    pub tasks_running: usize,
    pub tasks_exited: usize,
    pub sink_dropped: Vec<(&'static str, u64)>,
    /// None when trace export is off.
    pub otlp: Option<OtlpTotals>,
    pub process: Option<ProcessUsage>,
}

/// The health families and the last totals they were advanced to.
pub struct Health {
    probes_loaded: Gauge,
    probe_attached: Family<ProgramLabel, Gauge>,
    events: Family<KindLabel, Counter>,
    lost: Counter,
    lagged: Counter,
    lag: F64Gauge,
    probe_runs: Family<ProgramLabel, Counter>,
    probe_seconds: Family<ProgramLabel, F64Counter>,
    stats_enabled: Gauge,
    map_entries: Family<MapLabel, Gauge>,
    map_capacity: Family<MapLabel, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    sink_dropped: Family<SinkLabel, Counter>,
    otlp_enabled: Gauge,
    otlp_exported: Counter,
    otlp_dropped: Family<ReasonLabel, Counter>,
    otlp_errors: Counter,
    cpu: F64Counter,
    rss: Gauge,
    vsz: Gauge,
    fds: Gauge,
    start: F64Gauge,
    last: HashMap<String, u64>,
    last_f: HashMap<String, f64>,
}

impl Health {
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric: the flat list reads like the README's table"
    )]
    pub fn register(r: &mut Registry, version: &str, cgroup_mode: &str, kernel: &str) -> Self {
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
                cgroup_mode: cgroup_mode.to_owned(),
                kernel: kernel.to_owned(),
            })
            .set(1);
        r.register(
            "bpfexec_build_info",
            "Driver build: version, cgroup mode and kernel (always 1)",
            build,
        );
        let h = Self {
            probes_loaded: Gauge::default(),
            probe_attached: Family::default(),
            events: Family::default(),
            lost: Counter::default(),
            lagged: Counter::default(),
            lag: F64Gauge::default(),
            probe_runs: Family::default(),
            probe_seconds: Family::default(),
            stats_enabled: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            tasks: Family::default(),
            sink_dropped: Family::default(),
            otlp_enabled: Gauge::default(),
            otlp_exported: Counter::default(),
            otlp_dropped: Family::default(),
            otlp_errors: Counter::default(),
            cpu: F64Counter::default(),
            rss: Gauge::default(),
            vsz: Gauge::default(),
            fds: Gauge::default(),
            start: F64Gauge::default(),
            last: HashMap::new(),
            last_f: HashMap::new(),
        };
        r.register(
            "bpfexec_probes_loaded",
            "1 when the eBPF probes are loaded",
            h.probes_loaded.clone(),
        );
        r.register(
            "bpfexec_probe_attached",
            "1 per attached probe program",
            h.probe_attached.clone(),
        );
        r.register(
            "bpfexec_observer_events",
            "Probe events processed, by kind",
            h.events.clone(),
        );
        r.register(
            "bpfexec_ringbuf_lost_records",
            "Records the probes dropped because the ring buffer was full",
            h.lost.clone(),
        );
        r.register(
            "bpfexec_observer_lagged_events",
            "Events the observer fell behind on (dropped in the plugin)",
            h.lagged.clone(),
        );
        r.register(
            "bpfexec_observer_lag_seconds",
            "Age of the newest event when it was handled, at most, over the last second",
            h.lag.clone(),
        );
        r.register(
            "bpfexec_probe_runs",
            "Runs of each probe program (counted only while kernel.bpf_stats_enabled = 1)",
            h.probe_runs.clone(),
        );
        r.register(
            "bpfexec_probe_run_seconds",
            "Run time of each probe program (counted only while kernel.bpf_stats_enabled = 1)",
            h.probe_seconds.clone(),
        );
        r.register(
            "bpfexec_bpf_stats_enabled",
            "1 when the kernel accounts BPF program run time (sysctl kernel.bpf_stats_enabled)",
            h.stats_enabled.clone(),
        );
        r.register(
            "bpfexec_map_entries",
            "Entries of a probe state map (tracked = tracked processes)",
            h.map_entries.clone(),
        );
        r.register(
            "bpfexec_map_capacity",
            "Capacity of a probe state map",
            h.map_capacity.clone(),
        );
        r.register(
            "bpfexec_tasks",
            "Tasks the plugin knows, by state (running, exited)",
            h.tasks.clone(),
        );
        r.register(
            "bpfexec_sink_dropped_facts",
            "Task facts a telemetry sink lost because its queue was full",
            h.sink_dropped.clone(),
        );
        r.register(
            "bpfexec_otlp_enabled",
            "1 when OTLP trace export is configured",
            h.otlp_enabled.clone(),
        );
        r.register(
            "bpfexec_otlp_spans_exported",
            "Spans the OTLP collector accepted",
            h.otlp_exported.clone(),
        );
        r.register(
            "bpfexec_otlp_spans_dropped",
            "Spans lost, by reason: queue_full, export_failed, shutdown",
            h.otlp_dropped.clone(),
        );
        r.register(
            "bpfexec_otlp_export_errors",
            "Failed OTLP export calls",
            h.otlp_errors.clone(),
        );
        r.register(
            "process_cpu_seconds",
            "User and system CPU time of the plugin process",
            h.cpu.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the plugin process",
            h.rss.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory of the plugin process",
            h.vsz.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the plugin process",
            h.fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the plugin process since the Unix epoch",
            h.start.clone(),
        );
        h
    }

    fn grow(&mut self, key: &str, counter: &Counter, total: u64) {
        let last = self.last.entry(key.to_owned()).or_insert(0);
        grow_u64(counter, last, total);
    }

    fn grow_f(&mut self, key: &str, counter: &F64Counter, total: f64) {
        let last = self.last_f.entry(key.to_owned()).or_insert(0.0);
        let delta = if total >= *last { total - *last } else { total };
        *last = total;
        if delta > 0.0 {
            counter.inc_by(delta);
        }
    }

    /// Sets the series from `s`.
    pub fn refresh(&mut self, s: &HealthSnapshot) {
        self.probes_loaded.set(i64::from(s.probes_loaded));
        for p in &s.attached {
            self.probe_attached
                .get_or_create(&ProgramLabel { program: p.clone() })
                .set(1);
        }
        if let Some(o) = &s.observer {
            for (kind, n) in &o.events_by_kind {
                let c = self.events.get_or_create_owned(&KindLabel {
                    kind: (*kind).to_owned(),
                });
                self.grow(&format!("events/{kind}"), &c, *n);
            }
            let (lost, lagged) = (self.lost.clone(), self.lagged.clone());
            self.grow("lost", &lost, o.lost_events);
            self.grow("lagged", &lagged, o.lagged_events);
            self.lag.set(o.lag_seconds);
        }
        if let Some(p) = &s.probes {
            self.stats_enabled.set(i64::from(p.stats_enabled));
            for (program, runs) in &p.programs {
                let label = ProgramLabel {
                    program: (*program).to_owned(),
                };
                let c = self.probe_runs.get_or_create_owned(&label);
                self.grow(&format!("runs/{program}"), &c, runs.runs);
                let c = self.probe_seconds.get_or_create_owned(&label);
                self.grow_f(
                    &format!("runtime/{program}"),
                    &c,
                    runs.run_time_ns as f64 / 1e9,
                );
            }
            for (map, entries, capacity) in &p.maps {
                let label = MapLabel {
                    map: (*map).to_owned(),
                };
                self.map_entries
                    .get_or_create(&label)
                    .set(i64::try_from(*entries).unwrap_or(i64::MAX));
                self.map_capacity
                    .get_or_create(&label)
                    .set(i64::try_from(*capacity).unwrap_or(i64::MAX));
            }
        }
        for (state, n) in [("running", s.tasks_running), ("exited", s.tasks_exited)] {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
        for (sink, n) in &s.sink_dropped {
            let c = self.sink_dropped.get_or_create_owned(&SinkLabel {
                sink: (*sink).to_owned(),
            });
            self.grow(&format!("sink/{sink}"), &c, *n);
        }
        self.otlp_enabled.set(i64::from(s.otlp.is_some()));
        if let Some(o) = s.otlp {
            let exported = self.otlp_exported.clone();
            self.grow("otlp/exported", &exported, o.exported);
            let errors = self.otlp_errors.clone();
            self.grow("otlp/errors", &errors, o.export_errors);
            for (reason, n) in [
                ("queue_full", o.dropped_queue_full),
                ("export_failed", o.dropped_export_failed),
                ("shutdown", o.dropped_shutdown),
            ] {
                let c = self.otlp_dropped.get_or_create_owned(&ReasonLabel {
                    reason: reason.to_owned(),
                });
                self.grow(&format!("otlp/dropped/{reason}"), &c, n);
            }
        }
        if let Some(p) = s.process {
            let cpu = self.cpu.clone();
            self.grow_f("cpu", &cpu, p.cpu_seconds);
            self.rss
                .set(i64::try_from(p.resident_bytes).unwrap_or(i64::MAX));
            self.vsz
                .set(i64::try_from(p.virtual_bytes).unwrap_or(i64::MAX));
            self.fds.set(i64::try_from(p.open_fds).unwrap_or(i64::MAX));
            self.start.set(p.start_time_seconds);
        }
    }
}

/// Reads the plugin process's own usage from procfs.
#[must_use]
pub fn process_usage() -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // `rest` starts at field 3 (state): utime is field 14, stime 15, starttime 22, vsize 23,
    // rss 24 (1-based), i.e. indices 11, 12, 19, 20, 21 here.
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t.max(1) as f64);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p.max(1) as u64);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    })?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Some(ProcessUsage {
        cpu_seconds: (num(11)? + num(12)?) as f64 / ticks,
        resident_bytes: num(21)? * page,
        virtual_bytes: num(20)?,
        open_fds,
        start_time_seconds: boot + num(19)? as f64 / ticks,
    })
}
