//! Prometheus rule files (recording and alerting rules, the `groups:` format of
//! `rule_files`) as typed values, their YAML, and the expansion of the alert annotation
//! templates we allow (`{{ $labels.<name> }}` and `{{ $value }}` only) for promtool's expected
//! alerts.

use anyhow::{Result, bail};

use super::yaml::Yaml;

pub struct Group {
    pub name: &'static str,
    pub rules: Vec<Rule>,
}

pub enum Rule {
    Record { record: &'static str, expr: String },
    Alert(Alert),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

pub struct Alert {
    pub name: &'static str,
    pub expr: String,
    /// How long the condition must hold (`0m`: fire at the first evaluation).
    pub for_: &'static str,
    pub severity: Severity,
    /// One line: what happened, naming the task or client.
    pub summary: &'static str,
    /// What happened, why it matters and what to do.
    pub description: &'static str,
}

pub fn groups_yaml(groups: &[Group]) -> Yaml {
    Yaml::Map(vec![(
        "groups",
        Yaml::List(
            groups
                .iter()
                .map(|g| {
                    Yaml::Map(vec![
                        ("name", Yaml::plain(g.name)),
                        ("rules", Yaml::List(g.rules.iter().map(rule_yaml).collect())),
                    ])
                })
                .collect(),
        ),
    )])
}

fn rule_yaml(rule: &Rule) -> Yaml {
    match rule {
        Rule::Record { record, expr } => Yaml::Map(vec![
            ("record", Yaml::plain(*record)),
            ("expr", Yaml::str(expr.clone())),
        ]),
        Rule::Alert(a) => Yaml::Map(vec![
            ("alert", Yaml::plain(a.name)),
            ("expr", Yaml::str(a.expr.clone())),
            ("for", Yaml::plain(a.for_)),
            (
                "labels",
                Yaml::Map(vec![("severity", Yaml::plain(a.severity.as_str()))]),
            ),
            (
                "annotations",
                Yaml::Map(vec![
                    ("summary", Yaml::str(a.summary)),
                    ("description", Yaml::str(a.description)),
                ]),
            ),
        ]),
    }
}

/// Expands an annotation template for an alert with these labels and value, as Prometheus
/// does for the two forms we use; anything else (or a label the alert does not carry) is an
/// error, so a typo in a template fails the generator instead of rendering empty.
pub fn expand(template: &str, labels: &[(String, String)], value: f64) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find("}}") else {
            bail!("unclosed `{{{{` in annotation template: {template}");
        };
        let inner = rest[start + 2..start + len].trim();
        if inner == "$value" {
            out.push_str(&format_value(value));
        } else if let Some(name) = inner.strip_prefix("$labels.") {
            let Some((_, v)) = labels.iter().find(|(k, _)| *k == name) else {
                bail!("annotation template uses label `{name}`, which the alert does not carry");
            };
            out.push_str(v);
        } else {
            bail!(
                "annotation template uses `{{{{ {inner} }}}}`: only `$labels.<name>` and `$value` are used"
            );
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Go's `%v` of a float64 for the values our alerts carry (whole numbers and short decimals).
fn format_value(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_labels_and_value_and_refuses_the_rest() {
        let labels = [("task".to_owned(), "web".to_owned())];
        assert_eq!(
            expand("{{ $labels.task }} x{{$value}}", &labels, 2.0).unwrap(),
            "web x2"
        );
        assert!(expand("{{ $labels.job }}", &labels, 1.0).is_err());
        assert!(expand("{{ $value | humanize }}", &labels, 1.0).is_err());
        assert!(expand("{{ $value", &labels, 1.0).is_err());
    }
}
