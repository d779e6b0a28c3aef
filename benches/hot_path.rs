//! The per-request cost of claimgate's hot path, stage by stage, against the baselines it
//! competes with: a raw `jsonwebtoken` RS256 verify (what a first-seen token must cost at
//! least) and doing nothing but building the request.
//!
//! Fixed inputs: one RS256 key, one captured token, one GetObject request, the example
//! policy. Run: `cargo bench --bench hot_path`.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation, jwk::Jwk};
use serde_json::json;

use claimgate::classify::{RequestTarget, S3Target, classify_s3};
use claimgate::clock::{ManualClock, SharedClock};
use claimgate::config::Config;
use claimgate::identity::Authenticator;
use claimgate::identity::jwks::{KeySet, parse_key};
use claimgate::identity::jwt;
use claimgate::metrics::Metrics;
use claimgate::upstream::Router;
use claimgate::upstream::sign::sign_upstream;

const ISSUER: &str = "https://idp.example.com";
const NOW: i64 = 1_800_000_000;

const POLICY: &str = r#"
[[roles]]
name = "trainer"
members = [ { claim = "groups", contains = "ml-engineers" } ]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/imagenet/*"] },
  { actions = ["s3:PutObject"], resources = ["s3://checkpoints/${sub}/*"] },
]
deny = [ { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] } ]
"#;

struct Fixture {
    config: Arc<Config>,
    auth: Authenticator,
    router: Router,
    token: String,
    encoding_key_jwk: serde_json::Value,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(dir.path().join("policies/p.toml"), POLICY).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[issuers]]\nissuer = \"{ISSUER}\"\naudiences = [\"claimgate\"]\n\
         [[routes]]\nname = \"lake\"\nkind = \"s3\"\nupstream = \"http://127.0.0.1:9000\"\nregion = \"us-east-1\"\n\
         credentials = {{ kind = \"static\", access_key_id = \"AKIDEXAMPLE\", secret_access_key = \"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\" }}\n"
    );
    let path = dir.path().join("claimgate.toml");
    std::fs::write(&path, cfg).unwrap();
    let config = Arc::new(Config::load(&path).unwrap());

    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap()
        .serialize_pem();
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwk = serde_json::to_value(jwk).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"iss": ISSUER, "aud": "claimgate", "sub": "alice", "groups": ["ml-engineers", "staff"],
                "email": "alice@example.com", "iat": NOW - 60, "exp": NOW + 3600, "jti": "bench-1"}),
        &key,
    )
    .unwrap();

    let clock: SharedClock = Arc::new(ManualClock::at(NOW));
    let auth =
        Authenticator::new(&config.issuers, None, None, clock, Arc::new(Metrics::new()), None).unwrap();
    assert!(auth.bearer().install_keys(
        ISSUER,
        KeySet {
            keys: vec![parse_key(jwk.clone()).unwrap()]
        }
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let router = rt.block_on(async { Router::new(&config.routes, &config.limits, 1, None).unwrap() });
    Fixture {
        router,
        config,
        auth,
        token,
        encoding_key_jwk: jwk,
        _dir: dir,
        rt,
    }
}

fn get_request() -> http::request::Parts {
    let (parts, ()) = http::Request::get("/datasets/imagenet/train/0001.tar")
        .header("host", "claimgate.example.com")
        .header("user-agent", "python-requests/2.32")
        .body(())
        .unwrap()
        .into_parts();
    parts
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let now = UNIX_EPOCH + Duration::from_secs(NOW as u64);
    let route = f
        .router
        .select(Some("claimgate.example.com"), "/datasets/x")
        .unwrap()
        .clone();
    let target = S3Target::default();
    // warm the verified-token cache
    let identity = f.rt.block_on(f.auth.authenticate_token(&f.token)).unwrap();

    let caller = claimgate::upstream::credentials::Caller {
        identity: &identity,
        role: None,
    };
    let downstream = f.rt.block_on(route.downstream(&caller, None)).unwrap();

    let mut g = c.benchmark_group("stages");
    g.bench_function("baseline: build request head", |b| b.iter(get_request));
    g.bench_function("authenticate (cached token)", |b| {
        b.iter(|| f.rt.block_on(f.auth.authenticate_token(&f.token)).unwrap())
    });
    g.bench_function("classify (GetObject)", |b| {
        let parts = get_request();
        b.iter(|| classify_s3(&parts, &RequestTarget::read(&parts).unwrap(), &target).unwrap())
    });
    let head = get_request();
    let op = classify_s3(&head, &RequestTarget::read(&head).unwrap(), &target).unwrap();
    g.bench_function("authorize", |b| {
        b.iter_batched(
            || op.clone(),
            |op| f.config.policies.decide(&identity, op),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("sign (SigV4, S3 rules)", |b| {
        b.iter_batched(
            get_request,
            |mut parts| {
                let permit = f.config.policies.decide(&identity, op.clone()).outcome.unwrap();
                sign_upstream(permit, &mut parts, &route, &downstream, now).unwrap();
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // What every request pays for its trace when nothing is exported: the context read,
    // ids for four spans, and the upstream's `traceparent` written.
    let traces = claimgate::traces::Traces::off();
    g.bench_function(
        "trace context, not exported: request span + 3 stages + inject",
        |b| {
            b.iter_batched(
                get_request,
                |mut parts| {
                    let t = traces.start(&parts.headers, parts.method.as_str(), parts.uri.path());
                    drop(t.stage("authenticate"));
                    drop(t.stage("authorize"));
                    let upstream = t.stage("upstream");
                    upstream.inject(&mut parts.headers);
                    drop(upstream);
                    parts
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    g.bench_function(
        "baseline: aws-sigv4 sign_v4 (signing key derived per request)",
        |b| {
            let creds =
                aws_credential_types::Credentials::new("AKIDBENCH", "bench-secret", None, None, "bench");
            b.iter_batched(
                get_request,
                |mut parts| {
                    sign_as_sdk(&mut parts, &creds, now);
                    parts
                },
                criterion::BatchSize::SmallInput,
            )
        },
    );
    g.bench_function("baseline: SigV4 signing-key derivation alone (4 HMACs)", |b| {
        b.iter(|| claimgate::sigv4::signing_key("bench-secret", "20261129", "us-east-1", "s3"))
    });
    g.finish();

    let mut g = c.benchmark_group("hot path");
    g.bench_function("cached token: authenticate+classify+authorize+sign", |b| {
        b.iter_batched(
            get_request,
            |mut parts| {
                let id = f.rt.block_on(f.auth.authenticate_token(&f.token)).unwrap();
                let op = classify_s3(&parts, &RequestTarget::read(&parts).unwrap(), &target).unwrap();
                let permit = f.config.policies.decide(&id, op).outcome.unwrap();
                let caller = claimgate::upstream::credentials::Caller {
                    identity: &id,
                    role: permit.rules().first().map(|r| &*r.role),
                };
                let downstream = f.rt.block_on(route.downstream(&caller, None)).unwrap();
                sign_upstream(permit, &mut parts, &route, &downstream, now).unwrap();
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("first-seen RS256 token");
    let issuer = &f.config.issuers[0];
    let keys = KeySet {
        keys: vec![parse_key(f.encoding_key_jwk.clone()).unwrap()],
    };
    g.bench_function("baseline: jsonwebtoken::decode", |b| {
        let dk =
            jsonwebtoken::DecodingKey::from_jwk(&serde_json::from_value(f.encoding_key_jwk.clone()).unwrap())
                .unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&["claimgate"]);
        v.validate_exp = false;
        b.iter(|| jsonwebtoken::decode::<serde_json::Value>(&f.token, &dk, &v).unwrap())
    });
    g.bench_function("claimgate: parse+verify+claims", |b| {
        b.iter(|| {
            let u = jwt::parse_unverified(&f.token).unwrap();
            let alg = jwt::allowed_algorithm(&u.header.alg, issuer).unwrap();
            assert!(matches!(
                jwt::verify_signature(&f.token, alg, u.header.kid.as_deref(), &keys),
                jwt::SignatureCheck::Valid
            ));
            jwt::check_claims(&u.claims, issuer, NOW).unwrap()
        })
    });
    g.finish();
    session_benches(c, &f, now);
    let _ = SystemTime::now();
}

/// An SDK request signed with STS session credentials: parse the signature, open the sealed
/// session, verify the signature — what the session path adds over a cached bearer token.
fn session_benches(c: &mut Criterion, f: &Fixture, now: std::time::SystemTime) {
    use base64::Engine;
    use claimgate::identity::session::{Keyring, Session, new_credentials};
    use claimgate::identity::sigv4;
    let ring = Keyring::new(&[claimgate::secret::Secret::new(
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    )])
    .unwrap();
    let (ak, sk) = new_credentials().unwrap();
    let session = Session {
        access_key_id: ak.clone(),
        secret_access_key: sk.clone(),
        issuer: ISSUER.into(),
        subject: "alice".into(),
        token_id: "bench-1".into(),
        role: "trainer".into(),
        session_name: "bench".into(),
        claims: serde_json::json!({"sub": "alice", "groups": ["ml-engineers", "staff"], "email": "alice@example.com"})
            .as_object()
            .unwrap()
            .clone(),
        issued_at: NOW,
        expires_at: NOW + 3600,
    };
    let token = ring.seal(&session).unwrap().expose().to_string();
    let mut parts = get_request();
    let creds = aws_credential_types::Credentials::new(&ak, sk.expose(), Some(token.clone()), None, "bench");
    sign_as_sdk(&mut parts, &creds, now);
    let _ = f;
    let mut g = c.benchmark_group("sts session");
    g.bench_function("parse + unseal + verify SigV4", |b| {
        b.iter(|| {
            let claim = sigv4::parse(&parts).unwrap().unwrap();
            let s = ring
                .unseal(claim.session_token.as_ref().unwrap().expose())
                .unwrap();
            sigv4::verify(&claim, &parts, s.secret_access_key.expose(), NOW).unwrap();
            s
        })
    });
    // What a request costs once its session was opened before (identity::opened): the
    // token's digest for the lookup, then the signature checked with the scope's kept key.
    let opened = claimgate::identity::opened::Opened::new(ring.unseal(&token).unwrap());
    g.bench_function("opened session: digest + parse + verify SigV4 (kept key)", |b| {
        b.iter(|| {
            let claim = sigv4::parse(&parts).unwrap().unwrap();
            let digest = claimgate::identity::token_digest(claim.session_token.as_ref().unwrap().expose());
            sigv4::verify_keyed(&claim, &parts, NOW, &sigv4::VerifyOptions::S3, || {
                opened.signing_key(&claim.scope_date, &claim.region, &claim.service)
            })
            .unwrap();
            digest
        })
    });
    g.finish();
}

/// Signs `parts` with `aws-sigv4` under S3's rules, unsigned payload, as an SDK signs a GET.
fn sign_as_sdk(parts: &mut http::request::Parts, creds: &aws_credential_types::Credentials, now: SystemTime) {
    claimgate::upstream::sign::sign_v4(
        parts,
        &claimgate::upstream::sign::Signer {
            credentials: creds,
            region: "us-east-1",
            service: "s3",
            settings: claimgate::upstream::sign::s3_settings(),
            signed_headers: |_| true,
        },
        aws_sigv4::http_request::SignableBody::UnsignedPayload,
        now,
    )
    .unwrap();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
