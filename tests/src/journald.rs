//! A real systemd-journald (Debian's binary) for the journald logging checks, started by hand
//! (this machine runs no systemd as PID 1) in a journal namespace of its own,
//! `systemd-journald <namespace>`: it binds `/run/systemd/journal.<namespace>/socket` and writes
//! `/var/log/journal/<machine-id>.<namespace>` (or `/run/log/journal/…`), so the host's own
//! logging is not touched. Read back with `journalctl --namespace=<namespace>`. Dropping it stops
//! that journald (by its pid) and removes both directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::wait::{POLL, poll_until};

/// Where Debian installs journald.
const JOURNALD: &str = "/lib/systemd/systemd-journald";

pub struct Journald {
    namespace: String,
    child: Child,
}

impl Journald {
    /// Starts journald in namespace `bpfexec-e2e-<pid>` and waits for its socket.
    pub fn start() -> Result<Self> {
        if !Path::new(JOURNALD).exists() {
            bail!(
                "{JOURNALD} is missing: install Debian's systemd package (cargo xtask setup does)"
            );
        }
        let namespace = format!("bpfexec-e2e-{}", std::process::id());
        let child = Command::new(JOURNALD)
            .arg(&namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {JOURNALD} {namespace}"))?;
        let me = Self { namespace, child };
        let socket = me.socket();
        poll_until(
            &format!("journald's socket {}", socket.display()),
            Duration::from_secs(20),
            POLL,
            |_| Ok(socket.exists().then_some(())),
        )?;
        Ok(me)
    }

    /// The namespace's native protocol socket (the driver's `journald_socket`).
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("socket")
    }

    fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/systemd/journal.{}", self.namespace))
    }

    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The entries matching `field=value` (`journalctl -o json`), oldest first.
    pub fn entries(&self, field: &str, value: &str) -> Result<Vec<Value>> {
        entries(&self.namespace, field, value)
    }
}

/// The entries of journal `namespace` matching `field=value` (`journalctl -o json`), oldest
/// first.
pub fn entries(namespace: &str, field: &str, value: &str) -> Result<Vec<Value>> {
    let out = Command::new("journalctl")
        .arg(format!("--namespace={namespace}"))
        .args(["--no-pager", "-o", "json"])
        .arg(format!("{field}={value}"))
        .output()
        .context("running journalctl")?;
    if !out.status.success() {
        bail!(
            "journalctl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("journalctl printed {l:?}")))
        .collect()
}

impl Drop for Journald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.run_dir());
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            for base in ["/var/log/journal", "/run/log/journal"] {
                let dir = Path::new(base).join(format!("{}.{}", id.trim(), self.namespace));
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
