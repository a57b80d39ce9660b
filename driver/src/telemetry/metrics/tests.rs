//! The metrics sink fed with fact sequences, read back through the exposition text.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::observer::{ExitReason, OomScope, Sender, SenderClass};
use crate::telemetry::fact::{
    EndKind, Fact, MainProcess, ProcessFact, StartPhases, TaskEnd, TaskIdentity,
};

fn identity(alloc: &str) -> Arc<TaskIdentity> {
    Arc::new(TaskIdentity {
        task_id: format!("{alloc}/web/1"),
        alloc_id: alloc.into(),
        namespace: "default".into(),
        job_id: "shop".into(),
        job_name: "shop".into(),
        task_group: "g".into(),
        task_name: "web".into(),
        ..TaskIdentity::default()
    })
}

fn started(t: &Arc<TaskIdentity>) -> Fact {
    Fact::Started {
        task: Arc::clone(t),
        at: SystemTime::now(),
        start_duration: Some(Duration::from_millis(8)),
        phases: StartPhases::default(),
        main: MainProcess {
            pid: 100,
            ..MainProcess::default()
        },
    }
}

fn ended(t: &Arc<TaskIdentity>, reason: Option<ExitReason>, code: i32, signal: i32) -> Fact {
    Fact::Ended {
        task: Arc::clone(t),
        end: TaskEnd {
            at: SystemTime::now(),
            exit_code: code,
            signal,
            oom_killed: false,
            kind: EndKind::of(reason.as_ref()),
            reason,
            message: String::new(),
            annotations: BTreeMap::new(),
        },
    }
}

fn process(t: &Arc<TaskIdentity>, fact: ProcessFact) -> Fact {
    Fact::Process {
        key: t.key(),
        at: SystemTime::now(),
        fact,
    }
}

fn sender(class: SenderClass) -> Sender {
    Sender {
        pid: 1,
        comm: "kill".into(),
        uid: Some(0),
        class,
        code: 0,
    }
}

/// The value of the sample whose line starts with `name{` and contains every `labels` pair.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("alloc_id="))
        .count()
}

#[test]
fn every_exit_reason_exists_at_zero_from_the_start() {
    let m = Metrics::new("v1", "6.18");
    let t = identity("a1");
    m.apply(&[started(&t)]);
    let text = m.encode(Format::OpenMetrics);
    for kind in EndKind::ALL {
        assert_eq!(
            value(
                &text,
                "bpfexec_task_exits_total",
                &[("reason", kind.name()), ("alloc_id", "a1")]
            ),
            Some(0.0),
            "{}:\n{text}",
            kind.name()
        );
    }
    for v in ["main", "child"] {
        assert_eq!(
            value(
                &text,
                "bpfexec_task_oom_kills_total",
                &[("victim", v), ("scope", "cgroup")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "bpfexec_task_signal_kills_total",
                &[("victim", v), ("sender_class", "host")]
            ),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &text,
            "bpfexec_task_starts_total",
            &[
                ("job", "shop"),
                ("task_group", "g"),
                ("task", "web"),
                ("namespace", "default")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_start_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_running", &[("alloc_id", "a1")]),
        Some(1.0)
    );
}

#[test]
fn a_child_oom_kill_and_a_clean_exit() {
    let m = Metrics::new("v1", "6.18");
    let t = identity("a2");
    let key = t.key();
    m.apply(&[
        started(&t),
        process(
            &t,
            ProcessFact::Fork {
                parent: 100,
                child: 101,
                comm: "sh".into(),
            },
        ),
        process(
            &t,
            ProcessFact::Exec {
                pid: 101,
                filename: "/usr/bin/tail".into(),
                comm: "tail".into(),
                cmdline: None,
            },
        ),
        Fact::OomKill {
            key,
            at: SystemTime::now(),
            pid: 101,
            comm: "tail".into(),
            rss_kb: 1024,
            main: false,
            scope: OomScope::Cgroup {
                cgroup: "/nomad/a2.web".into(),
            },
        },
        process(
            &t,
            ProcessFact::Exit {
                pid: 101,
                comm: "tail".into(),
            },
        ),
    ]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(&text, "bpfexec_task_processes", &[("alloc_id", "a2")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_forks_total", &[("alloc_id", "a2")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_execs_total", &[("alloc_id", "a2")]),
        Some(1.0)
    );
    m.apply(&[ended(&t, Some(ExitReason::Exited { code: 0 }), 0, 0)]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_oom_kills_total",
            &[("victim", "child"), ("scope", "cgroup")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_task_exits_total",
            &[("reason", "exited_ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_running", &[("alloc_id", "a2")]),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_processes", &[("alloc_id", "a2")]),
        Some(0.0)
    );
    let end = value(
        &text,
        "bpfexec_task_end_timestamp_seconds",
        &[("reason", "exited_ok"), ("exit_code", "0")],
    );
    assert!(end.is_some_and(|v| v > 1.7e9), "{text}");
}

#[test]
fn kills_are_counted_by_sender_and_the_driver_stop_is_its_own_reason() {
    let m = Metrics::new("v1", "6.18");
    let t = identity("a3");
    m.apply(&[
        started(&t),
        Fact::SignalReceived {
            key: t.key(),
            at: SystemTime::now(),
            pid: 100,
            main: true,
            signal: 15,
            sender: sender(SenderClass::Host),
        },
        Fact::ChildKilled {
            key: t.key(),
            at: SystemTime::now(),
            pid: 101,
            signal: 9,
            sender: sender(SenderClass::SameTask),
        },
        ended(
            &t,
            Some(ExitReason::Signaled {
                signal: 15,
                sender: Some(sender(SenderClass::Host)),
                core_dumped: false,
                escalation_after: None,
            }),
            0,
            15,
        ),
    ]);
    let text = m.encode(Format::Classic);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_signals_received_total",
            &[("signal", "SIGTERM"), ("sender_class", "host")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_task_signal_kills_total",
            &[("victim", "main"), ("sender_class", "host")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_task_signal_kills_total",
            &[("victim", "child"), ("sender_class", "same_task")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_exits_total", &[("reason", "signaled")]),
        Some(1.0)
    );
    assert!(
        text.contains("# TYPE bpfexec_task_exits_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));

    let t2 = identity("a4");
    m.apply(&[
        started(&t2),
        ended(
            &t2,
            Some(ExitReason::Signaled {
                signal: 9,
                sender: Some(sender(SenderClass::Driver)),
                core_dumped: false,
                escalation_after: Some(2),
            }),
            0,
            9,
        ),
    ]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_exits_total",
            &[("alloc_id", "a4"), ("reason", "driver_killed")]
        ),
        Some(1.0)
    );
}

#[test]
fn facts_before_the_start_are_counted_once_it_comes() {
    let m = Metrics::new("v1", "6.18");
    let t = identity("a5");
    m.apply(&[
        process(
            &t,
            ProcessFact::Exec {
                pid: 100,
                filename: "/bin/sh".into(),
                comm: "sh".into(),
                cmdline: None,
            },
        ),
        process(
            &t,
            ProcessFact::Fork {
                parent: 100,
                child: 101,
                comm: "sh".into(),
            },
        ),
    ]);
    assert_eq!(series(&m.encode(Format::OpenMetrics)), 0);
    m.apply(&[started(&t)]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(&text, "bpfexec_task_execs_total", &[("alloc_id", "a5")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_processes", &[("alloc_id", "a5")]),
        Some(2.0)
    );
}

#[test]
fn series_vanish_after_the_retention_and_restarts_keep_them() {
    let m = Metrics::new("v1", "6.18");
    m.set_retention(Duration::ZERO);
    let base = series(&m.encode(Format::OpenMetrics));
    for i in 0..20 {
        let t = identity(&format!("b{i}"));
        m.apply(&[
            started(&t),
            Fact::SignalReceived {
                key: t.key(),
                at: SystemTime::now(),
                pid: 100,
                main: true,
                signal: 10,
                sender: sender(SenderClass::SameProcess),
            },
            ended(&t, Some(ExitReason::Exited { code: 1 }), 1, 0),
        ]);
        m.cgroup_samples(&[]);
    }
    assert!(series(&m.encode(Format::OpenMetrics)) > 20 * 30);
    // A restart of b0 (same allocation and task, new task id) before its first run is destroyed.
    let first = identity("b0");
    let second = Arc::new(TaskIdentity {
        task_id: "b0/web/2".into(),
        ..(*first).clone()
    });
    m.apply(&[
        started(&second),
        Fact::Destroyed {
            task: Arc::clone(&first),
        },
    ]);
    m.sweep();
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(&text, "bpfexec_task_starts_total", &[("alloc_id", "b0")]),
        Some(2.0),
        "the restarted task keeps its series"
    );
    for i in 0..20 {
        m.apply(&[Fact::Destroyed {
            task: identity(&format!("b{i}")),
        }]);
    }
    m.apply(&[Fact::Destroyed { task: second }]);
    m.sweep();
    assert_eq!(series(&m.encode(Format::OpenMetrics)), base);
    assert_eq!(m.task_groups(), 0);
    let _ = Instant::now();
}

#[test]
fn cgroup_readings_become_counters_that_survive_a_reset() {
    let m = Metrics::new("v2", "6.12");
    let t = identity("c1");
    m.apply(&[started(&t)]);
    let sample = |max: u64, psi: f64| CgroupSample {
        memory_events: vec![("high", 0), ("max", max), ("oom", 0), ("oom_kill", 0)],
        usage_bytes: Some(1000),
        limit_bytes: Some(4096),
        pressure: vec![("memory", "some", psi)],
    };
    m.cgroup_samples(&[(t.key(), sample(5, 1.5))]);
    m.cgroup_samples(&[(t.key(), sample(7, 2.0))]);
    m.cgroup_samples(&[(t.key(), sample(2, 0.5))]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_memory_events_total",
            &[("event", "max")]
        ),
        Some(9.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_task_memory_events_total",
            &[("event", "oom_kill")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_task_pressure_seconds_total",
            &[("resource", "memory"), ("kind", "some")]
        ),
        Some(2.5)
    );
    assert_eq!(
        value(&text, "bpfexec_task_memory_limit_bytes", &[]),
        Some(4096.0)
    );
}

#[test]
fn health_series_follow_snapshots() {
    let m = Metrics::new("v1", "6.18");
    let mut snap = HealthSnapshot {
        probes_loaded: true,
        attached: vec!["sched_process_exec".into()],
        tasks_running: 3,
        sink_dropped: vec![("traces", 4)],
        otlp: Some(OtlpTotals {
            exported: 10,
            ..OtlpTotals::default()
        }),
        process: health::process_usage(),
        ..HealthSnapshot::default()
    };
    m.refresh_health(&snap);
    snap.otlp = Some(OtlpTotals {
        exported: 25,
        export_errors: 1,
        ..OtlpTotals::default()
    });
    m.refresh_health(&snap);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(value(&text, "bpfexec_probes_loaded", &[]), Some(1.0));
    assert_eq!(
        value(&text, "bpfexec_otlp_spans_exported_total", &[]),
        Some(25.0)
    );
    assert_eq!(
        value(&text, "bpfexec_otlp_export_errors_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "bpfexec_sink_dropped_facts_total",
            &[("sink", "traces")]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(&text, "bpfexec_tasks", &[("state", "running")]),
        Some(3.0)
    );
    assert!(value(&text, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    assert_eq!(
        value(&text, "bpfexec_build_info", &[("cgroup_mode", "v1")]),
        Some(1.0)
    );
}

#[test]
fn ended_tasks_the_task_table_lost_expire_like_destroyed_ones() {
    let m = Metrics::new("v1", "test");
    m.set_retention(Duration::ZERO);
    let base = series(&m.encode(Format::OpenMetrics));
    let (kept, lost, live) = (identity("kept"), identity("lost"), identity("live"));
    m.apply(&[
        started(&kept),
        ended(&kept, Some(ExitReason::Exited { code: 0 }), 0, 0),
        started(&lost),
        ended(&lost, Some(ExitReason::Exited { code: 0 }), 0, 0),
        started(&live),
    ]);
    // The plugin restarted: Nomad recovered `kept` (ended) and `live` (running) only; `live`
    // is not in the table yet either, but a running run is never forgotten.
    let known: std::collections::HashSet<_> = [kept.key()].into_iter().collect();
    m.forget_unknown(&known);
    m.sweep();
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(&text, "bpfexec_task_starts_total", &[("alloc_id", "lost")]),
        None
    );
    assert_eq!(
        value(&text, "bpfexec_task_starts_total", &[("alloc_id", "kept")]),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "bpfexec_task_starts_total", &[("alloc_id", "live")]),
        Some(1.0)
    );
    assert_eq!(m.task_groups(), 2);
    // Recovered after all: its series come back.
    m.apply(&[Fact::Recovered {
        task: Arc::clone(&lost),
        started_at: SystemTime::now(),
        main: MainProcess::default(),
        running: false,
        processes: Vec::new(),
    }]);
    assert!(
        value(
            &m.encode(Format::OpenMetrics),
            "bpfexec_task_exits_total",
            &[("alloc_id", "lost")]
        )
        .is_some()
    );
    for t in [kept, lost, live] {
        m.apply(&[Fact::Destroyed { task: t }]);
    }
    m.sweep();
    assert_eq!(series(&m.encode(Format::OpenMetrics)), base);
}

#[test]
fn pids_limit_hits_follow_the_kernel_total_from_zero() {
    let m = Metrics::new("v1", "test");
    let t = identity("p");
    m.apply(&[started(&t)]);
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_pids_limit_hits_total",
            &[("alloc_id", "p")]
        ),
        Some(0.0),
        "present at 0 from the start"
    );
    let hits = |n| Fact::PidsLimit {
        key: t.key(),
        at: SystemTime::now(),
        pids_max: 8,
        hits_total: n,
    };
    m.apply(&[hits(3), hits(12)]);
    assert_eq!(
        value(
            &m.encode(Format::OpenMetrics),
            "bpfexec_task_pids_limit_hits_total",
            &[("alloc_id", "p")]
        ),
        Some(12.0)
    );
}

#[test]
fn a_run_shorter_than_the_sampling_period_gets_one_reading_after_its_end() {
    let m = Metrics::new("v2", "test");
    let t = identity("short");
    m.apply(&[
        started(&t),
        ended(&t, Some(ExitReason::Exited { code: 0 }), 0, 0),
    ]);
    assert!(m.final_samples_due().contains(&t.key()));
    m.cgroup_samples(&[(
        t.key(),
        CgroupSample {
            memory_events: vec![("max", 4), ("oom_kill", 1)],
            usage_bytes: None,
            limit_bytes: None,
            pressure: Vec::new(),
        },
    )]);
    assert!(m.final_samples_due().is_empty(), "read once, not again");
    let text = m.encode(Format::OpenMetrics);
    assert_eq!(
        value(
            &text,
            "bpfexec_task_memory_events_total",
            &[("alloc_id", "short"), ("event", "oom_kill")]
        ),
        Some(1.0)
    );
}
