//! The per-task supervisor: this binary re-executed as `nomad-driver-bpfexec __supervise <dir>`.
//! It starts the task's command and records its exit status on disk, outside the plugin's
//! lifetime, so tasks keep running while Nomad restarts or kills the plugin.
//!
//! With a private pid namespace the supervisor forks a small init (pid 1 of the namespace, still
//! in the host's mount namespace) that starts the task, reaps orphans, writes the exit record and,
//! by exiting, makes the kernel kill whatever the task left behind. The first process then reports
//! and exits, so one process per task remains. With `pid_mode = "host"` the supervisor itself
//! waits. Both are synchronous and single-threaded (no tokio): a few hundred KiB of private memory.

mod child;
mod clone_into;
pub mod enter;
pub mod images;
mod init;
mod journalrelay;
pub mod kernelfs;
mod loopdev;
pub mod privileges;
mod ptyrelay;
pub mod record;
pub mod sandbox;
pub mod serve;
pub mod spec;
mod trim;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use record::{SPEC_FILE, StartReport};
use spec::LaunchSpec;

/// argv[1] that selects supervisor mode.
pub const SUPERVISE_ARG: &str = "__supervise";

/// Entry point of supervisor mode; returns the process exit code.
pub fn main(args: &[OsString]) -> i32 {
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: nomad-driver-bpfexec {SUPERVISE_ARG} <task-state-dir>");
        return 2;
    };
    match run(&dir) {
        Ok(()) => 0,
        Err(e) => {
            log(&format!("supervisor failed: {e}"));
            1
        }
    }
}

pub(crate) fn log(msg: &str) {
    // stderr is the supervisor.log file the plugin opened for us. A full state_dir must not
    // stop the helper (eprintln! would panic), so errors are ignored.
    let _ = writeln!(
        io::stderr(),
        "{} [{}] {msg}",
        record::now_ms(),
        std::process::id()
    );
}

fn run(dir: &Path) -> io::Result<()> {
    // Leave the plugin's session and process group: the agent's terminal and its process-group
    // signals must not reach the task.
    nix::unistd::setsid().map_err(|e| io::Error::other(format!("setsid: {e}")))?;
    let spec: LaunchSpec = record::read_json(dir, SPEC_FILE)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "launch spec missing"))?;
    ignore_terminal_signals();
    let streams = match spec.journal.as_ref().map(journalrelay::start).transpose() {
        Ok(s) => s,
        Err(e) => return report_failure(dir, &spec, &e),
    };
    if spec.pid_ns {
        return init::launch(dir, &spec, streams);
    }
    let host = serve::host_files(&spec, dir)?;
    let sigfd = serve::sigchld_fd()?;
    let spawned = match child::spawn(&spec, streams.as_ref()) {
        Ok(spawned) => spawned,
        Err(e) => return report_failure(dir, &spec, &e),
    };
    // The task has its copies; the relay ends when the task's are closed.
    drop(streams);
    let pid = spawned.pid;
    report_started(dir, pid, std::process::id())?;
    log(&format!("task {} started as pid {pid}", spec.task_id));
    trim::drop_text_pages();
    let listener = serve::listener(spawned.listener, host, &spec);
    let status = serve::wait_main(
        nix::unistd::Pid::from_raw(pid as i32),
        false,
        &sigfd,
        listener,
    )?;
    let record = serve::exit_record(status);
    // Whatever the main process left in its process group ends with it.
    if let Err(e) = crate::procfs::signal_group(pid, libc::SIGKILL) {
        log(&format!(
            "could not kill the rest of process group {pid}: {e}"
        ));
    }
    finish(dir, &record)
}

/// Reports the task's main process `pid`, waited for by `supervisor_pid`.
fn report_started(dir: &Path, pid: u32, supervisor_pid: u32) -> io::Result<()> {
    report(
        dir,
        &StartReport::Started {
            pid,
            start_time: crate::procfs::start_time(pid)?,
            supervisor_pid,
            supervisor_start_time: crate::procfs::start_time(supervisor_pid)?,
        },
    )
}

fn report_failure(dir: &Path, spec: &LaunchSpec, e: &io::Error) -> io::Result<()> {
    let error = format!("cannot start {}: {e}", spec.program.display());
    log(&error);
    report(dir, &StartReport::Failed { error })
}

fn finish(dir: &Path, record: &record::ExitRecord) -> io::Result<()> {
    record::write_exit(dir, record)?;
    log(&format!(
        "task exited: code {} signal {} core {}",
        record.exit_code, record.signal, record.core_dumped
    ));
    Ok(())
}

/// Records the start report in the task's state directory (where a plugin that replaced one
/// that died during StartTask finds it), writes it as one JSON line on stdout (a pipe to the
/// plugin), then points stdout at /dev/null so a vanished plugin can never make us block or die
/// of SIGPIPE.
fn report(dir: &Path, report: &StartReport) -> io::Result<()> {
    if let Err(e) = record::write_json(dir, record::START_REPORT_FILE, report) {
        // Only a replacement plugin needs it: it then restarts the task instead of adopting it.
        log(&format!("cannot record the start report: {e}"));
    }
    let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut out = io::stdout().lock();
    // A plugin that died meanwhile is not an error for the task.
    let _ = out.write_all(&line).and_then(|()| out.flush());
    detach_stdout()
}

fn detach_stdout() -> io::Result<()> {
    let devnull = File::open("/dev/null")?;
    nix::unistd::dup2_stdout(&devnull).map_err(io::Error::from)
}

/// The supervisor ignores the signals a terminal or an agent's process group could deliver.
fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGPIPE, libc::SIGQUIT] {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}
