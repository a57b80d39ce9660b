//! Ctrl-C for the long-running commands (`demo`, `bench`): the work runs in a child xtask in its
//! own process group, so the terminal's SIGINT (sent to the whole foreground group) reaches only
//! this parent, which forwards it as SIGTERM. The child, and the Nomad agent it started, never
//! see the terminal's SIGINT: the child stops its jobs and the agent in order instead of the
//! agent shutting itself down behind its back (POSIX job control; `std::process::Command`
//! clears the blocked-signal mask in every child it spawns, so the agent handles signals
//! normally).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

/// Hidden flag that marks the child (the process doing the work).
pub const INNER_FLAG: &str = "--inner";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNALS_SEEN: AtomicU32 = AtomicU32::new(0);

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Parent side: runs `xtask <args> --inner` (with `env` added) in a new process group, forwards
/// SIGINT/SIGTERM/SIGHUP to it as SIGTERM, and fails if it fails.
pub fn run_detached(args: &[String], env: &[(&str, String)]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let set = termination_signals();
    // Blocked here (before any thread exists) so the forwarding thread can sigwait for them.
    set.thread_block()
        .context("cannot block the termination signals")?;
    let mut child = Command::new(&exe)
        .args(args)
        .arg(INNER_FLAG)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            eprintln!(
                "\nxtask: got {sig}: stopping the jobs and the agent (this takes a few seconds)"
            );
            let _ = kill(pid, Signal::SIGTERM);
        }
    });
    let status = child.wait().context("waiting for the xtask child")?;
    if !status.success() {
        let what = args.first().map_or("xtask", String::as_str);
        bail!("`{what}` failed ({status}); see its output above");
    }
    Ok(())
}

/// Child side: blocks the termination signals and notes their arrival in a flag that the long
/// loops poll (see [`interrupted`]). Call first thing, before any other thread starts.
pub fn install() -> Result<()> {
    let set = termination_signals();
    set.thread_block()
        .context("cannot block the termination signals")?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            let seen = SIGNALS_SEEN.fetch_add(1, Ordering::SeqCst);
            INTERRUPTED.store(true, Ordering::SeqCst);
            if seen > 0 {
                eprintln!("xtask: got {sig} again: still cleaning up, please wait");
            }
        }
    });
    Ok(())
}

/// Whether a termination signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with a clear error once interrupted (used between steps).
pub fn check() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps up to `d`, returning early (with `true`) when interrupted.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if interrupted() {
            return true;
        }
        std::thread::sleep(
            Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())),
        );
    }
    interrupted()
}
