//! Re-signing a browser form upload (PostObject) for the upstream.
//!
//! A form upload authenticates with fields, not headers: S3 checks a POST policy signed with
//! the uploader's key. So the request claimgate forwards carries a form it writes itself:
//!
//! 1. `key` — the key that was authorized (`${filename}` already replaced), byte for byte,
//!    read from the [`Operation`](crate::model::Operation)'s [`S3Address::FormUpload`];
//! 2. the caller's other fields, minus every credential field (`policy`, the `x-amz-*`
//!    signature fields, `AWSAccessKeyId`, `signature`);
//! 3. a fresh SigV4 POST policy, signed with the route's static credentials by aws-sigv4's
//!    signing-key derivation (the same key its request signing uses): it expires a few
//!    minutes ahead, and its conditions pin the bucket, the key, every forwarded field to its
//!    exact value, the caller's `content-length-range` if it had one, and the credential
//!    fields themselves — so the upstream accepts exactly this form and nothing else;
//! 4. the `file` part's headers, as read; the caller's file content and the rest of its body
//!    follow, streamed by [`crate::body::form_file`].
//!
//! Every part uses the caller's boundary (the rest of the body is the caller's), and no
//! value may contain the delimiter. The upstream request carries no `Authorization` header
//! and no `x-amz-*` header: a form upload's options are its fields, and only fields are
//! authorized.

use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use memchr::memmem;
use serde_json::{Value, json};

use super::Route;
use super::sign::{retarget, unsignable};
use crate::classify::PostForm;
use crate::config::{S3Route, SigV4Keys};
use crate::model::S3Address;
use crate::policy::Permit;
use crate::sigv4::ALGORITHM;
use crate::upstream::sign::SignError;

/// How long the policy claimgate signs stays valid. Stores check it when the form's fields
/// arrive, before the file, so this only needs to cover the clock skew between claimgate and
/// the store.
pub const POLICY_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Prepares a form upload for the route's upstream: `parts` retargeted (URI, `Host`, caller
/// credentials and `x-amz-*` headers removed, `Content-Length` recomputed when the caller
/// sent one), and returns the field section to send before the caller's file. Requires the
/// [`Permit`] of the authorize stage.
///
/// `length` is the caller's `content-length-range`, which the upstream policy repeats.
pub fn sign_form_upload(
    permit: Permit,
    form: &PostForm,
    length: Option<&RangeInclusive<u64>>,
    parts: &mut Parts,
    (route, keys): (&Route, &SigV4Keys),
    now: SystemTime,
) -> Result<Bytes, SignError> {
    let op = permit.operation();
    let Some(S3Address::FormUpload { bucket, key }) = &op.s3 else {
        return Err(unsignable("a form upload reached signing unclassified".into()));
    };
    let Some(s3) = route.config.s3() else {
        return Err(unsignable(
            "a form upload (PostObject) needs the route's SigV4 credentials".into(),
        ));
    };
    retarget(op, parts, route)?;
    let caller_headers: Vec<HeaderName> = parts
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-amz-") || n.as_str() == "content-md5")
        .cloned()
        .collect();
    for name in caller_headers {
        parts.headers.remove(name);
    }

    let signed = SignedPolicy::new(s3, keys, (bucket, key), form, length, now);
    let mut fields: Vec<(&str, &str)> = vec![("key", key.as_str())];
    fields.extend(form.forwarded_fields());
    fields.push(("x-amz-algorithm", ALGORITHM));
    fields.push(("x-amz-credential", &signed.credential));
    fields.push(("x-amz-date", &signed.amz_date));
    if let Some(token) = &keys.session_token {
        fields.push(("x-amz-security-token", token.expose()));
    }
    fields.push(("policy", &signed.policy));
    fields.push(("x-amz-signature", &signed.signature));
    let prefix = field_section(form, &fields)?;
    recount_length(parts, form, &prefix)?;
    Ok(prefix)
}

/// The route's own POST policy for the upload, signed with its keys: it pins the bucket,
/// the authorized key and every forwarded field to their values, and repeats the caller's
/// `content-length-range`.
struct SignedPolicy {
    credential: String,
    amz_date: String,
    /// Base64 of the policy document.
    policy: String,
    signature: String,
}

impl SignedPolicy {
    fn new(
        route: &S3Route,
        keys: &SigV4Keys,
        (bucket, key): (&str, &str),
        form: &PostForm,
        length: Option<&RangeInclusive<u64>>,
        now: SystemTime,
    ) -> Self {
        let S3Route { region, service, .. } = route;
        let (date, amz_date) = amz_dates(now);
        let credential = format!(
            "{}/{date}/{region}/{service}/aws4_request",
            keys.access_key_id.expose()
        );
        let mut conditions: Vec<Value> = vec![json!({ "bucket": bucket }), json!(["eq", "$key", key])];
        conditions.extend(
            form.forwarded_fields()
                .filter(|(name, _)| *name != "bucket")
                .map(|(name, value)| json!(["eq", format!("${name}"), value])),
        );
        if let Some(range) = length {
            conditions.push(json!(["content-length-range", range.start(), range.end()]));
        }
        conditions.push(json!({ "x-amz-algorithm": ALGORITHM }));
        conditions.push(json!({ "x-amz-credential": credential }));
        conditions.push(json!({ "x-amz-date": amz_date }));
        if let Some(token) = &keys.session_token {
            conditions.push(json!({ "x-amz-security-token": token.expose() }));
        }
        let expiration = humantime::format_rfc3339_seconds(now + POLICY_LIFETIME).to_string();
        let policy =
            STANDARD.encode(json!({ "expiration": expiration, "conditions": conditions }).to_string());
        let signing_key = generate_signing_key(keys.secret_access_key.expose(), now, region, service);
        let signature = calculate_signature(signing_key, policy.as_bytes());
        SignedPolicy {
            credential,
            amz_date,
            policy,
            signature,
        }
    }
}

/// A `Content-Length` the caller sent counted its own fields; the upstream gets ours.
fn recount_length(parts: &mut Parts, form: &PostForm, prefix: &[u8]) -> Result<(), SignError> {
    if let Some(declared) = parts.headers.get(header::CONTENT_LENGTH) {
        let declared: u64 = declared
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| unsignable("Content-Length is not a number".into()))?;
        let length = declared
            .checked_sub(form.content_start() as u64)
            .and_then(|rest| rest.checked_add(prefix.len() as u64))
            .ok_or_else(|| unsignable("Content-Length is shorter than the form's fields".into()))?;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(())
}

/// `yyyymmdd` and `yyyymmddThhmmssZ` of `now`, UTC.
fn amz_dates(now: SystemTime) -> (String, String) {
    let amz = crate::sigv4::amz_date(now);
    (amz[..8].to_owned(), amz)
}

/// The parts before the file's content: every field, then the `file` part's headers.
fn field_section(form: &PostForm, fields: &[(&str, &str)]) -> Result<Bytes, SignError> {
    let boundary = form.boundary();
    let delimiter = boundary.delimiter();
    let mut out = String::with_capacity(256 * (fields.len() + 1));
    // A value holding the boundary at a line start would end early for some reader and
    // let the caller's bytes pose as parts claimgate never authorized: `\r\n--B` is the
    // delimiter itself, and lenient readers also take a bare `\n--B`.
    let lenient = [b"\n--".as_slice(), boundary.as_str().as_bytes()].concat();
    let opening = [b"--".as_slice(), boundary.as_str().as_bytes()].concat();
    for (name, value) in fields {
        let v = value.as_bytes();
        if memmem::find(v, &delimiter).is_some()
            || memmem::find(v, &lenient).is_some()
            || v.starts_with(&opening)
        {
            return Err(unsignable(format!(
                "the form field `{name}` holds the form's boundary"
            )));
        }
        let _ = write!(
            out,
            "--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
            b = boundary.as_str()
        );
    }
    let _ = write!(
        out,
        "--{}\r\nContent-Disposition: form-data; name=\"file\"",
        boundary.as_str()
    );
    if let Some(filename) = &form.file().filename {
        let _ = write!(out, "; filename=\"{filename}\"");
    }
    out.push_str("\r\n");
    if let Some(content_type) = &form.file().content_type {
        let _ = write!(out, "Content-Type: {content_type}\r\n");
    }
    out.push_str("\r\n");
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_are_utc_and_compact() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_795_867_205);
        assert_eq!(
            amz_dates(t),
            ("20261128".to_owned(), "20261128T120005Z".to_owned())
        );
    }
}
