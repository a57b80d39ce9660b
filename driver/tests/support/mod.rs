//! Helpers shared by the privileged observer tests (each test binary uses a subset).
#![allow(dead_code)] // Reason: every test binary compiles this module and uses only part of it.
#![allow(clippy::expect_used)] // Reason: a failed setup step must stop the test.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use bpfexec_driver::probes::{ProbeOptions, ProbeSet, pin};
use nix::{sys::signal::Signal, unistd::Pid};

pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN) and CI=true forbids skipping"
    );
    println!("SKIP {test}: not root");
    false
}

/// A bpffs pin root that is removed (unpinning links and maps) when dropped.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/bpfexec-test-{}-{tag}",
            std::process::id()
        ));
        let _ = pin::remove_all(&p);
        Self(p)
    }

    pub fn load(&self) -> Arc<ProbeSet> {
        Arc::new(ProbeSet::load_with(&ProbeOptions::pinned_at(&self.0)).expect("loading probes"))
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = pin::remove_all(&self.0);
    }
}

/// Processes this test started, killed (by PID) when dropped.
#[derive(Default)]
pub struct Reaper(pub Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// `/bin/sh -c 'read go; <script>'`: the script starts only after `go`, once tracked.
pub fn spawn_gated(script: &str) -> (Child, ChildStdin) {
    let mut child = Command::new("/bin/sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning sh");
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

pub fn go(mut stdin: ChildStdin) {
    stdin.write_all(b"go\n").expect("writing go");
}
