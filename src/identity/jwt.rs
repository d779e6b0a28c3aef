//! JWT validation: header checks, signature against the issuer's keys, then the registered
//! claims against our own clock, so each refusal can say precisely what was wrong.
//!
//! jsonwebtoken verifies the signature; the claim checks are ours because its errors do
//! not carry what a user needs (by how much a clock is off, which audience was expected).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AuthError;
use super::jwks::KeySet;
use crate::identity::IssuerConfig;

/// The parts of a JOSE header we look at before trusting anything.
#[derive(Debug, Deserialize)]
pub struct RawHeader {
    /// Algorithm name, as sent.
    pub alg: String,
    /// Key id.
    pub kid: Option<String>,
    /// Token type.
    pub typ: Option<String>,
    /// Critical extensions: we implement none, so any listed one is refused (RFC 7515 §4.1.11).
    pub crit: Option<Vec<String>>,
}

/// A token split and decoded, signature not yet checked.
pub struct Unverified {
    /// The JOSE header.
    pub header: RawHeader,
    /// The algorithm, once allowed.
    pub claims: Map<String, Value>,
}

/// Splits and decodes a compact JWS without trusting it. Refuses anything that is not
/// exactly three base64url parts with JSON objects in the first two.
pub fn parse_unverified(token: &str) -> Result<Unverified, AuthError> {
    let malformed = |reason: &str| AuthError::Malformed {
        reason: reason.to_string(),
    };
    let mut parts = token.split('.');
    // An empty signature is left to the algorithm check (`none`) and then the signature
    // check, so the caller learns the real reason.
    let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes)
        .map_err(|_| malformed("the header is not a JOSE header object"))?;
    // A JWE's content encryption (RFC 7516 §4.1.2): a signed token never has one, whatever
    // its value (even `null`), so a token naming it is not the JWS we verify.
    if header.contains_key("enc") {
        return Err(malformed(
            "the header has `enc`: the token claims to be encrypted (JWE); claimgate accepts only signed JWTs (JWS)",
        ));
    }
    let header: RawHeader = serde_json::from_value(Value::Object(header))
        .map_err(|_| malformed("the header is not a JOSE header object"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| malformed("the payload is not base64url"))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| malformed("the payload is not a JSON object"))?;
    if let Some(crit) = &header.crit
        && !crit.is_empty()
    {
        return Err(malformed(
            "the header lists critical extensions claimgate does not implement",
        ));
    }
    if let Some(typ) = &header.typ {
        let t = typ.to_ascii_lowercase();
        if !matches!(
            t.as_str(),
            "jwt" | "at+jwt" | "application/at+jwt" | "application/jwt"
        ) {
            return Err(AuthError::Malformed {
                reason: format!("token type {typ:?} is not an access or ID token"),
            });
        }
    }
    Ok(Unverified { header, claims })
}

/// Maps the header's `alg` to an algorithm this issuer accepts.
pub fn allowed_algorithm(name: &str, issuer: &IssuerConfig) -> Result<Algorithm, AuthError> {
    let disallowed = || AuthError::DisallowedAlgorithm {
        alg: name.to_string(),
    };
    let alg: Algorithm = name.parse().map_err(|_| disallowed())?;
    if issuer.algorithms.contains(&alg) {
        Ok(alg)
    } else {
        Err(disallowed())
    }
}

/// Outcome of trying the key set.
pub enum SignatureCheck {
    /// A key verified the signature.
    Valid,
    /// No key with the token's `kid` (or, without a `kid`, no key of its family).
    NoKey,
    /// Keys existed and none verified it.
    Invalid,
}

/// Verifies the signature with the candidate keys. Claims are checked separately.
pub fn verify_signature(token: &str, alg: Algorithm, kid: Option<&str>, keys: &KeySet) -> SignatureCheck {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let mut tried = false;
    for key in keys.candidates(kid, alg) {
        tried = true;
        if jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key.key, &validation).is_ok() {
            return SignatureCheck::Valid;
        }
    }
    if tried {
        SignatureCheck::Invalid
    } else {
        SignatureCheck::NoKey
    }
}

/// Checks `aud`, `exp`, `nbf`, `iat` at `now` with the issuer's leeway. Returns `exp`.
pub fn check_claims(claims: &Map<String, Value>, issuer: &IssuerConfig, now: i64) -> Result<i64, AuthError> {
    let leeway = issuer.leeway.as_secs() as i64;
    let exp = numeric(claims, "exp")?.ok_or_else(|| AuthError::Malformed {
        reason: "the token has no `exp` claim".into(),
    })?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthError::Expired {
            ago: now.saturating_sub(exp),
        });
    }
    for claim in ["nbf", "iat"] {
        if let Some(t) = numeric(claims, claim)?
            && t > now.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid { claim, skew: t - now });
        }
    }
    check_audience(claims, issuer)?;
    Ok(exp)
}

fn check_audience(claims: &Map<String, Value>, issuer: &IssuerConfig) -> Result<(), AuthError> {
    let got: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        None => Vec::new(),
        Some(_) => {
            return Err(AuthError::Malformed {
                reason: "`aud` is neither a string nor an array of strings".into(),
            });
        }
    };
    if got.iter().any(|a| issuer.audiences.iter().any(|want| want == a)) {
        Ok(())
    } else {
        Err(AuthError::WrongAudience {
            got: got.iter().map(|s| s.to_string()).collect(),
            expected: issuer.audiences.clone(),
        })
    }
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| AuthError::Malformed {
                reason: format!("`{name}` is not a number"),
            }),
        Some(_) => Err(AuthError::Malformed {
            reason: format!("`{name}` is not a NumericDate"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn issuer() -> IssuerConfig {
        IssuerConfig {
            issuer: "https://idp".into(),
            audiences: vec!["claimgate".into()],
            jwks_uri: None,
            algorithms: crate::identity::DEFAULT_ALGORITHMS.to_vec(),
            leeway: Duration::from_secs(60),
            ca_file: None,
            refresh: Duration::from_secs(300),
            min_refetch: Duration::from_secs(10),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn expiry_and_skew_are_measured() {
        let i = issuer();
        let c = claims(serde_json::json!({"aud": "claimgate", "exp": 1000}));
        assert_eq!(check_claims(&c, &i, 1060).unwrap(), 1000);
        assert!(matches!(
            check_claims(&c, &i, 1061),
            Err(AuthError::Expired { ago: 61 })
        ));
        let c = claims(serde_json::json!({"aud": ["x", "claimgate"], "exp": 5000, "nbf": 1095}));
        assert!(matches!(
            check_claims(&c, &i, 1000),
            Err(AuthError::NotYetValid {
                claim: "nbf",
                skew: 95
            })
        ));
        assert!(check_claims(&c, &i, 1035).is_ok());
    }

    #[test]
    fn audience_must_match_one() {
        let i = issuer();
        let c = claims(serde_json::json!({"aud": ["a", "b"], "exp": 5000}));
        assert!(matches!(
            check_claims(&c, &i, 1),
            Err(AuthError::WrongAudience { .. })
        ));
        let c = claims(serde_json::json!({"exp": 5000}));
        assert!(matches!(
            check_claims(&c, &i, 1),
            Err(AuthError::WrongAudience { .. })
        ));
    }

    #[test]
    fn exp_is_required() {
        let c = claims(serde_json::json!({"aud": "claimgate"}));
        assert!(matches!(
            check_claims(&c, &issuer(), 1),
            Err(AuthError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_shapes_are_refused() {
        for t in ["", "a.b", "a.b.c.d", "!!.e30.sig", "e30.!!.sig"] {
            assert!(parse_unverified(t).is_err(), "{t}");
        }
        // {"alg":"RS256","typ":"logout+jwt"}
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"logout+jwt"}"#);
        let p = URL_SAFE_NO_PAD.encode(b"{}");
        assert!(parse_unverified(&format!("{h}.{p}.sig")).is_err());
    }

    #[test]
    fn tokens_claiming_to_be_jwe_are_refused() {
        let p = URL_SAFE_NO_PAD.encode(b"{}");
        for header in [
            r#"{"alg":"RS256","enc":"A256GCM"}"#,
            r#"{"alg":"RS256","enc":null}"#,
            r#"{"alg":"dir","enc":"A128CBC-HS256","typ":"JWT"}"#,
        ] {
            let h = URL_SAFE_NO_PAD.encode(header.as_bytes());
            let Err(AuthError::Malformed { reason }) = parse_unverified(&format!("{h}.{p}.sig")) else {
                panic!("{header} was accepted");
            };
            assert!(reason.contains("JWE"), "{reason}");
        }
    }

    #[test]
    fn none_and_hmac_are_never_allowed() {
        let i = issuer();
        for alg in ["none", "HS256", "HS512", "RS384", "bogus"] {
            assert!(
                matches!(
                    allowed_algorithm(alg, &i),
                    Err(AuthError::DisallowedAlgorithm { .. })
                ),
                "{alg}"
            );
        }
        assert_eq!(allowed_algorithm("ES256", &i).unwrap(), Algorithm::ES256);
    }
}
