//! Run-time statistics of our probes for the driver's health metrics: per program, how often it
//! ran and for how long (the kernel's `run_cnt` / `run_time_ns` in the program fd's fdinfo,
//! which it only accounts while `kernel.bpf_stats_enabled = 1` or a BPF_ENABLE_STATS fd is open),
//! and the fill of the tracked-process map. Our programs are found among all loaded programs as
//! those that use this driver's own `TRACKED` map (after a plugin restart the attached programs
//! may be an earlier process's), and named by their instruction tag, since the kernel keeps only
//! 15 characters of a program's name.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _};

/// One program's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    pub runs: u64,
    pub run_time_ns: u64,
}

/// `run_time_ns` and `run_cnt` from a `/proc/<pid>/fdinfo/<fd>` text of a program fd.
#[must_use]
pub fn parse_fdinfo(text: &str) -> ProgramRuns {
    let mut r = ProgramRuns::default();
    for line in text.lines() {
        let mut it = line.splitn(2, ':');
        let (Some(k), Some(v)) = (it.next(), it.next()) else {
            continue;
        };
        let v = v.trim().parse().unwrap_or(0);
        match k.trim() {
            "run_time_ns" => r.run_time_ns = v,
            "run_cnt" => r.runs = v,
            _ => {}
        }
    }
    r
}

/// Whether the kernel currently accounts BPF run time system-wide.
#[must_use]
pub fn stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// Sums the counters of every loaded program that uses map `map_id`, by name (from `names`,
/// instruction tag -> our program name).
#[must_use]
pub fn program_runs(
    map_id: u32,
    names: &[(u64, &'static str)],
) -> BTreeMap<&'static str, ProgramRuns> {
    let mut out: BTreeMap<&'static str, ProgramRuns> = names
        .iter()
        .map(|(_, n)| (*n, ProgramRuns::default()))
        .collect();
    for info in aya::programs::loaded_programs().flatten() {
        let uses_our_map = info
            .map_ids()
            .ok()
            .flatten()
            .is_some_and(|ids| ids.contains(&map_id));
        if !uses_our_map {
            continue;
        }
        let Some((_, name)) = names.iter().find(|(tag, _)| *tag == info.tag()) else {
            continue;
        };
        let Ok(fd) = info.fd() else { continue };
        let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        let runs = std::fs::read_to_string(path)
            .map(|t| parse_fdinfo(&t))
            .unwrap_or_default();
        let e = out.entry(name).or_default();
        e.runs += runs.runs;
        e.run_time_ns += runs.run_time_ns;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_counters() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tb2f9b6b1c3b1c4a2\nmemlock:\t4096\nprog_id:\t77\n\
                    run_time_ns:\t123456\nrun_cnt:\t42\nrecursion_misses:\t0\n";
        assert_eq!(
            parse_fdinfo(text),
            ProgramRuns {
                runs: 42,
                run_time_ns: 123_456
            }
        );
        assert_eq!(parse_fdinfo("garbage"), ProgramRuns::default());
    }
}
