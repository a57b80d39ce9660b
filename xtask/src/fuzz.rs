//! `cargo xtask fuzz [--seconds N] [target ...]`: runs the cargo-fuzz targets in `fuzz/` (the
//! decoders of input from outside the driver: task and plugin config msgpack, `driver_state`,
//! the helper's on-disk records) with libFuzzer for a bounded time each. cargo-fuzz is installed
//! into the tool cache on first use (`cargo install --locked`). Each target starts from the
//! committed corpus (`fuzz/corpus/<target>`, read-only) plus what earlier runs found
//! (`target/fuzz-corpus/<target>`); limits make a hang (`-timeout`), a large allocation
//! (`-malloc_limit_mb`) or memory growth (`-rss_limit_mb`) a failure like a panic. A failing
//! input is left in `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::tools;
use crate::util;

/// cargo-fuzz release installed into the cache.
const CARGO_FUZZ_VERSION: &str = "0.13.1";
/// The targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: [&str; 4] = [
    "task_config",
    "plugin_config",
    "driver_state",
    "helper_records",
];
/// Seconds per target in the gate (`cargo xtask test`).
pub const GATE_SECONDS: u64 = 20;
/// Seconds per target with `cargo xtask test --long` and `cargo xtask fuzz` by default.
pub const LONG_SECONDS: u64 = 300;

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = LONG_SECONDS;
    let mut targets = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = iter
                    .next()
                    .context("--seconds needs a number")?
                    .parse()
                    .context("--seconds needs a number")?;
            }
            t if TARGETS.contains(&t) => targets.push(t.to_owned()),
            other => bail!(
                "unknown `fuzz` argument `{other}` (expected --seconds N or targets: {})",
                TARGETS.join(", ")
            ),
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| (*t).to_owned()).collect();
    }
    fuzz(&targets, seconds)
}

/// `$CACHE/cargo-fuzz-<v>/bin/cargo-fuzz`, installed when missing.
fn cargo_fuzz() -> Result<PathBuf> {
    let root = tools::cache_root()?.join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin").join("cargo-fuzz");
    if util::is_executable(&bin) {
        return Ok(bin);
    }
    println!(
        "[fuzz] installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        root.display()
    );
    util::run(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["install", "--locked", "cargo-fuzz", "--version"])
            .arg(format!("={CARGO_FUZZ_VERSION}"))
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin)
}

/// Where the instrumented builds go: in the tool cache, not the checkout's `target/`, so a
/// fresh checkout on the same machine (CI) rebuilds only the driver and the targets, not every
/// dependency (a cold build takes about 10 minutes on 2 busy cores).
fn target_dir() -> Result<PathBuf> {
    Ok(tools::cache_root()?.join("fuzz-target"))
}

/// The fuzz command: nightly cargo running cargo-fuzz from the cache, in the repo root.
fn command(cargo_fuzz: &Path, target: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"])
        .arg(cargo_fuzz)
        .arg("fuzz")
        .current_dir(tools::repo_root())
        // The targets need the driver's decoders, not its eBPF object.
        .env("AYA_BUILD_SKIP", "1")
        .env("CARGO_TARGET_DIR", target);
    cmd
}

/// Builds every target, then runs each for `seconds`.
pub fn fuzz(targets: &[String], seconds: u64) -> Result<()> {
    let bin = cargo_fuzz()?;
    let target = target_dir()?;
    let started = Instant::now();
    util::run(command(&bin, &target).args(["build", "--debug-assertions"]))?;
    println!(
        "[fuzz] built the targets in {}",
        util::fmt_duration(started.elapsed())
    );
    let mut failed = Vec::new();
    for name in targets {
        let seeds = tools::repo_root().join("fuzz").join("corpus").join(name);
        let found = tools::target_dir().join("fuzz-corpus").join(name);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let t0 = Instant::now();
        let outcome = util::run(
            command(&bin, &target)
                .args(["run", "--debug-assertions", name])
                .arg(&found)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .args([
                    "-timeout=10",
                    "-rss_limit_mb=2048",
                    "-malloc_limit_mb=256",
                    "-max_len=65536",
                    "-print_final_stats=1",
                ]),
        );
        println!(
            "[fuzz] {name}: {} in {}",
            if outcome.is_ok() { "ok" } else { "FAILED" },
            util::fmt_duration(t0.elapsed())
        );
        if let Err(e) = outcome {
            failed.push(format!("{name}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found failures (inputs in fuzz/artifacts/<target>/):\n{}",
            failed.join("\n")
        );
    }
    Ok(())
}
