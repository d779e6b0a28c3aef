//! Where an S3 route's signing keys come from, request by request.
//!
//! A static key pair is the one long-lived secret claimgate exists to take out of notebooks,
//! so a route may do without: `aws` takes whatever the AWS SDK's default chain finds on the
//! host (IRSA's web identity, ECS or EC2 instance roles, a profile), and `assume_role`
//! trades those (or static ones) at STS for a session *per caller*, with the caller's
//! subject as `SourceIdentity` and `sub`, issuer and claimgate role as session tags — so
//! CloudTrail and S3's server access logs name the human or job behind each access, not
//! only claimgate.
//!
//! Keys are cached until shortly before they expire; a cache load is single-flight, so a
//! burst of requests makes one STS call. Sessions are keyed by everything that goes into
//! them (role ARN, issuer, subject, claimgate role): two callers never share one.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_lc_rs::hmac;
use aws_sdk_sts::config::Region;
use http::HeaderValue;
use tokio::sync::OnceCell;

use crate::config::{AssumeRole, S3Credentials, SigV4Keys};
use crate::model::Identity;
use crate::secret::Secret;
use crate::sigv4;

/// How long before their expiry cached keys are replaced: STS sessions last at least
/// 15 minutes, and a request signed now may still be in flight a while.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long keys without an expiry (environment, static profile) are kept before the
/// chain is asked again, as the AWS SDKs' own caches do.
const UNDATED_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Sessions held at once (one per caller and role).
const MAX_SESSIONS: u64 = 10_000;
/// How long one STS (or credential chain) call may take, all attempts included: requests
/// wait on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed load is remembered: while STS, IMDS or the IdP is failing, requests
/// get the failure at once instead of each asking again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);

/// Why a request has no keys to be signed with. The reasons name endpoints and STS error
/// codes, never a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The AWS default chain found nothing usable.
    #[error("the AWS credential chain found no credentials: {0}")]
    Chain(String),
    /// STS refused or failed the AssumeRole call.
    #[error("AssumeRole of {role_arn} failed: {reason}")]
    AssumeRole {
        /// The role asked for.
        role_arn: String,
        /// STS's error, as the SDK reports it.
        reason: String,
    },
    /// The role ARN names `${role}`, but no claimgate role allowed the request.
    #[error("role_arn needs the claimgate role, and no role allowed this request")]
    NoRole,
    /// The route's token endpoint refused or failed.
    #[error("the token endpoint {token_url} gave no token: {reason}")]
    Token {
        /// The endpoint.
        token_url: String,
        /// Its OAuth error, or why it could not be asked.
        reason: String,
    },
    /// A token exchange needs the caller's bearer token, and the request has none.
    #[error("a token exchange needs the caller's bearer token")]
    NoCallerToken,
}

/// Keys to sign with, and the day's signing key derived from them once.
pub struct SigningKeys {
    /// The key pair (and session token).
    pub keys: SigV4Keys,
    /// The session token as a header value, made once.
    pub session_token: Option<HeaderValue>,
    /// When the keys stop working, if they do.
    pub expires: Option<SystemTime>,
    /// The signing key of one UTC day (`YYYYMMDD`), derived at its first use.
    day: Mutex<Option<(String, hmac::Key)>>,
}

impl SigningKeys {
    /// Keys ready to sign with.
    pub fn new(keys: SigV4Keys, expires: Option<SystemTime>) -> Result<SigningKeys, String> {
        let session_token = match &keys.session_token {
            None => None,
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose())
                    .map_err(|_| "the session token is not a valid header value".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(SigningKeys {
            keys,
            session_token,
            expires,
            day: Mutex::new(None),
        })
    }

    /// The signing key for `date` (`YYYYMMDD`), derived once per day.
    pub fn key_for(&self, date: &str, region: &str, service: &str) -> hmac::Key {
        let mut day = self.day.lock().unwrap_or_else(|e| e.into_inner());
        match &*day {
            Some((d, key)) if d == date => key.clone(),
            _ => {
                let key = sigv4::signing_key(self.keys.secret_access_key.expose(), date, region, service);
                *day = Some((date.to_string(), key.clone()));
                key
            }
        }
    }
}

#[cfg(test)]
impl SigningKeys {
    /// The day whose signing key is held.
    pub(crate) fn day_of_key(&self) -> Option<String> {
        self.day.lock().ok()?.as_ref().map(|(d, _)| d.clone())
    }
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Who the keys are for: the identity, and the claimgate role that allowed the request.
pub struct Caller<'a> {
    /// The authenticated caller.
    pub identity: &'a Identity,
    /// The role whose rule allowed the request (or the session's role).
    pub role: Option<&'a str>,
}

/// A route's source of signing keys.
pub enum KeySource {
    /// The config's keys, for every request.
    Static(Arc<SigningKeys>),
    /// The AWS default chain, asked again before the keys expire.
    Chain(Box<Chain>),
    /// A session per caller.
    AssumeRole(Box<Sessions>),
}

impl KeySource {
    /// The source a route's config describes. Nothing is fetched yet: the first request
    /// builds the chain and makes the first call, so a start-up never waits on IMDS or STS.
    pub fn new(config: &S3Credentials, region: &str) -> Result<KeySource, String> {
        Ok(match config {
            S3Credentials::Static(keys) => KeySource::Static(Arc::new(SigningKeys::new(keys.clone(), None)?)),
            S3Credentials::Aws { profile } => KeySource::Chain(Box::new(Chain::new(profile.clone(), region))),
            S3Credentials::AssumeRole(assume) => {
                KeySource::AssumeRole(Box::new(Sessions::new(assume, region)?))
            }
        })
    }

    /// The keys to sign `caller`'s request with.
    pub async fn keys(&self, caller: &Caller<'_>) -> Result<Arc<SigningKeys>, CredentialsError> {
        match self {
            KeySource::Static(keys) => Ok(keys.clone()),
            KeySource::Chain(chain) => chain.keys().await,
            KeySource::AssumeRole(sessions) => sessions.keys(caller).await,
        }
    }
}

/// The AWS SDK's default credential chain, behind a cache of one entry.
pub struct Chain {
    profile: Option<String>,
    region: String,
    provider: OnceCell<SharedCredentialsProvider>,
    cache: moka::future::Cache<(), Arc<SigningKeys>>,
    failures: Failures<()>,
}

impl Chain {
    fn new(profile: Option<String>, region: &str) -> Chain {
        Chain {
            profile,
            region: region.to_string(),
            provider: OnceCell::new(),
            cache: keys_cache(1),
            failures: Failures::new(1),
        }
    }

    async fn provider(&self) -> SharedCredentialsProvider {
        self.provider
            .get_or_init(|| async {
                sdk_config(&self.region, self.profile.as_deref(), None)
                    .await
                    .credentials_provider()
                    .unwrap_or_else(|| SharedCredentialsProvider::new(NoCredentials))
            })
            .await
            .clone()
    }

    async fn keys(&self) -> Result<Arc<SigningKeys>, CredentialsError> {
        if let Some(e) = self.failures.get(&()) {
            return Err(e);
        }
        self.cache
            .try_get_with((), async {
                let provider = self.provider().await;
                let creds = provider.provide_credentials().await.map_err(|e| {
                    CredentialsError::Chain(aws_sdk_sts::error::DisplayErrorContext(&e).to_string())
                })?;
                signing_keys(&creds).map_err(CredentialsError::Chain)
            })
            .await
            .map_err(|e: Arc<CredentialsError>| self.failures.remember((), &e))
    }
}

/// What makes two sessions the same: everything AssumeRole is called with.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    role_arn: String,
    issuer: String,
    subject: String,
    role: String,
}

/// Sessions of one `assume_role` route, one per caller.
pub struct Sessions {
    config: AssumeRole,
    region: String,
    source: SourceProvider,
    sts: OnceCell<aws_sdk_sts::Client>,
    cache: moka::future::Cache<SessionKey, Arc<SigningKeys>>,
    failures: Failures<SessionKey>,
}

/// The credentials that call AssumeRole.
enum SourceProvider {
    Static(aws_credential_types::Credentials),
    Chain(Option<String>),
}

impl Sessions {
    fn new(config: &AssumeRole, region: &str) -> Result<Sessions, String> {
        let source = match &config.source {
            S3Credentials::Static(k) => SourceProvider::Static(aws_credential_types::Credentials::new(
                k.access_key_id.expose(),
                k.secret_access_key.expose(),
                k.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "claimgate-config",
            )),
            S3Credentials::Aws { profile } => SourceProvider::Chain(profile.clone()),
            S3Credentials::AssumeRole(_) => {
                return Err("assume_role cannot take assume_role as its source".into());
            }
        };
        Ok(Sessions {
            config: config.clone(),
            region: region.to_string(),
            source,
            sts: OnceCell::new(),
            cache: keys_cache(MAX_SESSIONS),
            failures: Failures::new(MAX_SESSIONS),
        })
    }

    async fn sts(&self) -> &aws_sdk_sts::Client {
        self.sts
            .get_or_init(|| async {
                let sdk = match &self.source {
                    SourceProvider::Static(c) => sdk_config(&self.region, None, Some(c.clone())).await,
                    SourceProvider::Chain(profile) => {
                        sdk_config(&self.region, profile.as_deref(), None).await
                    }
                };
                // From the SDK config, so `AWS_ENDPOINT_URL_STS` (and the profile's
                // endpoint settings) apply unless the route names its own endpoint.
                let mut config = aws_sdk_sts::config::Builder::from(&sdk);
                if let Some(endpoint) = &self.config.sts_endpoint {
                    config = config.endpoint_url(endpoint);
                }
                aws_sdk_sts::Client::from_conf(config.build())
            })
            .await
    }

    async fn keys(&self, caller: &Caller<'_>) -> Result<Arc<SigningKeys>, CredentialsError> {
        let role = caller.role.unwrap_or_default();
        let role_arn = if self.config.role_arn.contains("${role}") {
            if role.is_empty() {
                return Err(CredentialsError::NoRole);
            }
            self.config.role_arn.replace("${role}", role)
        } else {
            self.config.role_arn.clone()
        };
        let key = SessionKey {
            role_arn,
            issuer: caller.identity.issuer.clone(),
            subject: caller.identity.subject.clone(),
            role: role.to_string(),
        };
        if let Some(e) = self.failures.get(&key) {
            return Err(e);
        }
        self.cache
            .try_get_with_by_ref(&key, self.assume(&key))
            .await
            .map_err(|e: Arc<CredentialsError>| self.failures.remember(key.clone(), &e))
    }

    async fn assume(&self, key: &SessionKey) -> Result<Arc<SigningKeys>, CredentialsError> {
        let failed = |reason: String| CredentialsError::AssumeRole {
            role_arn: key.role_arn.clone(),
            reason,
        };
        let mut call = self
            .sts()
            .await
            .assume_role()
            .role_arn(&key.role_arn)
            .role_session_name(session_name(&key.subject))
            .source_identity(source_identity(&key.subject))
            .duration_seconds(i32::try_from(self.config.session_duration.as_secs()).unwrap_or(3600));
        for (name, value) in session_tags(key) {
            let tag = aws_sdk_sts::types::Tag::builder()
                .key(name)
                .value(value)
                .build()
                .map_err(|e| failed(e.to_string()))?;
            call = call.tags(tag);
        }
        if let Some(id) = &self.config.external_id {
            call = call.external_id(id.expose());
        }
        let out = call
            .send()
            .await
            .map_err(|e| failed(aws_sdk_sts::error::DisplayErrorContext(&e).to_string()))?;
        let creds = out
            .credentials()
            .ok_or_else(|| failed("the answer holds no credentials".into()))?;
        let expires = SystemTime::try_from(*creds.expiration()).ok();
        let keys = SigV4Keys {
            access_key_id: Secret::new(creds.access_key_id()),
            secret_access_key: Secret::new(creds.secret_access_key()),
            session_token: Some(Secret::new(creds.session_token())),
        };
        tracing::info!(
            role_arn = %key.role_arn,
            source_identity = %source_identity(&key.subject),
            "assumed a role for a caller"
        );
        SigningKeys::new(keys, expires).map(Arc::new).map_err(failed)
    }
}

/// The SDK's config for `region`: its default chain (of `profile`), or `static_keys`; every
/// call bounded by [`CALL_TIMEOUT`].
async fn sdk_config(
    region: &str,
    profile: Option<&str>,
    static_keys: Option<aws_credential_types::Credentials>,
) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .connect_timeout(Duration::from_secs(3))
                .build(),
        );
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(keys) = static_keys {
        loader = loader.credentials_provider(keys);
    }
    loader.load().await
}

/// A provider that has nothing: what the chain is when the SDK config holds none.
#[derive(Debug)]
struct NoCredentials;

impl ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no credential chain configured",
            ),
        ))
    }
}

/// Failed loads of the last [`FAILURE_MEMORY`], by key.
pub(crate) struct Failures<K> {
    recent: moka::sync::Cache<K, CredentialsError>,
}

impl<K: std::hash::Hash + Eq + Send + Sync + 'static> Failures<K> {
    pub(crate) fn new(capacity: u64) -> Failures<K> {
        Failures {
            recent: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(FAILURE_MEMORY)
                .build(),
        }
    }

    /// The failure remembered for `key`, if it is recent.
    pub(crate) fn get(&self, key: &K) -> Option<CredentialsError> {
        self.recent.get(key)
    }

    /// Remembers `e` for `key`, and hands it back.
    pub(crate) fn remember(&self, key: K, e: &Arc<CredentialsError>) -> CredentialsError {
        self.recent.insert(key, (**e).clone());
        (**e).clone()
    }
}

fn signing_keys(creds: &aws_credential_types::Credentials) -> Result<Arc<SigningKeys>, String> {
    let keys = SigV4Keys {
        access_key_id: Secret::new(creds.access_key_id()),
        secret_access_key: Secret::new(creds.secret_access_key()),
        session_token: creds.session_token().map(Secret::new),
    };
    SigningKeys::new(keys, creds.expiry()).map(Arc::new)
}

/// A cache whose entries leave [`REFRESH_MARGIN`] before their keys expire (or half-way
/// through a shorter life), and after [`UNDATED_LIFETIME`] when they do not.
fn keys_cache<K>(capacity: u64) -> moka::future::Cache<K, Arc<SigningKeys>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(capacity)
        .expire_after(UntilNearExpiry)
        .build()
}

struct UntilNearExpiry;

impl<K> moka::Expiry<K, Arc<SigningKeys>> for UntilNearExpiry {
    fn expire_after_create(&self, _key: &K, value: &Arc<SigningKeys>, _created: Instant) -> Option<Duration> {
        Some(keep_for(value.expires, SystemTime::now()))
    }
}

/// How long keys expiring at `expires` may still be handed out, seen at `now`.
fn keep_for(expires: Option<SystemTime>, now: SystemTime) -> Duration {
    match expires {
        None => UNDATED_LIFETIME,
        Some(at) => {
            let left = at.duration_since(now).unwrap_or_default();
            left.saturating_sub(REFRESH_MARGIN.min(left / 2))
        }
    }
}

/// `RoleSessionName`: `[\w+=,.@-]{2,64}`, from the subject (CloudTrail shows it in the
/// assumed-role ARN).
fn session_name(subject: &str) -> String {
    sanitized(subject, 64)
}

/// `SourceIdentity`: `[\w+=,.@-]{2,64}`, never starting with `aws:`. It stays with the
/// session (and any role chained from it) and is logged by CloudTrail on every call.
fn source_identity(subject: &str) -> String {
    sanitized(subject, 64)
}

/// `s` with every character outside `[A-Za-z0-9_+=,.@-]` replaced by `-`, cut to `max`
/// bytes, and padded to STS's minimum of two.
fn sanitized(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while out.len() < 2 {
        out.push('-');
    }
    out
}

/// Session tags naming the caller: `claimgate:sub`, `claimgate:iss` and `claimgate:role`
/// (values cut to STS's 256 characters, in its tag alphabet). IAM policies can match them
/// as `aws:PrincipalTag/claimgate:sub`.
fn session_tags(key: &SessionKey) -> Vec<(&'static str, String)> {
    let value = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(256)
            .collect()
    };
    let mut tags = vec![
        ("claimgate:sub", value(&key.subject)),
        ("claimgate:iss", value(&key.issuer)),
    ];
    if !key.role.is_empty() {
        tags.push(("claimgate:role", value(&key.role)));
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_sts_alphabets() {
        assert_eq!(
            source_identity("system:serviceaccount:training:job-7"),
            "system-serviceaccount-training-job-7"
        );
        assert_eq!(source_identity("alice@example.com"), "alice@example.com");
        assert_eq!(source_identity("a"), "a-");
        assert_eq!(source_identity(&"x".repeat(100)).len(), 64);
        let key = SessionKey {
            role_arn: String::new(),
            issuer: "https://login.example.com/oauth2/default".into(),
            subject: "system:serviceaccount:training:job#7".into(),
            role: "trainer".into(),
        };
        let tags = session_tags(&key);
        assert_eq!(
            tags[0],
            ("claimgate:sub", "system:serviceaccount:training:job_7".into())
        );
        assert_eq!(
            tags[1],
            ("claimgate:iss", "https://login.example.com/oauth2/default".into())
        );
        assert_eq!(tags[2], ("claimgate:role", "trainer".into()));
    }

    #[test]
    fn keys_leave_the_cache_before_they_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            keep_for(Some(now + Duration::from_secs(3600)), now),
            Duration::from_secs(3300)
        );
        // a short session is kept for half its life
        assert_eq!(
            keep_for(Some(now + Duration::from_secs(60)), now),
            Duration::from_secs(30)
        );
        assert_eq!(keep_for(Some(now - Duration::from_secs(1)), now), Duration::ZERO);
        assert_eq!(keep_for(None, now), UNDATED_LIFETIME);
    }
}
