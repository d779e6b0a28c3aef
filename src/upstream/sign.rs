//! Re-signing: strip every credential the caller sent, then authenticate as the route.
//!
//! For S3 routes the request is signed with SigV4 by aws-sigv4 using S3's rules (single
//! URI encoding, no path normalization) and the route's configured region and service —
//! never guessed from the host. The signed header set is deliberately small (`host`,
//! `content-md5`, `content-type` and every `x-amz-*`): S3 requires those, and headers a
//! hop might rewrite stay unsigned.

use std::time::SystemTime;

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::config::RouteApi;
use crate::model::{CopySource, Operation, S3Address};
use crate::policy::Permit;
use crate::sigv4;
use crate::sigv4::header::{X_AMZ_CONTENT_SHA256, X_AMZ_DATE, X_AMZ_SECURITY_TOKEN};
use crate::upstream::{Downstream, Route};

/// Refusals of the sign stage.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The caller's request cannot be re-signed as sent (e.g. a header value that is not
    /// visible ASCII, or a body framing we cannot re-sign).
    #[error("{reason}")]
    Unsignable {
        /// Why.
        reason: String,
    },
}

/// The caller's own authentication, and `Expect` (already answered to the caller), removed
/// before forwarding.
/// Names parsed once: removing by `&str` parses the name again on every request.
static STRIPPED_HEADERS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static(X_AMZ_SECURITY_TOKEN),
    HeaderName::from_static(X_AMZ_DATE),
    HeaderName::from_static(X_AMZ_CONTENT_SHA256),
    header::EXPECT,
];

/// Headers that belong to one connection (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Prepares `parts` to go to the route's upstream: URI rewritten, caller credentials
/// stripped, route credentials added. Requires the [`Permit`] of the authorize stage, so
/// an unauthorized request cannot be signed.
///
/// S3 requests are addressed from the classified [`Operation`] (its [`S3Address`]), never
/// from the caller's spelling of the path or Host: the bucket and key the upstream receives
/// are byte for byte the ones that were authorized.
pub fn sign_upstream(
    permit: Permit,
    parts: &mut Parts,
    route: &Route,
    downstream: &Downstream,
    now: SystemTime,
) -> Result<(), SignError> {
    let op = permit.operation();
    let caller_payload = parts
        .headers
        .get(X_AMZ_CONTENT_SHA256)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    retarget(op, parts, route)?;

    match (&route.config.api, downstream) {
        (RouteApi::S3(_), Downstream::S3(keys)) => {
            let payload = payload_for(caller_payload.as_deref())?;
            let signer = route.s3_signer.as_ref().ok_or(SignError::Unsignable {
                reason: "the S3 route has no signer".into(),
            })?;
            signer.sign(keys, parts, payload.as_ref(), now)
        }
        (RouteApi::Http(_), Downstream::Header(name, value)) => {
            parts.headers.insert(name.clone(), value.clone());
            Ok(())
        }
        _ => Err(unsignable("the route's credentials do not fit its kind".into())),
    }
}

/// Points `parts` at the route's upstream: the caller's credentials stripped, the URI and
/// `Host` rebuilt from the classified operation (S3) or the route prefix (HTTP).
pub(crate) fn retarget(op: &Operation, parts: &mut Parts, route: &Route) -> Result<(), SignError> {
    strip_caller_credentials(&mut parts.headers);
    let path_and_query = upstream_path_and_query(parts, route, op.s3.as_ref())?;
    if let Some(source) = &op.copy_source {
        let value = HeaderValue::try_from(copy_source_header(source))
            .map_err(|_| unsignable("cannot write x-amz-copy-source".into()))?;
        parts.headers.insert("x-amz-copy-source", value);
    }
    let uri = http::Uri::builder()
        .scheme(route.config.upstream.scheme())
        .authority(route.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| unsignable(format!("cannot build upstream URI: {e}")))?;
    parts.uri = uri;
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(route.authority.as_str())
            .map_err(|_| unsignable("bad upstream host".into()))?,
    );
    // hyper sets the version it negotiates with the upstream.
    parts.version = http::Version::HTTP_11;
    Ok(())
}

fn sensitive(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

pub(crate) fn unsignable(reason: String) -> SignError {
    SignError::Unsignable { reason }
}

/// Removes hop-by-hop headers and the caller's credentials.
pub fn strip_caller_credentials(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for h in &STRIPPED_HEADERS {
        headers.remove(h);
    }
}

/// Removes the headers that belong to one connection, including any that `Connection`
/// names. Used in both directions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
}

/// A verified signed-chunk upload goes upstream as its bare bytes: the framing, the chunk
/// signatures and the trailers are consumed here, so the headers describing them go too.
pub fn unframe_signed_chunks(headers: &mut HeaderMap) {
    headers.insert(
        X_AMZ_CONTENT_SHA256,
        HeaderValue::from_static(sigv4::UNSIGNED_PAYLOAD),
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
pub fn describe_rewritten_body(headers: &mut HeaderMap, body: &[u8]) -> Result<(), SignError> {
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
    let value =
        |v: String| HeaderValue::try_from(v).map_err(|_| unsignable("a digest is not a header value".into()));
    headers.insert(header::CONTENT_LENGTH, value(body.len().to_string())?);
    headers.insert("content-md5", value(md5)?);
    headers.insert(X_AMZ_CONTENT_SHA256, value(sha)?);
    Ok(())
}

/// What the upstream signature says about the body. The caller's digest is kept when it
/// is one S3 can check (a hex SHA-256) or a streaming mode we pass through unchanged;
/// anything else becomes `UNSIGNED-PAYLOAD`. Signed aws-chunked bodies carry per-chunk
/// signatures chained to the caller's key, which the upstream could never verify.
fn payload_for(caller: Option<&str>) -> Result<std::borrow::Cow<'static, str>, SignError> {
    Ok(match caller {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => h.to_ascii_lowercase().into(),
        Some(s @ "STREAMING-UNSIGNED-PAYLOAD-TRAILER") => s.to_string().into(),
        Some(s) if s.starts_with("STREAMING-") => {
            return Err(unsignable(format!(
                "x-amz-content-sha256 {s} (signed aws-chunked upload) cannot be re-signed; send UNSIGNED-PAYLOAD, a SHA-256 or STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            )));
        }
        _ => sigv4::UNSIGNED_PAYLOAD.into(),
    })
}

/// The upstream path: the route's base path, then the classified bucket and key (S3
/// routes) or the caller's path with the route prefix removed (HTTP routes); presign
/// parameters dropped.
fn upstream_path_and_query(
    parts: &Parts,
    route: &Route,
    address: Option<&S3Address>,
) -> Result<http::uri::PathAndQuery, SignError> {
    let path = parts.uri.path();
    let rest = match &route.config.api {
        RouteApi::Http(http) => match http.path_prefix.as_deref() {
            Some(prefix) => path
                .strip_prefix(prefix)
                .map(|r| format!("/{r}"))
                .unwrap_or_else(|| path.to_string()),
            None => path.to_string(),
        },
        RouteApi::S3(_) => {
            let address =
                address.ok_or_else(|| unsignable("an S3 request reached signing unclassified".into()))?;
            s3_path(address)
        }
    };
    let mut out = format!("{}{}", route.base_path, rest);
    if let Some(q) = parts.uri.query() {
        let kept = filter_query(q);
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept);
        }
    }
    out.parse()
        .map_err(|e| unsignable(format!("bad upstream path: {e}")))
}

/// `x-amz-copy-source` written from the authorized source: `/bucket/key` encoded as
/// [`s3_path`] encodes keys, then the version as sent.
pub fn copy_source_header(source: &CopySource) -> String {
    let mut out = s3_path(&S3Address::Object {
        bucket: source.bucket.clone(),
        key: source.key.clone(),
    });
    if let Some(version) = &source.version_id {
        out.push_str("?versionId=");
        out.push_str(version);
    }
    out
}

/// The path-style upstream path of an S3 address, encoded the way SigV4 canonicalizes it:
/// every byte but the unreserved ones (and the `/` between segments) percent-encoded. The
/// upstream decodes it once, so it acts on exactly the decoded key we authorized, and
/// computes the same canonical URI we signed, whatever spelling the caller used.
pub fn s3_path(address: &S3Address) -> String {
    match address {
        S3Address::Service => "/".to_owned(),
        S3Address::Bucket(bucket) | S3Address::FormUpload { bucket, .. } => format!("/{bucket}"),
        S3Address::Object { bucket, key } => {
            let mut out = format!("/{bucket}/");
            sigv4::push_encoded_key(&mut out, key);
            out
        }
    }
}

/// Drops presign parameters, keeping every other parameter byte for byte.
pub fn filter_query(q: &str) -> String {
    q.split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            !sigv4::param::is_presign(&name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// S3's signing rules: the path is signed as sent (already encoded once, see
/// [`sigv4::canonical_s3_path`]), never normalized, and the payload hash travels in
/// `x-amz-content-sha256`.
pub fn s3_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings
}

/// Headers claimgate signs on S3 requests.
pub fn s3_signed_header(name: &str) -> bool {
    name == "host" || name == "content-md5" || name == "content-type" || name.starts_with("x-amz-")
}

/// Who signs a request, for what, and by which rules.
pub struct Signer<'a> {
    /// The credentials.
    pub credentials: &'a AwsCredentials,
    /// The SigV4 region.
    pub region: &'a str,
    /// The SigV4 service name.
    pub service: &'a str,
    /// Encoding, normalization and payload-hash rules ([`s3_settings`] for S3).
    pub settings: SigningSettings,
    /// Which of the request's headers are signed.
    pub signed_headers: fn(&str) -> bool,
}

/// Signs `parts` in place with SigV4: adds `authorization`, `x-amz-date` and, per the
/// signer's settings, `x-amz-content-sha256` and `x-amz-security-token`.
pub fn sign_v4(
    parts: &mut Parts,
    signer: &Signer<'_>,
    body: SignableBody<'_>,
    now: SystemTime,
) -> Result<(), SignError> {
    let Signer {
        credentials: creds,
        region,
        service,
        settings,
        signed_headers: include,
    } = signer;
    let settings = settings.clone();
    let identity = (*creds).clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| unsignable(format!("signing parameters: {e}")))?
        .into();

    let mut signed: Vec<(&str, &str)> = Vec::with_capacity(8);
    for (name, value) in &parts.headers {
        let n = name.as_str();
        if include(n) {
            let v = value
                .to_str()
                .map_err(|_| unsignable(format!("header {n} is not visible ASCII")))?;
            signed.push((n, v));
        }
    }
    let uri = parts.uri.to_string();
    let request = SignableRequest::new(parts.method.as_str(), &uri, signed.into_iter(), body)
        .map_err(|e| unsignable(format!("cannot sign request: {e}")))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| unsignable(format!("cannot sign request: {e}")))?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    for h in headers {
        let value = HeaderValue::from_str(h.value())
            .map_err(|_| unsignable("signer produced a bad header".into()))?;
        let name = HeaderName::from_static(h.name());
        let value = if h.sensitive() { sensitive(value) } else { value };
        parts.headers.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presign_params_are_dropped_others_kept_verbatim() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&prefix=a%2Fb&X-Amz-Signature=abc&x-id=GetObject&X-Amz-Security-Token=t";
        assert_eq!(filter_query(q), "prefix=a%2Fb&x-id=GetObject");
        assert_eq!(filter_query("AWSAccessKeyId=a&Signature=s&Expires=1"), "");
    }

    #[test]
    fn s3_paths_are_built_from_the_authorized_key() {
        let object = |key: &str| S3Address::Object {
            bucket: "b".into(),
            key: key.into(),
        };
        assert_eq!(s3_path(&object("aA!b/c d")), "/b/aA%21b/c%20d");
        assert_eq!(s3_path(&object("x//./y/../z")), "/b/x//./y/../z");
        assert_eq!(s3_path(&object("\u{1234}")), "/b/%E1%88%B4");
        assert_eq!(s3_path(&object("a%2Fb+c")), "/b/a%252Fb%2Bc");
        assert_eq!(s3_path(&object("dir/")), "/b/dir/");
        assert_eq!(s3_path(&S3Address::Bucket("b".into())), "/b");
        assert_eq!(s3_path(&S3Address::Service), "/");
        let source = |version: Option<&str>| CopySource {
            bucket: "src".into(),
            key: "a b/c+d?".into(),
            version_id: version.map(str::to_string),
        };
        assert_eq!(copy_source_header(&source(None)), "/src/a%20b/c%2Bd%3F");
        assert_eq!(
            copy_source_header(&source(Some("v1"))),
            "/src/a%20b/c%2Bd%3F?versionId=v1"
        );
    }

    #[test]
    fn payload_rules() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(payload_for(Some(hex)).unwrap(), hex);
        assert_eq!(payload_for(Some(&hex.to_uppercase())).unwrap(), hex);
        assert_eq!(payload_for(Some("UNSIGNED-PAYLOAD")).unwrap(), "UNSIGNED-PAYLOAD");
        assert_eq!(
            payload_for(Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER")).unwrap(),
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        );
        assert!(payload_for(Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")).is_err());
        assert_eq!(payload_for(Some("junk")).unwrap(), "UNSIGNED-PAYLOAD");
        assert_eq!(payload_for(None).unwrap(), "UNSIGNED-PAYLOAD");
    }

    #[test]
    fn hop_by_hop_and_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.insert("x-amz-security-token", "t".parse().unwrap());
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("x-amz-meta-a", "kept".parse().unwrap());
        strip_caller_credentials(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-amz-meta-a"));
    }
}
