//! Issue 4 acceptance, exit reasons: for each way a task can end, what Nomad recorded of the
//! driver's `ExitResult` (`Terminated` details `exit_code`, `signal`, `oom_killed`) AND the
//! driver's own task event (type `Driver`: one-line message and annotations) — normal exit, exit
//! code, SIGUSR1 (survived: a notice) then SIGTERM from a host process named `kill-bot`, SIGKILL
//! from a task of another allocation (long- and short-lived killer), a self-signal, a real
//! segfault (with and without a core dump), a stop by the driver, and the `kill_timeout`
//! escalation of a stop. Last, the ring buffer's lost counter (`/v1/observer` and the pinned
//! `LOST` map) is still 0. OOM kills and exec failures are in `oom_reasons.rs`.

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::api::TaskEvent;
use bpfexec_e2e::isolation::shell_config;
use bpfexec_e2e::jobspec::TASK;
use bpfexec_e2e::observe::scenario::{
    GATE, SEGV, comm_of, detail_u64, ended, expect_nothing_lost, go, start_gated,
};
use bpfexec_e2e::observe::{
    KillBot, expect_details, expect_exit_result, expect_message, uid_of, wait_notice,
};
use bpfexec_e2e::suite::{self, TIMEOUT, alloc_file, wait_file};
use bpfexec_e2e::{Agent, AgentOptions, Check, procs, run_checks, unique};

/// The driver's `http_addr` port (its `/v1/observer` counters).
pub(crate) static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

#[test]
fn exit_reasons() {
    if !suite::is_bpfexec() {
        println!("SKIP: exit_reasons: bpfexec-only checks (BPFEXEC_E2E_DRIVER=raw_exec)");
        return;
    }
    let port = *PORT.get_or_init(|| bpfexec_e2e::env::free_port().unwrap_or(0));
    run_checks(
        "exit_reasons",
        AgentOptions::bpfexec().plugin_config(&format!("http_addr = \"127.0.0.1:{port}\"")),
        &[
            Check {
                name: "exit_zero",
                run: exit_zero,
            },
            Check {
                name: "exit_three",
                run: exit_three,
            },
            Check {
                name: "host_signals",
                run: host_signals,
            },
            Check {
                name: "other_alloc_sigkill",
                run: other_alloc_sigkill,
            },
            Check {
                name: "other_alloc_sigkill_short",
                run: other_alloc_sigkill_short,
            },
            Check {
                name: "self_signal",
                run: self_signal,
            },
            Check {
                name: "segfault",
                run: segfault,
            },
            Check {
                name: "core_dump",
                run: core_dump,
            },
            Check {
                name: "driver_stop",
                run: driver_stop,
            },
            Check {
                name: "kill_timeout_escalation",
                run: kill_timeout_escalation,
            },
            Check {
                name: "lost_counter_zero",
                run: lost_counter_zero,
            },
        ],
    );
}

pub(crate) fn exit_zero(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("exit0").shell("exit 0");
    let alloc = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&alloc, TIMEOUT)?;
    let (_a, term, ev) = ended(agent, &alloc, &["complete"])?;
    expect_exit_result(&term, 0, 0, false)?;
    expect_message(&ev, "Exited normally (code 0)")?;
    expect_details(&ev, &[("reason", "exited"), ("exit_code", "0")])
}

pub(crate) fn exit_three(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("exit3").shell("exit 3");
    let alloc = agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&alloc, TIMEOUT)?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 3, 0, false)?;
    expect_message(&ev, "Exited with code 3")?;
    expect_details(&ev, &[("reason", "exited"), ("exit_code", "3")])
}

/// kill-bot (a host process) sends SIGUSR1, which the task traps (a notice while it runs), then
/// SIGTERM, which kills it (the exit reason names kill-bot).
pub(crate) fn host_signals(agent: &mut Agent) -> Result<()> {
    let script = "trap 'echo usr1 >> /alloc/usr1' USR1\n\
                  echo $$ > /alloc/pid\n\
                  while :; do sleep 0.2; done";
    let job = suite::service("host-sig").shell(script);
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let bot = KillBot::new()?;
    let usr1 = bot.send("USR1", pid)?;
    let notice = wait_notice(agent.api(), &alloc, "signal_received")?;
    println!("notice: {notice}");
    expect_message(
        &notice,
        &format!(
            "Main process pid {pid} (sh) received SIGUSR1 from pid {usr1} (kill-bot, uid 0), a \
             host process and kept running"
        ),
    )?;
    expect_details(
        &notice,
        &[
            ("signal", "SIGUSR1"),
            ("target_pid", &pid.to_string()),
            ("sender_pid", &usr1.to_string()),
            ("sender_comm", "kill-bot"),
            ("sender_uid", "0"),
            ("sender_class", "host"),
        ],
    )?;
    let term_bot = bot.send("TERM", pid)?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 143, 15, false)?;
    expect_message(
        &ev,
        &format!("Killed by SIGTERM from pid {term_bot} (kill-bot, uid 0), a host process"),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGTERM"),
            ("exit_code", "143"),
            ("core_dumped", "false"),
            ("sender_pid", &term_bot.to_string()),
            ("sender_comm", "kill-bot"),
            ("sender_uid", "0"),
            ("sender_class", "host"),
        ],
    )
}

/// A task of another job (`pid_mode = "host"`) finds the victim by a marker in its command
/// line and SIGKILLs it with pkill: the exit reason names that allocation. The killer's shell
/// stays a moment after pkill.
pub(crate) fn other_alloc_sigkill(agent: &mut Agent) -> Result<()> {
    killed_by_other_alloc(agent, "/usr/bin/pkill -9 -f '{}'; sleep 1", false)
}

/// The same with a killer task that is nothing but pkill (`exec`), so it ends — and Nomad
/// destroys it — within milliseconds. The victim has a 256 MiB child, whose teardown when the
/// victim's pid namespace goes delays the victim's end by ~0.1 s: the killer is gone by the
/// time the victim's exit is classified. The exit reason must still name the killer's
/// allocation.
pub(crate) fn other_alloc_sigkill_short(agent: &mut Agent) -> Result<()> {
    killed_by_other_alloc(agent, "exec /usr/bin/pkill -9 -f '{}'", true)
}

/// `killer` is the killer task's script, `{}` standing for the pkill pattern; `heavy` gives
/// the victim a 256 MiB child.
fn killed_by_other_alloc(agent: &Agent, killer: &str, heavy: bool) -> Result<()> {
    let marker = unique("victim");
    let child = if heavy {
        "/usr/bin/perl -e '$x = \"a\" x (256 << 20); open(F, \">/alloc/big\"); print F 1; close(F); \
         sleep 1000' &\n"
    } else {
        ""
    };
    let script = format!("{child}echo $$ > /alloc/pid\nwhile :; do sleep 0.2; done\n# {marker}");
    let victim = suite::service("victim").shell(&script).memory_mb(900);
    let (_job, alloc, pid) = start_gated(agent, &victim.to_hcl())?;
    if heavy {
        wait_file(&alloc_file(agent, &alloc, "big"), TIMEOUT)?;
    }
    let uid = uid_of(pid).context("the victim's uid")?;
    // `[v]ictim…` matches the victim's command line but not the killer's own.
    let pattern = format!("[{}]{}", &marker[..1], &marker[1..]);
    let killer = suite::batch("killer").raw_config(&shell_config(
        &killer.replace("{}", &pattern),
        &["pid_mode = \"host\""],
    ));
    let k = agent
        .api()
        .run_job(&killer.to_hcl(), &["complete"], TIMEOUT)?;
    println!("killer alloc {}", k.id);
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 137, 9, false)?;
    let sender = ev.detail("sender_pid").unwrap_or("?").to_owned();
    expect_message(
        &ev,
        &format!(
            "Killed by SIGKILL from pid {sender} (pkill, uid {uid}), a process of task \
             \"{TASK}\" in allocation {}",
            k.id
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGKILL"),
            ("exit_code", "137"),
            ("sender_comm", "pkill"),
            ("sender_class", "other_allocation"),
            ("sender_alloc_id", &k.id),
            ("sender_task", TASK),
        ],
    )
}

pub(crate) fn self_signal(agent: &mut Agent) -> Result<()> {
    let job = suite::batch("self-sig").shell(&format!("{GATE}kill -USR2 $$\nexit 0"));
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let uid = uid_of(pid).context("the task's uid")?;
    go(agent, &alloc, "go")?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 140, 12, false)?;
    expect_message(
        &ev,
        &format!("Killed by SIGUSR2 raised by the process itself (pid {pid} (sh, uid {uid}))"),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGUSR2"),
            ("sender_pid", &pid.to_string()),
            ("sender_comm", "sh"),
            ("sender_class", "same_process"),
        ],
    )
}

pub(crate) fn segfault(agent: &mut Agent) -> Result<()> {
    // RLIMIT_CORE 0: a crash without a core file.
    let job = suite::batch("segv").shell(&format!("{GATE}ulimit -c 0\nexec {SEGV}"));
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    go(agent, &alloc, "go")?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    expect_exit_result(&term, 139, 11, false)?;
    expect_message(
        &ev,
        &format!(
            "Killed by SIGSEGV from the kernel (segmentation fault: address not mapped) in pid \
             {pid} (perl)"
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGSEGV"),
            ("exit_code", "139"),
            ("core_dumped", "false"),
            ("sender_class", "kernel"),
            ("sender_pid", &pid.to_string()),
            ("sender_comm", "perl"),
        ],
    )
}

/// The same crash with `ulimit -c unlimited` in a writable cwd: the kernel writes a core file
/// (`core_pattern` permitting) and the exit reason must say "core dumped".
pub(crate) fn core_dump(agent: &mut Agent) -> Result<()> {
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    println!("core_pattern: {}", pattern.trim());
    let job = suite::batch("core").shell(&format!(
        "{GATE}ulimit -c unlimited || exit 90\ncd /alloc || exit 91\nexec {SEGV}"
    ));
    let (_job, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    go(agent, &alloc, "go")?;
    let (_a, term, ev) = ended(agent, &alloc, &["failed"])?;
    let core = alloc_file(agent, &alloc, "core");
    let core_written = core.exists()
        || std::fs::read_dir(alloc_file(agent, &alloc, ""))?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("core"));
    println!("core file in /alloc: {core_written}");
    expect_exit_result(&term, 139, 11, false)?;
    ensure!(
        core_written || !pattern.trim().starts_with("core"),
        "the kernel wrote no core file in /alloc although core_pattern is {pattern:?}"
    );
    expect_message(
        &ev,
        &format!(
            "Killed by SIGSEGV from the kernel (segmentation fault: address not mapped) in pid \
             {pid} (perl); core dumped"
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGSEGV"),
            ("core_dumped", "true"),
        ],
    )
}

/// The driver's processes that may signal a task on stop: the plugin and the task's supervisor
/// (the pid-namespace init, the main process's parent), with their process names.
fn driver_processes(agent: &Agent, main: i32) -> Vec<(i32, String)> {
    let mut procs: Vec<(i32, String)> = agent
        .plugin_pids()
        .into_iter()
        .chain(procs::ppid(main))
        .map(|p| (p, comm_of(p)))
        .collect();
    procs.dedup();
    println!("driver processes: {procs:?}");
    procs
}

/// The sender of the driver's stop signal: one of `driver_procs`, named by its process name.
fn expect_driver_sender(ev: &TaskEvent, driver_procs: &[(i32, String)]) -> Result<(i32, String)> {
    let sender: i32 = detail_u64(ev, "sender_pid")?.try_into()?;
    let Some((_, comm)) = driver_procs.iter().find(|(p, _)| *p == sender) else {
        anyhow::bail!(
            "the sender pid {sender} is not a driver process (pid, not thread id, of the plugin \
             or the task's supervisor: {driver_procs:?}): {ev}"
        );
    };
    // The driver names its own processes by their program name, not the kernel's 15-byte comm.
    let _ = comm;
    Ok((sender, "nomad-driver-bpfexec".to_owned()))
}

/// `nomad job stop` of a task that dies of its `kill_signal`: the driver sent it.
pub(crate) fn driver_stop(agent: &mut Agent) -> Result<()> {
    let job = suite::service("stop")
        .shell("echo $$ > /alloc/pid\nwhile :; do sleep 0.2; done")
        .kill_signal("SIGTERM");
    let (job_id, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let driver_procs = driver_processes(agent, pid);
    agent.api().stop_job(&job_id, false)?;
    let (_a, term, ev) = ended(agent, &alloc, &["complete", "failed"])?;
    expect_exit_result(&term, 143, 15, false)?;
    let (sender, comm) = expect_driver_sender(&ev, &driver_procs)?;
    expect_message(
        &ev,
        &format!("Killed by SIGTERM from the bpfexec driver (pid {sender} ({comm}, uid 0))"),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGTERM"),
            ("exit_code", "143"),
            ("sender_class", "driver"),
            ("sender_comm", &comm),
        ],
    )?;
    ensure!(
        ev.detail("escalation_after").is_none(),
        "a plain stop is reported as an escalation: {ev}"
    );
    Ok(())
}

/// The task traps SIGTERM; `nomad job stop` sends SIGTERM, waits `kill_timeout`, then SIGKILLs:
/// the exit reason says the driver killed it after the escalation.
pub(crate) fn kill_timeout_escalation(agent: &mut Agent) -> Result<()> {
    let script = "trap 'echo term >> /alloc/term' TERM\n\
                  echo $$ > /alloc/pid\n\
                  while :; do sleep 0.2; done";
    let job = suite::service("escalate")
        .shell(script)
        .kill_signal("SIGTERM")
        .kill_timeout("2s");
    let (job_id, alloc, pid) = start_gated(agent, &job.to_hcl())?;
    let driver_procs = driver_processes(agent, pid);
    agent.api().stop_job(&job_id, false)?;
    let (_a, term, ev) = ended(agent, &alloc, &["complete", "failed"])?;
    let log = std::fs::read_to_string(alloc_file(agent, &alloc, "term")).unwrap_or_default();
    ensure!(
        log.contains("term"),
        "the task did not log the SIGTERM of the stop"
    );
    expect_exit_result(&term, 137, 9, false)?;
    let (sender, comm) = expect_driver_sender(&ev, &driver_procs)?;
    expect_message(
        &ev,
        &format!(
            "Killed by SIGKILL from the bpfexec driver (pid {sender} ({comm}, uid 0)): \
             kill_timeout escalation after SIGTERM did not stop the task"
        ),
    )?;
    expect_details(
        &ev,
        &[
            ("reason", "signaled"),
            ("signal", "SIGKILL"),
            ("exit_code", "137"),
            ("sender_class", "driver"),
            ("sender_comm", &comm),
            ("escalation_after", "SIGTERM"),
        ],
    )
}

/// After every scenario above, the probes lost no record.
pub(crate) fn lost_counter_zero(agent: &mut Agent) -> Result<()> {
    expect_nothing_lost(agent, PORT.get().copied())
}
