//! eBPF process-lifecycle probes: classic tracepoints (`sched_process_{exec,exit,fork}`,
//! `signal_generate`, `oom/mark_victim`) whose field offsets come from tracefs at start-up,
//! delivering decoded [`ProcessEvent`]s through [`ProbeSet::subscribe`].

mod error;
pub mod events;
pub mod layout;
mod loader;
pub mod tracefs;

pub use error::ProbeError;
pub use events::{DecodeError, ProcessEvent};
pub use loader::{EVENT_CHANNEL_CAPACITY, ProbeSet};
