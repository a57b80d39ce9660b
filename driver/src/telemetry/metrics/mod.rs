//! Sink: Prometheus metrics, served on `GET /metrics` of `http_addr`. Built on prometheus-client
//! (the Prometheus organisation's crate: typed label sets, OpenMetrics with exemplars, removal of
//! series, used by linkerd2-proxy) rather than the `prometheus` crate (classic text and protobuf
//! only, no OpenMetrics): OpenMetrics is what Prometheus negotiates first, and the classic text
//! format is derived from it (`expose`). Per-task series follow the fact stream (`task`), driver
//! health is refreshed from snapshots (`health`), memory pressure is sampled from cgroupfs
//! (`cgroup`).

pub mod cgroup;
pub mod expose;
pub mod health;
pub mod labels;
pub mod task;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::bus::{FactBus, FactReceiver};
use crate::observer::TaskKey;
pub use cgroup::CgroupSample;
pub use expose::Format;
pub use health::{HealthSnapshot, OtlpTotals, ProcessUsage};

/// Default of `metrics_retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(300);
/// Batches the metrics sink may fall behind by.
const QUEUE: usize = 4096;

/// Advances `counter` by the growth of a kernel total since its last reading (a smaller reading
/// means the source restarted).
pub(crate) fn grow_u64(counter: &Counter, last: &mut u64, now: u64) {
    let delta = if now >= *last { now - *last } else { now };
    *last = now;
    if delta > 0 {
        counter.inc_by(delta);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The driver's metrics.
pub struct Metrics {
    registry: Registry,
    tasks: Mutex<task::TaskMetrics>,
    health: Mutex<health::Health>,
    retention: Mutex<Duration>,
}

impl Metrics {
    /// Registers every family. `kernel` and `cgroup_mode` go to `bpfexec_build_info`.
    #[must_use]
    pub fn new(cgroup_mode: &str, kernel: &str) -> Arc<Self> {
        let mut registry = Registry::default();
        let tasks = task::TaskMetrics::register(&mut registry);
        let health = health::Health::register(
            &mut registry,
            env!("CARGO_PKG_VERSION"),
            cgroup_mode,
            kernel,
        );
        Arc::new(Self {
            registry,
            tasks: Mutex::new(tasks),
            health: Mutex::new(health),
            retention: Mutex::new(DEFAULT_RETENTION),
        })
    }

    /// How long a destroyed task's series stay.
    pub fn set_retention(&self, retention: Duration) {
        *lock(&self.retention) = retention;
    }

    /// Starts reading facts from `bus`. Must be called inside a tokio runtime.
    pub fn start_sink(self: &Arc<Self>, bus: &FactBus) {
        let facts = bus.subscribe("metrics", QUEUE, true);
        tokio::spawn(run(facts, Arc::clone(self)));
    }

    /// Applies facts (what the sink does with each batch).
    pub fn apply(&self, facts: &[super::Fact]) {
        let mut tasks = lock(&self.tasks);
        for f in facts {
            tasks.apply(f);
        }
    }

    /// Task runs still running (their cgroups are sampled).
    pub fn running(&self) -> Vec<TaskKey> {
        lock(&self.tasks).running()
    }

    /// Ended runs whose cgroup is to be read once more.
    pub fn final_samples_due(&self) -> std::collections::HashSet<TaskKey> {
        lock(&self.tasks).final_samples_due()
    }

    /// Runs known: (running, ended and not destroyed yet).
    pub fn task_counts(&self) -> (usize, usize) {
        lock(&self.tasks).counts()
    }

    /// Records cgroup readings of running tasks.
    pub fn cgroup_samples(&self, samples: &[(TaskKey, CgroupSample)]) {
        let mut tasks = lock(&self.tasks);
        for (key, s) in samples {
            tasks.cgroup_sample(*key, s);
        }
    }

    /// Records how many process spans each run had capped.
    pub fn spans_capped(&self, capped: &[(TaskKey, u64)]) {
        let mut tasks = lock(&self.tasks);
        for (key, n) in capped {
            tasks.spans_capped(*key, *n);
        }
    }

    /// Ended runs of tasks not in `known` (the plugin's task table) count as destroyed.
    pub fn forget_unknown(&self, known: &std::collections::HashSet<TaskKey>) {
        lock(&self.tasks).forget_unknown(known);
    }

    /// Drops the series of tasks destroyed longer than the retention ago.
    pub fn sweep(&self) {
        let retention = *lock(&self.retention);
        lock(&self.tasks).sweep(Instant::now(), retention);
    }

    /// (allocation, task) pairs that have series.
    pub fn task_groups(&self) -> usize {
        lock(&self.tasks).groups()
    }

    /// Refreshes the health series.
    pub fn refresh_health(&self, snapshot: &HealthSnapshot) {
        lock(&self.health).refresh(snapshot);
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut text = String::with_capacity(64 * 1024);
        // Holding the task lock keeps a batch of facts from being half applied in the output.
        let tasks = lock(&self.tasks);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        drop(tasks);
        match format {
            Format::OpenMetrics => text,
            Format::Classic => expose::to_classic(&text),
        }
    }
}

async fn run(mut facts: FactReceiver, metrics: Arc<Metrics>) {
    while let Some(batch) = facts.recv().await {
        metrics.apply(&batch);
    }
}

#[cfg(test)]
mod tests;
