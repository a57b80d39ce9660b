//! What a test's tasks may leave behind once they are stopped and garbage-collected, looked up
//! on the host: processes (tasks and their helpers, by allocation id and by the agent's own
//! plugin and state dirs), mounts in the host's namespace under the agent's dirs, task cgroups
//! named after the allocations, task state directories under the driver's `state_dir`, and the
//! probes' pinned-map entries (`bpfexec_map_entries` on the driver's `/metrics`, which the
//! driver refreshes every 5 s).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::agent::Agent;
use crate::api::Client;
use crate::cleanup::{Owner, collect_cgroups, mounts_under};

/// Everything found; empty when nothing is left.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Processes of the allocations, or helpers (`__supervise`) of the agent's driver.
    pub processes: Vec<String>,
    /// Mount points under the agent's data or state dir.
    pub mounts: Vec<PathBuf>,
    /// Cgroup directories named after the allocations.
    pub cgroups: Vec<PathBuf>,
    /// Task directories under `<state_dir>/tasks`.
    pub state_dirs: Vec<PathBuf>,
}

impl Leftovers {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Looks for what `alloc_ids` (and the agent's driver helpers) left on the host.
#[must_use]
pub fn find(agent: &Agent, alloc_ids: &[String]) -> Leftovers {
    let layout = agent.layout();
    let ids: BTreeSet<String> = alloc_ids.iter().cloned().collect();
    let nomad = crate::env::nomad_bin().unwrap_or_default();
    let owner = Owner {
        root: agent.root(),
        layout,
        nomad: &nomad,
        alloc_ids: ids.clone(),
    };
    // The agent and its plugin are expected; anything else of theirs (logmon, helpers, tasks)
    // is left over.
    let mut expected: Vec<i32> = agent.plugin_pids();
    expected.extend(agent.pid());
    let processes = owner
        .processes()
        .into_iter()
        .filter(|p| !expected.contains(p))
        .map(|p| {
            let argv = crate::procs::cmdline(p).unwrap_or_default().join(" ");
            format!("{p} {argv}")
        })
        .collect();
    let mut mounts = mounts_under(&layout.data_dir);
    mounts.extend(mounts_under(&layout.state_dir));
    let mut cgroups = Vec::new();
    collect_cgroups(Path::new("/sys/fs/cgroup"), 0, &ids, &mut cgroups);
    let state_dirs = std::fs::read_dir(layout.state_dir.join("tasks"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    Leftovers {
        processes,
        mounts,
        cgroups,
        state_dirs,
    }
}

/// `bpfexec_map_entries` per map from the driver's `/metrics` at `127.0.0.1:port`.
pub fn map_entries(port: u16) -> Result<BTreeMap<String, u64>> {
    let text = Client::new(&format!("http://127.0.0.1:{port}")).get_text("/metrics")?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("bpfexec_map_entries{map=\""))
        .filter_map(|rest| {
            let (map, value) = rest.split_once("\"}")?;
            Some((map.to_owned(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect())
}

/// Waits (up to 20 s) for the driver at `127.0.0.1:port` to publish its map fill; returns it as
/// the baseline later counts are compared with.
pub fn map_baseline(port: u16) -> Result<BTreeMap<String, u64>> {
    crate::wait::poll_until(
        "the driver's map metrics",
        std::time::Duration::from_secs(20),
        crate::wait::POLL,
        |last| {
            let m = map_entries(port)?;
            *last = format!("{m:?}");
            Ok(m.contains_key("tracked").then_some(m))
        },
    )
}

/// Waits (up to 90 s) until nothing of the allocations `alloc_ids` is left ([`find`]) and the
/// driver's `tracked` and `facts` maps are back to `baseline`; returns the maps' fill then.
pub fn wait_nothing_left(
    agent: &Agent,
    alloc_ids: &[String],
    port: u16,
    baseline: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>> {
    crate::wait::poll_until(
        "nothing left of the tasks",
        std::time::Duration::from_secs(90),
        crate::wait::POLL,
        |last| {
            let left = find(agent, alloc_ids);
            let maps = map_entries(port)?;
            let maps_back = ["tracked", "facts"]
                .iter()
                .all(|m| maps.get(*m) <= baseline.get(*m));
            *last = format!("{left:?}, maps {maps:?} (baseline {baseline:?})");
            Ok((left.is_empty() && maps_back).then_some(maps))
        },
    )
}
