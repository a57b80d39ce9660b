//! Starting the task's own process: open its log FIFOs, fork (on cgroup v2 straight into its
//! scope), and between fork and exec put it in its own session, its cgroups and its sandbox, set
//! oom_score_adj, drop privileges and install its seccomp filters.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::spec::{LaunchSpec, SelfTrack};
use super::{clone_into, privileges, sandbox};

/// The task's process, and the seccomp listener it handed over (when it has a filter).
pub struct Spawned {
    pub pid: u32,
    pub listener: Option<OwnedFd>,
}

/// Starts the task; its stdout and stderr are the journal relay's pipes when given, else the
/// log FIFOs Nomad made.
pub fn spawn(
    spec: &LaunchSpec,
    journal: Option<&super::journalrelay::Streams>,
) -> io::Result<Spawned> {
    let (stdout, stderr) = match journal {
        Some(s) => (
            File::from(s.stdout.try_clone()?),
            File::from(s.stderr.try_clone()?),
        ),
        None => (open_log(&spec.stdout_path)?, open_log(&spec.stderr_path)?),
    };
    let channel = spec
        .seccomp
        .as_ref()
        .map(|_| crate::seccomp::install::Channel::new())
        .transpose()?;
    let channel_fd = channel.as_ref().map(|c| c.child.as_raw_fd());
    let pid = start(spec, stdout, stderr, channel_fd)?;
    let listener = match &channel {
        Some(c) => c.receive()?,
        None => None,
    };
    Ok(Spawned { pid, listener })
}

/// Starts the process and returns its pid. On cgroup v2 it is created directly inside its scope
/// (`clone_into`); elsewhere, or on a kernel without `CLONE_INTO_CGROUP`, it is forked and joins
/// its cgroups before the exec.
fn start(
    spec: &LaunchSpec,
    stdout: File,
    stderr: File,
    channel_fd: Option<RawFd>,
) -> io::Result<u32> {
    if let Some(scope) = &spec.cgroup_into {
        let exec = clone_into::Exec {
            program: &spec.program,
            argv0: &spec.argv0,
            args: &spec.args,
            env: &spec.env,
            stdout: stdout.try_clone()?,
            stderr: stderr.try_clone()?,
        };
        match clone_into::spawn(scope, &exec, || prepare(spec, channel_fd, Some(scope)))? {
            Ok(pid) => return Ok(pid),
            Err(clone_into::Unsupported::Kernel(e)) => super::log(&format!(
                "clone3(CLONE_INTO_CGROUP) is not available ({e}): joining the cgroup after fork"
            )),
        }
    }
    let setup = spec.clone();
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(&spec.argv0)
        .args(&spec.args)
        .env_clear()
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: the closure runs in the forked child of this single-threaded process before exec;
    // it only makes syscalls and allocates, and no other thread can hold a lock it needs.
    unsafe {
        cmd.pre_exec(move || prepare(&setup, channel_fd, None));
    }
    // The Child handle is not needed: the caller waits by pid (std neither kills nor reaps on
    // drop).
    cmd.spawn().map(|child| child.id())
}

/// Runs in the task's process between fork and exec; a process created inside `cloned_into`
/// already is in that cgroup.
fn prepare(
    spec: &LaunchSpec,
    seccomp_channel: Option<RawFd>,
    cloned_into: Option<&Path>,
) -> io::Result<()> {
    // Own session and process group: signals to the group reach the whole task, and nothing
    // from the agent's terminal reaches it.
    nix::unistd::setsid().map_err(io::Error::from)?;
    reset_signals();
    if let Some(sb) = &spec.sandbox {
        sandbox::enter_namespaces(sb)?;
        // Before the cgroup joins: the task's devices cgroup would refuse the loop devices.
        super::images::stage(sb)?;
    }
    for file in &spec.cgroup_join {
        if cloned_into.is_none_or(|dir| file.parent() != Some(dir)) {
            join_cgroup(file)?;
        }
    }
    if let Some(track) = &spec.self_track {
        // Best effort: if it fails, the plugin registers the process right after the start and
        // only what happened before that is missed.
        let _ = register_with_probes(track);
    }
    if let Some(adj) = spec.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("setting oom_score_adj {adj}: {e}")))?;
    }
    if let Some(sb) = &spec.sandbox {
        sandbox::enter_root(sb)?;
    }
    std::env::set_current_dir(&spec.cwd)
        .map_err(|e| io::Error::new(e.kind(), format!("work_dir {}: {e}", spec.cwd.display())))?;
    privileges::apply(
        spec.identity.as_ref(),
        spec.caps.as_deref(),
        spec.no_new_privs,
    )?;
    install_seccomp(spec, seccomp_channel)
}

/// Last step before exec: the task's seccomp filters (after no_new_privs).
pub fn install_seccomp(spec: &LaunchSpec, channel: Option<RawFd>) -> io::Result<()> {
    if let (Some(sc), Some(fd)) = (&spec.seccomp, channel) {
        // SAFETY: `fd` is the child's end of the channel, open for the whole pre-exec phase
        // (the parent keeps it until spawn returns).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        crate::seccomp::install::install(sc, fd)?;
    }
    Ok(())
}

/// Registers this process (its host pid: /proc is still the host's here, even in a new pid
/// namespace) with the probes, before the sandbox hides bpffs and before the exec.
fn register_with_probes(track: &SelfTrack) -> io::Result<()> {
    let pid: u32 = std::fs::read_link("/proc/self")?
        .to_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("/proc/self is not a pid"))?;
    let now_ns = crate::observer::monotonic_ns();
    crate::probes::kernel::register_pinned(&track.maps_dir, track.key, pid, now_ns)
        .map_err(io::Error::other)
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

pub fn join_cgroup(join_file: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(join_file)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", join_file.display()),
            )
        })?;
    // "0" means the writing process itself.
    file.write_all(b"0").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot join cgroup {}: {e}", join_file.display()),
        )
    })
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    // Nomad's logmon already has the read end of the FIFO open, so this does not block.
    OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log {}: {e}", path.display())))
}
