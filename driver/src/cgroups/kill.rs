//! Killing everything left in a task's cgroup: `cgroup.kill` on v2; on v1, freeze the freezer
//! cgroup so nothing can fork, SIGKILL every member, thaw so they die.

use std::fs;
use std::io;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{CgroupMode, TaskCgroups, read_pids};

/// SIGKILLs every process in the task's own cgroup; returns how many pids were signalled
/// (on v2 the kernel does it and the count is what was there before).
pub fn kill_all(cg: &TaskCgroups) -> io::Result<usize> {
    let Some(dir) = cg.own_dir() else {
        return Ok(0);
    };
    if !dir.is_dir() {
        return Ok(0);
    }
    let before = read_pids(&dir.join("cgroup.procs"));
    match cg.mode {
        CgroupMode::V2 => {
            if before.is_empty() {
                return Ok(0);
            }
            fs::write(dir.join("cgroup.kill"), "1")?;
            Ok(before.len())
        }
        CgroupMode::V1 => kill_v1(dir),
    }
}

fn kill_v1(freezer: &Path) -> io::Result<usize> {
    let state = freezer.join("freezer.state");
    if !state.exists() {
        return Ok(kill_pids(&read_pids(&freezer.join("cgroup.procs"))));
    }
    fs::write(&state, "FROZEN")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while fs::read_to_string(&state).is_ok_and(|s| s.trim() != "FROZEN")
        && Instant::now() < deadline
    {
        sleep(Duration::from_millis(5));
    }
    let killed = kill_pids(&read_pids(&freezer.join("cgroup.procs")));
    fs::write(&state, "THAWED")?;
    Ok(killed)
}

fn kill_pids(pids: &[u32]) -> usize {
    pids.iter()
        .filter(|pid| {
            // SAFETY: kill(2) with a pid read from the task's own cgroup; no pointers.
            unsafe { libc::kill(**pid as libc::pid_t, libc::SIGKILL) == 0 }
        })
        .count()
}
