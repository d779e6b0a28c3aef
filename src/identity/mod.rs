//! Who is calling. [`Authenticator::authenticate`] reads the credentials a request carries
//! and proves them: an OIDC bearer token ([`bearer`], against cached JWKS keys), or a SigV4
//! signature made with a claimgate STS session ([`sigv4`], [`session`]); a browser form
//! upload's signed POST policy has [`Authenticator::authenticate_form`]. Whatever the
//! method, the identity is then held against the revocation list, in one place.
//!
//! The STS endpoint that issues sessions is [`sts`].

pub mod bearer;
pub mod chunked;
pub mod jwks;
pub mod jwt;
pub mod opened;
pub mod post_policy;
pub mod revocation;
pub mod session;
pub mod sigv4;
pub mod sts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::ops::RangeInclusive;

use aws_lc_rs::digest;
use http::header;
use http::request::Parts;
use jsonwebtoken::Algorithm;

use crate::classify::PostForm;
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::model::Identity;
use crate::secret::Secret;
pub use bearer::BearerTokens;
use chunked::ChunkChain;
use opened::{Opened, OpenedSessions};
use post_policy::{FormSignature, PostPolicy};
use revocation::RevocationList;
use session::Keyring;
use sigv4::SigV4Claim;

/// The signing algorithms accepted when an issuer lists none: asymmetric only.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// One trusted OIDC issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    pub audiences: Vec<String>,
    /// JWKS location; discovered from the issuer when absent.
    pub jwks_uri: Option<String>,
    /// Accepted signing algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Tolerated clock difference for `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// Extra CA for an IdP behind an internal CA.
    pub ca_file: Option<PathBuf>,
    /// Background key refresh interval.
    pub refresh: Duration,
    /// Least time between two fetches triggered by unknown key ids.
    pub min_refetch: Duration,
}

/// Refusals of the authenticate stage. Each names precisely what was wrong, because the
/// person reading it is an ML engineer whose job just failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials at all.
    #[error("no credentials: send `Authorization: Bearer <token>` with a token from your identity provider")]
    Missing,
    /// Credentials of a kind this proxy does not accept.
    #[error("unsupported authorization scheme {scheme:?}: send `Authorization: Bearer <token>`")]
    UnsupportedScheme {
        /// The scheme the caller used.
        scheme: String,
    },
    /// The request carries credentials that could be read two ways (two `Authorization`
    /// headers): refused rather than picking one.
    #[error("ambiguous credentials: {reason}")]
    Ambiguous {
        /// What is ambiguous.
        reason: String,
    },
    /// Not a well-formed JWT, or required claims missing or mistyped.
    #[error("malformed token: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// `iss` names an issuer we do not trust.
    #[error("token issuer {iss:?} is not trusted by this proxy")]
    UnknownIssuer {
        /// The claimed issuer.
        iss: String,
    },
    /// No key with the token's `kid`, even after refreshing the issuer's keys.
    #[error(
        "token signed with unknown key {kid:?}: the issuer does not publish it (rotated away, or not from this issuer)"
    )]
    UnknownKey {
        /// The key id (or `-` when the token has none).
        kid: String,
    },
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `alg` is `none`, HMAC, or not on the issuer's allow-list.
    #[error("token algorithm {alg:?} is not allowed")]
    DisallowedAlgorithm {
        /// The algorithm the token names.
        alg: String,
    },
    /// `exp` has passed (beyond leeway).
    #[error("token expired {ago} s ago: fetch a fresh token from your identity provider")]
    Expired {
        /// Seconds since `exp`.
        ago: i64,
    },
    /// `nbf` or `iat` lies in the future (beyond leeway).
    #[error(
        "token not valid yet: `{claim}` is {skew} s in the future; check clock skew between the client and the IdP (off by {skew} s)"
    )]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// Seconds ahead of our clock.
        skew: i64,
    },
    /// `aud` holds none of the configured audiences.
    #[error("token audience {got:?} is not accepted here: request a token for audience {expected:?}")]
    WrongAudience {
        /// The token's audiences.
        got: Vec<String>,
        /// What we accept.
        expected: Vec<String>,
    },
    /// A SigV4-signed request that does not verify (bad signature, skew, expired URL, …).
    #[error(transparent)]
    SigV4(#[from] sigv4::SigV4Error),
    /// A browser form upload whose SigV4 form fields or POST policy do not hold up
    /// (bad signature, expired policy, a condition not met, a field no condition names, a
    /// file outside `content-length-range`, …).
    #[error(transparent)]
    PostPolicy(#[from] post_policy::PostPolicyError),
    /// SigV4 with an access key id that is not a live claimgate session.
    #[error(
        "The AWS Access Key Id you provided does not exist in our records: claimgate accepts only credentials from its STS (AssumeRoleWithWebIdentity)"
    )]
    UnknownAccessKey,
    /// The session token cannot be opened, or belongs to another access key id.
    #[error("the session token is invalid: {reason}")]
    SessionInvalid {
        /// Why.
        reason: String,
    },
    /// The STS session has expired; SDKs refresh by themselves.
    #[error("The provided token has expired: the STS session ended {ago} s ago; assume the role again")]
    SessionExpired {
        /// Seconds since the session's end.
        ago: i64,
    },
    /// A session signature where the route takes bearer tokens only: HTTP upstreams never
    /// see an S3-style payload hash, so nothing would hold a session-signed body to its
    /// signature.
    #[error(
        "unsupported authorization scheme \"AWS SigV4 on an HTTP route (send Authorization: Bearer <token>)\": send `Authorization: Bearer <token>`"
    )]
    SessionNotAccepted {
        /// The session's identity, proven but not accepted here (for the audit record).
        identity: Arc<Identity>,
    },
    /// On the revocation list. The reason goes to the audit record, not to the caller.
    #[error("access revoked for this identity; ask your platform team")]
    Revoked {
        /// Why, from the revocation list.
        reason: String,
        /// Who was refused: proven, then revoked, so the audit record can name them.
        identity: Arc<Identity>,
    },
    /// We have no keys for the issuer and cannot fetch any: our problem, not the caller's.
    #[error("identity provider keys for {issuer:?} are unavailable; try again shortly")]
    KeysUnavailable {
        /// The issuer whose keys are missing.
        issuer: String,
    },
}

impl AuthError {
    /// The identity that was proven before it was refused (revoked, or a session where the
    /// route takes none): the audit record names it.
    pub fn proven_identity(&self) -> Option<&Arc<Identity>> {
        match self {
            AuthError::Revoked { identity, .. } | AuthError::SessionNotAccepted { identity } => {
                Some(identity)
            }
            _ => None,
        }
    }

    /// What the audit record says beyond the caller's message: the revocation's reason.
    pub fn audit_detail(&self) -> Option<String> {
        match self {
            AuthError::Revoked { reason, .. } => Some(format!("revoked: {reason}")),
            _ => None,
        }
    }

    /// Stable short name for audit records and the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::UnsupportedScheme { .. } | AuthError::SessionNotAccepted { .. } => {
                "unsupported_scheme"
            }
            AuthError::Malformed { .. } => "malformed",
            AuthError::Ambiguous { .. } => "ambiguous",
            AuthError::UnknownIssuer { .. } => "unknown_issuer",
            AuthError::UnknownKey { .. } => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::DisallowedAlgorithm { .. } => "disallowed_algorithm",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::Revoked { .. } => "revoked",
            AuthError::SigV4(e) => e.reason(),
            AuthError::PostPolicy(e) => e.reason(),
            AuthError::UnknownAccessKey => "unknown_access_key",
            AuthError::SessionInvalid { .. } => "invalid_session_token",
            AuthError::SessionExpired { .. } => "session_expired",
        }
    }
}

/// What the authenticate stage proves: who is calling, and for a signed aws-chunked upload
/// the signature chain its chunks must continue.
#[derive(Debug)]
pub struct Authenticated {
    /// The caller.
    pub identity: Arc<Identity>,
    /// For `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` uploads: the chain the body's chunk
    /// signatures are verified against as they stream.
    pub chunks: Option<ChunkChain>,
}

/// Which credentials a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// Bearer tokens and STS sessions (S3 routes).
    BearerOrSession,
    /// Bearer tokens only (HTTP routes).
    Bearer,
}

/// Proves who is calling, by whichever credentials the request carries, and holds every
/// identity against the revocation list.
pub struct Authenticator {
    bearer: BearerTokens,
    /// Opens STS sessions; `None` when STS is off (then no SigV4 credential is valid).
    sessions: Option<Arc<Keyring>>,
    /// Sessions opened before, until they expire.
    opened: OpenedSessions,
    revocations: Option<Arc<RevocationList>>,
    clock: SharedClock,
}

impl Authenticator {
    /// Sets up every credential kind; issuer keys are fetched by [`Authenticator::spawn_background`].
    /// On a reload, `previous` hands over the issuers' keys that are still valid.
    pub fn new(
        issuers: &[IssuerConfig],
        sessions: Option<Arc<Keyring>>,
        revocations: Option<Arc<RevocationList>>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        previous: Option<&Authenticator>,
    ) -> Result<Self, String> {
        Ok(Authenticator {
            bearer: BearerTokens::new(issuers, clock.clone(), metrics, previous.map(|p| &p.bearer))?,
            sessions,
            opened: OpenedSessions::new(clock.clone()),
            revocations,
            clock,
        })
    }

    /// The bearer-token verifier (key loading, readiness).
    pub fn bearer(&self) -> &BearerTokens {
        &self.bearer
    }

    /// Ready once every issuer has keys.
    pub fn ready(&self) -> bool {
        self.bearer.ready()
    }

    /// Starts what keeps credentials current: each issuer's key refresh. (The revocation
    /// list is part of the config set and changes with it.)
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.bearer.spawn_refresh()
    }

    /// Proves the credentials in the request head: a SigV4 signature (header or presigned
    /// URL) made with a claimgate STS session, or an OIDC bearer token. Two sets of
    /// credentials are refused rather than one picked; none is [`AuthError::Missing`]; a
    /// session where the route `accepts` bearer tokens only is refused once proven.
    pub async fn authenticate(&self, parts: &Parts, accepts: Accepts) -> Result<Authenticated, AuthError> {
        refuse_ambiguous(parts)?;
        if let Some(claim) = sigv4::parse(parts)? {
            let (session, chunks) = self.session(parts, &claim)?;
            let identity = session.identity.clone();
            if accepts == Accepts::Bearer {
                return Err(AuthError::SessionNotAccepted { identity });
            }
            let identity = self.admit(identity)?;
            return Ok(Authenticated { identity, chunks });
        }
        let token = bearer_token(parts)?;
        let identity = self.bearer.authenticate(token).await?;
        Ok(Authenticated {
            identity: self.admit(identity)?,
            chunks: None,
        })
    }

    /// Proves a bare bearer token (the STS endpoint's web identity token).
    pub async fn authenticate_token(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let identity = self.bearer.authenticate(token).await?;
        self.admit(identity)
    }

    /// Proves a browser form upload by its SigV4 form fields: the session they name must
    /// have signed the POST policy, and the form must meet the policy now. Returns the
    /// identity and the file sizes the policy allows.
    pub fn authenticate_form(
        &self,
        form: &PostForm,
        bucket: &str,
    ) -> Result<(Arc<Identity>, Option<RangeInclusive<u64>>), AuthError> {
        let Some(signed) = FormSignature::read(form)? else {
            return Err(AuthError::Missing);
        };
        let session = self.open_session(signed.access_key_id, signed.security_token)?;
        signed.verify(session.session.secret_access_key.expose())?;
        let policy = PostPolicy::decode(signed.policy)?;
        let length = policy.check(form, bucket, self.clock.unix())?;
        Ok((self.admit(session.identity.clone())?, length))
    }

    /// Verifies a session-signed request and, for a signed-chunk upload, sets up the chain
    /// its chunks continue.
    fn session(
        &self,
        parts: &Parts,
        claim: &SigV4Claim,
    ) -> Result<(Arc<Opened>, Option<ChunkChain>), AuthError> {
        let session = self.open_session(
            &claim.access_key_id,
            claim.session_token.as_ref().map(Secret::expose),
        )?;
        sigv4::verify_keyed(claim, parts, self.clock.unix(), &sigv4::VerifyOptions::S3, || {
            session.signing_key(&claim.scope_date, &claim.region, &claim.service)
        })?;
        let payload = parts
            .headers
            .get(crate::sigv4::header::X_AMZ_CONTENT_SHA256)
            .and_then(|v| v.to_str().ok());
        let trailer = match payload {
            _ if claim.is_presigned() => None,
            Some(chunked::SIGNED) => Some(chunked::Trailer::Absent),
            Some(chunked::SIGNED_TRAILER) => Some(chunked::Trailer::Signed),
            _ => None,
        };
        let chain = trailer.map(|trailer| {
            let key = session.signing_key(&claim.scope_date, &claim.region, &claim.service);
            ChunkChain::new(
                key,
                &claim.amz_date,
                &claim.credential_scope(),
                &claim.signature,
                trailer,
            )
        });
        Ok((session, chain))
    }

    /// Opens the sealed session `token` (or finds it opened before) and checks it was issued
    /// with `access_key_id` and is still live.
    fn open_session(&self, access_key_id: &str, token: Option<&str>) -> Result<Arc<Opened>, AuthError> {
        let keyring = self.sessions.as_ref().ok_or(AuthError::UnknownAccessKey)?;
        let token = token.ok_or(AuthError::UnknownAccessKey)?;
        let digest = token_digest(token);
        let opened = match self.opened.get(&digest) {
            Some(opened) => opened,
            None => {
                let session = keyring.unseal(token).map_err(|e| AuthError::SessionInvalid {
                    reason: e.to_string(),
                })?;
                let opened = Arc::new(Opened::new(session));
                self.opened.insert(digest, opened.clone());
                opened
            }
        };
        if opened.session.access_key_id != access_key_id {
            return Err(AuthError::SessionInvalid {
                reason: "it was issued with another access key id".into(),
            });
        }
        let now = self.clock.unix();
        if now >= opened.session.expires_at {
            return Err(AuthError::SessionExpired {
                ago: now - opened.session.expires_at,
            });
        }
        Ok(opened)
    }

    /// The one place every identity meets the revocation list.
    fn admit(&self, identity: impl Into<Arc<Identity>>) -> Result<Arc<Identity>, AuthError> {
        let identity = identity.into();
        if let Some(list) = &self.revocations
            && let Some(reason) = list.check(&identity, self.clock.unix())
        {
            return Err(AuthError::Revoked {
                reason: reason.to_string(),
                identity,
            });
        }
        Ok(identity)
    }
}

/// With two credentials, which one a hop or the upstream honours is not ours to guess
/// ("valid, then `alg: none`" must not be served on the strength of the first).
fn refuse_ambiguous(parts: &Parts) -> Result<(), AuthError> {
    let mut headers = parts.headers.get_all(header::AUTHORIZATION).iter();
    let first = headers.next();
    if headers.next().is_some() {
        return Err(AuthError::Ambiguous {
            reason: "the request has more than one Authorization header".into(),
        });
    }
    let query_credentials = parts.uri.query().unwrap_or_default().split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        crate::sigv4::param::is_credential(&percent_encoding::percent_decode_str(name).decode_utf8_lossy())
    });
    if first.is_some() && query_credentials {
        return Err(AuthError::Ambiguous {
            reason: "the request carries both an Authorization header and presigned-URL credentials".into(),
        });
    }
    Ok(())
}

/// The token of `Authorization: Bearer <token>`.
pub fn bearer_token(parts: &Parts) -> Result<&str, AuthError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        if parts.uri.query().is_some_and(|q| q.contains("AWSAccessKeyId=")) {
            return Err(AuthError::UnsupportedScheme {
                scheme: "SigV2 presigned URL (create it with signature_version='s3v4')".into(),
            });
        }
        return Err(AuthError::Missing);
    };
    let value = value.to_str().map_err(|_| AuthError::Malformed {
        reason: "the Authorization header is not ASCII".into(),
    })?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme {
            scheme: scheme.chars().take(32).collect(),
        });
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed {
            reason: "the Bearer token is empty".into(),
        });
    }
    Ok(token)
}

/// SHA-256 of a token: the cache key, and (truncated) its id when it has no `jti`.
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
