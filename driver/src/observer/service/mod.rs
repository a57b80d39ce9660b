//! The driver-facing [`Observer`]: consumes probe events on a tokio task, keeps the state machine
//! up to date, registers task processes in the kernel's `TRACKED` map (and re-reads the pinned
//! state after a driver restart), kills stray processes (escapes, leaks), and answers exit
//! classifications, trees and counters.

mod degraded;
mod strays;
mod tracking;

pub use degraded::TrackLimits;

use std::{
    collections::{BTreeMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    sync::{Notify, broadcast},
    task::JoinHandle,
};

use crate::telemetry::{FactBus, fact::Fact};

use super::{
    backend::KernelBackend,
    key::TaskKey,
    memcg::{CgroupFiles, LiveCgroupFs, MemcgRoots},
    notice::Notice,
    proc::{LiveProc, PidUsage, ProcSource, pid_usage},
    reap::{PidFdReaper, Reaper},
    reason::{ExitReason, MainExit},
    state::{ObserverConfig, ObserverState},
    tree::ProcessTree,
};
use crate::probes::{ProbeSet, ProcessEvent};

/// How long `classify` waits for the main process's exit record to come out of the ring buffer.
const CLASSIFY_WAIT: Duration = Duration::from_millis(300);
/// Unclaimed kernel facts records are deleted this long after their task ended.
const FACTS_TTL_NS: u64 = 3_600_000_000_000;

/// The OS seams of the observer.
pub struct Sources {
    pub proc: Arc<dyn ProcSource>,
    pub cgroups: Arc<dyn CgroupFiles>,
    pub roots: MemcgRoots,
    /// Kills stray processes (escapes, leaks).
    pub reaper: Arc<dyn Reaper>,
}

impl Sources {
    /// The real procfs and cgroupfs.
    #[must_use]
    pub fn live() -> Self {
        Self {
            proc: Arc::new(LiveProc),
            cgroups: Arc::new(LiveCgroupFs),
            roots: MemcgRoots::detect(),
            reaper: Arc::new(PidFdReaper),
        }
    }
}

/// What tracking or recovering a task found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackReport {
    /// Processes of the task now tracked.
    pub processes: usize,
    /// The kernel's pinned facts record for the task existed already (recovery).
    pub kernel_facts_reused: bool,
    /// The main process is alive.
    pub main_alive: bool,
}

/// Counters for telemetry.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ObserverStats {
    pub events_processed: u64,
    /// Over the last ~10 s.
    pub events_per_second: f64,
    /// Records the probes dropped because the ring buffer was full (per-CPU sum, pinned).
    pub lost_events: u64,
    /// Events the observer fell behind on in the in-process channel.
    pub lagged_events: u64,
    pub ring_records_received: u64,
    pub tasks: usize,
    /// Events processed by kind (exec, fork, exit, signal, oom).
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// How old the newest event of a batch was when it was handled, at most, over the last
    /// second or so.
    pub lag_seconds: f64,
}

/// Kinds of probe events, as counted.
const KINDS: [&str; 5] = ["exec", "fork", "exit", "signal", "oom"];

fn kind_index(ev: &ProcessEvent) -> usize {
    match ev {
        ProcessEvent::Exec { .. } => 0,
        ProcessEvent::Fork { .. } => 1,
        ProcessEvent::Exit { .. } => 2,
        ProcessEvent::Signal { .. } => 3,
        ProcessEvent::OomVictim { .. } => 4,
    }
}

/// Kernel observation of every task: see the module docs of `observer`.
pub struct Observer {
    backend: Arc<dyn KernelBackend>,
    state: Mutex<ObserverState>,
    proc: Arc<dyn ProcSource>,
    reaper: Arc<dyn Reaper>,
    /// Where facts (and the notices among them) go.
    bus: Arc<FactBus>,
    exits: Notify,
    processed: AtomicU64,
    by_kind: [AtomicU64; 5],
    /// Max event age in this window, and in the last complete one.
    lag_window_ns: AtomicU64,
    lag_last_ns: AtomicU64,
    lagged: AtomicU64,
    rate: Mutex<VecDeque<(Instant, u64)>>,
    self_exe: Option<PathBuf>,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// The tracked-process map's limits (for degraded-observation events).
    track_limits: TrackLimits,
    /// Untracked counts last reported per task.
    untracked_reported: Mutex<std::collections::HashMap<TaskKey, degraded::Reported>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `CLOCK_MONOTONIC` in nanoseconds (the probes' `bpf_ktime_get_ns`).
#[must_use]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    if unsafe { libc::clock_gettime(id, &raw mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

impl Observer {
    /// Starts observing with the loaded probes, the real procfs/cgroupfs and default settings,
    /// publishing facts on `bus`. Must be called inside a tokio runtime.
    pub fn start(probes: Arc<ProbeSet>, config: ObserverConfig, bus: Arc<FactBus>) -> Arc<Self> {
        Self::start_with(probes, Sources::live(), config, bus)
    }

    /// Starts observing with any backend and OS sources (tests use fakes).
    pub fn start_with(
        backend: Arc<dyn KernelBackend>,
        sources: Sources,
        config: ObserverConfig,
        bus: Arc<FactBus>,
    ) -> Arc<Self> {
        let track_limits = config.track_limits;
        let own_comm = std::fs::read_to_string("/proc/self/comm")
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        let wall_offset = i128::from(clock_ns(libc::CLOCK_REALTIME)) - i128::from(monotonic_ns());
        let state = ObserverState::new(
            config,
            Arc::clone(&sources.proc),
            sources.cgroups,
            sources.roots,
            own_comm,
            wall_offset,
        );
        let rx = backend.subscribe();
        let observer = Arc::new(Self {
            backend,
            state: Mutex::new(state),
            proc: sources.proc,
            reaper: sources.reaper,
            bus,
            exits: Notify::new(),
            processed: AtomicU64::new(0),
            by_kind: Default::default(),
            lag_window_ns: AtomicU64::new(0),
            lag_last_ns: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            rate: Mutex::new(VecDeque::new()),
            self_exe: std::env::current_exe().ok(),
            worker: Mutex::new(None),
            track_limits,
            untracked_reported: Mutex::default(),
        });
        let handle = tokio::spawn(run(Arc::downgrade(&observer), rx));
        *lock(&observer.worker) = Some(handle);
        observer
    }

    /// Live notices (child OOM kills, signals from outside the task, crashed children, escapes,
    /// leaks), read from the fact bus: for callers that want only those.
    #[must_use]
    pub fn notices(&self) -> NoticeReceiver {
        NoticeReceiver {
            facts: self.bus.subscribe("notices", 1024, false),
            ready: VecDeque::new(),
        }
    }

    /// Hands the facts the state produced, and `notices`, to the fact bus.
    pub(crate) fn publish(
        &self,
        mut state: MutexGuard<'_, ObserverState>,
        notices: impl IntoIterator<Item = Notice>,
    ) {
        let mut facts = state.take_facts();
        drop(state);
        facts.extend(notices.into_iter().map(Fact::from));
        self.bus.publish(facts);
    }

    /// Signals from `pid` count as the driver's (e.g. a helper the driver spawns).
    pub fn add_driver_pid(&self, pid: u32) {
        lock(&self.state).add_driver_pid(pid);
    }

    /// Stops tracking a task and deletes its kernel state (DestroyTask).
    pub fn forget(&self, key: TaskKey) -> Result<(), crate::probes::ProbeError> {
        let helper = lock(&self.state).forget(key);
        self.forget_untracked(key);
        // Each step regardless of the others: a failure must not leave the task's pinned
        // facts behind (they would stay until the hour-long expiry).
        let helper = helper.map_or(Ok(()), |pid| self.backend.track_helper(pid, None));
        let processes = self.backend.untrack_task(key.0).map(drop);
        let facts = self.backend.remove_facts(key.0);
        helper.and(processes).and(facts)
    }

    /// Why the task ended, once its supervisor reported the main process's wait status. Waits
    /// briefly for the probes' record of that exit so every earlier event is accounted for.
    pub async fn classify(&self, key: TaskKey, exit: &MainExit) -> ExitReason {
        self.wait_main_exit(key).await;
        self.classify_now(key, exit)
    }

    /// Waits up to [`CLASSIFY_WAIT`] for the probes' record of the main process's exit.
    async fn wait_main_exit(&self, key: TaskKey) {
        let deadline = tokio::time::Instant::now() + CLASSIFY_WAIT;
        loop {
            let notified = self.exits.notified();
            if lock(&self.state).main_exit_seen(key) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// [`Observer::classify`] without waiting.
    pub fn classify_now(&self, key: TaskKey, exit: &MainExit) -> ExitReason {
        let kernel = self.backend.facts(key.0).ok().flatten();
        lock(&self.state).classify(key, exit, kernel.as_ref(), monotonic_ns())
    }

    /// A task whose helper ended without recording its exit status: how the main process
    /// ended as the probes saw it (waiting briefly for its exit record) and who ended the
    /// helper. None while the main process is not seen to have exited.
    pub async fn classify_helper_death(
        &self,
        key: TaskKey,
        helper_pid: u32,
    ) -> Option<(Option<MainExit>, ExitReason)> {
        self.wait_main_exit(key).await;
        self.classify_helper_death_now(key, helper_pid)
    }

    /// [`Observer::classify_helper_death`] without waiting.
    pub fn classify_helper_death_now(
        &self,
        key: TaskKey,
        helper_pid: u32,
    ) -> Option<(Option<MainExit>, ExitReason)> {
        let kernel = self.backend.facts(key.0).ok().flatten();
        lock(&self.state).classify_helper_death(key, helper_pid, kernel.as_ref(), monotonic_ns())
    }

    /// The task's live process tree and recent execs.
    pub fn tree(&self, key: TaskKey) -> Option<ProcessTree> {
        lock(&self.state).tree(key)
    }

    /// The state machine, for scenario tests.
    #[cfg(test)]
    pub(crate) fn state_for_tests(&self) -> MutexGuard<'_, ObserverState> {
        lock(&self.state)
    }

    /// Live PIDs of the task.
    pub fn pids(&self, key: TaskKey) -> Vec<u32> {
        lock(&self.state).pids(key)
    }

    /// CPU and memory of each live process of the task (for TaskStats' per-pid usage).
    pub fn pid_usage(&self, key: TaskKey) -> BTreeMap<u32, PidUsage> {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100, |t| t.max(1) as u64);
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p.max(1) as u64);
        self.pids(key)
            .into_iter()
            .filter_map(|pid| pid_usage(self.proc.as_ref(), pid, ticks, page).map(|u| (pid, u)))
            .collect()
    }

    /// Records the probes dropped because the ring buffer was full (summed over CPUs).
    pub fn lost_events(&self) -> u64 {
        self.backend.lost_events().unwrap_or(0)
    }

    /// Telemetry counters.
    pub fn stats(&self) -> ObserverStats {
        let rate = lock(&self.rate);
        let events_per_second = match (rate.front(), rate.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                (n1 - n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        };
        ObserverStats {
            events_processed: self.processed.load(Ordering::Relaxed),
            events_per_second,
            lost_events: self.lost_events(),
            lagged_events: self.lagged.load(Ordering::Relaxed),
            ring_records_received: self.backend.events_received(),
            tasks: lock(&self.state).registered().len(),
            events_by_kind: KINDS
                .iter()
                .zip(&self.by_kind)
                .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
                .collect(),
            lag_seconds: self.lag_last_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    /// Where a task's process can register itself with the probes (pinned maps only).
    pub fn pinned_maps_dir(&self) -> Option<PathBuf> {
        self.backend.pinned_maps_dir()
    }

    /// Applies a batch of events under one lock of the state.
    fn on_events(&self, batch: &[ProcessEvent]) {
        let mut notices = Vec::new();
        let mut exits = false;
        let mut state = lock(&self.state);
        for ev in batch {
            let key = match ev {
                ProcessEvent::Signal { target_task, .. } => *target_task,
                ProcessEvent::Exec { task, .. }
                | ProcessEvent::Exit { task, .. }
                | ProcessEvent::Fork { task, .. }
                | ProcessEvent::OomVictim { task, .. } => *task,
            };
            if key != 0
                && !state.knows(TaskKey(key))
                && let Ok(Some(f)) = self.backend.facts(key)
            {
                // A record for a task not claimed yet (a backlog from before a restart).
                state.prime(TaskKey(key), f.main_pid, ev.ktime_ns());
            }
            notices.extend(state.apply(ev));
            exits |= matches!(ev, ProcessEvent::Exit { .. });
        }
        self.publish(state, notices);
        self.processed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for ev in batch {
            self.by_kind[kind_index(ev)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(last) = batch.last() {
            let lag = monotonic_ns().saturating_sub(last.ktime_ns());
            self.lag_window_ns.fetch_max(lag, Ordering::Relaxed);
        }
        if exits {
            self.exits.notify_waiters();
        }
    }

    fn on_tick(&self, full: bool) {
        let now = monotonic_ns();
        let mut state = lock(&self.state);
        let notices = state.tick(now, full);
        self.publish(state, notices);
        self.maybe_check_escapes(now);
        if full {
            let window = self.lag_window_ns.swap(0, Ordering::Relaxed);
            self.lag_last_ns.store(window, Ordering::Relaxed);
            let mut rate = lock(&self.rate);
            rate.push_back((Instant::now(), self.processed.load(Ordering::Relaxed)));
            while rate.len() > 10 {
                rate.pop_front();
            }
            drop(rate);
            self.collect_facts(now);
            self.check_untracked();
        }
    }

    /// Deletes kernel facts of tasks no driver call claimed that ended long ago.
    fn collect_facts(&self, now: u64) {
        let registered = lock(&self.state).registered();
        let Ok(keys) = self.backend.fact_keys() else {
            return;
        };
        for key in keys
            .into_iter()
            .filter(|k| !registered.contains(&TaskKey(*k)))
        {
            if let Ok(Some(f)) = self.backend.facts(key) {
                let ended = if f.main_exit_ktime_ns != 0 {
                    f.main_exit_ktime_ns
                } else {
                    f.tracked_ktime_ns
                };
                let alive = self
                    .backend
                    .tracked()
                    .is_ok_and(|t| t.iter().any(|(_, k)| *k == key));
                if !alive && now.saturating_sub(ended) > FACTS_TTL_NS {
                    let _ = self.backend.remove_facts(key);
                }
            }
        }
    }
}

/// Adds the events already queued to `batch` (up to [`BATCH`]); true when the channel closed.
fn fill_batch(
    o: &Observer,
    rx: &mut broadcast::Receiver<ProcessEvent>,
    batch: &mut Vec<ProcessEvent>,
) -> bool {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(ev) => batch.push(ev),
            Err(broadcast::error::TryRecvError::Lagged(n)) => o.count_lagged(n),
            Err(broadcast::error::TryRecvError::Empty) => return false,
            Err(broadcast::error::TryRecvError::Closed) => return true,
        }
    }
    false
}

impl Observer {
    fn count_lagged(&self, n: u64) {
        self.lagged.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(missed = n, "observer fell behind the probe events");
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        if let Some(h) = lock(&self.worker).take() {
            h.abort();
        }
    }
}

/// Events handled under one lock of the state at most.
const BATCH: usize = 512;

/// The event loop: events as they come (in batches of what is already queued: one wake-up and
/// one lock per ring-buffer drain, not per event), a short tick for held notices, a long one for
/// upkeep.
async fn run(observer: Weak<Observer>, mut rx: broadcast::Receiver<ProcessEvent>) {
    let mut short = tokio::time::interval(Duration::from_millis(100));
    let mut ticks: u64 = 0;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(o) = observer.upgrade() else { return };
                match ev {
                    Ok(ev) => {
                        batch.push(ev);
                        let closed = fill_batch(&o, &mut rx, &mut batch);
                        o.on_events(&batch);
                        batch.clear();
                        if closed {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => o.count_lagged(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            _ = short.tick() => {
                let Some(o) = observer.upgrade() else { return };
                ticks += 1;
                o.on_tick(ticks.is_multiple_of(10));
            }
        }
    }
}

/// The notices among the facts (see [`Observer::notices`]).
pub struct NoticeReceiver {
    facts: crate::telemetry::FactReceiver,
    ready: VecDeque<Notice>,
}

impl NoticeReceiver {
    fn take(&mut self, batch: &[Fact]) {
        self.ready
            .extend(batch.iter().filter_map(Notice::from_fact));
    }

    /// The next notice; None once the observer is gone.
    pub async fn recv(&mut self) -> Option<Notice> {
        loop {
            if let Some(n) = self.ready.pop_front() {
                return Some(n);
            }
            let batch = self.facts.recv().await?;
            self.take(&batch);
        }
    }

    /// A notice if one is ready.
    pub fn try_recv(&mut self) -> Option<Notice> {
        while self.ready.is_empty() {
            let batch = self.facts.try_recv()?;
            self.take(&batch);
        }
        self.ready.pop_front()
    }
}
