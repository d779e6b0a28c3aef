//! The two S3 stores security tests run against, each spoken to directly with SigV4:
//! the dev store (`claimgate dev`'s s3s-fs with object tagging and ACLs added) and the
//! literal-key test store (`support::literal_store`), which keeps `a/../b` a key of its own.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::path::Path;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::SignableBody;
use base64::Engine;
use bytes::Bytes;
use s3s::crypto::{Checksum, Md5};
use tokio::net::TcpListener;

use claimgate::model::S3Address;
use claimgate::upstream::sign::{self, s3_path, s3_settings, s3_signed_header, sign_v4};
use support::literal_store::{LiteralS3, NAME_CHUNK, decode_key, encode_key};
use support::{Client, Resp, S3_ACCESS_KEY, S3_SECRET_KEY, full};

/// A client that signs every request as the stores' one account.
struct Signer {
    base: String,
    client: Client,
}

impl Signer {
    fn new(base: &str) -> Signer {
        Signer {
            base: base.to_string(),
            client: Client::new(None),
        }
    }

    /// `path_and_query` is sent as is: build object paths with [`object`].
    async fn send(&self, method: &str, path_and_query: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let host = self.base.split("://").nth(1).unwrap();
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header("host", host);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        let (mut parts, ()) = b.body(()).unwrap().into_parts();
        let creds = Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY, None, None, "test");
        sign_v4(
            &mut parts,
            &sign::Signer {
                credentials: &creds,
                region: "us-east-1",
                service: "s3",
                settings: s3_settings(),
                signed_headers: s3_signed_header,
            },
            SignableBody::Bytes(body),
            SystemTime::now(),
        )
        .unwrap();
        let req = http::Request::from_parts(parts, full(Bytes::copy_from_slice(body)));
        self.client.send(req).await
    }

    async fn put(&self, bucket: &str, key: &str, body: &[u8]) -> Resp {
        self.send("PUT", &object(bucket, key), &[], body).await
    }

    async fn get(&self, bucket: &str, key: &str) -> Resp {
        self.send("GET", &object(bucket, key), &[], b"").await
    }

    /// A sub-resource of an object, such as `?tagging`.
    async fn sub(&self, method: &str, bucket: &str, key: &str, query: &str, body: &[u8]) -> Resp {
        let path = format!("{}?{query}", object(bucket, key));
        let md5 = content_md5(body);
        self.send(method, &path, &[("content-md5", &md5)], body).await
    }
}

/// The path of `bucket`/`key`, each byte of the key reaching the store as written.
fn object(bucket: &str, key: &str) -> String {
    s3_path(&S3Address::Object {
        bucket: bucket.into(),
        key: key.into(),
    })
}

fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::checksum(body))
}

fn tagging_xml(tags: &[(&str, &str)]) -> Vec<u8> {
    let tags: String = tags
        .iter()
        .map(|(k, v)| format!("<Tag><Key>{k}</Key><Value>{v}</Value></Tag>"))
        .collect();
    format!("<Tagging><TagSet>{tags}</TagSet></Tagging>").into_bytes()
}

/// Every text of `<name>` elements in `xml`, in order.
fn elements(xml: &str, name: &str) -> Vec<String> {
    xml.split(&format!("<{name}>"))
        .skip(1)
        .filter_map(|r| r.split(&format!("</{name}>")).next())
        .map(str::to_string)
        .collect()
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

// ------------------------------------------------------------------------------------
// The dev store
// ------------------------------------------------------------------------------------

struct Dev {
    s3: Signer,
    dir: tempfile::TempDir,
}

impl Dev {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
    fn sidecars(&self) -> Vec<String> {
        files(&self.dir.path().join("meta/objects"))
    }
}

async fn dev_store() -> Dev {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/datasets")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    claimgate::dev::store::serve_s3(
        listener,
        &dir.path().join("data"),
        &dir.path().join("meta"),
        S3_ACCESS_KEY,
        S3_SECRET_KEY,
    )
    .await
    .unwrap();
    Dev {
        s3: Signer::new(&url),
        dir,
    }
}

#[tokio::test]
async fn dev_store_tags_and_acls_objects() {
    let dev = dev_store().await;
    let s3 = &dev.s3;
    let key = "runs/7/model.pt";
    assert_eq!(s3.put("datasets", key, b"weights").await.status, 200);
    assert_eq!(s3.get("datasets", key).await.text(), "weights");

    let put = tagging_xml(&[("team", "ml"), ("stage", "raw data")]);
    let r = s3.sub("PUT", "datasets", key, "tagging", &put).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s3.sub("GET", "datasets", key, "tagging", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains(
            "<TagSet><Tag><Key>team</Key><Value>ml</Value></Tag><Tag><Key>stage</Key><Value>raw data</Value></Tag></TagSet>"
        ),
        "{}",
        r.text()
    );
    // Tags live in the sidecar dir, not beside the data.
    assert_eq!(dev.sidecars().len(), 1);

    let r = s3.sub("GET", "datasets", key, "acl", b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = r.text();
    assert!(xml.contains("<AccessControlPolicy"), "{xml}");
    assert!(xml.contains(r#"xsi:type="CanonicalUser""#), "{xml}");
    assert_eq!(elements(&xml, "Permission"), ["FULL_CONTROL"]);
    assert_eq!(elements(&xml, "ID"), ["claimgate-dev", "claimgate-dev"]);

    let r = s3
        .send(
            "PUT",
            &format!("{}?acl", object("datasets", key)),
            &[("x-amz-acl", "public-read")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = s3.sub("GET", "datasets", key, "acl", b"").await.text();
    assert_eq!(elements(&xml, "Permission"), ["FULL_CONTROL", "READ"]);
    assert_eq!(
        elements(&xml, "URI"),
        ["http://acs.amazonaws.com/groups/global/AllUsers"]
    );
    let r = s3
        .send(
            "PUT",
            &format!("{}?acl", object("datasets", key)),
            &[("x-amz-acl", "no-such-acl")],
            b"",
        )
        .await;
    assert_eq!(r.s3_code(), "InvalidArgument", "{}", r.text());

    let r = s3.send("GET", "/datasets?acl", &[], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(elements(&r.text(), "Permission"), ["FULL_CONTROL"]);
    let r = s3.send("GET", "/no-such-bucket?acl", &[], b"").await;
    assert_eq!(r.s3_code(), "NoSuchBucket", "{}", r.text());

    let r = s3.sub("DELETE", "datasets", key, "tagging", b"").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s3.sub("GET", "datasets", key, "tagging", b"").await;
    assert_eq!(elements(&r.text(), "Tag"), Vec::<String>::new(), "{}", r.text());

    for (method, query, body) in [
        ("GET", "tagging", Vec::new()),
        ("PUT", "tagging", tagging_xml(&[("a", "b")])),
        ("DELETE", "tagging", Vec::new()),
        ("GET", "acl", Vec::new()),
    ] {
        let r = s3
            .sub(method, "datasets", "runs/8/missing.pt", query, &body)
            .await;
        assert_eq!(r.status, 404, "{method} ?{query}: {}", r.text());
        assert_eq!(r.s3_code(), "NoSuchKey", "{method} ?{query}");
    }
    let r = s3.sub("GET", "no-such-bucket", key, "tagging", b"").await;
    assert_eq!(r.s3_code(), "NoSuchBucket");
}

#[tokio::test]
async fn dev_store_tags_come_and_go_with_the_object() {
    let dev = dev_store().await;
    let s3 = &dev.s3;
    let tagged = [("x-amz-tagging", "team=ml&run%20id=7")];
    let r = s3
        .send("PUT", &object("datasets", "a.csv"), &tagged, b"1,2")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = s3.sub("GET", "datasets", "a.csv", "tagging", b"").await.text();
    assert_eq!(elements(&xml, "Key"), ["team", "run id"]);

    // CopyObject copies the tags (TaggingDirective COPY is the default) ...
    let r = s3
        .send(
            "PUT",
            &object("datasets", "b.csv"),
            &[("x-amz-copy-source", "datasets/a.csv")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = s3.sub("GET", "datasets", "b.csv", "tagging", b"").await.text();
    assert_eq!(elements(&xml, "Value"), ["ml", "7"]);

    // ... a new write replaces them, and a deleted object loses them.
    assert_eq!(s3.put("datasets", "a.csv", b"3,4").await.status, 200);
    let xml = s3.sub("GET", "datasets", "a.csv", "tagging", b"").await.text();
    assert!(elements(&xml, "Key").is_empty(), "{xml}");
    assert_eq!(dev.sidecars().len(), 1);
    assert_eq!(
        s3.send("DELETE", &object("datasets", "b.csv"), &[], b"")
            .await
            .status,
        204
    );
    assert!(dev.sidecars().is_empty());

    // Multipart: the tags given at creation land on the completed object.
    let r = s3
        .send(
            "POST",
            &format!("{}?uploads", object("datasets", "big.bin")),
            &tagged,
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let upload = support::element(&r.text(), "UploadId").to_string();
    let r = s3
        .send(
            "PUT",
            &format!("{}?partNumber=1&uploadId={upload}", object("datasets", "big.bin")),
            &[],
            b"part one",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let etag = r.headers["etag"].to_str().unwrap().to_string();
    let complete = format!(
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
    );
    let r = s3
        .send(
            "POST",
            &format!("{}?uploadId={upload}", object("datasets", "big.bin")),
            &[],
            complete.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = s3.sub("GET", "datasets", "big.bin", "tagging", b"").await.text();
    assert_eq!(elements(&xml, "Key"), ["team", "run id"]);
    assert!(files(&dev.dir.path().join("meta/uploads")).is_empty());
}

/// s3s-fs resolves dot segments, so `a/../b` is the file of `b`: its tags are `b`'s too,
/// and the sidecar follows the file, never the spelling.
#[tokio::test]
async fn dev_store_tags_belong_to_the_file_s3s_fs_serves() {
    let dev = dev_store().await;
    let s3 = &dev.s3;
    assert_eq!(s3.put("datasets", "a/../b", b"body").await.status, 200);
    assert_eq!(std::fs::read(dev.data().join("datasets/b")).unwrap(), b"body");
    assert!(!dev.data().join("datasets/a").exists());

    let r = s3
        .sub("PUT", "datasets", "b", "tagging", &tagging_xml(&[("k", "v")]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for alias in ["a/../b", "./b", "x//../b", "../datasets/b"] {
        let xml = s3.sub("GET", "datasets", alias, "tagging", b"").await.text();
        assert_eq!(elements(&xml, "Key"), ["k"], "{alias}: {xml}");
    }
    assert_eq!(dev.sidecars().len(), 1);
}

// ------------------------------------------------------------------------------------
// The literal-key store
// ------------------------------------------------------------------------------------

/// Keys a path-mapping store would resolve, collapse or decode again.
const ODD_KEYS: [&str; 8] = ["a/../b", "./x", "a//b", "%2e%2e", "../up", "a/./b", "dir/", "."];

#[test]
fn literal_key_encoding_is_flat_and_reversible() {
    assert_eq!(encode_key("a/../b"), Path::new("a%2F%2E%2E%2Fb"));
    assert_eq!(encode_key("%2e%2e"), Path::new("%252e%252e"));
    assert_eq!(encode_key("Az09_-"), Path::new("Az09_-"));
    let long = "k/".repeat(512);
    let path = encode_key(&long);
    assert!(path.iter().all(|n| n.len() <= NAME_CHUNK + 1));
    assert!(path.iter().count() > 1);
    for key in ODD_KEYS
        .iter()
        .copied()
        .chain(["é ü/\u{1F600}", "~x", long.as_str()])
    {
        let path = encode_key(key);
        assert!(path.iter().all(|n| n != "." && n != ".."), "{key}");
        assert_eq!(decode_key(&path).as_deref(), Some(key));
    }
    // Names the encoding never makes are not keys.
    assert_eq!(decode_key(Path::new(".tmp-1")), None);
    assert_eq!(decode_key(Path::new("a%2fb")), None);
}

#[tokio::test]
async fn literal_store_keeps_every_key_as_written() {
    let store = LiteralS3::start(&["datasets"]).await;
    let s3 = Signer::new(&store.url);
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let r = s3.put("datasets", key, format!("body {i}").as_bytes()).await;
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        // Exactly one file, literally named, holds it.
        assert_eq!(
            std::fs::read(store.path("datasets", key)).unwrap(),
            format!("body {i}").as_bytes()
        );
    }
    let mut sorted = ODD_KEYS.map(str::to_string).to_vec();
    sorted.sort();
    assert_eq!(store.keys("datasets"), sorted);
    assert_eq!(files(store.root.path()), ["datasets"]);
    assert_eq!(files(&store.root.path().join("datasets")).len(), ODD_KEYS.len());
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let r = s3.get("datasets", key).await;
        assert_eq!(r.status, 200, "{key}");
        assert_eq!(r.text(), format!("body {i}"), "{key}");
    }
    assert_eq!(s3.get("datasets", "b").await.s3_code(), "NoSuchKey");
    assert_eq!(s3.get("datasets", "x").await.s3_code(), "NoSuchKey");

    let seen = store.seen();
    for key in ODD_KEYS {
        assert!(
            seen.contains(&("PutObject".into(), "datasets".into(), key.into())),
            "{key}: {seen:?}"
        );
        assert!(
            seen.contains(&("GetObject".into(), "datasets".into(), key.into())),
            "{key}"
        );
    }
    assert_eq!(store.requests(), seen.len());
}

#[tokio::test]
async fn literal_store_lists_copies_and_deletes_literal_keys() {
    let store = LiteralS3::start(&["datasets"]).await;
    let s3 = Signer::new(&store.url);
    for key in ["a/../b", "a//b", "a/c", "a/d/e", "b", "c %2e"] {
        assert_eq!(s3.put("datasets", key, key.as_bytes()).await.status, 200);
    }

    let r = s3
        .send("GET", "/datasets?list-type=2&prefix=a%2F", &[], b"")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bytewise order: `.` (0x2E) sorts before `/` (0x2F).
    assert_eq!(elements(&r.text(), "Key"), ["a/../b", "a//b", "a/c", "a/d/e"]);
    let r = s3
        .send("GET", "/datasets?list-type=2&prefix=a%2F&delimiter=%2F", &[], b"")
        .await;
    assert_eq!(elements(&r.text(), "Key"), ["a/c"]);
    assert_eq!(elements(&r.text(), "Prefix")[1..], ["a/../", "a//", "a/d/"]);
    // Pages: max-keys, then the continuation token.
    let r = s3.send("GET", "/datasets?list-type=2&max-keys=2", &[], b"").await;
    assert_eq!(elements(&r.text(), "Key"), ["a/../b", "a//b"]);
    assert_eq!(elements(&r.text(), "IsTruncated"), ["true"]);
    let token = support::element(&r.text(), "NextContinuationToken").to_string();
    let next = format!(
        "/datasets?list-type=2&max-keys=2&continuation-token={}",
        percent_encoding::utf8_percent_encode(&token, percent_encoding::NON_ALPHANUMERIC)
    );
    let r = s3.send("GET", &next, &[], b"").await;
    assert_eq!(elements(&r.text(), "Key"), ["a/c", "a/d/e"]);
    // encoding-type=url, as botocore asks for it.
    let r = s3
        .send(
            "GET",
            "/datasets?list-type=2&prefix=c&encoding-type=url",
            &[],
            b"",
        )
        .await;
    assert_eq!(elements(&r.text(), "Key"), ["c%20%252e"]);
    // ListObjects (v1).
    let r = s3
        .send("GET", "/datasets?prefix=a%2F&marker=a%2F..%2Fb", &[], b"")
        .await;
    assert_eq!(elements(&r.text(), "Key"), ["a//b", "a/c", "a/d/e"]);

    // CopyObject from a dot key to another: the header is decoded once, like the path.
    let r = s3
        .send(
            "PUT",
            &object("datasets", "./copy"),
            &[("x-amz-copy-source", "datasets/a/../b")],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.get("datasets", "./copy").await.text(), "a/../b");
    let seen = store.seen();
    assert_eq!(
        seen[seen.len() - 3..seen.len() - 1],
        [
            (
                "CopySource".to_string(),
                "datasets".to_string(),
                "a/../b".to_string()
            ),
            (
                "CopyObject".to_string(),
                "datasets".to_string(),
                "./copy".to_string()
            ),
        ]
    );

    assert_eq!(
        s3.send("DELETE", &object("datasets", "a/../b"), &[], b"")
            .await
            .status,
        204
    );
    assert!(store.keys("datasets").contains(&"b".to_string()));
    let delete = b"<Delete><Object><Key>a//b</Key></Object><Object><Key>./copy</Key></Object></Delete>";
    let r = s3
        .send(
            "POST",
            "/datasets?delete",
            &[("content-md5", &content_md5(delete))],
            delete,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(store.keys("datasets"), ["a/c", "a/d/e", "b", "c %2e"]);
    let seen = store.seen();
    assert_eq!(
        seen[seen.len() - 2..],
        [
            (
                "DeleteObjects".to_string(),
                "datasets".to_string(),
                "a//b".to_string()
            ),
            (
                "DeleteObjects".to_string(),
                "datasets".to_string(),
                "./copy".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn literal_store_tags_acls_uploads_and_long_keys() {
    let store = LiteralS3::start(&["datasets"]).await;
    let s3 = Signer::new(&store.url);
    let key = "a/../tagged";
    assert_eq!(s3.put("datasets", key, b"x").await.status, 200);
    let r = s3
        .sub("PUT", "datasets", key, "tagging", &tagging_xml(&[("k", "v")]))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = s3.sub("GET", "datasets", key, "tagging", b"").await.text();
    assert_eq!(elements(&xml, "Key"), ["k"]);
    assert_eq!(
        s3.sub("GET", "datasets", "tagged", "tagging", b"")
            .await
            .s3_code(),
        "NoSuchKey"
    );
    assert_eq!(
        s3.sub("DELETE", "datasets", key, "tagging", b"").await.status,
        204
    );
    let xml = s3.sub("GET", "datasets", key, "tagging", b"").await.text();
    assert!(elements(&xml, "Key").is_empty());
    let xml = s3.sub("GET", "datasets", key, "acl", b"").await.text();
    assert_eq!(elements(&xml, "Permission"), ["FULL_CONTROL"]);

    let long = format!("{}/../x", "seg/".repeat(250));
    let r = s3
        .send(
            "POST",
            &format!("{}?uploads", object("datasets", &long)),
            &[],
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let upload = support::element(&r.text(), "UploadId").to_string();
    let mut parts = String::new();
    for n in 1..=2 {
        let path = format!("{}?partNumber={n}&uploadId={upload}", object("datasets", &long));
        let r = s3.send("PUT", &path, &[], format!("part {n};").as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let etag = r.headers["etag"].to_str().unwrap();
        parts.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    let complete = format!("<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>");
    let path = format!("{}?uploadId={upload}", object("datasets", &long));
    let r = s3.send("POST", &path, &[], complete.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.get("datasets", &long).await.text(), "part 1;part 2;");
    assert_eq!(
        std::fs::read(store.path("datasets", &long)).unwrap(),
        b"part 1;part 2;"
    );
    assert!(store.keys("datasets").contains(&long));
    let ops: Vec<String> = store
        .seen()
        .into_iter()
        .filter(|s| s.2 == long)
        .map(|s| s.0)
        .collect();
    assert_eq!(
        ops,
        [
            "CreateMultipartUpload",
            "UploadPart",
            "UploadPart",
            "CompleteMultipartUpload",
            "GetObject"
        ]
    );
}
