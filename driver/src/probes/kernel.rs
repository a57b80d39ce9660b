//! Userspace access to the probes' state maps: `TRACKED` (`tgid -> task key`), `THREADS`
//! (`tid -> tgid`), `FACTS` (`task key -> TaskFacts`), `HELPERS` (`helper tgid -> task key`) and
//! the per-CPU `LOST` counter. These maps
//! are pinned, so what is written here outlives the driver process (see `pin`).

use std::sync::{Mutex, MutexGuard, PoisonError};

use aya::maps::{HashMap, MapData, MapError, PerCpuArray};
use bpfexec_common::{MAP_FACTS, MAP_HELPERS, MAP_LOST, MAP_THREADS, MAP_TRACKED, TaskFacts};

use super::ProbeError;

/// The state maps, taken out of the loaded object.
pub struct KernelMaps {
    tracked: Mutex<HashMap<MapData, u32, u64>>,
    threads: Mutex<HashMap<MapData, u32, u32>>,
    facts: Mutex<HashMap<MapData, u64, TaskFacts>>,
    helpers: Mutex<HashMap<MapData, u32, u64>>,
    lost: PerCpuArray<MapData, u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `Ok(None)` for a missing key, the error otherwise.
fn optional<V>(r: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removing a missing key is not an error.
fn removed(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        // aya reports a delete of a missing key as the syscall's ENOENT: the probes removed
        // the entry themselves (the process exited) between our listing and the delete.
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Registers process `pid` as the main process of task `key` in the maps pinned under
/// `maps_dir`, from outside the driver process: a task's own process calls this between fork and
/// exec, so the probes see its exec and every process it starts. Writes the facts record first
/// (so the probes keep it from the first event on), then the `TRACKED` entry.
pub fn register_pinned(
    maps_dir: &std::path::Path,
    key: u64,
    pid: u32,
    now_ns: u64,
) -> Result<(), ProbeError> {
    let open = |name: &'static str| {
        MapData::from_pin(maps_dir.join(name))
            .map(aya::maps::Map::HashMap)
            .map_err(|e| ProbeError::map(name, e))
    };
    let mut facts: HashMap<MapData, u64, TaskFacts> =
        HashMap::try_from(open(MAP_FACTS)?).map_err(|e| ProbeError::map(MAP_FACTS, e))?;
    let record = TaskFacts {
        main_pid: pid,
        tracked_ktime_ns: now_ns,
        live_processes: 1,
        ..TaskFacts::default()
    };
    facts
        .insert(key, record, 0)
        .map_err(|e| ProbeError::map(MAP_FACTS, e))?;
    let mut tracked: HashMap<MapData, u32, u64> =
        HashMap::try_from(open(MAP_TRACKED)?).map_err(|e| ProbeError::map(MAP_TRACKED, e))?;
    tracked
        .insert(pid, key, 0)
        .map_err(|e| ProbeError::map(MAP_TRACKED, e))
}

impl KernelMaps {
    pub(crate) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, ProbeError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(ProbeError::MissingMap(name));
        let tracked = take(MAP_TRACKED)?;
        let threads = take(MAP_THREADS)?;
        let facts = take(MAP_FACTS)?;
        let helpers = take(MAP_HELPERS)?;
        let lost = take(MAP_LOST)?;
        Ok(Self {
            tracked: Mutex::new(
                HashMap::try_from(tracked).map_err(|e| ProbeError::map(MAP_TRACKED, e))?,
            ),
            threads: Mutex::new(
                HashMap::try_from(threads).map_err(|e| ProbeError::map(MAP_THREADS, e))?,
            ),
            facts: Mutex::new(HashMap::try_from(facts).map_err(|e| ProbeError::map(MAP_FACTS, e))?),
            helpers: Mutex::new(
                HashMap::try_from(helpers).map_err(|e| ProbeError::map(MAP_HELPERS, e))?,
            ),
            lost: PerCpuArray::try_from(lost).map_err(|e| ProbeError::map(MAP_LOST, e))?,
        })
    }

    /// Attributes process `pid` (a tgid) to `task`.
    pub fn track_pid(&self, pid: u32, task: u64) -> Result<(), ProbeError> {
        lock(&self.tracked)
            .insert(pid, task, 0)
            .map_err(|e| ProbeError::map(MAP_TRACKED, e))
    }

    /// Attributes thread `thread` to process `process` (for threads that existed before tracking;
    /// the probes add later ones themselves).
    pub fn track_thread(&self, thread: u32, process: u32) -> Result<(), ProbeError> {
        lock(&self.threads)
            .insert(thread, process, 0)
            .map_err(|e| ProbeError::map(MAP_THREADS, e))
    }

    /// Stops attributing process `pid`.
    pub fn untrack_pid(&self, pid: u32) -> Result<(), ProbeError> {
        removed(lock(&self.tracked).remove(&pid)).map_err(|e| ProbeError::map(MAP_TRACKED, e))
    }

    /// Task of `pid`, if tracked.
    pub fn task_of(&self, pid: u32) -> Result<Option<u64>, ProbeError> {
        optional(lock(&self.tracked).get(&pid, 0)).map_err(|e| ProbeError::map(MAP_TRACKED, e))
    }

    /// Fill of the state maps: (map, entries, capacity), and the kernel id of `TRACKED` (the
    /// programs that use it are ours). Iterates the maps' keys: call it seldom.
    pub fn fill(&self) -> (Vec<(&'static str, u64, u64)>, Option<u32>) {
        use aya::maps::IterableMap as _;
        let mut out = Vec::new();
        let tracked = lock(&self.tracked);
        let info = tracked.map().info().ok();
        let id = info.as_ref().map(aya::maps::MapInfo::id);
        if let Some(i) = &info {
            out.push((
                "tracked",
                tracked.keys().count() as u64,
                u64::from(i.max_entries()),
            ));
        }
        drop(tracked);
        let threads = lock(&self.threads);
        if let Ok(i) = threads.map().info() {
            out.push((
                "threads",
                threads.keys().count() as u64,
                u64::from(i.max_entries()),
            ));
        }
        drop(threads);
        let facts = lock(&self.facts);
        if let Ok(i) = facts.map().info() {
            out.push((
                "facts",
                facts.keys().count() as u64,
                u64::from(i.max_entries()),
            ));
        }
        (out, id)
    }

    /// Every tracked process with its task. The probes remove exiting processes while the map
    /// is walked: an entry that vanished between its key and its lookup is skipped, not an error
    /// (which would make every caller, e.g. forgetting a task, fail on a busy host).
    pub fn tracked(&self) -> Result<Vec<(u32, u64)>, ProbeError> {
        Ok(lock(&self.tracked).iter().filter_map(Result::ok).collect())
    }

    /// Removes every process of `task` and their threads; returns how many processes it had.
    pub fn untrack_task(&self, task: u64) -> Result<usize, ProbeError> {
        let pids: Vec<u32> = self
            .tracked()?
            .into_iter()
            .filter_map(|(pid, t)| (t == task).then_some(pid))
            .collect();
        {
            let mut tracked = lock(&self.tracked);
            for pid in &pids {
                removed(tracked.remove(pid)).map_err(|e| ProbeError::map(MAP_TRACKED, e))?;
            }
        }
        let mut threads = lock(&self.threads);
        let stale: Vec<u32> = threads
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(tid, tgid)| pids.contains(&tgid).then_some(tid))
            .collect();
        for tid in stale {
            removed(threads.remove(&tid)).map_err(|e| ProbeError::map(MAP_THREADS, e))?;
        }
        Ok(pids.len())
    }

    /// Writes (replaces) the facts record of `task`.
    pub fn put_facts(&self, task: u64, facts: &TaskFacts) -> Result<(), ProbeError> {
        lock(&self.facts)
            .insert(task, facts, 0)
            .map_err(|e| ProbeError::map(MAP_FACTS, e))
    }

    /// The facts record of `task`, as the probes last updated it.
    pub fn facts(&self, task: u64) -> Result<Option<TaskFacts>, ProbeError> {
        optional(lock(&self.facts).get(&task, 0)).map_err(|e| ProbeError::map(MAP_FACTS, e))
    }

    /// Deletes the facts record of `task`.
    pub fn remove_facts(&self, task: u64) -> Result<(), ProbeError> {
        removed(lock(&self.facts).remove(&task)).map_err(|e| ProbeError::map(MAP_FACTS, e))
    }

    /// Keys of every facts record.
    pub fn fact_keys(&self) -> Result<Vec<u64>, ProbeError> {
        lock(&self.facts)
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ProbeError::map(MAP_FACTS, e))
    }

    /// Names `pid` the helper of `task`, or forgets it (None).
    pub fn track_helper(&self, pid: u32, task: Option<u64>) -> Result<(), ProbeError> {
        let mut helpers = lock(&self.helpers);
        match task {
            Some(task) => helpers.insert(pid, task, 0),
            None => removed(helpers.remove(&pid)),
        }
        .map_err(|e| ProbeError::map(MAP_HELPERS, e))
    }

    /// Records dropped because the ring buffer was full, summed over CPUs, since the map was
    /// created (it is pinned, so this spans driver restarts).
    pub fn lost_events(&self) -> Result<u64, ProbeError> {
        let per_cpu = self
            .lost
            .get(&0, 0)
            .map_err(|e| ProbeError::map(MAP_LOST, e))?;
        Ok(per_cpu.iter().copied().sum())
    }
}
