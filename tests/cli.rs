//! The `claimgate` binary as users run it.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::process::Command;

fn claimgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claimgate"))
}

const POLICY: &str = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [ { actions = ["s3:GetObject"], resources = ["s3://datasets/*"] } ]
deny = [ { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] } ]
"#;

/// `claimgate <command> --config <config>`, run to the end.
fn run(command: &str, config: &std::path::Path) -> std::process::Output {
    claimgate()
        .args([command, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn validate(config: &std::path::Path) -> std::process::Output {
    run("validate", config)
}

fn setup(config: &str, policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/ml.toml"), policy).unwrap();
    std::fs::write(dir.path().join("claimgate.toml"), config).unwrap();
    dir
}

const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "https://idp.example.com"
audiences = ["claimgate"]

[[routes]]
name = "lake"
kind = "s3"
upstream = "http://127.0.0.1:9000"
region = "us-east-1"
credentials = { kind = "static", access_key_id = "AK", secret_access_key = "SK" }
"#;

#[test]
fn validate_accepts_a_good_config() {
    let dir = setup(CONFIG, POLICY);
    let out = validate(&dir.path().join("claimgate.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 role(s)"));
}

#[test]
fn validate_lists_every_problem_with_file_and_line_and_serve_refuses_to_start() {
    let bad = CONFIG.replace(
        "region = \"us-east-1\"",
        "region = \"us-east-1\"\nregoin = \"typo\"",
    );
    let dir = setup(
        &bad,
        &POLICY.replace("s3:GetObject\"]", "s3:GetObject\"], resource = [\"x\"]"),
    );
    let cfg = dir.path().join("claimgate.toml");
    let out = validate(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("claimgate.toml:13:"), "{err}");
    assert!(err.contains("regoin"), "{err}");
    // the config typo does not hide the policy's own problem
    assert!(err.contains("ml.toml:"), "{err}");

    let good_config_bad_policy = setup(CONFIG, &POLICY.replace("contains", "containz"));
    let out = validate(&good_config_bad_policy.path().join("claimgate.toml"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ml.toml:4:"), "{err}");

    let out = run("serve", &cfg);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a bad config must stop serve before it binds"
    );
}

#[test]
fn check_explains_the_decision() {
    let dir = setup(CONFIG, POLICY);
    let cfg = dir.path().join("claimgate.toml");
    let claims = r#"{"iss":"https://idp.example.com","sub":"alice","groups":["ml-engineers"]}"#;
    let out = claimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .args(["--claims", claims, "s3:GetObject", "s3://datasets/imagenet/1.tar"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("trainer"), "{text}");
    assert!(text.contains("allow[0]"), "{text}");

    let out = claimgate()
        .args(["check", "--config"])
        .arg(&cfg)
        .args(["--claims", claims, "s3:GetObject", "s3://datasets/pii/users.csv"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("deny[0]"), "{text}");
}

#[test]
fn the_example_policies_validate_and_explain() {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let config = format!(
        "{CONFIG}\n[policies]\ndir = \"{}\"\n\n[[routes]]\nname = \"features\"\nkind = \"http\"\npath_prefix = \"/features/\"\nupstream = \"http://127.0.0.1:6566\"\ncredentials = {{ kind = \"bearer\", token = \"t\" }}\n",
        policies.display()
    );
    let dir = setup(&config, POLICY);
    let cfg = dir.path().join("claimgate.toml");
    let out = validate(&cfg);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let check = |claims: &str, action: &str, resource: &str| {
        claimgate()
            .args(["check", "--config"])
            .arg(&cfg)
            .args(["--claims", claims, action, resource])
            .output()
            .unwrap()
            .status
            .code()
    };
    let alice = r#"{"iss":"https://idp.example.com","sub":"alice","groups":["ml-engineers"]}"#;
    assert_eq!(
        check(alice, "s3:PutObject", "s3://checkpoints/alice/step-1.pt"),
        Some(0)
    );
    assert_eq!(
        check(alice, "s3:PutObject", "s3://checkpoints/bob/step-1.pt"),
        Some(2)
    );
    assert_eq!(
        check(alice, "s3:GetObject", "s3://datasets/pii/users.csv"),
        Some(2)
    );
    let priv_ = r#"{"iss":"https://idp.example.com","sub":"pat","groups":["privacy"],"email_verified":true}"#;
    assert_eq!(
        check(priv_, "s3:GetObject", "s3://datasets/pii/users.csv"),
        Some(0)
    );
}

#[test]
fn a_bad_tls_pem_is_a_config_problem_not_a_failed_start() {
    let config = CONFIG.replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }",
    );
    let dir = setup(&config, POLICY);
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cfg = dir.path().join("claimgate.toml");
    let out = validate(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("claimgate.toml:3:"), "{err}");
    assert!(err.contains("cert.pem"), "{err}");
    let out = run("serve", &cfg);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A one-shot HTTP server on loopback answering every request with `status`.
fn answer_with(status: &'static str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1) {
            use std::io::{Read, Write};
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let body = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(body.as_bytes());
        }
    });
    format!("http://{addr}/readyz")
}

#[test]
fn probe_exits_zero_only_on_a_2xx_answer() {
    let ok = claimgate()
        .args(["probe", &answer_with("200 OK")])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let not_ready = claimgate()
        .args(["probe", &answer_with("503 Service Unavailable")])
        .output()
        .unwrap();
    assert_eq!(not_ready.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_ready.stderr).contains("answered 503"));
    // nothing listening
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = claimgate()
        .args(["probe", "--timeout", "2s", &format!("http://{closed}/healthz")])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
}
