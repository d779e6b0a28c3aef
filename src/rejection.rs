//! The edge: every refusal, whatever stage it came from, rendered the way the caller's
//! client expects — S3's XML error shape on S3 routes, an RFC 9457 problem on HTTP routes.
//!
//! The mapping is one exhaustive `match` per error type with no catch-all arm, so a new
//! variant anywhere forces a decision about its status and code here.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::classify::ClassifyError;
use crate::digest::DigestError;
use crate::identity::AuthError;
use crate::upstream::sign::SignError;
use crate::upstream::upload_id::UploadIdError;

/// Refusals of the forward stage.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Could not connect.
    #[error("upstream {route} is unreachable")]
    Unreachable {
        /// Route name.
        route: String,
    },
    /// Connected, then the upstream broke the exchange before a response head.
    #[error("upstream {route} broke off the exchange before answering; nothing was confirmed stored")]
    Broke {
        /// Route name.
        route: String,
    },
    /// The upstream refused claimgate's own credentials for the route (a configuration
    /// problem on our side, never the caller's).
    #[error(
        "upstream {route} refused claimgate's credentials for this route ({code}); the operators have been told"
    )]
    CredentialsRefused {
        /// Route name.
        route: String,
        /// The upstream's error code.
        code: &'static str,
    },
    /// claimgate has no credentials for the upstream right now (its STS, token endpoint
    /// or credential chain failed): the operators' problem, and perhaps a passing one.
    #[error("claimgate's credentials for upstream {route} are unavailable; the operators have been told")]
    CredentialsUnavailable {
        /// Route name.
        route: String,
    },
    /// No response head within the route's timeout.
    #[error("upstream {route} did not answer in time")]
    Timeout {
        /// Route name.
        route: String,
    },
}

/// Anything that ends a request before (or instead of) the upstream's answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The request could not be classified.
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    /// Policy denied it. The message is verbose or terse per config.
    #[error("{message}")]
    Denied {
        /// The denial message shown to the caller.
        message: String,
    },
    /// No route serves this path / host.
    #[error("no route serves {path}")]
    NoRoute {
        /// The request path.
        path: String,
    },
    /// The S3 route does not serve this bucket.
    #[error("bucket {bucket} is not served by this proxy")]
    BucketNotServed {
        /// The bucket.
        bucket: String,
    },
    /// The request could not be re-signed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The request body was larger than we read whole for authorization, or unreadable.
    #[error("{reason}")]
    BadBody {
        /// Why.
        reason: String,
    },
    /// The caller's request body ended before its declared length (connection closed
    /// mid-upload).
    #[error("the request body ended before the length the request declared")]
    IncompleteBody,
    /// The body does not match a digest the request declared, or the declaration is
    /// malformed; nothing was committed upstream.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A multipart upload id that claimgate did not issue for this bucket and key, or a
    /// store answer whose upload ids could not be bound.
    #[error(transparent)]
    UploadId(#[from] UploadIdError),
    /// The caller stopped sending its request body mid-way for longer than the idle limit.
    #[error(
        "the request body stopped arriving for longer than {0:?} (limits.client_body_idle_timeout); nothing was stored"
    )]
    BodyStalled(std::time::Duration),
    /// The caller has too many requests in flight, or is over its rate.
    #[error("{0}")]
    Throttled(Throttled),
    /// The audit log cannot be written and `[audit] on_failure = "refuse"`: no data moves
    /// without a record.
    #[error(
        "the audit log cannot be written now; data access is refused until it can (audit on_failure = \"refuse\")"
    )]
    AuditUnavailable,
    /// A bug or an unexpected failure; details go to the log, never to the caller.
    #[error("internal error")]
    Internal,
}

/// Which per-identity limit a request ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Throttled {
    /// `max_requests_per_identity` requests already in flight.
    #[error("too many requests in flight for this identity (at most {max} at once); retry after some finish")]
    Concurrency {
        /// The limit.
        max: usize,
    },
    /// Over `requests_per_second_per_identity`.
    #[error("request rate over this identity's limit; retry in {retry_after}s")]
    Rate {
        /// Whole seconds until a request would be admitted.
        retry_after: u64,
    },
}

impl Throttled {
    /// The limit's name in metrics and audit records.
    pub fn limit(&self) -> &'static str {
        match self {
            Throttled::Concurrency { .. } => "identity_concurrency",
            Throttled::Rate { .. } => "identity_rate",
        }
    }
}

/// How a rejection reads on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// HTTP status.
    pub status: StatusCode,
    /// S3-style error code (also used as the problem `code` on HTTP routes).
    pub code: &'static str,
    /// The human message.
    pub message: String,
}

impl Rejection {
    /// Stable short name for the audit record's `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Auth(e) => e.reason(),
            Rejection::Classify(ClassifyError::NeverForwarded { .. }) => "never_forwarded",
            Rejection::Classify(ClassifyError::InvalidUri { .. }) => "invalid_uri",
            Rejection::Classify(_) => "unclassified",
            Rejection::Denied { .. } => "policy",
            Rejection::NoRoute { .. } => "no_route",
            Rejection::BucketNotServed { .. } => "bucket_not_served",
            Rejection::Sign(_) => "unsignable",
            Rejection::Upstream(UpstreamError::Unreachable { .. }) => "upstream_unreachable",
            Rejection::Upstream(UpstreamError::Broke { .. }) => "upstream_broke",
            Rejection::Upstream(UpstreamError::CredentialsRefused { .. }) => "upstream_refused_credentials",
            Rejection::Upstream(UpstreamError::CredentialsUnavailable { .. }) => {
                "upstream_credentials_unavailable"
            }
            Rejection::Upstream(UpstreamError::Timeout { .. }) => "upstream_timeout",
            Rejection::BadBody { .. } => "bad_body",
            Rejection::IncompleteBody => "incomplete_body",
            Rejection::Digest(DigestError::InvalidMd5) => "invalid_digest",
            Rejection::Digest(DigestError::Sha256Mismatch | DigestError::Md5Mismatch) => "digest_mismatch",
            Rejection::UploadId(UploadIdError::NoSuchUpload { .. }) => "no_such_upload",
            Rejection::UploadId(
                UploadIdError::AnswerTooLarge { .. } | UploadIdError::MalformedAnswer { .. },
            ) => "upstream_answer_unreadable",
            Rejection::Throttled(t) => t.limit(),
            Rejection::BodyStalled(_) => "client_body_idle",
            Rejection::AuditUnavailable => "audit_unavailable",
            Rejection::Internal => "internal",
        }
    }

    /// The limit that refused the request, when a limit did (the
    /// `claimgate_limit_refusals_total` label, the same as [`Rejection::reason`]).
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Rejection::Throttled(_) | Rejection::BodyStalled(_) | Rejection::AuditUnavailable => {
                Some(self.reason())
            }
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), where that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::Throttled(Throttled::Rate { retry_after }) => Some(*retry_after),
            Rejection::Throttled(Throttled::Concurrency { .. }) | Rejection::AuditUnavailable => Some(1),
            _ => None,
        }
    }

    /// Status, code and message in the caller's dialect. S3 clients expect S3's 400/403
    /// for token problems; bearer-token HTTP APIs expect 401 (RFC 6750 §3.1).
    pub fn wire_for(&self, style: ErrorStyle) -> WireError {
        let mut wire = self.wire();
        if style == ErrorStyle::Problem
            && let Rejection::Auth(e) = self
            && !matches!(e, AuthError::KeysUnavailable { .. })
        {
            wire.status = StatusCode::UNAUTHORIZED;
        }
        // S3 clients back off and retry on 503 SlowDown; HTTP clients know 429.
        if style == ErrorStyle::Problem && matches!(self, Rejection::Throttled(_)) {
            wire.status = StatusCode::TOO_MANY_REQUESTS;
            wire.code = "TooManyRequests";
        }
        wire
    }

    /// Status, code and message (S3's statuses).
    pub fn wire(&self) -> WireError {
        let (status, code) = match self {
            Rejection::Auth(e) => auth_status(e),
            Rejection::Classify(e) => classify_status(e),
            Rejection::Denied { .. } => (StatusCode::FORBIDDEN, "AccessDenied"),
            Rejection::NoRoute { .. } => (StatusCode::NOT_FOUND, "NoSuchRoute"),
            Rejection::BucketNotServed { .. } => (StatusCode::NOT_FOUND, "NoSuchBucket"),
            Rejection::Sign(_) => (StatusCode::BAD_REQUEST, "InvalidRequest"),
            Rejection::Upstream(UpstreamError::Unreachable { .. } | UpstreamError::Broke { .. }) => {
                (StatusCode::BAD_GATEWAY, "BadGateway")
            }
            Rejection::Upstream(UpstreamError::CredentialsRefused { .. }) => {
                (StatusCode::BAD_GATEWAY, "BadGateway")
            }
            Rejection::Upstream(UpstreamError::Timeout { .. }) => {
                (StatusCode::GATEWAY_TIMEOUT, "GatewayTimeout")
            }
            Rejection::Upstream(UpstreamError::CredentialsUnavailable { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            Rejection::BadBody { .. } => (StatusCode::BAD_REQUEST, "MalformedXML"),
            Rejection::IncompleteBody => (StatusCode::BAD_REQUEST, "IncompleteBody"),
            Rejection::Digest(DigestError::Sha256Mismatch) => {
                (StatusCode::BAD_REQUEST, "XAmzContentSHA256Mismatch")
            }
            Rejection::Digest(DigestError::Md5Mismatch) => (StatusCode::BAD_REQUEST, "BadDigest"),
            Rejection::Digest(DigestError::InvalidMd5) => (StatusCode::BAD_REQUEST, "InvalidDigest"),
            Rejection::UploadId(UploadIdError::NoSuchUpload { .. }) => {
                (StatusCode::NOT_FOUND, "NoSuchUpload")
            }
            Rejection::UploadId(
                UploadIdError::AnswerTooLarge { .. } | UploadIdError::MalformedAnswer { .. },
            ) => (StatusCode::BAD_GATEWAY, "BadGateway"),
            Rejection::Throttled(_) => (StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
            // S3's answer to a client that stops sending: 400 RequestTimeout.
            Rejection::BodyStalled(_) => (StatusCode::BAD_REQUEST, "RequestTimeout"),
            Rejection::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Rejection::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let message = match self {
            Rejection::Internal => "We encountered an internal error. Please try again.".to_string(),
            other => other.to_string(),
        };
        WireError {
            status,
            code,
            message,
        }
    }
}

fn auth_status(e: &AuthError) -> (StatusCode, &'static str) {
    match e {
        AuthError::Missing | AuthError::Revoked { .. } => (StatusCode::FORBIDDEN, "AccessDenied"),
        AuthError::UnsupportedScheme { .. }
        | AuthError::SessionNotAccepted { .. }
        | AuthError::Ambiguous { .. } => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        AuthError::Expired { .. } => (StatusCode::BAD_REQUEST, "ExpiredToken"),
        AuthError::Malformed { .. }
        | AuthError::UnknownIssuer { .. }
        | AuthError::UnknownKey { .. }
        | AuthError::BadSignature
        | AuthError::DisallowedAlgorithm { .. }
        | AuthError::NotYetValid { .. }
        | AuthError::WrongAudience { .. } => (StatusCode::BAD_REQUEST, "InvalidToken"),
        AuthError::KeysUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "IdentityProviderUnavailable"),
        AuthError::SigV4(e) => (e.status(), e.s3_code()),
        AuthError::PostPolicy(e) => (e.status(), e.s3_code()),
        AuthError::UnknownAccessKey => (StatusCode::FORBIDDEN, "InvalidAccessKeyId"),
        AuthError::SessionInvalid { .. } => (StatusCode::BAD_REQUEST, "InvalidToken"),
        AuthError::SessionExpired { .. } => (StatusCode::BAD_REQUEST, "ExpiredToken"),
    }
}

fn classify_status(e: &ClassifyError) -> (StatusCode, &'static str) {
    match e {
        ClassifyError::NotImplemented { .. } => (StatusCode::NOT_IMPLEMENTED, "NotImplemented"),
        ClassifyError::InvalidUri { .. } => (StatusCode::BAD_REQUEST, "InvalidURI"),
        ClassifyError::InvalidBucketName { .. } => (StatusCode::BAD_REQUEST, "InvalidBucketName"),
        ClassifyError::InvalidArgument { .. } => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        ClassifyError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        ClassifyError::NeverForwarded { .. } => (StatusCode::FORBIDDEN, "AccessDenied"),
        ClassifyError::MalformedXml { .. } => (StatusCode::BAD_REQUEST, "MalformedXML"),
        ClassifyError::BodyRequired(_) | ClassifyError::FormRequired(_) => {
            (StatusCode::NOT_IMPLEMENTED, "NotImplemented")
        }
        ClassifyError::MalformedPost { .. } => (StatusCode::BAD_REQUEST, "MalformedPOSTRequest"),
        ClassifyError::FormTooLarge { .. } => (StatusCode::BAD_REQUEST, "MaxPostPreDataLengthExceededError"),
    }
}

/// Which error dialect the caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStyle {
    /// S3 XML (`<Error><Code>…`).
    S3,
    /// `application/problem+json`.
    Problem,
}

/// Renders a wire error. `resource` is the request path (never the query: presigned URLs
/// carry signatures there).
pub fn render(err: &WireError, style: ErrorStyle, resource: &str, request_id: &str) -> Response<Bytes> {
    let (content_type, body) = match style {
        ErrorStyle::S3 => (
            "application/xml",
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>\n",
                err.code,
                crate::xml_text::escape(&err.message),
                crate::xml_text::escape(resource),
                crate::xml_text::escape(request_id)
            ),
        ),
        ErrorStyle::Problem => (
            "application/problem+json",
            serde_json::json!({
                "type": "about:blank",
                "title": err.status.canonical_reason().unwrap_or("Error"),
                "status": err.status.as_u16(),
                "code": err.code,
                "detail": err.message,
                "instance": resource,
                "request_id": request_id,
            })
            .to_string(),
        ),
    };
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = err.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if style == ErrorStyle::Problem && err.status == StatusCode::UNAUTHORIZED {
        let challenge = if err.code == "AccessDenied" {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_errors_carry_code_message_resource_request_id() {
        let r = Rejection::Auth(AuthError::Expired { ago: 5 });
        let resp = render(&r.wire(), ErrorStyle::S3, "/b/<k>", "req1");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8(resp.body().to_vec()).unwrap();
        assert!(body.contains("<Code>ExpiredToken</Code>"));
        assert!(body.contains("<Resource>/b/&lt;k&gt;</Resource>"));
        assert!(body.contains("<RequestId>req1</RequestId>"));
    }

    #[test]
    fn keys_unavailable_is_503_not_a_token_error() {
        let w = Rejection::Auth(AuthError::KeysUnavailable { issuer: "i".into() }).wire();
        assert_eq!(w.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_ne!(w.code, "InvalidToken");
    }

    #[test]
    fn internal_errors_leak_nothing() {
        let w = Rejection::Internal.wire();
        assert_eq!(w.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!w.message.contains("internal error:"));
    }

    #[test]
    fn problem_json_for_http_routes() {
        let r = Rejection::Auth(AuthError::BadSignature);
        let resp = render(
            &r.wire_for(ErrorStyle::Problem),
            ErrorStyle::Problem,
            "/features/x",
            "id",
        );
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/problem+json");
        assert!(resp.headers().contains_key(header::WWW_AUTHENTICATE));
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["code"], "InvalidToken");
        assert_eq!(v["status"], 401);
    }
}
