//! Spans exported per second with zero drops: one tracked bpfexec task runs a burst of short
//! processes from several parallel shell loops (every process becomes a span: the bench's agent
//! sets `otlp.max_process_spans` above the burst), while the bench samples the driver's own
//! `bpfexec_otlp_*` counters on `/metrics` every 250 ms until the export settles. The rate is
//! the spans exported over the export window (first to last increase of the counter); peak =
//! the largest increase over any 1 s. Jaeger's query API then counts the trace's spans, so a
//! real collector is shown to have received them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bpfexec_e2e::peers::Jaeger;
use bpfexec_e2e::{Agent, JobSpec};
use serde_json::{Value, json};

use super::exposition::Otlp;
use super::{jobs, storm};
use crate::demo;

const SAMPLE: Duration = Duration::from_millis(250);
/// The export is over once the counter has not moved for this long after the task ended.
const QUIET: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(300);

/// What one burst showed.
#[derive(Debug, Clone, Default)]
pub struct Burst {
    pub processes: usize,
    pub loops: usize,
    /// The loops' wall time.
    pub storm_wall_s: f64,
    pub delta: Otlp,
    /// First to last increase of the exported counter.
    pub export_window_s: f64,
    pub peak_per_s: f64,
    /// Spans Jaeger returns for the task's trace.
    pub jaeger_spans: Option<usize>,
}

impl Burst {
    pub fn spans_per_s(&self) -> Option<f64> {
        (self.export_window_s > 0.0).then(|| self.delta.exported / self.export_window_s)
    }

    pub fn processes_per_s(&self) -> Option<f64> {
        (self.storm_wall_s > 0.0).then(|| self.processes as f64 / self.storm_wall_s)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "processes": self.processes,
            "parallel_loops": self.loops,
            "storm_wall_s": self.storm_wall_s,
            "processes_per_s": self.processes_per_s(),
            "spans_exported": self.delta.exported,
            "spans_dropped": self.delta.dropped,
            "export_errors": self.delta.errors,
            "export_window_s": self.export_window_s,
            "spans_per_s": self.spans_per_s(),
            "peak_spans_per_1s": self.peak_per_s,
            "jaeger_spans_in_trace": self.jaeger_spans,
        })
    }
}

/// The burst's script: `loops` background loops of `/bin/true`, `processes` in all.
pub fn script(processes: usize, loops: usize) -> String {
    let each = processes / loops.max(1);
    format!(
        "s=$(date +%s%N); for l in $(seq {loops}); do ( i=0; while [ $i -lt {each} ]; do /bin/true; \
         i=$((i+1)); done ) & done; wait; e=$(date +%s%N); echo storm_ns=$((e-s)); times"
    )
}

/// The exported counter's samples `(seconds since start, value)` → (window, peak per 1 s).
pub fn window_and_peak(samples: &[(f64, f64)]) -> (f64, f64) {
    let first = samples.first().map_or(0.0, |s| s.1);
    let last = samples.last().map_or(0.0, |s| s.1);
    let start = samples.iter().find(|s| s.1 > first).map(|s| s.0);
    let end = samples.iter().find(|s| s.1 >= last).map(|s| s.0);
    let window = match (start, end) {
        // The counter moved between the sample before `start` and `start`: count that interval.
        (Some(a), Some(b)) => b - a + SAMPLE.as_secs_f64(),
        _ => 0.0,
    };
    let mut peak: f64 = 0.0;
    for (i, (t0, v0)) in samples.iter().enumerate() {
        if let Some((_, v1)) = samples[i..]
            .iter()
            .take_while(|(t, _)| t - t0 <= 1.0 + 1e-9)
            .last()
        {
            peak = peak.max(v1 - v0);
        }
    }
    (window, peak)
}

/// Runs the burst on `agent` (whose driver serves `/metrics` on `http_addr` and exports to
/// `jaeger`) and waits until every span is out.
pub fn run(
    agent: &Agent,
    http_addr: &str,
    jaeger: &Jaeger,
    processes: usize,
    loops: usize,
) -> Result<Burst> {
    let before = Otlp::read(http_addr)?;
    let hcl = JobSpec::batch("bench-span-burst")
        .driver("bpfexec")
        .raw_config(&format!(
            "command = \"/bin/sh\"\n      args = [\"-c\", {}]",
            bpfexec_e2e::config::hcl_string(&script(processes, loops))
        ))
        .memory_mb(256)
        .to_hcl();
    let t0 = Instant::now();
    let (job, alloc) = jobs::submit(agent.api(), &hcl)?;
    let mut samples = vec![(0.0, before.exported)];
    let mut done_at: Option<Instant> = None;
    let mut last_change = Instant::now();
    loop {
        if demo::sleep(SAMPLE) {
            bail!("interrupted");
        }
        let now = Otlp::read(http_addr)?;
        if samples
            .last()
            .is_some_and(|s| (s.1 - now.exported).abs() > 0.5)
        {
            last_change = Instant::now();
        }
        samples.push((t0.elapsed().as_secs_f64(), now.exported));
        if done_at.is_none() && agent.api().alloc(&alloc)?.is_terminal() {
            done_at = Some(Instant::now());
        }
        if done_at.is_some_and(|d| d.elapsed() >= QUIET && last_change.elapsed() >= QUIET) {
            break;
        }
        if t0.elapsed() > DEADLINE {
            bail!("the span burst did not settle within {DEADLINE:?}");
        }
    }
    let after = Otlp::read(http_addr)?;
    let stdout = agent
        .api()
        .logs(
            &alloc,
            bpfexec_e2e::jobspec::TASK,
            bpfexec_e2e::LogType::Stdout,
        )
        .unwrap_or_default();
    let (storm_wall_s, _) =
        storm::parse(&stdout).with_context(|| format!("span burst output {stdout:?}"))?;
    let jaeger_spans = jaeger
        .find_traces("bpfexec", &[("nomad.alloc.id", alloc.as_str())], 5)
        .ok()
        .map(|traces| traces.iter().map(|t| t.spans.len()).sum());
    jobs::purge_and_gc(agent, &[job], Duration::from_secs(120))?;
    let (export_window_s, peak_per_s) = window_and_peak(&samples);
    Ok(Burst {
        processes,
        loops,
        storm_wall_s,
        delta: after.since(before),
        export_window_s,
        peak_per_s,
        jaeger_spans,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_runs_from_first_to_last_increase() {
        let samples = [
            (0.0, 10.0),
            (0.25, 10.0),
            (0.5, 110.0),
            (0.75, 610.0),
            (1.0, 1010.0),
            (1.25, 1010.0),
            (1.5, 1110.0),
            (1.75, 1110.0),
        ];
        let (window, peak) = window_and_peak(&samples);
        assert!((window - 1.25).abs() < 1e-9, "{window}");
        // 0.25 → 1.25: 10 → 1010.
        assert!((peak - 1000.0).abs() < 1e-9, "{peak}");
        assert_eq!(window_and_peak(&[(0.0, 5.0), (0.25, 5.0)]), (0.0, 0.0));
    }

    #[test]
    fn script_splits_the_processes_over_the_loops() {
        let s = script(12_000, 4);
        assert!(s.contains("$(seq 4)"), "{s}");
        assert!(s.contains("-lt 3000 ]"), "{s}");
        assert!(s.contains("storm_ns="), "{s}");
    }
}
