//! `/metrics` with many running tasks: K sleeping bpfexec tasks (one service job, groups of
//! [`TASKS_PER_GROUP`] tasks, log collection off so Nomad starts no `logmon` per task), then
//! timed scrapes of the driver's `/metrics` in both formats (time to the last byte, size,
//! samples), Prometheus' own `scrape_duration_seconds` / `scrape_samples_scraped` for the
//! driver's target meanwhile (it scrapes every second), and the plugin's RSS and CPU with the
//! K tasks running, against the same figures with none.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bpfexec_e2e::Agent;
use bpfexec_e2e::peers::Prometheus;
use serde_json::{Value, json};

use super::exposition::{self, CLASSIC, OPENMETRICS};
use super::memory::{Group, bpfexec_helpers};
use super::stats::{Summary, json_of};
use super::{jobs, storm};
use crate::demo;

/// Tasks per allocation (fewer allocations: a quicker start on a 2-core machine).
pub const TASKS_PER_GROUP: usize = 10;
/// Timed scrapes per format.
const SCRAPES: usize = 20;
/// How long the K tasks idle (scraped by Prometheus) before and while measuring.
const IDLE: Duration = Duration::from_secs(20);

/// Timings of one format.
#[derive(Debug, Clone)]
pub struct Format {
    pub name: &'static str,
    pub ms: Vec<f64>,
    pub bytes: usize,
    pub samples: usize,
}

impl Format {
    fn to_json(&self) -> Value {
        json!({ "ms": json_of(Summary::of(&self.ms)), "bytes": self.bytes, "samples": self.samples })
    }
}

/// What K running tasks showed.
#[derive(Debug, Clone)]
pub struct Report {
    pub tasks: usize,
    pub start_s: f64,
    pub formats: Vec<Format>,
    /// Prometheus' view over the idle period: median and max scrape seconds, samples.
    pub prometheus: Option<(f64, f64, f64)>,
    pub plugin_idle: Group,
    pub plugin_loaded: Group,
    /// Plugin CPU over the idle period, percent of one core.
    pub plugin_cpu_pct: f64,
    pub supervisors: Group,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "tasks": self.tasks,
            "tasks_per_allocation": TASKS_PER_GROUP,
            "all_running_after_s": self.start_s,
            "scrape": self.formats.iter().map(|f| (f.name.to_owned(), f.to_json())).collect::<serde_json::Map<_, _>>(),
            "prometheus_scrape": self.prometheus.map(|(median, max, samples)| json!({
                "duration_s_median": median, "duration_s_max": max, "samples": samples,
            })),
            "plugin_no_tasks": self.plugin_idle.to_json(1),
            "plugin_with_tasks": self.plugin_loaded.to_json(1),
            "plugin_cpu_pct_of_one_core_idle_tasks_scraped_1s": self.plugin_cpu_pct,
            "supervisors": self.supervisors.to_json(self.tasks),
        })
    }
}

/// The job: `tasks / TASKS_PER_GROUP` allocations of sleeping tasks.
pub fn job_hcl(id: &str, tasks: usize) -> String {
    let groups = tasks.div_ceil(TASKS_PER_GROUP);
    let per = tasks.min(TASKS_PER_GROUP);
    let mut body = String::new();
    for t in 0..per {
        let _ = write!(
            body,
            "    task \"t{t}\" {{\n      driver = \"bpfexec\"\n      config {{\n        command = \"/bin/sleep\"\n        args    = [\"3600\"]\n      }}\n      logs {{\n        disabled = true\n      }}\n      resources {{\n        cpu    = 10\n        memory = 10\n      }}\n    }}\n"
        );
    }
    format!(
        "job \"{id}\" {{\n  datacenters = [\"*\"]\n  type        = \"service\"\n  group \"g\" {{\n    count = {groups}\n    restart {{\n      attempts = 0\n      mode     = \"fail\"\n    }}\n{body}  }}\n}}\n"
    )
}

/// Starts the tasks, measures, removes them.
pub fn run(
    agent: &Agent,
    http_addr: &str,
    prom: Option<&Prometheus>,
    tasks: usize,
) -> Result<Report> {
    let plugin_idle = Group::of(&agent.plugin_pids());
    let api = agent.api();
    let t0 = Instant::now();
    let job = api.register_job(&job_hcl("bench-scrape", tasks))?;
    let want = tasks.div_ceil(TASKS_PER_GROUP);
    let tasks = want * tasks.min(TASKS_PER_GROUP);
    let allocs = bpfexec_e2e::poll_until(
        "the scrape job's allocations",
        Duration::from_secs(120),
        Duration::from_millis(500),
        |last| {
            let a = api.job_allocs(&job)?;
            *last = format!("{} of {want}", a.len());
            Ok((a.len() >= want).then_some(a))
        },
    )?;
    for a in &allocs {
        jobs::wait_status(api, &a.id, &["running"], Duration::from_secs(900))?;
    }
    let start_s = t0.elapsed().as_secs_f64();
    println!(
        "    {tasks} tasks in {} allocations running after {start_s:.1} s",
        allocs.len()
    );
    let pids = agent.plugin_pids();
    let cpu0: f64 = pids.iter().copied().map(storm::cpu_seconds).sum();
    let idle_from = Instant::now();
    if demo::sleep(IDLE) {
        bail!("interrupted");
    }
    let cpu1: f64 = pids.iter().copied().map(storm::cpu_seconds).sum();
    let plugin_cpu_pct = (cpu1 - cpu0) / idle_from.elapsed().as_secs_f64() * 100.0;
    let series = format!(
        "scrape_duration_seconds{{job=\"bpfexec\"}}[{}s]",
        IDLE.as_secs()
    );
    let prometheus = prom.and_then(|p| {
        let q = |promql: &str| Some(p.query_vector(promql).ok()?.first()?.value);
        Some((
            q(&format!("quantile_over_time(0.5, {series})"))?,
            q(&format!("max_over_time({series})"))?,
            q("scrape_samples_scraped{job=\"bpfexec\"}")?,
        ))
    });
    let mut formats = vec![
        Format {
            name: "openmetrics",
            ms: Vec::new(),
            bytes: 0,
            samples: 0,
        },
        Format {
            name: "classic_text_0.0.4",
            ms: Vec::new(),
            bytes: 0,
            samples: 0,
        },
    ];
    for _ in 0..SCRAPES {
        for (f, accept) in formats.iter_mut().zip([OPENMETRICS, CLASSIC]) {
            let s = exposition::scrape(http_addr, accept)?;
            f.ms.push(s.took.as_secs_f64() * 1e3);
            f.bytes = s.bytes;
            f.samples = s.samples;
        }
    }
    let plugin_loaded = Group::of(&agent.plugin_pids());
    let supervisors = Group::of(&bpfexec_helpers(agent));
    jobs::purge_and_gc(agent, &[job], Duration::from_secs(600))?;
    Ok(Report {
        tasks,
        start_s,
        formats,
        prometheus,
        plugin_idle,
        plugin_loaded,
        plugin_cpu_pct,
        supervisors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_has_the_asked_number_of_tasks() {
        let hcl = job_hcl("j", 200);
        assert!(hcl.contains("count = 20\n"), "{hcl}");
        assert_eq!(hcl.matches("driver = \"bpfexec\"").count(), TASKS_PER_GROUP);
        assert!(hcl.contains("task \"t9\""));
        assert!(hcl.contains("disabled = true"));
        let small = job_hcl("j", 3);
        assert!(small.contains("count = 1\n"));
        assert_eq!(small.matches("task \"").count(), 3);
    }
}
