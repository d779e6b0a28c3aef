//! The audit record as an OCSF API Activity event (class 6003, OCSF 1.3.0).
//!
//! SIEMs and Amazon Security Lake ingest OCSF without a mapping of their own, so
//! `[audit] format = "ocsf"` writes each record in that shape: the caller as `actor.user`,
//! the S3 or HTTP operation as `api.operation`, the bucket/key or path as `resources[]`, the
//! decision as `actor.authorizations[]` and `status_id`. What OCSF has no attribute for
//! (the deciding rule's file, bytes, the refusal reason, the token id) goes to `unmapped`
//! under claimgate's own names, so nothing the JSON record holds is lost.
//!
//! The event never holds more than the record: no token, signature or secret.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use super::{AuditDecision, AuditRecord};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// API Activity.
const CLASS_UID: u64 = 6003;
/// Application Activity.
const CATEGORY_UID: u64 = 6;

/// The attributes OCSF 1.3.0 requires of an API Activity event: the base event's
/// (`activity_id`, `category_uid`, `class_uid`, `metadata` with `product` and `version`,
/// `severity_id`, `time`, `type_uid`) and the class's own (`actor`, `api` with
/// `operation`, `src_endpoint`).
pub const REQUIRED: &[&str] = &[
    "/activity_id",
    "/category_uid",
    "/class_uid",
    "/metadata/product/name",
    "/metadata/product/vendor_name",
    "/metadata/version",
    "/severity_id",
    "/time",
    "/type_uid",
    "/actor",
    "/api/operation",
    "/src_endpoint",
];

/// `activity_id` of API Activity: 1 Create, 2 Read, 3 Update, 4 Delete, 99 Other.
fn activity(record: &AuditRecord) -> (u64, &'static str) {
    let op = record.operation.unwrap_or_default();
    let is = |prefixes: &[&str]| prefixes.iter().any(|p| op.starts_with(p));
    if is(&["Delete", "AbortMultipartUpload"]) {
        (4, "Delete")
    } else if is(&["Put", "Copy", "UploadPart", "Restore"]) && op != "PutObject" {
        // a new part, tag set or copy changes what is there; PutObject below creates
        (3, "Update")
    } else if is(&[
        "PutObject",
        "CreateMultipartUpload",
        "CompleteMultipartUpload",
        "CreateBucket",
        "PostObject",
        "AssumeRole",
    ]) {
        (1, "Create")
    } else if is(&["Get", "Head", "List", "Select"]) {
        (2, "Read")
    } else {
        match record.method.as_str() {
            "GET" | "HEAD" => (2, "Read"),
            "POST" => (1, "Create"),
            "PUT" | "PATCH" => (3, "Update"),
            "DELETE" => (4, "Delete"),
            _ => (99, "Other"),
        }
    }
}

/// The `http_method` values OCSF 1.3.0 defines.
const HTTP_METHODS: [&str; 8] = [
    "OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT",
];

/// OCSF 1.3.0's `email_t`: `^[a-zA-Z0-9!#$%&'*+-/=?^_`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$`
/// (in the local part, `+-/` is a range: `+ , - . /`).
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+,-./=?^_`{|}~".contains(c));
    let Some((label, rest)) = domain.split_once('.') else {
        return false;
    };
    let label_ok = !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let rest_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    local_ok && label_ok && rest_ok
}

/// The event for `record`.
pub fn event(record: &AuditRecord) -> Value {
    let (activity_id, activity_name) = activity(record);
    let time = humantime::parse_rfc3339(&record.time)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let success = record.status < 400;
    let (severity_id, severity) = match record.decision {
        AuditDecision::Deny => (2, "Low"),
        AuditDecision::Allow | AuditDecision::Error if record.status >= 500 => (3, "Medium"),
        _ => (1, "Informational"),
    };

    // `email_addr` is typed (OCSF's email_t): a claim that is no address goes to `unmapped`
    // rather than make the event invalid.
    let email = record.identity.as_ref().and_then(|i| i.email.as_deref());
    let email_ok = email.is_some_and(is_email);
    let mut actor = Map::new();
    match &record.identity {
        Some(id) => {
            let mut user = Map::new();
            user.insert("uid".into(), json!(id.sub));
            user.insert("type".into(), json!("User"));
            user.insert("type_id".into(), json!(1));
            if let Some(email) = email.filter(|_| email_ok) {
                user.insert("email_addr".into(), json!(email));
            }
            if !id.roles.is_empty() {
                user.insert(
                    "groups".into(),
                    Value::Array(id.roles.iter().map(|r| json!({ "name": r })).collect()),
                );
            }
            actor.insert("user".into(), Value::Object(user));
            actor.insert("idp".into(), json!({ "name": id.iss, "uid": id.iss }));
            let mut session = Map::new();
            session.insert("issuer".into(), json!(id.iss));
            if let Some(s) = &id.session {
                session.insert("uid".into(), json!(s));
            }
            actor.insert("session".into(), Value::Object(session));
            if let Some(c) = &id.client_id {
                actor.insert("app_name".into(), json!(c));
            }
        }
        None => {
            actor.insert(
                "user".into(),
                json!({ "name": "unauthenticated", "type": "Unknown", "type_id": 0 }),
            );
        }
    }
    let decision = match record.decision {
        AuditDecision::Allow => "allow",
        AuditDecision::Deny => "deny",
        AuditDecision::Error => "none",
    };
    let mut authorization = Map::new();
    authorization.insert("decision".into(), json!(decision));
    if let Some(rule) = &record.rule {
        authorization.insert("policy".into(), json!({ "name": rule }));
    }
    actor.insert(
        "authorizations".into(),
        Value::Array(vec![Value::Object(authorization)]),
    );

    let mut resources: Vec<Value> = Vec::new();
    let mut push_resource = |action: Option<&str>, uid: &str| {
        let kind = if uid.starts_with("s3://") {
            "S3"
        } else if uid.starts_with("arn:aws:iam::") {
            "IAM Role"
        } else {
            "HTTP"
        };
        let mut r = json!({ "uid": uid, "type": kind });
        if let Some(a) = action {
            r["data"] = json!({ "action": a });
        }
        resources.push(r);
    };
    if let Some(resource) = &record.resource {
        push_resource(record.action.as_deref(), resource);
    }
    for pair in &record.also {
        let (action, uid) = pair.split_once(' ').unwrap_or(("", pair));
        push_resource(Some(action).filter(|a| !a.is_empty()), uid);
    }

    let src_endpoint = match record.source.parse::<SocketAddr>() {
        Ok(a) => json!({ "ip": a.ip().to_string(), "port": a.port() }),
        Err(_) => json!({ "name": record.source }),
    };
    let mut http_request = json!({
        "url": { "path": record.path },
        "uid": record.request_id,
    });
    // An enum in 1.3.0 (PATCH came in 1.6.0); others, and `-` for a connection refused
    // before any request was read, go to `unmapped`.
    let ocsf_method = HTTP_METHODS.contains(&record.method.as_str());
    if ocsf_method {
        http_request["http_method"] = json!(record.method);
    }
    if let Some(ua) = &record.user_agent {
        http_request["user_agent"] = json!(ua);
    }

    let mut unmapped = Map::new();
    unmapped.insert("route".into(), json!(record.route));
    unmapped.insert("decision".into(), json!(record.decision.as_str()));
    for (name, value) in [
        ("reason", record.reason.map(|r| json!(r))),
        ("rule", record.rule.as_ref().map(|r| json!(r))),
        ("action", record.action.as_ref().map(|a| json!(a))),
        ("upstream_status", record.upstream_status.map(|s| json!(s))),
        ("shadow", record.shadow.as_ref().map(|s| json!(s))),
        ("token_id", record.identity.as_ref().map(|i| json!(i.token_id))),
        (
            "auth_method",
            record.identity.as_ref().map(|i| json!(i.auth_method)),
        ),
    ] {
        if let Some(v) = value {
            unmapped.insert(name.into(), v);
        }
    }
    if !ocsf_method {
        unmapped.insert("http_method".into(), json!(record.method));
    }
    if let Some(email) = email.filter(|_| !email_ok) {
        unmapped.insert("email".into(), json!(email));
    }
    unmapped.insert("bytes_in".into(), json!(record.bytes_in));
    unmapped.insert("bytes_out".into(), json!(record.bytes_out));
    if record.incomplete {
        unmapped.insert("incomplete".into(), json!(true));
    }

    let mut event = json!({
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("API Activity: {activity_name}"),
        "time": time,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "status_code": record.status.to_string(),
        "duration": record.duration_ms.round() as u64,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": record.request_id,
            "original_time": record.time,
            "log_name": "audit",
            "product": {
                "name": "claimgate",
                "vendor_name": "claimgate",
                "version": env!("CARGO_PKG_VERSION"),
            },
        },
        "actor": Value::Object(actor),
        "api": {
            "operation": record.operation.unwrap_or(record.method.as_str()),
            "request": { "uid": record.request_id },
            "service": { "name": record.route },
            "response": { "code": record.status },
        },
        "resources": resources,
        "src_endpoint": src_endpoint,
        "http_request": http_request,
        "unmapped": Value::Object(unmapped),
    });
    // The W3C trace id joins the event to the request's trace and to the store's own logs.
    if let Some(trace_id) = &record.trace_id {
        event["metadata"]["correlation_uid"] = json!(trace_id);
    }
    if let Some(detail) = &record.detail {
        event["status_detail"] = json!(detail);
        event["message"] = json!(detail);
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditIdentity;

    fn record(decision: AuditDecision, identity: bool) -> AuditRecord {
        AuditRecord {
            time: "2026-11-29T15:21:15.820Z".into(),
            request_id: "ED7F94D77046510A".into(),
            route: "lake".into(),
            method: "GET".into(),
            path: "/datasets/pii/users.csv".into(),
            identity: identity.then(|| AuditIdentity {
                iss: "https://login.example.com".into(),
                sub: "alice".into(),
                email: Some("alice@example.com".into()),
                client_id: None,
                roles: vec!["trainer".into()],
                auth_method: "sts_session",
                token_id: "sha256:0f3a9c1e5b7d2468".into(),
                session: Some("ASIAEXAMPLE".into()),
            }),
            operation: identity.then_some("GetObject"),
            action: identity.then(|| "s3:GetObject".into()),
            resource: identity.then(|| "s3://datasets/pii/users.csv".into()),
            also: vec![],
            decision,
            rule: (decision == AuditDecision::Deny).then(|| "policies/ml.toml: role trainer deny[0]".into()),
            reason: (decision != AuditDecision::Allow).then_some("policy"),
            detail: (decision != AuditDecision::Allow).then(|| "Access Denied".into()),
            shadow: None,
            status: if decision == AuditDecision::Allow {
                200
            } else {
                403
            },
            upstream_status: None,
            bytes_in: 0,
            bytes_out: 25,
            duration_ms: 1.4,
            source: "10.0.3.7:51234".into(),
            user_agent: Some("Boto3/1.43".into()),
            incomplete: false,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        }
    }

    #[test]
    fn every_event_holds_the_required_attributes() {
        for (decision, identity) in [
            (AuditDecision::Allow, true),
            (AuditDecision::Deny, true),
            (AuditDecision::Error, false),
        ] {
            let e = event(&record(decision, identity));
            for path in REQUIRED {
                assert!(
                    e.pointer(path).is_some_and(|v| !v.is_null()),
                    "{path} missing in {e}"
                );
            }
            assert_eq!(e["class_uid"], 6003);
            assert_eq!(e["type_uid"], 600300 + e["activity_id"].as_u64().unwrap());
        }
    }

    #[test]
    fn the_caller_operation_resource_and_decision_are_mapped() {
        let e = event(&record(AuditDecision::Deny, true));
        assert_eq!(e["actor"]["user"]["uid"], "alice");
        assert_eq!(e["actor"]["user"]["email_addr"], "alice@example.com");
        assert_eq!(e["actor"]["session"]["uid"], "ASIAEXAMPLE");
        assert_eq!(e["actor"]["authorizations"][0]["decision"], "deny");
        assert_eq!(e["api"]["operation"], "GetObject");
        assert_eq!(e["resources"][0]["uid"], "s3://datasets/pii/users.csv");
        assert_eq!(e["src_endpoint"]["ip"], "10.0.3.7");
        assert_eq!(e["http_request"]["user_agent"], "Boto3/1.43");
        assert_eq!(
            (e["status_id"].as_u64(), e["severity_id"].as_u64()),
            (Some(2), Some(2))
        );
        assert_eq!(e["time"], 1_795_965_675_820_u64);
        assert_eq!(e["activity_id"], 2);
        assert_eq!(e["unmapped"]["reason"], "policy");
        assert_eq!(e["unmapped"]["token_id"], "sha256:0f3a9c1e5b7d2468");
        assert_eq!(
            e["metadata"]["correlation_uid"],
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            e.get("http_response").is_none(),
            "not in API Activity before OCSF 1.4"
        );
        let unauthenticated = event(&record(AuditDecision::Error, false));
        assert_eq!(unauthenticated["actor"]["user"]["name"], "unauthenticated");
    }

    #[test]
    fn operations_map_to_activities() {
        let mut r = record(AuditDecision::Allow, true);
        for (op, method, id) in [
            ("PutObject", "PUT", 1),
            ("CreateMultipartUpload", "POST", 1),
            ("CompleteMultipartUpload", "POST", 1),
            ("UploadPart", "PUT", 3),
            ("PutObjectTagging", "PUT", 3),
            ("CopyObject", "PUT", 3),
            ("DeleteObjects", "POST", 4),
            ("ListObjectsV2", "GET", 2),
            ("HeadObject", "HEAD", 2),
            ("AssumeRoleWithWebIdentity", "POST", 1),
            ("http", "POST", 1),
        ] {
            r.operation = Some(op);
            r.method = method.into();
            assert_eq!(activity(&r).0, id, "{op}");
        }
    }

    #[test]
    fn values_outside_ocsf_1_3_types_go_to_unmapped_not_into_typed_attributes() {
        let mut r = record(AuditDecision::Allow, true);
        r.method = "PATCH".into();
        if let Some(id) = r.identity.as_mut() {
            id.email = Some("eve".into());
        }
        let e = event(&r);
        assert!(e["http_request"].get("http_method").is_none(), "{e}");
        assert_eq!(e["unmapped"]["http_method"], "PATCH");
        assert!(e["actor"]["user"].get("email_addr").is_none(), "{e}");
        assert_eq!(e["unmapped"]["email"], "eve");
        r.method = "-".into();
        assert_eq!(event(&r)["unmapped"]["http_method"], "-");
        for good in ["alice@example.com", "a.b+c@mail.example.co.uk", "x_y@e-x.io"] {
            assert!(is_email(good), "{good}");
        }
        for bad in [
            "eve",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "alice@ex ample.com",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
    }
}
