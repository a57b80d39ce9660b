//! Sink: OpenTelemetry traces of every task run, exported over OTLP (`config` for the settings,
//! `spans` for the facts-to-spans state machine, `export` for the queue and the exporter). Off
//! unless the plugin config has an `otlp` block or the agent's environment names an OTLP
//! endpoint.

pub mod config;
pub mod export;
pub mod spans;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;

use super::bus::{FactBus, FactReceiver};
use crate::observer::TaskKey;
pub use config::{OtlpConfig, Protocol, RawOtlp};
pub use export::ExportSetupError;

/// Batches the trace sink may fall behind by.
const QUEUE: usize = 4096;
/// How often finished spans are looked for.
const TICK: Duration = Duration::from_millis(250);

/// The trace sink.
pub struct Traces {
    exporter: export::Exporter,
    tracer: Arc<Mutex<spans::Tracer>>,
    pub config: OtlpConfig,
}

/// The resource every span carries: `service.*`, `host.name`, plus `OTEL_RESOURCE_ATTRIBUTES`
/// and `OTEL_SERVICE_NAME` from the agent's environment.
#[must_use]
pub fn resource(env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let mut attrs: Vec<KeyValue> = env("OTEL_RESOURCE_ATTRIBUTES")
        .map(|s| config::parse_pairs(&s))
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    let service = env("OTEL_SERVICE_NAME")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bpfexec".to_owned());
    attrs.retain(|kv| kv.key.as_str() != "service.name");
    attrs.push(KeyValue::new("service.name", service));
    attrs.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Ok(host) = nix::unistd::gethostname() {
        attrs.push(KeyValue::new(
            "host.name",
            host.to_string_lossy().into_owned(),
        ));
    }
    Resource::builder_empty().with_attributes(attrs).build()
}

impl Traces {
    /// Starts exporting and reading facts from `bus`. Must be called inside a tokio runtime.
    pub fn start(
        config: OtlpConfig,
        resource: &Resource,
        bus: &FactBus,
    ) -> Result<Arc<Self>, ExportSetupError> {
        let exporter = export::Exporter::start(&config, resource)?;
        let traces = Arc::new(Self {
            exporter,
            tracer: Arc::new(Mutex::new(spans::Tracer::new(config.max_process_spans))),
            config,
        });
        tokio::spawn(run(
            bus.subscribe("traces", QUEUE, true),
            Arc::downgrade(&traces),
        ));
        Ok(traces)
    }

    fn step(&self, facts: &[super::Fact], now: SystemTime) {
        let mut out = Vec::new();
        {
            let mut tracer = self.tracer.lock().unwrap_or_else(PoisonError::into_inner);
            for f in facts {
                tracer.apply(f, &mut out);
            }
            tracer.tick(now, &mut out);
        }
        if !out.is_empty() {
            self.exporter.send(out);
        }
    }

    /// Export counters.
    pub fn totals(&self) -> super::metrics::OtlpTotals {
        self.exporter.totals()
    }

    /// Process spans capped per running task run.
    pub fn capped(&self) -> Vec<(TaskKey, u64)> {
        self.tracer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capped()
    }

    /// Exports what is finished and queued (the Shutdown RPC, plugin exit), for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let mut out = Vec::new();
        self.tracer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush_closing(&mut out);
        self.exporter.send(out);
        self.exporter.shutdown(grace).await;
    }
}

async fn run(mut facts: FactReceiver, traces: std::sync::Weak<Traces>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            b = facts.recv() => match b {
                Some(b) => Some(b),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let Some(t) = traces.upgrade() else { return };
        match batch {
            Some(b) => t.step(&b, SystemTime::now()),
            None => t.step(&[], SystemTime::now()),
        }
    }
}
