//! The plugin's agent-side configuration, decoded from the cty-msgpack bytes Nomad sends in
//! SetConfig, and validated with errors that name the offending field.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

pub const DEFAULT_STATE_DIR: &str = "/run/bpfexec";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Where per-task supervisor state lives (spec, exit records, logs).
    pub state_dir: PathBuf,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Raw {
    state_dir: Option<String>,
}

impl PluginConfig {
    /// Decodes and validates; empty bytes (no config block) give the defaults.
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        if msgpack.is_empty() {
            return Ok(Self::default());
        }
        let raw: Raw = super::decode_msgpack(msgpack, "plugin config")?;
        let mut cfg = Self::default();
        if let Some(dir) = raw.state_dir.filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !dir.is_absolute() {
                return Err(ConfigError::Invalid {
                    field: "state_dir",
                    problem: format!("{:?} is a relative path", dir.display().to_string()),
                    fix: "give an absolute directory, e.g. state_dir = \"/run/bpfexec\"".into(),
                });
            }
            cfg.state_dir = dir;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &rmpv::Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).expect("encode");
        buf
    }

    #[test]
    fn empty_config_gives_defaults() {
        assert_eq!(
            PluginConfig::decode(&[]).expect("decode"),
            PluginConfig::default()
        );
    }

    #[test]
    fn null_state_dir_gives_default_and_value_is_used() {
        let null = enc(&rmpv::Value::Map(vec![(
            "state_dir".into(),
            rmpv::Value::Nil,
        )]));
        assert_eq!(
            PluginConfig::decode(&null).expect("decode").state_dir,
            PathBuf::from(DEFAULT_STATE_DIR)
        );
        let set = enc(&rmpv::Value::Map(vec![(
            "state_dir".into(),
            "/tmp/x".into(),
        )]));
        assert_eq!(
            PluginConfig::decode(&set).expect("decode").state_dir,
            PathBuf::from("/tmp/x")
        );
    }

    #[test]
    fn relative_state_dir_is_rejected_naming_the_field() {
        let bad = enc(&rmpv::Value::Map(vec![(
            "state_dir".into(),
            "relative/dir".into(),
        )]));
        let err = PluginConfig::decode(&bad)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("state_dir"), "{err}");
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let bad = enc(&rmpv::Value::Map(vec![(
            "state_dir".into(),
            rmpv::Value::from(5),
        )]));
        let err = PluginConfig::decode(&bad)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("state_dir"), "{err}");
    }
}
