//! Telemetry: one stream of task facts, many sinks.
//!
//! ```text
//!  probes ──ring buffer──▶ observer ──┐ exec, fork, exit, signal, OOM kill, escape, leak,
//!                                     │ live notices
//!  Nomad RPCs ──▶ task table ─────────┤ started, recovered, ended (with the explained reason),
//!                 (tasks/observe.rs)  │ destroyed
//!                                     ▼
//!                                 FactBus ── a bounded queue per sink, never waits ──┐
//!        ┌──────────────────────────────┬──────────────────────────────┐           │
//!        ▼                              ▼                              ▼           │
//!  nomad_events (task events)   metrics (GET /metrics)       traces (OTLP spans)   │
//! ```
//!
//! Facts are produced once: the observer and the task table publish them and know no sink. A
//! sink subscribes to the bus and reads its own queue; one that falls behind loses batches,
//! counted in `bpfexec_sink_dropped_facts_total`, and never slows the probes' reader, a task or
//! a Nomad RPC. Adding a sink touches neither the probes nor the observer.

pub mod bus;
pub mod end_delivery;
pub mod fact;
pub mod ids;
pub mod metrics;
pub mod nomad_events;
pub mod pending;
pub mod traces;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bpfexec_proto::drivers;
use tokio::sync::broadcast;

pub use bus::{FactBus, FactReceiver};
pub use fact::Fact;
use metrics::Metrics;
use nomad_events::NomadEvents;
use traces::{OtlpConfig, Traces};

/// How long the Shutdown RPC and plugin exit wait for queued spans.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The bus and its sinks, one per plugin process.
pub struct Telemetry {
    pub bus: Arc<FactBus>,
    pub nomad: NomadEvents,
    pub metrics: Arc<Metrics>,
    traces: OnceLock<Arc<Traces>>,
}

impl Telemetry {
    /// Creates the bus and starts the Nomad-event and metrics sinks. Must be called inside a
    /// tokio runtime.
    #[must_use]
    pub fn start(
        events: broadcast::Sender<drivers::DriverTaskEvent>,
        cgroup_mode: &str,
    ) -> Arc<Self> {
        let bus = FactBus::new();
        let nomad = NomadEvents::start(&bus, events);
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let metrics = Metrics::new(cgroup_mode, &kernel);
        metrics.start_sink(&bus);
        Arc::new(Self {
            bus,
            nomad,
            metrics,
            traces: OnceLock::new(),
        })
    }

    /// Publishes one fact.
    pub fn publish(&self, fact: Fact) {
        self.bus.publish(vec![fact]);
    }

    /// Starts trace export (once; later calls keep the first exporter).
    pub fn enable_traces(&self, config: OtlpConfig) -> Result<(), traces::ExportSetupError> {
        if self.traces.get().is_some() {
            return Ok(());
        }
        let env = |k: &str| std::env::var(k).ok();
        let t = Traces::start(config, &traces::resource(&env), &self.bus)?;
        tracing::info!(
            endpoint = %t.config.endpoint,
            protocol = t.config.protocol.name(),
            source = t.config.source,
            "exporting task traces over OTLP"
        );
        let _ = self.traces.set(t);
        self.nomad.annotate_trace_ids();
        Ok(())
    }

    pub fn traces(&self) -> Option<&Arc<Traces>> {
        self.traces.get()
    }

    /// Flushes what the sinks hold (the Shutdown RPC, plugin exit).
    pub async fn shutdown(&self) {
        if let Some(t) = self.traces.get() {
            t.shutdown(SHUTDOWN_GRACE).await;
        }
    }
}
