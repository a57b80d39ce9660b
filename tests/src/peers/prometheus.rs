//! A real Prometheus (Debian's, `PROMETHEUS_BIN`) on a free loopback port, with its own temp dir
//! (`prometheus.yml` generated from a [`PrometheusConfig`], TSDB storage, `prometheus.log`), and
//! blocking helpers over its HTTP API v1 with typed results. Started by [`Prometheus::start`],
//! which returns once `/-/ready` answers 200; stopped by pid on drop.
//!
//! ```no_run
//! use std::time::Duration;
//! use bpfexec_e2e::peers::{Prometheus, PrometheusConfig, ScrapeJob};
//! # fn f(agent: &bpfexec_e2e::Agent) -> anyhow::Result<()> {
//! let prom = Prometheus::start(PrometheusConfig::new().scrape(ScrapeJob::nomad(agent.addr())))?;
//! prom.wait_targets_up(Duration::from_secs(30))?;
//! let samples = prom.wait_for_vector("nomad_client_allocated_memory", Duration::from_secs(30))?;
//! # Ok(()) }
//! ```

mod api;
mod config;
mod promtool;

pub use api::{
    Alert, AlertState, Labels, QueryResult, RangeSeries, Rule, RuleGroup, RuleKind, Sample, Target,
    TargetHealth,
};
pub use config::{PrometheusConfig, ScrapeJob, duration};
pub use promtool::{check_config, promtool};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use super::http::{Answer, ApiError, Http};
use super::process::PeerProcess;
use crate::env;
use crate::wait::{POLL, poll_until};

/// A running Prometheus (see the module docs).
pub struct Prometheus {
    process: PeerProcess,
    http: Http,
    config: PrometheusConfig,
    config_path: PathBuf,
    port: u16,
}

impl Prometheus {
    /// Writes the config into a fresh temp dir, starts Prometheus on `127.0.0.1:<free port>`
    /// and waits until it is ready. Errors carry the tail of its log.
    pub fn start(config: PrometheusConfig) -> Result<Prometheus> {
        let bin = env::prometheus_bin()?;
        let dir = PeerProcess::temp_dir("prometheus")?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config.to_yaml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let storage = dir.path().join("data");
        let port = env::free_port()?;
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=info");
        let process = PeerProcess::spawn("prometheus", dir, &mut cmd)?;
        let mut prom = Prometheus {
            process,
            http: Http::new("prometheus", &format!("http://127.0.0.1:{port}")),
            config,
            config_path,
            port,
        };
        let timeout = prom.config.ready_timeout;
        let http = &prom.http;
        prom.process.wait_ready(timeout, |last| {
            match http.get("/-/ready", &[], "the readiness check") {
                Ok(a) if a.status == 200 => return Ok(true),
                Ok(a) => *last = format!("/-/ready: HTTP {}: {}", a.status, a.body.trim()),
                Err(e) => *last = e.to_string(),
            }
            Ok(false)
        })?;
        Ok(prom)
    }

    /// The base URL, e.g. `http://127.0.0.1:39123` (its UI is at `/graph`).
    #[must_use]
    pub fn url(&self) -> &str {
        self.http.base()
    }

    /// The port it listens on (127.0.0.1 only).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The configuration it was started with.
    #[must_use]
    pub fn config(&self) -> &PrometheusConfig {
        &self.config
    }

    /// The generated `prometheus.yml`.
    #[must_use]
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The process: pid, temp dir, log, listening sockets.
    #[must_use]
    pub fn process(&self) -> &PeerProcess {
        &self.process
    }

    /// Stops it now (SIGTERM by pid, SIGKILL after 10 s). Dropping does the same.
    pub fn stop(&mut self) -> Result<()> {
        self.process.stop()
    }

    /// Instant query at the current time.
    pub fn query(&self, promql: &str) -> Result<QueryResult, ApiError> {
        self.instant(promql).map(|(_, result)| result)
    }

    fn instant(&self, promql: &str) -> Result<(Answer, QueryResult), ApiError> {
        let what = format!("query `{promql}`");
        let answer = self
            .http
            .get("/api/v1/query", &[("query", promql)], &what)?;
        let result = api::query_result(&answer)?;
        Ok((answer, result))
    }

    /// Instant query that must return a vector (empty = no data).
    pub fn query_vector(&self, promql: &str) -> Result<Vec<Sample>, ApiError> {
        match self.instant(promql)? {
            (_, QueryResult::Vector(samples)) => Ok(samples),
            (answer, other) => Err(answer.unexpected(format!("expected a vector, got {other:?}"))),
        }
    }

    /// Instant query that must return one number: a scalar, or a vector of exactly one sample.
    pub fn query_scalar(&self, promql: &str) -> Result<f64, ApiError> {
        match self.instant(promql)? {
            (_, QueryResult::Scalar { value, .. }) => Ok(value),
            (_, QueryResult::Vector(samples)) if samples.len() == 1 => Ok(samples[0].value),
            (answer, other) => Err(answer.unexpected(format!(
                "expected a scalar or a one-sample vector, got {other:?}"
            ))),
        }
    }

    /// Range query from `start` to `end` every `step`.
    pub fn query_range(
        &self,
        promql: &str,
        start: SystemTime,
        end: SystemTime,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, ApiError> {
        let what = format!("range query `{promql}`");
        let (start, end) = (unix(start), unix(end));
        let step = format!("{:.3}", step.as_secs_f64());
        let answer = self.http.get(
            "/api/v1/query_range",
            &[
                ("query", promql),
                ("start", &start),
                ("end", &end),
                ("step", &step),
            ],
            &what,
        )?;
        match api::query_result(&answer)? {
            QueryResult::Matrix(series) => Ok(series),
            other => Err(answer.unexpected(format!("expected a matrix, got {other:?}"))),
        }
    }

    /// Label sets of the series matching a selector (`/api/v1/series?match[]=`).
    pub fn series(&self, matcher: &str) -> Result<Vec<Labels>, ApiError> {
        let what = format!("series `{matcher}`");
        let answer = self
            .http
            .get("/api/v1/series", &[("match[]", matcher)], &what)?;
        api::data(&answer)
    }

    /// Every value of label `name` (`/api/v1/label/<name>/values`); `__name__` lists metrics.
    pub fn label_values(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let what = format!("values of label `{name}`");
        let answer = self
            .http
            .get(&format!("/api/v1/label/{name}/values"), &[], &what)?;
        api::data(&answer)
    }

    /// The active scrape targets.
    pub fn targets(&self) -> Result<Vec<Target>, ApiError> {
        let answer = self
            .http
            .get("/api/v1/targets", &[("state", "active")], "targets")?;
        api::data::<api::TargetsData>(&answer).map(|d| d.active_targets)
    }

    /// Waits until there is at least one target and every target is up; returns them. The
    /// error lists each target with its health and last scrape error.
    pub fn wait_targets_up(&self, timeout: Duration) -> Result<Vec<Target>> {
        poll_until("every scrape target to be up", timeout, POLL, |last| {
            let targets = self.targets()?;
            if !targets.is_empty() && targets.iter().all(|t| t.health == TargetHealth::Up) {
                return Ok(Some(targets));
            }
            last.clear();
            for t in &targets {
                let _ = write!(
                    last,
                    "[{} {} {:?}{}] ",
                    t.job,
                    t.scrape_url,
                    t.health,
                    if t.last_error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", t.last_error)
                    }
                );
            }
            if targets.is_empty() {
                "no targets".clone_into(last);
            }
            Ok(None)
        })
    }

    /// Polls an instant query until it returns a non-empty vector; returns it.
    pub fn wait_for_vector(&self, promql: &str, timeout: Duration) -> Result<Vec<Sample>> {
        poll_until(
            &format!("`{promql}` to return data"),
            timeout,
            POLL,
            |last| {
                let samples = self.query_vector(promql)?;
                if samples.is_empty() {
                    "an empty vector".clone_into(last);
                    return Ok(None);
                }
                Ok(Some(samples))
            },
        )
    }

    /// Active alerts (pending and firing).
    pub fn alerts(&self) -> Result<Vec<Alert>, ApiError> {
        let answer = self.http.get("/api/v1/alerts", &[], "alerts")?;
        api::data::<api::AlertsData>(&answer).map(|d| d.alerts)
    }

    /// Waits until alert `name` fires with every label in `labels`; returns it. The error lists
    /// the alerts seen last.
    pub fn wait_for_alert(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Alert> {
        poll_until(
            &format!("alert {name} {labels:?} to fire"),
            timeout,
            POLL,
            |last| {
                let alerts = self.alerts()?;
                let found = alerts.iter().find(|a| {
                    a.name() == name
                        && a.state == AlertState::Firing
                        && labels.iter().all(|(k, v)| a.label(k) == Some(v))
                });
                if let Some(alert) = found {
                    return Ok(Some(alert.clone()));
                }
                *last = format!(
                    "{:?}",
                    alerts
                        .iter()
                        .map(|a| (a.state, &a.labels))
                        .collect::<Vec<_>>()
                );
                Ok(None)
            },
        )
    }

    /// Loaded rule groups with each rule's health, last error and alerts.
    pub fn rules(&self) -> Result<Vec<RuleGroup>, ApiError> {
        let answer = self.http.get("/api/v1/rules", &[], "rules")?;
        api::data::<api::RulesData>(&answer).map(|d| d.groups)
    }
}

/// Unix seconds with millisecond precision, as Prometheus' API takes them.
fn unix(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    format!("{secs:.3}")
}
