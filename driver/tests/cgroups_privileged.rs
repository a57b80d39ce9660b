//! Privileged: the cgroup layer on the real kernel, for both versions this machine mounts. Each
//! test creates its own throwaway cgroup (and removes it), puts a real process in it the way the
//! supervisor does (writing "0" to `cgroup.procs` between fork and exec), reads it back and kills
//! everything in it (`cgroup.kill` on v2, freeze + SIGKILL + thaw on v1).

#![allow(clippy::expect_used)] // Reason: test helpers outside #[test] fns; a failed setup step must stop the test.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bpfexec_driver::cgroups::{CgroupMode, TaskCgroups, detect_mode, kill_all};

fn preconditions() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI=true but not root: the cgroup tests must run as root"
    );
    println!("SKIP: needs root");
    false
}

/// The cgroup2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if !post.starts_with("cgroup2 ") {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

struct OwnCgroup(PathBuf);

impl OwnCgroup {
    fn create(parent: &Path, tag: &str) -> Self {
        let dir = parent.join(format!("bpfexec-test-{}-{tag}", std::process::id()));
        fs::create_dir(&dir).expect("create our own test cgroup");
        Self(dir)
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spawn_in(procs: PathBuf) -> Child {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "sleep 30 & sleep 30"]);
    // SAFETY: the closure only writes a file between fork and exec of a test child.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, "0"));
    }
    cmd.spawn().expect("spawn into the cgroup")
}

fn wait_members(cg: &TaskCgroups, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cg.pids();
        if pids.len() >= n || Instant::now() > deadline {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_place_and_kill(cg: &TaskCgroups) {
    let procs = cg.join_files();
    assert!(!procs.is_empty(), "the test cgroup must exist");
    let mut child = spawn_in(procs[0].clone());
    let members = wait_members(cg, 2);
    assert!(
        members.contains(&child.id()),
        "pid {} not in {members:?}",
        child.id()
    );
    assert!(
        members.len() >= 2,
        "the shell's background sleep must be in the cgroup too: {members:?}"
    );
    let killed = kill_all(cg).expect("kill_all");
    assert!(killed >= 2, "killed {killed}");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the child must die of SIGKILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cg.pids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(cg.pids().is_empty(), "processes left: {:?}", cg.pids());
}

#[test]
fn v2_placement_and_cgroup_kill_on_the_real_kernel() {
    if !preconditions() {
        return;
    }
    let mount = cgroup2_mount().expect("a cgroup2 hierarchy is mounted on every supported kernel");
    assert_eq!(detect_mode(&mount).expect("mode"), CgroupMode::V2);
    let own = OwnCgroup::create(&mount, "v2-kill");
    let cg = TaskCgroups {
        mode: CgroupMode::V2,
        dirs: vec![own.0.clone()],
        owned: Vec::new(),
    };
    check_place_and_kill(&cg);
}

#[test]
fn v1_placement_and_freezer_kill_on_the_real_kernel() {
    if !preconditions() {
        return;
    }
    let freezer = Path::new("/sys/fs/cgroup/freezer");
    if !freezer.is_dir() {
        // A unified-only host has no v1 hierarchy; the v2 test covers it.
        println!("SKIP: no cgroup v1 freezer hierarchy on this host");
        return;
    }
    let own = OwnCgroup::create(freezer, "v1-kill");
    // Only the freezer directory is ours; the other slots point at directories that do not exist.
    let cg = TaskCgroups {
        mode: CgroupMode::V1,
        dirs: vec![
            own.0.clone(),
            "/nonexistent/cpu".into(),
            "/nonexistent/memory".into(),
        ],
        owned: Vec::new(),
    };
    check_place_and_kill(&cg);
}

/// The device rules every device test applies: the standard nodes plus /dev/kmsg read-only (an
/// assigned device with permissions "r", not one of the standard nodes).
fn test_device_rules() -> Vec<bpfexec_driver::cgroups::devices::DeviceRule> {
    use bpfexec_driver::cgroups::devices::{self, DeviceRule};
    let mut rules = devices::standard_rules(&bpfexec_driver::supervisor::sandbox::DEV_NODES);
    rules.push(DeviceRule::for_node(Path::new("/dev/kmsg"), "r").expect("rule for /dev/kmsg"));
    rules
}

/// Runs a shell that joins the cgroup through `join` (writing "0") and checks, as root: the
/// standard nodes work, a device outside the rules (/dev/console, 5:1, on every kernel) is refused
/// even to open, and /dev/kmsg can be read but not
/// written. (If the write were allowed, the test would leave one line "bpfexec-test" in the
/// kernel log.)
fn check_device_rules(join: PathBuf) {
    let script = r#"
head -c 1 /dev/zero > /dev/null && echo zero=ok
msg=$( (: < /dev/console) 2>&1 )
case "$msg" in *"not permitted"*) echo console=denied ;; *) echo "console=other $msg" ;; esac
dd if=/dev/kmsg of=/dev/null bs=8192 count=1 2>/dev/null && echo kmsg_read=ok
msg=$( (echo bpfexec-test > /dev/kmsg) 2>&1 )
case "$msg" in *"not permitted"*) echo kmsg_write=denied ;; *) echo "kmsg_write=other $msg" ;; esac
"#;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    // SAFETY: runs in the forked child before exec; one open and one write.
    unsafe {
        cmd.pre_exec(move || fs::write(&join, "0"));
    }
    let out = cmd.output().expect("running the shell");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    for want in [
        "zero=ok",
        "console=denied",
        "kmsg_read=ok",
        "kmsg_write=denied",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim() == want),
            "{want} not in {stdout}"
        );
    }
}

/// v1 devices cgroup: its missing parent is created (and removed again with the task's
/// directory), and the rules hold on the real kernel. Not applicable on a cgroup-v2-only host
/// (no v1 hierarchies; the device program test covers it there).
#[test]
fn v1_devices_cgroup_restricts_devices_on_the_real_kernel() {
    use bpfexec_driver::cgroups::created::Ledger;
    use bpfexec_driver::cgroups::devices;
    if !preconditions() {
        return;
    }
    if detect_mode(Path::new("/sys/fs/cgroup")).ok() == Some(CgroupMode::V2) {
        println!("not applicable: this host runs cgroup v2 only (no v1 devices hierarchy)");
        return;
    }
    let hierarchy = Path::new("/sys/fs/cgroup/devices");
    assert!(
        devices::available(Path::new("/sys/fs/cgroup")),
        "this cgroup v1 host has no devices hierarchy at {}: the driver refuses isolated tasks \
         there (unless allow_unrestricted_devices), and this test cannot run",
        hierarchy.display()
    );
    // A parent of the test's own that does not exist yet, as `nomad` on a fresh host.
    let parent = hierarchy.join(format!("bpfexec-test-devices-{}", std::process::id()));
    let dir = parent.join("a1.task");
    let ledger_dir = tempfile::tempdir().expect("ledger dir");
    let ledger = Ledger::at(ledger_dir.path());
    devices::create(&dir, &test_device_rules(), &ledger)
        .expect("creating the devices cgroup and its parent");
    check_device_rules(dir.join("tasks"));
    devices::remove(&dir, &ledger).expect("removing the devices cgroup");
    assert!(!dir.exists(), "the test's devices cgroup was not removed");
    assert!(
        !parent.exists(),
        "the parent the driver created was not removed"
    );
}

/// cgroup v2 device program: attached to a cgroup of the test's own on the cgroup2 hierarchy
/// (the unified mount of a hybrid host, or the root of a v2-only one), the same rules hold for a
/// process in that cgroup.
#[test]
fn v2_device_program_restricts_devices_on_the_real_kernel() {
    use bpfexec_driver::cgroups::device_program;
    if !preconditions() {
        return;
    }
    let mount = cgroup2_mount().expect("a cgroup2 hierarchy is mounted on every supported kernel");
    let own = OwnCgroup::create(&mount, "v2-devices");
    device_program::attach(&own.0, &test_device_rules()).expect("attaching the device program");
    check_device_rules(own.0.join("cgroup.procs"));
}
