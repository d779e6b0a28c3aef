//! Sending the signed request to the route's upstream.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::Route;
use crate::body::UpstreamBody;
use crate::metrics::Metrics;

/// How long the upstream may take to send a response head to a request without a body.
const HEAD_TIMEOUT: Duration = Duration::from_secs(120);

/// When the upstream's answer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The request has no body: the answer must start within [`HEAD_TIMEOUT`].
    ForHead,
    /// The request streams a body: S3 answers after the whole upload, however long the
    /// caller takes, so there is no deadline for the head.
    ForUpload,
}

/// Why forwarding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The caller's body broke off while it streamed (the caller's doing, not the upstream's).
    #[error("the request body broke off")]
    CallerAborted,
    /// The upstream could not be reached, or broke the exchange.
    #[error("the upstream is unreachable")]
    Unreachable,
    /// No response head within the deadline.
    #[error("the upstream did not answer in time")]
    Timeout,
}

/// Sends `req` and waits for the response head. Upstream failures are logged and counted
/// against the route here, where they are known.
pub async fn forward(
    route: &Route,
    req: Request<UpstreamBody>,
    wait: Wait,
    metrics: &Metrics,
) -> Result<Response<Incoming>, ForwardError> {
    let name = &route.config.name;
    let limit = match wait {
        Wait::ForHead => HEAD_TIMEOUT,
        Wait::ForUpload => Duration::MAX,
    };
    match tokio::time::timeout(limit, route.client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) if caller_aborted(&e) => Err(ForwardError::CallerAborted),
        Ok(Err(e)) => {
            metrics.upstream_error(name, if e.is_connect() { "connect" } else { "other" });
            tracing::warn!(route = %name, error = %e, "upstream request failed");
            Err(ForwardError::Unreachable)
        }
        Err(_) => {
            metrics.upstream_error(name, "timeout");
            Err(ForwardError::Timeout)
        }
    }
}

/// Whether a client error came from our side of the request body (the caller's upload
/// broke) rather than from the upstream.
fn caller_aborted(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = cur {
        if let Some(h) = inner.downcast_ref::<hyper::Error>()
            && (h.is_user() || h.is_body_write_aborted())
        {
            return true;
        }
        cur = inner.source();
    }
    false
}
