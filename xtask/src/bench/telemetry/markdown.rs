//! The telemetry phase's section of `target/bench/results.md`: storm overhead with telemetry on
//! vs off (percentage points against the 1-point goal), the span export rate with its drops,
//! and `/metrics` with K running tasks (against the 50 ms goal) with the plugin's RSS.

use std::fmt::Write as _;

use super::super::stats::Summary;
use super::super::storm::{self, Place, Run};
use super::Report;

/// Overhead goal: telemetry on adds at most this many percentage points.
pub const OVERHEAD_GOAL_PP: f64 = 1.0;
/// Scrape goal with 200 tasks, milliseconds.
pub const SCRAPE_GOAL_MS: f64 = 50.0;

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn median_overhead(runs: &[Run], place: Place) -> Option<f64> {
    let v: Vec<f64> = runs
        .iter()
        .filter(|r| r.place == place)
        .filter_map(storm::overhead_pct)
        .collect();
    Summary::of(&v).map(|s| s.median)
}

/// `plugin CPU <ms> ms, probes <ms> ms` per storm at `place` (medians).
fn costs(runs: &[Run], place: Place) -> String {
    let median = |f: fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.place == place)
            .filter_map(f)
            .collect();
        Summary::of(&v).map_or("–".to_owned(), |s| format!("{:.1}", s.median * 1e3))
    };
    format!(
        "plugin CPU {} ms, probes {} ms",
        median(|r| r.plugin_cpu_s),
        median(|r| r.probes.as_ref().map(|p| p.total.run_time_ns as f64 / 1e9)),
    )
}

/// The section; `runs` are all storms of the bench (the telemetry-off ones come from the first
/// agent).
pub fn section(r: &Report, runs: &[Run]) -> String {
    let mut md = String::from(
        "\n## Telemetry cost (Prometheus metrics + OTLP export to a real Jaeger)\n\n\
         A second agent, started after the first one stopped: its driver exports OTLP/gRPC to a real \
         Jaeger (every process a span: `max_process_spans` above every storm) and a real Prometheus \
         scrapes it and Nomad every second. \"Off\" is the first agent: no collector configured, \
         nobody scraping (the metrics sink itself always runs).\n",
    );
    let off = median_overhead(runs, Place::TaskBpfexec);
    let on = median_overhead(runs, Place::TaskBpfexecTelemetry);
    if let (Some(off), Some(on)) = (off, on) {
        let pp = on - off;
        let exported: Vec<f64> = r.storms.iter().map(|s| s.otlp.exported).collect();
        let dropped: f64 = r.storms.iter().map(|s| s.otlp.dropped).sum();
        let _ = write!(
            md,
            "\n**Exec storm overhead** (probe time + plugin CPU over the storm's CPU, medians over {} storms \
             each): telemetry off {off:.2}% ({}), on {on:.2}% ({}): **{pp:+.2} percentage points** (goal at \
             most +{OVERHEAD_GOAL_PP:.0}: {}). Spans exported per storm: {}; dropped in all: {dropped:.0}.\n",
            r.storms.len(),
            costs(runs, Place::TaskBpfexec),
            costs(runs, Place::TaskBpfexecTelemetry),
            verdict(pp <= OVERHEAD_GOAL_PP),
            exported
                .iter()
                .map(|e| format!("{e:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    burst(r, &mut md);
    scrape(r, &mut md);
    for p in &r.problems {
        let _ = writeln!(md, "\nFAILED: {p}");
    }
    md
}

fn burst(r: &Report, md: &mut String) {
    if let Some(b) = &r.burst {
        let _ = write!(
            md,
            "\n**Span export rate**: one task, {} parallel loops, {} short processes in {:.1} s ({:.0} \
             processes/s): {:.0} spans exported in {:.1} s = **{:.0} spans/s** (peak {:.0} in 1 s), \
             dropped {:.0}, failed export calls {:.0}; Jaeger's query API returns {} spans for the \
             task's trace.\n",
            b.loops,
            b.processes,
            b.storm_wall_s,
            b.processes_per_s().unwrap_or(0.0),
            b.delta.exported,
            b.export_window_s,
            b.spans_per_s().unwrap_or(0.0),
            b.peak_per_s,
            b.delta.dropped,
            b.delta.errors,
            b.jaeger_spans
                .map_or("no trace".to_owned(), |n| n.to_string()),
        );
    }
}

fn scrape(r: &Report, md: &mut String) {
    if let Some(s) = &r.scrape {
        let _ = write!(
            md,
            "\n**`GET /metrics` with {} running tasks** ({} per allocation, running after {:.0} s), \
             {} timed scrapes per format from the bench (to the last byte):\n\n\
             | format | median ms | p90 ms | max ms | size | samples |\n|---|---|---|---|---|---|\n",
            s.tasks,
            super::super::scrape::TASKS_PER_GROUP,
            s.start_s,
            s.formats.first().map_or(0, |f| f.ms.len()),
        );
        let mut worst: f64 = 0.0;
        for f in &s.formats {
            if let Some(m) = Summary::of(&f.ms) {
                worst = worst.max(m.p90);
                let _ = writeln!(
                    md,
                    "| {} | {:.1} | {:.1} | {:.1} | {:.0} KiB | {} |",
                    f.name,
                    m.median,
                    m.p90,
                    m.max,
                    f.bytes as f64 / 1024.0,
                    f.samples
                );
            }
        }
        if let Some((median, max, samples)) = s.prometheus {
            worst = worst.max(median * 1e3);
            let _ = writeln!(
                md,
                "\nPrometheus' own `scrape_duration_seconds` for the driver (OpenMetrics, every 1 s) over \
                 the same time: median {:.1} ms, max {:.1} ms; `scrape_samples_scraped` {samples:.0}.",
                median * 1e3,
                max * 1e3
            );
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let _ = write!(
            md,
            "\nGoal under {SCRAPE_GOAL_MS:.0} ms (p90 of the bench's scrapes, median of Prometheus'): {}. \
             Plugin RSS with {} tasks: **{:.1} MiB** (PSS {:.1}), with none: {:.1} MiB (PSS {:.1}); \
             plugin CPU while the tasks idle and are scraped every second: {:.2}% of one core. \
             Supervisors: {:.2} MiB RSS, {:.2} MiB PSS per task.\n",
            verdict(worst < SCRAPE_GOAL_MS),
            s.tasks,
            mib(s.plugin_loaded.mem.rss_kib),
            mib(s.plugin_loaded.mem.pss_kib),
            mib(s.plugin_idle.mem.rss_kib),
            mib(s.plugin_idle.mem.pss_kib),
            s.plugin_cpu_pct,
            mib(s.supervisors.mem.rss_kib) / s.tasks.max(1) as f64,
            mib(s.supervisors.mem.pss_kib) / s.tasks.max(1) as f64,
        );
    }
}
