//! The shipped dashboards (`dashboards/dashboards/*.json`) as Grafana would run them: their
//! template variables (with the `label_values(...)` queries that list their choices) and every
//! panel and annotation query, with Grafana's variable interpolation (`$var`, `${var}`;
//! multi-value variables as a regex alternation, values regex-escaped), so the e2e suite can
//! run them against a real Prometheus. Also the paths of the shipped rule files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `dashboards/` at the repository root.
#[must_use]
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(
        || PathBuf::from("dashboards"),
        |root| root.join("dashboards"),
    )
}

/// The shipped recording and alerting rule files.
#[must_use]
pub fn rule_files() -> Vec<PathBuf> {
    vec![
        dir().join("rules/bpfexec-rules.yml"),
        dir().join("alerts/bpfexec-alerts.yml"),
    ]
}

/// A template variable.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    /// `datasource` or `query`.
    pub kind: String,
    /// For query variables: `label_values(<series selector>, <label>)`.
    pub definition: String,
}

impl Variable {
    /// The series selector and label of a `label_values(selector, label)` query.
    pub fn label_values(&self) -> Result<(String, String)> {
        let inner = self
            .definition
            .trim()
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .with_context(|| {
                format!(
                    "variable {}: not a label_values() query: {}",
                    self.name, self.definition
                )
            })?;
        let (selector, label) = inner
            .rsplit_once(',')
            .with_context(|| format!("variable {}: no label in {}", self.name, self.definition))?;
        Ok((selector.trim().to_owned(), label.trim().to_owned()))
    }
}

/// One query of a panel (or an annotation, whose panel is `annotation <name>`).
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    /// Tables and stats run instant queries; graphs and annotations range queries.
    pub instant: bool,
}

/// A dashboard file as Grafana reads it.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub file: String,
    pub uid: String,
    pub variables: Vec<Variable>,
    pub queries: Vec<PanelQuery>,
}

impl Dashboard {
    /// Reads `dashboards/dashboards/<file>`.
    pub fn load(file: &str) -> Result<Self> {
        let path = dir().join("dashboards").join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let variables = json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| Variable {
                name: str_of(&v["name"]),
                kind: str_of(&v["type"]),
                definition: str_of(&v["definition"]),
            })
            .collect();
        let mut queries = Vec::new();
        for panel in json["panels"].as_array().into_iter().flatten() {
            let instant = matches!(panel["type"].as_str(), Some("table" | "stat"));
            for t in panel["targets"].as_array().into_iter().flatten() {
                queries.push(PanelQuery {
                    panel: str_of(&panel["title"]),
                    ref_id: str_of(&t["refId"]),
                    expr: str_of(&t["expr"]),
                    instant,
                });
            }
        }
        for a in json["annotations"]["list"].as_array().into_iter().flatten() {
            queries.push(PanelQuery {
                panel: format!("annotation {}", str_of(&a["name"])),
                ref_id: "A".to_owned(),
                expr: str_of(&a["expr"]),
                instant: false,
            });
        }
        if queries.is_empty() {
            bail!("{} has no queries", path.display());
        }
        Ok(Self {
            file: file.to_owned(),
            uid: str_of(&json["uid"]),
            variables,
            queries,
        })
    }

    /// The filter (query) variables, in picker order.
    #[must_use]
    pub fn filters(&self) -> Vec<&Variable> {
        self.variables
            .iter()
            .filter(|v| v.kind == "query")
            .collect()
    }
}

/// A multi-value variable's value in a regex matcher, as Grafana formats it: one value
/// regex-escaped, several as `(a|b)`.
#[must_use]
pub fn regex_value(values: &[String]) -> String {
    let escaped: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
    match escaped.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join("|")),
    }
}

fn regex_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            // Grafana doubles the backslash inside a PromQL string literal.
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// Replaces `$name` and `${name}` by `values[name]` (longest names first, so `$__interval`
/// does not eat `$__interval_ms`); unknown variables are left as they are.
#[must_use]
pub fn fill(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_owned();
    for name in names {
        out = out.replace(&format!("${{{name}}}"), &values[name]);
        out = out.replace(&format!("${name}"), &values[name]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_variables_like_grafana() {
        let mut v = BTreeMap::new();
        v.insert("job".to_owned(), regex_value(&["a-1".into(), "b.2".into()]));
        v.insert("__interval".to_owned(), "2s".to_owned());
        v.insert("__rate_interval".to_owned(), "8s".to_owned());
        assert_eq!(
            fill(
                r#"rate(x{exported_job=~"$job"}[$__rate_interval]) - x offset ${__interval}"#,
                &v
            ),
            r#"rate(x{exported_job=~"(a-1|b\\.2)"}[8s]) - x offset 2s"#
        );
    }

    #[test]
    fn the_shipped_dashboards_load() {
        for file in ["bpfexec-tasks.json", "bpfexec-observer.json"] {
            let d = Dashboard::load(file).unwrap();
            assert!(!d.filters().is_empty(), "{file}");
            for f in d.filters() {
                f.label_values().unwrap();
            }
        }
    }
}
