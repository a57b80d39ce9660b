//! `cargo xtask demo [--once] [--release]`: setup, driver build, then a real Nomad agent on
//! loopback with the bpfexec plugin (raw mode allowed) that runs every `examples/*.nomad.hcl`
//! and prints what happened (allocation status, task events, exit codes, logs, the node's
//! `driver.bpfexec.*` fingerprint), with a real Prometheus and Jaeger watching the agent and the
//! driver (`demo/telemetry.rs`): after each example, its non-zero task series from Prometheus
//! and each task's trace from Jaeger drawn as a tree (`demo/task_view.rs`,
//! `demo/trace_view.rs`). Without `--once` the agent stays up until Ctrl-C; with
//! `--once` everything is torn down and the exit status says whether every example ended as
//! its `# expect:` header says.

mod detach;
mod examples;
mod report;
mod show;
mod task_view;
mod telemetry;
mod trace_view;

pub use detach::{
    INNER_FLAG, check as check_interrupted, install as install_signal_handling, interrupted,
    run_detached, sleep,
};

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bpfexec_e2e::{Agent, AgentOptions};

use crate::driver;
use crate::env::ToolEnv;
use crate::setup;
use crate::tools::{self, Profile};
use crate::util;

struct Options {
    once: bool,
    inner: bool,
    profile: Profile,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        once: false,
        inner: false,
        profile: Profile::Debug,
    };
    for arg in args {
        match arg.as_str() {
            "--once" => opts.once = true,
            "--release" => opts.profile = Profile::Release,
            INNER_FLAG => opts.inner = true,
            other => bail!("unknown `demo` option `{other}` (expected --once, --release)"),
        }
    }
    Ok(opts)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    if opts.inner {
        detach::install()?;
        return inner(&opts);
    }
    if util::euid()? != 0 {
        bail!(
            "the demo runs a Nomad client that manages cgroups and loads eBPF probes: run it as root"
        );
    }
    let started = Instant::now();
    println!("==> [1/3] setup");
    setup::ensure_all()?;
    println!("==> [2/3] build the driver");
    driver::build(opts.profile)?;
    println!("==> [3/3] start a Nomad agent and run the examples");
    let mut forwarded: Vec<String> = vec!["demo".into()];
    forwarded.extend(args.iter().cloned());
    let result = run_detached(&forwarded, &harness_env(opts.profile)?);
    println!(
        "\n==> demo finished in {}",
        util::fmt_duration(started.elapsed())
    );
    result
}

/// The tool paths the e2e harness reads from the environment (`NOMAD_BIN`, `DRIVER_BIN`, and
/// for its telemetry peers `JAEGER_BIN`, `PROMETHEUS_BIN`, `PROMTOOL_BIN`).
pub fn harness_env(profile: Profile) -> Result<Vec<(&'static str, String)>> {
    let env = ToolEnv::resolve(profile)?;
    if !env.nomad_installed {
        bail!("Nomad is not installed: run `cargo xtask setup`");
    }
    let keep = [
        "NOMAD_BIN",
        "DRIVER_BIN",
        "JAEGER_BIN",
        "PROMETHEUS_BIN",
        "PROMTOOL_BIN",
    ];
    Ok(env
        .vars()
        .into_iter()
        .filter(|(key, _)| keep.contains(key))
        .collect())
}

fn inner(opts: &Options) -> Result<()> {
    let examples = examples::load_all(&tools::repo_root().join("examples"))?;
    let t0 = Instant::now();
    let mut peers = telemetry::Peers::start_jaeger()?;
    let mut agent = Agent::start_ready(
        peers.agent_options(AgentOptions::bpfexec().plugin_config("allow_unisolated = true")),
    )?;
    peers.start_prometheus(agent.addr());
    println!(
        "\nNomad agent ready in {} — API and UI at {}/ui/ (data in {})\n{}",
        util::fmt_duration(t0.elapsed()),
        agent.addr(),
        agent.root().display(),
        peers.urls()
    );
    print!("{}", report::node(&agent.node()?));
    let mut verdicts = Vec::new();
    for ex in &examples {
        if interrupted() {
            break;
        }
        let rule = "─".repeat(78usize.saturating_sub(ex.name().len() + 4));
        println!(
            "\n── {} {rule}\n  {} — expect: {}",
            ex.name(),
            ex.path.display(),
            ex.expect.summary()
        );
        let verdict = show::run(agent.api(), ex);
        if let Some(alloc) = &verdict.alloc_id {
            print!("{}", peers.example(alloc, &verdict.tasks));
        }
        verdicts.push(verdict);
    }
    summary(&verdicts, examples.len());
    print!("\n==> what the telemetry peers saw\n{}", peers.summary());
    if !opts.once && !interrupted() {
        wait_for_ctrl_c(&mut agent, &peers);
    }
    println!("\n==> stopping every job and the agent");
    if let Err(e) = agent.api().stop_all_jobs(Duration::from_secs(30)) {
        println!("    (stopping jobs: {e:#})");
    }
    drop(agent);
    drop(peers);
    println!("    done: agent, Prometheus and Jaeger stopped, their temp dirs removed");
    let failed = verdicts.iter().filter(|v| !v.ok()).count();
    if failed > 0 || verdicts.len() < examples.len() {
        bail!(
            "{failed} of {} examples did not end as expected ({} run)",
            examples.len(),
            verdicts.len()
        );
    }
    Ok(())
}

fn summary(verdicts: &[show::Verdict], total: usize) {
    println!("\n==> summary: {} of {total} examples ran", verdicts.len());
    for v in verdicts {
        let mark = if v.ok() { "ok  " } else { "FAIL" };
        println!("    {mark} {:<22} expect {}", v.name, v.expected);
        for p in &v.problems {
            println!("           - {p}");
        }
    }
}

fn wait_for_ctrl_c(agent: &mut Agent, peers: &telemetry::Peers) {
    let nomad = std::env::var("NOMAD_BIN").unwrap_or_else(|_| "nomad".into());
    println!(
        "\n==> the agent keeps running; talk to it with:\n    export NOMAD_ADDR={addr}\n    {nomad} job status\n    {nomad} alloc status <alloc-id>\n    {nomad} job run examples/01-hello.nomad.hcl\n    UI: {addr}/ui/\n    agent log: {log}\n{urls}\n    Press Ctrl-C to stop the jobs, the agent, Prometheus and Jaeger.",
        addr = agent.addr(),
        log = agent.log_path().display(),
        urls = peers.urls(),
    );
    while !interrupted() {
        if !agent.is_running() {
            println!(
                "    the agent exited on its own; see {}",
                agent.log_path().display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
