//! Body types of the proxy: both directions stream, and both count their bytes for audit.
//!
//! The response body also carries the request's pending audit record and emits it when the
//! body ends or is dropped — whichever comes first — so exactly one record is written per
//! request, including when the client disconnects mid-download.

pub mod form_file;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

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

/// Called once when a response body is finished: `(bytes_out, complete)`.
pub type OnFinish = Box<dyn FnOnce(u64, bool) + Send>;

/// The body sent back to the caller.
pub struct ProxyBody {
    inner: Inner,
    sent: u64,
    on_finish: Option<OnFinish>,
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// Streams the upstream's response body.
    pub fn upstream(body: Incoming, on_finish: OnFinish) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body),
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

    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_finish.take() {
            f(self.sent, complete);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Upstream(b) => Pin::new(b).poll_frame(cx),
            Inner::Full(d) => Poll::Ready(d.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let complete = self.is_end_stream();
        self.finish(complete);
    }
}
