//! What the demo's real peers saw of one example's allocation: its non-zero per-task series,
//! queried from Prometheus by the allocation's `alloc_id` label (Nomad's allocation-metric
//! labels; the scrape job's `job` label turns Nomad's into `exported_job`), and each task's
//! trace from Jaeger's query API (found by the root span's `nomad.alloc.id` attribute), drawn
//! by `trace_view`, with the trace's API URL. Waits (with deadlines) until the scrape saw every
//! task end and each task's root span arrived (the driver exports it 2 s after the run ends).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use bpfexec_e2e::peers::{Jaeger, Prometheus, Sample, Trace};
use bpfexec_e2e::poll_until;

use super::trace_view;

const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(500);

/// The per-task counters worth a newcomer's look (shown when non-zero).
const METRICS: &str = "bpfexec_task_(exits|oom_kills|signal_kills|signals_received|execs|forks|escapes|leaked_processes|memory_events|pids_limit_hits)_total";
/// Labels every series of the allocation shares, shown once.
const COMMON: [&str; 4] = ["namespace", "exported_job", "task_group", "alloc_id"];
/// Labels Prometheus adds (target), not shown.
const HIDDEN: [&str; 3] = ["__name__", "instance", "job"];

/// The metric lines of `alloc` once Prometheus scraped the end of each of its `tasks`.
pub fn metrics(p: &Prometheus, alloc: &str, tasks: usize, indent: &str) -> String {
    let ended = format!("bpfexec_task_exits_total{{alloc_id=\"{alloc}\"}} > 0");
    let waited = poll_until("Prometheus to scrape the tasks' ends", WAIT, POLL, |last| {
        let n = p.query_vector(&ended)?.len();
        *last = format!("{n} of {tasks} task ends scraped");
        Ok((n >= tasks).then_some(()))
    });
    let mut out = String::new();
    if let Err(e) = waited {
        let _ = writeln!(out, "{indent}({e:#})");
    }
    let promql = format!("{{__name__=~\"{METRICS}\", alloc_id=\"{alloc}\"}}");
    match p.query_vector(&promql) {
        Ok(samples) => out.push_str(&format_samples(&samples, p.url(), indent)),
        Err(e) => {
            let _ = writeln!(out, "{indent}metrics: {e}");
        }
    }
    out
}

/// Header with the shared labels, then one exposition-style line per non-zero series.
fn format_samples(samples: &[Sample], url: &str, indent: &str) -> String {
    let mut shown: Vec<&Sample> = samples.iter().filter(|s| s.value != 0.0).collect();
    shown.sort_by(|a, b| {
        (a.label("task"), a.metric_name(), &a.labels).cmp(&(
            b.label("task"),
            b.metric_name(),
            &b.labels,
        ))
    });
    let Some(first) = shown.first() else {
        return format!(
            "{indent}metrics: no non-zero bpfexec_task_* series in Prometheus ({url})\n"
        );
    };
    let common: Vec<String> = COMMON
        .iter()
        .filter_map(|k| Some(format!("{k}=\"{}\"", first.label(k)?)))
        .collect();
    let mut out = format!(
        "{indent}metrics (Prometheus {url}, series with {{{}}}):\n",
        common.join(", ")
    );
    for s in shown {
        let labels: Vec<String> = s
            .labels
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()) && !HIDDEN.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        // The task first: it says whose line it is.
        let mut labels: Vec<String> = labels;
        labels.sort_by_key(|l| !l.starts_with("task="));
        let _ = writeln!(
            out,
            "{indent}  {}{{{}}} {}",
            s.metric_name().unwrap_or("?"),
            labels.join(","),
            s.value
        );
    }
    out
}

/// The traces of `alloc`'s `tasks`, once each has its root span (`task <name>`).
pub fn traces(j: &Jaeger, alloc: &str, tasks: &[String], indent: &str) -> String {
    let found: Result<Vec<Trace>> = poll_until("the tasks' traces in Jaeger", WAIT, POLL, |last| {
        let traces = j.find_traces("bpfexec", &[("nomad.alloc.id", alloc)], 20)?;
        let missing: Vec<&String> = tasks
            .iter()
            .filter(|t| !traces.iter().any(|tr| root_of(tr, t)))
            .collect();
        *last = format!("no root span yet for {missing:?}");
        Ok(missing.is_empty().then_some(traces))
    });
    let mut traces = match found {
        Ok(t) => t,
        Err(e) => {
            // Show what arrived anyway.
            let mut out = format!("{indent}({e:#})\n");
            if let Ok(t) = j.find_traces("bpfexec", &[("nomad.alloc.id", alloc)], 20) {
                for trace in &t {
                    out.push_str(&trace_view::render(trace, &url(j, trace), indent));
                }
            }
            return out;
        }
    };
    traces.sort_by_key(|t| t.spans.iter().map(|s| s.start_time).min());
    let mut out = String::new();
    for trace in &traces {
        out.push_str(&trace_view::render(trace, &url(j, trace), indent));
    }
    out
}

fn root_of(trace: &Trace, task: &str) -> bool {
    let name = format!("task {task}");
    trace.spans.iter().any(|s| s.operation_name == name)
}

fn url(j: &Jaeger, trace: &Trace) -> String {
    format!("{}/api/traces/{}", j.query_url(), trace.trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pairs: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timestamp: 0.0,
            value,
        }
    }

    #[test]
    fn shows_non_zero_series_with_the_shared_labels_once() {
        let base = [
            ("instance", "127.0.0.1:9"),
            ("job", "bpfexec"),
            ("namespace", "default"),
            ("exported_job", "child-oom"),
            ("task_group", "g"),
            ("alloc_id", "a1"),
            ("task", "worker"),
        ];
        let with = |name: &str, extra: &[(&str, &str)], v: f64| {
            let mut p: Vec<(&str, &str)> = base.to_vec();
            p.push(("__name__", name));
            p.extend_from_slice(extra);
            sample(&p, v)
        };
        let samples = vec![
            with(
                "bpfexec_task_oom_kills_total",
                &[("victim", "child"), ("scope", "cgroup")],
                1.0,
            ),
            with("bpfexec_task_exits_total", &[("reason", "exited_ok")], 1.0),
            with("bpfexec_task_exits_total", &[("reason", "oom_killed")], 0.0),
            with("bpfexec_task_execs_total", &[], 3.0),
        ];
        let text = format_samples(&samples, "http://p", "  ");
        assert_eq!(
            text,
            "  metrics (Prometheus http://p, series with {namespace=\"default\", exported_job=\"child-oom\", task_group=\"g\", alloc_id=\"a1\"}):\n\
             \x20   bpfexec_task_execs_total{task=\"worker\"} 3\n\
             \x20   bpfexec_task_exits_total{task=\"worker\",reason=\"exited_ok\"} 1\n\
             \x20   bpfexec_task_oom_kills_total{task=\"worker\",scope=\"cgroup\",victim=\"child\"} 1\n"
        );
        assert!(format_samples(&[], "http://p", "").contains("no non-zero"));
    }
}
