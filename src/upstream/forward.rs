//! Sending the signed request to the route's upstream.

use http::{Request, Response};
use hyper::body::Incoming;

use super::Route;
use crate::body::{Paced, UpstreamBody};
use crate::metrics::Metrics;

/// Why forwarding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The caller's body broke off while it streamed (the caller's doing, not the upstream's).
    #[error("the request body broke off")]
    CallerAborted,
    /// The upstream could not be reached.
    #[error("the upstream is unreachable")]
    Unreachable,
    /// The upstream was reached, then broke the exchange before answering (closed or reset
    /// mid-upload, or spoke no HTTP).
    #[error("the upstream broke off the exchange")]
    Broke,
    /// No response head within the deadline.
    #[error("the upstream did not answer in time")]
    Timeout,
}

impl ForwardError {
    /// A short fixed name for traces and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ForwardError::CallerAborted => "caller_aborted",
            ForwardError::Unreachable => "unreachable",
            ForwardError::Broke => "broke",
            ForwardError::Timeout => "timeout",
        }
    }
}

/// Sends `req` and waits for the response head, which is due `timeouts.response` after the
/// request's last byte went out (an upload may take as long as the caller keeps sending;
/// a caller that stalls is cut off by its own idle limit). Upstream failures are logged and
/// counted against the route here, where they are known.
pub async fn forward(
    route: &Route,
    req: Request<UpstreamBody>,
    metrics: &Metrics,
) -> Result<Response<Incoming>, ForwardError> {
    let name = &route.config.name;
    let req = req.map(|b| Paced::new(b, route.timeouts.client_body_idle));
    // hyper never polls a body that is already at its end: such a request is sent whole now.
    let sent = (req.body().stats())
        .filter(|_| !http_body::Body::is_end_stream(req.body()))
        .cloned();
    let deadline = route.timeouts.response;
    let answer = route.client().request(req);
    let answered = match sent {
        // Nothing streams from the caller: the clock starts now.
        None => tokio::time::timeout(deadline, answer).await.ok(),
        Some(stats) => {
            tokio::pin!(answer);
            tokio::select! {
                r = &mut answer => Some(r),
                () = async {
                    stats.sent().await;
                    tokio::time::sleep(deadline).await;
                } => None,
                () = stats.upstream_stopped_reading(route.timeouts.body_idle) => {
                    tracing::warn!(route = %name, "upstream stopped reading the upload");
                    None
                }
            }
        }
    };
    match answered {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(e)) if caller_aborted(&e) => Err(ForwardError::CallerAborted),
        Some(Err(e)) if e.is_connect() => {
            metrics.upstream_error(name, "connect");
            tracing::warn!(route = %name, error = %e, "upstream unreachable");
            Err(ForwardError::Unreachable)
        }
        Some(Err(e)) => {
            metrics.upstream_error(name, "broke");
            tracing::warn!(route = %name, error = %e, "upstream broke off the exchange");
            Err(ForwardError::Broke)
        }
        None => {
            metrics.upstream_error(name, "timeout");
            tracing::warn!(route = %name, "upstream did not answer within {deadline:?}");
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
