//! A task's own cgroup as `/proc/<pid>/cgroup` names it (cgroups(7)): the v1 hierarchy of the
//! freezer directory (`<id>:<controllers>:<path>`) or the v2 unified one (`0::<path>`), with the
//! path inside that hierarchy. The observer compares each task process's line against it to find
//! processes that left the task's cgroup (escapes). The mount point and the mount's own root
//! (field 4 of mountinfo, proc(5)) come from `/proc/self/mountinfo`, so a hierarchy mounted
//! anywhere, or inside a cgroup namespace, maps to the paths the kernel prints.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CgroupMode, TaskCgroups};

/// cgroup v1 controller names (the super options of a v1 mount also carry generic options).
const V1_CONTROLLERS: [&str; 14] = [
    "cpuset",
    "cpu",
    "cpuacct",
    "blkio",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// Where a task's own cgroup is, in the terms of `/proc/<pid>/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupHome {
    /// v1: a controller of the hierarchy (the line whose controller list has it); `None`: v2.
    pub controller: Option<String>,
    /// Path inside the hierarchy, e.g. `/nomad/<alloc>.<task>`.
    pub path: String,
}

impl CgroupHome {
    /// The homes of a task, from one reading of this process's mountinfo: that of its own
    /// directory (v1 freezer, v2 scope), if it exists now and lies on a cgroup mount; and on
    /// cgroup v1 those of its other limit-bearing directories (cpu, memory), since a process
    /// that leaves only one of them escapes those limits too.
    pub fn of_task(cg: &TaskCgroups) -> (Option<Self>, Vec<Self>) {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return (None, Vec::new());
        };
        let home = |d: &Path| {
            d.is_dir()
                .then(|| Self::from_mountinfo(d, cg.mode, &mountinfo))
                .flatten()
        };
        let own = cg.own_dir().and_then(home);
        let others = match cg.mode {
            CgroupMode::V1 => cg
                .dirs
                .iter()
                .skip(1)
                .take(2)
                .filter_map(|d| home(d))
                .collect(),
            CgroupMode::V2 => Vec::new(),
        };
        (own, others)
    }

    /// The home of cgroup directory `dir` given the text of a mountinfo file: the cgroup (v1) or
    /// cgroup2 (v2) mount with the longest mount point that contains `dir`.
    #[must_use]
    pub fn from_mountinfo(dir: &Path, mode: CgroupMode, mountinfo: &str) -> Option<Self> {
        let want = match mode {
            CgroupMode::V1 => "cgroup",
            CgroupMode::V2 => "cgroup2",
        };
        let mut best: Option<(usize, Self)> = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut fields = left.split_whitespace();
            let (Some(root), Some(mount_point)) = (fields.nth(3), fields.next()) else {
                continue;
            };
            let mut right = right.split_whitespace();
            if right.next() != Some(want) {
                continue;
            }
            let Ok(rest) = dir.strip_prefix(mount_point) else {
                continue;
            };
            let controller = match mode {
                CgroupMode::V2 => None,
                CgroupMode::V1 => {
                    let options = right.nth(1).unwrap_or_default();
                    let Some(found) = options.split(',').find(|o| V1_CONTROLLERS.contains(o))
                    else {
                        continue;
                    };
                    Some(found.to_owned())
                }
            };
            let path = join(root, &rest.to_string_lossy());
            if best
                .as_ref()
                .is_none_or(|(len, _)| mount_point.len() > *len)
            {
                best = Some((mount_point.len(), Self { controller, path }));
            }
        }
        best.map(|(_, home)| home)
    }

    /// The path of a process in this home's hierarchy, from the text of its `/proc/<pid>/cgroup`.
    #[must_use]
    pub fn path_in<'a>(&self, proc_cgroup: &'a str) -> Option<&'a str> {
        proc_cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = match &self.controller {
                Some(c) => controllers.split(',').any(|x| x == c),
                None => id == "0" && controllers.is_empty(),
            };
            matches.then_some(path)
        })
    }

    /// True when `path` (in this hierarchy) is the home or a cgroup below it: a task may nest
    /// cgroups inside its own, and their limits still apply.
    #[must_use]
    pub fn contains(&self, path: &str) -> bool {
        let home = self.path.trim_end_matches('/');
        path == self.path
            || home.is_empty()
            || path
                .strip_prefix(home)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// Human-readable hierarchy name for messages: the v1 controller or `unified`.
    #[must_use]
    pub fn hierarchy(&self) -> &str {
        self.controller.as_deref().unwrap_or("unified")
    }
}

/// `root` (the mount's root inside its hierarchy) joined with the rest below the mount point.
fn join(root: &str, rest: &str) -> String {
    let root = root.trim_end_matches('/');
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        if root.is_empty() {
            "/".to_owned()
        } else {
            root.to_owned()
        }
    } else {
        format!("{root}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's layout: v1 controllers plus cgroup2 at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:12 - cgroup cgroup rw,freezer
29 25 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
";

    const PROC_CGROUP: &str = "\
12:freezer:/nomad/a1.web
4:cpu,cpuacct:/nomad/a1.web
3:memory:/nomad/a1.web
0::/
";

    #[test]
    fn v1_home_is_the_freezer_hierarchy() {
        let home = CgroupHome::from_mountinfo(
            Path::new("/sys/fs/cgroup/freezer/nomad/a1.web"),
            CgroupMode::V1,
            HYBRID,
        )
        .expect("home");
        assert_eq!(home.controller.as_deref(), Some("freezer"));
        assert_eq!(home.path, "/nomad/a1.web");
        assert_eq!(home.path_in(PROC_CGROUP), Some("/nomad/a1.web"));
        let moved = PROC_CGROUP.replace("freezer:/nomad/a1.web", "freezer:/elsewhere");
        assert_eq!(home.path_in(&moved), Some("/elsewhere"));
        assert_eq!(home.hierarchy(), "freezer");
    }

    #[test]
    fn v2_home_uses_the_unified_line_and_mount_root() {
        let v2 = "40 1 0:30 /sub /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let home = CgroupHome::from_mountinfo(
            Path::new("/sys/fs/cgroup/nomad.slice/a1.web.scope"),
            CgroupMode::V2,
            v2,
        )
        .expect("home");
        assert_eq!(home.controller, None);
        assert_eq!(home.path, "/sub/nomad.slice/a1.web.scope");
        assert_eq!(
            home.path_in("1:name=systemd:/x\n0::/sub/nomad.slice/a1.web.scope\n"),
            Some("/sub/nomad.slice/a1.web.scope")
        );
        assert_eq!(home.hierarchy(), "unified");
        // The hybrid machine's cgroup2 mount is found for a directory below it, too.
        let home = CgroupHome::from_mountinfo(
            Path::new("/sys/fs/cgroup/unified/x"),
            CgroupMode::V2,
            HYBRID,
        )
        .expect("home");
        assert_eq!(home.path, "/x");
    }

    #[test]
    fn no_home_outside_cgroup_mounts() {
        assert!(
            CgroupHome::from_mountinfo(Path::new("/tmp/freezer/x"), CgroupMode::V1, HYBRID)
                .is_none()
        );
        // A v1 directory is not looked up on the cgroup2 mount.
        assert!(
            CgroupHome::from_mountinfo(
                Path::new("/sys/fs/cgroup/unified/x"),
                CgroupMode::V1,
                HYBRID
            )
            .is_none()
        );
    }

    #[test]
    fn nested_cgroups_stay_home() {
        let home = CgroupHome {
            controller: Some("freezer".into()),
            path: "/nomad/a1.web".into(),
        };
        assert!(home.contains("/nomad/a1.web"));
        assert!(home.contains("/nomad/a1.web/worker"));
        assert!(!home.contains("/nomad/a1.webx"));
        assert!(!home.contains("/"));
        assert!(!home.contains("/bpfexec-e2e-escape-1"));
        assert_eq!(home.path_in("0::/\n"), None, "no freezer line");
    }
}
