//! Verifying AWS Signature Version 4 on incoming S3 requests, exactly as received.
//!
//! Clients that hold credentials issued by claimgate's STS sign every request with SigV4,
//! either in the `Authorization` header or as a presigned URL (`X-Amz-Signature` and friends
//! in the query). [`parse`] reads what the request *claims* (access key id, credential scope,
//! signed headers, time, session token) without trusting any of it; the session layer uses
//! the access key id and session token to find the secret, then [`verify`] checks the time
//! window and recomputes the signature from the request as it arrived.
//!
//! [`parse`] lives in `parse.rs`, [`verify`] in `verify.rs`; the canonical request and the
//! signing key are [`crate::sigv4`]'s, shared with the signer.
//!
//! ## Why not aws-sigv4
//!
//! aws-sigv4 (which [`crate::upstream::sign`] uses to sign *our* requests to the upstream) is a
//! signer: it adds its own `x-amz-date`, `x-amz-security-token` and `x-amz-content-sha256`,
//! decides by itself which headers to sign (leaving out `user-agent` and a few others,
//! adding `host` from the URI) and form-decodes the query (`+` becomes a space). A verifier
//! must instead rebuild the canonical request from exactly the headers the client listed in
//! `SignedHeaders`, with the values and the date the client sent, so this module builds it
//! itself. It follows S3's rules:
//!
//! - **canonical URI**: the path as received, each segment percent-decoded once and
//!   re-encoded with only `A-Z a-z 0-9 - _ . ~` left bare
//!   ([`crate::sigv4::canonical_s3_path`]); never dot-segment normalized, `//` kept;
//! - **canonical query**: every parameter (but `X-Amz-Signature` on a presigned URL), name
//!   and value percent-decoded (`+` stays `+`) and re-encoded the same way, sorted by name
//!   then value; a parameter without `=` has an empty value;
//! - **canonical headers**: each header in `SignedHeaders`, its values joined by `,`, each
//!   trimmed of spaces and with runs of spaces collapsed; `host` is the `Host` header or,
//!   without one (HTTP/2), the URI's authority;
//! - **payload**: see [`PayloadHash`].
//!
//! Beyond the signature, the request must carry every `x-amz-*` header signed (as S3
//! requires): claimgate re-signs `x-amz-*` headers for the upstream, so an unsigned one —
//! say an `x-amz-copy-source` added to a captured presigned PUT — would otherwise be
//! laundered into a validly signed upstream request. The two exceptions are headers whose
//! value the signature covers anyway: `x-amz-content-sha256` (the payload line) and, in the
//! header form, `x-amz-date` (the string to sign).
//!
//! The signature comparison is constant-time, and no error message ever contains the secret,
//! the signature or the session token.

mod parse;
mod verify;

pub use parse::parse;
pub use verify::{verify, verify_keyed, verify_with};

use std::borrow::Cow;
use std::fmt;

use crate::secret::Secret;
use crate::sigv4::{Carrier, DEFAULT_SKEW_SECS};

/// What a SigV4-authenticated request claims, parsed but not yet verified.
///
/// `Debug` redacts the signature and the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct SigV4Claim {
    /// The access key id from the credential scope: names the session.
    pub access_key_id: String,
    /// `yyyymmdd` from the credential scope; must be the date of `amz_date`.
    pub scope_date: String,
    /// Region from the credential scope (any region is accepted: it is signed).
    pub region: String,
    /// Service from the credential scope (`s3` for S3 routes).
    pub service: String,
    /// The signed header names, lowercase, in the (sorted) order listed.
    pub signed_headers: Vec<String>,
    /// The signature the client sent: lowercase hex, 64 characters.
    pub signature: String,
    /// The request time as sent (`yyyymmddThhmmssZ`): `x-amz-date` or `X-Amz-Date`.
    pub amz_date: String,
    /// `amz_date` as Unix seconds.
    pub request_time: i64,
    /// Presigned URLs only: `X-Amz-Expires`, the lifetime in seconds (1..=604800).
    pub expires: Option<u64>,
    /// The session token: the `x-amz-security-token` header (header form) or the
    /// `X-Amz-Security-Token` parameter (presigned; the header if there is no parameter).
    pub session_token: Option<Secret>,
    /// Where the signature travels: the `Authorization` header, or the query (a presigned
    /// URL).
    pub carrier: Carrier,
}

impl SigV4Claim {
    /// Whether the signature travels in the query (a presigned URL).
    pub fn is_presigned(&self) -> bool {
        self.carrier == Carrier::Query
    }

    /// The credential scope: `date/region/service/aws4_request`.
    pub fn credential_scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.scope_date, self.region, self.service
        )
    }
}

impl fmt::Debug for SigV4Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigV4Claim")
            .field("access_key_id", &self.access_key_id)
            .field("scope_date", &self.scope_date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signed_headers", &self.signed_headers)
            .field("signature", &"<redacted>")
            .field("amz_date", &self.amz_date)
            .field("request_time", &self.request_time)
            .field("expires", &self.expires)
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("carrier", &self.carrier)
            .finish()
    }
}

/// Why a SigV4 request was refused. Messages say what to fix and never contain the secret,
/// the expected or received signature, or the session token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigV4Error {
    /// The `Authorization` header or the presigned-URL parameters are not well-formed SigV4
    /// (missing or repeated parts, a bad credential scope or date, an unsupported algorithm,
    /// a scope date that is not the request's date, an `X-Amz-Expires` out of range).
    #[error("malformed SigV4 {}: {reason}", form_name(.presigned))]
    Malformed {
        /// Whether the request was a presigned URL (picks the S3 error code).
        presigned: bool,
        /// What is wrong.
        reason: String,
    },
    /// The recomputed signature differs from the one sent, or a signed header is missing.
    #[error(
        "the request signature does not match: check the secret access key for this access key id, and that \
         nothing changed the method, path, query or a signed header after signing"
    )]
    SignatureDoesNotMatch,
    /// The request time is too far from the server's clock (header form), or a presigned
    /// URL's `X-Amz-Date` is too far in the future.
    #[error(
        "request time {request_time} is more than {max_skew_secs} s away from server time {server_time}: \
         fix the client's clock (NTP)"
    )]
    RequestTimeTooSkewed {
        /// The request's time, RFC 3339.
        request_time: String,
        /// The server's time, RFC 3339.
        server_time: String,
        /// The allowed difference, in seconds.
        max_skew_secs: i64,
    },
    /// The presigned URL's lifetime (`X-Amz-Date` + `X-Amz-Expires`) has passed.
    #[error("request has expired: the presigned URL expired at {expired_at}; generate a new one")]
    PresignedExpired {
        /// When it expired, RFC 3339.
        expired_at: String,
    },
    /// Header-form S3 requests must carry `x-amz-content-sha256`.
    #[error(
        "missing x-amz-content-sha256 header: S3 requests signed in the Authorization header must send the \
         body's hex SHA-256, UNSIGNED-PAYLOAD or a STREAMING-* mode; configure the client for S3"
    )]
    MissingContentSha256,
    /// The credential scope names another service than this endpoint serves.
    #[error(
        "credential scope is for service {service:?}, but this endpoint is {expected:?}: sign for {expected:?}"
    )]
    WrongService {
        /// Whether the request was a presigned URL (picks the S3 error code).
        presigned: bool,
        /// The service in the credential scope.
        service: String,
        /// The service this endpoint verifies for.
        expected: String,
    },
    /// `x-amz-*` headers present in the request were not signed.
    #[error(
        "there were headers present in the request which were not signed: {headers}; sign every x-amz-* header \
         the request carries"
    )]
    HeadersNotSigned {
        /// The unsigned header names, comma-separated.
        headers: String,
    },
}

fn form_name(presigned: &bool) -> &'static str {
    if *presigned {
        "presigned URL"
    } else {
        "Authorization header"
    }
}

/// The leading `[A-Z0-9-]` run of a client-sent algorithm name, at most 32 characters: enough
/// to name it in an error without echoing whatever follows (a credential, a signature).
fn algorithm_name(s: &str) -> &str {
    let end = s
        .bytes()
        .take(32)
        .position(|b| !(b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'))
        .unwrap_or(s.len().min(32));
    &s[..end]
}

impl SigV4Error {
    /// The S3 error code S3 itself returns for this refusal.
    pub fn s3_code(&self) -> &'static str {
        match self {
            SigV4Error::Malformed { presigned, .. } | SigV4Error::WrongService { presigned, .. } => {
                if *presigned {
                    "AuthorizationQueryParametersError"
                } else {
                    "AuthorizationHeaderMalformed"
                }
            }
            SigV4Error::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            SigV4Error::RequestTimeTooSkewed { .. } => "RequestTimeTooSkewed",
            SigV4Error::PresignedExpired { .. } => "AccessDenied",
            SigV4Error::MissingContentSha256 => "InvalidRequest",
            SigV4Error::HeadersNotSigned { .. } => "AccessDenied",
        }
    }

    /// The HTTP status S3 returns with [`s3_code`](Self::s3_code).
    pub fn status(&self) -> http::StatusCode {
        match self {
            SigV4Error::Malformed { .. }
            | SigV4Error::WrongService { .. }
            | SigV4Error::MissingContentSha256 => http::StatusCode::BAD_REQUEST,
            SigV4Error::SignatureDoesNotMatch
            | SigV4Error::RequestTimeTooSkewed { .. }
            | SigV4Error::PresignedExpired { .. }
            | SigV4Error::HeadersNotSigned { .. } => http::StatusCode::FORBIDDEN,
        }
    }

    /// A stable snake_case label for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            SigV4Error::Malformed { .. } => "sigv4_malformed",
            SigV4Error::SignatureDoesNotMatch => "signature_mismatch",
            SigV4Error::RequestTimeTooSkewed { .. } => "request_time_skewed",
            SigV4Error::PresignedExpired { .. } => "presigned_expired",
            SigV4Error::MissingContentSha256 => "missing_content_sha256",
            SigV4Error::WrongService { .. } => "wrong_service",
            SigV4Error::HeadersNotSigned { .. } => "headers_not_signed",
        }
    }
}

/// Where the last line of the canonical request (the payload hash) comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PayloadHash {
    /// S3's rules. Header form: the `x-amz-content-sha256` header, verbatim, required
    /// ([`SigV4Error::MissingContentSha256`]). Presigned: that header if the request
    /// carries one, else `UNSIGNED-PAYLOAD` (what every SDK presigns with). Either way the
    /// body is not read here; the upstream checks a hex digest against the body.
    S3,
    /// The lowercase hex SHA-256 of the body as received, which the caller computed: SigV4
    /// outside S3 (and the published test vectors) signs the body's hash itself, in both
    /// forms, whether or not an `x-amz-content-sha256` header is sent.
    Body(String),
}

/// How [`verify_with`] checks a request; [`VerifyOptions::s3`] is what [`verify`] uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The service the credential scope must name (`s3`).
    pub service: Cow<'static, str>,
    /// The allowed difference between request and server time, in seconds (900).
    pub skew_secs: i64,
    /// Whether to check the time at all (off only for tests and offline diagnosis).
    pub check_time: bool,
    /// The payload-hash rule.
    pub payload: PayloadHash,
}

impl VerifyOptions {
    /// S3: service `s3`, 15 minutes of skew, time checked, S3 payload rules.
    pub const S3: VerifyOptions = VerifyOptions {
        service: Cow::Borrowed("s3"),
        skew_secs: DEFAULT_SKEW_SECS,
        check_time: true,
        payload: PayloadHash::S3,
    };

    /// [`VerifyOptions::S3`].
    pub fn s3() -> Self {
        Self::S3
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self::S3
    }
}

fn malformed(carrier: Carrier, reason: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed {
        presigned: carrier == Carrier::Query,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
