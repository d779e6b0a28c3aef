//! The STS endpoint: AssumeRoleWithWebIdentity answered in AWS's shapes and codes.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use support::*;

#[tokio::test]
async fn a_member_of_the_role_gets_aws_shaped_credentials() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let r = assume(
        &p,
        &idp.token("alice", &["ml-engineers"]),
        TRAINER,
        &[("DurationSeconds", "900")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = r.text();
    assert!(xml.starts_with(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
    ));
    let ak = element(&xml, "AccessKeyId");
    assert!(ak.starts_with("ASIA") && ak.len() == 20, "{ak}");
    assert_eq!(element(&xml, "SecretAccessKey").len(), 40);
    assert!(element(&xml, "SessionToken").starts_with("CGS1."));
    assert_eq!(element(&xml, "SubjectFromWebIdentityToken"), "alice");
    assert_eq!(element(&xml, "Audience"), AUDIENCE);
    assert_eq!(element(&xml, "Provider"), idp.issuer);
    assert_eq!(
        element(&xml, "Arn"),
        "arn:aws:sts::000000000000:assumed-role/trainer/test-session"
    );
    assert!(element(&xml, "AssumedRoleId").ends_with(":test-session"));
    let exp = humantime::parse_rfc3339(element(&xml, "Expiration")).unwrap();
    let left = exp
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((880..=900).contains(&left), "{left}");
    assert!(!element(&xml, "RequestId").is_empty());
    assert_eq!(s3.requests(), 0);

    let audit = p.audit(1).await;
    assert_eq!(audit[0]["operation"], "AssumeRoleWithWebIdentity");
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["resource"], TRAINER);
    assert_eq!(audit[0]["identity"]["session"], ak);
    assert_eq!(audit[0]["identity"]["roles"], serde_json::json!(["trainer"]));
    let raw = p.audit_raw();
    assert!(!raw.contains(element(&xml, "SecretAccessKey")));
    assert!(!raw.contains(element(&xml, "SessionToken")));
}

#[tokio::test]
async fn refusals_use_sts_codes() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let bob = idp.token("bob", &["analysts"]);
    let expired = idp.key("rsa-1").sign(&{
        let mut c = idp.claims("carol", &["ml-engineers"]);
        c["exp"] = serde_json::json!(now() - 600);
        c
    });
    let cases: Vec<(Resp, u16, &str)> = vec![
        (assume(&p, &bob, TRAINER, &[]).await, 403, "AccessDenied"),
        (
            assume(&p, "not-a-jwt", TRAINER, &[]).await,
            400,
            "InvalidIdentityToken",
        ),
        (
            assume(&p, &expired, TRAINER, &[]).await,
            400,
            "ExpiredTokenException",
        ),
        (
            assume(&p, &alice, "arn:aws:iam::0:user/x", &[]).await,
            400,
            "ValidationError",
        ),
        (
            assume(&p, &alice, TRAINER, &[("DurationSeconds", "100000")]).await,
            400,
            "ValidationError",
        ),
        (
            assume(&p, &alice, "arn:aws:iam::000000000000:role/no-such-role", &[]).await,
            403,
            "AccessDenied",
        ),
    ];
    for (i, (r, status, code)) in cases.iter().enumerate() {
        assert_eq!(r.status, *status, "case {i}: {}", r.text());
        assert!(r.text().contains("<ErrorResponse"), "case {i}: {}", r.text());
        assert_eq!(element(&r.text(), "Code"), *code, "case {i}");
    }
    assert!(
        cases[0]
            .0
            .text()
            .contains("does not hold role trainer (roles held: [analyst])")
    );
    let audit = p.audit(6).await;
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[1]["reason"], "invalid_identity_token");
    assert_eq!(audit[2]["reason"], "expired");
}

#[tokio::test]
async fn a_revoked_subject_gets_no_session_and_no_data() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let revoked = "[[revoked]]\nsubject = \"mallory\"\nreason = \"token leaked in a notebook\"\n";
    let p = proxy(&idp, &s3)
        .files(&[("revoked.toml", revoked)])
        .extra(&format!("{STS}\n[revocations]\nfile = \"revoked.toml\"\n"))
        .start()
        .await;
    let mallory = idp.token("mallory", &["ml-engineers"]);
    let r = assume(&p, &mallory, TRAINER, &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(element(&r.text(), "Code"), "AccessDenied");
    // the STS refusal is counted like any other revoked credential
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "claimgate_auth_failures_total", &[("reason", "revoked")]),
        1.0,
        "{m}"
    );
    let r = p
        .client
        .get(&p.url("/datasets?list-type=2"), Some(&mallory))
        .await;
    assert_eq!(r.status, 403);
    assert!(
        !r.text().contains("notebook"),
        "the reason is for the audit log, not the caller"
    );
    assert_eq!(s3.requests(), 0);
    let audit = p.audit(2).await;
    assert_eq!(audit[1]["reason"], "revoked");
    assert_eq!(audit[1]["detail"], "revoked: token leaked in a notebook");
    // the STS call's record names who was refused, and why
    assert_eq!(audit[0]["identity"]["sub"], "mallory");
    assert_eq!(audit[0]["detail"], "revoked: token leaked in a notebook");
    assert_eq!(audit[1]["identity"]["sub"], "mallory");

    // revoking takes effect on a running proxy when the file changes
    let alice = idp.token("alice", &["ml-engineers"]);
    assert_eq!(
        p.client
            .get(&p.url("/datasets?list-type=2"), Some(&alice))
            .await
            .status,
        200
    );
    std::fs::write(
        p.config_dir().join("revoked.toml"),
        format!("{revoked}\n[[revoked]]\nsubject = \"alice\"\nreason = \"offboarded\"\n"),
    )
    .unwrap();
    let mut status = 200;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = p
            .client
            .get(&p.url("/datasets?list-type=2"), Some(&alice))
            .await
            .status;
        if status == 403 {
            break;
        }
    }
    assert_eq!(status, 403, "the new revocation was not picked up");
}

#[tokio::test]
async fn the_query_form_works_too() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).extra(STS).start().await;
    let q = form(&[
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", TRAINER),
        ("RoleSessionName", "query-form"),
        ("WebIdentityToken", &idp.token("alice", &["ml-engineers"])),
    ]);
    let r = p
        .client
        .get(&p.url(&format!("/?{}", String::from_utf8_lossy(&q))), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(element(&r.text(), "AccessKeyId").starts_with("ASIA"));
}
