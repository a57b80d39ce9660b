//! Task start latency, per driver, one job at a time (interleaved across drivers so machine
//! noise spreads evenly). The task's command is `/bin/date +%s%N`: its first action is reading
//! the clock, so its stdout is the moment the user command ran ("running"). Compared with:
//! Nomad's `Received` and `Task Setup` events (ns; the task dir, and exec's chroot, are built
//! after `Task Setup`); logmon opening the task's FIFOs (the last prestart step before Nomad
//! calls StartTask, so logmon→running bounds any driver's StartTask→running from above); for
//! bpfexec, the birth time of its per-task state dir (created inside StartTask right after the
//! config is decoded and planned: the driver's own StartTask→running) and its "task started" log
//! line (StartTask about to return); and Nomad's `Started` event.

use std::time::Duration;

use anyhow::{Context, Result};
use bpfexec_e2e::{Agent, JobSpec};
use serde_json::{Value, json};

use super::agentlog::AgentLog;
use super::dirwatch::DirWatch;
use super::jobs::{self, Driver};
use super::stats::{Summary, json_of};

/// One measured start.
#[derive(Debug, Clone)]
pub struct Sample {
    pub driver: Driver,
    pub received_to_running_ms: f64,
    pub setup_to_running_ms: f64,
    pub logmon_to_running_ms: Option<f64>,
    pub running_to_started_event_ms: f64,
    pub driver_log_to_running_ms: Option<f64>,
    pub state_dir_to_running_ms: Option<f64>,
    pub driver_start_task_ms: Option<f64>,
}

/// The metrics, in report order: (key, description, getter).
pub type Metric = (&'static str, &'static str, fn(&Sample) -> Option<f64>);

pub const METRICS: [Metric; 7] = [
    (
        "received_to_running_ms",
        "Received event → command running (all of Nomad's task start, incl. exec's chroot)",
        |s| Some(s.received_to_running_ms),
    ),
    (
        "setup_to_running_ms",
        "Task Setup event → command running",
        |s| Some(s.setup_to_running_ms),
    ),
    (
        "logmon_to_running_ms",
        "logmon FIFOs open → command running (upper bound of StartTask → running; ms log resolution)",
        |s| s.logmon_to_running_ms,
    ),
    (
        "state_dir_to_running_ms",
        "bpfexec: task state dir created in StartTask → command running (file clock is jiffy-coarse: true value up to 4 ms less)",
        |s| s.state_dir_to_running_ms,
    ),
    (
        "driver_start_task_ms",
        "bpfexec: StartTask received → supervisor reports the command exec'd (driver's monotonic clock, µs precision)",
        |s| s.driver_start_task_ms,
    ),
    (
        "running_to_started_event_ms",
        "command running → Started event",
        |s| Some(s.running_to_started_event_ms),
    ),
    (
        "driver_log_to_running_ms",
        "bpfexec \"task started\" log (StartTask returning) → command running (ms log resolution)",
        |s| s.driver_log_to_running_ms,
    ),
];

fn ms(from_ns: i64, to_ns: i64) -> f64 {
    (to_ns - from_ns) as f64 / 1e6
}

/// Starts one `date` task on `driver` and measures it.
pub fn sample(agent: &Agent, driver: Driver, index: usize) -> Result<Sample> {
    let api = agent.api();
    let id = format!("bench-start-{}-{index}", driver.name().replace('_', "-"));
    let hcl = JobSpec::batch(&id)
        .driver(driver.name())
        .command("/bin/date")
        .args(["+%s%N"])
        .to_hcl();
    // Watched for every driver alike, so each sample carries the same (small) polling load.
    let watch = DirWatch::start(agent.layout().state_dir.join("tasks"));
    let ran = jobs::run_batch(api, &hcl, Duration::from_secs(300));
    let dirs = watch.finish();
    let (job, alloc, stdout) = ran?;
    let state_dir_born = dirs
        .iter()
        .find(|(name, _)| name.starts_with(&format!("{}_", alloc.id)))
        .map(|(_, t)| *t);
    let running: i64 = stdout
        .trim()
        .parse()
        .with_context(|| format!("{driver:?}: stdout {stdout:?} is not a timestamp"))?;
    let events = alloc.events(bpfexec_e2e::jobspec::TASK);
    let time_of = |kind: &str| {
        events
            .iter()
            .find(|e| e.kind == kind)
            .map(|e| e.time)
            .with_context(|| format!("alloc {} has no {kind} event", alloc.id))
    };
    let log = AgentLog::read(agent.log_path());
    let sample = Sample {
        driver,
        received_to_running_ms: ms(time_of("Received")?, running),
        setup_to_running_ms: ms(time_of("Task Setup")?, running),
        logmon_to_running_ms: log.logmon_ready(&alloc.id).map(|t| ms(t, running)),
        running_to_started_event_ms: ms(running, time_of("Started")?),
        driver_log_to_running_ms: (driver == Driver::Bpfexec)
            .then(|| log.bpfexec_task_started(&alloc.id).map(|t| ms(t, running)))
            .flatten(),
        state_dir_to_running_ms: state_dir_born.map(|t| ms(t, running)),
        driver_start_task_ms: (driver == Driver::Bpfexec)
            .then(|| log.bpfexec_start_us(&alloc.id).map(|us| us / 1000.0))
            .flatten(),
    };
    jobs::purge_and_gc(agent, &[job], Duration::from_secs(120))?;
    Ok(sample)
}

/// Runs `reps(driver)` samples per driver, interleaved.
pub fn run(agent: &Agent, reps: impl Fn(Driver) -> usize) -> Result<Vec<Sample>> {
    let max = Driver::ALL.iter().map(|d| reps(*d)).max().unwrap_or(0);
    let mut samples = Vec::new();
    for i in 0..max {
        for driver in Driver::ALL {
            if i >= reps(driver) {
                continue;
            }
            let s = sample(agent, driver, i)?;
            let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} ms"));
            println!(
                "    {:<9} #{:<2} Received→running {:>9.1} ms   logmon→running {:>9}   state dir→running {}",
                driver.name(),
                i + 1,
                s.received_to_running_ms,
                opt(s.logmon_to_running_ms),
                opt(s.state_dir_to_running_ms),
            );
            samples.push(s);
        }
    }
    Ok(samples)
}

/// Per driver and metric, the summary of the samples.
pub fn summarize(samples: &[Sample]) -> Vec<(Driver, &'static str, &'static str, Summary)> {
    let mut out = Vec::new();
    for driver in Driver::ALL {
        for (key, what, get) in METRICS {
            let values: Vec<f64> = samples
                .iter()
                .filter(|s| s.driver == driver)
                .filter_map(get)
                .collect();
            if let Some(s) = Summary::of(&values) {
                out.push((driver, key, what, s));
            }
        }
    }
    out
}

/// JSON: per driver, per metric summary plus the raw samples.
pub fn to_json(samples: &[Sample]) -> Value {
    let mut drivers = serde_json::Map::new();
    for driver in Driver::ALL {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.driver == driver).collect();
        let mut metrics = serde_json::Map::new();
        for (key, _, get) in METRICS {
            let values: Vec<f64> = mine.iter().copied().filter_map(get).collect();
            metrics.insert(
                key.to_owned(),
                json!({ "summary": json_of(Summary::of(&values)), "samples": values }),
            );
        }
        drivers.insert(driver.name().to_owned(), Value::Object(metrics));
    }
    Value::Object(drivers)
}
