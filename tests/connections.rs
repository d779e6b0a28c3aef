//! Connections that sit idle are closed — gracefully, so no request is cut — on HTTP/1.1
//! and HTTP/2 alike, and a busy connection is never closed for idleness.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An idle HTTP/1.1 keep-alive connection is closed after `idle_timeout`, once its
/// response is done.
#[tokio::test]
async fn an_idle_http1_connection_is_closed() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nidle_timeout = \"1s\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let mut conn = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    conn.write_all(
        format!("GET /datasets?list-type=2 HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {t}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the server closes the connection (read returns 0) within a few seconds.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle HTTP/1.1 connection stayed open");
}

/// An idle HTTP/2 connection gets a GOAWAY after `idle_timeout`; one with a stream in
/// flight (a slow upload) is left alone until the stream is done.
#[tokio::test]
async fn an_idle_http2_connection_is_closed_and_a_busy_one_is_not() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let p = proxy(&idp, &s3)
        .extra("[limits]\nidle_timeout = \"1s\"\n")
        .start()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let stream = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);

    // A busy stream: an upload whose body arrives over 2.5 s, longer than idle_timeout.
    let (mut tx, body) = futures_channel_body();
    let req = http::Request::put(format!("{}/datasets/slow", p.url))
        .header("authorization", format!("Bearer {t}"))
        .header("content-length", "25")
        .body(body.boxed())
        .unwrap();
    let mut send2 = send.clone();
    let upload = tokio::spawn(async move { send2.send_request(req).await });
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(Bytes::from_static(b"chunk")).await;
    }
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(10), upload)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200, "the busy connection was cut");
    let _ = resp.into_body().collect().await;
    assert_eq!(
        std::fs::read(s3.path("datasets", "slow")).unwrap(),
        b"chunkchunkchunkchunkchunk"
    );

    // Now idle: the server closes it, gracefully.
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
    let after = send
        .send_request(
            http::Request::get(format!("{}/datasets?list-type=2", p.url))
                .body(full(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(after.is_err(), "the closed connection still took a request");
}

/// A body fed from the test, chunk by chunk.
fn futures_channel_body() -> (Feeder, BodyStream) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (Feeder(tx), BodyStream(rx))
}

struct Feeder(tokio::sync::mpsc::Sender<Bytes>);

impl Feeder {
    async fn send(&mut self, b: Bytes) {
        self.0.send(b).await.unwrap();
    }
}

struct BodyStream(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for BodyStream {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Connections that have sent nothing yet — on a plain listener, before the protocol is
/// known — are closed at once when draining starts, not held until their head timeout:
/// SIGTERM ends the process within a second or two, and the audit log has no bogus 408
/// record for them.
#[tokio::test]
async fn silent_connections_do_not_hold_up_shutdown_or_leave_records() {
    let idp = TestIdp::start().await;
    let s3 = TestS3::start(&["datasets"]).await;
    let mut p = proxy(&idp, &s3)
        .extra("[limits]\nrequest_head_timeout = \"20s\"\n")
        .spawn()
        .await;
    let t = idp.token("alice", &["ml-engineers"]);
    let served = p.client.get(&p.url("/datasets?list-type=2"), Some(&t)).await;
    assert_eq!(served.status, 200, "{}", served.text());
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(tokio::net::TcpStream::connect(p.addr).await.unwrap());
    }
    // A single "P" could still be POST or the HTTP/2 preface: undecided, and still silent.
    silent[0].write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = std::time::Instant::now();
    p.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait(Duration::from_secs(10));
        (s, p)
    })
    .await
    .unwrap();
    let (status, p) = status;
    let took = asked.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}\n{}",
        p.stderr()
    );
    assert!(
        took < Duration::from_secs(5),
        "shutdown waited {took:?} for silent connections"
    );
    let records = p.audit_file("audit.log");
    assert_eq!(
        records.len(),
        1,
        "only the served request has a record: {records:?}"
    );
    assert_eq!(records[0]["status"], 200);
    drop(silent);
}
