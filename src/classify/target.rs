//! The request target, read once.
//!
//! Routing, classification and signing must all act on the same host and path: if the
//! router read `Host` while the classifier read the URI authority, the route chosen and the
//! bucket authorized could come from two different readings of one request. Every stage
//! takes this one [`RequestTarget`] instead of reading the request itself.

use http::HeaderValue;
use http::header::HOST;
use http::request::Parts;

use super::ClassifyError;

/// The host and path a request addresses, read once from its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// The host without `:port` and without one trailing dot, as sent (compare it
    /// case-insensitively). `None` when the request names no host at all.
    host: Option<String>,
    /// The path exactly as sent (still percent-encoded).
    path: String,
}

impl RequestTarget {
    /// Reads the target. HTTP/2's `:authority` (and an HTTP/1 absolute-form target) live in
    /// the URI, HTTP/1's host in `Host`; when both are present they must agree, and `Host`
    /// may appear only once.
    pub fn read(parts: &Parts) -> Result<RequestTarget, ClassifyError> {
        let mut headers = parts.headers.get_all(HOST).iter();
        let header = headers.next().map(header_host).transpose()?;
        if headers.next().is_some() {
            return Err(ClassifyError::invalid_argument(
                "the request has more than one Host header",
            ));
        }
        let host = match (parts.uri.host().map(hostname), header) {
            (Some(authority), Some(header)) if !authority.eq_ignore_ascii_case(header) => {
                return Err(ClassifyError::invalid_argument(format!(
                    "the request target names host `{authority}` but the Host header `{header}`"
                )));
            }
            (Some(authority), _) => Some(authority),
            (None, header) => header,
        };
        Ok(RequestTarget {
            host: host.filter(|h| !h.is_empty()).map(str::to_owned),
            path: parts.uri.path().to_owned(),
        })
    }

    /// The host, without port or trailing dot.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The path as sent.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The host part of a `Host` header value.
fn header_host(value: &HeaderValue) -> Result<&str, ClassifyError> {
    value
        .to_str()
        .map(hostname)
        .map_err(|_| ClassifyError::invalid_argument("the Host header is not visible ASCII"))
}

/// Drops a `:port` (keeping bracketed IPv6 literals whole) and one trailing dot.
pub(super) fn hostname(host: &str) -> &str {
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => name,
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(uri: &str, hosts: &[&str]) -> Result<RequestTarget, ClassifyError> {
        let mut b = http::Request::builder().uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        RequestTarget::read(&b.body(()).unwrap().into_parts().0)
    }

    #[test]
    fn one_reading_of_host_and_path() {
        let t = read("/b/k", &["Data.Example.com.:8443"]).unwrap();
        assert_eq!(t.host(), Some("Data.Example.com"));
        assert_eq!(t.path(), "/b/k");
        let t = read("https://s3.example.com./b/%2e%2e/k", &[]).unwrap();
        assert_eq!(t.host(), Some("s3.example.com"));
        assert_eq!(t.path(), "/b/%2e%2e/k");
        let t = read("http://[::1]:80/x", &["[::1]"]).unwrap();
        assert_eq!(t.host(), Some("[::1]"));
        assert_eq!(read("/x", &[]).unwrap().host(), None);
        assert_eq!(read("/x", &[""]).unwrap().host(), None);
    }

    #[test]
    fn conflicting_hosts_are_refused() {
        assert!(read("/x", &["a.example.com", "b.example.com"]).is_err());
        assert!(read("/x", &["a.example.com", "a.example.com"]).is_err());
        assert!(read("http://a.example.com/x", &["b.example.com"]).is_err());
        assert!(read("http://a.example.com/x", &["A.example.com.:80"]).is_ok());
    }
}
