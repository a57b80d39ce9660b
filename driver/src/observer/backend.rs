//! The kernel side of the observer behind a trait ([`KernelBackend`]): the probe event stream and
//! the pinned `TRACKED` / `FACTS` maps. [`ProbeSet`] is the real implementation; unit tests use
//! an in-memory fake that needs no root.

use bpfexec_common::TaskFacts;
use tokio::sync::broadcast;

use crate::probes::{ProbeError, ProbeSet, ProcessEvent};

/// What the observer needs from the probes.
pub trait KernelBackend: Send + Sync {
    /// Events from now on (the first subscriber also gets a backlog left in a pinned ring buffer).
    fn subscribe(&self) -> broadcast::Receiver<ProcessEvent>;
    fn track_pid(&self, pid: u32, task: u64) -> Result<(), ProbeError>;
    /// Attributes an existing thread to its process.
    fn track_thread(&self, thread: u32, process: u32) -> Result<(), ProbeError>;
    fn untrack_pid(&self, pid: u32) -> Result<(), ProbeError>;
    /// Removes every process of `task` (and their threads).
    fn untrack_task(&self, task: u64) -> Result<usize, ProbeError>;
    fn tracked(&self) -> Result<Vec<(u32, u64)>, ProbeError>;
    /// The task `pid` is tracked for (one map lookup), if any.
    fn task_of(&self, pid: u32) -> Result<Option<u64>, ProbeError>;
    fn put_facts(&self, task: u64, facts: &TaskFacts) -> Result<(), ProbeError>;
    fn facts(&self, task: u64) -> Result<Option<TaskFacts>, ProbeError>;
    fn remove_facts(&self, task: u64) -> Result<(), ProbeError>;
    fn fact_keys(&self) -> Result<Vec<u64>, ProbeError>;
    /// Records the probes dropped (ring buffer full), summed over CPUs.
    fn lost_events(&self) -> Result<u64, ProbeError>;
    /// Records read from the ring buffer.
    fn events_received(&self) -> u64;
    /// Where the state maps are pinned, so a task's own process can register itself.
    fn pinned_maps_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Names `pid` the helper of `task` (None: forgets it), so signals to it are recorded.
    fn track_helper(&self, _pid: u32, _task: Option<u64>) -> Result<(), ProbeError> {
        Ok(())
    }
}

impl KernelBackend for ProbeSet {
    fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
        ProbeSet::subscribe(self)
    }
    fn track_pid(&self, pid: u32, task: u64) -> Result<(), ProbeError> {
        self.kernel().track_pid(pid, task)
    }
    fn track_thread(&self, thread: u32, process: u32) -> Result<(), ProbeError> {
        self.kernel().track_thread(thread, process)
    }
    fn untrack_pid(&self, pid: u32) -> Result<(), ProbeError> {
        self.kernel().untrack_pid(pid)
    }
    fn untrack_task(&self, task: u64) -> Result<usize, ProbeError> {
        self.kernel().untrack_task(task)
    }
    fn tracked(&self) -> Result<Vec<(u32, u64)>, ProbeError> {
        self.kernel().tracked()
    }
    fn task_of(&self, pid: u32) -> Result<Option<u64>, ProbeError> {
        self.kernel().task_of(pid)
    }
    fn put_facts(&self, task: u64, facts: &TaskFacts) -> Result<(), ProbeError> {
        self.kernel().put_facts(task, facts)
    }
    fn facts(&self, task: u64) -> Result<Option<TaskFacts>, ProbeError> {
        self.kernel().facts(task)
    }
    fn remove_facts(&self, task: u64) -> Result<(), ProbeError> {
        self.kernel().remove_facts(task)
    }
    fn fact_keys(&self) -> Result<Vec<u64>, ProbeError> {
        self.kernel().fact_keys()
    }
    fn lost_events(&self) -> Result<u64, ProbeError> {
        ProbeSet::lost_events(self)
    }
    fn events_received(&self) -> u64 {
        ProbeSet::events_received(self)
    }
    fn pinned_maps_dir(&self) -> Option<std::path::PathBuf> {
        ProbeSet::pinned_maps_dir(self).map(std::path::Path::to_path_buf)
    }
    fn track_helper(&self, pid: u32, task: Option<u64>) -> Result<(), ProbeError> {
        self.kernel().track_helper(pid, task)
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory kernel: maps in hash maps, events injected by the test.
    use std::{
        collections::HashMap,
        sync::{Mutex, MutexGuard, PoisonError},
    };

    use bpfexec_common::TaskFacts;
    use tokio::sync::broadcast;

    use super::KernelBackend;
    use crate::probes::{ProbeError, ProcessEvent};

    pub struct FakeKernel {
        pub events: broadcast::Sender<ProcessEvent>,
        pub tracked: Mutex<HashMap<u32, u64>>,
        pub threads: Mutex<HashMap<u32, u32>>,
        pub facts: Mutex<HashMap<u64, TaskFacts>>,
        pub lost: u64,
    }

    impl Default for FakeKernel {
        fn default() -> Self {
            Self {
                events: broadcast::channel(1024).0,
                tracked: Mutex::default(),
                threads: Mutex::default(),
                facts: Mutex::default(),
                lost: 0,
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl KernelBackend for FakeKernel {
        fn subscribe(&self) -> broadcast::Receiver<ProcessEvent> {
            self.events.subscribe()
        }
        fn track_pid(&self, pid: u32, task: u64) -> Result<(), ProbeError> {
            lock(&self.tracked).insert(pid, task);
            Ok(())
        }
        fn track_thread(&self, thread: u32, process: u32) -> Result<(), ProbeError> {
            lock(&self.threads).insert(thread, process);
            Ok(())
        }
        fn untrack_pid(&self, pid: u32) -> Result<(), ProbeError> {
            lock(&self.tracked).remove(&pid);
            Ok(())
        }
        fn untrack_task(&self, task: u64) -> Result<usize, ProbeError> {
            let mut t = lock(&self.tracked);
            let before = t.len();
            t.retain(|_, k| *k != task);
            Ok(before - t.len())
        }
        fn tracked(&self) -> Result<Vec<(u32, u64)>, ProbeError> {
            Ok(lock(&self.tracked).iter().map(|(p, k)| (*p, *k)).collect())
        }
        fn task_of(&self, pid: u32) -> Result<Option<u64>, ProbeError> {
            Ok(lock(&self.tracked).get(&pid).copied())
        }
        fn put_facts(&self, task: u64, facts: &TaskFacts) -> Result<(), ProbeError> {
            lock(&self.facts).insert(task, *facts);
            Ok(())
        }
        fn facts(&self, task: u64) -> Result<Option<TaskFacts>, ProbeError> {
            Ok(lock(&self.facts).get(&task).copied())
        }
        fn remove_facts(&self, task: u64) -> Result<(), ProbeError> {
            lock(&self.facts).remove(&task);
            Ok(())
        }
        fn fact_keys(&self) -> Result<Vec<u64>, ProbeError> {
            Ok(lock(&self.facts).keys().copied().collect())
        }
        fn lost_events(&self) -> Result<u64, ProbeError> {
            Ok(self.lost)
        }
        fn events_received(&self) -> u64 {
            0
        }
    }
}
