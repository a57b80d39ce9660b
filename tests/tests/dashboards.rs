//! Issue 9's proof of `dashboards/` on real data: the e2e scenarios (clean and failing exits, a
//! crash loop, an OOM kill of the main process and of a child, a kill from a host process, an
//! escape, a leak, a task near its memory limit) run through the real Nomad agent while a real
//! Prometheus scrapes the driver's `/metrics` and Nomad's `/v1/metrics?format=prometheus` every
//! second with the shipped rule files loaded (evaluated every second). Then every panel and
//! annotation query of both dashboards runs against that Prometheus with the template variables
//! filled in as Grafana would from that run (each variable's own `label_values` query must offer
//! the run's values), and must return data (or a non-zero value) where the run produced some;
//! every recording and alerting rule must evaluate without error, the ones the run triggers must
//! return data, the others must find the series they watch; and Prometheus must report
//! `BpfexecTaskOOMKilled` and `BpfexecTaskKilledFromOutside` firing for the right job and task.
//! A panel or rule without an expectation here fails the test, so none is left unproved.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use bpfexec_e2e::isolation::{host_is_cgroup_v2, shell_config};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::mixin::{self, Dashboard, regex_value};
use bpfexec_e2e::observe::escape::{TestCgroup, await_sleep};
use bpfexec_e2e::observe::scenario::{GATE, HOG, start_gated};
use bpfexec_e2e::observe::{KillBot, exit_events, wait_ended, wait_notice};
use bpfexec_e2e::peers::prometheus::{AlertState, RuleKind};
use bpfexec_e2e::peers::{Prometheus, PrometheusConfig, ScrapeJob};
use bpfexec_e2e::suite::{self, TIMEOUT};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks};

/// Scrape and rule evaluation interval of the test's Prometheus.
const SCRAPE: Duration = Duration::from_secs(1);
/// Range-query step, i.e. Grafana's `$__interval`.
const STEP: Duration = Duration::from_secs(2);
/// Grafana's `$__rate_interval`: max(`$__interval` + scrape interval, 4 × scrape interval).
const RATE_INTERVAL: &str = "4s";
/// How long a rule or alert may take to show what the run did.
const SETTLE: Duration = Duration::from_secs(90);

/// The driver's `http_addr` port.
static PORT: OnceLock<u16> = OnceLock::new();

#[test]
fn dashboards_on_real_data() {
    if !suite::is_bpfexec() {
        println!("SKIP: dashboards_on_real_data: bpfexec-only (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    // Trace export goes to a loopback port nothing listens on: every export fails (the export
    // panels and BpfexecOTLPExportFailing see errors), and two process spans per run cap the
    // rest (the capped-spans panel sees them).
    let dead = bpfexec_e2e::env::free_port().unwrap_or(0);
    run_checks(
        "dashboards_on_real_data",
        AgentOptions::bpfexec().plugin_config(&format!(
            "http_addr = \"127.0.0.1:{port}\"\n    allow_unisolated = true\n    \
             escape_check_interval = \"1s\"\n    metrics_retention = \"30m\"\n    \
             otlp {{\n      endpoint = \"http://127.0.0.1:{dead}\"\n      timeout = \"1s\"\n      \
             max_process_spans = 2\n    }}"
        )),
        &[Check {
            name: "panels_and_rules",
            run: panels_and_rules,
        }],
    );
}

/// What a panel query must show for the run.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// At least one series with a value.
    Data,
    /// A value above 0 somewhere in the run.
    NonZero,
    /// cgroup v2 only (PSI): a value on a v2 host; on v1 the kernel has no such files.
    V2Only,
    /// Needs `kernel.bpf_stats_enabled=1`: non-zero when the driver reports it on, else data.
    BpfStats,
}

/// Expectations of every panel, by title (annotations as `annotation <name>`), or of one
/// query of a panel (`<title>/<refId>`).
const PANELS: [(&str, Expect); 40] = [
    // bpfexec / Tasks
    ("Task ends by reason", Expect::NonZero),
    ("Failed task ends by task", Expect::NonZero),
    ("Recent task ends", Expect::NonZero),
    ("Restarts", Expect::NonZero),
    ("Start time (StartTask to exec)", Expect::NonZero),
    ("OOM kills by victim", Expect::NonZero),
    ("Processes killed by a signal, by sender", Expect::NonZero),
    ("Signals received, by sender", Expect::NonZero),
    ("Live processes", Expect::NonZero),
    ("Exec and fork rate", Expect::NonZero),
    ("Escapes and leaks", Expect::NonZero),
    ("Process-count limit hits", Expect::NonZero),
    ("Memory use of the limit", Expect::NonZero),
    ("Memory limit hits and OOM events", Expect::NonZero),
    ("Pressure stall time (PSI, cgroup v2)", Expect::V2Only),
    ("Memory usage and limit", Expect::NonZero),
    (
        "Nomad: task memory (RSS, usage, allocated)",
        Expect::NonZero,
    ),
    ("Nomad: task CPU", Expect::Data),
    ("annotation Task ends", Expect::NonZero),
    // bpfexec / Observer health
    ("Probes loaded", Expect::NonZero),
    ("Attached probe programs", Expect::NonZero),
    ("BPF run-time statistics", Expect::Data),
    ("OTLP trace export", Expect::NonZero),
    ("Driver build", Expect::NonZero),
    ("Probe programs", Expect::NonZero),
    ("Probe events by kind", Expect::NonZero),
    ("Events lost", Expect::Data),
    ("Observer lag", Expect::Data),
    ("Probe CPU time per program", Expect::BpfStats),
    ("Probe time per run", Expect::BpfStats),
    ("Map use", Expect::NonZero),
    ("Plugin CPU", Expect::NonZero),
    ("Plugin memory", Expect::NonZero),
    ("Plugin open file descriptors", Expect::NonZero),
    ("Tasks known to the plugin", Expect::NonZero),
    ("OTLP spans exported and dropped/A", Expect::Data),
    ("OTLP spans exported and dropped/B", Expect::NonZero),
    ("OTLP export errors", Expect::NonZero),
    ("Facts dropped by slow sinks", Expect::Data),
    ("Process spans over the cap", Expect::NonZero),
];

/// What a rule must show for the run: data for the scenario's job (or for the driver), or, for
/// a rule the run does not trigger, the series it watches must exist.
#[derive(Clone, Copy, Debug)]
enum RuleExpect {
    Data(Scenario),
    DriverData,
    Watches(&'static [&'static str]),
}

/// The run's scenarios; each is one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    CleanExit,
    CrashLoop,
    OomMain,
    OomChild,
    HostKill,
    Leak,
    Escape,
    NearLimit,
    PidsLimit,
}

const RULES: [(&str, RuleExpect); 22] = [
    (
        "task:bpfexec_task_exits:increase5m",
        RuleExpect::Data(Scenario::OomMain),
    ),
    (
        "task:bpfexec_task_exits:increase15m",
        RuleExpect::Data(Scenario::CrashLoop),
    ),
    (
        "task:bpfexec_task_oom_kills:increase5m",
        RuleExpect::Data(Scenario::OomChild),
    ),
    (
        "task:bpfexec_task_signal_kills:increase5m",
        RuleExpect::Data(Scenario::HostKill),
    ),
    (
        "task:bpfexec_task_escapes:increase5m",
        RuleExpect::Data(Scenario::Escape),
    ),
    (
        "task:bpfexec_task_leaked_processes:increase5m",
        RuleExpect::Data(Scenario::Leak),
    ),
    // The child-OOM task runs on 12 s after the kill, so its cgroup is read after it (the
    // main-OOM task's may be gone before the 5 s reading comes).
    (
        "task:bpfexec_task_memory_events:increase5m",
        RuleExpect::Data(Scenario::OomChild),
    ),
    (
        "task:bpfexec_task_pids_limit_hits:increase5m",
        RuleExpect::Data(Scenario::PidsLimit),
    ),
    (
        "BpfexecTaskPidsLimitReached",
        RuleExpect::Data(Scenario::PidsLimit),
    ),
    ("BpfexecTaskOOMKilled", RuleExpect::Data(Scenario::OomMain)),
    (
        "BpfexecChildProcessOOMKilled",
        RuleExpect::Data(Scenario::OomChild),
    ),
    (
        "BpfexecTaskKilledFromOutside",
        RuleExpect::Data(Scenario::HostKill),
    ),
    (
        "BpfexecTaskCrashLooping",
        RuleExpect::Data(Scenario::CrashLoop),
    ),
    (
        "BpfexecProcessEscapedCgroup",
        RuleExpect::Data(Scenario::Escape),
    ),
    ("BpfexecProcessesLeaked", RuleExpect::Data(Scenario::Leak)),
    (
        "BpfexecTaskMemoryPressure",
        RuleExpect::Data(Scenario::NearLimit),
    ),
    (
        "BpfexecDriverMetricsDown",
        RuleExpect::Watches(&["up{job=\"bpfexec\"}"]),
    ),
    (
        "BpfexecProbesNotLoaded",
        RuleExpect::Watches(&["bpfexec_probes_loaded == 1"]),
    ),
    (
        "BpfexecObserverLosingEvents",
        RuleExpect::Watches(&[
            "bpfexec_ringbuf_lost_records_total",
            "bpfexec_observer_lagged_events_total",
        ]),
    ),
    (
        "BpfexecTrackedProcessMapFull",
        RuleExpect::Watches(&[
            "bpfexec_map_entries{map=\"tracked\"}",
            "bpfexec_map_capacity{map=\"tracked\"}",
        ]),
    ),
    ("BpfexecOTLPExportFailing", RuleExpect::DriverData),
    (
        "BpfexecSinkDroppingFacts",
        RuleExpect::Watches(&["bpfexec_sink_dropped_facts_total"]),
    ),
];

/// The run: job id per scenario, and when it started.
struct Run {
    jobs: BTreeMap<Scenario, String>,
    /// The allocations whose run ended with the driver's exit-reason event.
    ended: BTreeMap<Scenario, String>,
    start: SystemTime,
}

impl Run {
    fn job(&self, s: Scenario) -> &str {
        self.jobs.get(&s).map_or("", String::as_str)
    }
}

fn panels_and_rules(agent: &mut Agent) -> Result<()> {
    let port = *PORT.get().context("no driver port")?;
    let driver = format!("127.0.0.1:{port}");
    let mut config = PrometheusConfig::new()
        .scrape_interval(SCRAPE)
        .evaluation_interval(SCRAPE)
        .scrape(ScrapeJob::bpfexec(&driver))
        .scrape(ScrapeJob::nomad(agent.addr()));
    for file in mixin::rule_files() {
        config = config.rule_file(file);
    }
    let prom = Prometheus::start(config)?;
    prom.wait_targets_up(Duration::from_secs(60))?;
    let run = run_scenarios(agent)?;

    // The two alerts the issue requires to fire, for the right job and task.
    for (alert, scenario) in [
        ("BpfexecTaskOOMKilled", Scenario::OomMain),
        ("BpfexecTaskKilledFromOutside", Scenario::HostKill),
    ] {
        let firing = prom.wait_for_alert(
            alert,
            &[("exported_job", run.job(scenario)), ("task", TASK)],
            SETTLE,
        )?;
        println!("{alert} firing: {:?}", firing.labels);
    }
    check_rules(&prom, &run)?;
    check_trace_ids(agent, &prom, &run)?;
    check_dashboards(&prom, &run, &driver)
}

/// The trace id the Recent task ends table links to is the run's: the one the driver put in
/// the run's exit task event.
fn check_trace_ids(agent: &Agent, prom: &Prometheus, run: &Run) -> Result<()> {
    for (scenario, alloc) in &run.ended {
        let a = agent.api().alloc(alloc)?;
        let event = exit_events(&a)
            .pop()
            .with_context(|| format!("{scenario:?}: no exit-reason event in {}", a.describe()))?;
        let want = event
            .detail("trace_id")
            .with_context(|| format!("{scenario:?}: the exit event has no trace_id: {event}"))?;
        // Polled: a scrape that times out on a loaded machine marks every series of the target
        // stale until the next one succeeds.
        let query = format!("bpfexec_task_end_timestamp_seconds{{alloc_id=\"{alloc}\"}}");
        poll_until(
            &format!("{scenario:?}: a row of the task ends table with the run's trace id {want}"),
            SETTLE,
            POLL,
            |last| {
                let ends = prom.query_vector(&query)?;
                if ends.iter().any(|s| s.label("trace_id") == Some(want)) {
                    return Ok(Some(()));
                }
                *last = format!("`{query}` returned {ends:?}");
                Ok(None)
            },
        )?;
        println!("TRACE {scenario:?}: the table links to trace {want}");
    }
    Ok(())
}

/// Runs every scenario to its end (the near-limit task keeps running); returns the jobs.
fn run_scenarios(agent: &mut Agent) -> Result<Run> {
    let start = SystemTime::now();
    let api = agent.api();
    let mut jobs = BTreeMap::new();
    let mut register = |scenario: Scenario, job: &bpfexec_e2e::JobSpec| -> Result<String> {
        let id = api.register_job(&job.to_hcl())?;
        jobs.insert(scenario, id.clone());
        api.wait_job_alloc(&id, TIMEOUT)
    };

    // The long-running task near its memory limit: 118 MiB of 128 MiB resident, in 1 MiB
    // pieces so no temporary copy crosses the limit.
    let near = register(
        Scenario::NearLimit,
        &suite::service("dash-near-limit")
            .command("/usr/bin/perl")
            .args([
                "-e",
                "my @a; push @a, 'a' x (1024 * 1024) for 1 .. 118; sleep 1000",
            ])
            .memory_mb(128),
    )?;
    let clean = register(
        Scenario::CleanExit,
        &suite::batch("dash-clean").shell("sleep 1; exit 0"),
    )?;
    let crash = register(
        Scenario::CrashLoop,
        &suite::service("dash-crash")
            .shell("sleep 1; exit 3")
            .restarts(2, "1s"),
    )?;
    let oom = register(
        Scenario::OomMain,
        &suite::batch("dash-oom-main")
            .shell(&format!("sleep 2; exec {HOG}"))
            .memory_mb(32),
    )?;
    let oom_child = register(
        Scenario::OomChild,
        &suite::batch("dash-oom-child")
            .shell(&format!("sleep 2; {HOG}; sleep 12; exit 0"))
            .memory_mb(32),
    )?;
    let leak = register(
        Scenario::Leak,
        &suite::batch("dash-leak").raw_config(&shell_config(
            "setsid /bin/sh -c 'echo $$ > \"$NOMAD_ALLOC_DIR/stayer\"; exec sleep 1000' &\n\
             while [ ! -s \"$NOMAD_ALLOC_DIR/stayer\" ]; do sleep 0.1; done\nsleep 1; exit 0\n",
            &["isolation = \"none\""],
        )),
    )?;
    // A burst of 20 background sleeps in a task limited to 8 processes: the kernel refuses
    // the rest (a shell whose fork fails exits, hence the subshell).
    let pids = register(
        Scenario::PidsLimit,
        &suite::batch("dash-pids").raw_config(&shell_config(
            "(i=0; while [ $i -lt 20 ]; do sleep 2 & i=$((i+1)); done) 2>/dev/null; sleep 1; exit 0",
            &["pids_max = 8"],
        )),
    )?;
    let cg = TestCgroup::create()?;
    let escape = register(
        Scenario::Escape,
        &suite::service("dash-escape").raw_config(&shell_config(
            &format!(
                "{}{}while :; do sleep 0.2; done\n",
                cg.escapee("escapee"),
                await_sleep("escapee")
            ),
            &["isolation = \"none\""],
        )),
    )?;

    // A host process kills a task's main process.
    let victim_job = suite::service("dash-host-kill").shell(&format!("{GATE}exec sleep 1000"));
    let (victim_id, victim, pid) = start_gated(agent, &victim_job.to_hcl())?;
    jobs.insert(Scenario::HostKill, victim_id);
    KillBot::new()?.send("TERM", pid)?;

    wait_ended(api, &clean, &["complete"])?;
    wait_ended(api, &oom, &["failed"])?;
    wait_ended(api, &oom_child, &["complete"])?;
    wait_ended(api, &victim, &["failed"])?;
    wait_ended(api, &leak, &["complete"])?;
    wait_notice(api, &leak, "leak")?;
    wait_notice(api, &pids, "pids-limit")?;
    wait_ended(api, &pids, &["complete"])?;
    wait_notice(api, &escape, "cgroup-escape")?;
    api.wait_alloc_status(&crash, &["failed"], Duration::from_secs(120))?;
    api.wait_alloc_status(&near, &["running"], TIMEOUT)?;
    api.stop_job(&jobs[&Scenario::Escape], false)?;
    api.wait_alloc_status(&escape, &["complete"], TIMEOUT)?;
    drop(cg);
    println!("scenarios done: {jobs:?}");
    let ended = [
        (Scenario::CleanExit, clean),
        (Scenario::OomMain, oom),
        (Scenario::OomChild, oom_child),
        (Scenario::HostKill, victim),
    ]
    .into_iter()
    .collect();
    Ok(Run { jobs, ended, start })
}

/// Every rule evaluates without error; its query returns data over the run (for the
/// scenario's job), or the series it watches exist.
fn check_rules(prom: &Prometheus, run: &Run) -> Result<()> {
    let expected: BTreeMap<&str, RuleExpect> = RULES.into_iter().collect();
    let groups = prom.rules()?;
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for rule in groups.iter().flat_map(|g| &g.rules) {
        seen.insert(rule.name.clone());
        let Some(expect) = expected.get(rule.name.as_str()) else {
            problems.push(format!(
                "rule {} has no expectation in this test",
                rule.name
            ));
            continue;
        };
        if rule.health != "ok" || !rule.last_error.is_empty() {
            problems.push(format!(
                "rule {} is unhealthy ({}): {}",
                rule.name, rule.health, rule.last_error
            ));
        }
        let outcome = match expect {
            RuleExpect::Data(scenario) => {
                let query = match rule.kind {
                    RuleKind::Recording => rule.name.clone(),
                    RuleKind::Alerting => format!("({})", rule.query),
                };
                let filtered = format!(
                    "{query} and on (exported_job) bpfexec_task_starts_total{{exported_job=\"{}\"}}",
                    run.job(*scenario)
                );
                wait_range_data(prom, &filtered, run.start)
                    .map(|n| format!("{n} series for {scenario:?}"))
            }
            RuleExpect::DriverData => {
                wait_range_data(prom, &format!("({})", rule.query), run.start)
                    .map(|n| format!("{n} series for the driver"))
            }
            RuleExpect::Watches(selectors) => selectors
                .iter()
                .map(|sel| {
                    let samples = prom.query_vector(sel)?;
                    ensure!(!samples.is_empty(), "{sel} has no series");
                    Ok(())
                })
                .collect::<Result<Vec<()>>>()
                .map(|_| format!("silent; watches {selectors:?}")),
        };
        match outcome {
            Ok(what) => println!("RULE {:<46} ok: {what}", rule.name),
            Err(e) => problems.push(format!("rule {}: {e:#}", rule.name)),
        }
    }
    for name in expected.keys().filter(|n| !seen.contains(**n)) {
        problems.push(format!("rule {name} is not loaded by Prometheus"));
    }
    let alerts = prom.alerts()?;
    println!(
        "alerts: {:?}",
        alerts
            .iter()
            .map(|a| (a.name(), a.state, a.label("exported_job").unwrap_or("")))
            .collect::<Vec<_>>()
    );
    ensure!(
        !alerts
            .iter()
            .any(|a| a.state == AlertState::Firing && a.name() == "BpfexecProbesNotLoaded"),
        "BpfexecProbesNotLoaded fires in a healthy run"
    );
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// Polls a range query over the run until it has a series with a value; returns the count.
fn wait_range_data(prom: &Prometheus, query: &str, start: SystemTime) -> Result<usize> {
    poll_until(&format!("`{query}` to return data"), SETTLE, POLL, |last| {
        let series = prom.query_range(query, start, SystemTime::now(), STEP)?;
        let with_values = series
            .iter()
            .filter(|s| s.points.iter().any(|(_, v)| v.is_finite()))
            .count();
        if with_values > 0 {
            return Ok(Some(with_values));
        }
        *last = format!("{} series, none with a value", series.len());
        Ok(None)
    })
}

/// Every panel and annotation query of both dashboards, variables filled from the run.
fn check_dashboards(prom: &Prometheus, run: &Run, driver: &str) -> Result<()> {
    let expected: BTreeMap<&str, Expect> = PANELS.into_iter().collect();
    let v2 = host_is_cgroup_v2();
    let bpf_stats = prom
        .query_vector(&format!(
            "bpfexec_bpf_stats_enabled{{instance=\"{driver}\"}}"
        ))?
        .first()
        .is_some_and(|s| s.value > 0.5);
    let tasks = Dashboard::load("bpfexec-tasks.json")?;
    let observer = Dashboard::load("bpfexec-observer.json")?;
    let run_jobs: Vec<String> = run.jobs.values().cloned().collect();
    let mut chosen = BTreeMap::new();
    chosen.insert("namespace", vec!["default".to_owned()]);
    chosen.insert("job", run_jobs);
    chosen.insert("instance", vec![driver.to_owned()]);

    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for dash in [&tasks, &observer] {
        let values = variables(prom, dash, &chosen)?;
        for q in &dash.queries {
            seen.insert(q.panel.clone());
            seen.insert(format!("{}/{}", q.panel, q.ref_id));
            let key = format!("{}/{}", q.panel, q.ref_id);
            let Some(expect) = expected
                .get(key.as_str())
                .or_else(|| expected.get(q.panel.as_str()))
            else {
                problems.push(format!(
                    "{}: panel {:?} has no expectation in this test",
                    dash.file, q.panel
                ));
                continue;
            };
            let expr = mixin::fill(&q.expr, &values);
            let values_seen = if q.instant {
                prom.query_vector(&expr)
                    .map(|s| s.iter().map(|s| s.value).collect::<Vec<f64>>())
            } else {
                prom.query_range(&expr, run.start, SystemTime::now(), STEP)
                    .map(|series| {
                        series
                            .iter()
                            .flat_map(|s| s.points.iter().map(|(_, v)| *v))
                            .collect()
                    })
            };
            let values_seen: Vec<f64> = match values_seen {
                Ok(v) => v.into_iter().filter(|v| v.is_finite()).collect(),
                Err(e) => {
                    problems.push(format!("{} / {} {}: {e}", dash.file, q.panel, q.ref_id));
                    continue;
                }
            };
            let has_data = !values_seen.is_empty();
            let non_zero = values_seen.iter().any(|v| *v > 0.0);
            let verdict = match expect {
                Expect::Data => has_data.then_some("data"),
                Expect::NonZero => non_zero.then_some("non-zero"),
                Expect::V2Only if v2 => non_zero.then_some("non-zero (cgroup v2)"),
                Expect::V2Only => {
                    (!has_data).then_some("empty as it must be on cgroup v1: NOT PROVED here")
                }
                Expect::BpfStats if bpf_stats => non_zero.then_some("non-zero (bpf stats on)"),
                Expect::BpfStats => Some("bpf stats off: not required"),
            };
            match verdict {
                Some(v) => println!(
                    "PANEL {:<28} {:<44} {}: {v} ({} values)",
                    dash.file,
                    q.panel,
                    q.ref_id,
                    values_seen.len()
                ),
                None => problems.push(format!(
                    "{} / {} query {}: expected {expect:?}, got {} values ({} > 0)\n    {expr}",
                    dash.file,
                    q.panel,
                    q.ref_id,
                    values_seen.len(),
                    values_seen.iter().filter(|v| **v > 0.0).count()
                )),
            }
        }
    }
    for name in expected.keys().filter(|n| !seen.contains(**n)) {
        problems.push(format!(
            "panel {name:?} is in this test but in no dashboard"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} dashboard problem(s):\n{}",
            problems.len(),
            problems.join("\n")
        )
    }
}

/// Grafana's variable values for a dashboard: each filter's `label_values` query (narrowed by
/// the filters before it) must offer the run's values; `chosen` picks some, the others take
/// every value offered.
fn variables(
    prom: &Prometheus,
    dash: &Dashboard,
    chosen: &BTreeMap<&str, Vec<String>>,
) -> Result<BTreeMap<String, String>> {
    let mut values = BTreeMap::new();
    values.insert("__interval".to_owned(), format!("{}s", STEP.as_secs()));
    values.insert("__rate_interval".to_owned(), RATE_INTERVAL.to_owned());
    for var in dash.filters() {
        let (selector, label) = var.label_values()?;
        let selector = mixin::fill(&selector, &values);
        let offered: BTreeSet<String> = prom
            .series(&selector)?
            .into_iter()
            .filter_map(|labels| labels.get(&label).cloned())
            .collect();
        let pick: Vec<String> = match chosen.get(var.name.as_str()) {
            Some(want) => {
                let missing: Vec<&String> = want.iter().filter(|w| !offered.contains(*w)).collect();
                ensure!(
                    missing.is_empty(),
                    "{}: variable {} does not offer {missing:?} (label_values({selector}, {label}) \
                     offers {offered:?})",
                    dash.file,
                    var.name
                );
                want.clone()
            }
            None => offered.into_iter().collect(),
        };
        ensure!(
            !pick.is_empty(),
            "{}: variable {} offers nothing: label_values({selector}, {label})",
            dash.file,
            var.name
        );
        println!("VAR {} ${} = {pick:?}", dash.file, var.name);
        values.insert(var.name.clone(), regex_value(&pick));
    }
    Ok(values)
}
