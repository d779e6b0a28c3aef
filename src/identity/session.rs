//! Stateless STS sessions: everything a replica needs to verify a session-signed request
//! travels inside the session token, sealed with AES-256-GCM under the configured keyring.
//!
//! Token layout: `CGS1.` + base64url(key id (4 bytes) ‖ nonce (12) ‖ ciphertext ‖ tag). The
//! key id is the first four bytes of the key's SHA-256, so rotation needs no coordination:
//! new sessions are sealed with the first (newest) key, and any key in the ring unseals.
//! The access key id is inside the sealed payload, so a token cannot be paired with
//! another session's access key id (or secret).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::{AuthMethod, Identity};
use zeroize::Zeroizing;

use crate::secret::Secret;

const PREFIX: &str = "CGS1.";
const AAD: &[u8] = b"claimgate-session-v1";

/// What a session token carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The access key id issued with the session (`ASIA…`).
    pub access_key_id: String,
    /// The session's secret access key.
    pub secret_access_key: Secret,
    /// Issuer of the web identity token the session was made from.
    pub issuer: String,
    /// Its subject.
    pub subject: String,
    /// The web identity token's `jti` (or short hash): ties the session to the token.
    pub token_id: String,
    /// The one role the session assumed.
    pub role: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// The web identity token's claims, for role membership and `${claim}` policies.
    pub claims: Map<String, Value>,
    /// Issued at (unix seconds).
    pub issued_at: i64,
    /// Expires at (unix seconds).
    pub expires_at: i64,
}

impl Session {
    /// The identity a session carries: the one role it assumed.
    pub fn into_identity(self) -> Identity {
        Identity {
            issuer: self.issuer,
            subject: self.subject,
            claims: self.claims,
            method: AuthMethod::Session {
                role: self.role,
                access_key_id: self.access_key_id,
            },
            token_id: self.token_id,
        }
    }
}

/// Why a session token was refused. Deliberately coarse: a caller learns nothing about the
/// keyring from the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a claimgate session token.
    #[error("the session token is not one claimgate issued")]
    NotOurs,
    /// Sealed with a key this replica does not hold (rotated out, or another deployment).
    #[error("the session token was sealed with a key this proxy does not hold")]
    UnknownKey,
    /// Tampered with, or truncated.
    #[error("the session token is corrupt or was modified")]
    Corrupt,
}

struct RingKey {
    id: [u8; 4],
    key: LessSafeKey,
}

/// The sealing keys, newest first.
pub struct Keyring {
    keys: Vec<RingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    /// Builds the ring from base64-encoded 32-byte keys.
    pub fn new(secrets: &[Secret]) -> Result<Keyring, String> {
        if secrets.is_empty() {
            return Err("no sealing keys".into());
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let raw = STANDARD
                    .decode(s.expose().trim())
                    .map(Zeroizing::new)
                    .map_err(|_| format!("sealing key #{} is not base64", i + 1))?;
                if raw.len() != 32 {
                    return Err(format!(
                        "sealing key #{} is {} bytes; it must be 32 random bytes, base64 (`head -c 32 /dev/urandom | base64`)",
                        i + 1,
                        raw.len()
                    ));
                }
                let d = digest::digest(&digest::SHA256, &raw);
                let mut id = [0u8; 4];
                id.copy_from_slice(&d.as_ref()[..4]);
                let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| "bad sealing key".to_string())?;
                Ok(RingKey {
                    id,
                    key: LessSafeKey::new(key),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Keyring { keys })
    }

    /// Seals a session with the newest key.
    pub fn seal(&self, session: &Session) -> Result<Secret, String> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness".to_string())?;
        let mut data = Zeroizing::new(serde_json::to_vec(session).map_err(|e| e.to_string())?);
        key.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(&key.id), &mut *data)
            .map_err(|_| "sealing failed".to_string())?;
        let mut blob = Vec::with_capacity(4 + NONCE_LEN + data.len());
        blob.extend_from_slice(&key.id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&data);
        Ok(Secret::new(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(blob))))
    }

    /// Opens a session token sealed by any key of the ring.
    pub fn unseal(&self, token: &str) -> Result<Session, SealError> {
        let body = token.strip_prefix(PREFIX).ok_or(SealError::NotOurs)?;
        // The plaintext (the session's secret among it) is wiped once read.
        let mut blob = Zeroizing::new(URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::NotOurs)?);
        if blob.len() < 4 + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Corrupt);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == blob[..4])
            .ok_or(SealError::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[4..4 + NONCE_LEN]);
        let sealed = &mut blob[4 + NONCE_LEN..];
        let plain = key
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), aad(&key.id), sealed)
            .map_err(|_| SealError::Corrupt)?;
        serde_json::from_slice(plain).map_err(|_| SealError::Corrupt)
    }
}

fn aad(id: &[u8; 4]) -> Aad<[u8; 24]> {
    let mut a = [0u8; 24];
    a[..20].copy_from_slice(AAD);
    a[20..].copy_from_slice(id);
    Aad::from(a)
}

/// A fresh `ASIA…` access key id and a 40-character secret, as AWS shapes them.
pub fn new_credentials() -> Result<(String, Secret), String> {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut raw = Zeroizing::new([0u8; 16 + 30]);
    aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| "no randomness".to_string())?;
    let ak: String = std::iter::once("ASIA".to_string())
        .chain(
            raw[..16]
                .iter()
                .map(|b| (B32[(*b & 31) as usize] as char).to_string()),
        )
        .collect();
    let sk = Secret::new(STANDARD.encode(&raw[16..]));
    Ok((ak, sk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Secret {
        Secret::new(STANDARD.encode([b; 32]))
    }

    fn session() -> Session {
        let (ak, sk) = new_credentials().unwrap();
        Session {
            access_key_id: ak,
            secret_access_key: sk,
            issuer: "https://idp".into(),
            subject: "alice".into(),
            token_id: "jti-1".into(),
            role: "trainer".into(),
            session_name: "job-1".into(),
            claims: serde_json::json!({"groups": ["ml"]}).as_object().unwrap().clone(),
            issued_at: 1000,
            expires_at: 4600,
        }
    }

    #[test]
    fn seal_round_trips_and_old_keys_still_unseal() {
        let old = Keyring::new(&[key(1)]).unwrap();
        let rotated = Keyring::new(&[key(2), key(1)]).unwrap();
        let s = session();
        let token = old.seal(&s).unwrap().expose().to_string();
        assert!(token.starts_with("CGS1."));
        assert_eq!(rotated.unseal(&token).unwrap(), s);
        let new_token = rotated.seal(&s).unwrap().expose().to_string();
        assert_eq!(old.unseal(&new_token), Err(SealError::UnknownKey));
        assert!(!token.contains(s.secret_access_key.expose()));
    }

    #[test]
    fn any_modification_is_refused() {
        let ring = Keyring::new(&[key(1)]).unwrap();
        let token = ring.seal(&session()).unwrap().expose().to_string();
        let bytes = token.as_bytes();
        for i in PREFIX.len()..bytes.len() {
            let mut t = bytes.to_vec();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(t).unwrap();
            assert!(ring.unseal(&t).is_err(), "byte {i}");
        }
        assert_eq!(ring.unseal("FwoGZXIvYXdzE..."), Err(SealError::NotOurs));
        assert_eq!(ring.unseal("CGS1.AAAA"), Err(SealError::Corrupt));
    }

    #[test]
    fn credentials_look_like_aws_ones() {
        let (ak, sk) = new_credentials().unwrap();
        assert_eq!(ak.len(), 20);
        assert!(ak.starts_with("ASIA"));
        assert_eq!(sk.expose().len(), 40);
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(
            Keyring::new(&[Secret::new("short")])
                .unwrap_err()
                .contains("base64")
        );
        let e = Keyring::new(&[Secret::new(STANDARD.encode([1u8; 16]))]).unwrap_err();
        assert!(e.contains("16 bytes"), "{e}");
    }
}
