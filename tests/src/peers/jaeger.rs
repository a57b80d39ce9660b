//! A real Jaeger (v2 all-in-one, built from its Go module by `cargo xtask setup`; `JAEGER_BIN`)
//! as the OTLP receiver of the suite and the demo. It runs with a generated collector config
//! that binds ONLY 127.0.0.1, on free ports: the OTLP gRPC and HTTP receivers, the query HTTP
//! and gRPC endpoints and the collector's own metrics endpoint (by default the fixed
//! 127.0.0.1:8888, which two instances would fight over); no other extension (health check,
//! zpages, expvar, remote sampling) is configured, so nothing else listens (checked with `ss`
//! in `tests/tests/peers.rs`). Traces are kept in memory. [`Jaeger::start`] returns once the query
//! API answers and both receivers accept connections; dropping it stops it by pid.
//!
//! ```no_run
//! use std::time::Duration;
//! use bpfexec_e2e::peers::{Jaeger, JaegerOptions};
//! # fn f() -> anyhow::Result<()> {
//! let jaeger = Jaeger::start(&JaegerOptions::default())?;
//! // point an OTLP exporter at jaeger.otlp_grpc_endpoint(), then:
//! let trace = jaeger.wait_for_trace("4bf92f3577b34da6a3ce929d0e0e4736", Duration::from_secs(30), |t| !t.spans.is_empty())?;
//! println!("{}", trace.render_tree());
//! # Ok(()) }
//! ```

mod api;

pub use api::{
    Log, Process, RefType, Reference, Span, SpanNode, Tag, TagValue, Trace, normalize_id,
};

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::http::{ApiError, Http};
use super::process::PeerProcess;
use super::yaml;
use crate::env;
use crate::wait::{POLL, poll_until};

/// How a [`Jaeger`] is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaegerOptions {
    /// Traces kept in memory (oldest dropped first).
    pub max_traces: u32,
    /// The batch processor's timeout: how long a received span may wait before it is stored
    /// (and visible to the query API).
    pub batch_timeout: Duration,
    /// How long [`Jaeger::start`] waits for readiness.
    pub ready_timeout: Duration,
}

impl Default for JaegerOptions {
    fn default() -> Self {
        JaegerOptions {
            max_traces: 100_000,
            batch_timeout: Duration::from_millis(100),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

/// The loopback ports a [`Jaeger`] listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JaegerPorts {
    /// OTLP/gRPC receiver.
    pub otlp_grpc: u16,
    /// OTLP/HTTP receiver (`/v1/traces`).
    pub otlp_http: u16,
    /// Query HTTP API (and the placeholder UI page).
    pub query_http: u16,
    /// Query gRPC API.
    pub query_grpc: u16,
    /// The collector's own Prometheus metrics (`/metrics`).
    pub metrics: u16,
}

/// A running Jaeger (see the module docs).
pub struct Jaeger {
    process: PeerProcess,
    http: Http,
    ports: JaegerPorts,
    config_path: PathBuf,
}

impl Jaeger {
    /// Writes the config into a fresh temp dir, starts `JAEGER_BIN --config <file>` and waits
    /// until it is ready. Errors carry the tail of its log.
    pub fn start(opts: &JaegerOptions) -> Result<Jaeger> {
        let bin = env::jaeger_bin()?;
        let dir = PeerProcess::temp_dir("jaeger")?;
        let free = env::free_ports(5)?;
        let ports = JaegerPorts {
            otlp_grpc: free[0],
            otlp_http: free[1],
            query_http: free[2],
            query_grpc: free[3],
            metrics: free[4],
        };
        let config_path = dir.path().join("jaeger.yaml");
        std::fs::write(&config_path, config_yaml(opts, ports))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&config_path);
        let process = PeerProcess::spawn("jaeger", dir, &mut cmd)?;
        let mut jaeger = Jaeger {
            process,
            http: Http::new("jaeger", &format!("http://127.0.0.1:{}", ports.query_http)),
            ports,
            config_path,
        };
        let http = &jaeger.http;
        jaeger.process.wait_ready(opts.ready_timeout, |last| {
            let answer = match http.get("/api/services", &[], "the service list") {
                Ok(a) => a,
                Err(e) => {
                    *last = e.to_string();
                    return Ok(false);
                }
            };
            if answer.status != 200 {
                *last = format!(
                    "/api/services: HTTP {}: {}",
                    answer.status,
                    answer.body.trim()
                );
                return Ok(false);
            }
            for (what, port) in [
                ("OTLP gRPC receiver", ports.otlp_grpc),
                ("OTLP HTTP receiver", ports.otlp_http),
            ] {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                    *last = format!("{what} on {addr}: {e}");
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(jaeger)
    }

    /// OTLP/gRPC endpoint for an exporter, e.g. `http://127.0.0.1:43170`.
    #[must_use]
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_grpc)
    }

    /// OTLP/HTTP base endpoint, e.g. `http://127.0.0.1:43180` (traces go to `/v1/traces`).
    #[must_use]
    pub fn otlp_http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.otlp_http)
    }

    /// Base URL of the query HTTP API, e.g. `http://127.0.0.1:16686`.
    #[must_use]
    pub fn query_url(&self) -> &str {
        self.http.base()
    }

    /// The query gRPC endpoint (`127.0.0.1:<port>`).
    #[must_use]
    pub fn query_grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.query_grpc)
    }

    /// Jaeger's own metrics, e.g. `http://127.0.0.1:8888/metrics`.
    #[must_use]
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.ports.metrics)
    }

    /// All its ports.
    #[must_use]
    pub fn ports(&self) -> JaegerPorts {
        self.ports
    }

    /// The generated config.
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

    /// Services that sent spans.
    pub fn services(&self) -> Result<Vec<String>, ApiError> {
        let answer = self.http.get("/api/services", &[], "the service list")?;
        api::services(&answer)
    }

    /// Traces of `service` with a span matching every `tags` pair (span, scope, resource or
    /// span-event attributes, compared as strings), at most `limit`, over the last 2 days.
    ///
    /// Do not search for `("error", "true")`: Jaeger 1.76's in-memory store reads the string
    /// `"true"` as boolean false and then returns only spans with status Ok. Search by the
    /// `error.type` attribute a failed span carries, or check [`Span::is_error`].
    pub fn find_traces(
        &self,
        service: &str,
        tags: &[(&str, &str)],
        limit: usize,
    ) -> Result<Vec<Trace>, ApiError> {
        let tags_json = json!(
            tags.iter()
                .map(|(k, v)| ((*k).to_owned(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
        )
        .to_string();
        let limit = limit.to_string();
        let what = format!("traces of service {service:?} with tags {tags_json}");
        let mut params = vec![("service", service), ("limit", limit.as_str())];
        if !tags.is_empty() {
            params.push(("tags", tags_json.as_str()));
        }
        let answer = self.http.get("/api/traces", &params, &what)?;
        api::traces(&answer)
    }

    /// One trace by id (hex; any case, leading zeros optional). A trace Jaeger does not have
    /// (yet) is an [`ApiError`] for which [`ApiError::is_not_found`] holds.
    pub fn trace(&self, trace_id: &str) -> Result<Trace, ApiError> {
        let id = normalize_id(trace_id, 32);
        let what = format!("trace {id}");
        let answer = self.http.get(&format!("/api/traces/{id}"), &[], &what)?;
        let mut traces = api::traces(&answer)?;
        match traces.len() {
            1 => Ok(traces.remove(0)),
            n => Err(answer.unexpected(format!("expected one trace, got {n}"))),
        }
    }

    /// Polls [`Jaeger::trace`] until the trace exists and `until` holds for it (spans arrive in
    /// batches: wait for the spans you assert on). The timeout error shows the last span tree.
    pub fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        until: impl Fn(&Trace) -> bool,
    ) -> Result<Trace> {
        poll_until(
            &format!("trace {trace_id} in Jaeger"),
            timeout,
            POLL,
            |last| match self.trace(trace_id) {
                Ok(trace) if until(&trace) => Ok(Some(trace)),
                Ok(trace) => {
                    *last = format!(
                        "{} spans, not yet what was waited for:\n{}",
                        trace.spans.len(),
                        trace.render_tree()
                    );
                    Ok(None)
                }
                Err(e) if e.is_not_found() => {
                    "not found".clone_into(last);
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            },
        )
    }

    /// Polls [`Jaeger::find_traces`] (limit 100) until `until` holds for the traces found.
    pub fn wait_for_traces(
        &self,
        service: &str,
        tags: &[(&str, &str)],
        timeout: Duration,
        until: impl Fn(&[Trace]) -> bool,
    ) -> Result<Vec<Trace>> {
        poll_until(
            &format!("traces of {service:?} with tags {tags:?} in Jaeger"),
            timeout,
            POLL,
            |last| {
                let traces = self.find_traces(service, tags, 100)?;
                if until(&traces) {
                    return Ok(Some(traces));
                }
                *last = format!(
                    "{} traces: {:?}",
                    traces.len(),
                    traces
                        .iter()
                        .map(|t| (&t.trace_id, t.spans.len()))
                        .collect::<Vec<_>>()
                );
                Ok(None)
            },
        )
    }
}

/// The collector config: OTLP receivers → batch → in-memory storage, the query extension, the
/// collector's own telemetry; every endpoint on 127.0.0.1.
fn config_yaml(opts: &JaegerOptions, ports: JaegerPorts) -> String {
    let lo = |port: u16| format!("127.0.0.1:{port}");
    let doc = json!({
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                },
            },
            "telemetry": {
                "resource": { "service.name": "jaeger" },
                "logs": { "level": "info" },
                "metrics": {
                    "level": "basic",
                    "readers": [ { "pull": { "exporter": { "prometheus": {
                        "host": "127.0.0.1",
                        "port": ports.metrics,
                    } } } } ],
                },
            },
        },
        "extensions": {
            "jaeger_query": {
                "storage": { "traces": "mem" },
                "enable_tracing": false,
                "http": { "endpoint": lo(ports.query_http) },
                "grpc": { "endpoint": lo(ports.query_grpc) },
            },
            "jaeger_storage": {
                "backends": { "mem": { "memory": { "max_traces": opts.max_traces } } },
            },
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": { "endpoint": lo(ports.otlp_grpc) },
                    "http": { "endpoint": lo(ports.otlp_http) },
                },
            },
        },
        "processors": {
            "batch": { "timeout": format!("{}ms", opts.batch_timeout.as_millis()) },
        },
        "exporters": {
            "jaeger_storage_exporter": { "trace_storage": "mem" },
        },
    });
    format!(
        "# Written by the bpfexec end-to-end harness (tests/src/peers/jaeger.rs).\n{}",
        yaml::to_yaml(&doc)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_binds_every_endpoint_to_loopback() {
        let ports = JaegerPorts {
            otlp_grpc: 1,
            otlp_http: 2,
            query_http: 3,
            query_grpc: 4,
            metrics: 5,
        };
        let yaml = config_yaml(&JaegerOptions::default(), ports);
        for port in 1..=4 {
            assert!(
                yaml.contains(&format!("endpoint: \"127.0.0.1:{port}\"")),
                "{yaml}"
            );
        }
        assert!(yaml.contains("host: \"127.0.0.1\"\n"), "{yaml}");
        assert!(yaml.contains("port: 5\n"), "{yaml}");
        assert!(!yaml.contains("0.0.0.0"), "{yaml}");
    }
}
