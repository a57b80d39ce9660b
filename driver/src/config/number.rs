//! cty numbers as Nomad's msgpack carries them: compact ints, float64, or decimal strings.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Number {
    pub fn as_i64(&self, field: &'static str) -> Result<i64, ConfigError> {
        let bad = |what: String| ConfigError::Invalid {
            field,
            problem: what,
            fix: "use a whole number".into(),
        };
        match self {
            Self::Int(i) => Ok(*i),
            Self::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
            Self::Float(f) => Err(bad(format!("{f} is not a whole number"))),
            Self::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| bad(format!("{s:?} is not a whole number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_three_encodings() {
        assert_eq!(Number::Int(5).as_i64("x").expect("int"), 5);
        assert_eq!(Number::Float(7.0).as_i64("x").expect("float"), 7);
        assert_eq!(Number::Text("-3".into()).as_i64("x").expect("text"), -3);
        assert!(Number::Float(1.5).as_i64("x").is_err());
        assert!(Number::Text("0.1".into()).as_i64("x").is_err());
    }
}
