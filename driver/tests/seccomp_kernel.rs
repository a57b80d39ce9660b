//! The seccomp filters on the real kernel (no root needed: the child sets no_new_privs, as an
//! isolated task does): under the built-in profile a child's refused calls fail with EPERM and
//! reach this process's listener, which records each distinct call once with the caller's pid
//! and command; clone3 fails with ENOSYS; ordinary work (a shell pipeline, fork and exec) runs.
//! Also measures what the filter costs an allowed call and a refused one.
#![allow(clippy::expect_used)] // Reason: a failed setup step must stop the test.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use bpfexec_driver::seccomp::{self, install, listener};
use bpfexec_driver::supervisor::serve;

/// Python making raw system calls (x86-64 numbers) and printing `name errno`, then timing
/// 200k getppid calls (allowed) and 2k keyctl calls (refused, a round trip to the listener).
const SCRIPT: &str = r#"
import ctypes, errno, time
libc = ctypes.CDLL(None, use_errno=True)
for name, nr, a in [("keyctl", 250, 0), ("bpf", 321, 0), ("unshare", 272, 0x10000000),
                    ("mount", 165, 0), ("clone3", 435, 0)]:
    ctypes.set_errno(0)
    rc = libc.syscall(nr, ctypes.c_long(a), 0, 0, 0, 0)
    print(name, errno.errorcode.get(ctypes.get_errno(), "OK") if rc < 0 else "OK", flush=True)
def per_call(nr, n):
    t = time.perf_counter_ns()
    for _ in range(n):
        libc.syscall(nr, 0, 0, 0, 0, 0)
    return (time.perf_counter_ns() - t) / n
print("allowed_ns", int(per_call(110, 200000)), flush=True)
print("refused_ns", int(per_call(250, 2000)), flush=True)
"#;

fn run(with_filter: bool) -> (String, Vec<listener::Blocked>) {
    let spec = seccomp::resolve(&bpfexec_driver::config::task::SeccompChoice::Default, &[])
        .expect("resolve")
        .expect("a filter");
    let dir = tempfile::tempdir().expect("tempdir");
    let channel = install::Channel::new().expect("socketpair");
    let child_end = channel.child.as_raw_fd();
    let sigfd = serve::sigchld_fd().expect("signalfd");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", SCRIPT]).stdout(Stdio::piped());
    let installed = spec.clone();
    // SAFETY: runs in the forked child before exec: prctl and seccomp(2) only, as the task's
    // own process does.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if with_filter {
                install::install(&installed, std::os::fd::BorrowedFd::borrow_raw(child_end))?;
            }
            Ok(())
        });
    }
    // Reaped by `serve::wait_main` below (waitpid on its pid).
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("spawn python3");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).expect("read"));
    let fd = channel.receive().expect("receive");
    assert_eq!(fd.is_some(), with_filter, "the listener is handed over");
    let host = listener::HostFiles::open(dir.path()).expect("host files");
    let l = fd.map(|fd| listener::Listener::new(fd, host, &spec.profile));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = serve::wait_main(pid, false, &sigfd, l).expect("wait");
    let out = reader.join().expect("reader");
    println!("{out}");
    assert!(
        matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    let (records, _) = listener::read_records(dir.path(), 0).expect("records");
    (out, records)
}

fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or("")
}

#[cfg(target_arch = "x86_64")]
#[test]
fn builtin_profile_refuses_reports_and_costs() {
    let (out, records) = run(true);
    for name in ["keyctl", "bpf", "unshare", "mount"] {
        assert_eq!(field(&out, name), "EPERM", "{name}");
        let rec = records
            .iter()
            .find(|r| r.syscall == name)
            .unwrap_or_else(|| panic!("{name} not recorded: {records:?}"));
        assert!(rec.pid > 0 && rec.comm.starts_with("python"), "{rec:?}");
    }
    assert_eq!(field(&out, "clone3"), "ENOSYS");
    assert!(
        records.iter().all(|r| r.syscall != "clone3"),
        "ENOSYS answers are not reported"
    );
    // 2000 refused keyctl calls: still one record.
    assert_eq!(records.iter().filter(|r| r.syscall == "keyctl").count(), 1);
    let (plain, none) = run(false);
    assert!(none.is_empty());
    assert_ne!(
        field(&plain, "keyctl"),
        "EPERM",
        "unfiltered keyctl reaches the kernel"
    );
    println!(
        "SECCOMP-COST allowed call (getppid via ctypes): {} ns filtered vs {} ns unfiltered; \
         refused call (listener round trip): {} ns vs {} ns unfiltered",
        field(&out, "allowed_ns"),
        field(&plain, "allowed_ns"),
        field(&out, "refused_ns"),
        field(&plain, "refused_ns"),
    );
}
