//! The values that flow between pipeline stages.
//!
//! Each stage of the request flow (see the crate docs) consumes the previous stage's output
//! type; keeping them in one small module lets every stage depend on the vocabulary without
//! depending on each other.

use serde_json::{Map, Value};

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer <JWT>` validated against the issuer's JWKS.
    Bearer,
    /// SigV4 with credentials from a claimgate-issued (sealed) STS session.
    Session {
        /// The one role the session assumed. Authorization then considers only that role,
        /// as AWS does for an assumed role.
        role: String,
        /// The session's access key id (not secret).
        access_key_id: String,
    },
}

impl AuthMethod {
    /// Stable name used in audit records and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::Bearer => "bearer",
            AuthMethod::Session { .. } => "sts_session",
        }
    }
}

/// A verified caller. Produced only by the authenticate stage.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `iss`, exactly as configured for the issuer that verified it.
    pub issuer: String,
    /// The token's `sub`.
    pub subject: String,
    /// Every claim of the token; policies address them by dotted path.
    pub claims: Map<String, Value>,
    /// How the identity was proven (for a session: which role it assumed).
    pub method: AuthMethod,
    /// `jti` when the token has one, else a short hash of the token: lets a security
    /// review follow one token across records without ever logging the token.
    pub token_id: String,
}

impl Identity {
    /// Looks a claim up by dotted path (`realm_access.roles`). A key that itself contains
    /// dots (`https://example.com/groups`) is tried whole first, since IdPs emit such
    /// namespaced claims.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        claim_at(&self.claims, path)
    }

    /// For an STS session, the one role it assumed.
    pub fn session_role(&self) -> Option<&str> {
        match &self.method {
            AuthMethod::Session { role, .. } => Some(role),
            AuthMethod::Bearer => None,
        }
    }

    /// For an STS session, its access key id.
    pub fn session_id(&self) -> Option<&str> {
        match &self.method {
            AuthMethod::Session { access_key_id, .. } => Some(access_key_id),
            AuthMethod::Bearer => None,
        }
    }

    /// A string claim, if the claim exists and is a string.
    pub fn claim_str(&self, path: &str) -> Option<&str> {
        self.claim(path).and_then(Value::as_str)
    }
}

/// Dotted-path lookup shared by identities and bare claim sets (`claimgate check --claims`).
pub fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    // Keys may hold dots themselves (`kubernetes.io`), so try every split point.
    path.match_indices('.')
        .find_map(|(i, _)| match claims.get(&path[..i]) {
            Some(Value::Object(inner)) => claim_at(inner, &path[i + 1..]),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_reach_nested_and_dotted_keys() {
        let claims = serde_json::json!({
            "realm_access": {"roles": ["a"]},
            "kubernetes.io": {"namespace": "training", "serviceaccount": {"name": "sa"}},
            "https://x/groups": ["g"],
        });
        let c = claims.as_object().unwrap();
        assert_eq!(claim_at(c, "realm_access.roles").unwrap()[0], "a");
        assert_eq!(claim_at(c, "kubernetes.io.namespace").unwrap(), "training");
        assert_eq!(claim_at(c, "kubernetes.io.serviceaccount.name").unwrap(), "sa");
        assert_eq!(claim_at(c, "https://x/groups").unwrap()[0], "g");
        assert!(claim_at(c, "realm_access.nope").is_none());
    }

    #[test]
    fn resources_are_built_from_parts_and_read_back_the_same() {
        let object = Resource::s3_object("b", "a/../k");
        assert_eq!(object, "s3://b/a/../k");
        assert_eq!(object, Resource::parse("s3://b/a/../k"));
        assert_eq!(Resource::s3_bucket("b"), Resource::parse("s3://b"));
        assert_eq!(Resource::s3_account(), Resource::parse("s3://"));
        let http = Resource::http("features", "get-online-features");
        assert_eq!(http, "http://features/get-online-features");
        assert_eq!(http, Resource::parse("http://features/get-online-features"));
        assert_eq!(Resource::parse("arn:aws:s3:::b").kind(), ResourceKind::Other);
        assert_eq!(
            object.kind(),
            ResourceKind::S3 {
                bucket: "b",
                key: Some("a/../k")
            }
        );
        assert_eq!(
            Resource::s3_bucket("b").kind(),
            ResourceKind::S3 {
                bucket: "b",
                key: None
            }
        );
        assert_eq!(
            Resource::parse("http://features").kind(),
            ResourceKind::Http {
                route: "features",
                path: ""
            }
        );
    }

    #[test]
    fn an_operation_always_has_its_primary_access_first() {
        let mut op = Operation::new(
            "CopyObject",
            Access::new("s3:PutObject", Resource::s3_object("b", "k")),
        );
        op.also_needs(Access::new("s3:GetObject", Resource::s3_object("src", "k")));
        let actions: Vec<&str> = op.accesses().map(|a| a.action.as_str()).collect();
        assert_eq!(actions, ["s3:PutObject", "s3:GetObject"]);
        assert!(op.needs_action("s3:GetObject") && !op.needs_action("s3:DeleteObject"));
    }
}

/// One permission a request needs: an IAM-style action on a resource.
///
/// A request may need several (CopyObject needs `s3:PutObject` on the target and
/// `s3:GetObject` on the source); it is allowed only if every one of them is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `s3:GetObject`, `http:POST`, …
    pub action: String,
    /// What the action is on.
    pub resource: Resource,
}

impl Access {
    /// An action on a resource.
    pub fn new(action: impl Into<String>, resource: Resource) -> Self {
        Access {
            action: action.into(),
            resource,
        }
    }
}

/// What an access is on: the text policies match (`s3://bucket/key`, key percent-decoded;
/// `s3://bucket`; `s3://`; `http://route/path`), rendered once by the classify stage, and
/// where its parts lie in that text. Later stages ask for the parts; nobody parses the text
/// back, and the parts are not stored a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    text: String,
    shape: Shape,
}

/// Where a [`Resource`]'s parts lie in its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    S3Account,
    /// `s3://bucket`, or `s3://bucket/key` with the key starting at `key_at`.
    S3 {
        key_at: Option<usize>,
    },
    /// `http://route`, or `http://route/path` with the path starting at `path_at`.
    Http {
        path_at: Option<usize>,
    },
    Other,
}

/// The parts of a [`Resource`], borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind<'a> {
    /// The account (`s3://`): ListBuckets.
    S3Account,
    /// A bucket (`s3://bucket`), or an object or key prefix in it (`s3://bucket/key`).
    S3 {
        /// The bucket.
        bucket: &'a str,
        /// The key or prefix, percent-decoded once; `None` for the bucket itself.
        key: Option<&'a str>,
    },
    /// A path on an HTTP route (`http://route/path`).
    Http {
        /// The route's name.
        route: &'a str,
        /// The path on it, without the route's prefix or a leading `/`.
        path: &'a str,
    },
    /// A resource given as text that names none of the above: only `claimgate check`
    /// reads resources from text, and a request never classifies to one.
    Other,
}

const S3: &str = "s3://";
const HTTP: &str = "http://";

impl Resource {
    /// `s3://`.
    pub fn s3_account() -> Self {
        Resource {
            text: S3.into(),
            shape: Shape::S3Account,
        }
    }

    /// `s3://bucket`.
    pub fn s3_bucket(bucket: &str) -> Self {
        Resource {
            text: format!("{S3}{bucket}"),
            shape: Shape::S3 { key_at: None },
        }
    }

    /// `s3://bucket/key` (an object, or a listing's prefix).
    pub fn s3_object(bucket: &str, key: &str) -> Self {
        Resource {
            text: format!("{S3}{bucket}/{key}"),
            shape: Shape::S3 {
                key_at: Some(S3.len() + bucket.len() + 1),
            },
        }
    }

    /// `http://route/path` (`path` without its leading `/`).
    pub fn http(route: &str, path: &str) -> Self {
        Resource {
            text: format!("{HTTP}{route}/{path}"),
            shape: Shape::Http {
                path_at: Some(HTTP.len() + route.len() + 1),
            },
        }
    }

    /// Reads a resource written as text (the `claimgate check` command line, tests).
    pub fn parse(text: &str) -> Self {
        let after = |scheme: &str| {
            text.strip_prefix(scheme)
                .map(|rest| rest.find('/').map(|i| scheme.len() + i + 1))
        };
        let shape = if text == S3 {
            Shape::S3Account
        } else if let Some(key_at) = after(S3) {
            Shape::S3 { key_at }
        } else if let Some(path_at) = after(HTTP) {
            Shape::Http { path_at }
        } else {
            Shape::Other
        };
        Resource {
            text: text.into(),
            shape,
        }
    }

    /// The text policies match.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parts.
    pub fn kind(&self) -> ResourceKind<'_> {
        // (name, rest): what follows the scheme, split at the first `/` when there is one.
        let split = |scheme: usize, at: Option<usize>| match at {
            Some(at) => (&self.text[scheme..at - 1], Some(&self.text[at..])),
            None => (&self.text[scheme..], None),
        };
        match self.shape {
            Shape::S3Account => ResourceKind::S3Account,
            Shape::S3 { key_at } => {
                let (bucket, key) = split(S3.len(), key_at);
                ResourceKind::S3 { bucket, key }
            }
            Shape::Http { path_at } => {
                let (route, path) = split(HTTP.len(), path_at);
                ResourceKind::Http {
                    route,
                    path: path.unwrap_or_default(),
                }
            }
            Shape::Other => ResourceKind::Other,
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq<str> for Resource {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Resource {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl PartialEq<String> for Resource {
    fn eq(&self, other: &String) -> bool {
        &self.text == other
    }
}

/// What an S3 request acts on, as the classify stage read it. The signer builds the
/// upstream path from this value (never from the caller's spelling), so the object the
/// store is asked for is byte for byte the object that was authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Address {
    /// The account (`GET /`).
    Service,
    /// A bucket.
    Bucket(String),
    /// An object: `key` is the decoded key the policy was checked against.
    Object {
        /// The bucket.
        bucket: String,
        /// The key, percent-decoded once.
        key: String,
    },
    /// A browser form upload (PostObject): the request goes to the bucket, and the key
    /// travels in the form's `key` field, which the signer writes from this value.
    FormUpload {
        /// The bucket.
        bucket: String,
        /// The key, as authorized (`${filename}` already replaced).
        key: String,
    },
}

/// The object a copy reads (`x-amz-copy-source`), as the classify stage read it. The signer
/// writes the header anew from this value, so the store reads the source that was authorized
/// whatever spelling the caller used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySource {
    /// The source bucket.
    pub bucket: String,
    /// The source key, percent-decoded once.
    pub key: String,
    /// `?versionId=`, as sent (reading it is `s3:GetObjectVersion`).
    pub version_id: Option<String>,
}

/// What a request wants, as the classify stage understood it. It always needs at least
/// one access (the primary one, which audit records and metrics name); there is no empty
/// operation to wave through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The API operation name (`GetObject`, `ListObjectsV2`, `http`), for audit and metrics.
    pub name: &'static str,
    primary: Access,
    also: Vec<Access>,
    /// For S3 requests, what the upstream request must address; `None` on HTTP routes.
    pub s3: Option<S3Address>,
    /// For copies, the source that was authorized.
    pub copy_source: Option<CopySource>,
}

impl Operation {
    /// An operation needing `primary` (and whatever [`Operation::also_needs`] adds).
    pub fn new(name: &'static str, primary: Access) -> Self {
        Operation {
            name,
            primary,
            also: Vec::new(),
            s3: None,
            copy_source: None,
        }
    }

    /// Adds an access the request needs besides the primary one.
    pub fn also_needs(&mut self, access: Access) {
        self.also.push(access);
    }

    /// Whether the operation needs `action` on any resource.
    pub fn needs_action(&self, action: &str) -> bool {
        self.accesses().any(|a| a.action == action)
    }

    /// The primary access: the one audit records and metrics name.
    pub fn primary(&self) -> &Access {
        &self.primary
    }

    /// The accesses needed besides the primary one.
    pub fn also(&self) -> &[Access] {
        &self.also
    }

    /// Every access the request needs, the primary first.
    pub fn accesses(&self) -> impl Iterator<Item = &Access> + Clone {
        std::iter::once(&self.primary).chain(&self.also)
    }
}
