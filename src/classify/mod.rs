//! Classify: what does a request want?
//!
//! Turns the head of a request into an [`Operation`](crate::model::Operation): the API operation name plus every
//! IAM-style [`Access`](crate::model::Access) (action on resource) it needs. The authorize
//! stage decides on exactly these accesses, so this module is a security boundary:
//!
//! - **Anything not understood is refused**, never forwarded unclassified. Unknown S3
//!   subresources and query parameters, unsupported methods and malformed URIs each have
//!   their own [`ClassifyError`].
//! - **Resources are what the upstream will act on.** S3 keys are percent-decoded exactly
//!   once; a key or prefix whose meaning depends on the store (`.`, `..` or empty segments,
//!   which filesystem-backed stores resolve; a raw `+` in an S3 path; dot segments or
//!   encoded slashes on an HTTP route) is refused rather than guessed. The classified
//!   [`S3Address`](crate::model::S3Address) is what the signer forwards.
//!
//! | file        | classifies                                                        |
//! |-------------|-------------------------------------------------------------------|
//! | `s3.rs`     | S3 REST requests, path-style and virtual-hosted → S3 operations   |
//! | `http.rs`   | requests to HTTP routes → `http:<METHOD>` on `http://route/path`  |
//! | `decode.rs` | strict, single percent-decoding shared by both                    |
//! | `key.rs`    | the canonical-key rule: no `.`, `..` or empty segments             |
//! | `target.rs` | the request's host and path, read once for every stage            |
//! | `delete_objects.rs` | the XML body of DeleteObjects                             |
//! | `post_form.rs` | the multipart form of PostObject, up to its file               |
//!
//! Two operations have accesses that depend on the body. For DeleteObjects, [`classify_s3`]
//! answers [`ClassifyError::BodyRequired`] with a [`PendingDeleteObjects`] that the caller
//! finishes once it has read (and size-capped) the XML body. For PostObject (a browser form
//! upload) it answers [`ClassifyError::FormRequired`] with a [`PendingPostObject`]: the
//! caller reads the form's fields (size-capped, never the file) with its [`FormReader`] and
//! finishes it with the [`PostForm`].

mod decode;
mod delete_objects;
mod http;
mod key;
mod post_form;
mod s3;
mod subresource;
mod target;

pub use self::delete_objects::{DeleteEntry, DeleteList, parse_delete_objects};
pub use self::http::classify_http;
pub use self::key::KeyRule;
pub use self::post_form::{Boundary, FilePart, FormReader, PendingPostObject, PostForm, is_form_upload};
pub use self::s3::{PendingDeleteObjects, S3Target, classify_s3};
pub use self::target::RequestTarget;

/// S3 actions the classifier asks for besides those of the subresource table.
const CORE_S3_ACTIONS: [&str; 18] = [
    "s3:AbortMultipartUpload",
    "s3:BypassGovernanceRetention",
    "s3:CreateBucket",
    "s3:DeleteBucket",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:ListAllMyBuckets",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:ListMultipartUploadParts",
    "s3:PutBucketAcl",
    "s3:PutObject",
    "s3:PutObjectAcl",
    "s3:PutObjectLegalHold",
    "s3:PutObjectRetention",
    "s3:PutObjectTagging",
];

/// Whether the classifier can ever ask authorization for this S3 action. A policy action
/// outside this set (without a `*`) could never match a request: `validate` refuses it as a
/// likely typo.
pub fn is_s3_action(action: &str) -> bool {
    s3_actions().any(|a| a == action)
}

/// Every S3 action the classifier can ask authorization for.
pub fn s3_actions() -> impl Iterator<Item = &'static str> {
    let table = subresource::SUBRESOURCES
        .iter()
        .flat_map(|s| s.actions.iter().chain(s.versioned.unwrap_or_default()).copied())
        .filter(|a| a.starts_with("s3:"));
    let headers = subresource::SUBRESOURCES
        .iter()
        .flat_map(|s| s.headers.iter().map(|(_, a)| *a));
    CORE_S3_ACTIONS.into_iter().chain(table).chain(headers)
}

/// Refusals of the classify stage.
///
/// Each variant maps to the S3 error code an S3 client understands (named per variant) or
/// to a 4xx problem on HTTP routes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClassifyError {
    /// An S3 operation, subresource or query parameter claimgate does not support
    /// (S3 code `NotImplemented`, 501). `what` names it, e.g. "query parameter `acl` on
    /// GetObject" or "CreateBucket".
    #[error("not implemented by claimgate: {what}")]
    NotImplemented {
        /// The operation, subresource or parameter refused.
        what: String,
    },
    /// The request URI cannot be classified safely: bad percent-encoding, invalid UTF-8,
    /// NUL, dot segments or encoded slashes on an HTTP route, ... (S3 code `InvalidURI`, 400).
    #[error("invalid request URI: {reason}")]
    InvalidUri {
        /// Why the URI was refused.
        reason: String,
    },
    /// The bucket named by the path or Host is not a valid S3 bucket name
    /// (S3 code `InvalidBucketName`, 400).
    #[error("invalid bucket name `{bucket}` (3-63 of a-z 0-9 . -, alphanumeric at both ends)")]
    InvalidBucketName {
        /// The name as the request spelled it.
        bucket: String,
    },
    /// A parameter or header has an unusable value: malformed `x-amz-copy-source`, a
    /// duplicated query parameter, an empty `versionId`, ... (S3 code `InvalidArgument`, 400).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong and how to fix it.
        reason: String,
    },
    /// A body claimgate must read to authorize (DeleteObjects) is not the XML it should be
    /// (S3 code `MalformedXML`, 400).
    #[error("malformed XML: {reason}")]
    MalformedXml {
        /// What is wrong.
        reason: String,
    },
    /// An S3 operation claimgate classifies but never forwards, whatever policy says,
    /// because its answer would leak claimgate's own downstream credentials (S3 code
    /// `AccessDenied`, 403).
    #[error("{operation} is never forwarded by claimgate: {reason}")]
    NeverForwarded {
        /// The operation.
        operation: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The method is not one this kind of resource accepts (S3 code `MethodNotAllowed`, 405).
    #[error("method {method} is not allowed here")]
    MethodNotAllowed {
        /// The request method.
        method: String,
    },
    /// The accesses depend on the request body (DeleteObjects lists its keys in XML). Not a
    /// refusal by itself: the caller reads the size-capped body and finishes the
    /// classification with [`PendingDeleteObjects::finish`]. A caller that cannot read the
    /// body answers it as `NotImplemented`.
    #[error("DeleteObjects on bucket `{}` is classified from its body", .0.bucket())]
    BodyRequired(PendingDeleteObjects),
    /// A browser form upload (PostObject): the key, the options and possibly the
    /// credentials are in the multipart form. Not a refusal by itself: the caller reads the
    /// form's fields with [`PendingPostObject::reader`] (size-capped, never the file) and
    /// finishes with [`PendingPostObject::finish`]. A caller that cannot read the body
    /// answers it as `NotImplemented`.
    #[error("PostObject on bucket `{}` is classified from its form", .0.bucket())]
    FormRequired(PendingPostObject),
    /// A browser form upload S3 would not accept as a form: not `multipart/form-data`, a bad
    /// boundary, a part that is not `form-data` with a quoted name, a field that is not text,
    /// a form that ends before its file (S3 code `MalformedPOSTRequest`, 400).
    #[error("malformed POST request: {reason}")]
    MalformedPost {
        /// What is wrong.
        reason: String,
    },
    /// The fields before a form's file are larger than claimgate reads to authorize it
    /// (`server.max_inspected_body`; S3 code `MaxPostPreDataLengthExceededError`, 400).
    #[error(
        "the form's fields before the file are larger than the {max} bytes claimgate reads to authorize \
         an upload; send large values as object content instead"
    )]
    FormTooLarge {
        /// The cap, in bytes.
        max: usize,
    },
}

impl ClassifyError {
    /// `InvalidUri` with a reason.
    fn invalid_uri(reason: impl Into<String>) -> Self {
        ClassifyError::InvalidUri {
            reason: reason.into(),
        }
    }

    /// `InvalidArgument` with a reason.
    fn invalid_argument(reason: impl Into<String>) -> Self {
        ClassifyError::InvalidArgument {
            reason: reason.into(),
        }
    }

    /// `NotImplemented` naming what.
    fn not_implemented(what: impl Into<String>) -> Self {
        ClassifyError::NotImplemented { what: what.into() }
    }
}
