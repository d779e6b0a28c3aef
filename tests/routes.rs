//! HTTP routes (feature stores) and HTTPS upstreams behind an internal CA.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use bytes::Bytes;
use serde_json::Value;
use support::*;

const FEATURE_POLICY: &str = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["http:POST"], resources = ["http://features/get-online-features"] },
  { actions = ["s3:GetObject", "s3:PutObject"], resources = ["s3://datasets/*"] },
]
"#;

#[tokio::test]
async fn http_routes_strip_the_prefix_swap_the_credential_and_answer_problems_in_json() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let feast = TestHttp::start().await;
    let route = feast.route();
    let p = proxy(&idp, &s3)
        .policy(FEATURE_POLICY)
        .extra(&route)
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let ok = p
        .client
        .request(
            "POST",
            &p.url("/features/get-online-features?debug=1"),
            Some(&t),
            Bytes::from_static(b"{\"entities\":{}}"),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen: Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(seen["path"], "/get-online-features");
    assert_eq!(seen["query"], "debug=1");
    assert_eq!(
        seen["authorization"], "Bearer feast-service-token",
        "the caller's token must be replaced"
    );
    assert_eq!(seen["body"], "{\"entities\":{}}");

    // denied: another path on the same route, and a method not allowed
    let denied = p
        .client
        .request("POST", &p.url("/features/admin/drop"), Some(&t), Bytes::new())
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.headers["content-type"], "application/problem+json");
    let problem: Value = serde_json::from_slice(&denied.body).unwrap();
    assert_eq!(problem["code"], "AccessDenied");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("http:POST on http://features/admin/drop")
    );
    let get = p
        .client
        .get(&p.url("/features/get-online-features"), Some(&t))
        .await;
    assert_eq!(get.status, 403);
    // a path the upstream might normalize into something else is refused before policy
    let sneaky = p
        .client
        .request(
            "POST",
            &p.url("/features/get-online-features/../admin"),
            Some(&t),
            Bytes::new(),
        )
        .await;
    assert_eq!(sneaky.status, 400, "{}", sneaky.text());
    // a bad token on an HTTP route is a 401-style problem with a WWW-Authenticate challenge
    let bad = p
        .client
        .request(
            "POST",
            &p.url("/features/get-online-features"),
            Some("x.y.z"),
            Bytes::new(),
        )
        .await;
    assert_eq!(bad.status, 401);
    assert!(bad.headers.contains_key("www-authenticate"));

    assert_eq!(
        feast.seen().len(),
        1,
        "only the allowed request reached the feature store"
    );
    let audit = p.audit(5).await;
    assert_eq!(audit[0]["route"], "features");
    assert_eq!(audit[0]["action"], "http:POST");
    assert_eq!(audit[0]["resource"], "http://features/get-online-features");
    assert_eq!(audit[0]["decision"], "allow");
}

#[tokio::test]
async fn https_upstream_behind_an_internal_ca() {
    let idp = TestIdp::start().await;
    let (cert, key) = self_signed();
    let s3 = TestS3::start_tls(&["datasets"], &cert, &key).await;
    let builder = proxy(&idp, &s3).route_lines("ca_file = \"upstream-ca.pem\"");
    // the CA file sits beside the config; write it through the extra hook by starting and
    // then checking the failure mode without it first
    let without_ca = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let r = without_ca
        .client
        .get(&without_ca.url("/datasets/x"), Some(&t))
        .await;
    assert_eq!(
        r.status, 502,
        "an upstream with an untrusted certificate must not be used"
    );

    let p = builder.files(&[("upstream-ca.pem", cert.as_str())]).start().await;
    let put = p
        .client
        .request(
            "PUT",
            &p.url("/datasets/over-tls"),
            Some(&t),
            Bytes::from_static(b"tls"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let get = p.client.get(&p.url("/datasets/over-tls"), Some(&t)).await;
    assert_eq!(&get.body[..], b"tls");
}
