//! A job task's `config {}` for `driver = "bpfexec"`, decoded from cty-msgpack and validated.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TaskConfig {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    command: Option<String>,
    args: Option<Vec<String>>,
}

impl TaskConfig {
    pub fn decode(msgpack: &[u8]) -> Result<Self, ConfigError> {
        if msgpack.is_empty() {
            return Err(ConfigError::Invalid {
                field: "command",
                problem: "the task has no driver config".into(),
                fix: "add config { command = \"/path/to/program\" } to the task".into(),
            });
        }
        let raw: Raw = super::decode_msgpack(msgpack, "task config")?;
        let command = raw.command.unwrap_or_default();
        if command.trim().is_empty() {
            return Err(ConfigError::Invalid {
                field: "command",
                problem: "is missing or empty".into(),
                fix: "set config { command = \"/path/to/program\" }".into(),
            });
        }
        Ok(Self {
            command,
            args: raw.args.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn enc(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).expect("encode");
        buf
    }

    #[test]
    fn decodes_command_and_args_with_nulls() {
        let v = Value::Map(vec![
            ("args".into(), Value::Nil),
            ("command".into(), "/bin/true".into()),
        ]);
        let cfg = TaskConfig::decode(&enc(&v)).expect("decode");
        assert_eq!(
            cfg,
            TaskConfig {
                command: "/bin/true".into(),
                args: vec![]
            }
        );
        let v = Value::Map(vec![
            (
                "args".into(),
                Value::Array(vec!["-c".into(), "echo hi".into()]),
            ),
            ("command".into(), "/bin/sh".into()),
        ]);
        assert_eq!(
            TaskConfig::decode(&enc(&v)).expect("decode").args,
            vec!["-c", "echo hi"]
        );
    }

    #[test]
    fn missing_command_names_the_field() {
        let v = Value::Map(vec![
            ("args".into(), Value::Nil),
            ("command".into(), Value::Nil),
        ]);
        let err = TaskConfig::decode(&enc(&v)).expect_err("fails").to_string();
        assert!(err.contains("command"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let v = Value::Map(vec![
            ("args".into(), "notalist".into()),
            ("command".into(), "/bin/true".into()),
        ]);
        let err = TaskConfig::decode(&enc(&v)).expect_err("fails").to_string();
        assert!(err.contains("args"), "{err}");
    }
}
