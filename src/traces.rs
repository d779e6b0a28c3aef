//! Request traces: W3C trace context in and out, and optional OTLP export.
//!
//! Every request runs under a trace. A caller that sends `traceparent` (and `tracestate`)
//! has its trace continued; any other request starts one. claimgate's span for the request
//! has the stages as children (`authenticate`, `authorize`, `upstream`), and the upstream
//! receives a `traceparent` naming the `upstream` span as its parent, so the store's own
//! logs and spans join the same trace. The trace id also goes into the audit record, which
//! is how a security team gets from a record to the trace and back.
//!
//! Export is configured the way every OpenTelemetry SDK is, by the standard variables, so an
//! operator's existing collector settings apply unchanged:
//!
//! - `OTEL_TRACES_EXPORTER`: `otlp` exports, `none` does not. Unset, claimgate exports when
//!   an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`): a proxy that posts to `localhost:4318` nobody listens on
//!   would only log failures. `OTEL_SDK_DISABLED=true` turns export off.
//! - `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the one claimgate speaks; others are
//!   refused at start-up rather than silently ignored).
//! - `OTEL_EXPORTER_OTLP_*_HEADERS`, `*_TIMEOUT`, `*_COMPRESSION`, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*` as the SDK
//!   reads them.
//!
//! Without export, spans are recorded only when the caller's trace is sampled, and then go
//! nowhere: the cost on the hot path is making ids and writing one header.
//!
//! Spans carry what happened (route, operation, action, decision, rule, reason, status,
//! the request id) but never who the caller is: identity belongs in the audit log, whose
//! readers are the ones entitled to it, not in a tracing backend.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::audit::AuditRecord;
use crate::net;

/// How long an export may take when the environment names no timeout (the OTLP default).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is a small protobuf; more than this is not one.
const MAX_ANSWER: usize = 1 << 20;

/// Why tracing could not be set up as the environment asks.
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    /// An exporter claimgate does not have.
    #[error(
        "OTEL_TRACES_EXPORTER={0:?} is not supported: claimgate exports \"otlp\" (OTLP over HTTP) or \"none\""
    )]
    Exporter(String),
    /// A protocol claimgate does not speak.
    #[error("{var}={value:?} is not supported: claimgate exports OTLP as \"http/protobuf\"")]
    Protocol {
        /// The variable that asked for it.
        var: &'static str,
        /// What it asked for.
        value: String,
    },
    /// The exporter refused its settings (a bad endpoint URL, say).
    #[error("OTLP trace exporter: {0}")]
    Build(String),
    /// The outbound client could not be built.
    #[error("OTLP trace exporter client: {0}")]
    Client(String),
}

/// Makes each request's trace; shared by every config set (export settings come from the
/// environment, which a reload does not change). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Traces {
    tracer: SdkTracer,
    /// Present while exporting: flushed at shutdown so the last spans are not lost.
    exporting: Option<Arc<Exporting>>,
}

/// The exporting provider, shut down once: by [`Traces::shutdown`], or else when the last
/// `Traces` goes. The SDK's shutdown blocks until the last batch is posted, and posts run on
/// the runtime, so it must never run on a runtime thread: on a one-worker runtime, or a
/// current-thread one, that would wait forever.
#[derive(Debug)]
struct Exporting {
    provider: SdkTracerProvider,
    shut: AtomicBool,
}

impl Exporting {
    fn shutdown(&self, within: Duration) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Err(e) = self.provider.shutdown_with_timeout(within) {
            tracing::warn!(error = %e, "trace export did not finish at shutdown");
        }
    }
}

impl Drop for Exporting {
    fn drop(&mut self) {
        if !self.shut.swap(true, Ordering::AcqRel) {
            // Off the runtime: if the runtime is going away too, a post in flight fails and
            // the shutdown returns.
            let provider = self.provider.clone();
            let _ = std::thread::Builder::new()
                .name("trace-shutdown".into())
                .spawn(move || provider.shutdown_with_timeout(Duration::from_secs(5)));
        }
    }
}

impl Traces {
    /// Reads the `OTEL_*` variables. Must run inside the Tokio runtime that will post the
    /// exports.
    pub fn from_env() -> Result<Traces, TraceConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Traces that are never exported: spans are recorded only under a caller's sampled
    /// trace, and go nowhere.
    pub fn off() -> Traces {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        Traces {
            tracer: provider.tracer("claimgate"),
            exporting: None,
        }
    }

    fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Traces, TraceConfigError> {
        if !export_requested(&env)? {
            return Ok(Self::off());
        }
        for var in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env(var) {
                if value.trim() != "http/protobuf" {
                    return Err(TraceConfigError::Protocol { var, value });
                }
                break;
            }
        }
        let timeout = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
            .into_iter()
            .find_map(|var| env(var)?.trim().parse::<u64>().ok())
            .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis);
        let client = ExportClient::new(timeout, tokio::runtime::Handle::current())?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(client)
            .build()
            .map_err(|e| TraceConfigError::Build(e.to_string()))?;
        // The SDK's batch processor runs on a thread of its own and is woken only when a batch
        // is full or due: a span's end is one channel send, not a task wake-up per span.
        let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
        let mut resource = opentelemetry_sdk::Resource::builder();
        let named = env("OTEL_SERVICE_NAME").is_some()
            || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
        if !named {
            resource = resource.with_service_name("claimgate");
        }
        resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        // The sampler is the SDK's from OTEL_TRACES_SAMPLER (default: parent-based, always on).
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build();
        Ok(Traces {
            tracer: provider.tracer("claimgate"),
            exporting: Some(Arc::new(Exporting {
                provider,
                shut: AtomicBool::new(false),
            })),
        })
    }

    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.exporting.is_some()
    }

    /// Starts the request's span under the caller's trace context, if it sent one.
    pub fn start(&self, headers: &HeaderMap, method: &str, path: &str) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
        // Named and described once it is known to be recorded: most requests are not.
        let builder = self.tracer.span_builder("claimgate").with_kind(SpanKind::Server);
        let mut span = self.tracer.build_with_context(builder, &parent);
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.to_string()),
            ]);
        }
        RequestTrace {
            cx: parent.with_span(span),
            tracer: self.tracer.clone(),
        }
    }

    /// Sends what is still queued (at shutdown), waiting at most `within`. Blocks: call it
    /// off the runtime's threads (`spawn_blocking`).
    pub fn shutdown(&self, within: Duration) {
        if let Some(e) = &self.exporting {
            e.shutdown(within);
        }
    }
}

/// Whether the environment asks for export.
fn export_requested(env: &impl Fn(&str) -> Option<String>) -> Result<bool, TraceConfigError> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    match env("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        Some("otlp") => Ok(true),
        Some("none") => Ok(false),
        Some(other) if !other.is_empty() => Err(TraceConfigError::Exporter(other.to_string())),
        _ => Ok([
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .any(|var| env(var).is_some_and(|v| !v.trim().is_empty()))),
    }
}

/// One request's trace: its span, and the means to start the stages' spans under it.
pub struct RequestTrace {
    /// The caller's context with the request's span in it.
    cx: Context,
    tracer: SdkTracer,
}

impl RequestTrace {
    /// The trace id, 32 lowercase hex digits, as the audit record carries it.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Starts a stage's span; it ends when the returned guard is dropped.
    pub fn stage(&self, name: &'static str) -> Stage {
        let kind = if name == "upstream" {
            SpanKind::Client
        } else {
            SpanKind::Internal
        };
        let builder = self.tracer.span_builder(name).with_kind(kind);
        Stage {
            cx: self
                .cx
                .with_span(self.tracer.build_with_context(builder, &self.cx)),
        }
    }

    /// Ends the request's span with what its audit record says, less the identity. A 5xx
    /// marks it failed (a 4xx is the caller's doing, per the HTTP conventions).
    pub fn finish(&self, record: &AuditRecord) {
        let span = self.cx.span();
        if span.is_recording() {
            span.update_name(format!("{} {}", record.method, record.route));
            let mut attributes = vec![
                KeyValue::new("claimgate.request_id", record.request_id.clone()),
                KeyValue::new("claimgate.route", record.route.clone()),
                KeyValue::new("claimgate.decision", record.decision.as_str()),
                KeyValue::new("http.response.status_code", i64::from(record.status)),
            ];
            let optional = [
                ("claimgate.operation", record.operation.map(str::to_string)),
                ("claimgate.action", record.action.clone()),
                ("claimgate.rule", record.rule.clone()),
                ("claimgate.reason", record.reason.map(str::to_string)),
            ];
            for (key, value) in optional {
                if let Some(v) = value {
                    attributes.push(KeyValue::new(key, v));
                }
            }
            if let Some(status) = record.upstream_status {
                attributes.push(KeyValue::new("claimgate.upstream_status", i64::from(status)));
            }
            if record.incomplete {
                attributes.push(KeyValue::new("claimgate.incomplete", true));
            }
            span.set_attributes(attributes);
            if record.status >= 500 {
                span.set_status(Status::Error {
                    description: Cow::Owned(record.reason.unwrap_or_default().to_string()),
                });
            }
        }
        span.end();
    }
}

/// A stage's span, ended when dropped.
pub struct Stage {
    cx: Context,
}

impl Stage {
    /// Sets attributes on the stage's span.
    pub fn annotate(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// Marks the stage as failed, naming why (a reason, never a secret).
    pub fn failed(&self, reason: &'static str) {
        self.cx.span().set_status(Status::Error {
            description: Cow::Borrowed(reason),
        });
    }

    /// Puts this stage's context in `headers` as `traceparent`/`tracestate`, replacing the
    /// caller's: the upstream's span becomes this stage's child.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        TraceContextPropagator::new()
            .inject_context(&self.cx, &mut opentelemetry_http::HeaderInjector(headers));
        // The propagator writes `tracestate` even when there is none to pass on.
        if headers.get("tracestate").is_some_and(|v| v.is_empty()) {
            headers.remove("tracestate");
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// Posts OTLP batches with claimgate's own outbound client (its TLS roots, which honour
/// `SSL_CERT_FILE`, and its connect deadline), bounded as a whole by the export timeout.
/// The batch processor's thread is not a runtime thread: each post runs on the runtime that
/// built the client, and the thread waits for it.
#[derive(Debug)]
struct ExportClient {
    client: hyper_util::client::legacy::Client<net::Connector, Full<Bytes>>,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new(timeout: Duration, runtime: tokio::runtime::Handle) -> Result<ExportClient, TraceConfigError> {
        let connector = net::connector(None, timeout).map_err(TraceConfigError::Client)?;
        Ok(ExportClient {
            client: net::client(connector),
            timeout,
            runtime,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let (client, timeout) = (self.client.clone(), self.timeout);
        let exchange = async move {
            let response = client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        let posted = self
            .runtime
            // The deadline is made on the runtime too: a timer needs one.
            .spawn(async move { tokio::time::timeout(timeout, exchange).await })
            .await
            .map_err(|e| HttpError::from(format!("export task: {e}")))?;
        posted.map_err(|_| HttpError::from(format!("no answer within {timeout:?}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn export_follows_the_standard_variables() {
        assert!(
            !export_requested(&env(&[])).unwrap(),
            "no endpoint: nothing to post to"
        );
        assert!(export_requested(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap());
        assert!(
            export_requested(&env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://c:4318/v1/traces"
            )]))
            .unwrap()
        );
        assert!(export_requested(&env(&[("OTEL_TRACES_EXPORTER", "otlp")])).unwrap());
        assert!(
            !export_requested(&env(&[
                ("OTEL_TRACES_EXPORTER", "none"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
            ]))
            .unwrap()
        );
        assert!(
            !export_requested(&env(&[
                ("OTEL_SDK_DISABLED", "true"),
                ("OTEL_TRACES_EXPORTER", "otlp")
            ]))
            .unwrap()
        );
        let err = export_requested(&env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(err.to_string().contains("\"zipkin\" is not supported"), "{err}");
    }

    #[tokio::test]
    async fn a_protocol_claimgate_does_not_speak_is_refused_not_ignored() {
        let err = Traces::from_lookup(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\""),
            "{err}"
        );
        assert!(
            Traces::from_lookup(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]))
            .unwrap()
            .exporting()
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_callers_trace_is_continued_and_the_upstream_gets_a_child_of_ours() {
        let traces = Traces::off();
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = traces.start(
            &headers(&[("traceparent", caller), ("tracestate", "vendor=x")]),
            "GET",
            "/b/k",
        );
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let upstream = t.stage("upstream");
        let mut out = headers(&[("traceparent", caller)]);
        upstream.inject(&mut out);
        let sent = out["traceparent"].to_str().unwrap();
        let fields: Vec<&str> = sent.split('-').collect();
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
        assert_ne!(fields[2], "00f067aa0ba902b7", "our span is the upstream's parent");
        assert_eq!(fields[3], "01", "the caller's sampling decision is kept");
        assert_eq!(out["tracestate"], "vendor=x");
    }

    #[test]
    fn a_request_without_context_or_with_a_broken_one_gets_a_new_trace() {
        let traces = Traces::off();
        for h in [
            headers(&[]),
            headers(&[(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
            headers(&[("traceparent", "garbage")]),
            headers(&[(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            )]),
        ] {
            let t = traces.start(&h, "GET", "/");
            let id = t.trace_id();
            assert_eq!(id.len(), 32);
            assert_ne!(id, "00000000000000000000000000000000");
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
            let mut out = HeaderMap::new();
            t.stage("upstream").inject(&mut out);
            let sent = out["traceparent"].to_str().unwrap();
            assert!(sent.starts_with(&format!("00-{id}-")), "{sent}");
            assert!(out.get("tracestate").is_none(), "no empty tracestate is sent");
            assert!(sent.ends_with("-00"), "unsampled without export: {sent}");
        }
    }
}
