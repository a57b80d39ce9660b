//! Turns task facts into OTLP spans (OpenTelemetry trace model, semantic conventions v1.44
//! `process.*` attributes, Nomad identity as `nomad.*`): one trace per task run whose id comes
//! from Nomad's task id; a root span for the run (StartTask to its end), a `start` span for
//! StartTask's work, and one span per process parented by process lineage, with execs, signals,
//! OOM kills, escapes and leaks as span events. Pure state machine: facts and clock ticks in,
//! finished spans out (process spans shortly after their exit, so a kill learned a moment later
//! still lands on them; the root span shortly after the run's end, so the leak sweep does).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::observer::{OomScope, ProcessNode, Sender, TaskKey};
use crate::telemetry::fact::{Fact, MainProcess, ProcessFact, StartPhases, TaskEnd, TaskIdentity};
use crate::telemetry::ids;
use crate::telemetry::pending::Pending;

/// How long a finished process span waits for facts about its end (a fatal signal is known a
/// moment after the exit).
pub const PROCESS_GRACE: Duration = Duration::from_millis(1500);
/// How long a run's root span waits after its end (the leak sweep follows the end).
pub const RUN_GRACE: Duration = Duration::from_secs(2);
/// Span events kept per span.
const MAX_EVENTS: usize = 128;

fn str_array(items: &[String]) -> Value {
    Value::Array(Array::String(
        items.iter().map(|s| StringValue::from(s.clone())).collect(),
    ))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn sender_attrs(prefix: &'static str, s: &Sender) -> Vec<KeyValue> {
    let mut a = vec![
        KeyValue::new(format!("{prefix}.pid"), i64::from(s.pid)),
        KeyValue::new(format!("{prefix}.comm"), s.comm.clone()),
        KeyValue::new(format!("{prefix}.class"), s.class.name()),
    ];
    if let Some(uid) = s.uid {
        a.push(KeyValue::new(format!("{prefix}.uid"), i64::from(uid)));
    }
    a
}

fn scope_name(s: &OomScope) -> String {
    match s {
        OomScope::Cgroup { cgroup } => format!("cgroup {cgroup}"),
        OomScope::System => "system".into(),
        OomScope::Unknown => "unknown".into(),
    }
}

/// Events of one span, bounded.
#[derive(Default)]
struct Events {
    list: Vec<Event>,
    dropped: u32,
}

impl Events {
    fn push(&mut self, name: &'static str, at: SystemTime, attrs: Vec<KeyValue>) {
        if self.list.len() < MAX_EVENTS {
            self.list.push(Event::new(name, at, attrs, 0));
        } else {
            self.dropped += 1;
        }
    }

    fn take(&mut self) -> SpanEvents {
        let mut e = SpanEvents::default();
        e.events = std::mem::take(&mut self.list);
        e.dropped_count = self.dropped;
        e
    }
}

/// What a finished span says, before it gets its trace and scope.
struct Draft {
    id: SpanId,
    parent: SpanId,
    name: String,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<KeyValue>,
    events: SpanEvents,
    status: Status,
}

/// One process of a run.
struct Proc {
    span: SpanId,
    parent: SpanId,
    pid: u32,
    ppid: u32,
    start: SystemTime,
    end: Option<SystemTime>,
    comm: String,
    exe: Option<String>,
    args: Vec<String>,
    events: Events,
    /// Killed by this signal from this sender.
    killed: Option<(i32, Sender)>,
    oom: bool,
    main: bool,
}

/// One run of a task.
struct Run {
    task: Arc<TaskIdentity>,
    trace: TraceId,
    root: SpanId,
    start: SystemTime,
    main: MainProcess,
    live: HashMap<u32, Proc>,
    closing: VecDeque<(SystemTime, Proc)>,
    /// How many processes with each pid this run had (pid reuse).
    generations: HashMap<u32, u32>,
    spans_made: usize,
    capped: u64,
    events: Events,
    end: Option<(TaskEnd, std::time::Instant)>,
}

/// The trace half of the telemetry: see the module docs.
pub struct Tracer {
    max_process_spans: usize,
    scope: InstrumentationScope,
    runs: HashMap<TaskKey, Run>,
    pending: Pending,
}

impl Tracer {
    #[must_use]
    pub fn new(max_process_spans: usize) -> Self {
        Self {
            max_process_spans,
            scope: InstrumentationScope::builder("bpfexec")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            runs: HashMap::new(),
            pending: Pending::default(),
        }
    }

    fn span(&self, run: &Run, d: Draft) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                run.trace,
                d.id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: d.parent,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Owned(d.name),
            start_time: d.start,
            end_time: d.end.max(d.start),
            attributes: d.attributes,
            dropped_attributes_count: 0,
            events: d.events,
            links: SpanLinks::default(),
            status: d.status,
            instrumentation_scope: self.scope.clone(),
        }
    }

    /// Process spans capped so far, per running task run.
    pub fn capped(&self) -> Vec<(TaskKey, u64)> {
        self.runs.iter().map(|(k, r)| (*k, r.capped)).collect()
    }

    /// Applies one fact; finished spans go to `out`.
    pub fn apply(&mut self, fact: &Fact, out: &mut Vec<SpanData>) {
        match fact {
            Fact::Started {
                task,
                at,
                start_duration,
                phases,
                main,
            } => self.started(task, *at, *start_duration, *phases, main, out),
            Fact::Recovered {
                task,
                started_at,
                main,
                processes,
                ..
            } => self.recovered(task, *started_at, main, processes),
            Fact::Ended { task, end } => {
                if let Some(run) = self.runs.get_mut(&task.key()) {
                    run.end = Some((end.clone(), std::time::Instant::now()));
                }
            }
            Fact::Destroyed { task } => {
                let key = task.key();
                self.pending.take(key);
                if let Some(run) = self.runs.remove(&key) {
                    self.finish(run, out);
                }
            }
            Fact::Notice { .. } => {}
            other => self.keyed(other),
        }
    }

    fn open_run(
        &mut self,
        task: &Arc<TaskIdentity>,
        start: SystemTime,
        main: &MainProcess,
    ) -> &mut Run {
        let trace = ids::trace_id(&task.task_id);
        let root = ids::root_span(&task.task_id);
        self.runs.entry(task.key()).or_insert_with(|| Run {
            task: Arc::clone(task),
            trace,
            root,
            start,
            main: main.clone(),
            live: HashMap::new(),
            closing: VecDeque::new(),
            generations: HashMap::new(),
            spans_made: 0,
            capped: 0,
            events: Events::default(),
            end: None,
        })
    }

    fn started(
        &mut self,
        task: &Arc<TaskIdentity>,
        at: SystemTime,
        start_duration: Option<Duration>,
        phases: StartPhases,
        main: &MainProcess,
        out: &mut Vec<SpanData>,
    ) {
        let begin = at
            .checked_sub(start_duration.unwrap_or_default())
            .unwrap_or(at);
        let run = self.open_run(task, begin, main);
        let launch_at = at.checked_sub(phases.launch).unwrap_or(at);
        let main_span = new_proc(
            run,
            main.pid,
            0,
            run.root,
            launch_at,
            basename(&main.command),
        );
        if let Some(mut p) = main_span {
            p.main = true;
            p.args = std::iter::once(main.command.clone())
                .chain(main.args.iter().cloned())
                .collect();
            run.live.insert(main.pid, p);
        }
        let attrs = vec![
            KeyValue::new("bpfexec.start.plan_ms", phases.plan.as_secs_f64() * 1e3),
            KeyValue::new(
                "bpfexec.start.cgroups_ms",
                phases.cgroups.as_secs_f64() * 1e3,
            ),
            KeyValue::new("bpfexec.start.launch_ms", phases.launch.as_secs_f64() * 1e3),
        ];
        let Some(run) = self.runs.get(&task.key()) else {
            return;
        };
        out.push(self.span(
            run,
            Draft {
                id: ids::start_span(&task.task_id),
                parent: run.root,
                name: "start".into(),
                start: begin,
                end: at,
                attributes: attrs,
                events: SpanEvents::default(),
                status: Status::Unset,
            },
        ));
        self.replay(task.key());
    }

    fn recovered(
        &mut self,
        task: &Arc<TaskIdentity>,
        started_at: SystemTime,
        main: &MainProcess,
        processes: &[ProcessNode],
    ) {
        let run = self.open_run(task, started_at, main);
        // Parents before children, so each finds its parent's span.
        let mut nodes: Vec<&ProcessNode> = processes.iter().collect();
        nodes.sort_by_key(|n| (n.started_at_ms.unwrap_or(0), n.pid));
        for n in nodes {
            if run.live.contains_key(&n.pid) {
                continue;
            }
            let parent = run.live.get(&n.ppid).map_or(run.root, |p| p.span);
            let start = n
                .started_at_ms
                .map_or(started_at, |ms| {
                    std::time::UNIX_EPOCH + Duration::from_millis(ms)
                })
                .max(started_at);
            let comm = n
                .exe
                .as_deref()
                .map_or(n.comm.as_str(), basename)
                .to_owned();
            if let Some(mut p) = new_proc(run, n.pid, n.ppid, parent, start, &comm) {
                p.main = n.pid == main.pid;
                p.exe.clone_from(&n.exe);
                p.args.clone_from(&n.cmdline);
                run.live.insert(n.pid, p);
            }
        }
        self.replay(task.key());
    }

    fn replay(&mut self, key: TaskKey) {
        for fact in self.pending.take(key) {
            self.keyed(&fact);
        }
    }

    fn keyed(&mut self, fact: &Fact) {
        if matches!(
            fact,
            Fact::Started { .. }
                | Fact::Recovered { .. }
                | Fact::Ended { .. }
                | Fact::Destroyed { .. }
                | Fact::Notice { .. }
        ) {
            return;
        }
        let max = self.max_process_spans;
        let Some(run) = self.runs.get_mut(&fact.key()) else {
            self.pending.hold(fact);
            return;
        };
        match fact {
            Fact::Process { at, fact, .. } => on_process(run, *at, fact, max),
            Fact::SignalReceived {
                at,
                pid,
                signal,
                sender,
                ..
            } => {
                if let Some(p) = proc_mut(run, *pid) {
                    let mut attrs = vec![KeyValue::new(
                        "bpfexec.signal",
                        crate::signals::name(*signal),
                    )];
                    attrs.extend(sender_attrs("bpfexec.sender", sender));
                    p.events.push("signal", *at, attrs);
                }
            }
            Fact::ChildKilled {
                pid,
                signal,
                sender,
                ..
            } => {
                if let Some(p) = proc_mut(run, *pid) {
                    p.killed = Some((*signal, sender.clone()));
                }
            }
            Fact::OomKill {
                at,
                pid,
                comm,
                rss_kb,
                main,
                scope,
                ..
            } => {
                let attrs = vec![
                    KeyValue::new("bpfexec.victim.pid", i64::from(*pid)),
                    KeyValue::new("bpfexec.victim.comm", comm.clone()),
                    KeyValue::new("bpfexec.victim.rss_kb", *rss_kb as i64),
                    KeyValue::new("bpfexec.victim", if *main { "main" } else { "child" }),
                    KeyValue::new("bpfexec.oom.scope", scope_name(scope)),
                ];
                on_both(run, *pid, "oom_kill", *at, attrs, |p| p.oom = true);
            }
            Fact::Escaped {
                at,
                pid,
                comm,
                cgroup,
                ..
            } => {
                let attrs = vec![
                    KeyValue::new("process.pid", i64::from(*pid)),
                    KeyValue::new("bpfexec.comm", comm.clone()),
                    KeyValue::new("bpfexec.cgroup", cgroup.clone()),
                ];
                on_both(run, *pid, "escape", *at, attrs, |_| {});
            }
            Fact::PidsLimit {
                at,
                pids_max,
                hits_total,
                ..
            } => run.events.push(
                "pids_limit",
                *at,
                vec![
                    KeyValue::new("bpfexec.pids_max", *pids_max as i64),
                    KeyValue::new("bpfexec.pids_limit.hits", *hits_total as i64),
                ],
            ),
            Fact::Leaked { at, pids, .. } => on_leak(run, *at, pids),
            _ => {}
        }
    }

    /// Exports what is due at `now`: process spans past their grace, runs past theirs.
    pub fn tick(&mut self, now: SystemTime, out: &mut Vec<SpanData>) {
        let mut finished = Vec::new();
        for (key, run) in &mut self.runs {
            if run
                .end
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= RUN_GRACE)
            {
                finished.push(*key);
            }
        }
        for key in finished {
            if let Some(run) = self.runs.remove(&key) {
                self.finish(run, out);
            }
        }
        // The main process's span waits for the run's end, which explains it.
        self.export_closing(out, |at, p| {
            !p.main && now.duration_since(at).unwrap_or_default() >= PROCESS_GRACE
        });
    }

    /// Exports the spans of exited processes now, without their grace (the plugin stops; the
    /// next one would not know them).
    pub fn flush_closing(&mut self, out: &mut Vec<SpanData>) {
        self.export_closing(out, |_, p| !p.main);
    }

    /// Exports the exited processes for which `due(exit time, process)` holds.
    fn export_closing(&mut self, out: &mut Vec<SpanData>, due: impl Fn(SystemTime, &Proc) -> bool) {
        let keys: Vec<TaskKey> = self.runs.keys().copied().collect();
        for key in keys {
            let mut ready = VecDeque::new();
            if let Some(run) = self.runs.get_mut(&key) {
                let keep;
                (ready, keep) = run.closing.drain(..).partition(|(at, p)| due(*at, p));
                run.closing = keep;
            }
            if let Some(run) = self.runs.get(&key) {
                for (_, p) in ready {
                    out.push(self.process_span(run, p, None));
                }
            }
        }
    }

    /// Every span of `run` that is still open, the root last.
    fn finish(&self, mut run: Run, out: &mut Vec<SpanData>) {
        let end_at = run.end.as_ref().map_or_else(SystemTime::now, |(e, _)| e.at);
        let closing: Vec<Proc> = run.closing.drain(..).map(|(_, p)| p).collect();
        let live: Vec<Proc> = run.live.drain().map(|(_, p)| p).collect();
        let end = run.end.as_ref().map(|(e, _)| e.clone());
        for p in closing {
            out.push(self.process_span(&run, p, end.as_ref()));
        }
        for mut p in live {
            p.end.get_or_insert(end_at);
            out.push(self.process_span(&run, p, end.as_ref()));
        }
        out.push(self.root_span(&mut run, end_at, end.as_ref()));
    }

    fn process_span(&self, run: &Run, mut p: Proc, end: Option<&TaskEnd>) -> SpanData {
        let name = p
            .exe
            .as_deref()
            .map_or(p.comm.as_str(), basename)
            .to_owned();
        let mut attrs = vec![
            KeyValue::new("process.pid", i64::from(p.pid)),
            KeyValue::new("process.parent_pid", i64::from(p.ppid)),
            KeyValue::new("process.executable.name", name.clone()),
        ];
        if let Some(exe) = &p.exe {
            attrs.push(KeyValue::new("process.executable.path", exe.clone()));
        }
        if !p.args.is_empty() {
            attrs.push(KeyValue::new("process.command", p.args[0].clone()));
            attrs.push(KeyValue::new("process.command_args", str_array(&p.args)));
        }
        let mut status = Status::Unset;
        if p.main {
            attrs.push(KeyValue::new("bpfexec.main", true));
            if !run.main.user.is_empty() {
                attrs.push(KeyValue::new("process.owner", run.main.user.clone()));
            }
            if let Some(e) = end {
                attrs.push(KeyValue::new("process.exit.code", i64::from(e.exit_code)));
                if e.signal != 0 {
                    attrs.push(KeyValue::new(
                        "bpfexec.exit.signal",
                        crate::signals::name(e.signal),
                    ));
                }
                if e.kind.failed() {
                    attrs.push(KeyValue::new("error.type", e.kind.name()));
                    status = Status::Error {
                        description: Cow::Owned(e.message.clone()),
                    };
                }
            }
        } else if p.oom {
            attrs.push(KeyValue::new("error.type", "oom_killed"));
            status = Status::Error {
                description: Cow::Borrowed("OOM-killed"),
            };
        } else if let Some((sig, sender)) = &p.killed {
            let signal = crate::signals::name(*sig);
            attrs.push(KeyValue::new("error.type", signal.clone()));
            attrs.extend(sender_attrs("bpfexec.killed_by", sender));
            status = Status::Error {
                description: Cow::Owned(format!(
                    "killed by {signal} from pid {} ({}), {}",
                    sender.pid,
                    sender.comm,
                    sender.class.name()
                )),
            };
        }
        self.span(
            run,
            Draft {
                id: p.span,
                parent: p.parent,
                name,
                start: p.start,
                end: p.end.unwrap_or_else(SystemTime::now),
                attributes: attrs,
                events: p.events.take(),
                status,
            },
        )
    }

    fn root_span(&self, run: &mut Run, end_at: SystemTime, end: Option<&TaskEnd>) -> SpanData {
        let t = &run.task;
        let mut attrs = vec![
            KeyValue::new("nomad.alloc.id", t.alloc_id.clone()),
            KeyValue::new("nomad.job.id", t.job_id.clone()),
            KeyValue::new("nomad.job.name", t.job_name.clone()),
            KeyValue::new("nomad.namespace", t.namespace.clone()),
            KeyValue::new("nomad.task_group", t.task_group.clone()),
            KeyValue::new("nomad.task.name", t.task_name.clone()),
            KeyValue::new("nomad.task.id", t.task_id.clone()),
            KeyValue::new("process.pid", i64::from(run.main.pid)),
            KeyValue::new("process.executable.path", run.main.command.clone()),
            KeyValue::new(
                "process.command_args",
                str_array(
                    &std::iter::once(run.main.command.clone())
                        .chain(run.main.args.iter().cloned())
                        .collect::<Vec<_>>(),
                ),
            ),
        ];
        if !run.main.user.is_empty() {
            attrs.push(KeyValue::new("process.owner", run.main.user.clone()));
        }
        if run.capped > 0 {
            attrs.push(KeyValue::new(
                "bpfexec.process_spans.capped",
                run.capped as i64,
            ));
        }
        let mut status = Status::Unset;
        match end {
            Some(e) => {
                attrs.push(KeyValue::new("process.exit.code", i64::from(e.exit_code)));
                attrs.push(KeyValue::new("bpfexec.exit.reason", e.kind.name()));
                if e.signal != 0 {
                    attrs.push(KeyValue::new(
                        "bpfexec.exit.signal",
                        crate::signals::name(e.signal),
                    ));
                }
                if let Some(crate::observer::ExitReason::Signaled {
                    sender: Some(s), ..
                }) = e.reason.as_ref().map(crate::telemetry::fact::task_end)
                {
                    attrs.extend(sender_attrs("bpfexec.killed_by", s));
                }
                if e.kind.failed() {
                    attrs.push(KeyValue::new("error.type", e.kind.name()));
                    status = Status::Error {
                        description: Cow::Owned(e.message.clone()),
                    };
                }
            }
            None => attrs.push(KeyValue::new("bpfexec.exit.reason", "unknown")),
        }
        let draft = Draft {
            id: run.root,
            parent: SpanId::INVALID,
            name: format!("task {}", t.task_name),
            start: run.start,
            end: end_at,
            attributes: attrs,
            events: run.events.take(),
            status,
        };
        self.span(run, draft)
    }
}

/// A lineage event of a process of `run`.
fn on_process(run: &mut Run, at: SystemTime, fact: &ProcessFact, max_spans: usize) {
    match fact {
        ProcessFact::Fork {
            parent,
            child,
            comm,
        } => {
            if run.live.contains_key(child) {
                return;
            }
            if run.spans_made >= max_spans {
                run.capped += 1;
                return;
            }
            let parent_span = run.live.get(parent).map_or(run.root, |p| p.span);
            if let Some(p) = new_proc(run, *child, *parent, parent_span, at, comm) {
                run.spans_made += 1;
                run.live.insert(*child, p);
            }
        }
        ProcessFact::Exec {
            pid,
            filename,
            comm,
            cmdline,
        } => {
            if let Some(p) = run.live.get_mut(pid) {
                p.comm.clone_from(comm);
                p.exe = Some(filename.clone());
                let mut attrs = vec![KeyValue::new("process.executable.path", filename.clone())];
                if let Some(args) = cmdline {
                    p.args.clone_from(args);
                    attrs.push(KeyValue::new("process.command_args", str_array(args)));
                }
                p.events.push("exec", at, attrs);
            }
        }
        ProcessFact::Exit { pid, .. } => {
            if let Some(mut p) = run.live.remove(pid) {
                p.end = Some(at);
                run.closing.push_back((at, p));
            }
        }
    }
}

/// Processes that outlived the run's main process: an event on the root span and on theirs.
fn on_leak(run: &mut Run, at: SystemTime, pids: &[(u32, String)]) {
    let list: Vec<String> = pids.iter().map(|(p, c)| format!("{p} ({c})")).collect();
    run.events.push(
        "leak",
        at,
        vec![
            KeyValue::new("bpfexec.leaked.count", pids.len() as i64),
            KeyValue::new("bpfexec.leaked", str_array(&list)),
        ],
    );
    for (pid, _) in pids {
        if let Some(p) = proc_mut(run, *pid) {
            p.events.push("leak", at, Vec::new());
        }
    }
}

/// An event on the root span and on the span of process `pid` (then also `mark`ed).
fn on_both(
    run: &mut Run,
    pid: u32,
    name: &'static str,
    at: SystemTime,
    attrs: Vec<KeyValue>,
    mark: impl FnOnce(&mut Proc),
) {
    run.events.push(name, at, attrs.clone());
    if let Some(p) = proc_mut(run, pid) {
        mark(p);
        p.events.push(name, at, attrs);
    }
}

/// A new process span of `run` (None for pid 0).
fn new_proc(
    run: &mut Run,
    pid: u32,
    parent_pid: u32,
    parent: SpanId,
    start: SystemTime,
    comm: &str,
) -> Option<Proc> {
    if pid == 0 {
        return None;
    }
    let generation = run.generations.entry(pid).or_insert(0);
    let span = ids::process_span(&run.task.task_id, pid, *generation);
    *generation += 1;
    Some(Proc {
        span,
        parent,
        pid,
        ppid: parent_pid,
        start,
        end: None,
        comm: comm.to_owned(),
        exe: None,
        args: Vec::new(),
        events: Events::default(),
        killed: None,
        oom: false,
        main: false,
    })
}

/// The live or closing process `pid` of `run`.
fn proc_mut(run: &mut Run, pid: u32) -> Option<&mut Proc> {
    if run.live.contains_key(&pid) {
        return run.live.get_mut(&pid);
    }
    run.closing
        .iter_mut()
        .rev()
        .find(|(_, p)| p.pid == pid)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::observer::{ExitReason, SenderClass};
    use crate::telemetry::fact::EndKind;

    const T0: Duration = Duration::from_secs(1_700_000_000);

    fn at(ms: u64) -> SystemTime {
        std::time::UNIX_EPOCH + T0 + Duration::from_millis(ms)
    }

    fn task() -> Arc<TaskIdentity> {
        Arc::new(TaskIdentity {
            task_id: "a1/web/1".into(),
            alloc_id: "a1".into(),
            job_id: "shop".into(),
            namespace: "default".into(),
            task_group: "g".into(),
            task_name: "web".into(),
            ..TaskIdentity::default()
        })
    }

    fn started(t: &Arc<TaskIdentity>) -> Fact {
        Fact::Started {
            task: Arc::clone(t),
            at: at(10),
            start_duration: Some(Duration::from_millis(10)),
            phases: StartPhases {
                plan: Duration::from_millis(2),
                cgroups: Duration::from_millis(3),
                launch: Duration::from_millis(5),
            },
            main: MainProcess {
                pid: 100,
                command: "/bin/sh".into(),
                args: vec!["-c".into(), "x".into()],
                user: "nobody".into(),
            },
        }
    }

    fn process(t: &Arc<TaskIdentity>, ms: u64, fact: ProcessFact) -> Fact {
        Fact::Process {
            key: t.key(),
            at: at(ms),
            fact,
        }
    }

    fn fork(t: &Arc<TaskIdentity>, ms: u64, parent: u32, child: u32) -> Fact {
        process(
            t,
            ms,
            ProcessFact::Fork {
                parent,
                child,
                comm: "sh".into(),
            },
        )
    }

    fn exec(t: &Arc<TaskIdentity>, ms: u64, pid: u32, file: &str) -> Fact {
        process(
            t,
            ms,
            ProcessFact::Exec {
                pid,
                filename: file.into(),
                comm: basename(file).into(),
                cmdline: Some(vec![basename(file).into(), "1".into()]),
            },
        )
    }

    fn exit(t: &Arc<TaskIdentity>, ms: u64, pid: u32) -> Fact {
        process(
            t,
            ms,
            ProcessFact::Exit {
                pid,
                comm: String::new(),
            },
        )
    }

    fn ended(t: &Arc<TaskIdentity>, ms: u64, reason: ExitReason, code: i32) -> Fact {
        let kind = EndKind::of(Some(&reason));
        Fact::Ended {
            task: Arc::clone(t),
            end: TaskEnd {
                at: at(ms),
                exit_code: code,
                signal: 0,
                oom_killed: false,
                kind,
                reason: Some(reason),
                message: format!("ended: {}", kind.name()),
                annotations: BTreeMap::new(),
            },
        }
    }

    fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    /// Everything `facts` produce, after the graces passed.
    fn run(facts: &[Fact], max: usize) -> Vec<SpanData> {
        let mut tr = Tracer::new(max);
        let mut out = Vec::new();
        for f in facts {
            tr.apply(f, &mut out);
        }
        tr.tick(SystemTime::now() + Duration::from_secs(60), &mut out);
        // The run's own grace is measured with Instant: end it by destroying.
        tr.apply(&Fact::Destroyed { task: task() }, &mut out);
        out
    }

    #[test]
    fn the_span_tree_follows_process_lineage() {
        let t = task();
        let spans = run(
            &[
                started(&t),
                fork(&t, 20, 100, 101),
                exec(&t, 21, 101, "/usr/bin/sleep"),
                fork(&t, 22, 100, 102),
                fork(&t, 23, 102, 103),
                exec(&t, 24, 103, "/bin/date"),
                exit(&t, 30, 103),
                exit(&t, 31, 102),
                exit(&t, 40, 101),
                exit(&t, 50, 100),
                ended(&t, 50, ExitReason::Exited { code: 0 }, 0),
            ],
            100,
        );
        let by_name = |n: &str| {
            spans.iter().find(|s| s.name == n).unwrap_or_else(|| {
                panic!(
                    "no span {n}: {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
        };
        let root = by_name("task web");
        let trace = ids::trace_id("a1/web/1");
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.status, Status::Unset);
        assert_eq!(attr(root, "nomad.alloc.id"), Some(&Value::from("a1")));
        assert_eq!(root.start_time, at(0));
        assert_eq!(root.end_time, at(50));
        let main = spans
            .iter()
            .find(|s| attr(s, "process.pid") == Some(&Value::I64(100)))
            .expect("main span");
        assert_eq!(main.parent_span_id, root.span_context.span_id());
        assert_eq!(attr(main, "process.exit.code"), Some(&Value::I64(0)));
        let sleep = by_name("sleep");
        assert_eq!(sleep.parent_span_id, main.span_context.span_id());
        assert_eq!(sleep.events.len(), 1, "one exec");
        let date = by_name("date");
        let forked_sh = spans
            .iter()
            .find(|s| attr(s, "process.pid") == Some(&Value::I64(102)))
            .expect("102");
        assert_eq!(date.parent_span_id, forked_sh.span_context.span_id());
        assert_eq!(forked_sh.parent_span_id, main.span_context.span_id());
        assert_eq!(by_name("start").parent_span_id, root.span_context.span_id());
        assert_eq!(spans.len(), 6, "root, start and four processes");
        assert_eq!(
            spans.last().map(|s| s.name.as_ref()),
            Some("task web"),
            "root last"
        );
    }

    #[test]
    fn failures_carry_error_status_and_who_killed() {
        let t = task();
        let sender = crate::observer::Sender {
            pid: 4242,
            comm: "kill-bot".into(),
            uid: Some(0),
            class: SenderClass::Host,
            code: 0,
        };
        let spans = run(
            &[
                started(&t),
                fork(&t, 20, 100, 101),
                Fact::OomKill {
                    key: t.key(),
                    at: at(25),
                    pid: 101,
                    comm: "perl".into(),
                    rss_kb: 30_000,
                    main: false,
                    scope: OomScope::Cgroup {
                        cgroup: "/nomad/a1.web".into(),
                    },
                },
                exit(&t, 26, 101),
                fork(&t, 27, 100, 102),
                exit(&t, 28, 102),
                Fact::ChildKilled {
                    key: t.key(),
                    at: at(28),
                    pid: 102,
                    signal: 15,
                    sender: sender.clone(),
                },
                Fact::SignalReceived {
                    key: t.key(),
                    at: at(40),
                    pid: 100,
                    main: true,
                    signal: 15,
                    sender: sender.clone(),
                },
                ended(
                    &t,
                    41,
                    ExitReason::Signaled {
                        signal: 15,
                        sender: Some(sender),
                        core_dumped: false,
                        escalation_after: None,
                    },
                    0,
                ),
            ],
            100,
        );
        let pid = |p: i64| {
            spans
                .iter()
                .find(|s| attr(s, "process.pid") == Some(&Value::I64(p)) && s.name != "task web")
                .expect("span")
        };
        assert_eq!(
            attr(pid(101), "error.type"),
            Some(&Value::from("oom_killed"))
        );
        assert!(matches!(pid(101).status, Status::Error { .. }));
        assert_eq!(attr(pid(102), "error.type"), Some(&Value::from("SIGTERM")));
        assert_eq!(
            attr(pid(102), "bpfexec.killed_by.comm"),
            Some(&Value::from("kill-bot"))
        );
        let root = spans.iter().find(|s| s.name == "task web").expect("root");
        assert_eq!(attr(root, "error.type"), Some(&Value::from("signaled")));
        assert_eq!(attr(root, "bpfexec.killed_by.pid"), Some(&Value::I64(4242)));
        assert!(root.events.iter().any(|e| e.name == "oom_kill"));
        assert!(pid(100).events.iter().any(|e| e.name == "signal"));
    }

    #[test]
    fn a_fork_storm_is_capped_and_counted() {
        let t = task();
        let mut facts = vec![started(&t)];
        for pid in 200..260 {
            facts.push(fork(&t, 20, 100, pid));
            facts.push(exit(&t, 21, pid));
        }
        facts.push(ended(&t, 30, ExitReason::Exited { code: 0 }, 0));
        let spans = run(&facts, 10);
        assert_eq!(
            spans.len(),
            2 + 1 + 10,
            "root, start, main and 10 of 60 children"
        );
        let root = spans.iter().find(|s| s.name == "task web").expect("root");
        assert_eq!(
            attr(root, "bpfexec.process_spans.capped"),
            Some(&Value::I64(50))
        );
    }

    #[test]
    fn a_recovered_run_keeps_its_trace_and_process_ids() {
        let t = task();
        let node = |pid: u32, ppid: u32| ProcessNode {
            pid,
            ppid,
            comm: "sleep".into(),
            cmdline: vec!["sleep".into(), "9".into()],
            exe: Some("/usr/bin/sleep".into()),
            start_time_ticks: None,
            started_at_ms: Some((T0 + Duration::from_millis(5)).as_millis() as u64),
        };
        let mut tr = Tracer::new(100);
        let mut out = Vec::new();
        // A backlog event before the recovery is held and applied after it.
        tr.apply(&exit(&t, 60, 101), &mut out);
        tr.apply(
            &Fact::Recovered {
                task: Arc::clone(&t),
                started_at: at(0),
                main: MainProcess {
                    pid: 100,
                    command: "/bin/sh".into(),
                    args: Vec::new(),
                    user: "nobody".into(),
                },
                running: true,
                processes: vec![node(100, 1), node(101, 100)],
            },
            &mut out,
        );
        tr.tick(SystemTime::now() + Duration::from_secs(60), &mut out);
        let child = out
            .iter()
            .find(|s| attr(s, "process.pid") == Some(&Value::I64(101)))
            .expect("101 exported after its exit");
        assert_eq!(
            child.span_context.span_id(),
            ids::process_span("a1/web/1", 101, 0)
        );
        assert_eq!(child.parent_span_id, ids::process_span("a1/web/1", 100, 0));
        assert_eq!(child.span_context.trace_id(), ids::trace_id("a1/web/1"));
        assert!(out.iter().all(|s| s.name != "task web"), "the run goes on");
    }
}
