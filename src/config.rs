//! Configuration in two layers: the serde file format (`Raw*`, unknown keys refused) and the
//! validated [`Config`] the rest of the crate sees.
//!
//! Validation collects every problem with its file and line instead of stopping at the
//! first, so one `claimgate validate` run shows the whole list. Relative paths are read
//! against the config file's directory, so a config works from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use toml::Spanned;

use crate::audit::syslog::SyslogTarget;
use crate::audit::{AuditFormat, AuditSink};
use crate::classify::KeyRule;
use crate::diag::Problem;
use crate::identity::revocation::RevocationList;
use crate::identity::session::Keyring;
pub use crate::identity::sts::StsConfig;
pub use crate::identity::{DEFAULT_ALGORITHMS, IssuerConfig};
use crate::policy::{DenialDetail, Mode, PolicySet};
use crate::secret::{self, Secret};

/// Algorithms accepted when an issuer does not list its own.
// ---------------------------------------------------------------------------------------
// File format
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Spanned<RawServer>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    issuers: Vec<Spanned<RawIssuer>>,
    sts: Option<Spanned<RawSts>>,
    policies: Option<RawPolicies>,
    audit: Option<RawAudit>,
    revocations: Option<RawRevocations>,
    limits: Option<RawLimits>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    tls: Option<RawTls>,
    public_host: Option<String>,
    /// Denial messages name action, resource and roles (default); `false` makes them terse.
    verbose_denials: Option<bool>,
    /// How long in-flight requests may take to finish after SIGTERM.
    shutdown_grace: Option<Spanned<String>>,
    /// Largest body read whole for authorization (DeleteObjects XML, STS form), and the
    /// largest field section of a form upload (PostObject) before its file.
    max_inspected_body: Option<usize>,
    /// Connection worker threads (one single-threaded runtime each); default: one per core.
    workers: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: Spanned<String>,
    #[serde(default)]
    audiences: Vec<String>,
    jwks_uri: Option<Spanned<String>>,
    algorithms: Option<Spanned<Vec<String>>>,
    leeway: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    /// How often keys are refreshed in the background (default 5m).
    refresh: Option<Spanned<String>>,
    /// Least time between two key fetches triggered by unknown `kid`s (default 10s).
    min_refetch: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSts {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    sealing_keys: Vec<Spanned<String>>,
    default_session: Option<Spanned<String>>,
    max_session: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicies {
    dir: Option<String>,
    /// `"enforce"` (default) or `"shadow"`: the whole proxy audits decisions without
    /// enforcing them.
    mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<String>,
    format: Option<Spanned<String>>,
    /// A best-effort copy of every record to a syslog relay.
    syslog: Option<Spanned<RawSyslog>>,
    /// `"refuse"` (default) or `"serve"`: what data access does while the sink fails.
    on_failure: Option<Spanned<String>>,
}

/// `[audit] syslog = { address = "udp://relay:514", app_name = "claimgate", facility = "authpriv" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSyslog {
    address: String,
    app_name: Option<String>,
    facility: Option<String>,
}

/// `[limits]`: every bound a hostile or runaway client meets. All optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    request_head_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_requests_per_identity: Option<Spanned<usize>>,
    requests_per_second_per_identity: Option<Spanned<f64>>,
    burst_per_identity: Option<Spanned<f64>>,
    client_body_idle_timeout: Option<Spanned<String>>,
    upstream_connect_timeout: Option<Spanned<String>>,
    upstream_response_timeout: Option<Spanned<String>>,
    upstream_body_idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocations {
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    kind: Spanned<String>,
    upstream: Spanned<String>,
    region: Option<String>,
    /// SigV4 signing service name; default `s3`.
    service: Option<String>,
    buckets: Option<Vec<String>>,
    path_prefix: Option<Spanned<String>>,
    host: Option<String>,
    ca_file: Option<Spanned<String>>,
    /// S3 routes: forward keys with `.`, `..` or empty segments literally (default: refuse).
    literal_dot_keys: Option<Spanned<bool>>,
    /// S3 routes without a long-lived secret: the key that binds multipart upload ids.
    upload_id_key: Option<Spanned<Secret>>,
    credentials: Spanned<toml::Value>,
}

/// A route's credentials, as written: `kind` picks the shape, and serde refuses a field the
/// kind does not have. Read from the route's table in a second pass, so a bad credentials
/// table is one problem among the others, not the end of reading. The references are held
/// as [`Secret`]s: a literal secret is still a secret.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RawCredentials {
    Static {
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    Bearer {
        token: Secret,
    },
    ApiKey {
        header: String,
        token: Secret,
    },
    Aws {
        profile: Option<String>,
    },
    AssumeRole {
        role_arn: String,
        source: Box<RawCredentials>,
        session_duration: Option<String>,
        sts_endpoint: Option<String>,
        external_id: Option<Secret>,
    },
    Oauth2ClientCredentials(RawOAuthClient),
    TokenExchange(RawOAuthClient),
}

/// The fields both OAuth kinds share, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuthClient {
    token_url: String,
    client_id: String,
    client_secret: Secret,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    ca_file: Option<String>,
}

impl RawCredentials {
    /// The `kind` as written.
    fn kind(&self) -> &'static str {
        match self {
            RawCredentials::Static { .. } => "static",
            RawCredentials::Bearer { .. } => "bearer",
            RawCredentials::ApiKey { .. } => "api_key",
            RawCredentials::Aws { .. } => "aws",
            RawCredentials::AssumeRole { .. } => "assume_role",
            RawCredentials::Oauth2ClientCredentials(_) => "oauth2_client_credentials",
            RawCredentials::TokenExchange(_) => "token_exchange",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Validated configuration
// ---------------------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this came from.
    pub path: PathBuf,
    /// The main listener.
    pub server: ServerConfig,
    /// The admin listener (metrics, health); none when not configured.
    pub admin: Option<SocketAddr>,
    /// Trusted token issuers; a token's `iss` picks one.
    pub issuers: Vec<IssuerConfig>,
    /// STS settings, when `[sts]` is present and enabled.
    pub sts: Option<StsConfig>,
    /// Where the policies were loaded from.
    pub policies_dir: PathBuf,
    /// The compiled policies.
    pub policies: Arc<PolicySet>,
    /// Where audit records go, and what happens when they cannot be written.
    pub audit: AuditSettings,
    /// The revocation list, when configured (re-read with the rest on reload).
    pub revocations: Option<Arc<RevocationList>>,
    /// Abuse limits and timeouts.
    pub limits: Limits,
    /// Upstream routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// Every file and directory this config was read from: a change to any of them is a
    /// reason to reload.
    pub sources: Sources,
}

/// The files and directories a config was built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// Files read whole (the config itself, TLS and CA files, secret files, the revocation list).
    pub files: Vec<PathBuf>,
    /// Directories whose entries were read (the policies directory).
    pub dirs: Vec<PathBuf>,
}

impl Sources {
    fn file(&mut self, path: PathBuf) {
        if !self.files.contains(&path) {
            self.files.push(path);
        }
    }

    /// These sources and `other`'s.
    pub fn union(&self, other: &Sources) -> Sources {
        let mut all = self.clone();
        for f in &other.files {
            all.file(f.clone());
        }
        for d in &other.dirs {
            if !all.dirs.contains(d) {
                all.dirs.push(d.clone());
            }
        }
        all
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Where records go.
    pub sink: AuditSink,
    /// claimgate's JSON records, or OCSF events.
    pub format: AuditFormat,
    /// A best-effort copy of every record to syslog (RFC 5424).
    pub syslog: Option<SyslogTarget>,
    /// What data access does while records cannot be written.
    pub on_failure: OnAuditFailure,
}

/// What data access does while the audit sink fails (disk full, file unwritable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAuditFailure {
    /// Refuse it (503): no data moves without a record. The default.
    Refuse,
    /// Serve it; records queue in memory (bounded) until the sink recovers.
    Serve,
}

/// `[limits]`: bounds on what one connection, request or identity may take.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// A request head (or TLS handshake) must arrive within this (slowloris). On HTTP/1.1
    /// the wait for the next request on a kept-alive connection counts too, so this is also
    /// how long an idle HTTP/1.1 connection stays open.
    pub request_head_timeout: Duration,
    /// A connection with no request in flight is closed (gracefully: HTTP/2 GOAWAY) after this.
    pub idle_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in a request head.
    pub max_headers: usize,
    /// Most connections open at once; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Most requests one identity (issuer + subject) may have in flight.
    pub max_requests_per_identity: usize,
    /// Sustained request rate allowed per identity, when set.
    pub rate_per_identity: Option<Rate>,
    /// A caller's request body may stall this long between bytes.
    pub client_body_idle_timeout: Duration,
    /// Connecting to the upstream (TCP and TLS) must finish within this.
    pub upstream_connect_timeout: Duration,
    /// The upstream's response head is due this long after the request was sent whole.
    pub upstream_response_timeout: Duration,
    /// The upstream's response body may stall this long between bytes.
    pub upstream_body_idle_timeout: Duration,
}

/// A token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_head_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_requests_per_identity: 1024,
            rate_per_identity: None,
            client_body_idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_response_timeout: Duration::from_secs(120),
            upstream_body_idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The main listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Certificate and key files; plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// Enables virtual-hosted-style buckets under this host.
    pub public_host: Option<String>,
    /// How much denial messages tell the caller (`verbose_denials`).
    pub denials: DenialDetail,
    /// Bound on draining in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Cap on bodies read whole for authorization, and on a form upload's fields.
    pub max_inspected_body: usize,
    /// Connection worker threads (`workers`; default one per core the process may use).
    pub workers: usize,
}

/// PEM files for the listener's certificate chain and key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The two, parsed into the listener's TLS configuration.
    pub config: Arc<rustls::ServerConfig>,
}

/// What kind of upstream a route fronts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// An S3-compatible object store.
    S3,
    /// An HTTP service such as a feature store.
    Http,
}

/// One upstream route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Unique name; HTTP policies address the route by it.
    pub name: String,
    /// Base URL of the upstream.
    pub upstream: url::Url,
    /// Extra CA for the upstream.
    pub ca_file: Option<PathBuf>,
    /// What the upstream speaks, with the settings only that kind of route has.
    pub api: RouteApi,
}

impl RouteConfig {
    /// S3 or HTTP.
    pub fn kind(&self) -> RouteKind {
        match self.api {
            RouteApi::S3(_) => RouteKind::S3,
            RouteApi::Http(_) => RouteKind::Http,
        }
    }

    /// The S3 settings, on an S3 route.
    pub fn s3(&self) -> Option<&S3Route> {
        match &self.api {
            RouteApi::S3(s3) => Some(s3),
            RouteApi::Http(_) => None,
        }
    }

    /// The HTTP settings, on an HTTP route.
    pub fn http(&self) -> Option<&HttpRoute> {
        match &self.api {
            RouteApi::Http(http) => Some(http),
            RouteApi::S3(_) => None,
        }
    }
}

/// What a route's upstream speaks.
#[derive(Debug, Clone)]
pub enum RouteApi {
    /// An S3-compatible object store, signed with SigV4.
    S3(S3Route),
    /// An HTTP service such as a feature store.
    Http(HttpRoute),
}

/// An S3 route's settings.
#[derive(Debug, Clone)]
pub struct S3Route {
    /// SigV4 region.
    pub region: String,
    /// SigV4 service name (`s3`).
    pub service: String,
    /// Buckets this route serves; all when absent.
    pub buckets: Option<Vec<String>>,
    /// Whether object keys with `.`, `..` or empty segments are refused (the default:
    /// filesystem-backed stores resolve them to other objects) or forwarded literally
    /// (`literal_dot_keys = true`, for stores that keep them literal, like AWS S3).
    pub keys: KeyRule,
    /// Where the keys requests are signed with come from.
    pub credentials: S3Credentials,
    /// The key that binds multipart upload ids to their bucket and key: the static secret,
    /// or `upload_id_key` where there is no long-lived secret.
    pub upload_id_key: Secret,
}

/// Where an S3 route's signing keys come from.
#[derive(Clone, Debug, PartialEq)]
pub enum S3Credentials {
    /// Long-lived keys from the config.
    Static(SigV4Keys),
    /// The AWS SDK's default chain (environment, profile, web identity/IRSA, ECS, EC2 IMDS),
    /// refreshed before expiry.
    Aws {
        /// A profile of the shared config files, instead of `AWS_PROFILE`/`default`.
        profile: Option<String>,
    },
    /// STS AssumeRole with the caller's identity as SourceIdentity and session tags.
    AssumeRole(Box<AssumeRole>),
}

/// `{ kind = "assume_role", … }`.
#[derive(Clone, Debug, PartialEq)]
pub struct AssumeRole {
    /// The role, possibly per claimgate role: `${role}` is replaced by the role that allowed
    /// the request.
    pub role_arn: String,
    /// The credentials that call AssumeRole (`static` or `aws`).
    pub source: S3Credentials,
    /// `DurationSeconds` asked for.
    pub session_duration: Duration,
    /// The STS endpoint; default: the SDK's (regional STS, or `AWS_ENDPOINT_URL_STS`).
    pub sts_endpoint: Option<String>,
    /// `ExternalId`, when the role's trust policy asks for one.
    pub external_id: Option<Secret>,
}

/// An OAuth 2.0 client of the route's IdP (`oauth2_client_credentials`, `token_exchange`).
#[derive(Clone, Debug, PartialEq)]
pub struct OAuthClient {
    /// The token endpoint.
    pub token_url: url::Url,
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (sent with HTTP Basic, RFC 6749 §2.3.1).
    pub client_secret: Secret,
    /// `scope`, space-joined.
    pub scopes: Vec<String>,
    /// `audience`, when the IdP wants one (RFC 8693 §2.1, and Auth0/Okta's extension).
    pub audience: Option<String>,
    /// `resource` (RFC 8707).
    pub resource: Option<String>,
    /// An extra CA for the token endpoint.
    pub ca_file: Option<PathBuf>,
}

/// Long-lived AWS keys a route signs with.
#[derive(Clone, Debug, PartialEq)]
pub struct SigV4Keys {
    /// Access key id.
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Optional session token.
    pub session_token: Option<Secret>,
}

/// An HTTP route's settings.
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// Path prefix selecting the route.
    pub path_prefix: Option<String>,
    /// Host selecting the route.
    pub host: Option<String>,
    /// How claimgate authenticates to the upstream.
    pub credentials: HttpCredentials,
}

/// How claimgate authenticates to an HTTP upstream.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpCredentials {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token.
        token: Secret,
    },
    /// A key in a header of the upstream's choosing.
    ApiKey {
        /// Header name.
        header: http::HeaderName,
        /// Header value.
        key: Secret,
    },
    /// A service token of claimgate's own, from the IdP (client credentials grant), cached
    /// until shortly before it expires.
    OAuth2ClientCredentials(OAuthClient),
    /// The caller's token exchanged at the IdP for one meant for the upstream (RFC 8693):
    /// the upstream sees the caller.
    TokenExchange(OAuthClient),
}

/// Why a config could not be loaded: every problem found, each with file and line.
#[derive(Debug)]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
    /// The files the refused set named (those it read, and those it could not): a reload
    /// that was refused for a missing file is tried again when that file appears.
    pub sources: Sources,
}

impl ConfigError {
    /// A refusal that names no files beyond the config itself.
    pub fn of(problems: Vec<Problem>) -> ConfigError {
        ConfigError {
            problems,
            sources: Sources::default(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems against one source file.
struct Collector<'a> {
    file: &'a Path,
    source: &'a str,
    base: &'a Path,
    problems: Vec<Problem>,
    sources: Sources,
}

impl Collector<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.file, self.source, spanned.span().start, message));
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.at(
                    v,
                    format!(
                        "bad duration {:?}: {e} (write e.g. \"90s\", \"15m\", \"12h\")",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    /// A value written as one of a few names (`kind = "s3"`), read by serde: the problem,
    /// if any, names the choices.
    fn choice<T: serde::de::DeserializeOwned>(&mut self, v: &Spanned<String>, what: &str) -> Option<T> {
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(v.get_ref());
        T::deserialize(de)
            .map_err(|e| self.at(v, format!("{what}: {e}")))
            .ok()
    }

    /// A table read by serde into its typed shape (`credentials = { kind = … }`).
    fn shaped<T: serde::de::DeserializeOwned>(&mut self, v: &Spanned<toml::Value>, what: &str) -> Option<T> {
        v.get_ref()
            .clone()
            .try_into()
            .map_err(|e| self.at(v, format!("{what}: {e}")))
            .ok()
    }

    fn secret<T>(&mut self, reference: &Secret, what: &str, at: &Spanned<T>) -> Option<Secret> {
        self.watch_secret(reference.expose());
        secret::resolve(reference.expose(), self.base)
            .map_err(|e| self.at(at, format!("{what}: {e}")))
            .ok()
    }

    fn addr(&mut self, v: &Spanned<String>) -> Option<SocketAddr> {
        match v.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at(
                    v,
                    format!(
                        "bad listen address {:?} (write e.g. \"0.0.0.0:8443\")",
                        v.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    /// A `file:` secret is a source: rotating it (a Kubernetes Secret) is a reason to reload.
    fn watch_secret(&mut self, reference: &str) {
        if let Some(p) = reference.strip_prefix("file:") {
            let p = self.path(p);
            self.sources.file(p);
        }
    }

    /// A CA file, parsed now: a bad one is a problem `validate` (and a reload) reports, not a
    /// client that fails later.
    fn ca_file(&mut self, v: &Spanned<String>) -> PathBuf {
        let before = self.problems.len();
        let p = self.existing_file(v, "CA file");
        if self.problems.len() == before {
            match crate::net::read_certs(&p) {
                Ok(certs) if certs.is_empty() => {
                    self.at(v, format!("CA file {}: no certificates found", p.display()))
                }
                Ok(_) => {}
                Err(e) => self.at(v, format!("CA file {e}")),
            }
        }
        p
    }

    fn existing_file(&mut self, v: &Spanned<String>, what: &str) -> PathBuf {
        let p = self.path(v.get_ref());
        self.sources.file(p.clone());
        if !p.is_file() {
            self.at(
                v,
                format!("{what} {} does not exist or is not a file", p.display()),
            );
        }
        p
    }
}

fn placeholder_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Config {
    /// Reads and validates a config file and the policies it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::of(vec![Problem::file(path, format!("cannot read config: {e}"))]))?;
        Config::from_source(path, &source)
    }

    /// Validates config text as if read from `path`.
    pub fn from_source(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(source).map_err(|e| {
            let mut problems = vec![Problem::from_toml(path, source, &e)];
            problems.append(&mut policy_problems_despite(path, source));
            ConfigError::of(problems)
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        let mut c = Collector {
            file: path,
            source,
            base: &base,
            problems: Vec::new(),
            sources: Sources::default(),
        };
        c.sources.file(path.to_path_buf());

        let server = compile_server(&mut c, &raw.server);
        let admin = raw.admin.as_ref().and_then(|a| c.addr(&a.listen));
        let issuers = raw
            .issuers
            .iter()
            .map(|i| compile_issuer(&mut c, i))
            .collect::<Vec<_>>();
        check_duplicate_issuers(&mut c, &raw.issuers);
        let sts = raw.sts.as_ref().and_then(|s| compile_sts(&mut c, s));
        let routes = compile_routes(&mut c, &raw.routes);
        if routes.is_empty() && raw.routes.is_empty() {
            c.problems.push(Problem::file(
                path,
                "no [[routes]]: claimgate has nowhere to send requests",
            ));
        }
        let format = (raw.audit.as_ref().and_then(|a| a.format.as_ref()))
            .and_then(|v| c.choice::<AuditFormat>(v, "audit format"))
            .unwrap_or_default();
        let syslog = (raw.audit.as_ref().and_then(|a| a.syslog.as_ref())).and_then(|v| {
            let r = v.get_ref();
            SyslogTarget::parse(&r.address, r.app_name.as_deref(), r.facility.as_deref())
                .map_err(|e| c.at(v, format!("audit {e}")))
                .ok()
        });
        let audit = AuditSettings {
            format,
            syslog,
            sink: match raw.audit.as_ref().and_then(|a| a.path.as_deref()) {
                None | Some("-") => AuditSink::Stdout,
                Some(p) => AuditSink::File(c.path(p)),
            },
            on_failure: (raw.audit.as_ref().and_then(|a| a.on_failure.as_ref()))
                .and_then(|v| c.choice(v, "audit on_failure"))
                .unwrap_or(OnAuditFailure::Refuse),
        };
        let limits = raw
            .limits
            .as_ref()
            .map_or_else(Limits::default, |l| compile_limits(&mut c, l));
        let revocations = raw.revocations.as_ref().and_then(|r| {
            let file = c.path(&r.file);
            c.sources.file(file.clone());
            RevocationList::load(&file)
                .map(Arc::new)
                .map_err(|mut problems| c.problems.append(&mut problems))
                .ok()
        });
        let (policies_dir, policies) = compile_policies(&mut c, raw.policies.as_ref(), &routes);
        match policies {
            Some(policies) if c.problems.is_empty() => Ok(Config {
                path: path.to_path_buf(),
                server,
                admin,
                issuers,
                sts,
                policies_dir,
                policies: Arc::new(policies),
                audit,
                revocations,
                limits,
                routes,
                sources: c.sources,
            }),
            _ => Err(ConfigError {
                problems: c.problems,
                sources: c.sources,
            }),
        }
    }

    /// The route with this name.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.routes.iter().find(|r| r.name == name)
    }
}

/// When the config itself does not deserialize, still check the policies it names (read
/// loosely), so one typo in the config does not hide every policy problem.
fn policy_problems_despite(path: &Path, source: &str) -> Vec<Problem> {
    let Ok(table) = source.parse::<toml::Table>() else {
        return Vec::new();
    };
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = table
        .get("policies")
        .and_then(|p| p.get("dir"))
        .and_then(|d| d.as_str())
        .unwrap_or("policies");
    let http_routes: Vec<String> = table
        .get("routes")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter(|r| r.get("kind").and_then(|k| k.as_str()) == Some("http"))
        .filter_map(|r| r.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect();
    PolicySet::load_dir(&base.join(dir), &http_routes)
        .err()
        .unwrap_or_default()
}

/// The policies directory and the policies in it, checked against the HTTP routes they
/// may name.
fn compile_policies(
    c: &mut Collector<'_>,
    raw: Option<&RawPolicies>,
    routes: &[RouteConfig],
) -> (PathBuf, Option<PolicySet>) {
    let dir = c.path(raw.and_then(|p| p.dir.as_deref()).unwrap_or("policies"));
    c.sources.dirs.push(dir.clone());
    let mode = (raw.and_then(|p| p.mode.as_ref()))
        .and_then(|m| c.choice(m, "policies mode"))
        .unwrap_or(Mode::Enforce);
    let http_routes: Vec<String> = routes
        .iter()
        .filter(|r| r.kind() == RouteKind::Http)
        .map(|r| r.name.clone())
        .collect();
    let policies = PolicySet::load_dir(&dir, &http_routes)
        .map(|p| p.with_global_mode(mode))
        .map_err(|mut problems| c.problems.append(&mut problems))
        .ok();
    (dir, policies)
}

fn compile_server(c: &mut Collector<'_>, raw: &Spanned<RawServer>) -> ServerConfig {
    let s = raw.get_ref();
    let listen = c.addr(&s.listen).unwrap_or_else(placeholder_addr);
    let tls = s.tls.as_ref().and_then(|t| {
        let before = c.problems.len();
        let cert = c.existing_file(&t.cert, "TLS certificate");
        let key = c.existing_file(&t.key, "TLS key");
        if c.problems.len() > before {
            return None;
        }
        // Parsed now, so a bad PEM is a config problem `validate` reports, not a failed start.
        match crate::net::server_tls(&cert, &key) {
            Ok(config) => Some(TlsFiles {
                cert,
                key,
                config: Arc::new(config),
            }),
            Err(e) => {
                c.at(&t.cert, e);
                None
            }
        }
    });
    ServerConfig {
        listen,
        tls,
        public_host: s.public_host.clone().map(|h| h.to_ascii_lowercase()),
        denials: match s.verbose_denials {
            Some(false) => DenialDetail::Terse,
            _ => DenialDetail::Verbose,
        },
        shutdown_grace: c.duration(s.shutdown_grace.as_ref(), Duration::from_secs(30)),
        max_inspected_body: s.max_inspected_body.unwrap_or(1 << 20),
        workers: match &s.workers {
            Some(n) if *n.get_ref() == 0 => {
                c.at(n, "workers = 0 would serve nothing; omit it for one per core");
                crate::workers::default_count()
            }
            Some(n) => *n.get_ref(),
            None => crate::workers::default_count(),
        },
    }
}

fn compile_limits(c: &mut Collector<'_>, l: &RawLimits) -> Limits {
    let d = Limits::default();
    let mut count = |v: &Option<Spanned<usize>>, default: usize, what: &str| match v {
        Some(n) if *n.get_ref() == 0 => {
            c.at(n, format!("{what} = 0 would refuse everything"));
            default
        }
        Some(n) => *n.get_ref(),
        None => default,
    };
    let max_header_bytes = count(&l.max_header_bytes, d.max_header_bytes, "max_header_bytes");
    let max_headers = count(&l.max_headers, d.max_headers, "max_headers");
    let max_connections = count(&l.max_connections, d.max_connections, "max_connections");
    let max_requests_per_identity = count(
        &l.max_requests_per_identity,
        d.max_requests_per_identity,
        "max_requests_per_identity",
    );
    if let Some(n) = &l.max_header_bytes
        && *n.get_ref() < 8192
    {
        c.at(
            n,
            "max_header_bytes below 8192 would refuse ordinary signed requests",
        );
    }
    let rate_per_identity = match &l.requests_per_second_per_identity {
        None => {
            if let Some(b) = &l.burst_per_identity {
                c.at(b, "burst_per_identity needs requests_per_second_per_identity");
            }
            None
        }
        Some(r) if !(r.get_ref().is_finite() && *r.get_ref() > 0.0) => {
            c.at(r, "requests_per_second_per_identity must be a positive number");
            None
        }
        Some(r) => {
            let per_second = *r.get_ref();
            let burst = match &l.burst_per_identity {
                Some(b) if !(b.get_ref().is_finite() && *b.get_ref() >= 1.0) => {
                    c.at(b, "burst_per_identity must be at least 1");
                    1.0
                }
                Some(b) => *b.get_ref(),
                // One second's worth, at least one request.
                None => per_second.max(1.0),
            };
            Some(Rate { per_second, burst })
        }
    };
    let mut time = |v: &Option<Spanned<String>>, default: Duration, what: &str| {
        let t = c.duration(v.as_ref(), default);
        if t.is_zero()
            && let Some(v) = v
        {
            c.at(v, format!("{what} of 0 would cut off every request"));
        }
        t
    };
    Limits {
        request_head_timeout: time(
            &l.request_head_timeout,
            d.request_head_timeout,
            "request_head_timeout",
        ),
        idle_timeout: time(&l.idle_timeout, d.idle_timeout, "idle_timeout"),
        client_body_idle_timeout: time(
            &l.client_body_idle_timeout,
            d.client_body_idle_timeout,
            "client_body_idle_timeout",
        ),
        upstream_connect_timeout: time(
            &l.upstream_connect_timeout,
            d.upstream_connect_timeout,
            "upstream_connect_timeout",
        ),
        upstream_response_timeout: time(
            &l.upstream_response_timeout,
            d.upstream_response_timeout,
            "upstream_response_timeout",
        ),
        upstream_body_idle_timeout: time(
            &l.upstream_body_idle_timeout,
            d.upstream_body_idle_timeout,
            "upstream_body_idle_timeout",
        ),
        max_header_bytes,
        max_headers,
        max_connections,
        max_requests_per_identity,
        rate_per_identity,
    }
}

fn compile_issuer(c: &mut Collector<'_>, raw: &Spanned<RawIssuer>) -> IssuerConfig {
    let i = raw.get_ref();
    check_idp_url(c, &i.issuer, "issuer");
    if let Some(j) = &i.jwks_uri {
        check_idp_url(c, j, "jwks_uri");
    }
    if i.audiences.is_empty() {
        c.at(raw, format!(
            "issuer {:?} has no `audiences`: without them any token the IdP issues for any app would be accepted",
            i.issuer.get_ref()
        ));
    }
    let algorithms = match &i.algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for name in list.get_ref() {
                match parse_algorithm(name) {
                    Ok(a) => out.push(a),
                    Err(msg) => c.at(list, msg),
                }
            }
            if list.get_ref().is_empty() {
                c.at(list, "`algorithms` is empty: no token could ever verify");
            }
            out
        }
    };
    IssuerConfig {
        issuer: i.issuer.get_ref().clone(),
        audiences: i.audiences.clone(),
        jwks_uri: i.jwks_uri.as_ref().map(|j| j.get_ref().clone()),
        algorithms,
        leeway: c.duration(i.leeway.as_ref(), Duration::from_secs(60)),
        ca_file: i.ca_file.as_ref().map(|f| c.ca_file(f)),
        refresh: c.duration(i.refresh.as_ref(), Duration::from_secs(300)),
        min_refetch: c.duration(i.min_refetch.as_ref(), Duration::from_secs(10)),
    }
}

fn check_duplicate_issuers(c: &mut Collector<'_>, issuers: &[Spanned<RawIssuer>]) {
    for (n, i) in issuers.iter().enumerate() {
        let name = i.get_ref().issuer.get_ref();
        if issuers[..n].iter().any(|o| o.get_ref().issuer.get_ref() == name) {
            c.at(
                &i.get_ref().issuer,
                format!("issuer {name:?} is configured twice"),
            );
        }
    }
}

/// Token issuers must be reached over HTTPS, except on loopback (a local dev IdP), because
/// keys fetched in clear could be swapped by anyone on the path.
fn check_idp_url(c: &mut Collector<'_>, v: &Spanned<String>, what: &str) {
    match url::Url::parse(v.get_ref()) {
        Ok(u) if https_or_loopback(&u) => {}
        Ok(_) => c.at(
            v,
            format!(
                "{what} {:?} must be an https:// URL (http is allowed only on loopback)",
                v.get_ref()
            ),
        ),
        Err(e) => c.at(v, format!("{what} {:?} is not a URL: {e}", v.get_ref())),
    }
}

/// An endpoint claimgate sends secrets to (client secrets, callers' tokens, and STS calls
/// whose answers are keys): https, or http on loopback only.
fn secret_carrying_url(v: &str) -> Result<url::Url, &'static str> {
    match url::Url::parse(v) {
        Ok(u) if https_or_loopback(&u) => Ok(u),
        Ok(u) if u.scheme() == "http" => {
            Err("must be an https:// URL (http is allowed only on loopback): secrets travel to it")
        }
        _ => Err("is not an http(s) URL"),
    }
}

/// Whether keys may be fetched from `v`: https, or http on loopback only. The same rule as
/// the configured issuer URLs, for the `jwks_uri` an issuer's discovery document names.
pub(crate) fn key_url_allowed(v: &str) -> bool {
    url::Url::parse(v).is_ok_and(|u| https_or_loopback(&u))
}

/// The one rule for every URL claimgate fetches keys from or sends secrets to: https, or
/// http on loopback only (a local dev IdP or STS).
fn https_or_loopback(u: &url::Url) -> bool {
    u.scheme() == "https" || (u.scheme() == "http" && is_loopback(u))
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    match name {
        "RS256" => Ok(Algorithm::RS256),
        "RS384" => Ok(Algorithm::RS384),
        "RS512" => Ok(Algorithm::RS512),
        "PS256" => Ok(Algorithm::PS256),
        "PS384" => Ok(Algorithm::PS384),
        "PS512" => Ok(Algorithm::PS512),
        "ES256" => Ok(Algorithm::ES256),
        "ES384" => Ok(Algorithm::ES384),
        "EdDSA" => Ok(Algorithm::EdDSA),
        "none" | "HS256" | "HS384" | "HS512" => Err(format!(
            "algorithm {name:?} is never accepted: unsigned or shared-secret tokens cannot prove an IdP issued them"
        )),
        other => Err(format!(
            "unknown algorithm {other:?} (RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
        )),
    }
}

/// `None` when STS is off, or when its keys are unusable (a problem is then recorded).
fn compile_sts(c: &mut Collector<'_>, raw: &Spanned<RawSts>) -> Option<StsConfig> {
    let s = raw.get_ref();
    let mut keys = Vec::new();
    for k in &s.sealing_keys {
        c.watch_secret(k.get_ref());
        match secret::resolve(k.get_ref(), c.base) {
            Ok(key) => keys.push(key),
            Err(e) => c.at(k, format!("sealing key: {e}")),
        }
    }
    let keyring = if keys.len() == s.sealing_keys.len() && !keys.is_empty() {
        Keyring::new(&keys).map_err(|e| c.at(raw, e)).ok()
    } else {
        None
    };
    if s.enabled && s.sealing_keys.is_empty() {
        c.at(raw, "[sts] is enabled but has no `sealing_keys`");
    }
    let default_session = c.duration(s.default_session.as_ref(), Duration::from_secs(3600));
    let max_session = c.duration(s.max_session.as_ref(), Duration::from_secs(12 * 3600));
    if max_session > Duration::from_secs(12 * 3600) {
        c.at(
            raw,
            "max_session is longer than 12h, AWS's own limit for role sessions",
        );
    }
    if default_session > max_session {
        c.at(raw, "default_session is longer than max_session");
    }
    Some(StsConfig {
        keyring: Arc::new(keyring?),
        default_session,
        max_session,
    })
    .filter(|_| s.enabled)
}

fn compile_routes(c: &mut Collector<'_>, raw: &[Spanned<RawRoute>]) -> Vec<RouteConfig> {
    let mut out = Vec::new();
    for (n, r) in raw.iter().enumerate() {
        let name = r.get_ref().name.get_ref();
        if raw[..n].iter().any(|o| o.get_ref().name.get_ref() == name) {
            c.at(&r.get_ref().name, format!("route name {name:?} is used twice"));
        }
        if let Some(route) = compile_route(c, r) {
            out.push(route);
        }
    }
    let s3_routes = out.iter().filter(|r| r.kind() == RouteKind::S3).count();
    if s3_routes > 1 {
        for r in raw
            .iter()
            .filter(|r| r.get_ref().kind() == Some(RouteKind::S3))
            .skip(1)
        {
            c.at(r, "only one S3 route is supported per listener for now");
        }
    }
    out
}

impl RawRoute {
    /// The route's kind, if it names one (the problem is reported where it is compiled).
    fn kind(&self) -> Option<RouteKind> {
        let de = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(self.kind.get_ref());
        RouteKind::deserialize(de).ok()
    }
}

fn compile_route(c: &mut Collector<'_>, raw: &Spanned<RawRoute>) -> Option<RouteConfig> {
    let r = raw.get_ref();
    let name = r.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.at(
            &r.name,
            format!("route name {name:?} must be letters, digits, '-' or '_'"),
        );
    }
    let upstream = match url::Url::parse(r.upstream.get_ref()) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        Ok(_) => {
            c.at(
                &r.upstream,
                "upstream must be an http:// or https:// URL with a host",
            );
            return None;
        }
        Err(e) => {
            c.at(
                &r.upstream,
                format!("upstream {:?} is not a URL: {e}", r.upstream.get_ref()),
            );
            return None;
        }
    };
    let ca_file = r.ca_file.as_ref().map(|f| c.ca_file(f));
    let kind: Option<RouteKind> = c.choice(&r.kind, "route kind");
    let credentials: Option<RawCredentials> = c.shaped(&r.credentials, "credentials");
    let api = match kind? {
        RouteKind::S3 => RouteApi::S3(compile_s3_route(c, raw, &name, credentials)?),
        RouteKind::Http => RouteApi::Http(compile_http_route(c, raw, &name, credentials)?),
    };
    Some(RouteConfig {
        name,
        upstream,
        ca_file,
        api,
    })
}

/// Refuses the settings of the other kind of route: on this route they would do nothing.
fn refuse_misplaced(
    c: &mut Collector<'_>,
    raw: &Spanned<RawRoute>,
    name: &str,
    fields: &[(bool, &str)],
    on: &str,
) {
    for (set, field) in fields {
        if *set {
            c.at(
                raw,
                format!("route {name:?}: `{field}` applies to {on} routes only"),
            );
        }
    }
}

fn compile_s3_route(
    c: &mut Collector<'_>,
    raw: &Spanned<RawRoute>,
    name: &str,
    credentials: Option<RawCredentials>,
) -> Option<S3Route> {
    let r = raw.get_ref();
    let fields = [
        (r.path_prefix.is_some(), "path_prefix"),
        (r.host.is_some(), "host"),
    ];
    refuse_misplaced(c, raw, name, &fields, "HTTP");
    let region = r.region.clone().unwrap_or_default();
    if region.is_empty() {
        c.at(raw, format!("route {name:?}: S3 routes need `region` (it is part of the SigV4 signature and is never guessed from the host)"));
    }
    let keys = match &r.literal_dot_keys {
        Some(flag) if *flag.get_ref() => KeyRule::Literal,
        _ => KeyRule::Canonical,
    };
    let upload_id_key = match &r.upload_id_key {
        Some(k) => {
            let key = c.secret(k.get_ref(), "upload_id_key", k)?;
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.expose().trim())
                .map(|b| b.len());
            if !matches!(bytes, Ok(n) if n >= 32) {
                c.at(k, "upload_id_key must be at least 32 random bytes, base64 (`head -c 32 /dev/urandom | base64`)");
                return None;
            }
            Some(key)
        }
        None => None,
    };
    let credentials = s3_credentials(c, &r.credentials, credentials?)?;
    let upload_id_key = match (upload_id_key, &credentials) {
        (Some(k), _) => k,
        (None, S3Credentials::Static(keys)) => keys.secret_access_key.clone(),
        (None, _) => {
            c.at(raw, format!("route {name:?}: without a static secret, multipart upload ids need `upload_id_key` to bind them to their keys (32 random bytes, base64, e.g. \"file:/etc/claimgate/upload-id.key\"; the same on every replica)"));
            return None;
        }
    };
    Some(S3Route {
        region,
        service: r.service.clone().unwrap_or_else(|| "s3".into()),
        buckets: r.buckets.clone(),
        keys,
        credentials,
        upload_id_key,
    })
}

fn compile_http_route(
    c: &mut Collector<'_>,
    raw: &Spanned<RawRoute>,
    name: &str,
    credentials: Option<RawCredentials>,
) -> Option<HttpRoute> {
    let r = raw.get_ref();
    let fields = [
        (r.buckets.is_some(), "buckets"),
        (r.region.is_some(), "region"),
        (r.service.is_some(), "service"),
        (r.upload_id_key.is_some(), "upload_id_key"),
    ];
    refuse_misplaced(c, raw, name, &fields, "S3");
    if let Some(flag) = &r.literal_dot_keys {
        c.at(flag, format!("route {name:?}: literal_dot_keys applies to S3 routes only (HTTP routes always refuse dot segments)"));
    }
    let path_prefix = r.path_prefix.as_ref().map(|p| {
        let v = p.get_ref().clone();
        if !v.starts_with('/') || !v.ends_with('/') {
            c.at(p, format!("path_prefix {v:?} must start and end with '/'"));
        }
        v
    });
    if path_prefix.is_none() && r.host.is_none() {
        c.at(
            raw,
            format!("route {name:?}: HTTP routes need `path_prefix` or `host`"),
        );
    }
    Some(HttpRoute {
        path_prefix,
        host: r.host.clone().map(|h| h.to_ascii_lowercase()),
        credentials: http_credentials(c, &r.credentials, credentials?)?,
    })
}

fn s3_credentials(
    c: &mut Collector<'_>,
    raw: &Spanned<toml::Value>,
    creds: RawCredentials,
) -> Option<S3Credentials> {
    match creds {
        RawCredentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let ak = c.secret(&access_key_id, "access_key_id", raw);
            let sk = c.secret(&secret_access_key, "secret_access_key", raw);
            let st = match session_token {
                None => None,
                Some(t) => Some(c.secret(&t, "session_token", raw)?),
            };
            Some(S3Credentials::Static(SigV4Keys {
                access_key_id: ak?,
                secret_access_key: sk?,
                session_token: st,
            }))
        }
        RawCredentials::Aws { profile } => Some(S3Credentials::Aws { profile }),
        RawCredentials::AssumeRole {
            role_arn,
            source,
            session_duration,
            sts_endpoint,
            external_id,
        } => {
            if matches!(*source, RawCredentials::AssumeRole { .. }) {
                c.at(raw, "assume_role: `source` must be \"static\" or \"aws\" (claimgate assumes one role, it does not chain them)");
                return None;
            }
            let source = s3_credentials(c, raw, *source);
            if !role_arn_template_ok(&role_arn) {
                c.at(raw, format!("assume_role: role_arn {role_arn:?} is not a role ARN (arn:aws:iam::<account>:role/<name>; `${{role}}` stands for the claimgate role)"));
            }
            let session_duration = match session_duration.as_deref().map(humantime::parse_duration) {
                None => Duration::from_secs(3600),
                Some(Ok(d)) if (900..=43_200).contains(&d.as_secs()) => d,
                Some(Ok(_)) => {
                    c.at(
                        raw,
                        "assume_role: session_duration must be between 15m and 12h (STS's bounds)",
                    );
                    return None;
                }
                Some(Err(e)) => {
                    c.at(raw, format!("assume_role: session_duration: {e}"));
                    return None;
                }
            };
            if let Some(e) = &sts_endpoint
                && let Err(why) = secret_carrying_url(e)
            {
                c.at(raw, format!("assume_role: sts_endpoint {e:?} {why}"));
            }
            let external_id = match external_id {
                None => None,
                Some(e) => Some(c.secret(&e, "external_id", raw)?),
            };
            Some(S3Credentials::AssumeRole(Box::new(AssumeRole {
                role_arn,
                source: source?,
                session_duration,
                sts_endpoint,
                external_id,
            })))
        }
        other => {
            c.at(
                raw,
                format!(
                    "credentials kind {:?} does not fit an S3 route (use \"static\", \"aws\" or \"assume_role\")",
                    other.kind()
                ),
            );
            None
        }
    }
}

/// `arn:<partition>:iam::<12 digits>:role/<path/name>`, with `${role}` allowed in the name.
fn role_arn_template_ok(arn: &str) -> bool {
    let probe = arn.replace("${role}", "x");
    let parts: Vec<&str> = probe.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", _, "iam", "", account, resource]
        if account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|n| !n.is_empty() && !n.ends_with('/'))
            && !probe.contains("${"))
}

fn http_credentials(
    c: &mut Collector<'_>,
    raw: &Spanned<toml::Value>,
    creds: RawCredentials,
) -> Option<HttpCredentials> {
    match creds {
        RawCredentials::Bearer { token } => Some(HttpCredentials::Bearer {
            token: c.secret(&token, "token", raw)?,
        }),
        RawCredentials::ApiKey { header, token } => {
            let header = http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| c.at(raw, "`header` is not a valid header name"))
                .ok();
            let key = c.secret(&token, "token", raw);
            Some(HttpCredentials::ApiKey {
                header: header?,
                key: key?,
            })
        }
        RawCredentials::Oauth2ClientCredentials(o) => {
            oauth_client(c, raw, o).map(HttpCredentials::OAuth2ClientCredentials)
        }
        RawCredentials::TokenExchange(o) => oauth_client(c, raw, o).map(HttpCredentials::TokenExchange),
        other => {
            c.at(
                raw,
                format!(
                    "credentials kind {:?} does not fit an HTTP route (use \"bearer\", \"api_key\", \"oauth2_client_credentials\" or \"token_exchange\")",
                    other.kind()
                ),
            );
            None
        }
    }
}

fn oauth_client(c: &mut Collector<'_>, raw: &Spanned<toml::Value>, o: RawOAuthClient) -> Option<OAuthClient> {
    let RawOAuthClient {
        token_url,
        client_id,
        client_secret,
        scopes,
        audience,
        resource,
        ca_file,
    } = o;
    let token_url = match secret_carrying_url(&token_url) {
        Ok(u) => Some(u),
        Err(why) => {
            c.at(raw, format!("token_url {token_url:?} {why}"));
            None
        }
    };
    if client_id.is_empty() {
        c.at(raw, "client_id is empty");
    }
    let client_secret = c.secret(&client_secret, "client_secret", raw);
    let ca_file = ca_file.map(|p| c.path(&p));
    Some(OAuthClient {
        token_url: token_url?,
        client_id,
        client_secret: client_secret?,
        scopes,
        audience,
        resource,
        ca_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_named_by_discovery_are_fetched_only_over_https_or_loopback() {
        for ok in [
            "https://idp.example.com/keys",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/jwks",
        ] {
            assert!(key_url_allowed(ok), "{ok}");
        }
        for refused in [
            "http://idp.example.com/keys",
            "http://10.0.0.5/jwks",
            "http://localhost.evil.com/jwks",
            "file:///etc/keys.json",
            "not a url",
        ] {
            assert!(!key_url_allowed(refused), "{refused}");
        }
    }

    const ROLE: &str = "[[roles]]\nname = \"r\"\nmembers = [ { claim = \"sub\", equals = \"a\" } ]\nallow = [ { actions = [\"http:GET\"], resources = [\"http://features/x\"] } ]\n";

    fn write(dir: &Path, config: &str, policy: &str) -> PathBuf {
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/p.toml"), policy).unwrap();
        std::fs::write(dir.join("sk"), "secret\n").unwrap();
        std::fs::write(dir.join("uk"), "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n").unwrap();
        let path = dir.join("claimgate.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    const GOOD: &str = r#"[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.example.com"
audiences = ["claimgate"]

[[routes]]
name = "lake"
kind = "s3"
upstream = "http://127.0.0.1:9000"
region = "us-east-1"
credentials = { kind = "static", access_key_id = "AK", secret_access_key = "file:sk" }

[[routes]]
name = "features"
kind = "http"
path_prefix = "/features/"
upstream = "http://127.0.0.1:6566"
credentials = { kind = "bearer", token = "file:sk" }
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), GOOD, ROLE)).unwrap();
        assert_eq!(c.issuers[0].leeway, Duration::from_secs(60));
        assert_eq!(c.issuers[0].algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(c.audit.sink, AuditSink::Stdout);
        assert_eq!(c.audit.on_failure, OnAuditFailure::Refuse);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.server.denials, DenialDetail::Verbose);
        assert_eq!(c.policies.role_count(), 1);
        let s3 = c.routes[0].s3().expect("an S3 route");
        let S3Credentials::Static(keys) = &s3.credentials else {
            panic!("static keys");
        };
        assert_eq!(keys.secret_access_key.expose(), "secret");
    }

    #[test]
    fn limits_and_audit_failure_mode_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{GOOD}\n[audit]\non_failure = \"serve\"\n\n[limits]\nrequest_head_timeout = \"5s\"\nmax_connections = 7\nrequests_per_second_per_identity = 2.5\n"
        );
        let c = Config::load(&write(dir.path(), &text, ROLE)).unwrap();
        assert_eq!(c.audit.on_failure, OnAuditFailure::Serve);
        assert_eq!(c.limits.request_head_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(
            c.limits.rate_per_identity,
            Some(Rate {
                per_second: 2.5,
                burst: 2.5
            })
        );
        let bad = format!(
            "{GOOD}\n[audit]\non_failure = \"ignore\"\n\n[limits]\nmax_connections = 0\nmax_header_bytes = 100\nburst_per_identity = 3.0\nidle_timeout = \"0s\"\n"
        );
        let e = Config::load(&write(dir.path(), &bad, ROLE)).unwrap_err();
        let text = e.to_string();
        for needle in [
            "on_failure",
            "max_connections = 0",
            "max_header_bytes below 8192",
            "burst_per_identity needs",
            "idle_timeout of 0",
        ] {
            assert!(text.contains(needle), "no {needle:?} in:\n{text}");
        }
        assert_eq!(e.problems.len(), 5, "{text}");
    }

    #[test]
    fn a_ca_file_that_holds_no_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let text = GOOD.replace(
            "audiences = [\"claimgate\"]",
            "audiences = [\"claimgate\"]\nca_file = \"ca.pem\"",
        );
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        assert_eq!(e.problems[0].line, Some(7), "{e}");
        assert!(e.to_string().contains("no certificates found"), "{e}");
    }

    #[test]
    fn every_file_read_is_a_watched_source() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), GOOD, ROLE)).unwrap();
        assert!(c.sources.files.contains(&dir.path().join("claimgate.toml")));
        assert!(
            c.sources.files.contains(&dir.path().join("sk")),
            "{:?}",
            c.sources
        );
        assert_eq!(c.sources.dirs, vec![dir.path().join("policies")]);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "audiences = [\"claimgate\"]",
            "audiences = [\"claimgate\"]\naudience = \"typo\"",
        );
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].line, Some(7), "{e}");
        assert!(e.problems[0].message.contains("audience"), "{e}");
    }

    #[test]
    fn workers_default_to_the_cores_and_zero_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(&write(dir.path(), GOOD, ROLE)).unwrap();
        assert_eq!(c.server.workers, crate::workers::default_count());
        let two = GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nworkers = 2",
        );
        assert_eq!(
            Config::load(&write(dir.path(), &two, ROLE))
                .unwrap()
                .server
                .workers,
            2
        );
        let zero = GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nworkers = 0",
        );
        let e = Config::load(&write(dir.path(), &zero, ROLE)).unwrap_err();
        assert!(e.to_string().contains("workers = 0 would serve nothing"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD
            .replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nshutdown_grace = \"soon\"",
            )
            .replace("file:sk\" }\n\n[[routes]]", "file:missing\" }\n\n[[routes]]")
            .replace("name = \"features\"", "name = \"lake\"")
            .replace("https://idp.example.com", "http://idp.example.com")
            .replace(
                "audiences = [\"claimgate\"]",
                "audiences = [\"claimgate\"]\nalgorithms = [\"HS256\"]",
            );
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        let all = e.to_string();
        for needle in [
            "bad duration \"soon\"",
            "cannot read secret file",
            "route name \"lake\" is used twice",
            "must be an https:// URL",
            "\"HS256\" is never accepted",
            // the policy names route `features`, which no longer exists
            "features",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(e.problems.iter().all(|p| p.line.is_some()), "{all}");
        assert!(
            all.lines()
                .all(|l| l.contains("claimgate.toml:") || l.contains("p.toml:")),
            "{all}"
        );
    }

    #[test]
    fn typed_settings_are_problems_among_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("kind = \"http\"", "kind = \"grpc\"").replace(
            "kind = \"static\", access_key_id = \"AK\"",
            "kind = \"static\", acces_key_id = \"AK\"",
        ) + "\n[policies]\nmode = \"enforcing\"\n\n[audit]\nformat = \"csv\"\n";
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        let all = e.to_string();
        for needle in [
            "route kind: unknown variant `grpc`, expected `s3` or `http`",
            "credentials: unknown field `acces_key_id`",
            "policies mode: unknown variant `enforcing`",
            "audit format: unknown variant `csv`, expected `json` or `ocsf`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn a_setting_of_the_other_kind_of_route_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD
            .replace(
                "region = \"us-east-1\"",
                "region = \"us-east-1\"\nhost = \"s3.example.com\"",
            )
            .replace("kind = \"http\"", "kind = \"http\"\nbuckets = [\"b\"]");
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        let all = e.to_string();
        assert!(all.contains("`host` applies to HTTP routes only"), "{all}");
        assert!(all.contains("`buckets` applies to S3 routes only"), "{all}");
    }

    #[test]
    fn secrets_never_appear_in_problems() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\"",
            "kind = \"bearer\", token = \"secret\"",
        );
        let e = Config::load(&write(dir.path(), &text, ROLE)).unwrap_err();
        assert!(!e.to_string().contains("secret\n"));
        assert!(e.to_string().contains("does not fit an S3 route"), "{e}");
    }

    fn with_credentials(s3: &str, http: &str) -> String {
        GOOD.replace(
            "credentials = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\" }",
            s3,
        )
        .replace("credentials = { kind = \"bearer\", token = \"file:sk\" }", http)
    }

    #[test]
    fn routes_without_static_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let text = with_credentials(
            "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/ml-${role}\", source = { kind = \"aws\" }, session_duration = \"1h\", sts_endpoint = \"http://127.0.0.1:5000\", external_id = \"file:sk\" }\nupload_id_key = \"file:uk\"",
            "credentials = { kind = \"token_exchange\", token_url = \"https://idp.example.com/token\", client_id = \"claimgate\", client_secret = \"file:sk\", audience = \"feast\" }",
        );
        let c = Config::load(&write(dir.path(), &text, ROLE)).unwrap();
        let s3 = c.routes[0].s3().unwrap();
        let S3Credentials::AssumeRole(a) = &s3.credentials else {
            panic!("assume_role");
        };
        assert_eq!(a.role_arn, "arn:aws:iam::123456789012:role/ml-${role}");
        assert!(matches!(a.source, S3Credentials::Aws { profile: None }));
        assert_eq!(a.session_duration, Duration::from_secs(3600));
        assert_eq!(a.external_id.as_ref().unwrap().expose(), "secret");
        assert_eq!(
            s3.upload_id_key.expose(),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        );
        let HttpCredentials::TokenExchange(t) = &c.routes[1].http().unwrap().credentials else {
            panic!("token_exchange");
        };
        assert_eq!(
            (t.client_id.as_str(), t.client_secret.expose()),
            ("claimgate", "secret")
        );
        assert_eq!(t.audience.as_deref(), Some("feast"));

        let text = with_credentials(
            "credentials = { kind = \"aws\", profile = \"lake\" }\nupload_id_key = \"file:uk\"",
            "credentials = { kind = \"oauth2_client_credentials\", token_url = \"https://idp.example.com/token\", client_id = \"claimgate\", client_secret = \"file:sk\", scopes = [\"a\", \"b\"], resource = \"https://features\" }",
        );
        let c = Config::load(&write(dir.path(), &text, ROLE)).unwrap();
        assert!(
            matches!(&c.routes[0].s3().unwrap().credentials, S3Credentials::Aws { profile: Some(p) } if p == "lake")
        );
        let HttpCredentials::OAuth2ClientCredentials(o) = &c.routes[1].http().unwrap().credentials else {
            panic!("client credentials");
        };
        assert_eq!(o.scopes, ["a", "b"]);
    }

    #[test]
    fn bad_credential_kinds_are_problems_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str, &str)] = &[
            (
                "credentials = { kind = \"aws\" }",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "multipart upload ids need `upload_id_key`",
            ),
            (
                "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::1:role/x\", source = { kind = \"aws\" } }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "is not a role ARN",
            ),
            (
                "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/${team}\", source = { kind = \"aws\" } }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "is not a role ARN",
            ),
            (
                "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/x\", source = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/y\", source = { kind = \"aws\" } } }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "it does not chain them",
            ),
            (
                "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/x\", source = { kind = \"aws\" }, session_duration = \"5m\" }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "between 15m and 12h",
            ),
            (
                "credentials = { kind = \"aws\" }\nupload_id_key = \"c2hvcnQ=\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "at least 32 random bytes",
            ),
            (
                "credentials = { kind = \"aws\", region = \"x\" }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "unknown field `region`",
            ),
            (
                "credentials = { kind = \"token_exchange\", token_url = \"https://i/t\", client_id = \"c\", client_secret = \"s\" }",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "does not fit an S3 route (use \"static\", \"aws\" or \"assume_role\")",
            ),
            (
                "credentials = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\" }",
                "credentials = { kind = \"aws\" }",
                "does not fit an HTTP route",
            ),
            (
                "credentials = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\" }",
                "credentials = { kind = \"oauth2_client_credentials\", token_url = \"ftp://idp/token\", client_id = \"c\", client_secret = \"file:sk\" }",
                "is not an http(s) URL",
            ),
            (
                "credentials = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\" }",
                "credentials = { kind = \"token_exchange\", token_url = \"http://idp.example.com/token\", client_id = \"c\", client_secret = \"inline-client-secret\" }",
                "http is allowed only on loopback",
            ),
            (
                "credentials = { kind = \"assume_role\", role_arn = \"arn:aws:iam::123456789012:role/x\", source = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"inline-source-secret\" }, sts_endpoint = \"http://sts.example.com\" }\nupload_id_key = \"file:uk\"",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }",
                "http is allowed only on loopback",
            ),
            (
                "credentials = { kind = \"static\", access_key_id = \"AK\", secret_access_key = \"file:sk\" }",
                "credentials = { kind = \"bearer\", token = \"file:sk\" }\nupload_id_key = \"file:uk\"",
                "`upload_id_key` applies to S3 routes only",
            ),
        ];
        for (s3, http, needle) in cases {
            let e = Config::load(&write(dir.path(), &with_credentials(s3, http), ROLE)).unwrap_err();
            assert!(
                e.to_string().contains(needle),
                "{s3} / {http}: missing {needle:?} in:\n{e}"
            );
            for secret in ["inline-client-secret", "inline-source-secret"] {
                assert!(!e.to_string().contains(secret), "{e}");
            }
        }
    }
}
