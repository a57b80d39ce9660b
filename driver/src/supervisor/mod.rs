//! The per-task supervisor: a small process (this binary re-executed as
//! `nomad-driver-bpfexec __supervise <task-state-dir>`) that starts the task's command, waits for
//! it and records its exit status on disk. It lives in its own session, outside the plugin's
//! process tree lifetime, so tasks keep running while Nomad restarts or kills the plugin.
//!
//! It is deliberately synchronous and single-threaded (no tokio): a few hundred KiB of RSS.

pub mod record;
pub mod spec;

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use record::{EXIT_FILE, ExitRecord, SPEC_FILE, StartReport};
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

fn log(msg: &str) {
    // stderr is the supervisor.log file the plugin opened for us.
    eprintln!("{} {msg}", record::now_ms());
}

fn run(dir: &Path) -> io::Result<()> {
    let spec: LaunchSpec = record::read_json(dir, SPEC_FILE)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "launch spec missing"))?;
    ignore_terminal_signals();
    let child = match spawn_task(&spec) {
        Ok(child) => child,
        Err(e) => {
            let error = format!("cannot start {}: {e}", spec.program.display());
            log(&error);
            report(&StartReport::Failed { error })?;
            return Ok(());
        }
    };
    let pid = child.id();
    let start_time = crate::procfs::start_time(pid)?;
    log(&format!("task {} started as pid {pid}", spec.task_id));
    report(&StartReport::Started { pid, start_time })?;
    let record = wait_for(child)?;
    // Whatever the main process left behind in its process group ends with it, as in exec.
    if let Err(e) = crate::procfs::signal_group(pid, libc::SIGKILL) {
        log(&format!(
            "could not kill the rest of process group {pid}: {e}"
        ));
    }
    record::write_json(dir, EXIT_FILE, &record)?;
    log(&format!(
        "task exited: code {} signal {} core {}",
        record.exit_code, record.signal, record.core_dumped
    ));
    Ok(())
}

/// Writes the start report as one JSON line on stdout (a pipe to the plugin), then points stdout
/// at /dev/null so a vanished plugin can never make us block or die of SIGPIPE.
fn report(report: &StartReport) -> io::Result<()> {
    let mut line = serde_json::to_vec(report).map_err(io::Error::other)?;
    line.push(b'\n');
    let mut out = io::stdout().lock();
    // A plugin that died meanwhile is not an error for the task.
    let _ = out.write_all(&line).and_then(|()| out.flush());
    let devnull = File::open("/dev/null")?;
    nix::unistd::dup2_stdout(&devnull).map_err(io::Error::from)?;
    Ok(())
}

/// The supervisor ignores the signals a terminal or an agent's process group could deliver.
fn ignore_terminal_signals() {
    for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGPIPE, libc::SIGQUIT] {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

fn spawn_task(spec: &LaunchSpec) -> io::Result<std::process::Child> {
    let stdout = open_log(&spec.stdout_path)?;
    let stderr = open_log(&spec.stderr_path)?;
    let procs_files: Vec<PathBuf> = spec.cgroup_procs.clone();
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(&spec.argv0)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child of this single-threaded process before exec;
    // it only makes syscalls (setsid, sigaction, sigprocmask, open/write/close) and touches no
    // lock another thread could hold.
    unsafe {
        cmd.pre_exec(move || prepare_child(&procs_files));
    }
    cmd.spawn()
}

/// Runs in the task's process between fork and exec.
fn prepare_child(procs_files: &[PathBuf]) -> io::Result<()> {
    // Own session and process group: signals to the group reach the whole task, and nothing
    // from the agent's terminal reaches it.
    nix::unistd::setsid().map_err(io::Error::from)?;
    reset_signals();
    for file in procs_files {
        join_cgroup(file)?;
    }
    Ok(())
}

fn reset_signals() {
    for sig in 1..32 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set passed to sigprocmask; no other pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const set, std::ptr::null_mut());
    }
}

fn join_cgroup(procs_file: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(procs_file)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", procs_file.display()),
            )
        })?;
    // "0" means the writing process itself.
    file.write_all(b"0").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot join cgroup {}: {e}", procs_file.display()),
        )
    })
}

fn open_log(path: &Path) -> io::Result<File> {
    // Nomad's logmon already has the read end of the FIFO open, so this does not block.
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log {}: {e}", path.display())))
}

fn wait_for(mut child: std::process::Child) -> io::Result<ExitRecord> {
    loop {
        match child.wait() {
            Ok(status) => return Ok(ExitRecord::from_status(status, record::now_ms())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
