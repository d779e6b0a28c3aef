//! What one request has come to, phase by phase, and the always-run last step.
//!
//! The phases hand their typed outputs to [`Ctx`] as they produce them (the route, the
//! caller, the operation, the decision); the audit record is built from those once, when the
//! response body finishes or is dropped, and the request's metrics are counted then too. If
//! the request is dropped before its response body finishes (the client went away while we
//! waited on the upstream or the IdP), `Drop` still writes its record, marked incomplete
//! with status 499, so no request escapes the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use http::request::Parts;
use http::{HeaderValue, Response, header};

use super::Proxy;
use super::answer::Reply;
use super::throttle::InFlight;
use crate::audit::{AuditDecision, AuditIdentity, AuditLog, AuditRecord, AuditShadow, Slot};
use crate::body::form_file::FileError;
use crate::body::{BodyStats, Ending, OnFinish, ProxyBody};
use crate::classify::ClassifyError;
use crate::config::RouteKind;
use crate::identity::AuthError;
use crate::identity::post_policy::PostPolicyError;
use crate::identity::sigv4::SigV4Error;
use crate::metrics::Metrics;
use crate::model::{Identity, Operation};
use crate::policy::{Decision, ShadowOutcome};
use crate::rejection::{self, ErrorStyle, Rejection};
use crate::traces::{RequestTrace, Stage};
use crate::upstream::Route;
use crate::upstream::sign::strip_hop_by_hop;

/// The operation as the audit record names it.
struct Classified {
    name: &'static str,
    action: String,
    resource: String,
    also: Vec<String>,
}

/// Per-request state: the phases' outputs so far, and how the request ended.
pub(super) struct Ctx {
    /// Set once the record is written.
    done: bool,
    audit: AuditLog,
    /// The record's reserved place in the audit queue.
    slot: Option<Slot>,
    /// The caller's place in its per-identity in-flight count, released with the record.
    in_flight: Option<InFlight>,
    metrics: Arc<Metrics>,
    started: Instant,
    arrived: SystemTime,
    request_id: String,
    method: String,
    path: String,
    source: SocketAddr,
    user_agent: Option<String>,
    style: ErrorStyle,
    /// What the caller's body has done so far (bytes, and a failure it caused).
    pub(super) bytes_in: Arc<BodyStats>,
    route: Option<String>,
    /// How long the route's upstream may pause mid-body.
    upstream_idle: std::time::Duration,
    /// How long the caller may pause mid-body.
    client_idle: std::time::Duration,
    caller: Option<Arc<Identity>>,
    /// The roles the decision counted (`None` until a decision, or for STS until issued).
    roles: Option<Vec<String>>,
    /// An STS session issued to the caller by this request.
    issued_session: Option<String>,
    operation: Option<Classified>,
    decision: AuditDecision,
    rule: Option<String>,
    shadow: Option<AuditShadow>,
    /// More about how the request ended than the caller's message says.
    detail: Option<String>,
    /// The upstream's status, when it answered and its answer was not passed on as is.
    upstream_status: Option<u16>,
    status: u16,
    reason: Option<&'static str>,
    /// The request's trace: its span, ended with the record.
    trace: RequestTrace,
}

impl Ctx {
    /// A request that just arrived.
    pub(super) fn new(proxy: &Proxy, parts: &Parts, source: SocketAddr) -> Ctx {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        let trace = proxy
            .traces
            .start(&parts.headers, parts.method.as_str(), parts.uri.path());
        Ctx {
            trace,
            done: false,
            audit: proxy.audit.clone(),
            slot: None,
            in_flight: None,
            metrics: proxy.metrics.clone(),
            started: Instant::now(),
            arrived: SystemTime::now(),
            request_id: super::new_request_id(),
            method: parts.method.as_str().to_string(),
            path: parts.uri.path().to_string(),
            source,
            user_agent,
            style: ErrorStyle::S3,
            bytes_in: Arc::new(BodyStats::default()),
            route: None,
            upstream_idle: proxy.config.limits.upstream_body_idle_timeout,
            client_idle: proxy.config.limits.client_body_idle_timeout,
            caller: None,
            roles: None,
            issued_session: None,
            operation: None,
            decision: AuditDecision::Error,
            rule: None,
            shadow: None,
            detail: None,
            upstream_status: None,
            status: 0,
            reason: None,
        }
    }

    /// Starts a stage's span under the request's; it ends when dropped.
    pub(super) fn stage(&self, name: &'static str) -> Stage {
        self.trace.stage(name)
    }

    /// The record has its place in the audit queue.
    pub(super) fn reserved(&mut self, slot: Slot) {
        self.slot = Some(slot);
    }

    /// The caller was admitted under its per-identity limits.
    pub(super) fn admitted(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// The request's id, as sent to the caller in `x-amz-request-id`.
    pub(super) fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The route phase picked `route`; an HTTP route's refusals are JSON problems.
    pub(super) fn routed(&mut self, route: &Route) {
        self.route = Some(route.config.name.clone());
        self.upstream_idle = route.timeouts.body_idle;
        if route.config.kind() == RouteKind::Http {
            self.style = ErrorStyle::Problem;
        }
    }

    /// The authenticate phase proved who is calling.
    pub(super) fn authenticated(&mut self, identity: &Arc<Identity>) {
        self.caller = Some(identity.clone());
    }

    /// The classify phase read the operation.
    pub(super) fn classified(&mut self, op: &Operation) {
        self.operation = Some(Classified {
            name: op.name,
            action: op.primary().action.clone(),
            resource: op.primary().resource.to_string(),
            also: op
                .also()
                .iter()
                .map(|a| format!("{} {}", a.action, a.resource))
                .collect(),
        });
    }

    /// The operation's name, once classified.
    pub(super) fn operation_name(&self) -> &'static str {
        self.operation.as_ref().map_or("-", |o| o.name)
    }

    /// The upstream answered `status`, and its answer was refused rather than passed on.
    pub(super) fn upstream_refused(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    /// Says more than the caller's message will, for the audit record.
    pub(super) fn note(&mut self, detail: impl Into<String>) {
        self.detail = Some(detail.into());
    }

    /// The STS endpoint's call: there is no route, and the operation is fixed.
    pub(super) fn sts_call(&mut self, role_arn: Option<&str>) {
        self.route = Some("sts".into());
        self.operation = Some(Classified {
            name: "AssumeRoleWithWebIdentity",
            action: "sts:AssumeRoleWithWebIdentity".into(),
            // empty until the call names a role (the record then leaves it out)
            resource: role_arn.unwrap_or_default().to_string(),
            also: Vec::new(),
        });
    }

    /// STS issued `access_key_id`'s session, for `role`, to the caller.
    pub(super) fn issued(&mut self, role: &str, access_key_id: &str) {
        self.roles = Some(vec![role.to_string()]);
        self.issued_session = Some(access_key_id.to_string());
        self.decision = AuditDecision::Allow;
    }

    /// Policy refused what was asked without a decision record (STS: a role not held).
    pub(super) fn denied(&mut self) {
        self.decision = AuditDecision::Deny;
    }

    /// The authorize phase decided.
    pub(super) fn decided(&mut self, decision: &Decision, route: &str) {
        let (roles, rule) = match &decision.outcome {
            Ok(permit) => (
                decision.roles.iter().map(|r| r.to_string()).collect(),
                permit.rules().first().map(|r| r.to_string()),
            ),
            Err(denial) => (denial.roles.clone(), denial.rule.as_ref().map(|r| r.to_string())),
        };
        self.roles = Some(roles);
        self.rule = rule;
        self.decision = if decision.is_allowed() {
            AuditDecision::Allow
        } else {
            AuditDecision::Deny
        };
        if let Some(shadow) = &decision.shadow {
            self.metrics.shadow(route, shadow.as_str());
            self.shadow = Some(AuditShadow {
                outcome: shadow.as_str(),
                rule: match shadow {
                    ShadowOutcome::WouldAllow { rules } => rules.first().map(|r| r.to_string()),
                    ShadowOutcome::WouldDeny(d) => d.rule.as_ref().map(|r| r.to_string()),
                },
            });
        }
    }

    /// Counts an authentication failure decided outside the main flow (STS).
    pub(super) fn auth_failed(&mut self, e: &AuthError) {
        self.metrics.auth_failure(e.reason());
    }

    /// Why forwarding failed, when the caller's body is to blame (a digest or chunk
    /// signature it broke, a form file out of its policy's range, an upload that broke off)
    /// rather than the upstream: the caller is told, and the upstream is not counted against.
    pub(super) fn body_failure(&self) -> Option<Rejection> {
        let stats = &self.bytes_in;
        if let Some(e) = stats.form_failure() {
            return Some(match e {
                FileError::TooLarge { max } => {
                    AuthError::from(PostPolicyError::EntityTooLarge { max }).into()
                }
                FileError::TooSmall { min } => {
                    AuthError::from(PostPolicyError::EntityTooSmall { min }).into()
                }
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
                SigV4Error::SignatureDoesNotMatch,
            )))
        } else if stats.stalled.load(Ordering::Relaxed) {
            Some(Rejection::BodyStalled(self.client_idle))
        } else if stats.aborted.load(Ordering::Relaxed) {
            Some(Rejection::IncompleteBody)
        } else {
            None
        }
    }

    /// Passes the upstream's (or STS's) answer on; the record is written when its body ends.
    pub(super) fn respond(mut self, resp: Response<Reply>) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        if !matches!(body, Reply::Local(_)) {
            self.upstream_status = Some(parts.status.as_u16());
        }
        self.status = parts.status.as_u16();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(theirs) = parts.headers.remove("x-amz-request-id") {
            parts.headers.insert("x-claimgate-upstream-request-id", theirs);
        }
        set_request_id(&mut parts.headers, &self.request_id);
        let idle = self.upstream_idle;
        let finish = self.on_finish();
        let body = match body {
            Reply::Stream(b) => ProxyBody::upstream(b, idle, finish),
            Reply::Buffered(b) | Reply::Local(b) => ProxyBody::full(b, Some(finish)),
        };
        Response::from_parts(parts, body)
    }

    /// Answers a refusal in the caller's dialect; `decision` stays what authorize said
    /// (allow, deny), or `error` when no decision was reached, and `reason` says what ended
    /// the request.
    pub(super) fn refuse(mut self, rejection: &Rejection) -> Response<ProxyBody> {
        match rejection {
            Rejection::Internal => tracing::error!(request_id = %self.request_id, "internal error"),
            Rejection::Auth(e) => {
                self.metrics.auth_failure(e.reason());
                if let Some(identity) = e.proven_identity() {
                    self.caller.get_or_insert_with(|| identity.clone());
                }
                if let Some(detail) = e.audit_detail() {
                    self.detail = Some(detail);
                }
            }
            _ => {}
        }
        // Counted here, where every refusal is answered, like auth failures above.
        if let Some(limit) = rejection.limit() {
            self.metrics.limit_refusal(limit);
        }
        let mut wire = rejection.wire_for(self.style);
        // Messages can quote what the caller sent; keep echoes (and audit lines) bounded.
        if wire.message.len() > 512 {
            let cut = (0..=512)
                .rev()
                .find(|&i| wire.message.is_char_boundary(i))
                .unwrap_or(0);
            wire.message.truncate(cut);
            wire.message.push('…');
        }
        let resp = rejection::render(&wire, self.style, &self.path, &self.request_id);
        self.status = wire.status.as_u16();
        self.reason = Some(rejection.reason());
        self.detail.get_or_insert_with(|| wire.message.clone());
        let (mut parts, bytes) = resp.into_parts();
        set_request_id(&mut parts.headers, &self.request_id);
        if let Some(secs) = rejection.retry_after() {
            parts.headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let finish = self.on_finish();
        Response::from_parts(parts, ProxyBody::full(bytes, Some(finish)))
    }

    /// Ends the request with an answer claimgate wrote itself (STS), refused for `reason`.
    pub(super) fn ended(&mut self, reason: &'static str, detail: String) {
        self.reason = Some(reason);
        self.detail.get_or_insert(detail);
    }

    /// The always-run last step, once the response body is done.
    fn on_finish(self) -> OnFinish {
        let mut ctx = self;
        Box::new(move |bytes_out, ending| ctx.finish(bytes_out, ending))
    }

    /// Writes the record and counts the metrics; once.
    fn finish(&mut self, bytes_out: u64, ending: Ending) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A transfer the upstream broke or stalled is named as such: the caller saw an
        // error, never a short body passed off as whole.
        let broke = match ending {
            Ending::UpstreamBroke => Some(("upstream_broke", "the upstream broke off the response body")),
            Ending::UpstreamStalled => Some((
                "upstream_stalled",
                "the upstream stopped sending the response body",
            )),
            Ending::Complete | Ending::ClientGone => None,
        };
        if let Some((reason, detail)) = broke {
            self.reason = Some(reason);
            self.detail = Some(format!("{detail} after {bytes_out} bytes"));
            if let Some(route) = &self.route {
                self.metrics
                    .upstream_error(route, reason.trim_start_matches("upstream_"));
            }
        }
        let complete = ending == Ending::Complete;
        let elapsed = self.started.elapsed();
        let record = self.record(bytes_out, complete, elapsed.as_secs_f64());
        self.trace.finish(&record);
        self.metrics.request(
            &record.route,
            record.action.as_deref().unwrap_or("-"),
            record.decision.as_str(),
            record.status,
            elapsed.as_secs_f64(),
        );
        if record.decision == AuditDecision::Deny {
            let role = record
                .identity
                .as_ref()
                .and_then(|id| id.roles.first())
                .map_or("none", String::as_str);
            self.metrics
                .denial(&record.route, role, record.reason.unwrap_or("policy"));
        }
        match self.slot.take() {
            Some(slot) => slot.write(record),
            None => self.audit.write_unreserved(record),
        }
        self.in_flight = None;
    }

    /// The audit record, built once from what the phases produced.
    fn record(&mut self, bytes_out: u64, complete: bool, seconds: f64) -> AuditRecord {
        let operation = self.operation.take();
        let identity = self.caller.as_ref().map(|id| AuditIdentity {
            iss: id.issuer.clone(),
            sub: id.subject.clone(),
            email: id.claim_str("email").map(str::to_string),
            client_id: id
                .claim_str("azp")
                .or_else(|| id.claim_str("client_id"))
                .map(str::to_string),
            roles: self.roles.take().unwrap_or_default(),
            auth_method: id.method.as_str(),
            token_id: id.token_id.clone(),
            session: self
                .issued_session
                .take()
                .or_else(|| id.session_id().map(str::to_string)),
        });
        AuditRecord {
            time: humantime::format_rfc3339_millis(self.arrived).to_string(),
            request_id: self.request_id.clone(),
            route: self.route.take().unwrap_or_else(|| "-".into()),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            identity,
            operation: operation.as_ref().map(|o| o.name),
            action: operation.as_ref().map(|o| o.action.clone()),
            resource: operation
                .as_ref()
                .map(|o| o.resource.clone())
                .filter(|r| !r.is_empty()),
            also: operation.map(|o| o.also).unwrap_or_default(),
            decision: self.decision,
            rule: self.rule.take(),
            reason: self.reason,
            detail: self.detail.take(),
            shadow: self.shadow.take(),
            status: self.status,
            upstream_status: self.upstream_status,
            bytes_in: self.bytes_in.bytes.load(Ordering::Relaxed),
            bytes_out,
            duration_ms: (seconds * 1e6).round() / 1e3,
            source: self.source.to_string(),
            user_agent: self.user_agent.take(),
            incomplete: !complete,
            trace_id: Some(self.trace.trace_id()),
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if !self.done {
            // 499: the client closed the request before any response (nginx's convention).
            self.status = 499;
            self.reason.get_or_insert("client_closed");
            self.finish(0, Ending::ClientGone);
        }
    }
}

/// Records a connection refused before any request on it could be read: over the
/// connection limit, a request head that never came whole, or one too large. The record has
/// no route, method or path; `reason` names the limit and `detail` its setting.
pub fn connection_refused(
    proxy: &Proxy,
    source: SocketAddr,
    status: u16,
    reason: &'static str,
    detail: String,
) {
    proxy.metrics.limit_refusal(reason);
    proxy
        .metrics
        .request("-", "-", AuditDecision::Error.as_str(), status, 0.0);
    proxy.audit.write_unreserved(AuditRecord {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        request_id: super::new_request_id(),
        route: "-".into(),
        method: "-".into(),
        path: "-".into(),
        identity: None,
        operation: None,
        action: None,
        resource: None,
        also: Vec::new(),
        decision: AuditDecision::Error,
        rule: None,
        reason: Some(reason),
        detail: Some(detail),
        shadow: None,
        status,
        upstream_status: None,
        bytes_in: 0,
        bytes_out: 0,
        duration_ms: 0.0,
        source: source.to_string(),
        user_agent: None,
        incomplete: false,
        trace_id: None,
    });
}

fn set_request_id(headers: &mut http::HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-amz-request-id", v);
    }
}
