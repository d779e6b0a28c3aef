//! S3 REST requests → [`Operation`]s, mapped to IAM actions the way AWS IAM maps them.
//!
//! | request                                   | operation               | accesses                                          |
//! |-------------------------------------------|-------------------------|---------------------------------------------------|
//! | `GET /`                                   | ListBuckets             | `s3:ListAllMyBuckets` `s3://`                     |
//! | `HEAD /b`                                 | HeadBucket              | `s3:ListBucket` `s3://b`                          |
//! | `GET /b[?list-type=2][&prefix=p]`         | ListObjects(V2)         | `s3:ListBucket` `s3://b/p`                        |
//! | `GET /b?location`                         | GetBucketLocation       | `s3:GetBucketLocation` `s3://b`                   |
//! | `GET /b?uploads`                          | ListMultipartUploads    | `s3:ListBucketMultipartUploads` `s3://b`          |
//! | `POST /b?delete`                          | DeleteObjects           | from the body: see [`PendingDeleteObjects`]       |
//! | `POST /b` + `multipart/form-data`         | PostObject              | from the form: see [`PendingPostObject`]          |
//! | `GET`/`HEAD /b/k[?versionId]`             | GetObject / HeadObject  | `s3:GetObject[Version]` `s3://b/k`                |
//! | `PUT /b/k`                                | PutObject               | `s3:PutObject` `s3://b/k`                         |
//! | `PUT /b/k` + `x-amz-copy-source: s/c`     | CopyObject              | `s3:PutObject` `s3://b/k`, `s3:GetObject[Version]` `s3://s/c` |
//! | `POST /b/k?uploads`                       | CreateMultipartUpload   | `s3:PutObject` `s3://b/k`                         |
//! | `PUT /b/k?partNumber&uploadId`            | UploadPart              | `s3:PutObject` `s3://b/k`                         |
//! | … + `x-amz-copy-source`                   | UploadPartCopy          | as CopyObject                                     |
//! | `POST /b/k?uploadId`                      | CompleteMultipartUpload | `s3:PutObject` `s3://b/k`                         |
//! | `DELETE /b/k?uploadId`                    | AbortMultipartUpload    | `s3:AbortMultipartUpload` `s3://b/k`              |
//! | `GET /b/k?uploadId`                       | ListParts               | `s3:ListMultipartUploadParts` `s3://b/k`          |
//! | `DELETE /b/k[?versionId]`                 | DeleteObject            | `s3:DeleteObject[Version]` `s3://b/k`             |
//!
//! As in IAM, headers that make a write do more than write add accesses on the same object:
//! ACL headers (`x-amz-acl`, `x-amz-grant-*`) need `s3:PutObjectAcl`, `x-amz-tagging` needs
//! `s3:PutObjectTagging`, object-lock headers need `s3:PutObjectRetention` /
//! `s3:PutObjectLegalHold`, and `x-amz-bypass-governance-retention` on a delete needs
//! `s3:BypassGovernanceRetention`. Without this, a caller allowed only `s3:PutObject` could
//! make an object public through claimgate's own downstream credentials.
//!
//! Every query parameter must be one the operation accepts (presigned-URL parameters and the
//! SDKs' `x-id` hint are always accepted and ignored); anything else, including every
//! subresource claimgate does not implement (`acl`, `tagging`, `versions`, …), is refused.

use std::collections::BTreeMap;
use std::fmt;

use http::Method;
use http::header::HeaderMap;
use http::request::Parts;

use super::ClassifyError;
use super::decode::{Plus, decode};
use super::key::{self, KeyRule, KeyUse};
use super::post_form::{PendingPostObject, form_boundary};
use super::subresource::{self, Level, Needs, Resource as SubResource, SUBRESOURCES};
use super::target::{RequestTarget, hostname};
use crate::model::{Access, CopySource, Operation, Resource, S3Address};

/// How S3 requests reach claimgate, per route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct S3Target<'a> {
    /// `server.public_host`. When set, `Host: <bucket>.<virtual_host>` (any port) addresses
    /// `<bucket>` virtual-hosted style; any other Host, including `virtual_host` itself, is
    /// path-style. `None`: path-style only.
    pub virtual_host: Option<&'a str>,
    /// Whether keys with `.`, `..` or empty segments are refused (the default) or forwarded
    /// literally (`literal_dot_keys`, for stores that never resolve them).
    pub keys: KeyRule,
}

/// Classifies an S3 request from its head (the body is not available yet).
///
/// DeleteObjects answers [`ClassifyError::BodyRequired`] and PostObject
/// [`ClassifyError::FormRequired`]: their accesses are in the body.
pub fn classify_s3(
    parts: &Parts,
    target: &RequestTarget,
    s3: &S3Target<'_>,
) -> Result<Operation, ClassifyError> {
    let method = &parts.method;
    if !matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
    ) {
        return Err(method_not_allowed(method));
    }
    let addressed = address(target, s3)?;
    let req = Request {
        method,
        query: Query::parse(parts.uri.query().unwrap_or_default())?,
        headers: &parts.headers,
        keys: s3.keys,
    };
    let classified = match addressed {
        Addressed::Service => service_op(&req).map(|op| (op, S3Address::Service)),
        Addressed::Bucket(bucket) => bucket_op(&req, &bucket).map(|op| (op, S3Address::Bucket(bucket))),
        Addressed::Object { bucket, key } => {
            object_op(&req, &bucket, &key).map(|op| (op, S3Address::Object { bucket, key }))
        }
    };
    let name = match &classified {
        Ok((op, _)) => op.name,
        Err(ClassifyError::BodyRequired(_)) => "DeleteObjects",
        Err(_) => return classified.map(|(op, _)| op),
    };
    if let Some(hint) = &req.query.x_id
        && hint != name
    {
        return Err(ClassifyError::invalid_argument(format!(
            "x-id names {hint} but the request is {name}"
        )));
    }
    let (mut op, address) = classified?;
    op.s3 = Some(address);
    Ok(op)
}

/// A DeleteObjects request (`POST /b?delete`) waiting for its body.
///
/// Its accesses are `s3:DeleteObject` (or `s3:DeleteObjectVersion`) on every key the XML body
/// lists, so the caller reads the body (with a hard size cap), parses it and calls
/// [`finish`](Self::finish). Only this module can make one, so a finished DeleteObjects
/// operation always comes from a request that was classified as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDeleteObjects {
    /// The bucket from the request line or Host.
    bucket: String,
    /// `x-amz-bypass-governance-retention` was sent: every key also needs
    /// `s3:BypassGovernanceRetention`.
    bypass_governance: bool,
    /// The route's rule for dot and empty segments, applied to every listed key.
    keys: KeyRule,
}

impl PendingDeleteObjects {
    /// The most objects one DeleteObjects request may list (S3's own limit); also bounds the
    /// size of the resulting operation.
    pub const MAX_OBJECTS: usize = 1000;

    /// The bucket the objects are deleted from.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Builds the operation from the body's `<Object>` entries: `(Key, VersionId)`, the key as
    /// the XML holds it (not percent-encoded).
    ///
    /// Refuses an empty list, more than [`MAX_OBJECTS`](Self::MAX_OBJECTS) entries, an empty
    /// or NUL-holding key, and an empty version id.
    pub fn finish<'k, I>(&self, objects: I) -> Result<Operation, ClassifyError>
    where
        I: IntoIterator<Item = (&'k str, Option<&'k str>)>,
    {
        let mut op: Option<Operation> = None;
        let mut need = |access: Access| match &mut op {
            Some(op) => op.also_needs(access),
            None => op = Some(Operation::new("DeleteObjects", access)),
        };
        for (count, (key, version)) in objects.into_iter().enumerate() {
            if count == Self::MAX_OBJECTS {
                // S3 answers MalformedXML: the schema allows at most 1000 <Object>s.
                return Err(ClassifyError::MalformedXml {
                    reason: format!("DeleteObjects lists more than {} objects", Self::MAX_OBJECTS),
                });
            }
            if key.is_empty() || key.contains('\0') {
                return Err(ClassifyError::invalid_argument(
                    "DeleteObjects lists an empty key or a key holding NUL",
                ));
            }
            key::check(key, KeyUse::Key, self.keys, "a DeleteObjects key")?;
            let resource = object_resource(&self.bucket, key);
            let action = match non_empty_version(version)? {
                Some(_) => "s3:DeleteObjectVersion",
                None => "s3:DeleteObject",
            };
            if self.bypass_governance {
                need(Access::new(action, resource.clone()));
                need(Access::new("s3:BypassGovernanceRetention", resource));
            } else {
                need(Access::new(action, resource));
            }
        }
        let Some(mut op) = op else {
            return Err(ClassifyError::MalformedXml {
                reason: "DeleteObjects must list at least one object".into(),
            });
        };
        op.s3 = Some(S3Address::Bucket(self.bucket.clone()));
        Ok(op)
    }
}

/// What the path (and Host) address.
#[derive(Debug, PartialEq, Eq)]
enum Addressed {
    /// `GET /`: the account's bucket list.
    Service,
    /// A bucket (`/b`, `/b/`, or `/` on `b.<virtual_host>`).
    Bucket(String),
    /// An object; `key` is percent-decoded once and canonical (see [`key`]).
    Object { bucket: String, key: String },
}

/// Splits the request into service / bucket / object, virtual-hosted or path-style.
fn address(target: &RequestTarget, s3: &S3Target<'_>) -> Result<Addressed, ClassifyError> {
    let rest = target
        .path()
        .strip_prefix('/')
        .ok_or_else(|| ClassifyError::invalid_uri("an S3 request path must start with `/`"))?;
    if let Some(bucket) = virtual_bucket(target, s3)? {
        return in_bucket(bucket, rest, s3.keys);
    }
    if rest.is_empty() {
        return Ok(Addressed::Service);
    }
    let (bucket, raw_key) = rest.split_once('/').unwrap_or((rest, ""));
    in_bucket(valid_bucket(bucket)?, raw_key, s3.keys)
}

/// The bucket itself when the key part is empty, else the object.
fn in_bucket(bucket: String, raw_key: &str, keys: KeyRule) -> Result<Addressed, ClassifyError> {
    if raw_key.is_empty() {
        return Ok(Addressed::Bucket(bucket));
    }
    let key = object_key(raw_key)?;
    key::check(&key, KeyUse::Key, keys, "the object key")?;
    Ok(Addressed::Object { bucket, key })
}

/// Percent-decodes a key from the path, once, as S3 does.
///
/// A raw `+` is refused: AWS S3 reads it as a space while other S3-compatible stores read a
/// `+`, so the policy could be checked against a different key than the one served. SDKs
/// always send `%2B` (or `%20` for a space).
fn object_key(raw: &str) -> Result<String, ClassifyError> {
    if raw.contains('+') {
        return Err(ClassifyError::invalid_uri(
            "a raw `+` in an S3 object path is ambiguous (AWS reads a space); \
             encode it as %2B, or a space as %20",
        ));
    }
    decode(raw, Plus::Literal).map_err(|e| ClassifyError::invalid_uri(format!("the object key {e}")))
}

/// The bucket a virtual-hosted request names in its Host (`<bucket>.<public_host>`), if any.
///
/// The suffix compares case-insensitively (DNS names); the bucket label is validated as
/// sent, so `MyBucket.<virtual_host>` is refused rather than silently lowercased.
fn virtual_bucket(target: &RequestTarget, s3: &S3Target<'_>) -> Result<Option<String>, ClassifyError> {
    let (Some(public), Some(host)) = (s3.virtual_host, target.host()) else {
        return Ok(None);
    };
    match bucket_label(host, hostname(public)) {
        Some(label) => valid_bucket(label).map(Some),
        None => Ok(None),
    }
}

/// `host` minus `.<public>`, when `host` is a subdomain of `public`.
fn bucket_label<'h>(host: &'h str, public: &str) -> Option<&'h str> {
    let cut = host.len().checked_sub(public.len())?;
    let suffix = host.get(cut..)?;
    if public.is_empty() || !suffix.eq_ignore_ascii_case(public) {
        return None;
    }
    host.get(..cut)?.strip_suffix('.')
}

/// The name, owned, if it is a valid S3 bucket name.
fn valid_bucket(name: &str) -> Result<String, ClassifyError> {
    if is_valid_bucket(name) {
        Ok(name.to_owned())
    } else {
        Err(ClassifyError::InvalidBucketName {
            bucket: name.to_owned(),
        })
    }
}

/// S3's bucket naming rules: 3–63 characters of `a-z`, `0-9`, `.` and `-`, starting and
/// ending with a letter or digit, no `..`, not shaped like an IPv4 address.
///
/// Checked on the name as sent, before any decoding, so an encoded or mixed-case spelling can
/// never name a bucket other than the one in the resource.
fn is_valid_bucket(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| alnum(b) || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && !name.contains("..")
        && !is_ipv4_shaped(name)
}

/// `192.168.5.4` and the like.
fn is_ipv4_shaped(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() == 4
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
}

/// Query parameters that never change the operation: a presigned URL's SigV4 parameters
/// (read by the authenticate stage) and the `x-id=<Operation>` hint newer SDKs add.
fn is_ignored_param(name: &str) -> bool {
    name == "x-id" || crate::sigv4::param::ALL.contains(&name)
}

/// The query parameters that matter for classification, decoded.
///
/// Names are case-sensitive, as in S3. A name given twice is refused: which value the
/// upstream would use is not ours to guess.
#[derive(Debug, Default)]
struct Query {
    /// Name → value, presign parameters removed. Sorted, so refusals name parameters in a
    /// stable order.
    params: BTreeMap<String, String>,
    /// `x-id=<Operation>`, the hint newer SDKs add. Stores may route on it, so it must name
    /// the operation claimgate classified.
    x_id: Option<String>,
}

impl Query {
    /// Parses `a=1&b&c=` form-style: `+` is a space, each name and value percent-decoded once.
    fn parse(raw: &str) -> Result<Self, ClassifyError> {
        let mut params = BTreeMap::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name, Plus::Space)
                .map_err(|e| ClassifyError::invalid_uri(format!("query parameter name `{name}` {e}")))?;
            if name.is_empty() {
                return Err(ClassifyError::invalid_argument(
                    "the query has a parameter without a name",
                ));
            }
            let value = decode(value, Plus::Space)
                .map_err(|e| ClassifyError::invalid_uri(format!("query parameter `{name}` {e}")))?;
            if params.contains_key(&name) {
                return Err(ClassifyError::invalid_argument(format!(
                    "query parameter `{name}` is given more than once"
                )));
            }
            params.insert(name, value);
        }
        let x_id = params.get("x-id").cloned();
        params.retain(|name, _| !is_ignored_param(name));
        Ok(Query { params, x_id })
    }

    /// Whether the parameter is present (with or without a value).
    fn has(&self, name: &str) -> bool {
        self.params.contains_key(name)
    }

    /// The parameter's decoded value.
    fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The first parameter not in `allowed`, if any.
    fn first_outside(&self, allowed: &[&str]) -> Option<&str> {
        self.params
            .keys()
            .map(String::as_str)
            .find(|name| !allowed.contains(name))
    }
}

/// The parts of the request the operation handlers look at.
struct Request<'r> {
    method: &'r Method,
    query: Query,
    headers: &'r HeaderMap,
    /// The route's rule for dot and empty segments in keys and prefixes.
    keys: KeyRule,
}

impl Request<'_> {
    /// Refuses any query parameter outside `allowed`: an unknown subresource must never
    /// fall through to the operation it superficially resembles (`GET /b/k?acl` is not a
    /// GetObject).
    fn allow_only(&self, kind: Kind, allowed: &[&str]) -> Result<(), ClassifyError> {
        match self.query.first_outside(allowed) {
            Some(name) => Err(self.unknown_param(kind, name)),
            None => Ok(()),
        }
    }

    /// An operation claimgate does not implement: named by its first query parameter (the
    /// subresource) if it has one, else by `operation`.
    fn unsupported(&self, kind: Kind, operation: &str) -> ClassifyError {
        match self.query.first_outside(&[]) {
            Some(name) => self.unknown_param(kind, name),
            None => ClassifyError::not_implemented(operation),
        }
    }

    fn unknown_param(&self, kind: Kind, name: &str) -> ClassifyError {
        ClassifyError::not_implemented(format!(
            "query parameter `{name}` on a {} request to {kind}",
            self.method
        ))
    }
}

/// What a request is addressed to, for messages.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Bucket,
    Object,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Service => "the service",
            Kind::Bucket => "a bucket",
            Kind::Object => "an object",
        })
    }
}

/// Parameters ListBuckets accepts.
const LIST_BUCKETS_PARAMS: &[&str] = &["bucket-region", "continuation-token", "max-buckets", "prefix"];

/// Parameters ListObjects and ListObjectsV2 accept.
const LIST_OBJECTS_PARAMS: &[&str] = &[
    "continuation-token",
    "delimiter",
    "encoding-type",
    "fetch-owner",
    "list-type",
    "marker",
    "max-keys",
    "prefix",
    "start-after",
];

/// Parameters ListMultipartUploads accepts. Its resource is the bucket, so none of them
/// changes the access.
const LIST_UPLOADS_PARAMS: &[&str] = &[
    "delimiter",
    "encoding-type",
    "key-marker",
    "max-uploads",
    "prefix",
    "upload-id-marker",
    "uploads",
];

/// Parameters GetObject and HeadObject accept.
const READ_PARAMS: &[&str] = &[
    "partNumber",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "versionId",
];

/// Parameters ListParts accepts.
const LIST_PARTS_PARAMS: &[&str] = &["max-parts", "part-number-marker", "uploadId"];

/// Headers that make an object write also set ACLs, tags or object-lock state, and the
/// permission IAM requires for each. PostObject applies it to form fields of the same names.
pub(super) const WRITE_HEADER_ACTIONS: &[(&str, &str)] = &[
    ("x-amz-acl", "s3:PutObjectAcl"),
    ("x-amz-grant-full-control", "s3:PutObjectAcl"),
    ("x-amz-grant-read", "s3:PutObjectAcl"),
    ("x-amz-grant-read-acp", "s3:PutObjectAcl"),
    ("x-amz-grant-write", "s3:PutObjectAcl"),
    ("x-amz-grant-write-acp", "s3:PutObjectAcl"),
    ("x-amz-tagging", "s3:PutObjectTagging"),
    ("x-amz-object-lock-mode", "s3:PutObjectRetention"),
    ("x-amz-object-lock-retain-until-date", "s3:PutObjectRetention"),
    ("x-amz-object-lock-legal-hold", "s3:PutObjectLegalHold"),
];

/// Headers that make CreateBucket also set ACLs, object lock or ownership, and the
/// permissions AWS requires for each.
const CREATE_BUCKET_HEADER_ACTIONS: &[(&str, &str)] = &[
    ("x-amz-acl", "s3:PutBucketAcl"),
    ("x-amz-grant-full-control", "s3:PutBucketAcl"),
    ("x-amz-grant-read", "s3:PutBucketAcl"),
    ("x-amz-grant-read-acp", "s3:PutBucketAcl"),
    ("x-amz-grant-write", "s3:PutBucketAcl"),
    ("x-amz-grant-write-acp", "s3:PutBucketAcl"),
    (
        "x-amz-bucket-object-lock-enabled",
        "s3:PutBucketObjectLockConfiguration",
    ),
    ("x-amz-bucket-object-lock-enabled", "s3:PutBucketVersioning"),
    ("x-amz-object-ownership", "s3:PutBucketOwnershipControls"),
];

/// Lets a delete remove an object under governance-mode retention.
const BYPASS_GOVERNANCE: &str = "x-amz-bypass-governance-retention";

/// `GET /`.
fn service_op(req: &Request<'_>) -> Result<Operation, ClassifyError> {
    if *req.method != Method::GET {
        return Err(method_not_allowed(req.method));
    }
    req.allow_only(Kind::Service, LIST_BUCKETS_PARAMS)?;
    Ok(single(
        "ListBuckets",
        "s3:ListAllMyBuckets",
        Resource::s3_account(),
    ))
}

/// Requests to a bucket.
fn bucket_op(req: &Request<'_>, bucket: &str) -> Result<Operation, ClassifyError> {
    if let Some(op) = subresource_op(req, Level::Bucket, bucket, "")? {
        return Ok(op);
    }
    let q = &req.query;
    let kind = Kind::Bucket;
    match *req.method {
        Method::GET if q.has("uploads") => {
            req.allow_only(kind, LIST_UPLOADS_PARAMS)?;
            let prefix = q.get("prefix").unwrap_or_default();
            key::check(prefix, KeyUse::Prefix, req.keys, "the uploads prefix")?;
            let (action, resource) = ("s3:ListBucketMultipartUploads", bucket_resource(bucket));
            Ok(single("ListMultipartUploads", action, resource))
        }
        Method::GET => list_objects(req, bucket),
        Method::HEAD => {
            req.allow_only(kind, &[])?;
            Ok(single("HeadBucket", "s3:ListBucket", bucket_resource(bucket)))
        }
        Method::POST if q.has("delete") => {
            req.allow_only(kind, &["delete"])?;
            Err(ClassifyError::BodyRequired(PendingDeleteObjects {
                bucket: bucket.to_owned(),
                bypass_governance: req.headers.contains_key(BYPASS_GOVERNANCE),
                keys: req.keys,
            }))
        }
        Method::POST => {
            req.allow_only(kind, &[])?;
            match form_boundary(req.headers)? {
                Some(boundary) => Err(ClassifyError::FormRequired(PendingPostObject::new(
                    bucket.to_owned(),
                    req.keys,
                    boundary,
                ))),
                None => Err(ClassifyError::MalformedPost {
                    reason: "a POST to a bucket is a browser form upload (PostObject): its body must be \
                             multipart/form-data, with a boundary"
                        .into(),
                }),
            }
        }
        Method::PUT => {
            req.allow_only(kind, &[])?;
            let mut op = single("CreateBucket", "s3:CreateBucket", bucket_resource(bucket));
            add_header_accesses(&mut op, req.headers, CREATE_BUCKET_HEADER_ACTIONS);
            Ok(op)
        }
        Method::DELETE => {
            req.allow_only(kind, &[])?;
            Ok(single("DeleteBucket", "s3:DeleteBucket", bucket_resource(bucket)))
        }
        _ => Err(method_not_allowed(req.method)),
    }
}

/// An operation named by a subresource parameter (see [`subresource`]), if the query has one.
fn subresource_op(
    req: &Request<'_>,
    level: Level,
    bucket: &str,
    key: &str,
) -> Result<Option<Operation>, ClassifyError> {
    let mut named = (req.query.params.keys()).filter(|p| subresource::is_subresource(level, p));
    let Some(param) = named.next() else {
        return Ok(None);
    };
    if let Some(other) = named.next() {
        return Err(ClassifyError::invalid_argument(format!(
            "the query names two subresources, `{param}` and `{other}`"
        )));
    }
    let kind = match level {
        Level::Bucket => Kind::Bucket,
        Level::Object => Kind::Object,
    };
    let mut rows = (SUBRESOURCES.iter())
        .filter(|s| s.level == level && s.param == param && s.method == req.method.as_str())
        .peekable();
    if rows.peek().is_none() {
        return Err(method_not_allowed(req.method));
    }
    let mut needed = None;
    let Some(row) = rows.find(|s| {
        let holds = needs_hold(s.needs, &req.query);
        if !holds {
            needed.get_or_insert(s.needs);
        }
        holds
    }) else {
        return Err(ClassifyError::invalid_argument(match needed {
            Some(Needs::Equals(p, v)) => format!("`{param}` on {} needs `{p}={v}`", req.method),
            Some(Needs::Param(p)) => format!("`{param}` on {} needs the `{p}` parameter", req.method),
            Some(Needs::NoParam(p)) => format!("`{param}` on {} takes no `{p}` parameter", req.method),
            _ => format!("`{param}` on {} is not an S3 operation", req.method),
        }));
    };
    let mut allowed = vec![row.param];
    allowed.extend_from_slice(row.params);
    if row.versioned.is_some() {
        allowed.push("versionId");
    }
    req.allow_only(kind, &allowed)?;
    let actions = match (version_id(&req.query)?, row.versioned) {
        (Some(_), Some(versioned)) => versioned,
        _ => row.actions,
    };
    let resource = match row.resource {
        SubResource::Bucket => bucket_resource(bucket),
        SubResource::Object => object_resource(bucket, key),
        SubResource::Prefix => {
            let prefix = req.query.get("prefix").unwrap_or_default();
            key::check(prefix, KeyUse::Prefix, req.keys, "the listing prefix")?;
            object_resource(bucket, prefix)
        }
    };
    if let Some(reason) = row.never {
        return Err(ClassifyError::NeverForwarded {
            operation: row.name,
            reason,
        });
    }
    // The table gives every row at least one action (its tests check); a row without one
    // would authorize nothing, so it is refused rather than forwarded.
    let (first, rest) = actions
        .split_first()
        .ok_or_else(|| ClassifyError::NotImplemented {
            what: format!("{} (no IAM action known)", row.name),
        })?;
    let mut op = Operation::new(row.name, Access::new(*first, resource.clone()));
    for action in rest {
        op.also_needs(Access::new(*action, resource.clone()));
    }
    add_header_accesses(&mut op, req.headers, row.headers);
    Ok(Some(op))
}

fn needs_hold(needs: Needs, q: &Query) -> bool {
    match needs {
        Needs::Nothing => true,
        Needs::Param(p) => q.has(p),
        Needs::NoParam(p) => !q.has(p),
        Needs::Equals(p, v) => q.get(p) == Some(v),
    }
}

/// `GET /b`: ListObjects, or ListObjectsV2 with `list-type=2`. The resource is the listed
/// prefix, so `s3:ListBucket` on `s3://b/p/*` allows listing under `p/` only.
fn list_objects(req: &Request<'_>, bucket: &str) -> Result<Operation, ClassifyError> {
    let name = match req.query.get("list-type") {
        None => "ListObjects",
        Some("2") => "ListObjectsV2",
        Some(other) => {
            return Err(ClassifyError::invalid_argument(format!(
                "list-type must be 2, not `{other}`"
            )));
        }
    };
    req.allow_only(Kind::Bucket, LIST_OBJECTS_PARAMS)?;
    let prefix = req.query.get("prefix").unwrap_or_default();
    key::check(prefix, KeyUse::Prefix, req.keys, "the listing prefix")?;
    Ok(single(name, "s3:ListBucket", object_resource(bucket, prefix)))
}

/// Requests to an object.
fn object_op(req: &Request<'_>, bucket: &str, key: &str) -> Result<Operation, ClassifyError> {
    if let Some(op) = subresource_op(req, Level::Object, bucket, key)? {
        return Ok(op);
    }
    let q = &req.query;
    let target = object_resource(bucket, key);
    match *req.method {
        Method::GET if q.has("uploadId") => {
            req.allow_only(Kind::Object, LIST_PARTS_PARAMS)?;
            upload_id(q)?;
            Ok(single("ListParts", "s3:ListMultipartUploadParts", target))
        }
        Method::GET => read_object(req, "GetObject", target),
        Method::HEAD => read_object(req, "HeadObject", target),
        Method::PUT if q.has("uploadId") || q.has("partNumber") => upload_part(req, target),
        Method::PUT => put_object(req, target),
        Method::POST if q.has("uploads") => {
            req.allow_only(Kind::Object, &["uploads"])?;
            let mut op = single("CreateMultipartUpload", "s3:PutObject", target);
            add_header_accesses(&mut op, req.headers, WRITE_HEADER_ACTIONS);
            Ok(op)
        }
        Method::POST if q.has("uploadId") => {
            req.allow_only(Kind::Object, &["uploadId"])?;
            upload_id(q)?;
            Ok(single("CompleteMultipartUpload", "s3:PutObject", target))
        }
        Method::POST => Err(req.unsupported(
            Kind::Object,
            "a POST to an object without `uploads`, `uploadId`, `restore` or `select`",
        )),
        Method::DELETE if q.has("uploadId") => {
            req.allow_only(Kind::Object, &["uploadId"])?;
            upload_id(q)?;
            Ok(single("AbortMultipartUpload", "s3:AbortMultipartUpload", target))
        }
        Method::DELETE => delete_object(req, target),
        _ => Err(method_not_allowed(req.method)),
    }
}

/// GetObject / HeadObject: reading a specific version is `s3:GetObjectVersion`.
fn read_object(req: &Request<'_>, name: &'static str, target: Resource) -> Result<Operation, ClassifyError> {
    req.allow_only(Kind::Object, READ_PARAMS)?;
    part_number(&req.query)?;
    let action = match version_id(&req.query)? {
        Some(_) => "s3:GetObjectVersion",
        None => "s3:GetObject",
    };
    Ok(single(name, action, target))
}

/// PutObject, or CopyObject when `x-amz-copy-source` is present.
fn put_object(req: &Request<'_>, target: Resource) -> Result<Operation, ClassifyError> {
    req.allow_only(Kind::Object, &[])?;
    let mut op = match copy_source(req.headers, req.keys)? {
        Some(source) => copied("CopyObject", target, source),
        None => single("PutObject", "s3:PutObject", target),
    };
    add_header_accesses(&mut op, req.headers, WRITE_HEADER_ACTIONS);
    Ok(op)
}

/// UploadPart, or UploadPartCopy when `x-amz-copy-source` is present. Both parameters are
/// required: with only one, S3 would run a different operation.
fn upload_part(req: &Request<'_>, target: Resource) -> Result<Operation, ClassifyError> {
    req.allow_only(Kind::Object, &["partNumber", "uploadId"])?;
    if part_number(&req.query)?.is_none() {
        return Err(ClassifyError::invalid_argument(
            "uploading a part needs both partNumber and uploadId",
        ));
    }
    upload_id(&req.query)?;
    Ok(match copy_source(req.headers, req.keys)? {
        Some(source) => copied("UploadPartCopy", target, source),
        None => single("UploadPart", "s3:PutObject", target),
    })
}

/// DeleteObject: deleting a specific version is `s3:DeleteObjectVersion`.
fn delete_object(req: &Request<'_>, target: Resource) -> Result<Operation, ClassifyError> {
    req.allow_only(Kind::Object, &["versionId"])?;
    let action = match version_id(&req.query)? {
        Some(_) => "s3:DeleteObjectVersion",
        None => "s3:DeleteObject",
    };
    let mut op = single("DeleteObject", action, target);
    let bypass = [(BYPASS_GOVERNANCE, "s3:BypassGovernanceRetention")];
    add_header_accesses(&mut op, req.headers, &bypass);
    Ok(op)
}

/// A copy: `s3:PutObject` on the target, then the read of the source.
fn copied(name: &'static str, target: Resource, source: CopySource) -> Operation {
    let read = match source.version_id {
        Some(_) => "s3:GetObjectVersion",
        None => "s3:GetObject",
    };
    let mut op = Operation::new(name, Access::new("s3:PutObject", target));
    op.also_needs(Access::new(read, object_resource(&source.bucket, &source.key)));
    op.copy_source = Some(source);
    op
}

/// The `x-amz-copy-source` header, parsed, if present.
fn copy_source(headers: &HeaderMap, keys: KeyRule) -> Result<Option<CopySource>, ClassifyError> {
    let mut values = headers.get_all("x-amz-copy-source").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ClassifyError::invalid_argument(
            "x-amz-copy-source is given more than once",
        ));
    }
    let raw = value.to_str().map_err(|_| {
        ClassifyError::invalid_argument("x-amz-copy-source must be ASCII: percent-encode the key")
    })?;
    let source = parse_copy_source(raw)?;
    key::check(&source.key, KeyUse::Key, keys, "the x-amz-copy-source key")?;
    Ok(Some(source))
}

/// Parses `[/]bucket/url-encoded-key[?versionId=id]`.
///
/// The first raw `?` ends the key, as in S3 (a `?` inside a key arrives as `%3F`). A raw `+`
/// is refused for the same reason as in paths.
fn parse_copy_source(raw: &str) -> Result<CopySource, ClassifyError> {
    let bad = |why: &str| ClassifyError::invalid_argument(format!("x-amz-copy-source `{raw}`: {why}"));
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    let version_id = match query {
        None => None,
        Some(query) => match query.strip_prefix("versionId=") {
            Some(id)
                if !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic() && !b"&#?".contains(&b)) =>
            {
                Some(id.to_owned())
            }
            _ => return Err(bad("only `?versionId=<id>` may follow the key")),
        },
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = path.split_once('/').ok_or_else(|| bad("expected `bucket/key`"))?;
    if !is_valid_bucket(bucket) {
        return Err(bad("not a valid bucket name"));
    }
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    if key.contains('+') {
        return Err(bad("a raw `+` is ambiguous; encode it as %2B, or a space as %20"));
    }
    let key = decode(key, Plus::Literal).map_err(|e| bad(&format!("the key {e}")))?;
    Ok(CopySource {
        bucket: bucket.to_owned(),
        key,
        version_id,
    })
}

/// The decoded `versionId`, refusing an empty one (whether S3 would read it as "the latest"
/// decides between two different permissions, so it is not ours to guess).
fn version_id(q: &Query) -> Result<Option<&str>, ClassifyError> {
    non_empty_version(q.get("versionId"))
}

fn non_empty_version(version: Option<&str>) -> Result<Option<&str>, ClassifyError> {
    match version {
        Some("") => Err(ClassifyError::invalid_argument("versionId must not be empty")),
        other => Ok(other),
    }
}

/// The required, non-empty `uploadId`.
fn upload_id(q: &Query) -> Result<&str, ClassifyError> {
    match q.get("uploadId") {
        Some(id) if !id.is_empty() => Ok(id),
        Some(_) => Err(ClassifyError::invalid_argument("uploadId must not be empty")),
        None => Err(ClassifyError::invalid_argument(
            "uploading a part needs both partNumber and uploadId",
        )),
    }
}

/// The optional `partNumber`, which must be 1–10000 as in S3.
fn part_number(q: &Query) -> Result<Option<u16>, ClassifyError> {
    let Some(raw) = q.get("partNumber") else {
        return Ok(None);
    };
    match raw.parse::<u16>() {
        Ok(n) if (1..=10_000).contains(&n) && !raw.starts_with('+') => Ok(Some(n)),
        _ => Err(ClassifyError::invalid_argument(format!(
            "partNumber must be an integer from 1 to 10000, not `{raw}`"
        ))),
    }
}

/// Appends the access each present header in `table` requires, once per action.
fn add_header_accesses(op: &mut Operation, headers: &HeaderMap, table: &[(&str, &str)]) {
    let target = op.primary().resource.clone();
    for (header, action) in table {
        let needed = headers.contains_key(*header);
        if needed && !op.needs_action(action) {
            op.also_needs(Access::new(*action, target.clone()));
        }
    }
}

fn single(name: &'static str, action: &str, resource: Resource) -> Operation {
    Operation::new(name, Access::new(action, resource))
}

fn bucket_resource(bucket: &str) -> Resource {
    Resource::s3_bucket(bucket)
}

fn object_resource(bucket: &str, key: &str) -> Resource {
    Resource::s3_object(bucket, key)
}

fn method_not_allowed(method: &Method) -> ClassifyError {
    ClassifyError::MethodNotAllowed {
        method: method.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VHOST: Option<&str> = Some("s3.example.com");
    const HOST: &str = "host";
    const COPY: &str = "x-amz-copy-source";

    /// `"<METHOD> <uri>"` → parts.
    fn parts(request: &str, headers: &[(&str, &str)]) -> Parts {
        let (method, uri) = request.split_once(' ').expect("`METHOD uri`");
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid test request").into_parts().0
    }

    /// Reads the target, then classifies: what the pipeline does.
    fn classify_parts(parts: &Parts, s3: &S3Target<'_>) -> Result<Operation, ClassifyError> {
        classify_s3(parts, &RequestTarget::read(parts)?, s3)
    }

    fn variant(e: &ClassifyError) -> &'static str {
        match e {
            ClassifyError::NotImplemented { .. } => "NotImplemented",
            ClassifyError::InvalidUri { .. } => "InvalidUri",
            ClassifyError::InvalidBucketName { .. } => "InvalidBucketName",
            ClassifyError::InvalidArgument { .. } => "InvalidArgument",
            ClassifyError::MethodNotAllowed { .. } => "MethodNotAllowed",
            ClassifyError::NeverForwarded { .. } => "NeverForwarded",
            ClassifyError::BodyRequired(_) => "BodyRequired",
            ClassifyError::FormRequired(_) => "FormRequired",
            ClassifyError::MalformedXml { .. } => "MalformedXml",
            ClassifyError::MalformedPost { .. } => "MalformedPost",
            ClassifyError::FormTooLarge { .. } => "FormTooLarge",
        }
    }

    /// `"<Operation>: <action> <resource> | <action> <resource>"`, or `"!<error variant>"`.
    fn render(result: &Result<Operation, ClassifyError>) -> String {
        match result {
            Ok(op) => {
                let accesses: Vec<String> = (op.accesses())
                    .map(|a| format!("{} {}", a.action, a.resource))
                    .collect();
                format!("{}: {}", op.name, accesses.join(" | "))
            }
            Err(e) => format!("!{}", variant(e)),
        }
    }

    fn classify(vhost: Option<&str>, request: &str, headers: &[(&str, &str)]) -> String {
        let target = S3Target {
            virtual_host: vhost,
            ..S3Target::default()
        };
        render(&classify_parts(&parts(request, headers), &target))
    }

    /// Request headers, as `(name, value)`.
    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// Rows of `(request, headers, want)`.
    fn run_with(vhost: Option<&str>, cases: &[(&str, Headers<'_>, &str)]) {
        for (request, headers, want) in cases {
            let got = classify(vhost, request, headers);
            assert_eq!(got, *want, "{request} {headers:?} (virtual host {vhost:?})");
        }
    }

    /// Rows of `(request, want)`, without headers.
    fn run(vhost: Option<&str>, cases: &[(&str, &str)]) {
        for (request, want) in cases {
            let got = classify(vhost, request, &[]);
            assert_eq!(got, *want, "{request} (virtual host {vhost:?})");
        }
    }

    #[test]
    fn service_requests() {
        run(
            None,
            &[
                ("GET /", "ListBuckets: s3:ListAllMyBuckets s3://"),
                (
                    "GET /?max-buckets=10&prefix=a",
                    "ListBuckets: s3:ListAllMyBuckets s3://",
                ),
                ("GET /?x-id=ListBuckets", "ListBuckets: s3:ListAllMyBuckets s3://"),
                ("GET /?x-id=ListDirectoryBuckets", "!InvalidArgument"),
                ("GET /bkt/k?x-id=DeleteObject", "!InvalidArgument"),
                ("PUT /bkt/k?x-id=PutObject", "PutObject: s3:PutObject s3://bkt/k"),
                ("POST /bkt?delete&x-id=DeleteObjects", "!BodyRequired"),
                ("POST /bkt?delete&x-id=PutObject", "!InvalidArgument"),
                ("GET /?acl", "!NotImplemented"),
                ("HEAD /", "!MethodNotAllowed"),
                ("PUT /", "!MethodNotAllowed"),
                ("POST /", "!MethodNotAllowed"),
                ("DELETE /", "!MethodNotAllowed"),
            ],
        );
    }

    #[test]
    fn bucket_requests() {
        run(
            None,
            &[
                ("HEAD /bkt", "HeadBucket: s3:ListBucket s3://bkt"),
                ("HEAD /bkt/", "HeadBucket: s3:ListBucket s3://bkt"),
                ("HEAD /bkt?acl", "!MethodNotAllowed"),
                (
                    "GET /bkt?location",
                    "GetBucketLocation: s3:GetBucketLocation s3://bkt",
                ),
                (
                    "GET /bkt?location=",
                    "GetBucketLocation: s3:GetBucketLocation s3://bkt",
                ),
                ("GET /bkt?location&prefix=x", "!NotImplemented"),
                (
                    "GET /bkt?uploads",
                    "ListMultipartUploads: s3:ListBucketMultipartUploads s3://bkt",
                ),
                (
                    "GET /bkt?uploads&prefix=x&max-uploads=5&key-marker=k&upload-id-marker=u",
                    "ListMultipartUploads: s3:ListBucketMultipartUploads s3://bkt",
                ),
                ("POST /bkt?delete", "!BodyRequired"),
                ("POST /bkt/?delete=", "!BodyRequired"),
                ("POST /bkt?delete&acl", "!MethodNotAllowed"),
                ("POST /bkt?delete&x=1", "!NotImplemented"),
                ("POST /bkt", "!MalformedPost"),
                ("POST /bkt?x=1", "!NotImplemented"),
                ("PUT /bkt", "CreateBucket: s3:CreateBucket s3://bkt"),
                ("PUT /bkt?x=1", "!NotImplemented"),
                (
                    "PUT /bkt?versioning",
                    "PutBucketVersioning: s3:PutBucketVersioning s3://bkt",
                ),
                ("DELETE /bkt", "DeleteBucket: s3:DeleteBucket s3://bkt"),
                (
                    "DELETE /bkt?policy",
                    "DeleteBucketPolicy: s3:DeleteBucketPolicy s3://bkt",
                ),
                (
                    "DELETE /bkt?lifecycle",
                    "DeleteBucketLifecycle: s3:PutLifecycleConfiguration s3://bkt",
                ),
                (
                    "GET /bkt?analytics",
                    "ListBucketAnalyticsConfigurations: s3:GetAnalyticsConfiguration s3://bkt",
                ),
                (
                    "GET /bkt?analytics&id=a",
                    "GetBucketAnalyticsConfiguration: s3:GetAnalyticsConfiguration s3://bkt",
                ),
                ("PUT /bkt?analytics", "!InvalidArgument"),
                ("GET /bkt?acl&policy", "!InvalidArgument"),
                ("GET /bkt?session", "!NeverForwarded"),
                ("POST /bkt?session", "!MethodNotAllowed"),
                ("PATCH /bkt", "!MethodNotAllowed"),
                ("OPTIONS /bkt", "!MethodNotAllowed"),
            ],
        );
    }

    #[test]
    fn listings() {
        run(
            None,
            &[
                ("GET /bkt", "ListObjects: s3:ListBucket s3://bkt/"),
                ("GET /bkt/", "ListObjects: s3:ListBucket s3://bkt/"),
                (
                    "GET /bkt?prefix=a%20b/&marker=x&max-keys=10&delimiter=%2F&encoding-type=url",
                    "ListObjects: s3:ListBucket s3://bkt/a b/",
                ),
                (
                    "GET /bkt/?list-type=2&prefix=data%2Ftrain%2F&delimiter=%2F",
                    "ListObjectsV2: s3:ListBucket s3://bkt/data/train/",
                ),
                (
                    "GET /bkt?list-type=2&prefix=a+b",
                    "ListObjectsV2: s3:ListBucket s3://bkt/a b",
                ),
                (
                    "GET /bkt?list-type=2&prefix=a%2Bb",
                    "ListObjectsV2: s3:ListBucket s3://bkt/a+b",
                ),
                (
                    "GET /bkt?list-type=2&prefix=",
                    "ListObjectsV2: s3:ListBucket s3://bkt/",
                ),
                ("GET /bkt?list-type=2&prefix=../x/*", "!InvalidArgument"),
                ("GET /bkt?list-type=2&prefix=%2Fpii%2F", "!InvalidArgument"),
                ("GET /bkt?prefix=a/%2e/", "!InvalidArgument"),
                ("GET /bkt?prefix=a/.h", "ListObjects: s3:ListBucket s3://bkt/a/.h"),
                (
                    "GET /bkt?list-type=2&continuation-token=abc%3D&start-after=x&fetch-owner=true",
                    "ListObjectsV2: s3:ListBucket s3://bkt/",
                ),
                ("GET /bkt?list-type=1", "!InvalidArgument"),
                ("GET /bkt?list-type=", "!InvalidArgument"),
                ("GET /bkt?list-type=2&list-type=2", "!InvalidArgument"),
                ("GET /bkt?prefix=a&prefix=b", "!InvalidArgument"),
                ("GET /bkt?prefix=%00", "!InvalidUri"),
                ("GET /bkt?prefix=%zz", "!InvalidUri"),
                ("GET /bkt?prefix=%C3", "!InvalidUri"),
            ],
        );
    }

    #[test]
    fn bucket_subresources_are_classified_never_listings() {
        let subresources = [
            ("acl", "GetBucketAcl"),
            ("policy", "GetBucketPolicy"),
            ("policyStatus", "GetBucketPolicyStatus"),
            ("versioning", "GetBucketVersioning"),
            ("cors", "GetBucketCors"),
            ("lifecycle", "GetBucketLifecycleConfiguration"),
            ("tagging", "GetBucketTagging"),
            ("website", "GetBucketWebsite"),
            ("logging", "GetBucketLogging"),
            ("notification", "GetBucketNotificationConfiguration"),
            ("replication", "GetBucketReplication"),
            ("encryption", "GetBucketEncryption"),
            ("object-lock", "GetObjectLockConfiguration"),
            ("ownershipControls", "GetBucketOwnershipControls"),
            ("publicAccessBlock", "GetPublicAccessBlock"),
            ("requestPayment", "GetBucketRequestPayment"),
            ("accelerate", "GetBucketAccelerateConfiguration"),
            ("analytics", "ListBucketAnalyticsConfigurations"),
            ("inventory", "ListBucketInventoryConfigurations"),
            ("metrics", "ListBucketMetricsConfigurations"),
            (
                "intelligent-tiering",
                "ListBucketIntelligentTieringConfigurations",
            ),
        ];
        for (sub, name) in subresources {
            for query in [sub.to_owned(), format!("{sub}=")] {
                let request = format!("GET /bkt?{query}");
                let op = classify_parts(&parts(&request, &[]), &S3Target::default()).unwrap();
                assert_eq!(op.name, name, "{request}");
                assert_ne!(op.primary().action, "s3:ListBucket", "{request}");
            }
            // combined with a listing's parameters, still not a listing
            let request = format!("GET /bkt?list-type=2&{sub}");
            assert!(
                classify_parts(&parts(&request, &[]), &S3Target::default()).is_err(),
                "{request}"
            );
        }
        for query in ["not-a-subresource", "list-type=2&not-a-subresource", "ACL"] {
            let request = format!("GET /bkt?{query}");
            let result = classify_parts(&parts(&request, &[]), &S3Target::default());
            assert!(
                matches!(result, Err(ClassifyError::NotImplemented { .. })),
                "{request}: {result:?}"
            );
        }
    }

    #[test]
    fn object_reads() {
        run(
            None,
            &[
                ("GET /bkt/k", "GetObject: s3:GetObject s3://bkt/k"),
                ("HEAD /bkt/k", "HeadObject: s3:GetObject s3://bkt/k"),
                (
                    "GET /bkt/dir/sub/file.txt",
                    "GetObject: s3:GetObject s3://bkt/dir/sub/file.txt",
                ),
                (
                    "GET /bkt/k?versionId=v1",
                    "GetObject: s3:GetObjectVersion s3://bkt/k",
                ),
                (
                    "HEAD /bkt/k?versionId=null",
                    "HeadObject: s3:GetObjectVersion s3://bkt/k",
                ),
                ("GET /bkt/k?versionId=", "!InvalidArgument"),
                ("GET /bkt/k?versionId", "!InvalidArgument"),
                ("GET /bkt/k?versionId=a&versionId=b", "!InvalidArgument"),
                ("GET /bkt/k?VersionId=v1", "!NotImplemented"),
                ("GET /bkt/k?partNumber=1", "GetObject: s3:GetObject s3://bkt/k"),
                (
                    "HEAD /bkt/k?partNumber=10000",
                    "HeadObject: s3:GetObject s3://bkt/k",
                ),
                ("GET /bkt/k?partNumber=0", "!InvalidArgument"),
                ("GET /bkt/k?partNumber=10001", "!InvalidArgument"),
                ("GET /bkt/k?partNumber=%2B1", "!InvalidArgument"),
                ("GET /bkt/k?partNumber=one", "!InvalidArgument"),
                (
                    "GET /bkt/k?response-content-type=text%2Fplain&response-content-disposition=a\
                     &response-cache-control=no-cache&response-content-language=en\
                     &response-expires=0&response-content-encoding=gzip",
                    "GetObject: s3:GetObject s3://bkt/k",
                ),
                ("GET /bkt/k?&&", "GetObject: s3:GetObject s3://bkt/k"),
                ("GET /bkt/k?=x", "!InvalidArgument"),
                (
                    "GET /bkt/k?uploadId=u1",
                    "ListParts: s3:ListMultipartUploadParts s3://bkt/k",
                ),
                (
                    "GET /bkt/k?uploadId=u1&max-parts=10&part-number-marker=2",
                    "ListParts: s3:ListMultipartUploadParts s3://bkt/k",
                ),
                ("GET /bkt/k?uploadId=", "!InvalidArgument"),
                ("GET /bkt/k?uploadId=u1&partNumber=1", "!NotImplemented"),
            ],
        );
        // Headers that only matter to writes do not change a read.
        let write_headers: &[(&str, &str)] = &[("x-amz-acl", "public-read"), (COPY, "src/x")];
        let got = classify(None, "GET /bkt/k", write_headers);
        assert_eq!(got, "GetObject: s3:GetObject s3://bkt/k");
    }

    #[test]
    fn literal_routes_keep_dot_segments_and_address_the_authorized_key() {
        let literal = S3Target {
            keys: KeyRule::Literal,
            ..S3Target::default()
        };
        for (request, key) in [
            ("GET /bkt/a//b/../c/./d", "a//b/../c/./d"),
            ("GET /bkt/a/%2e%2E/b", "a/../b"),
            ("GET /bkt/..", ".."),
            ("GET /bkt//", "/"),
        ] {
            let op = classify_parts(&parts(request, &[]), &literal).unwrap();
            let want = S3Address::Object {
                bucket: "bkt".into(),
                key: key.into(),
            };
            assert_eq!(op.s3, Some(want), "{request}");
            assert_eq!(op.primary().resource, format!("s3://bkt/{key}"), "{request}");
        }
        let copy = [("x-amz-copy-source", "src/a/../b")];
        let op = classify_parts(&parts("PUT /bkt/k", &copy), &literal).unwrap();
        assert_eq!(op.also()[0].resource, "s3://src/a/../b");
        assert!(classify_parts(&parts("PUT /bkt/k", &copy), &S3Target::default()).is_err());
        let op = classify_parts(&parts("GET /bkt?prefix=../x", &[]), &literal).unwrap();
        assert_eq!(op.primary().resource, "s3://bkt/../x");
    }

    #[test]
    fn keys_are_decoded_once_and_kept_literal() {
        run(
            None,
            &[
                ("GET /bkt/a%20b%2Fc", "GetObject: s3:GetObject s3://bkt/a b/c"),
                ("GET /bkt/a%2Bb", "GetObject: s3:GetObject s3://bkt/a+b"),
                ("GET /bkt/%252F", "GetObject: s3:GetObject s3://bkt/%2F"),
                ("GET /bkt/caf%C3%A9", "GetObject: s3:GetObject s3://bkt/café"),
                ("GET /bkt/dir/", "GetObject: s3:GetObject s3://bkt/dir/"),
                (
                    "GET /bkt/.hidden/..x",
                    "GetObject: s3:GetObject s3://bkt/.hidden/..x",
                ),
                ("GET /bkt/a//b/../c/./d", "!InvalidUri"),
                ("GET /bkt/..", "!InvalidUri"),
                ("GET /bkt//", "!InvalidUri"),
                ("GET /bkt/a/%2e%2E/b", "!InvalidUri"),
                ("GET /bkt/a%2F..%2Fb", "!InvalidUri"),
                ("GET /bkt/a/.%2e", "!InvalidUri"),
                ("GET /bkt/*", "GetObject: s3:GetObject s3://bkt/*"),
                ("GET /bkt/a+b", "!InvalidUri"),
                ("PUT /bkt/dir/a+b", "!InvalidUri"),
                ("GET /bkt/a%zz", "!InvalidUri"),
                ("GET /bkt/100%", "!InvalidUri"),
                ("GET /bkt/%C3", "!InvalidUri"),
                ("GET /bkt/a%00", "!InvalidUri"),
                ("GET *", "!InvalidUri"),
            ],
        );
    }

    #[test]
    fn presigned_parameters_are_ignored() {
        let presigned = "GET /bkt/k?X-Amz-Algorithm=AWS4-HMAC-SHA256\
            &X-Amz-Credential=AKIDEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request\
            &X-Amz-Date=20250101T000000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\
            &X-Amz-Security-Token=tok%2Ben&X-Amz-Signature=abcdef&x-id=GetObject";
        run(
            None,
            &[
                (presigned, "GetObject: s3:GetObject s3://bkt/k"),
                ("GET /bkt/k?x-id=GetObject", "GetObject: s3:GetObject s3://bkt/k"),
                // the hint is never trusted over the request itself, and a store may route on
                // it: one that disagrees with the request is refused
                ("GET /bkt/k?x-id=DeleteObject", "!InvalidArgument"),
                ("GET /bkt/k?x-id=a&x-id=b", "!InvalidArgument"),
                // names are case-sensitive: these are not presign parameters
                ("GET /bkt/k?x-amz-signature=abc", "!NotImplemented"),
                ("GET /bkt/k?X-Id=GetObject", "!NotImplemented"),
                (
                    "GET /bkt/k?X-Amz-Signature=a&X-Amz-Signature=b",
                    "!InvalidArgument",
                ),
            ],
        );
    }

    #[test]
    fn object_subresources_are_never_plain_reads_or_writes() {
        for sub in [
            "acl",
            "tagging",
            "retention",
            "legal-hold",
            "torrent",
            "attributes",
            "annotation",
        ] {
            for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
                let request = format!("{method} /bkt/k?{sub}");
                let got = classify(None, &request, &[]);
                let plain = ["GetObject:", "HeadObject:", "PutObject:", "DeleteObject:"];
                assert!(!plain.iter().any(|p| got.starts_with(p)), "{request}: {got}");
            }
        }
        run(
            None,
            &[
                ("GET /bkt/k?acl", "GetObjectAcl: s3:GetObjectAcl s3://bkt/k"),
                (
                    "GET /bkt/k?acl&versionId=3",
                    "GetObjectAcl: s3:GetObjectVersionAcl s3://bkt/k",
                ),
                ("PUT /bkt/k?acl", "PutObjectAcl: s3:PutObjectAcl s3://bkt/k"),
                ("HEAD /bkt/k?acl", "!MethodNotAllowed"),
                ("POST /bkt/k?acl", "!MethodNotAllowed"),
                (
                    "GET /bkt/k?tagging",
                    "GetObjectTagging: s3:GetObjectTagging s3://bkt/k",
                ),
                (
                    "DELETE /bkt/k?tagging&versionId=v",
                    "DeleteObjectTagging: s3:DeleteObjectVersionTagging s3://bkt/k",
                ),
                (
                    "GET /bkt/k?attributes",
                    "GetObjectAttributes: s3:GetObjectAttributes s3://bkt/k | s3:GetObject s3://bkt/k",
                ),
                (
                    "POST /bkt/k?restore",
                    "RestoreObject: s3:RestoreObject s3://bkt/k",
                ),
                (
                    "GET /bkt/k?torrent",
                    "GetObjectTorrent: s3:GetObjectTorrent s3://bkt/k",
                ),
                ("GET /bkt/k?torrent&versionId=1", "!NotImplemented"),
                ("PUT /bkt/k?renameObject", "!NeverForwarded"),
                ("GET /bkt/k?versions", "!NotImplemented"),
                ("GET /bkt/k?ACL", "!NotImplemented"),
                ("GET /bkt/k?%61cl", "GetObjectAcl: s3:GetObjectAcl s3://bkt/k"),
                ("GET /bkt/k?unknown", "!NotImplemented"),
                ("GET /bkt/k?acl&tagging", "!InvalidArgument"),
                ("GET /bkt/k?acl&uploadId=u", "!NotImplemented"),
            ],
        );
    }

    #[test]
    fn object_writes() {
        run(
            None,
            &[
                ("PUT /bkt/k", "PutObject: s3:PutObject s3://bkt/k"),
                ("PUT /bkt/out/a%20b", "PutObject: s3:PutObject s3://bkt/out/a b"),
                ("PUT /bkt/k?x-id=PutObject", "PutObject: s3:PutObject s3://bkt/k"),
                ("PUT /bkt/k?versionId=1", "!NotImplemented"),
                (
                    "PUT /bkt/k?partNumber=3&uploadId=abc",
                    "UploadPart: s3:PutObject s3://bkt/k",
                ),
                ("PUT /bkt/k?partNumber=3", "!InvalidArgument"),
                ("PUT /bkt/k?uploadId=abc", "!InvalidArgument"),
                ("PUT /bkt/k?partNumber=3&uploadId=", "!InvalidArgument"),
                ("PUT /bkt/k?partNumber=0&uploadId=abc", "!InvalidArgument"),
                ("PUT /bkt/k?partNumber=3&uploadId=abc&acl", "!NotImplemented"),
                (
                    "POST /bkt/k?uploads",
                    "CreateMultipartUpload: s3:PutObject s3://bkt/k",
                ),
                (
                    "POST /bkt/k?uploads=",
                    "CreateMultipartUpload: s3:PutObject s3://bkt/k",
                ),
                (
                    "POST /bkt/k?uploads&x-id=CreateMultipartUpload",
                    "CreateMultipartUpload: s3:PutObject s3://bkt/k",
                ),
                (
                    "POST /bkt/k?uploadId=abc",
                    "CompleteMultipartUpload: s3:PutObject s3://bkt/k",
                ),
                ("POST /bkt/k?uploadId=", "!InvalidArgument"),
                ("POST /bkt/k?uploads&uploadId=abc", "!NotImplemented"),
                ("POST /bkt/k", "!NotImplemented"),
                (
                    "POST /bkt/k?select&select-type=2",
                    "SelectObjectContent: s3:GetObject s3://bkt/k",
                ),
                ("POST /bkt/k?select", "!InvalidArgument"),
                ("POST /bkt/k?select&select-type=1", "!InvalidArgument"),
                ("DELETE /bkt/k", "DeleteObject: s3:DeleteObject s3://bkt/k"),
                (
                    "DELETE /bkt/k?versionId=v1",
                    "DeleteObject: s3:DeleteObjectVersion s3://bkt/k",
                ),
                ("DELETE /bkt/k?versionId=", "!InvalidArgument"),
                (
                    "DELETE /bkt/k?uploadId=abc",
                    "AbortMultipartUpload: s3:AbortMultipartUpload s3://bkt/k",
                ),
                ("DELETE /bkt/k?uploadId=abc&versionId=v1", "!NotImplemented"),
                ("DELETE /bkt/k?uploadId=", "!InvalidArgument"),
                ("PATCH /bkt/k", "!MethodNotAllowed"),
                ("OPTIONS /bkt/k", "!MethodNotAllowed"),
                ("TRACE /bkt/k", "!MethodNotAllowed"),
            ],
        );
    }

    #[test]
    fn copies_read_their_source() {
        let copy = |source: &str, request: &str| classify(None, request, &[(COPY, source)]);
        let cases = [
            (
                "src/a%20b.txt",
                "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://src/a b.txt",
            ),
            (
                "/src/dir/k",
                "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://src/dir/k",
            ),
            (
                "/src/dir/k?versionId=3",
                "CopyObject: s3:PutObject s3://bkt/k | s3:GetObjectVersion s3://src/dir/k",
            ),
            (
                "src/a%3Fb",
                "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://src/a?b",
            ),
            (
                "src/a%2Bb/c",
                "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://src/a+b/c",
            ),
            ("src/a%2Bb//../c", "!InvalidUri"),
            ("src/alice/../bob/secret", "!InvalidUri"),
            ("src/alice/%2e%2e/bob/secret", "!InvalidUri"),
            ("src/alice%2F..%2Fbob/secret", "!InvalidUri"),
        ];
        for (source, want) in cases {
            assert_eq!(copy(source, "PUT /bkt/k"), want, "{source}");
        }
        let part = "PUT /bkt/k?partNumber=2&uploadId=u";
        assert_eq!(
            copy("src/big", part),
            "UploadPartCopy: s3:PutObject s3://bkt/k | s3:GetObject s3://src/big"
        );
        assert_eq!(
            copy("src/big?versionId=7", part),
            "UploadPartCopy: s3:PutObject s3://bkt/k | s3:GetObjectVersion s3://src/big"
        );
    }

    #[test]
    fn malformed_copy_sources_are_refused() {
        let sources = [
            "",
            "src",
            "/src",
            "/src/",
            "//src/k",
            "Src/k",
            "s%72c/k",
            "src/k?foo=1",
            "src/k?versionId=",
            "src/k?versionId=1&x=2",
            "src/k%zz",
            "src/k%00",
            "src/%C3",
            "src/a+b",
            "arn:aws:s3:us-east-1:123456789012:accesspoint/ap/object/k",
        ];
        for source in sources {
            let got = classify(None, "PUT /bkt/k", &[(COPY, source)]);
            assert_eq!(got, "!InvalidArgument", "x-amz-copy-source: {source}");
        }
        let twice = [(COPY, "src/a"), (COPY, "src/b")];
        assert_eq!(classify(None, "PUT /bkt/k", &twice), "!InvalidArgument");

        let mut head = parts("PUT /bkt/k", &[]);
        let value = http::HeaderValue::from_bytes("src/café".as_bytes()).expect("obs-text is valid");
        head.headers.insert(COPY, value);
        let result = classify_parts(&head, &S3Target::default());
        assert_eq!(render(&result), "!InvalidArgument");
    }

    #[test]
    fn write_headers_add_the_permissions_iam_requires() {
        run_with(
            None,
            &[
                (
                    "PUT /bkt/k",
                    &[("x-amz-acl", "public-read")],
                    "PutObject: s3:PutObject s3://bkt/k | s3:PutObjectAcl s3://bkt/k",
                ),
                (
                    "PUT /bkt/k",
                    &[("x-amz-grant-read", "uri=\"AllUsers\""), ("x-amz-acl", "private")],
                    "PutObject: s3:PutObject s3://bkt/k | s3:PutObjectAcl s3://bkt/k",
                ),
                (
                    "PUT /bkt/k",
                    &[("x-amz-tagging", "a=b"), ("x-amz-grant-full-control", "id=1")],
                    "PutObject: s3:PutObject s3://bkt/k | s3:PutObjectAcl s3://bkt/k \
                     | s3:PutObjectTagging s3://bkt/k",
                ),
                (
                    "PUT /bkt/k",
                    &[
                        ("x-amz-object-lock-mode", "GOVERNANCE"),
                        ("x-amz-object-lock-retain-until-date", "2030-01-01T00:00:00Z"),
                        ("x-amz-object-lock-legal-hold", "ON"),
                    ],
                    "PutObject: s3:PutObject s3://bkt/k | s3:PutObjectRetention s3://bkt/k \
                     | s3:PutObjectLegalHold s3://bkt/k",
                ),
                (
                    "PUT /bkt/k",
                    &[(COPY, "src/s"), ("x-amz-acl", "bucket-owner-full-control")],
                    "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://src/s \
                     | s3:PutObjectAcl s3://bkt/k",
                ),
                (
                    "POST /bkt/k?uploads",
                    &[("x-amz-tagging", "a=b")],
                    "CreateMultipartUpload: s3:PutObject s3://bkt/k | s3:PutObjectTagging s3://bkt/k",
                ),
                (
                    "DELETE /bkt/k?versionId=v",
                    &[("x-amz-bypass-governance-retention", "true")],
                    "DeleteObject: s3:DeleteObjectVersion s3://bkt/k \
                     | s3:BypassGovernanceRetention s3://bkt/k",
                ),
                (
                    "PUT /bkt/k",
                    &[("content-type", "text/plain"), ("x-amz-meta-owner", "me")],
                    "PutObject: s3:PutObject s3://bkt/k",
                ),
            ],
        );
    }

    #[test]
    fn bucket_names_are_validated_as_sent() {
        let long_ok = "a".repeat(63);
        let long_bad = "a".repeat(64);
        let valid = ["abc", "my.bucket-1", "1bucket9", "1.2.3.x", &long_ok];
        for bucket in valid {
            let want = format!("GetObject: s3:GetObject s3://{bucket}/k");
            assert_eq!(classify(None, &format!("GET /{bucket}/k"), &[]), want);
        }
        let invalid = [
            "ab",
            "a..b",
            "-abc",
            "abc-",
            ".abc",
            "ABC",
            "Bucket",
            "a_b_c",
            "192.168.1.1",
            "%62kt",
            "b%6Bt",
            "..",
            ".",
            "",
            "abc+d",
            &long_bad,
        ];
        for bucket in invalid {
            let request = format!("GET /{bucket}/k");
            assert_eq!(classify(None, &request, &[]), "!InvalidBucketName", "{request}");
        }
    }

    #[test]
    fn virtual_hosted_requests() {
        run_with(
            VHOST,
            &[
                (
                    "GET /",
                    &[(HOST, "bkt.s3.example.com")],
                    "ListObjects: s3:ListBucket s3://bkt/",
                ),
                (
                    "GET /?list-type=2&prefix=p%2F",
                    &[(HOST, "bkt.s3.example.com:8443")],
                    "ListObjectsV2: s3:ListBucket s3://bkt/p/",
                ),
                (
                    "HEAD /",
                    &[(HOST, "bkt.s3.example.com")],
                    "HeadBucket: s3:ListBucket s3://bkt",
                ),
                (
                    "GET /?location",
                    &[(HOST, "bkt.s3.example.com")],
                    "GetBucketLocation: s3:GetBucketLocation s3://bkt",
                ),
                ("POST /?delete", &[(HOST, "bkt.s3.example.com")], "!BodyRequired"),
                (
                    "GET /k/x",
                    &[(HOST, "bkt.s3.example.com:8443")],
                    "GetObject: s3:GetObject s3://bkt/k/x",
                ),
                (
                    "GET /otherbkt/k",
                    &[(HOST, "bkt.s3.example.com")],
                    "GetObject: s3:GetObject s3://bkt/otherbkt/k",
                ),
                ("GET //", &[(HOST, "bkt.s3.example.com")], "!InvalidUri"),
                ("GET /../x", &[(HOST, "bkt.s3.example.com")], "!InvalidUri"),
                ("GET /a/%2E%2E/x", &[(HOST, "bkt.s3.example.com")], "!InvalidUri"),
                (
                    "GET /k",
                    &[(HOST, "my.bucket.s3.example.com")],
                    "GetObject: s3:GetObject s3://my.bucket/k",
                ),
                (
                    "GET /k",
                    &[(HOST, "bkt.S3.Example.COM")],
                    "GetObject: s3:GetObject s3://bkt/k",
                ),
                (
                    "GET /k",
                    &[(HOST, "bkt.s3.example.com.")],
                    "GetObject: s3:GetObject s3://bkt/k",
                ),
                (
                    "PUT /k",
                    &[(HOST, "bkt.s3.example.com"), (COPY, "/bkt/src")],
                    "CopyObject: s3:PutObject s3://bkt/k | s3:GetObject s3://bkt/src",
                ),
                ("GET /k", &[(HOST, "BKT.s3.example.com")], "!InvalidBucketName"),
                ("GET /k", &[(HOST, "ab.s3.example.com")], "!InvalidBucketName"),
                ("GET /k", &[(HOST, ".s3.example.com")], "!InvalidBucketName"),
                ("GET /k", &[(HOST, "a..b.s3.example.com")], "!InvalidBucketName"),
                (
                    "GET /k",
                    &[(HOST, "bkt.s3.example.com"), (HOST, "other.s3.example.com")],
                    "!InvalidArgument",
                ),
            ],
        );
    }

    #[test]
    fn other_hosts_are_path_style() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "GET /",
                "s3.example.com",
                "ListBuckets: s3:ListAllMyBuckets s3://",
            ),
            (
                "GET /",
                "S3.example.com:443",
                "ListBuckets: s3:ListAllMyBuckets s3://",
            ),
            (
                "GET /bkt/k",
                "s3.example.com",
                "GetObject: s3:GetObject s3://bkt/k",
            ),
            (
                "GET /bkt/k",
                "localhost:9000",
                "GetObject: s3:GetObject s3://bkt/k",
            ),
            ("GET /bkt/k", "127.0.0.1", "GetObject: s3:GetObject s3://bkt/k"),
            ("GET /bkt/k", "[::1]:8080", "GetObject: s3:GetObject s3://bkt/k"),
            (
                "GET /bkt/k",
                "evils3.example.com",
                "GetObject: s3:GetObject s3://bkt/k",
            ),
            (
                "GET /bkt/k",
                "bkt.s3.example.com.evil.net",
                "GetObject: s3:GetObject s3://bkt/k",
            ),
        ];
        for (request, host, want) in cases {
            assert_eq!(
                classify(VHOST, request, &[(HOST, host)]),
                *want,
                "{request} Host: {host}"
            );
        }
        let want = "GetObject: s3:GetObject s3://bkt/k";
        assert_eq!(classify(VHOST, "GET /bkt/k", &[]), want, "no Host at all");
        // Without a virtual host configured, Host never names a bucket.
        let vhosted = [(HOST, "bkt.s3.example.com")];
        assert_eq!(
            classify(None, "GET /other/k", &vhosted),
            "GetObject: s3:GetObject s3://other/k"
        );
        assert_eq!(
            classify(None, "GET /", &vhosted),
            "ListBuckets: s3:ListAllMyBuckets s3://"
        );
    }

    #[test]
    fn authority_and_host_must_agree() {
        run_with(
            VHOST,
            &[
                (
                    "GET http://bkt.s3.example.com/k",
                    &[],
                    "GetObject: s3:GetObject s3://bkt/k",
                ),
                (
                    "GET https://bkt.s3.example.com:8443/k",
                    &[(HOST, "bkt.s3.example.com:8443")],
                    "GetObject: s3:GetObject s3://bkt/k",
                ),
                (
                    "GET http://bkt.s3.example.com/k",
                    &[(HOST, "other.s3.example.com")],
                    "!InvalidArgument",
                ),
                (
                    "GET http://s3.example.com/bkt/k",
                    &[(HOST, "bkt.s3.example.com")],
                    "!InvalidArgument",
                ),
            ],
        );
    }

    #[test]
    fn post_object_is_classified_from_its_form() {
        let form = [("content-type", "multipart/form-data; boundary=xyz")];
        run_with(
            None,
            &[
                ("POST /bkt", &form, "!FormRequired"),
                ("POST /bkt/", &form, "!FormRequired"),
                ("POST /bkt?acl", &form, "!MethodNotAllowed"),
                ("POST /bkt?x=1", &form, "!NotImplemented"),
                ("POST /bkt/k", &form, "!NotImplemented"),
                ("POST /bkt", &[("content-type", "text/plain")], "!MalformedPost"),
                (
                    "POST /bkt",
                    &[("content-type", "multipart/form-data")],
                    "!MalformedPost",
                ),
                (
                    "POST /bkt",
                    &[
                        ("content-type", "multipart/form-data; boundary=a"),
                        ("content-type", "text/plain"),
                    ],
                    "!InvalidArgument",
                ),
            ],
        );
        run_with(
            VHOST,
            &[(
                "POST /",
                &[(HOST, "bkt.s3.example.com"), form[0]],
                "!FormRequired",
            )],
        );
        let parts = parts("POST /bkt", &form);
        match classify_parts(&parts, &S3Target::default()) {
            Err(ClassifyError::FormRequired(p)) => assert_eq!(p.bucket(), "bkt"),
            other => panic!("{other:?}"),
        }
    }

    fn pending(request: &str, headers: &[(&str, &str)]) -> PendingDeleteObjects {
        match classify_parts(&parts(request, headers), &S3Target::default()) {
            Err(ClassifyError::BodyRequired(pending)) => pending,
            other => panic!("{request}: {other:?}"),
        }
    }

    #[test]
    fn delete_objects_is_finished_from_the_body() {
        let p = pending("POST /bkt?delete", &[]);
        assert_eq!(p.bucket(), "bkt");
        let op = p.finish([("a", None), ("dir/b%20c", Some("v1")), ("..x", None)]);
        assert_eq!(
            render(&op),
            "DeleteObjects: s3:DeleteObject s3://bkt/a | s3:DeleteObjectVersion s3://bkt/dir/b%20c \
             | s3:DeleteObject s3://bkt/..x"
        );
        for bad in ["../x", "a/./b", "a//b", "/a"] {
            let op = p.finish([("a", None), (bad, None)]);
            assert_eq!(render(&op), "!InvalidUri", "{bad}");
        }

        let bypass = [("x-amz-bypass-governance-retention", "true")];
        let op = pending("POST /bkt?delete", &bypass).finish([("a", None)]);
        assert_eq!(
            render(&op),
            "DeleteObjects: s3:DeleteObject s3://bkt/a | s3:BypassGovernanceRetention s3://bkt/a"
        );
    }

    #[test]
    fn delete_objects_bodies_are_bounded_and_checked() {
        let p = pending("POST /bkt?delete", &[]);
        assert_eq!(render(&p.finish([])), "!MalformedXml");
        assert_eq!(render(&p.finish([("", None)])), "!InvalidArgument");
        assert_eq!(render(&p.finish([("a\0b", None)])), "!InvalidArgument");
        assert_eq!(render(&p.finish([("a", Some(""))])), "!InvalidArgument");

        let max = PendingDeleteObjects::MAX_OBJECTS;
        let keys: Vec<String> = (0..=max).map(|i| format!("k{i}")).collect();
        let too_many = p.finish(keys.iter().map(|k| (k.as_str(), None)));
        assert_eq!(render(&too_many), "!MalformedXml");
        let at_limit = p.finish(keys[..max].iter().map(|k| (k.as_str(), None)));
        assert_eq!(at_limit.map(|op| op.accesses().count()), Ok(max));
    }

    #[test]
    fn errors_read_well() {
        let cases = [
            (
                "GET /bkt/k?tagging&x=1",
                "not implemented by claimgate: query parameter `x` on a GET request to an object",
            ),
            (
                "GET /bkt?session",
                "CreateSession is never forwarded by claimgate: CreateSession answers with credentials \
                 of the upstream's identity: forwarding it would hand the caller claimgate's own \
                 downstream credentials",
            ),
            (
                "GET /bkt/k?versionId=1&versionId=2",
                "invalid argument: query parameter `versionId` is given more than once",
            ),
            ("PATCH /bkt/k", "method PATCH is not allowed here"),
            (
                "POST /bkt?delete",
                "DeleteObjects on bucket `bkt` is classified from its body",
            ),
        ];
        for (request, want) in cases {
            let result = classify_parts(&parts(request, &[]), &S3Target::default());
            assert_eq!(
                result.map_err(|e| e.to_string()),
                Err(want.to_owned()),
                "{request}"
            );
        }
    }
}
