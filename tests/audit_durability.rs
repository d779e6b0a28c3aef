//! Audit durability: every answered request has exactly one whole record — under load,
//! through SIGTERM, through log rotation, and while the sink cannot be written (data access
//! refused or served as configured, records held and written once the sink recovers).

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use support::*;

/// No wait in this file lasts longer.
const BOUND: Duration = Duration::from_secs(20);

/// Awaits `f`, failing the test if it takes longer than [`BOUND`].
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {BOUND:?}: {what}"))
}

/// Asks `check` every 50 ms until it answers `Some`, for at most [`BOUND`].
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    bounded(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The request id claimgate answered with (the record's `request_id`).
fn rid(r: &Resp) -> String {
    r.headers
        .get("x-amz-request-id")
        .unwrap_or_else(|| panic!("no x-amz-request-id on a {} answer", r.status))
        .to_str()
        .unwrap()
        .to_string()
}

/// Audit lines, each required to be a whole JSON record ending in a newline.
fn parse_records(text: &str, origin: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{origin} ends in a partial line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{origin}: half-written or bad line {l:?}: {e}"))
        })
        .collect()
}

/// How many records carry each request id.
fn id_counts<'a>(records: impl IntoIterator<Item = &'a Value>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        let id = r["request_id"]
            .as_str()
            .expect("record without request_id")
            .to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// Records by request id, asserting no id appears twice.
fn by_id(records: &[Value]) -> HashMap<String, &Value> {
    let mut out = HashMap::new();
    for r in records {
        let id = r["request_id"]
            .as_str()
            .expect("record without request_id")
            .to_string();
        assert!(
            out.insert(id.clone(), r).is_none(),
            "request id {id} recorded twice"
        );
    }
    out
}

/// An audit sink standing in for a disk that fills up: while `failing`, it takes at most
/// `slack` more bytes (a write cut short) and then refuses every write with ENOSPC. Flushes
/// always succeed.
#[derive(Clone, Default)]
struct FlakySink {
    failing: Arc<AtomicBool>,
    slack: Arc<AtomicUsize>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl FlakySink {
    /// The disk fills after taking `slack` more bytes.
    fn fail(&self, slack: usize) {
        self.slack.store(slack, Ordering::SeqCst);
        self.failing.store(true, Ordering::SeqCst);
    }

    fn recover(&self) {
        self.failing.store(false, Ordering::SeqCst);
    }

    fn text(&self) -> String {
        String::from_utf8(self.out.lock().unwrap().clone()).expect("audit output is UTF-8")
    }

    /// The whole lines written so far (a line cut short by the full disk is left out).
    fn whole_records(&self) -> Vec<Value> {
        let text = self.text();
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        parse_records(whole, "audit sink")
    }
}

impl Write for FlakySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = self.out.lock().unwrap();
        if self.failing.load(Ordering::SeqCst) {
            let n = self.slack.swap(0, Ordering::SeqCst).min(buf.len());
            if n == 0 {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            out.extend_from_slice(&buf[..n]);
            return Ok(n);
        }
        out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request through the harness client, bounded.
async fn call(c: &Client, method: &str, url: &str, token: Option<&str>, body: &'static [u8]) -> Resp {
    bounded(
        &format!("{method} {url}"),
        c.request(method, url, token, Bytes::from_static(body)),
    )
    .await
}

async fn readyz(c: &Client, admin: &str) -> Resp {
    call(c, "GET", &format!("{admin}/readyz"), None, b"").await
}

/// An HTTP client whose failures are values, not panics (requests racing a shutdown).
type RawClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

fn raw_client() -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Sends one request; the status and `x-amz-request-id` of a whole response, or why none came.
async fn try_request(
    c: &RawClient,
    method: &str,
    url: &str,
    token: &str,
    body: &'static [u8],
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::from_static(body)))
        .unwrap();
    let answer = async {
        let resp = c.request(req).await.map_err(|e| format!("request: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        body.collect().await.map_err(|e| format!("body: {e:?}"))?;
        let id = parts
            .headers
            .get("x-amz-request-id")
            .unwrap_or_else(|| panic!("no x-amz-request-id on a {} answer", parts.status))
            .to_str()
            .unwrap()
            .to_string();
        Ok((parts.status.as_u16(), id))
    };
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

/// Waits (bounded) for the real binary to exit and returns its status.
async fn exit_status(p: &mut Process) -> std::process::ExitStatus {
    until("claimgate to exit", async || p.child.try_wait().unwrap()).await
}

/// Every record in the given files of `dir`, each line checked whole; with per-file counts.
fn read_logs(dir: &Path, names: &[&str]) -> (Vec<Value>, Vec<(String, usize)>) {
    let mut all = Vec::new();
    let mut counts = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let records = parse_records(&text, name);
        counts.push((name.to_string(), records.len()));
        all.extend(records);
    }
    (all, counts)
}

/// `n` (a multiple of 4) requests from 4 callers (allowed PUT and GET, denied pii): their ids.
async fn traffic(c: &Client, base: &str, token: &str, tag: &str, n: usize) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, base, token, tag) = (c.clone(), base.to_string(), token.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..n / 4 {
                let r = match i % 3 {
                    0 => {
                        let url = format!("{base}/datasets/{tag}/{w}-{i}");
                        c.request("PUT", &url, Some(&token), Bytes::from(format!("object {i}")))
                            .await
                    }
                    1 => {
                        c.get(&format!("{base}/datasets/{tag}/{w}-{}", i - 1), Some(&token))
                            .await
                    }
                    _ => {
                        c.get(&format!("{base}/datasets/pii/{tag}-{w}-{i}"), Some(&token))
                            .await
                    }
                };
                let expected = if i % 3 == 2 { 403 } else { 200 };
                assert_eq!(r.status, expected, "{tag} request {w}-{i}: {}", r.text());
                ids.push(rid(&r));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(bounded("a batch of requests", t).await.unwrap());
    }
    ids
}

/// Under concurrent load every answered request (allowed, denied, unauthenticated) has exactly one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_request_has_exactly_one_record_under_load() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3).start().await;
    const TASKS: usize = 8;
    const EACH: usize = 250;

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let c = p.client.clone();
        let base = p.url.clone();
        let token = idp.token(&format!("worker-{task}"), &["ml-engineers"]);
        tasks.push(tokio::spawn(async move {
            let mut answers = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let (r, expected) = match i % 4 {
                    0 => {
                        let url = format!("{base}/datasets/load/{task}/{i}");
                        let body = Bytes::from(format!("task {task} object {i}"));
                        (c.request("PUT", &url, Some(&token), body).await, 200)
                    }
                    1 => {
                        let url = format!("{base}/datasets/load/{task}/{}", i - 1);
                        (c.get(&url, Some(&token)).await, 200)
                    }
                    2 => (
                        c.get(&format!("{base}/datasets/pii/{task}-{i}"), Some(&token))
                            .await,
                        403,
                    ),
                    _ => (c.get(&format!("{base}/datasets/load/{task}/0"), None).await, 403),
                };
                assert_eq!(r.status, expected, "task {task} request {i}: {}", r.text());
                answers.push((rid(&r), r.status, i % 4));
            }
            answers
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(bounded("8 × 250 requests", t).await.unwrap());
    }
    assert_eq!(answers.len(), TASKS * EACH);
    let answered: HashSet<&str> = answers.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        answered.len(),
        answers.len(),
        "request ids repeat across responses"
    );

    let records = bounded("2000 records", p.audit(TASKS * EACH)).await;
    assert_eq!(records.len(), TASKS * EACH, "records != requests answered");
    let records = by_id(&records);
    for (id, status, kind) in &answers {
        let r = records
            .get(id)
            .unwrap_or_else(|| panic!("response {id} has no record"));
        assert_eq!(r["status"], *status, "{r}");
        let decision = match kind {
            0 | 1 => "allow",
            2 => "deny",
            _ => "error",
        };
        assert_eq!(r["decision"], decision, "{r}");
        if *kind == 3 {
            assert_eq!(r["reason"], "missing", "{r}");
        }
    }

    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_records_written_total", &[]), 2000.0);
    assert_eq!(metric(&m, "claimgate_audit_records_dropped_total", &[]), 0.0);
    assert_eq!(metric(&m, "claimgate_audit_write_errors_total", &[]), 0.0);
    assert_eq!(metric(&m, "claimgate_audit_queue_depth", &[]), 0.0);
    println!(
        "under load: {} responses, {} records",
        answers.len(),
        records.len()
    );
    bounded("shutdown", p.shutdown()).await;
}

/// SIGTERM under traffic: a clean exit, and every answered request's record whole in audit.log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_traffic_loses_no_record_of_an_answered_request() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let mut p = proxy(&idp, &s3)
        .server_lines("shutdown_grace = \"10s\"")
        .spawn()
        .await;
    let base = format!("http://{}", p.addr);
    let token = idp.token("alice", &["ml-engineers"]);
    let term_sent = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for w in 0..4 {
        let (base, token, term_sent) = (base.clone(), token.clone(), term_sent.clone());
        tasks.push(tokio::spawn(async move {
            let c = raw_client();
            let mut answers = Vec::new();
            let mut ended = String::new();
            for i in 0.. {
                let (method, url, body): (_, _, &'static [u8]) = match i % 3 {
                    0 => ("PUT", format!("{base}/datasets/term/{w}-{i}"), b"payload"),
                    1 => ("GET", format!("{base}/datasets/term/{w}-{}", i - 1), b""),
                    _ => ("GET", format!("{base}/datasets/pii/{w}-{i}"), b""),
                };
                match try_request(&c, method, &url, &token, body).await {
                    Ok(answer) => answers.push(answer),
                    Err(e) => {
                        assert!(
                            term_sent.load(Ordering::SeqCst),
                            "request failed before SIGTERM: {e}"
                        );
                        ended = e;
                        break;
                    }
                }
            }
            (answers, ended)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    term_sent.store(true, Ordering::SeqCst);
    p.signal("TERM");

    let mut answers = Vec::new();
    for t in tasks {
        let (a, ended) = bounded("callers to see the proxy go away", t).await.unwrap();
        println!("caller stopped after {} responses: {ended}", a.len());
        answers.extend(a);
    }
    let status = exit_status(&mut p).await;
    assert!(status.success(), "exit {status:?}\n{}", p.stderr());

    let text = std::fs::read_to_string(p.config_dir().join("audit.log")).unwrap();
    let records = parse_records(&text, "audit.log");
    let recorded = by_id(&records);
    let mut missing = Vec::new();
    for (status, id) in &answers {
        match recorded.get(id) {
            Some(r) => assert_eq!(r["status"], *status, "{r}"),
            None => missing.push(format!("{id} ({status})")),
        }
    }
    let statuses = answers
        .iter()
        .fold(HashMap::<u16, usize>::new(), |mut m, (s, _)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    println!(
        "SIGTERM: {} responses {statuses:?}, {} records in audit.log ({} for requests that got no response)",
        answers.len(),
        records.len(),
        records.len() - (answers.len() - missing.len()),
    );
    assert!(
        missing.is_empty(),
        "{} answered requests have no record: {missing:?}\n{}",
        missing.len(),
        p.stderr()
    );
    assert!(!answers.is_empty(), "no request was answered before SIGTERM");
}

/// Rotation by rename + SIGUSR1 and by rename alone: the files together hold each record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_signal_or_by_rename_loses_and_repeats_no_record() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let mut p = proxy(&idp, &s3).spawn().await;
    let dir = p.config_dir().to_path_buf();
    let log = dir.join("audit.log");
    let token = idp.token("alice", &["ml-engineers"]);

    let first = traffic(&p.client, &p.url, &token, "before", 200).await;

    std::fs::rename(&log, dir.join("audit.log.1")).unwrap();
    p.signal("USR1");
    let second = traffic(&p.client, &p.url, &token, "after-usr1", 200).await;

    std::fs::rename(&log, dir.join("audit.log.2")).unwrap();
    until(
        "the writer to notice the rename and reopen audit.log",
        async || log.exists().then_some(()),
    )
    .await;
    let third = traffic(&p.client, &p.url, &token, "after-rename", 200).await;

    let answered: Vec<&String> = first.iter().chain(&second).chain(&third).collect();
    let names = ["audit.log.1", "audit.log.2", "audit.log"];
    until("600 records across the files", async || {
        (read_logs(&dir, &names).0.len() >= answered.len()).then_some(())
    })
    .await;
    p.signal("TERM");
    let status = exit_status(&mut p).await;
    assert!(status.success(), "exit {status:?}\n{}", p.stderr());

    let (records, per_file) = read_logs(&dir, &names);
    println!(
        "rotation: {} requests; records per file {per_file:?}",
        answered.len()
    );
    assert_eq!(records.len(), 600, "records per file: {per_file:?}");
    let recorded = by_id(&records);
    for id in &answered {
        assert!(recorded.contains_key(id.as_str()), "response {id} has no record");
    }
    // Once audit.log was back, everything went to it.
    let current = id_counts(&read_logs(&dir, &["audit.log"]).0);
    for id in &third {
        assert_eq!(current.get(id), Some(&1), "{id} is not in the reopened audit.log");
    }
}

/// Refuse mode: an unwritable sink makes data access 503; on recovery every record is written whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_sink_refuses_data_access_and_loses_no_record() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let sink = FlakySink::default();
    let p = proxy(&idp, &s3).audit_to(Box::new(sink.clone())).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;
    let kept = p.url("/datasets/kept.bin");
    let mut answered = Vec::new();

    let put = call(c, "PUT", &kept, Some(&t), b"kept").await;
    assert_eq!(put.status, 200, "{}", put.text());
    answered.push(rid(&put));
    until("the first record", async || {
        (!sink.whole_records().is_empty()).then_some(())
    })
    .await;

    // The disk takes 40 more bytes, then nothing.
    sink.fail(40);
    // The failure is seen on the first write after it: this request may still be served.
    let first = call(c, "GET", &kept, Some(&t), b"").await;
    assert!([200, 503].contains(&first.status), "{}", first.text());
    answered.push(rid(&first));
    let ready = until("/readyz to answer 503", async || {
        let r = readyz(c, &p.admin).await;
        (r.status == 503).then(|| r.text())
    })
    .await;
    assert!(ready.contains("audit log"), "{ready}");

    let stored = s3.requests();
    let mut refused = Vec::new();
    let put = call(
        c,
        "PUT",
        &p.url("/datasets/refused.bin"),
        Some(&t),
        b"must not land",
    )
    .await;
    let get = call(c, "GET", &kept, Some(&t), b"").await;
    for r in [&put, &get] {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.s3_code(), "ServiceUnavailable");
        assert!(r.text().contains("audit log"), "{}", r.text());
        refused.push(rid(r));
    }
    answered.extend(refused.iter().cloned());
    assert_eq!(s3.requests(), stored, "a refused request reached the store");
    assert!(!s3.path("datasets", "refused.bin").exists());
    // Refusals that move no data are answered as ever (and recorded).
    let anon = call(c, "GET", &kept, None, b"").await;
    assert_eq!(anon.status, 403);
    answered.push(rid(&anon));

    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_sink_up", &[]), 0.0);
    assert!(metric(&m, "claimgate_audit_write_errors_total", &[]) > 0.0);
    assert_eq!(metric(&m, "claimgate_audit_records_dropped_total", &[]), 0.0);
    // Held in memory: the records of the four requests made since the disk filled.
    assert_eq!(metric(&m, "claimgate_audit_queue_depth", &[]), 4.0);

    sink.recover();
    let back = until("data access to resume", async || {
        let r = call(c, "GET", &kept, Some(&t), b"").await;
        answered.push(rid(&r));
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(&back.body[..], b"kept");
    assert_eq!(readyz(c, &p.admin).await.status, 200);

    let records = until("every record to reach the sink", async || {
        let records = sink.whole_records();
        let ids = id_counts(&records);
        answered.iter().all(|id| ids.contains_key(id)).then_some(records)
    })
    .await;
    parse_records(&sink.text(), "audit sink");
    assert_eq!(records.len(), answered.len(), "{}", sink.text());
    let recorded = by_id(&records);
    for id in &refused {
        let r = recorded[id.as_str()];
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["reason"], "audit_unavailable", "{r}");
        assert_eq!(r["decision"], "allow", "{r}");
    }
    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_sink_up", &[]), 1.0);
    assert_eq!(metric(&m, "claimgate_audit_queue_depth", &[]), 0.0);
    assert_eq!(
        metric(&m, "claimgate_audit_records_written_total", &[]),
        answered.len() as f64
    );
    println!(
        "refuse: {} requests answered, {} refused for the audit log, {} records written, {} failed writes",
        answered.len(),
        refused.len(),
        records.len(),
        metric(&m, "claimgate_audit_write_errors_total", &[])
    );
    bounded("shutdown", p.shutdown()).await;
}

/// Serve mode: data is served while the sink cannot be written, and the records arrive once it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_mode_serves_through_an_unwritable_sink_and_writes_the_records_later() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let sink = FlakySink::default();
    let p = proxy(&idp, &s3)
        .extra("[audit]\non_failure = \"serve\"\n")
        .audit_to(Box::new(sink.clone()))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;
    let kept = p.url("/datasets/kept.bin");
    let mut answered = Vec::new();

    let put = call(c, "PUT", &kept, Some(&t), b"kept").await;
    assert_eq!(put.status, 200, "{}", put.text());
    answered.push(rid(&put));
    until("the first record", async || {
        (!sink.whole_records().is_empty()).then_some(())
    })
    .await;

    sink.fail(0);
    let first = call(c, "GET", &kept, Some(&t), b"").await;
    assert_eq!(first.status, 200, "{}", first.text());
    answered.push(rid(&first));
    until("the sink to be seen failing", async || {
        let m = bounded("metrics", p.metrics()).await;
        (metric(&m, "claimgate_audit_sink_up", &[]) == 0.0).then_some(())
    })
    .await;
    let ready = readyz(c, &p.admin).await;
    assert_eq!(ready.status, 200, "serve mode stays ready: {}", ready.text());

    let stored = s3.requests();
    let mut served = Vec::new();
    let put = call(
        c,
        "PUT",
        &p.url("/datasets/served.bin"),
        Some(&t),
        b"served anyway",
    )
    .await;
    let get = call(c, "GET", &kept, Some(&t), b"").await;
    for r in [&put, &get] {
        assert_eq!(r.status, 200, "{}", r.text());
        served.push(rid(r));
    }
    assert_eq!(&get.body[..], b"kept");
    assert_eq!(s3.requests(), stored + 2);
    assert_eq!(
        std::fs::read(s3.path("datasets", "served.bin")).unwrap(),
        b"served anyway"
    );
    answered.extend(served.iter().cloned());
    let m = bounded("metrics", p.metrics()).await;
    assert!(metric(&m, "claimgate_audit_write_errors_total", &[]) > 0.0);
    assert_eq!(metric(&m, "claimgate_audit_records_dropped_total", &[]), 0.0);

    sink.recover();
    let records = until("every record to reach the sink", async || {
        let records = sink.whole_records();
        let ids = id_counts(&records);
        answered.iter().all(|id| ids.contains_key(id)).then_some(records)
    })
    .await;
    parse_records(&sink.text(), "audit sink");
    assert_eq!(records.len(), answered.len(), "{}", sink.text());
    let recorded = by_id(&records);
    for id in &served {
        let r = recorded[id.as_str()];
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["upstream_status"], 200, "{r}");
    }
    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_sink_up", &[]), 1.0);
    println!(
        "serve: {} requests answered ({} served while the sink failed), {} records written",
        answered.len(),
        served.len(),
        records.len()
    );
    bounded("shutdown", p.shutdown()).await;
}

/// A real full disk (/dev/full) refuses data access; once a file is back, the held records land in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_data_access_until_the_log_is_writable_again() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let mut p = proxy(&idp, &s3).spawn().await;
    let dir = p.config_dir().to_path_buf();
    let log = dir.join("audit.log");
    let t = idp.token("alice", &["ml-engineers"]);
    let kept = p.url("/datasets/kept.bin");
    let client = p.client.clone();
    let c = &client;
    let mut answered = Vec::new();

    let put = call(c, "PUT", &kept, Some(&t), b"kept").await;
    assert_eq!(put.status, 200, "{}", put.text());
    answered.push(rid(&put));
    until("the first record in audit.log", async || {
        (!read_logs(&dir, &["audit.log"]).0.is_empty()).then_some(())
    })
    .await;

    std::fs::rename(&log, dir.join("audit.log.0")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    p.signal("USR1");
    // The failure shows on the first write after the reopen: keep asking until it has.
    until("/readyz to answer 503", async || {
        let r = call(c, "GET", &kept, Some(&t), b"").await;
        assert!([200, 503].contains(&r.status), "{}", r.text());
        answered.push(rid(&r));
        (readyz(c, &p.admin).await.status == 503).then_some(())
    })
    .await;

    let stored = s3.requests();
    let mut refused = Vec::new();
    let put = call(
        c,
        "PUT",
        &p.url("/datasets/refused.bin"),
        Some(&t),
        b"must not land",
    )
    .await;
    let get = call(c, "GET", &kept, Some(&t), b"").await;
    for r in [&put, &get] {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.s3_code(), "ServiceUnavailable");
        assert!(r.text().contains("audit log"), "{}", r.text());
        refused.push(rid(r));
    }
    answered.extend(refused.iter().cloned());
    assert_eq!(s3.requests(), stored, "a refused request reached the store");
    assert!(!s3.path("datasets", "refused.bin").exists());
    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_sink_up", &[]), 0.0);
    let errors = metric(&m, "claimgate_audit_write_errors_total", &[]);
    assert!(errors > 0.0);

    std::fs::remove_file(&log).unwrap();
    p.signal("USR1");
    let back = until("data access to resume", async || {
        let r = call(c, "GET", &kept, Some(&t), b"").await;
        answered.push(rid(&r));
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(&back.body[..], b"kept");
    assert!(!log.is_symlink(), "audit.log should be a regular file again");

    let names = ["audit.log.0", "audit.log"];
    until("every record in the files", async || {
        let ids = id_counts(&read_logs(&dir, &names).0);
        answered.iter().all(|id| ids.contains_key(id)).then_some(())
    })
    .await;
    p.signal("TERM");
    let status = exit_status(&mut p).await;
    assert!(status.success(), "exit {status:?}\n{}", p.stderr());

    let (records, per_file) = read_logs(&dir, &names);
    assert_eq!(records.len(), answered.len(), "records per file: {per_file:?}");
    let recorded = by_id(&records);
    let reopened = id_counts(&read_logs(&dir, &["audit.log"]).0);
    for id in &refused {
        assert_eq!(recorded[id.as_str()]["reason"], "audit_unavailable");
        assert!(
            reopened.contains_key(id),
            "the held record {id} is not in the new audit.log"
        );
    }
    println!(
        "full disk: {} answered ({} refused), {errors} failed writes; records per file {per_file:?}",
        answered.len(),
        refused.len()
    );
}

/// A buffered stream's view of a full disk: writes are taken, the flush fails while
/// `failing` is set.
#[derive(Clone, Default)]
struct UnflushableSink {
    failing: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Write for UnflushableSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        Ok(())
    }
}

/// A sink whose flush failed is retried on its own: it becomes ready again with no new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_is_retried_without_new_traffic() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let sink = UnflushableSink::default();
    let p = proxy(&idp, &s3).audit_to(Box::new(sink.clone())).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let c = &p.client;

    sink.failing.store(true, Ordering::SeqCst);
    let r = call(c, "PUT", &p.url("/datasets/a.bin"), Some(&t), b"a").await;
    assert!([200, 503].contains(&r.status), "{}", r.text());
    until("/readyz to answer 503", async || {
        (readyz(c, &p.admin).await.status == 503).then_some(())
    })
    .await;

    sink.failing.store(false, Ordering::SeqCst);
    // No request from here on: in refuse mode an unready proxy gets no traffic (its
    // readiness probe fails), so nothing else would ever wake the writer.
    until(
        "/readyz to answer 200 again with no new request (a failed flush must be retried)",
        async || (readyz(c, &p.admin).await.status == 200).then_some(()),
    )
    .await;
    let m = bounded("metrics", p.metrics()).await;
    assert_eq!(metric(&m, "claimgate_audit_sink_up", &[]), 1.0);
    assert_eq!(metric(&m, "claimgate_audit_queue_depth", &[]), 0.0);
    assert_eq!(metric(&m, "claimgate_audit_records_written_total", &[]), 1.0);
    let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
    assert_eq!(parse_records(&text, "audit sink").len(), 1);
    bounded("shutdown", p.shutdown()).await;
}

/// `[audit] syslog`: every record also goes to a syslog relay (RFC 5424 over UDP), the same
/// JSON as the file's line, with a severity by outcome; the file keeps every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_copied_to_syslog_as_rfc5424_messages() {
    let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    relay.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let extra = format!(
        "[audit]\nsyslog = {{ address = \"udp://{}\", facility = \"local4\" }}\n",
        relay.local_addr().unwrap()
    );
    let p = proxy(&idp, &s3).extra(&extra).spawn().await;
    let token = idp.token("alice", &["ml-engineers"]);
    p.client
        .get(&format!("{}/datasets/curated/x", p.url), Some(&token))
        .await;
    p.client
        .get(&format!("{}/datasets/pii/users.csv", p.url), Some(&token))
        .await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while got.len() < 2 {
        let n = relay.recv(&mut buf).expect("a syslog message within 10 s");
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    // local4 (20) * 8 + informational (6) = 166; + warning (4) = 164 for the denial
    assert!(got[0].starts_with("<166>1 "), "{}", got[0]);
    assert!(got[1].starts_with("<164>1 "), "{}", got[1]);
    for (message, decision) in got.iter().zip(["allow", "deny"]) {
        let json = &message[message
            .find(" - {")
            .expect("structured data `-`, then the record")
            + 3..];
        let record: Value = serde_json::from_str(json).unwrap();
        assert_eq!(record["decision"], decision);
        assert_eq!(record["identity"]["sub"], "alice");
        assert!(
            message.contains(" claimgate ") && message.contains(" GetObject - "),
            "{message}"
        );
        assert!(!message.contains(&token));
    }
    until("both records in the file too", async || {
        (p.audit_file("audit.log").len() >= 2).then_some(())
    })
    .await;
}
