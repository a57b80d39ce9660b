//! systemd-journald's native protocol (systemd's "Native Journal Protocol" document): one
//! datagram per entry on its `AF_UNIX` socket, each field `KEY=value\n`, or for a value holding a
//! newline `KEY\n`, its length as 64-bit little-endian, the value and `\n`. Our own code rather
//! than a crate: the Rust journal crates send only to the default socket, and a task may log to
//! a journald namespace (`/run/systemd/journal.<ns>/socket`), which is also how the tests run a
//! journald of their own without touching the host's.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use bpfexec_proto::drivers;

/// Longest message sent as one entry; longer lines are split (journald's own stream limit,
/// `LineMax=`, defaults to 48 KiB).
pub const LINE_MAX: usize = 48 * 1024;

/// syslog priorities used for the task's streams.
pub const PRIORITY_STDOUT: u8 = 6;
pub const PRIORITY_STDERR: u8 = 3;

/// True for a field name journald accepts from a client: `A-Z`, `0-9`, `_`, not starting with
/// `_` or a digit, at most 64 characters.
pub fn valid_field(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Appends one field to a datagram.
pub fn push_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Sends entries to one journald socket with a fixed set of extra fields.
pub struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    /// `SYSLOG_IDENTIFIER` and the task's fields, encoded once.
    common: Vec<u8>,
}

impl Journal {
    pub fn new(path: &Path, identifier: &str, fields: &[(String, String)]) -> io::Result<Self> {
        let mut common = Vec::new();
        push_field(&mut common, "SYSLOG_IDENTIFIER", identifier.as_bytes());
        for (k, v) in fields.iter().filter(|(k, _)| valid_field(k)) {
            push_field(&mut common, k, v.as_bytes());
        }
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            path: path.to_path_buf(),
            common,
        })
    }

    /// The datagram for `message` at `priority`.
    pub fn entry(&self, priority: u8, message: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.common.len() + message.len() + 32);
        push_field(&mut buf, "PRIORITY", priority.to_string().as_bytes());
        buf.extend_from_slice(&self.common);
        push_field(&mut buf, "MESSAGE", message);
        buf
    }

    /// Sends one entry (blocking while journald's socket buffer is full).
    pub fn send(&self, priority: u8, message: &[u8]) -> io::Result<()> {
        self.socket
            .send_to(&self.entry(priority, message), &self.path)
            .map(|_| ())
    }
}

/// The journal fields naming a task: Nomad's identity of it (the same names as its runtime
/// environment variables), from the task config, plus those of its environment Nomad sets only
/// there (alloc name and index, region, datacenter).
pub fn task_fields(cfg: &drivers::TaskConfig) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("NOMAD_ALLOC_ID", cfg.alloc_id.as_str()),
        ("NOMAD_JOB_ID", cfg.job_id.as_str()),
        ("NOMAD_JOB_NAME", cfg.job_name.as_str()),
        ("NOMAD_JOB_PARENT_ID", cfg.parent_job_id.as_str()),
        ("NOMAD_GROUP_NAME", cfg.task_group_name.as_str()),
        ("NOMAD_TASK_NAME", cfg.name.as_str()),
        ("NOMAD_NAMESPACE", cfg.namespace.as_str()),
        ("NOMAD_NODE_ID", cfg.node_id.as_str()),
        ("NOMAD_NODE_NAME", cfg.node_name.as_str()),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for key in [
        "NOMAD_ALLOC_NAME",
        "NOMAD_ALLOC_INDEX",
        "NOMAD_REGION",
        "NOMAD_DC",
    ] {
        if let Some(v) = cfg.env.get(key).filter(|v| !v.is_empty()) {
            out.push((key.to_owned(), v.clone()));
        }
    }
    out
}

/// Splits a stream's bytes into journal messages: complete lines (without the newline), and
/// pieces of `LINE_MAX` when a line is longer; what is left is kept for the next read.
pub fn take_lines(pending: &mut Vec<u8>, eof: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        if let Some(i) = pending.iter().position(|b| *b == b'\n')
            && i <= LINE_MAX
        {
            let mut line: Vec<u8> = pending.drain(..=i).collect();
            line.pop();
            out.push(line);
            continue;
        }
        if pending.len() >= LINE_MAX {
            out.push(pending.drain(..LINE_MAX).collect());
            continue;
        }
        break;
    }
    if eof && !pending.is_empty() {
        out.push(std::mem::take(pending));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a datagram back into fields (the inverse of `push_field`), as journald reads it.
    fn decode(mut buf: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let nl = buf.iter().position(|b| *b == b'\n').expect("newline");
            let head = &buf[..nl];
            if let Some(eq) = head.iter().position(|b| *b == b'=') {
                out.push((
                    String::from_utf8(head[..eq].to_vec()).expect("name"),
                    head[eq + 1..].to_vec(),
                ));
                buf = &buf[nl + 1..];
            } else {
                let name = String::from_utf8(head.to_vec()).expect("name");
                let len = u64::from_le_bytes(buf[nl + 1..nl + 9].try_into().expect("len"));
                let start = nl + 9;
                let end = start + len as usize;
                out.push((name, buf[start..end].to_vec()));
                assert_eq!(buf[end], b'\n');
                buf = &buf[end + 1..];
            }
        }
        out
    }

    #[test]
    fn entries_carry_priority_identity_fields_and_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(
            &dir.path().join("socket"),
            "web",
            &[
                ("NOMAD_ALLOC_ID".into(), "a1".into()),
                ("bad-name".into(), "dropped".into()),
            ],
        )
        .expect("journal");
        let fields = decode(&j.entry(PRIORITY_STDERR, b"two\nlines"));
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["PRIORITY", "SYSLOG_IDENTIFIER", "NOMAD_ALLOC_ID", "MESSAGE"]
        );
        assert_eq!(fields[0].1, b"3");
        assert_eq!(fields[3].1, b"two\nlines");
    }

    #[test]
    fn sends_to_a_datagram_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).expect("bind");
        let j = Journal::new(&path, "t", &[]).expect("journal");
        j.send(PRIORITY_STDOUT, b"hello").expect("send");
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).expect("recv");
        let fields = decode(&buf[..n]);
        assert!(fields.contains(&("MESSAGE".into(), b"hello".to_vec())));
        assert!(fields.contains(&("PRIORITY".into(), b"6".to_vec())));
        // No journald: the error reaches the caller.
        drop(server);
        assert!(j.send(PRIORITY_STDOUT, b"lost").is_err());
    }

    #[test]
    fn field_names_follow_journald_rules() {
        assert!(valid_field("NOMAD_ALLOC_ID"));
        for bad in ["", "_PID", "1X", "lower", "A-B", &"X".repeat(65)] {
            assert!(!valid_field(bad), "{bad}");
        }
    }

    #[test]
    fn task_fields_name_the_task() {
        let cfg = drivers::TaskConfig {
            alloc_id: "a1".into(),
            job_id: "j".into(),
            job_name: "j".into(),
            name: "web".into(),
            namespace: "default".into(),
            env: [("NOMAD_ALLOC_INDEX".to_owned(), "0".to_owned())].into(),
            ..Default::default()
        };
        let f = task_fields(&cfg);
        assert!(f.contains(&("NOMAD_ALLOC_ID".into(), "a1".into())));
        assert!(f.contains(&("NOMAD_TASK_NAME".into(), "web".into())));
        assert!(f.contains(&("NOMAD_ALLOC_INDEX".into(), "0".into())));
        assert!(!f.iter().any(|(k, _)| k == "NOMAD_NODE_ID"));
    }

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut p = b"a\nbc\npartial".to_vec();
        assert_eq!(
            take_lines(&mut p, false),
            vec![b"a".to_vec(), b"bc".to_vec()]
        );
        assert_eq!(p, b"partial");
        assert_eq!(take_lines(&mut p, true), vec![b"partial".to_vec()]);
        let mut long = vec![b'x'; LINE_MAX + 10];
        long.push(b'\n');
        let parts = take_lines(&mut long, false);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), LINE_MAX);
        assert_eq!(parts[1].len(), 10);
        assert!(long.is_empty());
    }
}
