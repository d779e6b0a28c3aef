//! `claimgate dev`: the whole system on one machine, in one process — the proxy with the
//! example policies, a dev OIDC issuer, a real S3 store over a local folder (s3s-fs,
//! verifying SigV4, so re-signing is really checked), a feature-store stand-in, and demo
//! identities whose tokens are written to `DIR/tokens/`.
//!
//! Everything listens on 127.0.0.1 only. A second start reuses DIR: the signing key, the
//! store's secret, the data and any edited policies are kept; tokens are minted afresh.

pub mod idp;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::server::Server;

/// The example policies `claimgate dev` starts with (copied into DIR/policies on first start).
const EXAMPLE_POLICIES: &str = include_str!("../../policies/ml-platform.toml");

/// The store's access key id (the secret is random per DIR).
const STORE_ACCESS_KEY: &str = "claimgate-dev-store";
/// What the proxy presents to the feature-store stand-in.
const FEATURES_TOKEN: &str = "dev-feature-store-token";

/// Demo identities, matching the example policies.
pub fn demo_identities() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "alice",
            "an ML engineer (role trainer)",
            json!({"email": "alice@example.com", "groups": ["ml-engineers"]}),
        ),
        (
            "bob",
            "an analyst (role analyst)",
            json!({"email": "bob@example.com", "groups": ["analysts"]}),
        ),
        (
            "ci",
            "a CI job publishing models (role ci-publisher)",
            json!({"repository": "acme/ml-models", "ref": "refs/heads/main"}),
        ),
        (
            "pat",
            "the privacy officer (role privacy-officer)",
            json!({"email": "pat@example.com", "email_verified": true, "groups": ["privacy"]}),
        ),
    ]
}

/// Where and how `claimgate dev` runs.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// State directory.
    pub dir: PathBuf,
    /// Proxy port; admin, IdP, store and feature store take the next four. 0: any free ports.
    pub port: u16,
    /// Serve the proxy over TLS with a loopback certificate made for it (`DIR/tls/`).
    pub tls: bool,
    /// Default STS session length (AWS SDKs refresh 15 minutes before expiry, so a short one
    /// makes refreshes observable).
    pub session: std::time::Duration,
}

fn port(base: u16, offset: u16) -> u16 {
    if base == 0 { 0 } else { base.saturating_add(offset) }
}

async fn bind(port: u16, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        format!("cannot listen on 127.0.0.1:{port} for the {what}: {e} (pick other ports with --port)")
    })
}

fn addr(l: &TcpListener) -> Result<SocketAddr, String> {
    l.local_addr().map_err(|e| e.to_string())
}

/// Runs until `shutdown` resolves.
pub async fn run(opts: DevOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), String> {
    std::fs::create_dir_all(&opts.dir).map_err(|e| format!("{}: {e}", opts.dir.display()))?;
    // One `claimgate dev` per directory: a second one would rewrite the issuer and config
    // under the first. The OS drops the lock when the process ends, however it ends.
    let lock_path = opts.dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        return Err(format!(
            "another `claimgate dev` is already running with --dir {}",
            opts.dir.display()
        ));
    }
    // Every port is taken before any state is written, so a clash changes nothing.
    let proxy_probe = bind(port(opts.port, 0), "proxy").await?;
    let admin_probe = bind(port(opts.port, 1), "admin port").await?;
    let idp_listener = bind(port(opts.port, 2), "dev identity provider").await?;
    let s3_listener = bind(port(opts.port, 3), "dev S3 store").await?;
    let features_listener = bind(port(opts.port, 4), "feature-store stand-in").await?;
    let (proxy_port, admin_port) = (addr(&proxy_probe)?.port(), addr(&admin_probe)?.port());
    drop((proxy_probe, admin_probe));

    let dir = prepare_dir(&opts.dir)?;
    let key = Arc::new(idp::DevKey::load_or_create(&dir)?);
    let store_secret = store_secret(&dir)?;
    sealing_key(&dir)?;
    let tls = if opts.tls {
        Some(loopback_certificate(&dir)?)
    } else {
        None
    };
    let issuer = format!("http://{}", addr(&idp_listener)?);
    idp::save_issuer(&dir, &issuer)?;

    let config_path = dir.join("claimgate.toml");
    let config_text = config_text(
        (proxy_port, admin_port),
        &issuer,
        addr(&s3_listener)?,
        addr(&features_listener)?,
        tls.is_some(),
        opts.session,
    );
    std::fs::write(&config_path, config_text).map_err(|e| format!("{}: {e}", config_path.display()))?;
    let config = Arc::new(Config::load(&config_path).map_err(|e| e.to_string())?);

    let seeded = store::seed(&dir.join("data"))?;
    tokio::spawn(idp::serve(idp_listener, issuer.clone(), key.clone()));
    store::serve_s3(
        s3_listener,
        &dir.join("data"),
        &dir.join("meta"),
        STORE_ACCESS_KEY,
        &store_secret,
    )
    .await?;
    tokio::spawn(store::serve_features(
        features_listener,
        FEATURES_TOKEN.to_string(),
    ));

    let server = Server::bind(config, Arc::new(SystemClock)).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let proxy = format!("{scheme}://localhost:{}", server.local_addr().port());
    let admin = server
        .admin_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let now = SystemClock.unix();
    for (name, _, claims) in demo_identities() {
        let claims: Map<String, Value> = claims.as_object().cloned().unwrap_or_default();
        let token = key.mint(&issuer, name, &claims, 12 * 3600, now);
        idp::write_private(&dir.join("tokens").join(format!("{name}.jwt")), token.as_bytes())?;
    }
    let aws_config = write_aws_config(&dir, &proxy, tls.as_deref())?;
    print_welcome(&dir, &proxy, &admin, &issuer, seeded, tls.as_deref(), &aws_config);
    if !server.run(shutdown).await {
        return Err("the audit log could not be flushed: records were lost".into());
    }
    println!("claimgate dev: stopped (state kept in {})", dir.display());
    Ok(())
}

fn prepare_dir(dir: &Path) -> Result<PathBuf, String> {
    for sub in ["", "tokens"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let policies = dir.join("policies");
    if !policies.exists() {
        std::fs::create_dir_all(&policies).map_err(|e| format!("{}: {e}", policies.display()))?;
        let file = policies.join("ml-platform.toml");
        std::fs::write(&file, EXAMPLE_POLICIES).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(dir)
}

/// The STS sealing key: 32 random bytes, base64, made on first start and kept (sessions
/// issued before a restart stay valid).
fn sealing_key(dir: &Path) -> Result<(), String> {
    use base64::Engine;
    let path = dir.join("sealing.key");
    if path.exists() {
        return Ok(());
    }
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness".to_string())?;
    idp::write_private(
        &path,
        base64::engine::general_purpose::STANDARD.encode(b).as_bytes(),
    )
}

/// A self-signed certificate for localhost / 127.0.0.1 (`DIR/tls/cert.pem`, also the CA
/// bundle clients trust). Made on first `--tls` start and kept.
fn loopback_certificate(dir: &Path) -> Result<PathBuf, String> {
    let tls = dir.join("tls");
    let cert = tls.join("cert.pem");
    if cert.exists() && tls.join("key.pem").exists() {
        return Ok(cert);
    }
    std::fs::create_dir_all(&tls).map_err(|e| format!("{}: {e}", tls.display()))?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .map_err(|e| format!("cannot make a loopback certificate: {e}"))?;
    idp::write_private(&tls.join("key.pem"), made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(cert)
}

/// The store's secret: random on first start, then kept, like a real deployment's.
fn store_secret(dir: &Path) -> Result<String, String> {
    let path = dir.join("store.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let mut b = [0u8; 24];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness".to_string())?;
    let secret = hex::encode(b);
    idp::write_private(&path, secret.as_bytes())?;
    Ok(secret)
}

fn config_text(
    ports: (u16, u16),
    issuer: &str,
    s3: SocketAddr,
    features: SocketAddr,
    tls: bool,
    session: std::time::Duration,
) -> String {
    let tls = if tls {
        "tls = { cert = \"tls/cert.pem\", key = \"tls/key.pem\" }\n"
    } else {
        ""
    };
    let session = humantime::format_duration(session);
    format!(
        r#"# Written by `claimgate dev` at every start; edit policies/ instead, they are kept.
[server]
listen = "127.0.0.1:{proxy}"
{tls}shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:{admin}"

[[issuers]]
issuer = "{issuer}"
audiences = ["{aud}"]
min_refetch = "1s"

[sts]
enabled = true
sealing_keys = ["file:sealing.key"]
default_session = "{session}"
max_session = "12h"

[policies]
dir = "policies"

[audit]
path = "audit.log"

[[routes]]
name = "lake"
kind = "s3"
upstream = "http://{s3}"
region = "us-east-1"
credentials = {{ kind = "static", access_key_id = "{ak}", secret_access_key = "file:store.secret" }}

[[routes]]
name = "features"
kind = "http"
path_prefix = "/features/"
upstream = "http://{features}"
credentials = {{ kind = "bearer", token = "{ft}" }}
"#,
        proxy = ports.0,
        admin = ports.1,
        aud = idp::AUDIENCE,
        ak = STORE_ACCESS_KEY,
        ft = FEATURES_TOKEN,
    )
}

/// Quotes a path for pasting into a POSIX shell.
fn sh(path: &Path) -> String {
    let s = path.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The AWS profile whose `credential_process` trades alice's token at claimgate's STS, for
/// SDKs that cannot do web identity against it themselves (pyarrow's C++ SDK ignores
/// `AWS_ENDPOINT_URL_STS`; object_store refuses an http STS). Written to `DIR/aws-config`
/// on every start, since the ports and the binary's path may have changed. Returns the
/// profile text.
fn write_aws_config(dir: &Path, proxy: &str, ca: Option<&Path>) -> Result<String, String> {
    let exe = std::env::current_exe()
        .map(|p| sh(&p))
        .unwrap_or_else(|_| "claimgate".into());
    let ca_arg = ca.map(|c| format!(" --ca-file {}", sh(c))).unwrap_or_default();
    let ca_line = ca
        .map(|c| format!("ca_bundle = {}\n", c.display()))
        .unwrap_or_default();
    let profile = format!(
        "[profile claimgate]\nregion = us-east-1\nendpoint_url = {proxy}\n{ca_line}credential_process = {exe} credentials --endpoint {proxy} --role trainer --token-file {}{ca_arg}\n",
        sh(&dir.join("tokens/alice.jwt")),
    );
    let path = dir.join("aws-config");
    std::fs::write(
        &path,
        format!("# Written by `claimgate dev` at each start: the profile of alice as trainer.\n{profile}"),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(profile)
}

fn print_welcome(
    dir: &Path,
    proxy: &str,
    admin: &str,
    issuer: &str,
    seeded: bool,
    ca: Option<&Path>,
    aws_config: &str,
) {
    let d = dir.display();
    let tok = |n: &str| format!("$(cat {})", sh(&dir.join("tokens").join(format!("{n}.jwt"))));
    // The binary as it was started, so the lines paste even when it is not on PATH.
    let exe = std::env::current_exe()
        .map(|p| sh(&p))
        .unwrap_or_else(|_| "claimgate".into());
    let q = sh(dir);
    let mut out = String::new();
    out.push_str(&format!(
        "\nclaimgate dev is running (Ctrl-C to stop; state in {d}{})\n\n",
        if seeded { ", demo data seeded" } else { "" }
    ));
    out.push_str(&format!("  proxy            {proxy}\n"));
    out.push_str(&format!(
        "  metrics          {admin}/metrics   (also /healthz, /readyz)\n"
    ));
    out.push_str(&format!("  dev IdP          {issuer}\n"));
    out.push_str(&format!("  audit log        {d}/audit.log\n"));
    out.push_str(&format!(
        "  config, policies {d}/claimgate.toml, {d}/policies/\n                   (policies are yours to edit: a saved edit is in force within a second,\n                    or refused with its file:line in this log while the last good set serves)\n\n"
    ));
    out.push_str("Demo identities (tokens valid 12 h):\n");
    for (name, what, _) in demo_identities() {
        out.push_str(&format!("  {name:<6} {what:<48} {d}/tokens/{name}.jwt\n"));
    }
    out.push_str("\nAllowed: alice reads a training shard\n");
    out.push_str(&format!(
        "  curl -H \"Authorization: Bearer {}\" {proxy}/datasets/imagenet/train/0001.tar\n",
        tok("alice")
    ));
    out.push_str("Denied: alice reads personal data (403 AccessDenied, and the audit log says why)\n");
    out.push_str(&format!(
        "  curl -H \"Authorization: Bearer {}\" {proxy}/datasets/pii/users.csv\n",
        tok("alice")
    ));
    out.push_str("Feature store: alice asks for online features\n");
    out.push_str(&format!(
        "  curl -X POST -H \"Authorization: Bearer {}\" {proxy}/features/get-online-features\n",
        tok("alice")
    ));
    out.push_str(&format!(
        "\nWatch decisions:  tail -f {}\n",
        sh(&dir.join("audit.log"))
    ));
    out.push_str(&format!(
        "Mint a token:     {exe} dev token --dir {q} --sub carol --claim groups=analysts\n"
    ));
    out.push_str(&format!(
        "Explain a rule:   {exe} check --config {} --token {} s3:GetObject s3://datasets/pii/users.csv\n",
        sh(&dir.join("claimgate.toml")),
        sh(&dir.join("tokens/bob.jwt"))
    ));
    out.push_str(
        "\nAWS CLI / boto3 / s3fs as alice, with nothing but these variables (the SDK trades the token\n",
    );
    out.push_str("for short-lived credentials at claimgate's STS and refreshes them by itself):\n");
    let ca_line = ca
        .map(|c| format!("  export AWS_CA_BUNDLE={}\n", sh(c)))
        .unwrap_or_default();
    out.push_str(&format!(
        "  export AWS_WEB_IDENTITY_TOKEN_FILE={}\n  export AWS_ROLE_ARN=arn:aws:iam::000000000000:role/trainer\n  export AWS_ENDPOINT_URL_STS={proxy}\n  export AWS_ENDPOINT_URL_S3={proxy}\n  export AWS_DEFAULT_REGION=us-east-1\n{ca_line}  aws s3 ls s3://datasets/imagenet/train/\n",
        sh(&dir.join("tokens/alice.jwt"))
    ));
    out.push_str(
        "\npyarrow, Lance, s3torchconnector (SDKs that cannot reach claimgate's STS themselves; Polars and\ndelta-rs: see the README's client table) take this profile\n",
    );
    out.push_str(&format!(
        "instead: its credential_process trades the token, and runs again before expiry ({}):\n",
        dir.join("aws-config").display()
    ));
    out.push_str(&format!(
        "  export AWS_CONFIG_FILE={}\n  export AWS_PROFILE=claimgate\n",
        sh(&dir.join("aws-config"))
    ));
    for line in aws_config.lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out.push_str("\nclaimgate dev: ready\n");
    print!("{out}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// `claimgate dev token`: mints a token from the dev issuer in `dir`.
pub fn mint_token(
    dir: &Path,
    sub: &str,
    claims: &[String],
    ttl: std::time::Duration,
) -> Result<String, String> {
    let key = idp::DevKey::load(dir)?;
    let issuer = idp::saved_issuer(dir)?;
    let extra = idp::parse_claims(claims)?;
    let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    Ok(key.mint(&issuer, sub, &extra, ttl, SystemClock.unix()))
}
