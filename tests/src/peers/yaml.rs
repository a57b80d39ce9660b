//! Renders a JSON value as block-style YAML for the peers' configuration files (Prometheus and
//! the OpenTelemetry Collector inside Jaeger both read YAML). Every string is written as a
//! JSON-quoted scalar, which is also a valid YAML double-quoted scalar, so no value can change
//! meaning (`on`, `1e3`, `:` and `#` stay strings); keys are bare only when that is unambiguous.

use serde_json::{Map, Value};

/// The YAML document for `value` (an object at the top level gives a mapping).
#[must_use]
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0, false),
        scalar => {
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// Writes the entries of `map` at `indent`; with `inline_first` the first key continues the
/// current line (after a sequence's `- `).
fn write_map(out: &mut String, map: &Map<String, Value>, indent: usize, mut inline_first: bool) {
    for (key, value) in map {
        if inline_first {
            inline_first = false;
        } else {
            pad(out, indent);
        }
        out.push_str(&key_text(key));
        out.push(':');
        write_child(out, value, indent + 2);
    }
}

fn write_seq(out: &mut String, items: &[Value], indent: usize, mut inline_first: bool) {
    for item in items {
        if inline_first {
            inline_first = false;
        } else {
            pad(out, indent);
        }
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push_str("- ");
                write_map(out, map, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push_str("- ");
                write_seq(out, inner, indent + 2, true);
            }
            scalar => {
                out.push_str("- ");
                out.push_str(&scalar_text(scalar));
                out.push('\n');
            }
        }
    }
}

/// The value after `key:`: on the same line for a scalar or an empty collection, else on the
/// following lines at `indent`.
fn write_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, indent, false);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, indent, false);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => Value::String(s.clone()).to_string(),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

/// A key is written bare when it is a plain identifier YAML cannot read as anything else.
fn key_text(key: &str) -> String {
    const RESERVED: [&str; 9] = ["y", "n", "yes", "no", "true", "false", "on", "off", "null"];
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_maps_and_sequences() {
        let doc = json!({
            "global": { "scrape_interval": "1s" },
            "rule_files": [],
            "scrape_configs": [
                { "job_name": "nomad", "params": { "format": ["prometheus"] },
                  "static_configs": [ { "targets": ["127.0.0.1:4646"] } ] }
            ],
            "on": true,
            "port": 8888
        });
        let expected = "\
global:
  scrape_interval: \"1s\"
\"on\": true
port: 8888
rule_files: []
scrape_configs:
  - job_name: \"nomad\"
    params:
      format:
        - \"prometheus\"
    static_configs:
      - targets:
          - \"127.0.0.1:4646\"
";
        assert_eq!(to_yaml(&doc), expected);
    }

    #[test]
    fn strings_are_quoted_and_escaped() {
        let doc = json!({ "a": "x: #y \"z\"\n", "b": {}, "c": [[1, 2]] });
        assert_eq!(
            to_yaml(&doc),
            "a: \"x: #y \\\"z\\\"\\n\"\nb: {}\nc:\n  - - 1\n    - 2\n"
        );
    }
}
