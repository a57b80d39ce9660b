//! Configuration: hclspec schemas for Nomad, and decoding of the cty-msgpack bytes Nomad sends
//! (maps with every schema key present, nil for absent values).

pub mod duration;
pub mod images;
pub mod logging;
pub mod number;
pub mod overrides;
pub mod plugin;
pub mod ranges;
pub mod resources;
pub mod schema;
pub mod size;
pub mod task;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A map option as Nomad delivers it: a map, or a list of maps (what `x = { … }` in a job
/// becomes), merged in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MapOrList<T> {
    Map(BTreeMap<String, T>),
    List(Vec<BTreeMap<String, T>>),
}

impl<T> MapOrList<T> {
    pub fn into_map(self) -> BTreeMap<String, T> {
        match self {
            Self::Map(m) => m,
            Self::List(l) => l.into_iter().flatten().collect(),
        }
    }
}

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
