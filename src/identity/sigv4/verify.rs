//! Checking a SigV4 claim: scope, time window, signed headers, then the signature.

use aws_lc_rs::{constant_time, hmac};
use http::HeaderMap;
use http::request::Parts;

use super::parse::single_header;
use super::{PayloadHash, SigV4Claim, SigV4Error, VerifyOptions, malformed};
use crate::sigv4::header::{X_AMZ_CONTENT_SHA256, X_AMZ_DATE};
use crate::sigv4::{Carrier, UNSIGNED_PAYLOAD, canonical_request, rfc3339, signing_key, string_to_sign};

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
    verify_keyed(claim, parts, now, opts, || {
        signing_key(
            secret_access_key,
            &claim.scope_date,
            &claim.region,
            &claim.service,
        )
    })
}

/// [`verify_with`], with the signing key of the claim's scope from `key` (asked for only
/// once the request has passed every other check): callers that hold a derived key for the
/// scope, such as an opened STS session, skip the derivation.
pub fn verify_keyed(
    claim: &SigV4Claim,
    parts: &Parts,
    now: i64,
    opts: &VerifyOptions,
    key: impl FnOnce() -> hmac::Key,
) -> Result<(), SigV4Error> {
    if claim.service != opts.service {
        return Err(SigV4Error::WrongService {
            presigned: claim.is_presigned(),
            service: claim.service.clone(),
            expected: opts.service.to_string(),
        });
    }
    if claim.amz_date.get(..8) != Some(claim.scope_date.as_str()) {
        return Err(malformed(
            claim.carrier,
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
    let canonical = canonical_request(parts, &claim.signed_headers, claim.carrier, &payload)
        .ok_or(SigV4Error::SignatureDoesNotMatch)?;
    let string_to_sign = string_to_sign(&claim.amz_date, &claim.credential_scope(), &canonical);
    let computed = crate::sigv4::to_hex(hmac::sign(&key(), string_to_sign.as_bytes()).as_ref());
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

fn check_time(claim: &SigV4Claim, now: i64, skew_secs: i64) -> Result<(), SigV4Error> {
    let skewed = || SigV4Error::RequestTimeTooSkewed {
        request_time: rfc3339(claim.request_time),
        server_time: rfc3339(now),
        max_skew_secs: skew_secs,
    };
    if claim.is_presigned() {
        if claim.request_time > now.saturating_add(skew_secs) {
            return Err(skewed());
        }
        let expires = claim
            .expires
            .ok_or_else(|| malformed(Carrier::Query, "missing X-Amz-Expires"))?;
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
        .filter(|n| !value_is_signed_anyway(n, claim.carrier))
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
fn value_is_signed_anyway(name: &str, carrier: Carrier) -> bool {
    name == X_AMZ_CONTENT_SHA256 || (name == X_AMZ_DATE && carrier == Carrier::Header)
}

fn payload_hash(claim: &SigV4Claim, headers: &HeaderMap, rule: &PayloadHash) -> Result<String, SigV4Error> {
    match rule {
        PayloadHash::Body(hash) => Ok(hash.clone()),
        PayloadHash::S3 => match single_header(headers, X_AMZ_CONTENT_SHA256, claim.carrier)? {
            Some(v) => Ok(v.to_string()),
            None if claim.is_presigned() => Ok(UNSIGNED_PAYLOAD.to_string()),
            None => Err(SigV4Error::MissingContentSha256),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
