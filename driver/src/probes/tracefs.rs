//! Finds (or idempotently mounts) tracefs and parses tracepoint `format` files
//! (`<tracefs>/events/<category>/<name>/format`, the kernel's self-description of each trace
//! record: `field:<decl>; offset:N; size:N; signed:N;`).

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use nix::mount::{MsFlags, mount};

/// Where tracefs is looked for, in order; the first is where it is mounted when absent.
pub const TRACEFS_CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Errors finding tracefs or reading a tracepoint's format.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {path} failed ({source}); the probes need \
         the tracepoint formats it serves: mount it yourself (`mount -t tracefs tracefs {path}`), \
         point the plugin's tracefs_dir at a tracefs mount, or run the driver as root with \
         CAP_SYS_ADMIN"
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("tracefs was mounted at {path} but {path}/events is still missing")]
    NoEvents { path: PathBuf },
    #[error(
        "reading tracepoint format {path}: {source} (is the tracepoint built into this kernel?)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing tracepoint format {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// How a field's bytes are found in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldStorage {
    /// The value sits at `offset` (integers, fixed `char[N]` arrays).
    Inline,
    /// `__data_loc`: a `u32` at `offset`; low 16 bits = data offset from the record start,
    /// high 16 bits = data length.
    DataLoc,
    /// `__rel_loc`: like `DataLoc`, but the data offset is relative to the end of the field.
    RelLoc,
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The C declaration without the name, e.g. `pid_t`, `char[16]`, `__data_loc char[]`.
    pub c_type: String,
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
    pub storage: FieldStorage,
}

/// A parsed `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointFormat {
    pub name: String,
    pub id: u32,
    pub fields: BTreeMap<String, Field>,
}

static MOUNT_LOCK: Mutex<()> = Mutex::new(());

/// Returns a tracefs root that has an `events/` directory, mounting tracefs at
/// `/sys/kernel/tracing` when none of [`TRACEFS_CANDIDATES`] has one. Safe to call repeatedly.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    ensure_mounted_at(None)
}

/// [`ensure_mounted`], or with `dir` (the plugin's `tracefs_dir`): only that directory is
/// looked at, and tracefs is mounted there when it has no `events/`.
pub fn ensure_mounted_at(dir: Option<&Path>) -> Result<PathBuf, TracefsError> {
    let _guard = MOUNT_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = match dir {
        Some(d) if has_events(d) => return Ok(d.to_path_buf()),
        Some(d) => d.to_path_buf(),
        None => {
            if let Some(found) = find() {
                return Ok(found);
            }
            PathBuf::from(TRACEFS_CANDIDATES[0])
        }
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(source) = mount(
        Some("tracefs"),
        &target,
        Some("tracefs"),
        flags,
        None::<&str>,
    ) {
        // Another process may have mounted it in the meantime.
        if has_events(&target) {
            return Ok(target);
        }
        return Err(TracefsError::Mount {
            path: target,
            source,
        });
    }
    if has_events(&target) {
        Ok(target)
    } else {
        Err(TracefsError::NoEvents { path: target })
    }
}

/// The first of [`TRACEFS_CANDIDATES`] that is a mounted tracefs (has `events/`).
#[must_use]
pub fn find() -> Option<PathBuf> {
    TRACEFS_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| has_events(p))
}

fn has_events(root: &Path) -> bool {
    root.join("events").is_dir()
}

/// Reads and parses `<tracefs>/events/<category>/<name>/format`.
pub fn read_format(
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<TracepointFormat, TracefsError> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    parse_format(&text).map_err(|reason| TracefsError::Parse { path, reason })
}

/// Parses the text of a `format` file.
pub fn parse_format(text: &str) -> Result<TracepointFormat, String> {
    let mut name = None;
    let mut id = None;
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("name:") {
            name = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("ID:") {
            id = Some(
                rest.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("bad ID line {line:?}: {e}"))?,
            );
        } else if line.starts_with("field:") {
            let (field_name, field) = parse_field(line)?;
            fields.insert(field_name, field);
        }
    }
    Ok(TracepointFormat {
        name: name.ok_or("no `name:` line")?,
        id: id.ok_or("no `ID:` line")?,
        fields,
    })
}

/// Parses `field:<decl>;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(line: &str) -> Result<(String, Field), String> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("malformed part {part:?} in {line:?}"))?;
        let value = value.trim();
        let number = || {
            value
                .parse::<u16>()
                .map_err(|e| format!("bad {key} {value:?} in {line:?}: {e}"))
        };
        match key.trim() {
            "field" => decl = Some(value),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = value == "1",
            _ => {} // newer kernels may add keys; ignore them
        }
    }
    let decl = decl.ok_or_else(|| format!("no declaration in {line:?}"))?;
    let (c_type, field_name) =
        split_decl(decl).ok_or_else(|| format!("bad declaration {decl:?}"))?;
    let storage = if c_type.starts_with("__data_loc") {
        FieldStorage::DataLoc
    } else if c_type.starts_with("__rel_loc") {
        FieldStorage::RelLoc
    } else {
        FieldStorage::Inline
    };
    let field = Field {
        c_type,
        offset: offset.ok_or_else(|| format!("no offset in {line:?}"))?,
        size: size.ok_or_else(|| format!("no size in {line:?}"))?,
        signed,
        storage,
    };
    Ok((field_name, field))
}

/// Splits `char comm[16]` into (`char[16]`, `comm`) and `__data_loc char[] filename` into
/// (`__data_loc char[]`, `filename`).
fn split_decl(decl: &str) -> Option<(String, String)> {
    let (head, last) = decl.trim().rsplit_once(char::is_whitespace)?;
    let (name, array) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (last, ""),
    };
    if name.is_empty() {
        return None;
    }
    Some((format!("{}{array}", head.trim()), name.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// Captured from Linux 6.18 (`/sys/kernel/tracing/events/sched/sched_process_fork/format`).
    const FORK_6_18: &str = "name: sched_process_fork\nID: 366\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n\
\n\
print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", __get_str(parent_comm), REC->parent_pid, __get_str(child_comm), REC->child_pid\n";

    /// Captured from Linux 6.18 (`sched/sched_process_exit`).
    const EXIT_6_18: &str = "name: sched_process_exit\nID: 369\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n\
\n\
print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\", REC->comm, REC->pid, REC->prio, REC->group_dead ? \"true\" : \"false\"\n";

    #[test]
    fn parses_data_loc_fields() {
        let f = parse_format(FORK_6_18).unwrap();
        assert_eq!(f.name, "sched_process_fork");
        assert_eq!(f.id, 366);
        let comm = &f.fields["child_comm"];
        assert_eq!(comm.storage, FieldStorage::DataLoc);
        assert_eq!((comm.offset, comm.size), (16, 4));
        assert_eq!(comm.c_type, "__data_loc char[]");
        let pid = &f.fields["child_pid"];
        assert_eq!((pid.offset, pid.size, pid.signed), (20, 4, true));
        assert_eq!(pid.storage, FieldStorage::Inline);
        assert_eq!(f.fields["common_type"].c_type, "unsigned short");
    }

    #[test]
    fn parses_fixed_arrays_and_bools() {
        let f = parse_format(EXIT_6_18).unwrap();
        let comm = &f.fields["comm"];
        assert_eq!((comm.offset, comm.size), (8, 16));
        assert_eq!(comm.c_type, "char[16]");
        assert_eq!(comm.storage, FieldStorage::Inline);
        let gd = &f.fields["group_dead"];
        assert_eq!((gd.offset, gd.size, gd.signed), (32, 1, false));
        assert_eq!(f.fields.len(), 6);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_format("").is_err());
        assert!(parse_format("name: x\nID: nope\n").is_err());
        let bad_offset = "name: x\nID: 1\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\n";
        assert!(parse_format(bad_offset).unwrap_err().contains("offset"));
        let no_size = "name: x\nID: 1\n\tfield:int a;\toffset:4;\tsigned:1;\n";
        assert!(parse_format(no_size).unwrap_err().contains("no size"));
        let no_name = "name: x\nID: 1\n\tfield:int;\toffset:4;\tsize:4;\tsigned:1;\n";
        assert!(parse_format(no_name).is_err());
    }

    #[test]
    fn rel_loc_is_recognised() {
        let text = "name: x\nID: 2\n\tfield:__rel_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;\n";
        assert_eq!(
            parse_format(text).unwrap().fields["s"].storage,
            FieldStorage::RelLoc
        );
    }
}
