//! Shadow mode for safe rollout: decisions computed and audited as would_allow / would_deny,
//! not enforced — per role, per policy file, or for the whole proxy.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use bytes::Bytes;
use support::*;

const POLICY: &str = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [ { actions = ["s3:GetObject", "s3:PutObject"], resources = ["s3://datasets/*"] } ]
deny = [ { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] } ]

[[roles]]
name = "new-analyst"
mode = "shadow"
members = [ { claim = "groups", contains = "analysts" } ]
allow = [ { actions = ["s3:GetObject"], resources = ["s3://datasets/curated/*"] } ]
"#;

#[tokio::test]
async fn a_shadow_role_is_audited_but_not_enforced() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    std::fs::create_dir_all(s3.path("datasets", "curated")).unwrap();
    std::fs::write(s3.path("datasets", "curated/a.csv"), b"a").unwrap();
    let p = proxy(&idp, &s3).policy(POLICY).start().await;
    let bob = idp.token("bob", &["analysts"]);
    let before = s3.requests();
    // the shadow role would allow it, but it is not enforced: still denied
    let r = p.client.get(&p.url("/datasets/curated/a.csv"), Some(&bob)).await;
    assert_eq!(r.status, 403);
    assert_eq!(s3.requests(), before);
    // ... and a request it would refuse is refused anyway, audited as would_deny
    p.client.get(&p.url("/datasets/raw/b.csv"), Some(&bob)).await;
    let audit = p.audit(2).await;
    assert_eq!(audit[0]["decision"], "deny");
    assert_eq!(audit[0]["shadow"]["outcome"], "would_allow");
    assert!(
        audit[0]["shadow"]["rule"]
            .as_str()
            .unwrap()
            .contains("new-analyst allow[0]")
    );
    assert_eq!(audit[1]["shadow"]["outcome"], "would_deny");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_shadow_decisions_total",
            &[("outcome", "would_allow")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "claimgate_shadow_decisions_total",
            &[("outcome", "would_deny")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_shadow_policy_file_covers_all_its_roles() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let file = format!("mode = \"shadow\"\n{}", POLICY.replace("mode = \"shadow\"\n", ""));
    let p = proxy(&idp, &s3).policy(&file).start().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let r = p
        .client
        .request(
            "PUT",
            &p.url("/datasets/x"),
            Some(&alice),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(
        r.status, 403,
        "a shadow file enforces nothing, so nothing allows it either"
    );
    let audit = p.audit(1).await;
    assert_eq!(audit[0]["shadow"]["outcome"], "would_allow");
}

#[tokio::test]
async fn the_whole_proxy_in_shadow_mode_forwards_and_records_what_it_would_deny() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    std::fs::create_dir_all(s3.path("datasets", "pii")).unwrap();
    std::fs::write(s3.path("datasets", "pii/users.csv"), b"pii").unwrap();
    let p = proxy(&idp, &s3)
        .policy(POLICY)
        .policies_lines("mode = \"shadow\"")
        .start()
        .await;
    let alice = idp.token("alice", &["ml-engineers"]);
    // denied by the policy, forwarded anyway: an existing job keeps working during rollout
    let r = p
        .client
        .get(&p.url("/datasets/pii/users.csv"), Some(&alice))
        .await;
    assert_eq!(r.status, 200);
    let ok = p
        .client
        .get(&p.url("/datasets/pii/users.csv"), Some(&alice))
        .await;
    assert_eq!(&ok.body[..], b"pii");
    // authentication is never shadowed
    let anon = p.client.get(&p.url("/datasets/pii/users.csv"), None).await;
    assert_eq!(anon.status, 403);
    let audit = p.audit(3).await;
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["shadow"]["outcome"], "would_deny");
    assert!(
        audit[0]["shadow"]["rule"]
            .as_str()
            .unwrap()
            .contains("trainer deny[0]")
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_shadow_decisions_total",
            &[("outcome", "would_deny")]
        ),
        2.0
    );
}
