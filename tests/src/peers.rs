//! The real telemetry peers of the end-to-end suite and the demo: Debian's Prometheus
//! ([`Prometheus`], scraping Nomad's `/v1/metrics?format=prometheus` and the driver's
//! `/metrics`) and Jaeger built from its Go module ([`Jaeger`], the OTLP receiver of the
//! driver's traces). No mocks: each is the real binary (`PROMETHEUS_BIN`, `PROMTOOL_BIN`,
//! `JAEGER_BIN`, set by `cargo xtask test`; `cargo xtask env` prints them), started as a child
//! process on free 127.0.0.1 ports with a generated config in its own temp dir, queried through
//! its HTTP API with typed results, and stopped BY PID when dropped (`BPFEXEC_E2E_KEEP=1` keeps
//! the temp dir with its config and log).
//!
//! API failures are [`ApiError`]s naming the peer, the URL, what was asked (the `PromQL`
//! query, the trace id) and the peer's own error text.

mod http;
pub mod jaeger;
mod process;
pub mod prometheus;
mod yaml;

pub use http::ApiError;
pub use jaeger::{Jaeger, JaegerOptions, Span, SpanNode, TagValue, Trace};
pub use process::{PeerProcess, is_loopback};
pub use prometheus::{Prometheus, PrometheusConfig, QueryResult, Sample, ScrapeJob, promtool};
