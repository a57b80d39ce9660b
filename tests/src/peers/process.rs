//! A peer's child process: its own temp dir (config, storage, `<peer>.log` with its stdout and
//! stderr), a readiness wait whose errors quote the log, and a stop BY PID (SIGTERM, then
//! SIGKILL after a grace period) on drop; the temp dir goes too unless `BPFEXEC_E2E_KEEP=1`.
//! Also lists the sockets the process listens on (`ss -Hlntup`), to prove it binds loopback only.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::Signal;

use crate::wait::{POLL, poll_until};
use crate::{env, procs, tail_file};

/// Log lines quoted in errors.
const LOG_TAIL: usize = 40;

/// How long a peer may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A peer's process (see the module docs): [`Prometheus::process`] and [`Jaeger::process`].
///
/// [`Prometheus::process`]: super::Prometheus::process
/// [`Jaeger::process`]: super::Jaeger::process
pub struct PeerProcess {
    peer: &'static str,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    log_path: PathBuf,
}

impl PeerProcess {
    /// A fresh temp dir for `peer` (`/tmp/bpfexec-e2e-<peer>-XXXX`).
    pub(crate) fn temp_dir(peer: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("bpfexec-e2e-{peer}-"))
            .tempdir()
            .with_context(|| format!("creating the {peer} temp dir"))
    }

    /// Spawns `cmd` with no stdin and its output appended to `<dir>/<peer>.log`.
    pub(crate) fn spawn(
        peer: &'static str,
        dir: tempfile::TempDir,
        cmd: &mut Command,
    ) -> Result<Self> {
        let root = dir.path().to_path_buf();
        let log_path = root.join(format!("{peer}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {peer}: {cmd:?}"))?;
        Ok(PeerProcess {
            peer,
            child: Some(child),
            dir: Some(dir),
            root,
            log_path,
        })
    }

    /// The pid, while the process runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its temp dir (config, storage, log).
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Its stdout and stderr.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `n` lines of its log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log_path, n)
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Polls `probe` until it says ready; fails early when the process exits. Errors carry the
    /// last observation and the log tail.
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut(&mut String) -> Result<bool>,
    ) -> Result<()> {
        let peer = self.peer;
        let result = poll_until(&format!("{peer} to be ready"), timeout, POLL, |last| {
            if let Some(status) = self.exit_status() {
                bail!("{peer} exited during start-up ({status})");
            }
            Ok(probe(last)?.then_some(()))
        });
        result.map_err(|e| {
            anyhow!(
                "{e:#}\n--- last {LOG_TAIL} lines of {} ---\n{}",
                self.log_path.display(),
                self.log_tail(LOG_TAIL)
            )
        })
    }

    /// SIGTERM to our pid, then SIGKILL after [`STOP_GRACE`]; reaps it. Idempotent.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = child.id() as i32;
        procs::signal(pid, Signal::SIGTERM)
            .with_context(|| format!("sending SIGTERM to {} (pid {pid})", self.peer))?;
        let deadline = Instant::now() + STOP_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} (pid {pid}) did not exit within {STOP_GRACE:?} of SIGTERM; killed it",
                    self.peer
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Local addresses (`127.0.0.1:9090`, `[::1]:4317`, `*:8888`) of every TCP and UDP socket
    /// the process listens on (`ss -Hlntup`).
    pub fn listeners(&self) -> Result<Vec<String>> {
        let pid = self.pid().context("the process is not running")?;
        listeners_of(pid)
    }

    /// Fails naming every listener of the process that is not on a loopback address; returns
    /// the listeners.
    pub fn ensure_loopback_only(&self) -> Result<Vec<String>> {
        let listeners = self.listeners()?;
        let outside: Vec<&String> = listeners.iter().filter(|a| !is_loopback(a)).collect();
        if !outside.is_empty() {
            bail!(
                "{} listens on non-loopback addresses {outside:?} (all its listeners: {listeners:?})",
                self.peer
            );
        }
        Ok(listeners)
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("bpfexec-e2e: stopping {}: {e:#}", self.peer);
        }
        if env::keep_temp_dirs()
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "bpfexec-e2e: kept {} dir {}",
                self.peer,
                dir.keep().display()
            );
        }
    }
}

/// The local addresses (`127.0.0.1:9090`, `[::1]:4317`, `*:8888`, ...) of the sockets `pid`
/// listens on, from `ss -Hlntup` (TCP listeners and unconnected UDP sockets).
pub(crate) fn listeners_of(pid: u32) -> Result<Vec<String>> {
    let out = Command::new("ss")
        .arg("-Hlntup")
        .stdin(Stdio::null())
        .output()
        .context("running `ss -Hlntup` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ss -Hlntup` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let marker = format!("pid={pid},");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&marker))
        // Netid State Recv-Q Send-Q Local Peer Process
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_owned))
        .collect())
}

/// Whether an `ss` local address (`127.0.0.1:80`, `[::1]:80`, `[::ffff:127.0.0.1]:80`,
/// `127.0.0.1%lo:80`) is on loopback; wildcards (`*`, `0.0.0.0`, `[::]`) are not.
pub fn is_loopback(addr: &str) -> bool {
    let Some((host, _port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.split('%').next().unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for addr in [
            "127.0.0.1:9090",
            "127.0.0.53%lo:53",
            "[::1]:4317",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in ["*:8888", "0.0.0.0:80", "[::]:80", "10.0.0.1:80", "garbage"] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }
}
