//! Installing a task's filters in its own process just before exec, and passing the listener's
//! file descriptor to the helper that waits for it (SCM_RIGHTS over a socket pair the helper
//! made before forking). Nothing the child does between the install and the exec can be refused
//! by the filters: a refusal would wait for a helper that is itself waiting for the exec.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::{Program, SeccompSpec};

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;

/// The helper's and the child's ends of the descriptor channel.
pub struct Channel {
    pub helper: OwnedFd,
    pub child: OwnedFd,
}

impl Channel {
    pub fn new() -> io::Result<Self> {
        let (helper, child) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        Ok(Self { helper, child })
    }

    /// Helper side, after the child exec'd: the listener it sent, if any.
    pub fn receive(&self) -> io::Result<Option<OwnedFd>> {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!(RawFd);
        let msg = match recvmsg::<()>(
            self.helper.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = c
                && let Some(fd) = fds.first()
            {
                // SAFETY: the kernel just installed this descriptor for us (SCM_RIGHTS); nothing
                // else owns it.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(*fd) }));
            }
        }
        Ok(None)
    }
}

fn seccomp(program: &Program, flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let filters: Vec<libc::sock_filter> = program
        .insns
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let len = u16::try_from(filters.len())
        .map_err(|_| io::Error::other("seccomp program longer than 65535 instructions"))?;
    let prog = libc::sock_fprog {
        len,
        filter: filters.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(2) reads `len` instructions from `prog.filter`, which `filters` keeps
    // alive for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &raw const prog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Child side: installs `spec`'s programs (no_new_privs must be set, or the process must hold
/// CAP_SYS_ADMIN) and sends the listener to the helper through `channel` (the child's end).
pub fn install(spec: &SeccompSpec, channel: BorrowedFd<'_>) -> io::Result<()> {
    let mut listener = None;
    for p in &spec.programs {
        if p.listener {
            let fd = seccomp(p, SECCOMP_FILTER_FLAG_NEW_LISTENER).map_err(|e| {
                io::Error::new(e.kind(), format!("installing the seccomp filter: {e}"))
            })?;
            // SAFETY: with NEW_LISTENER, seccomp(2) returns a new descriptor we now own.
            listener = Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        } else {
            seccomp(p, 0).map_err(|e| {
                io::Error::new(e.kind(), format!("installing the seccomp filter: {e}"))
            })?;
        }
    }
    if let Some(fd) = listener {
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(
            channel.as_raw_fd(),
            &[IoSlice::new(b"L")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| io::Error::other(format!("handing the seccomp listener over: {e}")))?;
    }
    Ok(())
}
