//! Verifying AWS Signature Version 4 on incoming S3 requests, exactly as received.
//!
//! Clients that hold credentials issued by claimgate's STS sign every request with SigV4,
//! either in the `Authorization` header or as a presigned URL (`X-Amz-Signature` and friends
//! in the query). [`parse`] reads what the request *claims* (access key id, credential scope,
//! signed headers, time, session token) without trusting any of it; the session layer uses
//! the access key id and session token to find the secret, then [`verify`] checks the time
//! window and recomputes the signature from the request as it arrived.
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
//!   ([`canonical_s3_path`]); never dot-segment normalized, `//` kept;
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

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use aws_lc_rs::{constant_time, digest, hmac};
use http::HeaderMap;
use http::request::Parts;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};

use crate::upstream::sign::canonical_s3_path;

/// The only algorithm SigV4 (as opposed to SigV4a) uses.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The payload hash S3 uses for presigned URLs.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The longest lifetime of a presigned URL: 7 days, as S3 allows.
pub const MAX_PRESIGNED_EXPIRES: u64 = 604_800;

/// S3's clock-skew window: 15 minutes either way.
pub const DEFAULT_SKEW_SECS: i64 = 900;

/// The characters SigV4 leaves unencoded: `A-Z a-z 0-9 - _ . ~`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Presigned-URL query parameters.
mod param {
    pub(super) const ALGORITHM: &str = "X-Amz-Algorithm";
    pub(super) const CREDENTIAL: &str = "X-Amz-Credential";
    pub(super) const DATE: &str = "X-Amz-Date";
    pub(super) const EXPIRES: &str = "X-Amz-Expires";
    pub(super) const SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
    pub(super) const SIGNATURE: &str = "X-Amz-Signature";
    pub(super) const SECURITY_TOKEN: &str = "X-Amz-Security-Token";
}

const X_AMZ_DATE: &str = "x-amz-date";
const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";

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
    pub session_token: Option<String>,
    /// Whether the signature travels in the query (a presigned URL) rather than in the
    /// `Authorization` header.
    pub presigned: bool,
}

impl SigV4Claim {
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
            .field("presigned", &self.presigned)
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

/// Reads the SigV4 claim from a request, checking its form but nothing cryptographic.
///
/// `Ok(None)` when the request carries no SigV4 at all: no `Authorization: AWS4-HMAC-SHA256 …`
/// and no `X-Amz-Algorithm` query parameter (so `Authorization: Bearer …` and SigV2 pass
/// through). A request carrying both forms, or another `AWS4-*` algorithm (SigV4a), is
/// [`SigV4Error::Malformed`].
pub fn parse(parts: &Parts) -> Result<Option<SigV4Claim>, SigV4Error> {
    let header = authorization_v4(&parts.headers)?;
    let query = parts.uri.query().unwrap_or_default();
    let presigned = query_pairs(query).any(|(name, _)| decoded_eq(name, param::ALGORITHM));
    match (header, presigned) {
        (None, false) => Ok(None),
        (Some(_), true) => Err(malformed(
            false,
            "the request carries both an Authorization header and X-Amz-Algorithm in the query; send one",
        )),
        (Some(value), false) => parse_header_form(value, &parts.headers).map(Some),
        (None, true) => parse_query_form(query, &parts.headers).map(Some),
    }
}

/// [`verify_with`] S3's rules ([`VerifyOptions::S3`]).
pub fn verify(
    claim: &SigV4Claim,
    parts: &Parts,
    secret_access_key: &str,
    now: i64,
) -> Result<(), SigV4Error> {
    verify_with(claim, parts, secret_access_key, now, &VerifyOptions::S3)
}

/// Verifies `claim` (from [`parse`] of the same `parts`) with the secret of its access key:
/// the service, the scope date against the request date, the time window at `now` (Unix
/// seconds), that every `x-amz-*` header is signed, then the signature itself, compared in
/// constant time.
///
/// Time: a header-form request must be within `skew_secs` of `now` either way; a presigned
/// URL is valid from `request_time - skew_secs` until `request_time + expires` inclusive.
pub fn verify_with(
    claim: &SigV4Claim,
    parts: &Parts,
    secret_access_key: &str,
    now: i64,
    opts: &VerifyOptions,
) -> Result<(), SigV4Error> {
    if claim.service != opts.service {
        return Err(SigV4Error::WrongService {
            presigned: claim.presigned,
            service: claim.service.clone(),
            expected: opts.service.to_string(),
        });
    }
    if claim.amz_date.get(..8) != Some(claim.scope_date.as_str()) {
        return Err(malformed(
            claim.presigned,
            format!(
                "credential scope date {} is not the date of the request time {}",
                claim.scope_date, claim.amz_date
            ),
        ));
    }
    if opts.check_time {
        check_time(claim, now, opts.skew_secs)?;
    }
    check_amz_headers_signed(claim, &parts.headers)?;
    let payload = payload_hash(claim, &parts.headers, &opts.payload)?;
    let canonical = canonical_request(claim, parts, &payload)?;

    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        claim.amz_date,
        claim.credential_scope(),
        hex::encode(digest::digest(&digest::SHA256, &canonical))
    );
    let key = signing_key(
        secret_access_key,
        &claim.scope_date,
        &claim.region,
        &claim.service,
    );
    let computed = hex::encode(hmac::sign(&key, string_to_sign.as_bytes()));
    if signatures_equal(computed.as_bytes(), claim.signature.as_bytes()) {
        Ok(())
    } else {
        Err(SigV4Error::SignatureDoesNotMatch)
    }
}

/// Constant-time equality of two signatures (hex bytes).
fn signatures_equal(computed: &[u8], sent: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(computed, sent).is_ok()
}

/// The SigV4 signing key: HMAC chain from `"AWS4" + secret` over date, region, service and
/// `aws4_request`.
pub(crate) fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), part.as_bytes());
    }
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

fn check_time(claim: &SigV4Claim, now: i64, skew_secs: i64) -> Result<(), SigV4Error> {
    let skewed = || SigV4Error::RequestTimeTooSkewed {
        request_time: rfc3339(claim.request_time),
        server_time: rfc3339(now),
        max_skew_secs: skew_secs,
    };
    if claim.presigned {
        if claim.request_time > now.saturating_add(skew_secs) {
            return Err(skewed());
        }
        let expires = claim
            .expires
            .ok_or_else(|| malformed(true, "missing X-Amz-Expires"))?;
        let expiry = claim
            .request_time
            .saturating_add(i64::try_from(expires).unwrap_or(i64::MAX));
        if now > expiry {
            return Err(SigV4Error::PresignedExpired {
                expired_at: rfc3339(expiry),
            });
        }
    } else if now.abs_diff(claim.request_time) > skew_secs.unsigned_abs() {
        return Err(skewed());
    }
    Ok(())
}

/// S3 refuses `x-amz-*` headers that the signature does not cover (`HeadersNotSigned`).
fn check_amz_headers_signed(claim: &SigV4Claim, headers: &HeaderMap) -> Result<(), SigV4Error> {
    let mut unsigned: Vec<&str> = headers
        .keys()
        .map(|n| n.as_str())
        .filter(|n| n.starts_with("x-amz-"))
        .filter(|n| !value_is_signed_anyway(n, claim.presigned))
        .filter(|n| !claim.signed_headers.iter().any(|s| s == n))
        .collect();
    if unsigned.is_empty() {
        return Ok(());
    }
    unsigned.sort_unstable();
    Err(SigV4Error::HeadersNotSigned {
        headers: unsigned.join(", "),
    })
}

/// Headers whose value the signature covers without listing them: the payload hash (the
/// canonical request's last line) and, in the header form, the date (the string to sign).
fn value_is_signed_anyway(name: &str, presigned: bool) -> bool {
    name == X_AMZ_CONTENT_SHA256 || (name == X_AMZ_DATE && !presigned)
}

fn payload_hash(claim: &SigV4Claim, headers: &HeaderMap, rule: &PayloadHash) -> Result<String, SigV4Error> {
    match rule {
        PayloadHash::Body(hash) => Ok(hash.clone()),
        PayloadHash::S3 => match single_header(headers, X_AMZ_CONTENT_SHA256, claim.presigned)? {
            Some(v) => Ok(v.to_string()),
            None if claim.presigned => Ok(UNSIGNED_PAYLOAD.to_string()),
            None => Err(SigV4Error::MissingContentSha256),
        },
    }
}

/// The canonical request, as bytes (header values may carry non-UTF-8 octets).
fn canonical_request(claim: &SigV4Claim, parts: &Parts, payload_hash: &str) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_s3_path(parts.uri.path()).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(parts.uri.query().unwrap_or_default(), claim.presigned).as_bytes());
    out.push(b'\n');
    for name in &claim.signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut values: Vec<&[u8]> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if values.is_empty() && name == "host" {
            values.extend(parts.uri.authority().map(|a| a.as_str().as_bytes()));
        }
        if values.is_empty() {
            return Err(SigV4Error::SignatureDoesNotMatch);
        }
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, v);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(claim.signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// Appends a header value with leading and trailing spaces removed and each run of spaces
/// collapsed to one (spaces only, as S3 does).
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let start = value.iter().position(|b| *b != b' ').unwrap_or(value.len());
    let end = value.iter().rposition(|b| *b != b' ').map_or(start, |i| i + 1);
    let mut prev_space = false;
    for &b in &value[start..end] {
        if b == b' ' && prev_space {
            continue;
        }
        prev_space = b == b' ';
        out.push(b);
    }
}

/// Every query parameter (but `X-Amz-Signature` when presigned), decoded once, re-encoded
/// with only unreserved characters bare, sorted, `name=value` joined by `&`.
fn canonical_query(query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .filter(|(name, _)| !(presigned && decoded_eq(name, param::SIGNATURE)))
        .map(|(name, value)| (reencode(name), reencode(value)))
        .collect();
    pairs.sort_unstable();
    let mut out = String::with_capacity(query.len() + 16);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

fn reencode(raw: &str) -> String {
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    percent_encode(&bytes, UNRESERVED).to_string()
}

/// The raw `(name, value)` pairs of a query; empty pieces (`a&&b`) are skipped, a piece
/// without `=` has an empty value.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether a raw (percent-encoded) query name decodes to `want`, case-sensitively.
fn decoded_eq(raw: &str, want: &str) -> bool {
    if !raw.contains('%') {
        return raw == want;
    }
    percent_decode_str(raw).eq(want.bytes())
}

fn malformed(presigned: bool, reason: impl Into<String>) -> SigV4Error {
    SigV4Error::Malformed {
        presigned,
        reason: reason.into(),
    }
}

/// The `Authorization` header if it is SigV4: `Ok(None)` for no header or another scheme.
fn authorization_v4(headers: &HeaderMap) -> Result<Option<&str>, SigV4Error> {
    let mut found = None;
    for value in headers.get_all(http::header::AUTHORIZATION) {
        if !value.as_bytes().starts_with(b"AWS4-") {
            continue;
        }
        if found.is_some() {
            return Err(malformed(false, "more than one AWS4 Authorization header"));
        }
        let s = value
            .to_str()
            .map_err(|_| malformed(false, "the Authorization header is not visible ASCII"))?;
        found = Some(s);
    }
    let Some(value) = found else {
        return Ok(None);
    };
    let (algorithm, _) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(malformed(
            false,
            format!(
                "unsupported algorithm {:?}: configure the client for SigV4 ({ALGORITHM})",
                algorithm_name(algorithm)
            ),
        ));
    }
    Ok(Some(value))
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request,
/// SignedHeaders=host;x-amz-date, Signature=<hex>`.
fn parse_header_form(value: &str, headers: &HeaderMap) -> Result<SigV4Claim, SigV4Error> {
    let m = |reason: &str| malformed(false, reason);
    let rest = value[ALGORITHM.len()..].trim_start_matches(' ');
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let component = component.trim_matches(' ');
        let (key, val) = component
            .split_once('=')
            .ok_or_else(|| m("each part must be Credential=…, SignedHeaders=… or Signature=…"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(malformed(
                    false,
                    format!("unexpected part {key:?}: expected Credential, SignedHeaders and Signature"),
                ));
            }
        };
        if slot.replace(val).is_some() {
            return Err(malformed(false, format!("{key} appears more than once")));
        }
    }
    let credential = credential.ok_or_else(|| m("missing Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| m("missing SignedHeaders"))?;
    let signature = signature.ok_or_else(|| m("missing Signature"))?;

    let amz_date = single_header(headers, X_AMZ_DATE, false)?
        .ok_or_else(|| m("missing x-amz-date header (yyyymmddThhmmssZ); the Date header is not accepted"))?;
    let session_token = single_header(headers, X_AMZ_SECURITY_TOKEN, false)?.map(str::to_string);
    build_claim(
        false,
        credential,
        signed_headers,
        signature,
        amz_date,
        None,
        session_token,
    )
}

/// The presigned form: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`, optional
/// `X-Amz-Security-Token`, each exactly once.
fn parse_query_form(query: &str, headers: &HeaderMap) -> Result<SigV4Claim, SigV4Error> {
    const NAMES: [&str; 7] = [
        param::ALGORITHM,
        param::CREDENTIAL,
        param::DATE,
        param::EXPIRES,
        param::SIGNED_HEADERS,
        param::SIGNATURE,
        param::SECURITY_TOKEN,
    ];
    let mut values: [Option<String>; 7] = Default::default();
    for (name, value) in query_pairs(query) {
        let Some(i) = NAMES.iter().position(|n| decoded_eq(name, n)) else {
            continue;
        };
        let decoded = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| malformed(true, format!("{} is not UTF-8", NAMES[i])))?;
        if values[i].replace(decoded.into_owned()).is_some() {
            return Err(malformed(true, format!("{} appears more than once", NAMES[i])));
        }
    }
    let [
        algorithm,
        credential,
        date,
        expires,
        signed_headers,
        signature,
        token,
    ] = values;
    let require = |v: Option<String>, name: &str| {
        v.ok_or_else(|| malformed(true, format!("missing query parameter {name}")))
    };
    let algorithm = require(algorithm, param::ALGORITHM)?;
    if algorithm != ALGORITHM {
        return Err(malformed(
            true,
            format!(
                "unsupported X-Amz-Algorithm {:?}: configure the client for SigV4 ({ALGORITHM})",
                algorithm_name(&algorithm)
            ),
        ));
    }
    let credential = require(credential, param::CREDENTIAL)?;
    let date = require(date, param::DATE)?;
    let expires = require(expires, param::EXPIRES)?;
    let signed_headers = require(signed_headers, param::SIGNED_HEADERS)?;
    let signature = require(signature, param::SIGNATURE)?;

    let expires = expires
        .parse::<u64>()
        .ok()
        .filter(|e| (1..=MAX_PRESIGNED_EXPIRES).contains(e))
        .ok_or_else(|| {
            malformed(
                true,
                format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGNED_EXPIRES} (7 days)"
                ),
            )
        })?;
    let session_token = match token {
        Some(t) => {
            if single_header(headers, X_AMZ_SECURITY_TOKEN, true)?.is_some_and(|h| h != t) {
                return Err(malformed(
                    true,
                    "X-Amz-Security-Token and the x-amz-security-token header differ; send one",
                ));
            }
            Some(t)
        }
        None => single_header(headers, X_AMZ_SECURITY_TOKEN, true)?.map(str::to_string),
    };
    build_claim(
        true,
        &credential,
        &signed_headers,
        &signature,
        &date,
        Some(expires),
        session_token,
    )
}

fn build_claim(
    presigned: bool,
    credential: &str,
    signed_headers: &str,
    signature: &str,
    amz_date: &str,
    expires: Option<u64>,
    session_token: Option<String>,
) -> Result<SigV4Claim, SigV4Error> {
    let m = |reason: String| malformed(presigned, reason);

    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, scope_date, region, service, terminator] = scope.as_slice() else {
        return Err(m(
            "Credential must be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request".to_string(),
        ));
    };
    if *terminator != "aws4_request" || [access_key_id, region, service].iter().any(|s| s.is_empty()) {
        return Err(m(
            "Credential must be <access key id>/<yyyymmdd>/<region>/<service>/aws4_request".to_string(),
        ));
    }
    if scope_date.len() != 8 || !scope_date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(m(format!("credential scope date {scope_date:?} is not yyyymmdd")));
    }

    let names: Vec<String> = signed_headers.split(';').map(str::to_string).collect();
    if names
        .iter()
        .any(|n| n.is_empty() || http::HeaderName::from_bytes(n.as_bytes()).is_err())
    {
        return Err(m(format!(
            "SignedHeaders {signed_headers:?} is not a ;-separated list of header names"
        )));
    }
    if names.iter().any(|n| n.bytes().any(|b| b.is_ascii_uppercase())) {
        return Err(m(format!("SignedHeaders {signed_headers:?} must be lowercase")));
    }
    if !names.windows(2).all(|w| w[0] < w[1]) {
        return Err(m(format!(
            "SignedHeaders {signed_headers:?} must be sorted, without repeats"
        )));
    }
    if !names.iter().any(|n| n == "host") {
        return Err(m("SignedHeaders must include host".to_string()));
    }

    if signature.len() != 64 || !signature.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(m("the signature must be 64 lowercase hex digits".to_string()));
    }
    let request_time = parse_amz_date(amz_date).ok_or_else(|| {
        m(format!(
            "request time {amz_date:?} is not yyyymmddThhmmssZ (UTC, e.g. 20150830T123600Z)"
        ))
    })?;

    Ok(SigV4Claim {
        access_key_id: access_key_id.to_string(),
        scope_date: scope_date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: names,
        signature: signature.to_string(),
        amz_date: amz_date.to_string(),
        request_time,
        expires,
        session_token,
        presigned,
    })
}

/// The one value of a header, as text: `None` if absent, malformed if repeated or not
/// visible ASCII.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    presigned: bool,
) -> Result<Option<&'a str>, SigV4Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(presigned, format!("more than one {name} header")));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| malformed(presigned, format!("the {name} header is not visible ASCII")))
}

/// `yyyymmddThhmmssZ` (years 1970..=9999) as Unix seconds.
pub(crate) fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let (year, month, day) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hour, minute, second) = (num(9, 11)?, num(11, 13)?, num(13, 15)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as RFC 3339 (clamped to 1970..=9999, the range humantime formats).
pub(crate) fn rfc3339(unix: i64) -> String {
    const MAX: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let secs = u64::try_from(unix).unwrap_or(0).min(MAX);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method("GET").uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// The published `get-vanilla` case, header form.
    fn vanilla() -> Parts {
        parts(
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                     SignedHeaders=host;x-amz-date, \
                     Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
                ),
            ],
        )
    }

    fn vector_opts() -> VerifyOptions {
        VerifyOptions {
            service: "service".into(),
            skew_secs: DEFAULT_SKEW_SECS,
            check_time: true,
            payload: PayloadHash::Body(EMPTY_SHA256.into()),
        }
    }

    fn with_auth(auth: &str) -> Parts {
        parts(
            "/",
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
                ("authorization", auth),
            ],
        )
    }

    fn malformed_reason(p: &Parts) -> String {
        match parse(p) {
            Err(SigV4Error::Malformed { reason, .. }) => reason,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn vanilla_parses_and_verifies() {
        let p = vanilla();
        let claim = parse(&p).unwrap().unwrap();
        assert_eq!(claim.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            claim.credential_scope(),
            "20150830/us-east-1/service/aws4_request"
        );
        assert_eq!(claim.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(claim.request_time, NOW);
        assert!(!claim.presigned);
        let canonical = canonical_request(&claim, &p, EMPTY_SHA256).unwrap();
        assert_eq!(
            String::from_utf8(canonical).unwrap(),
            format!(
                "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{EMPTY_SHA256}"
            )
        );
        verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
        assert_eq!(
            verify_with(&claim, &p, "wrong", NOW, &vector_opts()),
            Err(SigV4Error::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn no_sigv4_is_none() {
        assert_eq!(parse(&parts("/b/k", &[])), Ok(None));
        assert_eq!(
            parse(&parts("/b/k", &[("authorization", "Bearer x.y.z")])),
            Ok(None)
        );
        assert_eq!(
            parse(&parts("/b/k", &[("authorization", "AWS AKID:sig")])),
            Ok(None)
        );
        assert_eq!(
            parse(&parts("/b/k?AWSAccessKeyId=a&Signature=s&Expires=1", &[])),
            Ok(None)
        );
    }

    #[test]
    fn header_form_parse_errors() {
        let cred = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
        let sig = "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let sh = "SignedHeaders=host;x-amz-date";
        let cases = [
            (
                format!("AWS4-ECDSA-P256-SHA256 {cred}, {sh}, {sig}"),
                "unsupported algorithm",
            ),
            (format!("AWS4-HMAC-SHA256 {cred}, {sh}"), "missing Signature"),
            (format!("AWS4-HMAC-SHA256 {sh}, {sig}"), "missing Credential"),
            (format!("AWS4-HMAC-SHA256 {cred}, {sig}"), "missing SignedHeaders"),
            (
                format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}, {sig}"),
                "more than once",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}, Foo=bar"),
                "unexpected part",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred} {sh}, {sig}"),
                "missing SignedHeaders",
            ),
            (
                format!("AWS4-HMAC-SHA256{cred}, {sh}, {sig}"),
                "unsupported algorithm \"AWS4-HMAC-SHA256C\"",
            ),
            (
                format!("AWS4-HMAC-SHA256 Credential=AKID/2015083/us-east-1/s3/aws4_request, {sh}, {sig}"),
                "not yyyymmdd",
            ),
            (
                format!("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws5_request, {sh}, {sig}"),
                "Credential must be",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=x-amz-date;host, {sig}"),
                "sorted",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;host, {sig}"),
                "sorted",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=Host;x-amz-date, {sig}"),
                "lowercase",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=x-amz-date, {sig}"),
                "include host",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;;x-amz-date, {sig}"),
                "header names",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature=5FA0"),
                "64 lowercase hex",
            ),
            (
                format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature={}", "A".repeat(64)),
                "64 lowercase hex",
            ),
        ];
        for (auth, want) in cases {
            let reason = malformed_reason(&with_auth(&auth));
            assert!(reason.contains(want), "{auth}: {reason}");
        }
        // Tolerated: no space after commas, several spaces.
        let ok = format!("AWS4-HMAC-SHA256  {cred},{sh},   {sig}");
        assert!(parse(&with_auth(&ok)).unwrap().is_some());

        let auth = format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}");
        let no_date = parts("/", &[("host", "h"), ("authorization", &auth)]);
        assert!(malformed_reason(&no_date).contains("missing x-amz-date"));
        for bad in [
            "2015-08-30T12:36:00Z",
            "20150830T123600",
            "20150230T123600Z",
            "20150830T243600Z",
            "19690830T123600Z",
        ] {
            let p = parts(
                "/",
                &[("host", "h"), ("x-amz-date", bad), ("authorization", &auth)],
            );
            assert!(malformed_reason(&p).contains("yyyymmddThhmmssZ"), "{bad}");
        }
        let both = parts(
            "/?X-Amz-Algorithm=AWS4-HMAC-SHA256",
            &[
                ("host", "h"),
                ("x-amz-date", "20150830T123600Z"),
                ("authorization", &auth),
            ],
        );
        assert!(malformed_reason(&both).contains("both"));
        let mut twice = with_auth(&auth);
        twice.headers.append("authorization", auth.parse().unwrap());
        assert!(malformed_reason(&twice).contains("more than one"));
    }

    const PRESIGNED: &str = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
        &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
        &X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d";

    #[test]
    fn presigned_vanilla_verifies() {
        let p = parts(PRESIGNED, &[("host", "example.amazonaws.com")]);
        let claim = parse(&p).unwrap().unwrap();
        assert!(claim.presigned);
        assert_eq!(claim.expires, Some(3600));
        assert_eq!(claim.session_token, None);
        verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
        // S3's presigned payload is UNSIGNED-PAYLOAD, which these (non-S3) vectors did not use.
        let s3_rules = VerifyOptions {
            payload: PayloadHash::S3,
            ..vector_opts()
        };
        assert_eq!(
            verify_with(&claim, &p, SECRET, NOW, &s3_rules),
            Err(SigV4Error::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn presigned_parse_errors() {
        let cases = [
            (
                PRESIGNED.replace("&X-Amz-Expires=3600", ""),
                "missing query parameter X-Amz-Expires",
            ),
            (
                PRESIGNED.replace("&X-Amz-SignedHeaders=host", ""),
                "X-Amz-SignedHeaders",
            ),
            (
                PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=0"),
                "X-Amz-Expires must be",
            ),
            (
                PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
                "X-Amz-Expires must be",
            ),
            (
                PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
                "X-Amz-Expires must be",
            ),
            (
                format!("{PRESIGNED}&X-Amz-Date=20150830T123600Z"),
                "more than once",
            ),
            (
                PRESIGNED.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
                "unsupported X-Amz-Algorithm",
            ),
            (
                PRESIGNED.replace("%2Fservice", "%2F%2Fservice"),
                "Credential must be",
            ),
            (
                PRESIGNED.replace("X-Amz-Date=20150830T123600Z", "X-Amz-Date=20150830"),
                "yyyymmddThhmmssZ",
            ),
        ];
        for (uri, want) in cases {
            let reason = malformed_reason(&parts(&uri, &[("host", "h")]));
            assert!(reason.contains(want), "{uri}: {reason}");
        }
        // An encoded parameter name is still that parameter.
        let encoded = PRESIGNED.replace("X-Amz-Expires=", "X-Amz-%45xpires=");
        assert_eq!(
            parse(&parts(&encoded, &[("host", "h")]))
                .unwrap()
                .unwrap()
                .expires,
            Some(3600)
        );
        // Session token: the parameter; a differing header is refused.
        let with_token = format!("{PRESIGNED}&X-Amz-Security-Token=tok%2Ben");
        let claim = parse(&parts(&with_token, &[("host", "h")])).unwrap().unwrap();
        assert_eq!(claim.session_token.as_deref(), Some("tok+en"));
        let reason = malformed_reason(&parts(
            &with_token,
            &[("host", "h"), ("x-amz-security-token", "other")],
        ));
        assert!(reason.contains("differ"));
    }

    #[test]
    fn header_form_time_window_edges() {
        let p = vanilla();
        let claim = parse(&p).unwrap().unwrap();
        let opts = vector_opts();
        for now in [NOW - 900, NOW, NOW + 900] {
            verify_with(&claim, &p, SECRET, now, &opts).unwrap();
        }
        for now in [NOW - 901, NOW + 901] {
            let err = verify_with(&claim, &p, SECRET, now, &opts).unwrap_err();
            assert!(matches!(err, SigV4Error::RequestTimeTooSkewed { .. }), "{err:?}");
            assert_eq!(err.s3_code(), "RequestTimeTooSkewed");
        }
        let err = verify_with(&claim, &p, SECRET, NOW + 901, &opts).unwrap_err();
        assert_eq!(
            err.to_string(),
            "request time 2015-08-30T12:36:00Z is more than 900 s away from server time \
             2015-08-30T12:51:01Z: fix the client's clock (NTP)"
        );
        let unchecked = VerifyOptions {
            check_time: false,
            ..opts
        };
        verify_with(&claim, &p, SECRET, NOW + 86_400, &unchecked).unwrap();
    }

    #[test]
    fn presigned_time_window_edges() {
        let p = parts(PRESIGNED, &[("host", "example.amazonaws.com")]);
        let claim = parse(&p).unwrap().unwrap();
        let opts = vector_opts();
        for now in [NOW - 900, NOW, NOW + 3600] {
            verify_with(&claim, &p, SECRET, now, &opts).unwrap();
        }
        let early = verify_with(&claim, &p, SECRET, NOW - 901, &opts).unwrap_err();
        assert!(
            matches!(early, SigV4Error::RequestTimeTooSkewed { .. }),
            "{early:?}"
        );
        let late = verify_with(&claim, &p, SECRET, NOW + 3601, &opts).unwrap_err();
        assert_eq!(
            late,
            SigV4Error::PresignedExpired {
                expired_at: "2015-08-30T13:36:00Z".into()
            }
        );
        assert_eq!((late.s3_code(), late.status().as_u16()), ("AccessDenied", 403));
    }

    #[test]
    fn scope_date_and_service_are_checked() {
        let p = vanilla();
        let mut claim = parse(&p).unwrap().unwrap();
        let err = verify(&claim, &p, SECRET, NOW).unwrap_err();
        assert_eq!(
            err,
            SigV4Error::WrongService {
                presigned: false,
                service: "service".into(),
                expected: "s3".into()
            }
        );
        assert_eq!(err.s3_code(), "AuthorizationHeaderMalformed");
        claim.scope_date = "20150831".into();
        let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
        assert!(
            err.to_string().contains("not the date of the request time"),
            "{err}"
        );
    }

    #[test]
    fn unsigned_amz_headers_are_refused() {
        let mut p = vanilla();
        p.headers
            .insert("x-amz-copy-source", "other/key".parse().unwrap());
        p.headers.insert("x-amz-acl", "public-read".parse().unwrap());
        p.headers
            .insert("user-agent", "unsigned is fine".parse().unwrap());
        let claim = parse(&p).unwrap().unwrap();
        let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
        assert_eq!(
            err,
            SigV4Error::HeadersNotSigned {
                headers: "x-amz-acl, x-amz-copy-source".into()
            }
        );
        assert_eq!(err.s3_code(), "AccessDenied");
        // The payload hash is covered by the signature anyway.
        let mut p = vanilla();
        p.headers
            .insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
        // A presigned URL's x-amz-date header is not the signed X-Amz-Date.
        let p = parts(
            PRESIGNED,
            &[
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ],
        );
        let claim = parse(&p).unwrap().unwrap();
        let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
        assert!(matches!(err, SigV4Error::HeadersNotSigned { .. }), "{err:?}");
    }

    #[test]
    fn s3_payload_rules() {
        let p = vanilla();
        let claim = parse(&p).unwrap().unwrap();
        let s3 = VerifyOptions {
            payload: PayloadHash::S3,
            ..vector_opts()
        };
        assert_eq!(
            verify_with(&claim, &p, SECRET, NOW, &s3),
            Err(SigV4Error::MissingContentSha256)
        );
        let mut p = vanilla();
        p.headers
            .insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        verify_with(&claim, &p, SECRET, NOW, &s3).unwrap();
        p.headers
            .append("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
        assert!(matches!(
            verify_with(&claim, &p, SECRET, NOW, &s3),
            Err(SigV4Error::Malformed { .. })
        ));
    }

    #[test]
    fn host_falls_back_to_the_authority() {
        let mut p = vanilla();
        p.headers.remove("host");
        let claim = parse(&p).unwrap().unwrap();
        assert_eq!(
            verify_with(&claim, &p, SECRET, NOW, &vector_opts()),
            Err(SigV4Error::SignatureDoesNotMatch)
        );
        p.version = http::Version::HTTP_2;
        p.uri = "https://example.amazonaws.com/".parse().unwrap();
        verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
    }

    #[test]
    fn canonical_query_and_headers() {
        assert_eq!(
            canonical_query("b=2&a=%7e+x&a=1&c&&d=%2f%2F/&X-Amz-Signature=s", false),
            "X-Amz-Signature=s&a=1&a=~%2Bx&b=2&c=&d=%2F%2F%2F"
        );
        assert_eq!(canonical_query("X-Amz-Signature=s&a=1", true), "a=1");
        assert_eq!(canonical_query("X-Amz-%53ignature=s&a=1", true), "a=1");
        assert_eq!(
            canonical_query("%E1%88%B4=bar&Param=Value", false),
            "%E1%88%B4=bar&Param=Value"
        );
        let mut out = Vec::new();
        push_trimmed(&mut out, b"  \"a   b   c\"  ");
        assert_eq!(out, b"\"a b c\"");
        out.clear();
        push_trimmed(&mut out, b"   ");
        assert!(out.is_empty());
    }

    #[test]
    fn signatures_compare_in_constant_time() {
        // verify_with compares with `signatures_equal`, which is aws-lc's constant-time
        // `verify_slices_are_equal`; check its contract on equal, different and short input.
        let a = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        assert!(signatures_equal(a.as_bytes(), a.as_bytes()));
        assert!(!signatures_equal(a.as_bytes(), a.replace('5', "6").as_bytes()));
        assert!(!signatures_equal(a.as_bytes(), &a.as_bytes()[..63]));
        assert!(!signatures_equal(a.as_bytes(), b""));
    }

    #[test]
    fn dates() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(NOW));
        assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
        assert_eq!(parse_amz_date("21000229T000000Z"), None);
        assert_eq!(parse_amz_date("2015083OT123600Z"), None);
        assert_eq!(parse_amz_date("20150830t123600Z"), None);
        assert_eq!(parse_amz_date("+0150830T123600Z"), None);
        assert_eq!(rfc3339(NOW), "2015-08-30T12:36:00Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn errors_never_show_secrets() {
        let p = parts(
            &format!("{PRESIGNED}&X-Amz-Security-Token=SESSIONTOKEN"),
            &[("host", "example.amazonaws.com")],
        );
        let claim = parse(&p).unwrap().unwrap();
        let debug = format!("{claim:?}");
        assert!(
            !debug.contains("e93c787e") && !debug.contains("SESSIONTOKEN"),
            "{debug}"
        );
        let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(SECRET) && !shown.contains("e93c787e") && !shown.contains("SESSIONTOKEN"));
        for e in [
            SigV4Error::SignatureDoesNotMatch,
            SigV4Error::MissingContentSha256,
            malformed(true, "x"),
        ] {
            assert!(!e.reason().is_empty() && !e.s3_code().is_empty());
        }
    }
}
