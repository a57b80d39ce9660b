//! Filesystem images on the real kernel: a squashfs root image (busybox) and a squashfs mounted
//! at a path are attached through read-only autoclear loop devices and mounted in the task's own
//! mount namespace; the task sees the image as its root (no host `/usr`), the other image at its
//! target, read-only; and once the task has exited no loop device is backed by either image.
#![allow(clippy::expect_used)] // Reason: a failed setup step must stop the test.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpfexec_driver::supervisor::{
    sandbox,
    spec::{Bind, ImageMount, Sandbox},
};

fn squash(src: &Path, image: &Path) {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(image)
        .args(["-noappend", "-quiet", "-all-root"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "mksquashfs (Debian's squashfs-tools, installed by cargo xtask setup) failed: {other:?}"
        ),
    }
}

/// Loop devices backed by a file under `dir`.
fn loops_backed_by(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("loop/backing_file"))
                        .is_ok_and(|b| b.trim().starts_with(&dir))
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn root_and_mounted_images_are_read_only_and_released() {
    if !support::have_root("root_and_mounted_images_are_read_only_and_released") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root_src = tmp.path().join("root-src");
    std::fs::create_dir_all(root_src.join("bin")).expect("mkdir");
    std::fs::create_dir_all(root_src.join("etc")).expect("mkdir");
    std::fs::copy("/bin/busybox", root_src.join("bin/busybox"))
        .expect("copying /bin/busybox (busybox-static)");
    for applet in ["sh", "cat", "ls", "touch", "grep"] {
        std::os::unix::fs::symlink("busybox", root_src.join("bin").join(applet)).expect("link");
    }
    std::fs::write(root_src.join("etc/release"), "image-root\n").expect("write");
    let tools_src = tmp.path().join("tools-src");
    std::fs::create_dir_all(&tools_src).expect("mkdir");
    std::fs::write(tools_src.join("hello"), "image-tools\n").expect("write");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    squash(&root_src, &images.join("root.sqfs"));
    squash(&tools_src, &images.join("tools.sqfs"));
    let state = tmp.path().join("state");
    let root = state.join("root");
    let local = tmp.path().join("local");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::create_dir_all(&local).expect("mkdir");
    let sb = Sandbox {
        root,
        mounts: vec![Bind {
            source: local,
            target: PathBuf::from("/local"),
            readonly: false,
            nodev: true,
        }],
        devices: Vec::new(),
        ipc_ns: true,
        netns: None,
        pivot_root: true,
        images: vec![
            ImageMount {
                source: images.join("root.sqfs"),
                target: PathBuf::from("/"),
            },
            ImageMount {
                source: images.join("tools.sqfs"),
                target: PathBuf::from("/opt/tools"),
            },
        ],
    };
    let script = "echo release=$(cat /etc/release); echo tools=$(cat /opt/tools/hello); \
                  if ls /usr >/dev/null 2>&1; then echo usr=visible; else echo usr=absent; fi; \
                  if touch /opt/tools/x 2>/dev/null; then echo tools_write=ok; else echo tools_write=refused; fi; \
                  if touch /local/x; then echo local_write=ok; else echo local_write=refused; fi; \
                  grep -c squashfs /proc/self/mountinfo | sed 's/^/squashfs_mounts=/'";
    // busybox's sh from the image, as the task would run it once the root is the image.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", script]);
    // SAFETY: the closure runs in the forked child before exec; it makes mount and loop
    // syscalls and allocates, as the supervisor's own task child does.
    unsafe {
        cmd.pre_exec(move || sandbox::enter(&sb));
    }
    let out = cmd.output().expect("running the sandboxed shell");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{out:?}");
    for want in [
        "release=image-root",
        "tools=image-tools",
        "usr=absent",
        "tools_write=refused",
        "local_write=ok",
        // The root image's two top-level directories, bound one by one, and /opt/tools.
        "squashfs_mounts=3",
    ] {
        assert!(
            stdout.lines().any(|l| l == want),
            "missing {want}:\n{stdout}"
        );
    }
    // The task's mount namespace is gone with it; autoclear detaches the loop devices.
    let mut left = loops_backed_by(&images);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        left = loops_backed_by(&images);
    }
    assert!(
        left.is_empty(),
        "loop devices still backed by the images: {left:?}"
    );
}
