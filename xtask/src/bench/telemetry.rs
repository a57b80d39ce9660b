//! The telemetry phase of `cargo xtask bench` (issue 8), on a second agent started after the
//! first one stopped: its driver exports OTLP/gRPC to a real Jaeger (`otlp` block with
//! `max_process_spans` above every burst, so each process is a span) and a real Prometheus
//! scrapes it and Nomad every second. Measured: the exec storm in a tracked task again (the
//! overhead with telemetry on, against the first agent's storms, where no collector is
//! configured and nobody scrapes; the metrics sink itself always runs), the spans exported per
//! storm and whether any were dropped; a burst of processes for the export rate (`spans`);
//! `/metrics` with K running tasks and the plugin's RSS (`scrape`).

use std::time::{Duration, Instant};

pub mod markdown;

use anyhow::{Result, bail};
use bpfexec_e2e::peers::{Jaeger, JaegerOptions, Prometheus, PrometheusConfig, ScrapeJob};
use bpfexec_e2e::{Agent, AgentOptions};
use serde_json::{Value, json};

use super::exposition::Otlp;
use super::spans::{self, Burst};
use super::storm::{self, Place};
use super::{bpfstats, scrape};
use crate::demo;

/// What the phase runs (0 skips a part).
pub struct Plan {
    pub storm_reps: usize,
    pub storm_execs: usize,
    pub burst_processes: usize,
    pub burst_loops: usize,
    pub tasks: usize,
}

/// One storm with telemetry on and the spans it exported.
#[derive(Debug, Clone)]
pub struct StormSpans {
    pub run: storm::Run,
    pub otlp: Otlp,
}

/// Everything the phase measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub storms: Vec<StormSpans>,
    pub burst: Option<Burst>,
    pub scrape: Option<scrape::Report>,
    /// Parts that failed (the others still ran and are reported).
    pub problems: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "storms_with_telemetry": self.storms.iter().map(|s| json!({
                "wall_s": s.run.wall_s,
                "overhead_pct": storm::overhead_pct(&s.run),
                "spans_exported": s.otlp.exported,
                "spans_dropped": s.otlp.dropped,
                "export_errors": s.otlp.errors,
            })).collect::<Vec<_>>(),
            "span_burst": self.burst.as_ref().map(Burst::to_json),
            "metrics_with_many_tasks": self.scrape.as_ref().map(scrape::Report::to_json),
            "problems": self.problems,
        })
    }
}

/// The export counters once they stopped moving (for 3 s; at most 60 s).
fn settled(http_addr: &str) -> Result<Otlp> {
    let mut last = Otlp::read(http_addr)?;
    let mut since = Instant::now();
    let t0 = Instant::now();
    while since.elapsed() < Duration::from_secs(3) && t0.elapsed() < Duration::from_secs(60) {
        if demo::sleep(Duration::from_millis(250)) {
            bail!("interrupted");
        }
        let now = Otlp::read(http_addr)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(last)
}

fn start_agent(jaeger: &Jaeger, http_addr: &str, plan: &Plan) -> Result<Agent> {
    let max_spans = (plan.storm_execs.max(plan.burst_processes) * 2).max(1000);
    Agent::start_ready(
        AgentOptions::bpfexec()
            .plugin_config("allow_unisolated = true")
            .plugin_config(&format!("http_addr = \"{http_addr}\""))
            .plugin_config(&format!(
                "otlp {{\n  endpoint = \"{}\"\n  protocol = \"grpc\"\n  max_process_spans = {max_spans}\n}}",
                jaeger.otlp_grpc_endpoint()
            )),
    )
}

/// Runs the phase; its storms are also appended to `runs` (the storm table's last row). A part
/// that fails is recorded in [`Report::problems`] and the next part runs.
pub fn run(plan: &Plan, runs: &mut Vec<storm::Run>) -> Report {
    let mut report = Report::default();
    if let Err(e) = run_parts(plan, runs, &mut report) {
        println!("    FAILED: {e:#}");
        report.problems.push(format!("{e:#}"));
    }
    report
}

fn run_parts(plan: &Plan, runs: &mut Vec<storm::Run>, report: &mut Report) -> Result<()> {
    let jaeger = Jaeger::start(&JaegerOptions::default())?;
    let http_addr = format!("127.0.0.1:{}", bpfexec_e2e::env::free_port()?);
    let agent = start_agent(&jaeger, &http_addr, plan)?;
    let prometheus = Prometheus::start(
        PrometheusConfig::new()
            .scrape(ScrapeJob::nomad(agent.addr()))
            .scrape(ScrapeJob::bpfexec(&http_addr)),
    )?;
    prometheus.wait_targets_up(Duration::from_secs(60))?;
    println!(
        "    agent {} (driver http {http_addr}), Jaeger {} (OTLP {}), Prometheus {}",
        agent.addr(),
        jaeger.query_url(),
        jaeger.otlp_grpc_endpoint(),
        prometheus.url()
    );
    let mut attempt = |what: &str, part: &mut dyn FnMut(&mut Report) -> Result<()>| {
        if let Err(e) = demo::check_interrupted().and_then(|()| part(report)) {
            println!("    {what} FAILED: {e:#}");
            report.problems.push(format!("{what}: {e:#}"));
        }
    };
    if plan.storm_reps > 0 {
        attempt("exec storms with telemetry", &mut |report| {
            storms(&agent, &http_addr, plan, runs, report)
        });
    }
    if plan.burst_processes > 0 {
        attempt("span burst", &mut |report| {
            let b = spans::run(
                &agent,
                &http_addr,
                &jaeger,
                plan.burst_processes,
                plan.burst_loops,
            )?;
            print_burst(&b);
            report.burst = Some(b);
            Ok(())
        });
    }
    if plan.tasks > 0 {
        attempt("/metrics with many tasks", &mut |report| {
            let s = scrape::run(&agent, &http_addr, Some(&prometheus), plan.tasks)?;
            print_scrape(&s);
            report.scrape = Some(s);
            Ok(())
        });
    }
    drop(agent);
    drop(prometheus);
    drop(jaeger);
    Ok(())
}

fn storms(
    agent: &Agent,
    http_addr: &str,
    plan: &Plan,
    runs: &mut Vec<storm::Run>,
    report: &mut Report,
) -> Result<()> {
    let _stats = bpfstats::enable()?;
    for i in 0..plan.storm_reps {
        demo::check_interrupted()?;
        let before = Otlp::read(http_addr)?;
        let r = storm::in_task(agent, Place::TaskBpfexecTelemetry, plan.storm_execs, i)?;
        let otlp = settled(http_addr)?.since(before);
        super::print_run(&r);
        println!(
            "      spans exported {:.0}, dropped {:.0}, export errors {:.0}",
            otlp.exported, otlp.dropped, otlp.errors
        );
        runs.push(r.clone());
        report.storms.push(StormSpans { run: r, otlp });
    }
    Ok(())
}

fn print_burst(b: &Burst) {
    println!(
        "    span burst: {} processes in {:.1} s ({:.0}/s) → {:.0} spans exported in {:.1} s = {:.0} spans/s (peak {:.0} in 1 s), dropped {:.0}, export errors {:.0}; Jaeger holds {:?} spans of the trace",
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
    );
}

fn print_scrape(s: &scrape::Report) {
    for f in &s.formats {
        if let Some(m) = super::stats::Summary::of(&f.ms) {
            println!(
                "    GET /metrics {}: median {:.1} ms, max {:.1} ms, {} bytes, {} samples",
                f.name, m.median, m.max, f.bytes, f.samples
            );
        }
    }
    println!(
        "    plugin RSS {:.1} MiB with {} tasks ({:.1} MiB with none), CPU {:.2}% of a core while idle and scraped",
        s.plugin_loaded.mem.rss_kib as f64 / 1024.0,
        s.tasks,
        s.plugin_idle.mem.rss_kib as f64 / 1024.0,
        s.plugin_cpu_pct
    );
}
