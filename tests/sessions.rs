//! SigV4 requests signed with claimgate-issued STS credentials (signed here by the aws-sigv4
//! crate, as AWS SDKs sign), and every way of tampering with them refused before the upstream.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignatureLocation};
use bytes::Bytes;
use claimgate::upstream::sign::{Signer, s3_settings, sign_v4};
use support::*;

const STS_ON: &str =
    "[sts]\nenabled = true\nsealing_keys = [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\n";

struct Sign<'a> {
    creds: &'a SessionCreds,
    secret: Option<&'a str>,
    access_key: Option<&'a str>,
    token: Option<&'a str>,
    at: SystemTime,
    /// Headers set before signing (and so signed).
    headers: Vec<(&'a str, &'a str)>,
    /// Sign without the session token, as if the keys were long-lived.
    no_token: bool,
}

impl<'a> Sign<'a> {
    fn new(creds: &'a SessionCreds) -> Self {
        Sign {
            creds,
            secret: None,
            access_key: None,
            token: None,
            at: SystemTime::now(),
            headers: Vec::new(),
            no_token: false,
        }
    }

    /// A request to the proxy signed as an SDK would sign it.
    fn request(&self, p: &TestProxy, method: &str, path: &str, body: &[u8]) -> http::Request<Body> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(p.url(path))
            .header("host", format!("localhost:{}", p.addr.port()));
        for (n, v) in &self.headers {
            b = b.header(*n, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        let creds = Credentials::new(
            self.access_key.unwrap_or(&self.creds.access_key_id),
            self.secret.unwrap_or(&self.creds.secret_access_key),
            (!self.no_token).then(|| self.token.unwrap_or(&self.creds.session_token).to_string()),
            None,
            "test",
        );
        let payload = SignableBody::Bytes(body);
        sign_v4(
            &mut parts,
            &Signer {
                credentials: &creds,
                region: "us-east-1",
                service: "s3",
                settings: s3_settings(),
                signed_headers: |_| true,
            },
            payload,
            self.at,
        )
        .unwrap();
        http::Request::from_parts(parts, full(Bytes::copy_from_slice(body)))
    }
}

async fn setup() -> (TestIdp, TestS3, TestProxy, SessionCreds) {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    std::fs::create_dir_all(s3.path("datasets", "imagenet")).unwrap();
    std::fs::write(s3.path("datasets", "imagenet/0001.tar"), b"tensor").unwrap();
    let p = proxy(&idp, &s3).extra(STS_ON).start().await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    (idp, s3, p, creds)
}

#[tokio::test]
async fn sdk_signed_requests_with_session_credentials_are_verified_and_re_signed() {
    let (_idp, s3, p, creds) = setup().await;
    let get = p
        .client
        .send(Sign::new(&creds).request(&p, "GET", "/datasets/imagenet/0001.tar", b""))
        .await;
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(&get.body[..], b"tensor");
    let put = p
        .client
        .send(Sign::new(&creds).request(&p, "PUT", "/datasets/new.bin", b"data"))
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(std::fs::read(s3.path("datasets", "new.bin")).unwrap(), b"data");
    let denied = p
        .client
        .send(Sign::new(&creds).request(&p, "GET", "/datasets/pii/x", b""))
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.s3_code(), "AccessDenied");

    let audit = p.audit(4).await;
    let r = &audit[1];
    assert_eq!(r["identity"]["auth_method"], "sts_session");
    assert_eq!(r["identity"]["session"], creds.access_key_id.as_str());
    assert_eq!(r["identity"]["sub"], "alice");
    assert_eq!(r["identity"]["roles"], serde_json::json!(["trainer"]));
    let raw = p.audit_raw();
    assert!(!raw.contains(&creds.secret_access_key) && !raw.contains(&creds.session_token));
}

#[tokio::test]
async fn tampered_credentials_are_refused_before_the_upstream() {
    let (idp, s3, p, creds) = setup().await;
    let other = session(&p, &idp.token("bob", &["ml-engineers"])).await;
    let mut bad_token = creds.session_token.clone().into_bytes();
    let mid = bad_token.len() / 2;
    bad_token[mid] = if bad_token[mid] == b'A' { b'B' } else { b'A' };
    let bad_token = String::from_utf8(bad_token).unwrap();
    let path = "/datasets/imagenet/0001.tar";
    let before = s3.requests();

    let cases: Vec<(&str, http::Request<Body>, u16, &str)> = vec![
        (
            "modified session token",
            Sign {
                token: Some(&bad_token),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
            400,
            "InvalidToken",
        ),
        (
            "swapped access key id",
            Sign {
                access_key: Some(&other.access_key_id),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
            400,
            "InvalidToken",
        ),
        (
            "secret from another session",
            Sign {
                secret: Some(&other.secret_access_key),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
            403,
            "SignatureDoesNotMatch",
        ),
        (
            "replayed outside the skew window",
            Sign {
                at: SystemTime::now() - Duration::from_secs(20 * 60),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
            403,
            "RequestTimeTooSkewed",
        ),
        (
            "a token that is not claimgate's",
            Sign {
                token: Some("FwoGZXIvYXdzEJr//////////wEaDOTHERTOKEN"),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
            400,
            "InvalidToken",
        ),
    ];
    for (what, req, status, code) in cases {
        let r = p.client.send(req).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_eq!(r.s3_code(), code, "{what}");
    }
    // a body swapped under a signed hash: claimgate checks it while streaming and ends the
    // upstream body short, so not even the start of it can be committed
    let mut req = Sign::new(&creds).request(&p, "PUT", "/datasets/swap.bin", b"original");
    *req.body_mut() = full(Bytes::from_static(b"tampered"));
    let r = p.client.send(req).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "XAmzContentSHA256Mismatch"),
        "{}",
        r.text()
    );
    assert!(!s3.path("datasets", "swap.bin").exists());

    assert!(
        s3.requests() - before <= 1,
        "only the body-swap may have reached the upstream (cut short)"
    );
    let audit = p.audit(6).await;
    assert!(
        audit
            .iter()
            .skip(2)
            .take(5)
            .all(|r| r["upstream_status"].is_null())
    );
}

#[tokio::test]
async fn presigned_urls_work_until_they_expire() {
    let (_idp, s3, p, creds) = setup().await;
    let presign = |at: SystemTime, secs: u64| {
        let (parts, ()) = http::Request::get(p.url("/datasets/imagenet/0001.tar"))
            .header("host", format!("localhost:{}", p.addr.port()))
            .body(())
            .unwrap()
            .into_parts();
        let c = Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            Some(creds.session_token.clone()),
            None,
            "t",
        );
        let mut settings = s3_settings();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(secs));
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::NoHeader;
        presign_url(&parts, &c, at, settings)
    };
    let fresh = presign(SystemTime::now(), 300);
    let r = p.client.get(&fresh, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(&r.body[..], b"tensor");
    let before = s3.requests();
    let stale = presign(SystemTime::now() - Duration::from_secs(120), 60);
    let r = p.client.get(&stale, None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.s3_code(), "AccessDenied");
    assert!(r.text().contains("expired"), "{}", r.text());
    assert_eq!(s3.requests(), before);
}

/// Presigns with aws-sigv4 and returns the URL.
fn presign_url(
    parts: &http::request::Parts,
    creds: &Credentials,
    at: SystemTime,
    settings: aws_sigv4::http_request::SigningSettings,
) -> String {
    use aws_sigv4::http_request::{SignableRequest, sign};
    let identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(at)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let uri = parts.uri.to_string();
    let host = parts.headers["host"].to_str().unwrap().to_string();
    let req = SignableRequest::new(
        "GET",
        &uri,
        std::iter::once(("host", host.as_str())),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut req = http::Request::get(uri).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut req);
    req.uri().to_string()
}

/// The session is used (and so opened and kept, `identity::opened`) before it expires: the
/// kept session is refused all the same once its time is up.
#[tokio::test]
async fn an_expired_session_is_refused_with_expired_token() {
    let clock = claimgate::clock::ManualClock::at(now());
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra(STS_ON)
        .clock(std::sync::Arc::new(clock.clone()))
        .start()
        .await;
    let r = assume(
        &p,
        &idp.token("alice", &["ml-engineers"]),
        TRAINER,
        &[("DurationSeconds", "900")],
    )
    .await;
    let xml = r.text();
    let creds = SessionCreds {
        access_key_id: element(&xml, "AccessKeyId").to_string(),
        secret_access_key: element(&xml, "SecretAccessKey").to_string(),
        session_token: element(&xml, "SessionToken").to_string(),
    };
    let r = p
        .client
        .send(Sign::new(&creds).request(&p, "GET", "/datasets?list-type=2", b""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    clock.advance(901);
    let at = SystemTime::now() + Duration::from_secs(901);
    let r = p
        .client
        .send(
            Sign {
                at,
                ..Sign::new(&creds)
            }
            .request(&p, "GET", "/datasets?list-type=2", b""),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.s3_code(), "ExpiredToken");
    assert_eq!(
        s3.requests(),
        1,
        "only the request made in time reached the store"
    );
}

#[tokio::test]
async fn revoking_a_session_access_key_cuts_it_off_at_once() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .files(&[("revoked.toml", "")])
        .extra(&format!("{STS_ON}\n[revocations]\nfile = \"revoked.toml\"\n"))
        .start()
        .await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    let list = || Sign::new(&creds).request(&p, "GET", "/datasets?list-type=2", b"");
    assert_eq!(p.client.send(list()).await.status, 200);
    let entry = format!(
        "[[revoked]]\naccess_key_id = \"{}\"\nreason = \"session pasted into a public notebook\"\n",
        creds.access_key_id
    );
    std::fs::write(p.config_dir().join("revoked.toml"), entry).unwrap();
    let before = s3.requests();
    let mut status = 200;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = p.client.send(list()).await.status;
        if status == 403 {
            break;
        }
    }
    assert_eq!(status, 403);
    let audit = p.audit(3).await;
    let last = audit.last().unwrap();
    assert_eq!(last["reason"], "revoked");
    assert_eq!(last["identity"]["session"], creds.access_key_id.as_str());
    assert!(last["detail"].as_str().unwrap().contains("public notebook"));
    assert!(
        s3.requests() - before < 50,
        "revoked requests kept reaching the upstream"
    );
}

#[tokio::test]
async fn headers_named_in_connection_cannot_be_dropped_after_verification() {
    let (_idp, s3, p, creds) = setup().await;
    let before = s3.requests();
    let mut req = Sign {
        headers: vec![("if-none-match", "*"), ("x-amz-meta-owner", "alice")],
        ..Sign::new(&creds)
    }
    .request(&p, "PUT", "/datasets/guarded.bin", b"v1");
    // a replayer asks the proxy to strip a signed header as if it were hop-by-hop
    req.headers_mut()
        .insert("connection", "x-amz-meta-owner".parse().unwrap());
    let r = p.client.send(req).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.s3_code(), "SignatureDoesNotMatch");
    assert_eq!(s3.requests(), before);
}

#[tokio::test]
async fn keys_without_a_session_token_are_unknown() {
    let (_idp, s3, p, creds) = setup().await;
    let r = p
        .client
        .send(
            Sign {
                no_token: true,
                ..Sign::new(&creds)
            }
            .request(&p, "GET", "/datasets?list-type=2", b""),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.s3_code(), "InvalidAccessKeyId");
    assert_eq!(s3.requests(), 0);
}

#[tokio::test]
async fn sessions_are_for_s3_routes_only() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let feast = TestHttp::start().await;
    let route = format!(
        "[[routes]]\nname = \"features\"\nkind = \"http\"\npath_prefix = \"/features/\"\nupstream = \"{}\"\ncredentials = {{ kind = \"bearer\", token = \"t\" }}\n",
        feast.url
    );
    let policy = format!(
        "{POLICY}\n[[roles]]\nname = \"feature-reader\"\nmembers = [ {{ claim = \"groups\", contains = \"ml-engineers\" }} ]\nallow = [ {{ actions = [\"http:POST\"], resources = [\"http://features/*\"] }} ]\n"
    );
    let p = proxy(&idp, &s3)
        .policy(&policy)
        .extra(&format!("{route}\n{STS_ON}"))
        .start()
        .await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    let r = p
        .client
        .send(Sign::new(&creds).request(&p, "POST", "/features/get-online-features", b"{}"))
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(feast.seen().is_empty());
    // proven, then refused: the record names the session's caller
    let audit = p.audit(2).await;
    assert_eq!(audit[1]["reason"], "unsupported_scheme");
    assert_eq!(audit[1]["identity"]["sub"], "alice");
    assert_eq!(audit[1]["identity"]["auth_method"], "sts_session");
}

/// Frames `data` as a signed aws-chunked body (written here from the S3 documentation,
/// independently of claimgate's verifier), chained from `seed`.
fn signed_chunks(
    secret: &str,
    amz_date: &str,
    scope: &str,
    seed: &str,
    data: &[u8],
    chunk: usize,
) -> Vec<u8> {
    use aws_lc_rs::{digest, hmac};
    let date = &amz_date[..8];
    let mut k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes()),
        date.as_bytes(),
    );
    for part in ["us-east-1", "s3", "aws4_request"] {
        k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()), part.as_bytes());
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, k.as_ref());
    let empty = hex::encode(digest::digest(&digest::SHA256, b""));
    let mut prev = seed.to_string();
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = data.chunks(chunk).chain(std::iter::once(&b""[..])).collect();
    for piece in pieces {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{prev}\n{empty}\n{}",
            hex::encode(digest::digest(&digest::SHA256, piece))
        );
        let sig = hex::encode(hmac::sign(&key, sts.as_bytes()));
        out.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
        prev = sig;
    }
    out
}

#[tokio::test]
async fn signed_chunk_uploads_are_verified_chunk_by_chunk_and_forwarded_bare() {
    let (_idp, s3, p, creds) = setup().await;
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let upload = |body_of: &dyn Fn(&str, &str, &str) -> Vec<u8>| {
        let (mut parts, ()) = http::Request::put(p.url("/datasets/chunked.bin"))
            .header("host", format!("localhost:{}", p.addr.port()))
            .header("content-encoding", "aws-chunked")
            .header("x-amz-decoded-content-length", data.len().to_string())
            .body(())
            .unwrap()
            .into_parts();
        let c = Credentials::new(
            &creds.access_key_id,
            &creds.secret_access_key,
            Some(creds.session_token.clone()),
            None,
            "t",
        );
        sign_v4(
            &mut parts,
            &Signer {
                credentials: &c,
                region: "us-east-1",
                service: "s3",
                settings: s3_settings(),
                signed_headers: |_| true,
            },
            SignableBody::Precomputed("STREAMING-AWS4-HMAC-SHA256-PAYLOAD".into()),
            SystemTime::now(),
        )
        .unwrap();
        let auth = parts.headers["authorization"].to_str().unwrap().to_string();
        let seed = auth.rsplit("Signature=").next().unwrap().to_string();
        let amz_date = parts.headers["x-amz-date"].to_str().unwrap().to_string();
        let scope = format!("{}/us-east-1/s3/aws4_request", &amz_date[..8]);
        let body = body_of(&amz_date, &scope, &seed);
        parts
            .headers
            .insert("content-length", body.len().to_string().parse().unwrap());
        http::Request::from_parts(parts, full(Bytes::from(body)))
    };
    let good = upload(&|d, s, seed| signed_chunks(&creds.secret_access_key, d, s, seed, &data, 65_536));
    let r = p.client.send(good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read(s3.path("datasets", "chunked.bin")).unwrap(), data);

    // one flipped byte in the second chunk's data breaks the chain: refused, nothing stored
    std::fs::remove_file(s3.path("datasets", "chunked.bin")).unwrap();
    let bad = upload(&|d, s, seed| {
        let mut b = signed_chunks(&creds.secret_access_key, d, s, seed, &data, 65_536);
        let n = b.len();
        b[n - 200] ^= 1;
        b
    });
    let r = p.client.send(bad).await;
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(
        !s3.path("datasets", "chunked.bin").exists(),
        "a tampered upload was stored"
    );
    let audit = p.audit(3).await;
    assert_eq!(audit[1]["bytes_in"], data.len());
    assert_eq!(audit[2]["reason"], "signature_mismatch");
}

/// Sessions opened once are kept until they expire (`identity::opened`). A kept session
/// still refuses its token under another session's access key id (signed with that
/// session's secret), as a session opened afresh does, and nothing reaches the store.
#[tokio::test]
async fn a_kept_session_still_refuses_another_access_key_id() {
    let (idp, s3, p, creds) = setup().await;
    let path = "/datasets/imagenet/0001.tar";
    let ok = p
        .client
        .send(Sign::new(&creds).request(&p, "GET", path, b""))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let other = session(&p, &idp.token("bob", &["ml-engineers"])).await;
    let before = s3.requests();
    let r = p
        .client
        .send(
            Sign {
                access_key: Some(&other.access_key_id),
                secret: Some(&other.secret_access_key),
                ..Sign::new(&creds)
            }
            .request(&p, "GET", path, b""),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.s3_code(), "InvalidToken");
    assert_eq!(s3.requests(), before);
}

/// A reload whose keyring no longer holds the sealing key ends the sessions it sealed,
/// kept ones included: the session in use is refused once the new set is in force, and
/// that request never reaches the store.
#[tokio::test]
async fn a_reload_without_the_sealing_key_ends_kept_sessions() {
    let (_idp, s3, p, creds) = setup().await;
    let path = "/datasets/imagenet/0001.tar";
    let ok = p
        .client
        .send(Sign::new(&creds).request(&p, "GET", path, b""))
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let config = p.config_dir().join("claimgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let rotated = text.replace(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
    );
    assert_ne!(rotated, text, "the test config carries the sealing key inline");
    std::fs::write(&config, rotated).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let before = s3.requests();
        let r = p
            .client
            .send(Sign::new(&creds).request(&p, "GET", path, b""))
            .await;
        if r.status != 200 {
            assert_eq!(r.status, 400, "{}", r.text());
            assert_eq!(r.s3_code(), "InvalidToken");
            assert_eq!(s3.requests(), before, "the refused request reached the store");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old session still served after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
