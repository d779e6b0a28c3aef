//! The request flow, in one place:
//! route → authenticate → classify → authorize → sign → forward, then one audit/metrics
//! step that always runs, whatever the outcome.
//!
//! [`handle`] never fails: every stage's refusal becomes a [`Rejection`] rendered in the
//! caller's dialect, and every request — allowed, refused or broken mid-stream — produces
//! exactly one audit record (emitted when the response body finishes or is dropped).

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::audit::{AuditIdentity, AuditLog, AuditRecord, AuditShadow};
use crate::body::form_file::{FileError, FileTail};
use crate::body::{BodyStats, Checked, OnFinish, ProxyBody, UpstreamBody};
use crate::classify::{
    self, ClassifyError, FormReader, PendingPostObject, PostForm, RequestTarget, S3Target,
};
use crate::clock::SharedClock;
use crate::config::{Config, RouteKind};
use crate::digest::Declared;
use crate::identity::chunked::{self, ChunkChain};
use crate::identity::post_policy::{FormSignature, PostPolicy, PostPolicyError};
use crate::identity::revocation::Revocations;
use crate::identity::session::{Keyring, Session};
use crate::identity::sigv4;
use crate::identity::sts::{self, StsError};
use crate::identity::{AuthError, Authenticator};
use crate::metrics::Metrics;
use crate::model::{AuthMethod, Identity, Operation};
use crate::policy::{Decision, PolicySet, ShadowOutcome};
use crate::rejection::{self, ErrorStyle, Rejection, UpstreamError};
use crate::upstream::post_sign::sign_form_upload;
use crate::upstream::sign::sign_upstream;
use crate::upstream::upload_id::{self, UploadIdError};
use crate::upstream::{Route, Router};

/// How long the upstream may take to send a response head.
const UPSTREAM_HEAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// The validated config.
    pub config: Arc<Config>,
    /// Upstream routes.
    pub router: Router,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// Seals and opens STS sessions; `None` when STS is off.
    pub keyring: Option<Arc<Keyring>>,
    /// The revocation list, when configured.
    pub revocations: Option<Arc<Revocations>>,
    /// Compiled policies.
    pub policies: Arc<PolicySet>,
    /// Audit writer.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time source.
    pub clock: SharedClock,
}

impl Proxy {
    /// Assembles the proxy from a config.
    pub fn new(
        config: Arc<Config>,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Result<Proxy, String> {
        let auth = Arc::new(Authenticator::new(
            &config.issuers,
            clock.clone(),
            metrics.clone(),
        )?);
        let keyring = match &config.sts {
            Some(sts) if sts.enabled => Some(Arc::new(Keyring::new(&sts.sealing_keys)?)),
            _ => None,
        };
        let revocations = match &config.revocations {
            Some(path) => Some(Arc::new(Revocations::load(path).map_err(|problems| {
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            })?)),
            None => None,
        };
        Ok(Proxy {
            router: Router::new(&config.routes)?,
            policies: config.policies.clone(),
            config,
            auth,
            keyring,
            revocations,
            audit,
            metrics,
            clock,
        })
    }
}

/// Per-request state that the final audit/metrics step reads.
///
/// If the request is dropped before its response body finishes (the client went away while
/// we waited on the upstream or the IdP), `Drop` still writes its record, marked incomplete
/// with status 499, so no request escapes the audit trail.
struct Ctx {
    /// Set once the record is written.
    done: bool,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    record: AuditRecord,
    style: ErrorStyle,
    bytes_in: Arc<BodyStats>,
    started: Instant,
}

/// Serves one request.
pub async fn handle(proxy: Arc<Proxy>, req: Request<Incoming>, remote: SocketAddr) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = new_request_id();
    let (parts, body) = req.into_parts();
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect());
    let mut ctx = Ctx {
        done: false,
        audit: proxy.audit.clone(),
        metrics: proxy.metrics.clone(),
        record: AuditRecord::new(
            request_id,
            parts.method.as_str(),
            parts.uri.path(),
            remote.to_string(),
            user_agent,
        ),
        style: ErrorStyle::S3,
        bytes_in: Arc::new(BodyStats::default()),
        started,
    };
    match run(&proxy, parts, body, &mut ctx).await {
        Ok(upstream) => respond_upstream(upstream, ctx),
        Err(rejection) => respond_rejection(&rejection, ctx),
    }
}

/// The stages, in order. Returns the upstream's response or the first refusal.
async fn run(
    proxy: &Proxy,
    mut parts: http::request::Parts,
    body: Incoming,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    // Connection-scoped headers go first: a header that `Connection` names is removed
    // before anything (signature verification included) looks at the request, so it
    // cannot be verified and then dropped.
    crate::upstream::sign::strip_hop_by_hop(&mut parts.headers);

    // STS: AssumeRoleWithWebIdentity on the main listener, before any S3 routing
    if let Some(keyring) = &proxy.keyring
        && sts::is_sts_request(&parts)
    {
        return Ok(assume_role(proxy, keyring, parts, body, ctx).await);
    }

    // route: the target is read once, and routing, classification and signing all use it
    let target = RequestTarget::read(&parts)?;
    let route = proxy
        .router
        .select(target.host(), target.path())
        .ok_or_else(|| Rejection::NoRoute {
            path: target.path().to_string(),
        })?
        .clone();
    ctx.record.route = route.config.name.clone();
    if route.config.kind == RouteKind::Http {
        ctx.style = ErrorStyle::Problem;
    }

    // authenticate (a browser form upload may carry its credentials in the form instead)
    let (identity, chunk_chain) = match authenticate(proxy, &parts).await {
        Ok(found) => found,
        Err(AuthError::Missing) if route.config.kind == RouteKind::S3 && classify::is_form_upload(&parts) => {
            return match classify(proxy, &route, &parts, &target)? {
                Classified::Form(pending) => {
                    form_upload(proxy, &route, parts, body, None, pending, ctx).await
                }
                Classified::Op(_) | Classified::NeedsBody(_) => {
                    proxy.metrics.auth_failure(AuthError::Missing.reason());
                    Err(AuthError::Missing.into())
                }
            };
        }
        Err(e) => {
            proxy.metrics.auth_failure(e.reason());
            return Err(e.into());
        }
    };
    admit(proxy, &route, &identity, ctx)?;

    // (the caller's body, the body forwarded in its place)
    let mut inspected: Option<(Bytes, Bytes)> = None;
    // classify (DeleteObjects: from its size-capped body; what is forwarded is a body written
    // from the authorized entries, never the caller's XML. PostObject: from its form, in a
    // flow of its own)
    let (operation, body) = match classify(proxy, &route, &parts, &target)? {
        Classified::Op(op) => (op, Some(body)),
        Classified::NeedsBody(pending) => {
            let xml = read_capped(body, proxy.config.server.max_inspected_body).await?;
            ctx.bytes_in.bytes.store(xml.len() as u64, Ordering::Relaxed);
            let list = classify::parse_delete_objects(&xml)?;
            let op = pending.finish(list.keys())?;
            inspected = Some((xml, Bytes::from(list.render())));
            (op, None)
        }
        Classified::Form(pending) => {
            return form_upload(proxy, &route, parts, body, Some(identity), pending, ctx).await;
        }
    };
    record_operation(&mut ctx.record, &operation);
    check_buckets(&route, &operation)?;

    // authorize
    let decision = proxy.policies.decide(&identity, &operation.accesses);
    record_decision(proxy, &route, &identity, &decision, ctx);
    let permit = decision.outcome.map_err(|denial| Rejection::Denied {
        message: denial.message(proxy.config.server.verbose_denials),
    })?;

    // The digests the body must match, read before signing replaces the caller's headers.
    let declared = Declared::from_headers(&parts.headers)?;
    if let Some((original, rewritten)) = &inspected {
        declared.check(original)?;
        describe_rewritten_body(&mut parts.headers, rewritten)?;
    }

    // Multipart upload ids: the caller's must have been issued for this bucket and key; the
    // store gets its own bare id back (see `upstream::upload_id`).
    let answer = unwrap_upload_id(&route, &operation, &mut parts, ctx)?;

    // sign
    if chunk_chain.is_some() {
        unframe_signed_chunks(&mut parts.headers);
    }
    sign_upstream(&permit, &operation, &mut parts, &route, proxy.clock.now())?;

    // forward
    let (body, bodyless) = match (body, inspected) {
        (Some(body), _) if chunk_chain.is_some() => {
            let chain = chunk_chain.ok_or(Rejection::Internal)?;
            let body = UpstreamBody::Chunked {
                inner: Box::new(chunked::VerifiedChunks::new(body, chain)),
                counter: ctx.bytes_in.clone(),
            };
            (body, false)
        }
        (Some(body), _) => {
            let bodyless = body.is_end_stream();
            let check = if declared.is_empty() {
                None
            } else if bodyless {
                // Nothing will stream: the empty body is checked here and now.
                declared.check(b"")?;
                None
            } else {
                Some(Checked::new(&declared))
            };
            let body = UpstreamBody::Stream {
                inner: body,
                counter: ctx.bytes_in.clone(),
                check,
            };
            (body, bodyless)
        }
        (None, inspected) => (
            UpstreamBody::Full(inspected.map(|(_, rewritten)| rewritten)),
            false,
        ),
    };
    let stats = ctx.bytes_in.clone();
    let resp = forward(proxy, &route, Request::from_parts(parts, body), bodyless)
        .await
        .map_err(|e| body_failure(&stats).unwrap_or(e))?;
    let resp = screen_upstream_auth_errors(proxy, &route, resp, ctx).await?;
    match answer {
        Some(answer) if resp.status().is_success() => {
            bind_upload_ids(proxy, &route, &answer, resp, ctx).await
        }
        _ => Ok(resp),
    }
}

/// Checks the upload id a multipart request carries against the bucket and key it was
/// authorized for and writes the store's bare id into the forwarded query. Returns what the
/// store's answer needs tagged, if anything. A foreign or untagged id ends the request here,
/// answered as S3 answers an unknown upload.
fn unwrap_upload_id(
    route: &Route,
    op: &Operation,
    parts: &mut http::request::Parts,
    ctx: &mut Ctx,
) -> Result<Option<upload_id::Answer>, Rejection> {
    if route.config.kind != RouteKind::S3 || !upload_id::involves(op) {
        return Ok(None);
    }
    let Some(binding) = &route.upload_ids else {
        // Route::new refuses S3 routes without a binding key; fail closed all the same.
        tracing::error!(route = %route.config.name, "S3 route without an upload-id binding key");
        return Err(Rejection::Internal);
    };
    upload_id::unwrap_request(binding, op, &mut parts.uri).map_err(|e| {
        if let UploadIdError::NoSuchUpload { detail } = &e {
            ctx.record.detail = Some((*detail).to_string());
        }
        e.into()
    })
}

/// Tags the upload ids in a successful CreateMultipartUpload, ListParts or
/// ListMultipartUploads answer. Only these small XML bodies are read whole, up to
/// [`upload_id::MAX_ANSWER`]; a larger or unreadable one is a 502, never passed on untagged.
async fn bind_upload_ids(
    proxy: &Proxy,
    route: &Route,
    answer: &upload_id::Answer,
    resp: Response<Reply>,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    use http_body_util::{BodyExt, Limited};
    let name = &route.config.name;
    let binding = route.upload_ids.as_ref().ok_or(Rejection::Internal)?;
    let (mut parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let refuse = |ctx: &mut Ctx, e: UploadIdError| -> Rejection {
        ctx.record.upstream_status = Some(status);
        proxy.metrics.upstream_error(name, "answer");
        tracing::error!(route = %name, operation = ctx.record.operation.unwrap_or("-"), error = %e, "upstream answer refused: its upload ids cannot be bound");
        e.into()
    };
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(refuse(
            ctx,
            UploadIdError::MalformedAnswer {
                reason: "the answer is content-encoded".into(),
            },
        ));
    }
    let xml = match body {
        Reply::Stream(body) => match Limited::new(body, upload_id::MAX_ANSWER).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(refuse(
                    ctx,
                    UploadIdError::AnswerTooLarge {
                        max: upload_id::MAX_ANSWER,
                    },
                ));
            }
            Err(_) => return Err(UpstreamError::Unreachable { route: name.clone() }.into()),
        },
        Reply::Buffered(b) | Reply::Local(b) => b,
    };
    let rewritten = upload_id::rewrite_answer(binding, answer, &xml).map_err(|e| refuse(ctx, e))?;
    for stale in ["content-md5", "etag"] {
        parts.headers.remove(stale);
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from_str(&rewritten.len().to_string()).map_err(|_| Rejection::Internal)?,
    );
    Ok(Response::from_parts(
        parts,
        Reply::Buffered(Bytes::from(rewritten)),
    ))
}

/// Records who is calling, then refuses what no credential may do here: an STS session on
/// an HTTP route, a revoked identity.
fn admit(proxy: &Proxy, route: &Route, identity: &Identity, ctx: &mut Ctx) -> Result<(), Rejection> {
    ctx.record.identity = Some(audit_identity(identity, &[]));
    if identity.method == AuthMethod::Session && route.config.kind == RouteKind::Http {
        // HTTP upstreams never see an S3-style payload hash, so nothing would hold a
        // session-signed body to its signature: sessions are for S3 routes.
        return Err(AuthError::UnsupportedScheme {
            scheme: "AWS SigV4 on an HTTP route (send Authorization: Bearer <token>)".into(),
        }
        .into());
    }
    if let Some(list) = &proxy.revocations
        && let Some(reason) = list.current().check(identity, proxy.clock.unix())
    {
        proxy.metrics.auth_failure("revoked");
        ctx.record.detail = Some(format!("revoked: {reason}"));
        return Err(AuthError::Revoked {
            reason: reason.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Why forwarding failed, when the caller's body is to blame (a digest or chunk signature
/// it broke, a form file out of its policy's range, an upload that broke off) rather than
/// the upstream: the caller is told, and the upstream is not counted against.
fn body_failure(stats: &BodyStats) -> Option<Rejection> {
    if let Some(e) = stats.form_failure() {
        return Some(match e {
            FileError::TooLarge { max } => AuthError::from(PostPolicyError::EntityTooLarge { max }).into(),
            FileError::TooSmall { min } => AuthError::from(PostPolicyError::EntityTooSmall { min }).into(),
            FileError::Unterminated => ClassifyError::MalformedPost {
                reason: e.to_string(),
            }
            .into(),
        });
    }
    if let Some(digest) = stats.digest_failure() {
        Some(Rejection::Digest(digest))
    } else if stats.bad_chunk_signature.load(Ordering::Relaxed) {
        Some(Rejection::Auth(AuthError::SigV4(
            sigv4::SigV4Error::SignatureDoesNotMatch,
        )))
    } else if stats.aborted.load(Ordering::Relaxed) {
        Some(Rejection::IncompleteBody)
    } else {
        None
    }
}

/// PostObject, a browser form upload: its key, its options and — without a bearer token —
/// its credentials are in the multipart body, so the stages run in the same order once the
/// form's fields are read:
///
/// read the fields (size-capped, up to the file) → authenticate (the bearer identity already
/// verified, or the form's signed POST policy) → classify → authorize → sign (a new form
/// with the route's own POST policy) → forward (the new fields, then the caller's file,
/// streamed and measured against the policy's `content-length-range`).
async fn form_upload(
    proxy: &Proxy,
    route: &Route,
    mut parts: http::request::Parts,
    mut body: Incoming,
    caller: Option<Arc<Identity>>,
    pending: PendingPostObject,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    if caller.as_ref().is_some_and(|id| id.method == AuthMethod::Session) {
        // A header or presigned-URL signature covers a body claimgate rebuilds: the form's
        // own policy is what S3 clients sign for a form upload.
        return Err(AuthError::UnsupportedScheme {
            scheme: "SigV4 in the Authorization header or query of a browser form upload: sign the form's \
                     POST policy instead (generate_presigned_post), or send a bearer token"
                .into(),
        }
        .into());
    }
    if !Declared::from_headers(&parts.headers)?.is_empty() {
        return Err(ClassifyError::InvalidArgument {
            reason: "Content-MD5 and a hex x-amz-content-sha256 cover the whole form, which claimgate \
                     rebuilds for the upstream; send the file's digest as a content-md5 or x-amz-checksum-* \
                     form field instead"
                .into(),
        }
        .into());
    }

    // the fields, up to the file's content
    let max = proxy.config.server.max_inspected_body;
    let (form, head) = read_form(&mut body, pending.reader(), max, &ctx.bytes_in).await?;

    // authenticate
    let (identity, length) = match caller {
        Some(identity) => {
            if let Some(field) = form.credential_fields().next() {
                return Err(AuthError::Ambiguous {
                    reason: format!(
                        "the request has an Authorization header and its form carries credentials too \
                         (`{field}`); send one"
                    ),
                }
                .into());
            }
            (identity, None)
        }
        None => {
            let (identity, length) = authenticate_form(proxy, &form, pending.bucket())
                .inspect_err(|e| proxy.metrics.auth_failure(e.reason()))?;
            let identity = Arc::new(identity);
            admit(proxy, route, &identity, ctx)?;
            (identity, length)
        }
    };

    // classify
    let operation = pending.finish(&form)?;
    record_operation(&mut ctx.record, &operation);
    check_buckets(route, &operation)?;

    // authorize
    let decision = proxy.policies.decide(&identity, &operation.accesses);
    record_decision(proxy, route, &identity, &decision, ctx);
    let permit = decision.outcome.map_err(|denial| Rejection::Denied {
        message: denial.message(proxy.config.server.verbose_denials),
    })?;

    // sign
    let prefix = sign_form_upload(
        &permit,
        &operation,
        &form,
        length.as_ref(),
        &mut parts,
        route,
        proxy.clock.now(),
    )?;

    // forward
    let first = head.slice(form.content_start()..);
    let file = FileTail::new(body, first, form.boundary(), length, ctx.bytes_in.clone());
    let body = UpstreamBody::Form {
        prefix: Some(prefix),
        file: Box::new(file),
    };
    let stats = ctx.bytes_in.clone();
    let resp = forward(proxy, route, Request::from_parts(parts, body), false)
        .await
        .map_err(|e| body_failure(&stats).unwrap_or(e))?;
    // The store may answer before it notices the file was cut short: the reason is ours.
    if stats.form_failure().is_some()
        && let Some(rejection) = body_failure(&stats)
    {
        return Err(rejection);
    }
    screen_upstream_auth_errors(proxy, route, resp, ctx).await
}

/// Reads a form upload's body up to the content of its file, refusing a field section larger
/// than `max`. Returns the form and every byte read (the first bytes of the file included).
async fn read_form(
    body: &mut Incoming,
    mut reader: FormReader,
    max: usize,
    stats: &BodyStats,
) -> Result<(PostForm, Bytes), Rejection> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        let eof = match body.frame().await {
            None => true,
            Some(Err(_)) => return Err(Rejection::IncompleteBody),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    stats.bytes.store(buf.len() as u64, Ordering::Relaxed);
                }
                false
            }
        };
        if let Some(form) = reader.advance(&buf, eof)? {
            if form.content_start() > max {
                return Err(ClassifyError::FormTooLarge { max }.into());
            }
            return Ok((form, buf.freeze()));
        }
        if buf.len() > max {
            return Err(ClassifyError::FormTooLarge { max }.into());
        }
    }
}

/// Authenticates a form upload by its SigV4 fields: the session they name, opened as for any
/// session-signed request, must have signed the policy, and the form must meet the policy at
/// the injected clock's time. Returns the identity and the file sizes the policy allows.
fn authenticate_form(
    proxy: &Proxy,
    form: &PostForm,
    bucket: &str,
) -> Result<(Identity, Option<RangeInclusive<u64>>), AuthError> {
    let Some(signed) = FormSignature::read(form)? else {
        return Err(AuthError::Missing);
    };
    let session = open_session(proxy, signed.access_key_id, signed.security_token)?;
    signed.verify(&session.secret_access_key)?;
    let policy = PostPolicy::decode(signed.policy)?;
    let length = policy.check(form, bucket, proxy.clock.unix())?;
    Ok((session_identity(session), length))
}

/// What the upstream answered: streamed, or read whole when we had to look inside.
enum Reply {
    /// The upstream's body, streamed.
    Stream(Incoming),
    /// The upstream's body, read whole.
    Buffered(Bytes),
    /// An answer claimgate made itself (STS); no upstream was involved.
    Local(Bytes),
}

/// S3 error codes that mean the upstream refused *claimgate's* credentials. Their bodies
/// carry the route's access key id, string-to-sign and signature, so they never reach the
/// caller: the caller gets a 502 naming the route, operators get the log line and metric.
const UPSTREAM_AUTH_CODES: [&str; 7] = [
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
];

/// Largest upstream error body read to look for its code.
const MAX_SCREENED_ERROR: u64 = 64 * 1024;

async fn screen_upstream_auth_errors(
    proxy: &Proxy,
    route: &Route,
    resp: Response<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    use http_body_util::BodyExt;
    let status = resp.status();
    let small = resp
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_SCREENED_ERROR);
    if route.config.kind != RouteKind::S3 || !matches!(status.as_u16(), 400 | 403) || !small {
        return Ok(resp.map(Reply::Stream));
    }
    let (parts, body) = resp.into_parts();
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(UpstreamError::Unreachable {
                route: route.config.name.clone(),
            }
            .into());
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let code = text
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or_default();
    if let Some(code) = UPSTREAM_AUTH_CODES.iter().find(|c| **c == code) {
        ctx.record.upstream_status = Some(status.as_u16());
        proxy.metrics.upstream_error(&route.config.name, "auth");
        tracing::error!(route = %route.config.name, upstream_code = %code, "upstream refused the route's credentials; check the route's credentials, region and clock");
        return Err(UpstreamError::CredentialsRefused {
            route: route.config.name.clone(),
            code,
        }
        .into());
    }
    Ok(Response::from_parts(parts, Reply::Buffered(bytes)))
}

/// Serves AssumeRoleWithWebIdentity: validate the web identity token as the bearer path
/// does, check the identity holds the role, and hand out a sealed session. Errors are
/// answered in STS's own XML; every call is audited.
async fn assume_role(
    proxy: &Proxy,
    keyring: &Keyring,
    parts: http::request::Parts,
    body: Incoming,
    ctx: &mut Ctx,
) -> Response<Reply> {
    use http_body_util::{BodyExt, Limited};
    ctx.record.route = "sts".into();
    ctx.record.operation = Some("AssumeRoleWithWebIdentity");
    ctx.record.action = Some("sts:AssumeRoleWithWebIdentity".into());
    let result = async {
        let max = proxy.config.server.max_inspected_body;
        let form = Limited::new(body, max)
            .collect()
            .await
            .map_err(|_| StsError::Validation(format!("the request body is larger than {max} bytes")))?
            .to_bytes();
        ctx.bytes_in.bytes.store(form.len() as u64, Ordering::Relaxed);
        let params: Vec<(String, String)> = url::form_urlencoded::parse(&form)
            .chain(url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let req = sts::parse(&params)?;
        ctx.record.resource = Some(req.role_arn.clone());
        let identity = proxy.auth.authenticate_bearer(&req.token).await.map_err(|e| {
            proxy.metrics.auth_failure(e.reason());
            StsError::from(e)
        })?;
        ctx.record.identity = Some(audit_identity(&identity, &[]));
        let now = proxy.clock.unix();
        if let Some(list) = &proxy.revocations
            && let Some(reason) = list.current().check(&identity, now)
        {
            ctx.record.detail = Some(format!("revoked: {reason}"));
            return Err(StsError::AccessDenied(
                "Not authorized to perform sts:AssumeRoleWithWebIdentity: the identity is revoked".into(),
            ));
        }
        if !proxy.policies.holds(&identity, &req.role) {
            ctx.record.decision = "deny";
            let held: Vec<String> = proxy.policies.roles_for(&identity).iter().map(|r| r.name.to_string()).collect();
            return Err(StsError::AccessDenied(format!(
                "Not authorized to perform sts:AssumeRoleWithWebIdentity: {} does not hold role {} (roles held: [{}])",
                identity.subject,
                req.role,
                held.join(", ")
            )));
        }
        let sts_config = proxy.config.sts.as_ref().ok_or(StsError::Internal)?;
        let length = sts::session_length(req.duration, sts_config.default_session, sts_config.max_session)?;
        let (access_key_id, secret_access_key) = crate::identity::session::new_credentials().map_err(|_| StsError::Internal)?;
        let session = Session {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            issuer: identity.issuer.clone(),
            subject: identity.subject.clone(),
            token_id: identity.token_id.clone(),
            role: req.role.clone(),
            session_name: req.session_name.clone(),
            claims: identity.claims.clone(),
            issued_at: now,
            expires_at: now.saturating_add(i64::try_from(length.as_secs()).unwrap_or(i64::MAX)),
        };
        let token = keyring.seal(&session).map_err(|e| {
            tracing::error!(error = %e, "cannot seal a session");
            StsError::Internal
        })?;
        let mut audited = audit_identity(&identity, std::slice::from_ref(&req.role));
        audited.session = Some(access_key_id.clone());
        ctx.record.identity = Some(audited);
        ctx.record.decision = "allow";
        let audience = identity
            .claim("aud")
            .and_then(|a| a.as_str().or_else(|| a.as_array()?.first()?.as_str()))
            .unwrap_or_default()
            .to_string();
        Ok(sts::success_xml(&sts::Issued {
            request: &req,
            subject: &identity.subject,
            audience: &audience,
            provider: &identity.issuer,
            access_key_id: &access_key_id,
            secret_access_key: &secret_access_key,
            session_token: &token,
            expires_at: session.expires_at,
            request_id: &ctx.record.request_id,
        }))
    }
    .await;
    let (status, xml) = match result {
        Ok(xml) => (http::StatusCode::OK, xml),
        Err(e) => {
            ctx.record.reason = Some(e.reason());
            ctx.record.detail.get_or_insert_with(|| e.to_string());
            (e.wire().0, e.to_xml(&ctx.record.request_id))
        }
    };
    let mut resp = Response::new(Reply::Local(Bytes::from(xml)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    // the answer carries a secret
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Who is calling: a SigV4 signature made with a claimgate STS session (AWS SDKs), or an
/// OIDC bearer token (everything that can set a header).
/// The identity, and for a signed aws-chunked upload the chain its chunks must continue.
async fn authenticate(
    proxy: &Proxy,
    parts: &http::request::Parts,
) -> Result<(Arc<Identity>, Option<ChunkChain>), AuthError> {
    // With two, which one a hop or the upstream honours is not ours to guess ("valid, then
    // `alg: none`" must not be served on the strength of the first).
    if parts
        .headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(AuthError::Ambiguous {
            reason: "the request has more than one Authorization header".into(),
        });
    }
    if parts.headers.contains_key(header::AUTHORIZATION) && has_query_credentials(parts.uri.query()) {
        return Err(AuthError::Ambiguous {
            reason: "the request carries both an Authorization header and presigned-URL credentials".into(),
        });
    }
    if let Some(claim) = sigv4::parse(parts)? {
        return authenticate_session(proxy, parts, &claim).map(|(id, chain)| (Arc::new(id), chain));
    }
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        if parts.uri.query().is_some_and(|q| q.contains("AWSAccessKeyId=")) {
            return Err(AuthError::UnsupportedScheme {
                scheme: "SigV2 presigned URL (create it with signature_version='s3v4')".into(),
            });
        }
        return Err(AuthError::Missing);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed {
        reason: "the Authorization header is not ASCII".into(),
    })?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme {
            scheme: scheme.chars().take(32).collect(),
        });
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed {
            reason: "the Bearer token is empty".into(),
        });
    }
    Ok((proxy.auth.authenticate_bearer(token).await?, None))
}

/// Whether the query holds a presigned URL's credentials (SigV4 or SigV2).
fn has_query_credentials(query: Option<&str>) -> bool {
    query.unwrap_or_default().split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        crate::sigv4::param::is_credential(&percent_encoding::percent_decode_str(name).decode_utf8_lossy())
    })
}

/// Opens the sealed session named by the request, checks it belongs to the signing access
/// key and is still live, then verifies the signature with the session's secret.
fn authenticate_session(
    proxy: &Proxy,
    parts: &http::request::Parts,
    claim: &sigv4::SigV4Claim,
) -> Result<(Identity, Option<ChunkChain>), AuthError> {
    let session = open_session(proxy, &claim.access_key_id, claim.session_token.as_deref())?;
    sigv4::verify(claim, parts, &session.secret_access_key, proxy.clock.unix())?;
    let payload = parts
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    let chain = match payload {
        Some(p) if !claim.presigned && (p == chunked::SIGNED || p == chunked::SIGNED_TRAILER) => {
            Some(ChunkChain::new(
                crate::sigv4::signing_key(
                    &session.secret_access_key,
                    &claim.scope_date,
                    &claim.region,
                    &claim.service,
                ),
                &claim.amz_date,
                &claim.credential_scope(),
                &claim.signature,
                p == chunked::SIGNED_TRAILER,
            ))
        }
        _ => None,
    };
    Ok((session_identity(session), chain))
}

/// Opens the sealed session `token` and checks it was issued with `access_key_id` and is
/// still live (the revocation list is checked once the identity is known, for every method).
fn open_session(proxy: &Proxy, access_key_id: &str, token: Option<&str>) -> Result<Session, AuthError> {
    let keyring = proxy.keyring.as_ref().ok_or(AuthError::UnknownAccessKey)?;
    let token = token.ok_or(AuthError::UnknownAccessKey)?;
    let session = keyring.unseal(token).map_err(|e| AuthError::SessionInvalid {
        reason: e.to_string(),
    })?;
    if session.access_key_id != access_key_id {
        return Err(AuthError::SessionInvalid {
            reason: "it was issued with another access key id".into(),
        });
    }
    let now = proxy.clock.unix();
    if now >= session.expires_at {
        return Err(AuthError::SessionExpired {
            ago: now - session.expires_at,
        });
    }
    Ok(session)
}

/// The identity a session carries: the one role it assumed.
fn session_identity(session: Session) -> Identity {
    Identity {
        issuer: session.issuer,
        subject: session.subject,
        claims: session.claims,
        method: AuthMethod::Session,
        token_id: session.token_id,
        session_role: Some(session.role),
        session_id: Some(session.access_key_id),
    }
}

/// A verified signed-chunk upload goes upstream as its bare bytes: the framing, the chunk
/// signatures and the trailers are consumed here, so the headers describing them go too.
fn unframe_signed_chunks(headers: &mut http::HeaderMap) {
    headers.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static(crate::sigv4::UNSIGNED_PAYLOAD),
    );
    match headers.remove("x-amz-decoded-content-length") {
        Some(len) => {
            headers.insert(header::CONTENT_LENGTH, len);
        }
        None => {
            headers.remove(header::CONTENT_LENGTH);
        }
    }
    let encodings: Vec<String> = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .map(str::to_string)
        .collect();
    headers.remove(header::CONTENT_ENCODING);
    if !encodings.is_empty()
        && let Ok(v) = HeaderValue::from_str(&encodings.join(","))
    {
        headers.insert(header::CONTENT_ENCODING, v);
    }
    headers.remove("x-amz-trailer");
}

/// Headers describing a body claimgate wrote in place of the caller's: its length, MD5 and
/// SHA-256 (which the upstream signature then covers); the caller's checksums described the
/// caller's bytes and go.
fn describe_rewritten_body(headers: &mut http::HeaderMap, body: &[u8]) -> Result<(), Rejection> {
    use base64::Engine as _;
    use md5::Digest as _;
    for name in [
        "content-md5",
        "x-amz-checksum-crc32",
        "x-amz-checksum-crc32c",
        "x-amz-checksum-crc64nvme",
        "x-amz-checksum-sha1",
        "x-amz-checksum-sha256",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-trailer",
        "x-amz-decoded-content-length",
    ] {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body));
    let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body));
    let value = |v: String| HeaderValue::try_from(v).map_err(|_| Rejection::Internal);
    headers.insert(header::CONTENT_LENGTH, value(body.len().to_string())?);
    headers.insert("content-md5", value(md5)?);
    headers.insert("x-amz-content-sha256", value(sha)?);
    Ok(())
}

/// What classification needs before authorization.
enum Classified {
    /// Classified from the request head.
    Op(Operation),
    /// DeleteObjects: the keys are in the body.
    NeedsBody(classify::PendingDeleteObjects),
    /// PostObject: the key, options and perhaps credentials are in the form.
    Form(PendingPostObject),
}

fn classify(
    proxy: &Proxy,
    route: &Route,
    parts: &http::request::Parts,
    target: &RequestTarget,
) -> Result<Classified, Rejection> {
    match route.config.kind {
        RouteKind::S3 => match classify::classify_s3(parts, target, &s3_target(proxy, route)) {
            Ok(op) => Ok(Classified::Op(op)),
            Err(ClassifyError::BodyRequired(pending)) => Ok(Classified::NeedsBody(pending)),
            Err(ClassifyError::FormRequired(pending)) => Ok(Classified::Form(pending)),
            Err(e) => Err(e.into()),
        },
        RouteKind::Http => Ok(Classified::Op(classify::classify_http(
            &route.config.name,
            route.config.path_prefix.as_deref(),
            parts,
        )?)),
    }
}

/// Reads a body that must be inspected whole, refusing one larger than `max`.
async fn read_capped(body: Incoming, max: usize) -> Result<Bytes, Rejection> {
    use http_body_util::{BodyExt, Limited};
    Limited::new(body, max)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Rejection::BadBody {
                    reason: format!(
                        "the request body is larger than the {max} bytes claimgate reads to authorize it"
                    ),
                }
            } else {
                Rejection::IncompleteBody
            }
        })
}

fn s3_target<'a>(proxy: &'a Proxy, route: &Route) -> S3Target<'a> {
    S3Target {
        virtual_host: proxy.config.server.public_host.as_deref(),
        keys: route.config.keys,
    }
}

/// An S3 route restricted to some buckets refuses the others before policy is consulted.
fn check_buckets(route: &Route, op: &Operation) -> Result<(), Rejection> {
    let Some(allowed) = &route.config.buckets else {
        return Ok(());
    };
    for access in &op.accesses {
        if access.resource == "s3://" {
            // Listing the account's buckets would show buckets this route does not serve.
            return Err(ClassifyError::NotImplemented {
                what: "ListBuckets on a route limited to some buckets".into(),
            }
            .into());
        }
        if let Some(rest) = access.resource.strip_prefix("s3://") {
            let bucket = rest.split('/').next().unwrap_or_default();
            if !bucket.is_empty() && !allowed.iter().any(|b| b == bucket) {
                return Err(Rejection::BucketNotServed {
                    bucket: bucket.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Sends the request upstream. The response-head timeout applies only to requests without
/// a body: with one, S3 answers after the whole upload, however long the caller takes.
async fn forward(
    proxy: &Proxy,
    route: &Route,
    req: Request<UpstreamBody>,
    bodyless: bool,
) -> Result<Response<Incoming>, Rejection> {
    let name = &route.config.name;
    let limit = if bodyless {
        UPSTREAM_HEAD_TIMEOUT
    } else {
        Duration::MAX
    };
    match tokio::time::timeout(limit, route.client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if req_aborted(&e) => Err(Rejection::IncompleteBody),
        Ok(Err(e)) => {
            proxy
                .metrics
                .upstream_error(name, if e.is_connect() { "connect" } else { "other" });
            tracing::warn!(route = %name, error = %e, "upstream request failed");
            Err(UpstreamError::Unreachable { route: name.clone() }.into())
        }
        Err(_) => {
            proxy.metrics.upstream_error(name, "timeout");
            Err(UpstreamError::Timeout { route: name.clone() }.into())
        }
    }
}

fn respond_upstream(resp: Response<Reply>, mut ctx: Ctx) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    if !matches!(body, Reply::Local(_)) {
        ctx.record.upstream_status = Some(parts.status.as_u16());
    }
    ctx.record.status = parts.status.as_u16();
    crate::upstream::sign::strip_hop_by_hop(&mut parts.headers);
    if let Some(theirs) = parts.headers.remove("x-amz-request-id") {
        parts.headers.insert("x-claimgate-upstream-request-id", theirs);
    }
    set_request_id(&mut parts.headers, &ctx.record.request_id);
    let finish = on_finish(ctx);
    let body = match body {
        Reply::Stream(b) => ProxyBody::upstream(b, finish),
        Reply::Buffered(b) | Reply::Local(b) => ProxyBody::full(b, Some(finish)),
    };
    Response::from_parts(parts, body)
}

fn respond_rejection(rejection: &Rejection, mut ctx: Ctx) -> Response<ProxyBody> {
    if matches!(rejection, Rejection::Internal) {
        tracing::error!(request_id = %ctx.record.request_id, "internal error");
    }
    let mut wire = rejection.wire_for(ctx.style);
    // Messages can quote what the caller sent; keep echoes (and audit lines) bounded.
    if wire.message.len() > 512 {
        let cut = (0..=512)
            .rev()
            .find(|&i| wire.message.is_char_boundary(i))
            .unwrap_or(0);
        wire.message.truncate(cut);
        wire.message.push('…');
    }
    let resp = rejection::render(&wire, ctx.style, &ctx.record.path, &ctx.record.request_id);
    ctx.record.status = wire.status.as_u16();
    // `decision` stays what authorize said (allow, deny), or `error` when no decision was
    // reached; `reason` says what ended the request.
    ctx.record.reason = Some(rejection.reason());
    ctx.record.detail.get_or_insert_with(|| wire.message.clone());
    let (mut parts, bytes) = resp.into_parts();
    set_request_id(&mut parts.headers, &ctx.record.request_id);
    let finish = on_finish(ctx);
    Response::from_parts(parts, ProxyBody::full(bytes, Some(finish)))
}

/// The always-run last step: once the response body is done, fill in sizes and duration,
/// write the audit record, count the metrics.
fn on_finish(mut ctx: Ctx) -> OnFinish {
    Box::new(move |bytes_out, complete| ctx.finish(bytes_out, complete))
}

impl Ctx {
    /// Fills in sizes and duration, writes the record, counts the metrics; once.
    fn finish(&mut self, bytes_out: u64, complete: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let record = &mut self.record;
        record.bytes_out = bytes_out;
        record.bytes_in = self.bytes_in.bytes.load(Ordering::Relaxed);
        record.duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
        record.incomplete = !complete;
        self.metrics.request(
            &record.route,
            record.action.as_deref().unwrap_or("-"),
            record.decision,
            record.status,
            elapsed.as_secs_f64(),
        );
        self.audit.write_now(record.clone());
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if !self.done {
            // 499: the client closed the request before any response (nginx's convention).
            self.record.status = 499;
            self.record.reason.get_or_insert("client_closed");
            self.finish(0, false);
        }
    }
}

fn record_operation(record: &mut AuditRecord, op: &Operation) {
    record.operation = Some(op.name);
    record.action = Some(op.primary().action.clone());
    record.resource = Some(op.primary().resource.clone());
    record.also = op.accesses[1..]
        .iter()
        .map(|a| format!("{} {}", a.action, a.resource))
        .collect();
}

fn record_decision(proxy: &Proxy, route: &Route, identity: &Identity, decision: &Decision, ctx: &mut Ctx) {
    let (roles, rule) = match &decision.outcome {
        Ok(permit) => (
            decision.roles.iter().map(|r| r.to_string()).collect(),
            permit.rules().first().map(|r| r.to_string()),
        ),
        Err(denial) => (denial.roles.clone(), denial.rule.as_ref().map(|r| r.to_string())),
    };
    // The identity was recorded right after authentication; only the roles are new.
    match ctx.record.identity.as_mut() {
        Some(recorded) => recorded.roles = roles,
        None => ctx.record.identity = Some(audit_identity(identity, &roles)),
    }
    ctx.record.decision = if decision.is_allowed() { "allow" } else { "deny" };
    ctx.record.rule = rule;
    if let Some(shadow) = &decision.shadow {
        proxy.metrics.shadow(&route.config.name, shadow.as_str());
        ctx.record.shadow = Some(AuditShadow {
            outcome: shadow.as_str(),
            rule: match shadow {
                ShadowOutcome::WouldAllow { rules } => rules.first().map(|r| r.to_string()),
                ShadowOutcome::WouldDeny(d) => d.rule.as_ref().map(|r| r.to_string()),
            },
        });
    }
}

fn audit_identity(identity: &Identity, roles: &[String]) -> AuditIdentity {
    AuditIdentity {
        iss: identity.issuer.clone(),
        sub: identity.subject.clone(),
        email: identity.claim_str("email").map(str::to_string),
        client_id: identity
            .claim_str("azp")
            .or_else(|| identity.claim_str("client_id"))
            .map(str::to_string),
        roles: roles.to_vec(),
        auth_method: identity.method.as_str(),
        token_id: identity.token_id.clone(),
        session: identity.session_id.clone(),
    }
}

fn set_request_id(headers: &mut http::HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-amz-request-id", v);
    }
}

/// 16 uppercase hex digits, like S3's request ids.
pub fn new_request_id() -> String {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(1);
        b = FALLBACK.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    }
    hex::encode_upper(b)
}

/// Whether a client error came from our side of the request body (the caller's upload
/// broke) rather than from the upstream.
fn req_aborted(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = cur {
        if let Some(h) = inner.downcast_ref::<hyper::Error>()
            && (h.is_user() || h.is_body_write_aborted())
        {
            return true;
        }
        cur = inner.source();
    }
    false
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
