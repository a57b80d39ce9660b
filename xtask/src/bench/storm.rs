//! Cost of the eBPF probes on an exec/fork storm: a shell loop running `/bin/true` N times,
//! timing itself (`date +%s%N` around the loop) and reporting its and its children's CPU
//! (`times`). Primary figure: the kernel's own run-time accounting of our plugin's probe
//! programs during each storm (see `bpfstats`), plus the plugin's CPU, relative to the storm's
//! CPU. Secondary (wall/CPU A/B, noisy on a shared 2-core machine): host runs with no agent of
//! ours (before it starts, after it stops) vs while it runs (probes loaded, pid untracked), and
//! task runs: bpfexec tasks (tracked: every fork/exec/exit becomes a ring-buffer event the
//! plugin consumes) vs a raw_exec task on the same agent (probes loaded, untracked).

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bpfexec_e2e::{Agent, JobSpec, procs};
use serde_json::{Value, json};

use super::bpfstats::{self, Probes};
use super::cpu;
use super::jobs;
use super::stats::{Summary, json_of};

/// Where a storm ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    HostProbesOff,
    HostProbesOn,
    TaskBpfexec,
    TaskBpfexecRaw,
    TaskRawExec,
    /// A tracked bpfexec task on the agent whose driver exports OTLP to a real Jaeger and is
    /// scraped by a real Prometheus (`bench/telemetry.rs`).
    TaskBpfexecTelemetry,
}

impl Place {
    pub const ALL: [Place; 6] = [
        Place::HostProbesOff,
        Place::HostProbesOn,
        Place::TaskBpfexec,
        Place::TaskBpfexecRaw,
        Place::TaskRawExec,
        Place::TaskBpfexecTelemetry,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Place::HostProbesOff => "host_probes_off",
            Place::HostProbesOn => "host_probes_on",
            Place::TaskBpfexec => "task_bpfexec",
            Place::TaskBpfexecRaw => "task_bpfexec_isolation_none",
            Place::TaskRawExec => "task_raw_exec",
            Place::TaskBpfexecTelemetry => "task_bpfexec_otlp_scraped",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Place::HostProbesOff => "host process, no bpfexec agent of ours running",
            Place::HostProbesOn => "host process, our agent's probes loaded (untracked pid)",
            Place::TaskBpfexec => "bpfexec task (isolated; tracked)",
            Place::TaskBpfexecRaw => "bpfexec task, isolation = \"none\" (tracked)",
            Place::TaskRawExec => "raw_exec task (probes loaded, untracked)",
            Place::TaskBpfexecTelemetry => {
                "bpfexec task (tracked), OTLP export to Jaeger + Prometheus scrape"
            }
        }
    }
}

/// One storm.
#[derive(Debug, Clone)]
pub struct Run {
    pub place: Place,
    pub wall_s: f64,
    /// user + sys of the loop's children (the `/bin/true`s) and the shell itself
    pub cpu_s: f64,
    /// CPU the bpfexec plugin used meanwhile (runs with our agent up)
    pub plugin_cpu_s: Option<f64>,
    /// Kernel-measured run time of our probes meanwhile (runs with our agent up)
    pub probes: Option<Probes>,
}

/// The storm script.
pub fn script(execs: usize) -> String {
    format!(
        "s=$(date +%s%N); i=0; while [ $i -lt {execs} ]; do /bin/true; i=$((i+1)); done; \
         e=$(date +%s%N); echo storm_ns=$((e-s)); times"
    )
}

/// `(wall seconds, cpu seconds)` from the script's output.
pub fn parse(out: &str) -> Option<(f64, f64)> {
    let ns: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("storm_ns="))?
        .trim()
        .parse()
        .ok()?;
    let cpu: f64 = out
        .lines()
        .filter(|l| l.contains('m') && l.trim_end().ends_with('s'))
        .flat_map(str::split_whitespace)
        .filter_map(minutes_seconds)
        .sum();
    Some((ns / 1e9, cpu))
}

/// `1m2.500000s` → 62.5
fn minutes_seconds(word: &str) -> Option<f64> {
    let (m, s) = word.strip_suffix('s')?.split_once('m')?;
    Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Our plugin's CPU (per thread, ns resolution) and the bpfexec probes' counters now.
fn counters(agent: Option<&Agent>) -> Option<(cpu::Snapshot, Probes)> {
    let pids = agent?.plugin_pids();
    let cpu = cpu::Snapshot::read(&pids);
    Some((cpu, bpfstats::read(&bpfstats::probe_ids(&pids))))
}

/// Differences of [`counters`] since `before`.
fn deltas(
    agent: Option<&Agent>,
    before: Option<(cpu::Snapshot, Probes)>,
) -> (Option<f64>, Option<Probes>) {
    match (before, counters(agent)) {
        (Some((c0, p0)), Some((c1, p1))) => (Some(c1.since(&c0)), Some(p1.since(&p0))),
        _ => (None, None),
    }
}

/// A storm in a plain host process (with our agent's counters read around it, if given).
pub fn on_host(place: Place, execs: usize, agent: Option<&Agent>) -> Result<Run> {
    let before = counters(agent);
    let out = Command::new("/bin/sh")
        .args(["-c", &script(execs)])
        .output()
        .context("running the host storm")?;
    let (plugin_cpu_s, probes) = deltas(agent, before);
    let text = String::from_utf8_lossy(&out.stdout);
    let (wall_s, cpu_s) = parse(&text).with_context(|| format!("storm output {text:?}"))?;
    Ok(Run {
        place,
        wall_s,
        cpu_s,
        plugin_cpu_s,
        probes,
    })
}

/// utime + stime of `pid` in seconds (clock ticks at the usual USER_HZ of 100).
pub fn cpu_seconds(pid: i32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A storm inside a task on `agent`.
pub fn in_task(agent: &Agent, place: Place, execs: usize, index: usize) -> Result<Run> {
    let (driver, extra) = match place {
        Place::TaskBpfexec | Place::TaskBpfexecTelemetry => ("bpfexec", ""),
        Place::TaskBpfexecRaw => ("bpfexec", "\n      isolation = \"none\""),
        Place::TaskRawExec => ("raw_exec", ""),
        _ => bail!("{place:?} is not a task storm"),
    };
    let id = format!("bench-storm-{}-{index}", place.key().replace('_', "-"));
    let args = bpfexec_e2e::config::hcl_string(&script(execs));
    let hcl = JobSpec::batch(&id)
        .driver(driver)
        .raw_config(&format!(
            "command = \"/bin/sh\"\n      args = [\"-c\", {args}]{extra}"
        ))
        .memory_mb(256)
        .to_hcl();
    let before = counters(Some(agent));
    let (job, _alloc, stdout) = jobs::run_batch(agent.api(), &hcl, Duration::from_secs(300))?;
    let (plugin_cpu_s, probes) = deltas(Some(agent), before);
    let (wall_s, cpu_s) = parse(&stdout).with_context(|| format!("storm output {stdout:?}"))?;
    jobs::purge_and_gc(agent, &[job], Duration::from_secs(120))?;
    Ok(Run {
        place,
        wall_s,
        cpu_s,
        plugin_cpu_s,
        probes,
    })
}

/// Other bpfexec plugins on this host (not ours): their probes are loaded in every phase.
pub fn foreign_plugins(ours: Option<&Agent>) -> usize {
    let mine = ours.map(Agent::plugin_pids).unwrap_or_default();
    procs::find(|p| {
        procs::cmdline(p).is_some_and(|argv| {
            argv.first()
                .is_some_and(|a| a.ends_with("nomad-driver-bpfexec"))
                && argv.len() == 1
        }) && !mine.contains(&p)
    })
    .len()
}

/// Per place: wall, CPU and plugin CPU summaries plus the samples.
pub fn to_json(runs: &[Run]) -> Value {
    let mut places = serde_json::Map::new();
    for place in Place::ALL {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.place == place).collect();
        let wall: Vec<f64> = mine.iter().map(|r| r.wall_s).collect();
        let cpu: Vec<f64> = mine.iter().map(|r| r.cpu_s).collect();
        let plugin: Vec<f64> = mine.iter().filter_map(|r| r.plugin_cpu_s).collect();
        let probe_ms: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.probes.as_ref())
            .map(|p| p.total.run_time_ns as f64 / 1e6)
            .collect();
        let probe_runs: Vec<f64> = mine
            .iter()
            .filter_map(|r| r.probes.as_ref())
            .map(|p| p.total.run_cnt as f64)
            .collect();
        let share: Vec<f64> = mine.iter().filter_map(|r| overhead_pct(r)).collect();
        places.insert(
            place.key().to_owned(),
            json!({
                "what": place.describe(),
                "wall_s": json_of(Summary::of(&wall)),
                "cpu_s": json_of(Summary::of(&cpu)),
                "plugin_cpu_s": json_of(Summary::of(&plugin)),
                "probe_run_time_ms": json_of(Summary::of(&probe_ms)),
                "probe_runs": json_of(Summary::of(&probe_runs)),
                "probe_plus_plugin_overhead_pct": json_of(Summary::of(&share)),
                "per_program": per_program(&mine),
            }),
        );
    }
    Value::Object(places)
}

/// (probe run time + plugin CPU) / (storm CPU − probe run time), in percent: what the storm
/// would cost without our probes vs what they added.
pub fn overhead_pct(r: &Run) -> Option<f64> {
    let probe_s = r.probes.as_ref()?.total.run_time_ns as f64 / 1e9;
    let base = r.cpu_s - probe_s;
    (base > 0.0).then(|| (probe_s + r.plugin_cpu_s.unwrap_or(0.0)) / base * 100.0)
}

/// Per probe program: median runs and median ns per run over `runs`.
pub fn per_program(runs: &[&Run]) -> Value {
    let mut names: Vec<&String> = runs
        .iter()
        .filter_map(|r| r.probes.as_ref())
        .flat_map(|p| p.by_name.keys())
        .collect();
    names.sort();
    names.dedup();
    let mut out = serde_json::Map::new();
    for name in names {
        let stats: Vec<_> = runs
            .iter()
            .filter_map(|r| r.probes.as_ref()?.by_name.get(name))
            .collect();
        let count: Vec<f64> = stats.iter().map(|s| s.run_cnt as f64).collect();
        let ns_per_run: Vec<f64> = stats
            .iter()
            .filter(|s| s.run_cnt > 0)
            .map(|s| s.run_time_ns as f64 / s.run_cnt as f64)
            .collect();
        out.insert(
            name.clone(),
            json!({
                "runs": json_of(Summary::of(&count)),
                "ns_per_run": json_of(Summary::of(&ns_per_run)),
            }),
        );
    }
    Value::Object(out)
}

/// Median of one metric at one place.
pub fn median(runs: &[Run], place: Place, get: fn(&Run) -> f64) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter(|r| r.place == place).map(get).collect();
    Summary::of(&v).map(|s| s.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dash_and_bash_times() {
        let dash = "storm_ns=8000652372\n0m0.070000s 0m0.290000s\n0m2.920000s 0m0.240000s\n";
        let (wall, cpu) = parse(dash).unwrap();
        assert!((wall - 8.000_652_372).abs() < 1e-9);
        assert!((cpu - 3.52).abs() < 1e-9);
        let bash = "storm_ns=1000000000\n0m0.010s 0m0.020s\n1m0.500s 0m0.500s\n";
        let (_, cpu) = parse(bash).unwrap();
        assert!((cpu - 61.03).abs() < 1e-9);
        assert!(parse("nothing").is_none());
    }
}
