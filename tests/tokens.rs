//! Bearer token validation over real sockets: each refusal is specific; keys rotate, survive
//! IdP outages, and unknown-kid floods cannot become fetch floods.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use support::*;

async fn list(p: &TestProxy, token: &str) -> Resp {
    p.client.get(&p.url("/datasets?list-type=2"), Some(token)).await
}

#[tokio::test]
async fn every_token_failure_has_its_own_error_reason_and_metric() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("min_refetch = \"1h\"")
        .start()
        .await;
    let rsa = idp.key("rsa-1");
    let stranger = SigningKey::rsa("rsa-1", 1); // same kid, different key
    let now = now();
    let base = idp.claims("alice", &["ml-engineers"]);
    let with = |patch: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(base.to_string())
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &h,
            &base,
            &jsonwebtoken::EncodingKey::from_secret(b"guess").unwrap(),
        )
        .unwrap()
    };
    let mut unknown_kid = stranger.clone();
    unknown_kid.kid = "never-published".into();

    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "expired",
            rsa.sign(&with(json!({"exp": now - 300}))),
            400,
            "ExpiredToken",
            "expired 300 s ago",
        ),
        (
            "not_yet_valid",
            rsa.sign(&with(json!({"nbf": now + 600}))),
            400,
            "InvalidToken",
            "check clock skew between the client and the IdP (off by 6",
        ),
        (
            "wrong_audience",
            rsa.sign(&with(json!({"aud": ["other-app"]}))),
            400,
            "InvalidToken",
            "request a token for audience [\"claimgate\"]",
        ),
        (
            "unknown_issuer",
            rsa.sign(&with(json!({"iss": "https://evil.example"}))),
            400,
            "InvalidToken",
            "not trusted",
        ),
        (
            "unknown_key",
            unknown_kid.sign(&base),
            400,
            "InvalidToken",
            "unknown key \"never-published\"",
        ),
        (
            "bad_signature",
            stranger.sign(&base),
            400,
            "InvalidToken",
            "signature is invalid",
        ),
        (
            "disallowed_algorithm",
            unsigned,
            400,
            "InvalidToken",
            "algorithm \"none\" is not allowed",
        ),
        (
            "disallowed_algorithm",
            hs256,
            400,
            "InvalidToken",
            "algorithm \"HS256\" is not allowed",
        ),
        (
            "malformed",
            "not.a-token".into(),
            400,
            "InvalidToken",
            "malformed token",
        ),
    ];
    let before = s3.requests();
    for (reason, token, status, code, message) in &cases {
        let r = list(&p, token).await;
        assert_eq!(r.status, *status, "{reason}: {}", r.text());
        assert_eq!(r.s3_code(), *code, "{reason}");
        assert!(
            r.text().contains(&message.replace('"', "&quot;")),
            "{reason}: {}",
            r.text()
        );
    }
    assert_eq!(s3.requests(), before, "a bad token reached the upstream");
    let audit = p.audit(cases.len()).await;
    for ((reason, ..), record) in cases.iter().zip(&audit) {
        assert_eq!(record["reason"], *reason);
        assert_eq!(record["decision"], "error");
        assert!(record["identity"].is_null());
    }
    let m = p.metrics().await;
    for reason in [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "unknown_issuer",
        "unknown_key",
        "bad_signature",
        "malformed",
    ] {
        assert_eq!(
            metric(&m, "claimgate_auth_failures_total", &[("reason", reason)]),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            &m,
            "claimgate_auth_failures_total",
            &[("reason", "disallowed_algorithm")]
        ),
        2.0
    );
}

#[tokio::test]
async fn rsa_and_ec_keys_verify_and_repeat_tokens_hit_the_cache() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let rs = idp.token("alice", &["ml-engineers"]);
    let es = idp.key("ec-1").sign(&idp.claims("alice", &["ml-engineers"]));
    for t in [&rs, &es, &rs, &rs] {
        assert_eq!(list(&p, t).await.status, 200);
    }
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "claimgate_token_cache_total", &[("result", "miss")]),
        2.0
    );
    assert_eq!(
        metric(&m, "claimgate_token_cache_total", &[("result", "hit")]),
        2.0
    );
}

#[tokio::test]
async fn key_rotation_at_the_idp_is_picked_up() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("min_refetch = \"0s\"")
        .start()
        .await;
    assert_eq!(list(&p, &idp.token("alice", &["ml-engineers"])).await.status, 200);
    let old_key = idp.key("rsa-1");
    let new = SigningKey::rsa("rsa-2", 2);
    idp.publish(vec![new.clone()]);
    let t = new.sign(&idp.claims("alice", &["ml-engineers"]));
    let r = list(&p, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // the old key is gone from the IdP, so new tokens naming it are refused
    let old = old_key.sign(&idp.claims("carol", &["ml-engineers"]));
    assert_eq!(list(&p, &old).await.s3_code(), "InvalidToken");
}

#[tokio::test]
async fn cached_keys_keep_serving_while_the_idp_is_down() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("min_refetch = \"0s\"")
        .start()
        .await;
    idp.set_down(true);
    // a token never seen before, signed by a key we already hold
    let r = list(&p, &idp.token("alice", &["ml-engineers"])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // an unknown kid makes us try the IdP, fail, and keep the old keys
    let mut other = SigningKey::rsa("rsa-9", 1);
    other.kid = "rsa-9".into();
    assert_eq!(
        list(&p, &other.sign(&idp.claims("x", &[]))).await.s3_code(),
        "InvalidToken"
    );
    assert_eq!(list(&p, &idp.token("bob", &["ml-engineers"])).await.status, 200);
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_jwks_fetches_total", &[("result", "error")]) >= 1.0);
}

#[tokio::test]
async fn a_flood_of_random_kids_causes_at_most_a_handful_of_fetches() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let fetches_before = idp.jwks_fetches();
    let mut key = idp.key("rsa-1");
    let claims = idp.claims("mallory", &["ml-engineers"]);
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            key.kid = format!("random-{i}");
            key.sign(&claims)
        })
        .collect();
    let mut tasks = Vec::new();
    for chunk in tokens.chunks(50) {
        let chunk = chunk.to_vec();
        let client = p.client.clone();
        let url = p.url("/datasets?list-type=2");
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for t in chunk {
                codes.push(client.get(&url, Some(&t)).await.s3_code());
            }
            codes
        }));
    }
    for task in tasks {
        for code in task.await.unwrap() {
            assert_eq!(code, "InvalidToken");
        }
    }
    let fetched = idp.jwks_fetches() - fetches_before;
    assert!(fetched <= 3, "1000 random kids caused {fetched} JWKS fetches");
    assert_eq!(s3.requests(), 0);
}

#[tokio::test]
async fn no_keys_at_all_is_503_and_not_ready_until_the_idp_returns() {
    let idp = TestIdp::start().await;
    idp.set_down(true);
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("min_refetch = \"0s\"")
        .start()
        .await;
    let ready = p.client.get(&format!("{}/readyz", p.admin), None).await;
    assert_eq!(ready.status, 503);
    let t = idp.token("alice", &["ml-engineers"]);
    let r = list(&p, &t).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.s3_code(), "IdentityProviderUnavailable");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_auth_failures_total",
            &[("reason", "keys_unavailable")]
        ),
        1.0
    );

    idp.set_down(false);
    let r = list(&p, &t).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ready = p.client.get(&format!("{}/readyz", p.admin), None).await;
    assert_eq!(ready.status, 200);
    let health = p.client.get(&format!("{}/healthz", p.admin), None).await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    // on-demand fetches are effectively off, so only the background refresh can find the key
    let p = proxy(&idp, &s3)
        .issuer_lines("refresh = \"1s\"\nmin_refetch = \"1h\"")
        .start()
        .await;
    let new = SigningKey::rsa("rsa-2", 2);
    idp.publish(vec![idp.key("rsa-1"), new.clone()]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let r = list(&p, &new.sign(&idp.claims("alice", &["ml-engineers"]))).await;
    assert_eq!(r.status, 200, "{}", r.text());
}
