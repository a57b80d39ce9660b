//! Draws one task run's trace, as Jaeger's query API returns it (`bpfexec_e2e::peers::Trace`),
//! as a tree for the terminal: per span its name, duration and status (OpenTelemetry's
//! `otel.status_code` / `otel.status_description` as Jaeger reports them), and under it the
//! span events a newcomer should see, with their time from the run's start: `exec`, `signal`
//! (with the sender), `oom_kill`, `escape`, `leak`, `pids_limit`. Attribute names are the
//! driver's (`driver/src/telemetry/traces/spans.rs`).

use std::fmt::Write as _;

use bpfexec_e2e::peers::jaeger::{Log, Span, SpanNode, TagValue, Trace};

/// Span events shown per span; the rest are counted.
const EVENTS_SHOWN: usize = 6;
/// Longest command line shown in an `exec` event.
const ARGS_WIDTH: usize = 60;
/// Column where durations start (name plus tree drawing are padded to it).
const NAME_WIDTH: usize = 34;

/// The trace as text: a header line with `url`, then one line per span and per shown event,
/// each line starting with `indent`.
pub fn render(trace: &Trace, url: &str, indent: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{indent}trace {} ({} spans)  {url}",
        trace.trace_id,
        trace.spans.len()
    );
    let origin = trace.spans.iter().map(|s| s.start_time).min().unwrap_or(0);
    for root in trace.tree() {
        node(&root, origin, indent, "", "", &mut out);
    }
    out
}

/// One span (`lead` before its name, `rest` before what goes under it) and its subtree.
fn node(n: &SpanNode<'_>, origin: u64, indent: &str, lead: &str, rest: &str, out: &mut String) {
    let s = n.span;
    let head = format!("{lead}{}", s.operation_name);
    let pad = NAME_WIDTH.saturating_sub(head.chars().count()).max(1);
    let _ = writeln!(
        out,
        "{indent}{head}{:pad$}{:>8}  {}",
        "",
        duration(s.duration),
        status(s)
    );
    let bar = if n.children.is_empty() {
        "   "
    } else {
        "│  "
    };
    let events: Vec<&Log> = s.logs.iter().filter(|l| event_line(l).is_some()).collect();
    for log in events.iter().take(EVENTS_SHOWN) {
        let at = log.timestamp.saturating_sub(origin);
        let _ = writeln!(
            out,
            "{indent}{rest}{bar}· +{} {}",
            duration(at),
            event_line(log).unwrap_or_default()
        );
    }
    if events.len() > EVENTS_SHOWN {
        let _ = writeln!(
            out,
            "{indent}{rest}{bar}· … {} more events",
            events.len() - EVENTS_SHOWN
        );
    }
    for (i, child) in n.children.iter().enumerate() {
        let last = i + 1 == n.children.len();
        let (l, r) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        node(
            child,
            origin,
            indent,
            &format!("{rest}{l}"),
            &format!("{rest}{r}"),
            out,
        );
    }
}

/// `ok`, or `ERROR <description>` (for the root: plus the exit reason and code).
fn status(s: &Span) -> String {
    let mut text = if s.is_error() || s.tag_str("otel.status_code") == Some("ERROR") {
        match s.tag_str("otel.status_description") {
            Some(d) if !d.is_empty() => format!("ERROR {d}"),
            _ => "ERROR".to_owned(),
        }
    } else {
        "ok".to_owned()
    };
    if let Some(reason) = s.tag_str("bpfexec.exit.reason") {
        let code = s
            .tag("process.exit.code")
            .and_then(TagValue::as_i64)
            .map_or(String::new(), |c| format!(", exit code {c}"));
        let _ = write!(text, "  [{reason}{code}]");
    }
    text
}

/// The text of a key event, `None` for events not shown.
fn event_line(log: &Log) -> Option<String> {
    let s = |k: &str| log.field(k).map(ToString::to_string).unwrap_or_default();
    let line = match log.name()? {
        "exec" => {
            let args = log
                .field("process.command_args")
                .map(|v| command_line(&v.to_string()))
                .unwrap_or_default();
            if args.is_empty() {
                format!("exec {}", s("process.executable.path"))
            } else {
                format!("exec {}: {args}", s("process.executable.path"))
            }
        }
        "signal" => format!(
            "signal {} from {}",
            s("bpfexec.signal"),
            sender(log, "bpfexec.sender")
        ),
        "oom_kill" => format!(
            "oom_kill of the {} process {} (pid {}, {} kB RSS), scope {}",
            s("bpfexec.victim"),
            s("bpfexec.victim.comm"),
            s("bpfexec.victim.pid"),
            s("bpfexec.victim.rss_kb"),
            s("bpfexec.oom.scope")
        ),
        "escape" => format!(
            "escape: pid {} ({}) moved to {}",
            s("process.pid"),
            s("bpfexec.comm"),
            s("bpfexec.cgroup")
        ),
        "leak" => match log.field("bpfexec.leaked") {
            Some(v) => format!("leak: {}", command_line(&v.to_string())),
            None => "leak: outlived the main process".to_owned(),
        },
        "pids_limit" => format!(
            "pids_limit {} reached ({} times)",
            s("bpfexec.pids_max"),
            s("bpfexec.pids_limit.hits")
        ),
        _ => return None,
    };
    Some(line)
}

/// `pid 123 (pkill, other_allocation, uid 0)` from the `<prefix>.*` fields.
fn sender(log: &Log, prefix: &str) -> String {
    let f = |k: &str| {
        log.field(&format!("{prefix}.{k}"))
            .map_or_else(|| "?".to_owned(), ToString::to_string)
    };
    let uid = log
        .field(&format!("{prefix}.uid"))
        .map_or(String::new(), |u| format!(", uid {u}"));
    format!("pid {} ({}, {}{uid})", f("pid"), f("comm"), f("class"))
}

/// An array attribute (Jaeger shows it as a JSON array) as one shell-like line, whitespace
/// collapsed, cut to [`ARGS_WIDTH`] characters.
fn command_line(value: &str) -> String {
    let words: Vec<String> =
        serde_json::from_str::<Vec<String>>(value).unwrap_or_else(|_| vec![value.to_owned()]);
    let joined = words
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if joined.chars().count() > ARGS_WIDTH {
        let cut: String = joined.chars().take(ARGS_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

/// Microseconds as `850µs`, `12.3ms`, `3.04s`.
fn duration(us: u64) -> String {
    let us = us as f64;
    if us < 1e3 {
        format!("{us:.0}µs")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use bpfexec_e2e::peers::jaeger::{Process, RefType, Reference, Tag};

    use super::*;

    fn tag(key: &str, value: TagValue) -> Tag {
        Tag {
            key: key.to_owned(),
            value,
        }
    }

    fn str_tag(key: &str, value: &str) -> Tag {
        tag(key, TagValue::Str(value.to_owned()))
    }

    fn span(id: &str, parent: Option<&str>, name: &str, start: u64, duration: u64) -> Span {
        Span {
            trace_id: "t".repeat(32),
            span_id: format!("{id:0>16}"),
            operation_name: name.to_owned(),
            references: parent
                .map(|p| Reference {
                    ref_type: RefType::ChildOf,
                    trace_id: "t".repeat(32),
                    span_id: format!("{p:0>16}"),
                })
                .into_iter()
                .collect(),
            start_time: start,
            duration,
            tags: Vec::new(),
            logs: Vec::new(),
            process: Process::default(),
        }
    }

    fn log(at: u64, fields: Vec<Tag>) -> Log {
        Log {
            timestamp: at,
            fields,
        }
    }

    fn oom_trace() -> Trace {
        let mut root = span("1", None, "task worker", 1_000, 3_050_000);
        root.tags = vec![
            str_tag("bpfexec.exit.reason", "exited_ok"),
            tag("process.exit.code", TagValue::Int(0)),
        ];
        let start = span("2", Some("1"), "start", 1_000, 8_200);
        let mut sh = span("3", Some("1"), "sh", 9_000, 3_040_000);
        sh.logs = vec![log(
            9_500,
            vec![
                str_tag("event", "exec"),
                str_tag("process.executable.path", "/bin/sh"),
                str_tag(
                    "process.command_args",
                    r#"["/bin/sh","-c","perl -e 1\n  echo   done"]"#,
                ),
            ],
        )];
        let mut perl = span("4", Some("3"), "perl", 20_000, 310_000);
        perl.tags = vec![
            tag("error", TagValue::Bool(true)),
            str_tag("otel.status_code", "ERROR"),
            str_tag("otel.status_description", "OOM-killed"),
        ];
        perl.logs = vec![
            log(
                330_000,
                vec![
                    str_tag("event", "oom_kill"),
                    tag("bpfexec.victim.pid", TagValue::Int(4243)),
                    str_tag("bpfexec.victim.comm", "perl"),
                    tag("bpfexec.victim.rss_kb", TagValue::Int(31_980)),
                    str_tag("bpfexec.victim", "child"),
                    str_tag("bpfexec.oom.scope", "cgroup /nomad/x"),
                ],
            ),
            log(331_000, vec![str_tag("event", "something_else")]),
        ];
        let sleep = span("5", Some("3"), "sleep", 400_000, 1_000_400);
        Trace {
            trace_id: "t".repeat(32),
            spans: vec![perl, sleep, root, start, sh],
        }
    }

    #[test]
    fn draws_the_tree_with_durations_status_and_events() {
        let text = render(&oom_trace(), "http://q/api/traces/ttt", "  ");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "  trace {} (5 spans)  http://q/api/traces/ttt",
                "t".repeat(32)
            )
        );
        assert!(lines[1].starts_with("  task worker "), "{text}");
        assert!(
            lines[1].ends_with("3.05s  ok  [exited_ok, exit code 0]"),
            "{text}"
        );
        assert!(lines[2].starts_with("  ├─ start "), "{text}");
        assert!(lines[2].ends_with("8.2ms  ok"), "{text}");
        assert!(lines[3].starts_with("  └─ sh "), "{text}");
        assert_eq!(
            lines[4],
            "     │  · +8.5ms exec /bin/sh: /bin/sh -c perl -e 1 echo done"
        );
        assert!(lines[5].starts_with("     ├─ perl "), "{text}");
        assert!(lines[5].ends_with("310.0ms  ERROR OOM-killed"), "{text}");
        assert_eq!(
            lines[6],
            "     │     · +329.0ms oom_kill of the child process perl (pid 4243, 31980 kB RSS), scope cgroup /nomad/x"
        );
        assert!(lines[7].starts_with("     └─ sleep "), "{text}");
        assert!(lines[7].ends_with("1.00s  ok"), "{text}");
        assert_eq!(lines.len(), 8, "unknown events are not shown:\n{text}");
    }

    #[test]
    fn signal_names_its_sender() {
        let l = log(
            0,
            vec![
                str_tag("event", "signal"),
                str_tag("bpfexec.signal", "SIGTERM"),
                tag("bpfexec.sender.pid", TagValue::Int(77)),
                str_tag("bpfexec.sender.comm", "pkill"),
                str_tag("bpfexec.sender.class", "other_allocation"),
                tag("bpfexec.sender.uid", TagValue::Int(65534)),
            ],
        );
        assert_eq!(
            event_line(&l).as_deref(),
            Some("signal SIGTERM from pid 77 (pkill, other_allocation, uid 65534)")
        );
    }

    #[test]
    fn long_command_lines_are_cut_and_many_events_counted() {
        let long = format!(r#"["/bin/sh","-c","{}"]"#, "x".repeat(100));
        let cut = command_line(&long);
        assert_eq!(cut.chars().count(), ARGS_WIDTH);
        assert!(cut.ends_with('…'));
        assert_eq!(command_line("plain text"), "plain text");

        let mut s = span("1", None, "task t", 0, 10);
        s.logs = (0..9)
            .map(|i| {
                log(
                    i,
                    vec![
                        str_tag("event", "exec"),
                        str_tag("process.executable.path", "/bin/true"),
                    ],
                )
            })
            .collect();
        let text = render(
            &Trace {
                trace_id: "a".into(),
                spans: vec![s],
            },
            "u",
            "",
        );
        assert!(text.contains("   · … 3 more events\n"), "{text}");
        assert_eq!(text.matches("exec /bin/true").count(), EVENTS_SHOWN);
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(duration(850), "850µs");
        assert_eq!(duration(12_345), "12.3ms");
        assert_eq!(duration(3_040_000), "3.04s");
    }
}
