//! The task-option side of a task's cgroups at start: raw_exec's `cgroup_v1_override` /
//! `cgroup_v2_override` (join existing cgroups instead of Nomad's: raw mode only, since they take
//! the task out of the limits Nomad set) and the swap, pids and IO limits (`cgroups::extra`),
//! for which cgroup v1 gets a pids and a blkio cgroup of the driver's own.

use std::path::PathBuf;

use bpfexec_proto::drivers;

use super::{StartContext, devcg};
use crate::cgroups::created::Ledger;
use crate::cgroups::extra::{self, HostDevices, MemoryHard};
use crate::cgroups::limits::{self, Limits};
use crate::cgroups::{CgroupMode, TaskCgroups, owned};
use crate::config::size::Size;
use crate::config::task::{Isolation, TaskConfig};
use crate::errors::DriverError;

fn refuse(cfg: &drivers::TaskConfig, reason: String) -> DriverError {
    DriverError::Start {
        task: cfg.id.clone(),
        reason,
        recoverable: false,
    }
}

/// The cgroups Nomad made for the task (derived from `cpuset_cgroup`); None without cgroups.
pub fn task_cgroups(ctx: &StartContext, cfg: &drivers::TaskConfig) -> Option<TaskCgroups> {
    let mode = ctx.cgroup_mode?;
    let cpuset = &cfg
        .resources
        .as_ref()?
        .linux_resources
        .as_ref()?
        .cpuset_cgroup;
    TaskCgroups::for_task(mode, &ctx.cgroup_root, cpuset, &cfg.alloc_id, &cfg.name)
}

/// Writes Nomad's resource limits into the task's cgroups (none with an override, whose own
/// limits govern); returns the memory hard limit they set.
pub fn apply_limits(
    cfg: &drivers::TaskConfig,
    task: &TaskConfig,
    cgroups: Option<&TaskCgroups>,
    overridden: bool,
) -> Result<Option<MemoryHard>, DriverError> {
    let mut l = Limits::from_resources(cfg.resources.as_ref());
    l.allow_swap = task.limits.swap_max.is_some_and(|s| s != Size::Bytes(0));
    match cgroups {
        Some(cg) => limits::apply(cg, &l).map_err(|e| DriverError::Start {
            task: cfg.id.clone(),
            reason: format!("cannot apply resource limits: {e}"),
            recoverable: true,
        })?,
        None if !overridden => require_cgroups(cfg, task)?,
        None => {}
    }
    Ok(l.hard())
}

/// With a cgroup override: the files the task writes to join the override cgroups (which must
/// exist). None without one.
pub fn override_join(
    ctx: &StartContext,
    cfg: &drivers::TaskConfig,
    task: &TaskConfig,
) -> Result<Option<Vec<PathBuf>>, DriverError> {
    let o = &task.cgroup_override;
    if !o.is_set() {
        return Ok(None);
    }
    let field = if o.v1.is_empty() {
        "cgroup_v2_override"
    } else {
        "cgroup_v1_override"
    };
    if task.isolation != Isolation::None {
        return Err(refuse(
            cfg,
            format!(
                "{field} is honoured only with isolation = \"none\": it takes the task out of the cgroups Nomad limits it with, which an isolated task must stay in"
            ),
        ));
    }
    if task.limits != crate::config::resources::ExtraLimits::default() {
        return Err(refuse(
            cfg,
            format!(
                "{field} cannot be combined with swap_max, pids_max or the io_* options: the task's limits are those of the cgroups it names"
            ),
        ));
    }
    let (dirs, file) = match (ctx.cgroup_mode, o.v1.is_empty()) {
        (Some(CgroupMode::V1), false) => (o.v1_dirs(&ctx.cgroup_root), "tasks"),
        (Some(CgroupMode::V2), true) => (
            o.v2_dir(&ctx.cgroup_root).into_iter().collect(),
            "cgroup.procs",
        ),
        (mode, _) => {
            return Err(refuse(
                cfg,
                format!(
                    "{field} is set but this client runs cgroup {}; use {} (the node attribute driver.bpfexec.cgroup_mode tells which)",
                    mode.map_or("none", CgroupMode::as_str),
                    if o.v1.is_empty() {
                        "cgroup_v1_override"
                    } else {
                        "cgroup_v2_override"
                    },
                ),
            ));
        }
    };
    let mut join = Vec::new();
    for dir in dirs {
        let f = dir.join(file);
        if !f.exists() {
            return Err(refuse(
                cfg,
                format!(
                    "{field}: the cgroup {} does not exist; create it before the task starts (the driver joins it, it does not make it)",
                    dir.display()
                ),
            ));
        }
        join.push(f);
    }
    Ok(Some(join))
}

/// The cgroups the driver makes for the task's limit options, last before its launch (after the
/// devices cgroup): the v1 pids and blkio ones, with their limits. On failure what the driver
/// made for the task (the devices cgroup too) is removed again.
pub async fn own_cgroups(
    ctx: &StartContext,
    cfg: &drivers::TaskConfig,
    task: &TaskConfig,
    cg: &mut TaskCgroups,
    memory: Option<MemoryHard>,
) -> Result<(), DriverError> {
    let made = make_and_limit(ctx, cfg, &task.limits, cg, memory);
    if made.is_err() {
        devcg::remove_owned(&cfg.id, cg).await;
    }
    made
}

fn make_and_limit(
    ctx: &StartContext,
    cfg: &drivers::TaskConfig,
    limits: &crate::config::resources::ExtraLimits,
    cg: &mut TaskCgroups,
    memory: Option<MemoryHard>,
) -> Result<(), DriverError> {
    if cg.mode == CgroupMode::V1 {
        for (controller, option, wanted) in [
            ("pids", "pids_max", limits.pids_max.is_some()),
            ("blkio", "io_weight", limits.has_io()),
        ] {
            if wanted {
                let dir = owned::create(
                    &ctx.cgroup_root,
                    controller,
                    &cfg.alloc_id,
                    &cfg.name,
                    &Ledger::host(),
                )
                .map_err(|e| refuse(cfg, format!("{option}: {e}")))?;
                cg.owned.push(dir);
            }
        }
    }
    let writes = extra::plan(
        cg,
        limits,
        memory.unwrap_or(MemoryHard::Unlimited),
        &HostDevices,
    )
    .map_err(|e| refuse(cfg, e.to_string()))?;
    extra::apply(&writes).map_err(|e| refuse(cfg, e.to_string()))
}

/// Refuses the limit options on a client that gives the task no cgroups.
fn require_cgroups(cfg: &drivers::TaskConfig, task: &TaskConfig) -> Result<(), DriverError> {
    let l = &task.limits;
    let option = if l.swap_max.is_some() {
        "swap_max"
    } else if l.pids_max.is_some() {
        "pids_max"
    } else if l.has_io() {
        "io_weight/io_*_max"
    } else {
        return Ok(());
    };
    Err(refuse(
        cfg,
        format!(
            "{option} needs the task's cgroups, but this client gives the task none (cgroups disabled or not mounted)"
        ),
    ))
}
