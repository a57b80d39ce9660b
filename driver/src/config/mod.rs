//! Configuration: hclspec schemas for Nomad, and decoding of the cty-msgpack bytes Nomad sends
//! (maps with every schema key present, nil for absent values).

pub mod duration;
pub mod number;
pub mod plugin;
pub mod ranges;
pub mod schema;
pub mod task;

use serde::de::DeserializeOwned;

/// Builds cty-msgpack-like maps for the config tests.
#[cfg(test)]
pub(crate) mod test_support {
    use rmpv::Value;

    pub fn enc(pairs: Vec<(&str, Value)>) -> Vec<u8> {
        let v = Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect());
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &v).expect("encode");
        buf
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {what}: {detail}")]
    Decode { what: &'static str, detail: String },
    #[error("invalid `{field}`: {problem}; {fix}")]
    Invalid {
        field: &'static str,
        problem: String,
        fix: String,
    },
}

/// Decodes msgpack into `T`, turning serde's message into one that names the field.
pub fn decode_msgpack<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, ConfigError> {
    let value: rmpv::Value =
        rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| ConfigError::Decode {
            what,
            detail: format!("not msgpack: {e}"),
        })?;
    if let rmpv::Value::Map(entries) = &value {
        // Decode field by field first, so a type error can say which field it is about.
        for (key, val) in entries {
            let Some(name) = key.as_str() else { continue };
            let single = rmpv::Value::Map(vec![(key.clone(), val.clone())]);
            if let Err(e) = rmpv::ext::from_value::<T>(single) {
                let msg = e.to_string();
                if !msg.contains("missing field") {
                    return Err(ConfigError::Decode {
                        what,
                        detail: format!("field `{name}`: {msg}"),
                    });
                }
            }
        }
    }
    rmpv::ext::from_value::<T>(value).map_err(|e| ConfigError::Decode {
        what,
        detail: e.to_string(),
    })
}
