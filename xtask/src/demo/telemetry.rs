//! The demo's real telemetry peers (`bpfexec_e2e::peers`): a Jaeger started before the agent,
//! whose OTLP/gRPC endpoint the agent (and so the driver plugin) gets as
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, and a Prometheus scraping the agent's
//! `/v1/metrics?format=prometheus` and the driver's `/metrics` on its `http_addr`. A peer that
//! cannot start is reported with its error and the demo goes on without it; both stop (by pid)
//! when dropped.

use std::fmt::Write as _;
use std::time::Duration;

use bpfexec_e2e::AgentOptions;
use bpfexec_e2e::peers::{Jaeger, JaegerOptions, Prometheus, PrometheusConfig, ScrapeJob};

/// Traces listed in the summary.
const TRACES_SHOWN: usize = 12;

/// The peers and the driver's `http_addr` they watch.
pub struct Peers {
    jaeger: Option<Jaeger>,
    prometheus: Option<Prometheus>,
    driver_http: String,
}

impl Peers {
    /// Starts Jaeger and picks the driver's `http_addr`.
    pub fn start_jaeger() -> anyhow::Result<Self> {
        let driver_http = format!("127.0.0.1:{}", bpfexec_e2e::env::free_port()?);
        let jaeger = match Jaeger::start(&JaegerOptions::default()) {
            Ok(j) => Some(j),
            Err(e) => {
                println!("    Jaeger did not start, the demo goes on without traces: {e:#}");
                None
            }
        };
        Ok(Peers {
            jaeger,
            prometheus: None,
            driver_http,
        })
    }

    /// The driver's `http_addr` and, with Jaeger up, the OTLP environment for the agent.
    pub fn agent_options(&self, opts: AgentOptions) -> AgentOptions {
        let opts = opts.plugin_config(&format!("http_addr = \"{}\"", self.driver_http));
        match &self.jaeger {
            Some(j) => opts
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &j.otlp_grpc_endpoint())
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            None => opts,
        }
    }

    /// Starts Prometheus scraping the agent at `agent_addr` and the driver.
    pub fn start_prometheus(&mut self, agent_addr: &str) {
        let config = PrometheusConfig::new()
            .scrape(ScrapeJob::nomad(agent_addr))
            .scrape(ScrapeJob::bpfexec(&self.driver_http));
        match Prometheus::start(config) {
            Ok(p) => self.prometheus = Some(p),
            Err(e) => println!("    Prometheus did not start, the demo goes on without it: {e:#}"),
        }
    }

    /// Where to look, one line per peer.
    pub fn urls(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.prometheus {
            let _ = writeln!(
                out,
                "    Prometheus: {}/graph (scrapes Nomad and the driver's http://{}/metrics)",
                p.url(),
                self.driver_http
            );
        }
        if let Some(j) = &self.jaeger {
            let _ = writeln!(
                out,
                "    Jaeger: query API {}/api/traces?service=bpfexec (OTLP/gRPC receiver {})",
                j.query_url(),
                j.otlp_grpc_endpoint()
            );
        }
        out
    }

    /// What the peers saw of one example's allocation `alloc` with `tasks`: its non-zero task
    /// series and each task's trace drawn as a tree (see `task_view`).
    pub fn example(&self, alloc: &str, tasks: &[String]) -> String {
        let mut out = String::new();
        if let Some(p) = &self.prometheus {
            out.push_str(&super::task_view::metrics(p, alloc, tasks.len(), "  "));
        }
        if let Some(j) = &self.jaeger {
            out.push_str(&super::task_view::traces(j, alloc, tasks, "  "));
        }
        out
    }

    /// What the peers saw: scrape health, the driver's task series, the driver's traces.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.prometheus {
            out.push_str(&prometheus_summary(p));
        }
        if let Some(j) = &self.jaeger {
            out.push_str(&jaeger_summary(j));
        }
        out
    }
}

fn prometheus_summary(p: &Prometheus) -> String {
    let mut out = format!("  Prometheus ({}):\n", p.url());
    // One more scrape of both targets after the last example.
    std::thread::sleep(Duration::from_secs(2));
    match p.targets() {
        Ok(targets) => {
            for t in targets {
                let error = if t.last_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.last_error)
                };
                let _ = writeln!(out, "    target {:<8} {:?}{error}", t.job, t.health);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "    targets: {e}");
        }
    }
    let queries = [
        (
            "Nomad series",
            r#"count({job="nomad", __name__=~"nomad_.+"})"#,
        ),
        (
            "driver series",
            r#"count({job="bpfexec", __name__=~"bpfexec_.+"})"#,
        ),
    ];
    for (what, promql) in queries {
        match p.query_vector(promql) {
            Ok(v) => {
                let n = v.first().map_or(0.0, |s| s.value);
                let _ = writeln!(out, "    {what:<14} {n}   ({promql})");
            }
            Err(e) => {
                let _ = writeln!(out, "    {what:<14} {e}");
            }
        }
    }
    let exits = "sum by (exported_job, task, reason) (bpfexec_task_exits_total) > 0";
    if let Ok(samples) = p.query_vector(exits) {
        for s in samples {
            let _ = writeln!(
                out,
                "    task exits: job {} task {} reason {} × {}",
                s.label("exported_job").unwrap_or("?"),
                s.label("task").unwrap_or("?"),
                s.label("reason").unwrap_or("?"),
                s.value
            );
        }
    }
    out
}

fn jaeger_summary(j: &Jaeger) -> String {
    let mut out = format!("  Jaeger ({}):\n", j.query_url());
    match j.find_traces("bpfexec", &[], TRACES_SHOWN) {
        Ok(traces) if traces.is_empty() => {
            let _ = writeln!(
                out,
                "    no traces from service bpfexec (the agent's OTEL_EXPORTER_OTLP_ENDPOINT is {})",
                j.otlp_grpc_endpoint()
            );
        }
        Ok(traces) => {
            for t in &traces {
                for root in t.tree() {
                    let _ = writeln!(
                        out,
                        "    trace {} {:?}: {} spans{}",
                        t.trace_id,
                        root.span.operation_name,
                        root.descendants().len(),
                        if root.span.is_error() { ", failed" } else { "" }
                    );
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "    {e}");
        }
    }
    out
}
