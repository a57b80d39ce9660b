//! Byte sizes in task options, written as systemd writes them (`MemorySwapMax=`,
//! `IOReadBandwidthMax=`): a whole number, optionally followed by `K`, `M`, `G` or `T` (powers of
//! 1024; `KiB`, `MiB`, … and `KB`, `MB`, … mean the same), or `max` for no limit.

use super::ConfigError;

/// A size limit: bytes, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Bytes(u64),
    Max,
}

impl Size {
    /// The value as a cgroup v2 file takes it (`max` or bytes).
    pub fn v2(self) -> String {
        match self {
            Self::Bytes(b) => b.to_string(),
            Self::Max => "max".to_owned(),
        }
    }
}

/// Parses `text` for option `field`.
pub fn parse(field: &'static str, text: &str) -> Result<Size, ConfigError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("max") || t.eq_ignore_ascii_case("infinity") {
        return Ok(Size::Max);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => Some(0),
        "K" | "KB" | "KIB" => Some(10),
        "M" | "MB" | "MIB" => Some(20),
        "G" | "GB" | "GIB" => Some(30),
        "T" | "TB" | "TIB" => Some(40),
        _ => None,
    };
    match (number.parse::<u64>(), shift) {
        (Ok(n), Some(shift)) => n
            .checked_mul(1 << shift)
            .map(Size::Bytes)
            .ok_or_else(|| ConfigError::Invalid {
                field,
                problem: format!("{text:?} is too large"),
                fix: "give a size below 16 EiB, or \"max\" for no limit".into(),
            }),
        _ => Err(ConfigError::Invalid {
            field,
            problem: format!("{text:?} is not a size"),
            fix: "write a whole number of bytes with an optional unit K, M, G or T (powers of 1024), e.g. \"512M\", or \"max\"".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse("x", "0").expect("zero"), Size::Bytes(0));
        assert_eq!(parse("x", "4096").expect("bytes"), Size::Bytes(4096));
        assert_eq!(parse("x", "10K").expect("K"), Size::Bytes(10 << 10));
        assert_eq!(parse("x", "512MiB").expect("MiB"), Size::Bytes(512 << 20));
        assert_eq!(parse("x", " 2G ").expect("G"), Size::Bytes(2 << 30));
        assert_eq!(parse("x", "1 mb").expect("mb"), Size::Bytes(1 << 20));
        assert_eq!(parse("x", "max").expect("max"), Size::Max);
        assert_eq!(Size::Max.v2(), "max");
        assert_eq!(Size::Bytes(7).v2(), "7");
        for bad in ["", "M", "1.5G", "-1", "12X", "99999999999T"] {
            let err = parse("swap_max", bad).expect_err(bad).to_string();
            assert!(err.contains("swap_max"), "{err}");
        }
    }
}
