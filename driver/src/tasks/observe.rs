//! Glue between the task table, the eBPF observer and the telemetry: register each task's main
//! process, recover it after a restart, forget it at destroy, turn its end into Nomad's
//! ExitResult plus the explained end (sender, OOM victim, exec failure) and kill what outlived it
//! (leaks). Each step is published as a task fact (started, recovered, ended, destroyed) for the
//! sinks (Nomad task events, metrics, traces). Without probes the wait status and the task
//! cgroup's OOM counter still give an honest answer (and leaks are neither seen nor killed).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bpfexec_proto::drivers;

use super::state::{DriverState, Outcome};
use crate::observer::{ExitReason, MainExit, Observer, ObserverError, TaskKey, TaskMeta};
use crate::telemetry::Telemetry;
use crate::telemetry::fact::{EndKind, Fact, MainProcess, StartPhases, TaskEnd, TaskIdentity};

pub struct Observation {
    observer: OnceLock<Arc<Observer>>,
    /// Tasks whose main process had already ended when tracking began: the probes never saw
    /// their exit, so classifying them must not wait for it.
    untracked: Mutex<HashSet<String>>,
    /// Where facts go (Nomad task events, metrics, traces).
    pub telemetry: Arc<Telemetry>,
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
    pub fn new(telemetry: Arc<Telemetry>) -> Self {
        Self {
            observer: OnceLock::new(),
            untracked: Mutex::new(HashSet::new()),
            telemetry,
        }
    }

    /// Installs the observer (once the probes are loaded); it publishes on the same fact bus.
    pub fn attach(&self, observer: Arc<Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Nomad waits on the task again (after recovery): its held task events go out. Returns
    /// when they will have been sent, for a recovered task (one that already ended must not be
    /// reported before them: Nomad stops listening for its events once it knows the end).
    pub fn release(&self, task_id: &str) -> Option<tokio::time::Instant> {
        self.telemetry.nomad.release(task_id)
    }

    /// Returns once the task's end event has been handed to Nomad's TaskEvents stream (at most
    /// `limit`): Nomad drops a task's events that arrive after its exit result.
    pub async fn end_delivered(&self, task_id: &str, limit: std::time::Duration) -> bool {
        self.telemetry.nomad.ends().wait(task_id, limit).await
    }

    /// WaitTask: returns once the task's end event has had time to reach Nomad's task state
    /// (telemetry::end_delivery).
    pub async fn end_settled(&self, task_id: &str) {
        self.telemetry.nomad.ends().settle(task_id).await;
    }

    /// The TaskEvents stream handed the task's event with `message` to Nomad.
    pub fn event_forwarded(&self, task_id: &str, message: &str) {
        self.telemetry.nomad.ends().forwarded(task_id, message);
    }

    /// StartTask succeeded: the run's first fact. `marks`: when StartTask was received, when
    /// planning ended and when the cgroups were ready; the launch ended now.
    pub fn started(&self, cfg: &drivers::TaskConfig, main: MainProcess, marks: [Instant; 3]) {
        let [received, planned, limited] = marks;
        let now = Instant::now();
        self.telemetry.publish(Fact::Started {
            task: Arc::new(TaskIdentity::of(cfg)),
            at: SystemTime::now(),
            start_duration: Some(now.duration_since(received)),
            phases: StartPhases {
                plan: planned.duration_since(received),
                cgroups: limited.duration_since(planned),
                launch: now.duration_since(limited),
            },
            main,
        });
    }

    /// DestroyTask: the run's last fact.
    pub fn destroyed(&self, cfg: &drivers::TaskConfig) {
        self.telemetry.publish(Fact::Destroyed {
            task: Arc::new(TaskIdentity::of(cfg)),
        });
    }

    /// The task's pids controller refused `total` forks so far (its limit is `pids_max`).
    pub fn pids_limit_hits(&self, cfg: &drivers::TaskConfig, pids_max: u64, total: u64) {
        self.telemetry.publish(Fact::PidsLimit {
            key: TaskKey::from_task_id(&cfg.id),
            at: SystemTime::now(),
            pids_max,
            hits_total: total,
        });
    }

    /// A live notice about the task for its Nomad task events (held, like the observer's, while
    /// a recovered task is not waited on).
    pub fn notice(
        &self,
        cfg: &drivers::TaskConfig,
        message: String,
        annotations: std::collections::BTreeMap<String, String>,
    ) {
        self.telemetry.publish(Fact::Notice {
            key: TaskKey::from_task_id(&cfg.id),
            task_id: cfg.id.clone(),
            alloc_id: cfg.alloc_id.clone(),
            task_name: cfg.name.clone(),
            message,
            annotations,
        });
    }

    /// Where the task's process registers itself with the probes (pinned maps only).
    pub fn self_track(&self, task_id: &str) -> Option<crate::supervisor::spec::SelfTrack> {
        let maps_dir = self.observer()?.pinned_maps_dir()?;
        Some(crate::supervisor::spec::SelfTrack {
            maps_dir,
            key: TaskKey::from_task_id(task_id).get(),
        })
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

    /// RecoverTask: resumes observing the task (its events wait for Nomad's WaitTask) and tells
    /// the sinks, with the processes it has now.
    pub fn recover(&self, cfg: &drivers::TaskConfig, state: &DriverState, running: bool) {
        self.telemetry.nomad.hold(&state.task_id);
        let key = TaskKey::from_task_id(&state.task_id);
        let mut processes = Vec::new();
        if let Some(obs) = self.observer() {
            if let Err(e) = obs.recover(key, meta(cfg, state)) {
                tracing::warn!(task_id = %state.task_id, error = %e, "the observer could not recover the task");
            }
            processes = obs.tree(key).map(|t| t.processes).unwrap_or_default();
        }
        let task_cfg = crate::config::task::TaskConfig::decode(&cfg.msgpack_driver_config).ok();
        self.telemetry.publish(Fact::Recovered {
            task: Arc::new(TaskIdentity::of(cfg)),
            started_at: UNIX_EPOCH + Duration::from_millis(state.started_at_ms),
            main: MainProcess {
                pid: state.pid,
                command: task_cfg
                    .as_ref()
                    .map(|t| t.command.clone())
                    .unwrap_or_default(),
                args: task_cfg.map(|t| t.args).unwrap_or_default(),
                user: cfg.user.clone(),
            },
            running,
            processes,
        });
    }

    pub fn forget(&self, task_id: &str) {
        self.telemetry.nomad.ends().forget(task_id);
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
            self.lost(cfg, &outcome);
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
        found.map(|(main, reason)| self.finish_helper_death(cfg, main.as_ref(), &reason))
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
        found.map(|(main, reason)| self.finish_helper_death(cfg, main.as_ref(), &reason))
    }

    fn finish_helper_death(
        &self,
        cfg: &drivers::TaskConfig,
        main: Option<&MainExit>,
        reason: &ExitReason,
    ) -> Outcome {
        let (_, message, annotations) = reason.to_nomad();
        let outcome = match main {
            Some(m) => Outcome {
                exit_code: m.exit_code,
                signal: m.signal,
                oom_killed: false,
                core_dumped: m.core_dumped,
                err: None,
                finished_at_ms: crate::supervisor::record::now_ms(),
            },
            None => Outcome::lost(message.clone()),
        };
        self.telemetry.publish(Fact::Ended {
            task: Arc::new(TaskIdentity::of(cfg)),
            end: TaskEnd {
                at: UNIX_EPOCH + Duration::from_millis(outcome.finished_at_ms),
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                oom_killed: false,
                kind: if main.is_some() {
                    EndKind::of(Some(reason))
                } else {
                    EndKind::Lost
                },
                reason: main.is_some().then(|| reason.clone()),
                message,
                annotations,
            },
        });
        outcome
    }

    /// [`Observation::explain`] without waiting (a task found already ended at recovery).
    pub fn explain_now(
        &self,
        cfg: &drivers::TaskConfig,
        state: &DriverState,
        outcome: Outcome,
    ) -> Outcome {
        let Some(exit) = main_exit(&outcome) else {
            self.lost(cfg, &outcome);
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
        let (_, message, mut annotations) = reason.to_nomad();
        self.degraded_at_end(cfg, &state.task_id, &mut annotations);
        self.telemetry.publish(Fact::Ended {
            task: Arc::new(TaskIdentity::of(cfg)),
            end: TaskEnd {
                at: UNIX_EPOCH + Duration::from_millis(outcome.finished_at_ms),
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                oom_killed: outcome.oom_killed,
                kind: EndKind::of(Some(&reason)),
                reason: Some(reason),
                message,
                annotations,
            },
        });
        outcome
    }

    /// A task whose observation was degraded (processes the probes could not track): a last
    /// event with the final counts if they rose since the last one, and the count in the end's
    /// annotations.
    fn degraded_at_end(
        &self,
        cfg: &drivers::TaskConfig,
        task_id: &str,
        annotations: &mut std::collections::BTreeMap<String, String>,
    ) {
        let Some(obs) = self.observer() else { return };
        let key = TaskKey::from_task_id(task_id);
        if let Some((message, a)) = obs.untracked_due(key, true) {
            self.notice(cfg, message, a);
        }
        let (processes, threads) = obs.untracked(key);
        if processes > 0 || threads > 0 {
            annotations.insert("untracked_processes".to_owned(), processes.to_string());
            annotations.insert("untracked_threads".to_owned(), threads.to_string());
        }
    }

    /// A run whose exit status was lost: the sinks learn it ended, and why not more is known.
    pub fn lost(&self, cfg: &drivers::TaskConfig, outcome: &Outcome) {
        let message = outcome
            .err
            .clone()
            .unwrap_or_else(|| "the task's exit status was lost".to_owned());
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert("reason".to_owned(), "lost".to_owned());
        self.telemetry.publish(Fact::Ended {
            task: Arc::new(TaskIdentity::of(cfg)),
            end: TaskEnd {
                at: UNIX_EPOCH + Duration::from_millis(outcome.finished_at_ms),
                exit_code: outcome.exit_code,
                signal: outcome.signal,
                oom_killed: outcome.oom_killed,
                kind: EndKind::Lost,
                reason: None,
                message,
                annotations,
            },
        });
    }
}
