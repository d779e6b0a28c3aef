//! `[limits]` under abuse: slowloris heads, oversized heads, connection floods, clients that
//! stop reading, and one identity crowding out the others — each refused cheaply, audited and
//! counted, while everyone else keeps being served.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest any single wait in this file may take.
const BOUND: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------
// Raw HTTP/1.1 over a socket: these tests need to misbehave in ways a client library won't
// ------------------------------------------------------------------------------------

/// A response head read off a raw socket, and whatever body bytes came with it.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a response from the bytes `raw` (a head, then any part of the body).
fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// Reads a response head (and with it perhaps the first body bytes); the socket stays open.
async fn read_head(s: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse_response(&buf) {
            return Ok(r);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads a response head and its whole `content-length` body.
async fn read_response(s: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut r = read_head(s).await?;
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while r.body.len() < len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        r.body.extend_from_slice(&chunk[..n]);
    }
    Ok(r)
}

/// Everything the peer sends until it closes (a reset after data still counts as closed:
/// a server that refuses a head it did not read whole may reset rather than close).
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A GET request head with a bearer token.
fn get_head(path: &str, token: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n")
}

/// Opens a connection and sends `head` on it.
async fn send_raw(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// One request on a fresh connection, read whole (the server closes, or says how long).
async fn exchange(addr: SocketAddr, head: &str) -> RawResponse {
    let mut s = send_raw(addr, head).await;
    timeout(BOUND, read_response(&mut s))
        .await
        .expect("no answer in time")
        .expect("answer unreadable")
}

// ------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------

/// A sparse file of `len` bytes written straight into the store.
fn store_object(s3: &TestS3, key: &str, len: u64) {
    let path = s3.path("datasets", key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(len).unwrap();
}

/// Polls `check` every 20 ms until it holds; panics with `what` after [`BOUND`].
async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within {BOUND:?}");
}

/// The connection-level refusals among `audit` that name `reason`, each checked for the
/// shape such a record has: no route, method or path, status `status`.
fn connection_refusals<'a>(audit: &'a [Value], reason: &str, status: u16) -> Vec<&'a Value> {
    let found: Vec<&Value> = audit.iter().filter(|r| r["reason"] == reason).collect();
    for r in &found {
        assert_eq!(r["status"], status, "{r}");
        assert_eq!(r["route"], "-", "{r}");
        assert_eq!(r["method"], "-", "{r}");
        assert_eq!(r["decision"], "error", "{r}");
        assert!(r["identity"].is_null(), "{r}");
        assert!(r["source"].as_str().unwrap().starts_with("127.0.0.1:"), "{r}");
    }
    found
}

/// The soft limit on open files of this process (`ulimit -n`).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

// ------------------------------------------------------------------------------------
// Slow and oversized request heads
// ------------------------------------------------------------------------------------

/// A request head dripped a byte at a time is cut off at `request_head_timeout` (408 audited).
#[tokio::test]
async fn a_dripped_request_head_is_cut_off_at_the_head_timeout() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nrequest_head_timeout = \"1s\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let start = Instant::now();
    let mut s = send_raw(
        p.addr,
        &format!("GET /datasets/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\nx-drip: "),
    )
    .await;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    tick.tick().await;
    let mut dripped = 0;
    let mut answer = Vec::new();
    let dripping = async {
        let mut chunk = [0u8; 1024];
        loop {
            tokio::select! {
                r = s.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                },
                _ = tick.tick() => {
                    if s.write_all(b"a").await.is_err() {
                        return;
                    }
                    dripped += 1;
                }
            }
        }
    };
    let closed = timeout(BOUND, dripping).await;
    let took = start.elapsed();
    eprintln!(
        "dripped head: closed after {took:?}, {dripped} bytes dripped, answer {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(closed.is_ok(), "a dripping head was still open after {BOUND:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    assert!(dripped >= 2, "the drip did not run: {dripped}");

    let audit = p.audit(1).await;
    let refused = connection_refusals(&audit, "request_head_timeout", 408);
    assert_eq!(refused.len(), 1, "{audit:?}");
    assert_eq!(refused[0]["path"], "-");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "request_head_timeout")]
        ),
        1.0
    );
    assert_eq!(s3.requests(), 0);
}

/// A connection that sends nothing at all is closed at `request_head_timeout` (408 audited).
#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_at_the_head_timeout() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nrequest_head_timeout = \"1s\"\n")
        .start()
        .await;

    let start = Instant::now();
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let closed = timeout(Duration::from_secs(6), read_until_closed(&mut s)).await;
    let took = start.elapsed();
    eprintln!("silent connection: closed={} after {took:?}", closed.is_ok());
    assert!(
        closed.is_ok(),
        "a connection that never sent a byte was still open after {took:?} (request_head_timeout = 1s)"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );

    let audit = p.audit(1).await;
    let refused = connection_refusals(&audit, "request_head_timeout", 408);
    assert_eq!(refused.len(), 1, "{audit:?}");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "request_head_timeout")]
        ),
        1.0
    );
    assert_eq!(s3.requests(), 0);
}

/// A connection that stops inside the HTTP/2 preface is closed at `request_head_timeout` too.
#[tokio::test]
async fn a_connection_stalled_inside_the_http2_preface_is_closed_at_the_head_timeout() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nrequest_head_timeout = \"1s\"\n")
        .start()
        .await;

    let start = Instant::now();
    // 16 of the preface's 24 bytes: not yet telling HTTP/2 from HTTP/1.1
    let mut s = send_raw(p.addr, "PRI * HTTP/2.0\r\n").await;
    let closed = timeout(Duration::from_secs(6), read_until_closed(&mut s)).await;
    let took = start.elapsed();
    eprintln!("stalled preface: closed={} after {took:?}", closed.is_ok());
    assert!(
        closed.is_ok(),
        "a connection stalled inside the HTTP/2 preface was still open after {took:?} (request_head_timeout = 1s)"
    );
    let audit = p.audit(1).await;
    assert_eq!(
        connection_refusals(&audit, "request_head_timeout", 408).len(),
        1,
        "{audit:?}"
    );
    assert_eq!(s3.requests(), 0);
}

/// A head over `max_header_bytes` or with more than `max_headers` fields is answered 431
/// and never forwarded; an ordinary head within both limits still is.
#[tokio::test]
async fn oversized_request_heads_are_answered_431_and_never_forwarded() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nmax_header_bytes = 16384\nmax_headers = 20\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    store_object(&s3, "ok.bin", 3);

    // one 32 KiB header
    let big = format!(
        "GET /datasets/ok.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\nx-padding: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let mut s = send_raw(p.addr, &big).await;
    let answer = timeout(BOUND, read_until_closed(&mut s))
        .await
        .expect("not closed");
    let r = parse_response(&answer).unwrap_or_else(|| {
        panic!(
            "no answer to a 32 KiB header: {:?}",
            String::from_utf8_lossy(&answer)
        )
    });
    assert_eq!(r.status, 431, "{}", String::from_utf8_lossy(&answer));

    // 50 small headers
    let mut many =
        format!("GET /datasets/ok.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\n");
    for i in 0..48 {
        many.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert!(many.len() < 16384);
    let mut s = send_raw(p.addr, &many).await;
    let answer = timeout(BOUND, read_until_closed(&mut s))
        .await
        .expect("not closed");
    let r = parse_response(&answer)
        .unwrap_or_else(|| panic!("no answer to 50 headers: {:?}", String::from_utf8_lossy(&answer)));
    assert_eq!(r.status, 431, "{}", String::from_utf8_lossy(&answer));

    let audit = p.audit(2).await;
    let refused = connection_refusals(&audit, "header_too_large", 431);
    assert_eq!(refused.len(), 2, "{audit:?}");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "header_too_large")]
        ),
        2.0
    );
    assert_eq!(s3.requests(), 0, "an oversized head reached the store");

    // Within both limits (15 fields, 4 KiB of them) the request goes through.
    let mut fine =
        format!("GET /datasets/ok.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\n");
    for i in 0..12 {
        fine.push_str(&format!("x-field-{i}: {}\r\n", "b".repeat(300)));
    }
    fine.push_str("connection: close\r\n\r\n");
    let r = exchange(p.addr, &fine).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s3.requests(), 1);
}

// ------------------------------------------------------------------------------------
// Connection floods (the real binary)
// ------------------------------------------------------------------------------------

/// What became of one connection of the burst.
enum Fate {
    /// Answered and closed by the server: what it said.
    Refused(Vec<u8>),
    /// Still open and silent: it holds a connection slot.
    Held(TcpStream),
    /// Could not connect at all.
    Failed(std::io::Error),
}

/// Connects and listens until the server answers (a refusal comes as soon as the server
/// accepts) or `stop` says the burst has settled (a held connection says nothing). Counts
/// connection attempts that ended in `connected` and refusals read in `refused`.
async fn connect_and_listen(
    addr: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
    connected: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) -> Fate {
    let made = TcpStream::connect(addr).await;
    connected.fetch_add(1, Ordering::Relaxed);
    let mut s = match made {
        Ok(s) => s,
        Err(e) => return Fate::Failed(e),
    };
    // A request head begun, never finished: what an HTTP client's connection carries. (A
    // client that sends nothing at all may never reach the server in a burst: past the
    // listen backlog the kernel answers with SYN cookies, and a handshake whose last ACK it
    // then drops exists only on the client's side until the client sends something.)
    let _ = s
        .write_all(b"GET /datasets/after.bin HTTP/1.1\r\nhost: localhost\r\n")
        .await;
    let mut buf = Vec::new();
    tokio::select! {
        _ = s.read_to_end(&mut buf) => {
            refused.fetch_add(1, Ordering::Relaxed);
            Fate::Refused(buf)
        }
        _ = stop.wait_for(|stop| *stop) => {
            if buf.is_empty() { Fate::Held(s) } else { Fate::Refused(buf) }
        }
    }
}

/// 5,000 connections at once against `max_connections = 100`: 100 are held, the rest are
/// answered 503 at once and closed, fds stay bounded, and service resumes when they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_burst_over_the_limit_is_answered_503_at_once_and_fds_stay_bounded() {
    const MAX: usize = 100;
    let limit = open_file_limit();
    // This process holds every connection of the burst; leave room for everything else.
    let burst = 5000.min(limit.saturating_sub(1024)).max(2 * MAX);
    eprintln!("ulimit -n = {limit}; bursting {burst} connections");

    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    store_object(&s3, "after.bin", 5);
    let p = proxy(&idp, &s3)
        // long enough that the held connections are not timed out during the test
        .extra(&format!(
            "[limits]\nmax_connections = {MAX}\nrequest_head_timeout = \"60s\"\n"
        ))
        .spawn()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    // Warm up (the issuer's keys, the upstream pool) on a client of its own, gone before
    // the burst so that it holds no slot.
    let warm_client = Client::new(None);
    let warm = warm_client.get(&p.url("/datasets/after.bin"), Some(&t)).await;
    assert_eq!(warm.status, 200, "{}", warm.text());
    drop(warm_client);
    until("the warm-up connection closes", || async {
        metric(&p.metrics().await, "claimgate_connections_open", &[]) == 0.0
    })
    .await;

    let baseline = p.open_fds();
    let pid_fds = format!("/proc/{}/fd", p.pid());
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicUsize::new(baseline));
    let sampler = {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(&pid_fds).map(|d| d.count()).unwrap_or(0);
                peak.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    // A connection is complete (for its client) once the kernel has it, before the server
    // accepts it; those past the listen backlog wait for the server's SYN-ACK retransmits.
    // So the burst has settled once every connection is made and all but the held ones are
    // answered, not after some fixed time.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (connected, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..burst {
        tasks.spawn(connect_and_listen(
            p.addr,
            stopped.clone(),
            connected.clone(),
            answered.clone(),
        ));
    }
    let settled = until("the burst settles", || async {
        connected.load(Ordering::Relaxed) == burst && answered.load(Ordering::Relaxed) >= burst - MAX
    })
    .await;
    // Any connection refused beyond the limit's worth shows up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true).unwrap();
    let fates = timeout(BOUND, tasks.join_all())
        .await
        .expect("the burst did not settle");
    let (mut held, mut refused, mut failed) = (Vec::new(), 0, Vec::new());
    for fate in fates {
        match fate {
            Fate::Held(s) => held.push(s),
            Fate::Refused(answer) => {
                let text = String::from_utf8_lossy(&answer);
                assert!(text.starts_with("HTTP/1.1 503 "), "refused with {text:?}");
                assert!(text.contains("too many connections"), "{text}");
                assert!(text.to_ascii_lowercase().contains("retry-after: 1"), "{text}");
                refused += 1;
            }
            Fate::Failed(e) => failed.push(e.to_string()),
        }
    }
    eprintln!(
        "burst of {burst}: {} held, {refused} refused with 503, {} failed to connect; settled in {settled:?}",
        held.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "connections failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(held.len(), MAX, "held connections");
    assert_eq!(refused, burst - MAX);

    // At the limit, a newcomer is told at once rather than left hanging in the backlog.
    let asked = Instant::now();
    let late = timeout(Duration::from_secs(5), async {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        read_until_closed(&mut s).await
    })
    .await
    .expect("a connection at the limit was left hanging");
    let answered_in = asked.elapsed();
    let late = parse_response(&late).expect("no HTTP answer at the limit");
    assert_eq!(late.status, 503);
    assert_eq!(late.header("connection"), Some("close"));
    eprintln!("at the limit, a new connection was answered 503 in {answered_in:?}");
    assert!(answered_in < Duration::from_secs(2), "{answered_in:?}");

    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!("proxy fds: baseline {baseline}, peak {peak} during the burst (limit {MAX} connections)");
    assert!(
        peak <= baseline + MAX + 16,
        "fds grew from {baseline} to {peak}: refused connections are not being closed"
    );

    // the burst's refusals and the latecomer's
    let refusals = burst - MAX + 1;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "claimgate_connections_open", &[]), MAX as f64);
    assert_eq!(
        metric(&m, "claimgate_limit_refusals_total", &[("limit", "connections")]),
        refusals as f64
    );
    until("every refusal audited", || async {
        let audit = p.audit_file("audit.log");
        audit.iter().filter(|r| r["reason"] == "connections").count() >= refusals
    })
    .await;
    let audit = p.audit_file("audit.log");
    let audited = connection_refusals(&audit, "connections", 503);
    assert_eq!(audited.len(), refusals);

    // The burst goes away: the slots come back and service resumes.
    drop(held);
    let fell = until("connections_open falls back to 0", || async {
        metric(&p.metrics().await, "claimgate_connections_open", &[]) == 0.0
    })
    .await;
    eprintln!("connections_open back to 0 within {fell:?} of the burst closing");
    let after = p.client.get(&p.url("/datasets/after.bin"), Some(&t)).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.body.len(), 5);
    assert!(
        p.open_fds() <= baseline + 4,
        "fds did not fall back: {}",
        p.open_fds()
    );
}

// ------------------------------------------------------------------------------------
// A client that stops reading (the real binary)
// ------------------------------------------------------------------------------------

/// A GET of 64 MiB whose client never reads is not buffered in the proxy (RSS stays flat),
/// and other callers are served meanwhile.
#[tokio::test]
async fn a_client_that_stops_reading_does_not_make_the_proxy_buffer_the_object() {
    const SIZE: u64 = 64 << 20;
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    store_object(&s3, "big.bin", SIZE);
    std::fs::write(s3.path("datasets", "small.txt"), b"small").unwrap();
    let p = proxy(&idp, &s3).spawn().await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let bob = idp.token("bob", &["ml-engineers"]);

    // Warm up the paths a GET takes before measuring.
    for t in [&alice, &bob] {
        let r = p.client.get(&p.url("/datasets/small.txt"), Some(t)).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let baseline = p.rss_kib();
    let before = s3.requests();

    let mut stalled = send_raw(p.addr, &get_head("/datasets/big.bin", &alice)).await;
    until("the big GET reaches the store", || async {
        s3.requests() > before
    })
    .await;
    let mut peak = baseline;
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(3) {
        peak = peak.max(p.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Someone else is served while the object sits unread.
    let other = timeout(BOUND, p.client.get(&p.url("/datasets/small.txt"), Some(&bob)))
        .await
        .expect("another caller was not served");
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(&other.body[..], b"small");
    peak = peak.max(p.rss_kib());

    eprintln!(
        "proxy RSS: baseline {baseline} KiB, peak {peak} KiB with a {} MiB GET unread (+{} KiB)",
        SIZE >> 20,
        peak.saturating_sub(baseline)
    );
    assert!(baseline > 0, "RSS unreadable");
    assert!(
        peak < baseline + 48 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB: the proxy is buffering what its client does not read"
    );

    // The stalled GET was a real, streaming 200 all along.
    let head = timeout(BOUND, read_head(&mut stalled)).await.unwrap().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(SIZE.to_string().as_str()));
}

// ------------------------------------------------------------------------------------
// One identity crowding out the others
// ------------------------------------------------------------------------------------

/// One GET on its own connection: the status, and the answer read whole unless it is a 200
/// (whose body is then left unread, keeping the request in flight).
async fn get_and_hold(addr: SocketAddr, path: String, token: String) -> (RawResponse, TcpStream) {
    let mut s = send_raw(addr, &get_head(&path, &token)).await;
    let mut r = timeout(BOUND, read_head(&mut s)).await.unwrap().unwrap();
    if r.status != 200 {
        let len: usize = r.header("content-length").unwrap().parse().unwrap();
        let mut chunk = [0u8; 4096];
        while r.body.len() < len {
            let n = timeout(BOUND, s.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "answer cut short");
            r.body.extend_from_slice(&chunk[..n]);
        }
    }
    (r, s)
}

/// `max_requests_per_identity = 4`: of 64 concurrent GETs by one identity 4 are served and
/// 60 refused 503 SlowDown (Retry-After), while another identity's GETs all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_over_its_concurrency_is_refused_slowdown_while_others_are_served() {
    const MAX: usize = 4;
    const FLOOD: usize = 64;
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    // Larger than every buffer between the store and a client that does not read: the
    // admitted GETs stay in flight until their clients go.
    store_object(&s3, "big.bin", 64 << 20);
    std::fs::write(s3.path("datasets", "small.txt"), b"small").unwrap();
    let p = proxy(&idp, &s3)
        .extra(&format!("[limits]\nmax_requests_per_identity = {MAX}\n"))
        .start()
        .await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let bob = idp.token("bob", &["ml-engineers"]);

    // bob works through his 100 GETs while alice floods.
    let flooding = Arc::new(AtomicBool::new(true));
    let bob_run = {
        let (client, url, bob, flooding) = (
            p.client.clone(),
            p.url("/datasets/small.txt"),
            bob.clone(),
            flooding.clone(),
        );
        tokio::spawn(async move {
            let mut took = Vec::new();
            for _ in 0..100 {
                let start = Instant::now();
                let r = client.get(&url, Some(&bob)).await;
                took.push(start.elapsed());
                assert_eq!(r.status, 200, "bob was refused: {}", r.text());
                assert_eq!(&r.body[..], b"small");
            }
            flooding.store(false, Ordering::Relaxed);
            took
        })
    };

    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        flood.spawn(get_and_hold(p.addr, "/datasets/big.bin".into(), alice.clone()));
    }
    let answers = timeout(BOUND, flood.join_all())
        .await
        .expect("the flood did not settle");
    let mut held = Vec::new();
    let mut refused = 0;
    for (r, s) in answers {
        match r.status {
            200 => held.push(s),
            503 => {
                let text = r.text();
                assert!(text.contains("<Code>SlowDown</Code>"), "{text}");
                assert_eq!(r.header("retry-after"), Some("1"));
                refused += 1;
            }
            other => panic!("alice got {other}: {}", r.text()),
        }
    }
    eprintln!(
        "alice's flood of {FLOOD}: {} served, {refused} refused",
        held.len()
    );
    assert_eq!(held.len(), MAX);
    assert_eq!(refused, FLOOD - MAX);

    // alice keeps at it (now refused at once) for as long as bob is working.
    let mut hammered = 0;
    while flooding.load(Ordering::Relaxed) {
        let r = p.client.get(&p.url("/datasets/small.txt"), Some(&alice)).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.s3_code(), "SlowDown");
        hammered += 1;
    }
    let mut took = timeout(BOUND, bob_run)
        .await
        .expect("bob did not finish")
        .unwrap();
    took.sort();
    eprintln!(
        "bob's 100 GETs during alice's flood (+{hammered} more refused): p50 {:?}, p99 {:?}, max {:?}",
        percentile(&took, 50),
        percentile(&took, 99),
        took.last().unwrap()
    );

    // alice's held GETs end when she goes; her slots are hers again.
    drop(held);
    until("alice's in-flight GETs released", || async {
        p.client
            .get(&p.url("/datasets/small.txt"), Some(&alice))
            .await
            .status
            == 200
    })
    .await;

    let refusals = FLOOD - MAX + hammered;
    let audit = p.audit(FLOOD + hammered + 100).await;
    let throttled: Vec<&Value> = audit
        .iter()
        .filter(|r| r["reason"] == "identity_concurrency")
        .collect();
    assert!(throttled.len() >= refusals, "{} < {refusals}", throttled.len());
    for r in &throttled {
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["identity"]["sub"], "alice", "{r}");
    }
    assert!(
        audit
            .iter()
            .filter(|r| r["identity"]["sub"] == "bob")
            .all(|r| r["status"] == 200)
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "identity_concurrency")]
        ),
        throttled.len() as f64
    );
}

/// `requests_per_second_per_identity = 5`, burst 5: an identity's first 5 quick requests are
/// served, the rest refused 503 SlowDown with Retry-After; another identity is unaffected.
#[tokio::test]
async fn one_identity_over_its_rate_is_refused_slowdown_with_retry_after() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    std::fs::write(s3.path("datasets", "small.txt"), b"small").unwrap();
    let p = proxy(&idp, &s3)
        .extra("[limits]\nrequests_per_second_per_identity = 5\nburst_per_identity = 5\n")
        .start()
        .await;
    let alice = idp.token("alice", &["ml-engineers"]);
    let bob = idp.token("bob", &["ml-engineers"]);
    let url = p.url("/datasets/small.txt");

    let start = Instant::now();
    let mut answers = Vec::new();
    for _ in 0..20 {
        answers.push(p.client.get(&url, Some(&alice)).await);
    }
    let took = start.elapsed();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    eprintln!("20 requests in {took:?}: {statuses:?}");
    assert_eq!(statuses[..5], [200; 5], "the burst was not served");
    // At 5 per second, only what time itself earned back may slip through after the burst.
    let earned = (took.as_secs_f64() * 5.0).floor() as usize;
    let served_later = statuses[5..].iter().filter(|&&s| s == 200).count();
    assert!(
        served_later <= earned,
        "{served_later} served after the burst in {took:?}"
    );
    let refused: Vec<_> = answers[5..].iter().filter(|r| r.status != 200).collect();
    assert!(!refused.is_empty());
    for r in &refused {
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.s3_code(), "SlowDown");
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1, "Retry-After {retry}");
    }

    let other = p.client.get(&url, Some(&bob)).await;
    assert_eq!(other.status, 200, "{}", other.text());

    let audit = p.audit(21).await;
    let limited: Vec<&Value> = audit.iter().filter(|r| r["reason"] == "identity_rate").collect();
    assert_eq!(limited.len(), refused.len(), "{audit:?}");
    for r in &limited {
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["identity"]["sub"], "alice", "{r}");
    }
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "identity_rate")]
        ),
        refused.len() as f64
    );
    assert_eq!(s3.requests(), 21 - refused.len());
}

// ------------------------------------------------------------------------------------
// Bodies that stop arriving
// ------------------------------------------------------------------------------------

/// A streamed upload whose caller stops sending mid-body is refused `400 RequestTimeout`
/// after `client_body_idle_timeout`; nothing is stored.
#[tokio::test]
async fn an_upload_that_stops_arriving_is_refused_and_nothing_is_stored() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nclient_body_idle_timeout = \"1s\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let head = format!(
        "PUT /datasets/stalled.bin HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\ncontent-length: 1000\r\n\r\n"
    );
    // 100 of the 1000 bytes ... and nothing more
    let r = exchange(p.addr, &format!("{head}{}", "x".repeat(100))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>RequestTimeout</Code>"), "{}", r.text());
    assert!(
        !s3.path("datasets", "stalled.bin").exists(),
        "a stalled upload was stored"
    );
    let audit = p.audit(1).await;
    let rec = audit.last().unwrap();
    assert_eq!(rec["reason"], "client_body_idle", "{rec}");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "client_body_idle")]
        ),
        1.0
    );
}

/// An STS call whose form stops arriving is answered as STS answers a bad call
/// (`ValidationError`) and audited under the same reason as a stalled upload, so one query
/// finds every dripped body.
#[tokio::test]
async fn a_dripped_sts_call_is_audited_as_a_stalled_body() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra(&format!("{STS}\n[limits]\nclient_body_idle_timeout = \"1s\"\n"))
        .start()
        .await;
    let head = "POST / HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\n";
    let r = exchange(
        p.addr,
        &format!("{head}Action=AssumeRoleWithWebIdentity&Version=2011-06-15"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>ValidationError</Code>"), "{}", r.text());
    let audit = p.audit(1).await;
    let rec = audit.last().unwrap();
    assert_eq!(rec["route"], "sts", "{rec}");
    assert_eq!(rec["reason"], "client_body_idle", "{rec}");
}

/// The small bodies claimgate reads whole before authorizing — a DeleteObjects list, a
/// browser form's fields (read before any credential is proven) — are cut off when they
/// stop arriving, and nothing reaches the store.
#[tokio::test]
async fn a_dripped_delete_list_or_form_is_cut_off_before_anything_is_forwarded() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nclient_body_idle_timeout = \"1s\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let xml = "<Delete><Object><Key>a</Key></Object></Delete>";
    let head = format!(
        "POST /datasets?delete HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\ncontent-length: {}\r\n\r\n",
        xml.len()
    );
    let r = exchange(p.addr, &format!("{head}{}", &xml[..10])).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>RequestTimeout</Code>"), "{}", r.text());

    // A browser form upload (no Authorization header: its credentials are in the form).
    let boundary = "XyZ";
    let head = format!(
        "POST /datasets HTTP/1.1\r\nhost: localhost\r\ncontent-type: multipart/form-data; boundary={boundary}\r\ncontent-length: 10000\r\n\r\n"
    );
    let r = exchange(
        p.addr,
        &format!("{head}--{boundary}\r\ncontent-disposition: form-data; name=\"key\"\r\n\r\nx"),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("<Code>RequestTimeout</Code>"), "{}", r.text());

    assert_eq!(s3.requests(), 0, "a dripped body reached the store");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "claimgate_limit_refusals_total",
            &[("limit", "client_body_idle")]
        ),
        2.0
    );
}

/// On an HTTP route (a feature store) the per-identity limit answers in the route's own
/// dialect: `429 Too Many Requests`, a JSON problem, with `Retry-After`.
#[tokio::test]
async fn an_http_route_answers_a_throttled_identity_429_problem() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let feast = TestHttp::start().await;
    let route = format!(
        "[limits]\nrequests_per_second_per_identity = 1\nburst_per_identity = 1\n\n{}",
        feast.route()
    );
    let policy = format!(
        "{POLICY}\n[[roles]]\nname = \"features\"\nmembers = [ {{ claim = \"groups\", contains = \"ml-engineers\" }} ]\nallow = [ {{ actions = [\"http:POST\"], resources = [\"http://features/*\"] }} ]\n"
    );
    let p = proxy(&idp, &s3).policy(&policy).extra(&route).start().await;
    let t = idp.token("alice", &["ml-engineers"]);
    let url = p.url("/features/get-online-features");
    let first = p.client.request("POST", &url, Some(&t), Bytes::new()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = p.client.request("POST", &url, Some(&t), Bytes::new()).await;
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.headers["content-type"], "application/problem+json");
    assert!(second.headers.contains_key("retry-after"));
    let problem: Value = serde_json::from_slice(&second.body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["code"], "TooManyRequests");
    assert_eq!(
        feast.seen().len(),
        1,
        "the throttled request reached the feature store"
    );
}
