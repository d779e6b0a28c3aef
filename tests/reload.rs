//! Hot reload: policy edits, broken files, certificate renewal and key withdrawal taken
//! while serving — by file change, `POST /-/reload` and SIGHUP — without failing a request.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::*;

/// The policy with one more deny rule: `datasets/<prefix>/*` is off limits.
fn policy_denying(prefix: &str) -> String {
    POLICY.replace(
        "deny = [\n  { actions = [\"s3:*\"], resources = [\"s3://datasets/pii/*\"] },",
        &format!(
            "deny = [\n  {{ actions = [\"s3:*\"], resources = [\"s3://datasets/pii/*\"] }},\n  {{ actions = [\"s3:*\"], resources = [\"s3://datasets/{prefix}/*\"] }},"
        ),
    )
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns how long it took.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {within:?}");
}

async fn admin_text(c: &Client, url: &str) -> (u16, String) {
    let r = c.get(url, None).await;
    (r.status, r.text())
}

/// Files that arrive apart: a config naming a key file that is not there yet (on Kubernetes,
/// a ConfigMap edit that reaches the pod before the Secret key it names) is refused, and put
/// in force by itself once the file appears, with no signal and no other edit.
#[tokio::test]
async fn a_set_refused_for_a_missing_file_is_loaded_when_the_file_arrives() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let dir = p.config_dir().to_path_buf();
    let config = std::fs::read_to_string(dir.join("claimgate.toml")).unwrap();
    assert!(config.contains("file:upstream.secret"), "{config}");
    std::fs::write(
        dir.join("claimgate.toml"),
        config.replace("file:upstream.secret", "file:upstream-next.secret"),
    )
    .unwrap();
    until(
        Duration::from_secs(5),
        "the set naming a missing file was refused",
        || async {
            metric(
                &p.metrics().await,
                "claimgate_reload_total",
                &[("result", "error")],
            ) >= 1.0
        },
    )
    .await;
    assert_eq!(
        metric(&p.metrics().await, "claimgate_config_generation", &[]),
        1.0
    );

    // The key arrives: the refused set is tried again and goes into force.
    std::fs::write(dir.join("upstream-next.secret"), format!("{S3_SECRET_KEY}\n")).unwrap();
    until(
        Duration::from_secs(5),
        "the set loaded once its file arrived",
        || async { metric(&p.metrics().await, "claimgate_config_generation", &[]) == 2.0 },
    )
    .await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "claimgate_config_last_reload_successful", &[]), 1.0);
    assert_eq!(
        metric(&m, "claimgate_reload_total", &[("result", "error")]),
        1.0,
        "refused once, not retried in a loop"
    );
    // and it signs with the key it read
    let put = p
        .client
        .request(
            "PUT",
            &p.url("/datasets/arrived"),
            Some(&t),
            Bytes::from_static(b"x"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
}

/// A policy edit is in force within a second; a broken policy file is refused with its
/// file and line, counted, and the set in force keeps serving; removing it reloads again.
#[tokio::test]
async fn a_policy_edit_applies_at_once_and_a_broken_file_is_refused() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;
    for key in ["a/x", "b/x"] {
        let put = c
            .request(
                "PUT",
                &p.url(&format!("/datasets/{key}")),
                Some(&t),
                Bytes::from_static(b"x"),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    let (status, ready) = admin_text(c, &format!("{}/readyz", p.admin)).await;
    assert_eq!(status, 200);
    assert!(ready.contains("config generation 1"), "{ready}");

    // An editor saves the file: the deny rule is enforced within a second.
    std::fs::write(p.config_dir().join("policies/test.toml"), policy_denying("a")).unwrap();
    let took = until(Duration::from_secs(2), "the deny rule took effect", || async {
        c.get(&p.url("/datasets/a/x"), Some(&t)).await.status == 403
    })
    .await;
    eprintln!("policy edit in force after {took:?}");
    assert_eq!(c.get(&p.url("/datasets/b/x"), Some(&t)).await.status, 200);
    let (_, ready) = admin_text(c, &format!("{}/readyz", p.admin)).await;
    assert!(ready.contains("config generation 2"), "{ready}");

    // A broken file is dropped in: refused, counted, nothing changes.
    std::fs::write(
        p.config_dir().join("policies/broken.toml"),
        "[[roles]]\nname = \"x\"\nmembers = [ { claim = \"groups\", containz = \"a\" } ]\n",
    )
    .unwrap();
    until(Duration::from_secs(3), "the broken file was refused", || async {
        metric(
            &p.metrics().await,
            "claimgate_reload_total",
            &[("result", "error")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&p.metrics().await, "claimgate_config_last_reload_successful", &[]),
        0.0
    );
    assert_eq!(c.get(&p.url("/datasets/a/x"), Some(&t)).await.status, 403);
    assert_eq!(c.get(&p.url("/datasets/b/x"), Some(&t)).await.status, 200);
    let (_, ready) = admin_text(c, &format!("{}/readyz", p.admin)).await;
    assert!(ready.contains("config generation 2"), "{ready}");
    // The admin endpoint answers with the problems, each with file and line.
    let r = c
        .request("POST", &format!("{}/-/reload", p.admin), None, Bytes::new())
        .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("broken.toml:3:"), "{}", r.text());
    assert!(r.text().contains("keeps serving"), "{}", r.text());
    let get = c
        .request("GET", &format!("{}/-/reload", p.admin), None, Bytes::new())
        .await;
    assert_eq!(get.status, 405);

    // Fixed: the next change reloads.
    std::fs::remove_file(p.config_dir().join("policies/broken.toml")).unwrap();
    until(Duration::from_secs(3), "the fixed set was loaded", || async {
        admin_text(c, &format!("{}/readyz", p.admin))
            .await
            .1
            .contains("config generation 3")
    })
    .await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "claimgate_config_generation", &[]), 3.0);
    assert_eq!(metric(&m, "claimgate_config_last_reload_successful", &[]), 1.0);
    assert!(metric(&m, "claimgate_reload_total", &[("result", "success")]) >= 2.0);
    let r = c
        .request("POST", &format!("{}/-/reload", p.admin), None, Bytes::new())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("config generation 4"), "{}", r.text());
}

/// Thousands of allowed requests on several connections while a deny rule is added, a
/// broken file is dropped in and the TLS certificate is replaced: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_that_should_pass() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).tls().start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let old_ca = p.ca_pem.clone().unwrap();
    let (new_cert, new_key) = self_signed();
    // The load's clients trust both certificates, as clients do across a renewal.
    let both = Client::new(Some(&format!("{old_ca}{new_cert}")));
    let put = both
        .request(
            "PUT",
            &p.url("/datasets/ok/object"),
            Some(&t),
            Bytes::from_static(b"payload"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());

    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    const PER_TASK: usize = 750;
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, url, t) = (both.clone(), p.url("/datasets/ok/object"), t.clone());
        let (done, ok, failed) = (done.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while n < PER_TASK || !done.load(Ordering::SeqCst) {
                let r = c.get(&url, Some(&t)).await;
                if r.status == 200 && &r.body[..] == b"payload" {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed under reload: {} {}", r.status, r.text());
                }
                n += 1;
            }
        }));
    }

    // 1. a deny rule for another prefix
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(
        p.config_dir().join("policies/test.toml"),
        policy_denying("blocked"),
    )
    .unwrap();
    let took = until(Duration::from_secs(2), "the deny rule took effect", || async {
        both.get(&p.url("/datasets/blocked/x"), Some(&t)).await.status == 403
    })
    .await;
    eprintln!("deny rule in force after {took:?} under load");
    // 2. a broken policy file
    std::fs::write(p.config_dir().join("policies/zz-broken.toml"), "[[roles]\n").unwrap();
    until(Duration::from_secs(3), "the broken file was refused", || async {
        metric(
            &p.metrics().await,
            "claimgate_reload_total",
            &[("result", "error")],
        ) >= 1.0
    })
    .await;
    std::fs::remove_file(p.config_dir().join("policies/zz-broken.toml")).unwrap();
    // 3. the certificate renewed (written as cert-manager does: new files, renamed in)
    std::fs::write(p.config_dir().join("tls.crt.new"), &new_cert).unwrap();
    std::fs::write(p.config_dir().join("tls.key.new"), &new_key).unwrap();
    std::fs::rename(p.config_dir().join("tls.key.new"), p.config_dir().join("tls.key")).unwrap();
    std::fs::rename(p.config_dir().join("tls.crt.new"), p.config_dir().join("tls.crt")).unwrap();
    let only_new = Client::new(Some(&new_cert));
    until(
        Duration::from_secs(5),
        "new handshakes use the new certificate",
        || {
            let (c, url, t) = (only_new.clone(), p.url("/datasets/ok/object"), t.clone());
            async move {
                // A handshake with the old certificate fails in the client: count it as "not yet".
                tokio::spawn(async move { c.get(&url, Some(&t)).await.status == 200 })
                    .await
                    .unwrap_or(false)
            }
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{ok} requests passed, {failed} failed, across three reload events");
    assert!(ok >= 4 * PER_TASK);
    assert_eq!(failed, 0);
    // The old certificate is no longer offered to new connections.
    let only_old = Client::new(Some(&old_ca));
    let (url, t2) = (p.url("/datasets/ok/object"), t.clone());
    let old = tokio::spawn(async move { only_old.get(&url, Some(&t2)).await.status }).await;
    assert!(
        old.is_err(),
        "a client trusting only the old certificate still connected"
    );
}

/// SIGHUP reloads and never stops the process: the real binary takes several, applies a
/// policy edit on one, and still drains cleanly on SIGTERM.
#[tokio::test]
async fn sighup_reloads_and_never_stops_the_process() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let mut p = proxy(&idp, &s3).spawn().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let put = p
        .client
        .request("PUT", &p.url("/datasets/a/x"), Some(&t), Bytes::from_static(b"x"))
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    for _ in 0..3 {
        p.signal("HUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(p.running(), "SIGHUP stopped claimgate:\n{}", p.stderr());
    }
    let c = p.client.clone();
    let admin = format!("{}/readyz", p.admin);
    until(Duration::from_secs(3), "three reloads", || async {
        admin_text(&c, &admin).await.1.contains("config generation 4")
    })
    .await;
    assert_eq!(p.client.get(&p.url("/datasets/a/x"), Some(&t)).await.status, 200);

    // An edit applied by SIGHUP (the watcher may get there first: either way, in force).
    std::fs::write(p.config_dir().join("policies/test.toml"), policy_denying("a")).unwrap();
    p.signal("HUP");
    until(Duration::from_secs(2), "the deny rule took effect", || async {
        c.get(&p.url("/datasets/a/x"), Some(&t)).await.status == 403
    })
    .await;
    assert!(p.stderr().contains("config reloaded"), "{}", p.stderr());
    assert!(p.running());
    p.signal("TERM");
    let status = p
        .wait(Duration::from_secs(20))
        .expect("claimgate did not stop on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", p.stderr());
}

/// A key withdrawn from the issuer's JWKS stops admitting tokens it signed within one
/// refresh, even tokens verified (and cached) before; tokens of the remaining key pass.
#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_is_refused_within_one_refresh() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("refresh = \"1s\"\nmin_refetch = \"1s\"")
        .start()
        .await;
    let claims = idp.claims("alice", &["ml-engineers"]);
    let by_ec = idp.key("ec-1").sign(&claims);
    let by_rsa = idp.key("rsa-1").sign(&claims);
    let c = &p.client;
    let url = p.url("/datasets?list-type=2");
    assert_eq!(c.get(&url, Some(&by_ec)).await.status, 200);
    assert_eq!(c.get(&url, Some(&by_ec)).await.status, 200, "cached verification");

    idp.publish(vec![idp.key("rsa-1")]);
    let took = until(
        Duration::from_secs(5),
        "the withdrawn key was refused",
        || async { c.get(&url, Some(&by_ec)).await.status != 200 },
    )
    .await;
    eprintln!("withdrawn key refused after {took:?} (refresh every 1s)");
    let refused = c.get(&url, Some(&by_ec)).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.s3_code(), "InvalidToken");
    let before = s3.requests();
    assert_eq!(c.get(&url, Some(&by_ec)).await.status, 400);
    assert_eq!(
        s3.requests(),
        before,
        "a request with a withdrawn key reached the store"
    );
    assert_eq!(c.get(&url, Some(&by_rsa)).await.status, 200);
    let last = p
        .audit(1)
        .await
        .into_iter()
        .rev()
        .find(|r| r["status"] == 400)
        .unwrap();
    assert_eq!(last["reason"], "unknown_key", "{last}");
}

/// A `jti` revocation names the issuer that minted the token: the same `jti` from another
/// trusted issuer is another token. An edit of the list is in force within a second.
#[tokio::test]
async fn jti_revocations_are_issuer_qualified_and_reloaded() {
    let idp = TestIdp::start().await;
    let other = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let entry = |issuer: &str| {
        format!("[[revoked]]\njti = \"shared-jti\"\nissuer = \"{issuer}\"\nreason = \"leaked\"\n")
    };
    let p = proxy(&idp, &s3)
        .issuer(&other.issuer)
        .files(&[("revoked.toml", &entry(&idp.issuer))])
        .extra("[revocations]\nfile = \"revoked.toml\"\n")
        .start()
        .await;
    let token = |from: &TestIdp| {
        let mut claims = from.claims("alice", &["ml-engineers"]);
        claims["jti"] = "shared-jti".into();
        from.key("rsa-1").sign(&claims)
    };
    let (mine, theirs) = (token(&idp), token(&other));
    let c = &p.client;
    let url = p.url("/datasets?list-type=2");
    let before = s3.requests();
    let r = c.get(&url, Some(&mine)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(s3.requests(), before);
    let record = p.audit(1).await.pop().unwrap();
    assert_eq!(record["reason"], "revoked", "{record}");
    assert!(record["detail"].as_str().unwrap().contains("leaked"), "{record}");
    assert_eq!(c.get(&url, Some(&theirs)).await.status, 200);

    // Now the other issuer's token is revoked too, by an edit of the list.
    let both = format!("{}\n{}", entry(&idp.issuer), entry(&other.issuer));
    std::fs::write(p.config_dir().join("revoked.toml"), both).unwrap();
    until(Duration::from_secs(2), "the edited list took effect", || async {
        c.get(&url, Some(&theirs)).await.status == 403
    })
    .await;
    // A list that does not parse is refused whole: both entries stay in force.
    std::fs::write(p.config_dir().join("revoked.toml"), "[[revoked]]\njti = \"x\"\n").unwrap();
    until(Duration::from_secs(3), "the bad list was refused", || async {
        metric(
            &p.metrics().await,
            "claimgate_reload_total",
            &[("result", "error")],
        ) >= 1.0
    })
    .await;
    assert_eq!(c.get(&url, Some(&mine)).await.status, 403);
    assert_eq!(c.get(&url, Some(&theirs)).await.status, 403);
}

/// Reloads, however frequent, never postpone the issuer key refresh: with a reload every
/// 300 ms a withdrawn key is still refused within a few refresh periods.
#[tokio::test]
async fn frequent_reloads_do_not_starve_the_key_refresh() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .issuer_lines("refresh = \"1s\"\nmin_refetch = \"1s\"")
        .start()
        .await;
    let by_ec = idp.key("ec-1").sign(&idp.claims("alice", &["ml-engineers"]));
    let c = p.client.clone();
    let url = p.url("/datasets?list-type=2");
    assert_eq!(c.get(&url, Some(&by_ec)).await.status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let reloader = {
        let (c, admin, stop) = (c.clone(), format!("{}/-/reload", p.admin), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = c.request("POST", &admin, None, Bytes::new()).await;
                assert_eq!(r.status, 200, "{}", r.text());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    idp.publish(vec![idp.key("rsa-1")]);
    let took = until(
        Duration::from_secs(6),
        "the withdrawn key was refused",
        || async { c.get(&url, Some(&by_ec)).await.status == 400 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    reloader.await.unwrap();
    eprintln!("withdrawn key refused after {took:?} with a reload every 300 ms");
}

/// A download that started before a deny rule finishes whole under the set it started
/// with; a new request for the same object is refused.
#[tokio::test]
async fn an_in_flight_download_finishes_under_the_set_it_started_with() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    const LEN: usize = 16 << 20;
    std::fs::create_dir_all(s3.path("datasets", "a")).unwrap();
    std::fs::write(s3.path("datasets", "a/big.bin"), vec![7u8; LEN]).unwrap();
    let mut conn = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    conn.write_all(
        format!("GET /datasets/a/big.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    let n = conn.read(&mut got).await.unwrap();
    got.truncate(n);
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    std::fs::write(p.config_dir().join("policies/test.toml"), policy_denying("a")).unwrap();
    until(Duration::from_secs(2), "the deny rule took effect", || async {
        p.client.get(&p.url("/datasets/a/big.bin"), Some(&t)).await.status == 403
    })
    .await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    got.extend_from_slice(&rest);
    let body = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - body, LEN, "the in-flight download was cut short");
    let first = p
        .audit(1)
        .await
        .into_iter()
        .find(|r| r["status"] == 200 && r["bytes_out"] == LEN)
        .unwrap();
    assert!(first.get("incomplete").is_none(), "{first}");
}

/// A certificate renewal reaches new handshakes; a connection opened before it keeps its
/// session (and its certificate) and goes on serving requests.
#[tokio::test]
async fn an_open_connection_keeps_serving_across_a_certificate_renewal() {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).tls().start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let old_ca = p.ca_pem.clone().unwrap();
    let (new_cert, new_key) = self_signed();
    let mut roots = rustls::RootCertStore::empty();
    for pem in [&old_ca, &new_cert] {
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let presented = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let before = presented(&tls);
    let request =
        format!("GET /datasets?list-type=2 HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\n\r\n");
    async fn answer(
        tls: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
        request: &str,
    ) -> String {
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = tls.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
    assert!(answer(&mut tls, &request).await.starts_with("HTTP/1.1 200"));

    std::fs::write(p.config_dir().join("tls.key"), &new_key).unwrap();
    std::fs::write(p.config_dir().join("tls.crt"), &new_cert).unwrap();
    let only_new = Client::new(Some(&new_cert));
    until(
        Duration::from_secs(5),
        "new handshakes use the new certificate",
        || {
            let (c, url, t) = (only_new.clone(), p.url("/datasets?list-type=2"), t.clone());
            async move {
                tokio::spawn(async move { c.get(&url, Some(&t)).await.status == 200 })
                    .await
                    .unwrap_or(false)
            }
        },
    )
    .await;
    // The connection opened before the renewal still serves, with the certificate it had.
    assert!(answer(&mut tls, &request).await.starts_with("HTTP/1.1 200"));
    assert_eq!(presented(&tls), before);
    assert_ne!(
        before.as_ref(),
        rustls_pki_types::CertificateDer::from_pem_slice(new_cert.as_bytes())
            .unwrap()
            .as_ref()
    );
}

/// What needs a new socket waits for a restart and says so; switching TLS on is refused
/// (clients would meet the wrong protocol); everything else in the config file applies.
#[tokio::test]
async fn listener_changes_wait_for_a_restart_and_tls_cannot_be_switched() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;
    let path = p.config_dir().join("claimgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = || async {
        c.request("POST", &format!("{}/-/reload", p.admin), None, Bytes::new())
            .await
    };

    // A new listen address and verbose_denials = false, together: the second applies.
    let edited = original.replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:1\"\nverbose_denials = false\n",
        1,
    );
    std::fs::write(&path, &edited).unwrap();
    let r = reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains("not applied until restart: [server] listen changed"),
        "{}",
        r.text()
    );
    let denied = c.get(&p.url("/datasets/pii/x"), Some(&t)).await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.text().contains("<Message>Access Denied</Message>"),
        "{}",
        denied.text()
    );

    // TLS switched on: refused whole, with the reason.
    let (cert, key) = self_signed();
    std::fs::write(p.config_dir().join("new.crt"), cert).unwrap();
    std::fs::write(p.config_dir().join("new.key"), key).unwrap();
    let tls = original.replacen(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\ntls = { cert = \"new.crt\", key = \"new.key\" }\n",
        1,
    );
    std::fs::write(&path, tls).unwrap();
    let r = reload().await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("tls was switched on or off"), "{}", r.text());
    // still plain HTTP, still the last good set (terse denials)
    let denied = c.get(&p.url("/datasets/pii/x"), Some(&t)).await;
    assert!(
        denied.text().contains("<Message>Access Denied</Message>"),
        "{}",
        denied.text()
    );
}
