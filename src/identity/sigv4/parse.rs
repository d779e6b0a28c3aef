//! Reading what a SigV4 request claims, trusting none of it yet.

use http::HeaderMap;
use http::request::Parts;
use percent_encoding::percent_decode_str;

use super::{SigV4Claim, SigV4Error, algorithm_name, malformed};
use crate::secret::Secret;
use crate::sigv4::header::{X_AMZ_DATE, X_AMZ_SECURITY_TOKEN};
use crate::sigv4::{
    ALGORITHM, Carrier, MAX_PRESIGNED_EXPIRES, decoded_eq, param, parse_amz_date, query_pairs,
};

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
            Carrier::Header,
            "the request carries both an Authorization header and X-Amz-Algorithm in the query; send one",
        )),
        (Some(value), false) => parse_header_form(value, &parts.headers).map(Some),
        (None, true) => parse_query_form(query, &parts.headers).map(Some),
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
            return Err(malformed(
                Carrier::Header,
                "more than one AWS4 Authorization header",
            ));
        }
        let s = value
            .to_str()
            .map_err(|_| malformed(Carrier::Header, "the Authorization header is not visible ASCII"))?;
        found = Some(s);
    }
    let Some(value) = found else {
        return Ok(None);
    };
    let (algorithm, _) = value.split_once(' ').unwrap_or((value, ""));
    if algorithm != ALGORITHM {
        return Err(malformed(
            Carrier::Header,
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
    let m = |reason: &str| malformed(Carrier::Header, reason);
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
                    Carrier::Header,
                    format!("unexpected part {key:?}: expected Credential, SignedHeaders and Signature"),
                ));
            }
        };
        if slot.replace(val).is_some() {
            return Err(malformed(
                Carrier::Header,
                format!("{key} appears more than once"),
            ));
        }
    }
    let credential = credential.ok_or_else(|| m("missing Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| m("missing SignedHeaders"))?;
    let signature = signature.ok_or_else(|| m("missing Signature"))?;

    let amz_date = single_header(headers, X_AMZ_DATE, Carrier::Header)?
        .ok_or_else(|| m("missing x-amz-date header (yyyymmddThhmmssZ); the Date header is not accepted"))?;
    let session_token = single_header(headers, X_AMZ_SECURITY_TOKEN, Carrier::Header)?.map(Secret::new);
    build_claim(Fields {
        carrier: Carrier::Header,
        credential,
        signed_headers,
        signature,
        amz_date,
        expires: None,
        session_token,
    })
}

/// The presigned form: `X-Amz-Algorithm`, `X-Amz-Credential`, `X-Amz-Date`,
/// `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Signature`, optional
/// `X-Amz-Security-Token`, each exactly once.
fn parse_query_form(query: &str, headers: &HeaderMap) -> Result<SigV4Claim, SigV4Error> {
    const NAMES: [&str; 7] = param::ALL;
    let mut values: [Option<String>; 7] = Default::default();
    for (name, value) in query_pairs(query) {
        let Some(i) = NAMES.iter().position(|n| decoded_eq(name, n)) else {
            continue;
        };
        let decoded = percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| malformed(Carrier::Query, format!("{} is not UTF-8", NAMES[i])))?;
        if values[i].replace(decoded.into_owned()).is_some() {
            return Err(malformed(
                Carrier::Query,
                format!("{} appears more than once", NAMES[i]),
            ));
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
        v.ok_or_else(|| malformed(Carrier::Query, format!("missing query parameter {name}")))
    };
    let algorithm = require(algorithm, param::ALGORITHM)?;
    if algorithm != ALGORITHM {
        return Err(malformed(
            Carrier::Query,
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
                Carrier::Query,
                format!(
                    "X-Amz-Expires must be a number of seconds from 1 to {MAX_PRESIGNED_EXPIRES} (7 days)"
                ),
            )
        })?;
    let session_token = match token {
        Some(t) => {
            if single_header(headers, X_AMZ_SECURITY_TOKEN, Carrier::Query)?.is_some_and(|h| h != t) {
                return Err(malformed(
                    Carrier::Query,
                    "X-Amz-Security-Token and the x-amz-security-token header differ; send one",
                ));
            }
            Some(Secret::new(t))
        }
        None => single_header(headers, X_AMZ_SECURITY_TOKEN, Carrier::Query)?.map(Secret::new),
    };
    build_claim(Fields {
        carrier: Carrier::Query,
        credential: &credential,
        signed_headers: &signed_headers,
        signature: &signature,
        amz_date: &date,
        expires: Some(expires),
        session_token,
    })
}

/// The SigV4 values as sent, in either form, before their shapes are checked.
struct Fields<'a> {
    carrier: Carrier,
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
    expires: Option<u64>,
    session_token: Option<Secret>,
}

fn build_claim(fields: Fields<'_>) -> Result<SigV4Claim, SigV4Error> {
    let Fields {
        carrier,
        credential,
        signed_headers,
        signature,
        amz_date,
        expires,
        session_token,
    } = fields;
    let m = |reason: String| malformed(carrier, reason);

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
        carrier,
    })
}

/// The one value of a header, as text: `None` if absent, malformed if repeated or not
/// visible ASCII.
pub(super) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    carrier: Carrier,
) -> Result<Option<&'a str>, SigV4Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(carrier, format!("more than one {name} header")));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| malformed(carrier, format!("the {name} header is not visible ASCII")))
}
