//! Durations in the plugin configuration, written as Nomad's agent configuration writes them (Go's
//! `time.ParseDuration` units): a whole number followed by `ms`, `s`, `m` or `h`, e.g. `"2s"`;
//! `"0"` alone is zero.

use std::time::Duration;

use super::ConfigError;

/// Parses `text` for option `field`.
pub fn parse(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    };
    match (number.parse::<u64>(), scale) {
        (Ok(n), Some(ms)) => Ok(Duration::from_millis(n.saturating_mul(ms))),
        _ => Err(ConfigError::Invalid {
            field,
            problem: format!("{text:?} is not a duration"),
            fix: "write a whole number with a unit, e.g. \"2s\" or \"500ms\" (\"0\" turns it off)"
                .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("x", "0").expect("zero"), Duration::ZERO);
        assert_eq!(parse("x", "0s").expect("zero s"), Duration::ZERO);
        assert_eq!(parse("x", "500ms").expect("ms"), Duration::from_millis(500));
        assert_eq!(parse("x", " 2s ").expect("s"), Duration::from_secs(2));
        assert_eq!(parse("x", "1m").expect("m"), Duration::from_secs(60));
        assert_eq!(parse("x", "1h").expect("h"), Duration::from_secs(3600));
        for bad in ["", "2", "s", "1.5s", "-1s", "2 s", "2sec"] {
            let err = parse("escape_check_interval", bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("escape_check_interval"), "{err}");
        }
    }
}
