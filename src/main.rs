//! The `claimgate` command: serve, validate, check.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use claimgate::clock::SystemClock;
use claimgate::config::Config;
use claimgate::model::{Access, AuthMethod, Identity, Resource};
use claimgate::server::Server;

#[derive(Parser)]
#[command(
    name = "claimgate",
    version,
    about = "Identity-enforcing reverse proxy for ML data access"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Everything on this machine: proxy + dev OIDC issuer + local S3 store + demo identities.
    #[cfg(feature = "dev")]
    Dev {
        /// State directory (signing key, data, tokens, audit log); reused across starts.
        #[arg(long, global = true, default_value = "claimgate-dev")]
        dir: PathBuf,
        /// Proxy port; the admin port, dev IdP, S3 store and feature store take the next
        /// four. 0 picks free ports.
        #[arg(long, default_value_t = 7070)]
        port: u16,
        /// Serve the proxy over HTTPS with a loopback certificate (trust DIR/tls/cert.pem).
        #[arg(long)]
        tls: bool,
        /// Default STS session length.
        #[arg(long, default_value = "1h")]
        session: String,
        #[command(subcommand)]
        command: Option<DevCommand>,
    },
    // A build without the `dev` feature still knows the word, to say why it cannot run it.
    /// Not in this build (built without the `dev` feature).
    #[cfg(not(feature = "dev"))]
    #[command(hide = true, disable_help_flag = true)]
    Dev {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<std::ffi::OsString>,
    },
    /// Trade a web identity token at claimgate's STS; print the credentials for an SDK.
    ///
    /// For SDKs that cannot do web identity against claimgate themselves (pyarrow, Lance,
    /// delta-rs, s3torchconnector): name this command as a profile's `credential_process`,
    /// and the SDK runs it again whenever the credentials near their expiry.
    Credentials(CredentialsArgs),
    /// GET a URL, exit 0 on a 2xx answer: a health check for images without a shell or curl
    /// (`claimgate probe http://127.0.0.1:9090/readyz`).
    Probe {
        /// The URL, e.g. the admin port's /healthz or /readyz.
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "3s")]
        timeout: String,
    },
    /// Check the config and policies; print every problem as file:line: reason.
    Validate {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Explain a decision: roles held, rules considered, the deciding rule.
    Check {
        /// Config file.
        #[arg(long, short)]
        config: PathBuf,
        /// A JWT file whose claims to use (the signature is not checked: this explains
        /// policy, it does not authenticate).
        #[arg(long, conflicts_with = "claims", required_unless_present = "claims")]
        token: Option<PathBuf>,
        /// Claims as a JSON object, e.g. '{"iss":"https://idp","sub":"alice","groups":["ml"]}'.
        #[arg(long)]
        claims: Option<String>,
        /// IAM action, e.g. s3:GetObject.
        action: String,
        /// Resource, e.g. s3://datasets/imagenet/train/0001.tar.
        resource: String,
    },
}

#[cfg(feature = "dev")]
#[derive(Subcommand)]
enum DevCommand {
    /// Mint a token from the dev issuer (prints it).
    Token {
        /// Subject (`sub`).
        #[arg(long)]
        sub: String,
        /// Extra claims: NAME=VALUE, NAME=A,B (a list) or NAME:=JSON. Repeatable.
        #[arg(long)]
        claim: Vec<String>,
        /// Lifetime, e.g. 15m, 12h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

/// Exit code for a config that cannot run (BSD EX_USAGE, as linkerd uses).
const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLAIMGATE_LOG")
                // s3s (the dev store) logs every connection cut at shutdown as an error.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off")),
        )
        .init();
    match cli.command {
        Command::Serve { config } => serve(config),
        Command::Validate { config } => validate(config),
        Command::Probe { url, timeout } => probe(&url, &timeout),
        Command::Credentials(args) => credentials(args),
        #[cfg(feature = "dev")]
        Command::Dev {
            dir,
            port,
            tls,
            session,
            command,
        } => dev(dir, port, tls, &session, command),
        #[cfg(not(feature = "dev"))]
        Command::Dev { .. } => {
            eprintln!(
                "claimgate dev: this build has no `dev` feature (it was built with \
                 --no-default-features, which leaves out the dev IdP and S3 store); \
                 build with default features for it: `cargo run -- dev`"
            );
            ExitCode::from(EX_CONFIG) // EX_USAGE
        }
        Command::Check {
            config,
            token,
            claims,
            action,
            resource,
        } => check(config, token, claims, action, resource),
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        eprintln!("{} problem(s) in {}", e.problems.len(), path.display());
        ExitCode::from(EX_CONFIG)
    })
}

fn serve(path: PathBuf) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // From here on SIGHUP never takes its default action (terminate), even before the
    // server is up: a reload sent during start-up is simply a no-op.
    #[cfg(unix)]
    let _early_hangup = runtime
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok() });
    let config = match load(&path) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let server = match Server::bind(config, Arc::new(SystemClock)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(listen = %server.local_addr(), admin = ?server.admin_addr(), "claimgate serving");
        if server.live().current().policies.is_global_shadow() {
            tracing::warn!("[policies] mode = \"shadow\": NOTHING IS ENFORCED; decisions are only audited");
        }
        if server.run(shutdown_signal()).await {
            tracing::info!("claimgate stopped");
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining in-flight requests");
}

#[cfg(feature = "dev")]
fn dev(dir: PathBuf, port: u16, tls: bool, session: &str, command: Option<DevCommand>) -> ExitCode {
    if let Some(DevCommand::Token { sub, claim, ttl }) = command {
        let ttl = match humantime::parse_duration(&ttl) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("--ttl {ttl:?}: {e}");
                return ExitCode::from(EX_CONFIG);
            }
        };
        return match claimgate::dev::mint_token(&dir, &sub, &claim, ttl) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let session = match humantime::parse_duration(session) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("--session {session:?}: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let opts = claimgate::dev::DevOptions {
        dir,
        port,
        tls,
        session,
    };
    match runtime.block_on(claimgate::dev::run(opts, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claimgate dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `claimgate probe`: one line on stderr when the answer is not 2xx.
fn probe(url: &str, timeout: &str) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("claimgate probe: {url}: {msg}");
        ExitCode::FAILURE
    };
    let timeout = match humantime::parse_duration(timeout) {
        Ok(t) => t,
        Err(e) => return fail(format!("--timeout: {e}")),
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return fail(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };
    runtime.block_on(async move {
        let connector = match claimgate::net::connector(None, timeout) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let client = claimgate::net::client::<http_body_util::Empty<bytes::Bytes>>(connector);
        let req = match http::Request::get(uri).body(http_body_util::Empty::new()) {
            Ok(r) => r,
            Err(e) => return fail(e.to_string()),
        };
        match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => ExitCode::SUCCESS,
            Ok(Ok(resp)) => fail(format!("answered {}", resp.status())),
            Ok(Err(e)) => fail(claimgate::net::error_chain(&e)),
            Err(_) => fail(format!("no answer within {timeout:?}")),
        }
    })
}

/// `claimgate credentials`'s arguments.
#[derive(clap::Args)]
struct CredentialsArgs {
    /// claimgate's URL (its STS answers on the proxy port).
    #[arg(long, env = "AWS_ENDPOINT_URL_STS")]
    endpoint: String,
    /// A claimgate role name (`trainer`) or a role ARN.
    #[arg(long, env = "AWS_ROLE_ARN")]
    role: String,
    /// The file holding the OIDC token; read afresh on every run, so a rotated token
    /// (a Kubernetes projected token, say) is picked up.
    #[arg(long, env = "AWS_WEB_IDENTITY_TOKEN_FILE")]
    token_file: PathBuf,
    /// `process`: AWS credential_process JSON; `env`: `export` lines for a shell.
    #[arg(long, value_enum, default_value_t = claimgate::credential_process::Format::Process)]
    format: claimgate::credential_process::Format,
    /// Session length (e.g. 1h); default: the proxy's `[sts] default_session`.
    #[arg(long)]
    duration: Option<String>,
    /// `RoleSessionName`: named in the session's assumed-role ARN in the STS answer.
    #[arg(long, default_value = "claimgate-credentials")]
    session_name: String,
    /// An extra CA to trust for an https endpoint (e.g. `claimgate dev --tls`'s).
    #[arg(long, env = "AWS_CA_BUNDLE")]
    ca_file: Option<PathBuf>,
}

/// `claimgate credentials`. Exit 1 with one line on stderr when no credentials came: the
/// SDK running it shows that line to the user.
fn credentials(a: CredentialsArgs) -> ExitCode {
    use claimgate::credential_process as cp;
    let fail = |msg: String| {
        eprintln!("claimgate credentials: {msg}");
        ExitCode::FAILURE
    };
    let duration = match a.duration.as_deref().map(humantime::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return fail(format!("--duration: {e}")),
    };
    let token = match std::fs::read_to_string(&a.token_file) {
        Ok(t) if !t.trim().is_empty() => claimgate::secret::Secret::new(t.trim()),
        Ok(_) => return fail(format!("{}: the token file is empty", a.token_file.display())),
        Err(e) => return fail(format!("{}: {e}", a.token_file.display())),
    };
    let trade = cp::Trade {
        endpoint: &a.endpoint,
        role: &a.role,
        token,
        session_name: &a.session_name,
        duration,
        ca_file: a.ca_file.as_deref().filter(|p| !p.as_os_str().is_empty()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };
    match runtime.block_on(cp::trade(&trade)) {
        Ok(issued) => {
            // The SDK reading our stdout may be gone: say so, never panic.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            match out
                .write_all(cp::render(&issued, a.format).as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(format!("cannot write the credentials: {e}")),
            }
        }
        Err(e) => fail(e.to_string()),
    }
}

fn validate(path: PathBuf) -> ExitCode {
    match Config::load(&path) {
        Ok(c) => {
            println!(
                "{}: ok ({} issuer(s), {} route(s), {} role(s) from {})",
                path.display(),
                c.issuers.len(),
                c.routes.len(),
                c.policies.role_count(),
                c.policies_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{} problem(s)", e.problems.len());
            ExitCode::FAILURE
        }
    }
}

fn check(
    path: PathBuf,
    token: Option<PathBuf>,
    claims: Option<String>,
    action: String,
    resource: String,
) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let claims = match (token, claims) {
        (Some(file), _) => std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|t| {
                claimgate::identity::jwt::parse_unverified(t.trim())
                    .map(|u| u.claims)
                    .map_err(|e| e.to_string())
            }),
        (None, Some(json)) => serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&json)
            .map_err(|e| format!("--claims is not a JSON object: {e}")),
        (None, None) => Err("give --token FILE or --claims JSON".into()),
    };
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let get = |k: &str| {
        claims
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let identity = Identity {
        issuer: get("iss"),
        subject: get("sub"),
        method: AuthMethod::Bearer,
        token_id: get("jti"),
        claims: claims.clone(),
    };
    let explanation = config
        .policies
        .explain(&identity, &[Access::new(action, Resource::parse(&resource))]);
    print!("{explanation}");
    // Exit status scripts can test: 0 allowed, 2 denied.
    if explanation.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
