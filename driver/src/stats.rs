//! TaskStats samples (Nomad's `TaskResourceUsage`): CPU from the task cgroup (v2 `cpu.stat`) or the
//! sum over the task's processes (procfs), CFS throttling from the cpu cgroup's `cpu.stat`, memory
//! from the task's memory cgroup (v2 `memory.stat`/`memory.current`/`memory.peak`) or process
//! RSS, and per-pid usage. Percent is of one core, as in Nomad's exec driver; total ticks are MHz used.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Instant, SystemTime};

use bpfexec_proto::drivers::{self, cpu_usage, memory_usage};

use crate::cgroups::{self, CgroupMode, TaskCgroups};
use crate::procfs;

/// CPU time in nanoseconds, split into user and system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user_ns: u64,
    pub system_ns: u64,
}

impl CpuTimes {
    fn total(self) -> u64 {
        self.user_ns + self.system_ns
    }
}

/// Keeps the previous reading so each sample reports a rate.
pub struct Sampler {
    mhz_per_core: f64,
    prev: Option<(Instant, CpuTimes)>,
    prev_pids: HashMap<u32, (Instant, CpuTimes)>,
}

impl Sampler {
    pub fn new(mhz_per_core: f64) -> Self {
        Self {
            mhz_per_core,
            prev: None,
            prev_pids: HashMap::new(),
        }
    }

    /// One `TaskStats` for `task_id`, whose processes are `pids`.
    pub fn sample(
        &mut self,
        task_id: &str,
        cgroups: Option<&TaskCgroups>,
        pids: &[u32],
    ) -> drivers::TaskStats {
        let now = Instant::now();
        let per_pid: Vec<(u32, CpuTimes, u64)> = pids
            .iter()
            .filter_map(|p| pid_reading(*p).map(|(c, r)| (*p, c, r)))
            .collect();
        let cpu_now = cgroups
            .and_then(cgroup_cpu)
            .unwrap_or_else(|| sum_cpu(&per_pid));
        let mut cpu = rate(
            self.prev.replace((now, cpu_now)),
            now,
            cpu_now,
            self.mhz_per_core,
        );
        if let Some((periods, time_ns)) = cgroups.and_then(throttling) {
            cpu.throttled_periods = periods;
            cpu.throttled_time = time_ns;
            cpu.measured_fields.extend([
                cpu_usage::Fields::ThrottledPeriods as i32,
                cpu_usage::Fields::ThrottledTime as i32,
            ]);
        }
        let memory = cgroups.and_then(cgroup_memory).unwrap_or_else(|| {
            let rss: u64 = per_pid.iter().map(|(_, _, r)| r).sum();
            drivers::MemoryUsage {
                rss,
                measured_fields: vec![memory_usage::Fields::Rss as i32],
                ..Default::default()
            }
        });
        let mut by_pid = HashMap::new();
        let mut next_prev = HashMap::new();
        for (pid, times, rss) in per_pid {
            let usage = drivers::TaskResourceUsage {
                cpu: Some(rate(
                    self.prev_pids.get(&pid).copied(),
                    now,
                    times,
                    self.mhz_per_core,
                )),
                memory: Some(drivers::MemoryUsage {
                    rss,
                    measured_fields: vec![memory_usage::Fields::Rss as i32],
                    ..Default::default()
                }),
            };
            by_pid.insert(pid.to_string(), usage);
            next_prev.insert(pid, (now, times));
        }
        self.prev_pids = next_prev;
        drivers::TaskStats {
            id: task_id.to_owned(),
            timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
            agg_resource_usage: Some(drivers::TaskResourceUsage {
                cpu: Some(cpu),
                memory: Some(memory),
            }),
            resource_usage_by_pid: by_pid,
        }
    }
}

fn rate(
    prev: Option<(Instant, CpuTimes)>,
    now: Instant,
    cur: CpuTimes,
    mhz_per_core: f64,
) -> drivers::CpuUsage {
    let (user, system) = match prev {
        Some((then, old)) => {
            let wall = now.duration_since(then).as_nanos() as f64;
            if wall <= 0.0 {
                (0.0, 0.0)
            } else {
                (
                    cur.user_ns.saturating_sub(old.user_ns) as f64 / wall * 100.0,
                    cur.system_ns.saturating_sub(old.system_ns) as f64 / wall * 100.0,
                )
            }
        }
        None => (0.0, 0.0),
    };
    let percent = user + system;
    drivers::CpuUsage {
        system_mode: system,
        user_mode: user,
        total_ticks: percent / 100.0 * mhz_per_core,
        throttled_periods: 0,
        throttled_time: 0,
        percent,
        measured_fields: [
            cpu_usage::Fields::SystemMode,
            cpu_usage::Fields::UserMode,
            cpu_usage::Fields::TotalTicks,
            cpu_usage::Fields::Percent,
        ]
        .iter()
        .map(|f| *f as i32)
        .collect(),
    }
}

fn pid_reading(pid: u32) -> Option<(CpuTimes, u64)> {
    let st = procfs::stat(pid).ok()?;
    let ns_per_tick = 1_000_000_000 / procfs::clock_ticks_per_second();
    Some((
        CpuTimes {
            user_ns: st.utime * ns_per_tick,
            system_ns: st.stime * ns_per_tick,
        },
        st.rss_pages * procfs::page_size(),
    ))
}

fn sum_cpu(per_pid: &[(u32, CpuTimes, u64)]) -> CpuTimes {
    per_pid
        .iter()
        .fold(CpuTimes::default(), |acc, (_, c, _)| CpuTimes {
            user_ns: acc.user_ns + c.user_ns,
            system_ns: acc.system_ns + c.system_ns,
        })
}

/// v2 only: `cpu.stat` of the scope (v1 clients have no per-task cpuacct group from Nomad).
fn cgroup_cpu(cg: &TaskCgroups) -> Option<CpuTimes> {
    if cg.mode != CgroupMode::V2 {
        return None;
    }
    let stat = cgroups::read_keyed(&cg.own_dir()?.join("cpu.stat"));
    let get = |k: &str| stat.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    let times = CpuTimes {
        user_ns: get("user_usec")? * 1000,
        system_ns: get("system_usec")? * 1000,
    };
    (times.total() > 0 || get("usage_usec").is_some()).then_some(times)
}

/// CFS throttling of the task's cpu cgroup: periods throttled and time throttled in ns, from
/// `cpu.stat` (v2 `nr_throttled`/`throttled_usec` of the scope, v1 `nr_throttled`/
/// `throttled_time` of the cpu directory).
fn throttling(cg: &TaskCgroups) -> Option<(u64, u64)> {
    let (dir, time_key, ns_per_unit) = match cg.mode {
        CgroupMode::V2 => (cg.own_dir()?, "throttled_usec", 1000),
        CgroupMode::V1 => (cg.dirs.get(1)?.as_path(), "throttled_time", 1),
    };
    let stat = cgroups::read_keyed(&dir.join("cpu.stat"));
    let get = |k: &str| stat.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    Some((get("nr_throttled")?, get(time_key)? * ns_per_unit))
}

fn cgroup_memory(cg: &TaskCgroups) -> Option<drivers::MemoryUsage> {
    let dir = cg.memory_dir()?;
    if !dir.is_dir() {
        return None;
    }
    Some(memory_from_dir(cg.mode, dir))
}

/// Memory of a cgroup directory with the fields Nomad's exec driver reports for each version.
pub fn memory_from_dir(mode: CgroupMode, dir: &Path) -> drivers::MemoryUsage {
    use memory_usage::Fields;
    let stat = cgroups::read_keyed(&dir.join("memory.stat"));
    let get = |k: &str| stat.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    match mode {
        CgroupMode::V2 => {
            let mut fields = vec![Fields::Rss, Fields::Cache, Fields::Swap, Fields::Usage];
            // memory.peak exists from Linux 5.19; the `kernel` key of memory.stat from 5.18.
            let max_usage = cgroups::read_u64(&dir.join("memory.peak"));
            if max_usage.is_some() {
                fields.push(Fields::MaxUsage);
            }
            let kernel = stat.iter().find(|(n, _)| n == "kernel").map(|(_, v)| *v);
            if kernel.is_some() {
                fields.push(Fields::KernelUsage);
            }
            drivers::MemoryUsage {
                rss: get("anon"),
                cache: get("file"),
                swap: cgroups::read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
                usage: cgroups::read_u64(&dir.join("memory.current")).unwrap_or(0),
                max_usage: max_usage.unwrap_or(0),
                kernel_usage: kernel.unwrap_or(0),
                measured_fields: fields.iter().map(|f| *f as i32).collect(),
                ..Default::default()
            }
        }
        CgroupMode::V1 => drivers::MemoryUsage {
            rss: get("rss"),
            cache: get("cache"),
            swap: get("swap"),
            usage: cgroups::read_u64(&dir.join("memory.usage_in_bytes")).unwrap_or(0),
            max_usage: cgroups::read_u64(&dir.join("memory.max_usage_in_bytes")).unwrap_or(0),
            kernel_usage: cgroups::read_u64(&dir.join("memory.kmem.usage_in_bytes")).unwrap_or(0),
            kernel_max_usage: cgroups::read_u64(&dir.join("memory.kmem.max_usage_in_bytes"))
                .unwrap_or(0),
            measured_fields: [
                Fields::Rss,
                Fields::Cache,
                Fields::Swap,
                Fields::Usage,
                Fields::MaxUsage,
                Fields::KernelUsage,
                Fields::KernelMaxUsage,
            ]
            .iter()
            .map(|f| *f as i32)
            .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_is_percent_of_one_core_and_ticks_are_mhz() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let old = CpuTimes {
            user_ns: 0,
            system_ns: 0,
        };
        let new = CpuTimes {
            user_ns: 500_000_000,
            system_ns: 250_000_000,
        };
        let cpu = rate(Some((t0, old)), t1, new, 2000.0);
        assert!((cpu.user_mode - 50.0).abs() < 1e-9);
        assert!((cpu.system_mode - 25.0).abs() < 1e-9);
        assert!((cpu.percent - 75.0).abs() < 1e-9);
        assert!((cpu.total_ticks - 1500.0).abs() < 1e-9);
        assert!(rate(None, t1, new, 2000.0).percent.abs() < f64::EPSILON);
    }

    #[test]
    fn v2_memory_fields_come_from_memory_stat() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("memory.stat"), "anon 100\nfile 200\n").expect("w");
        std::fs::write(dir.path().join("memory.current"), "400\n").expect("w");
        std::fs::write(dir.path().join("memory.swap.current"), "7\n").expect("w");
        let m = memory_from_dir(CgroupMode::V2, dir.path());
        assert_eq!((m.rss, m.cache, m.usage, m.swap), (100, 200, 400, 7));
        assert_eq!(m.measured_fields.len(), 4);
        // Newer kernels: the peak is MaxUsage and memory.stat's kernel is KernelUsage.
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 100\nfile 200\nkernel 30\n",
        )
        .expect("w");
        std::fs::write(dir.path().join("memory.peak"), "900\n").expect("w");
        let m = memory_from_dir(CgroupMode::V2, dir.path());
        assert_eq!((m.max_usage, m.kernel_usage), (900, 30));
        assert!(
            m.measured_fields
                .contains(&(memory_usage::Fields::MaxUsage as i32))
        );
    }

    #[test]
    fn throttling_comes_from_cpu_stat_on_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 10\nnr_periods 9\nnr_throttled 4\nthrottled_usec 250\n",
        )
        .expect("w");
        let v2 = TaskCgroups {
            mode: CgroupMode::V2,
            dirs: vec![dir.path().to_path_buf()],
            owned: Vec::new(),
        };
        assert_eq!(throttling(&v2), Some((4, 250_000)));
        let v1_cpu = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            v1_cpu.path().join("cpu.stat"),
            "nr_periods 9\nnr_throttled 2\nthrottled_time 777\n",
        )
        .expect("w");
        let v1 = TaskCgroups {
            mode: CgroupMode::V1,
            dirs: vec!["/f".into(), v1_cpu.path().to_path_buf()],
            owned: Vec::new(),
        };
        assert_eq!(throttling(&v1), Some((2, 777)));
        let mut sampler = Sampler::new(1000.0);
        let cpu = sampler
            .sample("t", Some(&v2), &[])
            .agg_resource_usage
            .and_then(|u| u.cpu)
            .expect("cpu");
        assert_eq!((cpu.throttled_periods, cpu.throttled_time), (4, 250_000));
        assert!(
            cpu.measured_fields
                .contains(&(cpu_usage::Fields::ThrottledTime as i32))
        );
    }

    #[test]
    fn v1_memory_fields_include_max_usage() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("memory.stat"), "cache 20\nrss 10\nswap 0\n").expect("w");
        std::fs::write(dir.path().join("memory.usage_in_bytes"), "30\n").expect("w");
        std::fs::write(dir.path().join("memory.max_usage_in_bytes"), "90\n").expect("w");
        let m = memory_from_dir(CgroupMode::V1, dir.path());
        assert_eq!((m.rss, m.cache, m.usage, m.max_usage), (10, 20, 30, 90));
        assert_eq!(m.measured_fields.len(), 7);
    }

    #[test]
    fn samples_always_carry_timestamp_and_aggregate() {
        let mut s = Sampler::new(1000.0);
        let st = s.sample("t", None, &[std::process::id()]);
        assert!(st.timestamp.is_some());
        let agg = st.agg_resource_usage.expect("agg");
        assert!(agg.memory.expect("mem").rss > 0);
        assert!(
            st.resource_usage_by_pid
                .contains_key(&std::process::id().to_string())
        );
    }
}
