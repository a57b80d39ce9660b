//! Per-task series, kept from the fact stream: a task's series appear at StartTask with every
//! alertable counter at 0 (an absent series cannot be alerted on), follow its runs (a restarted
//! task, same allocation and task name, continues them), and disappear `retention` after the
//! last run was destroyed, so the series count returns to its base.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::cgroup::CgroupSample;
use super::grow_u64;
use super::labels::{
    EndLabels, EventLabels, KillLabels, MEMORY_EVENTS, OOM_SCOPES, OomLabels, PRESSURES,
    PressureLabels, ReasonLabels, SENDER_CLASSES, SignalLabels, TaskLabels, TraceLabels, VICTIMS,
};
use crate::observer::{ExitReason, OomScope, TaskKey};
use crate::telemetry::fact::{EndKind, Fact, ProcessFact, TaskIdentity, task_end};
use crate::telemetry::ids;
use crate::telemetry::pending::Pending;

type F64Counter = Counter<f64, std::sync::atomic::AtomicU64>;
type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Ends kept per task as `bpfexec_task_end_timestamp_seconds` series.
const ENDS_KEPT: usize = 5;

/// Start-time buckets, seconds: 1 ms to ~16 s.
fn start_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)
}

#[derive(Clone)]
struct Families {
    starts: Family<TaskLabels, Counter>,
    exits: Family<ReasonLabels, Counter>,
    oom_kills: Family<OomLabels, Counter>,
    signal_kills: Family<KillLabels, Counter>,
    signals: Family<SignalLabels, Counter>,
    execs: Family<TaskLabels, Counter>,
    forks: Family<TaskLabels, Counter>,
    processes: Family<TaskLabels, Gauge>,
    escapes: Family<TaskLabels, Counter>,
    leaked: Family<TaskLabels, Counter>,
    start_duration: Family<TaskLabels, Histogram, fn() -> Histogram>,
    memory_events: Family<EventLabels, Counter>,
    memory_usage: Family<TaskLabels, Gauge>,
    memory_limit: Family<TaskLabels, Gauge>,
    pressure: Family<PressureLabels, F64Counter>,
    running: Family<TraceLabels, Gauge>,
    ends: Family<EndLabels, F64Gauge>,
    spans_capped: Family<TaskLabels, Counter>,
    pids_limit_hits: Family<TaskLabels, Counter>,
}

fn new_histogram() -> Histogram {
    Histogram::new(start_buckets())
}

/// One run of a task (one Nomad task id).
struct Run {
    labels: TaskLabels,
    trace_id: String,
    live: i64,
    running: bool,
    /// The cgroup was read once more after the run ended (a run shorter than the sampling
    /// period still gets its OOM and limit-hit counts).
    final_sampled: bool,
}

/// The series of one (allocation, task).
#[derive(Default)]
struct Group {
    /// Runs not destroyed yet.
    runs: HashSet<TaskKey>,
    destroyed_at: Option<Instant>,
    signals: HashSet<(String, &'static str)>,
    traces: HashSet<String>,
    ends: VecDeque<EndLabels>,
    memory_seen: bool,
    mem_last: HashMap<&'static str, u64>,
    psi_last: HashMap<(&'static str, &'static str), f64>,
    capped_last: u64,
    pids_hits_last: u64,
}

/// The per-task half of the metrics.
pub struct TaskMetrics {
    f: Families,
    runs: HashMap<TaskKey, Run>,
    groups: HashMap<TaskLabels, Group>,
    pending: Pending,
}

fn oom_scope(s: &OomScope) -> &'static str {
    match s {
        OomScope::Cgroup { .. } => "cgroup",
        OomScope::System => "system",
        OomScope::Unknown => "unknown",
    }
}

fn victim(main: bool) -> &'static str {
    if main { "main" } else { "child" }
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl TaskMetrics {
    /// Registers the per-task families in `registry`.
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric: the flat list reads like the README's table"
    )]
    pub fn register(registry: &mut Registry) -> Self {
        let f = Families {
            starts: Family::default(),
            exits: Family::default(),
            oom_kills: Family::default(),
            signal_kills: Family::default(),
            signals: Family::default(),
            execs: Family::default(),
            forks: Family::default(),
            processes: Family::default(),
            escapes: Family::default(),
            leaked: Family::default(),
            start_duration: Family::new_with_constructor(new_histogram),
            memory_events: Family::default(),
            memory_usage: Family::default(),
            memory_limit: Family::default(),
            pressure: Family::default(),
            running: Family::default(),
            ends: Family::default(),
            spans_capped: Family::default(),
            pids_limit_hits: Family::default(),
        };
        let r = registry;
        r.register(
            "bpfexec_task_starts",
            "Task runs started (restarts = starts - 1)",
            f.starts.clone(),
        );
        r.register("bpfexec_task_exits", "Task runs ended, by reason: exited_ok, exited_error, signaled, oom_killed, driver_killed, exec_failed, lost", f.exits.clone());
        r.register("bpfexec_task_oom_kills", "OOM kills of the task's processes, by victim (main, child) and scope (cgroup limit, system, unknown)", f.oom_kills.clone());
        r.register(
            "bpfexec_task_signal_kills",
            "Processes of the task killed by a signal, by victim (main, child) and who sent it",
            f.signal_kills.clone(),
        );
        r.register("bpfexec_task_signals_received", "Signals delivered to the task's processes, by signal and sender class (SIGCHLD, SIGURG and SIGWINCH are not observed)", f.signals.clone());
        r.register(
            "bpfexec_task_execs",
            "Successful execs in the task",
            f.execs.clone(),
        );
        r.register(
            "bpfexec_task_forks",
            "Processes created in the task",
            f.forks.clone(),
        );
        r.register(
            "bpfexec_task_processes",
            "Live processes of the task",
            f.processes.clone(),
        );
        r.register(
            "bpfexec_task_escapes",
            "Processes that left the task's cgroup (killed and reported)",
            f.escapes.clone(),
        );
        r.register(
            "bpfexec_task_leaked_processes",
            "Processes that outlived the task's main process (killed and reported)",
            f.leaked.clone(),
        );
        r.register_with_unit(
            "bpfexec_task_start_duration",
            "StartTask received to the task's command exec'd",
            Unit::Seconds,
            f.start_duration.clone(),
        );
        r.register("bpfexec_task_memory_events", "Memory cgroup events: high, max, oom, oom_kill (cgroup v2 memory.events; v1: max = memory.failcnt, oom_kill from memory.oom_control)", f.memory_events.clone());
        r.register_with_unit(
            "bpfexec_task_memory_usage",
            "Memory used by the task's cgroup",
            Unit::Bytes,
            f.memory_usage.clone(),
        );
        r.register_with_unit(
            "bpfexec_task_memory_limit",
            "Memory hard limit of the task's cgroup (absent when unlimited)",
            Unit::Bytes,
            f.memory_limit.clone(),
        );
        r.register_with_unit(
            "bpfexec_task_pressure",
            "Pressure stall time of the task's cgroup (PSI, cgroup v2 only), by resource and kind",
            Unit::Seconds,
            f.pressure.clone(),
        );
        r.register("bpfexec_task_running", "1 while the task's current run is running, 0 after it ended; trace_id names the run's trace", f.running.clone());
        r.register_with_unit(
            "bpfexec_task_end_timestamp",
            "When a run of the task ended, with its reason and trace (the last 5 runs)",
            Unit::Seconds,
            f.ends.clone(),
        );
        r.register(
            "bpfexec_task_process_spans_capped",
            "Process spans not exported because the run reached max_process_spans",
            f.spans_capped.clone(),
        );
        r.register(
            "bpfexec_task_pids_limit_hits",
            "Forks and clones the kernel refused because the task reached its pids_max",
            f.pids_limit_hits.clone(),
        );
        Self {
            f,
            runs: HashMap::new(),
            groups: HashMap::new(),
            pending: Pending::default(),
        }
    }

    /// Creates the series a run has from its start, all at 0.
    fn open(&mut self, task: &TaskIdentity, running: bool) -> TaskLabels {
        let labels = TaskLabels::of(task);
        let key = task.key();
        let trace_id = ids::trace_id(&task.task_id).to_string();
        let f = &self.f;
        for kind in EndKind::ALL {
            let _ = f.exits.get_or_create(&ReasonLabels {
                task: labels.clone(),
                reason: kind.name(),
            });
        }
        for v in VICTIMS {
            for scope in OOM_SCOPES {
                let _ = f.oom_kills.get_or_create(&OomLabels {
                    task: labels.clone(),
                    victim: v,
                    scope,
                });
            }
            for class in SENDER_CLASSES {
                let _ = f.signal_kills.get_or_create(&KillLabels {
                    task: labels.clone(),
                    victim: v,
                    sender_class: class,
                });
            }
        }
        for fam in [
            &f.execs,
            &f.forks,
            &f.escapes,
            &f.leaked,
            &f.starts,
            &f.pids_limit_hits,
            &f.spans_capped,
        ] {
            let _ = fam.get_or_create(&labels);
        }
        f.running
            .get_or_create(&TraceLabels {
                task: labels.clone(),
                trace_id: trace_id.clone(),
            })
            .set(i64::from(running));
        let group = self.groups.entry(labels.clone()).or_default();
        group.runs.insert(key);
        group.destroyed_at = None;
        group.traces.insert(trace_id.clone());
        self.runs.insert(
            key,
            Run {
                labels: labels.clone(),
                trace_id,
                live: 0,
                running,
                final_sampled: false,
            },
        );
        labels
    }

    /// Applies one fact.
    pub fn apply(&mut self, fact: &Fact) {
        match fact {
            Fact::Started {
                task,
                start_duration,
                ..
            } => {
                let labels = self.open(task, true);
                self.f.starts.get_or_create(&labels).inc();
                if let Some(d) = start_duration {
                    self.f
                        .start_duration
                        .get_or_create(&labels)
                        .observe(d.as_secs_f64());
                }
                self.set_live(task.key(), 1);
                self.replay(task.key());
            }
            Fact::Recovered {
                task,
                running,
                processes,
                ..
            } => {
                if !self.runs.contains_key(&task.key()) {
                    self.open(task, *running);
                }
                self.set_live(task.key(), processes.len() as i64);
                self.replay(task.key());
            }
            Fact::Ended { task, end } => self.end(task, end),
            Fact::Destroyed { task } => self.destroyed(task.key()),
            Fact::Notice { .. } => {}
            other => self.apply_keyed(other),
        }
    }

    fn replay(&mut self, key: TaskKey) {
        for fact in self.pending.take(key) {
            self.apply_keyed(&fact);
        }
    }

    /// Facts about processes: counted on the run's series, or held until the run is known.
    fn apply_keyed(&mut self, fact: &Fact) {
        let key = fact.key();
        let Some(run) = self.runs.get_mut(&key) else {
            self.pending.hold(fact);
            return;
        };
        let labels = run.labels.clone();
        let f = &self.f;
        match fact {
            Fact::Process { fact, .. } => match fact {
                ProcessFact::Fork { .. } => {
                    f.forks.get_or_create(&labels).inc();
                    run.live += 1;
                }
                ProcessFact::Exec { .. } => {
                    f.execs.get_or_create(&labels).inc();
                }
                ProcessFact::Exit { .. } => run.live = (run.live - 1).max(0),
            },
            Fact::SignalReceived { signal, sender, .. } => {
                let name = crate::signals::name(*signal);
                let class = sender.class.name();
                f.signals
                    .get_or_create(&SignalLabels {
                        task: labels.clone(),
                        signal: name.clone(),
                        sender_class: class,
                    })
                    .inc();
                if let Some(g) = self.groups.get_mut(&labels) {
                    g.signals.insert((name, class));
                }
            }
            Fact::ChildKilled { sender, .. } => {
                f.signal_kills
                    .get_or_create(&KillLabels {
                        task: labels.clone(),
                        victim: "child",
                        sender_class: sender.class.name(),
                    })
                    .inc();
            }
            Fact::OomKill { main, scope, .. } => {
                f.oom_kills
                    .get_or_create(&OomLabels {
                        task: labels.clone(),
                        victim: victim(*main),
                        scope: oom_scope(scope),
                    })
                    .inc();
            }
            Fact::Escaped { .. } => {
                f.escapes.get_or_create(&labels).inc();
            }
            Fact::Leaked { pids, .. } => {
                f.leaked.get_or_create(&labels).inc_by(pids.len() as u64);
            }
            Fact::PidsLimit { hits_total, .. } => {
                let counter = f.pids_limit_hits.get_or_create_owned(&labels);
                if let Some(g) = self.groups.get_mut(&labels) {
                    grow_u64(&counter, &mut g.pids_hits_last, *hits_total);
                }
            }
            _ => {}
        }
        let live = run.live;
        self.f.processes.get_or_create(&labels).set(live);
    }

    fn set_live(&mut self, key: TaskKey, n: i64) {
        if let Some(run) = self.runs.get_mut(&key) {
            run.live = n;
            self.f.processes.get_or_create(&run.labels).set(n);
        }
    }

    fn end(&mut self, task: &TaskIdentity, end: &crate::telemetry::fact::TaskEnd) {
        let key = task.key();
        if !self.runs.contains_key(&key) {
            self.open(task, false);
        }
        let Some(run) = self.runs.get_mut(&key) else {
            return;
        };
        run.running = false;
        run.live = 0;
        let labels = run.labels.clone();
        let trace_id = run.trace_id.clone();
        let f = &self.f;
        f.exits
            .get_or_create(&ReasonLabels {
                task: labels.clone(),
                reason: end.kind.name(),
            })
            .inc();
        f.processes.get_or_create(&labels).set(0);
        f.running
            .get_or_create(&TraceLabels {
                task: labels.clone(),
                trace_id: trace_id.clone(),
            })
            .set(0);
        let mut sender_class = "";
        if let Some(ExitReason::Signaled {
            sender: Some(s), ..
        }) = end.reason.as_ref().map(task_end)
        {
            sender_class = s.class.name();
            f.signal_kills
                .get_or_create(&KillLabels {
                    task: labels.clone(),
                    victim: "main",
                    sender_class,
                })
                .inc();
        }
        let end_labels = EndLabels {
            task: labels.clone(),
            reason: end.kind.name(),
            exit_code: end.exit_code.to_string(),
            signal: if end.signal == 0 {
                String::new()
            } else {
                crate::signals::name(end.signal)
            },
            sender_class,
            trace_id,
        };
        f.ends
            .get_or_create(&end_labels)
            .set(seconds_since_epoch(end.at));
        if let Some(g) = self.groups.get_mut(&labels) {
            g.ends.push_back(end_labels);
            while g.ends.len() > ENDS_KEPT {
                if let Some(old) = g.ends.pop_front() {
                    f.ends.remove(&old);
                }
            }
        }
    }

    fn destroyed(&mut self, key: TaskKey) {
        self.pending.take(key);
        let Some(run) = self.runs.remove(&key) else {
            return;
        };
        if let Some(g) = self.groups.get_mut(&run.labels) {
            g.runs.remove(&key);
            if g.runs.is_empty() {
                g.destroyed_at = Some(Instant::now());
            }
        }
    }

    /// Treats ended runs of tasks the plugin's task table no longer holds (`known`) as
    /// destroyed now: a restarted plugin that Nomad never asks to recover or destroy a task
    /// that ended meanwhile would otherwise keep its series for ever. A task recovered later
    /// opens its series again.
    pub fn forget_unknown(&mut self, known: &HashSet<TaskKey>) {
        let gone: Vec<TaskKey> = self
            .runs
            .iter()
            .filter(|(key, run)| !run.running && !known.contains(key))
            .map(|(key, _)| *key)
            .collect();
        for key in gone {
            self.destroyed(key);
        }
    }

    /// Removes every series of tasks destroyed more than `retention` ago.
    pub fn sweep(&mut self, now: Instant, retention: Duration) {
        let expired: Vec<TaskLabels> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.destroyed_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= retention)
            })
            .map(|(l, _)| l.clone())
            .collect();
        for labels in expired {
            if let Some(g) = self.groups.remove(&labels) {
                self.remove_series(&labels, &g);
            }
        }
    }

    fn remove_series(&self, labels: &TaskLabels, g: &Group) {
        let f = &self.f;
        let t = || labels.clone();
        for kind in EndKind::ALL {
            f.exits.remove(&ReasonLabels {
                task: t(),
                reason: kind.name(),
            });
        }
        for v in VICTIMS {
            for scope in OOM_SCOPES {
                f.oom_kills.remove(&OomLabels {
                    task: t(),
                    victim: v,
                    scope,
                });
            }
            for class in SENDER_CLASSES {
                f.signal_kills.remove(&KillLabels {
                    task: t(),
                    victim: v,
                    sender_class: class,
                });
            }
        }
        for (signal, class) in &g.signals {
            f.signals.remove(&SignalLabels {
                task: t(),
                signal: signal.clone(),
                sender_class: class,
            });
        }
        for fam in [
            &f.starts,
            &f.execs,
            &f.forks,
            &f.escapes,
            &f.leaked,
            &f.spans_capped,
            &f.pids_limit_hits,
        ] {
            fam.remove(labels);
        }
        f.processes.remove(labels);
        f.memory_usage.remove(labels);
        f.memory_limit.remove(labels);
        f.start_duration.remove(labels);
        for event in MEMORY_EVENTS {
            f.memory_events.remove(&EventLabels { task: t(), event });
        }
        for (resource, kind) in PRESSURES {
            f.pressure.remove(&PressureLabels {
                task: t(),
                resource,
                kind,
            });
        }
        for trace_id in &g.traces {
            f.running.remove(&TraceLabels {
                task: t(),
                trace_id: trace_id.clone(),
            });
        }
        for end in &g.ends {
            f.ends.remove(end);
        }
    }

    /// Records a reading of the task's memory cgroup (while the run of `key` runs, and once
    /// after it ended).
    pub fn cgroup_sample(&mut self, key: TaskKey, s: &CgroupSample) {
        let Some(run) = self.runs.get_mut(&key) else {
            return;
        };
        // After the end only the counters move: the gauges keep the run's last reading.
        let ended = !run.running;
        run.final_sampled |= ended;
        let labels = run.labels.clone();
        let f = &self.f;
        let Some(g) = self.groups.get_mut(&labels) else {
            return;
        };
        if !g.memory_seen && !s.memory_events.is_empty() {
            g.memory_seen = true;
            // Every event this cgroup version counts exists from the first reading.
            for (event, _) in &s.memory_events {
                let _ = f.memory_events.get_or_create(&EventLabels {
                    task: labels.clone(),
                    event,
                });
            }
        }
        for (event, value) in &s.memory_events {
            let counter = f.memory_events.get_or_create(&EventLabels {
                task: labels.clone(),
                event,
            });
            grow_u64(&counter, g.mem_last.entry(event).or_insert(0), *value);
        }
        if !ended {
            if let Some(u) = s.usage_bytes {
                f.memory_usage
                    .get_or_create(&labels)
                    .set(i64::try_from(u).unwrap_or(i64::MAX));
            }
            match s.limit_bytes {
                Some(l) => {
                    f.memory_limit
                        .get_or_create(&labels)
                        .set(i64::try_from(l).unwrap_or(i64::MAX));
                }
                None => {
                    f.memory_limit.remove(&labels);
                }
            }
        }
        for (resource, kind, total) in &s.pressure {
            let counter = f.pressure.get_or_create(&PressureLabels {
                task: labels.clone(),
                resource,
                kind,
            });
            let last = g.psi_last.entry((resource, kind)).or_insert(0.0);
            let delta = if *total >= *last {
                total - *last
            } else {
                *total
            };
            *last = *total;
            if delta > 0.0 {
                counter.inc_by(delta);
            }
        }
    }

    /// Records how many process spans a run has had capped so far.
    pub fn spans_capped(&mut self, key: TaskKey, total: u64) {
        let Some(run) = self.runs.get(&key) else {
            return;
        };
        let labels = run.labels.clone();
        let Some(g) = self.groups.get_mut(&labels) else {
            return;
        };
        let counter = self.f.spans_capped.get_or_create(&labels);
        grow_u64(&counter, &mut g.capped_last, total);
    }

    /// Runs still running, for the cgroup sampler.
    pub fn running(&self) -> Vec<TaskKey> {
        self.runs
            .iter()
            .filter(|(_, r)| r.running)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Ended runs whose cgroup has not been read since they ended.
    pub fn final_samples_due(&self) -> HashSet<TaskKey> {
        self.runs
            .iter()
            .filter(|(_, r)| !r.running && !r.final_sampled)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Runs known (running or ended, not destroyed): `(running, ended)`.
    pub fn counts(&self) -> (usize, usize) {
        let running = self.runs.values().filter(|r| r.running).count();
        (running, self.runs.len() - running)
    }

    /// (allocation, task) pairs with series.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}
