//! Where requests go and how they get there: routes, re-signing (headers, and the POST
//! policy of browser form uploads), the pooled client, and the binding of multipart upload
//! ids to their keys. (The pooled client itself is [`crate::net`]'s.)

pub mod credentials;
pub mod forward;
pub mod oauth;
pub mod post_sign;
pub mod s3_signer;
pub mod sign;
pub mod upload_id;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;

use http::{HeaderName, HeaderValue};

use crate::body::Paced;
use crate::config::{HttpCredentials, Limits, RouteApi, RouteConfig};
use crate::net;
use crate::upstream::credentials::{Caller, CredentialsError, KeySource, SigningKeys};
use crate::upstream::oauth::{Grant, TokenSource};
use crate::upstream::upload_id::UploadIdBinding;

/// A route with its connection pool.
pub struct Route {
    /// The validated route config.
    pub config: RouteConfig,
    /// Pooled clients to the upstream, one per connection worker: a request reuses
    /// connections that live on its own thread (see [`crate::workers`]).
    clients: Box<[Client<net::Connector, Paced>]>,
    /// The upstream's path, without a trailing `/` (empty for the root).
    pub base_path: String,
    /// `Host` to send upstream.
    pub authority: http::uri::Authority,
    /// How long the upstream may take to answer, and to send each part of its answer.
    pub timeouts: Timeouts,
    /// S3 routes: signs requests with the keys of [`Route::downstream`].
    pub s3_signer: Option<s3_signer::S3Signer>,
    /// The connect timeout the token endpoint client was made with.
    auth_timeout: Duration,
    /// How claimgate proves itself to the upstream; shared with the route of the next config
    /// set while its credentials are unchanged, so a reload keeps sessions and tokens.
    auth: Arc<RouteAuth>,
    /// S3 routes: the key that binds multipart upload ids to their bucket and key, derived
    /// from the route's secret (see [`upload_id`]). `None` on HTTP routes.
    pub upload_ids: Option<UploadIdBinding>,
}

/// The upstream's deadlines (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The response head is due this long after the request went out whole.
    pub response: Duration,
    /// The response body may stall this long between bytes.
    pub body_idle: Duration,
    /// The caller's request body may stall this long between bytes.
    pub client_body_idle: Duration,
}

impl Route {
    /// The pool of the worker running this request (the first one off the workers).
    pub fn client(&self) -> &Client<net::Connector, Paced> {
        let n = crate::workers::current().unwrap_or(0);
        &self.clients[n % self.clients.len()]
    }

    /// Builds the route's clients, one pool for each of `workers` connection workers.
    /// `previous` is the route of the same name in the config set being replaced: its
    /// sessions and tokens are kept when the credentials config is unchanged.
    pub fn new(
        config: RouteConfig,
        limits: &Limits,
        workers: usize,
        previous: Option<&Route>,
    ) -> Result<Route, String> {
        let connector = net::connector(config.ca_file.as_deref(), limits.upstream_connect_timeout)?;
        let base_path = config.upstream.path().trim_end_matches('/').to_string();
        let host = config.upstream.host_str().unwrap_or_default();
        let authority = match config.upstream.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority = authority
            .parse()
            .map_err(|e| format!("route {}: bad upstream authority: {e}", config.name))?;
        // S3 routes bind multipart upload ids with a key derived from the route's secret (or
        // its `upload_id_key`).
        let upload_ids = config
            .s3()
            .map(|s3| UploadIdBinding::from_secret(s3.upload_id_key.expose().as_bytes()));
        let s3_signer = config
            .s3()
            .map(|s3| s3_signer::S3Signer::new(&s3.region, &s3.service));
        let auth = match previous {
            Some(p)
                if same_credentials(&p.config, &config)
                    && p.auth_timeout == limits.upstream_connect_timeout =>
            {
                p.auth.clone()
            }
            _ => {
                Arc::new(RouteAuth::new(&config, limits).map_err(|e| format!("route {}: {e}", config.name))?)
            }
        };
        Ok(Route {
            s3_signer,
            auth,
            auth_timeout: limits.upstream_connect_timeout,
            clients: (0..workers.max(1))
                .map(|_| net::client(connector.clone()))
                .collect(),
            timeouts: Timeouts {
                response: limits.upstream_response_timeout,
                body_idle: limits.upstream_body_idle_timeout,
                client_body_idle: limits.client_body_idle_timeout,
            },
            upload_ids,
            base_path,
            authority,
            config,
        })
    }
}

/// Whether two configs of a route build the same credential source.
fn same_credentials(a: &RouteConfig, b: &RouteConfig) -> bool {
    match (&a.api, &b.api) {
        (RouteApi::S3(x), RouteApi::S3(y)) => x.credentials == y.credentials && x.region == y.region,
        (RouteApi::Http(x), RouteApi::Http(y)) => x.credentials == y.credentials,
        _ => false,
    }
}

/// What a request carries to the upstream to prove claimgate's (or the caller's) right.
pub enum Downstream {
    /// Keys to sign an S3 request with.
    S3(Arc<SigningKeys>),
    /// A header to add (`Authorization: Bearer …`, or an API key).
    Header(HeaderName, HeaderValue),
}

/// A route's credentials, ready to hand out per request.
enum RouteAuth {
    /// S3 routes.
    Keys(KeySource),
    /// A header that never changes (`bearer`, `api_key`).
    Fixed(HeaderName, HeaderValue),
    /// A token from the route's token endpoint.
    Token(Box<TokenSource>),
}

impl RouteAuth {
    fn new(config: &RouteConfig, limits: &Limits) -> Result<RouteAuth, String> {
        let sensitive = |mut v: HeaderValue| {
            v.set_sensitive(true);
            v
        };
        Ok(match &config.api {
            RouteApi::S3(s3) => RouteAuth::Keys(KeySource::new(&s3.credentials, &s3.region)?),
            RouteApi::Http(http) => match &http.credentials {
                HttpCredentials::Bearer { token } => {
                    let value =
                        HeaderValue::from_str(&zeroize::Zeroizing::new(format!("Bearer {}", token.expose())))
                            .map_err(|_| "the route token is not a valid header value".to_string())?;
                    RouteAuth::Fixed(http::header::AUTHORIZATION, sensitive(value))
                }
                HttpCredentials::ApiKey { header, key } => {
                    let value = HeaderValue::from_str(key.expose())
                        .map_err(|_| "the route key is not a valid header value".to_string())?;
                    RouteAuth::Fixed(header.clone(), sensitive(value))
                }
                HttpCredentials::OAuth2ClientCredentials(c) => RouteAuth::Token(Box::new(TokenSource::new(
                    c,
                    Grant::ClientCredentials,
                    limits.upstream_connect_timeout,
                )?)),
                HttpCredentials::TokenExchange(c) => RouteAuth::Token(Box::new(TokenSource::new(
                    c,
                    Grant::TokenExchange,
                    limits.upstream_connect_timeout,
                )?)),
            },
        })
    }
}

impl Route {
    /// What `caller`'s request carries upstream. `caller_token` is the caller's own bearer
    /// token, for a token exchange.
    pub async fn downstream(
        &self,
        caller: &Caller<'_>,
        caller_token: Option<&str>,
    ) -> Result<Downstream, CredentialsError> {
        match &*self.auth {
            RouteAuth::Keys(source) => source.keys(caller).await.map(Downstream::S3),
            RouteAuth::Fixed(name, value) => Ok(Downstream::Header(name.clone(), value.clone())),
            RouteAuth::Token(source) => {
                // only tokens need the caller's expiry (an exchange never outlives it)
                let caller_expiry = (caller.identity.claims.get("exp"))
                    .and_then(serde_json::Value::as_u64)
                    .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
                source
                    .authorization(caller_token, caller_expiry)
                    .await
                    .map(|v| Downstream::Header(http::header::AUTHORIZATION, v))
            }
        }
    }
}

/// Picks the route for a request: HTTP routes by host, then by path prefix (longest
/// first); everything else goes to the S3 route, if there is one.
pub struct Router {
    http: Vec<Arc<Route>>,
    s3: Option<Arc<Route>>,
}

impl Router {
    /// Builds every route, with an upstream pool for each of `workers` connection workers.
    /// `previous` is the router being replaced, whose credential sources are kept where
    /// a route's credentials are unchanged.
    pub fn new(
        routes: &[RouteConfig],
        limits: &Limits,
        workers: usize,
        previous: Option<&Router>,
    ) -> Result<Router, String> {
        let mut http = Vec::new();
        let mut s3 = None;
        for r in routes {
            let before = previous.and_then(|p| p.http.iter().chain(&p.s3).find(|x| x.config.name == r.name));
            let route = Arc::new(Route::new(r.clone(), limits, workers, before.map(Arc::as_ref))?);
            match r.api {
                RouteApi::S3(_) => s3 = Some(route),
                RouteApi::Http(_) => http.push(route),
            }
        }
        // Host routes first, then longer prefixes before shorter ones.
        http.sort_by_key(|r| {
            (
                r.config.http().and_then(|h| h.host.as_ref()).is_none(),
                std::cmp::Reverse(
                    r.config
                        .http()
                        .and_then(|h| h.path_prefix.as_ref())
                        .map_or(0, String::len),
                ),
            )
        });
        Ok(Router { http, s3 })
    }

    /// How many upstream pools each route keeps (one per connection worker).
    pub fn pools(&self) -> usize {
        self.http
            .iter()
            .chain(&self.s3)
            .map(|r| r.clients.len())
            .next()
            .unwrap_or(1)
    }

    /// The route serving `host` (without port, as [`RequestTarget`] reads it) + `path`.
    ///
    /// [`RequestTarget`]: crate::classify::RequestTarget
    pub fn select(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.http
            .iter()
            .find(|r| {
                let Some(config) = r.config.http() else {
                    return false;
                };
                let host_ok = match (&config.host, host) {
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let prefix_ok = config.path_prefix.as_deref().is_none_or(|p| path.starts_with(p));
                host_ok && prefix_ok
            })
            .or(self.s3.as_ref())
    }
}
