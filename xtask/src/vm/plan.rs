//! What each `vm-test` guest runs: the steps (a host-built test binary, its arguments and
//! environment) and the POSIX shell script that runs them inside the guest, recording
//! `<step> <exit code> <seconds>` per step in the shared results directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::{Binaries, minutes};
use crate::env::ToolEnv;
use crate::util::quote;
use bpfexec_e2e::wait::TIME_SCALE_ENV;

/// The privileged driver tests (`driver/tests/*_privileged.rs`) on the cgroup-v2 guest: the
/// cgroup layer (placement, `cgroup.kill`, the device program), the sandbox, and the observer's
/// OOM attribution on a v2 memory cgroup. The probe-only tests run on the 6.1 guest (`--full`
/// runs them here too).
const PRIVILEGED_V2: [&str; 3] = [
    "cgroups_privileged",
    "sandbox_privileged",
    "observer_privileged",
];

/// Every privileged test binary.
const PRIVILEGED_ALL: [&str; 5] = [
    "cgroups_privileged",
    "sandbox_privileged",
    "probes_privileged",
    "observer_privileged",
    "observer_tree_privileged",
];

/// Processes of the observer's exec/fork storm test in a guest (2000 on the host).
const GUEST_STORM: &str = "60";

/// The probe tests run on other kernels.
const PROBES: [&str; 3] = [
    "probes_privileged",
    "observer_privileged",
    "observer_tree_privileged",
];

/// The end-to-end subset on cgroup v2 (test binary, checks), one Nomad agent per binary:
/// placement into the scope with memory/cpu limits and device rules, OOM of the main process and
/// of a child (with their exit reasons), an escape and a leak at stop (stop through
/// `cgroup.kill`, nothing left behind), alloc exec and TaskStats. Each binary costs a Nomad
/// agent start (minutes under emulation), so the other exit reasons run only with `--full`.
const E2E_SUBSET: [(&str, &str); 4] = [
    (
        "task_options",
        "cgroup_and_limits,oom_killed,oom_killed_child",
    ),
    ("escapes", "escape_while_running,leak_at_stop"),
    ("exec_tty", "exec_no_tty"),
    ("process_tree", "task_stats_per_pid"),
];

/// How much slower than the host the suite's waits may be in a guest (software emulation is
/// 13-17 times slower for CPU-bound work; Nomad's start-up over 9p more).
const GUEST_TIME_SCALE: &str = "15";

/// `--full`: every check of these binaries.
const E2E_FULL: [&str; 10] = [
    "basics",
    "task_options",
    "escapes",
    "lifecycle",
    "exec_tty",
    "exit_reasons",
    "oom_reasons",
    "process_tree",
    "isolation",
    "raw_mode",
];

pub struct Step {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// One guest boot.
pub struct Guest {
    pub name: &'static str,
    /// Kernel command line added by vng.
    pub append: &'static str,
    /// Shell run before the steps (as root, in the guest).
    prelude: &'static str,
    pub timeout: Duration,
    pub steps: Vec<Step>,
}

/// Replaces the guest's cgroup2 mount at /sys/fs/cgroup by the hybrid layout of this project's
/// hosts: v1 hierarchies per controller and cgroup2 at `unified`. (The guest's own mounts: the
/// host's are never touched.) The controllers are still unused at this point, so v1 can take
/// them.
const HYBRID_V1: &str = "\
umount /sys/fs/cgroup
mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
for c in cpu cpuacct cpuset memory devices freezer pids blkio; do
  mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c || exit 1
done
mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
";

/// Saves the tracefs `format` files of the probes' tracepoints next to the results: the offsets
/// the probes use come from them, and they differ between kernels.
const SAVE_FORMATS: &str = "\
for tp in sched/sched_process_exec sched/sched_process_exit task/task_newtask \
  signal/signal_generate oom/mark_victim; do
  for t in /sys/kernel/tracing /sys/kernel/debug/tracing; do
    if [ -r \"$t/events/$tp/format\" ]; then cat \"$t/events/$tp/format\"; break; fi
  done
done > \"$out/tracepoint-formats\" 2>&1
";

impl Guest {
    /// Debian's 6.12 with cgroup v1 off: the privileged tests and the e2e subset (or `full`).
    pub fn cgroup_v2(bins: &Binaries, env: &ToolEnv, full: bool) -> Result<Self> {
        let mut steps = if full {
            privileged(bins, &PRIVILEGED_ALL)?
        } else {
            privileged(bins, &PRIVILEGED_V2)?
        };
        let e2e_env = e2e_env(env);
        let e2e: Vec<(&str, Option<&str>)> = if full {
            E2E_FULL.iter().map(|b| (*b, None)).collect()
        } else {
            E2E_SUBSET.iter().map(|(b, c)| (*b, Some(*c))).collect()
        };
        for (binary, checks) in e2e {
            let mut env = e2e_env.clone();
            if let Some(checks) = checks {
                env.push(("BPFEXEC_E2E_ONLY".into(), checks.into()));
            }
            steps.push(Step {
                name: format!("e2e-{binary}"),
                program: bins.get(binary)?.to_path_buf(),
                args: vec!["--test-threads=1".into(), "--nocapture".into()],
                env,
            });
        }
        Ok(Self {
            name: "cgroup-v2-6.12",
            append: "cgroup_no_v1=all",
            prelude: SAVE_FORMATS,
            timeout: minutes(if full { 120 } else { 45 }),
            steps,
        })
    }

    /// Debian 12's stock 6.1: the probe tests.
    pub fn probes_on_6_1(bins: &Binaries) -> Result<Self> {
        Ok(Self {
            name: "probes-6.1",
            append: "cgroup_no_v1=all",
            prelude: SAVE_FORMATS,
            timeout: minutes(20),
            steps: privileged(bins, &PROBES)?,
        })
    }

    /// The same kernel booted cgroup-v2-only or (`v1`) with the hybrid v1 layout, running the
    /// start-time measurement (`start_latency`, exec's default `chroot_env`) for a side-by-side
    /// comparison of the driver's StartTask→exec'd time.
    pub fn start_time(bins: &Binaries, env: &ToolEnv, v1: bool) -> Result<Self> {
        let mut env = e2e_env(env);
        env.push(("BPFEXEC_E2E_ONLY".into(), "default_chroot_env".into()));
        Ok(Self {
            name: if v1 {
                "start-time-v1-6.12"
            } else {
                "start-time-v2-6.12"
            },
            append: if v1 { "" } else { "cgroup_no_v1=all" },
            prelude: if v1 { HYBRID_V1 } else { "" },
            timeout: minutes(30),
            steps: vec![Step {
                name: "e2e-start_latency".into(),
                program: bins.get("start_latency")?.to_path_buf(),
                args: vec!["--test-threads=1".into(), "--nocapture".into()],
                env,
            }],
        })
    }

    /// The guest's script; results go to `out` (writable from the guest).
    pub fn script(&self, out: &Path) -> String {
        let out = quote(&out.to_string_lossy());
        let prelude = self.prelude;
        let mut s = format!(
            "#!/bin/sh\n\
             # Generated by `cargo xtask vm-test`; runs as root inside the guest.\n\
             out={out}\n\
             export CI=true HOME=/tmp/vm-home TMPDIR=/tmp RUST_BACKTRACE=1\n\
             export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             mkdir -p \"$HOME\"\n\
             cd /tmp\n\
             {prelude}\n\
             echo \"kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup) with \
             controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null), $(nproc) cpus\" \
             > \"$out/guest-info\"\n\
             cat \"$out/guest-info\"\n\
             step() {{\n\
             \x20 name=$1; shift\n\
             \x20 echo \"step $name: start\"\n\
             \x20 t0=$(date +%s)\n\
             \x20 \"$@\" > \"$out/$name.log\" 2>&1\n\
             \x20 rc=$?\n\
             \x20 t=$(( $(date +%s) - t0 ))\n\
             \x20 echo \"$name $rc $t\" >> \"$out/results\"\n\
             \x20 echo \"step $name: exit $rc after ${{t}}s\"\n\
             }}\n"
        );
        for step in &self.steps {
            let _ = write!(s, "step {} env", quote(&step.name));
            for (k, v) in &step.env {
                let _ = write!(s, " {}", quote(&format!("{k}={v}")));
            }
            let _ = write!(s, " {}", quote(&step.program.to_string_lossy()));
            for a in &step.args {
                let _ = write!(s, " {}", quote(a));
            }
            s.push('\n');
        }
        s
    }
}

/// The e2e suite's environment in a guest: the tool paths, and its waits scaled for emulation.
fn e2e_env(env: &ToolEnv) -> Vec<(String, String)> {
    env.vars()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain([(TIME_SCALE_ENV.to_owned(), GUEST_TIME_SCALE.to_owned())])
        .collect()
}

fn privileged(bins: &Binaries, names: &[&str]) -> Result<Vec<Step>> {
    names
        .iter()
        .map(|n| {
            Ok(Step {
                name: (*n).to_owned(),
                program: bins.get(n)?.to_path_buf(),
                args: vec!["--test-threads=1".into()],
                // A few forks per second under emulation: a smaller exec/fork storm.
                env: vec![("BPFEXEC_TEST_STORM".into(), GUEST_STORM.into())],
            })
        })
        .collect()
}
