//! A small local HTTP endpoint (loopback by default, off unless `http_addr` is set) serving what
//! the driver knows as JSON: `GET /v1/tasks` (the tasks and their main pids),
//! `GET /v1/tree?alloc=<alloc id>&task=<task name>` (the live process tree and recent execs the
//! eBPF observer keeps) and `GET /v1/observer` (event and lost-record counters). Read-only,
//! HTTP/1.0 style: one request per connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::observer::TaskKey;
use crate::runtime::Runtime;

const MAX_REQUEST: usize = 8 * 1024;

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: String, rt: Arc<Runtime>) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "driver HTTP endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let rt = Arc::clone(&rt);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &rt)).await;
            });
        }
    });
    Ok(())
}

async fn handle(mut stream: TcpStream, rt: &Runtime) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let target = head.lines().next().and_then(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("GET"))
            .then(|| parts.next())
            .flatten()
    });
    let (status, body) = match target {
        Some(t) => route(t, rt),
        None => (405, json!({"error": "only GET is supported"})),
    };
    let text = body.to_string();
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.0 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Splits `path?a=1&b=2` and returns the path and a lookup for decoded query values.
fn split_query(target: &str) -> (&str, Vec<(String, String)>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), percent_decode(v)))
        .collect();
    (path, pairs)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(target: &str, rt: &Runtime) -> (u16, Value) {
    let (path, query) = split_query(target);
    let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match path {
        "/v1/tasks" => {
            let tasks: Vec<Value> = rt
                .tasks
                .all()
                .iter()
                .map(|t| {
                    json!({
                        "task_id": t.state.task_id,
                        "alloc_id": t.config.alloc_id,
                        "task": t.config.name,
                        "pid": t.state.pid,
                        "supervisor_pid": t.state.supervisor_pid,
                        "running": t.is_running(),
                    })
                })
                .collect();
            (200, json!({ "tasks": tasks }))
        }
        "/v1/tree" => {
            let Some(obs) = rt.tasks.observation.observer() else {
                return (
                    503,
                    json!({"error": "the eBPF observer is not running (see driver.bpfexec.probes)"}),
                );
            };
            let (Some(alloc), Some(name)) = (get("alloc"), get("task")) else {
                return (
                    404,
                    json!({"error": "use /v1/tree?alloc=<alloc id>&task=<task name>"}),
                );
            };
            let task = rt
                .tasks
                .all()
                .into_iter()
                .find(|t| t.config.alloc_id.starts_with(alloc) && t.config.name == name);
            match task.and_then(|t| obs.tree(TaskKey::from_task_id(&t.state.task_id))) {
                Some(tree) => (200, serde_json::to_value(tree).unwrap_or(Value::Null)),
                None => (
                    404,
                    json!({"error": format!("no running task {name:?} in allocation {alloc:?}")}),
                ),
            }
        }
        "/v1/observer" => match rt.tasks.observation.observer() {
            Some(obs) => (
                200,
                serde_json::to_value(obs.stats()).unwrap_or(Value::Null),
            ),
            None => (503, json!({"error": "the eBPF observer is not running"})),
        },
        _ => (
            404,
            json!({"error": "unknown path; try /v1/tasks, /v1/tree, /v1/observer"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_split_and_decoded() {
        let (path, q) = split_query("/v1/tree?alloc=ab%2Fc&task=web+1");
        assert_eq!(path, "/v1/tree");
        assert_eq!(
            q,
            vec![
                ("alloc".into(), "ab/c".into()),
                ("task".into(), "web 1".into())
            ]
        );
        assert_eq!(split_query("/v1/tasks").0, "/v1/tasks");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
