//! What AWS Signature Version 4 is, in one place: the constants, the encoding, the
//! canonical request and the signing key. The verifier of callers' signatures
//! ([`crate::identity::sigv4`]) and the signer of upstream requests ([`crate::upstream::sign`])
//! both build on it, so the two can never disagree about, say, which bytes a path segment
//! is encoded to.

mod canonical;
mod time;

pub use canonical::{canonical_query, canonical_request, decoded_eq, query_pairs, reencode};
pub use time::{amz_date, parse_amz_date, rfc3339};

use aws_lc_rs::hmac;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Where a request carries its SigV4 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The `Authorization` header.
    Header,
    /// The query: a presigned URL (its own `X-Amz-Signature` is left out of the canonical
    /// query).
    Query,
}

/// The only algorithm SigV4 (as opposed to SigV4a) uses.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The payload hash S3 uses for presigned URLs.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// The longest lifetime of a presigned URL: 7 days, as S3 allows.
pub const MAX_PRESIGNED_EXPIRES: u64 = 604_800;

/// S3's clock-skew window: 15 minutes either way.
pub const DEFAULT_SKEW_SECS: i64 = 900;

/// The characters SigV4 leaves unencoded: `A-Z a-z 0-9 - _ . ~`.
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Presigned-URL query parameters, as S3 spells them (names are case-sensitive).
pub mod param {
    /// `X-Amz-Algorithm`.
    pub const ALGORITHM: &str = "X-Amz-Algorithm";
    /// `X-Amz-Credential`.
    pub const CREDENTIAL: &str = "X-Amz-Credential";
    /// `X-Amz-Date`.
    pub const DATE: &str = "X-Amz-Date";
    /// `X-Amz-Expires`.
    pub const EXPIRES: &str = "X-Amz-Expires";
    /// `X-Amz-SignedHeaders`.
    pub const SIGNED_HEADERS: &str = "X-Amz-SignedHeaders";
    /// `X-Amz-Signature`.
    pub const SIGNATURE: &str = "X-Amz-Signature";
    /// `X-Amz-Security-Token`.
    pub const SECURITY_TOKEN: &str = "X-Amz-Security-Token";

    /// Every SigV4 presign parameter.
    pub const ALL: [&str; 7] = [
        ALGORITHM,
        CREDENTIAL,
        DATE,
        EXPIRES,
        SIGNED_HEADERS,
        SIGNATURE,
        SECURITY_TOKEN,
    ];

    /// A SigV2 presigned URL's parameters.
    pub const SIGV2: [&str; 3] = ["AWSAccessKeyId", "Signature", "Expires"];

    /// The parameters that carry a caller's credentials (SigV4 or SigV2).
    pub const CREDENTIALS: [&str; 5] = [
        CREDENTIAL,
        SIGNATURE,
        SECURITY_TOKEN,
        "AWSAccessKeyId",
        "Signature",
    ];

    /// Whether a decoded query name is a presign parameter of either version, compared
    /// case-insensitively: what a proxy must never pass on, however the caller spelled it.
    pub fn is_presign(name: &str) -> bool {
        ALL.iter()
            .chain(SIGV2.iter())
            .any(|p| name.eq_ignore_ascii_case(p))
    }

    /// Whether a decoded query name carries credentials, compared case-insensitively.
    pub fn is_credential(name: &str) -> bool {
        CREDENTIALS.iter().any(|p| name.eq_ignore_ascii_case(p))
    }
}

/// SigV4 header names.
pub mod header {
    /// The request time, `yyyymmddThhmmssZ`.
    pub const X_AMZ_DATE: &str = "x-amz-date";
    /// The payload hash (or streaming mode).
    pub const X_AMZ_CONTENT_SHA256: &str = "x-amz-content-sha256";
    /// The session token of temporary credentials.
    pub const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";
}

/// Bytes percent-encoded the way SigV4 canonicalizes them: all but [`UNRESERVED`].
pub fn encode(bytes: &[u8]) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::percent_encode(bytes, UNRESERVED)
}

/// Appends `key`'s segments, each [`encode`]d, joined by `/`: how a decoded S3 key is
/// written into a path that a store decodes exactly once.
pub fn push_encoded_key(out: &mut String, key: &str) {
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.extend(encode(segment.as_bytes()));
    }
}

/// Re-encodes a raw S3 path the way SigV4 canonicalizes it: each segment percent-decoded
/// once, then [`encode`]d; never dot-segment normalized, `//` kept. The verifier computes
/// callers' canonical URIs with it.
pub fn canonical_s3_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let raw = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
            encode(&raw).to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The SigV4 signing key: HMAC chain from `"AWS4" + secret` over date, region, service and
/// `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mut k = hmac::sign(
        &hmac::Key::new(
            hmac::HMAC_SHA256,
            zeroize::Zeroizing::new(format!("AWS4{secret}")).as_bytes(),
        ),
        date.as_bytes(),
    );
    for part in [region, service, "aws4_request"] {
        k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), part.as_bytes());
    }
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

/// The string to sign: algorithm, request time, credential scope and the canonical
/// request's hex SHA-256.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &[u8]) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical_request);
    let mut out = String::with_capacity(ALGORITHM.len() + amz_date.len() + scope.len() + 67);
    for part in [ALGORITHM, "\n", amz_date, "\n", scope, "\n"] {
        out.push_str(part);
    }
    push_hex(&mut out, hash.as_ref());
    out
}

/// Appends `bytes` as lower-case hex: a table lookup per byte (the `hex` crate's `encode`
/// goes through a `char` iterator, measurable at one signature per request).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// `bytes` as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    push_hex(&mut out, bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presign_names_are_matched_case_insensitively() {
        assert!(param::is_presign("x-amz-credential"));
        assert!(param::is_presign("AWSACCESSKEYID"));
        assert!(!param::is_presign("versionId"));
        assert!(param::is_credential("x-amz-signature"));
        assert!(!param::is_credential("X-Amz-Date"));
    }

    #[test]
    fn keys_and_paths_encode_alike() {
        let mut out = String::new();
        push_encoded_key(&mut out, "a b/ü~x");
        assert_eq!(out, "a%20b/%C3%BC~x");
        assert_eq!(canonical_s3_path("/b/a%20b/%C3%BC~x"), "/b/a%20b/%C3%BC~x");
        assert_eq!(canonical_s3_path("/b/a+b//c"), "/b/a%2Bb//c");
    }
}
