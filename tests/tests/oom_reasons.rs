//! Issue 4 acceptance, OOM kills and exec failures: what Nomad recorded of the driver's
//! `ExitResult` (`Terminated` details `exit_code`, `signal`, `oom_killed`) and the driver's own
//! task event (type `Driver`: message and annotations) for a memory-limit OOM kill of the main
//! process, a child OOM the task survives (a notice while it runs; the later clean exit is not
//! reported as OOM), and a main process that exits because its child was OOM-killed; and the
//! start refusals of a missing binary, a script whose `#!` interpreter is missing and a file
//! that is not executable. Last, the ring buffer's lost counter is still 0.

use anyhow::{Result, ensure};
use bpfexec_e2e::api::TaskEvent;
use bpfexec_e2e::isolation::{config_body, expect_refusal};
use bpfexec_e2e::observe::scenario::{
    GATE, HOG, detail_u64, ended, expect_nothing_lost, go, memory_cgroup, size_text, start_gated,
};
use bpfexec_e2e::observe::{expect_details, expect_exit_result, expect_message, wait_notice};
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file};
use bpfexec_e2e::{Agent, AgentOptions, Check, run_checks};

/// The driver's `http_addr` port (its `/v1/observer` counters).
pub(crate) static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

#[test]
fn oom_reasons() {
    if !suite::is_bpfexec() {
        println!("SKIP: oom_reasons: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    run_checks(
        "oom_reasons",
        AgentOptions::bpfexec().plugin_config(&format!("http_addr = \"127.0.0.1:{port}\"")),
        &[
            Check {
                name: "oom_main",
                run: oom_main,
            },
            Check {
                name: "oom_child_survives",
                run: oom_child_survives,
            },
            Check {
                name: "oom_child_causes_exit",
                run: oom_child_causes_exit,
            },
            Check {
                name: "missing_binary",
                run: missing_binary,
            },
            Check {
                name: "missing_interpreter",
                run: missing_interpreter,
            },
            Check {
                name: "not_executable",
                run: not_executable,
            },
            Check {
                name: "lost_counter_zero",
                run: lost_counter_zero,
            },
        ],
    );
}

pub(crate) fn oom_main(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("oom-main")
        .shell(&format!("{GATE}exec {HOG}"))
        .memory_mb(32);
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let cgroup = memory_cgroup(pid)?;
    go(agent, &alloc, "go")?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 137, 9, true)?;
    let rss = detail_u64(&ev, "victim_rss_kb")?;
    ensure!(
        (16 * 1024..=40 * 1024).contains(&rss),
        "victim_rss_kb = {rss}: not near the 32 MiB limit"
    );
    expect_message(
        &ev,
        &format!(
            "OOM-killed: memory limit of cgroup {cgroup}; victim pid {pid} (perl, {} RSS) was \
             the main process",
            size_text(rss)
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "oom_killed"),
            ("oom_scope", "cgroup"),
            ("oom_cgroup", &cgroup),
            ("victim_pid", &pid.to_string()),
            ("victim_comm", "perl"),
            ("victim_is_main", "true"),
            ("exit_code", "137"),
            ("signal", "SIGKILL"),
        ],
    )
}

/// A child is OOM-killed; the main shell carries on (a notice appears while the task still
/// runs) and later exits 0: not an OOM exit.
pub(crate) fn oom_child_survives(agent: &mut Agent) -> Result<()> {
    let script = format!(
        "{GATE}{HOG}\necho \"rc=$?\" > /alloc/rc\n\
         while [ ! -e /alloc/go2 ]; do sleep 0.1; done\nexit 0"
    );
    let job = suite::batch("oom-child-ok").shell(&script).memory_mb(32);
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let cgroup = memory_cgroup(pid)?;
    go(agent, &alloc, "go")?;
    let notice = wait_notice(agent.api(), &alloc, "child_oom_killed")?;
    println!("notice: {notice}");
    let a = agent.api().alloc(&alloc)?;
    ensure!(
        a.client_status == "running",
        "the task should still run after its child's OOM kill:\n{}",
        a.describe()
    );
    let rc = suite::wait_file(&alloc_file(agent, &alloc, "rc"), TIMEOUT)?;
    ensure!(
        rc == "rc=137",
        "the shell saw its perl child end with {rc}, expected rc=137"
    );
    let victim = detail_u64(&notice, "victim_pid")?;
    let rss = detail_u64(&notice, "victim_rss_kb")?;
    ensure!(
        victim != u64::try_from(pid)?,
        "the notice names the main process"
    );
    expect_message(
        &notice,
        &format!(
            "Child process pid {victim} (perl, {} MiB RSS) was OOM-killed (memory limit of cgroup \
             {cgroup}); the main process was not the victim",
            rss / 1024
        ),
    )?;
    expect_details(
        &notice,
        &[
            ("victim_comm", "perl"),
            ("oom_scope", "cgroup"),
            ("oom_cgroup", &cgroup),
        ],
    )?;
    go(agent, &alloc, "go2")?;
    let (_a, term, ev) = ended(agent, &alloc, &["complete"])?;
    expect_exit_result(&term, 0, 0, false)?;
    expect_message(&ev, "Exited normally (code 0)")?;
    expect_details(&ev, &[("reason", "exited"), ("exit_code", "0")])
}

/// The main shell exits with its OOM-killed child's status (`exit $?` → 137): an OOM exit whose
/// victim was a child.
pub(crate) fn oom_child_causes_exit(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("oom-child-exit")
        .shell(&format!("{GATE}{HOG}\nexit $?"))
        .memory_mb(32);
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let cgroup = memory_cgroup(pid)?;
    go(agent, &alloc, "go")?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 137, 0, true)?;
    let victim = detail_u64(&ev, "victim_pid")?;
    let rss = detail_u64(&ev, "victim_rss_kb")?;
    ensure!(victim != u64::try_from(pid)?, "the main process is named");
    expect_message(
        &ev,
        &format!(
            "OOM-killed: memory limit of cgroup {cgroup}; victim pid {victim} (perl, {} RSS) was \
             a child process, and the main process then exited with code 137",
            size_text(rss)
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "oom_killed"),
            ("oom_scope", "cgroup"),
            ("victim_comm", "perl"),
            ("victim_is_main", "false"),
            ("exit_code", "137"),
        ],
    )
}

/// A start refusal whose text names `needles` (case-insensitive), and no `Started` event.
fn refused(agent: &Agent, hcl: &str, first: &str, needles: &[&str]) -> Result<TaskEvent> {
    let (alloc, ev) = expect_refusal(agent, hcl, first)?;
    println!("refusal: {ev}");
    let text = ev.all_text().to_lowercase();
    let missing: Vec<&&str> = needles
        .iter()
        .filter(|n| !text.contains(&n.to_lowercase()))
        .collect();
    ensure!(
        missing.is_empty(),
        "the refusal of alloc {alloc} does not say {missing:?}: {ev}"
    );
    Ok(ev)
}

pub(crate) fn missing_binary(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("nobin").raw_config(&config_body("/no/such/binary", &[], &[]));
    refused(agent, &job.to_hcl(), "/no/such/binary", &["does not exist"])?;
    Ok(())
}

/// `/local/run.sh` exists and is executable, but its `#!` interpreter does not: execve fails
/// with ENOENT although the command is there. A clear refusal names the missing interpreter.
fn missing_interpreter(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("nointerp")
        .raw_config(&config_body("/local/run.sh", &[], &[]))
        .extra_task_hcl(
            "    template {\n      destination = \"local/run.sh\"\n      perms = \"755\"\n      \
             data = \"#!/no/such/interp\\necho hi\\n\"\n    }\n",
        );
    refused(agent, &job.to_hcl(), "/local/run.sh", &["/no/such/interp"])?;
    Ok(())
}

fn not_executable(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("noexec").raw_config(&config_body("/etc/passwd", &[], &[]));
    refused(agent, &job.to_hcl(), "/etc/passwd", &["not an executable"])?;
    Ok(())
}

fn lost_counter_zero(agent: &mut Agent) -> Result<()> {
    expect_nothing_lost(agent, PORT.get().copied())
}
