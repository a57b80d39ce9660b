//! The ledger of shared cgroup directories a bpfexec driver created (the v1 `devices/nomad`
//! parent, which Nomad does not make): one marker file per directory in a host-wide folder under
//! /run (gone at reboot, like the cgroups), and an exclusive `flock(2)` on that folder around
//! every creation and removal, so any driver process on the host removes a parent only if a
//! bpfexec driver made it, only once it is empty (rmdir(2) refuses a cgroup with children), and
//! never while another task is being placed below it.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the markers live on a real host.
pub const HOST_LEDGER: &str = "/run/bpfexec-created-cgroups";

/// The ledger folder and its lock.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// The host-wide ledger every bpfexec driver shares.
    #[must_use]
    pub fn host() -> Self {
        Self::at(HOST_LEDGER)
    }

    /// A ledger in `dir` (tests use a temporary one).
    #[must_use]
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn lock(&self) -> io::Result<Flock<File>> {
        fs::create_dir_all(&self.dir)?;
        let dir = File::open(&self.dir)?;
        Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| io::Error::from(e))
    }

    /// The marker of `cgroup`: its path with `/` spelled `%`.
    fn marker(&self, cgroup: &Path) -> PathBuf {
        self.dir
            .join(cgroup.to_string_lossy().trim_matches('/').replace('/', "%"))
    }

    /// Makes `parent` if it is missing (recording that bpfexec made it), then runs `below` (which
    /// creates a directory inside it) under the lock, so a concurrent `release` cannot remove the
    /// parent in between. Returns `below`'s result.
    pub fn with_parent<T>(
        &self,
        parent: &Path,
        below: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let _lock = self.lock().map_err(|e| context(&e, "locking", &self.dir))?;
        match fs::create_dir(parent) {
            Ok(()) => {
                File::create(self.marker(parent))
                    .map_err(|e| context(&e, "recording", &self.marker(parent)))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(context(&e, "creating", parent)),
        }
        below()
    }

    /// Removes `parent` if bpfexec made it and it is empty now. Returns whether it was removed;
    /// a parent still in use (or not ours) stays.
    pub fn release(&self, parent: &Path) -> io::Result<bool> {
        let marker = self.marker(parent);
        if !marker.exists() {
            return Ok(false);
        }
        let _lock = self.lock().map_err(|e| context(&e, "locking", &self.dir))?;
        if !marker.exists() {
            return Ok(false);
        }
        match fs::remove_dir(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // EBUSY on cgroupfs, ENOTEMPTY on a plain directory: someone's task is still below.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::ENOTEMPTY | libc::EEXIST)
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(context(&e, "removing", parent)),
        }
        fs::remove_file(&marker).map_err(|e| context(&e, "removing", &marker))?;
        Ok(true)
    }
}

fn context(e: &io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_parent_we_made_and_emptied_is_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::at(tmp.path().join("ledger"));
        let ours = tmp.path().join("devices/nomad");
        fs::create_dir_all(ours.parent().expect("parent")).expect("mkdir");
        ledger
            .with_parent(&ours, || fs::create_dir(ours.join("a.t")))
            .expect("create");
        assert!(!ledger.release(&ours).expect("busy"), "a child is inside");
        fs::remove_dir(ours.join("a.t")).expect("rmdir child");
        assert!(ledger.release(&ours).expect("release"));
        assert!(!ours.exists());
        assert!(!ledger.release(&ours).expect("again"), "marker gone");

        // A parent that existed before is used and never removed.
        let theirs = tmp.path().join("devices/theirs");
        fs::create_dir_all(&theirs).expect("mkdir");
        ledger
            .with_parent(&theirs, || fs::create_dir(theirs.join("b.t")))
            .expect("create");
        fs::remove_dir(theirs.join("b.t")).expect("rmdir child");
        assert!(!ledger.release(&theirs).expect("not ours"));
        assert!(theirs.exists());
    }

    #[test]
    fn a_missing_hierarchy_is_an_error_naming_the_path() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::at(tmp.path().join("ledger"));
        let parent = tmp.path().join("no-hierarchy/nomad");
        let err = ledger
            .with_parent(&parent, || Ok(()))
            .expect_err("no grandparent");
        assert!(err.to_string().contains("no-hierarchy/nomad"), "{err}");
    }
}
