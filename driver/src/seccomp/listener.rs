//! The helper's side of a task's seccomp listener (seccomp_unotify(2)): receive a refused call,
//! find out who made it (host pid, command, uid), answer EPERM, and append one JSON line per
//! distinct call to `<task state dir>/seccomp.jsonl`, which the plugin turns into task events.
//! The file therefore grows by at most one line per syscall number, however often a task
//! retries. The answer is always an error: a listener never lets a refused call through.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::names;

/// Name of the record file in the task's state directory.
pub const RECORD_FILE: &str = "seccomp.jsonl";

// _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp),
// _IOW('!', 2, __u64) from linux/seccomp.h.
const NOTIF_RECV: libc::c_ulong = 0xC050_2100;
const NOTIF_SEND: libc::c_ulong = 0xC018_2101;
const NOTIF_ID_VALID: libc::c_ulong = 0x4008_2102;

#[repr(C)]
#[derive(Default)]
struct SeccompData {
    nr: i32,
    arch: u32,
    instruction_pointer: u64,
    args: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    data: SeccompData,
}

#[repr(C)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

/// One refused call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// `keyctl`, `open (32-bit x86)`, …
    pub syscall: String,
    pub nr: i32,
    pub arch: u32,
    /// Host pid of the caller (0 when it could not be resolved).
    pub pid: u32,
    pub comm: String,
    pub uid: Option<u32>,
    pub profile: String,
    pub at_ms: u64,
}

/// What a listener needs from the host, opened before the helper enters any of the task's
/// namespaces (an `alloc exec` helper joins the task's mount namespace before it forks).
pub struct HostFiles {
    /// The host's /proc.
    proc_dir: File,
    /// `<state dir>/seccomp.jsonl`, for appending (None when it cannot be opened: a full or
    /// read-only state dir must not stop the answers).
    record: Option<File>,
}

impl HostFiles {
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        Ok(Self {
            proc_dir: File::open("/proc")?,
            record: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(state_dir.join(RECORD_FILE))
                .ok(),
        })
    }
}

/// A task's listener, with the calls already recorded.
pub struct Listener {
    fd: OwnedFd,
    proc_dir: File,
    out: Option<File>,
    seen: HashSet<(u32, i32)>,
    profile: String,
}

impl Listener {
    pub fn new(fd: OwnedFd, host: HostFiles, profile: &str) -> Self {
        Self {
            fd,
            proc_dir: host.proc_dir,
            out: host.record,
            seen: HashSet::new(),
            profile: profile.to_owned(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Answers one pending notification. `Ok(false)` when none was pending (the caller polls).
    pub fn serve_one(&mut self) -> io::Result<bool> {
        let mut n = Notif::default();
        // SAFETY: NOTIF_RECV fills a zeroed seccomp_notif of the size encoded in the request.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_RECV, &raw mut n) } != 0 {
            let e = io::Error::last_os_error();
            // ENOENT: the caller died (or was interrupted) before we got to it.
            return match e.raw_os_error() {
                Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => Ok(false),
                _ => Err(e),
            };
        }
        let key = (n.data.arch, n.data.nr);
        let who = if self.seen.contains(&key) {
            None
        } else {
            Some(self.caller(n.pid))
        };
        // Only trust what was read about the caller if the call is still pending (the pid
        // was not reused meanwhile).
        // SAFETY: NOTIF_ID_VALID reads one u64 through the pointer.
        let valid =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_ID_VALID, &raw const n.id) } == 0;
        let resp = NotifResp {
            id: n.id,
            val: 0,
            error: -libc::EPERM,
            flags: 0,
        };
        // SAFETY: NOTIF_SEND reads a seccomp_notif_resp of the size encoded in the request.
        let _ = unsafe { libc::ioctl(self.fd.as_raw_fd(), NOTIF_SEND, &raw const resp) };
        if let Some((pid, comm, uid)) = who {
            self.seen.insert(key);
            let rec = Blocked {
                syscall: names::describe(n.data.arch, n.data.nr),
                nr: n.data.nr,
                arch: n.data.arch,
                pid: if valid { pid } else { 0 },
                comm: if valid { comm } else { String::new() },
                uid: uid.filter(|_| valid),
                profile: self.profile.clone(),
                at_ms: crate::supervisor::record::now_ms(),
            };
            if let (Some(out), Ok(mut line)) = (self.out.as_mut(), serde_json::to_vec(&rec)) {
                line.push(b'\n');
                // A full disk must not stop the answers; the refusal still happened.
                let _ = out.write_all(&line);
            }
        }
        Ok(true)
    }

    /// Host pid, command and uid of the caller `ns_pid` (a pid in the helper's own pid
    /// namespace): through a pidfd, whose fdinfo in the host's /proc gives the host pid.
    fn caller(&self, ns_pid: u32) -> (u32, String, Option<u32>) {
        // SAFETY: pidfd_open with a pid and no flags; the result is a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, ns_pid as libc::pid_t, 0) };
        if raw < 0 {
            return (0, String::new(), None);
        }
        // SAFETY: a descriptor pidfd_open just returned and nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        let host_pid = self
            .read(&format!("self/fdinfo/{}", pidfd.as_raw_fd()))
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Pid:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        if host_pid == 0 {
            return (0, String::new(), None);
        }
        let comm = self
            .read(&format!("{host_pid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let uid = self.read(&format!("{host_pid}/status")).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        });
        (host_pid, comm, uid)
    }

    fn read(&self, rel: &str) -> Option<String> {
        let path = std::ffi::CString::new(rel).ok()?;
        // SAFETY: openat relative to the /proc directory we hold, with a NUL-terminated path.
        let fd = unsafe {
            libc::openat(
                self.proc_dir.as_raw_fd(),
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor openat just returned and nothing else owns.
        let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        Some(s)
    }
}

/// Reads the records in `state_dir` from byte `from`; returns them and the new offset (only
/// whole lines are consumed).
pub fn read_records(state_dir: &Path, from: u64) -> io::Result<(Vec<Blocked>, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut f = match File::open(state_dir.join(RECORD_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), from)),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    // Bounded: at most one line per syscall number per listener.
    f.take(1 << 20).read_to_end(&mut buf)?;
    let (records, whole) = parse_records(&buf);
    Ok((records, from + whole as u64))
}

/// The records in the whole lines of `buf` (lines that do not parse are skipped) and how many
/// bytes those lines take.
pub fn parse_records(buf: &[u8]) -> (Vec<Blocked>, usize) {
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let records = buf[..whole]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    (records, whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_line_by_line_from_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = Blocked {
            syscall: "bpf".into(),
            nr: 321,
            arch: names::AUDIT_ARCH,
            pid: 7,
            comm: "x".into(),
            uid: Some(0),
            profile: "default".into(),
            at_ms: 1,
        };
        let mut text = serde_json::to_string(&rec).expect("json");
        text.push('\n');
        text.push_str("{\"partial\":");
        std::fs::write(dir.path().join(RECORD_FILE), &text).expect("write");
        let (got, off) = read_records(dir.path(), 0).expect("read");
        assert_eq!(got, vec![rec]);
        let (again, off2) = read_records(dir.path(), off).expect("read");
        assert!(again.is_empty());
        assert_eq!(off, off2);
        assert_eq!(
            read_records(&dir.path().join("none"), 5).expect("missing"),
            (vec![], 5)
        );
    }
}
