//! The configuration a [`Prometheus`](super::Prometheus) runs with: static scrape jobs (job
//! name, targets, metrics path, URL params, interval, honor_labels), the global scrape and rule
//! evaluation intervals and rule files, rendered as Prometheus 2.x `prometheus.yml`.
//!
//! `honor_labels` is false unless asked for, as in Prometheus' own default: a target's `job`
//! label (Nomad's and the driver's allocation metrics carry one) becomes `exported_job`, and
//! `job` is the scrape job's name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::peers::yaml;

/// One `scrape_configs` entry with static targets.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeJob {
    /// `job_name` (the `job` label of every scraped series).
    pub name: String,
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// `metrics_path` (default `/metrics`).
    pub metrics_path: String,
    /// URL parameters (`params`), e.g. `format=prometheus` for Nomad's `/v1/metrics`.
    pub params: BTreeMap<String, Vec<String>>,
    /// `scrape_interval` of this job (the global one when `None`).
    pub interval: Option<Duration>,
    /// `honor_labels` (default false: a target's `job` label becomes `exported_job`).
    pub honor_labels: bool,
}

impl ScrapeJob {
    /// A job scraping `/metrics` of `targets` (`host:port`; an `http://` prefix is dropped).
    #[must_use]
    pub fn new<T: AsRef<str>>(name: &str, targets: impl IntoIterator<Item = T>) -> Self {
        ScrapeJob {
            name: name.to_owned(),
            targets: targets.into_iter().map(|t| host_port(t.as_ref())).collect(),
            metrics_path: "/metrics".to_owned(),
            params: BTreeMap::new(),
            interval: None,
            honor_labels: false,
        }
    }

    /// Job `nomad` scraping a Nomad agent's `/v1/metrics?format=prometheus` (the agent needs
    /// `telemetry { prometheus_metrics = true }`, which the harness's agents have). `agent_addr`
    /// is e.g. [`Agent::addr`](crate::Agent::addr).
    #[must_use]
    pub fn nomad(agent_addr: &str) -> Self {
        Self::new("nomad", [agent_addr])
            .metrics_path("/v1/metrics")
            .param("format", "prometheus")
    }

    /// Job `bpfexec` scraping the driver's `GET /metrics` on its `http_addr` (`ip:port`).
    #[must_use]
    pub fn bpfexec(http_addr: &str) -> Self {
        Self::new("bpfexec", [http_addr])
    }

    /// Sets `metrics_path`.
    #[must_use]
    pub fn metrics_path(mut self, path: &str) -> Self {
        path.clone_into(&mut self.metrics_path);
        self
    }

    /// Adds a URL parameter.
    #[must_use]
    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.params
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
        self
    }

    /// Sets this job's scrape interval.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    /// Sets `honor_labels`.
    #[must_use]
    pub fn honor_labels(mut self, honor: bool) -> Self {
        self.honor_labels = honor;
        self
    }

    fn to_json(&self) -> Value {
        let mut job = json!({
            "job_name": self.name,
            "metrics_path": self.metrics_path,
            "honor_labels": self.honor_labels,
            "static_configs": [ { "targets": self.targets } ],
        });
        if !self.params.is_empty() {
            job["params"] = json!(self.params);
        }
        if let Some(interval) = self.interval {
            job["scrape_interval"] = json!(duration(interval));
        }
        job
    }
}

/// Everything a [`Prometheus`](super::Prometheus) is started with.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusConfig {
    /// The scrape jobs.
    pub scrape_jobs: Vec<ScrapeJob>,
    /// Global `scrape_interval` (default 1 s, so tests see data quickly).
    pub scrape_interval: Duration,
    /// Global `evaluation_interval` of rules (default 1 s).
    pub evaluation_interval: Duration,
    /// `rule_files` (absolute paths are safest: Prometheus resolves relative ones against the
    /// config file's directory, the peer's temp dir).
    pub rule_files: Vec<PathBuf>,
    /// How long [`Prometheus::start`](super::Prometheus::start) waits for `/-/ready`.
    pub ready_timeout: Duration,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            scrape_jobs: Vec::new(),
            scrape_interval: Duration::from_secs(1),
            evaluation_interval: Duration::from_secs(1),
            rule_files: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl PrometheusConfig {
    /// No jobs, 1 s scrape and evaluation intervals.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a scrape job.
    #[must_use]
    pub fn scrape(mut self, job: ScrapeJob) -> Self {
        self.scrape_jobs.push(job);
        self
    }

    /// Adds a rule file.
    #[must_use]
    pub fn rule_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.rule_files.push(path.into());
        self
    }

    /// Sets the global scrape interval.
    #[must_use]
    pub fn scrape_interval(mut self, interval: Duration) -> Self {
        self.scrape_interval = interval;
        self
    }

    /// Sets the rule evaluation interval.
    #[must_use]
    pub fn evaluation_interval(mut self, interval: Duration) -> Self {
        self.evaluation_interval = interval;
        self
    }

    /// The `prometheus.yml` text.
    #[must_use]
    pub fn to_yaml(&self) -> String {
        let doc = json!({
            "global": {
                "scrape_interval": duration(self.scrape_interval),
                "evaluation_interval": duration(self.evaluation_interval),
            },
            "rule_files": self.rule_files.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
            "scrape_configs": self.scrape_jobs.iter().map(ScrapeJob::to_json).collect::<Vec<_>>(),
        });
        format!(
            "# Written by the bpfexec end-to-end harness (tests/src/peers/prometheus).\n{}",
            yaml::to_yaml(&doc)
        )
    }
}

/// A Prometheus duration (`1s`, `250ms`, `5m`...).
#[must_use]
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

/// `http://127.0.0.1:4646/` → `127.0.0.1:4646`.
fn host_port(target: &str) -> String {
    let t = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .unwrap_or(target);
    t.trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nomad_job_renders_params_and_keeps_labels_unhonored() {
        let yaml = PrometheusConfig::new()
            .scrape(ScrapeJob::nomad("http://127.0.0.1:4646").interval(Duration::from_millis(500)))
            .rule_file("/r/alerts.yml")
            .to_yaml();
        for needle in [
            "job_name: \"nomad\"",
            "metrics_path: \"/v1/metrics\"",
            "honor_labels: false",
            "format:\n        - \"prometheus\"",
            "- \"127.0.0.1:4646\"",
            "scrape_interval: \"500ms\"",
            "evaluation_interval: \"1s\"",
            "rule_files:\n  - \"/r/alerts.yml\"",
        ] {
            assert!(yaml.contains(needle), "missing {needle:?} in\n{yaml}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::ZERO), "0ms");
    }
}
