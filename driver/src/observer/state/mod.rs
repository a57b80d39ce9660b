//! The observer's state machine, free of I/O except through its procfs and cgroupfs seams: one
//! [`TaskState`] per task key, fed with [`ProcessEvent`]s (in ring-buffer order) and periodic
//! ticks, producing notices, exit classifications and process-tree snapshots.

mod apply;
mod query;
mod strays;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::telemetry::fact::Fact;

use super::{
    facts::{ObservedFacts, SignalSeen},
    key::{TaskKey, TaskMeta},
    memcg::{CgroupFiles, MemcgRoots, MemcgWatch},
    notice::{Notice, PendingSignal, RateLimit},
    proc::ProcSource,
    reason::{Sender, SenderClass},
    signals::sent_by_process,
    tree::ProcTable,
};

/// Default period of the escape check.
pub const DEFAULT_ESCAPE_CHECK_NS: u64 = 2_000_000_000;

/// Tunables of the observer.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// Processes whose signals count as the driver's (the plugin itself is always included).
    pub driver_pids: Vec<u32>,
    /// Execs remembered per task.
    pub exec_history: usize,
    /// How long a signal is held to learn whether it killed its target.
    pub notice_delay_ns: u64,
    /// How close an OOM kill must precede the main process's end to be its cause.
    pub oom_window_ns: u64,
    /// State of a task key no driver call claimed (records left from an earlier driver) is
    /// dropped after this long.
    pub orphan_ttl_ns: u64,
    /// How often running tasks' processes are checked for having left the task's cgroup
    /// (escapes); 0 turns the check off.
    pub escape_check_ns: u64,
    /// The probes' tracked-process map limits (named in degraded-observation events).
    pub track_limits: crate::observer::TrackLimits,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            driver_pids: Vec::new(),
            exec_history: 256,
            notice_delay_ns: 250_000_000,
            oom_window_ns: 5_000_000_000,
            orphan_ttl_ns: 600_000_000_000,
            escape_check_ns: DEFAULT_ESCAPE_CHECK_NS,
            track_limits: crate::observer::TrackLimits {
                capacity: bpfexec_common::TRACKED_MAX,
                per_task: bpfexec_common::TRACKED_PER_TASK_DEFAULT,
            },
        }
    }
}

/// Everything known about one task.
#[derive(Debug)]
pub(crate) struct TaskState {
    pub meta: Option<TaskMeta>,
    pub table: ProcTable,
    pub facts: ObservedFacts,
    pub memcg: MemcgWatch,
    pub tracked_before_exec: bool,
    pub main_exit_seen: bool,
    /// Parents of exited processes, for "was the OOM victim a child of main?".
    pub exited_parents: HashMap<u32, u32>,
    pending: Vec<PendingSignal>,
    /// Notices produced before the driver told us who the task is.
    queued: Vec<(String, std::collections::BTreeMap<String, String>)>,
    /// OOM kills seen before the driver told us who the task is, while its memory cgroup was
    /// unknown; decided when it does.
    deferred_ooms: Vec<DeferredOom>,
    limit: RateLimit,
    created_ns: u64,
    /// One of the task's processes was seen in the task's own cgroup: escape checks are armed
    /// (a task whose cgroup was never joined has nothing to escape from).
    home_seen: bool,
    /// Escapees already reported, by (pid, start time): one event per escapee.
    escapes_reported: HashSet<(u32, u64)>,
}

/// An OOM kill whose scope waits for the task's memory cgroup.
#[derive(Debug)]
pub(crate) struct DeferredOom {
    pub victim: u32,
    pub comm: String,
    pub rss_kb: u64,
    pub ktime_ns: u64,
}

/// How many forgotten tasks are remembered for naming signal senders.
const DEPARTED_KEPT: usize = 1024;
/// Process name of the plugin and its helpers, for signals the driver sends.
const DRIVER_COMM: &str = "nomad-driver-bpfexec";

/// The observer's mutable state.
pub struct ObserverState {
    config: ObserverConfig,
    tasks: HashMap<TaskKey, TaskState>,
    /// Who forgotten tasks were (most recent last, bounded): a task that signalled another one
    /// and was destroyed before the victim's end is classified must still be named.
    departed: std::collections::VecDeque<(TaskKey, TaskMeta)>,
    driver_pids: HashSet<u32>,
    own_comm: String,
    proc: Arc<dyn ProcSource>,
    cgroups: Arc<dyn CgroupFiles>,
    roots: MemcgRoots,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, to turn probe times into wall-clock times.
    wall_offset_ns: i128,
    /// When the next escape check is due (`CLOCK_MONOTONIC`).
    next_escape_check_ns: u64,
    /// Facts produced since the last [`ObserverState::take_facts`].
    emitted: Vec<Fact>,
}

impl ObserverState {
    pub fn new(
        config: ObserverConfig,
        proc: Arc<dyn ProcSource>,
        cgroups: Arc<dyn CgroupFiles>,
        roots: MemcgRoots,
        own_comm: String,
        wall_offset_ns: i128,
    ) -> Self {
        let mut driver_pids: HashSet<u32> = config.driver_pids.iter().copied().collect();
        driver_pids.insert(std::process::id());
        Self {
            config,
            tasks: HashMap::new(),
            departed: std::collections::VecDeque::new(),
            driver_pids,
            own_comm,
            proc,
            cgroups,
            roots,
            wall_offset_ns,
            next_escape_check_ns: 0,
            emitted: Vec::new(),
        }
    }

    pub fn add_driver_pid(&mut self, pid: u32) {
        self.driver_pids.insert(pid);
    }

    fn wall_ms(&self, ktime_ns: u64) -> u64 {
        let ns = i128::from(ktime_ns) + self.wall_offset_ns;
        u64::try_from(ns / 1_000_000).unwrap_or(0)
    }

    /// The wall-clock time of a probe timestamp.
    pub(crate) fn wall(&self, ktime_ns: u64) -> std::time::SystemTime {
        let ns = u64::try_from(i128::from(ktime_ns) + self.wall_offset_ns).unwrap_or(0);
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns)
    }

    /// Records a fact for the sinks.
    pub(crate) fn emit_fact(&mut self, fact: Fact) {
        self.emitted.push(fact);
    }

    /// The facts produced since the last call, for the fact bus.
    pub fn take_facts(&mut self) -> Vec<Fact> {
        std::mem::take(&mut self.emitted)
    }

    fn entry(&mut self, key: TaskKey, now_ns: u64) -> &mut TaskState {
        let cap = self.config.exec_history;
        self.tasks.entry(key).or_insert_with(|| TaskState {
            meta: None,
            table: ProcTable::new(cap),
            facts: ObservedFacts::default(),
            memcg: MemcgWatch::default(),
            tracked_before_exec: false,
            main_exit_seen: false,
            exited_parents: HashMap::new(),
            pending: Vec::new(),
            queued: Vec::new(),
            deferred_ooms: Vec::new(),
            limit: RateLimit::default(),
            created_ns: now_ns,
            home_seen: false,
            escapes_reported: HashSet::new(),
        })
    }

    /// Starts (or resumes) following a task. Returns notices that waited for its identity.
    pub fn register(
        &mut self,
        key: TaskKey,
        meta: TaskMeta,
        tracked_before_exec: bool,
        now_ns: u64,
    ) -> Vec<Notice> {
        if let Some(pid) = meta.supervisor_pid {
            self.driver_pids.insert(pid);
        }
        let memcg = match self.locate_memcg(meta.main_pid) {
            Some((root, path)) => MemcgWatch::new(self.cgroups.as_ref(), &root, &path, now_ns),
            // The main process is gone (it ended while the driver was down): watch the task's
            // memory cgroup from its known path, without a baseline, so a limit hit it recorded
            // before now still counts (a fresh task cgroup starts at zero).
            None => meta
                .memcg_dir
                .as_deref()
                .and_then(|dir| self.roots.split(dir))
                .map(|(root, path)| {
                    let mut watch = MemcgWatch::new(self.cgroups.as_ref(), &root, &path, now_ns);
                    watch.forget_baseline();
                    watch
                })
                .unwrap_or_default(),
        };
        let main_pid = meta.main_pid;
        let state = self.entry(key, now_ns);
        if state.facts.main_pid == 0 {
            state.facts.main_pid = main_pid;
        }
        if state.memcg.innermost().is_none() {
            state.memcg = memcg;
        }
        state.tracked_before_exec |= tracked_before_exec;
        let queued = std::mem::take(&mut state.queued);
        let deferred = std::mem::take(&mut state.deferred_ooms);
        let mut out: Vec<Notice> = queued
            .into_iter()
            .map(|(m, a)| Notice::new(key, &meta, m, a))
            .collect();
        state.meta = Some(meta);
        for d in deferred {
            out.extend(self.on_oom(key, d.victim, &d.comm, d.rss_kb, d.ktime_ns));
        }
        out
    }

    /// The memory cgroup of `pid` as (hierarchy root, path), from procfs.
    /// An exiting process is moved to the root cgroup by the kernel, so a root path says nothing
    /// about where the process lived and is ignored.
    pub(crate) fn locate_memcg(&self, pid: u32) -> Option<(std::path::PathBuf, String)> {
        self.proc
            .cgroup(pid)
            .and_then(|text| self.roots.locate(&text))
            .filter(|(_, path)| !path.trim_end_matches('/').is_empty())
    }

    /// Points the task's memory-cgroup watch at the cgroup `pid` is in now, if it moved (the
    /// main process may join its cgroup after tracking began). Without a baseline for the new
    /// cgroup, any limit hit it recorded counts.
    pub(crate) fn follow_memcg(
        &mut self,
        key: TaskKey,
        pid: u32,
        keep_baseline: bool,
        now_ns: u64,
    ) {
        let Some((root, path)) = self.locate_memcg(pid) else {
            return;
        };
        let cgroups = Arc::clone(&self.cgroups);
        if let Some(t) = self.tasks.get_mut(&key)
            && t.memcg.innermost() != Some(path.as_str())
        {
            t.memcg = MemcgWatch::new(cgroups.as_ref(), &root, &path, now_ns);
            if !keep_baseline {
                t.memcg.forget_baseline();
            }
        }
    }

    /// Adds a live process found in procfs to the task's tree.
    pub fn seed(&mut self, key: TaskKey, pid: u32, parent: u32, now_ns: u64) {
        let stat = self.proc.stat(pid);
        let cmdline = self.proc.cmdline(pid).unwrap_or_default();
        let comm = stat.map(|s| s.comm).unwrap_or_default();
        self.entry(key, now_ns)
            .table
            .seed(pid, parent, comm, cmdline);
    }

    /// Stops following a task; returns its helper's pid, if it had one.
    pub fn forget(&mut self, key: TaskKey) -> Option<u32> {
        let meta = self.tasks.remove(&key).and_then(|t| t.meta)?;
        let helper = meta.supervisor_pid;
        if self.departed.len() >= DEPARTED_KEPT {
            self.departed.pop_front();
        }
        self.departed.push_back((key, meta));
        helper
    }

    fn meta_of(&self, key: TaskKey) -> Option<&TaskMeta> {
        self.tasks
            .get(&key)
            .and_then(|t| t.meta.as_ref())
            .or_else(|| {
                self.departed
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, m)| m)
            })
    }

    /// Registered tasks whose main process is not seen to have ended, with who they are.
    pub(crate) fn running_metas(&self) -> Vec<(TaskKey, TaskMeta)> {
        self.tasks
            .iter()
            .filter(|(_, t)| !t.main_exit_seen)
            .filter_map(|(k, t)| Some((*k, t.meta.clone()?)))
            .collect()
    }

    /// Task keys the driver registered.
    pub fn registered(&self) -> HashSet<TaskKey> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.meta.is_some())
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn main_exit_seen(&self, key: TaskKey) -> bool {
        self.tasks.get(&key).is_some_and(|t| t.main_exit_seen)
    }

    /// Live PIDs of a task.
    pub fn pids(&self, key: TaskKey) -> Vec<u32> {
        self.tasks
            .get(&key)
            .map(|t| t.table.pids().collect())
            .unwrap_or_default()
    }

    /// The sender of a signal, classified relative to `target` (a process of task `key`).
    pub(crate) fn sender_of(&self, key: TaskKey, target: u32, s: &SignalSeen) -> Sender {
        let class = if !sent_by_process(s.code) {
            SenderClass::Kernel
        } else if s.sender_task == key.0 {
            if s.sender_pid == target {
                SenderClass::SameProcess
            } else {
                SenderClass::SameTask
            }
        } else if s.sender_task != 0 {
            let meta = self.meta_of(TaskKey(s.sender_task));
            SenderClass::OtherAllocation {
                alloc_id: meta.map_or_else(|| "unknown".to_owned(), |m| m.alloc_id.clone()),
                task_name: meta.map_or_else(|| "unknown".to_owned(), |m| m.task_name.clone()),
            }
        } else if self.driver_pids.contains(&s.sender_pid)
            || (!self.own_comm.is_empty() && s.sender_comm == self.own_comm)
        {
            SenderClass::Driver
        } else {
            SenderClass::Host
        };
        // The probes see the sending thread's name (a tokio worker for the plugin); name the
        // driver's process instead.
        let comm = if class == SenderClass::Driver {
            DRIVER_COMM.to_owned()
        } else {
            s.sender_comm.clone()
        };
        Sender {
            pid: s.sender_pid,
            comm,
            uid: Some(s.sender_uid),
            class,
            code: s.code,
        }
    }

    /// Periodic work at `now` (`CLOCK_MONOTONIC`): due notices, orphan cleanup, memcg baselines.
    /// `full` also does the slow upkeep (every second or so).
    pub fn tick(&mut self, now: u64, full: bool) -> Vec<Notice> {
        if full {
            let ttl = self.config.orphan_ttl_ns;
            self.tasks
                .retain(|_, t| t.meta.is_some() || now.saturating_sub(t.created_ns) < ttl);
            let live: Vec<(TaskKey, u32)> = self
                .tasks
                .iter()
                .filter(|(_, t)| !t.main_exit_seen && t.meta.is_some())
                .map(|(k, t)| (*k, t.facts.main_pid))
                .collect();
            for (key, main) in live {
                self.follow_memcg(key, main, true, now);
            }
            let cgroups = Arc::clone(&self.cgroups);
            for t in self.tasks.values_mut().filter(|t| !t.main_exit_seen) {
                t.memcg.refresh(cgroups.as_ref(), now);
            }
        }
        self.flush(now)
    }

    /// True when task `key` has state (registered or seen in events).
    pub fn knows(&self, key: TaskKey) -> bool {
        self.tasks.contains_key(&key)
    }

    /// Creates state for a task seen in events before the driver claimed it, with the main PID
    /// from the kernel's facts record.
    pub fn prime(&mut self, key: TaskKey, main_pid: u32, now: u64) {
        let t = self.entry(key, now);
        if t.facts.main_pid == 0 {
            t.facts.main_pid = main_pid;
        }
    }
}
