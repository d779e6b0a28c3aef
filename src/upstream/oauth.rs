//! Service tokens for HTTP routes, from the route's OAuth 2.0 token endpoint.
//!
//! `oauth2_client_credentials` (RFC 6749 §4.4): claimgate's own token, one for the route,
//! refreshed before it expires. `token_exchange` (RFC 8693): the caller's token traded for
//! one meant for the upstream, so the feature store sees the caller and not claimgate —
//! one per caller token, kept no longer than either token lives.
//!
//! Both are cached, and a cache load is single-flight: a burst of requests makes one call to
//! the token endpoint. The client authenticates with HTTP Basic (RFC 6749 §2.3.1, each part
//! form-encoded first), which every IdP takes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use serde::Deserialize;

use super::credentials::{CredentialsError, Failures};
use crate::config::OAuthClient;
use crate::net;
use crate::secret::Secret;

/// RFC 8693's grant type.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the caller's token, and the one asked for, are access tokens.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The largest token endpoint answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// How long a call to the token endpoint may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Tokens leave the cache this long before they expire (or half-way through a shorter life).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// A token whose answer names no lifetime is used this long.
const UNDATED_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Exchanged tokens held at once.
const MAX_EXCHANGED: u64 = 10_000;

/// A route's token endpoint client and its cache.
pub struct TokenSource {
    config: OAuthClient,
    grant: Grant,
    client: Client<net::Connector, Full<Bytes>>,
    /// Keyed by the SHA-256 of the caller's token (exchange), or by nothing (client
    /// credentials: the key is always the empty array).
    cache: moka::future::Cache<[u8; 32], Arc<Token>>,
    failures: Failures<[u8; 32]>,
}

/// Which grant a [`TokenSource`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// `client_credentials`.
    ClientCredentials,
    /// RFC 8693 token exchange.
    TokenExchange,
}

/// A token and how long it may be used.
pub struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// How long it is handed out.
    pub keep: Duration,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    /// A number, or (as some IdPs send it) a string of digits.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    match Option::<Seconds>::deserialize(d)? {
        None => Ok(None),
        Some(Seconds::Number(n)) => Ok(Some(n)),
        Some(Seconds::Text(t)) => t.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

impl TokenSource {
    /// A client of `config`'s token endpoint.
    pub fn new(config: &OAuthClient, grant: Grant, connect_timeout: Duration) -> Result<TokenSource, String> {
        let connector = net::connector(config.ca_file.as_deref(), connect_timeout)?;
        let capacity = match grant {
            Grant::ClientCredentials => 1,
            Grant::TokenExchange => MAX_EXCHANGED,
        };
        Ok(TokenSource {
            config: config.clone(),
            grant,
            client: net::client(connector),
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .expire_after(AsLongAsValid)
                .build(),
            failures: Failures::new(capacity),
        })
    }

    /// The `Authorization` value for the upstream. `caller_token` is the caller's bearer
    /// token and `caller_expiry` its `exp` (an exchange needs the one, and its result is
    /// kept no longer than the other).
    pub async fn authorization(
        &self,
        caller_token: Option<&str>,
        caller_expiry: Option<SystemTime>,
    ) -> Result<HeaderValue, CredentialsError> {
        let key = match self.grant {
            Grant::ClientCredentials => [0; 32],
            Grant::TokenExchange => {
                let token = caller_token.ok_or(CredentialsError::NoCallerToken)?;
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
                digest.as_ref().try_into().unwrap_or([0; 32])
            }
        };
        if let Some(e) = self.failures.get(&key) {
            return Err(e);
        }
        let token = self
            .cache
            .try_get_with(key, self.fetch(caller_token, caller_expiry))
            .await
            .map_err(|e: Arc<CredentialsError>| self.failures.remember(key, &e))?;
        Ok(token.header.clone())
    }

    /// The form of the token request (the caller's token in it, for an exchange).
    fn request_body(&self, caller_token: Option<&str>) -> zeroize::Zeroizing<String> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        match self.grant {
            Grant::ClientCredentials => {
                form.append_pair("grant_type", "client_credentials");
            }
            Grant::TokenExchange => {
                form.append_pair("grant_type", TOKEN_EXCHANGE)
                    .append_pair("subject_token", caller_token.unwrap_or_default())
                    .append_pair("subject_token_type", ACCESS_TOKEN_TYPE)
                    .append_pair("requested_token_type", ACCESS_TOKEN_TYPE);
            }
        }
        if !self.config.scopes.is_empty() {
            form.append_pair("scope", &self.config.scopes.join(" "));
        }
        if let Some(a) = &self.config.audience {
            form.append_pair("audience", a);
        }
        if let Some(r) = &self.config.resource {
            form.append_pair("resource", r);
        }
        zeroize::Zeroizing::new(form.finish())
    }

    async fn fetch(
        &self,
        caller_token: Option<&str>,
        caller_expiry: Option<SystemTime>,
    ) -> Result<Arc<Token>, CredentialsError> {
        let failed = |reason: String| CredentialsError::Token {
            token_url: self.config.token_url.to_string(),
            reason,
        };
        let body = self.request_body(caller_token);
        let basic = zeroize::Zeroizing::new(format!(
            "{}:{}",
            form_encode(&self.config.client_id),
            form_encode(self.config.client_secret.expose())
        ));
        let mut authorization = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
        ))
        .map_err(|_| failed("the client credentials do not fit a header".into()))?;
        authorization.set_sensitive(true);
        let uri: http::Uri = self
            .config
            .token_url
            .as_str()
            .parse()
            .map_err(|e| failed(format!("bad token_url: {e}")))?;
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
            .map_err(|e| failed(e.to_string()))?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| failed(net::error_chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| failed(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CredentialsError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| failed(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
        let mut token = read_answer(status, &body).map_err(failed)?;
        if self.grant == Grant::TokenExchange
            && let Some(exp) = caller_expiry
        {
            // the exchanged token stands for the caller's: never past it
            let left = exp.duration_since(SystemTime::now()).unwrap_or_default();
            token.keep = token.keep.min(left);
        }
        Ok(Arc::new(token))
    }
}

/// The token of a successful answer, or the endpoint's `error` and `error_description`.
/// Never echoes a token.
pub fn read_answer(status: http::StatusCode, body: &[u8]) -> Result<Token, String> {
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(e) => format!(
                "{} {}{}",
                status.as_u16(),
                e.error,
                e.error_description.map(|d| format!(": {d}")).unwrap_or_default()
            ),
            Err(_) => format!("{} without an OAuth error", status.as_u16()),
        });
    }
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not a token response: {e}"))?;
    if let Some(t) = &answer.token_type
        && !t.eq_ignore_ascii_case("bearer")
        && !t.eq_ignore_ascii_case("N_A")
    {
        return Err(format!("token_type {t:?} is not Bearer"));
    }
    let secret = Secret::new(answer.access_token);
    if secret.expose().is_empty() {
        return Err("the access_token is empty".into());
    }
    let mut header = HeaderValue::from_str(&zeroize::Zeroizing::new(format!("Bearer {}", secret.expose())))
        .map_err(|_| "the access_token does not fit a header".to_string())?;
    header.set_sensitive(true);
    let keep = match answer.expires_in {
        None => UNDATED_LIFETIME,
        Some(s) => {
            let life = Duration::from_secs(s);
            life.saturating_sub(REFRESH_MARGIN.min(life / 2))
        }
    };
    Ok(Token { header, keep })
}

/// `application/x-www-form-urlencoded` of one value, as RFC 6749 §2.3.1 asks of Basic's
/// parts.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct AsLongAsValid;

impl moka::Expiry<[u8; 32], Arc<Token>> for AsLongAsValid {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Token>,
        _created: Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn reads_a_token_and_keeps_it_short_of_its_expiry() {
        let t = read_answer(
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"Bearer","expires_in":600}"#,
        )
        .unwrap();
        assert_eq!(t.header.to_str().unwrap(), "Bearer abc");
        assert!(t.header.is_sensitive());
        assert_eq!(t.keep, Duration::from_secs(540));
        let short = read_answer(
            StatusCode::OK,
            br#"{"access_token":"abc","token_type":"bearer","expires_in":30}"#,
        )
        .unwrap();
        assert_eq!(short.keep, Duration::from_secs(15));
        let text = read_answer(StatusCode::OK, br#"{"access_token":"abc","expires_in":"600"}"#).unwrap();
        assert_eq!(text.keep, Duration::from_secs(540));
        let undated = read_answer(StatusCode::OK, br#"{"access_token":"abc"}"#).unwrap();
        assert_eq!(undated.keep, UNDATED_LIFETIME);
    }

    #[test]
    fn refusals_name_the_oauth_error_and_never_a_token() {
        let e = read_answer(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_grant","error_description":"subject token expired"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(e, "400 invalid_grant: subject token expired");
        let e = read_answer(StatusCode::BAD_GATEWAY, b"<html>").err().unwrap();
        assert_eq!(e, "502 without an OAuth error");
        let e = read_answer(StatusCode::OK, br#"{"access_token":"s3cret","token_type":"mac"}"#)
            .err()
            .unwrap();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(read_answer(StatusCode::OK, br#"{"access_token":""}"#).is_err());
        assert!(read_answer(StatusCode::OK, b"{}").is_err());
    }

    #[test]
    fn basic_parts_are_form_encoded() {
        assert_eq!(form_encode("a b:c+/"), "a+b%3Ac%2B%2F");
    }
}
