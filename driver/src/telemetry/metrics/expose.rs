//! The `/metrics` exposition formats and their negotiation. prometheus-client encodes OpenMetrics
//! text only; the classic Prometheus text format (0.0.4), which older scrapers and humans with
//! curl get by default, is derived from it here, because neither Prometheus crate writes both:
//! the differences are mechanical (counter families are named with their `_total` suffix, no
//! `# UNIT`/`# EOF` lines, no exemplars, `info` and `unknown` become `gauge` and `untyped`).

use std::fmt::Write as _;

/// A negotiated format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// The response's Content-Type.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// Picks the format an `Accept` header prefers (by q-value; OpenMetrics on a tie); classic
    /// text without a header or for anything else.
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Classic;
        };
        let mut best: Option<(f32, Self)> = None;
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|v| v.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/openmetrics-text" => Self::OpenMetrics,
                "text/plain" | "*/*" | "text/*" => Self::Classic,
                _ => continue,
            };
            let better = match best {
                None => true,
                Some((bq, bf)) => {
                    q > bq
                        || ((q - bq).abs() < f32::EPSILON
                            && format == Self::OpenMetrics
                            && bf != format)
                }
            };
            if q > 0.0 && better {
                best = Some((q, format));
            }
        }
        best.map_or(Self::Classic, |(_, f)| f)
    }
}

/// Where a sample line's value starts: after the name and its `{...}` label set, whose values may
/// hold spaces, braces and escaped quotes.
fn value_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && bytes[i] != b'{' && bytes[i] != b' ' {
        i += 1;
    }
    if i < bytes.len() && bytes[i] == b'{' {
        let mut in_str = false;
        i += 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_str => i += 1,
                b'"' => in_str = !in_str,
                b'}' if !in_str => break,
                _ => {}
            }
            i += 1;
        }
        i += 1;
    }
    (i <= bytes.len()).then_some(i)
}

/// The sample line without its exemplar (` # {...} value [timestamp]`).
fn strip_exemplar(line: &str) -> &str {
    match value_start(line) {
        Some(v) => match line[v..].find(" # ") {
            Some(e) => &line[..v + e],
            None => line,
        },
        None => line,
    }
}

/// Converts OpenMetrics text to the classic text format.
#[must_use]
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counter_families: Vec<String> = Vec::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => {
                    counter_families.push(name.to_owned());
                    (format!("{name}_total"), "counter")
                }
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" | "stateset" | "gaugehistogram" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // HELP precedes TYPE: a counter's HELP is renamed once its TYPE is known, below.
            let _ = writeln!(out, "# HELP {name} {help}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = strip_exemplar(line);
        // OpenMetrics `_created` samples of counters have no classic equivalent.
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        let name = &sample[..name_end];
        if let Some(base) = name.strip_suffix("_created")
            && counter_families.iter().any(|c| c == base)
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    rename_counter_help(&out, &counter_families)
}

/// `# HELP x` lines of counter families become `# HELP x_total`, matching their TYPE lines.
fn rename_counter_help(text: &str, counters: &[String]) -> String {
    let mut out = String::with_capacity(text.len() + counters.len() * 6);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.iter().any(|c| c == name) {
                let _ = writeln!(out, "# HELP {name}_total {help}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_prometheus_asks() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2,text/plain;q=0.9")),
            Format::Classic
        );
        assert_eq!(Format::negotiate(Some("application/json")), Format::Classic);
    }

    #[test]
    fn classic_text_from_openmetrics() {
        let om = "# HELP bpfexec_task_exits Task runs ended.\n\
                  # TYPE bpfexec_task_exits counter\n\
                  bpfexec_task_exits_total{job=\"a b\",reason=\"x}# y\"} 3 # {trace_id=\"ab\"} 1.0\n\
                  bpfexec_task_exits_created{job=\"a\"} 1700000000.0\n\
                  # HELP bpfexec_task_start_duration_seconds Start.\n\
                  # TYPE bpfexec_task_start_duration_seconds histogram\n\
                  # UNIT bpfexec_task_start_duration_seconds seconds\n\
                  bpfexec_task_start_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                  # HELP up Up.\n\
                  # TYPE up gauge\n\
                  up 1\n\
                  # EOF\n";
        let classic = to_classic(om);
        assert_eq!(
            classic,
            "# HELP bpfexec_task_exits_total Task runs ended.\n\
             # TYPE bpfexec_task_exits_total counter\n\
             bpfexec_task_exits_total{job=\"a b\",reason=\"x}# y\"} 3\n\
             # HELP bpfexec_task_start_duration_seconds Start.\n\
             # TYPE bpfexec_task_start_duration_seconds histogram\n\
             bpfexec_task_start_duration_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP up Up.\n\
             # TYPE up gauge\n\
             up 1\n"
        );
    }
}
