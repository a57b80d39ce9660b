//! Kernel interfaces out of an isolated task's reach: after its /proc is mounted (and /sys, if
//! `chroot_env` binds it), the paths Nomad's exec driver and Docker make read-only are bound
//! read-only over themselves, and the ones they mask are hidden (a file under /dev/null, a
//! directory under an empty read-only tmpfs). The lists are the union of exec's (libcontainer
//! `ReadonlyPaths`/`MaskPaths`) and Docker's defaults. A task without CAP_SYS_ADMIN cannot undo
//! a mount, so even a root task cannot write a host sysctl through `/proc/sys`.

use std::io;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Paths a task may read but not write.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Paths hidden from a task (read as empty).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

fn err(what: &str, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Locks down the kernel paths under `root` (the task's root before pivot_root). Paths the
/// kernel does not have (or that are not mounted into the task, such as /sys by default) are
/// skipped: there is nothing to reach there.
pub fn lock_down(root: &Path) -> io::Result<()> {
    for path in READONLY_PATHS {
        let target = super::sandbox::inside(root, Path::new(path));
        if target.exists() {
            readonly(&target).map_err(|e| err(&format!("making {path} read-only"), e))?;
        }
    }
    for path in MASKED_PATHS {
        let target = super::sandbox::inside(root, Path::new(path));
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.is_dir() => {
                mask_dir(&target).map_err(|e| err(&format!("masking {path}"), e))?;
            }
            Ok(_) => mask_file(&target).map_err(|e| err(&format!("masking {path}"), e))?,
            Err(_) => {}
        }
    }
    Ok(())
}

fn readonly(target: &Path) -> nix::Result<()> {
    mount(
        Some(target),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

fn mask_dir(target: &Path) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0555"),
    )
}

fn mask_file(target: &Path) -> nix::Result<()> {
    mount(
        Some("/dev/null"),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
}

/// `mount_setattr(2)` attributes (include/uapi/linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Makes every mount below `target` (the bind itself and whatever the host had mounted inside
/// it, such as cgroupfs or bpffs under a bound /sys) read-only. A plain read-only remount only
/// touches the top mount of a recursive bind. Needs Linux 5.12 (`mount_setattr`); on older
/// kernels the submounts are remounted one by one from mountinfo.
pub fn readonly_recursive(target: &Path) -> io::Result<()> {
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a valid NUL-terminated path and a pointer to an initialised
    // mount_attr of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    for sub in submounts(target)? {
        mount(
            None::<&str>,
            &sub,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| err(&format!("remounting {} read-only", sub.display()), e))?;
    }
    Ok(())
}

/// Mount points strictly below `target`, from this process's mountinfo.
fn submounts(target: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| std::path::PathBuf::from(unescape(p)))
        .filter(|p| p != target && p.starts_with(target))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_cover_exec_and_docker_defaults() {
        for p in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
            assert!(READONLY_PATHS.contains(&p), "{p}");
        }
        for p in [
            "/proc/kcore",
            "/sys/firmware",
            "/proc/keys",
            "/proc/timer_list",
        ] {
            assert!(MASKED_PATHS.contains(&p), "{p}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }
}
