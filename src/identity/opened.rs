//! STS sessions opened once and kept until they expire.
//!
//! An SDK signs every request with the same session token. Opening it (base64, AES-GCM,
//! JSON) and deriving the day's SigV4 signing key (four HMACs) cost more than the rest of
//! the request's own work together (README, Performance), and give the same answer every
//! time: so the answer is kept, keyed by the token's SHA-256, until the session's expiry.
//! What can change per request is still checked per request: the access key id the
//! request names, the expiry against the clock, the revocation list, and the signature.
//! The cache belongs to one config set, so a reload that drops a sealing key drops the
//! sessions it opened too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use moka::sync::Cache;

use super::session::Session;
use crate::clock::SharedClock;
use crate::model::Identity;

/// One opened session: what it proves and the signing key of the scope it last signed in.
pub struct Opened {
    /// The session as sealed.
    pub session: Session,
    /// The identity it carries, shared by every request made with it.
    pub identity: Arc<Identity>,
    /// `(date/region/service, key)` of the last scope seen: an SDK signs a whole day in one.
    scope_key: Mutex<Option<(String, hmac::Key)>>,
}

impl Opened {
    /// Opens `session` for reuse.
    pub fn new(session: Session) -> Opened {
        let identity = Arc::new(session.clone().into_identity());
        Opened {
            session,
            identity,
            scope_key: Mutex::new(None),
        }
    }

    /// The SigV4 signing key for `date/region/service`, derived once per scope.
    pub fn signing_key(&self, date: &str, region: &str, service: &str) -> hmac::Key {
        let mut slot = self.scope_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((scope, key)) = slot.as_ref()
            && scope_is(scope, date, region, service)
        {
            return key.clone();
        }
        let key = crate::sigv4::signing_key(self.session.secret_access_key.expose(), date, region, service);
        *slot = Some((format!("{date}/{region}/{service}"), key.clone()));
        key
    }
}

fn scope_is(scope: &str, date: &str, region: &str, service: &str) -> bool {
    let mut parts = scope.splitn(3, '/');
    parts.next() == Some(date) && parts.next() == Some(region) && parts.next() == Some(service)
}

/// Entries leave at their session's expiry (which is also checked on every use).
struct UntilExpiry {
    clock: SharedClock,
}

impl moka::Expiry<[u8; 32], Arc<Opened>> for UntilExpiry {
    fn expire_after_create(&self, _: &[u8; 32], v: &Arc<Opened>, _: std::time::Instant) -> Option<Duration> {
        let left = v.session.expires_at.saturating_sub(self.clock.unix()).max(0) as u64;
        Some(Duration::from_secs(left))
    }
}

/// SHA-256 of a session token → the session it opened.
pub struct OpenedSessions {
    cache: Cache<[u8; 32], Arc<Opened>>,
}

impl OpenedSessions {
    /// An empty cache holding at most 100,000 sessions.
    pub fn new(clock: SharedClock) -> OpenedSessions {
        OpenedSessions {
            cache: Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilExpiry { clock })
                .build(),
        }
    }

    /// The session `token` opened before, if it is still held.
    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<Opened>> {
        self.cache.get(digest)
    }

    /// Keeps an opened session.
    pub fn insert(&self, digest: [u8; 32], opened: Arc<Opened>) {
        self.cache.insert(digest, opened);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn opened() -> Opened {
        Opened::new(Session {
            access_key_id: "ASIATEST".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            issuer: "https://idp".into(),
            subject: "alice".into(),
            token_id: "t1".into(),
            role: "trainer".into(),
            session_name: "s".into(),
            claims: Default::default(),
            issued_at: 0,
            expires_at: 3600,
        })
    }

    fn tag(key: &hmac::Key) -> Vec<u8> {
        hmac::sign(key, b"string to sign").as_ref().to_vec()
    }

    #[test]
    fn the_kept_key_is_the_scope_s_key_and_follows_the_scope() {
        let o = opened();
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        for (date, region, service) in [
            ("20261129", "us-east-1", "s3"),
            ("20261129", "us-east-1", "s3"),
            ("20261130", "us-east-1", "s3"),
            ("20261130", "eu-west-1", "s3"),
        ] {
            let want = crate::sigv4::signing_key(secret, date, region, service);
            assert_eq!(
                tag(&o.signing_key(date, region, service)),
                tag(&want),
                "{date}/{region}/{service}"
            );
        }
        assert_eq!(o.identity.subject, "alice");
    }

    #[test]
    fn scopes_match_only_whole() {
        assert!(scope_is("20261129/us-east-1/s3", "20261129", "us-east-1", "s3"));
        assert!(!scope_is("20261129/us-east-1/s3", "20261130", "us-east-1", "s3"));
        assert!(!scope_is("20261129/us-east-1/s3", "20261129", "us-east-1", "sts"));
        assert!(!scope_is("20261129/us-east-1/s3", "20261129", "us-east", "1/s3"));
    }
}
