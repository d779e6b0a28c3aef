//! Multipart upload ids are bound to the bucket and key they were created for: a caller who
//! learns another user's upload id cannot use it under a key of her own, whatever the store
//! does (s3s-fs ties ids to nothing but claimgate's one route key).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::*;

/// Trainers may run multipart uploads under their own checkpoint prefix only.
const POLICY: &str = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"], resources = ["s3://checkpoints/${sub}/*"] },
  { actions = ["s3:ListBucketMultipartUploads"], resources = ["s3://checkpoints"] },
]
"#;

fn complete_body(etags: &[String]) -> Bytes {
    let parts: String = etags
        .iter()
        .enumerate()
        .map(|(i, e)| format!("<Part><PartNumber>{}</PartNumber><ETag>{e}</ETag></Part>", i + 1))
        .collect();
    Bytes::from(format!(
        "<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>"
    ))
}

#[tokio::test]
async fn another_users_upload_id_is_refused_and_never_reaches_the_store() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["checkpoints"]).await;
    let p = proxy(&idp, &s3).policy(POLICY).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let carol = idp.token("carol", &["ml-engineers"]);
    let c = &p.client;

    // carol starts an upload and sends a part
    let create = c
        .request(
            "POST",
            &p.url("/checkpoints/carol/model.bin?uploads"),
            Some(&carol),
            Bytes::new(),
        )
        .await;
    assert_eq!(create.status, 200, "{}", create.text());
    let carol_id = element(&create.text(), "UploadId").to_string();
    let (carol_store_id, _) = carol_id.rsplit_once('~').expect("the id callers see is tagged");
    let carol_part = c
        .request(
            "PUT",
            &p.url(&format!(
                "/checkpoints/carol/model.bin?partNumber=1&uploadId={carol_id}"
            )),
            Some(&carol),
            Bytes::from_static(b"carol's weights"),
        )
        .await;
    assert_eq!(carol_part.status, 200, "{}", carol_part.text());
    let carol_etag = carol_part.headers["etag"].to_str().unwrap().to_string();

    // alice starts her own, and learns carol's id
    let mine = c
        .request(
            "POST",
            &p.url("/checkpoints/alice/model.bin?uploads"),
            Some(&alice),
            Bytes::new(),
        )
        .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let alice_id = element(&mine.text(), "UploadId").to_string();
    let (_, alice_tag) = alice_id.rsplit_once('~').unwrap();
    let before = s3.requests();

    let key = "/checkpoints/alice/model.bin";
    let mut refused = 0;
    for presented in [
        carol_id.clone(),
        carol_store_id.to_string(),
        format!("{carol_store_id}~{alice_tag}"),
    ] {
        let attempts = [
            (
                "PUT",
                format!("{key}?partNumber=1&uploadId={presented}"),
                Bytes::from_static(b"evil"),
            ),
            (
                "POST",
                format!("{key}?uploadId={presented}"),
                complete_body(std::slice::from_ref(&carol_etag)),
            ),
            ("DELETE", format!("{key}?uploadId={presented}"), Bytes::new()),
            ("GET", format!("{key}?uploadId={presented}"), Bytes::new()),
        ];
        for (method, path, body) in attempts {
            let r = c.request(method, &p.url(&path), Some(&alice), body).await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
            assert_eq!(r.s3_code(), "NoSuchUpload", "{method} {path}");
            assert!(
                r.text().contains("The specified upload does not exist"),
                "{}",
                r.text()
            );
            refused += 1;
        }
        // UploadPartCopy, from an object alice may read
        let req = http::Request::builder()
            .method("PUT")
            .uri(p.url(&format!("{key}?partNumber=1&uploadId={presented}")))
            .header("authorization", format!("Bearer {alice}"))
            .header("x-amz-copy-source", "/checkpoints/alice/src.bin")
            .body(full(Bytes::new()))
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, 404, "UploadPartCopy: {}", r.text());
        assert_eq!(r.s3_code(), "NoSuchUpload");
        refused += 1;
    }
    assert_eq!(s3.requests(), before, "a refused upload id reached the store");

    // every refusal is audited
    let audit = p.audit(4 + refused).await;
    let refusals: Vec<_> = audit.iter().filter(|r| r["reason"] == "no_such_upload").collect();
    assert_eq!(refusals.len(), refused);
    for r in refusals {
        assert_eq!(r["status"], 404);
        assert_eq!(
            r["decision"], "allow",
            "policy allowed the key; the id is what was refused"
        );
        assert!(r["upstream_status"].is_null(), "{r}");
        assert_eq!(r["identity"]["sub"], "alice");
    }

    // carol's upload is untouched: its parts list, and it completes with her data
    let parts = c
        .get(
            &p.url(&format!("/checkpoints/carol/model.bin?uploadId={carol_id}")),
            Some(&carol),
        )
        .await;
    assert_eq!(parts.status, 200, "{}", parts.text());
    assert_eq!(element(&parts.text(), "UploadId"), carol_id);
    assert_eq!(
        parts.headers["content-length"],
        parts.body.len().to_string().as_str()
    );
    let done = c
        .request(
            "POST",
            &p.url(&format!("/checkpoints/carol/model.bin?uploadId={carol_id}")),
            Some(&carol),
            complete_body(&[carol_etag]),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    let got = c.get(&p.url("/checkpoints/carol/model.bin"), Some(&carol)).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], b"carol's weights");

    // alice's own upload works with her own id, start to finish
    let part = c
        .request(
            "PUT",
            &p.url(&format!("{key}?partNumber=1&uploadId={alice_id}")),
            Some(&alice),
            Bytes::from_static(b"alice's weights"),
        )
        .await;
    assert_eq!(part.status, 200, "{}", part.text());
    let etag = part.headers["etag"].to_str().unwrap().to_string();
    let done = c
        .request(
            "POST",
            &p.url(&format!("{key}?uploadId={alice_id}")),
            Some(&alice),
            complete_body(&[etag]),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        std::fs::read(s3.path("checkpoints", "alice/model.bin")).unwrap(),
        b"alice's weights"
    );

    // and an abandoned one aborts with its own id
    let create = c
        .request(
            "POST",
            &p.url("/checkpoints/alice/tmp.bin?uploads"),
            Some(&alice),
            Bytes::new(),
        )
        .await;
    let id = element(&create.text(), "UploadId").to_string();
    let abort = c
        .request(
            "DELETE",
            &p.url(&format!("/checkpoints/alice/tmp.bin?uploadId={id}")),
            Some(&alice),
            Bytes::new(),
        )
        .await;
    assert_eq!(abort.status, 204, "{}", abort.text());
}

/// An upstream that answers ListMultipartUploads with a fixed listing (s3s-fs does not
/// implement it) and 200 to everything else, recording each request's method and query.
struct ListingStore {
    url: String,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl ListingStore {
    async fn start(listing: &'static str) -> ListingStore {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let url = serve_http(move |req| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let _ = body.collect().await;
                let query = parts.uri.query().unwrap_or_default().to_string();
                let list = parts.method == http::Method::GET && query.split('&').any(|p| p == "uploads");
                log.lock().unwrap().push((parts.method.to_string(), query));
                let body = if list { listing } else { "ok" };
                http::Response::new(Full::new(Bytes::from_static(body.as_bytes())))
            }
        })
        .await;
        ListingStore { url, seen }
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn listed_upload_ids_work_only_with_their_own_key() {
    const LISTING: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListMultipartUploadsResult>\
        <Bucket>checkpoints</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
        <NextKeyMarker>carol/x%26y.bin</NextKeyMarker><NextUploadIdMarker>store-c</NextUploadIdMarker>\
        <EncodingType>url</EncodingType><MaxUploads>2</MaxUploads><IsTruncated>true</IsTruncated>\
        <Upload><Key>alice/a+b%26c.bin</Key><UploadId>store-a</UploadId></Upload>\
        <Upload><Key>carol/x%26y.bin</Key><UploadId>store-c</UploadId></Upload>\
        </ListMultipartUploadsResult>";
    let idp = TestIdp::start().await;
    let store = ListingStore::start(LISTING).await;
    let p = proxy_to(&idp, &store.url).policy(POLICY).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;

    let list = c
        .get(
            &p.url("/checkpoints?uploads&encoding-type=url&max-uploads=2"),
            Some(&alice),
        )
        .await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(
        list.headers["content-length"],
        list.body.len().to_string().as_str()
    );
    let xml = list.text();
    let ids: Vec<String> = xml
        .split("<UploadId>")
        .skip(1)
        .map(|r| r.split("</UploadId>").next().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{xml}");
    assert!(
        ids[0].starts_with("store-a~") && ids[1].starts_with("store-c~"),
        "{xml}"
    );
    assert!(
        xml.contains("<Key>alice/a+b%26c.bin</Key>"),
        "keys are passed on as the store wrote them: {xml}"
    );
    let next = element(&xml, "NextUploadIdMarker").to_string();
    assert!(next.starts_with("store-c~"), "{xml}");

    // alice's listed id works with its (decoded) key and reaches the store bare
    let r = c
        .request(
            "PUT",
            &p.url(&format!(
                "/checkpoints/alice/a%20b%26c.bin?partNumber=1&uploadId={}",
                ids[0]
            )),
            Some(&alice),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let last = store.seen().last().cloned().unwrap();
    assert_eq!(last, ("PUT".into(), "partNumber=1&uploadId=store-a".into()));

    // carol's listed id does not work under alice's key, and is not forwarded
    let before = store.seen().len();
    let r = c
        .request(
            "PUT",
            &p.url(&format!(
                "/checkpoints/alice/a%20b%26c.bin?partNumber=1&uploadId={}",
                ids[1]
            )),
            Some(&alice),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.s3_code(), "NoSuchUpload");
    assert_eq!(store.seen().len(), before);

    // the next page: the marker is bound to the key marker it came with
    let r = c
        .get(
            &p.url(&format!(
                "/checkpoints?uploads&encoding-type=url&key-marker=carol%2Fx%26y.bin&upload-id-marker={next}"
            )),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let last = store.seen().last().cloned().unwrap();
    assert_eq!(
        last.1,
        "uploads&encoding-type=url&key-marker=carol%2Fx%26y.bin&upload-id-marker=store-c"
    );
    let before = store.seen().len();
    let r = c
        .get(
            &p.url(&format!(
                "/checkpoints?uploads&key-marker=alice%2Fz&upload-id-marker={next}"
            )),
            Some(&alice),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.s3_code(), "NoSuchUpload");
    assert_eq!(store.seen().len(), before);
}

#[tokio::test]
async fn an_answer_whose_ids_cannot_be_bound_is_a_502() {
    let idp = TestIdp::start().await;
    // The store answers "ok" (not XML) to CreateMultipartUpload: nothing to tag, so nothing
    // untagged may reach the caller.
    let store = ListingStore::start("unused").await;
    let p = proxy_to(&idp, &store.url).policy(POLICY).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let r = p
        .client
        .request(
            "POST",
            &p.url("/checkpoints/alice/m.bin?uploads"),
            Some(&alice),
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 502, "{}", r.text());
    let audit = p.audit(1).await;
    assert_eq!(audit[0]["reason"], "upstream_answer_unreadable");
    assert_eq!(audit[0]["upstream_status"], 200);
}
