//! Dropping privileges in the task process before exec: bounding set, then user and groups
//! (keeping capabilities across setuid), then the task's capability sets including ambient (so a
//! non-root user really holds `cap_add`), then `no_new_privs`. Mirrors what exec's libcontainer
//! does with its capability lists.

use std::collections::HashSet;
use std::io;
use std::str::FromStr;

use caps::{CapSet, Capability};

use crate::isolation::identity::Identity;

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

pub fn apply(
    identity: Option<&Identity>,
    wanted: Option<&[String]>,
    no_new_privs: bool,
) -> io::Result<()> {
    let wanted: Option<HashSet<Capability>> = wanted.map(|names| {
        names
            .iter()
            .filter_map(|n| Capability::from_str(&format!("CAP_{n}")).ok())
            .collect()
    });
    if let Some(w) = &wanted {
        for cap in caps::all() {
            if !w.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)
                    .map_err(|e| err("dropping from the bounding set", e))?;
            }
        }
    }
    if let Some(id) = identity {
        // SAFETY: prctl(PR_SET_KEEPCAPS) takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(err("PR_SET_KEEPCAPS", io::Error::last_os_error()));
        }
        let groups: Vec<nix::unistd::Gid> = id
            .groups
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        nix::unistd::setgroups(&groups).map_err(|e| err("setgroups", e))?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(id.gid)).map_err(|e| err("setgid", e))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(id.uid)).map_err(|e| err("setuid", e))?;
    }
    if let Some(w) = &wanted {
        caps::set(None, CapSet::Inheritable, w)
            .map_err(|e| err("setting inheritable capabilities", e))?;
        caps::set(None, CapSet::Effective, w)
            .map_err(|e| err("setting effective capabilities", e))?;
        caps::set(None, CapSet::Permitted, w)
            .map_err(|e| err("setting permitted capabilities", e))?;
        caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing ambient capabilities", e))?;
        for cap in w {
            caps::raise(None, CapSet::Ambient, *cap)
                .map_err(|e| err("raising ambient capabilities", e))?;
        }
    }
    if no_new_privs {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err("PR_SET_NO_NEW_PRIVS", io::Error::last_os_error()));
        }
    }
    Ok(())
}
