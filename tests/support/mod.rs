//! Test harness: a real OIDC issuer, a real S3 server that verifies SigV4, and the proxy,
//! all on 127.0.0.1 port 0, talking over real sockets.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod literal_store;
pub mod vectors;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use claimgate::clock::SystemClock;
use claimgate::config::Config;
use claimgate::server::Server;

pub const AUDIENCE: &str = "claimgate";
pub const S3_ACCESS_KEY: &str = "AKIDCLAIMGATEUPSTREAM";
pub const S3_SECRET_KEY: &str = "upstream-secret-key-for-tests-only";

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ------------------------------------------------------------------------------------
// Keys
// ------------------------------------------------------------------------------------

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

fn pem_rsa() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem()
}

/// RSA key generation is slow; tests share a small pool of PEMs.
fn rsa_pem(n: usize) -> String {
    static POOL: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| Mutex::new(Vec::new()));
    let mut pool = pool.lock().unwrap();
    while pool.len() <= n {
        pool.push(pem_rsa());
    }
    pool[n].clone()
}

impl SigningKey {
    pub fn rsa(kid: &str, n: usize) -> Self {
        let encoding = EncodingKey::from_rsa_pem(rsa_pem(n).as_bytes()).unwrap();
        Self::finish(kid, Algorithm::RS256, encoding)
    }

    pub fn ec(kid: &str) -> Self {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        Self::finish(kid, Algorithm::ES256, encoding)
    }

    fn finish(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        SigningKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

// ------------------------------------------------------------------------------------
// A real OIDC issuer: discovery + JWKS over HTTP
// ------------------------------------------------------------------------------------

struct IdpState {
    issuer: String,
    published: Mutex<Vec<SigningKey>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
}

pub struct TestIdp {
    pub issuer: String,
    state: Arc<IdpState>,
}

impl TestIdp {
    /// An issuer publishing one RSA (`rsa-1`) and one EC (`ec-1`) key.
    pub async fn start() -> TestIdp {
        Self::start_with(vec![SigningKey::rsa("rsa-1", 0), SigningKey::ec("ec-1")]).await
    }

    pub async fn start_with(keys: Vec<SigningKey>) -> TestIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            published: Mutex::new(keys),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(idp_answer(&st, req.uri().path())) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestIdp { issuer, state }
    }

    /// The key tokens are signed with by default.
    pub fn key(&self, kid: &str) -> SigningKey {
        self.state
            .published
            .lock()
            .unwrap()
            .iter()
            .find(|k| k.kid == kid)
            .cloned()
            .unwrap_or_else(|| panic!("no key {kid}"))
    }

    pub fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "email": format!("{sub}@example.com"),
            "groups": groups,
            "iat": now,
            "exp": now + 600,
            "jti": format!("jti-{sub}-{}", claimgate::pipeline::new_request_id()),
        })
    }

    /// A valid RS256 token for `sub` in `groups`.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.key("rsa-1").sign(&self.claims(sub, groups))
    }

    pub fn publish(&self, keys: Vec<SigningKey>) {
        *self.state.published.lock().unwrap() = keys;
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

fn idp_answer(st: &IdpState, path: &str) -> http::Response<Full<Bytes>> {
    if st.down.load(Ordering::SeqCst) {
        return http::Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"down")))
            .unwrap();
    }
    let body = match path {
        "/.well-known/openid-configuration" => json!({
            "issuer": st.issuer,
            "jwks_uri": format!("{}/jwks", st.issuer),
        }),
        "/jwks" => {
            st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = st
                .published
                .lock()
                .unwrap()
                .iter()
                .map(|k| k.jwk.clone())
                .collect();
            json!({ "keys": keys })
        }
        _ => {
            return http::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap();
        }
    };
    http::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// ------------------------------------------------------------------------------------
// A real S3 server (s3s-fs) that verifies SigV4 with the route's credentials
// ------------------------------------------------------------------------------------

pub struct TestS3 {
    pub url: String,
    pub root: tempfile::TempDir,
    requests: Arc<AtomicUsize>,
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestS3 {
    pub async fn start(buckets: &[&str]) -> TestS3 {
        Self::start_with(buckets, None).await
    }

    /// The same server behind TLS with this certificate and key (PEM).
    pub async fn start_tls(buckets: &[&str], cert: &str, key: &str) -> TestS3 {
        Self::start_with(buckets, Some((cert, key))).await
    }

    async fn start_with(buckets: &[&str], tls: Option<(&str, &str)>) -> TestS3 {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let acceptor = tls.map(|(cert, key)| tls_acceptor(cert, key));
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let traceparents = Arc::new(Mutex::new(Vec::new()));
        let seen = traceparents.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let counter = counter.clone();
                let seen = seen.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(
                            req.headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string),
                        );
                        let service = service.clone();
                        async move { hyper::service::Service::call(&service, req).await }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(stream).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        TestS3 {
            url,
            root,
            requests,
            traceparents,
        }
    }

    /// The `traceparent` each request that reached the store carried.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().unwrap().clone()
    }

    /// Requests that reached the upstream so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }
}

// ------------------------------------------------------------------------------------
// The proxy
// ------------------------------------------------------------------------------------

pub const POLICY: &str = r#"
[[roles]]
name = "trainer"
description = "ML engineers' training jobs"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"], resources = ["s3://datasets/*"] },
  { actions = ["s3:ListBucket"], resources = ["s3://datasets", "s3://datasets/*"] },
  { actions = ["s3:ListBucketMultipartUploads"], resources = ["s3://datasets"] },
  { actions = ["s3:PutObject", "s3:GetObject"], resources = ["s3://checkpoints/${sub}/*"] },
  { actions = ["s3:ListAllMyBuckets"], resources = ["s3://"] },
]
deny = [
  { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] },
]

[[roles]]
name = "analyst"
members = [ { claim = "groups", contains = "analysts" } ]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/curated/*"] },
]
"#;

#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct ProxyBuilder {
    issuers: Vec<String>,
    upstream: String,
    policy: String,
    extra_issuer: String,
    extra_server: String,
    extra: String,
    route_lines: String,
    policies_lines: String,
    files: Vec<(String, String)>,
    tls: bool,
    clock: Option<claimgate::clock::SharedClock>,
    audit_to: Option<Box<dyn Write + Send>>,
    env: Vec<(String, String)>,
}

pub fn proxy(idp: &TestIdp, s3: &TestS3) -> ProxyBuilder {
    proxy_to(idp, &s3.url)
}

pub struct TestProxy {
    pub url: String,
    pub admin: String,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub audit: SharedBuf,
    pub live: Arc<claimgate::reload::Live>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<bool>>,
    pub client: Client,
    pub ca_pem: Option<String>,
}

impl ProxyBuilder {
    pub fn policy(mut self, p: &str) -> Self {
        self.policy = p.to_string();
        self
    }
    /// Extra lines inside each `[[issuers]]` table.
    pub fn issuer_lines(mut self, lines: &str) -> Self {
        self.extra_issuer = lines.to_string();
        self
    }
    /// Extra lines inside `[server]`.
    pub fn server_lines(mut self, lines: &str) -> Self {
        self.extra_server = lines.to_string();
        self
    }
    /// Extra top-level tables appended at the end.
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra = toml.to_string();
        self
    }
    /// Runs the proxy on this clock instead of the system's.
    pub fn clock(mut self, clock: claimgate::clock::SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Extra lines inside `[policies]`.
    pub fn policies_lines(mut self, lines: &str) -> Self {
        self.policies_lines = lines.to_string();
        self
    }
    /// Files written beside the config before it loads.
    pub fn files(mut self, files: &[(&str, &str)]) -> Self {
        self.files = files
            .iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        self
    }
    /// Extra lines inside the S3 `[[routes]]` table.
    pub fn route_lines(mut self, lines: &str) -> Self {
        self.route_lines = lines.to_string();
        self
    }
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.issuers.push(issuer.to_string());
        self
    }
    /// An environment variable for the spawned process (`spawn` only).
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Audit records go to this writer instead of the test's buffer (`TestProxy::audit`
    /// then stays empty).
    pub fn audit_to(mut self, out: Box<dyn Write + Send>) -> Self {
        self.audit_to = Some(out);
        self
    }

    /// Writes the config, policies and secrets into `dir` as `start` does; returns the
    /// config path and the test CA (with TLS).
    fn write_files(&self, dir: &Path) -> (PathBuf, String, Option<String>) {
        std::fs::create_dir(dir.join("policies")).unwrap();
        std::fs::write(dir.join("policies/test.toml"), &self.policy).unwrap();
        std::fs::write(dir.join("upstream.secret"), format!("{S3_SECRET_KEY}\n")).unwrap();
        for (name, content) in &self.files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let (tls_lines, ca_pem) = if self.tls {
            let (cert, key) = self_signed();
            std::fs::write(dir.join("tls.crt"), &cert).unwrap();
            std::fs::write(dir.join("tls.key"), &key).unwrap();
            (
                "tls = { cert = \"tls.crt\", key = \"tls.key\" }\n".to_string(),
                Some(cert),
            )
        } else {
            (String::new(), None)
        };
        let text = self.config_text(&tls_lines);
        let path = dir.join("claimgate.toml");
        std::fs::write(&path, &text).unwrap();
        (path, text, ca_pem)
    }

    /// Runs the real `claimgate serve` binary on this config (fixed free ports, audit
    /// records appended to `audit.log` in its directory) and waits until it is ready.
    pub async fn spawn(mut self) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        // An [audit] table of the test's own gets the path added to it.
        if self.extra.contains("[audit]\n") {
            self.extra = self
                .extra
                .replacen("[audit]\n", "[audit]\npath = \"audit.log\"\n", 1);
        } else {
            self.extra.push_str("\n[audit]\npath = \"audit.log\"\n");
        }
        let (path, text, ca_pem) = self.write_files(dir.path());
        let text = text
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            )
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{admin_port}\""),
                1,
            );
        std::fs::write(&path, &text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_claimgate"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("CLAIMGATE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let scheme = if self.tls { "https" } else { "http" };
        let p = Process {
            url: format!("{scheme}://localhost:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            client: Client::new(ca_pem.as_deref()),
            ca_pem,
            child,
            dir,
        };
        let admin = Client::new(None);
        for _ in 0..500 {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                admin.inner.get(format!("{}/readyz", p.admin).parse().unwrap()),
            )
            .await
                && r.status() == 200
            {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("claimgate serve did not become ready:\n{}", p.stderr());
    }

    pub fn config_text(&self, tls_lines: &str) -> String {
        let mut s = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{tls_lines}{}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
            self.extra_server
        );
        for i in &self.issuers {
            s.push_str(&format!(
                "[[issuers]]\nissuer = \"{i}\"\naudiences = [\"{AUDIENCE}\"]\n{}\n\n",
                self.extra_issuer
            ));
        }
        s.push_str(&format!(
            "[policies]\ndir = \"policies\"\n{}\n\n[[routes]]\nname = \"lake\"\nkind = \"s3\"\nupstream = \"{}\"\nregion = \"us-east-1\"\ncredentials = {{ kind = \"static\", access_key_id = \"{S3_ACCESS_KEY}\", secret_access_key = \"file:upstream.secret\" }}\n{}\n\n{}",
            self.policies_lines, self.upstream, self.route_lines, self.extra
        ));
        s
    }

    pub async fn start(mut self) -> TestProxy {
        let dir = tempfile::tempdir().unwrap();
        let (path, text, ca_pem) = self.write_files(dir.path());
        let config = Arc::new(Config::load(&path).unwrap_or_else(|e| panic!("{e}\n---\n{text}")));
        let audit = SharedBuf::default();
        let server = Server::bind_with(
            config,
            self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock)),
            Some(self.audit_to.take().unwrap_or_else(|| Box::new(audit.clone()))),
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let admin = format!("http://{}", server.admin_addr().unwrap());
        let live = server.live().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        let scheme = if self.tls { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{}", addr.port());
        let client = Client::new(ca_pem.as_deref());
        let p = TestProxy {
            url,
            admin,
            addr,
            dir,
            audit,
            live,
            shutdown: Some(tx),
            done: Some(done),
            client,
            ca_pem,
        };
        p.wait_ready().await;
        p
    }
}

pub fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

pub fn self_signed() -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

impl TestProxy {
    async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.live.current().auth.ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Some tests start with the IdP down on purpose.
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every audit record written so far, after waiting until at least `n` exist.
    pub async fn audit(&self, n: usize) -> Vec<Value> {
        for _ in 0..500 {
            self.live.shared().audit.flush(Duration::from_secs(5)).await;
            let lines = self.audit_now();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.audit_now()
    }

    fn audit_now(&self) -> Vec<Value> {
        let buf = self.audit.0.lock().unwrap();
        String::from_utf8_lossy(&buf)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
            .collect()
    }

    pub fn audit_raw(&self) -> String {
        String::from_utf8_lossy(&self.audit.0.lock().unwrap()).to_string()
    }

    pub async fn metrics(&self) -> String {
        let r = self.client.get(&format!("{}/metrics", self.admin), None).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }

    /// Stops the server as SIGTERM would and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }
}

/// A port free on loopback now (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `claimgate serve` process (see [`ProxyBuilder::spawn`]). Killed when dropped.
pub struct Process {
    pub url: String,
    pub admin: String,
    pub addr: SocketAddr,
    pub client: Client,
    pub ca_pem: Option<String>,
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Process {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `TERM`, `USR1`).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit (at most `within`).
    pub fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The audit records in `audit.log` (and in any rotated `audit.log.*` given).
    pub fn audit_file(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
            .collect()
    }

    /// Resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors of the process (Linux).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub async fn metrics(&self) -> String {
        let r = self.client.get(&format!("{}/metrics", self.admin), None).await;
        String::from_utf8(r.body.to_vec()).unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ------------------------------------------------------------------------------------
// A small HTTP client over hyper (HTTP/1.1 and HTTP/2, TLS with a test CA)
// ------------------------------------------------------------------------------------

pub type Body = BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Body,
    >,
}

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    /// The `<Code>` of an S3 XML error.
    pub fn s3_code(&self) -> String {
        let t = self.text();
        t.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or_default()
            .to_string()
    }
}

impl Client {
    pub fn new(ca_pem: Option<&str>) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = ca_pem {
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(conn),
        }
    }

    pub async fn send(&self, req: http::Request<Body>) -> Resp {
        let resp = self.inner.request(req).await.expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn request(&self, method: &str, url: &str, token: Option<&str>, body: Bytes) -> Resp {
        let mut b = http::Request::builder().method(method).uri(url);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(full(body)).unwrap()).await
    }

    pub async fn get(&self, url: &str, token: Option<&str>) -> Resp {
        self.request("GET", url, token, Bytes::new()).await
    }
}

// ------------------------------------------------------------------------------------
// In-test HTTP/1.1 upstreams
// ------------------------------------------------------------------------------------

/// Serves HTTP/1.1 on a fresh loopback port, answering every request with `handle`; returns
/// the base URL. The upstreams the tests stand up (feature store, recorder, fakes) share it.
pub async fn serve_http<F, Fut>(handle: F) -> String
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = handle(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

// ------------------------------------------------------------------------------------
// An HTTP upstream (a feature store stand-in) that echoes what it received
// ------------------------------------------------------------------------------------

pub struct TestHttp {
    pub url: String,
    seen: Arc<Mutex<Vec<Value>>>,
}

impl TestHttp {
    pub async fn start() -> TestHttp {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let url = serve_http(move |req| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let h = |n: &str| parts.headers.get(n).map(|v| v.to_str().unwrap().to_string());
                let record = json!({
                    "method": parts.method.as_str(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "authorization": h("authorization"),
                    "x_api_key": h("x-api-key"),
                    "traceparent": h("traceparent"),
                    "tracestate": h("tracestate"),
                    "body": String::from_utf8_lossy(&body),
                });
                log.lock().unwrap().push(record.clone());
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(record.to_string())))
                    .unwrap()
            }
        })
        .await;
        TestHttp { url, seen }
    }

    /// The `[[routes]]` table of an HTTP route `features` (prefix `/features/`) in front of
    /// this upstream, whose requests carry `Bearer feast-service-token`.
    pub fn route(&self) -> String {
        format!(
            "[[routes]]\nname = \"features\"\nkind = \"http\"\npath_prefix = \"/features/\"\nupstream = \"{}\"\ncredentials = {{ kind = \"bearer\", token = \"feast-service-token\" }}\n",
            self.url
        )
    }

    /// Every request that reached this upstream.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}

// ------------------------------------------------------------------------------------
// STS
// ------------------------------------------------------------------------------------

pub const TRAINER: &str = "arn:aws:iam::000000000000:role/trainer";

pub const STS: &str = "[sts]\nenabled = true\nsealing_keys = [\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\"]\ndefault_session = \"1h\"\nmax_session = \"2h\"\n";

pub fn form(pairs: &[(&str, &str)]) -> Bytes {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    Bytes::from(s.finish())
}

pub async fn assume(p: &TestProxy, token: &str, role_arn: &str, extra: &[(&str, &str)]) -> Resp {
    let mut pairs = vec![
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", "test-session"),
        ("WebIdentityToken", token),
    ];
    pairs.extend_from_slice(extra);
    let req = http::Request::post(p.url("/"))
        .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
        .body(full(form(&pairs)))
        .unwrap();
    p.client.send(req).await
}

pub fn element<'a>(xml: &'a str, name: &str) -> &'a str {
    xml.split(&format!("<{name}>"))
        .nth(1)
        .and_then(|r| r.split(&format!("</{name}>")).next())
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
}

/// Credentials from a successful AssumeRoleWithWebIdentity.
#[derive(Clone, Debug)]
pub struct SessionCreds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

pub async fn session(p: &TestProxy, token: &str) -> SessionCreds {
    let r = assume(p, token, TRAINER, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let xml = r.text();
    SessionCreds {
        access_key_id: element(&xml, "AccessKeyId").to_string(),
        secret_access_key: element(&xml, "SecretAccessKey").to_string(),
        session_token: element(&xml, "SessionToken").to_string(),
    }
}

// ------------------------------------------------------------------------------------
// A recording pass-through upstream: answers 200 to everything, records what arrived
// ------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// The path exactly as it arrived (still percent-encoded).
    pub path: String,
    pub query: Option<String>,
    /// `x-amz-copy-source`, as it arrived.
    pub copy_source: Option<String>,
    /// The whole body, when it arrived whole; `None` when it broke off.
    pub body: Option<Bytes>,
}

/// An upstream that stores nothing and checks nothing: it shows exactly what claimgate sent.
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let url = serve_http(move |req| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.ok().map(|b| b.to_bytes());
                let copy_source = (parts.headers.get("x-amz-copy-source"))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().map(str::to_string),
                    copy_source,
                    body,
                });
                http::Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        })
        .await;
        Recorder { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A proxy in front of any upstream URL (not only a [`TestS3`]).
pub fn proxy_to(idp: &TestIdp, upstream: &str) -> ProxyBuilder {
    ProxyBuilder {
        issuers: vec![idp.issuer.clone()],
        upstream: upstream.to_string(),
        policy: POLICY.to_string(),
        extra_issuer: String::new(),
        extra_server: String::new(),
        extra: String::new(),
        route_lines: String::new(),
        policies_lines: String::new(),
        files: Vec::new(),
        tls: false,
        clock: None,
        audit_to: None,
        env: Vec::new(),
    }
}

/// A request to the proxy signed with session credentials, as an SDK signs it: `headers`
/// are set before signing (and so signed), `host` is the proxy's unless given. The signature
/// covers the path's SigV4 canonical form, whatever spelling `path` uses, as a client that
/// means to send that spelling would sign it.
pub fn session_request(
    p: &TestProxy,
    creds: &SessionCreds,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> http::Request<Body> {
    let mut b = http::Request::builder().method(method).uri(p.url(path));
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        b = b.header("host", format!("localhost:{}", p.addr.port()));
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let (mut parts, ()) = b.body(()).unwrap().into_parts();
    let sent = parts.uri.clone();
    let canonical = claimgate::sigv4::canonical_s3_path(sent.path());
    let canonical = match sent.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    parts.uri = http::Uri::builder()
        .scheme(sent.scheme().unwrap().clone())
        .authority(sent.authority().unwrap().clone())
        .path_and_query(canonical)
        .build()
        .unwrap();
    let aws = aws_credential_types::Credentials::new(
        &creds.access_key_id,
        &creds.secret_access_key,
        Some(creds.session_token.clone()),
        None,
        "test",
    );
    claimgate::upstream::sign::sign_v4(
        &mut parts,
        &claimgate::upstream::sign::Signer {
            credentials: &aws,
            region: "us-east-1",
            service: "s3",
            settings: claimgate::upstream::sign::s3_settings(),
            signed_headers: |_| true,
        },
        aws_sigv4::http_request::SignableBody::Bytes(body),
        std::time::SystemTime::now(),
    )
    .unwrap();
    parts.uri = sent;
    http::Request::from_parts(parts, full(Bytes::copy_from_slice(body)))
}

/// Every file under `root` with its contents: what a store holds, to compare before and after.
pub fn snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    out
}
