//! The task sandbox on the real kernel: device nodes Nomad assigned to the task are usable at
//! their `/dev/...` paths (bound after the task's /dev is assembled, which would hide them
//! otherwise), and a device node a root task makes in its writable directories cannot be opened
//! (they are mounted nodev), although the task holds CAP_MKNOD.
#![allow(clippy::expect_used)] // Reason: a failed setup step must stop the test.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpfexec_driver::supervisor::{
    sandbox,
    spec::{Bind, Sandbox},
};

fn bind(source: &Path, target: &str, readonly: bool, nodev: bool) -> Bind {
    Bind {
        source: source.to_path_buf(),
        target: PathBuf::from(target),
        readonly,
        nodev,
    }
}

/// What the task runs: one line per check, `name=result`.
const SCRIPT: &str = r"
if [ -c /dev/accel0 ]; then echo accel_is_char=yes; else echo accel_is_char=no; fi
echo accel_read_bytes=$(head -c 3 /dev/accel0 | wc -c)
if echo x > /dev/sink0; then echo sink_write=ok; else echo sink_write=refused; fi
if mknod /local/mem c 1 5 2>/dev/null; then
  if head -c 1 /local/mem > /dev/null 2>&1; then echo mknod_open=ok; else echo mknod_open=refused; fi
else
  echo mknod_open=no-mknod
fi
echo local_write=$(echo hi > /local/f && cat /local/f)
";

#[test]
fn devices_are_usable_and_writable_dirs_are_nodev() {
    if !support::have_root("devices_are_usable_and_writable_dirs_are_nodev") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&root).expect("mkdir root");
    std::fs::create_dir_all(&local).expect("mkdir local");
    let mut mounts: Vec<Bind> = ["/bin", "/lib", "/lib64", "/usr", "/etc"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .map(|p| bind(Path::new(p), p, true, false))
        .collect();
    mounts.push(bind(&local, "/local", false, true));
    let sb = Sandbox {
        root,
        mounts,
        devices: vec![
            bind(Path::new("/dev/zero"), "/dev/accel0", false, false),
            bind(Path::new("/dev/null"), "/dev/sink0", false, false),
        ],
        ipc_ns: true,
        netns: None,
        pivot_root: true,
        images: Vec::new(),
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", SCRIPT]);
    // SAFETY: the closure runs in the forked child before exec; it makes mount syscalls and
    // allocates, as the supervisor's own task child does.
    unsafe {
        cmd.pre_exec(move || sandbox::enter(&sb));
    }
    let out = cmd.output().expect("running the sandboxed shell");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{out:?}");
    for want in [
        "accel_is_char=yes",
        "accel_read_bytes=3",
        "sink_write=ok",
        "mknod_open=refused",
        "local_write=hi",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim() == want),
            "{want} not in {stdout}"
        );
    }
}
