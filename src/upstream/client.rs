//! Outbound HTTP(S): the pooled client used for upstreams and for IdP discovery/JWKS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The TLS-capable connector every outbound client uses.
pub type Connector = HttpsConnector<HttpConnector>;

/// Trust roots: the system's certificates, the Mozilla roots compiled in (so a minimal
/// container without a CA bundle still works), and optionally an internal CA.
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        // A malformed system certificate must not stop the proxy; the rest still serve.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = crate::server::read_certs(path)?;
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
/// Nagle + delayed ACK) that speaks HTTP/1.1 and, where the server offers it, HTTP/2.
pub fn connector(ca_file: Option<&Path>) -> Result<Connector, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// A pooled client for the given body type.
pub fn client<B>(connector: Connector) -> Client<Connector, B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}
