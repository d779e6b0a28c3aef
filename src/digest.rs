//! Payload integrity: a body must hash to the digests its request declares.
//!
//! A caller that declares `x-amz-content-sha256: <hex>` or `Content-MD5` promises the body;
//! claimgate re-signs the request with its own credentials, and the upstream signature then
//! vouches for that digest. If the bytes were swapped in transit (or the caller lies), an
//! upstream that does not check the digest itself would store a body nobody signed. So the
//! body is hashed as it streams, and the forward stage withholds the last piece of it until
//! the digests are known to match: on a mismatch the upstream body ends with an error, short
//! of its length, and the upstream never commits the object.

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use md5::{Digest as _, Md5};

/// Which declared digest a body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The body's SHA-256 is not the `x-amz-content-sha256` the request declared
    /// (S3 code `XAmzContentSHA256Mismatch`).
    #[error("the body's SHA-256 does not match the x-amz-content-sha256 the request declared")]
    Sha256Mismatch,
    /// The body's MD5 is not the `Content-MD5` the request declared (S3 code `BadDigest`).
    #[error("the body's MD5 does not match the Content-MD5 the request declared")]
    Md5Mismatch,
    /// `Content-MD5` is not the base64 of 16 bytes (S3 code `InvalidDigest`).
    #[error("Content-MD5 must be the base64 encoding of a 16-byte MD5 digest")]
    InvalidMd5,
}

/// The digests a request declares for its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    sha256: Option<[u8; 32]>,
    md5: Option<[u8; 16]>,
}

impl Declared {
    /// Reads the declared digests. `x-amz-content-sha256` counts only as 64 hex digits (the
    /// `UNSIGNED-PAYLOAD` and `STREAMING-*` modes declare none); `Content-MD5` is ignored for
    /// aws-chunked bodies, where it covers the decoded object rather than the bytes that
    /// flow (their chunks carry their own signatures or trailing checksums). A header sent
    /// twice is refused upstream of here (SigV4 parsing), so the first one is the one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Declared, DigestError> {
        let sha = headers.get("x-amz-content-sha256").map(|v| v.as_bytes());
        let sha256 = match sha {
            Some(v) if v.len() == 64 => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(v, &mut out).ok().map(|()| out)
            }
            _ => None,
        };
        let streaming = sha.is_some_and(|v| v.starts_with(b"STREAMING-"));
        let md5 = match headers.get("content-md5") {
            Some(v) if !streaming => {
                let raw = STANDARD
                    .decode(v.as_bytes())
                    .map_err(|_| DigestError::InvalidMd5)?;
                Some(<[u8; 16]>::try_from(raw.as_slice()).map_err(|_| DigestError::InvalidMd5)?)
            }
            _ => None,
        };
        Ok(Declared { sha256, md5 })
    }

    /// Whether there is anything to check.
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.md5.is_none()
    }

    /// A hasher for a body that must match these digests.
    pub fn hasher(&self) -> Hasher {
        Hasher {
            sha256: self
                .sha256
                .map(|want| (digest::Context::new(&digest::SHA256), want)),
            md5: self.md5.map(|want| (Md5::new(), want)),
        }
    }

    /// Checks a body held whole.
    pub fn check(&self, body: &[u8]) -> Result<(), DigestError> {
        let mut h = self.hasher();
        h.update(body);
        h.finish()
    }
}

/// Hashes a body as it streams past.
pub struct Hasher {
    sha256: Option<(digest::Context, [u8; 32])>,
    md5: Option<(Md5, [u8; 16])>,
}

impl Hasher {
    /// Adds the next piece of the body.
    pub fn update(&mut self, data: &[u8]) {
        if let Some((ctx, _)) = &mut self.sha256 {
            ctx.update(data);
        }
        if let Some((ctx, _)) = &mut self.md5 {
            ctx.update(data);
        }
    }

    /// Compares what was hashed with what was declared. Uses constant-time comparison out of
    /// habit; the digests are not secret.
    pub fn finish(self) -> Result<(), DigestError> {
        if let Some((ctx, want)) = self.sha256 {
            let got = ctx.finish();
            if aws_lc_rs::constant_time::verify_slices_are_equal(got.as_ref(), &want).is_err() {
                return Err(DigestError::Sha256Mismatch);
            }
        }
        if let Some((ctx, want)) = self.md5 {
            let got = ctx.finalize();
            if aws_lc_rs::constant_time::verify_slices_are_equal(got.as_slice(), &want).is_err() {
                return Err(DigestError::Md5Mismatch);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    /// SHA-256 and MD5 of `hello`.
    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const HELLO_MD5_B64: &str = "XUFAKrxLKna5cZ2REBfFkg==";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn declared_digests_are_checked() {
        let d = Declared::from_headers(&headers(&[
            ("x-amz-content-sha256", HELLO_SHA256),
            ("content-md5", HELLO_MD5_B64),
        ]))
        .unwrap();
        assert!(!d.is_empty());
        assert_eq!(d.check(b"hello"), Ok(()));
        assert_eq!(d.check(b"hellO"), Err(DigestError::Sha256Mismatch));
        let mut streamed = d.hasher();
        streamed.update(b"hel");
        streamed.update(b"lo");
        assert_eq!(streamed.finish(), Ok(()));

        let md5_only = Declared::from_headers(&headers(&[("content-md5", HELLO_MD5_B64)])).unwrap();
        assert_eq!(md5_only.check(b"bye"), Err(DigestError::Md5Mismatch));
        let upper = Declared::from_headers(&headers(&[(
            "x-amz-content-sha256",
            &EMPTY_SHA256.to_ascii_uppercase(),
        )]))
        .unwrap();
        assert_eq!(upper.check(b""), Ok(()));
        assert_eq!(upper.check(b"x"), Err(DigestError::Sha256Mismatch));
    }

    #[test]
    fn modes_without_a_digest_check_nothing() {
        for mode in [
            "UNSIGNED-PAYLOAD",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "zz",
            &"g".repeat(64),
        ] {
            let d = Declared::from_headers(&headers(&[("x-amz-content-sha256", mode)])).unwrap();
            assert!(d.is_empty(), "{mode}");
        }
        // Content-MD5 of an aws-chunked body covers the decoded object, not the framing.
        let chunked = headers(&[
            ("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"),
            ("content-md5", HELLO_MD5_B64),
        ]);
        assert!(Declared::from_headers(&chunked).unwrap().is_empty());
    }

    #[test]
    fn malformed_content_md5_is_refused() {
        for bad in ["", "not base64!", "AAAA", "XUFAKrxLKna5cZ2REBfFkgAA"] {
            assert_eq!(
                Declared::from_headers(&headers(&[("content-md5", bad)])),
                Err(DigestError::InvalidMd5),
                "{bad:?}"
            );
        }
    }
}
