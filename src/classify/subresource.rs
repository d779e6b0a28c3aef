//! S3 operations selected by a subresource query parameter (`?tagging`, `?acl`, `?policy`, …),
//! each mapped to the IAM action AWS requires for it.
//!
//! Every operation S3 defines is classified, so that policy — not claimgate's coverage —
//! decides whether it may pass: a rule can grant `s3:GetObjectTagging` or `s3:PutBucketPolicy`,
//! and without one the request is denied like any other. The table follows the S3 API
//! reference and the Service Authorization Reference ("Actions, resources, and condition keys
//! for Amazon S3"), including their quirks: deleting a bucket's lifecycle, CORS, encryption,
//! replication, tagging, ownership or public-access-block configuration needs the matching
//! `Put…` action, and the List variants of analytics/inventory/metrics/intelligent-tiering
//! need the `Get…` action.
//!
//! Two operations are classified but never forwarded, whatever policy says: `CreateSession`
//! (S3 Express) answers with credentials of the upstream identity, which would hand
//! claimgate's own downstream credentials to the caller, and `RenameObject` only exists on
//! directory buckets, which are reached through such sessions.

/// Where the operation acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    /// `/b` (or `/` on a virtual-hosted bucket).
    Bucket,
    /// `/b/k`.
    Object,
}

/// A condition on the other query parameters that picks between rows sharing a
/// subresource (`GET ?analytics&id=x` is Get…, without `id` it is List…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Needs {
    /// Nothing more.
    Nothing,
    /// This parameter must be present.
    Param(&'static str),
    /// This parameter must be absent.
    NoParam(&'static str),
    /// This parameter must have this value.
    Equals(&'static str, &'static str),
}

/// What the resource of the access is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resource {
    /// `s3://b`.
    Bucket,
    /// `s3://b/k`.
    Object,
    /// `s3://b/<prefix>`, from the `prefix` parameter (listings).
    Prefix,
}

/// One operation selected by a subresource.
#[derive(Debug)]
pub(super) struct Sub {
    /// The operation's name in the S3 API.
    pub(super) name: &'static str,
    /// The request method.
    pub(super) method: &'static str,
    /// Bucket or object.
    pub(super) level: Level,
    /// The query parameter naming the subresource.
    pub(super) param: &'static str,
    /// What else the query must (not) hold to be this operation.
    pub(super) needs: Needs,
    /// The IAM action, and any further actions always required.
    pub(super) actions: &'static [&'static str],
    /// With `versionId`: the actions instead (`None`: `versionId` is not accepted).
    pub(super) versioned: Option<&'static [&'static str]>,
    /// The other query parameters the operation accepts.
    pub(super) params: &'static [&'static str],
    /// Headers that make the request need one more action.
    pub(super) headers: &'static [(&'static str, &'static str)],
    /// The resource the actions apply to.
    pub(super) resource: Resource,
    /// Classified, but never forwarded: why.
    pub(super) never: Option<&'static str>,
}

/// The bypass header of object-lock governance mode.
const BYPASS: &[(&str, &str)] = &[(
    "x-amz-bypass-governance-retention",
    "s3:BypassGovernanceRetention",
)];

/// A row with the common defaults.
const fn row(
    name: &'static str,
    method: &'static str,
    level: Level,
    param: &'static str,
    actions: &'static [&'static str],
) -> Sub {
    Sub {
        name,
        method,
        level,
        param,
        needs: Needs::Nothing,
        actions,
        versioned: None,
        params: &[],
        headers: &[],
        resource: match level {
            Level::Bucket => Resource::Bucket,
            Level::Object => Resource::Object,
        },
        never: None,
    }
}

const fn bucket(
    name: &'static str,
    method: &'static str,
    param: &'static str,
    action: &'static [&'static str],
) -> Sub {
    row(name, method, Level::Bucket, param, action)
}

const fn object(
    name: &'static str,
    method: &'static str,
    param: &'static str,
    action: &'static [&'static str],
) -> Sub {
    row(name, method, Level::Object, param, action)
}

impl Sub {
    const fn versioned(mut self, actions: &'static [&'static str]) -> Sub {
        self.versioned = Some(actions);
        self
    }

    const fn needs(mut self, needs: Needs) -> Sub {
        self.needs = needs;
        self
    }

    const fn params(mut self, params: &'static [&'static str]) -> Sub {
        self.params = params;
        self
    }

    const fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Sub {
        self.headers = headers;
        self
    }

    const fn resource(mut self, resource: Resource) -> Sub {
        self.resource = resource;
        self
    }

    const fn never(mut self, why: &'static str) -> Sub {
        self.never = Some(why);
        self
    }
}

use Needs::{Equals, NoParam, Param};

/// Every subresource operation S3 defines. Order matters only between rows that share
/// method, level and subresource: the first whose [`Needs`] holds wins.
pub(super) static SUBRESOURCES: &[Sub] = &[
    // ---- objects ----------------------------------------------------------------------
    object("GetObjectAcl", "GET", "acl", &["s3:GetObjectAcl"]).versioned(&["s3:GetObjectVersionAcl"]),
    object("PutObjectAcl", "PUT", "acl", &["s3:PutObjectAcl"]).versioned(&["s3:PutObjectVersionAcl"]),
    object("GetObjectTagging", "GET", "tagging", &["s3:GetObjectTagging"])
        .versioned(&["s3:GetObjectVersionTagging"]),
    object("PutObjectTagging", "PUT", "tagging", &["s3:PutObjectTagging"])
        .versioned(&["s3:PutObjectVersionTagging"]),
    object(
        "DeleteObjectTagging",
        "DELETE",
        "tagging",
        &["s3:DeleteObjectTagging"],
    )
    .versioned(&["s3:DeleteObjectVersionTagging"]),
    object(
        "GetObjectAttributes",
        "GET",
        "attributes",
        &["s3:GetObjectAttributes", "s3:GetObject"],
    )
    .versioned(&["s3:GetObjectVersionAttributes", "s3:GetObjectVersion"])
    .params(&["max-parts", "part-number-marker"]),
    object(
        "GetObjectRetention",
        "GET",
        "retention",
        &["s3:GetObjectRetention"],
    )
    .versioned(&["s3:GetObjectRetention"]),
    object(
        "PutObjectRetention",
        "PUT",
        "retention",
        &["s3:PutObjectRetention"],
    )
    .versioned(&["s3:PutObjectRetention"])
    .headers(BYPASS),
    object(
        "GetObjectLegalHold",
        "GET",
        "legal-hold",
        &["s3:GetObjectLegalHold"],
    )
    .versioned(&["s3:GetObjectLegalHold"]),
    object(
        "PutObjectLegalHold",
        "PUT",
        "legal-hold",
        &["s3:PutObjectLegalHold"],
    )
    .versioned(&["s3:PutObjectLegalHold"]),
    object("RestoreObject", "POST", "restore", &["s3:RestoreObject"]).versioned(&["s3:RestoreObject"]),
    object("SelectObjectContent", "POST", "select", &["s3:GetObject"])
        .needs(Equals("select-type", "2"))
        .params(&["select-type"]),
    object("GetObjectTorrent", "GET", "torrent", &["s3:GetObjectTorrent"]),
    object(
        "UpdateObjectEncryption",
        "PUT",
        "encryption",
        &["s3:UpdateObjectEncryption", "s3:PutObject"],
    )
    .versioned(&["s3:UpdateObjectEncryption", "s3:PutObject"]),
    object(
        "GetObjectAnnotation",
        "GET",
        "annotation",
        &["s3:GetObjectAnnotation"],
    )
    .versioned(&["s3:GetObjectAnnotation"])
    .needs(Param("annotationName"))
    .params(&["annotationName"]),
    object(
        "ListObjectAnnotations",
        "GET",
        "annotation",
        &["s3:ListObjectAnnotations"],
    )
    .versioned(&["s3:ListObjectAnnotations"])
    .params(&[
        "max-annotation-results",
        "annotation-prefix",
        "continuation-token",
    ]),
    object(
        "PutObjectAnnotation",
        "PUT",
        "annotation",
        &["s3:PutObjectAnnotation"],
    )
    .versioned(&["s3:PutObjectAnnotation"])
    .needs(Param("annotationName"))
    .params(&["annotationName"]),
    object(
        "DeleteObjectAnnotation",
        "DELETE",
        "annotation",
        &["s3:DeleteObjectAnnotation"],
    )
    .versioned(&["s3:DeleteObjectAnnotation"])
    .needs(Param("annotationName"))
    .params(&["annotationName"])
    .headers(BYPASS),
    object("RenameObject", "PUT", "renameObject", &["s3:PutObject"]).never(
        "RenameObject exists only on S3 Express directory buckets, which are reached through \
         CreateSession credentials claimgate never hands out",
    ),
    // ---- buckets: listings and location --------------------------------------------------
    bucket(
        "ListObjectVersions",
        "GET",
        "versions",
        &["s3:ListBucketVersions"],
    )
    .params(&[
        "delimiter",
        "encoding-type",
        "key-marker",
        "max-keys",
        "prefix",
        "version-id-marker",
    ])
    .resource(Resource::Prefix),
    bucket("GetBucketLocation", "GET", "location", &["s3:GetBucketLocation"]),
    // ---- buckets: configuration ----------------------------------------------------------
    bucket("GetBucketAcl", "GET", "acl", &["s3:GetBucketAcl"]),
    bucket("PutBucketAcl", "PUT", "acl", &["s3:PutBucketAcl"]),
    bucket("GetBucketPolicy", "GET", "policy", &["s3:GetBucketPolicy"]),
    bucket("PutBucketPolicy", "PUT", "policy", &["s3:PutBucketPolicy"]),
    bucket(
        "DeleteBucketPolicy",
        "DELETE",
        "policy",
        &["s3:DeleteBucketPolicy"],
    ),
    bucket(
        "GetBucketPolicyStatus",
        "GET",
        "policyStatus",
        &["s3:GetBucketPolicyStatus"],
    ),
    bucket(
        "GetBucketLifecycleConfiguration",
        "GET",
        "lifecycle",
        &["s3:GetLifecycleConfiguration"],
    ),
    bucket(
        "PutBucketLifecycleConfiguration",
        "PUT",
        "lifecycle",
        &["s3:PutLifecycleConfiguration"],
    ),
    bucket(
        "DeleteBucketLifecycle",
        "DELETE",
        "lifecycle",
        &["s3:PutLifecycleConfiguration"],
    ),
    bucket(
        "GetBucketVersioning",
        "GET",
        "versioning",
        &["s3:GetBucketVersioning"],
    ),
    bucket(
        "PutBucketVersioning",
        "PUT",
        "versioning",
        &["s3:PutBucketVersioning"],
    ),
    bucket("GetBucketCors", "GET", "cors", &["s3:GetBucketCORS"]),
    bucket("PutBucketCors", "PUT", "cors", &["s3:PutBucketCORS"]),
    bucket("DeleteBucketCors", "DELETE", "cors", &["s3:PutBucketCORS"]),
    bucket(
        "GetBucketEncryption",
        "GET",
        "encryption",
        &["s3:GetEncryptionConfiguration"],
    ),
    bucket(
        "PutBucketEncryption",
        "PUT",
        "encryption",
        &["s3:PutEncryptionConfiguration"],
    ),
    bucket(
        "DeleteBucketEncryption",
        "DELETE",
        "encryption",
        &["s3:PutEncryptionConfiguration"],
    ),
    bucket(
        "GetBucketNotificationConfiguration",
        "GET",
        "notification",
        &["s3:GetBucketNotification"],
    ),
    bucket(
        "PutBucketNotificationConfiguration",
        "PUT",
        "notification",
        &["s3:PutBucketNotification"],
    ),
    bucket(
        "GetBucketReplication",
        "GET",
        "replication",
        &["s3:GetReplicationConfiguration"],
    ),
    bucket(
        "PutBucketReplication",
        "PUT",
        "replication",
        &["s3:PutReplicationConfiguration"],
    ),
    bucket(
        "DeleteBucketReplication",
        "DELETE",
        "replication",
        &["s3:PutReplicationConfiguration"],
    ),
    bucket("GetBucketWebsite", "GET", "website", &["s3:GetBucketWebsite"]),
    bucket("PutBucketWebsite", "PUT", "website", &["s3:PutBucketWebsite"]),
    bucket(
        "DeleteBucketWebsite",
        "DELETE",
        "website",
        &["s3:DeleteBucketWebsite"],
    ),
    bucket("GetBucketTagging", "GET", "tagging", &["s3:GetBucketTagging"]),
    bucket("PutBucketTagging", "PUT", "tagging", &["s3:PutBucketTagging"]),
    bucket(
        "DeleteBucketTagging",
        "DELETE",
        "tagging",
        &["s3:PutBucketTagging"],
    ),
    bucket("GetBucketLogging", "GET", "logging", &["s3:GetBucketLogging"]),
    bucket("PutBucketLogging", "PUT", "logging", &["s3:PutBucketLogging"]),
    bucket(
        "GetObjectLockConfiguration",
        "GET",
        "object-lock",
        &["s3:GetBucketObjectLockConfiguration"],
    ),
    bucket(
        "PutObjectLockConfiguration",
        "PUT",
        "object-lock",
        &["s3:PutBucketObjectLockConfiguration"],
    ),
    bucket(
        "GetBucketOwnershipControls",
        "GET",
        "ownershipControls",
        &["s3:GetBucketOwnershipControls"],
    ),
    bucket(
        "PutBucketOwnershipControls",
        "PUT",
        "ownershipControls",
        &["s3:PutBucketOwnershipControls"],
    ),
    bucket(
        "DeleteBucketOwnershipControls",
        "DELETE",
        "ownershipControls",
        &["s3:PutBucketOwnershipControls"],
    ),
    bucket(
        "GetPublicAccessBlock",
        "GET",
        "publicAccessBlock",
        &["s3:GetBucketPublicAccessBlock"],
    ),
    bucket(
        "PutPublicAccessBlock",
        "PUT",
        "publicAccessBlock",
        &["s3:PutBucketPublicAccessBlock"],
    ),
    bucket(
        "DeletePublicAccessBlock",
        "DELETE",
        "publicAccessBlock",
        &["s3:PutBucketPublicAccessBlock"],
    ),
    bucket(
        "GetBucketRequestPayment",
        "GET",
        "requestPayment",
        &["s3:GetBucketRequestPayment"],
    ),
    bucket(
        "PutBucketRequestPayment",
        "PUT",
        "requestPayment",
        &["s3:PutBucketRequestPayment"],
    ),
    bucket(
        "GetBucketAccelerateConfiguration",
        "GET",
        "accelerate",
        &["s3:GetAccelerateConfiguration"],
    ),
    bucket(
        "PutBucketAccelerateConfiguration",
        "PUT",
        "accelerate",
        &["s3:PutAccelerateConfiguration"],
    ),
    bucket("GetBucketAbac", "GET", "abac", &["s3:GetBucketAbac"]),
    bucket("PutBucketAbac", "PUT", "abac", &["s3:PutBucketAbac"]),
    bucket(
        "GetBucketAnalyticsConfiguration",
        "GET",
        "analytics",
        &["s3:GetAnalyticsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "ListBucketAnalyticsConfigurations",
        "GET",
        "analytics",
        &["s3:GetAnalyticsConfiguration"],
    )
    .needs(NoParam("id"))
    .params(&["continuation-token"]),
    bucket(
        "PutBucketAnalyticsConfiguration",
        "PUT",
        "analytics",
        &["s3:PutAnalyticsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "DeleteBucketAnalyticsConfiguration",
        "DELETE",
        "analytics",
        &["s3:PutAnalyticsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "GetBucketInventoryConfiguration",
        "GET",
        "inventory",
        &["s3:GetInventoryConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "ListBucketInventoryConfigurations",
        "GET",
        "inventory",
        &["s3:GetInventoryConfiguration"],
    )
    .needs(NoParam("id"))
    .params(&["continuation-token"]),
    bucket(
        "PutBucketInventoryConfiguration",
        "PUT",
        "inventory",
        &["s3:PutInventoryConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "DeleteBucketInventoryConfiguration",
        "DELETE",
        "inventory",
        &["s3:PutInventoryConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "GetBucketMetricsConfiguration",
        "GET",
        "metrics",
        &["s3:GetMetricsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "ListBucketMetricsConfigurations",
        "GET",
        "metrics",
        &["s3:GetMetricsConfiguration"],
    )
    .needs(NoParam("id"))
    .params(&["continuation-token"]),
    bucket(
        "PutBucketMetricsConfiguration",
        "PUT",
        "metrics",
        &["s3:PutMetricsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "DeleteBucketMetricsConfiguration",
        "DELETE",
        "metrics",
        &["s3:PutMetricsConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "GetBucketIntelligentTieringConfiguration",
        "GET",
        "intelligent-tiering",
        &["s3:GetIntelligentTieringConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "ListBucketIntelligentTieringConfigurations",
        "GET",
        "intelligent-tiering",
        &["s3:GetIntelligentTieringConfiguration"],
    )
    .needs(NoParam("id"))
    .params(&["continuation-token"]),
    bucket(
        "PutBucketIntelligentTieringConfiguration",
        "PUT",
        "intelligent-tiering",
        &["s3:PutIntelligentTieringConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "DeleteBucketIntelligentTieringConfiguration",
        "DELETE",
        "intelligent-tiering",
        &["s3:PutIntelligentTieringConfiguration"],
    )
    .needs(Param("id"))
    .params(&["id"]),
    bucket(
        "CreateBucketMetadataConfiguration",
        "POST",
        "metadataConfiguration",
        &["s3:CreateBucketMetadataTableConfiguration"],
    ),
    bucket(
        "GetBucketMetadataConfiguration",
        "GET",
        "metadataConfiguration",
        &["s3:GetBucketMetadataTableConfiguration"],
    ),
    bucket(
        "DeleteBucketMetadataConfiguration",
        "DELETE",
        "metadataConfiguration",
        &["s3:DeleteBucketMetadataTableConfiguration"],
    ),
    bucket(
        "CreateBucketMetadataTableConfiguration",
        "POST",
        "metadataTable",
        &["s3:CreateBucketMetadataTableConfiguration"],
    ),
    bucket(
        "GetBucketMetadataTableConfiguration",
        "GET",
        "metadataTable",
        &["s3:GetBucketMetadataTableConfiguration"],
    ),
    bucket(
        "DeleteBucketMetadataTableConfiguration",
        "DELETE",
        "metadataTable",
        &["s3:DeleteBucketMetadataTableConfiguration"],
    ),
    bucket(
        "UpdateBucketMetadataAnnotationTableConfiguration",
        "PUT",
        "metadataAnnotationTable",
        &["s3:UpdateBucketMetadataAnnotationTableConfiguration"],
    ),
    bucket(
        "UpdateBucketMetadataInventoryTableConfiguration",
        "PUT",
        "metadataInventoryTable",
        &["s3:UpdateBucketMetadataInventoryTableConfiguration"],
    ),
    bucket(
        "UpdateBucketMetadataJournalTableConfiguration",
        "PUT",
        "metadataJournalTable",
        &["s3:UpdateBucketMetadataJournalTableConfiguration"],
    ),
    bucket("CreateSession", "GET", "session", &["s3express:CreateSession"]).never(
        "CreateSession answers with credentials of the upstream's identity: forwarding it would \
         hand the caller claimgate's own downstream credentials",
    ),
];

/// Whether `param` names a subresource at this level (for any method).
pub(super) fn is_subresource(level: Level, param: &str) -> bool {
    SUBRESOURCES.iter().any(|s| s.level == level && s.param == param)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_consistent() {
        let mut seen = std::collections::HashSet::new();
        for s in SUBRESOURCES {
            assert!(seen.insert(s.name), "{} twice", s.name);
            assert!(!s.actions.is_empty(), "{}", s.name);
            assert!(
                matches!(s.method, "GET" | "PUT" | "POST" | "DELETE"),
                "{}",
                s.name
            );
            for a in s.actions.iter().chain(s.versioned.unwrap_or_default()) {
                assert!(
                    a.starts_with("s3:") || a.starts_with("s3express:"),
                    "{}: {a}",
                    s.name
                );
            }
        }
    }
}
