//! The file of a browser form upload, streamed through unchanged while claimgate watches
//! where it ends.
//!
//! A form upload is authorized from the fields before its file (see
//! [`crate::classify::PostForm`]); the file itself is never buffered. Its size still
//! matters: a signed POST policy's `content-length-range` bounds it, and S3 counts only the
//! file's content — the bytes up to the first `\r\n--<boundary>`. So [`FileTail`] passes every
//! byte on as it arrives, searching for that delimiter as it goes:
//!
//! - a file that grows past the allowed maximum ends the upstream body with an error at once,
//!   before the delimiter: the store never sees the file complete, and commits nothing;
//! - the piece that completes the delimiter is released only once the file's size is known to
//!   be in range (a file too small ends with an error instead);
//! - a body that ends without the delimiter ends with an error too (the form was cut off);
//! - after the delimiter, the rest of the body (S3 ignores fields after the file) streams on
//!   untouched.
//!
//! Like [`crate::body::Checked`], a failure is recorded in the request's
//! [`BodyStats`](crate::body::BodyStats) so the pipeline answers the caller with the reason
//! rather than with the upstream's broken-request error.

use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use memchr::memmem;

use crate::body::{BodyStats, BoxError};
use crate::classify::Boundary;

/// Why the file of a form upload was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file grew past the policy's `content-length-range` maximum.
    #[error("the file is larger than the policy's content-length-range allows ({max} bytes)")]
    TooLarge {
        /// The most bytes allowed.
        max: u64,
    },
    /// The file ended below the policy's `content-length-range` minimum.
    #[error("the file is smaller than the policy's content-length-range allows ({min} bytes)")]
    TooSmall {
        /// The fewest bytes allowed.
        min: u64,
    },
    /// The body ended without the delimiter that closes the file.
    #[error("the form ends inside its file part (no closing boundary)")]
    Unterminated,
}

/// Where the scan is.
enum Scan {
    /// Inside the file: `counted` bytes are known to be content; `pending` holds the last
    /// bytes seen (fewer than the delimiter's length), already passed on, which may be the
    /// start of the delimiter.
    File { counted: u64, pending: Vec<u8> },
    /// Past the file: everything else streams on untouched.
    Through,
    /// An error was returned; nothing more is.
    Failed,
}

/// The file part's content and the rest of the body, streamed from the caller's body (see
/// the module docs).
pub struct FileTail<B> {
    inner: B,
    /// Bytes read while looking for the end of the fields: the start of the file.
    first: Option<Bytes>,
    finder: memmem::Finder<'static>,
    /// The file sizes allowed, if a policy bounds them.
    range: Option<RangeInclusive<u64>>,
    scan: Scan,
    counter: Arc<BodyStats>,
}

impl<B> FileTail<B> {
    /// What the body has done so far.
    pub fn stats(&self) -> &Arc<BodyStats> {
        &self.counter
    }

    /// Streams `first` (bytes of the file already read) then the rest of `inner`, whose
    /// parts are separated by `boundary`, holding the file to `range`.
    pub fn new(
        inner: B,
        first: Bytes,
        boundary: &Boundary,
        range: Option<RangeInclusive<u64>>,
        counter: Arc<BodyStats>,
    ) -> Self {
        FileTail {
            inner,
            first: Some(first),
            finder: memmem::Finder::new(&boundary.delimiter()).into_owned(),
            range,
            scan: Scan::File {
                counted: 0,
                pending: Vec::new(),
            },
            counter,
        }
    }

    /// Looks at the next piece of the body (not yet passed on).
    fn scan(&mut self, data: &[u8]) -> Result<(), FileError> {
        let Scan::File { counted, pending } = &mut self.scan else {
            return Ok(());
        };
        let len = self.finder.needle().len();
        // A delimiter that starts in `pending` and ends in `data`.
        let mut joined = pending.clone();
        joined.extend_from_slice(&data[..data.len().min(len - 1)]);
        let found = match self.finder.find(&joined) {
            Some(i) => Some(*counted + i as u64),
            None => self
                .finder
                .find(data)
                .map(|j| *counted + (pending.len() + j) as u64),
        };
        if let Some(size) = found {
            return self.close(size);
        }
        // No delimiter yet: all but the last `len - 1` bytes are content for sure.
        let total = pending.len() + data.len();
        let keep = total.min(len - 1);
        *counted += (total - keep) as u64;
        let mut tail = Vec::with_capacity(keep);
        let from_pending = keep.saturating_sub(data.len());
        tail.extend_from_slice(&pending[pending.len() - from_pending..]);
        tail.extend_from_slice(&data[data.len() - (keep - from_pending)..]);
        *pending = tail;
        match &self.range {
            Some(r) if *counted > *r.end() => Err(FileError::TooLarge { max: *r.end() }),
            _ => Ok(()),
        }
    }

    /// The file is complete at `size` bytes.
    fn close(&mut self, size: u64) -> Result<(), FileError> {
        if let Some(r) = &self.range {
            if size > *r.end() {
                return Err(FileError::TooLarge { max: *r.end() });
            }
            if size < *r.start() {
                return Err(FileError::TooSmall { min: *r.start() });
            }
        }
        self.scan = Scan::Through;
        Ok(())
    }

    fn fail(&mut self, e: FileError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.scan = Scan::Failed;
        if let Ok(mut slot) = self.counter.form_file.lock() {
            *slot = Some(e);
        }
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl<B> Body for FileTail<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if matches!(this.scan, Scan::Failed) {
                return Poll::Ready(None);
            }
            let data = match this.first.take() {
                Some(first) if first.is_empty() => continue,
                Some(first) => first,
                None => match Pin::new(&mut this.inner).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        return match this.scan {
                            Scan::File { .. } => this.fail(FileError::Unterminated),
                            _ => Poll::Ready(None),
                        };
                    }
                    Poll::Ready(Some(Err(e))) => {
                        this.counter.aborted.store(true, Ordering::Relaxed);
                        this.scan = Scan::Failed;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            this.counter.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                            data
                        }
                        Err(frame) if matches!(this.scan, Scan::Through) => {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        // Trailers before the file ended: the body ended inside it.
                        Err(_) => return this.fail(FileError::Unterminated),
                    },
                },
            };
            return match this.scan(&data) {
                Ok(()) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(e) => this.fail(e),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.scan {
            Scan::Failed => true,
            Scan::Through => self.first.is_none() && self.inner.is_end_stream(),
            Scan::File { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const B: &str = "XyZ";

    fn boundary() -> Boundary {
        let parts = http::Request::post("/bkt")
            .header("content-type", format!("multipart/form-data; boundary={B}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let target = crate::classify::RequestTarget::read(&parts).unwrap();
        match crate::classify::classify_s3(&parts, &target, &crate::classify::S3Target::default()) {
            Err(crate::classify::ClassifyError::FormRequired(p)) => {
                let body = format!(
                    "--{B}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nk\r\n--{B}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
                );
                p.reader()
                    .advance(body.as_bytes(), true)
                    .unwrap()
                    .unwrap()
                    .boundary()
                    .clone()
            }
            other => panic!("{other:?}"),
        }
    }

    type Frames = Vec<Result<Frame<Bytes>, std::convert::Infallible>>;

    /// Streams `rest` in `step`-byte frames after `first`; what came out, and the error.
    async fn run(
        first: &[u8],
        rest: &[u8],
        step: usize,
        range: Option<RangeInclusive<u64>>,
    ) -> (Vec<u8>, Option<FileError>) {
        let frames: Frames = rest
            .chunks(step)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let stats = Arc::new(BodyStats::default());
        let mut tail = FileTail::new(
            inner,
            Bytes::copy_from_slice(first),
            &boundary(),
            range,
            stats.clone(),
        );
        let mut out = Vec::new();
        while let Some(frame) = tail.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(f.data_ref().unwrap()),
                Err(_) => break,
            }
        }
        let err = *stats.form_file.lock().unwrap();
        (out, err)
    }

    #[tokio::test]
    async fn passes_everything_through_and_measures_the_file() {
        let file = b"0123456789\r\n--X\r\n--Xy";
        let body = [&file[..], format!("\r\n--{B}--\r\nafter").as_bytes()].concat();
        for step in [1, 2, 3, 5, 7, 64] {
            for split in [0, 1, 4, body.len()] {
                let (first, rest) = body.split_at(split);
                let n = file.len() as u64;
                let (out, err) = run(first, rest, step, Some(n..=n)).await;
                assert_eq!(
                    (out.as_slice(), err),
                    (body.as_slice(), None),
                    "step {step} split {split}"
                );
                let (out, err) = run(first, rest, step, Some(0..=n - 1)).await;
                assert_eq!(
                    err,
                    Some(FileError::TooLarge { max: n - 1 }),
                    "step {step} split {split}"
                );
                let delimiter = format!("\r\n--{B}");
                assert!(
                    !String::from_utf8_lossy(&out).contains(&delimiter),
                    "released the delimiter"
                );
                let (_, err) = run(first, rest, step, Some(n + 1..=100)).await;
                assert_eq!(
                    err,
                    Some(FileError::TooSmall { min: n + 1 }),
                    "step {step} split {split}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_large_file_is_refused_before_it_ends() {
        let big = vec![b'a'; 100_000];
        let (out, err) = run(b"", &big, 1000, Some(0..=10_000)).await;
        assert_eq!(err, Some(FileError::TooLarge { max: 10_000 }));
        assert!(out.len() <= 10_000 + 1000, "stopped early: {}", out.len());
        let (_, err) = run(b"", &big, 1000, None).await;
        assert_eq!(err, Some(FileError::Unterminated));
    }
}
