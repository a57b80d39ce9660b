//! Loads the embedded probe object, hands it the tracepoint layouts read from tracefs, attaches
//! the classic tracepoints and pumps the `EVENTS` ring buffer into a tokio broadcast channel.
//!
//! Kernel contract: tracepoints `sched/sched_process_{exec,exit,fork}` are required;
//! `signal/signal_generate` and `oom/mark_victim` are attached when the kernel has them. Map and
//! program memory is charged to the memory cgroup (Linux >= 5.11), so `RLIMIT_MEMLOCK` is not raised.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use bpfexec_common::{
    GLOBAL_EXEC_LAYOUT, GLOBAL_EXIT_LAYOUT, GLOBAL_FORK_LAYOUT, GLOBAL_OOM_LAYOUT,
    GLOBAL_SIGNAL_LAYOUT, MAP_EVENTS, MAP_LOST, OomLayout, SignalLayout,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    runtime::Handle,
    sync::broadcast,
    task::JoinHandle,
};

use super::{ProbeError, events::ProcessEvent, layout, tracefs};

/// How many decoded events a subscriber may fall behind before it sees `RecvError::Lagged`.
pub const EVENT_CHANNEL_CAPACITY: usize = 16_384;

/// The probe object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
fn embedded_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpfexec-ebpf"))
}

/// One tracepoint we attach; the probe program is named after the tracepoint.
struct Tracepoint {
    category: &'static str,
    name: &'static str,
    full: &'static str,
    required: bool,
}

const EXEC: Tracepoint = tp(
    "sched",
    "sched_process_exec",
    "sched/sched_process_exec",
    true,
);
const EXIT: Tracepoint = tp(
    "sched",
    "sched_process_exit",
    "sched/sched_process_exit",
    true,
);
const FORK: Tracepoint = tp(
    "sched",
    "sched_process_fork",
    "sched/sched_process_fork",
    true,
);
const SIGNAL: Tracepoint = tp("signal", "signal_generate", "signal/signal_generate", false);
const OOM: Tracepoint = tp("oom", "mark_victim", "oom/mark_victim", false);

const fn tp(
    category: &'static str,
    name: &'static str,
    full: &'static str,
    required: bool,
) -> Tracepoint {
    Tracepoint {
        category,
        name,
        full,
        required,
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    malformed: AtomicU64,
}

/// The loaded and attached probes. Dropping it stops the reader task and detaches the probes.
pub struct ProbeSet {
    // Owns the programs and their links: dropping it detaches the tracepoints.
    _ebpf: Ebpf,
    lost: PerCpuArray<MapData, u64>,
    attached: Vec<&'static str>,
    events: broadcast::Sender<ProcessEvent>,
    counters: Arc<Counters>,
    reader: JoinHandle<()>,
    tracefs: PathBuf,
}

impl ProbeSet {
    /// Mounts tracefs if needed, reads the tracepoint formats, loads the probes with those
    /// layouts, attaches them and starts the ring-buffer reader on the current tokio runtime.
    pub fn load() -> Result<Self, ProbeError> {
        let runtime = Handle::try_current().map_err(|_| ProbeError::NoRuntime)?;
        let object = embedded_object();
        if object.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        let tracefs = tracefs::ensure_mounted()?;
        let format = |t: &Tracepoint| tracefs::read_format(&tracefs, t.category, t.name);

        let exec = layout::exec(&format(&EXEC)?)?;
        let exit = layout::exit(&format(&EXIT)?)?;
        let fork = layout::fork(&format(&FORK)?)?;
        let signal = optional(
            &SIGNAL,
            format(&SIGNAL)
                .map_err(ProbeError::from)
                .and_then(|f| Ok(layout::signal(&f)?)),
        );
        let oom = optional(
            &OOM,
            format(&OOM)
                .map_err(ProbeError::from)
                .and_then(|f| Ok(layout::oom(&f)?)),
        );
        let (signal_layout, oom_layout) = (
            signal.unwrap_or_else(SignalLayout::default),
            oom.unwrap_or_else(OomLayout::default),
        );

        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_EXEC_LAYOUT, &exec, true)
            .override_global(GLOBAL_EXIT_LAYOUT, &exit, true)
            .override_global(GLOBAL_FORK_LAYOUT, &fork, true)
            .override_global(GLOBAL_SIGNAL_LAYOUT, &signal_layout, true)
            .override_global(GLOBAL_OOM_LAYOUT, &oom_layout, true)
            .load(object)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        let ring = ebpf
            .take_map(MAP_EVENTS)
            .ok_or(ProbeError::MissingMap(MAP_EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(|e| ProbeError::map(MAP_EVENTS, e))?;
        let lost = ebpf
            .take_map(MAP_LOST)
            .ok_or(ProbeError::MissingMap(MAP_LOST))?;
        let lost = PerCpuArray::try_from(lost).map_err(|e| ProbeError::map(MAP_LOST, e))?;

        let mut attached = Vec::new();
        for (t, wanted) in [
            (&EXEC, true),
            (&EXIT, true),
            (&FORK, true),
            (&SIGNAL, signal.is_some()),
            (&OOM, oom.is_some()),
        ] {
            if !wanted {
                continue;
            }
            match attach(&mut ebpf, t) {
                Ok(()) => attached.push(t.full),
                Err(e) if !t.required => {
                    tracing::warn!(tracepoint = t.full, error = %e, "optional probe not attached");
                }
                Err(e) => return Err(e),
            }
        }

        // SAFETY: the RingBuf owns its map's file descriptor (closed only when the RingBuf is
        // dropped, which the AsyncFd controls) and `as_raw_fd` always returns that same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| ProbeError::Reactor(e.into()))?;
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let counters = Arc::new(Counters::default());
        let reader = runtime.spawn(pump(ring, events.clone(), Arc::clone(&counters)));
        tracing::info!(?attached, tracefs = %tracefs.display(), "eBPF probes attached");
        Ok(Self {
            _ebpf: ebpf,
            lost,
            attached,
            events,
            counters,
            reader,
            tracefs,
        })
    }

    /// A receiver of every event decoded from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        self.events.subscribe()
    }

    /// The attached tracepoints, e.g. `"sched/sched_process_exec"`.
    #[must_use]
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Records the probes dropped because the ring buffer was full (summed over CPUs).
    pub fn lost_events(&self) -> Result<u64, ProbeError> {
        let per_cpu = self
            .lost
            .get(&0, 0)
            .map_err(|e| ProbeError::map(MAP_LOST, e))?;
        Ok(per_cpu.iter().copied().sum())
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
            .field("events_received", &self.events_received())
            .field("tracefs", &self.tracefs)
            .finish_non_exhaustive()
    }
}

fn optional<T>(t: &Tracepoint, result: Result<T, ProbeError>) -> Option<T> {
    result
        .inspect_err(
            |e| tracing::warn!(tracepoint = t.full, error = %e, "optional tracepoint unavailable"),
        )
        .ok()
}

fn attach(ebpf: &mut Ebpf, t: &Tracepoint) -> Result<(), ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(t.name)
        .ok_or(ProbeError::MissingProgram(t.name))?
        .try_into()
        .map_err(|e| ProbeError::program(t.full, e))?;
    program.load().map_err(|e| ProbeError::program(t.full, e))?;
    program
        .attach(t.category, t.name)
        .map_err(|e| ProbeError::program(t.full, e))?;
    Ok(())
}

/// Drains the ring buffer whenever the kernel signals new records, decoding and broadcasting them.
async fn pump(
    mut ring: AsyncFd<RingBuf<MapData>>,
    events: broadcast::Sender<ProcessEvent>,
    counters: Arc<Counters>,
) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "eBPF ring buffer poll failed; process events stop");
                return;
            }
        };
        let buf = guard.get_inner_mut();
        while let Some(item) = buf.next() {
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
        guard.clear_ready();
    }
}

// The driver shares one ProbeSet across tasks (e.g. in an `Arc`).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ProbeSet>();
};
