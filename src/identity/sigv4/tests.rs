//! The verifier against hand-built requests; the AWS suite is in `tests/sigv4_vectors.rs`.

use super::*;
use http::request::Parts;

use crate::secret::Secret;
use crate::sigv4::{Carrier, canonical_query, canonical_request, parse_amz_date, rfc3339};

const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method("GET").uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The published `get-vanilla` case, header form.
fn vanilla() -> Parts {
    parts(
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
        ],
    )
}

fn vector_opts() -> VerifyOptions {
    VerifyOptions {
        service: "service".into(),
        skew_secs: DEFAULT_SKEW_SECS,
        check_time: true,
        payload: PayloadHash::Body(EMPTY_SHA256.into()),
    }
}

fn with_auth(auth: &str) -> Parts {
    parts(
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", auth),
        ],
    )
}

fn malformed_reason(p: &Parts) -> String {
    match parse(p) {
        Err(SigV4Error::Malformed { reason, .. }) => reason,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn vanilla_parses_and_verifies() {
    let p = vanilla();
    let claim = parse(&p).unwrap().unwrap();
    assert_eq!(claim.access_key_id, "AKIDEXAMPLE");
    assert_eq!(
        claim.credential_scope(),
        "20150830/us-east-1/service/aws4_request"
    );
    assert_eq!(claim.signed_headers, ["host", "x-amz-date"]);
    assert_eq!(claim.request_time, NOW);
    assert!(!claim.is_presigned());
    let canonical = canonical_request(&p, &claim.signed_headers, claim.carrier, EMPTY_SHA256).unwrap();
    assert_eq!(
        String::from_utf8(canonical).unwrap(),
        format!(
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{EMPTY_SHA256}"
        )
    );
    verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
    assert_eq!(
        verify_with(&claim, &p, "wrong", NOW, &vector_opts()),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
}

#[test]
fn no_sigv4_is_none() {
    assert_eq!(parse(&parts("/b/k", &[])), Ok(None));
    assert_eq!(
        parse(&parts("/b/k", &[("authorization", "Bearer x.y.z")])),
        Ok(None)
    );
    assert_eq!(
        parse(&parts("/b/k", &[("authorization", "AWS AKID:sig")])),
        Ok(None)
    );
    assert_eq!(
        parse(&parts("/b/k?AWSAccessKeyId=a&Signature=s&Expires=1", &[])),
        Ok(None)
    );
}

#[test]
fn header_form_parse_errors() {
    let cred = "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request";
    let sig = "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    let sh = "SignedHeaders=host;x-amz-date";
    let cases = [
        (
            format!("AWS4-ECDSA-P256-SHA256 {cred}, {sh}, {sig}"),
            "unsupported algorithm",
        ),
        (format!("AWS4-HMAC-SHA256 {cred}, {sh}"), "missing Signature"),
        (format!("AWS4-HMAC-SHA256 {sh}, {sig}"), "missing Credential"),
        (format!("AWS4-HMAC-SHA256 {cred}, {sig}"), "missing SignedHeaders"),
        (
            format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}, {sig}"),
            "more than once",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}, Foo=bar"),
            "unexpected part",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred} {sh}, {sig}"),
            "missing SignedHeaders",
        ),
        (
            format!("AWS4-HMAC-SHA256{cred}, {sh}, {sig}"),
            "unsupported algorithm \"AWS4-HMAC-SHA256C\"",
        ),
        (
            format!("AWS4-HMAC-SHA256 Credential=AKID/2015083/us-east-1/s3/aws4_request, {sh}, {sig}"),
            "not yyyymmdd",
        ),
        (
            format!("AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws5_request, {sh}, {sig}"),
            "Credential must be",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=x-amz-date;host, {sig}"),
            "sorted",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;host, {sig}"),
            "sorted",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=Host;x-amz-date, {sig}"),
            "lowercase",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=x-amz-date, {sig}"),
            "include host",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, SignedHeaders=host;;x-amz-date, {sig}"),
            "header names",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature=5FA0"),
            "64 lowercase hex",
        ),
        (
            format!("AWS4-HMAC-SHA256 {cred}, {sh}, Signature={}", "A".repeat(64)),
            "64 lowercase hex",
        ),
    ];
    for (auth, want) in cases {
        let reason = malformed_reason(&with_auth(&auth));
        assert!(reason.contains(want), "{auth}: {reason}");
    }
    // Tolerated: no space after commas, several spaces.
    let ok = format!("AWS4-HMAC-SHA256  {cred},{sh},   {sig}");
    assert!(parse(&with_auth(&ok)).unwrap().is_some());

    let auth = format!("AWS4-HMAC-SHA256 {cred}, {sh}, {sig}");
    let no_date = parts("/", &[("host", "h"), ("authorization", &auth)]);
    assert!(malformed_reason(&no_date).contains("missing x-amz-date"));
    for bad in [
        "2015-08-30T12:36:00Z",
        "20150830T123600",
        "20150230T123600Z",
        "20150830T243600Z",
        "19690830T123600Z",
    ] {
        let p = parts(
            "/",
            &[("host", "h"), ("x-amz-date", bad), ("authorization", &auth)],
        );
        assert!(malformed_reason(&p).contains("yyyymmddThhmmssZ"), "{bad}");
    }
    let both = parts(
        "/?X-Amz-Algorithm=AWS4-HMAC-SHA256",
        &[
            ("host", "h"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ],
    );
    assert!(malformed_reason(&both).contains("both"));
    let mut twice = with_auth(&auth);
    twice.headers.append("authorization", auth.parse().unwrap());
    assert!(malformed_reason(&twice).contains("more than one"));
}

const PRESIGNED: &str = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256\
    &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
    &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600\
    &X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d";

#[test]
fn presigned_vanilla_verifies() {
    let p = parts(PRESIGNED, &[("host", "example.amazonaws.com")]);
    let claim = parse(&p).unwrap().unwrap();
    assert!(claim.is_presigned());
    assert_eq!(claim.expires, Some(3600));
    assert_eq!(claim.session_token, None);
    verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
    // S3's presigned payload is UNSIGNED-PAYLOAD, which these (non-S3) vectors did not use.
    let s3_rules = VerifyOptions {
        payload: PayloadHash::S3,
        ..vector_opts()
    };
    assert_eq!(
        verify_with(&claim, &p, SECRET, NOW, &s3_rules),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
}

#[test]
fn presigned_parse_errors() {
    let cases = [
        (
            PRESIGNED.replace("&X-Amz-Expires=3600", ""),
            "missing query parameter X-Amz-Expires",
        ),
        (
            PRESIGNED.replace("&X-Amz-SignedHeaders=host", ""),
            "X-Amz-SignedHeaders",
        ),
        (
            PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=0"),
            "X-Amz-Expires must be",
        ),
        (
            PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
            "X-Amz-Expires must be",
        ),
        (
            PRESIGNED.replace("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
            "X-Amz-Expires must be",
        ),
        (
            format!("{PRESIGNED}&X-Amz-Date=20150830T123600Z"),
            "more than once",
        ),
        (
            PRESIGNED.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
            "unsupported X-Amz-Algorithm",
        ),
        (
            PRESIGNED.replace("%2Fservice", "%2F%2Fservice"),
            "Credential must be",
        ),
        (
            PRESIGNED.replace("X-Amz-Date=20150830T123600Z", "X-Amz-Date=20150830"),
            "yyyymmddThhmmssZ",
        ),
    ];
    for (uri, want) in cases {
        let reason = malformed_reason(&parts(&uri, &[("host", "h")]));
        assert!(reason.contains(want), "{uri}: {reason}");
    }
    // An encoded parameter name is still that parameter.
    let encoded = PRESIGNED.replace("X-Amz-Expires=", "X-Amz-%45xpires=");
    assert_eq!(
        parse(&parts(&encoded, &[("host", "h")]))
            .unwrap()
            .unwrap()
            .expires,
        Some(3600)
    );
    // Session token: the parameter; a differing header is refused.
    let with_token = format!("{PRESIGNED}&X-Amz-Security-Token=tok%2Ben");
    let claim = parse(&parts(&with_token, &[("host", "h")])).unwrap().unwrap();
    assert_eq!(claim.session_token.as_ref().map(Secret::expose), Some("tok+en"));
    let reason = malformed_reason(&parts(
        &with_token,
        &[("host", "h"), ("x-amz-security-token", "other")],
    ));
    assert!(reason.contains("differ"));
}

#[test]
fn header_form_time_window_edges() {
    let p = vanilla();
    let claim = parse(&p).unwrap().unwrap();
    let opts = vector_opts();
    for now in [NOW - 900, NOW, NOW + 900] {
        verify_with(&claim, &p, SECRET, now, &opts).unwrap();
    }
    for now in [NOW - 901, NOW + 901] {
        let err = verify_with(&claim, &p, SECRET, now, &opts).unwrap_err();
        assert!(matches!(err, SigV4Error::RequestTimeTooSkewed { .. }), "{err:?}");
        assert_eq!(err.s3_code(), "RequestTimeTooSkewed");
    }
    let err = verify_with(&claim, &p, SECRET, NOW + 901, &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request time 2015-08-30T12:36:00Z is more than 900 s away from server time \
         2015-08-30T12:51:01Z: fix the client's clock (NTP)"
    );
    let unchecked = VerifyOptions {
        check_time: false,
        ..opts
    };
    verify_with(&claim, &p, SECRET, NOW + 86_400, &unchecked).unwrap();
}

#[test]
fn presigned_time_window_edges() {
    let p = parts(PRESIGNED, &[("host", "example.amazonaws.com")]);
    let claim = parse(&p).unwrap().unwrap();
    let opts = vector_opts();
    for now in [NOW - 900, NOW, NOW + 3600] {
        verify_with(&claim, &p, SECRET, now, &opts).unwrap();
    }
    let early = verify_with(&claim, &p, SECRET, NOW - 901, &opts).unwrap_err();
    assert!(
        matches!(early, SigV4Error::RequestTimeTooSkewed { .. }),
        "{early:?}"
    );
    let late = verify_with(&claim, &p, SECRET, NOW + 3601, &opts).unwrap_err();
    assert_eq!(
        late,
        SigV4Error::PresignedExpired {
            expired_at: "2015-08-30T13:36:00Z".into()
        }
    );
    assert_eq!((late.s3_code(), late.status().as_u16()), ("AccessDenied", 403));
}

#[test]
fn scope_date_and_service_are_checked() {
    let p = vanilla();
    let mut claim = parse(&p).unwrap().unwrap();
    let err = verify(&claim, &p, SECRET, NOW).unwrap_err();
    assert_eq!(
        err,
        SigV4Error::WrongService {
            presigned: false,
            service: "service".into(),
            expected: "s3".into()
        }
    );
    assert_eq!(err.s3_code(), "AuthorizationHeaderMalformed");
    claim.scope_date = "20150831".into();
    let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
    assert!(
        err.to_string().contains("not the date of the request time"),
        "{err}"
    );
}

#[test]
fn unsigned_amz_headers_are_refused() {
    let mut p = vanilla();
    p.headers
        .insert("x-amz-copy-source", "other/key".parse().unwrap());
    p.headers.insert("x-amz-acl", "public-read".parse().unwrap());
    p.headers
        .insert("user-agent", "unsigned is fine".parse().unwrap());
    let claim = parse(&p).unwrap().unwrap();
    let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
    assert_eq!(
        err,
        SigV4Error::HeadersNotSigned {
            headers: "x-amz-acl, x-amz-copy-source".into()
        }
    );
    assert_eq!(err.s3_code(), "AccessDenied");
    // The payload hash is covered by the signature anyway.
    let mut p = vanilla();
    p.headers
        .insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
    verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
    // A presigned URL's x-amz-date header is not the signed X-Amz-Date.
    let p = parts(
        PRESIGNED,
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
    );
    let claim = parse(&p).unwrap().unwrap();
    let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
    assert!(matches!(err, SigV4Error::HeadersNotSigned { .. }), "{err:?}");
}

#[test]
fn s3_payload_rules() {
    let p = vanilla();
    let claim = parse(&p).unwrap().unwrap();
    let s3 = VerifyOptions {
        payload: PayloadHash::S3,
        ..vector_opts()
    };
    assert_eq!(
        verify_with(&claim, &p, SECRET, NOW, &s3),
        Err(SigV4Error::MissingContentSha256)
    );
    let mut p = vanilla();
    p.headers
        .insert("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
    verify_with(&claim, &p, SECRET, NOW, &s3).unwrap();
    p.headers
        .append("x-amz-content-sha256", EMPTY_SHA256.parse().unwrap());
    assert!(matches!(
        verify_with(&claim, &p, SECRET, NOW, &s3),
        Err(SigV4Error::Malformed { .. })
    ));
}

#[test]
fn host_falls_back_to_the_authority() {
    let mut p = vanilla();
    p.headers.remove("host");
    let claim = parse(&p).unwrap().unwrap();
    assert_eq!(
        verify_with(&claim, &p, SECRET, NOW, &vector_opts()),
        Err(SigV4Error::SignatureDoesNotMatch)
    );
    p.version = http::Version::HTTP_2;
    p.uri = "https://example.amazonaws.com/".parse().unwrap();
    verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap();
}

#[test]
fn canonical_query_and_headers() {
    assert_eq!(
        canonical_query("b=2&a=%7e+x&a=1&c&&d=%2f%2F/&X-Amz-Signature=s", Carrier::Header),
        "X-Amz-Signature=s&a=1&a=~%2Bx&b=2&c=&d=%2F%2F%2F"
    );
    assert_eq!(canonical_query("X-Amz-Signature=s&a=1", Carrier::Query), "a=1");
    assert_eq!(canonical_query("X-Amz-%53ignature=s&a=1", Carrier::Query), "a=1");
    assert_eq!(
        canonical_query("%E1%88%B4=bar&Param=Value", Carrier::Header),
        "%E1%88%B4=bar&Param=Value"
    );
}

#[test]
fn dates() {
    assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
    assert_eq!(parse_amz_date("20150830T123600Z"), Some(NOW));
    assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
    assert_eq!(parse_amz_date("21000229T000000Z"), None);
    assert_eq!(parse_amz_date("2015083OT123600Z"), None);
    assert_eq!(parse_amz_date("20150830t123600Z"), None);
    assert_eq!(parse_amz_date("+0150830T123600Z"), None);
    assert_eq!(rfc3339(NOW), "2015-08-30T12:36:00Z");
    assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
}

#[test]
fn errors_never_show_secrets() {
    let p = parts(
        &format!("{PRESIGNED}&X-Amz-Security-Token=SESSIONTOKEN"),
        &[("host", "example.amazonaws.com")],
    );
    let claim = parse(&p).unwrap().unwrap();
    let debug = format!("{claim:?}");
    assert!(
        !debug.contains("e93c787e") && !debug.contains("SESSIONTOKEN"),
        "{debug}"
    );
    let err = verify_with(&claim, &p, SECRET, NOW, &vector_opts()).unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(SECRET) && !shown.contains("e93c787e") && !shown.contains("SESSIONTOKEN"));
    for e in [
        SigV4Error::SignatureDoesNotMatch,
        SigV4Error::MissingContentSha256,
        malformed(Carrier::Query, "x"),
    ] {
        assert!(!e.reason().is_empty() && !e.s3_code().is_empty());
    }
}
