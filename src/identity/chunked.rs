//! Signed aws-chunked uploads (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`): every chunk
//! carries a signature chained from the request's own (seed) signature. claimgate verifies
//! each chunk as it streams through and forwards the bare bytes; the upstream, signed with
//! the route's credentials, could never check the caller's chain itself.
//!
//! Memory is bounded by one chunk (SDKs send 8–64 KiB; anything above [`MAX_CHUNK`] is
//! refused). A chunk whose signature does not verify ends the body with an error, so the
//! upstream never completes the object.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_lc_rs::{constant_time, digest, hmac};
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The payload-hash values of signed streaming uploads.
pub const SIGNED: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// … with trailing checksum headers.
pub const SIGNED_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
/// Largest chunk accepted.
pub const MAX_CHUNK: usize = 16 << 20;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const MAX_LINE: usize = 4096;

/// Whether a signed chunk stream ends with signed trailing headers
/// (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trailer {
    /// The final chunk ends the body.
    Absent,
    /// Trailing headers follow the final chunk, with a signature of their own.
    Signed,
}

/// What a signed chunk stream is verified against: taken from the verified request.
#[derive(Clone)]
pub struct ChunkChain {
    key: hmac::Key,
    amz_date: String,
    scope: String,
    previous: String,
    trailer: Trailer,
}

impl std::fmt::Debug for ChunkChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkChain")
            .field("scope", &self.scope)
            .field("trailer", &self.trailer)
            .finish_non_exhaustive()
    }
}

impl ChunkChain {
    /// `seed` is the request's verified signature; `scope` is `date/region/service/aws4_request`.
    pub fn new(key: hmac::Key, amz_date: &str, scope: &str, seed: &str, trailer: Trailer) -> Self {
        ChunkChain {
            key,
            amz_date: amz_date.to_string(),
            scope: scope.to_string(),
            previous: seed.to_ascii_lowercase(),
            trailer,
        }
    }

    /// Checks one chunk's signature and advances the chain.
    pub fn verify_chunk(&mut self, data: &[u8], signature: &str) -> Result<(), ChunkError> {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex::encode(digest::digest(&digest::SHA256, data))
        );
        self.check(&sts, signature)
    }

    /// Checks the trailer signature over the canonical trailing headers (`name:value\n`…).
    pub fn verify_trailer(&mut self, canonical_trailers: &[u8], signature: &str) -> Result<(), ChunkError> {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            self.previous,
            hex::encode(digest::digest(&digest::SHA256, canonical_trailers))
        );
        self.check(&sts, signature)
    }

    fn check(&mut self, string_to_sign: &str, signature: &str) -> Result<(), ChunkError> {
        let computed = hex::encode(hmac::sign(&self.key, string_to_sign.as_bytes()));
        if constant_time::verify_slices_are_equal(computed.as_bytes(), signature.as_bytes()).is_err() {
            return Err(ChunkError::BadSignature);
        }
        self.previous = computed;
        Ok(())
    }
}

/// Why a signed chunk stream was cut off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk's signature does not continue the chain.
    #[error("a chunk signature does not match: the upload was modified or signed with other credentials")]
    BadSignature,
    /// The framing is not aws-chunked.
    #[error("malformed aws-chunked body: {0}")]
    Malformed(&'static str),
    /// The body ended before the final chunk.
    #[error("the aws-chunked body ended early")]
    Truncated,
}

enum State {
    Header,
    Data { len: usize, signature: String },
    Trailers,
    Done,
}

/// Verifies and de-frames a signed aws-chunked body, yielding the object's bytes.
pub struct VerifiedChunks<B> {
    inner: B,
    buf: BytesMut,
    chain: ChunkChain,
    state: State,
    inner_done: bool,
}

impl<B> VerifiedChunks<B> {
    /// Wraps the caller's body.
    pub fn new(inner: B, chain: ChunkChain) -> Self {
        VerifiedChunks {
            inner,
            buf: BytesMut::new(),
            chain,
            state: State::Header,
            inner_done: false,
        }
    }

    /// Advances the parser over buffered bytes: `Some(frame)` when a verified chunk (or the
    /// end) is ready, `None` when more input is needed.
    fn step(&mut self) -> Result<Option<Option<Bytes>>, ChunkError> {
        loop {
            match &self.state {
                State::Header => match self.header()? {
                    Some(next) => self.state = next,
                    None => return Ok(None),
                },
                State::Data { len, signature } => {
                    let (len, signature) = (*len, signature.clone());
                    match self.data(len, &signature)? {
                        Progress::NeedMore => return Ok(None),
                        Progress::Chunk(data) => {
                            self.state = State::Header;
                            return Ok(Some(Some(data)));
                        }
                        Progress::Final => match self.chain.trailer {
                            Trailer::Signed => self.state = State::Trailers,
                            Trailer::Absent => {
                                self.state = State::Done;
                                return Ok(Some(None));
                            }
                        },
                    }
                }
                State::Trailers => {
                    if !self.trailers()? {
                        return Ok(None);
                    }
                    self.state = State::Done;
                    return Ok(Some(None));
                }
                State::Done => return Ok(Some(None)),
            }
        }
    }

    /// `<hex size>;chunk-signature=<sig>\r\n`: the next state, once the line is buffered.
    fn header(&mut self) -> Result<Option<State>, ChunkError> {
        let Some(end) = find_crlf(&self.buf) else {
            if self.buf.len() > MAX_LINE {
                return Err(ChunkError::Malformed("chunk header too long"));
            }
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&self.buf[..end]).map_err(|_| ChunkError::Malformed("chunk header"))?;
        let (size, sig) = line
            .split_once(";chunk-signature=")
            .ok_or(ChunkError::Malformed("chunk header without chunk-signature"))?;
        let len = usize::from_str_radix(size, 16).map_err(|_| ChunkError::Malformed("chunk size"))?;
        if len > MAX_CHUNK {
            return Err(ChunkError::Malformed("chunk larger than 16 MiB"));
        }
        if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ChunkError::Malformed("chunk signature"));
        }
        let signature = sig.to_ascii_lowercase();
        self.buf.advance(end + 2);
        Ok(Some(State::Data { len, signature }))
    }

    /// A chunk's `len` bytes and CRLF, verified against `signature` once buffered.
    fn data(&mut self, len: usize, signature: &str) -> Result<Progress, ChunkError> {
        let final_chunk = len == 0;
        // The final (empty) chunk has no trailing CRLF when trailers follow.
        let crlf = !(final_chunk && self.chain.trailer == Trailer::Signed);
        if self.buf.len() < len + if crlf { 2 } else { 0 } {
            return Ok(Progress::NeedMore);
        }
        let data = self.buf.split_to(len).freeze();
        if crlf {
            if &self.buf[..2] != b"\r\n" {
                return Err(ChunkError::Malformed("chunk not followed by CRLF"));
            }
            self.buf.advance(2);
        }
        self.chain.verify_chunk(&data, signature)?;
        Ok(if final_chunk {
            Progress::Final
        } else {
            Progress::Chunk(data)
        })
    }

    /// `name:value\r\n … x-amz-trailer-signature:<sig>\r\n\r\n`, verified once buffered.
    /// Returns whether it was.
    fn trailers(&mut self) -> Result<bool, ChunkError> {
        let Some(pos) = find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > MAX_LINE {
                return Err(ChunkError::Malformed("trailers too long"));
            }
            return Ok(false);
        };
        let block = self.buf.split_to(pos + 4);
        let text = std::str::from_utf8(&block).map_err(|_| ChunkError::Malformed("trailers"))?;
        let mut canonical = Vec::new();
        let mut signature = None;
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or(ChunkError::Malformed("trailer line"))?;
            let name = name.trim().to_ascii_lowercase();
            if name == "x-amz-trailer-signature" {
                signature = Some(value.trim().to_ascii_lowercase());
            } else {
                canonical.extend_from_slice(format!("{name}:{}\n", value.trim()).as_bytes());
            }
        }
        let signature = signature.ok_or(ChunkError::Malformed("no x-amz-trailer-signature"))?;
        self.chain.verify_trailer(&canonical, &signature)?;
        Ok(true)
    }
}

/// What reading a chunk's data came to.
enum Progress {
    /// Not all of it is buffered yet.
    NeedMore,
    /// A verified chunk of the object.
    Chunk(Bytes),
    /// The verified final (empty) chunk.
    Final,
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    find(b, b"\r\n")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<B> Body for VerifiedChunks<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Ok(Some(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(None)) => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.state = State::Done;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            if this.inner_done {
                this.state = State::Done;
                return Poll::Ready(Some(Err(Box::new(ChunkError::Truncated))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.inner_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// AWS's published example (tests/data/s3-streaming/README.md).
    fn example_chain() -> ChunkChain {
        let key = crate::sigv4::signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524",
            "us-east-1",
            "s3",
        );
        ChunkChain::new(
            key,
            "20130524T000000Z",
            "20130524/us-east-1/s3/aws4_request",
            "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
            Trailer::Absent,
        )
    }

    fn example_body() -> Vec<u8> {
        let mut body = Vec::new();
        let a = vec![b'a'; 65536];
        body.extend_from_slice(
            b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n",
        );
        body.extend_from_slice(&a);
        body.extend_from_slice(
            b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n",
        );
        body.extend_from_slice(&a[..1024]);
        body.extend_from_slice(
            b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n",
        );
        body
    }

    async fn run(body: Vec<u8>, split: usize) -> Result<Vec<u8>, String> {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
            .chunks(split)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        VerifiedChunks::new(inner, example_chain())
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn the_published_example_verifies_however_it_is_split() {
        for split in [1 << 20, 65_000, 4096, 7] {
            let out = run(example_body(), split).await.unwrap();
            assert_eq!(out.len(), 66560);
            assert!(out.iter().all(|b| *b == b'a'));
        }
    }

    #[tokio::test]
    async fn any_change_is_refused() {
        let body = example_body();
        for at in [100, 30_000, 65_600, 66_700, body.len() - 10] {
            let mut bad = body.clone();
            bad[at] ^= 1;
            assert!(run(bad, 8192).await.is_err(), "byte {at}");
        }
        // dropping the final chunk
        let cut = body.len() - 90;
        assert!(run(body[..cut].to_vec(), 8192).await.is_err());
    }

    #[tokio::test]
    async fn trailing_checksums_are_verified_too() {
        // Signed here by the spec's rules, then verified by a fresh chain.
        let mut body = Vec::new();
        let mut chain = example_chain();
        chain.trailer = Trailer::Signed;
        let sign = |chain: &ChunkChain, sts: String| hex::encode(hmac::sign(&chain.key, sts.as_bytes()));
        let data_sts = |chain: &ChunkChain, data: &[u8]| {
            format!(
                "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{EMPTY_SHA256}\n{}",
                chain.amz_date,
                chain.scope,
                chain.previous,
                hex::encode(digest::digest(&digest::SHA256, data))
            )
        };
        let sig1 = sign(&chain, data_sts(&chain, b"hello"));
        chain.previous = sig1.clone();
        let sig0 = sign(&chain, data_sts(&chain, b""));
        chain.previous = sig0.clone();
        let trailers = b"x-amz-checksum-crc32:NhCmhg==\n";
        let tsig = sign(
            &chain,
            format!(
                "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
                chain.amz_date,
                chain.scope,
                chain.previous,
                hex::encode(digest::digest(&digest::SHA256, trailers))
            ),
        );
        body.extend_from_slice(
            format!("5;chunk-signature={sig1}\r\nhello\r\n0;chunk-signature={sig0}\r\n").as_bytes(),
        );
        body.extend_from_slice(
            format!("x-amz-checksum-crc32:NhCmhg==\r\nx-amz-trailer-signature:{tsig}\r\n\r\n").as_bytes(),
        );
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = body
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let mut fresh = example_chain();
        fresh.trailer = Trailer::Signed;
        let out = VerifiedChunks::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            fresh,
        )
        .collect()
        .await
        .unwrap()
        .to_bytes();
        assert_eq!(&out[..], b"hello");
        // a changed checksum breaks the trailer signature
        let tampered: Vec<u8> = String::from_utf8(body)
            .unwrap()
            .replace("NhCmhg==", "AAAAAA==")
            .into_bytes();
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = tampered
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let mut fresh = example_chain();
        fresh.trailer = Trailer::Signed;
        let r = VerifiedChunks::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            fresh,
        )
        .collect()
        .await;
        assert!(r.is_err());
    }
}
