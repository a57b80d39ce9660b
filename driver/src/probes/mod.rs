//! eBPF process-lifecycle probes: classic tracepoints (`sched_process_{exec,exit}`,
//! `task_newtask`, `signal_generate`, `oom/mark_victim`) whose field offsets come from tracefs at
//! start-up, attributing events to tasks in the kernel by PID lineage, delivering decoded
//! [`ProcessEvent`]s through [`ProbeSet::subscribe`], with their state pinned under bpffs.

mod attach;
mod error;
pub mod events;
pub mod kernel;
pub mod layout;
mod loader;
pub mod pin;
pub mod stats;
pub mod tracefs;

pub use error::ProbeError;
pub use events::{DecodeError, ProcessEvent};
pub use kernel::KernelMaps;
pub use loader::{EVENT_CHANNEL_CAPACITY, Pinning, ProbeOptions, ProbeSet, ProbeStats};
