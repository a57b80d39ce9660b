//! Loads the embedded probe object, hands it the tracepoint layouts read from tracefs, reuses or
//! creates the pinned state maps, attaches (or keeps the pinned attachments of) the classic
//! tracepoints, and pumps the `EVENTS` ring buffer into a tokio broadcast channel.
//!
//! Kernel contract: tracepoints `sched/sched_process_{exec,exit}` and `task/task_newtask` are
//! required; `signal/signal_generate` and `oom/mark_victim` are attached when the kernel has them.
//! Map and program memory is charged to the memory cgroup (Linux >= 5.11), so `RLIMIT_MEMLOCK` is
//! not raised. With pinning, links are `BPF_LINK_CREATE` perf-event links pinned under bpffs: they
//! stay attached after the driver exits, and the next driver reads the same ring buffer.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
};
use bpfexec_common::{
    GLOBAL_EXEC_LAYOUT, GLOBAL_EXIT_LAYOUT, GLOBAL_NEWTASK_LAYOUT, GLOBAL_OOM_LAYOUT,
    GLOBAL_SIGNAL_LAYOUT, GLOBAL_TRACK_LIMITS, MAP_EVENTS, MAP_FACTS, MAP_HELPERS, MAP_LOST,
    MAP_THREADS, MAP_TRACKED, TRACKED_MAX, TRACKED_PER_TASK_DEFAULT, TrackLimits,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    runtime::Handle,
    sync::{Notify, broadcast},
    task::JoinHandle,
};

use super::{
    ProbeError,
    attach::{Layouts, attach_all},
    events::ProcessEvent,
    kernel::KernelMaps,
    pin::{self, Pins},
    tracefs,
};

/// How many decoded events a subscriber may fall behind before it sees `RecvError::Lagged`.
pub const EVENT_CHANNEL_CAPACITY: usize = 16_384;

/// What [`ProbeSet::stats`] reports.
#[derive(Clone, Debug, Default)]
pub struct ProbeStats {
    pub programs: std::collections::BTreeMap<&'static str, super::stats::ProgramRuns>,
    /// (map, entries, capacity).
    pub maps: Vec<(&'static str, u64, u64)>,
    /// `kernel.bpf_stats_enabled` is 1.
    pub stats_enabled: bool,
}

/// Maps pinned under `<pin root>/v<N>/maps/`.
const PINNED_MAPS: [&str; 6] = [
    MAP_EVENTS,
    MAP_LOST,
    MAP_TRACKED,
    MAP_THREADS,
    MAP_FACTS,
    MAP_HELPERS,
];

/// The probe object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
fn embedded_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfexec-ebpf"))
}

/// How the probes are loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Pin state and links under this bpffs directory; `None` keeps everything in this process.
    pub pin_root: Option<PathBuf>,
    /// Capacity of `TRACKED` (live processes of all tasks).
    pub tracked_capacity: u32,
    /// Entries of `TRACKED` one task may hold (0: no share, only the capacity).
    pub tracked_per_task: u32,
    /// Where tracefs is (mounted there if not); None: the usual places.
    pub tracefs: Option<PathBuf>,
    /// Where bpffs is mounted when the pin root is below it and it is not mounted yet.
    pub bpffs: PathBuf,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            pin_root: Some(PathBuf::from(pin::DEFAULT_PIN_ROOT)),
            tracked_capacity: TRACKED_MAX,
            tracked_per_task: TRACKED_PER_TASK_DEFAULT,
            tracefs: None,
            bpffs: PathBuf::from(pin::BPFFS_MOUNT),
        }
    }
}

impl ProbeOptions {
    /// Nothing pinned: state and attachments end with this process.
    #[must_use]
    pub fn unpinned() -> Self {
        Self {
            pin_root: None,
            ..Self::default()
        }
    }

    /// Pinned under `root` (which must be on bpffs, or below `/sys/fs/bpf`).
    #[must_use]
    pub fn pinned_at(root: impl Into<PathBuf>) -> Self {
        Self {
            pin_root: Some(root.into()),
            ..Self::default()
        }
    }

    /// FNV-1a of the probe object and the load-time settings that change the programs: names
    /// the pinned links, so links of another build or other limits are replaced.
    fn programs_hash(&self, object: &[u8]) -> u64 {
        let hash = pin::hash_more(
            pin::object_hash(object),
            &self.tracked_capacity.to_le_bytes(),
        );
        pin::hash_more(hash, &self.tracked_per_task.to_le_bytes())
    }
}

/// The capacity of a pinned map, if it exists and can be opened.
fn pinned_capacity(path: &Path) -> Option<u32> {
    let map = MapData::from_pin(path).ok()?;
    map.info().ok().map(|i| i.max_entries())
}

/// What survives this driver process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinning {
    /// Nothing: the state maps and attachments end with the process.
    Off { reason: String },
    On {
        /// `<root>/v<N>`.
        dir: PathBuf,
        /// The state maps existed already (a previous driver's tracking continues).
        maps_reused: bool,
        /// Tracepoints whose pinned attachment from a previous driver was kept.
        links_reused: Vec<&'static str>,
        /// Tracepoints attached by this process and pinned.
        links_pinned: Vec<&'static str>,
        /// Tracepoints attached by this process whose link could not be pinned.
        links_unpinned: Vec<&'static str>,
    },
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    malformed: AtomicU64,
}

/// The loaded and attached probes. Dropping it stops the reader task; unpinned attachments are
/// detached, pinned ones stay (see [`Pinning`]).
pub struct ProbeSet {
    // Owns the programs and unpinned links: dropping it detaches those tracepoints.
    _ebpf: Ebpf,
    maps: KernelMaps,
    attached: Vec<&'static str>,
    pinning: Pinning,
    // Holds the pin directory lock while the probes live.
    pins: Option<Pins>,
    events: broadcast::Sender<ProcessEvent>,
    subscribed: Arc<Notify>,
    counters: Arc<Counters>,
    reader: JoinHandle<()>,
    tracefs: PathBuf,
    /// Instruction tag -> program name, to find our programs among the loaded ones.
    program_tags: Vec<(u64, &'static str)>,
}

impl ProbeSet {
    /// [`ProbeSet::load_with`] with the default options (pinned under `/sys/fs/bpf/bpfexec`).
    pub fn load() -> Result<Self, ProbeError> {
        Self::load_with(&ProbeOptions::default())
    }

    /// Mounts tracefs (and bpffs) if needed, reads the tracepoint formats, loads the probes with
    /// those layouts and the pinned maps, attaches them and starts the ring-buffer reader on the
    /// current tokio runtime. Records are read once the first subscriber exists.
    pub fn load_with(options: &ProbeOptions) -> Result<Self, ProbeError> {
        let runtime = Handle::try_current().map_err(|_| ProbeError::NoRuntime)?;
        let object = embedded_object();
        if object.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        let tracefs = tracefs::ensure_mounted_at(options.tracefs.as_deref())?;
        let layouts = Layouts::read(&tracefs)?;
        let (pins, off_reason) = match &options.pin_root {
            None => (None, "pinning disabled by the driver's options".to_owned()),
            Some(root) => {
                match Pins::prepare(root, options.programs_hash(object), &options.bpffs) {
                    Ok(p) => (Some(p), String::new()),
                    Err(e) => {
                        tracing::warn!(error = %e, "probe state will not survive a driver restart");
                        (None, e.to_string())
                    }
                }
            }
        };
        if let Some(p) = &pins
            && let Some(cap) = pinned_capacity(&p.map(MAP_TRACKED))
            && cap != options.tracked_capacity
        {
            // A map's size is fixed at creation: start the pinned state afresh (running tasks'
            // processes are re-read from procfs when they are recovered).
            tracing::warn!(
                pinned = cap,
                wanted = options.tracked_capacity,
                "tracked_processes changed: the pinned probe state is recreated"
            );
            p.remove_maps();
        }
        let maps_reused = pins
            .as_ref()
            .is_some_and(|p| PINNED_MAPS.iter().all(|m| p.map(m).exists()));
        let map_paths: Vec<(&str, PathBuf)> = pins
            .as_ref()
            .map(|p| PINNED_MAPS.iter().map(|m| (*m, p.map(m))).collect())
            .unwrap_or_default();

        let (signal_layout, oom_layout) = (
            layouts.signal.unwrap_or_default(),
            layouts.oom.unwrap_or_default(),
        );
        let limits = TrackLimits {
            per_task: u64::from(options.tracked_per_task),
        };
        let mut loader = EbpfLoader::new();
        loader
            .override_global(GLOBAL_EXEC_LAYOUT, &layouts.exec, true)
            .override_global(GLOBAL_EXIT_LAYOUT, &layouts.exit, true)
            .override_global(GLOBAL_NEWTASK_LAYOUT, &layouts.newtask, true)
            .override_global(GLOBAL_SIGNAL_LAYOUT, &signal_layout, true)
            .override_global(GLOBAL_OOM_LAYOUT, &oom_layout, true)
            .override_global(GLOBAL_TRACK_LIMITS, &limits, true)
            .map_max_entries(MAP_TRACKED, options.tracked_capacity);
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(ProbeError::MissingMap(MAP_EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(|e| ProbeError::map(MAP_EVENTS, e))?;
        let maps = KernelMaps::take(&mut ebpf)?;

        let (attached, pinning) = attach_all(&mut ebpf, &layouts, pins.as_ref(), maps_reused)?;
        let program_tags = super::attach::PROGRAMS
            .iter()
            .filter_map(|name| Some((ebpf.program(name)?.info().ok()?.tag(), *name)))
            .collect();
        let pinning = pinning.unwrap_or(Pinning::Off { reason: off_reason });

        // SAFETY: the RingBuf owns its map's file descriptor (closed only when the RingBuf is
        // dropped, which the AsyncFd controls) and `as_raw_fd` always returns that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| ProbeError::Reactor(e.into()))?;
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let counters = Arc::new(Counters::default());
        let subscribed = Arc::new(Notify::new());
        let reader = runtime.spawn(pump(
            ring,
            events.clone(),
            Arc::clone(&counters),
            Arc::clone(&subscribed),
        ));
        tracing::info!(?attached, ?pinning, tracefs = %tracefs.display(), "eBPF probes attached");
        Ok(Self {
            _ebpf: ebpf,
            maps,
            attached,
            pinning,
            pins,
            events,
            subscribed,
            counters,
            reader,
            tracefs,
            program_tags,
        })
    }

    /// A receiver of every event decoded from now on. The first call starts reading the ring
    /// buffer, so records left by a previous driver reach the first subscriber.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        let rx = self.events.subscribe();
        self.subscribed.notify_one();
        rx
    }

    /// The attached tracepoints, e.g. `"sched/sched_process_exec"`.
    #[must_use]
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// What of the probe state survives this process.
    #[must_use]
    pub fn pinning(&self) -> &Pinning {
        &self.pinning
    }

    /// `<pin root>/v<N>/maps` when the state maps are pinned.
    #[must_use]
    pub fn pinned_maps_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(|p| p.maps.as_path())
    }

    /// The state maps (`TRACKED`, `THREADS`, `FACTS`, `LOST`).
    #[must_use]
    pub fn kernel(&self) -> &KernelMaps {
        &self.maps
    }

    /// Per program, how often it ran and for how long (zero unless the kernel accounts BPF run
    /// time), and the fill of the state maps. Walks kernel objects: call it seldom.
    pub fn stats(&self) -> ProbeStats {
        let (maps, tracked_id) = self.maps.fill();
        let programs = tracked_id
            .map(|id| super::stats::program_runs(id, &self.program_tags))
            .unwrap_or_default();
        ProbeStats {
            programs,
            maps,
            stats_enabled: super::stats::stats_enabled(),
        }
    }

    /// Records the probes dropped because the ring buffer was full (summed over CPUs).
    pub fn lost_events(&self) -> Result<u64, ProbeError> {
        self.maps.lost_events()
    }

    /// Records read from the ring buffer (including malformed ones).
    #[must_use]
    pub fn events_received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }

    /// Records that could not be decoded (driver and probes out of sync).
    #[must_use]
    pub fn malformed_events(&self) -> u64 {
        self.counters.malformed.load(Ordering::Relaxed)
    }

    /// Where tracefs is mounted.
    #[must_use]
    pub fn tracefs(&self) -> &Path {
        &self.tracefs
    }
}

impl Drop for ProbeSet {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for ProbeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeSet")
            .field("attached", &self.attached)
            .field("pinning", &self.pinning)
            .field("events_received", &self.events_received())
            .field("tracefs", &self.tracefs)
            .finish_non_exhaustive()
    }
}

/// Drains the ring buffer whenever the kernel signals new records, decoding and broadcasting them.
/// Starts once someone subscribed, so a backlog left in a pinned ring buffer is not thrown away.
async fn pump(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: broadcast::Sender<ProcessEvent>,
    counters: Arc<Counters>,
    subscribed: Arc<Notify>,
) {
    subscribed.notified().await;
    loop {
        // The probes wake us only when the ring fills up; drain it on a short timer as well.
        match tokio::time::timeout(DRAIN_PERIOD, ring.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                drain(guard.get_inner_mut(), &events, &counters);
                guard.clear_ready();
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "eBPF ring buffer poll failed; process events stop");
                return;
            }
            Err(_) => drain(ring.get_mut(), &events, &counters),
        }
    }
}

/// How often the ring buffer is read when the probes did not ask for a wake-up (they do for a
/// main process's exit and for OOM kills, which exit classification waits for, and when the
/// ring is a quarter full). Each timer wake-up costs the plugin CPU even when nothing happened.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// Records moved out of the ring per pass at most.
const DRAIN_MAX: usize = 8_192;

/// Moves records from the ring to the channel, never more than the channel has room for: when
/// the observer falls behind, the rest waits in the ring (4 MiB, more than twice the channel),
/// so the ring is the one buffer that can overflow and its overflow is counted, per CPU, in
/// `LOST`; the channel never silently drops what the ring handed over.
fn drain(
    buf: &mut RingBuf<MapData>,
    events: &broadcast::Sender<ProcessEvent>,
    counters: &Counters,
) {
    let room = EVENT_CHANNEL_CAPACITY.saturating_sub(events.len());
    for _ in 0..room.min(DRAIN_MAX) {
        let Some(item) = buf.next() else { break };
        counters.received.fetch_add(1, Ordering::Relaxed);
        match ProcessEvent::decode(&item) {
            // No subscriber is not an error: events are only of interest while someone listens.
            Ok(event) => drop(events.send(event)),
            Err(e) => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "malformed eBPF record dropped");
            }
        }
    }
}

// The driver shares one ProbeSet across tasks (e.g. in an `Arc`).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ProbeSet>();
};
