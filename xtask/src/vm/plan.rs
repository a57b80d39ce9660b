//! What each `vm-test` guest runs: the steps (a host-built test binary, its arguments and
//! environment) and the POSIX shell script that runs them inside the guest, recording
//! `<step> <exit code> <seconds>` per step in the shared results directory. The binaries are
//! staged first: the host's root reaches the guest over 9p without a page cache, where every
//! exec of a 100 MiB binary (Nomad for each `logmon`, the driver for each plugin start) reads it
//! again at a few MB/s; copies in the guest's RAM-backed /tmp cost that once.

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

/// The end-to-end subset on cgroup v2: one test binary (`tests/tests/v2_guest.rs`) running checks
/// of several suites against one Nomad agent (placement, limits, OOM, stop through
/// `cgroup.kill`, escapes and a leak, alloc exec, exit reasons, TaskStats, issue 11's v2 limits,
/// PSI metrics); an agent start costs tens of seconds under emulation.
const E2E_SUBSET: &str = "v2_guest";

/// Where the guest's script copies the binaries (RAM-backed in the guest).
const GUEST_BIN: &str = "/tmp/vm-bin";

/// How much slower than the host the suite's waits may be in a guest (software emulation is
/// 13-17 times slower for CPU-bound work; Nomad's start-up over 9p more).
const GUEST_TIME_SCALE: &str = "15";

/// `--full`: every check of these binaries (one agent each).
const E2E_FULL: [&str; 11] = [
    "v2_guest",
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
    /// Host path; the step runs the guest's copy ([`guest_path`]).
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A binary the guest copies into [`GUEST_BIN`] before the steps.
pub struct Staged {
    /// Where it is built on the host.
    pub host: PathBuf,
    /// Whether the host stages a copy without debug information first (Rust debug builds are
    /// mostly DWARF: the driver is 160 MiB with it, 35 MiB without).
    pub strip: bool,
}

/// One guest boot.
pub struct Guest {
    pub name: &'static str,
    /// Kernel command line added by vng.
    pub append: &'static str,
    /// Shell run before the steps (as root, in the guest), in order.
    prelude: &'static [&'static str],
    pub timeout: Duration,
    pub steps: Vec<Step>,
    /// Every binary the steps run or name in their environment.
    pub stage: Vec<Staged>,
}

/// The guest's copy of a staged host binary.
pub fn guest_path(host: &Path) -> String {
    let name = host
        .file_name()
        .map_or_else(|| "unnamed".into(), |n| n.to_string_lossy());
    format!("{GUEST_BIN}/{name}")
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

/// Loads the loop driver (a module in Debian's kernels; `compat_limits`'s IO limits need a loop
/// device).
const LOOP_MODULE: &str = "modprobe loop || echo \"modprobe loop failed\" >> \"$out/guest-info\"\n";

impl Guest {
    /// Debian's 6.12 with cgroup v1 off: the privileged tests and the e2e subset (or `full`).
    pub fn cgroup_v2(bins: &Binaries, env: &ToolEnv, full: bool) -> Result<Self> {
        let mut steps = if full {
            privileged(bins, &PRIVILEGED_ALL)?
        } else {
            privileged(bins, &PRIVILEGED_V2)?
        };
        let e2e: Vec<&str> = if full {
            E2E_FULL.to_vec()
        } else {
            vec![E2E_SUBSET]
        };
        for binary in e2e {
            steps.push(Step {
                name: format!("e2e-{binary}"),
                program: bins.get(binary)?.to_path_buf(),
                args: vec!["--test-threads=1".into(), "--nocapture".into()],
                env: e2e_env(env),
            });
        }
        Ok(Self {
            name: "cgroup-v2-6.12",
            append: "cgroup_no_v1=all",
            prelude: &[SAVE_FORMATS, LOOP_MODULE],
            timeout: minutes(if full { 120 } else { 25 }),
            stage: staged(&steps, Some(env)),
            steps,
        })
    }

    /// Debian 12's stock 6.1: the probe tests.
    pub fn probes_on_6_1(bins: &Binaries) -> Result<Self> {
        let steps = privileged(bins, &PROBES)?;
        Ok(Self {
            name: "probes-6.1",
            append: "cgroup_no_v1=all",
            prelude: &[SAVE_FORMATS],
            timeout: minutes(20),
            stage: staged(&steps, None),
            steps,
        })
    }

    /// The same kernel booted cgroup-v2-only or (`v1`) with the hybrid v1 layout, running the
    /// start-time measurement (`start_latency`, exec's default `chroot_env`) for a side-by-side
    /// comparison of the driver's StartTask→exec'd time.
    pub fn start_time(bins: &Binaries, env: &ToolEnv, v1: bool) -> Result<Self> {
        let mut e2e = e2e_env(env);
        e2e.push(("BPFEXEC_E2E_ONLY".into(), "default_chroot_env".into()));
        let steps = vec![Step {
            name: "e2e-start_latency".into(),
            program: bins.get("start_latency")?.to_path_buf(),
            args: vec!["--test-threads=1".into(), "--nocapture".into()],
            env: e2e,
        }];
        Ok(Self {
            name: if v1 {
                "start-time-v1-6.1"
            } else {
                "start-time-v2-6.1"
            },
            append: if v1 { "" } else { "cgroup_no_v1=all" },
            prelude: if v1 { &[HYBRID_V1] } else { &[] },
            timeout: minutes(30),
            stage: staged(&steps, Some(env)),
            steps,
        })
    }

    /// The guest's script; results go to `out` (writable from the guest). `sources` are the
    /// host files the guest copies into [`GUEST_BIN`] (the stripped copies where there are).
    pub fn script(&self, out: &Path, sources: &[PathBuf]) -> String {
        let out = quote(&out.to_string_lossy());
        let prelude = self.prelude.concat();
        let sources: Vec<String> = sources
            .iter()
            .map(|p| quote(&p.to_string_lossy()))
            .collect();
        let sources = sources.join(" ");
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
             t0=$(date +%s)\n\
             mkdir -p {GUEST_BIN} && cp {sources} {GUEST_BIN}/ || exit 1\n\
             echo \"staged $(du -sm {GUEST_BIN} | cut -f1) MiB of binaries in \
             $(( $(date +%s) - t0 ))s\" >> \"$out/guest-info\"\n\
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
            let _ = write!(s, " {}", quote(&guest_path(&step.program)));
            for a in &step.args {
                let _ = write!(s, " {}", quote(a));
            }
            s.push('\n');
        }
        s
    }
}

/// The e2e suite's environment in a guest: the tool paths (Nomad and the driver staged), its
/// waits scaled for emulation, and `BPFEXEC_VM_GUEST=1` (for `v2_guest`).
fn e2e_env(env: &ToolEnv) -> Vec<(String, String)> {
    env.vars()
        .into_iter()
        .map(|(k, v)| match k {
            "NOMAD_BIN" => (k.to_owned(), guest_path(&env.nomad_bin)),
            "DRIVER_BIN" => (k.to_owned(), guest_path(&env.driver_bin)),
            _ => (k.to_owned(), v),
        })
        .chain([
            (TIME_SCALE_ENV.to_owned(), GUEST_TIME_SCALE.to_owned()),
            ("BPFEXEC_VM_GUEST".to_owned(), "1".to_owned()),
        ])
        .collect()
}

/// The steps' programs, and with `e2e` Nomad (as built: a Go binary) and the driver.
fn staged(steps: &[Step], e2e: Option<&ToolEnv>) -> Vec<Staged> {
    let mut stage: Vec<Staged> = steps
        .iter()
        .map(|s| Staged {
            host: s.program.clone(),
            strip: true,
        })
        .collect();
    if let Some(env) = e2e {
        stage.push(Staged {
            host: env.driver_bin.clone(),
            strip: true,
        });
        stage.push(Staged {
            host: env.nomad_bin.clone(),
            strip: false,
        });
    }
    stage
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
