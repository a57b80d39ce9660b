//! Turns parsed tracefs `format` files into the `bpfexec-common` `*Layout` globals the probes read
//! (field offsets, sizes, `__data_loc` flags), validating that each field has a shape the probe
//! can read: integers of 1/2/4/8 bytes, strings as `char[N]` or `__data_loc`/`__rel_loc char[]`.

use bpfexec_common::{ExecLayout, ExitLayout, FieldLoc, NewTaskLayout, OomLayout, SignalLayout};

use super::tracefs::{FieldStorage, TracepointFormat};

/// A field that is missing or has a shape the probe cannot read.
#[derive(Debug, thiserror::Error)]
#[error("tracepoint {tracepoint}: field `{field}` {problem}")]
pub struct LayoutError {
    pub tracepoint: String,
    pub field: &'static str,
    pub problem: String,
}

struct Fields<'a> {
    fmt: &'a TracepointFormat,
}

impl Fields<'_> {
    fn err(&self, field: &'static str, problem: impl Into<String>) -> LayoutError {
        LayoutError {
            tracepoint: self.fmt.name.clone(),
            field,
            problem: problem.into(),
        }
    }

    fn int(&self, name: &'static str) -> Result<FieldLoc, LayoutError> {
        self.optional_int(name)?
            .ok_or_else(|| self.err(name, "is missing"))
    }

    fn optional_int(&self, name: &'static str) -> Result<Option<FieldLoc>, LayoutError> {
        let Some(f) = self.fmt.fields.get(name) else {
            return Ok(None);
        };
        if f.storage != FieldStorage::Inline || !matches!(f.size, 1 | 2 | 4 | 8) {
            return Err(self.err(
                name,
                format!("is `{}` of size {}, not an integer", f.c_type, f.size),
            ));
        }
        let signed = if f.signed { FieldLoc::SIGNED } else { 0 };
        Ok(Some(FieldLoc {
            offset: f.offset,
            size: f.size,
            flags: FieldLoc::PRESENT | signed,
        }))
    }

    fn string(&self, name: &'static str) -> Result<FieldLoc, LayoutError> {
        let f = self
            .fmt
            .fields
            .get(name)
            .ok_or_else(|| self.err(name, "is missing"))?;
        let flags = match f.storage {
            FieldStorage::DataLoc if f.size == 4 => FieldLoc::DATA_LOC,
            FieldStorage::RelLoc if f.size == 4 => FieldLoc::REL_LOC,
            FieldStorage::Inline if f.c_type.starts_with("char[") && f.size > 0 => 0,
            _ => {
                return Err(self.err(
                    name,
                    format!("is `{}` of size {}, not a string", f.c_type, f.size),
                ));
            }
        };
        Ok(FieldLoc {
            offset: f.offset,
            size: f.size,
            flags: FieldLoc::PRESENT | flags,
        })
    }
}

pub fn exec(fmt: &TracepointFormat) -> Result<ExecLayout, LayoutError> {
    let f = Fields { fmt };
    Ok(ExecLayout {
        filename: f.string("filename")?,
        pid: f.int("pid")?,
        old_pid: f.int("old_pid")?,
    })
}

pub fn exit(fmt: &TracepointFormat) -> Result<ExitLayout, LayoutError> {
    let f = Fields { fmt };
    Ok(ExitLayout {
        comm: f.string("comm")?,
        pid: f.int("pid")?,
        // Older kernels lack `group_dead`; the probe then reports "unknown".
        group_dead: f.optional_int("group_dead")?.unwrap_or(FieldLoc::ABSENT),
    })
}

pub fn newtask(fmt: &TracepointFormat) -> Result<NewTaskLayout, LayoutError> {
    let f = Fields { fmt };
    Ok(NewTaskLayout {
        pid: f.int("pid")?,
        comm: f.string("comm")?,
        clone_flags: f.int("clone_flags")?,
    })
}

pub fn signal(fmt: &TracepointFormat) -> Result<SignalLayout, LayoutError> {
    let f = Fields { fmt };
    Ok(SignalLayout {
        sig: f.int("sig")?,
        errno: f.int("errno")?,
        code: f.int("code")?,
        comm: f.string("comm")?,
        pid: f.int("pid")?,
        group: f.int("group")?,
        result: f.int("result")?,
    })
}

pub fn oom(fmt: &TracepointFormat) -> Result<OomLayout, LayoutError> {
    let f = Fields { fmt };
    let opt = |name| f.optional_int(name).map(|o| o.unwrap_or(FieldLoc::ABSENT));
    Ok(OomLayout {
        pid: f.int("pid")?,
        comm: f.string("comm")?,
        total_vm: opt("total_vm")?,
        anon_rss: opt("anon_rss")?,
        file_rss: opt("file_rss")?,
        shmem_rss: opt("shmem_rss")?,
        uid: opt("uid")?,
        pgtables: opt("pgtables")?,
        oom_score_adj: opt("oom_score_adj")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::probes::tracefs::parse_format;

    fn fmt(name: &str, fields: &[&str]) -> TracepointFormat {
        let mut text = format!("name: {name}\nID: 1\nformat:\n");
        for f in fields {
            text.push('\t');
            text.push_str(f);
            text.push('\n');
        }
        parse_format(&text).unwrap()
    }

    /// `sched_process_exec` as on Linux 6.18.
    #[test]
    fn exec_6_18() {
        let f = fmt(
            "sched_process_exec",
            &[
                "field:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;",
                "field:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;",
                "field:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;",
            ],
        );
        let l = exec(&f).unwrap();
        assert_eq!(
            l.filename,
            FieldLoc {
                offset: 8,
                size: 4,
                flags: FieldLoc::PRESENT | FieldLoc::DATA_LOC
            }
        );
        assert_eq!(
            l.pid,
            FieldLoc {
                offset: 12,
                size: 4,
                flags: FieldLoc::PRESENT | FieldLoc::SIGNED
            }
        );
        assert_eq!(l.old_pid.offset, 16);
    }

    /// `task_newtask` as on Linux 6.18, and an exit tracepoint without `group_dead` (older kernels).
    #[test]
    fn newtask_6_18_and_exit_without_group_dead() {
        let f = fmt(
            "task_newtask",
            &[
                "field:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;",
                "field:char comm[16];\toffset:12;\tsize:16;\tsigned:0;",
                "field:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;",
                "field:short oom_score_adj;\toffset:40;\tsize:2;\tsigned:1;",
            ],
        );
        let l = newtask(&f).unwrap();
        assert_eq!(
            l.comm,
            FieldLoc {
                offset: 12,
                size: 16,
                flags: FieldLoc::PRESENT
            }
        );
        assert_eq!((l.clone_flags.offset, l.clone_flags.size), (32, 8));
        assert_eq!(l.pid.flags, FieldLoc::PRESENT | FieldLoc::SIGNED);

        let e = fmt(
            "sched_process_exit",
            &[
                "field:char comm[16];\toffset:8;\tsize:16;\tsigned:0;",
                "field:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;",
            ],
        );
        let l = exit(&e).unwrap();
        assert!(!l.group_dead.is_present());
    }

    #[test]
    fn wrong_shapes_are_rejected() {
        let f = fmt(
            "sched_process_exec",
            &["field:u64 filename;\toffset:8;\tsize:8;\tsigned:0;"],
        );
        let err = exec(&f).unwrap_err();
        assert_eq!(err.field, "filename");
        assert!(err.to_string().contains("not a string"), "{err}");

        let f = fmt(
            "sched_process_exec",
            &[
                "field:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;",
                "field:char pid[3];\toffset:12;\tsize:3;\tsigned:0;",
            ],
        );
        assert!(exec(&f).unwrap_err().to_string().contains("not an integer"));

        let f = fmt(
            "sched_process_exec",
            &["field:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;"],
        );
        assert!(
            exec(&f)
                .unwrap_err()
                .to_string()
                .contains("`pid` is missing")
        );
    }

    #[test]
    fn oom_6_18() {
        let f = fmt(
            "mark_victim",
            &[
                "field:int pid;\toffset:8;\tsize:4;\tsigned:1;",
                "field:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;",
                "field:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;",
                "field:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;",
            ],
        );
        let l = oom(&f).unwrap();
        assert_eq!(l.total_vm.size, 8);
        assert_eq!(l.oom_score_adj.flags, FieldLoc::PRESENT | FieldLoc::SIGNED);
        assert!(!l.anon_rss.is_present());
    }
}
