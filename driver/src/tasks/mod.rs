//! The tasks this plugin process knows: start, recover, wait, signal, stop and destroy, following
//! Nomad's driver contract (plugins/drivers). Each task is owned by its own supervisor process;
//! this table is only the plugin's view of them and can be rebuilt from `driver_state`.

mod adopt;
mod cgsetup;
pub mod devcg;
mod ephemeral;
pub mod exec;
pub mod launch;
pub mod observe;
mod pidswatch;
mod seccomp;
pub mod state;
mod stop;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bpfexec_proto::drivers;
use tokio::sync::watch as tokio_watch;

use crate::cgroups::limits;
use crate::cgroups::{CgroupMode, TaskCgroups};
use crate::config::plugin::PluginConfig;
use crate::config::task::TaskConfig;
use crate::errors::DriverError;
use crate::isolation::plan;
use crate::procfs::{self, PidFd};
use crate::supervisor::record::{self, task_state_dir};
use crate::supervisor::spec::LaunchSpec;
use crate::telemetry::fact::MainProcess;
use state::{DriverState, Outcome, STATE_VERSION};

/// One task as the plugin sees it.
pub struct Task {
    pub config: drivers::TaskConfig,
    pub state: DriverState,
    /// The main process, while it may still be running (None once known gone).
    main: Option<PidFd>,
    exit: tokio_watch::Receiver<Option<Outcome>>,
}

impl Task {
    pub fn outcome(&self) -> Option<Outcome> {
        self.exit.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.exit.borrow().is_none()
    }

    /// Waits for the task to end.
    pub async fn wait(&self) -> Outcome {
        let mut rx = self.exit.clone();
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Outcome::lost("the driver lost track of the task's supervisor".into());
            }
        }
    }

    /// Waits up to `limit`; true if the task ended.
    pub async fn wait_for(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    /// Sends `signal` to the main process.
    pub fn signal_main(&self, signal: i32) -> Result<bool, DriverError> {
        match &self.main {
            Some(fd) if self.is_running() => fd
                .send_signal(signal)
                .map_err(|e| DriverError::io(format!("signalling pid {}", fd.pid()), e)),
            _ => Ok(false),
        }
    }

    /// Sends `signal` to the task's process group (its main process first), or to every process
    /// in the task when `signal_all_processes` is set.
    pub fn signal_task(&self, signal: i32) -> Result<(), DriverError> {
        let delivered = self.signal_main(signal)?;
        if self.state.signal_all_processes {
            for pid in self.pids() {
                if pid != self.state.pid {
                    // SAFETY: kill(2) with a pid from the task's own cgroup or process group.
                    unsafe { libc::kill(pid as libc::pid_t, signal) };
                }
            }
        } else if delivered && self.main.is_some() {
            procfs::signal_group(self.state.pid, signal).map_err(|e| {
                DriverError::io(format!("signalling process group {}", self.state.pid), e)
            })?;
        }
        Ok(())
    }

    /// Pids that belong to the task now: its cgroup's members, or its process group's.
    pub fn pids(&self) -> Vec<u32> {
        let from_cgroup = self
            .state
            .cgroups
            .as_ref()
            .map(TaskCgroups::pids)
            .unwrap_or_default();
        if from_cgroup.is_empty() && self.is_running() {
            procfs::group_members(self.state.pid)
        } else {
            from_cgroup
        }
    }
}

/// Fails the start when a cgroup directory Nomad should have made for the task is missing: the
/// task would run without that directory's limits.
fn require_dirs(cg: Option<&TaskCgroups>, task: &str) -> Result<(), DriverError> {
    let Some(cg) = cg else { return Ok(()) };
    let missing = cg.missing_dirs();
    if missing.is_empty() {
        return Ok(());
    }
    Err(DriverError::Start {
        task: task.to_owned(),
        reason: format!(
            "the task's cgroup directories {} do not exist, so it would run without the limits \
             Nomad set; Nomad creates them before starting the task, so something removed them \
             (or the client's cgroup setup failed: see the agent log)",
            missing
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        recoverable: true,
    })
}

/// v2: the scope the task's process is created in (see `supervisor::clone_into`). None on v1,
/// with a cgroup override, or when filesystem images must be staged first: their loop devices
/// are set up before the process enters its cgroup, whose device program would refuse them.
fn clone_target(
    cg: &TaskCgroups,
    spec: &crate::supervisor::spec::LaunchSpec,
    overridden: bool,
) -> Option<std::path::PathBuf> {
    let stages_images = spec
        .sandbox
        .as_ref()
        .is_some_and(|sb| !sb.images.is_empty());
    (!overridden && !stages_images)
        .then(|| cg.v2_scope().map(std::path::Path::to_path_buf))
        .flatten()
}

/// Records the planned state, launches the supervisor and returns the task's state with its
/// processes, and the first supervisor process (to reap). A failed launch removes the task's
/// state dir and owned cgroups again.
async fn launch_planned(
    planned: DriverState,
    spec: &LaunchSpec,
) -> Result<(DriverState, tokio::process::Child), DriverError> {
    // Recorded first: a plugin replacing this one if it dies before StartTask returns adopts
    // the task from it (adopt).
    let launched = match adopt::record_plan(&planned) {
        Ok(()) => launch::launch(&planned.dir, spec).await,
        Err(e) => Err(e),
    };
    let launched = match launched {
        Ok(l) => l,
        Err(e) => {
            let _ = record::remove_task_dir(&planned.dir);
            if let Some(cg) = &planned.cgroups {
                devcg::remove_owned(&planned.task_id, cg).await;
            }
            return Err(e);
        }
    };
    let state = DriverState {
        started_at_ms: record::now_ms(),
        ..planned.with_processes(
            launched.pid,
            launched.start_time,
            launched.supervisor_pid,
            launched.supervisor_start_time,
        )
    };
    Ok((state, launched.launcher))
}

/// The task's main process as launched, for the sinks.
fn main_process(cfg: &drivers::TaskConfig, spec: &LaunchSpec, pid: u32) -> MainProcess {
    MainProcess {
        pid,
        command: spec.program.display().to_string(),
        args: spec.args.clone(),
        user: spec
            .identity
            .as_ref()
            .map_or_else(|| cfg.user.clone(), |i| i.user.clone()),
    }
}

/// What the plugin needs from its configuration to start tasks.
#[derive(Debug, Clone)]
pub struct StartContext {
    pub plugin: PluginConfig,
    pub cgroup_mode: Option<CgroupMode>,
    pub cgroup_root: PathBuf,
}

pub struct TaskManager {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// The eBPF observer, once the probes are loaded, and the task-event bus.
    pub observation: Arc<observe::Observation>,
}

impl TaskManager {
    pub fn new(telemetry: Arc<crate::telemetry::Telemetry>) -> Self {
        Self {
            tasks: Mutex::new(HashMap::new()),
            observation: Arc::new(observe::Observation::new(telemetry)),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Task>, DriverError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| DriverError::NotFound(id.to_owned()))
    }

    pub fn all(&self) -> Vec<Arc<Task>> {
        self.table().values().cloned().collect()
    }

    /// StartTask (received at `received`): plans the isolation, applies cgroup limits, launches
    /// the supervisor and returns the state to put in the handle.
    pub async fn start(
        &self,
        ctx: &StartContext,
        cfg: drivers::TaskConfig,
        received: Instant,
    ) -> Result<DriverState, DriverError> {
        if let Ok(existing) = self.get(&cfg.id) {
            return Ok(existing.state.clone());
        }
        let dir = task_state_dir(&ctx.plugin.state_dir, &cfg.id);
        if let Some(state) = adopt::earlier_attempt(&dir, &cfg.id).await {
            return self.adopt(cfg, state);
        }
        let task_cfg = TaskConfig::decode(&cfg.msgpack_driver_config)?;
        let ephemeral_id = ephemeral::for_task(ctx, &cfg, &task_cfg)?;
        let started = self
            .start_task(ctx, cfg.clone(), &task_cfg, ephemeral_id, received)
            .await;
        if started.is_err()
            && let Some(id) = ephemeral_id
        {
            ephemeral::release(&ctx.plugin.state_dir, id, &cfg.id);
        }
        started
    }

    async fn start_task(
        &self,
        ctx: &StartContext,
        cfg: drivers::TaskConfig,
        task_cfg: &TaskConfig,
        ephemeral_id: Option<u32>,
        received: Instant,
    ) -> Result<DriverState, DriverError> {
        let task_cfg = task_cfg.clone();
        let override_join = cgsetup::override_join(ctx, &cfg, &task_cfg)?;
        let mut cgroups = if override_join.is_none() {
            cgsetup::task_cgroups(ctx, &cfg)
        } else {
            None
        };
        let dir = task_state_dir(&ctx.plugin.state_dir, &cfg.id);
        let mut spec = plan::plan(&plan::PlanInput {
            nomad: &cfg,
            task: &task_cfg,
            plugin: &ctx.plugin,
            state_dir: &dir,
            cgroup_join: override_join.clone().unwrap_or_else(|| {
                cgroups
                    .as_ref()
                    .map(TaskCgroups::join_files)
                    .unwrap_or_default()
            }),
            ephemeral_id,
        })?;
        spec.self_track = self.observation.self_track(&cfg.id);
        let planned_at = Instant::now();
        require_dirs(cgroups.as_ref(), &cfg.id)?;
        let memory =
            cgsetup::apply_limits(&cfg, &task_cfg, cgroups.as_ref(), override_join.is_some())?;
        if let Some(sb) = &spec.sandbox {
            std::fs::create_dir_all(&sb.root)
                .map_err(|e| DriverError::io(format!("creating {}", sb.root.display()), e))?;
        }
        // Last before the launch: a failed launch removes them again.
        if spec.sandbox.is_some() {
            devcg::restrict(cgroups.as_mut(), &ctx.cgroup_root, &cfg, &ctx.plugin)?;
        }
        if let Some(cg) = &mut cgroups {
            cgsetup::own_cgroups(ctx, &cfg, &task_cfg, cg, memory).await?;
            spec.cgroup_join = cg.join_files();
            spec.cgroup_into = clone_target(cg, &spec, override_join.is_some());
        }
        let oom_kills_before = cgroups.as_ref().and_then(limits::oom_kills).unwrap_or(0);
        let pids_hits_before = cgroups
            .as_ref()
            .and_then(pidswatch::events_file)
            .and_then(|f| pidswatch::hits(&f))
            .unwrap_or(0);
        let limited = Instant::now();
        let planned = DriverState {
            version: STATE_VERSION,
            task_id: cfg.id.clone(),
            dir: dir.clone(),
            supervisor_pid: 0,
            supervisor_start_time: 0,
            pid: 0,
            start_time: 0,
            started_at_ms: record::now_ms(),
            cgroups,
            signal_all_processes: task_cfg.signal_all_processes,
            oom_kills_before,
            pids_max: task_cfg.limits.pids_max,
            pids_hits_before,
            ephemeral_id,
            alloc_dir: (!cfg.alloc_dir.is_empty()).then(|| PathBuf::from(&cfg.alloc_dir)),
        };
        let (state, launcher) = launch_planned(planned, &spec).await?;
        // The plugin is the first supervisor process's parent: reap it when it ends.
        let mut first_process = launcher;
        tokio::spawn(async move {
            let _ = first_process.wait().await;
        });
        self.observation.started(
            &cfg,
            main_process(&cfg, &spec, state.pid),
            [received, planned_at, limited],
        );
        if let Ok(supervisor) = PidFd::open(state.supervisor_pid, Some(state.supervisor_start_time))
        {
            let main = PidFd::open(state.pid, Some(state.start_time)).ok();
            self.observation.track(&cfg, &state);
            self.insert(cfg, state.clone(), supervisor, main);
        } else {
            // A task that ended at once: its exit record is already there.
            let outcome = watch::read_outcome(&state.dir)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    Outcome::lost("the task's supervisor vanished right after start".into())
                });
            let outcome = self.observation.explain_now(&cfg, &state, outcome);
            self.insert_exited(cfg, state.clone(), outcome);
        }
        tracing::info!(task_id = %state.task_id, pid = state.pid, supervisor = state.supervisor_pid, "task started");
        Ok(state)
    }

    fn insert(
        &self,
        config: drivers::TaskConfig,
        state: DriverState,
        supervisor: PidFd,
        main: Option<PidFd>,
    ) {
        let (tx, rx) = tokio_watch::channel(None);
        seccomp::spawn(
            state.dir.clone(),
            config.clone(),
            rx.clone(),
            Arc::clone(&self.observation),
        );
        watch::spawn(
            supervisor,
            config.clone(),
            state.clone(),
            Arc::clone(&self.observation),
            tx,
        );
        pidswatch::spawn(
            config.clone(),
            &state,
            Arc::clone(&self.observation),
            rx.clone(),
        );
        let task = Arc::new(Task {
            config,
            state,
            main,
            exit: rx,
        });
        self.table().insert(task.state.task_id.clone(), task);
    }

    fn insert_exited(&self, config: drivers::TaskConfig, state: DriverState, outcome: Outcome) {
        let (_tx, rx) = tokio_watch::channel(Some(outcome));
        seccomp::spawn(
            state.dir.clone(),
            config.clone(),
            rx.clone(),
            Arc::clone(&self.observation),
        );
        let task = Arc::new(Task {
            config,
            state,
            main: None,
            exit: rx,
        });
        self.table().insert(task.state.task_id.clone(), task);
    }

    /// RecoverTask: re-attaches to a task from its handle; idempotent.
    pub fn recover(&self, handle: &drivers::TaskHandle) -> Result<(), DriverError> {
        let config = handle.config.clone().unwrap_or_default();
        let state =
            DriverState::decode(&handle.driver_state).map_err(|reason| DriverError::Recover {
                task: config.id.clone(),
                reason,
            })?;
        let id = if config.id.is_empty() {
            state.task_id.clone()
        } else {
            config.id.clone()
        };
        if self.get(&id).is_ok() {
            return Ok(());
        }
        self.recover_or_forget(config, state, &id)
    }

    /// StartTask of a task an earlier plugin process launched and died before handing to Nomad
    /// (Nomad retries StartTask then): the running task is recovered, not started again.
    fn adopt(
        &self,
        cfg: drivers::TaskConfig,
        state: DriverState,
    ) -> Result<DriverState, DriverError> {
        let id = cfg.id.clone();
        tracing::warn!(task_id = %id, pid = state.pid, supervisor = state.supervisor_pid, "StartTask of a task an earlier plugin process launched before it died: adopting it");
        self.recover_or_forget(cfg, state, &id)
            .map_err(|e| DriverError::Start {
                task: id.clone(),
                reason: format!(
                    "an earlier plugin process launched this task and died; adopting it failed: {e}"
                ),
                recoverable: false,
            })?;
        self.get(&id).map(|t| t.state.clone())
    }

    fn recover_or_forget(
        &self,
        config: drivers::TaskConfig,
        state: DriverState,
        id: &str,
    ) -> Result<(), DriverError> {
        let recovered = self.recover_state(config, state, id);
        if recovered.is_err() {
            // Not in the table: nothing would ever forget what recovering it registered.
            self.observation.forget(id);
        }
        recovered
    }

    /// [`Tasks::recover`] of a task not in the table yet.
    fn recover_state(
        &self,
        config: drivers::TaskConfig,
        state: DriverState,
        id: &str,
    ) -> Result<(), DriverError> {
        let recover_err = |reason: String| DriverError::Recover {
            task: id.to_owned(),
            reason,
        };
        match PidFd::open(state.supervisor_pid, Some(state.supervisor_start_time)) {
            Ok(supervisor) => {
                let main = PidFd::open(state.pid, Some(state.start_time)).ok();
                tracing::info!(task_id = %id, pid = state.pid, "recovered running task");
                self.observation.recover(&config, &state, true);
                self.insert(config, state, supervisor, main);
                Ok(())
            }
            Err(_) => {
                if let Some(outcome) = watch::read_outcome(&state.dir).map_err(recover_err)? {
                    self.observation.recover(&config, &state, false);
                    let outcome = self.observation.explain_now(&config, &state, outcome);
                    self.observation.reap_leaks_now(&state);
                    tracing::info!(task_id = %id, exit_code = outcome.exit_code, "recovered task that exited while the plugin was away");
                    self.insert_exited(config, state, outcome);
                    Ok(())
                } else {
                    self.recover_helper_gone(config, state).map_err(recover_err)
                }
            }
        }
    }

    /// RecoverTask of a task whose helper died without an exit record. A main process that
    /// outlived it (no pid namespace) is watched instead; otherwise the probes tell how it ended.
    fn recover_helper_gone(
        &self,
        config: drivers::TaskConfig,
        state: DriverState,
    ) -> Result<(), String> {
        if let Ok(main) = PidFd::open(state.pid, Some(state.start_time)) {
            self.observation.recover(&config, &state, true);
            let watched = PidFd::open(state.pid, Some(state.start_time)).ok();
            self.insert(config, state, main, watched);
            return Ok(());
        }
        self.observation.recover(&config, &state, false);
        let Some(outcome) = self.observation.explain_helper_death_now(&config, &state) else {
            return Err(format!(
                "its supervisor (pid {}) is gone and left no exit record in {}, and the probes did not see how the task ended",
                state.supervisor_pid,
                state.dir.display()
            ));
        };
        self.observation.reap_leaks_now(&state);
        tracing::info!(task_id = %state.task_id, exit_code = outcome.exit_code, "recovered task whose helper died");
        self.insert_exited(config, state, outcome);
        Ok(())
    }

    /// StopTask: `signal`, then after `timeout` SIGKILL to everything in the task.
    pub async fn stop(&self, id: &str, timeout: Duration, signal: i32) -> Result<(), DriverError> {
        let task = self.get(id)?;
        stop::stop(&task, timeout, signal).await
    }

    /// SignalTask: the signal goes to the task's process group, or to every process of the task
    /// with `signal_all_processes`.
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), DriverError> {
        let task = self.get(id)?;
        if !task.is_running() {
            return Err(DriverError::Exited(id.to_owned()));
        }
        task.signal_task(signal)?;
        Ok(())
    }

    /// DestroyTask: forget the task and remove its state; with `force`, kill it first.
    /// Ends and removes the tasks Nomad abandoned (adopt::sweep) under `state_dir`, and destroys
    /// the ended tasks of this table whose allocation Nomad has garbage-collected without a
    /// DestroyTask (a task runner restored after an agent stop can exit without one).
    pub async fn sweep_abandoned(&self, state_dir: &std::path::Path) {
        let collected: Vec<String> = self
            .all()
            .into_iter()
            .filter(|t| !t.is_running())
            .filter(|t| {
                t.state
                    .alloc_dir
                    .as_ref()
                    .is_some_and(|a| std::fs::symlink_metadata(a).is_err())
            })
            .map(|t| t.state.task_id.clone())
            .collect();
        for id in collected {
            tracing::warn!(task_id = %id, "Nomad garbage-collected the allocation of an ended task without destroying it: destroying it");
            if let Err(e) = self.destroy(&id, true, Some(state_dir)).await {
                tracing::warn!(task_id = %id, error = %e, "could not destroy the task");
            }
        }
        for id in adopt::sweep(state_dir, |id| self.get(id).is_ok()).await {
            self.observation.forget(&id);
        }
    }

    /// DestroyTask. `state_dir` (the plugin's) finds what a task this process does not know left.
    pub async fn destroy(
        &self,
        id: &str,
        force: bool,
        state_dir: Option<&std::path::Path>,
    ) -> Result<(), DriverError> {
        let Ok(task) = self.get(id) else {
            // Unknown here (its RecoverTask failed, or its StartTask died with an earlier
            // plugin): its kernel state and files may still exist.
            self.observation.forget(id);
            if let Some(state_dir) = state_dir {
                adopt::destroy_unknown(&task_state_dir(state_dir, id), id, force).await?;
            }
            return Ok(());
        };
        if task.is_running() {
            if !force {
                return Err(DriverError::StillRunning {
                    task: id.to_owned(),
                    hint: "stop it first or destroy with force",
                });
            }
            stop::kill_everything(&task).await;
            if !task.wait_for(Duration::from_secs(10)).await {
                return Err(DriverError::StillRunning {
                    task: id.to_owned(),
                    hint: "it survived SIGKILL for 10s",
                });
            }
        }
        self.table().remove(id);
        self.observation.forget(id);
        self.observation.destroyed(&task.config);
        adopt::remove_leftovers(&task.state.dir, id, Some(&task.state)).await;
        Ok(())
    }
}
