//! The plugin's shared state: configuration from SetConfig, the task table, the eBPF probes and
//! the task-event bus. One `Runtime` per plugin process, shared by every gRPC service.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bpfexec_proto::{base, drivers};
use tokio::sync::broadcast;

use crate::cgroups::{self, CgroupMode};
use crate::config::plugin::PluginConfig;
use crate::errors::DriverError;
use crate::probes::ProbeSet;
use crate::tasks::{StartContext, TaskManager};
use crate::telemetry::Telemetry;

/// CPU capacity figures used to express usage in MHz, from Nomad's client topology.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    pub mhz_per_core: f64,
}

impl Compute {
    /// TotalCompute / NumCores as Nomad computes them (`override_total_compute` wins).
    pub fn from_topology(topology: Option<&base::ClientTopology>) -> Self {
        let Some(t) = topology else {
            return Self { mhz_per_core: 0.0 };
        };
        let cores = t.cores.len().max(1) as f64;
        let total = if t.override_total_compute > 0 {
            t.override_total_compute as f64
        } else {
            t.cores
                .iter()
                .map(|c| {
                    [c.base_speed, c.max_speed, c.guess_speed]
                        .into_iter()
                        .find(|s| *s > 0)
                        .unwrap_or(0) as f64
                })
                .sum()
        };
        Self {
            mhz_per_core: total / cores,
        }
    }
}

/// Where the eBPF probes are.
pub enum ProbeState {
    NotLoaded,
    Loaded(Arc<ProbeSet>),
    Failed(String),
}

#[derive(Clone)]
pub struct Configured {
    pub plugin: PluginConfig,
    pub start: StartContext,
    pub compute: Compute,
}

pub struct Runtime {
    pub tasks: TaskManager,
    pub events: broadcast::Sender<drivers::DriverTaskEvent>,
    /// The fact bus and its sinks (Nomad task events, metrics, traces).
    pub telemetry: Arc<Telemetry>,
    /// The last probe run-time and map-fill reading (taken by the telemetry collector).
    probe_stats: std::sync::Mutex<Option<crate::probes::ProbeStats>>,
    collector_started: std::sync::atomic::AtomicBool,
    configured: RwLock<Option<Configured>>,
    probes: tokio::sync::RwLock<ProbeState>,
    pub cgroup_mode: Option<CgroupMode>,
    /// The `http_addr` endpoint was started.
    pub http_started: std::sync::atomic::AtomicBool,
}

impl Runtime {
    /// Must be called inside a tokio runtime (the telemetry sinks start at once).
    pub fn new() -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        let cgroup_mode = cgroups::detect_mode(std::path::Path::new(cgroups::DEFAULT_ROOT)).ok();
        let telemetry = Telemetry::start(
            events.clone(),
            cgroup_mode.map_or("none", CgroupMode::as_str),
        );
        Arc::new(Self {
            tasks: TaskManager::new(Arc::clone(&telemetry)),
            events,
            telemetry,
            probe_stats: std::sync::Mutex::new(None),
            collector_started: std::sync::atomic::AtomicBool::new(false),
            configured: RwLock::new(None),
            probes: tokio::sync::RwLock::new(ProbeState::NotLoaded),
            cgroup_mode,
            http_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn configured(&self) -> Result<Configured, DriverError> {
        self.configured
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(DriverError::NotConfigured)
    }

    /// SetConfig from the real agent (with `nomad_config`): remember it, load the probes and
    /// start the telemetry. Calls without `nomad_config` (Nomad's validation launches) only
    /// validate.
    pub async fn configure(
        self: &Arc<Self>,
        plugin: PluginConfig,
        nomad: Option<&base::NomadConfig>,
    ) -> Result<(), DriverError> {
        let Some(nomad) = nomad else { return Ok(()) };
        self.telemetry
            .metrics
            .set_retention(plugin.metrics_retention);
        if let Some(otlp) = plugin.otlp.clone()
            && let Err(e) = self.telemetry.enable_traces(otlp)
        {
            tracing::warn!(error = %e, "trace export is off");
        }
        if !self
            .collector_started
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::spawn(crate::collect::collect(Arc::downgrade(self)));
            tokio::spawn(sweep_abandoned(Arc::downgrade(self)));
        }
        let compute =
            Compute::from_topology(nomad.driver.as_ref().and_then(|d| d.topology.as_ref()));
        let pins = crate::probes::ProbeOptions {
            pin_root: plugin.bpf_pin_dir.clone(),
            tracked_capacity: plugin.tracked_processes,
            tracked_per_task: plugin.tracked_processes_per_task,
            tracefs: plugin.tracefs_dir.clone(),
            bpffs: plugin.bpffs_dir.clone(),
        };
        let escape_check = plugin.escape_check_interval;
        let track_limits = crate::observer::TrackLimits {
            capacity: plugin.tracked_processes,
            per_task: plugin.tracked_processes_per_task,
        };
        let start = StartContext {
            plugin: plugin.clone(),
            cgroup_mode: self.cgroup_mode,
            cgroup_root: PathBuf::from(cgroups::DEFAULT_ROOT),
        };
        *self
            .configured
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Configured {
            plugin,
            start,
            compute,
        });
        self.load_probes(pins, escape_check, track_limits).await;
        Ok(())
    }

    async fn load_probes(
        &self,
        options: crate::probes::ProbeOptions,
        escape_check: std::time::Duration,
        track_limits: crate::observer::TrackLimits,
    ) {
        let mut probes = self.probes.write().await;
        if matches!(*probes, ProbeState::Loaded(_)) {
            return;
        }
        *probes = match ProbeSet::load_with(&options) {
            Ok(set) => {
                tracing::info!(attached = ?set.attached(), "eBPF probes loaded");
                let set = Arc::new(set);
                let config = crate::observer::ObserverConfig {
                    escape_check_ns: u64::try_from(escape_check.as_nanos()).unwrap_or(u64::MAX),
                    track_limits,
                    ..crate::observer::ObserverConfig::default()
                };
                let observer = crate::observer::Observer::start(
                    Arc::clone(&set),
                    config,
                    Arc::clone(&self.telemetry.bus),
                );
                observer.add_driver_pid(std::process::id());
                self.tasks.observation.attach(observer);
                ProbeState::Loaded(set)
            }
            Err(e) => {
                tracing::warn!(error = %e, "eBPF probes failed to load; tasks still run, without kernel observation");
                ProbeState::Failed(e.to_string())
            }
        };
    }

    /// The loaded probes, if any.
    pub async fn probe_set(&self) -> Option<Arc<ProbeSet>> {
        match &*self.probes.read().await {
            ProbeState::Loaded(set) => Some(Arc::clone(set)),
            _ => None,
        }
    }

    /// The last probe statistics the collector read.
    pub fn probe_stats(&self) -> Option<crate::probes::ProbeStats> {
        self.probe_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_probe_stats(&self, stats: crate::probes::ProbeStats) {
        *self
            .probe_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// A summary of the probes for the fingerprint: (status word, attached list, error).
    pub async fn probe_summary(&self) -> (String, String, Option<String>) {
        match &*self.probes.read().await {
            ProbeState::NotLoaded => ("not_loaded".into(), String::new(), None),
            ProbeState::Loaded(set) => ("loaded".into(), set.attached().join(","), None),
            ProbeState::Failed(e) => ("failed".into(), String::new(), Some(e.clone())),
        }
    }

    /// Why the loaded probes' state is not pinned, if it is not (None: pinned, or no probes).
    pub async fn pinning_off(&self) -> Option<String> {
        match &*self.probes.read().await {
            ProbeState::Loaded(set) => match set.pinning() {
                crate::probes::Pinning::Off { reason } => Some(reason.clone()),
                crate::probes::Pinning::On { .. } => None,
            },
            _ => None,
        }
    }
}

/// How often tasks Nomad abandoned are looked for.
const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`SWEEP_PERIOD`], ends and removes the tasks Nomad abandoned (tasks::adopt).
async fn sweep_abandoned(rt: std::sync::Weak<Runtime>) {
    let mut tick = tokio::time::interval(SWEEP_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(rt) = rt.upgrade() else { return };
        let Ok(configured) = rt.configured() else {
            continue;
        };
        rt.tasks
            .sweep_abandoned(&configured.start.plugin.state_dir)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(base: u64, max: u64, guess: u64) -> base::ClientTopologyCore {
        base::ClientTopologyCore {
            base_speed: base,
            max_speed: max,
            guess_speed: guess,
            ..Default::default()
        }
    }

    #[test]
    fn compute_follows_nomad_core_speed_rules() {
        let t = base::ClientTopology {
            cores: vec![core(2000, 3000, 0), core(0, 3000, 1000), core(0, 0, 1000)],
            ..Default::default()
        };
        assert!((Compute::from_topology(Some(&t)).mhz_per_core - 2000.0).abs() < 1e-9);
        let o = base::ClientTopology {
            cores: vec![core(1, 0, 0), core(1, 0, 0)],
            override_total_compute: 5000,
            ..Default::default()
        };
        assert!((Compute::from_topology(Some(&o)).mhz_per_core - 2500.0).abs() < 1e-9);
        assert!(Compute::from_topology(None).mhz_per_core.abs() < 1e-9);
    }
}
