//! What the metrics sink reads from the runtime rather than from facts: the driver's health
//! snapshot (probes, observer counters, task counts, sink drops, OTLP counters, the plugin's own
//! usage) at scrape time, and, every few seconds on the blocking pool, the memory cgroups of
//! running tasks (and once more of each ended one), the probes' run time and map fill, the
//! process spans each run had capped, and the expiry of destroyed tasks' series (and of ended
//! tasks the task table no longer holds).

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::observer::TaskKey;
use crate::runtime::Runtime;
use crate::telemetry::metrics::{HealthSnapshot, cgroup};

/// How often the slow readings are taken.
const PERIOD: Duration = Duration::from_secs(5);

/// The health snapshot as of now (quick: no kernel-object walks).
pub async fn health(rt: &Runtime) -> HealthSnapshot {
    let probes = rt.probe_set().await;
    let observer = rt.tasks.observation.observer().map(|o| o.stats());
    let all = rt.tasks.all();
    let running = all.iter().filter(|t| t.is_running()).count();
    HealthSnapshot {
        probes_loaded: probes.is_some(),
        attached: probes
            .map(|p| {
                p.attached()
                    .iter()
                    .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        observer,
        probes: rt.probe_stats(),
        tasks_running: running,
        tasks_exited: all.len() - running,
        sink_dropped: rt.telemetry.bus.dropped(),
        otlp: rt.telemetry.traces().map(|t| t.totals()),
        process: crate::telemetry::metrics::health::process_usage(),
    }
}

/// The slow readings, every [`PERIOD`] until the runtime is gone.
pub async fn collect(rt: Weak<Runtime>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = rt.upgrade() else { return };
        once(&rt).await;
    }
}

async fn once(rt: &Arc<Runtime>) {
    let metrics = Arc::clone(&rt.telemetry.metrics);
    let all: Vec<_> = rt
        .tasks
        .all()
        .into_iter()
        .map(|t| (TaskKey::from_task_id(&t.state.task_id), t))
        .collect();
    let known: HashSet<TaskKey> = all.iter().map(|(key, _)| *key).collect();
    let due = metrics.final_samples_due();
    let running: Vec<(TaskKey, crate::cgroups::CgroupMode, std::path::PathBuf)> = all
        .into_iter()
        .filter(|(key, t)| t.is_running() || due.contains(key))
        .filter_map(|(key, t)| {
            let cg = t.state.cgroups.as_ref()?;
            Some((key, cg.mode, cg.memory_dir()?.to_path_buf()))
        })
        .collect();
    let probes = rt.probe_set().await;
    let (stats, samples) = tokio::task::spawn_blocking(move || {
        let samples: Vec<_> = running
            .iter()
            .map(|(key, mode, dir)| (*key, cgroup::sample(&cgroup::LiveFiles, *mode, dir)))
            .collect();
        (probes.map(|p| p.stats()), samples)
    })
    .await
    .unwrap_or_default();
    metrics.cgroup_samples(&samples);
    if let Some(stats) = stats {
        rt.set_probe_stats(stats);
    }
    if let Some(t) = rt.telemetry.traces() {
        metrics.spans_capped(&t.capped());
    }
    metrics.forget_unknown(&known);
    metrics.sweep();
}
