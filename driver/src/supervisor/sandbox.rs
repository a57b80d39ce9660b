//! Assembling an isolated task's world inside the task process, between fork and exec: join the
//! group network namespace, unshare mount (and ipc) namespaces, build a root on a small tmpfs from
//! read-only bind mounts of `chroot_env` plus the task's own directories (no copies, no hard
//! links, so it costs the same whatever the size of `/usr`), mount /proc and a minimal /dev, then
//! lock the kernel's knobs in /proc and /sys out of reach, pivot_root (or chroot) and make the
//! root read-only.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::spec::{Bind, Sandbox};

/// The host device nodes bound into every isolated task's /dev (the devices cgroup allows
/// exactly these, plus the task's own devpts).
pub const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn err(what: impl std::fmt::Display, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub(super) fn inside(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// Joins the group network namespace and unshares the mount (and ipc) namespaces, with mounts
/// private; `enter` then builds the root. Separate, so images can be mounted in between.
pub fn enter_namespaces(sb: &Sandbox) -> io::Result<()> {
    if let Some(ns) = &sb.netns {
        let f = File::open(ns)
            .map_err(|e| err(format!("opening network namespace {}", ns.display()), e))?;
        setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| err("joining the group network namespace", e))?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS;
    if sb.ipc_ns {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    unshare(flags).map_err(|e| err("unsharing mount/ipc namespaces", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("making mounts private", e))
}

/// Enters the sandbox in one go (namespaces, images, root); on return the process sees only its
/// own root.
pub fn enter(sb: &Sandbox) -> io::Result<()> {
    enter_namespaces(sb)?;
    super::images::stage(sb)?;
    enter_root(sb)
}

/// Builds the task's root and enters it (after `enter_namespaces` and `images::stage`); on
/// return the process sees only its own root.
pub fn enter_root(sb: &Sandbox) -> io::Result<()> {
    let root = &sb.root;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| err(format!("mounting the task root on {}", root.display()), e))?;
    super::images::bind_root(sb, root)?;
    for b in &sb.mounts {
        bind(root, b)?;
    }
    super::images::bind_mounts(sb, root)?;
    mount_proc(root)?;
    mount_dev(root)?;
    for d in &sb.devices {
        bind(root, d)?;
    }
    super::kernelfs::lock_down(root)?;
    if sb.pivot_root {
        pivot(root)?;
    } else {
        nix::unistd::chroot(root).map_err(|e| err("chroot", e))?;
        std::env::set_current_dir("/")?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| err("making the task root read-only", e))
}

pub(super) fn bind(root: &Path, b: &Bind) -> io::Result<()> {
    let target = inside(root, &b.target);
    let meta = fs::metadata(&b.source)
        .map_err(|e| err(format!("bind source {}", b.source.display()), e))?;
    if meta.is_dir() {
        fs::create_dir_all(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        if !target.exists() {
            File::create(&target)?;
        }
    }
    mount(
        Some(&b.source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        err(
            format!(
                "bind-mounting {} on {}",
                b.source.display(),
                b.target.display()
            ),
            e,
        )
    })?;
    if b.readonly || b.nodev {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
        if b.readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        if b.nodev {
            flags |= MsFlags::MS_NODEV;
        }
        // A remount must keep the locked flags of the source mount.
        if let Ok(st) = nix::sys::statvfs::statvfs(&target) {
            use nix::sys::statvfs::FsFlags;
            for (f, m) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            ] {
                if st.flags().contains(f) {
                    flags |= m;
                }
            }
        }
        mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(|e| {
            err(
                format!("restricting {} (read-only/nodev)", b.target.display()),
                e,
            )
        })?;
        if b.readonly {
            // The host's mounts inside a read-only bind (cgroupfs or bpffs under /sys, say)
            // must not stay writable.
            super::kernelfs::readonly_recursive(&target).map_err(|e| {
                err(
                    format!("making everything under {} read-only", b.target.display()),
                    e,
                )
            })?;
        }
    }
    Ok(())
}

fn mount_proc(root: &Path) -> io::Result<()> {
    let proc_dir = root.join("proc");
    fs::create_dir_all(&proc_dir)?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| err("mounting /proc", e))
}

fn mount_dev(root: &Path) -> io::Result<()> {
    let dev = root.join("dev");
    fs::create_dir_all(&dev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| err("mounting /dev", e))?;
    for node in DEV_NODES {
        let host = Path::new("/dev").join(node);
        if host.exists() {
            let target = dev.join(node);
            File::create(&target)?;
            mount(
                Some(&host),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| err(format!("binding /dev/{node}"), e))?;
        }
    }
    let pts = dev.join("pts");
    fs::create_dir_all(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| err("mounting /dev/pts", e))?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    fs::create_dir_all(&shm)?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(|e| err("mounting /dev/shm", e))?;
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(name))?;
    }
    Ok(())
}

fn pivot(root: &Path) -> io::Result<()> {
    let old = root.join(".oldroot");
    fs::create_dir_all(&old)?;
    nix::unistd::pivot_root(root, &old).map_err(|e| err("pivot_root", e))?;
    std::env::set_current_dir("/")?;
    umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| err("detaching the old root", e))?;
    fs::remove_dir("/.oldroot")
}

/// Orders bind mounts so a parent is mounted before anything inside it.
pub fn order(mut mounts: Vec<Bind>) -> Vec<Bind> {
    mounts.sort_by_key(|b| b.target.components().count());
    mounts
}

/// Maps a path as the task sees it to the host path behind it (longest matching mount).
pub fn host_path(mounts: &[Bind], inside_path: &Path) -> Option<PathBuf> {
    mounts
        .iter()
        .filter_map(|b| {
            inside_path
                .strip_prefix(&b.target)
                .ok()
                .map(|rest| (b, rest))
        })
        .max_by_key(|(b, _)| b.target.components().count())
        .map(|(b, rest)| {
            if rest.as_os_str().is_empty() {
                b.source.clone()
            } else {
                b.source.join(rest)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str) -> Bind {
        Bind {
            source: src.into(),
            target: dst.into(),
            readonly: true,
            nodev: false,
        }
    }

    #[test]
    fn parents_mount_first() {
        let m = order(vec![
            b("/h/x", "/local/data/x"),
            b("/h/local", "/local"),
            b("/usr", "/usr"),
        ]);
        assert_eq!(m[2].target, PathBuf::from("/local/data/x"));
    }

    #[test]
    fn maps_task_paths_to_host_paths() {
        let m = vec![
            b("/usr", "/usr"),
            b("/data/alloc/a/t/local", "/local"),
            b("/srv/v", "/local/vol"),
        ];
        assert_eq!(
            host_path(&m, Path::new("/usr/bin/env")),
            Some("/usr/bin/env".into())
        );
        assert_eq!(
            host_path(&m, Path::new("/local/run.sh")),
            Some("/data/alloc/a/t/local/run.sh".into())
        );
        assert_eq!(
            host_path(&m, Path::new("/local/vol/f")),
            Some("/srv/v/f".into())
        );
        assert_eq!(
            host_path(&m, Path::new("/local")),
            Some("/data/alloc/a/t/local".into())
        );
        assert_eq!(host_path(&m, Path::new("/opt/x")), None);
    }
}
