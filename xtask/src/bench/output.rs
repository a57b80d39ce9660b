//! Writes the benchmark results to `target/bench/results.json` (everything, raw samples
//! included) and `target/bench/results.md` (tables for the README), and prints the markdown.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::jobs::Driver;
use super::latency::{self, Sample};
use super::memory::Measurement;
use super::storm::{self, Place, Run};
use super::{telemetry, throughput};
use crate::tools;

/// Everything one bench run produced.
pub struct Results {
    pub context: Value,
    pub latency: Vec<Sample>,
    pub memory: Vec<Measurement>,
    pub storm: Vec<Run>,
    pub storm_execs: usize,
    pub foreign_plugins: usize,
    pub throughput: Option<throughput::Report>,
    pub telemetry: Option<telemetry::Report>,
}

fn mib(kib: u64, tasks: usize) -> f64 {
    kib as f64 / 1024.0 / tasks.max(1) as f64
}

fn pct(new: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:+.1}%", (new - base) / base * 100.0)
    } else {
        "n/a".to_owned()
    }
}

impl Results {
    pub fn to_json(&self) -> Value {
        json!({
            "context": self.context,
            "start_latency_ms": latency::to_json(&self.latency),
            "helper_memory": self.memory.iter().map(|m| (m.driver.name().to_owned(), m.to_json())).collect::<serde_json::Map<_, _>>(),
            "storm": {
                "execs_per_run": self.storm_execs,
                "foreign_bpfexec_plugins_on_host": self.foreign_plugins,
                "places": storm::to_json(&self.storm),
            },
            "probe_throughput": self.throughput.as_ref().map(throughput::Report::to_json),
            "telemetry": self.telemetry.as_ref().map(telemetry::Report::to_json),
        })
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# bpfexec benchmark\n\n");
        for (k, v) in self.context.as_object().into_iter().flatten() {
            let _ = writeln!(
                md,
                "- {k}: {}",
                v.as_str().map_or(v.to_string(), str::to_owned)
            );
        }
        md.push_str("\n## Task start latency (ms)\n\n\
            One `/bin/date +%s%N` batch task at a time, drivers interleaved; \"command running\" is the \
            time `date` printed.\n\n| driver | metric | n | median | p90 | min | max |\n|---|---|---|---|---|---|---|\n");
        for (driver, _, what, s) in latency::summarize(&self.latency) {
            let _ = writeln!(md, "| {} | {what} | {} |", driver.name(), s.cells(1));
        }
        md.push_str("\n## Helper-process memory per task (MiB, K sleeping tasks per driver)\n\n\
            Sum of `Rss:`/`Pss:` from `/proc/<pid>/smaps_rollup` of the helper processes next to K running \
            `sleep` tasks, divided by K: bpfexec's `__supervise` processes; exec's and raw_exec's \
            `nomad executor`; and Nomad's `nomad logmon`, which every driver gets.\n\n| driver | tasks | driver helpers | RSS/task | PSS/task | logmon RSS/task | logmon PSS/task | total PSS/task |\n|---|---|---|---|---|---|---|---|\n");
        for m in &self.memory {
            let helper = match m.driver {
                Driver::Bpfexec => "__supervise",
                Driver::Exec | Driver::RawExec => "nomad executor",
            };
            let d = m.driver_helpers.mem;
            let l = m.logmon.mem;
            let _ = writeln!(
                md,
                "| {} | {} | {} × {helper} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                m.driver.name(),
                m.tasks,
                m.driver_helpers.count,
                mib(d.rss_kib, m.tasks),
                mib(d.pss_kib, m.tasks),
                mib(l.rss_kib, m.tasks),
                mib(l.pss_kib, m.tasks),
                mib(d.pss_kib + l.pss_kib, m.tasks),
            );
        }
        for p in self.memory.iter().filter_map(|m| m.plugin) {
            let _ = writeln!(
                md,
                "\nShared by all bpfexec tasks of a node (not per task): the plugin process, RSS {:.1} MiB, PSS {:.1} MiB. \
                 PSS of the `nomad` helpers depends on how many `nomad` processes share the binary's pages.",
                mib(p.mem.rss_kib, 1),
                mib(p.mem.pss_kib, 1)
            );
        }
        self.storm_markdown(&mut md);
        self.throughput_markdown(&mut md);
        if let Some(t) = &self.telemetry {
            md.push_str(&telemetry::markdown::section(t, &self.storm));
        }
        md
    }

    fn throughput_markdown(&self, md: &mut String) {
        let Some(t) = &self.throughput else {
            return;
        };
        let _ = write!(
            md,
            "\n## Probe throughput\n\n\
             One isolated bpfexec task (Python) sends itself an ignored `SIGUSR1` in paced batches, {} s per \
             step: one `signal_generate` record per `kill(2)`, read from the ring buffer and applied by the \
             driver's observer. Offered = events the generator sent / its time; processed = change of \
             `/v1/observer` `events_processed` over that time (counters read before the step and once \
             they settled after it); lost = probes' ring-full drops; lagged = events the observer fell \
             behind on in the driver. Settle = how long the counters kept moving after the generator \
             stopped. BPF run-time statistics are on during this phase. Host busy loops competing \
             for the CPUs meanwhile: {}.\n\n\
             **Highest rate sustained with zero loss: {}** (target {:.0} events/s: {}).{}\n\n\
             | step (target ev/s) | offered ev/s | processed ev/s | ring records | lost | lagged | zero loss | settle ms | plugin CPU (of one core) | plugin CPU µs/event | signal_generate probe ns/run |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
            t.secs_per_step,
            t.load,
            t.best_zero_loss()
                .map_or("none".to_owned(), |r| format!("{r:.0} events/s")),
            throughput::TARGET_RATE,
            if t.meets_target() { "met" } else { "not met" },
            t.stopped
                .as_ref()
                .map_or(String::new(), |why| format!(" Stepping stopped: {why}.")),
        );
        for step in &t.steps {
            let _ = writeln!(md, "{}", step.row());
        }
    }

    fn storm_markdown(&self, md: &mut String) {
        if self.storm.is_empty() {
            return;
        }
        let _ = write!(
            md,
            "\n## Exec storm: {} × `/bin/true` from a shell loop\n\n\
             Probe time is the kernel's own run-time accounting (BPF_ENABLE_STATS) of our plugin's \
             programs over each storm (it also includes probe runs for everything else the host did \
             meanwhile, so it is an upper bound); overhead = (probe time + plugin CPU) / (storm CPU − \
             probe time). Other bpfexec plugins on the host during the run (their probes run in every \
             row, ours or not): {}.\n\n\
             | where | n | wall s (median) | CPU s (median) | probe ms (median) | probe runs (median) | plugin CPU s (median) | overhead % (median / p90) |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.storm_execs, self.foreign_plugins
        );
        let summary = storm::to_json(&self.storm);
        for place in Place::ALL {
            let s = &summary[place.key()];
            let cell = |metric: &str, stat: &str, digits: usize| {
                s[metric][stat]
                    .as_f64()
                    .map_or("–".to_owned(), |v| format!("{v:.digits$}"))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                place.describe(),
                s["wall_s"]["n"],
                cell("wall_s", "median", 3),
                cell("cpu_s", "median", 3),
                cell("probe_run_time_ms", "median", 1),
                cell("probe_runs", "median", 0),
                cell("plugin_cpu_s", "median", 3),
                cell("probe_plus_plugin_overhead_pct", "median", 2),
                cell("probe_plus_plugin_overhead_pct", "p90", 2),
            );
        }
        let tracked = &summary[Place::TaskBpfexec.key()]["per_program"];
        let untracked = &summary[Place::HostProbesOn.key()]["per_program"];
        if let Some(programs) = tracked.as_object().filter(|p| !p.is_empty()) {
            md.push_str(
                "\nPer probe program (medians over the storms; \"runs\" include the rest of the host's activity):\n\n\
                 | program | runs, tracked bpfexec task | ns/run, tracked | runs, untracked host process | ns/run, untracked |\n\
                 |---|---|---|---|---|\n",
            );
            for name in programs.keys() {
                let cell = |v: &Value, metric: &str| {
                    v[name][metric]["median"]
                        .as_f64()
                        .map_or("–".to_owned(), |x| format!("{x:.0}"))
                };
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} |",
                    cell(tracked, "runs"),
                    cell(tracked, "ns_per_run"),
                    cell(untracked, "runs"),
                    cell(untracked, "ns_per_run"),
                );
            }
        }
        let m = |p, f: fn(&Run) -> f64| storm::median(&self.storm, p, f).unwrap_or(0.0);
        let wall = |r: &Run| r.wall_s;
        let cpu = |r: &Run| r.cpu_s;
        let _ = write!(
            md,
            "\nWall/CPU A/B on the same machine (noisy: other work shares the 2 cores): host process \
             with our probes loaded vs not: wall {}, CPU {}; tracked bpfexec task vs raw_exec task: \
             wall {}, CPU {}; isolation = \"none\" bpfexec task vs raw_exec task: wall {}, CPU {}.\n",
            pct(m(Place::HostProbesOn, wall), m(Place::HostProbesOff, wall)),
            pct(m(Place::HostProbesOn, cpu), m(Place::HostProbesOff, cpu)),
            pct(m(Place::TaskBpfexec, wall), m(Place::TaskRawExec, wall)),
            pct(m(Place::TaskBpfexec, cpu), m(Place::TaskRawExec, cpu)),
            pct(m(Place::TaskBpfexecRaw, wall), m(Place::TaskRawExec, wall)),
            pct(m(Place::TaskBpfexecRaw, cpu), m(Place::TaskRawExec, cpu)),
        );
    }

    /// Writes both files and returns their paths.
    pub fn write(&self) -> Result<(PathBuf, PathBuf)> {
        let dir = tools::target_dir().join("bench");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let json_path = dir.join("results.json");
        let md_path = dir.join("results.md");
        let json = serde_json::to_string_pretty(&self.to_json())?;
        std::fs::write(&json_path, json + "\n")
            .with_context(|| format!("writing {}", json_path.display()))?;
        std::fs::write(&md_path, self.to_markdown())
            .with_context(|| format!("writing {}", md_path.display()))?;
        Ok((json_path, md_path))
    }
}
