//! A minimal YAML writer for the files we generate (Prometheus rule files and promtool test
//! files): block mappings and sequences, strings as literal blocks when they span lines and
//! double-quoted otherwise (a JSON string is a valid YAML double-quoted scalar).

use std::fmt::Write as _;

/// A YAML node.
pub enum Yaml {
    Str(String),
    /// A scalar written as is (numbers, durations such as `5m`, plain words).
    Plain(String),
    Map(Vec<(&'static str, Yaml)>),
    /// A mapping of label names to (quoted) values.
    Labels(Vec<(String, String)>),
    List(Vec<Yaml>),
}

impl Yaml {
    pub fn str(s: impl Into<String>) -> Self {
        Self::Str(s.into())
    }
    pub fn plain(s: impl Into<String>) -> Self {
        Self::Plain(s.into())
    }
}

/// The document, with `header` as leading comment lines.
pub fn document(header: &str, root: &Yaml) -> String {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    write_node(&mut out, root, 0);
    out
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

/// Writes a mapping or sequence at `indent`, each entry on its own line(s).
fn write_node(out: &mut String, node: &Yaml, indent: usize) {
    match node {
        Yaml::Map(entries) => {
            for (key, value) in entries {
                out.push_str(&pad(indent));
                out.push_str(key);
                out.push(':');
                write_value(out, value, indent);
            }
        }
        Yaml::Labels(labels) => {
            for (key, value) in labels {
                out.push_str(&pad(indent));
                out.push_str(key);
                out.push(':');
                write_value(out, &Yaml::Str(value.clone()), indent);
            }
        }
        Yaml::List(items) => {
            for item in items {
                out.push_str(&pad(indent));
                out.push_str("- ");
                match item {
                    Yaml::Map(_) | Yaml::Labels(_) if !is_empty(item) => {
                        // The first entry goes on the dash's line, the rest aligned under it.
                        let mut first = String::new();
                        write_node(&mut first, item, indent + 2);
                        out.push_str(first.trim_start());
                    }
                    _ => {
                        let mut scalar = String::new();
                        write_value(&mut scalar, item, indent);
                        out.push_str(scalar.trim_start());
                    }
                }
            }
        }
        scalar => write_value(out, scalar, indent),
    }
}

/// Writes what follows `key:` (or `- `): an inline scalar and newline, or a nested block.
fn write_value(out: &mut String, value: &Yaml, indent: usize) {
    match value {
        Yaml::Str(s) => {
            if s.contains('\n') && literal_ok(s) {
                out.push_str(" |-\n");
                for line in s.trim_end_matches('\n').lines() {
                    if line.is_empty() {
                        out.push('\n');
                    } else {
                        let _ = writeln!(out, "{}{line}", pad(indent + 2));
                    }
                }
            } else {
                let quoted = serde_json::to_string(s).unwrap_or_default();
                let _ = writeln!(out, " {quoted}");
            }
        }
        Yaml::Plain(s) => {
            let _ = writeln!(out, " {s}");
        }
        Yaml::Map(_) | Yaml::Labels(_) if is_empty(value) => out.push_str(" {}\n"),
        Yaml::List(items) if items.is_empty() => out.push_str(" []\n"),
        Yaml::Map(_) | Yaml::Labels(_) | Yaml::List(_) => {
            out.push('\n');
            write_node(out, value, indent + 2);
        }
    }
}

fn is_empty(node: &Yaml) -> bool {
    match node {
        Yaml::Map(m) => m.is_empty(),
        Yaml::Labels(l) => l.is_empty(),
        Yaml::List(l) => l.is_empty(),
        Yaml::Str(_) | Yaml::Plain(_) => false,
    }
}

/// A literal block keeps the text exactly when no line has leading or trailing blanks that
/// YAML would read differently, and there are no tabs.
fn literal_ok(s: &str) -> bool {
    let first_indented = s.lines().next().is_some_and(|l| l.starts_with(' '));
    !first_indented && !s.contains('\t') && s.lines().all(|l| l == l.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_blocks_and_scalars() {
        let doc = Yaml::Map(vec![(
            "groups",
            Yaml::List(vec![Yaml::Map(vec![
                ("name", Yaml::str("g")),
                (
                    "rules",
                    Yaml::List(vec![Yaml::Map(vec![
                        ("alert", Yaml::plain("A")),
                        ("expr", Yaml::str("x\n> 0")),
                        ("for", Yaml::plain("5m")),
                        (
                            "labels",
                            Yaml::Map(vec![("severity", Yaml::str("warning"))]),
                        ),
                    ])]),
                ),
            ])]),
        )]);
        let text = document("generated", &doc);
        assert_eq!(
            text,
            "# generated\ngroups:\n  - name: \"g\"\n    rules:\n      - alert: A\n        expr: |-\n          x\n          > 0\n        for: 5m\n        labels:\n          severity: \"warning\"\n"
        );
    }

    #[test]
    fn quotes_what_a_literal_block_would_change() {
        let doc = Yaml::Map(vec![
            ("a", Yaml::str(" lead\nx")),
            ("b", Yaml::str("q\"{{ $x }}")),
        ]);
        assert_eq!(
            document("", &doc),
            "a: \" lead\\nx\"\nb: \"q\\\"{{ $x }}\"\n"
        );
    }
}
