//! The enforcing proxy end to end: bearer token → policy → SigV4 re-sign → real S3 server.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use bytes::Bytes;
use serde_json::json;
use support::*;

#[tokio::test]
async fn allowed_requests_round_trip_through_a_sigv4_verifying_upstream() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;

    let put = c
        .request(
            "PUT",
            &p.url("/datasets/imagenet/0001.tar"),
            Some(&t),
            Bytes::from_static(b"hello tensors"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        std::fs::read(s3.path("datasets", "imagenet/0001.tar")).unwrap(),
        b"hello tensors"
    );

    let get = c.get(&p.url("/datasets/imagenet/0001.tar"), Some(&t)).await;
    assert_eq!(get.status, 200);
    assert_eq!(&get.body[..], b"hello tensors");
    assert!(get.headers.contains_key("x-amz-request-id"));

    let head = c
        .request(
            "HEAD",
            &p.url("/datasets/imagenet/0001.tar"),
            Some(&t),
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "13");

    let list = c
        .get(&p.url("/datasets?list-type=2&prefix=imagenet/"), Some(&t))
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("<Key>imagenet/0001.tar</Key>"));
    let list_v1 = c.get(&p.url("/datasets?prefix=imagenet/"), Some(&t)).await;
    assert_eq!(list_v1.status, 200, "{}", list_v1.text());
    assert!(list_v1.text().contains("imagenet/0001.tar"));

    let head_bucket = c
        .request("HEAD", &p.url("/datasets"), Some(&t), Bytes::new())
        .await;
    assert_eq!(head_bucket.status, 200);
    let buckets = c.get(&p.url("/"), Some(&t)).await;
    assert_eq!(buckets.status, 200, "{}", buckets.text());
    assert!(buckets.text().contains("<Name>datasets</Name>"));

    // ${sub} scopes checkpoints to the caller's own prefix.
    let own = c
        .request(
            "PUT",
            &p.url("/checkpoints/alice/step-1.pt"),
            Some(&t),
            Bytes::from_static(b"w"),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.text());

    let del = c
        .request(
            "DELETE",
            &p.url("/datasets/imagenet/0001.tar"),
            Some(&t),
            Bytes::new(),
        )
        .await;
    assert_eq!(del.status, 204);
    assert!(!s3.path("datasets", "imagenet/0001.tar").exists());

    let audit = p.audit(10).await;
    let ops: Vec<&str> = audit
        .iter()
        .map(|r| r["operation"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        ops,
        [
            "PutObject",
            "GetObject",
            "HeadObject",
            "ListObjectsV2",
            "ListObjects",
            "HeadBucket",
            "ListBuckets",
            "PutObject",
            "DeleteObject"
        ]
    );
    for r in &audit {
        assert_eq!(r["decision"], "allow");
        assert_eq!(r["identity"]["sub"], "alice");
        assert_eq!(r["identity"]["email"], "alice@example.com");
        assert_eq!(r["identity"]["roles"], json!(["trainer"]));
        assert_eq!(r["identity"]["auth_method"], "bearer");
        assert!(
            r["identity"]["token_id"]
                .as_str()
                .unwrap()
                .starts_with("jti-alice-")
        );
    }
    assert_eq!(audit[0]["bytes_in"], 13);
    assert_eq!(audit[1]["bytes_out"], 13);
    assert_eq!(audit[0]["action"], "s3:PutObject");
    assert_eq!(audit[0]["resource"], "s3://datasets/imagenet/0001.tar");
    assert_eq!(audit[0]["upstream_status"], 200);
    assert!(audit[0]["rule"].as_str().unwrap().contains("trainer"));
}

#[tokio::test]
async fn denied_requests_get_access_denied_and_never_reach_the_upstream() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "checkpoints"]).await;
    let p = proxy(&idp, &s3).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let bob = idp.token("bob", &["analysts"]);
    let c = &p.client;
    let before = s3.requests();

    // deny beats allow
    let pii = c.get(&p.url("/datasets/pii/users.csv"), Some(&alice)).await;
    assert_eq!(pii.status, 403);
    assert_eq!(pii.s3_code(), "AccessDenied");
    assert!(pii.text().contains("deny[0]"), "{}", pii.text());
    // default deny names action, resource and roles
    let write = c
        .request(
            "PUT",
            &p.url("/datasets/curated/x"),
            Some(&bob),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(write.status, 403);
    assert!(
        write.text().contains("s3:PutObject on s3://datasets/curated/x"),
        "{}",
        write.text()
    );
    assert!(write.text().contains("[analyst]"), "{}", write.text());
    // another user's checkpoint prefix
    let other = c
        .request(
            "PUT",
            &p.url("/checkpoints/bob/x.pt"),
            Some(&alice),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(other.status, 403);
    // no token at all
    let anon = c.get(&p.url("/datasets/curated/x"), None).await;
    assert_eq!(anon.status, 403);
    assert_eq!(anon.s3_code(), "AccessDenied");
    // a subresource is its own operation, denied unless a rule grants it (alice may read
    // the object, not its ACL)
    let acl = c.get(&p.url("/datasets/curated/x?acl"), Some(&alice)).await;
    assert_eq!(acl.status, 403);
    assert_eq!(acl.s3_code(), "AccessDenied");
    assert!(acl.text().contains("s3:GetObjectAcl"), "{}", acl.text());

    assert_eq!(s3.requests(), before, "a refused request reached the upstream");
    let audit = p.audit(5).await;
    assert_eq!(audit.len(), 5);
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["reason"], "policy");
    assert!(audit[0]["rule"].as_str().unwrap().contains("deny[0]"));
    assert_eq!(audit[1]["identity"]["roles"], json!(["analyst"]));
    assert!(audit[1]["rule"].is_null());
    assert_eq!(audit[3]["reason"], "missing");
    assert_eq!(audit[4]["reason"], "policy");
    assert_eq!(audit[4]["action"], "s3:GetObjectAcl");
    for r in &audit {
        assert!(r["upstream_status"].is_null());
    }
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "claimgate_requests_total", &[("decision", "deny")]),
        4.0
    );
    assert_eq!(
        metric(&m, "claimgate_auth_failures_total", &[("reason", "missing")]),
        1.0
    );
}

#[tokio::test]
async fn terse_denials_say_only_access_denied() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .server_lines("verbose_denials = false")
        .start()
        .await;
    let bob = idp.token("bob", &["analysts"]);
    let r = p
        .client
        .request(
            "PUT",
            &p.url("/datasets/curated/x"),
            Some(&bob),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(
        r.text().contains("<Message>Access Denied</Message>"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("analyst"));
}

#[tokio::test]
async fn a_100_mib_object_streams_both_ways() {
    use http_body_util::BodyExt;
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    const MIB: usize = 1 << 20;
    let chunk = Bytes::from((0..MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..100)
        .map(|_| Ok(http_body::Frame::data(chunk.clone())))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed();
    let req = http::Request::put(p.url("/datasets/big.bin"))
        .header("authorization", format!("Bearer {t}"))
        .header("content-length", (100 * MIB).to_string())
        .body(body)
        .unwrap();
    let put = p.client.send(req).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        std::fs::metadata(s3.path("datasets", "big.bin")).unwrap().len(),
        (100 * MIB) as u64
    );

    let get = p.client.get(&p.url("/datasets/big.bin"), Some(&t)).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.body.len(), 100 * MIB);
    assert!(get.body.chunks(MIB).all(|c| c == &chunk[..]));
    let audit = p.audit(2).await;
    assert_eq!(audit[0]["bytes_in"], 100 * MIB);
    assert_eq!(audit[1]["bytes_out"], 100 * MIB);
}

#[tokio::test]
async fn tls_listener_serves_http1_and_http2() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).tls().start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let put = p
        .client
        .request(
            "PUT",
            &p.url("/datasets/tls.txt"),
            Some(&t),
            Bytes::from_static(b"secure"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let req = http::Request::get(p.url("/datasets/tls.txt"))
        .version(http::Version::HTTP_2)
        .header("authorization", format!("Bearer {t}"))
        .body(full(Bytes::new()))
        .unwrap();
    let get = p.client.send(req).await;
    assert_eq!(get.status, 200);
    assert_eq!(&get.body[..], b"secure");
}

#[tokio::test]
async fn secrets_never_reach_the_audit_log_or_error_bodies() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let r = p.client.get(&p.url("/datasets/pii/x"), Some(&t)).await;
    assert!(!r.text().contains(&t));
    let presigned =
        "/datasets/a?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=deadbeefcafe&X-Amz-Credential=AKIAX";
    let r = p.client.get(&p.url(presigned), None).await;
    assert!(!r.text().contains("deadbeefcafe"));
    p.client.get(&p.url("/datasets/curated/ok"), Some(&t)).await;
    p.audit(3).await;
    let raw = p.audit_raw();
    let sig = t.rsplit('.').next().unwrap();
    for secret in [t.as_str(), sig, S3_SECRET_KEY, "deadbeefcafe"] {
        assert!(!raw.contains(secret), "audit log contains a secret");
    }
}

#[tokio::test]
async fn graceful_shutdown_flushes_the_audit_log() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    for i in 0..20 {
        p.client.get(&p.url(&format!("/datasets/k{i}")), Some(&t)).await;
    }
    let audit = p.audit.clone();
    let addr = p.addr;
    p.shutdown().await;
    let lines = String::from_utf8(audit.0.lock().unwrap().clone()).unwrap();
    assert_eq!(lines.lines().count(), 20);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_502_bad_gateway_with_a_metric() {
    let idp = TestIdp::start().await;
    let mut s3 = TestS3::start(&["datasets"]).await;
    // a port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    s3.url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let r = p.client.get(&p.url("/datasets/x"), Some(&t)).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.s3_code(), "BadGateway");
    let audit = p.audit(1).await;
    assert_eq!(audit[0]["reason"], "upstream_unreachable");
    assert_eq!(audit[0]["decision"], "allow");
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "claimgate_upstream_errors_total", &[("kind", "connect")]),
        1.0
    );
}

#[tokio::test]
async fn virtual_hosted_buckets_are_forwarded_to_the_bucket_that_was_authorized() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets", "private"]).await;
    std::fs::write(s3.path("private", "secrets.csv"), b"do not leak").unwrap();
    std::fs::create_dir_all(s3.path("datasets", "imagenet")).unwrap();
    std::fs::write(s3.path("datasets", "imagenet/0001.tar"), b"tensor").unwrap();
    let p = proxy(&idp, &s3)
        .server_lines("public_host = \"s3.test\"")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let vhost = |path: &str| {
        http::Request::get(p.url(path))
            .header("host", "datasets.s3.test")
            .header("authorization", format!("Bearer {t}"))
            .body(full(Bytes::new()))
            .unwrap()
    };
    let ok = p.client.send(vhost("/imagenet/0001.tar")).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(&ok.body[..], b"tensor");
    // authorized as s3://datasets/private/secrets.csv, so it must read *that* key, not
    // bucket `private`
    let trick = p.client.send(vhost("/private/secrets.csv")).await;
    assert_eq!(trick.status, 404, "{}", trick.text());
    assert!(!trick.text().contains("do not leak"));
    let list = p.client.send(vhost("/?list-type=2&prefix=imagenet/")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("imagenet/0001.tar"));
    assert!(!list.text().contains("<Name>private</Name>"));
    let audit = p.audit(3).await;
    assert_eq!(audit[1]["resource"], "s3://datasets/private/secrets.csv");
    assert_eq!(audit[2]["operation"], "ListObjectsV2");
}

#[tokio::test]
async fn a_client_that_hangs_up_before_the_answer_still_leaves_an_audit_record() {
    use tokio::io::AsyncWriteExt;
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    // a PUT that promises a body and never sends it, then hangs up
    let mut conn = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let head = format!(
        "PUT /datasets/partial HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\ncontent-length: 1000\r\n\r\nabc"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(conn);
    let audit = p.audit(1).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["operation"], "PutObject");
    assert_eq!(audit[0]["decision"], "allow");
    // either the upstream saw the broken upload (IncompleteBody) or the request was
    // dropped before any answer (499); never blamed on the upstream
    let reason = audit[0]["reason"].as_str().unwrap();
    assert!(
        ["incomplete_body", "client_closed"].contains(&reason),
        "{}",
        audit[0]
    );
    let m = p.metrics().await;
    assert_eq!(metric(&m, "claimgate_upstream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn an_upstream_refusing_our_credentials_is_a_502_that_leaks_nothing_of_the_signature() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .files(&[("upstream.secret", "not-the-right-secret\n")])
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let r = p.client.get(&p.url("/datasets/x"), Some(&t)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.s3_code(), "BadGateway");
    assert!(r.text().contains("SignatureDoesNotMatch"));
    for leak in [
        "StringToSign",
        "SignatureProvided",
        "CanonicalRequest",
        S3_ACCESS_KEY,
    ] {
        assert!(!r.text().contains(leak), "{leak} leaked: {}", r.text());
    }
    let audit = p.audit(1).await;
    assert_eq!(audit[0]["reason"], "upstream_refused_credentials");
    assert_eq!(audit[0]["upstream_status"], 403);
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "claimgate_upstream_errors_total", &[("kind", "auth")]),
        1.0
    );
    // an ordinary upstream error (no such key) still passes through
    let ok = proxy(&idp, &s3).start().await;
    let missing = ok.client.get(&ok.url("/datasets/nope"), Some(&t)).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.s3_code(), "NoSuchKey");
}

#[tokio::test]
async fn multipart_uploads_work_on_the_bearer_path() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;
    let tag = |xml: &str, name: &str| {
        xml.split(&format!("<{name}>"))
            .nth(1)
            .and_then(|r| r.split(&format!("</{name}>")).next())
            .unwrap()
            .to_string()
    };
    let create = c
        .request(
            "POST",
            &p.url("/datasets/mp/model.bin?uploads"),
            Some(&t),
            Bytes::new(),
        )
        .await;
    assert_eq!(create.status, 200, "{}", create.text());
    let upload = tag(&create.text(), "UploadId");
    let part1 = Bytes::from(vec![7u8; 5 << 20]);
    let part2 = Bytes::from_static(b"tail");
    let mut etags = Vec::new();
    for (n, body) in [(1, part1.clone()), (2, part2.clone())] {
        let r = c
            .request(
                "PUT",
                &p.url(&format!(
                    "/datasets/mp/model.bin?partNumber={n}&uploadId={upload}"
                )),
                Some(&t),
                body,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        etags.push(r.headers["etag"].to_str().unwrap().to_string());
    }
    let parts = c
        .get(
            &p.url(&format!("/datasets/mp/model.bin?uploadId={upload}")),
            Some(&t),
        )
        .await;
    assert_eq!(parts.status, 200, "{}", parts.text());
    // authorized and forwarded; s3s-fs itself does not implement ListMultipartUploads, so
    // its own 501 comes back (the audit below shows it reached the upstream)
    let uploads = c.get(&p.url("/datasets?uploads"), Some(&t)).await;
    assert!(
        uploads.status == 200 || uploads.text().contains("ListMultipartUploads is not implemented"),
        "{}",
        uploads.text()
    );
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{}</ETag></Part><Part><PartNumber>2</PartNumber><ETag>{}</ETag></Part></CompleteMultipartUpload>",
        etags[0], etags[1]
    );
    let done = c
        .request(
            "POST",
            &p.url(&format!("/datasets/mp/model.bin?uploadId={upload}")),
            Some(&t),
            Bytes::from(complete),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let got = c.get(&p.url("/datasets/mp/model.bin"), Some(&t)).await;
    assert_eq!(got.body.len(), part1.len() + part2.len());

    // an abandoned upload is aborted
    let create = c
        .request(
            "POST",
            &p.url("/datasets/mp/abandoned?uploads"),
            Some(&t),
            Bytes::new(),
        )
        .await;
    let upload = tag(&create.text(), "UploadId");
    let abort = c
        .request(
            "DELETE",
            &p.url(&format!("/datasets/mp/abandoned?uploadId={upload}")),
            Some(&t),
            Bytes::new(),
        )
        .await;
    assert_eq!(abort.status, 204, "{}", abort.text());

    let audit = p.audit(9).await;
    assert!(
        audit[4]["upstream_status"].is_u64(),
        "ListMultipartUploads was not forwarded"
    );
    let ops: Vec<String> = audit
        .iter()
        .map(|r| r["operation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "CreateMultipartUpload",
            "UploadPart",
            "UploadPart",
            "ListParts",
            "ListMultipartUploads",
            "CompleteMultipartUpload",
            "GetObject",
            "CreateMultipartUpload",
            "AbortMultipartUpload"
        ]
    );
}

#[tokio::test]
async fn delete_objects_is_authorized_key_by_key_from_its_body() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    for k in ["a.bin", "b.bin", "pii/users.csv"] {
        std::fs::create_dir_all(s3.path("datasets", k).parent().unwrap()).unwrap();
        std::fs::write(s3.path("datasets", k), b"x").unwrap();
    }
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let delete = |keys: &[&str]| {
        let objects: String = keys
            .iter()
            .map(|k| format!("<Object><Key>{k}</Key></Object>"))
            .collect();
        let body = format!(
            "<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{objects}<Quiet>false</Quiet></Delete>"
        );
        http::Request::post(p.url("/datasets?delete"))
            .header("authorization", format!("Bearer {t}"))
            .header("content-type", "application/xml")
            .body(full(Bytes::from(body)))
            .unwrap()
    };
    let before = s3.requests();
    // one forbidden key refuses the whole request
    let r = p.client.send(delete(&["a.bin", "pii/users.csv"])).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("s3://datasets/pii/users.csv"), "{}", r.text());
    assert_eq!(s3.requests(), before);
    assert!(s3.path("datasets", "a.bin").exists());
    // a body that is not the expected XML is refused before the upstream
    let mut bad = delete(&["a.bin"]);
    *bad.body_mut() = full(Bytes::from_static(
        b"<Delete><Object><Key>a.bin</Key></Object><Bucket>x</Bucket></Delete>",
    ));
    let r = p.client.send(bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.s3_code(), "MalformedXML");
    // all allowed: forwarded as read, and the store deletes them
    let r = p.client.send(delete(&["a.bin", "b.bin"])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!s3.path("datasets", "a.bin").exists() && !s3.path("datasets", "b.bin").exists());
    let audit = p.audit(3).await;
    assert_eq!(audit[2]["operation"], "DeleteObjects");
    assert_eq!(audit[2]["resource"], "s3://datasets/a.bin");
    assert_eq!(
        audit[2]["also"],
        serde_json::json!(["s3:DeleteObject s3://datasets/b.bin"])
    );
}

#[tokio::test]
async fn ocsf_audit_events_carry_the_caller_operation_resource_and_decision() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[audit]\nformat = \"ocsf\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    p.client.get(&p.url("/datasets/curated/ok"), Some(&t)).await;
    p.client.get(&p.url("/datasets/pii/users.csv"), Some(&t)).await;
    let events = p.audit(2).await;
    for e in &events {
        // OCSF 1.3.0 API Activity: the base event's and the class's required attributes
        for path in claimgate::audit::ocsf::REQUIRED {
            assert!(
                e.pointer(path).is_some_and(|v| !v.is_null()),
                "{path} missing in {e}"
            );
        }
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["actor"]["user"]["uid"], "alice");
        assert_eq!(e["api"]["operation"], "GetObject");
    }
    assert_eq!(events[0]["resources"][0]["uid"], "s3://datasets/curated/ok");
    assert_eq!(events[0]["actor"]["authorizations"][0]["decision"], "allow");
    assert_eq!(events[1]["resources"][0]["uid"], "s3://datasets/pii/users.csv");
    assert_eq!(events[1]["actor"]["authorizations"][0]["decision"], "deny");
    assert_eq!(events[1]["status_id"], 2);
    assert!(!p.audit_raw().contains(&t), "the token reached the audit log");
}
