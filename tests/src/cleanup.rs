//! Safety net run when an [`Agent`](crate::Agent) is dropped, after the agent is gone: kill the
//! processes that belong to THIS agent (never anything else), detach mounts left under its temp
//! dir, and remove the empty per-task cgroups Nomad created for its allocations. A process is
//! ours when one of these holds (all anchored on the agent's unique temp dir or alloc ids):
//!
//! * a task: `NOMAD_ALLOC_ID` in its environment is one of our allocations, or
//!   `NOMAD_ALLOC_DIR` points under our data dir (isolated tasks see `/alloc`, hence both);
//! * the driver plugin and its `__supervise` processes: executable or argv[0] in our plugin dir;
//! * Nomad helpers (`nomad logmon`, `nomad executor`): the Nomad binary with our temp dir in
//!   its argv or an open file under it;
//! * any descendant of a process that is ours.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::Signal;

use crate::config::AgentLayout;
use crate::procs;
use crate::wait::wait_for;

/// What identifies this agent's processes.
pub(crate) struct Owner<'a> {
    pub root: &'a Path,
    pub layout: &'a AgentLayout,
    pub nomad: &'a Path,
    pub alloc_ids: BTreeSet<String>,
}

/// Runs the whole safety net. `known_allocs` adds allocation ids learnt from the API to those
/// found in the data dir.
pub(crate) fn sweep(root: &Path, layout: &AgentLayout, nomad: &Path, known_allocs: &[String]) {
    let mut alloc_ids: BTreeSet<String> = alloc_ids(&layout.data_dir).into_iter().collect();
    alloc_ids.extend(known_allocs.iter().cloned());
    let owner = Owner {
        root,
        layout,
        nomad,
        alloc_ids,
    };
    kill_our_processes(&owner);
    unmount_under(root);
    remove_task_cgroups(&owner.alloc_ids);
}

/// Waits until the client removed every alloc dir (after a client GC).
pub(crate) fn wait_allocs_destroyed(data_dir: &Path, timeout: Duration) {
    wait_for(timeout, Duration::from_millis(200), || {
        alloc_ids(data_dir).is_empty()
    });
}

fn alloc_ids(data_dir: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(data_dir.join("alloc")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 36 && n.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .collect()
}

fn under(path: &str, dir: &Path) -> bool {
    Path::new(path).starts_with(dir)
}

impl Owner<'_> {
    fn owns(&self, pid: i32) -> bool {
        if let Some(env) = procs::environ(pid) {
            for kv in &env {
                if let Some(id) = kv.strip_prefix("NOMAD_ALLOC_ID=")
                    && self.alloc_ids.contains(id)
                {
                    return true;
                }
                if let Some(dir) = kv.strip_prefix("NOMAD_ALLOC_DIR=")
                    && under(dir, &self.layout.data_dir)
                {
                    return true;
                }
            }
        }
        let argv = procs::cmdline(pid).unwrap_or_default();
        let exe = procs::exe(pid);
        let exe_str = exe
            .as_ref()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        if under(&exe_str, &self.layout.plugin_dir)
            || argv
                .first()
                .is_some_and(|a| under(a, &self.layout.plugin_dir))
        {
            return true;
        }
        let is_nomad = exe.as_deref() == Some(self.nomad)
            || exe_str
                .strip_suffix(" (deleted)")
                .is_some_and(|e| Path::new(e) == self.nomad);
        let root_str = self.root.to_string_lossy();
        is_nomad
            && (argv.iter().any(|a| a.contains(root_str.as_ref()))
                || procs::open_files(pid)
                    .iter()
                    .any(|f| f.starts_with(self.root)))
    }

    /// Our processes plus all their descendants.
    pub(crate) fn processes(&self) -> Vec<i32> {
        let all = procs::find(|_| true);
        let mut ours: BTreeSet<i32> = all.iter().copied().filter(|p| self.owns(*p)).collect();
        loop {
            let before = ours.len();
            for p in &all {
                if !ours.contains(p) && procs::ppid(*p).is_some_and(|pp| ours.contains(&pp)) {
                    ours.insert(*p);
                }
            }
            if ours.len() == before {
                break;
            }
        }
        ours.into_iter().collect()
    }
}

fn kill_our_processes(owner: &Owner<'_>) {
    for round in 0..10 {
        let ours = owner.processes();
        if ours.is_empty() {
            return;
        }
        if round == 0 {
            eprintln!(
                "bpfexec-e2e: safety net: killing {} leftover process(es) of agent {}:\n{}",
                ours.len(),
                owner.root.display(),
                procs::describe(&ours)
            );
        }
        for pid in &ours {
            let _ = procs::signal(*pid, Signal::SIGKILL);
        }
        wait_for(Duration::from_secs(2), Duration::from_millis(50), || {
            ours.iter().all(|p| !procs::is_alive(*p))
        });
    }
}

/// Mount points (unescaped) listed in /proc/self/mountinfo that lie under `root`.
pub(crate) fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(code as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn unmount_under(root: &Path) {
    let mut mounts = mounts_under(root);
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in mounts {
        if let Err(e) = umount2(&m, MntFlags::MNT_DETACH) {
            eprintln!("bpfexec-e2e: safety net: umount {}: {e}", m.display());
        }
    }
}

/// Removes (rmdir, so only if empty) cgroup dirs named `<allocID>.<task>[.scope]` for our
/// allocation ids, at most 4 levels below /sys/fs/cgroup (where Nomad puts them on v1 and v2).
fn remove_task_cgroups(alloc_ids: &BTreeSet<String>) {
    if alloc_ids.is_empty() {
        return;
    }
    let mut found = Vec::new();
    collect_cgroups(Path::new("/sys/fs/cgroup"), 0, alloc_ids, &mut found);
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in found {
        if let Err(e) = fs::remove_dir(&dir) {
            eprintln!("bpfexec-e2e: safety net: rmdir {}: {e}", dir.display());
        }
    }
}

pub(crate) fn collect_cgroups(
    dir: &Path,
    depth: usize,
    ids: &BTreeSet<String>,
    found: &mut Vec<PathBuf>,
) {
    if depth > 4 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ids.iter().any(|id| name.starts_with(&format!("{id}."))) {
            subdirs(&path, found);
            found.push(path);
        } else {
            collect_cgroups(&path, depth + 1, ids, found);
        }
    }
}

/// Every directory below `dir` (child cgroups of a task cgroup are ours too).
fn subdirs(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            subdirs(&e.path(), found);
            found.push(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_octal;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
