//! The upstream's answer, before it is passed on: refusals of claimgate's own credentials
//! are screened out (their bodies echo the route's access key id and string-to-sign), and
//! multipart upload ids are bound to the bucket and key they were issued for.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, header};
use http_body::Body as _;
use hyper::body::Incoming;

use super::Proxy;
use super::context::Ctx;
use crate::config::RouteKind;
use crate::model::Operation;
use crate::rejection::{Rejection, UpstreamError};
use crate::upstream::Route;
use crate::upstream::upload_id::{self, UploadIdError};

/// What the upstream answered: streamed, or read whole when we had to look inside.
pub(super) enum Reply {
    /// The upstream's body, streamed.
    Stream(Incoming),
    /// The upstream's body, read whole.
    Buffered(Bytes),
    /// An answer claimgate made itself (STS); no upstream was involved.
    Local(Bytes),
}

/// S3 error codes that mean the upstream refused *claimgate's* credentials. Their bodies
/// carry the route's access key id, string-to-sign and signature, so they never reach the
/// caller: the caller gets a 502 naming the route, operators get the log line and metric.
const UPSTREAM_AUTH_CODES: [&str; 7] = [
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
];

/// Largest upstream error body read to look for its code.
const MAX_SCREENED_ERROR: u64 = 64 * 1024;

/// Checks the upload id a multipart request carries against the bucket and key it was
/// authorized for and writes the store's bare id into the forwarded query. Returns what the
/// store's answer needs tagged, if anything. A foreign or untagged id ends the request here,
/// answered as S3 answers an unknown upload.
pub(super) fn unwrap_upload_id(
    route: &Route,
    op: &Operation,
    parts: &mut Parts,
    ctx: &mut Ctx,
) -> Result<Option<upload_id::Answer>, Rejection> {
    if route.config.kind() != RouteKind::S3 || !upload_id::involves(op) {
        return Ok(None);
    }
    let Some(binding) = &route.upload_ids else {
        // Route::new refuses S3 routes without a binding key; fail closed all the same.
        tracing::error!(route = %route.config.name, "S3 route without an upload-id binding key");
        return Err(Rejection::Internal);
    };
    upload_id::unwrap_request(binding, op, &mut parts.uri).map_err(|e| {
        if let UploadIdError::NoSuchUpload { detail } = &e {
            ctx.note(*detail);
        }
        e.into()
    })
}

/// The upstream's answer as it may be passed on: auth refusals of the route's credentials
/// screened out, then, for a successful answer naming upload ids, the ids bound.
pub(super) async fn screen(
    proxy: &Proxy,
    route: &Route,
    resp: Response<Incoming>,
    upload_ids: Option<upload_id::Answer>,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    let resp = screen_auth_errors(proxy, route, resp, ctx).await?;
    match upload_ids {
        Some(answer) if resp.status().is_success() => bind_upload_ids(proxy, route, &answer, resp, ctx).await,
        _ => Ok(resp),
    }
}

/// Turns the upstream's refusal of claimgate's own credentials into a 502 (see
/// [`UPSTREAM_AUTH_CODES`]); every other answer passes.
pub(super) async fn screen_auth_errors(
    proxy: &Proxy,
    route: &Route,
    resp: Response<Incoming>,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    use http_body_util::BodyExt;
    let status = resp.status();
    let small = resp
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_SCREENED_ERROR);
    if route.config.kind() != RouteKind::S3 || !matches!(status.as_u16(), 400 | 403) || !small {
        return Ok(resp.map(Reply::Stream));
    }
    let (parts, body) = resp.into_parts();
    let name = &route.config.name;
    let bytes = match tokio::time::timeout(route.timeouts.body_idle, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(answer_failed(proxy, name, false)),
        Err(_) => return Err(answer_failed(proxy, name, true)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let code = text
        .split("<Code>")
        .nth(1)
        .and_then(|r| r.split("</Code>").next())
        .unwrap_or_default();
    if let Some(code) = UPSTREAM_AUTH_CODES.iter().find(|c| **c == code) {
        ctx.upstream_refused(status.as_u16());
        proxy.metrics.upstream_error(name, "auth");
        tracing::error!(route = %name, upstream_code = %code, "upstream refused the route's credentials; check the route's credentials, region and clock");
        return Err(UpstreamError::CredentialsRefused {
            route: name.clone(),
            code,
        }
        .into());
    }
    Ok(Response::from_parts(parts, Reply::Buffered(bytes)))
}

/// Tags the upload ids in a successful CreateMultipartUpload, ListParts or
/// ListMultipartUploads answer. Only these small XML bodies are read whole, up to
/// [`upload_id::MAX_ANSWER`]; a larger or unreadable one is a 502, never passed on untagged.
async fn bind_upload_ids(
    proxy: &Proxy,
    route: &Route,
    answer: &upload_id::Answer,
    resp: Response<Reply>,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    use http_body_util::{BodyExt, Limited};
    let name = &route.config.name;
    let binding = route.upload_ids.as_ref().ok_or(Rejection::Internal)?;
    let (mut parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let refuse = |ctx: &mut Ctx, e: UploadIdError| -> Rejection {
        ctx.upstream_refused(status);
        proxy.metrics.upstream_error(name, "answer");
        tracing::error!(route = %name, operation = ctx.operation_name(), error = %e, "upstream answer refused: its upload ids cannot be bound");
        e.into()
    };
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        let reason = "the answer is content-encoded".into();
        return Err(refuse(ctx, UploadIdError::MalformedAnswer { reason }));
    }
    let xml = match body {
        Reply::Stream(body) => {
            let read = Limited::new(body, upload_id::MAX_ANSWER).collect();
            match tokio::time::timeout(route.timeouts.body_idle, read).await {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    let max = upload_id::MAX_ANSWER;
                    return Err(refuse(ctx, UploadIdError::AnswerTooLarge { max }));
                }
                Ok(Err(_)) => return Err(answer_failed(proxy, name, false)),
                Err(_) => return Err(answer_failed(proxy, name, true)),
            }
        }
        Reply::Buffered(b) | Reply::Local(b) => b,
    };
    let rewritten = upload_id::rewrite_answer(binding, answer, &xml).map_err(|e| refuse(ctx, e))?;
    for stale in ["content-md5", "etag"] {
        parts.headers.remove(stale);
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    let length = HeaderValue::from_str(&rewritten.len().to_string()).map_err(|_| Rejection::Internal)?;
    parts.headers.insert(header::CONTENT_LENGTH, length);
    Ok(Response::from_parts(
        parts,
        Reply::Buffered(Bytes::from(rewritten)),
    ))
}

/// An upstream answer claimgate had to read whole broke off (or, `stalled`, stopped coming):
/// counted against the route and refused as the upstream's failure.
fn answer_failed(proxy: &Proxy, route: &str, stalled: bool) -> Rejection {
    let route = route.to_string();
    if stalled {
        proxy.metrics.upstream_error(&route, "stalled");
        UpstreamError::Timeout { route }.into()
    } else {
        proxy.metrics.upstream_error(&route, "broke");
        UpstreamError::Broke { route }.into()
    }
}
