//! go-plugin's side of the handshake: check the magic cookie, listen on a unix socket, and print
//! `CORE|APP|unix|ADDR|grpc|` as the very first line on stdout (go-plugin v1.7, app protocol 2).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
pub const COOKIE_VALUE: &str = "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";
pub const CORE_PROTOCOL: u32 = 1;
pub const APP_PROTOCOL: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "This binary is a plugin for HashiCorp Nomad (the `bpfexec` task driver). It is not meant \
         to be run by hand: copy it into the Nomad client's plugin_dir and add \
         `plugin \"nomad-driver-bpfexec\" {{}}` to the agent configuration."
    )]
    NoCookie,
    #[error(
        "Nomad asked for plugin protocol versions {0:?}, but this driver speaks version {APP_PROTOCOL}"
    )]
    Protocol(String),
    #[error("cannot create the plugin socket in {dir}: {source}")]
    Socket { dir: PathBuf, source: io::Error },
    #[error("cannot write the handshake line to stdout: {0}")]
    Stdout(io::Error),
}

/// Checks the environment Nomad gives a plugin it launches.
pub fn check_env(cookie: Option<&str>, versions: Option<&str>) -> Result<(), HandshakeError> {
    if cookie != Some(COOKIE_VALUE) {
        return Err(HandshakeError::NoCookie);
    }
    if let Some(v) = versions {
        let ok = v.split(',').any(|x| x.trim() == APP_PROTOCOL.to_string());
        if !ok && !v.trim().is_empty() {
            return Err(HandshakeError::Protocol(v.to_owned()));
        }
    }
    Ok(())
}

/// A fresh socket path: `$PLUGIN_UNIX_SOCKET_DIR` (or the temp dir)/`plugin<pid>-<nanos>`.
pub fn socket_path(dir_override: Option<&Path>) -> PathBuf {
    let dir = dir_override.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!("plugin{}-{nanos:09}", std::process::id()))
}

/// The handshake line for a unix socket.
pub fn line(socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL}|{APP_PROTOCOL}|unix|{}|grpc|\n",
        socket.display()
    )
}

/// Prints the handshake line; must be the first thing ever written to stdout.
pub fn announce(socket: &Path) -> Result<(), HandshakeError> {
    let mut out = io::stdout().lock();
    out.write_all(line(socket).as_bytes())
        .and_then(|()| out.flush())
        .map_err(HandshakeError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_required() {
        assert!(matches!(
            check_env(None, None),
            Err(HandshakeError::NoCookie)
        ));
        assert!(matches!(
            check_env(Some("nope"), None),
            Err(HandshakeError::NoCookie)
        ));
        assert!(check_env(Some(COOKIE_VALUE), Some("2")).is_ok());
        assert!(check_env(Some(COOKIE_VALUE), Some("1,2")).is_ok());
        assert!(check_env(Some(COOKIE_VALUE), None).is_ok());
        assert!(matches!(
            check_env(Some(COOKIE_VALUE), Some("3")),
            Err(HandshakeError::Protocol(_))
        ));
    }

    #[test]
    fn line_has_six_fields_ending_in_pipe() {
        let l = line(Path::new("/tmp/plugin1"));
        assert_eq!(l, "1|2|unix|/tmp/plugin1|grpc|\n");
        assert_eq!(l.trim_end().split('|').count(), 6);
    }

    #[test]
    fn socket_paths_live_in_the_requested_dir() {
        let p = socket_path(Some(Path::new("/run/x")));
        assert!(p.starts_with("/run/x"));
        assert!(
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("plugin"))
        );
    }
}
