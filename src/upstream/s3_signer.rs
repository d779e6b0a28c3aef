//! Signs S3 requests with a route's keys on the hot path.
//!
//! The day's signing key (four HMACs over the secret) is derived once per UTC day and
//! reused, and the canonical request is written straight into one buffer. The result is
//! byte for byte what `aws-sigv4` produces with S3's settings ([`super::sign::sign_v4`] with
//! [`super::sign::s3_settings`]): the tests hold it to that, request by request.
//!
//! S3's rules as `aws-sigv4` applies them: the path is signed as sent (claimgate builds it
//! already encoded), the query is form-decoded (`+` is a space) and re-encoded with only
//! unreserved characters bare, sorted by encoded name then value; header values are trimmed
//! of spaces and runs of spaces collapsed; `x-amz-date`, `x-amz-content-sha256` and the
//! session token (when the route has one) are added and signed.

use std::time::SystemTime;

use aws_lc_rs::hmac;
use http::request::Parts;
use http::{HeaderName, HeaderValue};

use super::credentials::SigningKeys;
use super::sign::{SignError, s3_signed_header, unsignable};
use crate::sigv4::header::{X_AMZ_CONTENT_SHA256, X_AMZ_DATE, X_AMZ_SECURITY_TOKEN};
use crate::sigv4::{self, ALGORITHM};

/// A route's S3 signing settings; the keys come with each request (see
/// [`super::credentials`]), each set holding its own day's signing key.
pub struct S3Signer {
    region: String,
    service: String,
}

impl S3Signer {
    /// A signer for a route's region and service.
    pub fn new(region: &str, service: &str) -> S3Signer {
        S3Signer {
            region: region.to_string(),
            service: service.to_string(),
        }
    }

    /// Signs `parts` in place: adds `x-amz-date`, `x-amz-content-sha256` (`payload`), the
    /// route's session token, and `authorization`.
    pub fn sign(
        &self,
        keys: &SigningKeys,
        parts: &mut Parts,
        payload: &str,
        now: SystemTime,
    ) -> Result<(), SignError> {
        let amz_date = sigv4::amz_date(now);
        let date = &amz_date[..8];
        let headers = &mut parts.headers;
        headers.insert(
            HeaderName::from_static(X_AMZ_DATE),
            HeaderValue::from_str(&amz_date).map_err(|_| unsignable("bad date".into()))?,
        );
        headers.insert(
            HeaderName::from_static(X_AMZ_CONTENT_SHA256),
            HeaderValue::from_str(payload).map_err(|_| unsignable("bad payload hash".into()))?,
        );
        if let Some(token) = &keys.session_token {
            headers.insert(HeaderName::from_static(X_AMZ_SECURITY_TOKEN), token.clone());
        }
        let canonical = canonical_request(parts, payload)?;
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = sigv4::string_to_sign(&amz_date, &scope, &canonical.request);
        let day_key = keys.key_for(date, &self.region, &self.service);
        let signature = hmac::sign(&day_key, to_sign.as_bytes());
        let mut authorization = format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature=",
            keys.keys.access_key_id.expose(),
            canonical.signed_headers,
        );
        sigv4::push_hex(&mut authorization, signature.as_ref());
        let mut value = HeaderValue::from_str(&authorization)
            .map_err(|_| unsignable("bad authorization header".into()))?;
        value.set_sensitive(true);
        parts.headers.insert(http::header::AUTHORIZATION, value);
        Ok(())
    }
}

struct Canonical {
    request: Vec<u8>,
    signed_headers: String,
}

/// The canonical request, as `aws-sigv4` writes it with S3's settings.
fn canonical_request(parts: &Parts, payload: &str) -> Result<Canonical, SignError> {
    let mut names: Vec<&str> = parts
        .headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| s3_signed_header(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(parts.uri.path().as_bytes());
    out.push(b'\n');
    push_query(&mut out, parts.uri.query().unwrap_or_default());
    out.push(b'\n');
    for name in &names {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        for (i, value) in parts.headers.get_all(*name).iter().enumerate() {
            let value = value
                .to_str()
                .map_err(|_| unsignable(format!("header {name} is not visible ASCII")))?;
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, value);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    let signed_headers = names.join(";");
    out.extend_from_slice(signed_headers.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload.as_bytes());
    Ok(Canonical {
        request: out,
        signed_headers,
    })
}

/// The query, form-decoded and re-encoded with only unreserved characters bare, sorted.
fn push_query(out: &mut Vec<u8>, query: &str) {
    if query.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            (
                sigv4::encode(k.as_bytes()).to_string(),
                sigv4::encode(v.as_bytes()).to_string(),
            )
        })
        .collect();
    pairs.sort_unstable();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
    }
}

/// A header value without leading or trailing spaces, runs of spaces collapsed to one.
fn push_trimmed(out: &mut Vec<u8>, value: &str) {
    let mut prev_space = false;
    for b in value.trim_matches(' ').bytes() {
        if b == b' ' && prev_space {
            continue;
        }
        prev_space = b == b' ';
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SigV4Keys;
    use crate::secret::Secret;
    use crate::upstream::sign::{Signer, s3_settings, sign_v4};
    use aws_credential_types::Credentials as AwsCredentials;
    use aws_sigv4::http_request::SignableBody;

    fn keys(token: Option<&str>) -> SigV4Keys {
        SigV4Keys {
            access_key_id: Secret::new("AKIDEXAMPLE"),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: token.map(Secret::new),
        }
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// The reference: `aws-sigv4` with S3's settings, as claimgate signed before.
    fn reference(parts: &mut Parts, keys: &SigV4Keys, payload: &str, now: SystemTime) {
        let creds = AwsCredentials::new(
            keys.access_key_id.expose(),
            keys.secret_access_key.expose(),
            keys.session_token.as_ref().map(|t| t.expose().to_string()),
            None,
            "test",
        );
        let body = match payload {
            "UNSIGNED-PAYLOAD" => SignableBody::UnsignedPayload,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => SignableBody::StreamingUnsignedPayloadTrailer,
            hex => SignableBody::Precomputed(hex.to_string()),
        };
        let signer = Signer {
            credentials: &creds,
            region: "us-east-1",
            service: "s3",
            settings: s3_settings(),
            signed_headers: s3_signed_header,
        };
        sign_v4(parts, &signer, body, now).unwrap();
    }

    /// Method, URI, headers, payload hash.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

    #[test]
    fn signs_exactly_as_aws_sigv4_does() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases: &[Case] = &[
            (
                "GET",
                "http://s3.local:9000/b/k",
                &[("host", "s3.local:9000")],
                "UNSIGNED-PAYLOAD",
            ),
            (
                "GET",
                "http://s3.local/b?list-type=2&prefix=a%2Fb&delimiter=%2F&max-keys=10",
                &[("host", "s3.local")],
                "UNSIGNED-PAYLOAD",
            ),
            ("GET", "http://s3.local/b?acl", &[("host", "s3.local")], hex),
            (
                "GET",
                "http://s3.local/b?prefix=a+b&x=%2B&y=&z=1&z=0&%C3%BC=%E2%82%AC&sp=a%20b&tilde=~._-",
                &[("host", "s3.local")],
                hex,
            ),
            (
                "PUT",
                "http://s3.local/b/a%20b/%C3%BC%21%28x%29",
                &[
                    ("host", "s3.local"),
                    ("content-type", "  text/plain;   charset=utf-8  "),
                    ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
                    ("x-amz-meta-a", "one"),
                    ("x-amz-meta-a", "two  three"),
                    ("x-amz-meta-B", "Cap"),
                    ("x-amz-copy-source", "/src/a%20b?versionId=v1"),
                    ("content-length", "5"),
                    ("user-agent", "not signed"),
                ],
                "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            ),
            (
                "POST",
                "https://s3.us-east-1.amazonaws.com/base/b/k?uploads",
                &[("host", "s3.us-east-1.amazonaws.com")],
                hex,
            ),
            (
                "DELETE",
                "http://s3.local/b/k?uploadId=abc%2Fdef",
                &[("host", "s3.local")],
                "UNSIGNED-PAYLOAD",
            ),
        ];
        let times = [
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_086_399),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_086_400),
        ];
        for token in [None, Some("FwoGZXIvYXdzEXAMPLETOKEN//+=")] {
            let keys = keys(token);
            let signing = SigningKeys::new(keys.clone(), None).unwrap();
            let signer = S3Signer::new("us-east-1", "s3");
            for (method, uri, headers, payload) in cases {
                for now in times {
                    let mut ours = request(method, uri, headers);
                    let mut theirs = request(method, uri, headers);
                    signer.sign(&signing, &mut ours, payload, now).unwrap();
                    reference(&mut theirs, &keys, payload, now);
                    assert_eq!(
                        ours.headers, theirs.headers,
                        "{method} {uri} {payload} token={token:?} at {now:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_signing_key_is_derived_once_per_day() {
        let signer = S3Signer::new("us-east-1", "s3");
        let signing = SigningKeys::new(keys(None), None).unwrap();
        let day1 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        let mut p = request("GET", "http://s3.local/b/k", &[("host", "s3.local")]);
        signer.sign(&signing, &mut p, "UNSIGNED-PAYLOAD", day1).unwrap();
        assert_eq!(signing.day_of_key().as_deref(), Some("20251124"));
        let day2 = day1 + std::time::Duration::from_secs(86_400);
        signer.sign(&signing, &mut p, "UNSIGNED-PAYLOAD", day2).unwrap();
        assert_eq!(signing.day_of_key().as_deref(), Some("20251125"));
    }
}
