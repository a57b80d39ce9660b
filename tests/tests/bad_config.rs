//! Acceptance (h): invalid task configs fail the task with a message naming the offending key,
//! an unknown plugin option stops the agent at start-up, and the driver stays healthy and usable
//! after bad jobs.

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::suite::{self, TIMEOUT, expect_terminated};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks};

#[test]
fn bad_config() {
    run_checks(
        "bad_config",
        suite::options(),
        &[
            Check {
                name: "missing_command",
                run: missing_command,
            },
            Check {
                name: "args_not_a_list",
                run: args_not_a_list,
            },
            Check {
                name: "still_healthy",
                run: still_healthy,
            },
            Check {
                name: "unknown_plugin_option",
                run: unknown_plugin_option,
            },
        ],
    );
}

/// Runs a job with `config { <config> }` and checks that it fails with an event naming `key`.
fn expect_config_error(agent: &Agent, prefix: &str, config: &str, key: &str) -> Result<()> {
    let job = suite::batch(prefix).raw_config(config);
    let api = agent.api();
    let job_id = api.register_job(&job.to_hcl())?;
    let alloc = api.wait_job_alloc(&job_id, TIMEOUT)?;
    // (The alloc turns failed ~4 s after the event: Nomad's logmon waits that long for a writer
    // on the log FIFOs of a task that never started.)
    let a = api.wait_alloc_status(&alloc, &["failed"], TIMEOUT)?;
    let naming = a
        .events(TASK)
        .into_iter()
        .find(|e| names_word(&e.all_text(), key))
        .with_context(|| format!("no task event names {key:?}"))?;
    println!("event naming {key:?}: {naming}");
    Ok(())
}

/// Whether `text` contains `word` as a whole word (not inside an identifier like `commands`).
fn names_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

fn missing_command(agent: &mut Agent) -> Result<()> {
    expect_config_error(agent, "no-command", "args = [\"x\"]", "command")
}

fn args_not_a_list(agent: &mut Agent) -> Result<()> {
    expect_config_error(
        agent,
        "args-string",
        "command = \"/bin/true\"\n      args = \"notalist\"",
        "args",
    )
}

fn still_healthy(agent: &mut Agent) -> Result<()> {
    let node = agent.node()?;
    let name = suite::driver();
    let d = node
        .drivers
        .get(name)
        .with_context(|| format!("no {name} driver on the node"))?;
    ensure!(
        d.detected && d.healthy,
        "{name} after bad jobs: detected={} healthy={} ({})",
        d.detected,
        d.healthy,
        d.health_description
    );
    let job = suite::batch("good-after-bad")
        .command("/bin/echo")
        .args(["fine"]);
    let a = agent.api().run_job(&job.to_hcl(), &["complete"], TIMEOUT)?;
    expect_terminated(&a, 0, 0)?;
    Ok(())
}

fn unknown_plugin_option(_agent: &mut Agent) -> Result<()> {
    let opts = if suite::is_bpfexec() {
        AgentOptions::bpfexec().plugin_config("no_such_option = true")
    } else {
        let mut o = AgentOptions::raw_exec();
        let hcl = "plugin \"raw_exec\" {\n  config {\n    enabled = true\n    no_such_option = true\n  }\n}\n";
        hcl.clone_into(&mut o.extra_hcl);
        o
    };
    let opts = AgentOptions {
        ready_timeout: std::time::Duration::from_secs(30),
        ..opts
    };
    let output = Agent::start_expect_failure(opts)?;
    let tail: Vec<&str> = output.lines().rev().take(15).collect();
    ensure!(
        output.contains("no_such_option"),
        "the agent refused to start but its output does not name no_such_option:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let line = output
        .lines()
        .find(|l| l.contains("no_such_option"))
        .unwrap_or_default();
    println!("agent refused to start: {}", line.trim());
    Ok(())
}
