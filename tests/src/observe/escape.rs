//! A throwaway cgroup outside every task (freezer hierarchy on v1, the unified root on v2) that
//! a task's process can move itself into to escape its task's cgroup, and a shell snippet for
//! such an escapee. Removed (members killed) on drop.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::isolation::host_is_cgroup_v2;
use crate::wait::{POLL, wait_for};
use crate::{procs, unique};

/// The throwaway cgroup (see the module docs).
pub struct TestCgroup {
    dir: PathBuf,
    /// Its path as `/proc/<pid>/cgroup` shows it.
    pub path: String,
}

impl TestCgroup {
    /// Creates it.
    pub fn create() -> Result<Self> {
        let name = unique("bpfexec-e2e-escape");
        let root = if host_is_cgroup_v2() {
            "/sys/fs/cgroup"
        } else {
            "/sys/fs/cgroup/freezer"
        };
        let dir = PathBuf::from(root).join(&name);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir,
            path: format!("/{name}"),
        })
    }

    fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The pids in it now.
    pub fn members(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Shell lines starting a background `sleep 1000` in a session of its own (a background job
    /// of a non-interactive shell is no group leader, so setsid execs in place), moving it into
    /// this cgroup once it is `sleep`, and writing its pid to `$NOMAD_ALLOC_DIR/<name>`.
    pub fn escapee(&self, name: &str) -> String {
        // Moved once it is `sleep` (a detector may see it the moment it arrives: moving a shell
        // that execs afterwards races with that, which emulated guests lose).
        format!(
            "setsid sleep 1000 &\nesc=$!\n\
             while [ \"$(cat /proc/$esc/comm 2>/dev/null)\" != sleep ]; do sleep 0.05; done\n\
             echo $esc > {procs}; echo $esc > \"$NOMAD_ALLOC_DIR/{name}\"\n",
            procs = self.procs_file().display()
        )
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Nothing but this test's jobs knows the directory: what is in it is ours.
        for pid in self.members() {
            let _ = procs::signal(pid, Signal::SIGKILL);
        }
        // A killed process stays in the cgroup until its parent reaps it.
        let removed = wait_for(Duration::from_secs(30), POLL, || {
            self.members().is_empty() && fs::remove_dir(&self.dir).is_ok()
        });
        if !removed && self.dir.exists() {
            eprintln!(
                "bpfexec-e2e: could not remove the test cgroup {} (members {:?})",
                self.dir.display(),
                self.members()
            );
        }
    }
}

/// Shell lines that wait until `$NOMAD_ALLOC_DIR/<name>` holds a pid whose comm is `sleep`.
/// Shell lines waiting until the process whose pid is in `$NOMAD_ALLOC_DIR/<name>` runs `sleep`.
#[must_use]
pub fn await_sleep(name: &str) -> String {
    format!(
        "while [ ! -s \"$NOMAD_ALLOC_DIR/{name}\" ]; do sleep 0.1; done\n\
         p=$(cat \"$NOMAD_ALLOC_DIR/{name}\")\n\
         while [ \"$(cat /proc/$p/comm 2>/dev/null)\" != sleep ]; do sleep 0.1; done\n"
    )
}
