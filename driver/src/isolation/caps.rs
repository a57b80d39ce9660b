//! Capabilities of an isolated task, computed as Nomad's exec does: the defaults (Docker's set
//! minus NET_RAW) limited to `allow_caps`, minus `cap_drop`, plus `cap_add`; a `cap_add` outside
//! `allow_caps` is refused by name. `all` works in each list.

use std::collections::BTreeSet;
use std::str::FromStr;

use caps::Capability;

use crate::config::plugin::DEFAULT_ALLOW_CAPS;

/// `chown`, `CAP_CHOWN`, `Chown` → `CHOWN`; `all` → `ALL`; unknown names are an error.
pub fn normalize(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned();
    if bare == "ALL" {
        return Ok(bare);
    }
    Capability::from_str(&format!("CAP_{bare}"))
        .map(|_| bare)
        .map_err(|_| format!("{name:?} is not a Linux capability"))
}

fn all_caps() -> BTreeSet<String> {
    caps::all()
        .iter()
        .map(|c| c.to_string().trim_start_matches("CAP_").to_owned())
        .collect()
}

fn expand(list: &[String]) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for name in list {
        let n = normalize(name)?;
        if n == "ALL" {
            out.extend(all_caps());
        } else {
            out.insert(n);
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapsError {
    #[error(
        "cap_add asks for {0}, which the driver does not allow; add it to the plugin's allow_caps or remove it from cap_add"
    )]
    NotAllowed(String),
    #[error("invalid `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// The effective capability names (without `CAP_`), sorted.
pub fn effective(
    allow: &[String],
    cap_add: &[String],
    cap_drop: &[String],
) -> Result<Vec<String>, CapsError> {
    let allow = expand(allow).map_err(|problem| CapsError::Invalid {
        field: "allow_caps",
        problem,
    })?;
    let adds = expand(cap_add).map_err(|problem| CapsError::Invalid {
        field: "cap_add",
        problem,
    })?;
    let drops = expand(cap_drop).map_err(|problem| CapsError::Invalid {
        field: "cap_drop",
        problem,
    })?;
    let missing: Vec<String> = adds.difference(&allow).cloned().collect();
    if !missing.is_empty() {
        return Err(CapsError::NotAllowed(
            missing
                .iter()
                .map(|c| format!("CAP_{c}"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    let basis: BTreeSet<String> = DEFAULT_ALLOW_CAPS.iter().map(|s| (*s).to_owned()).collect();
    let mut result: BTreeSet<String> = basis.intersection(&allow).cloned().collect();
    result.retain(|c| !drops.contains(c));
    result.extend(adds);
    Ok(result.into_iter().collect())
}

/// The capability bit mask of a list of names (for comparing with /proc/<pid>/status CapEff).
pub fn mask(names: &[String]) -> u64 {
    names
        .iter()
        .filter_map(|n| Capability::from_str(&format!("CAP_{n}")).ok())
        .fold(0, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn defaults_follow_exec() {
        let allow = s(&DEFAULT_ALLOW_CAPS);
        let eff = effective(&allow, &[], &[]).expect("caps");
        assert_eq!(eff, {
            let mut d = allow.clone();
            d.sort();
            d
        });
        assert!(!eff.contains(&"NET_RAW".to_owned()));
    }

    #[test]
    fn drop_all_then_add_back() {
        let allow = s(&DEFAULT_ALLOW_CAPS);
        let eff = effective(&allow, &s(&["chown", "cap_kill"]), &s(&["all"])).expect("caps");
        assert_eq!(eff, s(&["CHOWN", "KILL"]));
    }

    #[test]
    fn adding_outside_allow_is_refused_by_name() {
        let allow = s(&DEFAULT_ALLOW_CAPS);
        let err = effective(&allow, &s(&["net_raw", "sys_admin"]), &[]).expect_err("refused");
        assert_eq!(
            err,
            CapsError::NotAllowed("CAP_NET_RAW, CAP_SYS_ADMIN".into())
        );
        assert!(err.to_string().contains("allow_caps"));
        let ok = effective(&s(&["all"]), &s(&["net_raw"]), &[]).expect("allowed");
        assert!(ok.contains(&"NET_RAW".to_owned()));
    }

    #[test]
    fn unknown_names_are_errors_and_mask_matches_bits() {
        assert!(matches!(
            effective(&[], &s(&["nope"]), &[]),
            Err(CapsError::Invalid {
                field: "cap_add",
                ..
            })
        ));
        assert_eq!(mask(&s(&["CHOWN", "KILL"])), (1 << 0) | (1 << 5));
    }
}
