//! `cargo xtask test`: the whole CI gate, in order: setup, fmt, clippy, unit + privileged driver
//! tests, fuzzing (each cargo-fuzz target for a bounded time), dashboards, driver build, the
//! e2e suite against a real Nomad agent, then `vm-test` (the privileged tests and an e2e subset
//! in QEMU guests: cgroup v2 only, and Debian 12's 6.1; `--no-vm` leaves it out). Stops at the
//! first failing step; prints a banner per step and a summary with durations. In CI the tests
//! must run as root (privileged tests are never skipped silently there), and the VM step's own
//! preconditions (root, Debian's packages) fail it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::dashboards;
use crate::driver;
use crate::env::ToolEnv;
use crate::setup;
use crate::tools::Profile;
use crate::util;

#[allow(
    clippy::struct_excessive_bools,
    reason = "each is an independent command-line switch"
)]
struct Options {
    e2e: bool,
    non_e2e: bool,
    /// The VM guests (on unless `--no-vm`, `--e2e-only` or `--no-e2e`).
    vm: bool,
    /// Seconds per fuzz target (0: no fuzzing).
    fuzz_seconds: u64,
    /// The long variants of the load tests (`BPFEXEC_E2E_LONG=1`).
    long: bool,
    /// Passed to the test binaries after `--` (a name filter, `--nocapture`, ...).
    test_args: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        e2e: true,
        non_e2e: true,
        vm: true,
        fuzz_seconds: crate::fuzz::GATE_SECONDS,
        long: false,
        test_args: Vec::new(),
    };
    let mut fuzz_set = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--e2e-only" => {
                opts.non_e2e = false;
                opts.vm = false;
            }
            "--no-e2e" => {
                opts.e2e = false;
                opts.vm = false;
            }
            "--no-vm" => opts.vm = false,
            // The default now; still accepted.
            "--vm" => {}
            "--long" => opts.long = true,
            "--no-fuzz" => {
                opts.fuzz_seconds = 0;
                fuzz_set = true;
            }
            "--fuzz-seconds" => {
                opts.fuzz_seconds = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--fuzz-seconds needs a number"))?;
                fuzz_set = true;
            }
            "--" => opts.test_args.extend(iter.by_ref().cloned()),
            other => bail!(
                "unknown `test` option `{other}` (expected --e2e-only, --no-e2e, --no-vm, --long, --no-fuzz, --fuzz-seconds N, -- <test args>)"
            ),
        }
    }
    if opts.long && !fuzz_set {
        opts.fuzz_seconds = crate::fuzz::LONG_SECONDS;
    }
    if !opts.e2e && !opts.non_e2e {
        bail!("--e2e-only and --no-e2e together leave nothing to run");
    }
    Ok(opts)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

type Action = Box<dyn FnOnce() -> Result<()>>;

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    if util::euid()? != 0 {
        if in_ci() {
            bail!(
                "CI is set but xtask is not running as root: the privileged driver and e2e tests would not run"
            );
        }
        eprintln!(
            "warning: not running as root: privileged driver tests and the e2e suite will fail or skip"
        );
    }

    let mut steps: Vec<(&str, String, Action)> = Vec::new();
    steps.push((
        "setup",
        "cargo xtask setup".into(),
        Box::new(setup::ensure_all),
    ));
    if opts.non_e2e {
        steps.push((
            "fmt",
            "cargo fmt --all -- --check".into(),
            Box::new(|| util::run(driver::cargo()?.args(["fmt", "--all", "--", "--check"]))),
        ));
        steps.push((
            "clippy",
            "cargo clippy --workspace --all-targets -- -D warnings".into(),
            Box::new(|| {
                util::run(driver::cargo()?.args([
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]))
            }),
        ));
        let test_args = opts.test_args.clone();
        steps.push((
            "unit tests",
            "cargo test --workspace --exclude bpfexec-e2e".into(),
            Box::new(move || {
                let mut cmd = driver::cargo()?;
                cmd.args(["test", "--workspace", "--exclude", "bpfexec-e2e"]);
                if !test_args.is_empty() {
                    cmd.arg("--").args(&test_args);
                }
                util::run(&mut cmd)
            }),
        ));
        if opts.fuzz_seconds > 0 {
            let seconds = opts.fuzz_seconds;
            steps.push((
                "fuzz",
                format!("cargo xtask fuzz --seconds {seconds} (each target)"),
                Box::new(move || {
                    let targets: Vec<String> = crate::fuzz::TARGETS
                        .iter()
                        .map(|t| (*t).to_owned())
                        .collect();
                    crate::fuzz::fuzz(&targets, seconds)
                }),
            ));
        }
        steps.push((
            "dashboards",
            "cargo xtask dashboards --check (fresh, structure, promtool check/test)".into(),
            Box::new(dashboards::check),
        ));
    }
    if opts.e2e {
        steps.push((
            "build driver",
            "cargo build -p bpfexec-driver + refresh PLUGIN_DIR".into(),
            Box::new(|| driver::build(Profile::Debug).map(|_| ())),
        ));
        let test_args = opts.test_args;
        let long = opts.long;
        steps.push((
            "e2e tests",
            "cargo test --no-fail-fast -p bpfexec-e2e -- --test-threads=2".into(),
            Box::new(move || run_e2e(&test_args, long)),
        ));
    }
    if opts.vm {
        steps.push((
            "vm tests",
            "cargo xtask vm-test (cgroup-v2 guest on 6.12, probe tests on 6.1)".into(),
            Box::new(|| crate::vm::run(&[])),
        ));
    }
    run_steps(steps)
}

fn run_e2e(test_args: &[String], long: bool) -> Result<()> {
    let env = ToolEnv::resolve(Profile::Debug)?;
    let mut cmd = driver::cargo()?;
    cmd.args([
        "test",
        "--no-fail-fast",
        "-p",
        "bpfexec-e2e",
        "--",
        "--test-threads=2",
    ])
    .args(test_args);
    for (key, value) in env.vars() {
        println!("    {key}={value}");
        cmd.env(key, value);
    }
    if long {
        println!("    BPFEXEC_E2E_LONG=1");
        cmd.env("BPFEXEC_E2E_LONG", "1");
    }
    util::run(&mut cmd)
}

fn run_steps(steps: Vec<(&str, String, Action)>) -> Result<()> {
    let total = steps.len();
    let names: Vec<&str> = steps.iter().map(|(name, _, _)| *name).collect();
    let mut results: Vec<(Duration, bool)> = Vec::new();
    let started = Instant::now();
    let mut failure = None;
    for (index, (name, what, action)) in steps.into_iter().enumerate() {
        let rule = "=".repeat(78);
        println!(
            "\n{rule}\n==> [{}/{total}] {name}: {what}\n{rule}",
            index + 1
        );
        let start = Instant::now();
        let outcome = action();
        let took = start.elapsed();
        let status = if outcome.is_ok() { "ok" } else { "FAILED" };
        println!(
            "<== [{}/{total}] {name}: {status} in {}",
            index + 1,
            util::fmt_duration(took)
        );
        results.push((took, outcome.is_ok()));
        if let Err(err) = outcome {
            failure = Some((name, err));
            break;
        }
    }

    println!(
        "\n==> summary (total {})",
        util::fmt_duration(started.elapsed())
    );
    for (index, name) in names.iter().enumerate() {
        let line = match results.get(index) {
            Some((took, ok)) => {
                let status = if *ok { "ok" } else { "FAILED" };
                format!("{status:<8} {name:<14} {}", util::fmt_duration(*took))
            }
            None => format!("{:<8} {name:<14} (an earlier step failed)", "skipped"),
        };
        println!("    {line}");
    }
    match failure {
        Some((name, err)) => Err(err.context(format!("step `{name}` failed"))),
        None => Ok(()),
    }
}
