//! Order statistics of benchmark samples: median (mean of the two middle values for an even
//! count), p90 (nearest rank), min and max.

use serde_json::{Value, json};

/// Summary of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for an empty series; NaNs are ignored.
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            f64::midpoint(v[n / 2 - 1], v[n / 2])
        };
        let rank = (n * 9).div_ceil(10).max(1);
        Some(Self {
            n,
            median,
            p90: v[rank - 1],
            min: v[0],
            max: v[n - 1],
        })
    }

    pub fn to_json(self) -> Value {
        json!({
            "n": self.n,
            "median": round3(self.median),
            "p90": round3(self.p90),
            "min": round3(self.min),
            "max": round3(self.max),
        })
    }

    /// `median / p90 / min / max` cells for a markdown table.
    pub fn cells(self, digits: usize) -> String {
        format!(
            "{} | {:.digits$} | {:.digits$} | {:.digits$} | {:.digits$}",
            self.n, self.median, self.p90, self.min, self.max
        )
    }
}

/// Rounds to 3 decimals for the JSON output.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// JSON of an optional summary (`null` when there were no samples).
pub fn json_of(s: Option<Summary>) -> Value {
    s.map_or(Value::Null, Summary::to_json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_series() {
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert!((s.median - 3.0).abs() < 1e-9);
        assert!((s.min - 1.0).abs() < 1e-9 && (s.max - 5.0).abs() < 1e-9);
        let e = Summary::of(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((e.median - 2.5).abs() < 1e-9);
        assert!((e.p90 - 4.0).abs() < 1e-9);
    }

    #[test]
    fn p90_is_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert!((s.p90 - 9.0).abs() < 1e-9);
        assert!(Summary::of(&[]).is_none());
    }
}
