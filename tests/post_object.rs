//! Browser form uploads (PostObject) end to end: a real IdP, a real S3 store (s3s-fs, which
//! implements POST object and verifies the POST policy claimgate signs for it) and the proxy,
//! on loopback. Forms are authenticated by a bearer token or signed the way boto3's
//! `generate_presigned_post` signs them, with claimgate STS session credentials; every way of
//! tampering with them is refused with nothing stored.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use support::*;

const BOUNDARY: &str = "----claimgateTestForm9";

/// A multipart form: the fields in order, then the file, then `after` (fields S3 ignores).
fn form_body(fields: &[(&str, &str)], filename: &str, content: &[u8], after: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(content);
    out.extend_from_slice(format!("\r\n--{BOUNDARY}").as_bytes());
    out.extend_from_slice(after.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

fn owned(fields: &[(String, String)]) -> Vec<(&str, &str)> {
    fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

/// `POST /<bucket>` with the form, as a browser sends it (Content-Length set).
fn post(p: &TestProxy, bucket: &str, token: Option<&str>, body: Vec<u8>) -> http::Request<Body> {
    let mut b = http::Request::post(p.url(&format!("/{bucket}"))).header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    );
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(full(body)).unwrap()
}

fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect()
}

/// What a form built by boto3's `generate_presigned_post(Bucket, Key, Fields, Conditions)`
/// holds for session credentials: the caller's fields, then the SigV4 fields, the policy and
/// its signature.
struct Presign<'a> {
    creds: &'a SessionCreds,
    bucket: &'a str,
    key: &'a str,
    expires: SystemTime,
    fields: Vec<(&'a str, &'a str)>,
    conditions: Vec<Value>,
    /// Sign with this secret instead of the session's.
    secret: Option<&'a str>,
}

impl<'a> Presign<'a> {
    fn new(creds: &'a SessionCreds, bucket: &'a str, key: &'a str) -> Self {
        Presign {
            creds,
            bucket,
            key,
            expires: SystemTime::now() + Duration::from_secs(3600),
            fields: Vec::new(),
            conditions: Vec::new(),
            secret: None,
        }
    }

    fn fields(&self) -> Vec<(String, String)> {
        let now = SystemTime::now();
        let date = amz_date(now);
        let credential = format!(
            "{}/{}/us-east-1/s3/aws4_request",
            self.creds.access_key_id,
            &date[..8]
        );
        let mut conditions = self.conditions.clone();
        conditions.push(json!({ "bucket": self.bucket }));
        match self.key.strip_suffix("${filename}") {
            Some(prefix) => conditions.push(json!(["starts-with", "$key", prefix])),
            None => conditions.push(json!({ "key": self.key })),
        }
        conditions.push(json!({ "x-amz-algorithm": "AWS4-HMAC-SHA256" }));
        conditions.push(json!({ "x-amz-credential": credential }));
        conditions.push(json!({ "x-amz-date": date }));
        conditions.push(json!({ "x-amz-security-token": self.creds.session_token }));
        let policy = json!({
            "expiration": humantime::format_rfc3339_seconds(self.expires).to_string(),
            "conditions": conditions,
        });
        let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        let secret = self.secret.unwrap_or(&self.creds.secret_access_key);
        let signature = calculate_signature(
            generate_signing_key(secret, now, "us-east-1", "s3"),
            policy.as_bytes(),
        );
        let mut out: Vec<(String, String)> = self
            .fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        out.push(("key".into(), self.key.into()));
        out.push(("x-amz-algorithm".into(), "AWS4-HMAC-SHA256".into()));
        out.push(("x-amz-credential".into(), credential));
        out.push(("x-amz-date".into(), date));
        out.push(("x-amz-security-token".into(), self.creds.session_token.clone()));
        out.push(("policy".into(), policy));
        out.push(("x-amz-signature".into(), signature));
        out
    }
}

fn set(fields: &mut [(String, String)], name: &str, value: String) {
    fields.iter_mut().find(|(n, _)| n == name).unwrap().1 = value;
}

#[tokio::test]
async fn a_bearer_form_upload_is_stored_as_authorized() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    let p = proxy(&idp, &s3).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let content: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();

    let body = form_body(
        &[
            ("key", "imagenet/post/${filename}"),
            ("Content-Type", "application/x-tar"),
            ("x-amz-meta-run", "r7"),
        ],
        "shard-1.tar",
        &content,
        "",
    );
    let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        std::fs::read(s3.path("datasets", "imagenet/post/shard-1.tar")).unwrap(),
        content
    );

    // read back through the proxy
    let r = p
        .client
        .get(&p.url("/datasets/imagenet/post/shard-1.tar"), Some(&token))
        .await;
    assert_eq!((r.status, r.body.as_ref()), (200, content.as_slice()));

    // a body without Content-Length (chunked) streams the same way
    let body = form_body(&[("key", "checkpoints-alice")], "x", b"chunked bytes", "");
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = body
        .chunks(100)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = http::Request::post(p.url("/checkpoints"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let r = p.client.send(req).await;
    assert_eq!(
        r.status,
        403,
        "checkpoints-alice is not under checkpoints/alice/: {}",
        r.text()
    );
    let body = form_body(
        &[("key", "alice/run-1/${filename}")],
        "step 9.pt",
        b"chunked bytes",
        "\r\nContent-Disposition: form-data; name=\"submit\"\r\n\r\nUpload",
    );
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = body
        .chunks(100)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let req = http::Request::post(p.url("/checkpoints"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary=\"{BOUNDARY}\""),
        )
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed())
        .unwrap();
    let r = p.client.send(req).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        std::fs::read(s3.path("checkpoints", "alice/run-1/step 9.pt")).unwrap(),
        b"chunked bytes"
    );

    let audit = p.audit(4).await;
    let posts: Vec<&Value> = audit.iter().filter(|r| r["operation"] == "PostObject").collect();
    assert_eq!(posts.len(), 3, "one record per request: {audit:?}");
    let first = posts[0];
    assert_eq!(first["action"], "s3:PutObject");
    assert_eq!(first["resource"], "s3://datasets/imagenet/post/shard-1.tar");
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["status"], 204);
    assert_eq!(first["identity"]["auth_method"], "bearer");
    assert!(first["bytes_in"].as_u64().unwrap() > 5000, "{first}");
}

#[tokio::test]
async fn denied_and_traversal_keys_reach_nothing() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    std::fs::create_dir_all(s3.path("datasets", "pii")).unwrap();
    std::fs::write(s3.path("datasets", "pii/users.csv"), b"secret").unwrap();
    let p = proxy(&idp, &s3).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let before = snapshot(s3.root.path());
    let requests = s3.requests();

    for (fields, filename, status, code) in [
        (vec![("key", "pii/users.csv")], "f", 403, "AccessDenied"),
        (vec![("key", "pii/${filename}")], "users.csv", 403, "AccessDenied"),
        // an ACL needs s3:PutObjectAcl, which trainers do not hold
        (
            vec![("key", "imagenet/a"), ("acl", "public-read")],
            "f",
            403,
            "AccessDenied",
        ),
        (
            vec![("key", "imagenet/a"), ("x-amz-acl", "public-read")],
            "f",
            403,
            "AccessDenied",
        ),
        (vec![("key", "imagenet/../pii/users.csv")], "f", 400, "InvalidURI"),
        (
            vec![("key", "imagenet/${filename}")],
            "../pii/users.csv",
            400,
            "InvalidURI",
        ),
        (vec![("key", "imagenet/${filename}")], "..", 400, "InvalidURI"),
        (vec![("key", "/pii/users.csv")], "f", 400, "InvalidURI"),
        (
            vec![("key", "imagenet/a"), ("bucket", "checkpoints")],
            "f",
            400,
            "InvalidArgument",
        ),
        (vec![("key", "a"), ("KEY", "b")], "f", 400, "InvalidArgument"),
        (vec![("acl", "private")], "f", 400, "InvalidArgument"),
    ] {
        let body = form_body(&fields, filename, b"evil", "");
        let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
        assert_eq!(
            (r.status, r.s3_code().as_str()),
            (status, code),
            "{fields:?} {filename}: {}",
            r.text()
        );
    }
    // a value that smuggles parts in behind the boundary: read as the store reads it (an
    // empty value, then a second `key`), or refused where a lenient reader would split it
    let smuggled =
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\npii/users.csv");
    let lenient = format!("a\n--{BOUNDARY}\nContent-Disposition: form-data; name=\"key\"\n\npii/users.csv");
    for (value, status, code) in [
        (smuggled, 400, "InvalidArgument"),
        (lenient, 400, "InvalidRequest"),
    ] {
        let body = form_body(
            &[("key", "imagenet/a"), ("x-amz-meta-a", &value)],
            "f",
            b"evil",
            "",
        );
        let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
        assert_eq!(
            (r.status, r.s3_code().as_str()),
            (status, code),
            "{value:?}: {}",
            r.text()
        );
    }
    // no file part
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nimagenet/x\r\n--{BOUNDARY}--\r\n").as_bytes());
    let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "InvalidArgument"),
        "{}",
        r.text()
    );
    // not a form at all
    let r = p
        .client
        .request(
            "POST",
            &p.url("/datasets"),
            Some(&token),
            Bytes::from_static(b"key=x"),
        )
        .await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "MalformedPOSTRequest"),
        "{}",
        r.text()
    );
    // no credentials anywhere
    let r = p
        .client
        .send(post(
            &p,
            "datasets",
            None,
            form_body(&[("key", "imagenet/a")], "f", b"x", ""),
        ))
        .await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (403, "AccessDenied"),
        "{}",
        r.text()
    );

    assert_eq!(s3.requests(), requests, "a refused form reached the store");
    assert_eq!(snapshot(s3.root.path()), before, "the store changed");
    let audit = p.audit(16).await;
    assert_eq!(audit.len(), 16, "one record per request");
}

#[tokio::test]
async fn field_sections_are_capped() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .server_lines("max_inspected_body = 4096")
        .start()
        .await;
    let token = idp.token("alice", &["ml-engineers"]);
    let big = "m".repeat(5000);
    let body = form_body(&[("key", "imagenet/a"), ("x-amz-meta-note", &big)], "f", b"x", "");
    let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "MaxPostPreDataLengthExceededError"),
        "{}",
        r.text()
    );
    // the file itself is never counted: 100 KiB under a 4 KiB cap is fine
    let content = vec![7u8; 100 * 1024];
    let body = form_body(&[("key", "imagenet/big")], "f", &content, "");
    let r = p.client.send(post(&p, "datasets", Some(&token), body)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        std::fs::read(s3.path("datasets", "imagenet/big")).unwrap(),
        content
    );
    assert_eq!(s3.requests(), 1);
}

#[tokio::test]
async fn a_session_signed_form_is_accepted() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;

    let mut presign = Presign::new(&creds, "checkpoints", "alice/run-2/${filename}");
    presign.fields.push(("Content-Type", "application/octet-stream"));
    presign
        .conditions
        .push(json!(["starts-with", "$Content-Type", "application/"]));
    presign.conditions.push(json!(["content-length-range", 1, 1024]));
    let fields = presign.fields();
    let body = form_body(&owned(&fields), "model.pt", b"weights", "");
    let r = p.client.send(post(&p, "checkpoints", None, body)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        std::fs::read(s3.path("checkpoints", "alice/run-2/model.pt")).unwrap(),
        b"weights"
    );

    let audit = p.audit(2).await;
    let rec = audit.iter().find(|r| r["operation"] == "PostObject").unwrap();
    assert_eq!(rec["identity"]["auth_method"], "sts_session");
    assert_eq!(rec["identity"]["sub"], "alice");
    assert_eq!(rec["resource"], "s3://checkpoints/alice/run-2/model.pt");
    let raw = p.audit_raw();
    assert!(!raw.contains(&creds.session_token) && !raw.contains(&creds.secret_access_key));
}

#[tokio::test]
async fn tampered_expired_and_violating_forms_store_nothing() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let creds = session(&p, &token).await;
    let other = session(&p, &token).await;
    let before = snapshot(s3.root.path());
    let requests = s3.requests();

    let good = || Presign::new(&creds, "checkpoints", "alice/t/${filename}");
    type Case<'a> = (&'a str, Vec<(String, String)>, &'a [u8], u16, &'a str, &'a str);
    let mut cases: Vec<Case<'_>> = Vec::new();

    let mut f = good().fields();
    let policy = f.iter().find(|(n, _)| n == "policy").unwrap().1.clone();
    let mut doc: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(&policy).unwrap()).unwrap();
    doc["expiration"] = json!("2099-01-01T00:00:00Z");
    set(
        &mut f,
        "policy",
        base64::engine::general_purpose::STANDARD.encode(doc.to_string()),
    );
    cases.push(("tampered policy", f, b"x", 403, "SignatureDoesNotMatch", ""));

    let mut f = good().fields();
    let sig = f.iter().find(|(n, _)| n == "x-amz-signature").unwrap().1.clone();
    let first = if sig.starts_with('0') { '1' } else { '0' };
    let flipped = format!("{first}{}", &sig[1..]);
    set(&mut f, "x-amz-signature", flipped);
    cases.push(("tampered signature", f, b"x", 403, "SignatureDoesNotMatch", ""));

    let mut wrong = good();
    wrong.secret = Some(&other.secret_access_key);
    cases.push((
        "another session's secret",
        wrong.fields(),
        b"x",
        403,
        "SignatureDoesNotMatch",
        "",
    ));

    let mut f = good().fields();
    set(&mut f, "x-amz-security-token", other.session_token.clone());
    cases.push(("another session's token", f, b"x", 400, "InvalidToken", ""));

    let mut expired = good();
    expired.expires = SystemTime::now() - Duration::from_secs(5);
    cases.push((
        "expired policy",
        expired.fields(),
        b"x",
        403,
        "AccessDenied",
        "Policy expired",
    ));

    let mut f = Presign::new(&creds, "checkpoints", "alice/t/exact").fields();
    set(&mut f, "key", "alice/t/other".into());
    cases.push((
        "condition violated",
        f,
        b"x",
        403,
        "AccessDenied",
        "Policy Condition failed",
    ));

    let mut extra = good();
    extra.fields.push(("success_action_status", "201"));
    cases.push((
        "a field no condition names",
        extra.fields(),
        b"x",
        403,
        "AccessDenied",
        "Extra input fields",
    ));

    let wrong_bucket = Presign::new(&creds, "datasets", "alice/t/${filename}");
    cases.push((
        "signed for another bucket",
        wrong_bucket.fields(),
        b"x",
        403,
        "AccessDenied",
        "$bucket",
    ));

    let mut sigv2 = good().fields();
    sigv2.push(("AWSAccessKeyId".into(), creds.access_key_id.clone()));
    sigv2.push(("signature".into(), "c2ln".into()));
    cases.push(("SigV2", sigv2, b"x", 400, "InvalidArgument", "SigV2"));

    let mut algorithm = good().fields();
    set(&mut algorithm, "x-amz-algorithm", "AWS4-ECDSA-P256-SHA256".into());
    cases.push((
        "SigV4a",
        algorithm,
        b"x",
        400,
        "InvalidArgument",
        "x-amz-algorithm",
    ));

    for (what, fields, content, status, code, message) in &cases {
        let r = p
            .client
            .send(post(
                &p,
                "checkpoints",
                None,
                form_body(&owned(fields), "f.bin", content, ""),
            ))
            .await;
        assert_eq!(
            (r.status, r.s3_code().as_str()),
            (*status, *code),
            "{what}: {}",
            r.text()
        );
        assert!(r.text().contains(message), "{what}: {}", r.text());
        assert!(
            !r.text().contains(&creds.session_token),
            "{what}: echoed the token"
        );
    }

    // a bearer token and form credentials at once
    let body = form_body(&owned(&good().fields()), "f.bin", b"x", "");
    let r = p.client.send(post(&p, "checkpoints", Some(&token), body)).await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "InvalidArgument"),
        "{}",
        r.text()
    );

    assert_eq!(s3.requests(), requests, "a refused form reached the store");

    // content-length-range: checked while the file streams, so the store sees the start of
    // the request — and never a complete file
    for (range, content, code) in [
        ((0, 10), &[b'z'; 100][..], "EntityTooLarge"),
        ((50, 100), &[b'z'; 10][..], "EntityTooSmall"),
    ] {
        let mut limited = good();
        limited
            .conditions
            .push(json!(["content-length-range", range.0, range.1]));
        let body = form_body(&owned(&limited.fields()), "f.bin", content, "");
        let r = p.client.send(post(&p, "checkpoints", None, body)).await;
        assert_eq!((r.status, r.s3_code().as_str()), (400, code), "{}", r.text());
    }
    assert_eq!(snapshot(s3.root.path()), before, "the store changed");
    let n = cases.len() + 3;
    let audit = p.audit(n + 2).await;
    assert_eq!(audit.len(), n + 2, "one record per request (and two for STS)");
}

#[tokio::test]
async fn policy_expiry_follows_the_injected_clock() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["checkpoints"]).await;
    let clock = claimgate::clock::ManualClock::at(now());
    let p = proxy(&idp, &s3)
        .extra(STS)
        .clock(Arc::new(clock.clone()))
        .start()
        .await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    let mut presign = Presign::new(&creds, "checkpoints", "alice/clock/${filename}");
    presign.expires = SystemTime::now() + Duration::from_secs(60);
    let fields = presign.fields();

    let r = p
        .client
        .send(post(
            &p,
            "checkpoints",
            None,
            form_body(&owned(&fields), "a", b"1", ""),
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    clock.advance(120);
    let r = p
        .client
        .send(post(
            &p,
            "checkpoints",
            None,
            form_body(&owned(&fields), "b", b"2", ""),
        ))
        .await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (403, "AccessDenied"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("Policy expired"), "{}", r.text());
    assert!(s3.path("checkpoints", "alice/clock/a").exists());
    assert!(!s3.path("checkpoints", "alice/clock/b").exists());
}

#[tokio::test]
async fn the_store_gets_the_authorized_key_and_none_of_the_callers_credentials() {
    let idp = TestIdp::start().await;
    let recorder = Recorder::start().await;
    let p = proxy_to(&idp, &recorder.url).extra(STS).start().await;
    let creds = session(&p, &idp.token("alice", &["ml-engineers"])).await;
    let mut presign = Presign::new(&creds, "checkpoints", "alice/r/${filename}");
    presign.fields.push(("x-amz-meta-Run", "r 9"));
    presign.conditions.push(json!({"x-amz-meta-run": "r 9"}));
    let fields = presign.fields();
    let after = "\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nalice/other";
    let body = form_body(&owned(&fields), "w.pt", b"file bytes", after);
    let r = p.client.send(post(&p, "checkpoints", None, body)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (
            seen[0].method.as_str(),
            seen[0].path.as_str(),
            seen[0].query.as_deref()
        ),
        ("POST", "/checkpoints", None)
    );
    let sent = String::from_utf8(seen[0].body.clone().unwrap().to_vec()).unwrap();
    let field = |name: &str| {
        let marker = format!("name=\"{name}\"\r\n\r\n");
        let at = sent
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {sent}"))
            + marker.len();
        sent[at..].split("\r\n").next().unwrap().to_string()
    };
    assert_eq!(
        field("key"),
        "alice/r/w.pt",
        "the key as authorized, already substituted"
    );
    assert_eq!(field("x-amz-meta-run"), "r 9");
    assert!(field("x-amz-credential").starts_with(&format!("{S3_ACCESS_KEY}/")));
    for secret in [&creds.session_token, &creds.access_key_id] {
        assert!(
            !sent.contains(secret.as_str()),
            "the caller's credentials reached the store"
        );
    }
    assert_eq!(sent.matches("name=\"policy\"").count(), 1);
    assert!(
        sent.ends_with(&format!(
            "w.pt\"\r\nContent-Type: application/octet-stream\r\n\r\nfile bytes\r\n--{BOUNDARY}{after}--\r\n"
        )),
        "{sent}"
    );
    // the policy claimgate signed pins the key and the forwarded field
    let policy: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(field("policy"))
            .unwrap(),
    )
    .unwrap();
    let conditions = policy["conditions"].to_string();
    assert!(
        conditions.contains(r#"["eq","$key","alice/r/w.pt"]"#),
        "{conditions}"
    );
    assert!(
        conditions.contains(r#"["eq","$x-amz-meta-run","r 9"]"#),
        "{conditions}"
    );
    assert!(conditions.contains(r#"{"bucket":"checkpoints"}"#), "{conditions}");
}

/// An upstream that counts the bytes of each request body as they arrive and answers 204.
async fn counting_upstream(count: Arc<AtomicU64>) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let count = count.clone();
                    async move {
                        let mut body = req.into_body();
                        while let Some(Ok(frame)) = body.frame().await {
                            if let Some(d) = frame.data_ref() {
                                count.fetch_add(d.len() as u64, Ordering::SeqCst);
                            }
                        }
                        let mut resp = http::Response::new(http_body_util::Full::new(Bytes::new()));
                        *resp.status_mut() = http::StatusCode::NO_CONTENT;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_20_mib_file_streams() {
    const MIB: usize = 1 << 20;
    let idp = TestIdp::start().await;
    let token = idp.token("alice", &["ml-engineers"]);

    // into a real store, byte for byte
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    // No CR in the content: s3s 0.14's form reader fails ("failed to read file stream") when
    // a network read ends on a CR that might start the closing delimiter and the next read is
    // over 64 KiB (its boundary buffer limit) — a store bug that no framing on claimgate's
    // side can avoid, since TCP re-chunks the stream. It is not what this test is about.
    let content: Vec<u8> = (0..20 * MIB)
        .map(|i| match (i % 253) as u8 {
            b'\r' => b'x',
            b => b,
        })
        .collect();
    let started = std::time::Instant::now();
    let r = p
        .client
        .send(post(
            &p,
            "datasets",
            Some(&token),
            form_body(&[("key", "imagenet/20mib.bin")], "f", &content, ""),
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    eprintln!(
        "20 MiB form upload through claimgate into s3s-fs: {:?}",
        started.elapsed()
    );
    assert!(std::fs::read(s3.path("datasets", "imagenet/20mib.bin")).unwrap() == content);

    // streamed, not buffered: the upstream receives the first 4 MiB of the file while the
    // caller still holds back the rest
    let count = Arc::new(AtomicU64::new(0));
    let upstream = counting_upstream(count.clone()).await;
    let p = proxy_to(&idp, &upstream).start().await;
    let body = form_body(&[("key", "imagenet/streamed.bin")], "f", &content, "");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(http_body::Frame::data(b)), rx))
    });
    let req = http::Request::post(p.url("/datasets"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", body.len().to_string())
        .body(BodyExt::boxed(http_body_util::StreamBody::new(stream)))
        .unwrap();
    let client = p.client.clone();
    let response = tokio::spawn(async move { client.send(req).await });
    let split = 4 * MIB;
    for chunk in body[..split].chunks(64 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let waited = std::time::Instant::now();
    while count.load(Ordering::SeqCst) < (split - 1024) as u64 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the upstream got only {} bytes",
            count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for chunk in body[split..].chunks(64 * 1024) {
        tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    drop(tx);
    let r = response.await.unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(count.load(Ordering::SeqCst) >= content.len() as u64);
}
