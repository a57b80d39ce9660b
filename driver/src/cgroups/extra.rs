//! The task options for swap, pids and IO (`config::resources`) as cgroup writes:
//! v2 `memory.swap.max`, `pids.max`, `io.weight` (or `io.bfq.weight`) and `io.max` in the task's
//! scope; v1 `memory.memsw.limit_in_bytes` (memory + swap, written after the memory limit),
//! `pids.max` in the task's pids cgroup and `blkio.weight` (or `blkio.bfq.weight`) and
//! `blkio.throttle.*_device` in its blkio cgroup (both made by the driver, `owned`). A limit the
//! kernel offers no file for fails the task with the option's name: nothing is skipped silently.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{CgroupMode, TaskCgroups};
use crate::config::resources::ExtraLimits;
use crate::config::size::Size;

/// Why a limit cannot be applied; names the task option.
#[derive(Debug, thiserror::Error)]
pub enum ExtraError {
    #[error("{option}: {problem}; {fix}")]
    Unsupported {
        option: &'static str,
        problem: String,
        fix: String,
    },
    #[error("{option}: device {path:?}: {source}")]
    Device {
        option: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{option}: writing {value:?} to {file}: {source}")]
    Write {
        option: &'static str,
        file: PathBuf,
        value: String,
        source: io::Error,
    },
}

/// One write, with the option it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub option: &'static str,
    pub file: PathBuf,
    pub value: String,
}

/// The memory hard limit the task gets from Nomad's resources (v1 swap is relative to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryHard {
    Bytes(i64),
    Unlimited,
}

/// Finds a device's whole-disk `major:minor` from a host path.
pub trait DeviceLookup {
    fn disk_of(&self, path: &str) -> io::Result<(u64, u64)>;
}

/// The host's devices: a block device node, or a file on a disk-backed filesystem; a partition
/// resolves to its disk (the kernel throttles whole disks).
pub struct HostDevices;

impl DeviceLookup for HostDevices {
    fn disk_of(&self, path: &str) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = fs::metadata(path)?;
        let dev = if meta.file_type().is_block_device() {
            meta.rdev()
        } else {
            meta.dev()
        };
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        if !sys.exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{major}:{minor} is not a block device (a file on tmpfs, overlay or another filesystem without a disk?)"
                ),
            ));
        }
        if sys.join("partition").exists() {
            let disk = fs::read_to_string(sys.join("..").join("dev"))?;
            return parse_dev(disk.trim());
        }
        Ok((major, minor))
    }
}

fn parse_dev(text: &str) -> io::Result<(u64, u64)> {
    text.split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| io::Error::other(format!("{text:?} is not major:minor")))
}

fn unsupported(option: &'static str, problem: String, fix: &str) -> ExtraError {
    ExtraError::Unsupported {
        option,
        problem,
        fix: fix.to_owned(),
    }
}

/// blkio weight (10-1000, default 500) from an io weight (1-10000, default 100), as systemd
/// converts IOWeight= for cgroup v1.
pub fn blkio_weight(io_weight: u64) -> u64 {
    (io_weight * 500 / 100).clamp(10, 1000)
}

/// BFQ's weight (1-1000, default 100) from an io weight.
fn bfq_weight(io_weight: u64) -> u64 {
    io_weight.clamp(1, 1000)
}

/// The first of `names` that exists in `dir`.
fn first_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|f| f.exists())
}

/// The driver-made v1 directory of `controller` (`<root>/<controller>/nomad/<scope>`).
pub fn owned_dir<'a>(cg: &'a TaskCgroups, controller: &str) -> Option<&'a Path> {
    cg.owned
        .iter()
        .find(|d| {
            d.parent()
                .and_then(Path::parent)
                .and_then(Path::file_name)
                .is_some_and(|n| n == controller)
        })
        .map(PathBuf::as_path)
}

fn write(option: &'static str, file: PathBuf, value: String) -> Write {
    Write {
        option,
        file,
        value,
    }
}

fn need(option: &'static str, dir: Option<&Path>, what: &str) -> Result<PathBuf, ExtraError> {
    dir.map(Path::to_path_buf).ok_or_else(|| {
        unsupported(
            option,
            format!("the task has no {what} cgroup"),
            "check that the client runs with cgroups enabled and the controller is mounted",
        )
    })
}

/// The writes for `limits`, in order; errors for limits this kernel or cgroup cannot take.
pub fn plan(
    cg: &TaskCgroups,
    limits: &ExtraLimits,
    memory: MemoryHard,
    devices: &dyn DeviceLookup,
) -> Result<Vec<Write>, ExtraError> {
    let mut w = Vec::new();
    if let Some(swap) = limits.swap_max {
        w.push(swap_write(cg, swap, memory)?);
    }
    if let Some(max) = limits.pids_max {
        let dir = match cg.mode {
            CgroupMode::V2 => need("pids_max", cg.own_dir(), "own")?,
            CgroupMode::V1 => need("pids_max", owned_dir(cg, "pids"), "pids")?,
        };
        w.push(write("pids_max", dir.join("pids.max"), max.to_string()));
    }
    if limits.has_io() {
        io_writes(cg, limits, devices, &mut w)?;
    }
    Ok(w)
}

fn swap_write(cg: &TaskCgroups, swap: Size, memory: MemoryHard) -> Result<Write, ExtraError> {
    let mem = need("swap_max", cg.memory_dir(), "memory")?;
    Ok(match cg.mode {
        CgroupMode::V2 => write("swap_max", mem.join("memory.swap.max"), swap.v2()),
        CgroupMode::V1 => {
            let value = match (swap, memory) {
                (Size::Max, _) => "-1".to_owned(),
                (Size::Bytes(b), MemoryHard::Bytes(m)) => (m as u64 + b).to_string(),
                (Size::Bytes(_), MemoryHard::Unlimited) => {
                    return Err(unsupported(
                        "swap_max",
                        "cgroup v1 limits memory and swap together (memory.memsw.limit_in_bytes) and the task has no memory limit (memory_max = -1)".into(),
                        "set a memory limit, or swap_max = \"max\"",
                    ));
                }
            };
            write("swap_max", mem.join("memory.memsw.limit_in_bytes"), value)
        }
    })
}

fn io_writes(
    cg: &TaskCgroups,
    limits: &ExtraLimits,
    devices: &dyn DeviceLookup,
    w: &mut Vec<Write>,
) -> Result<(), ExtraError> {
    let dir = match cg.mode {
        CgroupMode::V2 => need("io_weight", cg.own_dir(), "own")?,
        CgroupMode::V1 => need("io_weight", owned_dir(cg, "blkio"), "blkio")?,
    };
    if let Some(weight) = limits.io_weight {
        w.push(weight_write(cg.mode, &dir, weight)?);
    }
    for (path, limit) in &limits.io_devices {
        let option = match (limit.read_bps, limit.write_bps, limit.read_iops) {
            (Some(_), _, _) => "io_read_bandwidth_max",
            (None, Some(_), _) => "io_write_bandwidth_max",
            (None, None, Some(_)) => "io_read_iops_max",
            _ => "io_write_iops_max",
        };
        let (major, minor) = devices.disk_of(path).map_err(|source| ExtraError::Device {
            option,
            path: path.clone(),
            source,
        })?;
        match cg.mode {
            CgroupMode::V2 => {
                let mut line = format!("{major}:{minor}");
                for (key, value) in [
                    ("rbps", limit.read_bps.map(Size::v2)),
                    ("wbps", limit.write_bps.map(Size::v2)),
                    ("riops", limit.read_iops.map(|n| n.to_string())),
                    ("wiops", limit.write_iops.map(|n| n.to_string())),
                ] {
                    if let Some(v) = value {
                        let _ = write!(line, " {key}={v}");
                    }
                }
                w.push(write(option, dir.join("io.max"), line));
            }
            CgroupMode::V1 => {
                for (file, opt, value) in [
                    (
                        "blkio.throttle.read_bps_device",
                        "io_read_bandwidth_max",
                        limit.read_bps.and_then(bytes),
                    ),
                    (
                        "blkio.throttle.write_bps_device",
                        "io_write_bandwidth_max",
                        limit.write_bps.and_then(bytes),
                    ),
                    (
                        "blkio.throttle.read_iops_device",
                        "io_read_iops_max",
                        limit.read_iops,
                    ),
                    (
                        "blkio.throttle.write_iops_device",
                        "io_write_iops_max",
                        limit.write_iops,
                    ),
                ] {
                    if let Some(v) = value {
                        w.push(write(opt, dir.join(file), format!("{major}:{minor} {v}")));
                    }
                }
            }
        }
    }
    Ok(())
}

fn weight_write(mode: CgroupMode, dir: &Path, weight: u64) -> Result<Write, ExtraError> {
    let (names, plain) = match mode {
        CgroupMode::V2 => (["io.weight", "io.bfq.weight"], weight),
        CgroupMode::V1 => (["blkio.weight", "blkio.bfq.weight"], blkio_weight(weight)),
    };
    let file = first_file(dir, &names).ok_or_else(|| {
        unsupported(
            "io_weight",
            format!(
                "the kernel offers no IO weight in {} (neither {} nor {}: proportional IO control needs the BFQ I/O scheduler{})",
                dir.display(),
                names[0],
                names[1],
                if mode == CgroupMode::V1 { " or CFQ" } else { " or io.cost" }
            ),
            "remove io_weight, or run the task on a client whose disks use an I/O scheduler with group weights",
        )
    })?;
    let value = if file.ends_with(names[0]) {
        plain
    } else {
        bfq_weight(weight)
    };
    Ok(write("io_weight", file, value.to_string()))
}

/// v1 throttles take bytes; `max` is the same as no rule.
fn bytes(s: Size) -> Option<u64> {
    match s {
        Size::Bytes(b) => Some(b),
        Size::Max => None,
    }
}

/// Applies `plan`'s writes; a file the kernel lacks or refuses fails with the option's name.
pub fn apply(writes: &[Write]) -> Result<(), ExtraError> {
    for wr in writes {
        fs::write(&wr.file, &wr.value).map_err(|source| {
            let source = if source.kind() == io::ErrorKind::NotFound {
                io::Error::new(
                    source.kind(),
                    "the kernel offers no such file (the controller or the feature is missing on this client)",
                )
            } else {
                source
            };
            ExtraError::Write {
                option: wr.option,
                file: wr.file.clone(),
                value: wr.value.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
