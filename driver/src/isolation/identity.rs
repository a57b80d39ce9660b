//! Who a task runs as: the job's `user` (default `nobody`, like exec) resolved on the host, with
//! its groups, or a primary `group` of the task's choosing (systemd's `Group=`), or an ephemeral
//! uid/gid of the task's own (systemd's `DynamicUser=`); refused before anything starts when it
//! falls in `denied_host_uids`/`gids`.

use serde::{Deserialize, Serialize};

use crate::config::ranges::IdRanges;

pub const DEFAULT_USER: &str = "nobody";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `user` (a name, or a numeric uid) from the host's user database.
pub fn resolve(user: &str) -> Result<Identity, String> {
    let found = if let Ok(uid) = user.parse::<u32>() {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
    } else {
        nix::unistd::User::from_name(user)
    };
    let entry = found
        .map_err(|e| format!("cannot look up user {user:?}: {e}"))?
        .ok_or_else(|| format!("user {user:?} does not exist on this client; set the task's user to an existing account"))?;
    let cname = std::ffi::CString::new(entry.name.clone())
        .map_err(|_| format!("bad user name {user:?}"))?;
    let groups = nix::unistd::getgrouplist(&cname, entry.gid)
        .map_err(|e| format!("cannot list the groups of {user:?}: {e}"))?
        .into_iter()
        .map(nix::unistd::Gid::as_raw)
        .collect();
    Ok(Identity {
        user: entry.name,
        uid: entry.uid.as_raw(),
        gid: entry.gid.as_raw(),
        groups,
        home: entry.dir.display().to_string(),
    })
}

/// Makes `group` (a name, or a numeric gid) the primary group of `id`; the supplementary groups
/// are those the group database gives the user with that primary group.
pub fn with_group(mut id: Identity, group: &str) -> Result<Identity, String> {
    let found = if let Ok(gid) = group.parse::<u32>() {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
    } else {
        nix::unistd::Group::from_name(group)
    };
    let entry = found
        .map_err(|e| format!("cannot look up group {group:?}: {e}"))?
        .ok_or_else(|| {
            format!("group {group:?} (config {{ group }}) does not exist on this client; name an existing group or gid")
        })?;
    let gid = entry.gid.as_raw();
    if let Ok(cname) = std::ffi::CString::new(id.user.clone())
        && let Ok(groups) = nix::unistd::getgrouplist(&cname, entry.gid)
    {
        id.groups = groups.into_iter().map(nix::unistd::Gid::as_raw).collect();
    } else {
        id.groups = vec![gid];
    }
    id.gid = gid;
    Ok(id)
}

/// The identity of a task running as ephemeral id `id` (uid = gid, no supplementary groups).
pub fn ephemeral(id: u32) -> Identity {
    Identity {
        user: format!("ephemeral-{id}"),
        uid: id,
        gid: id,
        groups: Vec::new(),
        home: "/".to_owned(),
    }
}

/// Refuses identities whose uid, primary gid or any supplementary gid is denied.
pub fn check_denied(id: &Identity, uids: &IdRanges, gids: &IdRanges) -> Result<(), String> {
    if uids.contains(id.uid) {
        return Err(format!(
            "user {:?} has uid {}, which the plugin's denied_host_uids forbids; run the task as another user",
            id.user, id.uid
        ));
    }
    if let Some(g) = std::iter::once(id.gid)
        .chain(id.groups.iter().copied())
        .find(|g| gids.contains(*g))
    {
        return Err(format!(
            "user {:?} is in group {g}, which the plugin's denied_host_gids forbids; run the task as another user",
            id.user
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_and_nobody() {
        let root = resolve("root").expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(resolve("0").expect("uid 0").user, "root");
        let err = resolve("no-such-user-bpfexec").expect_err("missing");
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn group_replaces_the_primary_group() {
        let root = resolve("root").expect("root");
        let nogroup = nix::unistd::Group::from_name("nogroup")
            .ok()
            .flatten()
            .or_else(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
                    .ok()
                    .flatten()
            })
            .expect("a nogroup group");
        let id = with_group(root.clone(), &nogroup.name).expect("by name");
        assert_eq!(id.gid, nogroup.gid.as_raw());
        assert!(id.groups.contains(&id.gid), "{:?}", id.groups);
        let id = with_group(root.clone(), &nogroup.gid.as_raw().to_string()).expect("by gid");
        assert_eq!(id.gid, nogroup.gid.as_raw());
        let err = with_group(root, "no-such-group-bpfexec").expect_err("missing");
        assert!(err.contains("config { group }"), "{err}");
        let e = ephemeral(61_200);
        assert_eq!((e.uid, e.gid), (61_200, 61_200));
        assert!(e.groups.is_empty());
    }

    #[test]
    fn denied_ranges_apply_to_uid_and_groups() {
        let id = Identity {
            user: "u".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
            home: "/".into(),
        };
        let none = IdRanges::default();
        assert!(check_denied(&id, &none, &none).is_ok());
        let uids = IdRanges::parse("denied_host_uids", "0-1000").expect("r");
        assert!(
            check_denied(&id, &uids, &none)
                .expect_err("uid")
                .contains("denied_host_uids")
        );
        let gids = IdRanges::parse("denied_host_gids", "27").expect("r");
        assert!(
            check_denied(&id, &none, &gids)
                .expect_err("gid")
                .contains("group 27")
        );
    }
}
