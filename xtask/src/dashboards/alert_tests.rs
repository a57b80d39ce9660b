//! promtool unit tests for every alert (`promtool test rules`): for each, series that must
//! make it fire (with the exact labels and rendered annotations) and series that must leave
//! it silent, plus checks of the recorded event counts. Written as typed cases and rendered
//! to the promtool test-file format.

use anyhow::{Context, Result};

use super::alerts;
use super::rules::{Alert, Rule, expand};
use super::yaml::Yaml;

/// The driver's scrape target in the cases.
const INSTANCE: &str = "client-1:9464";
/// The labels of one task's series: the target's and Nomad's allocation labels.
const TASK_LABELS: [(&str, &str); 7] = [
    ("instance", INSTANCE),
    ("job", "bpfexec"),
    ("namespace", "default"),
    ("exported_job", "web"),
    ("task_group", "frontend"),
    ("task", "server"),
    ("alloc_id", "5c1f0e2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b"),
];

/// Label pairs, in the order they are written.
type Labels = Vec<(String, String)>;

fn labels_text(labels: &[(String, String)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn owned(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The task's labels plus `extra`.
fn task_labels(extra: &[(&str, &str)]) -> Labels {
    let mut l = owned(&TASK_LABELS);
    l.extend(owned(extra));
    l
}

/// A series of the task (`metric{task labels, extra}`) with promtool's expanding values.
fn task_series(metric: &str, extra: &[(&str, &str)], values: &str) -> (String, String) {
    (
        format!("{metric}{{{}}}", labels_text(&task_labels(extra))),
        values.to_owned(),
    )
}

/// A series of the driver's target (`metric{instance, job, extra}`).
fn driver_series(metric: &str, extra: &[(&str, &str)], values: &str) -> (String, String) {
    let mut l = owned(&TASK_LABELS[..2]);
    l.extend(owned(extra));
    (
        format!("{metric}{{{}}}", labels_text(&l)),
        values.to_owned(),
    )
}

/// The target's `up`, scraped since the start of the case (task series that appear later are
/// new: they count from 0).
fn up() -> (String, String) {
    driver_series("up", &[], "1+0x40")
}

/// One expected firing alert: its labels (without alertname and severity) and `$value`.
struct Firing {
    labels: Labels,
    value: f64,
}

fn firing(labels: Labels, value: f64) -> Firing {
    Firing { labels, value }
}

struct Case {
    /// What the case shows (rendered as the test group's name).
    what: &'static str,
    alert: &'static str,
    series: Vec<(String, String)>,
    eval_at: &'static str,
    /// Empty: the alert must be silent at `eval_at`.
    fires: Vec<Firing>,
}

fn case(what: &'static str, alert: &'static str, eval_at: &'static str) -> Case {
    Case {
        what,
        alert,
        series: vec![up()],
        eval_at,
        fires: Vec::new(),
    }
}

impl Case {
    fn series(mut self, s: (String, String)) -> Self {
        self.series.push(s);
        self
    }
    fn fires(mut self, f: Firing) -> Self {
        self.fires.push(f);
        self
    }
    fn without_up(mut self) -> Self {
        self.series.retain(|(s, _)| !s.starts_with("up{"));
        self
    }
}

#[allow(clippy::too_many_lines)] // one list of cases reads better than many small functions
fn alert_cases() -> Vec<Case> {
    let exits = "bpfexec_task_exits_total";
    let oom = "bpfexec_task_oom_kills_total";
    let kills = "bpfexec_task_signal_kills_total";
    let escapes = "bpfexec_task_escapes_total";
    let leaks = "bpfexec_task_leaked_processes_total";
    let pids = "bpfexec_task_pids_limit_hits_total";
    let oom_killed = [("reason", "oom_killed")];
    let child = [("victim", "child"), ("scope", "cgroup")];
    let main = [("victim", "main"), ("scope", "cgroup")];
    let by_host = [("victim", "main"), ("sender_class", "host")];
    let by_other = [("victim", "main"), ("sender_class", "other_allocation")];
    // Events are checked a minute after they happen: an alert reads what the recording group
    // stored at the previous evaluation.
    vec![
        case("an OOM-killed task fires", "BpfexecTaskOOMKilled", "8m")
            .series(task_series(exits, &oom_killed, "0x6 1x4"))
            .fires(firing(task_labels(&oom_killed), 1.0)),
        case(
            "a task OOM-killed before its first scrape fires",
            "BpfexecTaskOOMKilled",
            "8m",
        )
        .series(task_series(exits, &oom_killed, "_x6 1x4"))
        .fires(firing(task_labels(&oom_killed), 1.0)),
        case(
            "a task started and OOM-killed in Prometheus's first minutes fires",
            "BpfexecTaskOOMKilled",
            "3m",
        )
        .series(task_series(exits, &oom_killed, "_ 0 1 1"))
        .fires(firing(task_labels(&oom_killed), 1.0)),
        case(
            "an old OOM kill seen by a fresh Prometheus stays silent",
            "BpfexecTaskOOMKilled",
            "2m",
        )
        .series(task_series(exits, &oom_killed, "1x10")),
        case(
            "an OOM kill is resolved after 5 minutes",
            "BpfexecTaskOOMKilled",
            "14m",
        )
        .series(task_series(exits, &oom_killed, "0x6 1x10")),
        case("a clean exit stays silent", "BpfexecTaskOOMKilled", "8m")
            .series(task_series(exits, &[("reason", "exited_ok")], "0x6 1x4"))
            .series(task_series(exits, &oom_killed, "0x10")),
        case(
            "a child's OOM kill fires",
            "BpfexecChildProcessOOMKilled",
            "8m",
        )
        .series(task_series(oom, &child, "0x6 1x4"))
        .series(task_series(oom, &main, "0x10"))
        .fires(firing(task_labels(&[("victim", "child")]), 1.0)),
        case(
            "the main process's OOM kill is not a child's",
            "BpfexecChildProcessOOMKilled",
            "8m",
        )
        .series(task_series(oom, &main, "0x6 1x4"))
        .series(task_series(oom, &child, "0x10")),
        case(
            "a kill from a host process fires",
            "BpfexecTaskKilledFromOutside",
            "8m",
        )
        .series(task_series(kills, &by_host, "0x6 1x4"))
        .fires(firing(task_labels(&by_host), 1.0)),
        case(
            "a kill from another allocation fires",
            "BpfexecTaskKilledFromOutside",
            "8m",
        )
        .series(task_series(kills, &by_other, "0x6 1x4"))
        .fires(firing(task_labels(&by_other), 1.0)),
        case(
            "a stop by the driver stays silent",
            "BpfexecTaskKilledFromOutside",
            "8m",
        )
        .series(task_series(
            kills,
            &[("victim", "main"), ("sender_class", "driver")],
            "0x6 1x4",
        )),
        case(
            "a child killed by the host, or the task killing itself, stays silent",
            "BpfexecTaskKilledFromOutside",
            "8m",
        )
        .series(task_series(
            kills,
            &[("victim", "child"), ("sender_class", "host")],
            "0x6 1x4",
        ))
        .series(task_series(
            kills,
            &[("victim", "main"), ("sender_class", "same_task")],
            "0x6 1x4",
        )),
        case(
            "three failed runs in 15 minutes fire",
            "BpfexecTaskCrashLooping",
            "20m",
        )
        .series(task_series(
            exits,
            &[("reason", "exited_error")],
            "0x16 1 2 2 2",
        ))
        .series(task_series(
            exits,
            &[("reason", "signaled")],
            "0x16 0 0 1 1",
        ))
        .fires(firing(owned(&TASK_LABELS[2..6]), 3.0)),
        case(
            "failures across new allocations count (each died before its first scrape)",
            "BpfexecTaskCrashLooping",
            "19m",
        )
        .series(alloc_series("a1", "exited_error", "_x16 1x4"))
        .series(alloc_series("a2", "exited_error", "_x17 1x3"))
        .series(alloc_series("a3", "oom_killed", "_x18 1x2"))
        .fires(firing(owned(&TASK_LABELS[2..6]), 3.0)),
        case(
            "two failed runs stay silent",
            "BpfexecTaskCrashLooping",
            "20m",
        )
        .series(task_series(
            exits,
            &[("reason", "exited_error")],
            "0x16 1 2 2 2",
        )),
        case(
            "clean exits and driver stops never count as failures",
            "BpfexecTaskCrashLooping",
            "20m",
        )
        .series(task_series(
            exits,
            &[("reason", "exited_ok")],
            "0x15 1 2 3 4 5",
        ))
        .series(task_series(
            exits,
            &[("reason", "driver_killed")],
            "0x15 1 2 3 4 5",
        )),
        case(
            "an escaped process fires",
            "BpfexecProcessEscapedCgroup",
            "8m",
        )
        .series(task_series(escapes, &[], "0x6 1x4"))
        .fires(firing(task_labels(&[]), 1.0)),
        case(
            "no escape stays silent",
            "BpfexecProcessEscapedCgroup",
            "8m",
        )
        .series(task_series(escapes, &[], "0x10")),
        case("leaked processes fire", "BpfexecProcessesLeaked", "8m")
            .series(task_series(leaks, &[], "0x6 2x4"))
            .fires(firing(task_labels(&[]), 2.0)),
        case("no leak stays silent", "BpfexecProcessesLeaked", "8m").series(task_series(
            leaks,
            &[],
            "0x10",
        )),
        case("refused forks fire", "BpfexecTaskPidsLimitReached", "8m")
            .series(task_series(pids, &[], "0x6 12x4"))
            .fires(firing(task_labels(&[]), 12.0)),
        case(
            "a task below its process limit stays silent",
            "BpfexecTaskPidsLimitReached",
            "8m",
        )
        .series(task_series(pids, &[], "0x10")),
        memory_case(
            "RSS above 90% of the limit for 2 minutes fires",
            "60000000+0x10",
            "1",
        )
        .fires(firing(owned(&TASK_LABELS[2..]), 1.0)),
        memory_case("RSS at half the limit stays silent", "32000000+0x10", "1"),
        memory_case(
            "a task that is no longer running stays silent",
            "60000000+0x10",
            "0",
        ),
        case(
            "memory stalls over 10% of the time (PSI, v2) fire",
            "BpfexecTaskMemoryPressure",
            "6m",
        )
        .series(task_series(
            "bpfexec_task_pressure_seconds_total",
            &[("resource", "memory"), ("kind", "full")],
            "0+12x10",
        ))
        .series(running_series("1+0x10"))
        .fires(firing(owned(&TASK_LABELS[2..]), 1.0)),
        case(
            "an unreachable driver fires after 5 minutes",
            "BpfexecDriverMetricsDown",
            "6m",
        )
        .without_up()
        .series(driver_series("up", &[], "0+0x10"))
        .fires(firing(owned(&TASK_LABELS[..2]), 0.0)),
        case(
            "a reachable driver stays silent",
            "BpfexecDriverMetricsDown",
            "6m",
        ),
        case(
            "probes not loaded for 5 minutes fire",
            "BpfexecProbesNotLoaded",
            "6m",
        )
        .series(driver_series("bpfexec_probes_loaded", &[], "0+0x10"))
        .fires(firing(owned(&TASK_LABELS[..2]), 0.0)),
        case("loaded probes stay silent", "BpfexecProbesNotLoaded", "6m").series(driver_series(
            "bpfexec_probes_loaded",
            &[],
            "1+0x10",
        )),
        case(
            "records lost by the probes fire",
            "BpfexecObserverLosingEvents",
            "3m",
        )
        .series(driver_series(
            "bpfexec_ringbuf_lost_records_total",
            &[],
            "0 0 5 5",
        ))
        .series(driver_series(
            "bpfexec_observer_lagged_events_total",
            &[],
            "0 0 0 0",
        ))
        .fires(firing(owned(&TASK_LABELS[..2]), 0.0)),
        case("no loss stays silent", "BpfexecObserverLosingEvents", "3m")
            .series(driver_series(
                "bpfexec_ringbuf_lost_records_total",
                &[],
                "7 7 7 7",
            ))
            .series(driver_series(
                "bpfexec_observer_lagged_events_total",
                &[],
                "0 0 0 0",
            )),
        map_case("a tracked map over 90% full fires", "15000+0x10").fires(firing(
            owned(&[TASK_LABELS[0], TASK_LABELS[1], ("map", "tracked")]),
            0.0,
        )),
        map_case("a tracked map half full stays silent", "8000+0x10"),
        case(
            "export errors for 10 minutes fire",
            "BpfexecOTLPExportFailing",
            "12m",
        )
        .series(driver_series(
            "bpfexec_otlp_export_errors_total",
            &[],
            "0+1x20",
        ))
        .fires(firing(owned(&TASK_LABELS[..2]), 0.0)),
        case(
            "a single export error stays silent",
            "BpfexecOTLPExportFailing",
            "12m",
        )
        .series(driver_series(
            "bpfexec_otlp_export_errors_total",
            &[],
            "0 1+0x20",
        )),
        case(
            "facts dropped by a sink fire",
            "BpfexecSinkDroppingFacts",
            "3m",
        )
        .series(driver_series(
            "bpfexec_sink_dropped_facts_total",
            &[("sink", "traces")],
            "0 0 4 4",
        ))
        .series(driver_series(
            "bpfexec_sink_dropped_facts_total",
            &[("sink", "metrics")],
            "0 0 0 0",
        ))
        .fires(firing(
            owned(&[TASK_LABELS[0], TASK_LABELS[1], ("sink", "traces")]),
            0.0,
        )),
        case(
            "no dropped facts stay silent",
            "BpfexecSinkDroppingFacts",
            "3m",
        )
        .series(driver_series(
            "bpfexec_sink_dropped_facts_total",
            &[("sink", "traces")],
            "0 0 0 0",
        )),
    ]
}

/// The tracked-process map with `entries` of 16384.
fn map_case(what: &'static str, entries: &str) -> Case {
    let tracked = [("map", "tracked")];
    case(what, "BpfexecTrackedProcessMapFull", "6m")
        .series(driver_series("bpfexec_map_entries", &tracked, entries))
        .series(driver_series(
            "bpfexec_map_capacity",
            &tracked,
            "16384+0x10",
        ))
}

/// The task's `bpfexec_task_running` (with its run's trace id).
fn running_series(values: &str) -> (String, String) {
    task_series(
        "bpfexec_task_running",
        &[("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736")],
        values,
    )
}

/// Exits of the task in allocation `alloc` with `reason`.
fn alloc_series(alloc: &str, reason: &str, values: &str) -> (String, String) {
    (
        format!(
            "bpfexec_task_exits_total{{{}}}",
            labels_text(&alloc_labels(alloc, reason))
        ),
        values.to_owned(),
    )
}

/// The memory-pressure inputs: Nomad's RSS gauge of the task, the driver's limit (64 MB) and
/// whether the run is running.
fn memory_case(what: &'static str, rss: &str, running: &str) -> Case {
    let nomad_labels = [
        ("instance", "127.0.0.1:4646"),
        ("job", "nomad"),
        ("host", "client-1"),
        TASK_LABELS[2],
        TASK_LABELS[3],
        TASK_LABELS[4],
        TASK_LABELS[5],
        TASK_LABELS[6],
    ];
    case(what, "BpfexecTaskMemoryPressure", "4m")
        .series((
            format!(
                "nomad_client_allocs_memory_rss{{{}}}",
                labels_text(&owned(&nomad_labels))
            ),
            rss.to_owned(),
        ))
        .series(task_series(
            "bpfexec_task_memory_limit_bytes",
            &[],
            "64000000+0x10",
        ))
        .series(running_series(&format!("{running}+0x10")))
}

/// Labels of the task in allocation `alloc` with an exit `reason`.
fn alloc_labels(alloc: &str, reason: &str) -> Labels {
    let mut l = owned(&TASK_LABELS[..6]);
    l.push(("alloc_id".to_owned(), alloc.to_owned()));
    l.push(("reason".to_owned(), reason.to_owned()));
    l
}

/// A recorded series checked directly (`promql_expr_test`).
struct RecordCase {
    what: &'static str,
    series: Vec<(String, String)>,
    eval_at: &'static str,
    record: &'static str,
    /// The recorded samples: labels (without the name) and value.
    samples: Vec<(Labels, f64)>,
}

fn record_cases() -> Vec<RecordCase> {
    let exits = "bpfexec_task_exits_total";
    vec![
        RecordCase {
            what: "a counter reset (plugin restart) counts no negative events",
            series: vec![
                up(),
                task_series(exits, &[("reason", "exited_error")], "3x6 0 0"),
            ],
            eval_at: "8m",
            record: "task:bpfexec_task_exits:increase5m",
            samples: vec![(task_labels(&[("reason", "exited_error")]), 0.0)],
        },
        RecordCase {
            what: "events are whole numbers over exactly 5 minutes",
            series: vec![
                up(),
                task_series(exits, &[("reason", "signaled")], "0x6 1 1 2 2 2 2 2 2"),
            ],
            eval_at: "12m",
            record: "task:bpfexec_task_exits:increase5m",
            samples: vec![(task_labels(&[("reason", "signaled")]), 1.0)],
        },
    ]
}

fn series_yaml(series: &[(String, String)]) -> Yaml {
    Yaml::List(
        series
            .iter()
            .map(|(s, v)| {
                Yaml::Map(vec![
                    ("series", Yaml::str(s.clone())),
                    ("values", Yaml::str(v.clone())),
                ])
            })
            .collect(),
    )
}

fn labels_yaml(labels: &[(String, String)]) -> Yaml {
    Yaml::Labels(labels.to_vec())
}

/// The promtool test file, run from `dashboards/tests/`.
pub fn test_file() -> Result<Yaml> {
    let alerts: Vec<Alert> = alerts::alert_groups()
        .into_iter()
        .flat_map(|g| g.rules)
        .filter_map(|r| match r {
            Rule::Alert(a) => Some(a),
            Rule::Record { .. } => None,
        })
        .collect();
    let cases = alert_cases();
    // Every alert has a case that fires it and one that keeps it silent.
    for alert in &alerts {
        let mine: Vec<&Case> = cases.iter().filter(|c| c.alert == alert.name).collect();
        anyhow::ensure!(
            mine.iter().any(|c| !c.fires.is_empty()) && mine.iter().any(|c| c.fires.is_empty()),
            "alert {} needs a promtool case that fires it and one that keeps it silent",
            alert.name
        );
    }
    let mut tests = Vec::new();
    for c in &cases {
        let alert = alerts
            .iter()
            .find(|a| a.name == c.alert)
            .with_context(|| format!("test case `{}` names unknown alert {}", c.what, c.alert))?;
        tests.push(alert_test(c, alert)?);
    }
    tests.extend(record_cases().iter().map(record_test));
    Ok(Yaml::Map(vec![
        (
            "rule_files",
            Yaml::List(vec![
                Yaml::plain(format!("../{}", super::RULES_FILE)),
                Yaml::plain(format!("../{}", super::ALERTS_FILE)),
            ]),
        ),
        ("evaluation_interval", Yaml::plain("1m")),
        ("tests", Yaml::List(tests)),
    ]))
}

/// A test group checking one alert at one time, with the annotations it must render.
fn alert_test(c: &Case, alert: &Alert) -> Result<Yaml> {
    let mut exp = Vec::new();
    for f in &c.fires {
        let mut labels = f.labels.clone();
        labels.push(("severity".to_owned(), alert.severity.as_str().to_owned()));
        let summary = expand(alert.summary, &labels, f.value)
            .with_context(|| format!("summary of {}", alert.name))?;
        let description = expand(alert.description, &labels, f.value)
            .with_context(|| format!("description of {}", alert.name))?;
        exp.push(Yaml::Map(vec![
            ("exp_labels", labels_yaml(&labels)),
            (
                "exp_annotations",
                Yaml::Map(vec![
                    ("summary", Yaml::str(summary)),
                    ("description", Yaml::str(description)),
                ]),
            ),
        ]));
    }
    Ok(Yaml::Map(vec![
        ("name", Yaml::str(format!("{}: {}", c.alert, c.what))),
        ("interval", Yaml::plain("1m")),
        ("input_series", series_yaml(&c.series)),
        (
            "alert_rule_test",
            Yaml::List(vec![Yaml::Map(vec![
                ("eval_time", Yaml::plain(c.eval_at)),
                ("alertname", Yaml::plain(c.alert)),
                ("exp_alerts", Yaml::List(exp)),
            ])]),
        ),
    ]))
}

/// A test group checking the samples of one recorded series.
fn record_test(c: &RecordCase) -> Yaml {
    let record = c.record;
    let samples = c
        .samples
        .iter()
        .map(|(labels, value)| {
            Yaml::Map(vec![
                (
                    "labels",
                    Yaml::str(format!("{record}{{{}}}", labels_text(labels))),
                ),
                ("value", Yaml::plain(format!("{value}"))),
            ])
        })
        .collect();
    Yaml::Map(vec![
        ("name", Yaml::str(format!("{record}: {}", c.what))),
        ("interval", Yaml::plain("1m")),
        ("input_series", series_yaml(&c.series)),
        (
            "promql_expr_test",
            Yaml::List(vec![Yaml::Map(vec![
                ("expr", Yaml::str(record)),
                ("eval_time", Yaml::plain(c.eval_at)),
                ("exp_samples", Yaml::List(samples)),
            ])]),
        ),
    ])
}
