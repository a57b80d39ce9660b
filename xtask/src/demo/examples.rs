//! The example jobs in `examples/*.nomad.hcl` and the outcome each one declares in its comment
//! header: `# expect: complete|failed|running [exit_code=N] [signal=N]`, plus any number of
//! `# expect-stdout: text` / `# expect-stderr: text` lines (substrings the task's logs must
//! contain; for `running` jobs, by the time the demo has stopped them).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// How the job's allocation should end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A batch job that ends with client status `complete`.
    Complete,
    /// A batch job that ends with client status `failed`.
    Failed,
    /// A service that reaches `running`; the demo then stops it and it must end `complete`.
    Running,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Running => "running",
        }
    }
}

/// Everything one example promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub outcome: Outcome,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    /// Substrings some task event of the allocation must contain (what only bpfexec can say).
    pub events: Vec<String>,
}

impl Expect {
    /// One-line summary, e.g. `failed exit_code=3`.
    pub fn summary(&self) -> String {
        let mut s = self.outcome.as_str().to_owned();
        if let Some(code) = self.exit_code {
            let _ = write!(s, " exit_code={code}");
        }
        if let Some(sig) = self.signal {
            let _ = write!(s, " signal={sig}");
        }
        s
    }
}

/// One example file.
#[derive(Debug, Clone)]
pub struct Example {
    pub path: PathBuf,
    pub hcl: String,
    pub expect: Expect,
}

impl Example {
    /// The file name without `.nomad.hcl`.
    pub fn name(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        file.trim_end_matches(".nomad.hcl").to_owned()
    }
}

/// Loads every `*.nomad.hcl` in `dir`, sorted by file name.
pub fn load_all(dir: &Path) -> Result<Vec<Example>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".nomad.hcl"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no *.nomad.hcl files in {}", dir.display());
    }
    paths
        .into_iter()
        .map(|path| {
            let hcl = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let expect = parse_expect(&hcl).with_context(|| format!("in {}", path.display()))?;
            Ok(Example { path, hcl, expect })
        })
        .collect()
}

/// Reads the `# expect…` comment lines.
pub fn parse_expect(hcl: &str) -> Result<Expect> {
    let mut expect: Option<Expect> = None;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut events = Vec::new();
    for line in hcl.lines() {
        let Some(comment) = line.trim().strip_prefix('#') else {
            continue;
        };
        let comment = comment.trim();
        if let Some(text) = comment.strip_prefix("expect-stdout:") {
            stdout.push(text.trim().to_owned());
        } else if let Some(text) = comment.strip_prefix("expect-stderr:") {
            stderr.push(text.trim().to_owned());
        } else if let Some(text) = comment.strip_prefix("expect-event:") {
            events.push(text.trim().to_owned());
        } else if let Some(spec) = comment.strip_prefix("expect:") {
            if expect.is_some() {
                bail!("more than one `# expect:` line");
            }
            expect = Some(parse_spec(spec)?);
        }
    }
    let mut expect = expect.context("no `# expect: complete|failed|running` comment line")?;
    expect.stdout = stdout;
    expect.stderr = stderr;
    expect.events = events;
    Ok(expect)
}

fn parse_spec(spec: &str) -> Result<Expect> {
    let mut words = spec.split_whitespace();
    let outcome = match words.next() {
        Some("complete") => Outcome::Complete,
        Some("failed") => Outcome::Failed,
        Some("running") => Outcome::Running,
        other => bail!("`# expect:` needs complete, failed or running, got {other:?}"),
    };
    let mut expect = Expect {
        outcome,
        exit_code: None,
        signal: None,
        stdout: Vec::new(),
        stderr: Vec::new(),
        events: Vec::new(),
    };
    for word in words {
        let (key, value) = word
            .split_once('=')
            .with_context(|| format!("`{word}` is not key=value"))?;
        let value: i64 = value
            .parse()
            .with_context(|| format!("`{word}`: not a number"))?;
        match key {
            "exit_code" => expect.exit_code = Some(value),
            "signal" => expect.signal = Some(value),
            other => bail!("unknown expectation `{other}` (known: exit_code, signal)"),
        }
    }
    Ok(expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header() {
        let e = parse_expect(
            "# A job.\n#\n# expect: failed exit_code=3\n# expect-stdout: a b\n# expect-stderr: c\n# expect-event: OOM-killed\njob \"x\" {}\n",
        )
        .unwrap();
        assert_eq!(e.outcome, Outcome::Failed);
        assert_eq!(e.exit_code, Some(3));
        assert_eq!(e.stdout, vec!["a b".to_owned()]);
        assert_eq!(e.stderr, vec!["c".to_owned()]);
        assert_eq!(e.events, vec!["OOM-killed".to_owned()]);
        assert_eq!(e.summary(), "failed exit_code=3");
    }

    #[test]
    fn rejects_missing_or_bad_header() {
        assert!(parse_expect("job \"x\" {}").is_err());
        assert!(parse_expect("# expect: done").is_err());
        assert!(parse_expect("# expect: complete code=1").is_err());
        assert!(parse_expect("# expect: running\n# expect: running").is_err());
    }

    #[test]
    fn every_shipped_example_declares_an_outcome() {
        let dir = crate::tools::repo_root().join("examples");
        let all = load_all(&dir).unwrap();
        assert!(all.len() >= 9);
    }
}
