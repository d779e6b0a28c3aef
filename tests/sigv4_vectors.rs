//! claimgate's SigV4 signer against AWS's published test vectors (tests/data/sigv4).
//!
//! The signer runs with S3's rules (single encoding, no path normalization, session token
//! signed), so the cases whose expected output depends on normalizing the path
//! (`*-normalized` with dot segments or repeated slashes) or on an unsigned session token
//! (`post-sts-header-after`) describe other services and are checked to *differ*; every
//! other case must match exactly.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody};
use claimgate::sigv4::canonical_s3_path;
use claimgate::upstream::sign::{Signer, s3_settings, sign_v4};

mod support;
use support::vectors::{Request, not_s3_behaviour, parse_request};

struct Case {
    name: String,
    method: String,
    path_and_query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    context: serde_json::Value,
}

fn load(dir: &Path) -> Case {
    let Request {
        method,
        target: path_and_query,
        headers,
        body,
    } = parse_request(&std::fs::read_to_string(dir.join("request.txt")).unwrap());
    Case {
        name: dir.file_name().unwrap().to_string_lossy().to_string(),
        method,
        path_and_query,
        headers,
        body,
        context: serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap()).unwrap(),
    }
}

fn expected_authorization(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("header-signed-request.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Authorization:").map(str::to_string))
        .unwrap()
}

fn sign_case(case: &Case) -> http::request::Parts {
    let (raw_path, query) = match case.path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (case.path_and_query.clone(), None),
    };
    // The vectors write paths raw (`/example space/`, `/ሴ`); on the wire they arrive
    // percent-encoded, and claimgate forwards the canonical encoding.
    let mut uri = canonical_s3_path(&raw_path);
    if let Some(q) = query {
        let q: String = q
            .split('&')
            .map(|kv| kv.split('=').map(canonical_s3_path).collect::<Vec<_>>().join("="))
            .collect::<Vec<_>>()
            .join("&");
        uri = format!("{uri}?{q}");
    }
    let mut b = http::Request::builder()
        .method(case.method.as_str())
        .uri(format!("https://example.amazonaws.com{uri}"));
    for (n, v) in &case.headers {
        b = b.header(n.as_str(), http::HeaderValue::from_bytes(v.as_bytes()).unwrap());
    }
    let (mut parts, ()) = b.body(()).unwrap().into_parts();
    let c = &case.context["credentials"];
    let creds = Credentials::new(
        c["access_key_id"].as_str().unwrap(),
        c["secret_access_key"].as_str().unwrap(),
        c["token"].as_str().map(str::to_string),
        None,
        "vectors",
    );
    let mut settings = s3_settings();
    // `sign_body`: the body's hash travels (and is signed) as x-amz-content-sha256, as on S3.
    settings.payload_checksum_kind = if case.context["sign_body"] == true {
        PayloadChecksumKind::XAmzSha256
    } else {
        PayloadChecksumKind::NoHeader
    };
    let time = UNIX_EPOCH + Duration::from_secs(1_440_938_160); // 2015-08-30T12:36:00Z
    assert_eq!(case.context["timestamp"], "2015-08-30T12:36:00Z");
    sign_v4(
        &mut parts,
        &Signer {
            credentials: &creds,
            region: case.context["region"].as_str().unwrap(),
            service: case.context["service"].as_str().unwrap(),
            settings,
            signed_headers: |_| true,
        },
        SignableBody::Bytes(&case.body),
        time,
    )
    .unwrap();
    parts
}

#[test]
fn signer_matches_the_published_vectors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4");
    let mut matched = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    dirs.sort_by_key(|e| e.file_name());
    for entry in dirs {
        let dir = entry.path();
        let case = load(&dir);
        let parts = sign_case(&case);
        let got = parts.headers["authorization"].to_str().unwrap().to_string();
        let want = expected_authorization(&dir);
        if not_s3_behaviour(&case.context, &case.path_and_query) {
            assert_ne!(got, want, "{}: S3 rules must differ here", case.name);
            continue;
        }
        assert_eq!(got, want, "{}", case.name);
        if let Some(token) = case.context["credentials"]["token"].as_str() {
            assert_eq!(parts.headers["x-amz-security-token"], token, "{}", case.name);
        }
        matched += 1;
    }
    assert!(matched >= 28, "only {matched} vectors matched");
}
