//! Robustness of every parser claimgate wrote itself, on stable Rust: seeded random and
//! mutated inputs (a deterministic xorshift, so a failure reproduces) must produce `Ok` or
//! a typed error — never a panic. Inputs start from valid examples and are mutated byte by
//! byte, spliced and truncated, the way coverage-free fuzzers find edge cases.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::path::{Path, PathBuf};

use claimgate::classify::{RequestTarget, S3Target, classify_http, classify_s3, parse_delete_objects};
use claimgate::identity::jwt::parse_unverified;
use claimgate::identity::post_policy::{FormSignature, PostPolicy};
use claimgate::identity::revocation::RevocationList;
use claimgate::identity::{sigv4, sts};
use claimgate::policy::PolicySet;
use claimgate::upstream::upload_id::{self, Answer, UploadIdBinding};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"%",
    b"%2",
    b"%zz",
    b"%00",
    b"%FF",
    b"\0",
    b"..",
    b"/",
    b"//",
    b"?",
    b"&",
    b"=",
    b"+",
    b"*",
    b"${",
    b"}",
    b"\xff\xfe",
    b"\xe1\x88\xb4",
    b"<",
    b">",
    b"&amp;",
    b"&#0;",
    b"]]>",
    b"\"",
    b"\\",
    b"\r\n",
    b"AWS4-HMAC-SHA256",
    b"Credential=",
    b"SignedHeaders=",
    b"Signature=",
    b",",
    b" ",
    b"[[roles]]",
    b"=[",
    b"9999999999999999999999",
];

/// One mutation of `seed`: flip, insert an interesting token, delete a run, splice, truncate.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let tok = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, tok.iter().copied());
            }
            2 if !v.is_empty() => {
                let end = (at + rng.below(8)).min(v.len());
                v.drain(at.min(end)..end);
            }
            3 if v.len() > 2 => {
                let (a, b) = (rng.below(v.len()), rng.below(v.len()));
                let piece = v[a.min(b)..a.max(b)].to_vec();
                v.splice(at..at, piece);
            }
            _ => v.truncate(at),
        }
    }
    v
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const ROUNDS: usize = 20_000;

#[test]
fn jwt_parsing_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let seed = b"eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcCIsInN1YiI6ImFsaWNlIiwiZXhwIjoxfQ.c2ln";
    for _ in 0..ROUNDS {
        let _ = parse_unverified(&lossy(&mutate(&mut rng, seed)));
    }
}

#[test]
fn s3_and_http_classification_never_panic() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let targets = [
        &b"/datasets/imagenet/train/0001.tar?versionId=v1"[..],
        b"/datasets?list-type=2&prefix=a%2Fb&continuation-token=x",
        b"/b/k?partNumber=1&uploadId=u",
        b"/b/k?uploads",
        b"/b?delete",
    ];
    for _ in 0..ROUNDS {
        let seed = targets[rng.below(targets.len())];
        let raw = mutate(&mut rng, seed);
        let Ok(uri) = http::Uri::try_from(raw.as_slice()) else {
            continue;
        };
        let method = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"][rng.below(6)];
        let mut b = http::Request::builder().method(method).uri(uri);
        if rng.below(3) == 0 {
            let src = lossy(&mutate(&mut rng, b"/src-bucket/a%20b?versionId=3"));
            if let Ok(v) = http::HeaderValue::from_str(&src) {
                b = b.header("x-amz-copy-source", v);
            }
        }
        if rng.below(3) == 0 {
            let host = lossy(&mutate(&mut rng, b"datasets.s3.example.com:8443"));
            if let Ok(v) = http::HeaderValue::from_str(&host) {
                b = b.header("host", v);
            }
        }
        let Ok(req) = b.body(()) else { continue };
        let (parts, ()) = req.into_parts();
        if let Ok(target) = RequestTarget::read(&parts) {
            let _ = classify_s3(
                &parts,
                &target,
                &S3Target {
                    virtual_host: Some("s3.example.com"),
                    ..S3Target::default()
                },
            );
        }
        let _ = classify_http("features", Some("/datasets/"), &parts);
    }
}

#[test]
fn sigv4_parsing_and_verification_never_panic() {
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    let auth = b"AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/20261128/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let query = b"/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIA%2F20261128%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261128T120000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&X-Amz-Signature=abcd&X-Amz-Security-Token=CGS1.x";
    for i in 0..ROUNDS {
        let mut b = http::Request::builder().method("GET");
        if i % 2 == 0 {
            b = b.uri("/b/k").header("host", "localhost");
            if let Ok(v) = http::HeaderValue::from_bytes(&mutate(&mut rng, auth)) {
                b = b.header("authorization", v);
            }
            if let Ok(v) = http::HeaderValue::from_bytes(&mutate(&mut rng, b"20261128T120000Z")) {
                b = b.header("x-amz-date", v);
            }
            b = b.header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
        } else {
            let Ok(uri) = http::Uri::try_from(mutate(&mut rng, query).as_slice()) else {
                continue;
            };
            b = b.uri(uri).header("host", "localhost");
        }
        let Ok(req) = b.body(()) else { continue };
        let (parts, ()) = req.into_parts();
        if let Ok(Some(claim)) = sigv4::parse(&parts) {
            let _ = sigv4::verify(&claim, &parts, "secret", 1_795_000_000);
        }
    }
}

#[test]
fn sts_and_token_endpoint_answers_never_panic() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let sts_ok = br#"<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIA1</AccessKeyId><SecretAccessKey>s/k+</SecretAccessKey><SessionToken>t&amp;t</SessionToken><Expiration>2026-11-29T16:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"#;
    let sts_err = br#"<ErrorResponse><Error><Code>AccessDenied</Code><Message>no &#x41; role</Message></Error></ErrorResponse>"#;
    let token = br#"{"access_token":"eyJ.x.y","token_type":"Bearer","expires_in":3600,"scope":"a b"}"#;
    let token_err = br#"{"error":"invalid_grant","error_description":"subject token expired"}"#;
    for i in 0..ROUNDS {
        let status = [200u16, 400, 403, 500][rng.below(4)];
        let seed: &[u8] = if i % 2 == 0 { sts_ok } else { sts_err };
        let _ = claimgate::credential_process::read_answer(status, &mutate(&mut rng, seed));
        let seed: &[u8] = if i % 2 == 0 { token } else { token_err };
        let status = http::StatusCode::from_u16(status).unwrap();
        if let Ok(t) = claimgate::upstream::oauth::read_answer(status, &mutate(&mut rng, seed)) {
            assert!(t.header.as_bytes().starts_with(b"Bearer "));
        }
    }
}

#[test]
fn delete_objects_xml_parsing_never_panics() {
    let mut rng = Rng(0xE703_7ED1_A0B4_28DB);
    let seed = br#"<?xml version="1.0"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>a&amp;b</Key><VersionId>v</VersionId></Object><Object><Key><![CDATA[c]]></Key></Object><Quiet>true</Quiet></Delete>"#;
    for _ in 0..ROUNDS {
        let _ = parse_delete_objects(&mutate(&mut rng, seed));
    }
}

#[test]
fn upload_id_binding_never_panics() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let binding = UploadIdBinding::from_secret(b"secret");
    // store answers
    let listing = br#"<?xml version="1.0"?><ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker>a%26b</KeyMarker><UploadIdMarker>m1</UploadIdMarker><NextKeyMarker>k</NextKeyMarker><NextUploadIdMarker>n1</NextUploadIdMarker><Upload><Key>a&amp;b</Key><UploadId>u1</UploadId></Upload><Upload><Key><![CDATA[c]]></Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>"#;
    let single = br#"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u&amp;1</UploadId></InitiateMultipartUploadResult>"#;
    for i in 0..ROUNDS {
        let (seed, answer): (&[u8], Answer) = if i % 2 == 0 {
            let url_keys = rng.below(2) == 0;
            (
                &listing[..],
                Answer::Uploads {
                    bucket: "b".into(),
                    url_keys,
                },
            )
        } else {
            (
                &single[..],
                Answer::Single {
                    bucket: "b".into(),
                    key: "k".into(),
                },
            )
        };
        let _ = upload_id::rewrite_answer(&binding, &answer, &mutate(&mut rng, seed));
    }
    // requests: whatever classification lets through is checked without panicking
    let tagged = binding.tag("b", "k", "u1");
    let targets = [
        format!("/b/k?partNumber=1&uploadId={tagged}"),
        format!("/b/k?uploadId={tagged}"),
        format!("/b?uploads&key-marker=k&upload-id-marker={tagged}&encoding-type=url"),
    ];
    for _ in 0..ROUNDS {
        let seed = &targets[rng.below(targets.len())];
        let Ok(mut uri) = http::Uri::try_from(mutate(&mut rng, seed.as_bytes()).as_slice()) else {
            continue;
        };
        let method = ["GET", "PUT", "POST", "DELETE"][rng.below(4)];
        let Ok(req) = http::Request::builder().method(method).uri(uri.clone()).body(()) else {
            continue;
        };
        let (parts, ()) = req.into_parts();
        let Ok(target) = RequestTarget::read(&parts) else {
            continue;
        };
        if let Ok(op) = classify_s3(&parts, &target, &S3Target::default()) {
            let _ = upload_id::unwrap_request(&binding, &op, &mut uri);
        }
    }
}

#[test]
fn sts_parameter_parsing_never_panics() {
    let mut rng = Rng(0x8EBC_6AF0_9C88_C6E3);
    let seed = b"Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A000000000000%3Arole%2Fml%2Ftrainer&RoleSessionName=s-1&WebIdentityToken=eyJ.x.y&DurationSeconds=900";
    for _ in 0..ROUNDS {
        let form = mutate(&mut rng, seed);
        let params: Vec<(String, String)> = url::form_urlencoded::parse(&form)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Ok(req) = sts::parse(&params) {
            let _ = sts::session_length(
                req.duration,
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(43200),
            );
        }
    }
}

#[test]
fn policy_and_revocation_files_never_panic() {
    let mut rng = Rng(0x5851_F42D_4C95_7F2D);
    let policy =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/ml-platform.toml")).unwrap();
    let revoked = b"[[revoked]]\nsubject = \"a\"\nissuer = \"https://i\"\nreason = \"r\"\nuntil = \"2026-12-31T00:00:00Z\"\n\n[[revoked]]\njti = \"j\"\nissuer = \"https://i\"\n";
    for _ in 0..ROUNDS / 4 {
        let src = lossy(&mutate(&mut rng, &policy));
        let _ = PolicySet::from_sources(&[(PathBuf::from("p.toml"), src)], &["features".to_string()]);
        let _ = RevocationList::parse(Path::new("r.toml"), &lossy(&mutate(&mut rng, revoked)));
    }
}

#[tokio::test]
async fn signed_chunk_deframing_never_panics() {
    use bytes::Bytes;
    use claimgate::identity::chunked::{ChunkChain, Trailer, VerifiedChunks};
    use http_body_util::BodyExt;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"k");
    let seed = b"10;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\naaaaaaaaaaaaaaaa\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\nx-amz-checksum-crc32:AAAA\r\nx-amz-trailer-signature:00\r\n\r\n";
    for i in 0..ROUNDS / 4 {
        let body = mutate(&mut rng, seed);
        let split = 1 + rng.below(40);
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = body
            .chunks(split)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let chain = ChunkChain::new(
            key.clone(),
            "20261128T000000Z",
            "20261128/us-east-1/s3/aws4_request",
            "00",
            if i % 2 == 0 {
                Trailer::Signed
            } else {
                Trailer::Absent
            },
        );
        let _ = VerifiedChunks::new(
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)),
            chain,
        )
        .collect()
        .await;
    }
}

/// The canonical-key invariant, as an oracle for mutated paths and copy sources: whatever
/// classification accepts names only keys without `.`, `..` or empty segments, and the path
/// the upstream is sent decodes (once, as S3 decodes) to exactly the key that was authorized.
#[test]
fn accepted_keys_are_canonical_and_forwarded_as_authorized() {
    use claimgate::model::{ResourceKind, S3Address};
    use claimgate::upstream::sign::s3_path;

    /// The oracle, stated as behaviour rather than as a rule: a filesystem store resolving
    /// the key (POSIX `.`/`..`/empty segments, `\\` as a separator, Windows dropping trailing
    /// dots and spaces) must land on the very path the key spells.
    fn canonical(key: &str) -> bool {
        if key.is_empty() {
            return true; // a listing of the whole bucket
        }
        let mut resolved: Vec<&str> = Vec::new();
        for segment in key.split(['/', '\\']) {
            match segment.trim_end_matches(['.', ' ']) {
                _ if segment.is_empty() || segment == "." => {}
                _ if segment == ".." => {
                    resolved.pop();
                }
                "" => return false, // `...`, `. `: Windows resolves these like `.` or `..`
                _ => resolved.push(segment),
            }
        }
        let spelled = key.strip_suffix(['/', '\\']).unwrap_or(key).replace('\\', "/");
        resolved.join("/") == spelled
    }

    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let seeds: &[&[u8]] = &[
        b"/datasets/imagenet/../pii/users.csv",
        b"/datasets/imagenet/%2e%2E/pii/users.csv",
        b"/b0b/a%2F..%2Fb",
        b"/b0b//k",
        b"/b0b/k/",
        b"/b0b/.hidden/..x/%2e.",
        b"/b0b/a%5c..%5cb",
        b"/b0b/caf%C3%A9/x",
    ];
    let sources: &[&[u8]] = &[b"src/a/../b", b"/src/%2e/x", b"src/ok%20key", b"src/a%2F%2E%2E"];
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let seed = seeds[rng.below(seeds.len())];
        let raw = mutate(&mut rng, seed);
        let Ok(uri) = http::Uri::try_from(raw.as_slice()) else {
            continue;
        };
        let method = ["GET", "PUT", "DELETE", "HEAD"][rng.below(4)];
        let mut b = http::Request::builder().method(method).uri(uri);
        if round % 3 == 0 {
            let source = sources[rng.below(sources.len())];
            let src = lossy(&mutate(&mut rng, source));
            if let Ok(v) = http::HeaderValue::from_str(&src) {
                b = b.header("x-amz-copy-source", v);
            }
        }
        let vhost = round % 5 == 0;
        if vhost {
            b = b.header("host", "datasets.s3.example.com");
        }
        let Ok(req) = b.body(()) else { continue };
        let (parts, ()) = req.into_parts();
        let Ok(target) = RequestTarget::read(&parts) else {
            continue;
        };
        let s3 = S3Target {
            virtual_host: Some("s3.example.com"),
            ..S3Target::default()
        };
        let Ok(op) = classify_s3(&parts, &target, &s3) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        for access in op.accesses() {
            if let ResourceKind::S3 { key: Some(key), .. } = access.resource.kind() {
                assert!(
                    canonical(key),
                    "{raw:?}: authorized non-canonical {}",
                    access.resource
                );
            }
        }
        if let Some(S3Address::Object { bucket, key }) = &op.s3 {
            assert_eq!(op.primary().resource, format!("s3://{bucket}/{key}"), "{raw:?}");
            let sent = s3_path(op.s3.as_ref().unwrap());
            let decoded = percent_encoding::percent_decode_str(&sent).decode_utf8().unwrap();
            assert_eq!(
                decoded,
                format!("/{bucket}/{key}"),
                "{raw:?}: forwarded another key"
            );
        }
    }
    assert!(
        accepted > 1000 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}

/// DeleteObjects, differentially: for every mutated body claimgate accepts, the body it
/// forwards reads back — with the store's own XML parser (s3s's) — as exactly the keys and
/// versions claimgate authorized, or not at all (a refused body deletes nothing).
#[test]
fn forwarded_delete_bodies_mean_to_the_store_what_was_authorized() {
    use s3s::xml::{Deserialize, Deserializer};
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let seeds: &[&[u8]] = &[
        br#"<Delete><Object><Key><![CDATA[alice/]]>bob/x</Key></Object><Quiet>true</Quiet></Delete>"#,
        br#"<s3:Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Object><s3:Key>a &amp; b&#9;</s3:Key><s3:VersionId>v1</s3:VersionId></s3:Object></s3:Delete>"#,
        b"<Delete><Object><Key>a\r\nb <!-- c --> d</Key><ETag>\"e\"</ETag><Size>3</Size></Object><Object><Key>x</Key></Object></Delete>",
    ];
    let (mut accepted, mut compared) = (0, 0);
    for _ in 0..ROUNDS {
        let seed = seeds[rng.below(seeds.len())];
        let Ok(list) = parse_delete_objects(&mutate(&mut rng, seed)) else {
            continue;
        };
        accepted += 1;
        let rendered = list.render();
        let mut d = Deserializer::new(rendered.as_bytes());
        // A body the store refuses deletes nothing; one it reads must read as authorized.
        let Ok(theirs) = s3s::dto::Delete::deserialize(&mut d) else {
            continue;
        };
        compared += 1;
        let theirs: Vec<(String, Option<String>)> = theirs
            .objects
            .into_iter()
            .map(|o| (o.key, o.version_id))
            .collect();
        let ours: Vec<(String, Option<String>)> = list
            .keys()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        assert_eq!(ours, theirs, "{rendered}");
    }
    assert!(
        accepted > 500 && compared > accepted / 2,
        "{accepted} accepted, {compared} compared"
    );
}

/// Browser form uploads: the multipart field reader, fed mutated forms whole and in random
/// pieces (both must agree), then what it accepts through classification, the form's SigV4
/// fields and its POST policy. Whatever classification accepts is a canonical key, and the
/// operation names exactly the key the form's `key` field (after `${filename}`) gives.
#[test]
fn form_upload_parsing_never_panics() {
    use base64::Engine as _;
    use claimgate::classify::ClassifyError;
    use claimgate::model::S3Address;

    const FORM_TOKENS: &[&[u8]] = &[
        b"--",
        b"--XbOuNd",
        b"\r\n--XbOuNd\r\n",
        b"\r\n\r\n",
        b"${filename}",
        b"name=\"",
        b"filename=\"",
        b"; ",
        b"Content-Type: ",
        b"name=\"file\"",
        b"name=\"key\"",
        b"/../",
    ];
    let parts = http::Request::post("/bkt")
        .header("content-type", "multipart/form-data; boundary=XbOuNd")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let Err(ClassifyError::FormRequired(pending)) = classify_s3(
        &parts,
        &RequestTarget::read(&parts).unwrap(),
        &S3Target::default(),
    ) else {
        panic!("not classified as a form upload");
    };
    let policy = br#"{"expiration":"2026-11-28T13:00:00Z","conditions":[{"bucket":"bkt"},["starts-with","$key","up/"],["content-length-range",1,10],["eq","$acl","private"],{"x-amz-algorithm":"AWS4-HMAC-SHA256"}]}"#;
    let seed = format!(
        "--XbOuNd\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nup/${{filename}}\r\n\
         --XbOuNd\r\ncontent-disposition: form-data; name=\"acl\"\r\nContent-Type: text/plain\r\n\r\nprivate\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"x-amz-algorithm\"\r\n\r\nAWS4-HMAC-SHA256\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"x-amz-credential\"\r\n\r\nASIAX/20261128/us-east-1/s3/aws4_request\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"x-amz-date\"\r\n\r\n20261128T120000Z\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"policy\"\r\n\r\n{}\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"x-amz-signature\"\r\n\r\n{}\r\n\
         --XbOuNd\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: image/png\r\n\r\n\
         bytes\r\n--XbOuNd--\r\n",
        base64::engine::general_purpose::STANDARD.encode(policy),
        "0".repeat(64),
    );
    let mut rng = Rng(0x3C6E_F372_FE94_F82B);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..ROUNDS {
        let mut body = seed.as_bytes().to_vec();
        if rng.below(3) == 0 {
            let at = rng.below(body.len() + 1);
            let token = FORM_TOKENS[rng.below(FORM_TOKENS.len())];
            body.splice(at..at, token.iter().copied());
        }
        let body = mutate(&mut rng, &body);
        let whole = pending.reader().advance(&body, true);
        let mut reader = pending.reader();
        let mut end = 0;
        let piecewise = loop {
            end = (end + 1 + rng.below(32)).min(body.len());
            match reader.advance(&body[..end], end == body.len()) {
                Ok(None) if end < body.len() => {}
                other => break other,
            }
        };
        assert_eq!(whole, piecewise, "{}", lossy(&body));
        let Ok(Some(form)) = whole else {
            refused += 1;
            continue;
        };
        assert!(form.content_start() <= body.len());
        let _ = FormSignature::read(&form);
        match pending.finish(&form) {
            Ok(op) => {
                accepted += 1;
                let key = form.key();
                let segments: Vec<&str> = key.split(['/', '\\']).collect();
                let last = segments.len() - 1;
                assert!(
                    segments.iter().enumerate().all(|(i, s)| match *s {
                        "." | ".." => false,
                        "" => i == last && i > 0,
                        _ => true,
                    }),
                    "authorized non-canonical {key:?}"
                );
                assert_eq!(op.primary().resource, format!("s3://bkt/{key}"));
                assert_eq!(
                    op.s3,
                    Some(S3Address::FormUpload {
                        bucket: "bkt".into(),
                        key: key.to_owned()
                    })
                );
            }
            Err(_) => refused += 1,
        }
        let mutated = mutate(&mut rng, policy);
        if let Ok(p) = PostPolicy::decode(&base64::engine::general_purpose::STANDARD.encode(&mutated)) {
            let _ = p.check(&form, "bkt", 1_795_867_200);
        }
    }
    eprintln!("form upload fuzzing: {accepted} accepted, {refused} refused");
    assert!(
        accepted > 500 && refused > 500,
        "{accepted} accepted, {refused} refused"
    );
}
