//! The dev OIDC issuer: one ES256 key kept in the dev directory, discovery and JWKS served
//! on loopback, and token minting for `claimgate dev token`.
//!
//! Development only: it issues whatever it is asked to, to whoever can read the key file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;

use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// The audience dev tokens carry and the dev proxy accepts.
pub const AUDIENCE: &str = "claimgate";

/// The dev issuer's signing key.
pub struct DevKey {
    key: EncodingKey,
    kid: String,
    jwk: Value,
}

fn key_path(dir: &Path) -> PathBuf {
    dir.join("idp-key.pem")
}

fn issuer_path(dir: &Path) -> PathBuf {
    dir.join("issuer")
}

impl DevKey {
    /// Loads the key from `dir`, generating and saving one (mode 0600) on first use.
    pub fn load_or_create(dir: &Path) -> Result<DevKey, String> {
        let path = key_path(dir);
        if !path.exists() {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| "cannot generate the dev signing key".to_string())?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
            let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(std::str::from_utf8(line).unwrap_or_default());
                pem.push('\n');
            }
            pem.push_str("-----END PRIVATE KEY-----\n");
            write_private(&path, pem.as_bytes())?;
        }
        Self::load(dir)
    }

    /// Loads the key from `dir`.
    pub fn load(dir: &Path) -> Result<DevKey, String> {
        let path = key_path(dir);
        let pem = std::fs::read(&path).map_err(|e| {
            format!(
                "{}: {e} (start `claimgate dev --dir {}` once to create it)",
                path.display(),
                dir.display()
            )
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(|e| e.to_string())?;
        let digest = crate::identity::token_digest(&String::from_utf8_lossy(&pem));
        let kid = format!("dev-{}", hex::encode(&digest[..6]));
        jwk.common.key_id = Some(kid.clone());
        let jwk = serde_json::to_value(jwk).map_err(|e| e.to_string())?;
        Ok(DevKey { key, kid, jwk })
    }

    /// Signs a token for `sub` with `claims` added, valid for `ttl_secs`.
    pub fn mint(
        &self,
        issuer: &str,
        sub: &str,
        extra: &Map<String, Value>,
        ttl_secs: i64,
        now: i64,
    ) -> String {
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(issuer));
        claims.insert("aud".into(), json!(AUDIENCE));
        claims.insert("sub".into(), json!(sub));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + ttl_secs));
        claims.insert(
            "jti".into(),
            json!(format!("dev-{}", crate::pipeline::new_request_id())),
        );
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        // Signing with a key we just loaded cannot fail for a well-formed claim set.
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default()
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(contents)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Remembers where the issuer runs, for `claimgate dev token`.
pub fn save_issuer(dir: &Path, issuer: &str) -> Result<(), String> {
    std::fs::write(issuer_path(dir), issuer).map_err(|e| format!("{}: {e}", issuer_path(dir).display()))
}

/// The issuer URL the last `claimgate dev` in `dir` served.
pub fn saved_issuer(dir: &Path) -> Result<String, String> {
    std::fs::read_to_string(issuer_path(dir))
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!(
                "{}: {e} (is `claimgate dev --dir {}` running?)",
                issuer_path(dir).display(),
                dir.display()
            )
        })
}

/// Serves discovery and JWKS on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, issuer: String, key: Arc<DevKey>) {
    let discovery = Bytes::from(
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
            "id_token_signing_alg_values_supported": ["ES256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
        .to_string(),
    );
    let jwks = Bytes::from(json!({ "keys": [key.jwk] }).to_string());
    crate::server::serve_simple(listener, move |req| {
        let body = match req.uri().path() {
            "/.well-known/openid-configuration" => discovery.clone(),
            "/jwks" => jwks.clone(),
            _ => {
                return http::Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
            }
        };
        http::Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap_or_default()
    })
    .await;
}

/// Parses `--claim k=v` (comma-separated values become an array) and `--claim k:=<json>`.
pub fn parse_claims(args: &[String]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for a in args {
        if let Some((k, v)) = a.split_once(":=") {
            let v: Value = serde_json::from_str(v).map_err(|e| format!("--claim {a}: not JSON: {e}"))?;
            out.insert(k.to_string(), v);
        } else if let Some((k, v)) = a.split_once('=') {
            let v = if v.contains(',') {
                Value::Array(v.split(',').map(|s| json!(s.trim())).collect())
            } else {
                json!(v)
            };
            out.insert(k.to_string(), v);
        } else {
            return Err(format!(
                "--claim {a}: write NAME=VALUE, NAME=A,B for a list, or NAME:=JSON"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_lists_and_json() {
        let c = parse_claims(&[
            "groups=a,b".into(),
            "email=x@y".into(),
            "email_verified:=true".into(),
        ])
        .unwrap();
        assert_eq!(c["groups"], json!(["a", "b"]));
        assert_eq!(c["email"], "x@y");
        assert_eq!(c["email_verified"], true);
        assert!(parse_claims(&["nonsense".into()]).is_err());
    }

    #[test]
    fn a_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevKey::load_or_create(dir.path()).unwrap();
        let b = DevKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.kid, b.kid);
        let t = a.mint("http://127.0.0.1:1", "alice", &Map::new(), 60, 1000);
        let claims = crate::identity::jwt::parse_unverified(&t).unwrap().claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["exp"], 1060);
    }
}
