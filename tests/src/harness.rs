//! Runs a file's acceptance checks against one shared agent (an agent start costs seconds and
//! the CI machine has 2 cores): each check runs in turn, a failing check prints its error, the
//! task events of the jobs it registered and the agent log tail, and the others still run. The
//! test fails at the end if any check failed.
//!
//! `BPFEXEC_E2E_ONLY=name1,name2` runs only the named checks.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use anyhow::{Result, anyhow};

use crate::agent::{Agent, AgentOptions};
use crate::env;

/// One named check.
pub struct Check {
    /// Short name (used in output and by `BPFEXEC_E2E_ONLY`).
    pub name: &'static str,
    /// The check; it may stop, restart or kill the agent.
    pub run: fn(&mut Agent) -> Result<()>,
}

fn selected(name: &str) -> bool {
    match std::env::var("BPFEXEC_E2E_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|n| n.trim() == name),
        _ => true,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Starts one agent with `opts` and runs `checks` against it (see the module docs). Skips (or,
/// with `CI=true`, fails) when not root. Panics if the agent cannot start or any check fails.
pub fn run_checks(suite: &str, opts: AgentOptions, checks: &[Check]) {
    if !env::require_root(suite) {
        return;
    }
    let checks: Vec<&Check> = checks.iter().filter(|c| selected(c.name)).collect();
    if checks.is_empty() {
        println!("{suite}: no check selected");
        return;
    }
    let t0 = Instant::now();
    let mut agent = match Agent::start_ready(opts) {
        Ok(a) => a,
        Err(e) => panic!("{suite}: the agent did not become ready: {e:#}"),
    };
    println!(
        "{suite}: agent ready in {:.1?} ({})",
        t0.elapsed(),
        agent.root().display()
    );
    let mut failed = Vec::new();
    for check in checks {
        println!("=== {suite}/{} ...", check.name);
        let _ = agent.note(&format!("check {} begins", check.name));
        let jobs_before = agent.api().registered_jobs().len();
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (check.run)(&mut agent)))
            .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_message(p.as_ref()))));
        match outcome {
            Ok(()) => println!("--- PASS {suite}/{} ({:.1?})", check.name, t.elapsed()),
            Err(e) => {
                let msg = format!("{e:#}");
                println!(
                    "--- FAIL {suite}/{} ({:.1?}): {msg}",
                    check.name,
                    t.elapsed()
                );
                let diag = agent.diagnostics_since(jobs_before);
                // Wait errors already quote the agent log; print only the job part then.
                let diag = match diag.find("--- last ") {
                    Some(i) if msg.contains("--- last ") => &diag[..i],
                    _ => diag.as_str(),
                };
                println!("{diag}");
                failed.push(check.name);
            }
        }
        if !agent.is_running() {
            println!(
                "{suite}: the agent is not running after {}; restarting it",
                check.name
            );
            if let Err(e) = agent.restart() {
                println!("{suite}: restart failed, abandoning the remaining checks: {e:#}");
                failed.push("<agent restart>");
                break;
            }
        }
    }
    let t_drop = Instant::now();
    drop(agent);
    println!(
        "{suite}: cleanup took {:.1?}; total {:.1?}",
        t_drop.elapsed(),
        t0.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{suite}: failed checks: {}",
        failed.join(", ")
    );
}
