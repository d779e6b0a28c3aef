//! Listeners: the proxy port (HTTP/1.1 and HTTP/2, TLS when configured), the admin port
//! (metrics, health), connection limits and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pipeline::{self, Proxy};

/// Most connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 10_000;
/// A client must finish its TLS handshake / request head within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A bound, not yet running server.
pub struct Server {
    proxy: Arc<Proxy>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Opens the audit sink, builds the proxy and binds both ports.
    pub async fn bind(config: Arc<Config>, clock: SharedClock) -> Result<Server, String> {
        let audit = AuditLog::open(&config.audit).map_err(|e| format!("audit log: {e}"))?;
        Self::bind_with(config, clock, audit).await
    }

    /// Like [`Server::bind`] with a given audit writer (tests).
    pub async fn bind_with(
        config: Arc<Config>,
        clock: SharedClock,
        audit: AuditLog,
    ) -> Result<Server, String> {
        let tls = (config.server.tls.as_ref()).map(|t| TlsAcceptor::from(t.config.clone()));
        let metrics = Arc::new(Metrics::new());
        let proxy = Arc::new(Proxy::new(config.clone(), audit, metrics, clock)?);
        let listener = TcpListener::bind(config.server.listen)
            .await
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
            proxy,
            listener,
            admin,
            tls,
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

    /// The shared proxy state.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains in-flight requests
    /// for at most `server.shutdown_grace`, and flushes the audit log.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            proxy,
            listener,
            admin,
            tls,
        } = self;
        let refreshers = proxy.auth.spawn_background();
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(l, proxy.clone())));
        let graceful = GracefulShutdown::new();
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HANDSHAKE_TIMEOUT);
        // Pings find dead HTTP/2 peers, whose streams would otherwise hold a connection slot.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        let mut connections = tokio::task::JoinSet::new();

        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = &mut shutdown => break,
            };
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
            let _ = stream.set_nodelay(true);
            let proxy = proxy.clone();
            let tls = tls.clone();
            let builder = builder.clone();
            let watcher = graceful.watcher();
            connections.spawn(async move {
                let _permit = permit;
                serve_connection(stream, remote, tls, proxy, builder, watcher).await;
            });
            // Reap finished connections so the set stays as small as the live ones.
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        let grace = proxy.config.server.shutdown_grace;
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("in-flight requests did not finish within {grace:?}; closing them");
        }
        // Whatever is left is cut off now; dropping their requests writes their (incomplete)
        // audit records before the flush below.
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        for r in refreshers {
            r.abort();
        }
        if let Some(a) = admin_task {
            a.abort();
        }
        if !proxy.audit.flush(Duration::from_secs(10)).await {
            tracing::error!("audit log could not be flushed");
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(proxy, req, remote).await) }
    });
    match tls {
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        }
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let _ = watcher.watch(conn.into_owned()).await;
        }
    }
}

async fn serve_admin(listener: TcpListener, proxy: Arc<Proxy>) {
    serve_simple(listener, move |req| admin_response(&proxy, req.uri().path())).await;
}

/// Serves a small HTTP/1.1 endpoint (admin port, `claimgate dev`'s issuer and feature
/// store) whose answers are computed from the request head alone.
pub async fn serve_simple<F, B>(listener: TcpListener, answer: F)
where
    F: Fn(&http::Request<hyper::body::Incoming>) -> http::Response<B> + Send + Sync + 'static,
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
                let resp = answer(&req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_response(proxy: &Proxy, path: &str) -> http::Response<crate::body::ProxyBody> {
    use http::StatusCode;
    match path {
        "/metrics" => pipeline::plain(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            proxy.metrics.render(),
        ),
        "/healthz" => pipeline::plain(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if proxy.auth.ready() => pipeline::plain(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => pipeline::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: identity provider keys not loaded yet\n",
        ),
        _ => pipeline::plain(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
