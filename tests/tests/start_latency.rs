//! Issue 3 acceptance, task start time: for fully isolated tasks, the time from Nomad calling
//! StartTask to the user command running, with exec's default `chroot_env` and with a
//! `chroot_env` of many gigabytes, to show it does not depend on its size. Reported on lines
//! starting with `START-LATENCY`; not asserted (timings on a shared CI machine are noisy).
//!
//! How it is measured: the task's command is `/bin/date +%s%N` itself, so its output is the wall
//! clock right after the user command was exec'd. The start is the `end` time of the task
//! runner's TRACE line `finished prestart hooks` (streamed from `/v1/agent/monitor`), after which
//! Nomad only renders the task config and calls the driver's StartTask. The figure therefore
//! also includes that rendering and the gRPC call, and is an upper bound. For context each run
//! also shows when the driver logged `task started` (StartTask about to return) and Nomad's
//! `Started` event.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bpfexec_e2e::isolation::monitor::{
    LogMonitor, enable_trace_logging, field, parse_rfc3339_nanos,
};
use bpfexec_e2e::isolation::section;
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, LogType, run_checks};

/// Measured runs per configuration.
const RUNS: usize = 6;

/// exec's default `chroot_env` plus several multi-gigabyte host trees (read-only binds).
const BIG_CHROOT_ENV: &str = r#"chroot_env {
  "/bin" = "/bin"
  "/etc" = "/etc"
  "/lib" = "/lib"
  "/lib32" = "/lib32"
  "/lib64" = "/lib64"
  "/run/resolvconf" = "/run/resolvconf"
  "/run/systemd/resolve" = "/run/systemd/resolve"
  "/sbin" = "/sbin"
  "/usr" = "/usr"
  "/usr/share" = "/big/share"
  "/usr/lib" = "/big/usrlib"
  "/opt" = "/big/opt"
  "/var/lib" = "/big/varlib"
  "/root/.rustup" = "/big/rustup"
  "/root/.cache" = "/big/cache"
  "/root/go" = "/big/go"
}"#;

#[test]
fn start_latency() {
    if !suite::is_bpfexec() {
        println!("SKIP: start_latency: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    run_checks(
        "start_latency",
        AgentOptions::bpfexec(),
        &[Check {
            name: "default_chroot_env",
            run: default_chroot_env,
        }],
    );
    run_checks(
        "start_latency_big_chroot_env",
        AgentOptions::bpfexec().plugin_config(BIG_CHROOT_ENV),
        &[Check {
            name: "big_chroot_env",
            run: big_chroot_env,
        }],
    );
}

fn default_chroot_env(agent: &mut Agent) -> Result<()> {
    measure(agent, "default", false)
}

fn big_chroot_env(agent: &mut Agent) -> Result<()> {
    measure(agent, "big", true)
}

/// One run's timestamps (unix ns).
struct Run {
    prestart_end: i128,
    user_command: i128,
    driver_started: Option<i128>,
    /// The driver's own StartTask received → command exec'd, in µs (its `start_us` log field).
    driver_start_us: Option<f64>,
    started_event: i128,
}

fn ms(ns: i128) -> f64 {
    // Lossless for any realistic latency (well under 2^52 ns).
    ns as f64 / 1e6
}

fn measure(agent: &Agent, label: &str, big: bool) -> Result<()> {
    // The prestart TRACE lines are only logged when the agent's own level is TRACE.
    enable_trace_logging(agent)?;
    let monitor = LogMonitor::start(agent.addr())?;
    let mut latencies = Vec::new();
    let mut driver_own = Vec::new();
    for i in 0..RUNS {
        let run = one_run(agent, &monitor)?;
        let lat = run.user_command - run.prestart_end;
        driver_own.extend(run.driver_start_us);
        println!(
            "START-LATENCY chroot_env={label} run={i}: StartTask→user command {:.2} ms \
             (driver's own StartTask received→exec'd {}; driver `task started` at {}, \
             Nomad `Started` event at {:+.2} ms)",
            ms(lat),
            run.driver_start_us
                .map_or("?".to_owned(), |us| format!("{:.2} ms", us / 1000.0)),
            run.driver_started.map_or("?".to_owned(), |t| format!(
                "{:+.2} ms",
                ms(t - run.prestart_end)
            )),
            ms(run.started_event - run.prestart_end),
        );
        latencies.push(lat);
    }
    if big {
        check_big_trees(agent)?;
    }
    latencies.sort_unstable();
    driver_own.sort_by(f64::total_cmp);
    if let Some(median) = driver_own.get(driver_own.len() / 2) {
        println!(
            "START-LATENCY chroot_env={label} driver's own StartTask received→exec'd: median \
             {:.2} ms over {} runs",
            median / 1000.0,
            driver_own.len()
        );
    }
    println!(
        "START-LATENCY chroot_env={label} summary over {RUNS} runs: min {:.2} ms, median {:.2} ms, \
         max {:.2} ms (driver build: {})",
        ms(latencies[0]),
        ms(latencies[RUNS / 2]),
        ms(latencies[RUNS - 1]),
        std::env::var("DRIVER_BIN").unwrap_or_default()
    );
    Ok(())
}

/// Checks that the big `chroot_env` trees really are in the task's root.
fn check_big_trees(agent: &Agent) -> Result<()> {
    let job = suite::batch("big-trees")
        .shell("echo '== big'; ls -d /big/share/doc /big/usrlib /big/rustup/toolchains /big/go");
    let alloc = agent.api().run_job(&job.to_hcl(), &["complete"], TIMEOUT)?;
    let out = agent.api().logs(&alloc.id, TASK, LogType::Stdout)?;
    let secs = bpfexec_e2e::isolation::sections(&out);
    if section(&secs, "big")?.lines().count() != 4 {
        bail!("the big chroot_env trees are not all visible in the task: {out:?}");
    }
    Ok(())
}

fn one_run(agent: &Agent, monitor: &LogMonitor) -> Result<Run> {
    let api = agent.api();
    let job = suite::batch("latency").command("/bin/date").args(["+%s%N"]);
    let alloc = api.run_job(&job.to_hcl(), &["complete"], TIMEOUT)?;
    let out = api.logs(&alloc.id, TASK, LogType::Stdout)?;
    let user_command: i128 = out
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("the task printed no timestamp: {out:?}"))?;
    let prestart = poll_until(
        "the task runner's `finished prestart hooks` TRACE line",
        Duration::from_secs(10),
        POLL,
        |_| {
            Ok(monitor.find(|l| {
                field(l, "@message") == Some("finished prestart hooks")
                    && field(l, "alloc_id") == Some(alloc.id.as_str())
            }))
        },
    )
    .with_context(|| format!("{} monitor lines received", monitor.len()))?;
    let prestart_end = field(&prestart, "end")
        .or_else(|| field(&prestart, "@timestamp"))
        .and_then(parse_rfc3339_nanos)
        .with_context(|| format!("no usable time in {prestart}"))?;
    let driver_started = monitor
        .find(|l| {
            field(l, "@message") == Some("task started")
                && field(l, "task_id").is_some_and(|t| t.starts_with(&alloc.id))
        })
        .and_then(|l| field(&l, "@timestamp").and_then(parse_rfc3339_nanos));
    let driver_start_us = monitor
        .find(|l| {
            field(l, "@message") == Some("StartTask done: command running")
                && field(l, "task_id").is_some_and(|t| t.starts_with(&alloc.id))
        })
        .and_then(|l| {
            let v = l.get("start_us")?;
            v.as_f64().or_else(|| v.as_str()?.parse().ok())
        });
    let started_event = alloc
        .last_event(TASK, "Started")
        .map(|e| i128::from(e.time))
        .context("no Started event")?;
    Ok(Run {
        prestart_end,
        user_command,
        driver_started,
        driver_start_us,
        started_event,
    })
}
