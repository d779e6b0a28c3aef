//! The STS endpoint's turn through the pipeline: read the call (size-capped), let
//! [`identity::sts`](crate::identity::sts) decide, answer in STS's XML, audit it.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;

use super::Proxy;
use super::answer::Reply;
use super::context::Ctx;
use crate::identity::sts::{self, StsCause, StsConfig, StsError};

/// Serves AssumeRoleWithWebIdentity on the main listener. Every call is audited; errors
/// are answered in STS's own XML.
pub(super) async fn assume_role(
    proxy: &Proxy,
    config: &StsConfig,
    parts: Parts,
    body: Incoming,
    ctx: &mut Ctx,
) -> Response<Reply> {
    ctx.sts_call(None);
    let (status, xml) = match read_params(proxy, &parts, body, ctx).await {
        Err((e, reason)) => {
            ctx.ended(reason, e.to_string());
            (e.wire().0, e.to_xml(ctx.request_id()))
        }
        Ok(params) => {
            let now = proxy.clock.unix();
            let call = sts::assume_role(
                &proxy.auth,
                &proxy.policies,
                config,
                &params.0,
                now,
                ctx.request_id(),
            )
            .await;
            ctx.sts_call(call.role_arn.as_deref());
            if let Some(caller) = &call.caller {
                ctx.authenticated(caller);
            }
            match call.outcome {
                Ok(grant) => {
                    ctx.issued(&grant.role, &grant.access_key_id);
                    (StatusCode::OK, grant.answer.expose().to_string())
                }
                Err(refusal) => {
                    let mut detail = refusal.error.to_string();
                    match &refusal.cause {
                        StsCause::Auth(e) => {
                            ctx.auth_failed(e);
                            detail = e.audit_detail().unwrap_or(detail);
                        }
                        StsCause::RoleNotHeld => ctx.denied(),
                        StsCause::Request | StsCause::Internal => {}
                    }
                    ctx.ended(refusal.error.reason(), detail);
                    (refusal.error.wire().0, refusal.error.to_xml(ctx.request_id()))
                }
            }
        }
    };
    let mut resp = Response::new(Reply::Local(Bytes::from(xml)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    // the answer carries a secret
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An STS call's parameters, the web identity token among them: wiped when dropped.
struct Params(Vec<(String, String)>);

impl Drop for Params {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (_, value) in &mut self.0 {
            value.zeroize();
        }
    }
}

/// The call's parameters: the form body's, then the query's. A body that could not be read
/// is answered as STS would (`ValidationError`) but audited under the same reason as an S3
/// request's body (`client_body_idle`, `incomplete_body`), so one query finds them all.
async fn read_params(
    proxy: &Proxy,
    parts: &Parts,
    body: Incoming,
    ctx: &Ctx,
) -> Result<Params, (StsError, &'static str)> {
    use super::SmallBody;
    let max = proxy.config.server.max_inspected_body;
    let idle = proxy.config.limits.client_body_idle_timeout;
    let form = super::read_small(body, max, idle).await.map_err(|e| match e {
        SmallBody::TooLarge => {
            let e = StsError::Validation(format!("the request body is larger than {max} bytes"));
            let reason = e.reason();
            (e, reason)
        }
        SmallBody::Stalled => {
            proxy.metrics.limit_refusal("client_body_idle");
            let e = StsError::Validation(format!(
                "the request body stopped arriving for longer than {idle:?} (limits.client_body_idle_timeout)"
            ));
            (e, "client_body_idle")
        }
        SmallBody::Broken => (
            StsError::Validation("the request body broke off".into()),
            "incomplete_body",
        ),
    })?;
    ctx.bytes_in
        .bytes
        .store(form.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let query = parts.uri.query().unwrap_or_default().as_bytes();
    Ok(Params(
        url::form_urlencoded::parse(&form)
            .chain(url::form_urlencoded::parse(query))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}
