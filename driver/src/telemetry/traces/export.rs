//! Sends finished spans to the OTLP collector (opentelemetry-otlp's exporter, gRPC over tonic or
//! HTTP/protobuf over hyper) from a bounded queue on its own task: nothing ever waits for the
//! collector. A full queue, a failed export and spans still queued when the plugin stops are
//! counted by reason (the SDK's batch processor only logs its drops, so the batching is ours).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use tokio::sync::{mpsc, watch};

use super::config::{OtlpConfig, Protocol};
use crate::telemetry::metrics::OtlpTotals;

/// Spans waiting for export at most.
pub const QUEUE: usize = 8192;
/// Spans per export call at most.
const BATCH: usize = 512;
/// How long the exporter gathers a batch after its first span.
const LINGER: Duration = Duration::from_millis(200);

/// The exporter could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export to {endpoint} ({protocol}): {detail}")]
pub struct ExportSetupError {
    endpoint: String,
    protocol: &'static str,
    detail: String,
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    queue_full: AtomicU64,
    export_failed: AtomicU64,
    shutdown: AtomicU64,
    errors: AtomicU64,
}

/// The export queue and its counters.
pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    counters: Arc<Counters>,
    stop: watch::Sender<Option<tokio::time::Instant>>,
    done: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn build(
    config: &OtlpConfig,
) -> Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    match config.protocol {
        Protocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (k, v) in &config.headers {
                if let (Ok(k), Ok(v)) = (
                    tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                    v.parse(),
                ) {
                    metadata.insert(k, v);
                }
            }
            builder
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata)
                .build()
        }
        Protocol::HttpProtobuf => builder
            .with_http()
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.timeout)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_headers(config.headers.clone().into_iter().collect())
            .build(),
    }
}

impl Exporter {
    /// Builds the exporter and starts its task. Must be called inside a tokio runtime.
    pub fn start(config: &OtlpConfig, resource: &Resource) -> Result<Self, ExportSetupError> {
        let mut exporter = build(config).map_err(|e| ExportSetupError {
            endpoint: config.endpoint.clone(),
            protocol: config.protocol.name(),
            detail: e.to_string(),
        })?;
        exporter.set_resource(resource);
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(run(
            exporter,
            rx,
            Arc::clone(&counters),
            stop_rx,
            config.timeout,
        ));
        Ok(Self {
            tx,
            counters,
            stop,
            done: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Queues spans without waiting; a full queue drops them (counted).
    pub fn send(&self, spans: Vec<SpanData>) {
        for span in spans {
            if self.tx.try_send(span).is_err() {
                let before = self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() {
                    tracing::warn!(
                        dropped = before + 1,
                        "the OTLP export queue is full; spans are dropped \
                         (bpfexec_otlp_spans_dropped_total{{reason=\"queue_full\"}})"
                    );
                }
            }
        }
    }

    /// The counters so far.
    pub fn totals(&self) -> OtlpTotals {
        let c = &self.counters;
        OtlpTotals {
            exported: c.exported.load(Ordering::Relaxed),
            dropped_queue_full: c.queue_full.load(Ordering::Relaxed),
            dropped_export_failed: c.export_failed.load(Ordering::Relaxed),
            dropped_shutdown: c.shutdown.load(Ordering::Relaxed),
            export_errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// Exports what is queued, for at most `grace`; what is left then is counted as dropped.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let _ = self.stop.send(Some(deadline));
        if let Some(task) = self.done.lock().await.take() {
            let _ = tokio::time::timeout_at(deadline + Duration::from_millis(100), task).await;
        }
    }
}

async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: Vec<SpanData>,
    counters: &Counters,
    timeout: Duration,
) {
    let n = batch.len() as u64;
    // The exporter enforces its own timeout per attempt and retries; this bounds the whole call.
    let result = tokio::time::timeout(timeout * 4, exporter.export(batch)).await;
    match result {
        Ok(Ok(())) => {
            counters.exported.fetch_add(n, Ordering::Relaxed);
        }
        Ok(Err(e)) => {
            let errors = counters.errors.fetch_add(1, Ordering::Relaxed);
            counters.export_failed.fetch_add(n, Ordering::Relaxed);
            if errors.is_power_of_two() || errors == 0 {
                tracing::warn!(error = %e, spans = n, "OTLP export failed; the spans are dropped");
            }
        }
        Err(_) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            counters.export_failed.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(spans = n, "OTLP export timed out; the spans are dropped");
        }
    }
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<Option<tokio::time::Instant>>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = tokio::select! {
            span = rx.recv() => span,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                span = rx.recv() => match span {
                    Some(s) => batch.push(s),
                    None => break,
                },
                () = &mut linger => break,
                _ = stop.changed() => break,
            }
        }
        export(&exporter, std::mem::take(&mut batch), &counters, timeout).await;
        if stop.borrow().is_some() {
            break;
        }
    }
    // Shutting down: what is queued goes out until the deadline.
    let deadline = stop.borrow().unwrap_or_else(tokio::time::Instant::now);
    rx.close();
    while let Ok(span) = rx.try_recv() {
        batch.push(span);
        if batch.len() >= BATCH {
            flush_until(&exporter, &mut batch, &counters, timeout, deadline).await;
        }
    }
    flush_until(&exporter, &mut batch, &counters, timeout, deadline).await;
}

async fn flush_until(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    counters: &Counters,
    timeout: Duration,
    deadline: tokio::time::Instant,
) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let call = export(exporter, std::mem::take(batch), counters, timeout);
    if tokio::time::timeout_at(deadline, call).await.is_err() {
        counters.shutdown.fetch_add(n, Ordering::Relaxed);
    }
}
