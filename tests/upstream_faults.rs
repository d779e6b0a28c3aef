//! Upstream faults end to end: an upstream that refuses connections, breaks or stalls a
//! download, dies mid-upload, never answers, or answers 5xx. The caller always sees an error
//! (never a short body passed off as whole), the audit record names what happened, and the
//! proxy keeps serving afterwards.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::*;

const MIB: usize = 1 << 20;
const KIB64: usize = 64 * 1024;
/// What the well-behaved upstream answers to a GET.
const GOOD_BODY: &[u8] = b"all good after the fault";
const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>upstream-req-1</RequestId></Error>\n";

// ------------------------------------------------------------------------------------
// Bounded waits
// ------------------------------------------------------------------------------------

/// Awaits `f`, failing the test if it takes longer than `secs`.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {secs} s"))
}

/// The first `n` audit records, waited for (bounded).
async fn records(p: &TestProxy, n: usize) -> Vec<Value> {
    let audit = within(15, "audit records", p.audit(n)).await;
    assert!(audit.len() >= n, "expected {n} audit records, got {audit:?}");
    audit
}

// ------------------------------------------------------------------------------------
// A scripted raw-TCP upstream
// ------------------------------------------------------------------------------------

/// How the fake upstream treats the next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reads the whole request, answers 200 (`GOOD_BODY` to a GET) and closes.
    Good,
    /// 200 with `Content-Length: 1 MiB`, 64 KiB of it, then closes (with an RST if `rst`).
    BreakMidBody { rst: bool },
    /// Reads the head and about 64 KiB of the body, then closes.
    DieMidUpload,
    /// Reads the head and about 64 KiB of the body, then stops reading (and stays open).
    StopReadingMidUpload,
    /// Reads the whole request and never answers.
    Silent,
    /// 200 with `Content-Length: 1 MiB + 64 KiB`, 64 KiB of it, then silence.
    StallMidBody,
    /// 503 with an S3 `SlowDown` error.
    SlowDown,
}

#[derive(Default)]
struct Seen {
    /// Request heads, in order of arrival.
    heads: Vec<String>,
    /// Body bytes read per request.
    body_bytes: Vec<usize>,
}

struct Fake {
    url: String,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
}

impl Fake {
    async fn start(mode: Mode) -> Fake {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), mode)
    }

    fn on(listener: TcpListener, mode: Mode) -> Fake {
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake {
            url,
            mode: Arc::new(Mutex::new(mode)),
            requests: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        let (mode, requests, seen) = (fake.mode.clone(), fake.requests.clone(), fake.seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let mode = *mode.lock().unwrap();
                let (requests, seen) = (requests.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, mode, &requests, &seen).await;
                });
            }
        });
        fake
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn body_bytes(&self) -> Vec<usize> {
        self.seen.lock().unwrap().body_bytes.clone()
    }

    fn heads(&self) -> Vec<String> {
        self.seen.lock().unwrap().heads.clone()
    }
}

/// Reads up to the end of the request head; returns the head and what followed it.
async fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > KIB64 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A header's value in a raw head (case-insensitive name).
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Reads the request body: `Content-Length` bytes, or a chunked body to its last chunk.
/// Stops early once `stop_after` bytes arrived. Returns how many body bytes were read.
async fn read_body(s: &mut TcpStream, head: &str, mut got: Vec<u8>, stop_after: usize) -> usize {
    let length = header_value(head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let chunked = header_value(head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let mut chunk = [0u8; 16384];
    loop {
        let done = match length {
            Some(n) => got.len() >= n,
            None if chunked => find(&got, b"\r\n0\r\n\r\n").is_some() || got.starts_with(b"0\r\n\r\n"),
            None => true,
        };
        if done || got.len() >= stop_after {
            return got.len();
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return got.len(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_one(
    mut s: TcpStream,
    mode: Mode,
    requests: &AtomicUsize,
    seen: &Mutex<Seen>,
) -> std::io::Result<()> {
    let (head, rest) = read_head(&mut s).await?;
    requests.fetch_add(1, Ordering::SeqCst);
    let is_get = head.starts_with("GET ");
    let stop_after = if matches!(mode, Mode::DieMidUpload | Mode::StopReadingMidUpload) {
        KIB64
    } else {
        usize::MAX
    };
    let body_bytes = read_body(&mut s, &head, rest, stop_after).await;
    {
        let mut seen = seen.lock().unwrap();
        seen.heads.push(head);
        seen.body_bytes.push(body_bytes);
    }
    match mode {
        Mode::Good => {
            let body: &[u8] = if is_get { GOOD_BODY } else { b"" };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"fake\"\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            s.flush().await?;
        }
        Mode::BreakMidBody { rst } => {
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n").as_bytes())
                .await?;
            s.write_all(&vec![b'x'; KIB64]).await?;
            s.flush().await?;
            // let the proxy read the 64 KiB before the connection goes
            tokio::time::sleep(Duration::from_millis(100)).await;
            if rst {
                s.set_zero_linger()?;
            }
        }
        Mode::DieMidUpload => {}
        Mode::StopReadingMidUpload | Mode::Silent => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Mode::StallMidBody => {
            let length = MIB + KIB64;
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n").as_bytes())
                .await?;
            s.write_all(&vec![b'x'; KIB64]).await?;
            s.flush().await?;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        Mode::SlowDown => {
            let head = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                SLOW_DOWN.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(SLOW_DOWN.as_bytes()).await?;
            s.flush().await?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// Clients that report body errors instead of panicking on them
// ------------------------------------------------------------------------------------

/// A response read frame by frame, with the error that ended its body, if one did.
struct Download {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
    error: Option<String>,
}

impl Download {
    fn code(&self) -> String {
        let t = String::from_utf8_lossy(&self.body);
        t.split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or_default()
            .to_string()
    }
}

/// A GET over a fresh HTTP/1.1 connection, reading the body to its end or its error.
async fn download(addr: SocketAddr, path: &str, token: &str) -> Download {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, mut body) = resp.into_parts();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Err(e) => {
                error = Some(format!("{e:?}"));
                break;
            }
        }
    }
    Download {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: got,
        error,
    }
}

/// What came back on a raw connection.
struct RawReply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn code(&self) -> String {
        self.text()
            .split("<Code>")
            .nth(1)
            .and_then(|r| r.split("</Code>").next())
            .unwrap_or_default()
            .to_string()
    }
}

/// A PUT of `pieces` (each sent after its pause) on a raw connection. The body is written
/// while the answer is read, so an answer that comes before the upload ends is seen, and a
/// write that fails (the proxy gave up on the upload) is not the test's failure.
async fn raw_put(addr: SocketAddr, path: &str, token: &str, pieces: Vec<(Duration, Vec<u8>)>) -> RawReply {
    let total: usize = pieces.iter().map(|(_, p)| p.len()).sum();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for (pause, piece) in pieces {
            tokio::time::sleep(pause).await;
            wr.write_all(&piece).await?;
        }
        wr.flush().await?;
        // keep the write half open: dropping it would half-close the connection
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, std::io::Error>(wr)
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = header_value(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| buf.len() >= end + 4 + n) {
                break;
            }
        }
        match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    let end = find(&buf, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head, got {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    RawReply {
        status,
        head,
        body: buf[end + 4..].to_vec(),
    }
}

/// `n` bytes of upload in 64 KiB pieces, sent back to back.
fn pieces(n: usize) -> Vec<(Duration, Vec<u8>)> {
    (0..n.div_ceil(KIB64))
        .map(|i| (Duration::ZERO, vec![b'u'; KIB64.min(n - i * KIB64)]))
        .collect()
}

/// After a fault: the same proxy, its upstream well again, serves a normal GET whole.
async fn still_serves(p: &TestProxy, fake: &Fake, token: &str) {
    fake.set(Mode::Good);
    let r = within(
        15,
        "a normal GET after the fault",
        download(p.addr, "/datasets/after", token),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error, None);
    assert_eq!(r.body, GOOD_BODY);
}

fn limits(lines: &str) -> String {
    format!("[limits]\n{lines}\n")
}

// ------------------------------------------------------------------------------------
// 1. Connection refused
// ------------------------------------------------------------------------------------

/// A route whose upstream refuses connections answers 502 BadGateway, audited as unreachable; once the upstream is up, the same proxy serves.
#[tokio::test]
async fn a_refused_connection_is_a_502_bad_gateway_and_the_proxy_recovers_when_the_upstream_returns() {
    let idp = TestIdp::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let p = proxy_to(&idp, &format!("http://{addr}")).start().await;
    let t = idp.token("alice", &["ml-engineers"]);

    let r = within(
        15,
        "GET to a refused upstream",
        download(p.addr, "/datasets/x", &t),
    )
    .await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "BadGateway");
    assert_eq!(r.headers["content-type"], "application/xml");
    assert_eq!(r.error, None);
    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_unreachable", "{}", audit[0]);
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["status"], 502);
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "connect")]) >= 1.0);

    // the upstream comes up on that port: the same proxy serves again
    let fake = Fake::on(TcpListener::bind(addr).await.unwrap(), Mode::Good);
    still_serves(&p, &fake, &t).await;
    assert_eq!(fake.requests(), 1);
}

// ------------------------------------------------------------------------------------
// 2. Upstream breaks mid-download
// ------------------------------------------------------------------------------------

/// Checks one broken download: the caller's body read ends in an error short of 1 MiB, the record says upstream_broke.
async fn broken_download(rst: bool) {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::BreakMidBody { rst }).await;
    let p = proxy_to(&idp, &fake.url).start().await;
    let t = idp.token("alice", &["ml-engineers"]);

    let r = within(
        15,
        "GET of a broken download",
        download(p.addr, "/datasets/big.bin", &t),
    )
    .await;
    // the head went out before the break; what follows must not pass for the whole object
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], MIB.to_string().as_str());
    assert!(r.body.len() < MIB, "a short body was presented whole");
    assert!(
        r.error.is_some(),
        "the body ended without an error after {} bytes",
        r.body.len()
    );

    let audit = records(&p, 1).await;
    let rec = &audit[0];
    assert_eq!(rec["reason"], "upstream_broke", "{rec}");
    assert_eq!(rec["incomplete"], true, "{rec}");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["upstream_status"], 200);
    let bytes_out = rec["bytes_out"].as_u64().unwrap();
    assert!(bytes_out < MIB as u64, "{rec}");
    assert_eq!(
        rec["detail"],
        format!("the upstream broke off the response body after {bytes_out} bytes")
    );
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "broke")]) >= 1.0);

    still_serves(&p, &fake, &t).await;
}

/// An upstream that closes mid-download (FIN) cuts the caller's body off with an error, audited upstream_broke.
#[tokio::test]
async fn an_upstream_closing_mid_download_is_an_error_for_the_caller_never_a_short_success() {
    broken_download(false).await;
}

/// An upstream that resets mid-download (RST) cuts the caller's body off with an error, audited upstream_broke.
#[tokio::test]
async fn an_upstream_resetting_mid_download_is_an_error_for_the_caller_never_a_short_success() {
    broken_download(true).await;
}

// ------------------------------------------------------------------------------------
// 3. Upstream dies mid-upload
// ------------------------------------------------------------------------------------

/// An upstream that dies after 64 KiB of a 4 MiB upload gives the caller 502 BadGateway, never 200, and the record says so.
#[tokio::test]
async fn an_upstream_dying_mid_upload_is_a_502_not_a_success() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::DieMidUpload).await;
    let p = proxy_to(&idp, &fake.url).start().await;
    let t = idp.token("alice", &["ml-engineers"]);

    let started = Instant::now();
    let r = within(
        15,
        "PUT to an upstream that dies",
        raw_put(p.addr, "/datasets/upload.bin", &t, pieces(4 * MIB)),
    )
    .await;
    assert_eq!(r.status, 502, "{}\n{}", r.head, r.text());
    assert_eq!(r.code(), "BadGateway");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fake.requests(), 1);
    let upstream_got = fake.body_bytes()[0];
    assert!(upstream_got < 4 * MIB, "the upstream read {upstream_got} bytes");

    let audit = records(&p, 1).await;
    let rec = &audit[0];
    assert_eq!(rec["operation"], "PutObject");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["status"], 502, "{rec}");
    // the upstream broke the exchange before answering: not the caller's doing
    assert_eq!(rec["reason"], "upstream_broke", "{rec}");
    assert!(rec.get("upstream_status").is_none_or(Value::is_null), "{rec}");
    assert!(rec["bytes_in"].as_u64().unwrap() < 4 * MIB as u64, "{rec}");
    let m = p.metrics().await;
    assert!(
        metric(&m, "claimgate_upstream_errors_total", &[("kind", "broke")]) >= 1.0,
        "{m}"
    );

    still_serves(&p, &fake, &t).await;
}

// ------------------------------------------------------------------------------------
// 4. Upstream never answers
// ------------------------------------------------------------------------------------

/// A GET to an upstream that reads the request and never answers is a 504 GatewayTimeout about `upstream_response_timeout` later.
// (hyper never polls a body that is already at its end, so a bodiless request's deadline
// must start when it is sent, not when its body "ends".)
#[tokio::test]
async fn a_silent_upstream_is_a_504_for_a_get() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::Silent).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_response_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let started = Instant::now();
    let r = within(
        10,
        "GET to a silent upstream",
        download(p.addr, "/datasets/x", &t),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "GatewayTimeout");
    assert!(
        took >= Duration::from_millis(900),
        "answered before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(fake.requests(), 1);

    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_timeout", "{}", audit[0]);
    assert_eq!(audit[0]["status"], 504);
    assert_eq!(audit[0]["decision"], "allow");
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "timeout")]) >= 1.0);

    still_serves(&p, &fake, &t).await;
}

/// A small PUT to an upstream that reads it whole and never answers is a 504 GatewayTimeout once the deadline passes after the upload.
#[tokio::test]
async fn a_silent_upstream_is_a_504_after_a_put_upload() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::Silent).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_response_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let started = Instant::now();
    let body = vec![(Duration::ZERO, b"small checkpoint".to_vec())];
    let r = within(
        10,
        "PUT to a silent upstream",
        raw_put(p.addr, "/datasets/small", &t, body),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}\n{}", r.head, r.text());
    assert_eq!(r.code(), "GatewayTimeout");
    assert!(
        took >= Duration::from_millis(900),
        "answered before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        fake.body_bytes(),
        [16],
        "the upstream did not get the whole upload"
    );

    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_timeout", "{}", audit[0]);
    assert_eq!(audit[0]["status"], 504);
    assert_eq!(audit[0]["bytes_in"], 16);
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "timeout")]) >= 1.0);

    still_serves(&p, &fake, &t).await;
}

/// An empty PUT (`Content-Length: 0`) to an upstream that never answers is a 504 GatewayTimeout, as a GET is.
#[tokio::test]
async fn a_silent_upstream_is_a_504_for_an_empty_put() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::Silent).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_response_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let started = Instant::now();
    let r = within(
        10,
        "empty PUT to a silent upstream",
        raw_put(p.addr, "/datasets/empty", &t, Vec::new()),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}\n{}", r.head, r.text());
    assert_eq!(r.code(), "GatewayTimeout");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_timeout", "{}", audit[0]);
}

/// An upload that takes longer than `upstream_response_timeout` to send is not cut off: the deadline starts after its last byte.
#[tokio::test]
async fn the_response_deadline_starts_after_a_slow_upload() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::Good).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_response_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    // five pieces 400 ms apart: the upload takes ~2 s, twice the response deadline
    let body: Vec<(Duration, Vec<u8>)> = (0..5)
        .map(|_| (Duration::from_millis(400), vec![b's'; 1000]))
        .collect();
    let started = Instant::now();
    let r = within(15, "a slow PUT", raw_put(p.addr, "/datasets/slow", &t, body)).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.text());
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(fake.body_bytes(), [5000]);
    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["status"], 200, "{}", audit[0]);
    assert_eq!(audit[0]["bytes_in"], 5000);
    assert!(audit[0].get("reason").is_none_or(Value::is_null), "{}", audit[0]);
}

// ------------------------------------------------------------------------------------
// 5. Upstream stalls mid-body
// ------------------------------------------------------------------------------------

/// An upstream that stops sending mid-body for longer than `upstream_body_idle_timeout` has the caller's body cut off with an error, audited upstream_stalled.
#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_off_after_the_idle_limit() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::StallMidBody).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_body_idle_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);

    let started = Instant::now();
    let r = within(
        10,
        "GET of a stalled download",
        download(p.addr, "/datasets/big.bin", &t),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(r.body.len() < MIB + KIB64, "a short body was presented whole");
    assert!(
        r.error.is_some(),
        "the body ended without an error after {} bytes",
        r.body.len()
    );
    assert!(
        took >= Duration::from_millis(900),
        "cut off before the idle limit: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    let audit = records(&p, 1).await;
    let rec = &audit[0];
    assert_eq!(rec["reason"], "upstream_stalled", "{rec}");
    assert_eq!(rec["incomplete"], true, "{rec}");
    assert_eq!(rec["decision"], "allow");
    assert!(rec["bytes_out"].as_u64().unwrap() < (MIB + KIB64) as u64, "{rec}");
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "stalled")]) >= 1.0);

    still_serves(&p, &fake, &t).await;
}

// ------------------------------------------------------------------------------------
// 6. Upstream answers 5xx
// ------------------------------------------------------------------------------------

/// An upstream's 503 SlowDown reaches the caller as is (status and S3 code), and the record has status 503.
#[tokio::test]
async fn an_upstream_503_slow_down_passes_through() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::SlowDown).await;
    let p = proxy_to(&idp, &fake.url).start().await;
    let t = idp.token("alice", &["ml-engineers"]);

    let r = within(15, "GET answered 503", download(p.addr, "/datasets/x", &t)).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "SlowDown");
    assert_eq!(r.error, None);
    assert_eq!(r.body, SLOW_DOWN.as_bytes());

    let audit = records(&p, 1).await;
    let rec = &audit[0];
    assert_eq!(rec["status"], 503, "{rec}");
    assert_eq!(rec["upstream_status"], 503, "{rec}");
    assert_eq!(rec["decision"], "allow");
    // (`incomplete` is left out of a record whose body went out whole)
    assert!(rec.get("incomplete").is_none_or(|v| v == false), "{rec}");

    // the same answer to an upload: passed on, not mistaken for a failure of ours
    let put = within(
        15,
        "PUT answered 503",
        raw_put(
            p.addr,
            "/datasets/y",
            &t,
            vec![(Duration::ZERO, b"data".to_vec())],
        ),
    )
    .await;
    assert_eq!(put.status, 503, "{}\n{}", put.head, put.text());
    assert_eq!(put.code(), "SlowDown");

    still_serves(&p, &fake, &t).await;
    // what went upstream was re-signed with the route's credentials, never the bearer token
    for head in fake.heads() {
        let auth = header_value(&head, "authorization").unwrap_or_default();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 "), "{head}");
    }
}

/// An upstream that takes the TCP connection but never completes the TLS handshake is a 502
/// about `upstream_connect_timeout` later, for an upload too (whose body waits on the
/// connection and so can never start the response deadline).
#[tokio::test]
async fn a_tls_handshake_that_never_completes_is_a_502_after_the_connect_timeout() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::Silent).await;
    let https = fake.url.replacen("http://", "https://", 1);
    let p = proxy_to(&idp, &https)
        .extra(&limits("upstream_connect_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let started = Instant::now();
    let body = vec![(Duration::ZERO, b"small checkpoint".to_vec())];
    let r = within(
        10,
        "PUT to an upstream stuck in its TLS handshake",
        raw_put(p.addr, "/datasets/small", &t, body),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}\n{}", r.head, r.text());
    assert_eq!(r.code(), "BadGateway");
    assert!(
        took >= Duration::from_millis(900),
        "answered before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_unreachable", "{}", audit[0]);
    let m = p.metrics().await;
    assert!(metric(&m, "claimgate_upstream_errors_total", &[("kind", "connect")]) >= 1.0);
}

/// An upstream that stops reading an upload (and neither closes nor answers) is a 504 about
/// `upstream_body_idle_timeout` later: the proxy does not wait on it forever.
#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_is_a_504() {
    let idp = TestIdp::start().await;
    let fake = Fake::start(Mode::StopReadingMidUpload).await;
    let p = proxy_to(&idp, &fake.url)
        .extra(&limits("upstream_body_idle_timeout = \"1s\""))
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let r = within(
        15,
        "PUT to an upstream that stopped reading",
        raw_put(p.addr, "/datasets/upload.bin", &t, pieces(64 * MIB)),
    )
    .await;
    assert_eq!(r.status, 504, "{}\n{}", r.head, r.text());
    assert_eq!(r.code(), "GatewayTimeout");
    let audit = records(&p, 1).await;
    assert_eq!(audit[0]["reason"], "upstream_timeout", "{}", audit[0]);
    assert!(
        audit[0]["bytes_in"].as_u64().unwrap() < 64 * MIB as u64,
        "{}",
        audit[0]
    );
}
