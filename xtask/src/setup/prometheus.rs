//! Prometheus and promtool from Debian (used to check dashboards' `PromQL` against a real scrape).
//! Installed non-interactively; a daemon the package's postinst may start is stopped again,
//! by pid, and only if it was not running before the install.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::Item;
use crate::util;

pub fn ensure() -> Result<Item> {
    if let Some(detail) = found() {
        return Ok(Item::found("prometheus", detail));
    }
    if util::euid()? != 0 {
        bail!(
            "prometheus/promtool are missing and installing them needs root: `apt-get install prometheus`"
        );
    }
    if util::which("apt-get").is_none() {
        bail!(
            "prometheus/promtool are missing and there is no apt-get: install Prometheus 2.x by hand"
        );
    }
    let before = prometheus_pids();
    util::apt_install(&["prometheus"])?;
    for pid in prometheus_pids().difference(&before) {
        println!("[setup] stopping prometheus pid {pid}, started by the package install");
        stop(*pid)?;
    }
    match found() {
        Some(detail) => Ok(Item::installed("prometheus", detail)),
        None => {
            bail!("apt-get installed prometheus but `prometheus`/`promtool` are still not on PATH")
        }
    }
}

/// Both binaries on PATH and answering `--version` (promtool checks the dashboards' rules and
/// the e2e suite's Prometheus config).
fn found() -> Option<String> {
    let prometheus = util::which("prometheus")?;
    let promtool = util::which("promtool")?;
    let version = util::probe(Command::new(&prometheus).arg("--version"))?;
    util::probe(Command::new(&promtool).arg("--version"))?;
    Some(format!(
        "{} ({}), {}",
        prometheus.display(),
        util::first_line(&version),
        promtool.display()
    ))
}

/// Pids whose command name starts with `prometheus` (also matches prometheus-node-exporter).
fn prometheus_pids() -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("prometheus"))
        })
        .collect()
}

/// SIGTERM, then SIGKILL after 10 s.
fn stop(pid: u32) -> Result<()> {
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    util::run(Command::new("kill").args(["-TERM", &pid.to_string()]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        util::run(Command::new("kill").args(["-KILL", &pid.to_string()]))?;
    }
    Ok(())
}
