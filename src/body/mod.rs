//! Body types of the proxy: both directions stream, and both count their bytes for audit.
//!
//! The response body also carries the request's pending audit record and emits it when the
//! body ends or is dropped — whichever comes first — so exactly one record is written per
//! request, including when the client disconnects mid-download.

pub mod form_file;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::body::form_file::{FileError, FileTail};
use crate::digest::{Declared, DigestError, Hasher};

/// What happened to the caller's request body on its way upstream.
#[derive(Debug, Default)]
pub struct BodyStats {
    /// Bytes read from the caller (for signed chunk uploads: the object's bytes).
    pub bytes: AtomicU64,
    /// A signed aws-chunked upload broke its signature chain mid-stream.
    pub bad_chunk_signature: std::sync::atomic::AtomicBool,
    /// The caller's body broke off (connection closed mid-upload): the upstream's failure
    /// that follows is the caller's doing, not the upstream's.
    pub aborted: std::sync::atomic::AtomicBool,
    /// The body did not match a digest its request declared; the upstream body was ended
    /// with an error short of its length.
    pub digest_mismatch: std::sync::Mutex<Option<DigestError>>,
    /// A form upload's file broke its policy's size range or the form's framing; the
    /// upstream body was ended with an error before the file completed.
    pub form_file: std::sync::Mutex<Option<FileError>>,
    /// The caller stopped sending mid-body for longer than the idle limit; the upstream
    /// body was ended with an error.
    pub stalled: std::sync::atomic::AtomicBool,
    /// Signalled once the body's last byte went upstream: from then on the upstream's
    /// answer is due within its deadline.
    sent: tokio::sync::Notify,
    /// The same, as a state.
    all_sent: std::sync::atomic::AtomicBool,
    /// The upstream side is waiting for the caller's next bytes (so a pause is the
    /// caller's, not the upstream's).
    awaiting_caller: std::sync::atomic::AtomicBool,
}

impl BodyStats {
    /// The digest the body failed, if it failed one.
    pub fn digest_failure(&self) -> Option<DigestError> {
        self.digest_mismatch.lock().ok().and_then(|g| *g)
    }

    /// Why a form upload's file was cut short, if it was.
    pub fn form_failure(&self) -> Option<FileError> {
        self.form_file.lock().ok().and_then(|g| *g)
    }

    /// Waits until the body's last byte went upstream.
    pub async fn sent(&self) {
        self.sent.notified().await;
    }

    /// Returns when the upstream stops taking the body: no byte moved for `idle` while the
    /// body was neither finished nor waiting on the caller. (Hyper stops polling a body the
    /// upstream does not read, so the body's own timers cannot see this.)
    pub async fn upstream_stopped_reading(&self, idle: Duration) {
        let mut seen = self.bytes.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = self.bytes.load(Ordering::Relaxed);
            let stuck = now == seen
                && !self.all_sent.load(Ordering::Acquire)
                && !self.awaiting_caller.load(Ordering::Acquire);
            if stuck {
                return;
            }
            seen = now;
        }
    }
}

/// Keeps time on a body: how long it may go without a frame.
struct IdleTimer {
    limit: Duration,
    last: Instant,
    /// Armed lazily at the first wait, and moved forward rather than rebuilt, so a long
    /// transfer costs one timer, not one per frame.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            last: Instant::now(),
            sleep: None,
        }
    }

    fn progressed(&mut self) {
        self.last = Instant::now();
    }

    /// On a wait: whether the body has now been idle for the whole limit. The timer is
    /// armed for the idle deadline as it stood when armed and, when it fires early because
    /// data came meanwhile, moved to the current one: one timer operation per idle period,
    /// not one per frame.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (last, limit) = (self.last, self.limit);
        let due = move || tokio::time::Instant::from_std(last + limit);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due())));
        while sleep.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= due() {
                return true;
            }
            sleep.as_mut().reset(due());
        }
        false
    }
}

/// A body that went quiet for longer than its idle limit.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?}")]
pub struct Stalled(Duration);

/// The body of a request on its way upstream, kept to time: a caller that stalls mid-upload
/// longer than `client_body_idle_timeout` has the upload ended with an error (the upstream
/// discards it), and the moment the last byte goes out is signalled, so the upstream's
/// answer can be given its deadline.
pub struct Paced {
    inner: UpstreamBody,
    idle: IdleTimer,
}

impl Paced {
    /// Paces `inner` with the caller's idle limit.
    pub fn new(inner: UpstreamBody, idle: Duration) -> Paced {
        Paced {
            inner,
            idle: IdleTimer::new(idle),
        }
    }

    /// What the body has done, for bodies that stream from the caller.
    pub fn stats(&self) -> Option<&Arc<BodyStats>> {
        match &self.inner {
            UpstreamBody::Stream { counter, .. } | UpstreamBody::Chunked { counter, .. } => Some(counter),
            UpstreamBody::Form { file, .. } => Some(file.stats()),
            UpstreamBody::Full(_) => None,
        }
    }

    fn signal_sent(&self) {
        if let Some(stats) = self.stats() {
            stats.all_sent.store(true, Ordering::Release);
            stats.sent.notify_one();
        }
    }

    fn awaiting_caller(&self, waiting: bool) {
        if let Some(stats) = self.stats() {
            stats.awaiting_caller.store(waiting, Ordering::Release);
        }
    }
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.awaiting_caller(polled.is_pending());
        match polled {
            Poll::Pending => {
                if this.idle.expired(cx) {
                    if let Some(stats) = this.stats() {
                        stats.stalled.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Err(Box::new(Stalled(this.idle.limit)))));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if this.inner.is_end_stream() {
                    this.signal_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.signal_sent();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body checked against its declared digests as it streams: each data frame is held back
/// until the next one arrives, so when the body ends the last frame is released only if the
/// digests match. On a mismatch the upstream sees an error before its `Content-Length` (or
/// its final chunk) and discards the upload.
pub struct Checked {
    hasher: Option<Hasher>,
    held: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl Checked {
    /// Checks the body against `declared`.
    pub fn new(declared: &Declared) -> Box<Checked> {
        Box::new(Checked {
            hasher: Some(declared.hasher()),
            held: None,
            trailers: None,
        })
    }
}

/// What the body type of a request forwarded upstream can be.
pub enum UpstreamBody {
    /// The caller's body, streamed through and counted.
    Stream {
        /// The caller's body.
        inner: Incoming,
        /// Bytes read so far.
        counter: Arc<BodyStats>,
        /// The declared digests it must match, if any.
        check: Option<Box<Checked>>,
    },
    /// A signed aws-chunked upload, verified chunk by chunk and forwarded de-framed.
    Chunked {
        /// The verifying de-framer over the caller's body.
        inner: Box<crate::identity::chunked::VerifiedChunks<Incoming>>,
        /// Bytes passed on so far.
        counter: Arc<BodyStats>,
    },
    /// A body already read whole (small, size-capped bodies we had to inspect).
    Full(Option<Bytes>),
    /// A browser form upload: the fields claimgate rebuilt and signed, then the caller's
    /// file and the rest of its body, streamed.
    Form {
        /// The rebuilt field section, up to the file's content; sent first.
        prefix: Option<Bytes>,
        /// The file, from the caller's body.
        file: Box<FileTail<Incoming>>,
    },
}

/// Errors of bodies we send upstream (the caller's I/O, or a broken chunk signature).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Stream {
                inner,
                counter,
                check: Some(check),
            } => poll_checked(Pin::new(inner), counter, check, cx),
            UpstreamBody::Stream { inner, counter, .. } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            counter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => counter.aborted.store(true, Ordering::Relaxed),
                    _ => {}
                }
                polled.map(|o| o.map(|r| r.map_err(Into::into)))
            }
            UpstreamBody::Chunked { inner, counter } => {
                let polled = Pin::new(inner.as_mut()).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            counter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let broken_chain = e.downcast_ref::<crate::identity::chunked::ChunkError>().is_some();
                        let flag = if broken_chain {
                            &counter.bad_chunk_signature
                        } else {
                            &counter.aborted
                        };
                        flag.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
                polled
            }
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Form { prefix, file } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => Pin::new(file.as_mut()).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream {
                check: Some(check), ..
            } => check.hasher.is_none() && check.held.is_none() && check.trailers.is_none(),
            UpstreamBody::Stream { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Chunked { inner, .. } => inner.is_end_stream(),
            UpstreamBody::Full(d) => d.is_none(),
            UpstreamBody::Form { prefix, file } => prefix.is_none() && file.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream { inner, .. } => inner.size_hint(),
            UpstreamBody::Chunked { inner, .. } => inner.size_hint(),
            UpstreamBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            UpstreamBody::Full(None) => SizeHint::with_exact(0),
            // The pipeline sets Content-Length when the caller declared one.
            UpstreamBody::Form { .. } => SizeHint::default(),
        }
    }
}

/// One step of a digest-checked body (see [`Checked`]).
fn poll_checked(
    mut inner: Pin<&mut Incoming>,
    counter: &BodyStats,
    check: &mut Checked,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    loop {
        // Verified: release what was held back, then the trailers, then the end.
        let Some(hasher) = check.hasher.as_mut() else {
            if let Some(data) = check.held.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            return Poll::Ready(check.trailers.take().map(|t| Ok(Frame::trailers(t))));
        };
        let frame = match inner.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                counter.aborted.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                let verdict = check.hasher.take().map(Hasher::finish).unwrap_or(Ok(()));
                if let Err(e) = verdict {
                    check.held = None;
                    if let Ok(mut slot) = counter.digest_mismatch.lock() {
                        *slot = Some(e);
                    }
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                continue;
            }
        };
        match frame.into_data() {
            // An empty frame (HTTP/2 ends streams with one) must not take the place of the
            // held-back bytes, or the whole body would be out before the verdict.
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                counter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                hasher.update(&data);
                if let Some(previous) = check.held.replace(data) {
                    return Poll::Ready(Some(Ok(Frame::data(previous))));
                }
            }
            // Trailers end the data: hold them until the verdict.
            Err(frame) => check.trailers = frame.into_trailers().ok(),
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every byte reached the caller.
    Complete,
    /// The caller went away (or the server stopped) before the end.
    ClientGone,
    /// The upstream broke the transfer (reset, closed early, protocol error).
    UpstreamBroke,
    /// The upstream sent nothing for longer than its idle limit.
    UpstreamStalled,
}

/// Called once when a response body is finished: `(bytes_out, how it ended)`.
pub type OnFinish = Box<dyn FnOnce(u64, Ending) + Send>;

/// The body sent back to the caller. A failure of the upstream's body is passed on as an
/// error, so the caller's connection is cut short: a truncated object is never presented
/// as a complete one.
pub struct ProxyBody {
    inner: Inner,
    sent: u64,
    on_finish: Option<OnFinish>,
}

enum Inner {
    Upstream(Incoming, IdleTimer),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// Streams the upstream's response body, which may go quiet for at most `idle`.
    pub fn upstream(body: Incoming, idle: Duration, on_finish: OnFinish) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body, IdleTimer::new(idle)),
            sent: 0,
            on_finish: Some(on_finish),
        }
    }

    /// A body we produced (errors, admin answers).
    pub fn full(bytes: Bytes, on_finish: Option<OnFinish>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes)),
            sent: 0,
            on_finish,
        }
    }

    fn finish(&mut self, ending: Ending) {
        if let Some(f) = self.on_finish.take() {
            f(self.sent, ending);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled: Poll<Option<Result<Frame<Bytes>, BoxError>>> = match &mut this.inner {
            Inner::Upstream(b, idle) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending if idle.expired(cx) => {
                    let limit = idle.limit;
                    this.finish(Ending::UpstreamStalled);
                    return Poll::Ready(Some(Err(Box::new(Stalled(limit)))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    idle.progressed();
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map(|o| o.map(|r| r.map_err(Into::into))),
            },
            Inner::Full(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(Ending::Complete);
                }
            }
            Poll::Ready(None) => this.finish(Ending::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(Ending::UpstreamBroke),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b, _) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b, _) => b.size_hint(),
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let ending = if self.is_end_stream() {
            Ending::Complete
        } else {
            Ending::ClientGone
        };
        self.finish(ending);
    }
}
