//! Glue between the task table and the eBPF observer: register each task's main process, recover
//! it after a restart, forget it at destroy, turn its end into Nomad's ExitResult plus a task
//! event that says why (sender, OOM victim, exec failure), and kill what outlived it (leaks,
//! reported as one task event). Without probes the wait status and the task cgroup's OOM counter
//! still give an honest answer (and leaks are neither seen nor killed).

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use bpfexec_proto::drivers;
use tokio::sync::broadcast;

use super::state::{DriverState, Outcome};
use crate::observer::{ExitReason, MainExit, Observer, ObserverError, TaskKey, TaskMeta};

/// How long after Nomad's WaitTask held events are delivered.
const RELEASE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Observation {
    observer: OnceLock<Arc<Observer>>,
    /// Tasks whose main process had already ended when tracking began: the probes never saw
    /// their exit, so classifying them must not wait for it.
    untracked: Mutex<HashSet<String>>,
    outbox: Arc<Outbox>,
}

/// The way to Nomad's TaskEvents stream. Nomad drops events for allocations it has not
/// registered yet, which is the case while it restores them (RecoverTask), so events of a
/// recovered task are held until Nomad waits on it again.
struct Outbox {
    events: broadcast::Sender<drivers::DriverTaskEvent>,
    held: Mutex<std::collections::HashMap<String, Vec<drivers::DriverTaskEvent>>>,
}

impl Outbox {
    fn send(&self, event: drivers::DriverTaskEvent) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queue) = held.get_mut(&event.task_id) {
            queue.push(event);
        } else {
            let _ = self.events.send(event);
        }
    }
}

/// A Nomad task event for the TaskEvents stream.
pub fn task_event(
    task_id: &str,
    alloc_id: &str,
    task_name: &str,
    message: String,
    annotations: BTreeMap<String, String>,
) -> drivers::DriverTaskEvent {
    drivers::DriverTaskEvent {
        task_id: task_id.to_owned(),
        alloc_id: alloc_id.to_owned(),
        task_name: task_name.to_owned(),
        timestamp: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        message,
        annotations: annotations.into_iter().collect(),
    }
}

/// The main process's end as the observer sees it; None for a task whose status was lost.
fn main_exit(outcome: &Outcome) -> Option<MainExit> {
    outcome
        .err
        .is_none()
        .then(|| MainExit::new(outcome.exit_code, outcome.signal, outcome.core_dumped))
}

fn meta(cfg: &drivers::TaskConfig, state: &DriverState) -> TaskMeta {
    let (home, other_homes) = state
        .cgroups
        .as_ref()
        .map(crate::cgroups::CgroupHome::of_task)
        .unwrap_or_default();
    TaskMeta {
        task_id: state.task_id.clone(),
        alloc_id: cfg.alloc_id.clone(),
        task_name: cfg.name.clone(),
        main_pid: state.pid,
        main_start_time: state.start_time,
        supervisor_pid: Some(state.supervisor_pid),
        memcg_dir: state
            .cgroups
            .as_ref()
            .and_then(|c| c.memory_dir())
            .map(std::path::Path::to_path_buf),
        home,
        other_homes,
    }
}

impl Observation {
    pub fn new(events: broadcast::Sender<drivers::DriverTaskEvent>) -> Self {
        Self {
            observer: OnceLock::new(),
            untracked: Mutex::new(HashSet::new()),
            outbox: Arc::new(Outbox {
                events,
                held: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// Installs the observer (once the probes are loaded) and forwards its notices as task events.
    pub fn attach(&self, observer: Arc<Observer>) {
        let mut notices = observer.notices();
        let outbox = Arc::clone(&self.outbox);
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(n) => {
                        outbox.send(task_event(
                            &n.task_id,
                            &n.alloc_id,
                            &n.task_name,
                            n.message,
                            n.annotations,
                        ));
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "observer notices dropped");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let _ = self.observer.set(observer);
    }

    /// Nomad waits on the task again (after recovery): deliver what was held, a moment later so
    /// the restored allocation is registered for events by then. Returns when they will have
    /// been sent, if any were held (a task that already ended must not be reported before
    /// them: Nomad stops listening for its events once it knows the end).
    pub fn release(&self, task_id: &str) -> Option<tokio::time::Instant> {
        let pending = self
            .outbox
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task_id)
            .is_some_and(|q| !q.is_empty());
        let outbox = Arc::clone(&self.outbox);
        let task_id = task_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_DELAY).await;
            let queued = outbox
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&task_id);
            for event in queued.unwrap_or_default() {
                let _ = outbox.events.send(event);
            }
        });
        pending.then(|| tokio::time::Instant::now() + RELEASE_DELAY * 2)
    }

    /// Sends a task event (held, like the observer's, while a recovered task is not waited on).
    pub fn send_event(&self, event: drivers::DriverTaskEvent) {
        self.outbox.send(event);
    }

    pub fn observer(&self) -> Option<&Arc<Observer>> {
        self.observer.get()
    }

    /// The task's processes: its cgroup's (or process group's) members plus every live process
    /// the probes attribute to it by lineage, which includes any that left both.
    pub fn pids_of(&self, task: &super::Task) -> Vec<u32> {
        let mut pids = task.pids();
        if let Some(obs) = self.observer() {
            for pid in obs.pids(TaskKey::from_task_id(&task.state.task_id)) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    pub fn track(&self, cfg: &drivers::TaskConfig, state: &DriverState) {
        let Some(obs) = self.observer() else { return };
        match obs.track(TaskKey::from_task_id(&state.task_id), meta(cfg, state)) {
            Ok(_) => {}
            Err(ObserverError::MainGone { .. }) => {
                self.untracked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(state.task_id.clone());
            }
            Err(e) => {
                tracing::warn!(task_id = %state.task_id, error = %e, "the observer could not track the task");
            }
        }
    }

    pub fn recover(&self, cfg: &drivers::TaskConfig, state: &DriverState) {
        self.outbox
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(state.task_id.clone())
            .or_default();
        let Some(obs) = self.observer() else { return };
        if let Err(e) = obs.recover(TaskKey::from_task_id(&state.task_id), meta(cfg, state)) {
            tracing::warn!(task_id = %state.task_id, error = %e, "the observer could not recover the task");
        }
    }

    pub fn forget(&self, task_id: &str) {
        if let Some(obs) = self.observer()
            && let Err(e) = obs.forget(TaskKey::from_task_id(task_id))
        {
            tracing::debug!(task_id, error = %e, "the observer had nothing to forget");
        }
    }

    /// Once the task's main process has ended (on its own, or killed by StopTask/DestroyTask):
    /// kills the processes the observer still tracks for it and reports them in one task event.
    pub async fn reap_leaks(&self, state: &DriverState) {
        if let Some(obs) = self.observer() {
            obs.reap_leaks(TaskKey::from_task_id(&state.task_id)).await;
        }
    }

    /// [`Observation::reap_leaks`] without waiting (a task found already ended at recovery).
    pub fn reap_leaks_now(&self, state: &DriverState) {
        if let Some(obs) = self.observer() {
            obs.reap_leaks_now(TaskKey::from_task_id(&state.task_id));
        }
    }

    /// Classifies the task's end (waiting briefly for the probes' last records), sets the OOM
    /// flag from that and emits the explaining task event.
    pub async fn explain(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
        outcome: Outcome,
    ) -> Outcome {
        let Some(exit) = main_exit(&outcome) else {
            return outcome;
        };
        let seen_by_probes = !self
            .untracked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&state.task_id);
        let key = TaskKey::from_task_id(&state.task_id);
        let reason = match self.observer() {
            Some(obs) if seen_by_probes => Some(obs.classify(key, &exit).await),
            Some(obs) => Some(obs.classify_now(key, &exit)),
            None => None,
        };
        self.finish(cfg, state, outcome, reason, &exit)
    }

    /// A task whose helper ended without recording an exit status: its true end from what the
    /// probes saw and a task event naming who ended the helper. None when the probes are not
    /// loaded or have not seen the main process end (it may outlive a helper without a pid
    /// namespace).
    pub async fn explain_helper_death(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
    ) -> Option<Outcome> {
        let obs = self.observer()?;
        let found = obs
            .classify_helper_death(TaskKey::from_task_id(&state.task_id), state.supervisor_pid)
            .await;
        found.map(|(main, reason)| self.finish_helper_death(cfg, state, main, &reason))
    }

    /// [`Observation::explain_helper_death`] without waiting (found at recovery).
    pub fn explain_helper_death_now(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
    ) -> Option<Outcome> {
        let obs = self.observer()?;
        let found = obs
            .classify_helper_death_now(TaskKey::from_task_id(&state.task_id), state.supervisor_pid);
        found.map(|(main, reason)| self.finish_helper_death(cfg, state, main, &reason))
    }

    fn finish_helper_death(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
        main: Option<MainExit>,
        reason: &ExitReason,
    ) -> Outcome {
        let (_, message, annotations) = reason.to_nomad();
        self.outbox.send(task_event(
            &state.task_id,
            &cfg.alloc_id,
            &cfg.name,
            message.clone(),
            annotations,
        ));
        match main {
            Some(m) => Outcome {
                exit_code: m.exit_code,
                signal: m.signal,
                oom_killed: false,
                core_dumped: m.core_dumped,
                err: None,
                finished_at_ms: crate::supervisor::record::now_ms(),
            },
            None => Outcome::lost(message),
        }
    }

    /// [`Observation::explain`] without waiting (a task found already ended at recovery).
    pub fn explain_now(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
        outcome: Outcome,
    ) -> Outcome {
        let Some(exit) = main_exit(&outcome) else {
            return outcome;
        };
        let reason = self
            .observer()
            .map(|obs| obs.classify_now(TaskKey::from_task_id(&state.task_id), &exit));
        self.finish(cfg, state, outcome, reason, &exit)
    }

    fn finish(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
        outcome: Outcome,
        reason: Option<ExitReason>,
        exit: &MainExit,
    ) -> Outcome {
        let (outcome, reason) = match reason {
            Some(reason) => {
                let (oom, _, _) = reason.to_nomad();
                (
                    Outcome {
                        oom_killed: oom,
                        ..outcome
                    },
                    reason,
                )
            }
            // No probes: the wait status and the cgroup's OOM counter.
            None => (
                super::watch::with_oom(outcome, state),
                ExitReason::from_wait_status(exit),
            ),
        };
        let (_, message, annotations) = reason.to_nomad();
        self.outbox.send(task_event(
            &state.task_id,
            &cfg.alloc_id,
            &cfg.name,
            message,
            annotations,
        ));
        outcome
    }
}
