//! cgroup v1 directories the driver makes for a task where Nomad makes none (`pids` and `blkio`
//! for the pids and IO options): `<root>/<controller>/nomad/<alloc>.<task>`. The `nomad` parent
//! is made through the host's ledger of created cgroups when a fresh host lacks it, so it is
//! removed again with its last task (`devices::remove` does that for every `owned` directory).
//! Recorded in `TaskCgroups::owned`, so the task joins them and they go when it is destroyed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::created::Ledger;

/// Creates the task's directory in the v1 hierarchy of `controller`; errors name the controller
/// when the hierarchy is not mounted.
pub fn create(
    root: &Path,
    controller: &str,
    alloc_id: &str,
    task: &str,
    ledger: &Ledger,
) -> io::Result<PathBuf> {
    let hierarchy = root.join(controller);
    if !hierarchy.join("cgroup.procs").exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the cgroup v1 {controller} controller is not mounted at {}",
                hierarchy.display()
            ),
        ));
    }
    let parent = hierarchy.join("nomad");
    let dir = parent.join(format!("{alloc_id}.{task}"));
    ledger.with_parent(&parent, || match fs::create_dir(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", dir.display()),
        )),
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_parent_and_task_dir_only_in_a_mounted_hierarchy() {
        let root = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::at(root.path().join("ledger"));
        let err = create(root.path(), "pids", "a", "t", &ledger).expect_err("not mounted");
        assert!(
            err.to_string().contains("pids controller is not mounted"),
            "{err}"
        );
        fs::create_dir_all(root.path().join("pids")).expect("mkdir");
        fs::write(root.path().join("pids/cgroup.procs"), "").expect("procs");
        let dir = create(root.path(), "pids", "a", "t", &ledger).expect("create");
        assert_eq!(dir, root.path().join("pids/nomad/a.t"));
        assert!(dir.is_dir());
        // Idempotent; and the parent is ours, so it goes with its last task.
        assert_eq!(
            create(root.path(), "pids", "a", "t", &ledger).expect("again"),
            dir
        );
        fs::remove_dir(&dir).expect("rmdir");
        assert!(
            ledger
                .release(&root.path().join("pids/nomad"))
                .expect("release")
        );
    }
}
