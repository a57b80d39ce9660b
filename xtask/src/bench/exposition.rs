//! Reading the driver's own `GET /metrics` (Prometheus classic text format 0.0.4, what the
//! driver serves to a client that does not ask for OpenMetrics): one timed scrape with its size
//! and sample count, and the `bpfexec_otlp_*` export counters the span measurements are judged
//! by (spans exported, dropped by reason, failed export calls).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// OpenMetrics, as Prometheus asks for it first.
pub const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0";
/// The classic text format.
pub const CLASSIC: &str = "text/plain;version=0.0.4";

/// One scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// Request sent → whole body read.
    pub took: Duration,
    pub bytes: usize,
    /// Sample lines (neither comments nor blank).
    pub samples: usize,
    pub body: String,
}

/// `GET http://<http_addr>/metrics` with `Accept: <accept>`, timed to the last byte.
pub fn scrape(http_addr: &str, accept: &str) -> Result<Scrape> {
    let url = format!("http://{http_addr}/metrics");
    let t = Instant::now();
    let body = ureq::get(&url)
        .header("Accept", accept)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    let took = t.elapsed();
    Ok(Scrape {
        took,
        bytes: body.len(),
        samples: sample_lines(&body),
        body,
    })
}

fn sample_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Sum of the samples of metric `name` (exactly that name, any labels) whose labels contain
/// every `label="value"` pair of `with`.
pub fn sum(text: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.strip_suffix('}').unwrap_or(rest)),
                None => (series, ""),
            };
            let matches = metric == name
                && with
                    .iter()
                    .all(|(k, v)| labels.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if matches {
                value.parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// The driver's OTLP export counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Otlp {
    pub exported: f64,
    pub dropped: f64,
    pub errors: f64,
}

impl Otlp {
    pub fn of(text: &str) -> Self {
        Otlp {
            exported: sum(text, "bpfexec_otlp_spans_exported_total", &[]),
            dropped: sum(text, "bpfexec_otlp_spans_dropped_total", &[]),
            errors: sum(text, "bpfexec_otlp_export_errors_total", &[]),
        }
    }

    pub fn read(http_addr: &str) -> Result<Self> {
        Ok(Self::of(&scrape(http_addr, CLASSIC)?.body))
    }

    pub fn since(self, before: Otlp) -> Otlp {
        Otlp {
            exported: self.exported - before.exported,
            dropped: self.dropped - before.dropped,
            errors: self.errors - before.errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP bpfexec_otlp_spans_exported_total Spans the collector accepted.
# TYPE bpfexec_otlp_spans_exported_total counter
bpfexec_otlp_spans_exported_total 3012
bpfexec_otlp_spans_dropped_total{reason=\"queue_full\"} 2
bpfexec_otlp_spans_dropped_total{reason=\"export_failed\"} 1
bpfexec_otlp_spans_dropped_total{reason=\"shutdown\"} 0
bpfexec_otlp_export_errors_total 1
bpfexec_task_exits_total{namespace=\"default\",job=\"j\",task=\"t\",reason=\"exited_ok\"} 4
bpfexec_task_exits_total{namespace=\"default\",job=\"j\",task=\"u\",reason=\"exited_ok\"} 1
bpfexec_task_exits_total_extra 100

";

    #[test]
    fn sums_samples_by_name_and_labels() {
        assert!((sum(TEXT, "bpfexec_otlp_spans_dropped_total", &[]) - 3.0).abs() < 1e-9);
        let queue = [("reason", "queue_full")];
        assert!((sum(TEXT, "bpfexec_otlp_spans_dropped_total", &queue) - 2.0).abs() < 1e-9);
        assert!((sum(TEXT, "bpfexec_task_exits_total", &[]) - 5.0).abs() < 1e-9);
        let t = [("task", "t"), ("reason", "exited_ok")];
        assert!((sum(TEXT, "bpfexec_task_exits_total", &t) - 4.0).abs() < 1e-9);
        assert!(sum(TEXT, "absent", &[]).abs() < 1e-9);
        assert_eq!(sample_lines(TEXT), 8);
    }

    #[test]
    fn reads_the_otlp_counters_and_their_change() {
        let now = Otlp::of(TEXT);
        assert_eq!(
            now,
            Otlp {
                exported: 3012.0,
                dropped: 3.0,
                errors: 1.0
            }
        );
        let d = now.since(Otlp {
            exported: 12.0,
            dropped: 3.0,
            errors: 1.0,
        });
        assert!((d.exported - 3000.0).abs() < 1e-9 && d.dropped.abs() < 1e-9);
    }
}
