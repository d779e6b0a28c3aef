//! Browser form uploads signed with a claimgate STS session: the form's SigV4 fields and its
//! POST policy, verified the way S3 verifies them.
//!
//! An SDK's `generate_presigned_post` (boto3, …) does not sign a request: it signs a POST
//! policy — base64 JSON with an `expiration` and a list of `conditions` — and hands the
//! browser the fields to send with it: `x-amz-algorithm`, `x-amz-credential`
//! (`<access key id>/<date>/<region>/s3/aws4_request`), `x-amz-date`,
//! `x-amz-security-token` (the sealed session), `policy` and `x-amz-signature`, the hex
//! HMAC-SHA256 of the base64 policy under the SigV4 signing key. So:
//!
//! 1. [`FormSignature::read`] reads those fields, strictly (a SigV2 form is refused);
//! 2. the pipeline opens the session the access key id and token name (as for any
//!    session-signed request) and [`FormSignature::verify`] checks the signature, in
//!    constant time, before anything in the policy is believed;
//! 3. [`PostPolicy::check`] holds the form to the policy: not expired at the injected
//!    clock's `now`, every condition met, and every field named by a condition (as S3
//!    requires), so a policy signed for one upload cannot carry fields it never allowed.
//!
//! Conditions on `$key` are checked against the key as it is stored (`${filename}`
//! replaced), and `$bucket` against the bucket the request is addressed to. A field a
//! condition names but the form lacks fails the condition. `content-length-range` cannot be
//! checked before the file streams: it is returned for the forward stage to enforce.
//!
//! Error messages never contain the signature, the secret or the session token.

use std::ops::RangeInclusive;

use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;
use crate::classify::PostForm;
use crate::sigv4::{self, ALGORITHM};

/// Why a form's credentials or policy were refused. Each variant names the S3 code S3 itself
/// answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostPolicyError {
    /// A SigV4 form field is missing or malformed: the algorithm, the credential scope, the
    /// date, the signature's shape (S3 code `InvalidArgument`, 400).
    #[error("{reason}")]
    MalformedField {
        /// What is wrong.
        reason: String,
    },
    /// The policy is not base64 of a JSON policy document S3 would accept
    /// (S3 code `InvalidPolicyDocument`, 400).
    #[error("Invalid Policy: {reason}")]
    InvalidDocument {
        /// What is wrong.
        reason: String,
    },
    /// `x-amz-signature` is not the signature of `policy` under the session's key
    /// (S3 code `SignatureDoesNotMatch`, 403).
    #[error(
        "the form's x-amz-signature does not match its policy: sign the base64 policy with the session's \
         secret, and change nothing in the policy or the credential fields after signing"
    )]
    SignatureDoesNotMatch,
    /// The policy's `expiration` has passed (S3 code `AccessDenied`, 403).
    #[error("Invalid according to Policy: Policy expired (at {expired_at})")]
    Expired {
        /// When, RFC 3339.
        expired_at: String,
    },
    /// A condition does not hold for the form (S3 code `AccessDenied`, 403).
    #[error("Invalid according to Policy: Policy Condition failed: {condition}")]
    ConditionFailed {
        /// The condition, as JSON (a session token value is elided).
        condition: String,
    },
    /// A form field that no condition names (S3 code `AccessDenied`, 403).
    #[error(
        "Invalid according to Policy: Extra input fields: {field} (every field but x-amz-signature, file, \
         policy and x-ignore-* must be named by a condition)"
    )]
    ExtraField {
        /// The field's name.
        field: String,
    },
    /// The file is larger than the policy's `content-length-range` allows
    /// (S3 code `EntityTooLarge`, 400).
    #[error(
        "Your proposed upload exceeds the maximum allowed size: the policy's content-length-range allows at \
         most {max} bytes"
    )]
    EntityTooLarge {
        /// The most bytes allowed.
        max: u64,
    },
    /// The file is smaller than the policy's `content-length-range` allows
    /// (S3 code `EntityTooSmall`, 400).
    #[error(
        "Your proposed upload is smaller than the minimum allowed size: the policy's content-length-range \
         needs at least {min} bytes"
    )]
    EntityTooSmall {
        /// The fewest bytes allowed.
        min: u64,
    },
}

impl PostPolicyError {
    /// The S3 error code S3 answers with.
    pub fn s3_code(&self) -> &'static str {
        match self {
            PostPolicyError::MalformedField { .. } => "InvalidArgument",
            PostPolicyError::InvalidDocument { .. } => "InvalidPolicyDocument",
            PostPolicyError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
            PostPolicyError::Expired { .. }
            | PostPolicyError::ConditionFailed { .. }
            | PostPolicyError::ExtraField { .. } => "AccessDenied",
            PostPolicyError::EntityTooLarge { .. } => "EntityTooLarge",
            PostPolicyError::EntityTooSmall { .. } => "EntityTooSmall",
        }
    }

    /// The HTTP status S3 answers with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            PostPolicyError::MalformedField { .. }
            | PostPolicyError::InvalidDocument { .. }
            | PostPolicyError::EntityTooLarge { .. }
            | PostPolicyError::EntityTooSmall { .. } => http::StatusCode::BAD_REQUEST,
            PostPolicyError::SignatureDoesNotMatch
            | PostPolicyError::Expired { .. }
            | PostPolicyError::ConditionFailed { .. }
            | PostPolicyError::ExtraField { .. } => http::StatusCode::FORBIDDEN,
        }
    }

    /// A stable snake_case label for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            PostPolicyError::MalformedField { .. } => "post_form_malformed",
            PostPolicyError::InvalidDocument { .. } => "post_policy_invalid",
            PostPolicyError::SignatureDoesNotMatch => "signature_mismatch",
            PostPolicyError::Expired { .. } => "post_policy_expired",
            PostPolicyError::ConditionFailed { .. } => "post_policy_condition",
            PostPolicyError::ExtraField { .. } => "post_policy_extra_field",
            PostPolicyError::EntityTooLarge { .. } => "entity_too_large",
            PostPolicyError::EntityTooSmall { .. } => "entity_too_small",
        }
    }
}

fn malformed_field(reason: impl Into<String>) -> PostPolicyError {
    PostPolicyError::MalformedField {
        reason: reason.into(),
    }
}

fn invalid_document(reason: impl Into<String>) -> PostPolicyError {
    PostPolicyError::InvalidDocument {
        reason: reason.into(),
    }
}

/// A form's SigV4 credentials, read but not yet verified. `Debug` redacts the signature and
/// the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct FormSignature<'f> {
    /// From `x-amz-credential`: names the session.
    pub access_key_id: &'f str,
    /// `yyyymmdd` from the credential scope (the date of `x-amz-date`).
    scope_date: &'f str,
    region: &'f str,
    service: &'f str,
    /// `x-amz-signature`: 64 lowercase hex digits.
    signature: &'f str,
    /// `policy`, base64, exactly as signed.
    pub policy: &'f str,
    /// `x-amz-security-token`: the sealed session, if sent.
    pub security_token: Option<&'f str>,
}

impl std::fmt::Debug for FormSignature<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormSignature")
            .field("access_key_id", &self.access_key_id)
            .field("scope_date", &self.scope_date)
            .field("region", &self.region)
            .field("service", &self.service)
            .field("signature", &"<redacted>")
            .field("security_token", &self.security_token.map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The SigV4 fields a signed form must carry, besides the optional session token.
const REQUIRED: [&str; 5] = [
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-signature",
    "policy",
];

impl<'f> FormSignature<'f> {
    /// The form's SigV4 credentials: `Ok(None)` when it carries none at all, a refusal when
    /// it is signed with SigV2 (`AWSAccessKeyId`/`signature`) or its SigV4 fields are
    /// incomplete or malformed.
    pub fn read(form: &'f PostForm) -> Result<Option<Self>, AuthError> {
        if form.field("awsaccesskeyid").is_some() || form.field("signature").is_some() {
            return Err(AuthError::UnsupportedScheme {
                scheme:
                    "SigV2 form upload (AWSAccessKeyId/signature fields): sign the POST policy with SigV4 \
                         (boto3: generate_presigned_post with signature_version='s3v4')"
                        .into(),
            });
        }
        if form.credential_fields().next().is_none() {
            return Ok(None);
        }
        let [algorithm, credential, date, signature, policy] = REQUIRED.map(|name| form.field(name));
        let require = |v: Option<&'f str>, name: &str| {
            v.ok_or_else(|| malformed_field(format!("Bucket POST must contain a field named '{name}'")))
        };
        let algorithm = require(algorithm, "x-amz-algorithm")?;
        if algorithm != ALGORITHM {
            return Err(malformed_field(format!(
                "x-amz-algorithm must be {ALGORITHM} (SigV4); SigV4a and others are not accepted"
            ))
            .into());
        }
        let credential = require(credential, "x-amz-credential")?;
        let date = require(date, "x-amz-date")?;
        let signature = require(signature, "x-amz-signature")?;
        let policy = require(policy, "policy")?;

        let scope: Vec<&str> = credential.split('/').collect();
        let [access_key_id, scope_date, region, service, "aws4_request"] = scope.as_slice() else {
            return Err(malformed_field(
                "x-amz-credential must be <access key id>/<yyyymmdd>/<region>/s3/aws4_request",
            )
            .into());
        };
        if access_key_id.is_empty() || region.is_empty() {
            return Err(malformed_field("x-amz-credential has an empty access key id or region").into());
        }
        if *service != "s3" {
            return Err(malformed_field(format!(
                "x-amz-credential is scoped to service {service:?}; a form upload is signed for \"s3\""
            ))
            .into());
        }
        if sigv4::parse_amz_date(date).is_none() {
            return Err(malformed_field(format!(
                "x-amz-date {date:?} is not yyyymmddThhmmssZ (UTC, e.g. 20150830T123600Z)"
            ))
            .into());
        }
        if date.get(..8) != Some(*scope_date) {
            return Err(malformed_field(format!(
                "the x-amz-credential date {scope_date} is not the date of x-amz-date {date}"
            ))
            .into());
        }
        if signature.len() != 64 || !signature.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(malformed_field("x-amz-signature must be 64 lowercase hex digits").into());
        }
        if policy.is_empty() {
            return Err(malformed_field("the policy field is empty").into());
        }
        Ok(Some(FormSignature {
            access_key_id,
            scope_date,
            region,
            service,
            signature,
            policy,
            security_token: form.field("x-amz-security-token"),
        }))
    }

    /// Checks `x-amz-signature` against the HMAC-SHA256 of the base64 policy under the
    /// SigV4 signing key of `secret_access_key`, in constant time.
    pub fn verify(&self, secret_access_key: &str) -> Result<(), PostPolicyError> {
        let key = sigv4::signing_key(secret_access_key, self.scope_date, self.region, self.service);
        let computed = hex::encode(hmac::sign(&key, self.policy.as_bytes()));
        constant_time::verify_slices_are_equal(computed.as_bytes(), self.signature.as_bytes())
            .map_err(|_| PostPolicyError::SignatureDoesNotMatch)
    }
}

/// A decoded POST policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostPolicy {
    /// `expiration`, Unix seconds.
    expiration: i64,
    conditions: Vec<Condition>,
}

/// One policy condition. Field names are lowercase, without the `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    /// `{"field": "value"}` or `["eq", "$field", "value"]`.
    Eq { field: String, value: String },
    /// `["starts-with", "$field", "prefix"]` (an empty prefix allows any value).
    StartsWith { field: String, prefix: String },
    /// `["content-length-range", min, max]`: the file's size, inclusive.
    ContentLength { min: u64, max: u64 },
}

impl Condition {
    fn field(&self) -> Option<&str> {
        match self {
            Condition::Eq { field, .. } | Condition::StartsWith { field, .. } => Some(field),
            Condition::ContentLength { .. } => None,
        }
    }

    /// The condition as JSON, for messages; a session token's value is elided.
    fn describe(&self) -> String {
        let shown = |field: &str, value: &str| {
            if field == "x-amz-security-token" {
                "…".to_owned()
            } else {
                value.to_owned()
            }
        };
        let json = match self {
            Condition::Eq { field, value } => {
                serde_json::json!(["eq", format!("${field}"), shown(field, value)])
            }
            Condition::StartsWith { field, prefix } => {
                serde_json::json!(["starts-with", format!("${field}"), shown(field, prefix)])
            }
            Condition::ContentLength { min, max } => serde_json::json!(["content-length-range", min, max]),
        };
        json.to_string()
    }
}

/// The policy document's JSON shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    expiration: String,
    conditions: Vec<Value>,
}

/// Field names that need no condition (S3's rule).
fn needs_no_condition(field: &str) -> bool {
    matches!(field, "x-amz-signature" | "file" | "policy") || field.starts_with("x-ignore-")
}

impl PostPolicy {
    /// Decodes a `policy` field: base64 of `{"expiration": "<RFC 3339>", "conditions": [...]}`.
    pub fn decode(policy: &str) -> Result<Self, PostPolicyError> {
        let json = STANDARD
            .decode(policy)
            .map_err(|_| invalid_document("the policy field is not base64"))?;
        let raw: RawPolicy = serde_json::from_slice(&json).map_err(|e| {
            invalid_document(format!("not a JSON policy with expiration and conditions: {e}"))
        })?;
        let expiration = humantime::parse_rfc3339(&raw.expiration)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .ok_or_else(|| {
                invalid_document(format!(
                    "expiration {:?} is not an ISO 8601 UTC time (2026-11-28T18:00:00Z)",
                    raw.expiration
                ))
            })?;
        let conditions = raw.conditions.iter().map(condition).collect::<Result<_, _>>()?;
        Ok(PostPolicy {
            expiration,
            conditions,
        })
    }

    /// Holds `form` (addressed to `bucket`) to the policy at `now` (Unix seconds): not
    /// expired, every condition met, every field named by a condition. Returns the file
    /// sizes the policy allows (`content-length-range`, all of them intersected), which only
    /// the streaming body can check.
    pub fn check(
        &self,
        form: &PostForm,
        bucket: &str,
        now: i64,
    ) -> Result<Option<RangeInclusive<u64>>, PostPolicyError> {
        if now >= self.expiration {
            return Err(PostPolicyError::Expired {
                expired_at: sigv4::rfc3339(self.expiration),
            });
        }
        let value_of = |field: &str| match field {
            "bucket" => Some(bucket),
            "key" => Some(form.key()),
            other => form.field(other),
        };
        let mut range: Option<RangeInclusive<u64>> = None;
        for c in &self.conditions {
            let holds = match c {
                Condition::Eq { field, value } => value_of(field) == Some(value.as_str()),
                Condition::StartsWith { field, prefix } => {
                    value_of(field).is_some_and(|v| v.starts_with(prefix.as_str()))
                }
                Condition::ContentLength { min, max } => {
                    range = Some(match range {
                        Some(r) => (*r.start()).max(*min)..=(*r.end()).min(*max),
                        None => *min..=*max,
                    });
                    true
                }
            };
            if !holds {
                return Err(PostPolicyError::ConditionFailed {
                    condition: c.describe(),
                });
            }
        }
        for (name, _) in form.fields() {
            if !needs_no_condition(name) && !self.conditions.iter().any(|c| c.field() == Some(name)) {
                return Err(PostPolicyError::ExtraField {
                    field: name.to_owned(),
                });
            }
        }
        Ok(range)
    }
}

/// One condition of the JSON document.
fn condition(v: &Value) -> Result<Condition, PostPolicyError> {
    let bad = || invalid_document(format!("condition {v} is not one S3 understands"));
    match v {
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((field, Value::String(value))), None) = (entries.next(), entries.next()) else {
                return Err(bad());
            };
            Ok(Condition::Eq {
                field: field_name(field.strip_prefix('$').unwrap_or(field)).ok_or_else(bad)?,
                value: value.clone(),
            })
        }
        Value::Array(items) => match items.as_slice() {
            [Value::String(op), Value::String(field), Value::String(value)]
                if op.eq_ignore_ascii_case("eq") =>
            {
                Ok(Condition::Eq {
                    field: dollar_field(field).ok_or_else(bad)?,
                    value: value.clone(),
                })
            }
            [Value::String(op), Value::String(field), Value::String(prefix)]
                if op.eq_ignore_ascii_case("starts-with") =>
            {
                Ok(Condition::StartsWith {
                    field: dollar_field(field).ok_or_else(bad)?,
                    prefix: prefix.clone(),
                })
            }
            [Value::String(op), min, max] if op.eq_ignore_ascii_case("content-length-range") => {
                let (Some(min), Some(max)) = (length(min), length(max)) else {
                    return Err(bad());
                };
                if min > max {
                    return Err(invalid_document(format!(
                        "content-length-range minimum {min} is above its maximum {max}"
                    )));
                }
                Ok(Condition::ContentLength { min, max })
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A `$field` operand, lowercased without its `$`.
fn dollar_field(raw: &str) -> Option<String> {
    field_name(raw.strip_prefix('$')?)
}

fn field_name(name: &str) -> Option<String> {
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

/// A `content-length-range` bound: a non-negative integer (as a number or a string of digits).
fn length(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::PostForm;

    const B: &str = "b0undary";

    /// Reads a form with these fields (then a file) through the classifier, as the pipeline does.
    fn form(fields: &[(&str, &str)]) -> PostForm {
        let mut body = String::new();
        for (n, v) in fields {
            body.push_str(&format!(
                "--{B}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n\r\nxyz\r\n--{B}--\r\n"
        ));
        let parts = http::Request::post("/bkt")
            .header("content-type", format!("multipart/form-data; boundary={B}"))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let target = crate::classify::RequestTarget::read(&parts).unwrap();
        match crate::classify::classify_s3(&parts, &target, &crate::classify::S3Target::default()) {
            Err(crate::classify::ClassifyError::FormRequired(p)) => {
                p.reader().advance(body.as_bytes(), true).unwrap().unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    fn b64(json: &Value) -> String {
        STANDARD.encode(json.to_string())
    }

    /// What boto3's generate_presigned_post signs for a session, with `extra` conditions.
    fn signed_fields(secret: &str, policy: &Value) -> Vec<(String, String)> {
        let policy = b64(policy);
        let key = sigv4::signing_key(secret, "20261128", "us-east-1", "s3");
        let sig = hex::encode(hmac::sign(&key, policy.as_bytes()));
        vec![
            ("key".into(), "uploads/${filename}".into()),
            ("x-amz-algorithm".into(), ALGORITHM.into()),
            (
                "x-amz-credential".into(),
                "ASIAX/20261128/us-east-1/s3/aws4_request".into(),
            ),
            ("x-amz-date".into(), "20261128T120000Z".into()),
            ("x-amz-security-token".into(), "CGS1.token".into()),
            ("policy".into(), policy),
            ("x-amz-signature".into(), sig),
        ]
    }

    fn boto_policy(extra: &[Value]) -> Value {
        let mut conditions = vec![
            serde_json::json!({"bucket": "bkt"}),
            serde_json::json!(["starts-with", "$key", "uploads/"]),
            serde_json::json!({"x-amz-algorithm": ALGORITHM}),
            serde_json::json!({"x-amz-credential": "ASIAX/20261128/us-east-1/s3/aws4_request"}),
            serde_json::json!({"x-amz-date": "20261128T120000Z"}),
            serde_json::json!({"x-amz-security-token": "CGS1.token"}),
        ];
        conditions.extend_from_slice(extra);
        serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": conditions})
    }

    const NOW: i64 = 1_795_867_200; // 2026-11-28T12:00:00Z

    fn with(fields: &[(String, String)]) -> PostForm {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        form(&pairs)
    }

    #[test]
    fn a_boto3_style_form_verifies_and_meets_its_policy() {
        let fields = signed_fields(
            "s3cr3t",
            &boto_policy(&[serde_json::json!(["content-length-range", 1, 10])]),
        );
        let f = with(&fields);
        let sig = FormSignature::read(&f).unwrap().unwrap();
        assert_eq!(sig.access_key_id, "ASIAX");
        assert_eq!(sig.security_token, Some("CGS1.token"));
        assert!(!format!("{sig:?}").contains("CGS1"));
        assert_eq!(sig.verify("s3cr3t"), Ok(()));
        assert_eq!(sig.verify("other"), Err(PostPolicyError::SignatureDoesNotMatch));
        let policy = PostPolicy::decode(sig.policy).unwrap();
        assert_eq!(policy.check(&f, "bkt", NOW), Ok(Some(1..=10)));
        assert!(matches!(
            policy.check(&f, "bkt", NOW + 3600),
            Err(PostPolicyError::Expired { .. })
        ));
        assert!(matches!(
            policy.check(&f, "other", NOW),
            Err(PostPolicyError::ConditionFailed { .. })
        ));
    }

    #[test]
    fn conditions_are_enforced_and_every_field_must_be_named() {
        let mut fields = signed_fields("s", &boto_policy(&[]));
        fields.push(("acl".into(), "public-read".into()));
        let f = with(&fields);
        let policy = PostPolicy::decode(f.field("policy").unwrap()).unwrap();
        assert_eq!(
            policy.check(&f, "bkt", NOW),
            Err(PostPolicyError::ExtraField { field: "acl".into() })
        );
        // x-ignore-* needs no condition
        let mut fields = signed_fields("s", &boto_policy(&[]));
        fields.push(("x-ignore-note".into(), "hi".into()));
        let f = with(&fields);
        assert_eq!(
            PostPolicy::decode(f.field("policy").unwrap())
                .unwrap()
                .check(&f, "bkt", NOW),
            Ok(None)
        );

        // the key condition sees the key as stored; a missing field fails its condition
        for (extra, ok) in [
            (serde_json::json!(["eq", "$key", "uploads/f.bin"]), true),
            (serde_json::json!(["eq", "$key", "uploads/${filename}"]), false),
            (serde_json::json!(["starts-with", "$Content-Type", ""]), false),
            (serde_json::json!({"success_action_status": "201"}), false),
            (serde_json::json!(["content-length-range", 0, 5]), true),
        ] {
            let fields = signed_fields("s", &boto_policy(std::slice::from_ref(&extra)));
            let f = with(&fields);
            let got = PostPolicy::decode(f.field("policy").unwrap())
                .unwrap()
                .check(&f, "bkt", NOW);
            assert_eq!(got.is_ok(), ok, "{extra}: {got:?}");
        }
        // a failed condition on the session token does not echo it
        let fields = signed_fields(
            "s",
            &boto_policy(&[serde_json::json!({"x-amz-security-token": "CGS1.other"})]),
        );
        let f = with(&fields);
        let err = PostPolicy::decode(f.field("policy").unwrap())
            .unwrap()
            .check(&f, "bkt", NOW)
            .unwrap_err();
        assert!(!err.to_string().contains("CGS1"), "{err}");
    }

    #[test]
    fn malformed_documents_and_fields_are_refused() {
        for bad in [
            serde_json::json!({"conditions": []}),
            serde_json::json!({"expiration": "tomorrow", "conditions": []}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [["eq", "key", "x"]]}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [["in", "$key", "x"]]}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [{"a": "b", "c": "d"}]}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [["content-length-range", 5, 1]]}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [["content-length-range", -1, 1]]}),
            serde_json::json!({"expiration": "2026-11-28T13:00:00Z", "conditions": [], "extra": 1}),
        ] {
            assert!(
                matches!(
                    PostPolicy::decode(&b64(&bad)),
                    Err(PostPolicyError::InvalidDocument { .. })
                ),
                "{bad}"
            );
        }
        assert!(PostPolicy::decode("%%%").is_err());

        let fields = signed_fields("s", &boto_policy(&[]));
        let mutate = |name: &str, value: Option<&str>| {
            let mut f: Vec<(String, String)> = fields.iter().filter(|(n, _)| n != name).cloned().collect();
            if let Some(v) = value {
                f.push((name.into(), v.into()));
            }
            with(&f)
        };
        for (name, value) in [
            ("x-amz-algorithm", Some("AWS4-ECDSA-P256-SHA256")),
            ("x-amz-algorithm", None),
            (
                "x-amz-credential",
                Some("ASIAX/20261128/us-east-1/sts/aws4_request"),
            ),
            (
                "x-amz-credential",
                Some("ASIAX/20261127/us-east-1/s3/aws4_request"),
            ),
            ("x-amz-credential", Some("ASIAX/us-east-1/s3/aws4_request")),
            ("x-amz-date", Some("2026-11-28")),
            ("x-amz-signature", Some("ABCD")),
            ("policy", None),
        ] {
            let f = mutate(name, value);
            assert!(
                matches!(
                    FormSignature::read(&f),
                    Err(AuthError::PostPolicy(PostPolicyError::MalformedField { .. }))
                ),
                "{name} {value:?}"
            );
        }
        let v2 = form(&[
            ("key", "k"),
            ("AWSAccessKeyId", "AKID"),
            ("signature", "x"),
            ("policy", "e30="),
        ]);
        assert!(matches!(
            FormSignature::read(&v2),
            Err(AuthError::UnsupportedScheme { .. })
        ));
        assert_eq!(
            FormSignature::read(&form(&[("key", "k")]))
                .map(|s| s.is_none())
                .ok(),
            Some(true)
        );
    }
}
