//! The suite's preconditions: the binaries it runs (`NOMAD_BIN`, `DRIVER_BIN`, and for the
//! telemetry peers `PROMETHEUS_BIN`, `PROMTOOL_BIN`, `JAEGER_BIN`, all set by `cargo xtask test`),
//! root, and free loopback ports.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Environment variable naming the Nomad agent binary.
pub const NOMAD_BIN: &str = "NOMAD_BIN";
/// Environment variable naming the `nomad-driver-bpfexec` binary under test.
pub const DRIVER_BIN: &str = "DRIVER_BIN";
/// Environment variable naming Debian's Prometheus binary (the real scrape peer).
pub const PROMETHEUS_BIN: &str = "PROMETHEUS_BIN";
/// Environment variable naming `promtool` (from the same Debian package).
pub const PROMTOOL_BIN: &str = "PROMTOOL_BIN";
/// Environment variable naming the Jaeger binary `cargo xtask setup` builds (the real OTLP peer).
pub const JAEGER_BIN: &str = "JAEGER_BIN";
/// Set to `1` to keep each agent's temp dir (data dir, logs) after the test, for debugging.
pub const KEEP_ENV: &str = "BPFEXEC_E2E_KEEP";

/// The Nomad agent binary from `NOMAD_BIN`.
pub fn nomad_bin() -> Result<PathBuf> {
    executable_from_env(NOMAD_BIN, "the Nomad 1.10.5 agent binary")
}

/// The driver binary from `DRIVER_BIN`.
pub fn driver_bin() -> Result<PathBuf> {
    executable_from_env(DRIVER_BIN, "the nomad-driver-bpfexec binary")
}

/// Debian's Prometheus from `PROMETHEUS_BIN`.
pub fn prometheus_bin() -> Result<PathBuf> {
    executable_from_env(PROMETHEUS_BIN, "Debian's prometheus binary")
}

/// Debian's promtool from `PROMTOOL_BIN`.
pub fn promtool_bin() -> Result<PathBuf> {
    executable_from_env(PROMTOOL_BIN, "Debian's promtool binary")
}

/// The Jaeger binary from `JAEGER_BIN`.
pub fn jaeger_bin() -> Result<PathBuf> {
    executable_from_env(
        JAEGER_BIN,
        "the Jaeger v1.76.0 binary built by `cargo xtask setup`",
    )
}

fn executable_from_env(var: &str, what: &str) -> Result<PathBuf> {
    let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) else {
        bail!(
            "{var} is not set: it must name {what}. Run the end-to-end suite with `cargo xtask test` \
             (it builds the driver, installs Nomad, Prometheus and Jaeger and sets NOMAD_BIN, DRIVER_BIN, \
             PROMETHEUS_BIN, PROMTOOL_BIN and JAEGER_BIN), or set it from `cargo xtask env`"
        );
    };
    let path = PathBuf::from(value);
    let meta = std::fs::metadata(&path)
        .with_context(|| format!("{var}={} ({what}) cannot be read", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{var}={} ({what}) is not an executable file",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("canonicalizing {var}={}", path.display()))
}

/// Whether the suite may run privileged tests. Returns `true` when running as root. Otherwise,
/// with `CI=true` it panics (a missing precondition in CI is a failure, never a skip); outside
/// CI it prints `SKIP: needs root` and returns `false`, and the caller returns early.
#[must_use]
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: the end-to-end suite needs root (it runs a Nomad client that manages cgroups and \
         the driver loads eBPF probes); CI=true, so this is a failure, not a skip"
    );
    println!("SKIP: {test}: needs root");
    false
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

/// `n` distinct free loopback ports (all held while choosing, so they differ).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("reading the bound address")?.port()))
        .collect()
}

/// Whether `BPFEXEC_E2E_KEEP=1` asks to keep temp dirs for inspection.
#[must_use]
pub fn keep_temp_dirs() -> bool {
    std::env::var(KEEP_ENV).is_ok_and(|v| v == "1" || v == "true")
}
