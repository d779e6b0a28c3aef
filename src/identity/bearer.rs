//! OIDC bearer tokens validated against cached JWKS keys.
//!
//! [`BearerTokens::authenticate`] is the hot-path entry. A token seen before and still
//! within its `exp` costs one SHA-256 and a cache lookup; a new token costs one signature
//! verification; only a token naming an unknown key can cause I/O, and that is single-flight
//! and rate-limited per issuer (see [`jwks`](super::jwks)).
//!
//! A cached verification is only as good as the key it was made with: each entry remembers
//! which key set of its issuer verified it, and once that set changes (a refresh withdrew
//! or added a key) the token is verified afresh against the new set on its next use, so a
//! withdrawn key stops admitting anything within one refresh.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use super::jwks::{self, IssuerKeys};
use super::jwt::{self, SignatureCheck};
use super::{AuthError, IssuerConfig, token_digest};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::model::{AuthMethod, Identity};

/// A verified token in the cache.
struct Verified {
    identity: Arc<Identity>,
    exp: i64,
    leeway: i64,
    /// The issuer whose keys verified the token, and which of its key sets it was.
    issuer: Arc<IssuerKeys>,
    keys_version: u64,
}

/// Verifies bearer tokens for every configured issuer.
pub struct BearerTokens {
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

impl BearerTokens {
    /// Sets up issuers; keys are fetched by [`BearerTokens::spawn_refresh`].
    ///
    /// On a reload, `previous` hands over what is still valid: the keys (and fetch state)
    /// of every issuer configured exactly as before (its CA file's contents included), and — when no issuer setting changed
    /// at all — the verified tokens, so a policy edit costs no re-verification.
    pub fn new(
        issuers: &[IssuerConfig],
        clock: SharedClock,
        metrics: Arc<Metrics>,
        previous: Option<&BearerTokens>,
    ) -> Result<Self, String> {
        let kept = |config: &IssuerConfig| {
            previous
                .into_iter()
                .flat_map(|p| p.issuers.iter())
                .find(|i| i.config() == config && i.same_ca())
                .cloned()
        };
        let issuers = issuers
            .iter()
            .map(|i| match kept(i) {
                Some(keys) => Ok(keys),
                None => IssuerKeys::new(i.clone(), metrics.clone()).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let unchanged = previous.is_some_and(|p| {
            p.issuers.len() == issuers.len() && p.issuers.iter().zip(&issuers).all(|(a, b)| Arc::ptr_eq(a, b))
        });
        let verified = match previous {
            Some(p) if unchanged => p.verified.clone(),
            _ => Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilExp { clock: clock.clone() })
                .build(),
        };
        Ok(BearerTokens {
            issuers,
            verified,
            clock,
            metrics,
        })
    }

    /// Loads every issuer's keys now (unless a reload handed them over: then at their next
    /// due time), then refreshes each on its interval in the background. Start-up does not fail
    /// when an IdP is down: the proxy starts unready and retries.
    pub fn spawn_refresh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers
            .iter()
            .map(|issuer| {
                let issuer = issuer.clone();
                tokio::spawn(async move {
                    let every = issuer.config().refresh;
                    let retry = Duration::from_secs(2);
                    // Keys handed over by a reload keep their schedule: reloads, however
                    // frequent, never push the next refresh back.
                    if issuer.is_loaded() {
                        let since = issuer.since_last_fetch().await.unwrap_or_default();
                        tokio::time::sleep(every.saturating_sub(since)).await;
                    }
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

    /// Validates a bearer token and returns who it names (the revocation list is the
    /// [`Authenticator`](super::Authenticator)'s to check).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let digest = token_digest(token);
        if let Some(hit) = self.verified.get(&digest)
            && hit.issuer.version() == hit.keys_version
        {
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

        // Read before the keys: a change of keys after this point is noticed at the next use.
        let keys_version = issuer.version();
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
            }),
            exp,
            leeway: config.leeway.as_secs() as i64,
            keys_version,
            issuer: issuer.clone(),
        }))
    }
}
