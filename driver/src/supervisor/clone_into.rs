//! Starting the task's process directly inside its cgroup v2 scope: `clone3(2)` with
//! `CLONE_INTO_CGROUP` (Linux 5.7) places the child in the cgroup as it is created, so it never
//! migrates, and the kernel does not take the global threadgroup lock (and its RCU grace period)
//! that a `cgroup.procs` write takes. Then, as `std::process::Command` with a `pre_exec` hook would:
//! stdio set up, the caller's preparation run, `execve(2)`; a failure before or at the exec is
//! sent back through a close-on-exec pipe, with its message (std keeps only the errno).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, linux/sched.h).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the process runs and with which stdio.
pub struct Exec<'a> {
    pub program: &'a Path,
    pub argv0: &'a str,
    pub args: &'a [String],
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub stdout: File,
    pub stderr: File,
}

/// Why the fast path could not be taken; the caller falls back to fork + `cgroup.procs`.
#[derive(Debug)]
pub enum Unsupported {
    /// clone3 or CLONE_INTO_CGROUP is unknown to this kernel (ENOSYS, E2BIG, EINVAL).
    Kernel(io::Error),
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

/// Starts `exec` inside the cgroup directory `cgroup`, running `prepare` in the child before the
/// exec. Returns the child's pid, `Ok(Err(Unsupported))` when this kernel cannot do it, or the
/// error the child reported.
pub fn spawn(
    cgroup: &Path,
    exec: &Exec<'_>,
    prepare: impl FnOnce() -> io::Result<()>,
) -> io::Result<Result<u32, Unsupported>> {
    // Everything the child needs is allocated before the clone.
    let program = cstring(exec.program.as_os_str())?;
    let mut argv = vec![cstring(OsStr::new(exec.argv0))?];
    for a in exec.args {
        argv.push(cstring(OsStr::new(a))?);
    }
    let envp = exec
        .env
        .iter()
        .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
        .collect::<io::Result<Vec<_>>>()?;
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let stdin = File::open("/dev/null")?;
    let dir = File::open(cgroup)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", cgroup.display())))?;
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let clone_args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and with no stack behaves like fork(2): the child gets a
    // copy of this single-threaded process, so it may allocate and run arbitrary code. `args`
    // is a valid `struct clone_args` of the size passed.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const clone_args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL) => Ok(Err(Unsupported::Kernel(e))),
            _ => Err(io::Error::new(
                e.kind(),
                format!("clone3 into {}: {e}", cgroup.display()),
            )),
        };
    }
    if pid == 0 {
        drop(rx);
        let failure = child(&stdin, exec, prepare, &program, &argv_ptrs, &envp_ptrs);
        report_and_exit(tx, &failure);
    }
    drop(tx);
    drop(dir);
    let pid = pid as u32;
    match read_failure(rx)? {
        None => Ok(Ok(pid)),
        Some(e) => {
            // SAFETY: waitpid on our own child with a null status pointer.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
            Err(e)
        }
    }
}

/// In the child: stdio, preparation, exec. Returns only on failure.
fn child(
    stdin: &File,
    exec: &Exec<'_>,
    prepare: impl FnOnce() -> io::Result<()>,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    for (from, to) in [
        (stdin.as_raw_fd(), 0),
        (exec.stdout.as_raw_fd(), 1),
        (exec.stderr.as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 on descriptors this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            return io::Error::last_os_error();
        }
    }
    if let Err(e) = prepare() {
        return e;
    }
    // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays built before the clone,
    // alive until the exec replaces this process image.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// Child side: `<errno> <message>` down the pipe, then `_exit(127)`.
fn report_and_exit(tx: OwnedFd, e: &io::Error) -> ! {
    let mut tx = File::from(tx);
    let _ = write!(tx, "{} {e}", e.raw_os_error().unwrap_or(0));
    drop(tx);
    // SAFETY: ends the child without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(127) }
}

/// Parent side: nothing (EOF at the exec) or the child's failure.
fn read_failure(rx: OwnedFd) -> io::Result<Option<io::Error>> {
    let mut text = String::new();
    File::from(rx).read_to_string(&mut text)?;
    if text.is_empty() {
        return Ok(None);
    }
    let (errno, message) = text.split_once(' ').unwrap_or(("0", text.as_str()));
    let errno: i32 = errno.parse().unwrap_or(0);
    // The message already carries the OS error's text; keep its kind for the caller.
    let kind = io::Error::from_raw_os_error(errno).kind();
    Ok(Some(
        if errno != 0 && message == io::Error::from_raw_os_error(errno).to_string() {
            io::Error::from_raw_os_error(errno)
        } else {
            io::Error::new(kind, message.to_owned())
        },
    ))
}
