//! Self-tests of the telemetry peers (`bpfexec_e2e::peers`) against the real binaries: Debian's
//! Prometheus scraping a real Nomad agent's `/v1/metrics?format=prometheus` (with a config
//! `promtool check config` accepts, and a rule file whose alert fires), and Jaeger receiving
//! spans from the real OpenTelemetry OTLP/gRPC exporter and an OTLP/HTTP request, listening on
//! loopback only.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use bpfexec_e2e::peers::prometheus::{self, RuleKind, TargetHealth};
use bpfexec_e2e::peers::{
    Jaeger, JaegerOptions, Prometheus, PrometheusConfig, QueryResult, ScrapeJob, TagValue,
};
use bpfexec_e2e::suite::{self, TIMEOUT};
use bpfexec_e2e::{Agent, Check, run_checks, unique};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn prometheus_peer() {
    run_checks(
        "peers",
        suite::options(),
        &[Check {
            name: "prometheus_scrapes_nomad",
            run: prometheus_scrapes_nomad,
        }],
    );
}

const RULES: &str = r#"groups:
  - name: peers-selftest
    rules:
      - record: peers:nomad_up:max
        expr: max(up{job="nomad"})
      - alert: PeersSelftestNomadScraped
        expr: up{job="nomad"} == 1
        labels:
          severity: info
        annotations:
          summary: "Nomad at {{ $labels.instance }} is scraped"
"#;

fn prometheus_scrapes_nomad(agent: &mut Agent) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("bpfexec-e2e-rules-")
        .tempdir()?;
    let rules = dir.path().join("selftest.rules.yml");
    std::fs::write(&rules, RULES)?;
    let prom = Prometheus::start(
        PrometheusConfig::new()
            .scrape(ScrapeJob::nomad(agent.addr()))
            .rule_file(&rules),
    )?;
    let checked = prometheus::check_config(prom.config_path())?;
    println!("promtool: {}", checked.trim());
    let listeners = prom.process().ensure_loopback_only()?;
    ensure!(
        listeners.contains(&format!("127.0.0.1:{}", prom.port())),
        "Prometheus does not listen on its port: {listeners:?}"
    );

    let targets = prom.wait_targets_up(WAIT)?;
    ensure!(
        targets.len() == 1
            && targets[0].job == "nomad"
            && targets[0].health == TargetHealth::Up
            && targets[0]
                .scrape_url
                .ends_with("/v1/metrics?format=prometheus"),
        "unexpected targets {targets:?}"
    );

    // A Nomad series, by the typed helpers.
    let samples = prom.wait_for_vector(r#"{__name__=~"nomad_client_.+", job="nomad"}"#, WAIT)?;
    let name = samples[0].metric_name().unwrap_or_default();
    ensure!(name.starts_with("nomad_client_"), "{samples:?}");
    let names = prom.label_values("__name__")?;
    ensure!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    let series = prom.series(&format!(r#"{name}{{job="nomad"}}"#))?;
    ensure!(!series.is_empty(), "no series for {name}");
    let up = prom.query_scalar(r#"up{job="nomad"}"#)?;
    ensure!((up - 1.0).abs() < f64::EPSILON, "up = {up}");
    let scalar = prom.query(r#"scalar(up{job="nomad"})"#)?;
    ensure!(
        matches!(scalar, QueryResult::Scalar { value, .. } if (value - 1.0).abs() < f64::EPSILON),
        "{scalar:?}"
    );
    let now = SystemTime::now();
    let range = prom.query_range(
        r#"up{job="nomad"}"#,
        now - Duration::from_secs(30),
        now,
        Duration::from_secs(1),
    )?;
    ensure!(
        range.len() == 1 && !range[0].points.is_empty(),
        "range: {range:?}"
    );

    // A bad query: the error names the query and carries Prometheus' own text.
    let err = prom
        .query(r#"rate(up{job="nomad"}"#)
        .err()
        .context("a bad query was accepted")?;
    let text = err.to_string();
    ensure!(
        err.status() == Some(400) && text.contains(r#"rate(up{job="nomad"}"#),
        "{text}"
    );
    ensure!(
        err.message().is_some_and(|m| m.starts_with("bad_data:")),
        "{text}"
    );

    exported_job_is_the_job_id(agent, &prom)?;
    rules_load_and_alerts_fire(&prom)
}

/// Without honor_labels a target's `job` label becomes `exported_job`: a running job's
/// allocation metrics carry its id there, and `job` is the scrape job's name.
fn exported_job_is_the_job_id(agent: &Agent, prom: &Prometheus) -> Result<()> {
    let job = suite::service("peers").command("/bin/sleep").args(["300"]);
    let id = job.id().to_owned();
    agent.api().register_job(&job.to_hcl())?;
    let alloc = agent.api().wait_job_alloc(&id, TIMEOUT)?;
    agent
        .api()
        .wait_alloc_status(&alloc, &["running"], TIMEOUT)?;
    let alloc_series = prom.wait_for_vector(
        &format!(r#"{{__name__=~"nomad_client_allocs_.+", exported_job="{id}"}}"#),
        WAIT,
    )?;
    ensure!(
        alloc_series
            .iter()
            .all(|s| s.label("job") == Some("nomad") && s.label("task").is_some()),
        "{alloc_series:?}"
    );
    agent.api().stop_job(&id, true)?;

    Ok(())
}

/// The rule file is loaded: the recording rule is healthy and the alert fires.
fn rules_load_and_alerts_fire(prom: &Prometheus) -> Result<()> {
    let alert = prom.wait_for_alert("PeersSelftestNomadScraped", &[("job", "nomad")], WAIT)?;
    ensure!(
        alert
            .annotations
            .get("summary")
            .is_some_and(|s| s.contains("is scraped") && !s.contains("{{")),
        "{alert:?}"
    );
    let groups = prom.rules()?;
    let group = groups
        .iter()
        .find(|g| g.name == "peers-selftest")
        .context("rule group missing")?;
    let recorded = group
        .rules
        .iter()
        .find(|r| r.kind == RuleKind::Recording)
        .context("recording rule missing")?;
    ensure!(
        recorded.name == "peers:nomad_up:max" && recorded.health == "ok",
        "{recorded:?}"
    );
    let value = prom.query_scalar("peers:nomad_up:max")?;
    ensure!((value - 1.0).abs() < f64::EPSILON, "recorded {value}");
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Sends a root span and a failed child with an event through the OTLP/gRPC exporter of
/// opentelemetry-otlp; returns the trace id.
fn export_over_grpc(endpoint: &str, service: &str, alloc: &str) -> Result<String> {
    use opentelemetry::trace::{
        Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
    };
    use opentelemetry::{Context as OtelContext, KeyValue};
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    let runtime = tokio_runtime()?;
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .with_attribute(KeyValue::new("host.name", "peers-selftest"))
                .build(),
        )
        .build();
    let tracer = provider.tracer("bpfexec-e2e");
    let root = tracer
        .span_builder("task selftest")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("nomad.alloc.id", alloc.to_owned()),
            KeyValue::new("process.pid", 42_i64),
        ])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    let cx = OtelContext::current_with_span(root);
    let mut child = tracer.start_with_context("sh", &cx);
    child.add_event(
        "exec",
        vec![KeyValue::new("process.executable.path", "/bin/sh")],
    );
    child.set_attribute(KeyValue::new("error.type", "signal"));
    child.set_status(Status::error("killed by SIGKILL"));
    child.end();
    cx.span().end();
    // The simple processor exported each span as it ended; shut down off the runtime's threads
    // (opentelemetry-rust #2583).
    std::thread::spawn(move || provider.shutdown())
        .join()
        .map_err(|_| anyhow::anyhow!("the provider shutdown panicked"))?
        .context("shutting the tracer provider down")?;
    Ok(trace_id)
}

/// Posts one span as OTLP/JSON to the OTLP/HTTP receiver; returns its trace id.
fn export_over_http(endpoint: &str, service: &str) -> Result<String> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let trace_id = format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0000);
    let body = serde_json::json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": service } } ] },
            "scopeSpans": [{
                "scope": { "name": "bpfexec-e2e" },
                "spans": [{
                    "traceId": trace_id,
                    "spanId": "00000000000000a1",
                    "name": "over-http",
                    "kind": 1,
                    "startTimeUnixNano": (nanos - 1_000_000).to_string(),
                    "endTimeUnixNano": nanos.to_string(),
                    "attributes": [ { "key": "transport", "value": { "stringValue": "http" } } ],
                }],
            }],
        }],
    });
    let url = format!("{endpoint}/v1/traces");
    let mut response = ureq::post(&url)
        .send_json(&body)
        .with_context(|| format!("POST {url}"))?;
    ensure!(
        response.status().is_success(),
        "POST {url}: HTTP {}: {}",
        response.status(),
        response.body_mut().read_to_string().unwrap_or_default()
    );
    Ok(trace_id)
}

#[test]
fn jaeger_receives_otlp_spans() -> Result<()> {
    let jaeger = Jaeger::start(&JaegerOptions::default())?;
    let listeners = jaeger.process().ensure_loopback_only()?;
    let ports = jaeger.ports();
    for port in [
        ports.otlp_grpc,
        ports.otlp_http,
        ports.query_http,
        ports.query_grpc,
        ports.metrics,
    ] {
        ensure!(
            listeners.contains(&format!("127.0.0.1:{port}")),
            "Jaeger does not listen on 127.0.0.1:{port}: {listeners:?}"
        );
    }
    println!("jaeger listens on {listeners:?}");
    let metrics = ureq::get(&jaeger.metrics_url())
        .call()?
        .body_mut()
        .read_to_string()?;
    ensure!(
        metrics.contains("otelcol_"),
        "no collector metrics at {}",
        jaeger.metrics_url()
    );

    let service = unique("peers-grpc");
    let alloc = unique("alloc");
    let trace_id = export_over_grpc(&jaeger.otlp_grpc_endpoint(), &service, &alloc)?;
    let trace = jaeger.wait_for_trace(&trace_id, WAIT, |t| t.spans.len() == 2)?;
    println!("{}", trace.render_tree());
    let tree = trace.tree();
    ensure!(
        tree.len() == 1 && tree[0].children.len() == 1,
        "{}",
        trace.render_tree()
    );
    let root = tree[0].span;
    let child = tree[0].children[0].span;
    ensure!(root.operation_name == "task selftest", "{root:?}");
    ensure!(
        root.tag_str("nomad.alloc.id") == Some(alloc.as_str()),
        "{root:?}"
    );
    ensure!(
        root.tag("process.pid") == Some(&TagValue::Int(42)),
        "{root:?}"
    );
    ensure!(root.process.service_name == service, "{root:?}");
    ensure!(
        root.process.tag("host.name").and_then(TagValue::as_str) == Some("peers-selftest"),
        "{:?}",
        root.process
    );
    ensure!(!root.is_error(), "{root:?}");
    ensure!(
        child.operation_name == "sh" && child.parent_id() == Some(root.span_id.as_str()),
        "{child:?}"
    );
    ensure!(child.is_error(), "{child:?}");
    ensure!(
        child.tag_str("otel.status_description") == Some("killed by SIGKILL"),
        "{child:?}"
    );
    let exec = child.events("exec").next().context("no exec event")?;
    ensure!(
        exec.field("process.executable.path")
            .and_then(TagValue::as_str)
            == Some("/bin/sh"),
        "{exec:?}"
    );

    ensure!(jaeger.services()?.contains(&service), "service not listed");
    let found = jaeger.wait_for_traces(&service, &[("nomad.alloc.id", &alloc)], WAIT, |t| {
        !t.is_empty()
    })?;
    ensure!(
        found.len() == 1 && found[0].trace_id == trace.trace_id,
        "find_traces: {found:?}"
    );
    let errors = jaeger.find_traces(&service, &[("error.type", "signal")], 10)?;
    ensure!(errors.len() == 1, "error.type=signal: {errors:?}");
    let none = jaeger.find_traces(&service, &[("nomad.alloc.id", "no-such-alloc")], 10)?;
    ensure!(none.is_empty(), "unexpected {none:?}");
    let missing = jaeger
        .trace("0123456789abcdef0123456789abcdef")
        .err()
        .context("an unknown trace was found")?;
    ensure!(missing.is_not_found(), "{missing}");

    let http_service = unique("peers-http");
    let http_trace = export_over_http(&jaeger.otlp_http_endpoint(), &http_service)?;
    let trace = jaeger.wait_for_trace(&http_trace, WAIT, |t| !t.spans.is_empty())?;
    ensure!(
        trace.spans[0].operation_name == "over-http"
            && trace.spans[0].tag_str("transport") == Some("http")
            && trace.spans[0].process.service_name == http_service,
        "{trace:?}"
    );
    Ok(())
}
