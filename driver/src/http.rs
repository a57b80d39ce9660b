//! The driver's local HTTP endpoint (off unless `http_addr` is set), served by axum/hyper:
//! `GET /metrics` (Prometheus: OpenMetrics or the classic text format, by the Accept header) and
//! a read-only JSON API: `GET /v1/tasks` (tasks, main pids, trace ids),
//! `GET /v1/tree?alloc=<alloc id>&task=<task name>` (the live process tree and recent execs the
//! eBPF observer keeps) and `GET /v1/observer` (event and loss counters).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::observer::TaskKey;
use crate::runtime::Runtime;
use crate::telemetry::ids;
use crate::telemetry::metrics::Format;

/// A request that takes longer is cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and serves until the process exits.
pub async fn serve(addr: String, rt: Arc<Runtime>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "driver HTTP endpoint listening (/metrics, /v1/...)");
    let app = router(rt);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the driver HTTP endpoint stopped");
        }
    });
    Ok(())
}

fn router(rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/tasks", get(tasks))
        .route("/v1/tree", get(tree))
        .route("/v1/observer", get(observer))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "unknown path; try /metrics, /v1/tasks, /v1/tree, /v1/observer"})),
            )
        })
        .layer(axum::middleware::from_fn(cut_off))
        .with_state(rt)
}

/// Cuts off slow requests (a stuck client must not hold a worker).
async fn cut_off(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

async fn metrics(State(rt): State<Arc<Runtime>>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let snapshot = crate::collect::health(&rt).await;
    let metrics = Arc::clone(&rt.telemetry.metrics);
    // Encoding a large registry is CPU work: keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || {
        metrics.refresh_health(&snapshot);
        metrics.encode(format)
    })
    .await;
    match body {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}"),
        )
            .into_response(),
    }
}

async fn tasks(State(rt): State<Arc<Runtime>>) -> Json<Value> {
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
                "trace_id": ids::trace_id(&t.state.task_id).to_string(),
            })
        })
        .collect();
    Json(json!({ "tasks": tasks }))
}

async fn tree(
    State(rt): State<Arc<Runtime>>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let Some(obs) = rt.tasks.observation.observer() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "the eBPF observer is not running (see driver.bpfexec.probes)"})),
        );
    };
    let (Some(alloc), Some(name)) = (q.get("alloc"), q.get("task")) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "use /v1/tree?alloc=<alloc id>&task=<task name>"})),
        );
    };
    let task = rt
        .tasks
        .all()
        .into_iter()
        .find(|t| t.config.alloc_id.starts_with(alloc.as_str()) && &t.config.name == name);
    match task.and_then(|t| obs.tree(TaskKey::from_task_id(&t.state.task_id))) {
        Some(tree) => (
            StatusCode::OK,
            Json(serde_json::to_value(tree).unwrap_or(Value::Null)),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("no running task {name:?} in allocation {alloc:?}")})),
        ),
    }
}

async fn observer(State(rt): State<Arc<Runtime>>) -> (StatusCode, Json<Value>) {
    match rt.tasks.observation.observer() {
        Some(obs) => (
            StatusCode::OK,
            Json(serde_json::to_value(obs.stats()).unwrap_or(Value::Null)),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "the eBPF observer is not running"})),
        ),
    }
}
