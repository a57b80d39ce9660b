//! Typed errors of the probe pipeline (tracefs, layouts, loading, attaching, reading maps), each
//! naming the tracepoint, map or path involved and saying what to do next.

use std::io;

use super::{layout::LayoutError, tracefs::TracefsError};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this driver binary was built without eBPF probes (AYA_BUILD_SKIP was set); rebuild it \
         with bpf-linker available (`cargo xtask setup`, then `cargo build`)"
    )]
    NotBuilt,
    #[error("ProbeSet::load must be called from inside a tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no program `{0}` (driver and probes out of sync?)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (driver and probes out of sync?)")]
    MissingMap(&'static str),
    #[error("loading or attaching the probe for tracepoint {tracepoint} failed: {source}")]
    Program {
        tracepoint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("registering the ring buffer with the tokio reactor failed: {0}")]
    Reactor(#[source] io::Error),
}

impl ProbeError {
    pub(crate) fn map(map: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(tracepoint: &'static str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            tracepoint,
            source: Box::new(source),
        }
    }
}
