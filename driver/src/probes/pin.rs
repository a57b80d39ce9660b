//! bpffs pinning of the probe state that must outlive one driver process: mounts bpffs at
//! `/sys/fs/bpf` when needed (idempotently), lays out `<root>/v<PIN_LAYOUT_VERSION>/maps/<MAP>` and
//! `<root>/v<N>/links/<object-hash>/<program>`, and holds an exclusive `flock` on the version
//! directory so two drivers never share one ring buffer.
//!
//! Kernel contract: a pinned map or bpf_link lives as long as its bpffs file (or an open fd);
//! tracepoint links made through `BPF_LINK_CREATE` (perf-event links, Linux >= 5.15) can be pinned
//! with `BPF_OBJ_PIN`, so the attachment survives the process that created it.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use bpfexec_common::PIN_LAYOUT_VERSION;
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

/// Where bpffs is conventionally mounted.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Default pin root of the driver.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/bpfexec";
/// How long to wait for another driver process to release the pin directory.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why pinning is not available (the probes then run unpinned, and their state dies with the
/// driver process).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "bpffs is not mounted at {path} and mounting it failed ({source}); mount it yourself \
         (`mount -t bpf bpf {path}`) so probe state survives driver restarts, or set \
         bpf_pin_dir = \"\" to run without"
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("pin root {path} is not on bpffs; choose a directory under a bpffs mount")]
    NotBpffs { path: PathBuf },
    #[error("creating pin directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another bpfexec driver holds {path}; two drivers must not share pinned probe state \
         (give each its own pin root)"
    )]
    Busy { path: PathBuf },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pin directories of one driver, locked for this process.
#[derive(Debug)]
pub struct Pins {
    /// `<root>/v<N>`.
    pub version_dir: PathBuf,
    /// `<root>/v<N>/maps`.
    pub maps: PathBuf,
    /// `<root>/v<N>/links/<object-hash>`.
    pub links: PathBuf,
    /// Held for the lifetime of the probes.
    _lock: Flock<File>,
}

impl Pins {
    /// Mounts bpffs at `bpffs` if `root` is below it and not on bpffs yet, creates the
    /// directories and takes the lock. `object_hash` names the link directory.
    pub fn prepare(root: &Path, object_hash: u64, bpffs: &Path) -> Result<Self, PinError> {
        ensure_bpffs_at(root, bpffs)?;
        let version_dir = root.join(format!("v{PIN_LAYOUT_VERSION}"));
        let maps = version_dir.join("maps");
        let links = version_dir
            .join("links")
            .join(format!("{object_hash:016x}"));
        for dir in [&maps, &links] {
            fs::create_dir_all(dir).map_err(|source| PinError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let lock_err = |source| PinError::Lock {
            path: version_dir.clone(),
            source,
        };
        let mut dir = File::open(&version_dir).map_err(lock_err)?;
        // A previous driver process may still be shutting down: give it a moment.
        let deadline = Instant::now() + LOCK_WAIT;
        let lock = loop {
            match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((file, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    dir = file;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(PinError::Busy {
                        path: version_dir.clone(),
                    });
                }
                Err((_, errno)) => return Err(lock_err(io::Error::from(errno))),
            }
        };
        remove_other_versions(root, &version_dir);
        Ok(Self {
            version_dir,
            maps,
            links,
            _lock: lock,
        })
    }

    /// Pin path of map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps.join(name)
    }

    /// Pin path of the link of program `name`.
    pub fn link(&self, name: &str) -> PathBuf {
        self.links.join(name)
    }

    /// Unpins the links of other probe objects (older driver builds), which detaches them.
    pub fn remove_stale_links(&self) {
        let Some(parent) = self.links.parent() else {
            return;
        };
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path != self.links {
                match fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "unpinned probe links of an older driver build");
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot unpin stale probe links");
                    }
                }
            }
        }
    }

    /// Unpins the state maps (for a change of their sizes): the next load creates them afresh.
    pub fn remove_maps(&self) {
        let Ok(entries) = fs::read_dir(&self.maps) else {
            return;
        };
        for entry in entries.flatten() {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot unpin a probe map");
            }
        }
    }

    /// Unpins this build's links (they detach once no process holds them).
    pub fn remove_links(&self) -> io::Result<()> {
        match fs::remove_dir_all(&self.links) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Unpins the state of other pin layout versions (an older or newer driver's maps and links):
/// its links detach, so they stop feeding maps nobody reads. Tasks it tracked are re-seeded from
/// procfs on recovery.
fn remove_other_versions(root: &Path, ours: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_version = entry.file_name().to_str().is_some_and(|n| {
            n.len() > 1 && n.starts_with('v') && n[1..].bytes().all(|b| b.is_ascii_digit())
        });
        if is_version && path != ours {
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "unpinned probe state of another layout version");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot unpin stale probe state");
                }
            }
        }
    }
}

/// Removes everything pinned under `root` (links detach, maps are freed once unused). For
/// uninstalling and for tests; a running driver keeps its own file descriptors.
pub fn remove_all(root: &Path) -> io::Result<()> {
    match fs::remove_dir_all(root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `root` can live on bpffs: mounts bpffs at [`BPFFS_MOUNT`] when `root` is below it
/// and it is not mounted yet.
pub fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    ensure_bpffs_at(root, Path::new(BPFFS_MOUNT))
}

/// [`ensure_bpffs`] with another mount point (the plugin's `bpffs_dir`).
pub fn ensure_bpffs_at(root: &Path, mount_point: &Path) -> Result<(), PinError> {
    let existing = root.ancestors().find(|p| p.exists()).unwrap_or(mount_point);
    if is_bpffs(existing) {
        return Ok(());
    }
    if !root.starts_with(mount_point) {
        return Err(PinError::NotBpffs {
            path: root.to_path_buf(),
        });
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(source) = mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        flags,
        Some("mode=0700"),
    ) {
        // Someone else may have mounted it meanwhile.
        if is_bpffs(mount_point) {
            return Ok(());
        }
        return Err(PinError::Mount {
            path: mount_point.to_path_buf(),
            source,
        });
    }
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

/// FNV-1a 64 of the probe object: names the link directory, so links made by another build of the
/// probes are recognised as stale.
pub fn object_hash(bytes: &[u8]) -> u64 {
    hash_more(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a 64 hash `h` over `bytes`.
pub fn hash_more(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// True when `path` is a pinned bpf_link that can still be opened.
pub fn pinned_link_alive(path: &Path) -> bool {
    aya::programs::links::PinnedLink::from_pin(path).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn object_hash_is_fnv1a() {
        assert_eq!(object_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(object_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(object_hash(b"probe-a"), object_hash(b"probe-b"));
    }

    #[test]
    fn non_bpffs_roots_outside_sys_fs_bpf_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_bpffs(&dir.path().join("pins")).unwrap_err();
        assert!(matches!(err, PinError::NotBpffs { .. }), "{err}");
    }
}
