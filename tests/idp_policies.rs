//! The member mappings in `policies/idps/` against tokens of the shape each IdP emits.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::path::Path;

use claimgate::model::{Access, AuthMethod, Identity, Operation, Resource};
use claimgate::policy::PolicySet;
use serde_json::{Value, json};

fn load(file: &str) -> PolicySet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies/idps")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    PolicySet::from_sources(&[(path, text)], &[]).unwrap_or_else(|p| panic!("{p:?}"))
}

fn identity(claims: Value) -> Identity {
    let claims = claims.as_object().unwrap().clone();
    Identity {
        issuer: claims["iss"].as_str().unwrap().to_string(),
        subject: claims["sub"].as_str().unwrap().to_string(),
        claims,
        method: AuthMethod::Bearer,
        token_id: "t".into(),
    }
}

fn put(resource: &str) -> Operation {
    Operation::new(
        "PutObject",
        Access::new("s3:PutObject", Resource::parse(resource)),
    )
}

fn roles(set: &PolicySet, claims: Value) -> Vec<String> {
    set.roles_for(&identity(claims))
        .iter()
        .map(|r| r.name.to_string())
        .collect()
}

#[test]
fn okta_groups_and_client_ids() {
    let set = load("okta.toml");
    let iss = "https://acme.okta.com/oauth2/default";
    assert_eq!(
        roles(
            &set,
            json!({"iss": iss, "sub": "alice@acme.com", "groups": ["ml-engineers", "Everyone"]})
        ),
        ["trainer"]
    );
    assert_eq!(
        roles(
            &set,
            json!({"iss": iss, "sub": "0oa9trainingjobs", "cid": "0oa9trainingjobs"})
        ),
        ["trainer"]
    );
    // same group name from another issuer does not count
    assert!(
        roles(
            &set,
            json!({"iss": "https://evil.okta.com/oauth2/default", "sub": "x", "groups": ["ml-engineers"]})
        )
        .is_empty()
    );
    // `contains` is never a substring match
    assert!(
        roles(
            &set,
            json!({"iss": iss, "sub": "x", "groups": ["ml-engineers-interns"]})
        )
        .is_empty()
    );
}

#[test]
fn entra_id_app_roles_group_guids_and_object_ids() {
    let set = load("entra-id.toml");
    let tid = "11111111-2222-3333-4444-555555555555";
    let v2 = format!("https://login.microsoftonline.com/{tid}/v2.0");
    let v1 = format!("https://sts.windows.net/{tid}/");
    assert_eq!(
        roles(
            &set,
            json!({"iss": v2, "sub": "p", "tid": tid, "roles": ["Data.Train"]})
        ),
        ["trainer"]
    );
    assert!(
        roles(
            &set,
            json!({"iss": v2, "sub": "p", "tid": "another-tenant", "roles": ["Data.Train"]})
        )
        .is_empty()
    );
    assert_eq!(
        roles(
            &set,
            json!({"iss": v1, "sub": "p", "appid": "c", "groups": ["6f1c2c6e-5b5e-4a53-9a0b-3c9d1c0f1e11"]})
        ),
        ["trainer"]
    );
    let sp = json!({"iss": v2, "sub": "p", "tid": tid, "oid": "a1b2c3d4-0000-0000-0000-0000000000aa"});
    assert_eq!(roles(&set, sp.clone()), ["one-service-principal"]);
    let d = set.decide(
        &identity(sp),
        Operation::new(
            "PutObject",
            Access::new(
                "s3:PutObject",
                Resource::parse("s3://checkpoints/a1b2c3d4-0000-0000-0000-0000000000aa/m.pt"),
            ),
        ),
    );
    assert!(d.is_allowed());
}

#[test]
fn keycloak_realm_and_client_roles() {
    let set = load("keycloak.toml");
    let iss = "https://keycloak.acme.internal/realms/ml";
    assert_eq!(
        roles(
            &set,
            json!({"iss": iss, "sub": "u", "realm_access": {"roles": ["ml-train", "offline_access"]}})
        ),
        ["trainer"]
    );
    assert_eq!(
        roles(
            &set,
            json!({"iss": iss, "sub": "u", "resource_access": {"claimgate": {"roles": ["curated-reader"]}}})
        ),
        ["analyst"]
    );
    assert!(
        roles(
            &set,
            json!({"iss": iss, "sub": "u", "resource_access": {"other": {"roles": ["curated-reader"]}}})
        )
        .is_empty()
    );
}

#[test]
fn kubernetes_service_account_tokens() {
    let set = load("kubernetes.toml");
    let iss = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
    let sa = json!({
        "iss": iss, "aud": ["claimgate"], "sub": "system:serviceaccount:training:resnet-trainer",
        "kubernetes.io": {"namespace": "training", "serviceaccount": {"name": "resnet-trainer", "uid": "u"}}
    });
    assert_eq!(roles(&set, sa.clone()), ["trainer"]);
    let own = put("s3://checkpoints/resnet-trainer/step-1.pt");
    assert!(set.decide(&identity(sa.clone()), own).is_allowed());
    let other = put("s3://checkpoints/other/step-1.pt");
    assert!(!set.decide(&identity(sa), other).is_allowed());
    assert!(
        roles(
            &set,
            json!({"iss": "https://other-cluster", "sub": "system:serviceaccount:default:x",
        "kubernetes.io": {"namespace": "default"}})
        )
        .is_empty()
    );
    // a `training` namespace on another cluster gets nothing
    let foreign = json!({"iss": "https://other-cluster", "sub": "system:serviceaccount:training:resnet-trainer",
        "kubernetes.io": {"namespace": "training", "serviceaccount": {"name": "resnet-trainer"}}});
    assert!(roles(&set, foreign).is_empty());
}

#[test]
fn github_actions_pinned_to_repository_branch_and_workflow() {
    let set = load("github-actions.toml");
    let iss = "https://token.actions.githubusercontent.com";
    let main = json!({"iss": iss, "sub": "repo:acme/ml-models:ref:refs/heads/main", "repository": "acme/ml-models",
        "ref": "refs/heads/main", "job_workflow_ref": "acme/ml-models/.github/workflows/train.yml@refs/heads/main"});
    assert_eq!(roles(&set, main.clone()), ["ci-publisher"]);
    let mut pr = main.clone();
    pr["ref"] = json!("refs/pull/7/merge");
    assert!(roles(&set, pr).is_empty());
    let mut fork_workflow = main;
    fork_workflow["job_workflow_ref"] = json!("mallory/x/.github/workflows/train.yml@refs/heads/main");
    assert!(roles(&set, fork_workflow).is_empty());
}

#[test]
fn databricks_service_principals_backed_by_entra_id() {
    let set = load("databricks.toml");
    let tid = "11111111-2222-3333-4444-555555555555";
    let iss = format!("https://login.microsoftonline.com/{tid}/v2.0");
    let sp = "7b0e3b8e-2c55-4a1d-9b7f-0e2f3a4b5c6d";
    assert_eq!(
        roles(&set, json!({"iss": iss, "sub": sp, "tid": tid, "oid": sp})),
        ["trainer"]
    );
    // the same object id from another tenant's issuer is someone else
    let other = "https://login.microsoftonline.com/99999999-2222-3333-4444-555555555555/v2.0";
    assert!(roles(&set, json!({"iss": other, "sub": sp, "tid": tid, "oid": sp})).is_empty());
}
