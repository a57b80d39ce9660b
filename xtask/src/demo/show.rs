//! Runs one example job on the demo agent and judges it against its `# expect` header: batch
//! jobs are waited on until terminal; `running` services are shown running, then stopped
//! (`nomad job stop`, which makes Nomad call StopTask with the task's kill_signal) and must end
//! `complete`.

use std::time::Duration;

use anyhow::{Result, anyhow};
use bpfexec_e2e::{Alloc, Client, poll_until};

use super::detach;
use super::examples::{Example, Outcome};
use super::report;

const PLACE_TIMEOUT: Duration = Duration::from_secs(60);
const FINISH_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);

/// What happened to one example.
pub struct Verdict {
    pub name: String,
    pub expected: String,
    pub problems: Vec<String>,
    /// The example's allocation, once placed.
    pub alloc_id: Option<String>,
    /// Its tasks.
    pub tasks: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Waits until `alloc` is terminal (or `timeout`, or Ctrl-C).
fn wait_terminal(api: &Client, alloc: &str, timeout: Duration) -> Result<Alloc> {
    poll_until(&format!("alloc {alloc} to finish"), timeout, POLL, |last| {
        detach::check()?;
        let a = api.alloc(alloc)?;
        *last = format!("client_status={}", a.client_status);
        Ok(a.is_terminal().then_some(a))
    })
}

/// Waits until `alloc` runs and its first task printed something (or 5 s passed).
fn wait_running(api: &Client, alloc: &str) -> Result<Alloc> {
    let a = poll_until(
        &format!("alloc {alloc} to run"),
        PLACE_TIMEOUT,
        POLL,
        |last| {
            detach::check()?;
            let a = api.alloc(alloc)?;
            if a.is_terminal() {
                return Err(anyhow!(
                    "alloc ended with client status {} instead of running",
                    a.client_status
                ));
            }
            *last = format!("client_status={}", a.client_status);
            Ok((a.client_status == "running").then_some(a))
        },
    )?;
    let task = a
        .task_states
        .as_ref()
        .and_then(|s| s.keys().next().cloned())
        .unwrap_or_default();
    let _ = poll_until("first output", Duration::from_secs(5), POLL, |_| {
        let (out, err) = report::logs(api, alloc, &task);
        Ok((!out.is_empty() || !err.is_empty()).then_some(()))
    });
    api.alloc(alloc)
}

/// Registers `ex`, shows what it did and judges it.
pub fn run(api: &Client, ex: &Example) -> Verdict {
    let mut verdict = Verdict {
        name: ex.name(),
        expected: ex.expect.summary(),
        problems: Vec::new(),
        alloc_id: None,
        tasks: Vec::new(),
    };
    if let Err(e) = run_inner(api, ex, &mut verdict) {
        println!("    ERROR: {e:#}");
        verdict.problems.push(format!("{e:#}"));
    }
    verdict
}

fn run_inner(api: &Client, ex: &Example, verdict: &mut Verdict) -> Result<()> {
    let job = api.register_job(&ex.hcl)?;
    let alloc_id = api.wait_job_alloc(&job, PLACE_TIMEOUT)?;
    verdict.alloc_id = Some(alloc_id.clone());
    println!(
        "  job {job:?}, allocation {} (nomad alloc status {})",
        report::short(&alloc_id),
        report::short(&alloc_id)
    );
    let alloc = if ex.expect.outcome == Outcome::Running {
        let running = wait_running(api, &alloc_id)?;
        println!(
            "  client status: {} — while running:",
            running.client_status
        );
        print!("{}", report::alloc(api, &running, 0, true));
        let stop_at = now_ns();
        println!("  $ nomad job stop {job}");
        api.stop_job(&job, false)?;
        let done = wait_terminal(api, &alloc_id, FINISH_TIMEOUT)?;
        println!(
            "  client status after stop: {} — events since the stop:",
            done.client_status
        );
        print!("{}", report::alloc(api, &done, stop_at, true));
        if done.client_status != "complete" {
            verdict.problems.push(format!(
                "after the stop the alloc is {}, expected complete",
                done.client_status
            ));
        }
        done
    } else {
        let done = wait_terminal(api, &alloc_id, FINISH_TIMEOUT)?;
        println!("  client status: {}", done.client_status);
        print!("{}", report::alloc(api, &done, 0, true));
        if done.client_status != ex.expect.outcome.as_str() {
            verdict.problems.push(format!(
                "client status {}, expected {}",
                done.client_status,
                ex.expect.outcome.as_str()
            ));
        }
        done
    };
    verdict.tasks = alloc
        .task_states
        .iter()
        .flatten()
        .map(|(t, _)| t.clone())
        .collect();
    check_exit_and_logs(api, ex, &alloc, verdict);
    Ok(())
}

fn check_exit_and_logs(api: &Client, ex: &Example, alloc: &Alloc, verdict: &mut Verdict) {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut events = String::new();
    for (task, state) in alloc.task_states.iter().flatten() {
        for e in state.events.as_deref().unwrap_or_default() {
            events.push_str(&e.display_message);
            events.push('\n');
        }
        let exit = report::exit_of(state.events.as_deref().unwrap_or_default());
        let (code, signal) = exit.map_or((None, None), |(c, s, _)| (Some(c), Some(s)));
        if let Some(want) = ex.expect.exit_code
            && code != Some(want)
        {
            verdict
                .problems
                .push(format!("task {task}: exit code {code:?}, expected {want}"));
        }
        if let Some(want) = ex.expect.signal
            && signal != Some(want)
        {
            verdict
                .problems
                .push(format!("task {task}: signal {signal:?}, expected {want}"));
        }
        let (out, err) = report::logs(api, &alloc.id, task);
        stdout.push_str(&out);
        stderr.push_str(&err);
    }
    for (stream, text, wanted) in [
        ("stdout", &stdout, &ex.expect.stdout),
        ("stderr", &stderr, &ex.expect.stderr),
        ("the task events", &events, &ex.expect.events),
    ] {
        for needle in wanted {
            if !text.contains(needle.as_str()) {
                verdict.problems.push(format!("{stream} lacks {needle:?}"));
            }
        }
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}
