//! Mounting a task's filesystem images (`root_image`, `mount_image`) in its own mount namespace,
//! the way systemd's RootImage=/MountImages= do: each image through a read-only autoclear loop
//! device (`loopdev`), as squashfs, read-only, nosuid, nodev. They are staged under the task's
//! state directory before the task joins its cgroups (the devices cgroup would refuse the loop
//! device), then bound into the task's root: a root image's top-level entries replace the
//! `chroot_env` binds (so the image needs no mount points of its own for /proc, /dev, /local …);
//! other images at their targets. When the task's last process ends its mount namespace goes,
//! taking the mounts and with them the loop devices.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::loopdev;
use super::spec::{Bind, Sandbox};

fn staging(sb: &Sandbox, index: usize) -> PathBuf {
    sb.root.with_file_name("images").join(index.to_string())
}

fn err(what: impl std::fmt::Display, e: impl Into<io::Error>) -> io::Error {
    let e: io::Error = e.into();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Attaches and mounts every image at its staging directory (in the task's mount namespace).
pub fn stage(sb: &Sandbox) -> io::Result<()> {
    for (i, image) in sb.images.iter().enumerate() {
        let dir = staging(sb, i);
        fs::create_dir_all(&dir)?;
        let dev = loopdev::attach(&image.source)
            .map_err(|e| err(format!("image {}", image.source.display()), e))?;
        mount(
            Some(&dev.path),
            &dir,
            Some("squashfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| {
            err(
                format!(
                    "mounting image {} ({}) as squashfs",
                    image.source.display(),
                    dev.path.display()
                ),
                e,
            )
        })?;
        // The mount holds the device now; closing ours lets autoclear detach it with the mount.
        drop(dev);
    }
    Ok(())
}

fn is_root(sb: &Sandbox, i: usize) -> bool {
    sb.images.get(i).is_some_and(|m| m.target == Path::new("/"))
}

/// With a root image: its top-level entries in the task's root (on the tmpfs at `root`),
/// directories and files bound read-only, symlinks recreated.
pub fn bind_root(sb: &Sandbox, root: &Path) -> io::Result<()> {
    if !is_root(sb, 0) {
        return Ok(());
    }
    let image = staging(sb, 0);
    for entry in fs::read_dir(&image)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            symlink(fs::read_link(entry.path())?, root.join(&name))?;
        } else if kind.is_dir() || kind.is_file() {
            super::sandbox::bind(
                root,
                &Bind {
                    source: entry.path(),
                    target: Path::new("/").join(&name),
                    readonly: true,
                    nodev: true,
                },
            )?;
        }
    }
    Ok(())
}

/// The other images, bound at their targets in the task's root.
pub fn bind_mounts(sb: &Sandbox, root: &Path) -> io::Result<()> {
    for (i, image) in sb.images.iter().enumerate() {
        if is_root(sb, i) {
            continue;
        }
        super::sandbox::bind(
            root,
            &Bind {
                source: staging(sb, i),
                target: image.target.clone(),
                readonly: true,
                nodev: true,
            },
        )
        .map_err(|e| {
            err(
                format!(
                    "mount_image {} at {} (its parent must exist or lie on the task's own root)",
                    image.source.display(),
                    image.target.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}
