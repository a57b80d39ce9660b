//! `nomad-driver-bpfexec __exec <task-state-dir> <pid> <tty:0|1> -- <command…>`: runs a command
//! inside a running task for `nomad alloc exec` and script checks. It joins the task's cgroups
//! and the namespaces of its main process (pid, ipc, net, mount: so it sees the task's root),
//! then forks (to land in the pid namespace), takes the terminal if there is one, drops to the
//! task's user and capabilities and execs. It exits with the command's status (128+signal when
//! killed), which the plugin reports as the exec result.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{CloneFlags, setns};

use super::record::{self, SPEC_FILE};
use super::spec::LaunchSpec;
use super::{child, privileges, ptyrelay, serve};

/// argv[1] that selects exec mode.
pub const EXEC_ARG: &str = "__exec";

pub fn main(args: &[OsString]) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfexec: {e}");
            // Like a shell: 126 cannot execute, 127 not found.
            if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            }
        }
    }
}

fn run(args: &[OsString]) -> io::Result<i32> {
    let usage =
        || io::Error::other("usage: __exec <task-state-dir> <pid> <tty:0|1> -- <command...>");
    let dir = PathBuf::from(args.first().ok_or_else(usage)?);
    let pid: u32 = args
        .get(1)
        .and_then(|a| a.to_str()?.parse().ok())
        .ok_or_else(usage)?;
    let tty = args.get(2).is_some_and(|a| a == "1");
    let command: Vec<OsString> = args
        .iter()
        .skip(3)
        .skip_while(|a| *a == "--")
        .cloned()
        .collect();
    let (program, rest) = command.split_first().ok_or_else(usage)?;
    let spec: LaunchSpec = record::read_json(&dir, SPEC_FILE)?
        .ok_or_else(|| io::Error::other("the task's launch spec is missing"))?;
    for file in &spec.cgroup_join {
        child::join_cgroup(file)?;
    }
    // Before the task's mount namespace hides them: the host's /proc (to name the callers of
    // refused system calls) and the task's record of them.
    let host = serve::host_files(&spec, &dir)?;
    let channel = spec
        .seccomp
        .as_ref()
        .map(|_| crate::seccomp::install::Channel::new())
        .transpose()?;
    let channel_fd = channel
        .as_ref()
        .map(|c| std::os::fd::AsRawFd::as_raw_fd(&c.child));
    if let Some(sb) = &spec.sandbox {
        join_namespaces(pid, spec.pid_ns, sb.ipc_ns, sb.netns.is_some())?;
        if !sb.pivot_root {
            nix::unistd::chroot(sb.root.as_path()).map_err(io::Error::from)?;
        }
    }
    let setup = spec.clone();
    let mut cmd = Command::new(program);
    cmd.args(rest).env_clear().envs(&spec.env);
    // SAFETY: runs in the forked child of this single-threaded helper before exec; syscalls and
    // allocations only.
    unsafe {
        cmd.pre_exec(move || {
            enter_child(&setup, tty)?;
            child::install_seccomp(&setup, channel_fd)
        });
    }
    let take_listener = |channel: &Option<crate::seccomp::install::Channel>, host| {
        let fd = match channel {
            Some(c) => c.receive().ok().flatten(),
            None => None,
        };
        serve::listener(fd, host, &spec)
    };
    let status = if tty {
        // A terminal from the task's own devpts, relayed to the plugin's.
        let pty = ptyrelay::open_inner()?;
        if let Some(id) = &spec.identity {
            // The terminal belongs to the user the command runs as.
            nix::unistd::fchown(
                &pty.slave,
                Some(nix::unistd::Uid::from_raw(id.uid)),
                Some(nix::unistd::Gid::from_raw(id.gid)),
            )
            .map_err(io::Error::from)?;
        }
        ptyrelay::take_outer_terminal()?;
        ptyrelay::copy_size(std::os::fd::AsFd::as_fd(&pty.master));
        let sigfd = ptyrelay::block_signals()?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        let mut child = cmd.spawn()?;
        let listener = take_listener(&channel, host);
        let status = ptyrelay::relay(pty.master, &sigfd, &mut child, listener)?;
        record::ExitRecord::from_status(status, 0)
    } else {
        let sigfd = serve::sigchld_fd()?;
        let child = cmd.spawn()?;
        let listener = take_listener(&channel, host);
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        serve::exit_record(serve::wait_main(pid, false, &sigfd, listener)?)
    };
    Ok(status.exit_code)
}

fn join_namespaces(pid: u32, pid_ns: bool, ipc_ns: bool, net_ns: bool) -> io::Result<()> {
    let open = |name: &str| {
        File::open(format!("/proc/{pid}/ns/{name}")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the task (pid {pid}) is not running: {e}"),
            )
        })
    };
    // Open all first: after joining the mount namespace /proc may be another one.
    let mut joins = Vec::new();
    if pid_ns {
        joins.push((open("pid")?, CloneFlags::CLONE_NEWPID));
    }
    if ipc_ns {
        joins.push((open("ipc")?, CloneFlags::CLONE_NEWIPC));
    }
    if net_ns {
        joins.push((open("net")?, CloneFlags::CLONE_NEWNET));
    }
    joins.push((open("mnt")?, CloneFlags::CLONE_NEWNS));
    for (fd, flag) in joins {
        setns(&fd, flag)
            .map_err(|e| io::Error::other(format!("joining the task's {flag:?} namespace: {e}")))?;
    }
    Ok(())
}

fn enter_child(spec: &LaunchSpec, tty: bool) -> io::Result<()> {
    nix::unistd::setsid().map_err(io::Error::from)?;
    if tty {
        // SAFETY: TIOCSCTTY on stdin (the pty slave) with an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let cwd = if spec.sandbox.is_some() || Path::new(&spec.cwd).is_dir() {
        spec.cwd.clone()
    } else {
        PathBuf::from("/")
    };
    std::env::set_current_dir(&cwd)?;
    privileges::apply(
        spec.identity.as_ref(),
        spec.caps.as_deref(),
        spec.no_new_privs,
    )
}
