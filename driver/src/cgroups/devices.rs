//! cgroup v1 `devices` controller for isolated tasks, as Nomad's exec driver has it: every device
//! is denied except the few nodes a task's /dev holds (null, zero, full, random, urandom, tty, its
//! own devpts and ptmx) and those Nomad's device plugins assigned to it, with the permissions
//! Nomad passed (`r`, `w`, `m`). Nomad creates nothing in this hierarchy, so the driver creates
//! `devices/nomad/<alloc>.<task>` (and `devices/nomad` itself when missing, see `created`) at
//! start and removes them when the task is destroyed. cgroup v2 has no devices file interface
//! (it takes a BPF_CGROUP_DEVICE program).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::created::Ledger;

/// One `devices.allow` line: `<c|b> <major|*>:<minor|*> <access>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub block: bool,
    pub major: Option<u64>,
    pub minor: Option<u64>,
    pub access: String,
}

impl DeviceRule {
    const fn char_dev(major: u64, minor: Option<u64>) -> Self {
        Self {
            block: false,
            major: Some(major),
            minor,
            access: String::new(),
        }
    }

    /// The line the kernel takes.
    #[must_use]
    pub fn line(&self) -> String {
        let num = |n: Option<u64>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        let access = if self.access.is_empty() {
            "rwm"
        } else {
            self.access.as_str()
        };
        format!(
            "{} {}:{} {access}",
            if self.block { 'b' } else { 'c' },
            num(self.major),
            num(self.minor)
        )
    }

    /// The rule for a host device node and Nomad's permissions for it (letters other than
    /// `r`, `w` and `m` are dropped; none at all means `rwm`).
    pub fn for_node(host_path: &Path, permissions: &str) -> io::Result<Self> {
        let meta = fs::metadata(host_path)?;
        let kind = meta.file_type();
        if !kind.is_char_device() && !kind.is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a device node", host_path.display()),
            ));
        }
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        let access: String = permissions
            .chars()
            .filter(|c| matches!(c, 'r' | 'w' | 'm'))
            .collect();
        Ok(Self {
            block: kind.is_block_device(),
            major: Some(nix::sys::stat::major(rdev)),
            minor: Some(nix::sys::stat::minor(rdev)),
            access,
        })
    }
}

/// What every isolated task may use: the host nodes `/dev/<name>` of `nodes` (those that exist;
/// the sandbox binds only those) and the task's own devpts (`ptmx` 5:2 and the pts 136:*).
#[must_use]
pub fn standard_rules(nodes: &[&str]) -> Vec<DeviceRule> {
    nodes
        .iter()
        .filter_map(|n| DeviceRule::for_node(&Path::new("/dev").join(n), "rwm").ok())
        .chain([
            DeviceRule::char_dev(5, Some(2)),
            DeviceRule::char_dev(136, None),
        ])
        .collect()
}

/// Why a task's device rules could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("the cgroup v1 devices hierarchy is not mounted at {}", .0.display())]
    NoHierarchy(PathBuf),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The v1 devices hierarchy under the cgroup root.
#[must_use]
pub fn hierarchy(root: &Path) -> PathBuf {
    root.join("devices")
}

/// True when the v1 devices hierarchy is mounted under `root`.
#[must_use]
pub fn available(root: &Path) -> bool {
    hierarchy(root).join("devices.allow").exists()
}

/// `<root>/devices/nomad/<alloc>.<task>`.
#[must_use]
pub fn task_dir(root: &Path, alloc_id: &str, task: &str) -> PathBuf {
    hierarchy(root)
        .join("nomad")
        .join(format!("{alloc_id}.{task}"))
}

/// Creates the task's devices cgroup `<hierarchy>/<parent>/<task>` and writes its rules: deny
/// all, then allow `rules`. The parent (`nomad`, which Nomad does not make in this hierarchy) is
/// created when missing and recorded in `ledger`, so `remove` takes it away again once the last
/// task below it is gone.
pub fn create(dir: &Path, rules: &[DeviceRule], ledger: &Ledger) -> Result<(), DevicesError> {
    let (Some(parent), Some(hierarchy)) = (dir.parent(), dir.parent().and_then(Path::parent))
    else {
        return Err(DevicesError::NoHierarchy(dir.to_path_buf()));
    };
    if !hierarchy.join("devices.allow").exists() {
        return Err(DevicesError::NoHierarchy(hierarchy.to_path_buf()));
    }
    ledger.with_parent(parent, || match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", dir.display()),
        )),
    })?;
    write_rule(&dir.join("devices.deny"), "a")?;
    for rule in rules {
        write_rule(&dir.join("devices.allow"), &rule.line())?;
    }
    Ok(())
}

fn write_rule(file: &Path, line: &str) -> io::Result<()> {
    // Each write is one command to the kernel; append keeps a plain file (tests) whole too, and
    // create only matters there (cgroupfs files always exist).
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing {line:?} to {}: {e}", file.display()),
            )
        })
}

/// Removes the task's devices cgroup once its processes are gone (a dying process can hold it
/// for a moment, so it retries briefly), then its parent if bpfexec made it and no other task
/// is below it. A missing directory is fine.
pub fn remove(dir: &Path, ledger: &Ledger) -> io::Result<()> {
    remove_dir_retrying(dir)?;
    if let Some(parent) = dir.parent() {
        ledger.release(parent)?;
    }
    Ok(())
}

fn remove_dir_retrying(dir: &Path) -> io::Result<()> {
    let mut last = None;
    for _ in 0..20 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not remove the devices cgroup")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_the_kernel_expects() {
        let lines: Vec<String> = standard_rules(&["null", "no-such-node"])
            .iter()
            .map(DeviceRule::line)
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.contains(&"c 1:3 rwm".to_owned()));
        assert!(lines.contains(&"c 136:* rwm".to_owned()));
        let null = DeviceRule::for_node(Path::new("/dev/null"), "r-xw").expect("null");
        assert_eq!(null.line(), "c 1:3 rw");
        assert!(DeviceRule::for_node(Path::new("/etc/hostname"), "rwm").is_err());
    }

    #[test]
    fn create_makes_and_removes_the_parent_it_needs() {
        let root = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::at(root.path().join("ledger"));
        let dir = task_dir(root.path(), "a1", "web");
        assert!(matches!(
            create(&dir, &standard_rules(&["null"]), &ledger),
            Err(DevicesError::NoHierarchy(_))
        ));
        fs::create_dir_all(hierarchy(root.path())).expect("mkdir");
        fs::write(hierarchy(root.path()).join("devices.allow"), "").expect("root file");
        assert!(available(root.path()));
        create(&dir, &standard_rules(&["null", "zero"])[..2], &ledger).expect("create");
        assert_eq!(
            fs::read_to_string(dir.join("devices.deny")).expect("read"),
            "a"
        );
        assert_eq!(
            fs::read_to_string(dir.join("devices.allow")).expect("read"),
            "c 1:3 rwmc 1:5 rwm"
        );
        // A real cgroup directory's files go with it; the fake's must be removed by hand.
        fs::remove_file(dir.join("devices.deny")).expect("rm");
        fs::remove_file(dir.join("devices.allow")).expect("rm");
        remove(&dir, &ledger).expect("remove");
        assert!(!dir.exists());
        assert!(
            !dir.parent().expect("parent").exists(),
            "the parent the driver made goes too"
        );
    }
}
