//! The tracepoints the probes attach to, their layouts read from tracefs, and attaching them:
//! with pinning, each link is converted to an `FdLink` and pinned with `BPF_OBJ_PIN` (perf-event
//! links made by `BPF_LINK_CREATE`, Linux >= 5.15), or a previous driver's pinned link is kept.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{TracePoint, links::FdLink},
};
use bpfexec_common::{ExecLayout, ExitLayout, NewTaskLayout, OomLayout, SignalLayout};

use super::{
    ProbeError, layout,
    loader::Pinning,
    pin::{self, Pins},
    tracefs,
};

/// One tracepoint we attach; the probe program is named after the tracepoint.
pub(super) struct Tracepoint {
    category: &'static str,
    name: &'static str,
    full: &'static str,
    required: bool,
}

const EXEC: Tracepoint = tp(
    "sched",
    "sched_process_exec",
    "sched/sched_process_exec",
    true,
);
const EXIT: Tracepoint = tp(
    "sched",
    "sched_process_exit",
    "sched/sched_process_exit",
    true,
);
const NEWTASK: Tracepoint = tp("task", "task_newtask", "task/task_newtask", true);
const SIGNAL: Tracepoint = tp("signal", "signal_generate", "signal/signal_generate", false);
const OOM: Tracepoint = tp("oom", "mark_victim", "oom/mark_victim", false);

/// The probe programs (named after their tracepoints).
pub(super) const PROGRAMS: [&str; 5] = [EXEC.name, EXIT.name, NEWTASK.name, SIGNAL.name, OOM.name];

const fn tp(
    category: &'static str,
    name: &'static str,
    full: &'static str,
    required: bool,
) -> Tracepoint {
    Tracepoint {
        category,
        name,
        full,
        required,
    }
}

/// The tracepoint layouts read from tracefs (`None`: optional tracepoint unavailable).
pub(super) struct Layouts {
    pub exec: ExecLayout,
    pub exit: ExitLayout,
    pub newtask: NewTaskLayout,
    pub signal: Option<SignalLayout>,
    pub oom: Option<OomLayout>,
}

impl Layouts {
    pub(super) fn read(tracefs: &Path) -> Result<Self, ProbeError> {
        let format = |t: &Tracepoint| tracefs::read_format(tracefs, t.category, t.name);
        Ok(Self {
            exec: layout::exec(&format(&EXEC)?)?,
            exit: layout::exit(&format(&EXIT)?)?,
            newtask: layout::newtask(&format(&NEWTASK)?)?,
            signal: optional(
                &SIGNAL,
                format(&SIGNAL)
                    .map_err(ProbeError::from)
                    .and_then(|f| Ok(layout::signal(&f)?)),
            ),
            oom: optional(
                &OOM,
                format(&OOM)
                    .map_err(ProbeError::from)
                    .and_then(|f| Ok(layout::oom(&f)?)),
            ),
        })
    }
}

fn optional<T>(t: &Tracepoint, result: Result<T, ProbeError>) -> Option<T> {
    result
        .inspect_err(
            |e| tracing::warn!(tracepoint = t.full, error = %e, "optional tracepoint unavailable"),
        )
        .ok()
}

/// Attaches every available tracepoint; returns them and, when pinning, what was pinned.
pub(super) fn attach_all(
    ebpf: &mut Ebpf,
    layouts: &Layouts,
    pins: Option<&Pins>,
    maps_reused: bool,
) -> Result<(Vec<&'static str>, Option<Pinning>), ProbeError> {
    let mut attached = Vec::new();
    let (mut reused, mut pinned, mut unpinned) = (Vec::new(), Vec::new(), Vec::new());
    for (t, wanted) in [
        (&EXEC, true),
        (&EXIT, true),
        (&NEWTASK, true),
        (&SIGNAL, layouts.signal.is_some()),
        (&OOM, layouts.oom.is_some()),
    ] {
        if !wanted {
            continue;
        }
        match attach(ebpf, t, pins, maps_reused) {
            Ok(how) => {
                attached.push(t.full);
                match how {
                    Attached::Reused => reused.push(t.full),
                    Attached::Pinned => pinned.push(t.full),
                    Attached::Unpinned => unpinned.push(t.full),
                }
            }
            Err(e) if !t.required => {
                tracing::warn!(tracepoint = t.full, error = %e, "optional probe not attached");
            }
            Err(e) => return Err(e),
        }
    }
    let pinning = pins.map(|p| {
        p.remove_stale_links();
        Pinning::On {
            dir: p.version_dir.clone(),
            maps_reused,
            links_reused: reused,
            links_pinned: pinned,
            links_unpinned: unpinned,
        }
    });
    Ok((attached, pinning))
}

enum Attached {
    Reused,
    Pinned,
    Unpinned,
}

/// Attaches `t`, or keeps the pinned attachment a previous driver left (only when the state maps
/// it writes to were reused too, so it feeds this process's ring buffer).
fn attach(
    ebpf: &mut Ebpf,
    t: &Tracepoint,
    pins: Option<&Pins>,
    maps_reused: bool,
) -> Result<Attached, ProbeError> {
    let link_path = pins.map(|p| p.link(t.name));
    if let Some(path) = &link_path {
        if maps_reused && pin::pinned_link_alive(path) {
            return Ok(Attached::Reused);
        }
        // A link pinned against other maps would feed a ring buffer nobody reads.
        let _ = std::fs::remove_file(path);
    }
    let program: &mut TracePoint = ebpf
        .program_mut(t.name)
        .ok_or(ProbeError::MissingProgram(t.name))?
        .try_into()
        .map_err(|e| ProbeError::program(t.full, e))?;
    program.load().map_err(|e| ProbeError::program(t.full, e))?;
    let link_id = program
        .attach(t.category, t.name)
        .map_err(|e| ProbeError::program(t.full, e))?;
    let Some(path) = link_path else {
        return Ok(Attached::Unpinned);
    };
    let link = program
        .take_link(link_id)
        .map_err(|e| ProbeError::program(t.full, e))?;
    let pinned = FdLink::try_from(link)
        .map_err(|e| e.to_string())
        .and_then(|fd| fd.pin(&path).map_err(|e| e.to_string()));
    match pinned {
        // The pin keeps the link (and the program) alive; our fd can close.
        Ok(_link) => Ok(Attached::Pinned),
        Err(e) => {
            tracing::warn!(tracepoint = t.full, error = %e, "cannot pin the probe's link; it ends with this process");
            program
                .attach(t.category, t.name)
                .map_err(|e| ProbeError::program(t.full, e))?;
            Ok(Attached::Unpinned)
        }
    }
}
