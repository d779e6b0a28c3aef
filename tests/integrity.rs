//! Payload integrity and ambiguous requests: a body must hash to the digest its request
//! declares (checked by claimgate while streaming, not left to the upstream), and a request
//! that can be read two ways is refused before anything reaches the upstream.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use base64::Engine as _;
use bytes::Bytes;
use support::*;

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// A session-signed PUT whose body was swapped in transit: the upstream here checks nothing,
/// so only claimgate can stop it — and the upstream never receives the whole body.
#[tokio::test]
async fn a_swapped_session_body_never_reaches_the_upstream_whole() {
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).extra(STS).start().await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    for size in [8, 3 * 1024 * 1024] {
        let original = vec![b'a'; size];
        let mut tampered = original.clone();
        tampered[size - 1] = b'b';
        let mut req = session_request(&p, &creds, "PUT", "/datasets/swap.bin", &[], &original);
        *req.body_mut() = full(Bytes::from(tampered));
        let r = p.client.send(req).await;
        assert_eq!(
            (r.status, r.s3_code().as_str()),
            (400, "XAmzContentSHA256Mismatch"),
            "{size} bytes: {}",
            r.text()
        );
    }
    // Whatever reached the upstream broke off before its end: nothing whole to commit.
    assert!(
        upstream.seen().iter().all(|s| s.body.is_none()),
        "{:?}",
        upstream.seen().len()
    );
    let records = p.audit(3).await;
    let puts: Vec<_> = records.iter().filter(|r| r["method"] == "PUT").collect();
    assert_eq!(puts.len(), 2);
    for r in puts {
        assert_eq!(r["reason"], "digest_mismatch", "{r}");
        assert_eq!(r["status"], 400);
    }
    // An honest body of the same shape goes through whole.
    let body = vec![b'a'; 1024];
    let r = p
        .client
        .send(session_request(&p, &creds, "PUT", "/datasets/ok.bin", &[], &body))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream.seen().last().unwrap().body.as_deref(), Some(&body[..]));
}

/// Against the real SigV4-verifying store: a swapped body leaves no object.
#[tokio::test]
async fn a_swapped_session_body_leaves_no_object() {
    let s3 = TestS3::start(&["datasets"]).await;
    let idp = TestIdp::start().await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    let mut req = session_request(&p, &creds, "PUT", "/datasets/swap.bin", &[], b"original");
    *req.body_mut() = full(Bytes::from_static(b"tampered"));
    let r = p.client.send(req).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "XAmzContentSHA256Mismatch")
    );
    assert!(!s3.path("datasets", "swap.bin").exists());
}

/// Bearer callers may declare digests too; a declared digest is a promise claimgate's own
/// upstream signature would vouch for, so it is held to it.
#[tokio::test]
async fn declared_digests_are_checked_on_the_bearer_path() {
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let put = |headers: Vec<(&'static str, String)>, body: &'static [u8]| {
        let mut b =
            http::Request::put(p.url("/datasets/x.bin")).header("authorization", format!("Bearer {token}"));
        for (n, v) in headers {
            b = b.header(n, v);
        }
        b.body(full(Bytes::from_static(body))).unwrap()
    };
    let md5 = |data: &[u8]| {
        use md5::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
    };
    let cases: Vec<(&str, http::Request<Body>, u16, &str)> = vec![
        (
            "right sha256",
            put(vec![("x-amz-content-sha256", sha256_hex(b"data"))], b"data"),
            200,
            "",
        ),
        (
            "wrong sha256",
            put(vec![("x-amz-content-sha256", sha256_hex(b"other"))], b"data"),
            400,
            "XAmzContentSHA256Mismatch",
        ),
        (
            "right md5",
            put(vec![("content-md5", md5(b"data"))], b"data"),
            200,
            "",
        ),
        (
            "wrong md5",
            put(vec![("content-md5", md5(b"other"))], b"data"),
            400,
            "BadDigest",
        ),
        (
            "malformed md5",
            put(vec![("content-md5", "abc".into())], b"data"),
            400,
            "InvalidDigest",
        ),
        (
            "empty body, non-empty sha256",
            put(vec![("x-amz-content-sha256", sha256_hex(b"data"))], b""),
            400,
            "XAmzContentSHA256Mismatch",
        ),
    ];
    for (what, req, status, code) in cases {
        let before = upstream.seen().len();
        let r = p.client.send(req).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status == 200 {
            assert_eq!(
                upstream.seen()[before].body.as_deref(),
                Some(&b"data"[..]),
                "{what}"
            );
        } else {
            assert_eq!(r.s3_code(), code, "{what}");
            let whole = upstream.seen()[before..].iter().any(|s| s.body.is_some());
            assert!(!whole, "{what}: the upstream got a whole body");
        }
    }
}

/// Two Authorization headers: whichever a hop honours, claimgate does not guess. Refused,
/// audited, never forwarded — in either order.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).start().await;
    let good = idp.token("alice", &["ml-engineers"]);
    let none = {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(&format!(
                r#"{{"iss":"{}","sub":"mallory","aud":"claimgate","exp":9999999999}}"#,
                idp.issuer
            ))
        )
    };
    for (first, second) in [(&good, &none), (&none, &good), (&good, &good)] {
        let req = http::Request::get(p.url("/datasets/imagenet/0001.tar"))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .body(full(Bytes::new()))
            .unwrap();
        let r = p.client.send(req).await;
        assert_eq!(
            (r.status, r.s3_code().as_str()),
            (400, "InvalidArgument"),
            "{}",
            r.text()
        );
        assert!(
            r.text().contains("more than one Authorization header"),
            "{}",
            r.text()
        );
    }
    // a bearer header on a presigned URL: two credentials, one request
    let presigned = "/datasets/imagenet/0001.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAX%2F20261129%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=00";
    let r = p.client.get(&p.url(presigned), Some(&good)).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "InvalidArgument"),
        "{}",
        r.text()
    );
    assert!(upstream.seen().is_empty());
    for r in p.audit(4).await {
        assert_eq!(r["reason"], "ambiguous", "{r}");
    }
}

/// A token whose header says it is a JWE is refused, even when signed by a trusted key.
#[tokio::test]
async fn a_token_claiming_to_be_encrypted_is_refused() {
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).start().await;
    let key = idp.key("rsa-1");
    let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let header = b64(br#"{"alg":"RS256","kid":"rsa-1","enc":"A256GCM"}"#);
    let claims = b64(idp.claims("alice", &["ml-engineers"]).to_string().as_bytes());
    let message = format!("{header}.{claims}");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).unwrap();
    let token = format!("{message}.{signature}");
    let r = p
        .client
        .get(&p.url("/datasets/imagenet/0001.tar"), Some(&token))
        .await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "InvalidToken"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("JWE"), "{}", r.text());
    assert!(upstream.seen().is_empty());
}

/// Over HTTP/2 a body commonly ends with an empty DATA frame carrying END_STREAM: the check
/// must still hold back real bytes until the verdict, so a swapped body never arrives whole.
#[tokio::test]
async fn a_swapped_body_over_http2_never_reaches_the_upstream_whole() {
    use http_body_util::BodyExt as _;
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).tls().start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    for (body, declared, want) in [(b"evil", b"good", 400), (b"good", b"good", 200)] {
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> =
            vec![Ok(http_body::Frame::data(Bytes::from_static(body)))];
        // a streamed body: hyper cannot know the end in advance, so it closes the h2 stream
        // with an empty END_STREAM frame after the data
        let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let req = http::Request::put(p.url("/datasets/h2.bin"))
            .version(http::Version::HTTP_2)
            .header("authorization", format!("Bearer {token}"))
            .header("content-length", "4")
            .header("x-amz-content-sha256", sha256_hex(declared))
            .body(streamed)
            .unwrap();
        let before = upstream.seen().len();
        let r = p.client.send(req).await;
        assert_eq!(r.status, want, "{}", r.text());
        let whole: Vec<_> = upstream.seen()[before..]
            .iter()
            .filter_map(|s| s.body.clone())
            .collect();
        if want == 200 {
            assert_eq!(whole, vec![Bytes::from_static(b"good")]);
        } else {
            assert_eq!(r.s3_code(), "XAmzContentSHA256Mismatch");
            assert!(
                whole.is_empty(),
                "the upstream got the swapped body whole: {whole:?}"
            );
        }
    }
    let records = p.audit(2).await;
    assert!(records.iter().all(|r| r["method"] == "PUT"));
}
