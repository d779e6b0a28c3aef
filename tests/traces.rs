//! Request traces: the caller's W3C trace context is continued, the upstream receives a
//! child of claimgate's span, the audit record carries the trace id, and with the standard
//! `OTEL_*` variables set the real `claimgate serve` process exports one span per request,
//! with its stages as children, to an OTLP/HTTP receiver run by the test.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;
use support::*;

/// An OTLP/HTTP receiver: decodes each protobuf export into its spans, with the service
/// name of the resource that sent them.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    posts: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let me = self.clone();
        serve_http(move |req| {
            let me = me.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                me.posts.lock().unwrap().push((
                    parts.uri.path().to_string(),
                    parts
                        .headers
                        .get("content-type")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default(),
                ));
                let export = ExportTraceServiceRequest::decode(body).unwrap();
                for rs in export.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s,
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            me.spans.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        })
        .await
    }

    /// The spans of `trace` once `n` have arrived (the exporter batches every 100 ms here).
    async fn trace(&self, trace: &[u8], n: usize) -> Vec<(String, Span)> {
        for _ in 0..200 {
            let spans: Vec<_> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.trace_id == trace)
                .cloned()
                .collect();
            if spans.len() >= n {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{n} spans of trace {} never arrived; got {:?}",
            hex::encode(trace),
            self.spans.lock().unwrap()
        );
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn get_with(p: &Process, path: &str, token: &str, traceparent: Option<&str>) -> Resp {
    let mut b = http::Request::builder()
        .method("GET")
        .uri(p.url(path))
        .header("authorization", format!("Bearer {token}"));
    if let Some(tp) = traceparent {
        b = b.header("traceparent", tp).header("tracestate", "caller=1");
    }
    p.client.send(b.body(full(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn a_request_is_one_exported_span_with_its_stages_under_the_callers_trace() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let object = s3.path("datasets", "train/a.bin");
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(object, b"hello").unwrap();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let p = proxy(&idp, &s3)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .spawn()
        .await;
    let token = idp.token("alice", &["ml-engineers"]);

    // allowed, under the caller's sampled trace
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let ok = get_with(&p, "/datasets/train/a.bin", &token, Some(&traceparent)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.body.as_ref(), b"hello");

    let trace = hex::decode(CALLER_TRACE).unwrap();
    let spans = receiver.trace(&trace, 4).await;
    let (service, root) = spans
        .iter()
        .find(|(_, s)| s.parent_span_id == hex::decode(CALLER_SPAN).unwrap())
        .expect("claimgate's span is a child of the caller's");
    assert_eq!(service, "claimgate", "service.name defaults to claimgate");
    assert_eq!(root.name, "GET lake");
    assert_eq!(root.kind, 2, "SERVER");
    assert_eq!(attr(root, "claimgate.decision").as_deref(), Some("allow"));
    assert_eq!(attr(root, "claimgate.operation").as_deref(), Some("GetObject"));
    assert_eq!(attr(root, "claimgate.action").as_deref(), Some("s3:GetObject"));
    assert_eq!(attr(root, "http.response.status_code").as_deref(), Some("200"));
    assert!(attr(root, "claimgate.rule").unwrap().contains("trainer"));
    let mut stages: Vec<&str> = spans
        .iter()
        .filter(|(_, s)| s.parent_span_id == root.span_id)
        .map(|(_, s)| s.name.as_str())
        .collect();
    stages.sort_unstable();
    assert_eq!(stages, ["authenticate", "authorize", "upstream"]);
    let authorize = &spans.iter().find(|(_, s)| s.name == "authorize").unwrap().1;
    assert_eq!(attr(authorize, "claimgate.decision").as_deref(), Some("allow"));
    let upstream = &spans.iter().find(|(_, s)| s.name == "upstream").unwrap().1;
    assert_eq!(upstream.kind, 3, "CLIENT");
    // the store saw the same trace, with claimgate's upstream span as its parent (and its
    // SigV4 check passed with the header added after signing: the 200 above)
    let at_store = s3.traceparents();
    assert_eq!(
        at_store.last().cloned().flatten(),
        Some(format!("00-{CALLER_TRACE}-{}-01", hex::encode(&upstream.span_id)))
    );
    assert_eq!(
        attr(upstream, "http.response.status_code").as_deref(),
        Some("200")
    );
    for (_, s) in &spans {
        assert!(s.start_time_unix_nano >= root.start_time_unix_nano);
        assert!(
            s.end_time_unix_nano <= root.end_time_unix_nano,
            "{} outlives the request",
            s.name
        );
    }
    // spans say what happened, never who: no subject, email or token in any attribute
    let all = format!("{spans:?}");
    assert!(!all.contains("alice"), "identity leaked into a span: {all}");
    assert!(!all.contains(&token[..40]), "token leaked into a span");
    let posts = receiver.posts.lock().unwrap().clone();
    assert!(
        posts
            .iter()
            .all(|(path, ct)| path == "/v1/traces" && ct == "application/x-protobuf"),
        "{posts:?}"
    );

    // the audit record carries the same trace id
    let records = wait_for_audit(&p, 1).await;
    assert_eq!(records[0]["trace_id"], CALLER_TRACE);
    assert_eq!(
        records[0]["request_id"].as_str(),
        attr(root, "claimgate.request_id").as_deref()
    );

    // denied, without a traceparent: a new trace, no upstream stage, nothing reached S3
    let before = s3.requests();
    let denied = get_with(
        &p,
        "/datasets/private/x",
        &idp.token("mallory", &["guests"]),
        None,
    )
    .await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        s3.requests(),
        before,
        "a denied request must not reach the upstream"
    );
    let records = wait_for_audit(&p, 2).await;
    let new_trace = records[1]["trace_id"].as_str().unwrap().to_string();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, CALLER_TRACE);
    let spans = receiver.trace(&hex::decode(&new_trace).unwrap(), 3).await;
    let root = &spans.iter().find(|(_, s)| s.parent_span_id.is_empty()).unwrap().1;
    assert_eq!(attr(root, "claimgate.decision").as_deref(), Some("deny"));
    assert_eq!(attr(root, "http.response.status_code").as_deref(), Some("403"));
    assert!(spans.iter().all(|(_, s)| s.name != "upstream"), "{spans:?}");
}

async fn wait_for_audit(p: &Process, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let records = p.audit_file("audit.log");
        if records.len() >= n {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} audit records never arrived:\n{}", p.stderr());
}

#[tokio::test]
async fn the_upstream_gets_a_child_of_claimgates_span_not_the_callers_header() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let feast = TestHttp::start().await;
    let route = feast.route();
    let policy = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [ { actions = ["http:GET"], resources = ["http://features/*"] } ]
"#;
    let p = proxy(&idp, &s3).policy(policy).extra(&route).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let get = |tp: Option<String>| {
        let mut b = http::Request::builder()
            .uri(p.url("/features/online"))
            .header("authorization", format!("Bearer {token}"));
        if let Some(tp) = tp {
            b = b.header("traceparent", tp).header("tracestate", "caller=1");
        }
        p.client.send(b.body(full(Bytes::new())).unwrap())
    };

    let ok = get(Some(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = feast.seen();
    let sent = seen[0]["traceparent"].as_str().unwrap();
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields.len(), 4, "{sent}");
    assert_eq!(fields[1], CALLER_TRACE, "the caller's trace goes on");
    assert_ne!(
        fields[2], CALLER_SPAN,
        "the upstream's parent is claimgate's span"
    );
    assert_eq!(fields[3], "01", "the caller's sampling decision goes on");
    assert_eq!(seen[0]["tracestate"], "caller=1");
    let records = p.audit(1).await;
    assert_eq!(records[0]["trace_id"], CALLER_TRACE);

    // no context from the caller: the upstream and the record share a new trace id
    let ok = get(None).await;
    assert_eq!(ok.status, 200);
    let sent = feast.seen()[1]["traceparent"].as_str().unwrap().to_string();
    let records = p.audit(2).await;
    let id = records[1]["trace_id"].as_str().unwrap();
    assert!(sent.starts_with(&format!("00-{id}-")), "{sent} vs {id}");
    assert_ne!(id, CALLER_TRACE);

    // a malformed traceparent is not passed on: a new trace replaces it
    let ok = get(Some("00-zz-not-a-trace".into())).await;
    assert_eq!(ok.status, 200);
    let sent = feast.seen()[2]["traceparent"].as_str().unwrap().to_string();
    assert!(!sent.contains("zz"), "{sent}");
    assert_eq!(sent.len(), 55, "{sent}");
}

#[tokio::test]
async fn an_exporter_claimgate_does_not_have_stops_the_start_with_a_clear_error() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("claimgate.toml");
    let b = proxy(&idp, &s3);
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/test.toml"), POLICY).unwrap();
    std::fs::write(dir.path().join("upstream.secret"), format!("{S3_SECRET_KEY}\n")).unwrap();
    std::fs::write(&config, b.config_text("")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\" is not supported"),
        "{err}"
    );
}
