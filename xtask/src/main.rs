//! `cargo xtask`: project automation. Subcommands: setup (tool cache), env (paths for scripts
//! and the e2e suite), build (driver + plugin dir), test (the full CI gate), demo, bench,
//! dashboards (the Grafana dashboards and Prometheus rules in `dashboards/`), vm-test (the suites
//! inside QEMU guests: cgroup v2, other kernels).
//! Arguments are parsed by hand; every child process runs without stdin so CI behaves the same.

mod bench;
mod dashboards;
mod demo;
mod driver;
mod env;
mod fuzz;
mod setup;
mod test;
mod tools;
mod util;
mod vm;

use std::process::ExitCode;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup                      install what is missing (nightly + rust-src, bpf-linker, Nomad, Jaeger,
                             Prometheus + promtool) into ${BPFEXEC_CACHE:-$HOME/.cache/bpfexec};
                             idempotent
  env [--export] [--release] print NOMAD_BIN, NOMAD_VERSION, DRIVER_BIN, PLUGIN_DIR, BPF_LINKER,
                             JAEGER_BIN, PROMETHEUS_BIN, PROMTOOL_BIN, ...
  build [--release]          build nomad-driver-bpfexec (bpf-linker on PATH) and refresh PLUGIN_DIR
  test [--e2e-only|--no-e2e] [--no-vm] [--long] [--no-fuzz] [--fuzz-seconds N] [-- <test args>]
                             setup, fmt, clippy, unit + privileged tests, fuzzing (20 s per
                             target), build, e2e suite, then vm-test (not with --no-vm,
                             --e2e-only or --no-e2e); --long: the long variants
                             (BPFEXEC_E2E_LONG=1: 200-task scale, big churn and fork storm)
                             and 300 s per fuzz target
  fuzz [--seconds N] [target ...]
                             run the cargo-fuzz targets in fuzz/ (nightly, libFuzzer) for N s
                             each (default 300); cargo-fuzz is installed into the cache
  demo [--once] [--release]  start a Nomad agent with the driver on loopback, run examples/*.nomad.hcl
                             and report; keeps running until Ctrl-C unless --once
  dashboards [--check]       write dashboards/ (Grafana dashboards, Prometheus rules, promtool
                             tests) from xtask/src/dashboards/; --check: fail if stale, check
                             the dashboards' structure, run promtool check/test
  bench [--debug] [--reps N] [--exec-reps N] [--tasks K] [--storm-execs N] [--storm-reps N]
        [--throughput-secs S] [--throughput-rates R,R,...] [--throughput-load N]
        [--telemetry-tasks K] [--span-burst N] [--span-loops L]
                             bpfexec vs exec vs raw_exec on one agent: start latency, helper
                             memory per task, eBPF probe cost on an exec storm, probe events/s
                             sustained with zero loss; then with OTLP export to a real Jaeger and
                             a real Prometheus scraping: the storm's overhead, spans/s exported,
                             /metrics and plugin RSS with K running tasks; 0 skips a
                             measurement; writes target/bench/results.{json,md}
  vm-test [--full] [--v2-only|--6.1-only] [--start-time]
                             boot QEMU guests (installed into the cache): privileged tests and
                             an e2e subset with a real Nomad client on a cgroup-v2-only 6.12
                             kernel (--full: every check of those suites), probe tests on
                             Debian 12's 6.1; --start-time: start time on cgroup v1 vs v2
                             in one kernel; results in target/vm-test/
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nxtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "setup" => setup::run(rest),
        "env" => env::run(rest),
        "build" => driver::run(rest),
        "test" => test::run(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "dashboards" => dashboards::run(rest),
        "vm-test" => vm::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command `{other}`")
        }
    }
}
