//! `claimgate dev` as a newcomer runs it: a subprocess on free ports, driven by what it
//! prints and the token files it writes.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use support::{Client, metric};

struct Dev {
    child: Child,
    output: Vec<String>,
    proxy: String,
    metrics: String,
}

fn start(dir: &Path) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(["dev", "--port", "0", "--dir"])
        .arg(dir)
        .env("CLAIMGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut output = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line == "claimgate dev: ready";
        output.push(line);
        if done {
            break;
        }
    }
    // keep draining so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    let field = |name: &str| {
        output
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", output.join("\n")))
    };
    let proxy = field("proxy");
    let metrics = field("metrics");
    Dev {
        child,
        proxy,
        metrics,
        output,
    }
}

fn interrupt(mut dev: Dev) -> std::process::ExitStatus {
    let pid = dev.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    for _ in 0..100 {
        if let Some(status) = dev.child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    dev.child.kill().unwrap();
    panic!("claimgate dev did not stop on SIGINT");
}

fn token(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("tokens").join(format!("{name}.jwt"))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_sees_an_allowed_and_a_denied_access_land_in_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let dev = start(&dir);
    let text = dev.output.join("\n");
    for needle in [
        "Allowed:",
        "Denied:",
        "audit.log",
        "/metrics",
        "claimgate dev token",
    ] {
        assert!(
            text.contains(needle),
            "the welcome text lacks {needle:?}:\n{text}"
        );
    }
    // the printed curl lines point at this proxy and these token files
    assert!(text.contains(&format!("{}/datasets/imagenet/train/0001.tar", dev.proxy)));
    assert!(text.contains(&format!(
        "{}/tokens/alice.jwt",
        dir.canonicalize().unwrap().display()
    )));

    let client = Client::new(None);
    let alice = token(&dir, "alice");
    let allowed = client
        .get(
            &format!("{}/datasets/imagenet/train/0001.tar", dev.proxy),
            Some(&alice),
        )
        .await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(&allowed.body[..], b"demo training shard 0001\n");
    let denied = client
        .get(&format!("{}/datasets/pii/users.csv", dev.proxy), Some(&alice))
        .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.s3_code(), "AccessDenied");
    // the other demo identities hold the roles the welcome text promises
    let bob = token(&dir, "bob");
    assert_eq!(
        client
            .get(&format!("{}/datasets/curated/sales.csv", dev.proxy), Some(&bob))
            .await
            .status,
        200
    );
    assert_eq!(
        client
            .get(
                &format!("{}/datasets/imagenet/train/0001.tar", dev.proxy),
                Some(&bob)
            )
            .await
            .status,
        403
    );
    let pat = token(&dir, "pat");
    assert_eq!(
        client
            .get(&format!("{}/datasets/pii/users.csv", dev.proxy), Some(&pat))
            .await
            .status,
        200
    );
    let ci = token(&dir, "ci");
    let put = client
        .request(
            "PUT",
            &format!("{}/models/ci/resnet.onnx", dev.proxy),
            Some(&ci),
            Bytes::from_static(b"onnx"),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        std::fs::read(dir.join("data/models/ci/resnet.onnx")).unwrap(),
        b"onnx"
    );
    let features = client
        .request(
            "POST",
            &format!("{}/features/get-online-features", dev.proxy),
            Some(&alice),
            Bytes::new(),
        )
        .await;
    assert_eq!(features.status, 200, "{}", features.text());

    // a token minted with `claimgate dev token`
    let minted = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args([
            "dev",
            "token",
            "--sub",
            "carol",
            "--claim",
            "groups=analysts",
            "--ttl",
            "5m",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let carol = String::from_utf8(minted.stdout).unwrap().trim().to_string();
    assert_eq!(
        client
            .get(&format!("{}/datasets/curated/sales.csv", dev.proxy), Some(&carol))
            .await
            .status,
        200
    );

    let m = String::from_utf8(client.get(&dev.metrics, None).await.body.to_vec()).unwrap();
    assert_eq!(
        metric(&m, "claimgate_requests_total", &[("decision", "deny")]),
        2.0
    );
    assert!(metric(&m, "claimgate_requests_total", &[("decision", "allow")]) >= 6.0);

    assert!(interrupt(dev).success(), "Ctrl-C must stop claimgate dev cleanly");
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let records: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 8, "{audit}");
    assert_eq!(records[0]["decision"], "allow");
    assert_eq!(records[0]["identity"]["sub"], "alice");
    assert_eq!(records[1]["decision"], "deny");
    assert_eq!(records[1]["resource"], "s3://datasets/pii/users.csv");
    assert!(records[1]["rule"].as_str().unwrap().contains("trainer deny[0]"));

    // a second start reuses the directory: same key, data kept, not re-seeded
    let kid_before = std::fs::read(dir.join("idp-key.pem")).unwrap();
    let again = start(&dir);
    assert!(!again.output.join("\n").contains("demo data seeded"));
    assert_eq!(std::fs::read(dir.join("idp-key.pem")).unwrap(), kid_before);
    let alice = token(&dir, "alice");
    let kept = client
        .get(&format!("{}/models/ci/resnet.onnx", again.proxy), Some(&alice))
        .await;
    assert_eq!(kept.status, 403, "alice is no CI publisher");
    let ci = token(&dir, "ci");
    let kept = client
        .get(&format!("{}/models/ci/resnet.onnx", again.proxy), Some(&ci))
        .await;
    assert_eq!(&kept.body[..], b"onnx");
    // one `claimgate dev` per directory
    let second = Command::new(env!("CARGO_BIN_EXE_claimgate"))
        .args(["dev", "--port", "0", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    assert_eq!(
        client
            .get(&format!("{}/models/ci/resnet.onnx", again.proxy), Some(&ci))
            .await
            .status,
        200
    );
    assert!(interrupt(again).success());
}

/// The policies `claimgate dev` wrote are the user's to edit: a saved edit is in force
/// within a second, without a restart, and undone the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_policy_edit_applies_while_dev_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let dev = start(&dir);
    let client = Client::new(None);
    let alice = token(&dir, "alice");
    let shard = format!("{}/datasets/imagenet/train/0001.tar", dev.proxy);
    assert_eq!(client.get(&shard, Some(&alice)).await.status, 200);
    let freeze = dir.join("policies/freeze.toml");
    std::fs::write(
        &freeze,
        "[[roles]]\nname = \"frozen\"\nmembers = [ { claim = \"sub\", equals = \"alice\" } ]\ndeny = [ { actions = [\"s3:*\"], resources = [\"s3://datasets/imagenet/*\"] } ]\n",
    )
    .unwrap();
    let mut status = 0;
    for _ in 0..100 {
        status = client.get(&shard, Some(&alice)).await.status;
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 403, "the added deny rule never took effect");
    std::fs::remove_file(&freeze).unwrap();
    for _ in 0..100 {
        status = client.get(&shard, Some(&alice)).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "removing the deny rule never took effect");
    assert!(interrupt(dev).success());
}
