//! The path-traversal bypass, closed: every spelling of a `.`, `..` or empty key segment,
//! from every place a key comes from (path, virtual host, copy source, DeleteObjects body,
//! list prefix, multipart targets), for bearer tokens and STS sessions, is refused before
//! authorization — and the stores' own directories show nothing outside the caller's grant
//! was read, written or deleted.
//!
//! Run against two kinds of store: s3s-fs (what `claimgate dev` runs), which resolves dot
//! segments through its filesystem, and a store that keeps keys literal, as AWS S3 does. On a
//! route that opts into literal dot keys, the key the literal store acts on is byte for byte
//! the key claimgate authorized.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::path::Path;

use bytes::Bytes;
use support::literal_store::LiteralS3;
use support::*;

/// The secret the attacks try to reach: `datasets/pii/users.csv`, denied to trainers.
const CANARY: &[u8] = b"CANARY-pii-row: ada@example.com";
const BUCKETS: [&str; 3] = ["datasets", "checkpoints", "models"];
const VHOST: &str = "s3.claimgate.test";

/// What the suite needs of a store.
trait Store {
    fn url(&self) -> &str;
    fn root(&self) -> &Path;
    fn requests(&self) -> usize;
    /// Puts an object straight into the store's files.
    fn seed(&self, bucket: &str, key: &str, body: &[u8]);
}

impl Store for TestS3 {
    fn url(&self) -> &str {
        &self.url
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn requests(&self) -> usize {
        TestS3::requests(self)
    }
    fn seed(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = self.path(bucket, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

impl Store for LiteralS3 {
    fn url(&self) -> &str {
        &self.url
    }
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn requests(&self) -> usize {
        LiteralS3::requests(self)
    }
    fn seed(&self, bucket: &str, key: &str, body: &[u8]) {
        let path = self.path(bucket, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

fn seed(store: &impl Store) {
    store.seed("datasets", "pii/users.csv", CANARY);
    store.seed("datasets", "imagenet/0001.tar", b"tensor");
    store.seed("checkpoints", "alice/README", b"alice's");
    store.seed("checkpoints", "bob/secret", CANARY);
    store.seed("models", "prod/model.pt", b"production model");
}

/// One attack: method, path, extra headers, body.
struct Attack {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn attack(what: &'static str, method: &'static str, path: &str) -> Attack {
    Attack {
        what,
        method,
        path: path.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Attack {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }
}

/// Every spelling of "from `imagenet/` up one level and into `pii/`".
const UP_INTO_PII: [&str; 12] = [
    "imagenet/../pii/users.csv",
    "./pii/users.csv",
    "imagenet/%2e%2e/pii/users.csv",
    "imagenet/%2E%2E/pii/users.csv",
    "imagenet/.%2e/pii/users.csv",
    "imagenet/%2E./pii/users.csv",
    "imagenet%2F..%2Fpii/users.csv",
    "imagenet/..%2Fpii/users.csv",
    "imagenet%2f%2e%2e%2fpii%2fusers.csv",
    "%2e/pii/users.csv",
    "/pii/users.csv",
    "imagenet%5C..%5Cpii%5Cusers.csv",
];

fn attacks(port: u16) -> Vec<Attack> {
    let mut all = Vec::new();
    for spelling in UP_INTO_PII {
        all.push(attack("read", "GET", &format!("/datasets/{spelling}")));
        all.push(attack("head", "HEAD", &format!("/datasets/{spelling}")));
        all.push(attack("overwrite", "PUT", &format!("/datasets/{spelling}")).body(b"evil"));
        all.push(attack("delete", "DELETE", &format!("/datasets/{spelling}")));
        all.push(
            attack("copy out", "PUT", "/checkpoints/alice/stolen.csv")
                .header("x-amz-copy-source", &format!("datasets/{spelling}")),
        );
        all.push(
            attack("copy out (leading /)", "PUT", "/checkpoints/alice/stolen.csv")
                .header("x-amz-copy-source", &format!("/datasets/{spelling}")),
        );
        all.push(
            attack(
                "part copy out",
                "PUT",
                "/checkpoints/alice/stolen.csv?partNumber=1&uploadId=u1",
            )
            .header("x-amz-copy-source", &format!("datasets/{spelling}")),
        );
        all.push(
            attack("virtual-hosted read", "GET", &format!("/{spelling}"))
                .header("host", &format!("datasets.{VHOST}:{port}")),
        );
        all.push(
            attack("virtual-hosted overwrite", "PUT", &format!("/{spelling}"))
                .header("host", &format!("datasets.{VHOST}:{port}"))
                .body(b"evil"),
        );
    }
    for up in [
        "alice/../../models/prod/model.pt",
        "alice/%2e%2e/%2E%2E/models/prod/model.pt",
        "alice%2F..%2F..%2Fmodels%2Fprod%2Fmodel.pt",
        "alice/../bob/secret",
        "alice//../bob/secret",
    ] {
        all.push(attack("write into another bucket", "PUT", &format!("/checkpoints/{up}")).body(b"evil"));
        all.push(attack(
            "start a multipart upload",
            "POST",
            &format!("/checkpoints/{up}?uploads"),
        ));
        all.push(
            attack(
                "upload a part",
                "PUT",
                &format!("/checkpoints/{up}?partNumber=1&uploadId=u1"),
            )
            .body(b"evil"),
        );
        all.push(attack(
            "complete an upload",
            "POST",
            &format!("/checkpoints/{up}?uploadId=u1"),
        ));
        all.push(attack(
            "abort an upload",
            "DELETE",
            &format!("/checkpoints/{up}?uploadId=u1"),
        ));
        all.push(attack("delete across", "DELETE", &format!("/checkpoints/{up}")));
        all.push(
            attack("copy across", "PUT", "/checkpoints/alice/stolen")
                .header("x-amz-copy-source", &format!("checkpoints/{up}")),
        );
    }
    for key in [
        "alice/../bob/secret",
        "./bob/secret",
        "alice//x",
        "/bob/secret",
        "alice/..",
    ] {
        let xml =
            format!("<Delete><Object><Key>alice/ok</Key></Object><Object><Key>{key}</Key></Object></Delete>");
        all.push(attack("batch delete", "POST", "/checkpoints?delete").body(xml.as_bytes()));
    }
    for prefix in [
        "imagenet/../pii/",
        "imagenet%2F..%2Fpii%2F",
        "%2Fpii%2F",
        "./pii",
        "imagenet/%2e%2e/pii",
    ] {
        all.push(attack(
            "list",
            "GET",
            &format!("/datasets?list-type=2&prefix={prefix}"),
        ));
        all.push(attack("list v1", "GET", &format!("/datasets?prefix={prefix}")));
        all.push(attack(
            "list uploads",
            "GET",
            &format!("/datasets?uploads&prefix={prefix}"),
        ));
        all.push(attack(
            "list versions",
            "GET",
            &format!("/datasets?versions&prefix={prefix}"),
        ));
    }
    all.push(attack("empty segment", "GET", "/datasets//pii/users.csv"));
    all.push(attack(
        "empty segment, encoded",
        "GET",
        "/datasets/%2Fpii/users.csv",
    ));
    all
}

/// Sends every attack as alice (bearer, then an STS session) and checks each is refused with
/// a 400 naming the URI or argument, never returns the canary, never reaches the store, and
/// leaves the store's files exactly as they were.
async fn every_attack_is_refused(store: &impl Store) {
    seed(store);
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, store.url())
        .server_lines(&format!("public_host = \"{VHOST}\""))
        .extra(STS)
        .start()
        .await;
    let token = idp.token("alice", &["ml-engineers"]);
    let creds = session(&p, &token).await;
    let before = snapshot(store.root());
    let requests = store.requests();
    let attacks = attacks(p.addr.port());
    for a in &attacks {
        for via_session in [false, true] {
            let headers: Vec<(&str, &str)> = a.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let req = if via_session {
                session_request(&p, &creds, a.method, &a.path, &headers, &a.body)
            } else {
                let mut b = http::Request::builder()
                    .method(a.method)
                    .uri(p.url(&a.path))
                    .header("authorization", format!("Bearer {token}"));
                for (n, v) in &headers {
                    b = b.header(*n, *v);
                }
                b.body(full(Bytes::from(a.body.clone()))).unwrap()
            };
            let r = p.client.send(req).await;
            let how = if via_session { "session" } else { "bearer" };
            let label = format!("{} ({how}): {} {} {:?}", a.what, a.method, a.path, a.headers);
            assert_eq!(r.status, 400, "{label}: {}", r.text());
            if a.method != "HEAD" {
                let code = r.s3_code();
                assert!(
                    ["InvalidURI", "InvalidArgument"].contains(&code.as_str()),
                    "{label}: {code} {}",
                    r.text()
                );
            }
            assert!(
                !r.body.windows(CANARY.len()).any(|w| w == CANARY),
                "{label}: the canary came back"
            );
        }
    }
    assert_eq!(store.requests(), requests, "an attack reached the store");
    assert_eq!(snapshot(store.root()), before, "the store's files changed");

    // Every refusal is audited, none as an allow.
    let n = attacks.len() * 2;
    let records = p.audit(n + 1).await;
    let refusals: Vec<_> = records.iter().filter(|r| r["route"] == "lake").collect();
    assert_eq!(refusals.len(), n, "one record per attack");
    for r in refusals {
        assert_ne!(r["decision"], "allow", "{r}");
        assert_eq!(r["status"], 400, "{r}");
        assert!(
            ["invalid_uri", "unclassified"].contains(&r["reason"].as_str().unwrap()),
            "{r}"
        );
    }

    // The same proxy still serves what alice may read, from both stores: the refusals above
    // are the key rule, not a broken setup.
    let r = p
        .client
        .get(&p.url("/datasets/imagenet/0001.tar"), Some(&token))
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "tensor"));
    let r = p
        .client
        .get(&p.url("/datasets/pii/users.csv"), Some(&token))
        .await;
    assert_eq!(r.status, 403, "the deny rule the attacks try to walk around");
}

#[tokio::test]
async fn traversal_is_refused_in_front_of_a_store_that_resolves_dot_segments() {
    let store = TestS3::start(&BUCKETS).await;
    every_attack_is_refused(&store).await;
}

#[tokio::test]
async fn traversal_is_refused_in_front_of_a_store_that_keeps_keys_literal() {
    let store = LiteralS3::start(&BUCKETS).await;
    every_attack_is_refused(&store).await;
}

/// `literal_dot_keys = true`: for a store that keeps keys literal, dot segments are forwarded —
/// and the store acts on exactly the key claimgate authorized, never on a resolved one.
#[tokio::test]
async fn literal_dot_keys_reach_a_literal_store_byte_for_byte() {
    let store = LiteralS3::start(&BUCKETS).await;
    seed(&store);
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &store.url)
        .route_lines("literal_dot_keys = true")
        .start()
        .await;
    let token = idp.token("alice", &["ml-engineers"]);
    let before = snapshot(store.root.path());

    // Authorized as the imagenet-side key (not under pii/): the literal store has no such
    // object, so the canary stays where it is.
    let r = p
        .client
        .get(&p.url("/datasets/imagenet/%2e%2e/pii/users.csv"), Some(&token))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(!r.body.windows(CANARY.len()).any(|w| w == CANARY));

    // A write under alice's prefix stays in the checkpoints bucket, under its literal name.
    let key = "alice/../../models/prod/model.pt";
    let r = p
        .client
        .request(
            "PUT",
            &p.url(&format!("/checkpoints/{key}")),
            Some(&token),
            Bytes::from_static(b"mine"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read(store.path("checkpoints", key)).unwrap(), b"mine");
    assert_eq!(
        std::fs::read(store.path("models", "prod/model.pt")).unwrap(),
        b"production model"
    );
    let after = snapshot(store.root.path());
    let changed: Vec<_> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert_eq!(
        changed,
        vec![
            &store
                .path("checkpoints", key)
                .strip_prefix(store.root.path())
                .unwrap()
                .to_path_buf()
        ]
    );

    // What the store acted on is what the audit says was authorized.
    let acted: Vec<String> = store
        .seen()
        .iter()
        .filter(|(op, _, _)| op == "GetObject" || op == "PutObject")
        .map(|(_, bucket, key)| format!("s3://{bucket}/{key}"))
        .collect();
    let records = p.audit(2).await;
    let authorized: Vec<String> = records
        .iter()
        .map(|r| r["resource"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(acted, authorized);
    assert_eq!(
        authorized,
        [
            "s3://datasets/imagenet/../pii/users.csv",
            "s3://checkpoints/alice/../../models/prod/model.pt"
        ]
    );

    // The deny rule still holds for the literal key it names.
    let r = p
        .client
        .get(&p.url("/datasets/pii/users.csv"), Some(&token))
        .await;
    assert_eq!(r.status, 403);
}

/// The default refuses the same requests on the same literal store: the opt-in is what
/// changes, and only on the route that sets it.
#[tokio::test]
async fn literal_dot_keys_are_off_by_default() {
    let store = LiteralS3::start(&BUCKETS).await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &store.url).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let r = p
        .client
        .request(
            "PUT",
            &p.url("/checkpoints/alice/../x"),
            Some(&token),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(
        (r.status, r.s3_code().as_str()),
        (400, "InvalidURI"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("literal_dot_keys"), "{}", r.text());
    assert_eq!(store.requests(), 0);
}

/// For arbitrary paths, claimgate either refuses, or the key it authorized is exactly the key
/// the upstream received (decoded once, as S3 decodes it).
#[tokio::test]
async fn the_authorized_key_is_the_forwarded_key_for_arbitrary_paths() {
    let upstream = Recorder::start().await;
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, &upstream.url).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let pieces = [
        "/",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "a",
        "b",
        "%20",
        "+",
        "%2B",
        "%25",
        "~",
        "%00",
        "é",
        "%C3%A9",
        "%ff",
        ";",
        "*",
        "%3F",
        "!",
        "'",
        "(",
        "%7E",
        "-",
        "_",
        "%",
        "pii",
        "users.csv",
    ];
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let (mut forwarded, mut refused) = (0, 0);
    for _ in 0..400 {
        let len = 1 + next(8);
        let key: String = (0..len).map(|_| pieces[next(pieces.len())]).collect();
        let path = format!("/datasets/{key}");
        let Ok(uri) = http::Uri::try_from(p.url(&path)) else {
            continue;
        };
        let req = http::Request::get(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(full(Bytes::new()));
        let Ok(req) = req else { continue };
        let seen_before = upstream.seen().len();
        let r = p.client.send(req).await;
        let id = r.headers["x-amz-request-id"].to_str().unwrap().to_string();
        let records = p.audit(forwarded + refused + 1).await;
        let record = records.iter().find(|r| r["request_id"] == id.as_str()).unwrap();
        let seen = upstream.seen();
        if seen.len() > seen_before {
            forwarded += 1;
            assert_eq!(r.status, 200, "{path}");
            let got = &seen[seen_before];
            let received = percent_encoding::percent_decode_str(&got.path)
                .decode_utf8()
                .unwrap();
            assert_eq!(
                format!("s3:/{received}"),
                record["resource"].as_str().unwrap(),
                "{path}: authorized one key, forwarded another"
            );
        } else {
            refused += 1;
            assert_ne!(r.status, 200, "{path}");
            assert_ne!(record["decision"], "allow", "{path}: allowed but never forwarded");
        }
    }
    assert!(
        forwarded > 50 && refused > 50,
        "{forwarded} forwarded, {refused} refused"
    );

    // The same for copy sources: the source the upstream is told to read is the one authorized.
    let (mut copied, mut refused_copies) = (0, 0);
    for i in 0..300 {
        let len = 1 + next(6);
        let source: String = (0..len).map(|_| pieces[next(pieces.len())]).collect();
        let Ok(value) = http::HeaderValue::from_str(&format!("datasets/{source}")) else {
            continue;
        };
        let req = http::Request::put(p.url(&format!("/checkpoints/alice/copy-{i}")))
            .header("authorization", format!("Bearer {token}"))
            .header("x-amz-copy-source", value)
            .body(full(Bytes::new()))
            .unwrap();
        let seen_before = upstream.seen().len();
        let r = p.client.send(req).await;
        let id = r.headers["x-amz-request-id"].to_str().unwrap().to_string();
        let records = p.audit(forwarded + refused + copied + refused_copies + 1).await;
        let record = records.iter().find(|r| r["request_id"] == id.as_str()).unwrap();
        let seen = upstream.seen();
        if seen.len() > seen_before {
            copied += 1;
            let header = seen[seen_before].copy_source.clone().unwrap();
            let received = percent_encoding::percent_decode_str(&header)
                .decode_utf8()
                .unwrap();
            let authorized = record["also"][0].as_str().unwrap();
            assert_eq!(format!("s3:GetObject s3:/{received}"), authorized, "{source}");
        } else {
            refused_copies += 1;
            assert_ne!(
                record["decision"], "allow",
                "{source}: allowed but never forwarded"
            );
        }
    }
    assert!(
        copied > 30 && refused_copies > 30,
        "{copied} copied, {refused_copies} refused"
    );
}

/// DeleteObjects bodies whose XML two parsers could read differently (CDATA, references,
/// namespace prefixes, comments): the store deletes exactly the keys claimgate authorized,
/// because what it receives is a body claimgate wrote from them.
async fn delete_bodies_mean_what_was_authorized(store: &impl Store, seen: impl Fn() -> Option<Vec<String>>) {
    seed(store);
    let idp = TestIdp::start().await;
    let p = proxy_to(&idp, store.url()).start().await;
    let token = idp.token("alice", &["ml-engineers"]);
    let before = snapshot(store.root());
    let bodies = [
        "<Delete><Object><Key><![CDATA[imagenet/]]>pii/users.csv</Key></Object></Delete>",
        "<Delete><Object><Key><![CDATA[imagenet/]]>..<![CDATA[x]]>/../pii/users.csv</Key></Object></Delete>",
        "<Delete><Object><Key>imagenet/<!-- hidden -->../pii/users.csv</Key></Object></Delete>",
        "<s3:Delete xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\"><s3:Object><s3:Key>imagenet/x&#47;..&#47;..&#47;pii/users.csv</s3:Key></s3:Object></s3:Delete>",
        "<Delete><Object><Key><![CDATA[imagenet/]]>x</Key></Object><Object><Key>imagenet/y</Key></Object></Delete>",
    ];
    let mut authorized = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let r = p
            .client
            .request(
                "POST",
                &p.url("/datasets?delete"),
                Some(&token),
                Bytes::from(body.to_string()),
            )
            .await;
        let records = p.audit(i + 1).await;
        let record = &records[i];
        if r.status == 200 {
            assert_eq!(record["decision"], "allow", "{body}");
            authorized.push(record["resource"].as_str().unwrap().to_string());
            for also in record["also"].as_array().into_iter().flatten() {
                authorized.push(also.as_str().unwrap().split_once(' ').unwrap().1.to_string());
            }
        } else {
            assert_eq!(r.status, 400, "{body}: {}", r.text());
        }
    }
    assert_eq!(
        snapshot(store.root()),
        before,
        "a file outside alice's grant was deleted"
    );
    assert_eq!(
        authorized,
        [
            "s3://datasets/imagenet/pii/users.csv",
            "s3://datasets/imagenet/x",
            "s3://datasets/imagenet/y"
        ],
        "what was authorized"
    );
    if let Some(deleted) = seen() {
        let deleted: Vec<String> = deleted
            .into_iter()
            .map(|k| format!("s3://datasets/{k}"))
            .collect();
        assert_eq!(deleted, authorized, "what the store was asked to delete");
    }
}

#[tokio::test]
async fn delete_bodies_mean_what_was_authorized_to_a_resolving_store() {
    let store = TestS3::start(&BUCKETS).await;
    delete_bodies_mean_what_was_authorized(&store, || None).await;
}

#[tokio::test]
async fn delete_bodies_mean_what_was_authorized_to_a_literal_store() {
    let store = LiteralS3::start(&BUCKETS).await;
    let deleted = || {
        Some(
            store
                .seen()
                .into_iter()
                .filter(|(op, _, _)| op == "DeleteObjects")
                .map(|(_, _, key)| key)
                .collect(),
        )
    };
    delete_bodies_mean_what_was_authorized(&store, deleted).await;
}
