//! claimgate's SigV4 *verifier* against AWS's published test vectors (tests/data/sigv4) and
//! against requests signed by aws-sigv4, both ways: every signed request is accepted, and
//! any one-byte change of a signed part (method, path, query, a header, the signature, the
//! date) is refused.
//!
//! The vectors sign with service `service` and hash the body themselves (an empty body for
//! all but the two form-urlencoded cases), in both the header and the presigned form — so
//! they are verified with `PayloadHash::Body`; S3's own rules (`verify`) are exercised with
//! aws-sigv4. Cases that describe behaviour S3 never has — a normalized path, or a session
//! token left out of the signature — must be refused.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_lc_rs::digest;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SignatureLocation, SigningParams, sign,
};
use aws_sigv4::sign::v4;
use claimgate::identity::sigv4::{self, PayloadHash, SigV4Error, VerifyOptions};
use claimgate::sigv4::canonical_s3_path;
use claimgate::upstream::sign::{Signer, s3_settings, s3_signed_header, sign_v4};
use http::request::Parts;

mod support;
use support::vectors::{Request, not_s3_behaviour, parse_request};

/// The vectors' time, 2015-08-30T12:36:00Z.
const VECTOR_NOW: i64 = 1_440_938_160;

struct Case {
    name: String,
    dir: PathBuf,
    /// The unsigned request (its target decides whether the case follows S3's rules).
    request: Request,
    context: serde_json::Value,
}

impl Case {
    fn signed(&self, form: Form) -> Request {
        let file = match form {
            Form::Header => "header-signed-request.txt",
            Form::Query => "query-signed-request.txt",
        };
        parse_request(&std::fs::read_to_string(self.dir.join(file)).unwrap())
    }

    fn credential(&self, key: &str) -> &str {
        self.context["credentials"][key].as_str().unwrap()
    }

    /// Cases describing behaviour S3 (and so claimgate) never has: a normalized path, or a
    /// session token left out of the signature.
    fn not_s3_behaviour(&self) -> bool {
        not_s3_behaviour(&self.context, &self.request.target)
    }

    /// The vectors hash the body in both forms.
    fn opts(&self) -> VerifyOptions {
        VerifyOptions {
            service: "service".into(),
            skew_secs: 900,
            check_time: true,
            payload: PayloadHash::Body(hex::encode(digest::digest(&digest::SHA256, &self.request.body))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Header,
    Query,
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sigv4");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| Case {
            name: dir.file_name().unwrap().to_string_lossy().to_string(),
            request: parse_request(&std::fs::read_to_string(dir.join("request.txt")).unwrap()),
            context: serde_json::from_str(&std::fs::read_to_string(dir.join("context.json")).unwrap())
                .unwrap(),
            dir,
        })
        .collect()
}

/// The vectors write paths and queries raw (`/example space/`, `/ሴ`); on the wire they arrive
/// percent-encoded.
fn wire_target(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = canonical_s3_path(path);
    if let Some(q) = query {
        let q: Vec<String> = q
            .split('&')
            .map(|kv| kv.split('=').map(canonical_s3_path).collect::<Vec<_>>().join("="))
            .collect();
        out = format!("{out}?{}", q.join("&"));
    }
    out
}

/// A request as the server sees it (origin-form target, headers in order); `None` when it
/// could not arrive over HTTP at all.
fn build(method: &str, target: &str, headers: &[(String, String)]) -> Option<Parts> {
    let mut b = http::Request::builder().method(method).uri(target);
    for (n, v) in headers {
        b = b.header(n.as_str(), http::HeaderValue::from_bytes(v.as_bytes()).ok()?);
    }
    b.body(()).ok().map(|r| r.into_parts().0)
}

fn parts_of(req: &Request) -> Parts {
    build(&req.method, &wire_target(&req.target), &req.headers).unwrap()
}

/// The whole authentication as the proxy runs it: parse, find the secret by access key id
/// (only the vector's key is known; the access key id is not itself signed), verify. The
/// session token is left to the signature, which covers it in both forms.
fn authenticate(case: &Case, parts: &Parts, now: i64) -> Result<(), String> {
    let claim = match sigv4::parse(parts) {
        Ok(Some(claim)) => claim,
        Ok(None) => return Err("no SigV4".into()),
        Err(e) => return Err(e.to_string()),
    };
    if claim.access_key_id != case.credential("access_key_id") {
        return Err("unknown access key id".into());
    }
    sigv4::verify_with(
        &claim,
        parts,
        case.credential("secret_access_key"),
        now,
        &case.opts(),
    )
    .map_err(|e| e.to_string())
}

fn verify_case(case: &Case, parts: &Parts, secret: &str, now: i64) -> Result<(), SigV4Error> {
    let claim = sigv4::parse(parts).unwrap().unwrap();
    sigv4::verify_with(&claim, parts, secret, now, &case.opts())
}

fn s3_cases() -> Vec<Case> {
    cases().into_iter().filter(|c| !c.not_s3_behaviour()).collect()
}

#[test]
fn published_vectors_verify_in_both_forms() {
    let mut verified = 0;
    for case in s3_cases() {
        for form in [Form::Header, Form::Query] {
            let parts = parts_of(&case.signed(form));
            let claim = sigv4::parse(&parts).unwrap().unwrap();
            assert_eq!(
                claim.is_presigned(),
                form == Form::Query,
                "{} {form:?}",
                case.name
            );
            assert_eq!(claim.access_key_id, case.credential("access_key_id"));
            assert_eq!(claim.region, "us-east-1");
            authenticate(&case, &parts, VECTOR_NOW).unwrap_or_else(|e| panic!("{} {form:?}: {e}", case.name));
            verified += 1;
        }
        // Where the vector sends x-amz-content-sha256 (sign_body), S3's header rule (that
        // header, verbatim) agrees with hashing the body.
        if case.context["sign_body"] == true {
            let parts = parts_of(&case.signed(Form::Header));
            let claim = sigv4::parse(&parts).unwrap().unwrap();
            let s3_payload = VerifyOptions {
                payload: PayloadHash::S3,
                ..case.opts()
            };
            sigv4::verify_with(
                &claim,
                &parts,
                case.credential("secret_access_key"),
                VECTOR_NOW,
                &s3_payload,
            )
            .unwrap();
        }
    }
    assert_eq!(verified, 62, "31 cases follow S3's rules, each in two forms");
}

/// The replacement for a byte: never equivalent after canonicalization (no case change,
/// no space, no percent-encoding of the same octet).
fn flip(b: u8) -> u8 {
    if b == b'0' { b'1' } else { b'0' }
}

fn flipped(s: &str, i: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[i] = flip(bytes[i]);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn any_one_byte_change_is_refused() {
    let mut refused = 0;
    for case in s3_cases() {
        for form in [Form::Header, Form::Query] {
            let req = case.signed(form);
            let target = wire_target(&req.target);
            let mut check = |what: String, parts: Option<Parts>| {
                let Some(parts) = parts else { return };
                assert!(
                    authenticate(&case, &parts, VECTOR_NOW).is_err(),
                    "{} {form:?}: changing {what} was accepted",
                    case.name
                );
                refused += 1;
            };
            for i in 0..req.method.len() {
                let method = flipped(&req.method, i);
                check(format!("method byte {i}"), build(&method, &target, &req.headers));
            }
            // The path and the query, the presigned parameters and signature included.
            for i in 1..target.len() {
                let t = flipped(&target, i);
                check(
                    format!("target byte {i} ({t})"),
                    build(&req.method, &t, &req.headers),
                );
            }
            // Every header: all are signed, and Authorization carries the signature.
            for (h, (name, value)) in req.headers.iter().enumerate() {
                for i in 0..value.len() {
                    let mut headers = req.headers.clone();
                    headers[h].1 = flipped(value, i);
                    check(format!("{name} byte {i}"), build(&req.method, &target, &headers));
                }
            }
        }
    }
    assert!(refused > 18_000, "only {refused} changes tried");
}

#[test]
fn wrong_secret_and_time_are_refused() {
    for case in s3_cases() {
        let secret = case.credential("secret_access_key");
        let header = parts_of(&case.signed(Form::Header));
        let query = parts_of(&case.signed(Form::Query));
        for parts in [&header, &query] {
            assert_eq!(
                verify_case(&case, parts, &format!("{secret}x"), VECTOR_NOW),
                Err(SigV4Error::SignatureDoesNotMatch),
                "{}",
                case.name
            );
        }

        // Header form: ±15 minutes.
        verify_case(&case, &header, secret, VECTOR_NOW + 15 * 60).unwrap();
        let skewed = verify_case(&case, &header, secret, VECTOR_NOW + 16 * 60).unwrap_err();
        assert_eq!(
            skewed,
            SigV4Error::RequestTimeTooSkewed {
                request_time: "2015-08-30T12:36:00Z".into(),
                server_time: "2015-08-30T12:52:00Z".into(),
                max_skew_secs: 900,
            },
            "{}",
            case.name
        );
        assert_eq!(skewed.s3_code(), "RequestTimeTooSkewed");

        // Presigned: valid until X-Amz-Date + X-Amz-Expires (3600 s), inclusive.
        verify_case(&case, &query, secret, VECTOR_NOW + 3600).unwrap();
        let expired = verify_case(&case, &query, secret, VECTOR_NOW + 3601).unwrap_err();
        assert_eq!(
            expired,
            SigV4Error::PresignedExpired {
                expired_at: "2015-08-30T13:36:00Z".into()
            },
            "{}",
            case.name
        );
        assert_eq!(expired.s3_code(), "AccessDenied");
        let early = verify_case(&case, &query, secret, VECTOR_NOW - 16 * 60).unwrap_err();
        assert!(
            matches!(early, SigV4Error::RequestTimeTooSkewed { .. }),
            "{}",
            case.name
        );
    }
}

#[test]
fn non_s3_vectors_are_refused() {
    let mut refused = 0;
    for case in cases().into_iter().filter(Case::not_s3_behaviour) {
        let secret = case.credential("secret_access_key");
        for form in [Form::Header, Form::Query] {
            let parts = parts_of(&case.signed(form));
            let err = verify_case(&case, &parts, secret, VECTOR_NOW).unwrap_err();
            let want_unsigned_token = case.context["omit_session_token"] == true && form == Form::Header;
            if want_unsigned_token {
                // The token header is present but not signed: S3 says HeadersNotSigned.
                assert_eq!(
                    err,
                    SigV4Error::HeadersNotSigned {
                        headers: "x-amz-security-token".into()
                    },
                    "{}",
                    case.name
                );
            } else {
                // Signed over a normalized path (or without the token in the query).
                assert_eq!(err, SigV4Error::SignatureDoesNotMatch, "{} {form:?}", case.name);
            }
            refused += 1;
        }
    }
    assert_eq!(refused, 14, "7 cases describe other services, each in two forms");
}

const AKID: &str = "ASIACLAIMGATETEST";
const SECRET: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY";
const TOKEN: &str = "sealed-session-token+/=";
/// 2026-01-15T08:00:00Z.
const NOW: i64 = 1_768_464_000;
const OBJECT: &str = "https://claimgate.example.com/datasets/imagenet/train/a%20b%2Bc%21.tar?x-id=GetObject";

fn creds() -> Credentials {
    Credentials::new(AKID, SECRET, Some(TOKEN.to_string()), None, "test")
}

fn time(unix: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap())
}

/// What the server sees of a request signed with an absolute URI: the origin form.
fn as_received(mut parts: Parts) -> Parts {
    parts.uri = parts.uri.path_and_query().unwrap().as_str().parse().unwrap();
    parts
}

fn s3_get() -> Parts {
    let (mut parts, ()) = http::Request::get(OBJECT)
        .header("host", "claimgate.example.com")
        .header("x-amz-meta-run", "exp 42")
        .header("range", "bytes=0-1023")
        .body(())
        .unwrap()
        .into_parts();
    sign_v4(
        &mut parts,
        &Signer {
            credentials: &creds(),
            region: "us-east-1",
            service: "s3",
            settings: s3_settings(),
            signed_headers: s3_signed_header,
        },
        SignableBody::UnsignedPayload,
        time(NOW),
    )
    .unwrap();
    // Added after signing, as a client library or a hop would: not signed, and not S3's.
    parts
        .headers
        .insert("user-agent", "Boto3/1.40 test".parse().unwrap());
    as_received(parts)
}

#[test]
fn aws_sigv4_header_signed_s3_request_verifies() {
    let parts = s3_get();
    let claim = sigv4::parse(&parts).unwrap().unwrap();
    assert_eq!(claim.access_key_id, AKID);
    assert_eq!(claim.service, "s3");
    assert_eq!(claim.session_token.as_ref().map(|t| t.expose()), Some(TOKEN));
    assert!(!claim.is_presigned());
    assert!(claim.signed_headers.iter().any(|h| h == "x-amz-security-token"));
    sigv4::verify(&claim, &parts, SECRET, NOW).unwrap();
    sigv4::verify(&claim, &parts, SECRET, NOW - 900).unwrap();

    assert_eq!(
        sigv4::verify(&claim, &parts, "another session's secret", NOW),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    let skewed = sigv4::verify(&claim, &parts, SECRET, NOW + 16 * 60).unwrap_err();
    assert_eq!(
        skewed.to_string(),
        "request time 2026-01-15T08:00:00Z is more than 900 s away from server time 2026-01-15T08:16:00Z: \
         fix the client's clock (NTP)"
    );

    // An x-amz-* header injected after signing would be re-signed for the upstream: refused.
    let mut injected = s3_get();
    injected
        .headers
        .insert("x-amz-copy-source", "secrets/keys.tar".parse().unwrap());
    assert_eq!(
        sigv4::verify(&claim, &injected, SECRET, NOW),
        Err(SigV4Error::HeadersNotSigned {
            headers: "x-amz-copy-source".into()
        })
    );
    // A signed header changed in flight; an unsigned one (claimgate's signer leaves `range`
    // out) may change.
    let mut changed = s3_get();
    changed
        .headers
        .insert("x-amz-meta-run", "exp 43".parse().unwrap());
    assert_eq!(
        sigv4::verify(&claim, &changed, SECRET, NOW),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    let mut ranged = s3_get();
    ranged.headers.insert("range", "bytes=0-1024".parse().unwrap());
    sigv4::verify(&claim, &ranged, SECRET, NOW).unwrap();
}

#[test]
fn aws_sigv4_request_without_content_sha256_is_refused() {
    let (mut parts, ()) = http::Request::get(OBJECT)
        .header("host", "claimgate.example.com")
        .body(())
        .unwrap()
        .into_parts();
    let mut settings = s3_settings();
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    sign_v4(
        &mut parts,
        &Signer {
            credentials: &creds(),
            region: "us-east-1",
            service: "s3",
            settings,
            signed_headers: s3_signed_header,
        },
        SignableBody::UnsignedPayload,
        time(NOW),
    )
    .unwrap();
    let parts = as_received(parts);
    let claim = sigv4::parse(&parts).unwrap().unwrap();
    let err = sigv4::verify(&claim, &parts, SECRET, NOW).unwrap_err();
    assert_eq!(err, SigV4Error::MissingContentSha256);
    assert_eq!((err.s3_code(), err.status().as_u16()), ("InvalidRequest", 400));
}

/// A presigned GET URL made by aws-sigv4, fetched with plain HTTP (only `Host`).
fn presigned_get(expires_in: u64) -> Parts {
    let identity = creds().into();
    let mut settings = s3_settings();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(expires_in));
    let params: SigningParams<'_> = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("s3")
        .time(time(NOW))
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let mut request = http::Request::get(OBJECT)
        .header("host", "claimgate.example.com")
        .body(())
        .unwrap();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let signable = SignableRequest::new(
        "GET",
        OBJECT,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::UnsignedPayload,
    )
    .unwrap();
    let (instructions, _signature) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut request);
    as_received(request.into_parts().0)
}

#[test]
fn aws_sigv4_presigned_url_verifies() {
    let parts = presigned_get(900);
    assert!(parts.uri.query().unwrap().contains("X-Amz-Security-Token="));
    let claim = sigv4::parse(&parts).unwrap().unwrap();
    assert!(claim.is_presigned());
    assert_eq!(claim.expires, Some(900));
    assert_eq!(claim.region, "eu-west-1");
    assert_eq!(claim.session_token.as_ref().map(|t| t.expose()), Some(TOKEN));
    sigv4::verify(&claim, &parts, SECRET, NOW).unwrap();
    sigv4::verify(&claim, &parts, SECRET, NOW + 900).unwrap();
    assert_eq!(
        sigv4::verify(&claim, &parts, SECRET, NOW + 901),
        Err(SigV4Error::PresignedExpired {
            expired_at: "2026-01-15T08:15:00Z".into()
        })
    );
    assert_eq!(
        sigv4::verify(&claim, &parts, "another session's secret", NOW),
        Err(SigV4Error::SignatureDoesNotMatch)
    );

    // The longest lifetime S3 allows still verifies, a week later.
    let week = presigned_get(604_800);
    let claim = sigv4::parse(&week).unwrap().unwrap();
    sigv4::verify(&claim, &week, SECRET, NOW + 604_800).unwrap();

    // A path or parameter changed after presigning.
    let tampered = presigned_get(900);
    let uri = tampered.uri.to_string();
    for (from, to) in [
        ("a%20b", "a%20c"),
        ("x-id=GetObject", "x-id=PutObject"),
        ("Expires=900", "Expires=901"),
    ] {
        let mut p = presigned_get(900);
        p.uri = uri.replace(from, to).parse().unwrap();
        let claim = sigv4::parse(&p).unwrap().unwrap();
        assert_eq!(
            sigv4::verify(&claim, &p, SECRET, NOW),
            Err(SigV4Error::SignatureDoesNotMatch),
            "{from} -> {to}"
        );
    }
    // A payload hash sent along with a URL presigned for UNSIGNED-PAYLOAD does not match
    // (S3 behaves the same).
    let mut p = presigned_get(900);
    p.headers.insert(
        "x-amz-content-sha256",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap(),
    );
    let claim = sigv4::parse(&p).unwrap().unwrap();
    assert_eq!(
        sigv4::verify(&claim, &p, SECRET, NOW),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
}
