//! A tiny HTTP/1.0 file server on loopback for `artifact` blocks: Nomad's go-getter fetches
//! `http://127.0.0.1:<port>/<name>` from it. It serves the files of one directory (GET only, no
//! subdirectories), one request per connection, on a thread that ends when the server is dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// A running server; dropping it stops the thread.
pub struct FileServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Serves the files in `dir` on `127.0.0.1` (a free port).
    pub fn start(dir: &Path) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let dir = dir.to_path_buf();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &dir);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// The URL of `name` on this server.
    #[must_use]
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let name = path.trim_start_matches('/').split('?').next().unwrap_or("");
    let file: Option<PathBuf> = (!name.is_empty() && !name.contains('/') && !name.contains(".."))
        .then(|| dir.join(name))
        .filter(|f| f.is_file());
    let mut out = stream;
    match (method, file) {
        ("GET" | "HEAD", Some(f)) => {
            let body = std::fs::read(&f)?;
            write!(
                out,
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method == "GET" {
                out.write_all(&body)?;
            }
        }
        _ => {
            out.write_all(
                b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(url: &str) -> String {
        let addr = url.trim_start_matches("http://");
        let (host, path) = addr.split_once('/').expect("path");
        let mut s = TcpStream::connect(host).expect("connect");
        write!(s, "GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("send");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read");
        resp
    }

    #[test]
    fn serves_files_and_404s() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.txt"), "hello").expect("write");
        let server = FileServer::start(dir.path()).expect("start");
        let ok = get(&server.url("a.txt"));
        assert!(
            ok.starts_with("HTTP/1.0 200") && ok.ends_with("hello"),
            "{ok}"
        );
        assert!(get(&server.url("missing")).starts_with("HTTP/1.0 404"));
        assert!(get(&server.url("..%2Fx")).starts_with("HTTP/1.0 404"));
    }
}
