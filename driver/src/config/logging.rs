//! The task's `logging { driver = … }` block, as the systemd transient-unit driver has it:
//! `"nomad"` (the default: stdout and stderr go to the FIFOs Nomad's logmon reads) or
//! `"journald"` (they go to the systemd journal, with the task's identity as journal fields).

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogDriver {
    #[default]
    Nomad,
    Journald,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBlock {
    driver: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    logging: Option<RawBlock>,
}

impl Raw {
    pub fn validate(self) -> Result<LogDriver, ConfigError> {
        match self
            .logging
            .and_then(|b| b.driver)
            .filter(|d| !d.is_empty())
            .as_deref()
        {
            None | Some("nomad") => Ok(LogDriver::Nomad),
            Some("journald") => Ok(LogDriver::Journald),
            Some(other) => Err(ConfigError::Invalid {
                field: "logging.driver",
                problem: format!("{other:?} is not a log driver"),
                fix: "use logging { driver = \"nomad\" } (the default) or logging { driver = \"journald\" }".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(driver: Option<&str>) -> Raw {
        Raw {
            logging: Some(RawBlock {
                driver: driver.map(str::to_owned),
            }),
        }
    }

    #[test]
    fn drivers() {
        assert_eq!(Raw::default().validate().expect("none"), LogDriver::Nomad);
        assert_eq!(with(None).validate().expect("empty"), LogDriver::Nomad);
        assert_eq!(
            with(Some("nomad")).validate().expect("nomad"),
            LogDriver::Nomad
        );
        assert_eq!(
            with(Some("journald")).validate().expect("journald"),
            LogDriver::Journald
        );
        let err = with(Some("syslog"))
            .validate()
            .expect_err("bad")
            .to_string();
        assert!(err.contains("logging.driver"), "{err}");
    }
}
