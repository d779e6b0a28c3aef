//! Listeners: the proxy port (HTTP/1.1 and HTTP/2, TLS when configured), the admin port
//! (metrics, health), connection limits and graceful shutdown.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::config::{Config, Limits, OnAuditFailure};
use crate::metrics::Metrics;
use crate::pipeline::{self, Proxy, Shared};
use crate::reload::{Live, Trigger};
use crate::traces::Traces;
use crate::workers::Workers;

/// A bound, not yet running server.
pub struct Server {
    live: Arc<Live>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    signals: Signals,
}

/// The daemon signals: SIGHUP reloads the config set and reopens the audit file; SIGUSR1
/// only reopens the audit file (logrotate's `postrotate`). Installed when the server binds,
/// so from then on SIGHUP can never take the default action (terminate).
struct Signals {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    user1: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                hangup: signal(SignalKind::hangup()).ok(),
                user1: signal(SignalKind::user_defined1()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn serve(self, live: Arc<Live>) {
        #[cfg(unix)]
        {
            let (mut hangup, mut user1) = (self.hangup, self.user1);
            loop {
                tokio::select! {
                    Some(()) = recv(&mut hangup) => {
                        tracing::info!("SIGHUP: reloading the config set and reopening the audit log");
                        live.shared().audit.reopen();
                        let _ = live.reload(Trigger::Signal).await;
                    }
                    Some(()) = recv(&mut user1) => {
                        tracing::info!("SIGUSR1: reopening the audit log");
                        live.shared().audit.reopen();
                    }
                    else => return,
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = live;
        }
    }
}

#[cfg(unix)]
async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => None,
    }
}

impl Server {
    /// Opens the audit sink, builds the proxy and binds both ports.
    pub async fn bind(config: Arc<Config>, clock: SharedClock) -> Result<Server, String> {
        Self::bind_with(config, clock, None).await
    }

    /// Like [`Server::bind`], with audit records written to `audit_to` instead of the
    /// configured sink (tests).
    pub async fn bind_with(
        config: Arc<Config>,
        clock: SharedClock,
        audit_to: Option<Box<dyn Write + Send>>,
    ) -> Result<Server, String> {
        let metrics = Arc::new(Metrics::new());
        let audit = match audit_to {
            Some(out) => AuditLog::with_writer(out, config.audit.format, metrics.clone()),
            None => AuditLog::open(
                &config.audit.sink,
                config.audit.format,
                config.audit.syslog.clone(),
                metrics.clone(),
            )
            .map_err(|e| format!("audit log: {e}"))?,
        };
        let shared = Shared {
            audit,
            metrics,
            clock,
            throttle: Default::default(),
            traces: Traces::from_env().map_err(|e| e.to_string())?,
        };
        let live = Arc::new(Live::new(config.clone(), shared)?);
        let listener = listen(config.server.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
        let admin = match config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?,
            ),
            None => None,
        };
        Ok(Server {
            live,
            listener,
            admin,
            signals: Signals::install(),
        })
    }

    /// The proxy's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The admin address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The config set in force, and the means to reload it.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains in-flight requests
    /// for at most `server.shutdown_grace`, and flushes the audit log. Returns whether every
    /// audit record was written.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> bool {
        let Server {
            live,
            listener,
            admin,
            signals,
        } = self;
        live.start();
        let workers = match Workers::start(live.current().config.server.workers) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot start connection workers");
                return false;
            }
        };
        let watch = tokio::spawn(live.clone().watch());
        let signal_task = tokio::spawn(signals.serve(live.clone()));
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, live.clone())));
        // Every connection watches this; it turns true when the server starts draining.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let mut connections = tokio::task::JoinSet::new();

        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let proxy = live.current();
            // Over the limit, a connection is answered at once rather than left in the
            // kernel's queue: the client learns to back off, and accept stays responsive.
            let Some(slot) = Open::claim(&open, proxy.config.limits.max_connections, &proxy.metrics) else {
                refuse_connection(&proxy, stream, remote);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let stopping = stopping.clone();
            let live = live.clone();
            workers.spawn(&mut connections, async move {
                let _slot = slot;
                // Registered with the worker's own reactor, where the connection lives.
                let Ok(stream) = stream.into_std().and_then(TcpStream::from_std) else {
                    return;
                };
                serve_connection(stream, remote, live, proxy, stopping).await;
            });
            // Reap finished connections so the set stays as small as the live ones.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let grace = live.current().config.server.shutdown_grace;
        live.drain();
        let _ = stop.send(true);
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("in-flight requests did not finish within {grace:?}; closing them");
        }
        // Whatever is left is cut off now; dropping their requests writes their (incomplete)
        // audit records before the flush below.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        // What connections spawned on the workers (HTTP/2 streams, upstream connections)
        // goes with them, before the audit flush below.
        workers.shutdown().await;
        watch.abort();
        signal_task.abort();
        live.stop();
        if let Some(a) = admin_task {
            a.abort();
        }
        let flushed = live.shared().audit.flush(Duration::from_secs(10)).await;
        if !flushed {
            tracing::error!("audit log could not be flushed: records still queued are lost");
        }
        // The last spans go to the collector too; its shutdown blocks, so off the reactor.
        let traces = live.shared().traces.clone();
        let _ = tokio::task::spawn_blocking(move || traces.shutdown(Duration::from_secs(5))).await;
        flushed
    }
}

/// Binds the proxy port with a deep accept queue: a burst of connections must reach
/// `accept` to be answered (served, or refused at the connection limit) rather than be
/// dropped by the kernel (tokio's default backlog is 128; the kernel caps this at somaxconn).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// One open client connection, counted while it lives.
struct Open {
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Open {
    fn claim(count: &Arc<AtomicUsize>, max: usize, metrics: &Arc<Metrics>) -> Option<Open> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics.connections(1);
        Some(Open {
            count: count.clone(),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections(-1);
    }
}

/// Answers a connection over the limit with a 503 (plain HTTP; a TLS client is just closed,
/// as no handshake is spent on it) and closes it.
fn refuse_connection(proxy: &Proxy, stream: TcpStream, remote: SocketAddr) {
    const BODY: &str = "claimgate: too many connections open; retry shortly\n";
    if proxy.tls.is_none() {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        // A fresh socket's send buffer is empty: this never blocks, and a short write is moot.
        let _ = stream.try_write(answer.as_bytes());
    }
    let max = proxy.config.limits.max_connections;
    pipeline::connection_refused(
        proxy,
        remote,
        503,
        "connections",
        format!("{max} connections already open (limits.max_connections)"),
    );
}

/// The HTTP/1.1 settings of this config set's limits.
fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // hyper keeps up to 100 header slots on the stack; a different number moves them to the heap.
    if limits.max_headers != 100 {
        h1.max_headers(limits.max_headers);
    }
    h1
}

/// The HTTP/2 settings of this config set's limits.
fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    // Pings find dead HTTP/2 peers, whose streams would otherwise hold a connection slot.
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    h2
}

/// Runs `step` unless the server starts draining first: a connection that has not yet sent
/// its first bytes (or finished its TLS handshake) is simply closed then, as hyper closes
/// an idle one, rather than held until its head timeout.
async fn until_stopping<F: std::future::Future>(
    step: F,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> Option<F::Output> {
    let mut stopping = stopping.clone();
    tokio::select! {
        out = step => Some(out),
        _ = stopping.wait_for(|stop| *stop) => None,
    }
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Decides a plain connection's protocol by peeking at its first bytes, which stay in the
/// socket for hyper. (hyper-util's auto-detection reads them instead and hands them back
/// as a prefix: the request head then arrives in two reads, and hyper's read buffer grows
/// to 16 KiB, kept for the connection's life: 8 KiB more on every idle keep-alive
/// connection, README, Performance.) "PRI" is a method no HTTP/1 request may use (RFC 9113
/// §3.4), so three bytes decide.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; 3];
    loop {
        let n = stream.peek(&mut first).await?;
        match classify_preface(&first[..n]) {
            Some(protocol) => return Ok(protocol),
            // "P" or "PR": POST/PUT/PATCH or the preface, split across segments; the
            // bytes already read stay readable, so wait a little rather than spin.
            None => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// What the first bytes of a plain connection say, if they say enough: nothing at all
/// (end of stream) is left to hyper as HTTP/1.
fn classify_preface(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() || !H2_PREFACE.starts_with(seen) {
        Some(Protocol::Http1)
    } else if seen.len() >= 3 {
        Some(Protocol::Http2)
    } else {
        None
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    live: Arc<Live>,
    proxy: Arc<Proxy>,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let limits = &proxy.config.limits;
    let head_timeout = limits.request_head_timeout;
    let activity = Arc::new(Activity::default());
    let tracked = activity.clone();
    // A connection keeps the certificate and connection limits of the config set it was
    // accepted under; each request takes the set in force when it arrives, and keeps it.
    let service = service_fn(move |req| {
        let busy = Busy::start(&tracked);
        let proxy = live.current();
        async move {
            // Boxed per request: hyper keeps a slot the size of this future on every
            // connection for its life, and moves the future into it for each request.
            let resp = Box::pin(pipeline::handle(proxy, req, remote)).await;
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let idle = limits.idle_timeout;
    // Each way in is boxed on its own, and the whole once more: a connection holds only the
    // state of the way it came in (a plain connection carries no TLS session), and none of
    // it is laid out twice in the task. The task went from 12.8 KB to 0.7 (README,
    // Performance: idle connections).
    let serving = async {
        match proxy.tls.clone() {
            Some(acceptor) => {
                Box::pin(async {
                    let handshake = tokio::time::timeout(head_timeout, acceptor.accept(stream));
                    let stream = match until_stopping(handshake, &stopping).await? {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return None;
                        }
                        Err(_) => {
                            head_timed_out(&proxy, remote, head_timeout);
                            return None;
                        }
                    };
                    // Over TLS, HTTP/2 is what ALPN settled on (RFC 9113 §3.2).
                    let protocol = match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => Protocol::Http2,
                        _ => Protocol::Http1,
                    };
                    Some(speak(protocol, stream, limits, service, stopping, &activity, idle).await)
                })
                .await
            }
            None => {
                Box::pin(async {
                    let protocol = until_stopping(sniff(&stream), &stopping).await?.ok()?;
                    Some(speak(protocol, stream, limits, service, stopping, &activity, idle).await)
                })
                .await
            }
        }
    };
    let mut serving = Box::pin(serving);
    // hyper's own head timer starts only once the protocol is known, which a client that
    // sends nothing never lets us decide: the first request's head is due within
    // `head_timeout` of accept, whatever the protocol.
    let first_head_due = tokio::time::sleep(head_timeout);
    let result = tokio::select! {
        r = &mut serving => r,
        () = first_head_due => {
            if activity.served.load(Ordering::Relaxed) == 0 {
                head_timed_out(&proxy, remote, head_timeout);
                return;
            }
            serving.await
        }
    };
    let Some(result) = result else { return };
    let Err(e) = result else { return };
    if e.is_timeout() && activity.served.load(Ordering::Relaxed) == 0 {
        // A kept-alive connection that idles out after serving is not a refusal; one that
        // never completed a request head is (slowloris, or a connection opened and left).
        head_timed_out(&proxy, remote, head_timeout);
    } else if e.is_parse_too_large() {
        // hyper has answered 431 already.
        pipeline::connection_refused(
            &proxy,
            remote,
            431,
            "header_too_large",
            format!(
                "request head larger than {} bytes or with more than {} fields (limits.max_header_bytes, limits.max_headers)",
                proxy.config.limits.max_header_bytes, proxy.config.limits.max_headers
            ),
        );
    }
}

/// Serves `io` in `protocol` until the connection ends. Each protocol's connection state is
/// boxed on its own, so a connection holds only the state of the protocol it speaks.
async fn speak<I, S, B>(
    protocol: Protocol,
    io: I,
    limits: &Limits,
    service: S,
    stopping: tokio::sync::watch::Receiver<bool>,
    activity: &Activity,
    idle: Duration,
) -> Result<(), hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match protocol {
        Protocol::Http1 => {
            let conn = http1_builder(limits).serve_connection(TokioIo::new(io), service);
            Box::pin(drive(conn, stopping, activity, idle)).await
        }
        Protocol::Http2 => {
            let conn = http2_builder(limits).serve_connection(TokioIo::new(io), service);
            Box::pin(drive(conn, stopping, activity, idle)).await
        }
    }
}

/// Runs a connection until it ends, closing it gracefully (HTTP/2 GOAWAY; HTTP/1.1 after
/// the response in flight) when the server drains or when it has had no request in flight
/// for `idle`.
async fn drive<C: GracefulConnection>(
    conn: C,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    activity: &Activity,
    idle: Duration,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    let wake = tokio::time::sleep(idle);
    tokio::pin!(wake);
    let mut closing = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => return done,
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = wake.as_mut(), if !closing => match activity.idle_since() {
                Some(since) if since.elapsed() >= idle => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                // Busy, or idle for less: look again when the idle time could be up.
                since => {
                    let from = since.unwrap_or_else(std::time::Instant::now);
                    wake.as_mut().reset(tokio::time::Instant::from_std(from + idle));
                }
            },
        }
    }
}

/// What a connection is doing: requests in flight, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    opened: std::time::Instant,
    /// When the last request in flight finished, in ms after `opened`.
    quiet_since_ms: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            opened: std::time::Instant::now(),
            quiet_since_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Since when nothing has been in flight; `None` while something is.
    fn idle_since(&self) -> Option<std::time::Instant> {
        let ms = self.quiet_since_ms.load(Ordering::Acquire);
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| self.opened + Duration::from_millis(ms))
    }
}

/// One request in flight on a connection, from its head until its response body is done.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.served.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = self.0.opened.elapsed().as_millis() as u64;
        self.0.quiet_since_ms.store(ms, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct Tracked {
    body: crate::body::ProxyBody,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn head_timed_out(proxy: &Proxy, remote: SocketAddr, within: Duration) {
    pipeline::connection_refused(
        proxy,
        remote,
        408,
        "request_head_timeout",
        format!("no complete request head within {within:?} (limits.request_head_timeout)"),
    );
}

async fn serve_admin(listener: TcpListener, live: Arc<Live>) {
    serve_http1(listener, move |req| {
        let live = live.clone();
        async move { admin_response(&live, req.method(), req.uri().path()).await }
    })
    .await;
}

/// Serves a small HTTP/1.1 endpoint (`claimgate dev`'s issuer and feature store) whose answers
/// are computed from the request head alone.
pub async fn serve_simple<F, B>(listener: TcpListener, answer: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> http::Response<B> + Send + Sync + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_http1(listener, move |req| std::future::ready(answer(&req))).await;
}

/// Serves HTTP/1.1 on `listener`, each request answered by `answer` (the admin port and the
/// small endpoints of `claimgate dev`).
async fn serve_http1<F, Fut, B>(listener: TcpListener, answer: F)
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let answer = Arc::new(answer);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let resp = answer(req);
                async move { Ok::<_, Infallible>(resp.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn admin_response(
    live: &Live,
    method: &http::Method,
    path: &str,
) -> http::Response<crate::body::ProxyBody> {
    use http::{Method, StatusCode};
    let text = |status, body: String| pipeline::plain(status, "text/plain", Bytes::from(body));
    let proxy = live.current();
    match (path, method) {
        ("/metrics", _) => pipeline::plain(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            proxy.metrics.render(),
        ),
        ("/healthz", _) => text(StatusCode::OK, "ok\n".into()),
        ("/readyz", _) => {
            let loaded = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(live.loaded_at()),
            );
            let set = format!("config generation {} loaded {loaded}\n", proxy.generation);
            if live.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: draining for shutdown\n{set}"),
                )
            } else if !proxy.auth.ready() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: identity provider keys not loaded yet\n{set}"),
                )
            } else if !proxy.audit.is_up() && proxy.config.audit.on_failure == OnAuditFailure::Refuse {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: the audit log cannot be written (data access is refused)\n{set}"),
                )
            } else {
                text(StatusCode::OK, format!("ready\n{set}"))
            }
        }
        // Prometheus' convention: POST reloads, and the answer says what went wrong.
        ("/-/reload", &Method::POST) => match live.reload(Trigger::Admin).await {
            Ok(done) => {
                let mut body = format!("reloaded: config generation {}\n", done.generation);
                for d in &done.deferred {
                    body.push_str(&format!("not applied until restart: {d}\n"));
                }
                text(StatusCode::OK, body)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reload refused; the config set in force keeps serving:\n{e}\n"),
            ),
        },
        ("/-/reload", _) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /-/reload\n".into());
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_bytes_of_preface_mean_http2_and_anything_else_http1() {
        assert_eq!(classify_preface(b"PRI"), Some(Protocol::Http2));
        assert_eq!(classify_preface(H2_PREFACE), Some(Protocol::Http2));
        for http1 in [&b"GET"[..], b"POST", b"PUT", b"PATCH", b"G", b"PO", b"PRX", b""] {
            assert_eq!(classify_preface(http1), Some(Protocol::Http1), "{http1:?}");
        }
        // POST, PUT, PATCH or the preface: not yet decided.
        assert_eq!(classify_preface(b"P"), None);
        assert_eq!(classify_preface(b"PR"), None);
    }
}
