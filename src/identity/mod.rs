//! Who is calling: OIDC bearer tokens validated against cached JWKS keys.
//!
//! [`Authenticator::authenticate_bearer`] is the hot-path entry. A token seen before and
//! still within its `exp` costs one SHA-256 and a cache lookup; a new token costs one
//! signature verification; only a token naming an unknown key can cause I/O, and that is
//! single-flight and rate-limited per issuer (see [`jwks`]).

pub mod chunked;
pub mod jwks;
pub mod jwt;
pub mod post_policy;
pub mod revocation;
pub mod session;
pub mod sigv4;
pub mod sts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use jsonwebtoken::Algorithm;
use moka::sync::Cache;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::model::{AuthMethod, Identity};
use jwks::IssuerKeys;
use jwt::SignatureCheck;

/// The signing algorithms accepted when an issuer lists none: asymmetric only.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// One trusted OIDC issuer.
#[derive(Debug, Clone)]
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
    /// On the revocation list. The reason goes to the audit record, not to the caller.
    #[error("access revoked for this identity; ask your platform team")]
    Revoked {
        /// Why, from the revocation list.
        reason: String,
    },
    /// We have no keys for the issuer and cannot fetch any: our problem, not the caller's.
    #[error("identity provider keys for {issuer:?} are unavailable; try again shortly")]
    KeysUnavailable {
        /// The issuer whose keys are missing.
        issuer: String,
    },
}

impl AuthError {
    /// Stable short name for audit records and the `reason` metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::UnsupportedScheme { .. } => "unsupported_scheme",
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

/// A verified token in the cache.
struct Verified {
    identity: Arc<Identity>,
    exp: i64,
    leeway: i64,
}

/// Verifies bearer tokens for every configured issuer.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    /// SHA-256 of the token → its verified identity, until `exp`.
    verified: Cache<[u8; 32], Arc<Verified>>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

/// Entries expire from the cache at the token's `exp`; the expiry is also checked on each
/// hit, so a stale entry can never authenticate.
struct UntilExp {
    clock: SharedClock,
}

impl moka::Expiry<[u8; 32], Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Arc<Verified>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        let left = v
            .exp
            .saturating_add(v.leeway)
            .saturating_sub(self.clock.unix())
            .max(0) as u64;
        Some(Duration::from_secs(left))
    }
}

impl Authenticator {
    /// Sets up issuers; keys are fetched by [`Authenticator::spawn_refresh`].
    pub fn new(issuers: &[IssuerConfig], clock: SharedClock, metrics: Arc<Metrics>) -> Result<Self, String> {
        let issuers = issuers
            .iter()
            .map(|i| IssuerKeys::new(i.clone(), metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let verified = Cache::builder()
            .max_capacity(100_000)
            .expire_after(UntilExp { clock: clock.clone() })
            .build();
        Ok(Authenticator {
            issuers,
            verified,
            clock,
            metrics,
        })
    }

    /// Loads every issuer's keys now, then refreshes each on its interval in the background.
    /// Start-up does not fail when an IdP is down: the proxy starts unready and retries.
    pub fn spawn_refresh(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .iter()
            .map(|issuer| {
                let issuer = issuer.clone();
                tokio::spawn(async move {
                    let every = issuer.config().refresh;
                    let retry = Duration::from_secs(2);
                    loop {
                        let wait = match issuer.refresh().await {
                            Ok(()) => every,
                            Err(e) => {
                                tracing::warn!(issuer = %issuer.config().issuer, error = %e, "JWKS refresh failed; keeping the keys we have");
                                if issuer.is_loaded() { every.min(Duration::from_secs(30)) } else { retry }
                            }
                        };
                        tokio::time::sleep(wait).await;
                    }
                })
            })
            .collect()
    }

    /// Loads every issuer's keys once, waiting for the answers (start-up, tests).
    pub async fn load_all(&self) {
        for issuer in &self.issuers {
            if let Err(e) = issuer.refresh().await {
                tracing::warn!(issuer = %issuer.config().issuer, error = %e, "JWKS fetch failed");
            }
        }
    }

    /// Installs keys for an issuer without fetching (benches, tests, pre-seeded key sets).
    /// Returns false when the issuer is not configured.
    pub fn install_keys(&self, issuer: &str, keys: jwks::KeySet) -> bool {
        match self.issuers.iter().find(|i| i.config().issuer == issuer) {
            Some(i) => {
                i.install(keys);
                true
            }
            None => false,
        }
    }

    /// Ready once every issuer has keys.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|i| i.is_loaded())
    }

    /// Validates a bearer token and returns who it names.
    pub async fn authenticate_bearer(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let digest = token_digest(token);
        if let Some(hit) = self.verified.get(&digest) {
            let now = self.clock.unix();
            if now > hit.exp.saturating_add(hit.leeway) {
                self.verified.invalidate(&digest);
                return Err(AuthError::Expired {
                    ago: now.saturating_sub(hit.exp),
                });
            }
            self.metrics.token_cache(true);
            return Ok(hit.identity.clone());
        }
        self.metrics.token_cache(false);
        let verified = self.verify(token, &digest).await?;
        let identity = verified.identity.clone();
        self.verified.insert(digest, verified);
        Ok(identity)
    }

    async fn verify(&self, token: &str, digest: &[u8; 32]) -> Result<Arc<Verified>, AuthError> {
        let unverified = jwt::parse_unverified(token)?;
        let iss = unverified
            .claims
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::Malformed {
                reason: "the token has no `iss` claim".into(),
            })?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config().issuer == iss)
            .ok_or_else(|| AuthError::UnknownIssuer {
                // unverified input: bounded before it reaches an error body or the audit log
                iss: iss.chars().take(128).collect(),
            })?;
        let config = issuer.config();
        let alg = jwt::allowed_algorithm(&unverified.header.alg, config)?;
        let kid = unverified.header.kid.as_deref();

        let mut keys = issuer.current();
        let needs_fetch = match (&keys, kid) {
            (None, _) => true,
            (Some(set), Some(kid)) => !set.has_kid(kid),
            (Some(_), None) => false,
        };
        if needs_fetch {
            keys = issuer.refresh_for_unknown_key().await;
        }
        let Some(keys) = keys else {
            return Err(AuthError::KeysUnavailable {
                issuer: config.issuer.clone(),
            });
        };
        match jwt::verify_signature(token, alg, kid, &keys) {
            SignatureCheck::Valid => {}
            SignatureCheck::NoKey => {
                return Err(AuthError::UnknownKey {
                    kid: kid.unwrap_or("-").chars().take(128).collect(),
                });
            }
            SignatureCheck::Invalid => return Err(AuthError::BadSignature),
        }
        let exp = jwt::check_claims(&unverified.claims, config, self.clock.unix())?;
        let subject = unverified
            .claims
            .get("sub")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthError::Malformed {
                reason: "the token has no `sub` claim".into(),
            })?
            .to_string();
        let token_id = match unverified.claims.get("jti").and_then(|v| v.as_str()) {
            Some(jti) => jti.to_string(),
            None => format!("sha256:{}", hex::encode(&digest[..8])),
        };
        Ok(Arc::new(Verified {
            identity: Arc::new(Identity {
                issuer: config.issuer.clone(),
                subject,
                claims: unverified.claims,
                method: AuthMethod::Bearer,
                token_id,
                session_role: None,
                session_id: None,
            }),
            exp,
            leeway: config.leeway.as_secs() as i64,
        }))
    }
}

/// SHA-256 of a token: the cache key, and (truncated) its id when it has no `jti`.
pub fn token_digest(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
