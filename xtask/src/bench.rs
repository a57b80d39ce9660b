//! `cargo xtask bench`: measures bpfexec against Nomad's built-in `exec` and `raw_exec` on one
//! real agent (server + client on loopback, raw_exec enabled, exec available as root) in one
//! run: task start latency, per-task helper-process memory (RSS and PSS), the cost of the
//! eBPF probes on an exec storm, and the probe event rate the driver sustains with zero loss
//! (`throughput`); then, on a second agent exporting OTLP to a real Jaeger and scraped by a
//! real Prometheus, the cost of telemetry, the span export rate and `/metrics` with many tasks
//! (`telemetry`). Results go to `target/bench/results.{json,md}`. The driver is built with
//! `--release` unless `--debug` is given. Ctrl-C stops the jobs and the agent.

mod agentlog;
mod bpfstats;
mod cpu;
mod dirwatch;
mod exposition;
mod jobs;
mod latency;
mod memory;
mod output;
mod scrape;
mod spans;
mod stats;
mod storm;
mod telemetry;
mod throughput;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bpfexec_e2e::observe::DriverHttp;
use bpfexec_e2e::{Agent, AgentOptions, poll_until};
use serde_json::json;

use crate::demo::{self, INNER_FLAG};
use crate::tools::Profile;
use crate::{driver, setup, util};
use jobs::Driver;
use storm::Place;

struct Options {
    inner: bool,
    profile: Profile,
    reps: usize,
    exec_reps: usize,
    tasks: usize,
    storm_execs: usize,
    storm_reps: usize,
    throughput_secs: f64,
    throughput_rates: Vec<u64>,
    throughput_load: usize,
    telemetry_tasks: usize,
    span_burst: usize,
    span_loops: usize,
}

const USAGE: &str = "cargo xtask bench [--debug] [--reps N (10)] [--exec-reps N (3)] [--tasks K (6)] \
                     [--storm-execs N (3000)] [--storm-reps N (4)] [--throughput-secs S (5)] \
                     [--throughput-rates R,R,... (10k,25k,50k,75k,100k,150k,200k)] \
                     [--throughput-load N (0) host busy loops during it] [--telemetry-tasks K (200)] \
                     [--span-burst N (12000)] [--span-loops L (4)]; a count or duration of 0 skips \
                     that measurement";

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        inner: false,
        profile: Profile::Release,
        reps: 10,
        exec_reps: 3,
        tasks: 6,
        storm_execs: 3000,
        storm_reps: 4,
        throughput_secs: 5.0,
        throughput_rates: throughput::DEFAULT_RATES.to_vec(),
        throughput_load: 0,
        telemetry_tasks: 200,
        span_burst: 12_000,
        span_loops: 4,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        let mut number = || -> Result<usize> {
            value()?
                .parse()
                .with_context(|| format!("{arg} needs a number"))
        };
        match arg.as_str() {
            INNER_FLAG => o.inner = true,
            "--debug" => o.profile = Profile::Debug,
            "--release" => o.profile = Profile::Release,
            "--reps" => o.reps = number()?,
            "--exec-reps" => o.exec_reps = number()?,
            "--tasks" => o.tasks = number()?,
            "--storm-execs" => o.storm_execs = number()?,
            "--storm-reps" => o.storm_reps = number()?,
            "--throughput-secs" => {
                o.throughput_secs = value()?
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .with_context(|| format!("{arg} needs a number of seconds"))?;
            }
            "--throughput-rates" => o.throughput_rates = throughput::parse_rates(value()?)?,
            "--throughput-load" => o.throughput_load = number()?,
            "--telemetry-tasks" => o.telemetry_tasks = number()?,
            "--span-burst" => o.span_burst = number()?,
            "--span-loops" => o.span_loops = number()?.max(1),
            other => bail!("unknown `bench` option `{other}`\nusage: {USAGE}"),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    if opts.inner {
        demo::install_signal_handling()?;
        return inner(&opts);
    }
    if util::euid()? != 0 {
        bail!(
            "the benchmark runs a Nomad client (exec needs root) and loads eBPF probes: run it as root"
        );
    }
    let started = Instant::now();
    setup::ensure_all()?;
    driver::build(opts.profile)?;
    let mut forwarded: Vec<String> = vec!["bench".into()];
    forwarded.extend(args.iter().cloned());
    let result = demo::run_detached(&forwarded, &demo::harness_env(opts.profile)?);
    println!(
        "\n==> bench finished in {}",
        util::fmt_duration(started.elapsed())
    );
    result
}

fn phase(name: &str) -> Instant {
    println!("\n==> {name}");
    Instant::now()
}

fn done(start: Instant) {
    println!("    ({})", util::fmt_duration(start.elapsed()));
}

/// Waits until the node reports exec and raw_exec healthy next to bpfexec.
fn wait_builtin_drivers(agent: &Agent) -> Result<()> {
    poll_until(
        "exec and raw_exec to be healthy",
        Duration::from_secs(60),
        Duration::from_millis(250),
        |last| {
            let node = agent.node()?;
            let healthy = |name: &str| {
                node.drivers
                    .get(name)
                    .is_some_and(|d| d.detected && d.healthy)
            };
            *last = format!("{:?}", node.drivers.keys().collect::<Vec<_>>());
            Ok((healthy("exec") && healthy("raw_exec")).then_some(()))
        },
    )
}

fn print_run(r: &storm::Run) {
    let probes = r.probes.as_ref().map_or(String::new(), |p| {
        format!(
            "  probes {:.1} ms in {} runs of {} progs  plugin cpu {:.3} s  => {:.2}%",
            p.total.run_time_ns as f64 / 1e6,
            p.total.run_cnt,
            p.total.programs,
            r.plugin_cpu_s.unwrap_or(0.0),
            storm::overhead_pct(r).unwrap_or(f64::NAN)
        )
    });
    println!(
        "    {:<52} wall {:.3} s  cpu {:.3} s{probes}",
        r.place.describe(),
        r.wall_s,
        r.cpu_s
    );
}

fn host_storms(
    opts: &Options,
    reps: usize,
    place: Place,
    agent: Option<&Agent>,
    runs: &mut Vec<storm::Run>,
) -> Result<()> {
    for _ in 0..reps {
        demo::check_interrupted()?;
        let r = storm::on_host(place, opts.storm_execs, agent)?;
        print_run(&r);
        runs.push(r);
    }
    Ok(())
}

/// Starts the agent; its driver serves `/v1/observer` on the returned loopback endpoint.
fn start_agent() -> Result<(Agent, DriverHttp)> {
    let t = phase("start a Nomad agent with bpfexec, exec and raw_exec");
    let port = bpfexec_e2e::env::free_port()?;
    let agent = Agent::start_ready(
        AgentOptions::bpfexec()
            .plugin_config("allow_unisolated = true")
            .plugin_config(&format!("http_addr = \"127.0.0.1:{port}\""))
            .extra_hcl("plugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}"),
    )?;
    wait_builtin_drivers(&agent)?;
    println!(
        "    agent {} ready, data in {}",
        agent.addr(),
        agent.root().display()
    );
    done(t);
    Ok((agent, DriverHttp::new(port)))
}

fn measure_memory(agent: &Agent, tasks: usize) -> Result<Vec<memory::Measurement>> {
    let mut all = Vec::new();
    if tasks == 0 {
        return Ok(all);
    }
    for d in Driver::ALL {
        let t = phase(&format!(
            "helper memory: {tasks} sleeping {} tasks",
            d.name()
        ));
        let m = memory::measure(agent, d, tasks)?;
        let per = |kib: u64| kib as f64 / 1024.0 / tasks as f64;
        println!(
            "    {} driver helpers: RSS {:.2} MiB/task, PSS {:.2} MiB/task; {} logmon: RSS {:.2} MiB/task, PSS {:.2} MiB/task",
            m.driver_helpers.count,
            per(m.driver_helpers.mem.rss_kib),
            per(m.driver_helpers.mem.pss_kib),
            m.logmon.count,
            per(m.logmon.mem.rss_kib),
            per(m.logmon.mem.pss_kib),
        );
        all.push(m);
        done(t);
    }
    Ok(all)
}

fn measure_throughput(
    agent: &Agent,
    http: &DriverHttp,
    opts: &Options,
) -> Result<Option<throughput::Report>> {
    if opts.throughput_secs <= 0.0 {
        return Ok(None);
    }
    let t = phase(&format!(
        "probe throughput: a bpfexec task signalling itself at stepped rates, {} s per step, {} host busy loops",
        opts.throughput_secs, opts.throughput_load
    ));
    let report = throughput::run(
        agent,
        http,
        &opts.throughput_rates,
        opts.throughput_secs,
        opts.throughput_load,
    )?;
    match report.best_zero_loss() {
        Some(r) => println!(
            "    highest rate sustained with zero loss: {r:.0} events/s (target {:.0}: {})",
            throughput::TARGET_RATE,
            if report.meets_target() {
                "met"
            } else {
                "not met"
            }
        ),
        None => println!("    no step was free of loss"),
    }
    if let Some(why) = &report.stopped {
        println!("    stopped: {why}");
    }
    done(t);
    Ok(Some(report))
}

fn storms_with_probes(agent: &Agent, opts: &Options, runs: &mut Vec<storm::Run>) -> Result<()> {
    let t = phase("exec storm with our probes loaded: host process and tasks (interleaved)");
    // Kernel run-time accounting of BPF programs, on only for this phase.
    let _stats = bpfstats::enable()?;
    for i in 0..opts.storm_reps {
        host_storms(opts, 1, Place::HostProbesOn, Some(agent), runs)?;
        for place in [
            Place::TaskBpfexec,
            Place::TaskBpfexecRaw,
            Place::TaskRawExec,
        ] {
            demo::check_interrupted()?;
            let r = storm::in_task(agent, place, opts.storm_execs, i)?;
            print_run(&r);
            runs.push(r);
        }
    }
    done(t);
    Ok(())
}

/// Storms on the host while no agent of ours runs (the probes-off baseline).
fn storms_without_agent(opts: &Options, runs: &mut Vec<storm::Run>) -> Result<()> {
    host_storms(opts, opts.storm_reps, Place::HostProbesOff, None, runs)
}

/// `/proc/loadavg`'s three averages (the machine is shared: the figures say how busy it was).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn measure_telemetry(opts: &Options, runs: &mut Vec<storm::Run>) -> Option<telemetry::Report> {
    let plan = telemetry::Plan {
        storm_reps: opts.storm_reps,
        storm_execs: opts.storm_execs,
        burst_processes: opts.span_burst,
        burst_loops: opts.span_loops,
        tasks: opts.telemetry_tasks,
    };
    if plan.storm_reps == 0 && plan.burst_processes == 0 && plan.tasks == 0 {
        return None;
    }
    let t = phase(
        "telemetry: a second agent exporting OTLP to a real Jaeger, scraped by a real Prometheus",
    );
    let report = telemetry::run(&plan, runs);
    done(t);
    Some(report)
}

fn inner(opts: &Options) -> Result<()> {
    let t0 = Instant::now();
    let load_start = loadavg();
    let mut storm_runs = Vec::new();
    let mut foreign = storm::foreign_plugins(None);
    if opts.storm_reps > 0 {
        let t = phase("exec storm on the host, no agent of ours (probes not loaded)");
        storms_without_agent(opts, &mut storm_runs)?;
        done(t);
    }
    let (agent, http) = start_agent()?;
    let node = agent.node()?;

    let t = phase("task start latency (/bin/date +%s%N, one job at a time)");
    let latency = latency::run(&agent, |d| {
        if d == Driver::Exec {
            opts.exec_reps
        } else {
            opts.reps
        }
    })?;
    done(t);

    let memory = measure_memory(&agent, opts.tasks)?;
    let throughput = measure_throughput(&agent, &http, opts)?;
    if opts.storm_reps > 0 {
        foreign = foreign.max(storm::foreign_plugins(Some(&agent)));
        storms_with_probes(&agent, opts, &mut storm_runs)?;
    }
    drop(agent);
    if opts.storm_reps > 0 {
        let t = phase("exec storm on the host again, our agent stopped (probes unloaded)");
        storms_without_agent(opts, &mut storm_runs)?;
        foreign = foreign.max(storm::foreign_plugins(None));
        done(t);
    }
    let telemetry = measure_telemetry(opts, &mut storm_runs);

    let attr = |key: &str| node.attributes.get(key).cloned().unwrap_or_default();
    let results = output::Results {
        context: json!({
            "date_unix": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "nomad": attr("nomad.version"),
            "cgroup_mode": attr("driver.bpfexec.cgroup_mode"),
            "driver_build": opts.profile.dir_name(),
            "start_latency_reps": format!("{} (exec: {})", opts.reps, opts.exec_reps),
            "memory_tasks_per_driver": opts.tasks,
            "storm": format!("{} execs x {} reps per place", opts.storm_execs, opts.storm_reps),
            "throughput": format!("{} s per step, target rates {:?}/s, {} host busy loops", opts.throughput_secs, opts.throughput_rates, opts.throughput_load),
            "telemetry": format!("{} running tasks for /metrics, span burst of {} processes from {} loops", opts.telemetry_tasks, opts.span_burst, opts.span_loops),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "bench_duration_s": t0.elapsed().as_secs(),
        }),
        latency,
        memory,
        storm: storm_runs,
        storm_execs: opts.storm_execs,
        foreign_plugins: foreign,
        throughput,
        telemetry,
    };
    let (json_path, md_path) = results.write()?;
    println!("\n{}", results.to_markdown());
    println!(
        "==> wrote {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}
