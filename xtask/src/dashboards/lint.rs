//! Structural checks of a dashboard file as Grafana would read it (the committed JSON, not the
//! Rust description), in the spirit of Grafana's dashboard linter: a stable uid, datasources
//! only through datasource variables, a title, description and unit on every panel,
//! `$__rate_interval` in `rate()`/`irate()`/`increase()` and no hard-coded durations, every
//! selector narrowed by every filter variable, variables that exist and reload when the time
//! range changes.

use std::collections::BTreeSet;

use serde_json::Value;

use super::promql;

/// Grafana's built-in variables a query may use.
const BUILTINS: [&str; 5] = ["__rate_interval", "__interval", "__range", "__from", "__to"];

/// Problems found in one dashboard (empty: it passes). `uid` is the uid it must keep.
pub fn check(file: &str, uid: &str, dash: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |msg: String| problems.push(format!("{file}: {msg}"));

    if dash["uid"].as_str() != Some(uid) {
        fail(format!(
            "uid is {} but must stay {uid:?} (links and bookmarks use it)",
            dash["uid"]
        ));
    }
    if dash["title"].as_str().is_none_or(str::is_empty) {
        fail("the dashboard has no title".into());
    }

    let vars = variables(dash, &mut fail);
    let (mut ids, mut titles) = (BTreeSet::new(), BTreeSet::new());
    for panel in dash["panels"].as_array().into_iter().flatten() {
        let what = format!("panel {} (id {})", panel["title"], panel["id"]);
        if !ids.insert(panel["id"].to_string()) {
            fail(format!("{what}: duplicate panel id"));
        }
        if !titles.insert(panel["title"].to_string()) {
            fail(format!("{what}: another panel has the same title"));
        }
        check_panel(panel, &what, &vars, &mut fail);
    }
    for a in dash["annotations"]["list"].as_array().into_iter().flatten() {
        let what = format!("annotation {}", a["name"]);
        check_datasource(&a["datasource"], &vars.datasources, &what, &mut fail);
        check_expr(
            a["expr"].as_str().unwrap_or_default(),
            &vars,
            &what,
            &mut fail,
        );
    }
    problems
}

/// The variables of a dashboard, by kind.
struct Vars {
    datasources: BTreeSet<String>,
    /// Query variables: the label filters every selector must carry.
    filters: Vec<String>,
    all: BTreeSet<String>,
}

/// The dashboard's variables by kind; query variables must reload on time range change and
/// read from the datasource variable.
fn variables(dash: &Value, fail: &mut impl FnMut(String)) -> Vars {
    let list = dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names = |kind: &str| -> Vec<String> {
        list.iter()
            .filter(|v| kind.is_empty() || v["type"] == kind)
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect()
    };
    let vars = Vars {
        datasources: names("datasource").into_iter().collect(),
        filters: names("query"),
        all: names("").into_iter().collect(),
    };
    if !vars.datasources.contains("datasource") {
        fail("no `datasource` variable: panels need a Prometheus datasource picker".into());
    }
    for v in list.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        if v["refresh"] != 2 {
            fail(format!(
                "variable `{name}` must reload on time range change (refresh 2), has {}",
                v["refresh"]
            ));
        }
        let what = format!("variable `{name}`");
        check_datasource(&v["datasource"], &vars.datasources, &what, fail);
    }
    vars
}

fn check_panel(panel: &Value, what: &str, vars: &Vars, fail: &mut impl FnMut(String)) {
    if panel["title"].as_str().is_none_or(str::is_empty) {
        fail(format!("{what}: no title"));
    }
    if panel["type"] == "row" {
        return;
    }
    if panel["description"]
        .as_str()
        .is_none_or(|d| d.trim().is_empty())
    {
        fail(format!("{what}: no description"));
    }
    if panel["fieldConfig"]["defaults"]["unit"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        fail(format!("{what}: no unit (fieldConfig.defaults.unit)"));
    }
    check_datasource(&panel["datasource"], &vars.datasources, what, fail);
    let targets = panel["targets"].as_array().cloned().unwrap_or_default();
    if targets.is_empty() {
        fail(format!("{what}: no query"));
    }
    for t in &targets {
        check_datasource(&t["datasource"], &vars.datasources, what, fail);
        let expr = t["expr"].as_str().unwrap_or_default();
        check_expr(expr, vars, &format!("{what}, query {}", t["refId"]), fail);
    }
    for (path, uid) in datasource_uids(panel) {
        if !is_variable_ref(&uid, &vars.datasources) {
            fail(format!(
                "{what}: hard-coded datasource uid {uid:?} at {path}"
            ));
        }
    }
}

fn is_variable_ref(uid: &str, datasource_vars: &BTreeSet<String>) -> bool {
    uid.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .or_else(|| uid.strip_prefix('$'))
        .is_some_and(|name| datasource_vars.contains(name))
}

fn check_datasource(
    ds: &Value,
    vars: &BTreeSet<String>,
    what: &str,
    fail: &mut impl FnMut(String),
) {
    match ds["uid"].as_str() {
        Some(uid) if is_variable_ref(uid, vars) => {}
        Some(uid) => fail(format!(
            "{what}: datasource uid {uid:?} is not a datasource variable (use ${{datasource}})"
        )),
        None => fail(format!(
            "{what}: no datasource (use {{\"uid\": \"${{datasource}}\"}})"
        )),
    }
}

/// Every `datasource.uid` and `datasourceUid` anywhere below `v`, with its path.
fn datasource_uids(v: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let p = format!("{path}.{k}");
                    if k == "datasourceUid"
                        && let Some(uid) = child.as_str()
                    {
                        out.push((p.clone(), uid.to_owned()));
                    }
                    if k == "datasource"
                        && let Some(uid) = child["uid"].as_str()
                    {
                        out.push((p.clone(), uid.to_owned()));
                    }
                    walk(child, &p, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

fn check_expr(expr: &str, vars: &Vars, what: &str, fail: &mut impl FnMut(String)) {
    if expr.trim().is_empty() {
        fail(format!("{what}: empty query"));
        return;
    }
    let scan = match promql::scan(expr) {
        Ok(scan) => scan,
        Err(e) => {
            fail(format!("{what}: {e:#}"));
            return;
        }
    };
    for r in &scan.ranges {
        let rate_like = matches!(r.function.as_deref(), Some("rate" | "irate" | "increase"));
        if rate_like && r.duration != "$__rate_interval" {
            fail(format!(
                "{what}: {}() over [{}]: use [$__rate_interval]",
                r.function.as_deref().unwrap_or_default(),
                r.duration
            ));
        } else if !r.duration.starts_with("$__") {
            fail(format!(
                "{what}: hard-coded range [{}]: use a Grafana interval variable",
                r.duration
            ));
        }
    }
    for o in &scan.offsets {
        if !o.starts_with("$__") {
            fail(format!("{what}: hard-coded offset {o}: use $__interval"));
        }
    }
    for v in &scan.variables {
        if !vars.all.contains(v) && !BUILTINS.contains(&v.as_str()) {
            fail(format!(
                "{what}: uses ${v}, which is not a variable of the dashboard"
            ));
        }
    }
    for s in &scan.selectors {
        let matchers = s.matchers.as_deref().unwrap_or_default();
        let missing: Vec<&str> = vars
            .filters
            .iter()
            .filter(|name| {
                !matchers.contains(&format!("\"${name}\""))
                    && !matchers.contains(&format!("\"${{{name}}}\""))
            })
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            fail(format!(
                "{what}: selector {} is not narrowed by ${} (every series must follow the dashboard's filters)",
                s.metric,
                missing.join(", $")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dash(expr: &str, panel_uid: &str) -> Value {
        json!({
            "uid": "u",
            "title": "t",
            "templating": {"list": [
                {"type": "datasource", "name": "datasource"},
                {"type": "query", "name": "job", "refresh": 2, "definition": "label_values(x, job)",
                 "datasource": {"type": "prometheus", "uid": "${datasource}"}}
            ]},
            "annotations": {"list": []},
            "panels": [
                {"type": "row", "id": 1, "title": "r"},
                {"type": "timeseries", "id": 2, "title": "p", "description": "d",
                 "datasource": {"type": "prometheus", "uid": panel_uid},
                 "fieldConfig": {"defaults": {"unit": "short"}},
                 "targets": [{"refId": "A", "expr": expr,
                              "datasource": {"type": "prometheus", "uid": "${datasource}"}}]}
            ]
        })
    }

    #[test]
    fn a_good_dashboard_passes() {
        let d = dash(
            r#"sum by (job) (rate(x_total{job=~"$job"}[$__rate_interval]))"#,
            "${datasource}",
        );
        assert_eq!(check("f", "u", &d), Vec::<String>::new());
    }

    #[test]
    fn finds_each_kind_of_problem() {
        let cases = [
            (
                r#"rate(x_total{job=~"$job"}[5m])"#,
                "${datasource}",
                "use [$__rate_interval]",
            ),
            (
                r#"max_over_time(x{job=~"$job"}[1h])"#,
                "${datasource}",
                "hard-coded range",
            ),
            (
                r#"x{job=~"$job"} offset 1h"#,
                "${datasource}",
                "hard-coded offset",
            ),
            ("sum(x_total)", "${datasource}", "not narrowed by $job"),
            (
                r#"x{job=~"$job"} and y{}"#,
                "${datasource}",
                "selector y is not narrowed",
            ),
            (r#"x{job=~"$nope"}"#, "${datasource}", "$nope"),
            (
                r#"x{job=~"$job"}"#,
                "P1809F7CD0C75ACF3",
                "not a datasource variable",
            ),
        ];
        for (expr, uid, expected) in cases {
            let problems = check("f", "u", &dash(expr, uid));
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expr} / {uid}: expected {expected:?} in {problems:?}"
            );
        }
        let mut d = dash(r#"x{job=~"$job"}"#, "${datasource}");
        d["panels"][1]["description"] = json!("");
        d["panels"][1]["fieldConfig"]["defaults"]["unit"] = json!(null);
        d["templating"]["list"][1]["refresh"] = json!(1);
        let problems = check("f", "other", &d).join("\n");
        for expected in [
            "no description",
            "no unit",
            "refresh 2",
            "must stay \"other\"",
        ] {
            assert!(
                problems.contains(expected),
                "expected {expected:?} in {problems}"
            );
        }
    }
}
