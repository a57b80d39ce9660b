//! Task options for cgroup limits beyond Nomad's `resources` block, named after the systemd unit
//! properties an operator moving from the systemd transient-unit driver knows: `swap_max`
//! (MemorySwapMax=), `pids_max` (TasksMax=), `io_weight` (IOWeight=) and the per-device
//! `io_{read,write}_{bandwidth,iops}_max` (IOReadBandwidthMax= …), devices named by path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::number::Number;
use super::size::{self, Size};
use super::{ConfigError, MapOrList};

/// Per-device IO limits; `None` leaves that limit off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceIo {
    pub read_bps: Option<Size>,
    pub write_bps: Option<Size>,
    pub read_iops: Option<u64>,
    pub write_iops: Option<u64>,
}

/// The limits, validated; all off by default (today's behaviour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraLimits {
    /// v2 `memory.swap.max`; v1 `memory.memsw.limit_in_bytes` = memory limit + this.
    pub swap_max: Option<Size>,
    /// v2 `pids.max`; v1 `pids.max` in the task's pids cgroup.
    pub pids_max: Option<u64>,
    /// v2 `io.weight` (1-10000); v1 `blkio.weight` scaled to 10-1000.
    pub io_weight: Option<u64>,
    /// Host path (a block device, or a file whose filesystem's disk is meant) → limits.
    pub io_devices: BTreeMap<String, DeviceIo>,
}

impl ExtraLimits {
    /// True when any IO option is set (v1 then needs a blkio cgroup for the task).
    pub fn has_io(&self) -> bool {
        self.io_weight.is_some() || !self.io_devices.is_empty()
    }
}

/// The options as Nomad's msgpack carries them.
#[derive(Debug, Default, Deserialize)]
pub struct Raw {
    swap_max: Option<String>,
    pids_max: Option<Number>,
    io_weight: Option<Number>,
    io_read_bandwidth_max: Option<MapOrList<String>>,
    io_write_bandwidth_max: Option<MapOrList<String>>,
    io_read_iops_max: Option<MapOrList<Number>>,
    io_write_iops_max: Option<MapOrList<Number>>,
}

fn bad(field: &'static str, problem: String, fix: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem,
        fix: fix.to_owned(),
    }
}

fn positive(field: &'static str, n: &Number, fix: &str) -> Result<u64, ConfigError> {
    let v = n.as_i64(field)?;
    u64::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| bad(field, format!("{v} is not a positive number"), fix))
}

fn device_path(field: &'static str, path: &str) -> Result<String, ConfigError> {
    if path.starts_with('/') {
        Ok(path.to_owned())
    } else {
        Err(bad(
            field,
            format!("{path:?} is not an absolute path"),
            "name each device by its absolute host path, e.g. { \"/dev/sda\" = \"10M\" }",
        ))
    }
}

impl Raw {
    pub fn validate(self) -> Result<ExtraLimits, ConfigError> {
        let mut out = ExtraLimits {
            swap_max: self
                .swap_max
                .filter(|s| !s.trim().is_empty())
                .map(|s| size::parse("swap_max", &s))
                .transpose()?,
            ..ExtraLimits::default()
        };
        if let Some(n) = &self.pids_max {
            out.pids_max = Some(positive(
                "pids_max",
                n,
                "give the most processes and threads the task may have at once, e.g. pids_max = 256",
            )?);
        }
        if let Some(n) = &self.io_weight {
            let w = n.as_i64("io_weight")?;
            if !(1..=10_000).contains(&w) {
                return Err(bad(
                    "io_weight",
                    format!("{w} is out of range"),
                    "use a weight from 1 to 10000 (100 is the kernel's default)",
                ));
            }
            out.io_weight = Some(w as u64);
        }
        for (field, map, write) in [
            ("io_read_bandwidth_max", self.io_read_bandwidth_max, false),
            ("io_write_bandwidth_max", self.io_write_bandwidth_max, true),
        ] {
            for (path, text) in map.map(MapOrList::into_map).unwrap_or_default() {
                let limit = size::parse(field, &text)?;
                if limit == Size::Bytes(0) {
                    return Err(bad(
                        field,
                        format!("{path:?} = {text:?} would stop all IO"),
                        "give a positive rate in bytes per second, e.g. \"10M\"",
                    ));
                }
                let dev = out
                    .io_devices
                    .entry(device_path(field, &path)?)
                    .or_default();
                *if write {
                    &mut dev.write_bps
                } else {
                    &mut dev.read_bps
                } = Some(limit);
            }
        }
        for (field, map, write) in [
            ("io_read_iops_max", self.io_read_iops_max, false),
            ("io_write_iops_max", self.io_write_iops_max, true),
        ] {
            for (path, n) in map.map(MapOrList::into_map).unwrap_or_default() {
                let iops = positive(
                    field,
                    &n,
                    "give a positive number of operations per second, e.g. { \"/dev/sda\" = 1000 }",
                )?;
                let dev = out
                    .io_devices
                    .entry(device_path(field, &path)?)
                    .or_default();
                *if write {
                    &mut dev.write_iops
                } else {
                    &mut dev.read_iops
                } = Some(iops);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::task::TaskConfig;
    use crate::config::test_support::enc;
    use rmpv::Value;

    fn decode(pairs: Vec<(&str, Value)>) -> Result<TaskConfig, ConfigError> {
        let mut all = vec![("command", Value::from("/bin/true"))];
        all.extend(pairs);
        TaskConfig::decode(&enc(all))
    }

    #[test]
    fn absent_options_change_nothing() {
        let cfg = decode(vec![("swap_max", Value::Nil), ("pids_max", Value::Nil)]).expect("ok");
        assert_eq!(cfg.limits, ExtraLimits::default());
        assert!(!cfg.limits.has_io());
    }

    #[test]
    fn values_are_decoded() {
        let cfg = decode(vec![
            ("swap_max", "64M".into()),
            ("pids_max", Value::from(32)),
            ("io_weight", Value::from(250)),
            (
                "io_read_bandwidth_max",
                Value::Map(vec![("/dev/vda".into(), "10M".into())]),
            ),
            (
                "io_write_iops_max",
                Value::Array(vec![Value::Map(vec![(
                    "/dev/vda".into(),
                    Value::from(100),
                )])]),
            ),
        ])
        .expect("ok");
        let l = cfg.limits;
        assert_eq!(l.swap_max, Some(Size::Bytes(64 << 20)));
        assert_eq!(l.pids_max, Some(32));
        assert_eq!(l.io_weight, Some(250));
        let vda = &l.io_devices["/dev/vda"];
        assert_eq!(vda.read_bps, Some(Size::Bytes(10 << 20)));
        assert_eq!(vda.write_iops, Some(100));
        assert_eq!(vda.write_bps, None);
        assert!(l.has_io());
    }

    #[test]
    fn bad_values_name_the_field() {
        for (field, value) in [
            ("swap_max", Value::from("lots")),
            ("pids_max", Value::from(0)),
            ("pids_max", Value::from(-5)),
            ("io_weight", Value::from(0)),
            ("io_weight", Value::from(10_001)),
            (
                "io_read_bandwidth_max",
                Value::Map(vec![("sda".into(), "1M".into())]),
            ),
            (
                "io_write_bandwidth_max",
                Value::Map(vec![("/dev/sda".into(), "0".into())]),
            ),
            (
                "io_read_iops_max",
                Value::Map(vec![("/dev/sda".into(), Value::from(0))]),
            ),
        ] {
            let err = decode(vec![(field, value)]).expect_err(field).to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
