//! Readable text for the demo: a node's driver fingerprint, an allocation's task events (Nomad
//! `TaskEvent`s, times in Unix ns), exit codes and signals from `Terminated` events, and the
//! first lines of a task's stdout/stderr.

use std::fmt::Write as _;

use bpfexec_e2e::{Alloc, Client, LogType, Node, TaskEvent};

/// Log lines shown per stream.
const LOG_LINES: usize = 24;

/// The bpfexec fingerprint of `node`: health, every `driver.bpfexec*` attribute, other drivers.
pub fn node(node: &Node) -> String {
    let mut out = format!("node {} ({})\n", node.name, short(&node.id));
    match node.drivers.get(bpfexec_e2e::DRIVER_NAME) {
        Some(d) => {
            let _ = writeln!(
                out,
                "  driver bpfexec: detected={} healthy={} ({})",
                d.detected, d.healthy, d.health_description
            );
        }
        None => out.push_str("  driver bpfexec: not reported by the node\n"),
    }
    for (key, value) in node
        .attributes
        .iter()
        .filter(|(k, _)| k.starts_with("driver.bpfexec"))
    {
        let _ = writeln!(out, "    {key:<34} = {value}");
    }
    let others: Vec<String> = node
        .drivers
        .iter()
        .filter(|(name, _)| name.as_str() != bpfexec_e2e::DRIVER_NAME)
        .map(|(name, d)| {
            let state = if !d.detected {
                "undetected"
            } else if d.healthy {
                "healthy"
            } else {
                "unhealthy"
            };
            format!("{name} ({state})")
        })
        .collect();
    let _ = writeln!(out, "  other drivers: {}", others.join(", "));
    out
}

/// First 8 characters of an id, as the Nomad CLI shows them.
pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One line per event, with the time relative to `origin` (ns).
pub fn events(events: &[TaskEvent], origin: i64) -> String {
    let mut out = String::new();
    for e in events {
        let rel = (e.time - origin) as f64 / 1e9;
        let mut text = e.display_message.clone();
        if text.is_empty() {
            text = e.all_text();
        }
        let _ = write!(out, "      {rel:+8.3}s  {:<18} {text}", e.kind);
        let extra: Vec<String> = e
            .details
            .iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "exit_code" | "signal" | "oom_killed"))
            .filter(|(_, v)| !v.is_empty() && !text.contains(v.as_str()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !extra.is_empty() && e.kind == "Driver" {
            let _ = write!(out, "  [{}]", extra.join(" "));
        }
        out.push('\n');
    }
    out
}

/// `(exit_code, signal, oom_killed)` of the last `Terminated` event.
pub fn exit_of(events: &[TaskEvent]) -> Option<(i64, i64, bool)> {
    let e = events.iter().rev().find(|e| e.kind == "Terminated")?;
    let code = e.detail_i64("exit_code").unwrap_or(e.exit_code);
    let signal = e.detail_i64("signal").unwrap_or(e.signal);
    let oom = e.detail("oom_killed") == Some("true");
    Some((code, signal, oom))
}

/// Human form of an exit.
pub fn exit_line(exit: Option<(i64, i64, bool)>) -> String {
    match exit {
        None => "no Terminated event (yet)".to_owned(),
        Some((code, 0, false)) => format!("exit code {code}"),
        Some((code, signal, oom)) => {
            let oom = if oom { ", OOM-killed" } else { "" };
            format!("exit code {code}, signal {signal}{oom}")
        }
    }
}

/// The first lines of one log stream, indented, or a note.
pub fn log_head(text: &str) -> String {
    if text.trim().is_empty() {
        return "      (empty)\n".to_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in lines.iter().take(LOG_LINES) {
        let _ = writeln!(out, "      | {line}");
    }
    if lines.len() > LOG_LINES {
        let _ = writeln!(out, "      | … ({} more lines)", lines.len() - LOG_LINES);
    }
    out
}

/// Both log streams of `task` (empty strings when unavailable).
pub fn logs(api: &Client, alloc: &str, task: &str) -> (String, String) {
    let read = |kind| api.logs(alloc, task, kind).unwrap_or_default();
    (read(LogType::Stdout), read(LogType::Stderr))
}

/// Status, events, exit and logs of every task of `alloc`; events before `since` (ns) are
/// skipped (used to show only what happened after a stop).
pub fn alloc(api: &Client, alloc: &Alloc, since: i64, with_logs: bool) -> String {
    let mut out = String::new();
    for (task, state) in alloc.task_states.iter().flatten() {
        let events: Vec<TaskEvent> = state.events.clone().unwrap_or_default();
        let origin = events.first().map_or(0, |e| e.time);
        let shown: Vec<TaskEvent> = events.iter().filter(|e| e.time >= since).cloned().collect();
        let _ = writeln!(
            out,
            "    task {task:?}: state={} failed={} restarts={}",
            state.state, state.failed, state.restarts
        );
        out.push_str(&self::events(&shown, origin));
        if let Some(started) = events.iter().find(|e| e.kind == "Started")
            && since == 0
        {
            let _ = writeln!(
                out,
                "      (Received → Started: {:.0} ms)",
                (started.time - origin) as f64 / 1e6
            );
        }
        if state.state == "dead" {
            let _ = writeln!(out, "      result: {}", exit_line(exit_of(&events)));
        }
        if with_logs {
            let (stdout, stderr) = logs(api, &alloc.id, task);
            let _ = write!(out, "    stdout:\n{}", log_head(&stdout));
            let _ = write!(out, "    stderr:\n{}", log_head(&stderr));
        }
    }
    out
}
