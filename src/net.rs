//! Network plumbing every side shares: PEM certificates, TLS configurations, and the
//! pooled outbound client. Upstream routes and JWKS fetching use the same client, the
//! listener the same certificate reader, so none of them depends on another to get one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS-capable connector every outbound client uses, with a deadline on the whole
/// connect (TCP and TLS handshake).
pub type Connector = Bounded<HttpsConnector<HttpConnector>>;

/// A connector whose connects (TCP and TLS together) must finish within `within`: a stalled
/// TLS handshake would otherwise hold a request — and an upload, whose body waits for the
/// connection — for as long as the peer likes.
#[derive(Clone, Debug)]
pub struct Bounded<C> {
    inner: C,
    within: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connect deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("connecting took longer than {0:?}")]
pub struct ConnectTimeout(Duration);

impl<C> tower_service::Service<http::Uri> for Bounded<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let within = self.within;
        Box::pin(async move {
            match tokio::time::timeout(within, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimeout(within)) as BoxError),
            }
        })
    }
}

/// Reads a PEM certificate chain.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The listener's TLS configuration from a PEM certificate chain and key, offering HTTP/2
/// and HTTP/1.1. `validate` builds it too, so a bad PEM is a config problem, not a failed
/// start.
pub fn server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = read_certs(cert)?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Trust roots: the system's certificates, the Mozilla roots compiled in (so a minimal
/// container without a CA bundle still works), and optionally an internal CA.
pub fn client_tls(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate must not stop the proxy; the rest still serve.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = read_certs(path)?;
        if certs.is_empty() {
            return Err(format!("{}: no certificates found", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("{}: bad CA certificate: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// A connector with TCP_NODELAY (small request/response exchanges otherwise stall on
/// Nagle + delayed ACK) that speaks HTTP/1.1 and, where the server offers it, HTTP/2, and
/// whose connect (TCP and TLS) gives up after `connect_timeout`.
pub fn connector(ca_file: Option<&Path>, connect_timeout: Duration) -> Result<Connector, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(client_tls(ca_file)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Bounded {
        inner: https,
        within: connect_timeout,
    })
}

/// A pooled client for the given body type.
pub fn client<B>(connector: Connector) -> Client<Connector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        // Upstream bodies are read 256 KiB at a time: a 1 GiB stream took 25 % less CPU than
        // with 64 KiB reads, and a buffer costs memory only as far as it is filled (small
        // answers touch a page or two of it). hyper's adaptive default grew to 60 MiB under
        // 64 concurrent 1 MiB GETs (README, Performance).
        .http1_read_buf_exact_size(256 * 1024)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// An error with every cause after it (`a: b: c`): hyper's client errors say only
/// "client error (Connect)" at the top.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
