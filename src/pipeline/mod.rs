//! The request flow, in one place: [`run`] reads top to bottom as the phases
//!
//! route → authenticate → classify → authorize → sign → forward
//!
//! each a call into the module that owns it, then one audit/metrics step that always runs,
//! whatever the outcome ([`context`]).
//!
//! [`handle`] never fails: every phase's refusal becomes a [`Rejection`] rendered in the
//! caller's dialect, and every request — allowed, refused or broken mid-stream — produces
//! exactly one audit record (emitted when the response body finishes or is dropped).
//! Two requests take a turn of their own: STS calls ([`sts`]) and browser form uploads,
//! whose credentials and key are in the body ([`form`]).

mod answer;
mod context;
mod form;
mod sts;
pub mod throttle;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::audit::AuditLog;
use crate::body::{Checked, ProxyBody, UpstreamBody};
use crate::classify::{self, ClassifyError, PendingPostObject, RequestTarget, S3Target};
use crate::clock::SharedClock;
use crate::config::{Config, OnAuditFailure, RouteApi, RouteKind};
use crate::digest::Declared;
use crate::identity::chunked::{ChunkChain, VerifiedChunks};
use crate::identity::{Accepts, AuthError, Authenticated, Authenticator};
use crate::metrics::Metrics;
use crate::model::{Identity, Operation, ResourceKind};
use crate::policy::{Permit, PolicySet};
use crate::rejection::{Rejection, UpstreamError};
use crate::traces::Traces;
use crate::upstream::credentials::{Caller, CredentialsError};
use crate::upstream::forward::{ForwardError, forward};
use crate::upstream::sign::{self, sign_upstream, strip_hop_by_hop};
use crate::upstream::{Downstream, Route, Router};
use answer::Reply;
use context::Ctx;
pub use context::connection_refused;

/// What outlives every config set: the audit writer, metrics, the clock and per-identity
/// limit state. Each [`Proxy`] holds a clone.
#[derive(Clone)]
pub struct Shared {
    /// Audit writer.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time source.
    pub clock: SharedClock,
    /// In-flight counts and rates per identity.
    pub throttle: Arc<throttle::Throttle>,
    /// Each request's trace (export settings come from the environment, not the config).
    pub traces: Traces,
}

/// One config set in force: everything a request needs, shared by all connections. A reload
/// builds a new one beside it; a request keeps the one it started with to its end.
pub struct Proxy {
    /// Which set this is: 1 at start, one more for each successful reload.
    pub generation: u64,
    /// The validated config.
    pub config: Arc<Config>,
    /// Accepts TLS connections with this set's certificate, when TLS is on.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Upstream routes.
    pub router: Router,
    /// Proves callers' credentials (tokens, sessions, revocation).
    pub auth: Arc<Authenticator>,
    /// Compiled policies.
    pub policies: Arc<PolicySet>,
    /// Audit writer.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time source.
    pub clock: SharedClock,
    /// Per-identity limits.
    pub throttle: Arc<throttle::Throttle>,
    /// Each request's trace.
    pub traces: Traces,
    /// This set's background work (issuer key refresh), stopped when the set is replaced.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    /// Assembles a config set from a validated config, whose keyring, revocation list,
    /// policies and TLS settings were built when it was validated. On a reload `previous`
    /// hands over the issuer keys that are still valid, so a reload never makes the proxy
    /// unready.
    pub fn new(
        config: Arc<Config>,
        shared: &Shared,
        generation: u64,
        previous: Option<&Proxy>,
    ) -> Result<Proxy, String> {
        let auth = Authenticator::new(
            &config.issuers,
            config.sts.as_ref().map(|s| s.keyring.clone()),
            config.revocations.clone(),
            shared.clock.clone(),
            shared.metrics.clone(),
            previous.map(|p| p.auth.as_ref()),
        )?;
        let tls = (config.server.tls.as_ref()).map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        Ok(Proxy {
            generation,
            tls,
            // One pool per running worker: a reload cannot change how many run.
            router: Router::new(
                &config.routes,
                &config.limits,
                previous.map_or(config.server.workers, |p| p.router.pools()),
                previous.map(|p| &p.router),
            )?,
            policies: config.policies.clone(),
            auth: Arc::new(auth),
            config,
            audit: shared.audit.clone(),
            metrics: shared.metrics.clone(),
            clock: shared.clock.clone(),
            throttle: shared.throttle.clone(),
            traces: shared.traces.clone(),
            background: Mutex::new(Vec::new()),
        })
    }

    /// Starts this set's background work.
    pub fn start_background(&self) {
        let tasks = self.auth.spawn_background();
        self.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(tasks);
    }

    /// Stops this set's background work (it was replaced, or the server is stopping).
    pub fn stop_background(&self) {
        for task in self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop_background();
    }
}

/// Serves one request.
pub async fn handle(proxy: Arc<Proxy>, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    // The record's place in the audit queue comes first: a request that cannot have a
    // record is refused before it does anything (or, with `on_failure = "serve"`, served
    // with its record written only if room turns up). While the sink is failing there is no
    // point waiting for room.
    let slot = if proxy.audit.is_up() {
        proxy.audit.reserve().await
    } else {
        proxy.audit.try_reserve()
    };
    let mut ctx = Ctx::new(&proxy, &parts, remote);
    match slot {
        Ok(slot) => ctx.reserved(slot),
        Err(full) if proxy.config.audit.on_failure == OnAuditFailure::Serve => {
            tracing::warn!(error = %full, "serving a request whose audit record may be dropped (on_failure = \"serve\")");
        }
        Err(full) => {
            tracing::error!(error = %full, "refusing a request: no room for its audit record");
            return ctx.refuse(&Rejection::AuditUnavailable);
        }
    }
    match run(&proxy, parts, body, &mut ctx).await {
        Ok(upstream) => ctx.respond(upstream),
        Err(rejection) => ctx.refuse(&rejection),
    }
}

/// The phases, in order. Returns the upstream's response or the first refusal.
async fn run(
    proxy: &Proxy,
    mut parts: Parts,
    body: Incoming,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    // A header that `Connection` names is removed before anything (signature verification
    // included) looks at the request, so it cannot be verified and then dropped.
    strip_hop_by_hop(&mut parts.headers);
    if let Some(config) = &proxy.config.sts
        && crate::identity::sts::is_sts_request(&parts)
    {
        return Ok(sts::assume_role(proxy, config, parts, body, ctx).await);
    }

    // route: the target is read once; routing, classification and signing all use it
    let target = RequestTarget::read(&parts)?;
    let route = select_route(proxy, &target, ctx)?;

    // authenticate (a browser form upload may carry its credentials in its form instead)
    let caller = match authenticate(proxy, &route, &parts, ctx).await {
        Err(Rejection::Auth(AuthError::Missing))
            if route.config.kind() == RouteKind::S3 && classify::is_form_upload(&parts) =>
        {
            return match classify(proxy, &route, &parts, &target)? {
                Classified::Form(pending) => {
                    form::upload(proxy, &route, parts, body, None, pending, ctx).await
                }
                Classified::Op(_) | Classified::NeedsBody(_) => Err(AuthError::Missing.into()),
            };
        }
        found => found?,
    };

    // classify (DeleteObjects: from its size-capped body, which is then written anew from
    // the authorized entries; PostObject: from its form, in a flow of its own)
    let (operation, inbound) = match classify(proxy, &route, &parts, &target)? {
        Classified::Op(op) => (*op, Inbound::Streamed(body)),
        Classified::NeedsBody(pending) => delete_objects(proxy, pending, body, ctx).await?,
        Classified::Form(pending) => {
            return form::upload(proxy, &route, parts, body, Some(caller.identity), pending, ctx).await;
        }
    };
    ctx.classified(&operation);
    check_buckets(&route, &operation)?;

    // authorize
    let permit = authorize(proxy, &route, &caller.identity, operation, ctx)?;

    // sign (the body's digests are read first: signing replaces the caller's headers)
    let declared = Declared::from_headers(&parts.headers)?;
    let answer = answer::unwrap_upload_id(&route, permit.operation(), &mut parts, ctx)?;
    let body = upstream_body(inbound, &declared, caller.chunks, &mut parts.headers, ctx)?;
    let downstream = downstream(proxy, &route, &caller.identity, &permit, &parts).await?;
    sign_upstream(permit, &mut parts, &route, &downstream, proxy.clock.now())?;

    // forward
    let resp = send(proxy, &route, Request::from_parts(parts, body), ctx).await?;
    answer::screen(proxy, &route, resp, answer, ctx).await
}

/// The route's credentials for this caller: its keys, a session assumed for the caller, or a
/// token from the route's token endpoint. A failure is the operators' to fix: the caller
/// learns only that the upstream's credentials are unavailable; the log says why.
async fn downstream(
    proxy: &Proxy,
    route: &Route,
    identity: &Identity,
    permit: &Permit,
    parts: &Parts,
) -> Result<Downstream, Rejection> {
    let caller = Caller {
        identity,
        role: permit
            .rules()
            .first()
            .map(|r| &*r.role)
            .or_else(|| identity.session_role()),
    };
    let caller_token = crate::identity::bearer_token(parts).ok();
    route.downstream(&caller, caller_token).await.map_err(|e| match e {
        // the caller's request lacks what its credentials need: its refusal, not an outage
        CredentialsError::NoRole | CredentialsError::NoCallerToken => Rejection::Denied {
            message: format!("Access denied: {e}"),
        },
        _ => {
            tracing::error!(route = %route.config.name, error = %e, "no upstream credentials for a request");
            proxy.metrics.upstream_error(&route.config.name, "credentials");
            Rejection::Upstream(UpstreamError::CredentialsUnavailable {
                route: route.config.name.clone(),
            })
        }
    })
}

/// Picks the route; an HTTP route's refusals are JSON problems from here on.
fn select_route(proxy: &Proxy, target: &RequestTarget, ctx: &mut Ctx) -> Result<Arc<Route>, Rejection> {
    let route = proxy
        .router
        .select(target.host(), target.path())
        .ok_or_else(|| Rejection::NoRoute {
            path: target.path().to_string(),
        })?
        .clone();
    ctx.routed(&route);
    Ok(route)
}

/// Who is calling, held against the revocation list; sessions are for S3 routes only.
async fn authenticate(
    proxy: &Proxy,
    route: &Route,
    parts: &Parts,
    ctx: &mut Ctx,
) -> Result<Authenticated, Rejection> {
    let accepts = match route.config.kind() {
        RouteKind::S3 => Accepts::BearerOrSession,
        RouteKind::Http => Accepts::Bearer,
    };
    let stage = ctx.stage("authenticate");
    let caller = match proxy.auth.authenticate(parts, accepts).await {
        Ok(caller) => caller,
        Err(e) => {
            // No credentials at all is how a browser form upload starts, not a failure yet.
            if !matches!(e, AuthError::Missing) {
                stage.failed(e.reason());
            }
            return Err(e.into());
        }
    };
    drop(stage);
    ctx.authenticated(&caller.identity);
    admit(proxy, &caller.identity, ctx)?;
    Ok(caller)
}

/// Holds the caller to its per-identity limits; the request counts as in flight until its
/// response body ends.
fn admit(proxy: &Proxy, identity: &Identity, ctx: &mut Ctx) -> Result<(), Rejection> {
    let admitted = (proxy.throttle)
        .admit(identity, &proxy.config.limits)
        .map_err(Rejection::Throttled)?;
    ctx.admitted(admitted);
    Ok(())
}

/// Policy decides; the audit record learns the roles, the rule and any shadow outcome.
fn authorize(
    proxy: &Proxy,
    route: &Route,
    identity: &Identity,
    operation: Operation,
    ctx: &mut Ctx,
) -> Result<Permit, Rejection> {
    let stage = ctx.stage("authorize");
    let decision = proxy.policies.decide(identity, operation);
    stage.annotate([opentelemetry::KeyValue::new(
        "claimgate.decision",
        if decision.is_allowed() { "allow" } else { "deny" },
    )]);
    drop(stage);
    ctx.decided(&decision, &route.config.name);
    decision.outcome.map_err(|denial| Rejection::Denied {
        message: denial.message(proxy.config.server.denials),
    })
}

/// What classification needs before authorization.
enum Classified {
    /// Classified from the request head.
    Op(Box<Operation>),
    /// DeleteObjects: the keys are in the body.
    NeedsBody(classify::PendingDeleteObjects),
    /// PostObject: the key, options and perhaps credentials are in the form.
    Form(PendingPostObject),
}

fn classify(
    proxy: &Proxy,
    route: &Route,
    parts: &Parts,
    target: &RequestTarget,
) -> Result<Classified, Rejection> {
    match &route.config.api {
        RouteApi::S3(config) => {
            let s3 = S3Target {
                virtual_host: proxy.config.server.public_host.as_deref(),
                keys: config.keys,
            };
            match classify::classify_s3(parts, target, &s3) {
                Ok(op) => Ok(Classified::Op(Box::new(op))),
                Err(ClassifyError::BodyRequired(pending)) => Ok(Classified::NeedsBody(pending)),
                Err(ClassifyError::FormRequired(pending)) => Ok(Classified::Form(pending)),
                Err(e) => Err(e.into()),
            }
        }
        RouteApi::Http(config) => Ok(Classified::Op(Box::new(classify::classify_http(
            &route.config.name,
            config.path_prefix.as_deref(),
            parts,
        )?))),
    }
}

/// The caller's body, as the sign phase takes it.
enum Inbound {
    /// Streamed through as it arrives.
    Streamed(Incoming),
    /// Read whole to authorize it (DeleteObjects), and forwarded as written anew.
    Rewritten {
        /// What the caller sent: its digests are checked against these bytes.
        original: Bytes,
        /// What goes upstream in its place.
        rewritten: Bytes,
    },
}

/// Classifies DeleteObjects from its size-capped body. What is forwarded is a body written
/// from the authorized entries, never the caller's XML.
async fn delete_objects(
    proxy: &Proxy,
    pending: classify::PendingDeleteObjects,
    body: Incoming,
    ctx: &mut Ctx,
) -> Result<(Operation, Inbound), Rejection> {
    let xml = read_capped(proxy, body, proxy.config.server.max_inspected_body).await?;
    ctx.bytes_in.bytes.store(xml.len() as u64, Ordering::Relaxed);
    let list = classify::parse_delete_objects(&xml)?;
    let op = pending.finish(list.keys())?;
    let rewritten = Bytes::from(list.render());
    Ok((
        op,
        Inbound::Rewritten {
            original: xml,
            rewritten,
        },
    ))
}

/// The body that goes upstream, held to the digests the caller declared (and for a signed
/// aws-chunked upload, to its chunk signatures), with the headers that describe it.
fn upstream_body(
    inbound: Inbound,
    declared: &Declared,
    chunks: Option<ChunkChain>,
    headers: &mut http::HeaderMap,
    ctx: &Ctx,
) -> Result<UpstreamBody, Rejection> {
    let counter = ctx.bytes_in.clone();
    match (inbound, chunks) {
        (Inbound::Rewritten { original, rewritten }, _) => {
            declared.check(&original)?;
            sign::describe_rewritten_body(headers, &rewritten)?;
            Ok(UpstreamBody::Full(Some(rewritten)))
        }
        (Inbound::Streamed(body), Some(chain)) => {
            sign::unframe_signed_chunks(headers);
            let inner = Box::new(VerifiedChunks::new(body, chain));
            Ok(UpstreamBody::Chunked { inner, counter })
        }
        (Inbound::Streamed(body), None) if body.is_end_stream() => {
            // Nothing will stream: the empty body is checked here and now.
            declared.check(b"")?;
            let body = UpstreamBody::Stream {
                inner: body,
                counter,
                check: None,
            };
            Ok(body)
        }
        (Inbound::Streamed(body), None) => {
            let check = (!declared.is_empty()).then(|| Checked::new(declared));
            let body = UpstreamBody::Stream {
                inner: body,
                counter,
                check,
            };
            Ok(body)
        }
    }
}

/// Forwards, blaming the caller's body (a digest or chunk signature it broke, an upload
/// that broke off) rather than the upstream when that is what failed.
async fn send(
    proxy: &Proxy,
    route: &Route,
    mut req: Request<UpstreamBody>,
    ctx: &Ctx,
) -> Result<Response<Incoming>, Rejection> {
    // No data moves without a record it can be written to (unless the operator chose
    // availability over the audit trail).
    if !proxy.audit.is_up() && proxy.config.audit.on_failure == OnAuditFailure::Refuse {
        return Err(Rejection::AuditUnavailable);
    }
    let name = route.config.name.clone();
    // The upstream's span is a child of this stage's: `traceparent` is replaced with ours.
    // It goes on after signing, unsigned, like any header S3 does not require signed.
    let stage = ctx.stage("upstream");
    stage.inject(req.headers_mut());
    let answer = forward(route, req, &proxy.metrics).await;
    match &answer {
        Ok(resp) => stage.annotate([opentelemetry::KeyValue::new(
            "http.response.status_code",
            i64::from(resp.status().as_u16()),
        )]),
        Err(e) => stage.failed(e.reason()),
    }
    drop(stage);
    answer.map_err(|e| {
        ctx.body_failure().unwrap_or(match e {
            ForwardError::CallerAborted => Rejection::IncompleteBody,
            ForwardError::Unreachable => UpstreamError::Unreachable { route: name }.into(),
            ForwardError::Broke => UpstreamError::Broke { route: name }.into(),
            ForwardError::Timeout => UpstreamError::Timeout { route: name }.into(),
        })
    })
}

/// Why a small body could not be read whole.
enum SmallBody {
    /// Over the cap.
    TooLarge,
    /// No data for the idle limit.
    Stalled,
    /// The caller's connection broke.
    Broken,
}

/// Reads a body that must be inspected whole (DeleteObjects XML, the STS form), refusing
/// one larger than `max` or pausing longer than `idle` between frames: a client cannot hold
/// a connection, a slot and memory by dripping it.
async fn read_small(mut body: Incoming, max: usize, idle: std::time::Duration) -> Result<Bytes, SmallBody> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(SmallBody::Stalled),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => return Err(SmallBody::Broken),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(SmallBody::TooLarge);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// [`read_small`] for a body classification needs, its failures as refusals.
async fn read_capped(proxy: &Proxy, body: Incoming, max: usize) -> Result<Bytes, Rejection> {
    let idle = proxy.config.limits.client_body_idle_timeout;
    read_small(body, max, idle).await.map_err(|e| match e {
        SmallBody::TooLarge => Rejection::BadBody {
            reason: format!(
                "the request body is larger than the {max} bytes claimgate reads to authorize it"
            ),
        },
        SmallBody::Stalled => Rejection::BodyStalled(idle),
        SmallBody::Broken => Rejection::IncompleteBody,
    })
}

/// An S3 route restricted to some buckets refuses the others before policy is consulted.
fn check_buckets(route: &Route, op: &Operation) -> Result<(), Rejection> {
    let Some(allowed) = route.config.s3().and_then(|s3| s3.buckets.as_ref()) else {
        return Ok(());
    };
    for access in op.accesses() {
        match access.resource.kind() {
            // Listing the account's buckets would show buckets this route does not serve.
            ResourceKind::S3Account => {
                return Err(ClassifyError::NotImplemented {
                    what: "ListBuckets on a route limited to some buckets".into(),
                }
                .into());
            }
            ResourceKind::S3 { bucket, .. } if !allowed.iter().any(|b| b == bucket) => {
                return Err(Rejection::BucketNotServed {
                    bucket: bucket.to_string(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// 16 uppercase hex digits, like S3's request ids.
pub fn new_request_id() -> String {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(1);
        b = FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    }
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut id = Vec::with_capacity(16);
    for b in b {
        id.extend([DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0xf)]]);
    }
    String::from_utf8(id).unwrap_or_default()
}

/// An answer the proxy makes itself (admin endpoints).
pub fn plain(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.into(), None));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
