//! Kernel observation of tasks (issue 4): every process of every task is attributed in the kernel
//! by PID lineage (probes in `ebpf/`, maps pinned under bpffs), and this module turns the probe
//! events and the pinned per-task facts into exact exit reasons (exit code, signal with its sender
//! and sender class, OOM kill with scope and victim, exec failure), live notices while a task
//! runs (child OOM kills, signals from outside the task, processes that escaped the task's cgroup),
//! processes that outlived their task (leaks, killed and reported once), the live process tree
//! with a bounded exec history, per-process usage, and telemetry counters.
//!
//! Integration surface: [`Observer::start`], [`Observer::track`] / [`Observer::recover`] /
//! [`Observer::forget`], [`Observer::classify`] and [`ExitReason::to_nomad`],
//! [`Observer::reap_leaks`],
//! [`Observer::notices`], [`Observer::tree`], [`Observer::pid_usage`], [`Observer::stats`].

mod backend;
mod classify;
mod error;
mod facts;
mod key;
mod memcg;
mod notice;
mod proc;
mod reap;
mod reason;
mod service;
mod signals;
mod state;
mod stray;
mod tree;

#[cfg(test)]
mod tests;

pub use backend::KernelBackend;
pub use error::{ObserverError, ReapError};
pub use key::{TaskKey, TaskMeta};
pub use memcg::{CgroupFiles, LiveCgroupFs, MemcgRoots, OomScope};
pub use notice::Notice;
pub use proc::{LiveProc, PidUsage, ProcSource, ProcStat};
pub use reap::{PidFdReaper, Reaped, Reaper};
pub use reason::{ExitReason, MainExit, Sender, SenderClass};
pub use service::{
    NoticeReceiver, Observer, ObserverStats, Sources, TrackLimits, TrackReport, monotonic_ns,
};
pub use state::{DEFAULT_ESCAPE_CHECK_NS, ObserverConfig, ObserverState};
pub use stray::Stray;
pub use tree::{ExecEntry, ProcessNode, ProcessTree};
