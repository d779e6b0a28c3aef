//! PostObject, a browser form upload: its key, its options and — without a bearer token —
//! its credentials are in the multipart body, so the phases run in the same order once the
//! form's fields are read:
//!
//! read the fields (size-capped, up to the file) → authenticate (the bearer identity already
//! verified, or the form's signed POST policy) → classify → authorize → sign (a new form
//! with the route's own POST policy) → forward (the new fields, then the caller's file,
//! streamed and measured against the policy's `content-length-range`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

use super::answer::{self, Reply};
use super::context::Ctx;
use super::{Proxy, authorize, check_buckets};
use crate::body::form_file::FileTail;
use crate::body::{BodyStats, UpstreamBody};
use crate::classify::{ClassifyError, FormReader, PendingPostObject, PostForm};
use crate::digest::Declared;
use crate::identity::AuthError;
use crate::model::{AuthMethod, Identity};
use crate::rejection::Rejection;
use crate::upstream::post_sign::sign_form_upload;
use crate::upstream::{Downstream, Route};

/// Runs a form upload through the phases. `caller` is the bearer identity already proven,
/// if the request had one.
pub(super) async fn upload(
    proxy: &Proxy,
    route: &Route,
    mut parts: Parts,
    mut body: Incoming,
    caller: Option<Arc<Identity>>,
    pending: PendingPostObject,
    ctx: &mut Ctx,
) -> Result<Response<Reply>, Rejection> {
    refuse_whole_body_signatures(&parts, caller.as_deref())?;

    // the fields, up to the file's content
    let max = proxy.config.server.max_inspected_body;
    let idle = proxy.config.limits.client_body_idle_timeout;
    let (form, head) = read_form(&mut body, pending.reader(), max, idle, &ctx.bytes_in).await?;

    // authenticate
    let (identity, length) = match caller {
        Some(identity) => {
            if let Some(field) = form.credential_fields().next() {
                return Err(AuthError::Ambiguous {
                    reason: format!(
                        "the request has an Authorization header and its form carries credentials too \
                         (`{field}`); send one"
                    ),
                }
                .into());
            }
            (identity, None)
        }
        None => {
            let (identity, length) = proxy.auth.authenticate_form(&form, pending.bucket())?;
            ctx.authenticated(&identity);
            super::admit(proxy, &identity, ctx)?;
            (identity, length)
        }
    };

    // classify
    let operation = pending.finish(&form)?;
    ctx.classified(&operation);
    check_buckets(route, &operation)?;

    // authorize
    let permit = authorize(proxy, route, &identity, operation, ctx)?;

    // sign
    let downstream = super::downstream(proxy, route, &identity, &permit, &parts).await?;
    let Downstream::S3(keys) = downstream else {
        return Err(Rejection::Internal);
    };
    let prefix = sign_form_upload(
        permit,
        &form,
        length.as_ref(),
        &mut parts,
        (route, &keys.keys),
        proxy.clock.now(),
    )?;

    // forward
    let first = head.slice(form.content_start()..);
    let file = FileTail::new(body, first, form.boundary(), length, ctx.bytes_in.clone());
    let body = UpstreamBody::Form {
        prefix: Some(prefix),
        file: Box::new(file),
    };
    let resp = super::send(proxy, route, Request::from_parts(parts, body), ctx).await?;
    // The store may answer before it notices the file was cut short: the reason is ours.
    if ctx.bytes_in.form_failure().is_some()
        && let Some(rejection) = ctx.body_failure()
    {
        return Err(rejection);
    }
    answer::screen_auth_errors(proxy, route, resp, ctx).await
}

/// A signature over the whole request (a session's header or presigned-URL signature,
/// `Content-MD5`, a hex `x-amz-content-sha256`) covers a body claimgate rebuilds: the form's
/// own policy and fields are what S3 clients sign and digest for a form upload.
fn refuse_whole_body_signatures(parts: &Parts, caller: Option<&Identity>) -> Result<(), Rejection> {
    if caller.is_some_and(|id| matches!(id.method, AuthMethod::Session { .. })) {
        return Err(AuthError::UnsupportedScheme {
            scheme: "SigV4 in the Authorization header or query of a browser form upload: sign the form's \
                     POST policy instead (generate_presigned_post), or send a bearer token"
                .into(),
        }
        .into());
    }
    if !Declared::from_headers(&parts.headers)?.is_empty() {
        return Err(ClassifyError::InvalidArgument {
            reason: "Content-MD5 and a hex x-amz-content-sha256 cover the whole form, which claimgate \
                     rebuilds for the upstream; send the file's digest as a content-md5 or x-amz-checksum-* \
                     form field instead"
                .into(),
        }
        .into());
    }
    Ok(())
}

/// Reads a form upload's body up to the content of its file, refusing a field section larger
/// than `max`. Returns the form and every byte read (the first bytes of the file included).
async fn read_form(
    body: &mut Incoming,
    mut reader: FormReader,
    max: usize,
    idle: std::time::Duration,
    stats: &BodyStats,
) -> Result<(PostForm, Bytes), Rejection> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    loop {
        // The fields come before any credentials are proven: a drip is cut off.
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| Rejection::BodyStalled(idle))?;
        let eof = match frame {
            None => true,
            Some(Err(_)) => return Err(Rejection::IncompleteBody),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    stats.bytes.store(buf.len() as u64, Ordering::Relaxed);
                }
                false
            }
        };
        if let Some(form) = reader.advance(&buf, eof)? {
            if form.content_start() > max {
                return Err(ClassifyError::FormTooLarge { max }.into());
            }
            return Ok((form, buf.freeze()));
        }
        if buf.len() > max {
            return Err(ClassifyError::FormTooLarge { max }.into());
        }
    }
}
