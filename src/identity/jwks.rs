//! Per-issuer signing keys: discovery, JWKS fetch, caching, refresh.
//!
//! The hot path only reads the current key set (an `Arc` swap under a short read lock).
//! Fetches happen in the background on a timer, and on demand when a token names a key id
//! we do not have — that demand fetch is single-flight (one fetch however many requests
//! wait on it) and rate-limited (a flood of random `kid`s cannot become a flood of
//! fetches). A failed fetch never drops the keys we have: stale keys keep serving while
//! the IdP is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::Instant;

use crate::identity::IssuerConfig;
use crate::metrics::Metrics;
use crate::net::{self, Connector};

/// JWKS documents larger than this are refused: a hostile or broken endpoint must not make
/// us buffer without bound.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// The `alg` the JWK is pinned to, if any.
    pub alg: Option<String>,
    /// The key itself.
    pub key: DecodingKey,
}

/// The keys of one issuer at one moment.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Keys in JWKS order.
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Keys a token signed with `alg` and naming `kid` may have been signed with.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            let kid_ok = match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            };
            let alg_ok = match &k.alg {
                Some(a) => alg_name(alg) == a,
                None => k.key.family() == alg.family(),
            };
            kid_ok && alg_ok && k.key.family() == alg.family()
        })
    }

    /// Whether any key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The JOSE name of an algorithm.
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // Algorithms added to jsonwebtoken later are not on any allow-list we build.
        _ => "",
    }
}

/// Why a fetch failed; kept short, it becomes a log line and a metric label.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or timeout.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// What we asked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// A non-200 answer.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// What we asked for.
        url: String,
        /// The status.
        status: u16,
    },
    /// Not the JSON we expected.
    #[error("{url}: {reason}")]
    BadDocument {
        /// What we asked for.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The signing keys of one issuer, with their refresh machinery.
pub struct IssuerKeys {
    config: IssuerConfig,
    client: Client<Connector, Empty<Bytes>>,
    /// The keys in force; `None` until the first successful fetch.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Bumped whenever the keys in force change, so a token verified against a key set can
    /// tell the set changed under it (a key may have been withdrawn).
    version: AtomicU64,
    /// SHA-256 of the JWKS keys last fetched: an unchanged document changes nothing.
    fetched: Mutex<Option<[u8; 32]>>,
    /// SHA-256 of the CA file the client was built with, when there is one.
    ca_digest: Option<[u8; 32]>,
    /// Serializes fetches: one in flight per issuer.
    fetch_lock: tokio::sync::Mutex<Option<Instant>>,
    /// Least time between two on-demand fetches.
    min_refetch: Duration,
    metrics: Arc<Metrics>,
}

impl IssuerKeys {
    /// Sets up an issuer; no network I/O until [`IssuerKeys::refresh`].
    pub fn new(config: IssuerConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let connector = net::connector(config.ca_file.as_deref(), FETCH_TIMEOUT)?;
        Ok(IssuerKeys {
            ca_digest: config.ca_file.as_deref().and_then(file_digest),
            min_refetch: config.min_refetch,
            config,
            client: net::client(connector),
            keys: RwLock::new(None),
            version: AtomicU64::new(0),
            fetched: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    /// The issuer's configuration.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// Whether the issuer's CA file still holds what this client was built with (a reload
    /// with a renewed CA needs a new client).
    pub fn same_ca(&self) -> bool {
        self.ca_digest == self.config.ca_file.as_deref().and_then(file_digest)
    }

    /// The keys we have, if any were ever fetched.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Which key set is in force: read it *before* [`IssuerKeys::current`] when verifying,
    /// and a later change of keys is always noticed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Whether keys have been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current().is_some()
    }

    /// How long ago keys were last fetched (or a fetch attempted); `None` before the first.
    pub async fn since_last_fetch(&self) -> Option<Duration> {
        self.fetch_lock.lock().await.map(|at| at.elapsed())
    }

    /// Fetches keys now (background refresh and start-up). Single-flight with demand fetches.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        let mut last_attempt = self.fetch_lock.lock().await;
        *last_attempt = Some(Instant::now());
        self.fetch_and_store().await
    }

    /// Fetches keys because a token named a key we do not have. Returns the key set to try
    /// again with. Waiters share one fetch: whoever gets the lock after a fetch that began
    /// after they started waiting simply uses its result. Attempts closer together than
    /// `min_refetch` are skipped.
    pub async fn refresh_for_unknown_key(&self) -> Option<Arc<KeySet>> {
        let asked_at = Instant::now();
        let mut last_attempt = self.fetch_lock.lock().await;
        if let Some(at) = *last_attempt
            && (at >= asked_at || at.elapsed() < self.min_refetch)
        {
            self.metrics.jwks_fetch(&self.config.issuer, "rate_limited");
            return self.current();
        }
        *last_attempt = Some(Instant::now());
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(issuer = %self.config.issuer, error = %e, "JWKS fetch failed; keeping the keys we have");
        }
        self.current()
    }

    /// Replaces the key set as a successful fetch would.
    pub fn install(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    async fn fetch_and_store(&self) -> Result<(), FetchError> {
        match self.fetch().await {
            Ok((set, digest)) => {
                self.metrics.jwks_fetch(&self.config.issuer, "ok");
                self.metrics.jwks_loaded(&self.config.issuer, set.keys.len());
                let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
                if *fetched != Some(digest) {
                    self.install(set);
                    *fetched = Some(digest);
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.jwks_fetch(&self.config.issuer, "error");
                Err(e)
            }
        }
    }

    /// The issuer's keys, with a digest of the JWKs they came from.
    async fn fetch(&self) -> Result<(KeySet, [u8; 32]), FetchError> {
        let jwks_uri = match &self.config.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc: Discovery = self.get_json(&url).await?;
                if doc.issuer != self.config.issuer {
                    // OIDC Discovery §4.3: a mismatch means the document is not this issuer's.
                    return Err(FetchError::BadDocument {
                        url,
                        reason: format!(
                            "discovery names issuer {:?}, expected {:?}",
                            doc.issuer, self.config.issuer
                        ),
                    });
                }
                // The document's own word is not enough to fetch keys in clear: anyone on
                // the path could swap them.
                if !crate::config::key_url_allowed(&doc.jwks_uri) {
                    return Err(FetchError::BadDocument {
                        url,
                        reason: format!(
                            "discovery names jwks_uri {:?}: keys are fetched only over https:// (http only on loopback)",
                            doc.jwks_uri
                        ),
                    });
                }
                doc.jwks_uri
            }
        };
        let raw: RawJwks = self.get_json(&jwks_uri).await?;
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut keys = Vec::new();
        for value in raw.keys {
            let text = value.to_string();
            if let Some(key) = parse_key(value) {
                digest.update(text.as_bytes());
                digest.update(b"\n");
                keys.push(key);
            }
        }
        let digest: [u8; 32] = digest.finish().as_ref().try_into().expect("SHA-256 is 32 bytes");
        if keys.is_empty() {
            return Err(FetchError::BadDocument {
                url: jwks_uri,
                reason: "no usable signing keys".into(),
            });
        }
        Ok((KeySet { keys }, digest))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let unreachable = |reason: String| FetchError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| unreachable(format!("bad URL: {e}")))?;
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(crate::net::error_chain(&e)))?;
        if resp.status() != http::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(resp.into_body(), MAX_DOCUMENT).collect(),
        )
        .await
        .map_err(|_| unreachable("timed out reading body".into()))?
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::BadDocument {
            url: url.to_string(),
            reason: format!("not the expected JSON: {e}"),
        })
    }
}

fn file_digest(path: &std::path::Path) -> Option<[u8; 32]> {
    let bytes = std::fs::read(path).ok()?;
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
        .as_ref()
        .try_into()
        .ok()
}

/// One JWK → a key, skipping (not failing on) keys we cannot or must not use: encryption
/// keys, symmetric keys, unknown key types. A JWKS often carries such keys beside the
/// signing ones.
pub fn parse_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg: jwk
            .common
            .key_algorithm
            .map(|a| format!("{a:?}"))
            .filter(|a| !a.is_empty()),
        key,
    })
}
