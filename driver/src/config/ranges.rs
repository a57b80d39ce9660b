//! Id ranges as exec writes them in `denied_host_uids` / `denied_host_gids`: `0-999,1001,2000-2100`.

use super::ConfigError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdRanges(Vec<(u32, u32)>);

impl IdRanges {
    pub fn parse(field: &'static str, text: &str) -> Result<Self, ConfigError> {
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || ConfigError::Invalid {
                field,
                problem: format!("{part:?} is not an id or a range"),
                fix: format!(
                    "write ids and ranges separated by commas, e.g. {field} = \"0-999,1001\""
                ),
            };
            let (lo, hi) = if let Some((a, b)) = part.split_once('-') {
                (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                )
            } else {
                let v: u32 = part.parse().map_err(|_| bad())?;
                (v, v)
            };
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        Ok(Self(ranges))
    }

    pub fn contains(&self, id: u32) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&id))
    }

    /// The lowest id of `lo..=hi` these ranges contain, if any.
    pub fn first_in(&self, lo: u32, hi: u32) -> Option<u32> {
        self.0
            .iter()
            .filter(|(a, b)| *a <= hi && *b >= lo)
            .map(|(a, _)| (*a).max(lo))
            .min()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_and_ranges() {
        let r = IdRanges::parse("denied_host_uids", "0-999, 1001,2000-2000").expect("parse");
        assert!(r.contains(0) && r.contains(999) && r.contains(1001) && r.contains(2000));
        assert!(!r.contains(1000) && !r.contains(65534));
        assert!(IdRanges::parse("x", "").expect("empty").is_empty());
        assert_eq!(r.first_in(500, 2000), Some(500));
        assert_eq!(r.first_in(1000, 1000), None);
        assert_eq!(r.first_in(1000, 1001), Some(1001));
    }

    #[test]
    fn bad_ranges_name_the_field() {
        for bad in ["a-b", "5-1", "1-", "x"] {
            let err = IdRanges::parse("denied_host_gids", bad)
                .expect_err("bad")
                .to_string();
            assert!(err.contains("denied_host_gids"), "{err}");
        }
    }
}
