//! Issue 8 acceptance, against the real peers: a real Nomad agent runs bpfexec tasks while a
//! real Prometheus (Debian's) scrapes the driver's `/metrics` and Nomad's
//! `/v1/metrics?format=prometheus` every second, and the driver exports OTLP traces to a real
//! Jaeger (built from its Go module). Assertions are PromQL queries and Jaeger query-API
//! lookups: a child OOM kill and a clean exit, a main-process OOM kill, the span tree of a
//! forking task against the kernel's process tree, a kill from a named host process, one trace
//! for a task recovered after a plugin SIGKILL, Nomad's allocation series for bpfexec tasks as
//! for exec tasks, per-task series that vanish after the retention, and export to a collector
//! that went away. A second agent shows that `OTEL_EXPORTER_OTLP_ENDPOINT` alone turns export on
//! and that an invalid `otlp` block is refused naming the field.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use bpfexec_e2e::observe::KillBot;
use bpfexec_e2e::observe::scenario::{GATE, HOG, go, start_gated};
use bpfexec_e2e::peers::{Jaeger, JaegerOptions, Prometheus, PrometheusConfig, ScrapeJob, Trace};
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, wait_file};
use bpfexec_e2e::wait::{POLL, poll_until};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks};
use nix::sys::signal::Signal;

/// The driver's `http_addr` port.
static PORT: OnceLock<u16> = OnceLock::new();
/// The peers, shared by the checks (stopped by the test when the checks are done).
static JAEGER: Mutex<Option<Jaeger>> = Mutex::new(None);
static PROMETHEUS: Mutex<Option<Prometheus>> = Mutex::new(None);

/// How long a destroyed task's series stay in this agent's driver.
const RETENTION: Duration = Duration::from_secs(10);
/// Spans reach Jaeger within this (process spans 1.5 s after their exit, the root 2 s after the
/// run's end, then the exporter's batching).
const TRACE_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn http_addr() -> String {
    format!("127.0.0.1:{}", PORT.get().copied().unwrap_or(0))
}

fn jaeger() -> Result<MutexGuard<'static, Option<Jaeger>>> {
    let g = lock(&JAEGER);
    ensure!(g.is_some(), "Jaeger is not running");
    Ok(g)
}

fn prometheus() -> Result<MutexGuard<'static, Option<Prometheus>>> {
    let g = lock(&PROMETHEUS);
    ensure!(
        g.is_some(),
        "Prometheus is not running (the peers_up check failed)"
    );
    Ok(g)
}

/// Polls PromQL `q` until it returns exactly one sample, equal to `want`.
fn expect_value(q: &str, want: f64) -> Result<()> {
    let guard = prometheus()?;
    let p = guard.as_ref().context("Prometheus")?;
    poll_until(&format!("`{q}` == {want}"), TIMEOUT, POLL, |last| {
        let v = p.query_vector(q)?;
        *last = format!("{:?}", v.iter().map(|s| s.value).collect::<Vec<_>>());
        Ok((v.len() == 1 && (v[0].value - want).abs() < 1e-9).then_some(()))
    })
    .map(|()| println!("ok: {q} == {want}"))
}

/// The one trace of allocation `alloc`, once `until` holds for it.
fn trace_of(alloc: &str, until: impl Fn(&Trace) -> bool) -> Result<Trace> {
    let guard = jaeger()?;
    let j = guard.as_ref().context("Jaeger")?;
    let traces = j.wait_for_traces(
        "bpfexec",
        &[("nomad.alloc.id", alloc)],
        TRACE_TIMEOUT,
        |t| t.len() == 1 && until(&t[0]),
    )?;
    let trace = traces
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no trace for allocation {alloc}"))?;
    println!("trace {}:\n{}", trace.trace_id, trace.render_tree());
    Ok(trace)
}

/// An integer attribute of a span.
fn int(s: &bpfexec_e2e::peers::Span, key: &str) -> Option<i64> {
    s.tag(key).and_then(bpfexec_e2e::peers::TagValue::as_i64)
}

/// The root span `task task` of `t` (the job specs' task is named `task`).
fn root(t: &Trace) -> Result<&bpfexec_e2e::peers::Span> {
    let roots: Vec<_> = t.spans_named("task task").collect();
    ensure!(
        roots.len() == 1,
        "expected one root span, found {}",
        roots.len()
    );
    Ok(roots[0])
}

fn has_root(t: &Trace) -> bool {
    t.spans_named("task task").count() == 1
}

/// The series selector of one task of job `job` (Prometheus renames the target's `job` label).
fn sel(job: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!("{{exported_job=\"{job}\",task=\"task\"}}")
    } else {
        format!("{{exported_job=\"{job}\",task=\"task\",{extra}}}")
    }
}

#[test]
fn telemetry() {
    if !suite::is_bpfexec() {
        println!("SKIP: telemetry: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    if !bpfexec_e2e::env::require_root("telemetry") {
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    let j = Jaeger::start(&JaegerOptions::default()).expect("starting Jaeger");
    let endpoint = j.otlp_grpc_endpoint();
    *lock(&JAEGER) = Some(j);
    let opts = AgentOptions::bpfexec().plugin_config(&format!(
        "http_addr = \"127.0.0.1:{port}\"\nmetrics_retention = \"{}s\"\notlp {{\n  endpoint = \"{endpoint}\"\n}}",
        RETENTION.as_secs()
    ));
    let result = std::panic::catch_unwind(|| {
        run_checks(
            "telemetry",
            opts,
            &[
                Check {
                    name: "peers_up",
                    run: peers_up,
                },
                Check {
                    name: "child_oom_and_clean_exit",
                    run: child_oom_and_clean_exit,
                },
                Check {
                    name: "main_oom",
                    run: main_oom,
                },
                Check {
                    name: "span_tree_mirrors_processes",
                    run: span_tree_mirrors_processes,
                },
                Check {
                    name: "killed_from_outside",
                    run: killed_from_outside,
                },
                Check {
                    name: "recovered_keeps_one_trace",
                    run: recovered_keeps_one_trace,
                },
                Check {
                    name: "downtime_processes_in_trace",
                    run: downtime_processes_in_trace,
                },
                Check {
                    name: "nomad_alloc_series_as_for_exec",
                    run: nomad_alloc_series_as_for_exec,
                },
                Check {
                    name: "series_return_to_base",
                    run: series_return_to_base,
                },
                Check {
                    name: "collector_gone",
                    run: collector_gone,
                },
            ],
        );
    });
    // The peers are stopped by pid when dropped, whatever the checks did.
    drop(lock(&PROMETHEUS).take());
    drop(lock(&JAEGER).take());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Prometheus scrapes the agent and the driver every second and both targets are up.
fn peers_up(agent: &mut Agent) -> Result<()> {
    let config = PrometheusConfig::new()
        .scrape_interval(Duration::from_secs(1))
        .evaluation_interval(Duration::from_secs(1))
        .scrape(ScrapeJob::nomad(agent.addr()))
        .scrape(ScrapeJob::bpfexec(&http_addr()));
    let p = Prometheus::start(config)?;
    p.wait_targets_up(TIMEOUT)?;
    *lock(&PROMETHEUS) = Some(p);
    expect_value("bpfexec_probes_loaded", 1.0)?;
    expect_value("bpfexec_otlp_enabled", 1.0)
}

/// A child is OOM-killed, the task exits 0: the OOM counter for that job/task is 1 with
/// victim=child, the exit series says exited_ok, every reason's series exists; the trace's perl
/// span is OOM-killed with the event naming it, and the run itself is not an error.
fn child_oom_and_clean_exit(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("tel-child-oom")
        .shell(&format!("{HOG}\necho rc=$?\nexit 0"))
        .memory_mb(32);
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
    expect_value(
        &format!(
            "bpfexec_task_oom_kills_total{}",
            sel(&job_id, "victim=\"child\",scope=\"cgroup\"")
        ),
        1.0,
    )?;
    expect_value(
        &format!(
            "bpfexec_task_oom_kills_total{}",
            sel(&job_id, "victim=\"main\",scope=\"cgroup\"")
        ),
        0.0,
    )?;
    expect_value(
        &format!(
            "bpfexec_task_exits_total{}",
            sel(&job_id, "reason=\"exited_ok\"")
        ),
        1.0,
    )?;
    expect_value(
        &format!("count(bpfexec_task_exits_total{})", sel(&job_id, "")),
        7.0,
    )?;
    expect_value(
        &format!("sum(bpfexec_task_exits_total{})", sel(&job_id, "")),
        1.0,
    )?;
    let t = trace_of(&alloc, |t| {
        has_root(t) && t.spans_named("perl").count() == 1
    })?;
    let r = root(&t)?;
    ensure!(!r.is_error(), "a clean exit is not an error: {:?}", r.tags);
    ensure!(
        r.tag_str("nomad.alloc.id") == Some(alloc.as_str()),
        "root lacks nomad.alloc.id"
    );
    ensure!(
        r.tag_str("nomad.job.id") == Some(job_id.as_str()),
        "root lacks nomad.job.id"
    );
    ensure!(r.tag_str("bpfexec.exit.reason") == Some("exited_ok"));
    let perl = t.spans_named("perl").next().context("perl span")?;
    ensure!(perl.is_error(), "the OOM-killed perl span is an error");
    ensure!(perl.tag_str("error.type") == Some("oom_killed"));
    let ev = perl
        .events("oom_kill")
        .next()
        .context("oom_kill event on the perl span")?;
    ensure!(
        ev.field("bpfexec.victim.comm").and_then(|v| v.as_str()) == Some("perl"),
        "the event names the victim: {ev:?}"
    );
    ensure!(ev.field("bpfexec.victim").and_then(|v| v.as_str()) == Some("child"));
    Ok(())
}

/// The main process is OOM-killed: the run's trace has status Error, error.type oom_killed and
/// the OOM event naming the victim; the metrics agree.
fn main_oom(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("tel-main-oom")
        .shell(&format!("exec {HOG}"))
        .memory_mb(32);
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    expect_value(
        &format!(
            "bpfexec_task_oom_kills_total{}",
            sel(&job_id, "victim=\"main\",scope=\"cgroup\"")
        ),
        1.0,
    )?;
    expect_value(
        &format!(
            "bpfexec_task_exits_total{}",
            sel(&job_id, "reason=\"oom_killed\"")
        ),
        1.0,
    )?;
    let t = trace_of(&alloc, has_root)?;
    let r = root(&t)?;
    ensure!(r.is_error(), "an OOM-killed run is an error");
    ensure!(
        r.tag_str("error.type") == Some("oom_killed"),
        "{:?}",
        r.tags
    );
    ensure!(
        r.tag_str("otel.status_description")
            .is_some_and(|d| d.contains("OOM-killed")),
        "the status message is the human reason: {:?}",
        r.tag_str("otel.status_description")
    );
    let ev = r
        .events("oom_kill")
        .next()
        .context("oom_kill event on the root span")?;
    ensure!(ev.field("bpfexec.victim").and_then(|v| v.as_str()) == Some("main"));
    ensure!(ev.field("bpfexec.victim.comm").and_then(|v| v.as_str()) == Some("perl"));
    Ok(())
}

/// The live process tree of a task, as the kernel shows it: (pid, ppid, comm) of every process
/// below `main`.
fn host_tree(main: i32) -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let mut todo = vec![main];
    while let Some(p) = todo.pop() {
        for c in procs::children(p) {
            out.push((c, p));
            todo.push(c);
        }
    }
    out
}

/// A task with nested children: every process the kernel showed in its tree has a span whose
/// parent span is its parent process's span.
fn span_tree_mirrors_processes(agent: &mut Agent) -> Result<()> {
    let script =
        format!("sh -c 'sleep 120 & sh -c \"sleep 120\" & wait' &\nsleep 120 &\n{GATE}exit 0");
    let job = suite::batch("tel-tree").shell(&script);
    let (_job, alloc, main) = start_gated(agent, &job.to_hcl())?;
    // The background tree forms while the task waits at its gate.
    let tree = poll_until(
        "the task's tree (4 processes below the gate loop)",
        TIMEOUT,
        POLL,
        |last| {
            let t: Vec<(i32, i32)> = host_tree(main)
                .into_iter()
                .filter(|(p, _)| {
                    procs::cmdline(*p).is_some_and(|c| c.iter().any(|a| a.contains("120")))
                })
                .collect();
            *last = format!("{t:?}");
            Ok((t.len() >= 4).then_some(t))
        },
    )?;
    println!("kernel tree below {main}: {tree:?}");
    go(agent, &alloc, "go")?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
    let t = trace_of(&alloc, |t| {
        has_root(t)
            && tree.iter().all(|(pid, _)| {
                t.spans
                    .iter()
                    .any(|s| int(s, "process.pid") == Some(i64::from(*pid)))
            })
    })?;
    let span_of = |pid: i32| {
        t.spans.iter().find(|s| {
            s.operation_name != "task task" && int(s, "process.pid") == Some(i64::from(pid))
        })
    };
    let main_span = span_of(main).context("no span for the main process")?;
    ensure!(
        main_span.parent_id() == Some(root(&t)?.span_id.as_str()),
        "the main process's span is a child of the root"
    );
    for (pid, ppid) in &tree {
        let s = span_of(*pid).with_context(|| format!("no span for pid {pid}"))?;
        let parent = span_of(*ppid).with_context(|| format!("no span for parent pid {ppid}"))?;
        ensure!(
            s.parent_id() == Some(parent.span_id.as_str()),
            "span of pid {pid} ({}) should be a child of pid {ppid}'s span ({}):\n{}",
            s.operation_name,
            parent.operation_name,
            t.render_tree()
        );
        ensure!(
            int(s, "process.parent_pid") == Some(i64::from(*ppid)),
            "process.parent_pid of {pid}"
        );
    }
    ensure!(
        t.spans_named("sleep").count() >= 3,
        "the sleeps are spans named after their executable"
    );
    ensure!(
        t.spans.iter().any(|s| s.events("exec").next().is_some()),
        "execs are span events"
    );
    Ok(())
}

/// A host process named kill-bot sends SIGTERM: the trace names the sender and the metrics
/// count a kill of the main process by a host process.
fn killed_from_outside(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("tel-kill").shell(&format!("{GATE}exit 0"));
    let (job_id, alloc, main) = start_gated(agent, &job.to_hcl())?;
    let bot = KillBot::new()?;
    let bot_pid = bot.send("TERM", main)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    expect_value(
        &format!(
            "bpfexec_task_signal_kills_total{}",
            sel(&job_id, "victim=\"main\",sender_class=\"host\"")
        ),
        1.0,
    )?;
    expect_value(
        &format!(
            "bpfexec_task_exits_total{}",
            sel(&job_id, "reason=\"signaled\"")
        ),
        1.0,
    )?;
    expect_value(
        &format!(
            "bpfexec_task_signals_received_total{}",
            sel(&job_id, "signal=\"SIGTERM\",sender_class=\"host\"")
        ),
        1.0,
    )?;
    let t = trace_of(&alloc, has_root)?;
    let r = root(&t)?;
    ensure!(
        r.is_error() && r.tag_str("error.type") == Some("signaled"),
        "{:?}",
        r.tags
    );
    ensure!(
        r.tag_str("bpfexec.killed_by.comm") == Some(KillBot::COMM),
        "{:?}",
        r.tags
    );
    ensure!(r.tag_str("bpfexec.killed_by.class") == Some("host"));
    ensure!(int(r, "bpfexec.killed_by.pid") == Some(i64::from(bot_pid)));
    Ok(())
}

/// The plugin is SIGKILLed while a task runs; the relaunched plugin recovers it; when it ends,
/// Jaeger has one trace for the allocation with one root span.
fn recovered_keeps_one_trace(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("tel-recover").shell(&format!("{GATE}sleep 0.2\nexit 7"));
    let (_job, alloc, _main) = start_gated(agent, &job.to_hcl())?;
    let plugins = agent.plugin_pids();
    ensure!(
        plugins.len() == 1,
        "expected one plugin process, found {plugins:?}"
    );
    let old = plugins[0];
    procs::signal(old, Signal::SIGKILL).context("SIGKILL to the plugin")?;
    poll_until("Nomad to relaunch the plugin", TIMEOUT, POLL, |last| {
        let now = agent.plugin_pids();
        *last = format!("{now:?}");
        Ok(now.into_iter().find(|p| *p != old))
    })?;
    // Let the relaunched plugin recover the task, then end it.
    std::thread::sleep(Duration::from_secs(3));
    go(agent, &alloc, "go")?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    let t = trace_of(&alloc, has_root)?;
    let r = root(&t)?;
    ensure!(int(r, "process.exit.code") == Some(7), "{:?}", r.tags);
    // Give a duplicate the time to show up, then count again.
    std::thread::sleep(Duration::from_secs(5));
    let guard = jaeger()?;
    let j = guard.as_ref().context("Jaeger")?;
    let traces = j.find_traces("bpfexec", &[("nomad.alloc.id", alloc.as_str())], 10)?;
    ensure!(traces.len() == 1, "one trace, not {}", traces.len());
    ensure!(
        traces[0].spans_named("task task").count() == 1,
        "one root span:\n{}",
        traces[0].render_tree()
    );
    ensure!(
        traces[0].spans_named("start").count() == 1,
        "one start span"
    );
    Ok(())
}

/// The agent (and so the plugin) is stopped while a task runs; meanwhile the task runs `cat`,
/// which starts and ends while no plugin is up. After the restart the run's one trace has a
/// span for it, filled in from what the pinned probes recorded.
fn downtime_processes_in_trace(agent: &mut Agent) -> Result<()> {
    let script = format!(
        "{GATE}cat /dev/null\necho ran > /alloc/ran\n\
         while [ ! -e /alloc/go2 ]; do sleep 0.1; done\nexit 0"
    );
    let job = suite::batch("tel-downtime").shell(&script);
    let (_job, alloc, main) = start_gated(agent, &job.to_hcl())?;
    agent.stop()?;
    poll_until("the plugin to exit with the agent", TIMEOUT, POLL, |last| {
        let pids = agent.plugin_pids();
        *last = format!("{pids:?}");
        Ok(pids.is_empty().then_some(()))
    })?;
    go(agent, &alloc, "go")?;
    wait_file(&alloc_file(agent, &alloc, "ran"), TIMEOUT)?;
    agent.restart()?;
    go(agent, &alloc, "go2")?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
    let t = trace_of(&alloc, |t| {
        has_root(t) && t.spans_named("cat").next().is_some()
    })?;
    let cat = t.spans_named("cat").next().context("no cat span")?;
    ensure!(
        int(cat, "process.parent_pid") == Some(i64::from(main)),
        "the cat span's parent is the main process:\n{}",
        t.render_tree()
    );
    ensure!(
        t.spans_named("task task").count() == 1,
        "one root span:\n{}",
        t.render_tree()
    );
    Ok(())
}

/// Every `nomad_client_allocs_memory_*` / `_cpu_*` series Nomad publishes for an exec task also
/// exists for a bpfexec task, in the same run.
fn nomad_alloc_series_as_for_exec(agent: &mut Agent) -> Result<()> {
    let script = "sleep 60";
    let ours = suite::batch("tel-parity-bpfexec").shell(script);
    let theirs = suite::batch("tel-parity-exec").driver("exec").shell(script);
    let ours_id = agent.api().register_job(&ours.to_hcl())?;
    let theirs_id = agent.api().register_job(&theirs.to_hcl())?;
    for job in [&ours_id, &theirs_id] {
        let alloc = agent.api().wait_job_alloc(job, TIMEOUT)?;
        // exec builds a chroot first: allow it time.
        agent
            .api()
            .wait_alloc_status(&alloc, &["running"], Duration::from_secs(120))?;
    }
    let names = |job: &str| -> Result<BTreeSet<String>> {
        let guard = prometheus()?;
        let p = guard.as_ref().context("Prometheus")?;
        Ok(p.series(&format!(
            "{{__name__=~\"nomad_client_allocs_(memory|cpu)_.*\",exported_job=\"{job}\"}}"
        ))?
        .iter()
        .filter_map(|l| l.get("__name__").cloned())
        .collect())
    };
    let (mut want, mut have) = (BTreeSet::new(), BTreeSet::new());
    let _ = poll_until(
        "Nomad's allocation series for both tasks",
        Duration::from_secs(60),
        POLL,
        |last| {
            want = names(&theirs_id)?;
            have = names(&ours_id)?;
            *last = format!("exec: {want:?}; bpfexec: {have:?}");
            Ok((!want.is_empty() && want.is_subset(&have)).then_some(()))
        },
    );
    for job in [&ours_id, &theirs_id] {
        agent.api().stop_job(job, false)?;
        let alloc = agent.api().wait_job_alloc(job, TIMEOUT)?;
        agent
            .api()
            .wait_alloc_status(&alloc, &["complete", "failed"], TIMEOUT)?;
    }
    ensure!(
        !want.is_empty(),
        "Nomad published no allocation series for the exec task"
    );
    let missing: Vec<&String> = want.difference(&have).collect();
    ensure!(
        missing.is_empty(),
        "series Nomad publishes for exec but not for bpfexec: {missing:?} (bpfexec has {have:?})"
    );
    println!("allocation series for both drivers: {want:?}");
    Ok(())
}

/// Series lines with task labels on the driver's own `/metrics`.
fn task_series() -> Result<usize> {
    let text = ureq::get(format!("http://{}/metrics", http_addr()))
        .call()
        .context("GET /metrics")?
        .body_mut()
        .read_to_string()
        .context("reading /metrics")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("alloc_id=\""))
        .count())
}

/// Many short tasks, then their allocations garbage-collected: the driver's per-task series
/// count returns to its base once the retention has passed.
fn series_return_to_base(agent: &mut Agent) -> Result<()> {
    // Earlier checks' allocations go first, so the base has no task series left.
    agent.api().client_gc()?;
    let base = poll_until(
        "the earlier tasks' series to expire",
        Duration::from_secs(60),
        POLL,
        |last| {
            let n = task_series()?;
            *last = format!("{n} task series");
            Ok((n == 0).then_some(n))
        },
    )?;
    let mut allocs = Vec::new();
    for i in 0..8 {
        let job = suite::batch(&format!("tel-short-{i}")).shell("true");
        let id = agent.api().register_job(&job.to_hcl())?;
        allocs.push(agent.api().wait_job_alloc(&id, TIMEOUT)?);
    }
    for a in &allocs {
        agent.api().wait_alloc_status(a, &["complete"], TIMEOUT)?;
    }
    let during = task_series()?;
    println!("task series: base {base}, with 8 finished tasks {during}");
    ensure!(
        during >= base + 8 * 30,
        "each task has its series ({during})"
    );
    agent.api().client_gc()?;
    poll_until(
        "the series count to return to its base",
        RETENTION + Duration::from_secs(30),
        POLL,
        |last| {
            let n = task_series()?;
            *last = format!("{n} task series (base {base})");
            Ok((n == base).then_some(()))
        },
    )
}

/// Jaeger goes away: tasks still run and end normally, the driver stays healthy, and the lost
/// spans are counted.
fn collector_gone(agent: &mut Agent) -> Result<()> {
    if let Some(mut j) = lock(&JAEGER).take() {
        j.stop()?;
    }
    let job = suite::batch("tel-no-collector").shell("sh -c 'true'; exit 3");
    let job_id = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
    let a = agent
        .api()
        .wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    suite::expect_terminated(&a, 3, 0)?;
    expect_value(
        &format!(
            "bpfexec_task_exits_total{}",
            sel(&job_id, "reason=\"exited_error\"")
        ),
        1.0,
    )?;
    poll_until(
        "the failed export to be counted",
        Duration::from_secs(90),
        POLL,
        |last| {
            let text = ureq::get(format!("http://{}/metrics", http_addr()))
                .call()?
                .body_mut()
                .read_to_string()?;
            let dropped: f64 = text
                .lines()
                .filter(|l| {
                    l.starts_with("bpfexec_otlp_spans_dropped_total{reason=\"export_failed\"}")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            *last = format!("export_failed drops {dropped}");
            Ok((dropped > 0.0).then_some(()))
        },
    )?;
    let node = agent.node()?;
    let health = node.drivers.get("bpfexec").is_some_and(|d| d.healthy);
    if !health {
        bail!("the driver is unhealthy without its collector");
    }
    Ok(())
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` in the agent's environment alone turns trace export on; an
/// invalid `otlp` block stops the agent with a message naming the field.
#[test]
fn telemetry_configuration() {
    if !suite::is_bpfexec() || !bpfexec_e2e::env::require_root("telemetry_configuration") {
        return;
    }
    let refused = Agent::start_expect_failure(
        AgentOptions::bpfexec().plugin_config("otlp {\n  endpoint = \"collector:4317\"\n}"),
    )
    .expect("the agent should refuse the config");
    assert!(
        refused.contains("otlp.endpoint"),
        "the refusal names the field:\n{refused}"
    );
    let j = Jaeger::start(&JaegerOptions::default()).expect("starting Jaeger");
    let opts = AgentOptions::bpfexec().env("OTEL_EXPORTER_OTLP_ENDPOINT", &j.otlp_grpc_endpoint());
    let mut agent = Agent::start_ready(opts).expect("agent");
    let run = || -> Result<()> {
        let job = suite::batch("tel-env").shell("exit 0");
        let job_id = agent.api().register_job(&job.to_hcl())?;
        let alloc = agent.api().wait_job_alloc(&job_id, TIMEOUT)?;
        agent
            .api()
            .wait_alloc_status(&alloc, &["complete"], TIMEOUT)?;
        let traces = j.wait_for_traces(
            "bpfexec",
            &[("nomad.alloc.id", alloc.as_str())],
            TRACE_TIMEOUT,
            |t| t.iter().any(|t| t.spans_named("task task").count() == 1),
        )?;
        println!("{}", traces[0].render_tree());
        Ok(())
    };
    let result = run();
    agent.stop().ok();
    drop(j);
    result.expect("export from the environment");
}
