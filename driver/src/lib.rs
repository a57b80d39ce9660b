//! Library half of the bpfexec driver, shared by the `nomad-driver-bpfexec` binary and the tests.

pub mod base;
pub mod cgroups;
pub mod collect;
pub mod config;
pub mod errors;
pub mod fingerprint;
pub mod http;
pub mod isolation;
pub mod journal;
pub mod logging;
pub mod observer;
pub mod plugin;
pub mod probes;
pub mod procfs;
pub mod runtime;
pub mod seccomp;
pub mod service;
pub mod signals;
pub mod stats;
pub mod supervisor;
pub mod tasks;
pub mod telemetry;
