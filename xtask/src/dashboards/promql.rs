//! Just enough PromQL scanning for the dashboard checks: the metric selectors of an expression
//! (with their matcher text), its range and offset durations (with the function a range is
//! the argument of) and the template variables it references. Strings are skipped, label lists
//! of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` are not selectors.

use anyhow::{Context as _, Result, bail};

/// `metric{matchers}` as written; `matchers` is the text between the braces.
#[derive(Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Option<String>,
}

/// A range `[...]` and the function call it is an argument of.
#[derive(Debug, PartialEq, Eq)]
pub struct Range {
    pub function: Option<String>,
    pub duration: String,
}

#[derive(Debug, Default)]
pub struct Scan {
    pub selectors: Vec<Selector>,
    pub ranges: Vec<Range>,
    pub offsets: Vec<String>,
    /// `$name` and `${name}` references (names without `$`, `${`, `}`).
    pub variables: Vec<String>,
}

const LABEL_LIST_KEYWORDS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const OPERATOR_KEYWORDS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];
/// Aggregations may put `by (...)` between their name and their argument.
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Scans one expression (template variables may appear anywhere a duration or value can).
pub fn scan(expr: &str) -> Result<Scan> {
    let mut scanner = Scanner {
        chars: expr.chars().collect(),
        out: Scan::default(),
        calls: Vec::new(),
    };
    let mut i = 0;
    while i < scanner.chars.len() {
        i = scanner.step(i)?;
    }
    if !scanner.calls.is_empty() {
        bail!("unbalanced `(` in `{expr}`");
    }
    Ok(scanner.out)
}

struct Scanner {
    chars: Vec<char>,
    out: Scan,
    /// Open parentheses: the function each belongs to (`None`: plain grouping).
    calls: Vec<Option<String>>,
}

impl Scanner {
    fn text(&self) -> String {
        self.chars.iter().collect()
    }

    /// Scans the token at `i`; returns the index after it.
    fn step(&mut self, i: usize) -> Result<usize> {
        let c = self.chars[i];
        if c == '"' || c == '\'' || c == '`' {
            return skip_string(&self.chars, i);
        }
        if c == '$' {
            let (name, next) = variable(&self.chars, i)?;
            self.out.variables.push(name);
            return Ok(next);
        }
        if c.is_ascii_digit()
            || (c == '.' && self.chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let mut j = i;
            while j < self.chars.len()
                && (self.chars[j].is_ascii_alphanumeric() || self.chars[j] == '.')
            {
                j += 1;
            }
            return Ok(j);
        }
        if is_ident_start(c) {
            return self.word(i);
        }
        match c {
            '(' => self.calls.push(None),
            ')' => {
                self.calls
                    .pop()
                    .with_context(|| format!("unbalanced `)` in `{}`", self.text()))?;
            }
            '{' => bail!("a selector without a metric name in `{}`", self.text()),
            '[' => {
                let close = skip_to_close(&self.chars, i, '[', ']')?;
                let duration: String = self.chars[i + 1..close - 1].iter().collect();
                if duration.starts_with('$') {
                    let (name, _) = variable(&self.chars, i + 1)?;
                    self.out.variables.push(name);
                }
                self.out.ranges.push(Range {
                    function: self.calls.last().cloned().flatten(),
                    duration,
                });
                return Ok(close);
            }
            _ => {}
        }
        Ok(i + 1)
    }

    /// A word at `start`: a keyword, a function call, or a metric selector.
    fn word(&mut self, start: usize) -> Result<usize> {
        let chars = &self.chars;
        let mut i = start;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        let next = chars.get(j).copied();
        if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
            return if next == Some('(') {
                skip_to_close(chars, j, '(', ')')
            } else {
                Ok(i)
            };
        }
        if word == "offset" {
            let end = chars[j..]
                .iter()
                .position(|c| c.is_whitespace() || *c == ')' || *c == ',')
                .map_or(chars.len(), |p| j + p);
            let duration: String = chars[j..end].iter().collect();
            if duration.starts_with('$') {
                let (name, _) = variable(chars, j)?;
                self.out.variables.push(name);
            }
            self.out.offsets.push(duration);
            return Ok(end);
        }
        // `sum by (x) (...)`: the label list is skipped next, then its `(` opens a call.
        let aggregation_first = AGGREGATIONS.contains(&word.as_str()) && next != Some('(');
        if OPERATOR_KEYWORDS.contains(&word.as_str()) || aggregation_first {
            return Ok(i);
        }
        match next {
            Some('(') => {
                self.calls.push(Some(word));
                Ok(j + 1)
            }
            Some('{') => {
                let close = skip_to_close(chars, j, '{', '}')?;
                let inner: String = chars[j + 1..close - 1].iter().collect();
                scan_matcher_variables(&inner, &mut self.out)?;
                self.out.selectors.push(Selector {
                    metric: word,
                    matchers: Some(inner),
                });
                Ok(close)
            }
            _ => {
                self.out.selectors.push(Selector {
                    metric: word,
                    matchers: None,
                });
                Ok(i)
            }
        }
    }
}

/// Template variables inside a matcher block's strings (`job=~"$job"`).
fn scan_matcher_variables(inner: &str, out: &mut Scan) -> Result<()> {
    let chars: Vec<char> = inner.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let (name, next) = variable(&chars, i)?;
            out.variables.push(name);
            i = next;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// `$name` or `${name}` (or `${name:format}`) at `i`; returns the name and the index after it.
fn variable(chars: &[char], i: usize) -> Result<(String, usize)> {
    if chars.get(i + 1) == Some(&'{') {
        let close = skip_to_close(chars, i + 1, '{', '}')?;
        let inner: String = chars[i + 2..close - 1].iter().collect();
        let name = inner.split(':').next().unwrap_or_default().to_owned();
        return Ok((name, close));
    }
    let mut j = i + 1;
    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
        j += 1;
    }
    if j == i + 1 {
        bail!("a lone `$` in a query");
    }
    Ok((chars[i + 1..j].iter().collect(), j))
}

/// Index just past the string literal starting at `i`.
fn skip_string(chars: &[char], i: usize) -> Result<usize> {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        if chars[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            return Ok(j + 1);
        }
        j += 1;
    }
    bail!("unterminated string in a query")
}

/// Index just past the bracket that closes the one at `i` (strings inside are skipped).
fn skip_to_close(chars: &[char], i: usize, open: char, close: char) -> Result<usize> {
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        let c = chars[j];
        if c == '"' || c == '\'' || c == '`' {
            j = skip_string(chars, j)?;
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Ok(j + 1);
            }
        }
        j += 1;
    }
    bail!("unbalanced `{open}` in a query")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_selectors_ranges_offsets_and_variables() {
        let s = scan(
            r#"sum by (job, le) (rate(a_total{job=~"$job", x="}"}[$__rate_interval])) / on (job) group_left () b offset $__interval and histogram_quantile(0.9, c{d="${ds:raw}"}[5m])"#,
        )
        .unwrap();
        assert_eq!(
            s.selectors,
            vec![
                Selector {
                    metric: "a_total".into(),
                    matchers: Some(r#"job=~"$job", x="}""#.into())
                },
                Selector {
                    metric: "b".into(),
                    matchers: None
                },
                Selector {
                    metric: "c".into(),
                    matchers: Some(r#"d="${ds:raw}""#.into())
                },
            ]
        );
        assert_eq!(
            s.ranges,
            vec![
                Range {
                    function: Some("rate".into()),
                    duration: "$__rate_interval".into()
                },
                Range {
                    function: Some("histogram_quantile".into()),
                    duration: "5m".into()
                },
            ]
        );
        assert_eq!(s.offsets, vec!["$__interval".to_owned()]);
        assert_eq!(
            s.variables,
            vec!["job", "__rate_interval", "__interval", "ds"]
        );
    }

    #[test]
    fn refuses_unbalanced_queries() {
        assert!(scan("sum(rate(x[1m])").is_err());
        assert!(scan("x{a=\"b\"").is_err());
        assert!(scan("x)").is_err());
    }
}
