//! Requests to HTTP routes (feature stores, …) → `http:<METHOD>` on `http://<route>/<path>`.
//!
//! The policy sees the path as claimgate reads it, but the upstream is some web framework
//! that may normalise it first: resolve `..`, merge `//`, decode `%2F`, treat `\` as `/`,
//! strip `;params` (`/public/..;/admin` reaches `/admin` on Tomcat), or decode twice. Any path
//! where that could make the upstream serve something other than the resource the policy
//! decided on is refused instead of guessed at:
//!
//! - `.` and `..` segments, raw or percent-encoded;
//! - empty segments (`a//b`), except a trailing slash;
//! - encoded slashes (`%2F`), backslashes, `;`, `%` after decoding (double encoding), NUL
//!   and other control characters.
//!
//! Method-override headers (`X-HTTP-Method-Override`, …) and path-override headers
//! (`X-Original-URL`, `X-Rewrite-URL`) are refused for the same reason: an upstream honouring
//! them would run a different method or path than the one authorized.

use http::request::Parts;
use http::{HeaderMap, Method};

use super::ClassifyError;
use super::decode::{Plus, decode};
use crate::model::{Access, Operation, Resource};

/// Headers some frameworks read as "use this method / path instead of the request's".
const OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// Classifies a request to the HTTP route `route`.
///
/// `path_prefix` is the route's configured prefix (`"/features/"`), or `None` for a
/// host-routed route; the resource path is what follows it (for host routes, the whole path
/// without its leading `/`), percent-decoded. The query string never affects the resource.
pub fn classify_http(
    route: &str,
    path_prefix: Option<&str>,
    parts: &Parts,
) -> Result<Operation, ClassifyError> {
    let method = standard_method(&parts.method)?;
    refuse_overrides(&parts.headers)?;
    let raw = route_path(path_prefix, parts.uri.path())?;
    let path = checked_path(raw)?;
    Ok(Operation::new(
        "http",
        Access::new(format!("http:{method}"), Resource::http(route, &path)),
    ))
}

/// The method, if it is one a policy can name. Extension methods (and lowercase spellings,
/// which HTTP treats as different methods but some servers fold) are refused, as are
/// CONNECT and TRACE, which a data API has no use for.
fn standard_method(method: &Method) -> Result<&'static str, ClassifyError> {
    match *method {
        Method::GET => Ok("GET"),
        Method::HEAD => Ok("HEAD"),
        Method::POST => Ok("POST"),
        Method::PUT => Ok("PUT"),
        Method::PATCH => Ok("PATCH"),
        Method::DELETE => Ok("DELETE"),
        Method::OPTIONS => Ok("OPTIONS"),
        _ => Err(ClassifyError::MethodNotAllowed {
            method: method.as_str().to_owned(),
        }),
    }
}

fn refuse_overrides(headers: &HeaderMap) -> Result<(), ClassifyError> {
    match OVERRIDE_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        Some(header) => Err(ClassifyError::invalid_argument(format!(
            "the `{header}` header is refused: the upstream could run a different method or \
             path than the one authorized"
        ))),
        None => Ok(()),
    }
}

/// The raw path after the route's prefix, without a leading `/`.
///
/// A prefix without a trailing slash (`/features`) only matches at a segment boundary, so
/// `/featuresx` is not under it.
fn route_path<'p>(prefix: Option<&str>, path: &'p str) -> Result<&'p str, ClassifyError> {
    let not_under = || {
        ClassifyError::invalid_uri(format!(
            "the path is not under the route's prefix `{}`",
            prefix.unwrap_or("/")
        ))
    };
    let Some(prefix) = prefix else {
        return path.strip_prefix('/').ok_or_else(not_under);
    };
    let rest = path.strip_prefix(prefix).ok_or_else(not_under)?;
    if prefix.ends_with('/') || rest.is_empty() {
        return Ok(rest);
    }
    rest.strip_prefix('/').ok_or_else(not_under)
}

/// Decodes the path segment by segment, refusing anything an upstream could normalise.
fn checked_path(raw: &str) -> Result<String, ClassifyError> {
    let segments: Vec<&str> = raw.split('/').collect();
    let last = segments.len() - 1;
    let mut decoded = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let text = decode(segment, Plus::Literal)
            .map_err(|e| ClassifyError::invalid_uri(format!("the path {e}")))?;
        if let Some(problem) = segment_problem(&text, i == last) {
            return Err(ClassifyError::invalid_uri(format!(
                "the path has {problem}, which the upstream might normalise"
            )));
        }
        decoded.push(text);
    }
    Ok(decoded.join("/"))
}

/// What is wrong with one decoded segment, if anything.
fn segment_problem(segment: &str, is_last: bool) -> Option<&'static str> {
    match segment {
        "." | ".." => Some("a `.` or `..` segment"),
        "" if !is_last => Some("an empty segment (`//`)"),
        s if s.contains('/') => Some("an encoded slash (%2F)"),
        s if s.contains('\\') => Some("a backslash"),
        s if s.contains(';') => Some("a `;`"),
        s if s.contains('%') => Some("a `%` after decoding (double encoding)"),
        s if s.chars().any(char::is_control) => Some("a control character"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: Option<&str> = Some("/features/");

    /// `"<METHOD> <uri>"` → parts.
    fn parts(request: &str, headers: &[(&str, &str)]) -> Parts {
        let (method, uri) = request.split_once(' ').expect("`METHOD uri`");
        let mut builder = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("valid test request").into_parts().0
    }

    /// `"<action> <resource>"`, or `"!<error variant>"`.
    fn render(result: Result<Operation, ClassifyError>) -> String {
        match result {
            Ok(op) => {
                assert_eq!((op.name, op.also().len()), ("http", 0));
                format!("{} {}", op.primary().action, op.primary().resource)
            }
            Err(ClassifyError::InvalidUri { .. }) => "!InvalidUri".into(),
            Err(ClassifyError::InvalidArgument { .. }) => "!InvalidArgument".into(),
            Err(ClassifyError::MethodNotAllowed { .. }) => "!MethodNotAllowed".into(),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    fn check(prefix: Option<&str>, request: &str, headers: &[(&str, &str)], want: &str) {
        let got = render(classify_http("features", prefix, &parts(request, headers)));
        assert_eq!(got, want, "{request} (prefix {prefix:?}, headers {headers:?})");
    }

    fn run(prefix: Option<&str>, cases: &[(&str, &str)]) {
        for (request, want) in cases {
            check(prefix, request, &[], want);
        }
    }

    #[test]
    fn prefixed_routes() {
        run(
            PREFIX,
            &[
                (
                    "POST /features/get-online-features",
                    "http:POST http://features/get-online-features",
                ),
                ("GET /features/", "http:GET http://features/"),
                ("GET /features/a/b/", "http:GET http://features/a/b/"),
                ("GET /features/a/b?x=1&y=../..", "http:GET http://features/a/b"),
                (
                    "GET /features/caf%C3%A9/a%20b",
                    "http:GET http://features/café/a b",
                ),
                ("GET /features/a+b", "http:GET http://features/a+b"),
                (
                    "GET /features/a...b/.hidden/..x",
                    "http:GET http://features/a...b/.hidden/..x",
                ),
                ("PUT /features/x", "http:PUT http://features/x"),
                ("PATCH /features/x", "http:PATCH http://features/x"),
                ("DELETE /features/x", "http:DELETE http://features/x"),
                ("HEAD /features/x", "http:HEAD http://features/x"),
                ("OPTIONS /features/x", "http:OPTIONS http://features/x"),
                // an absolute-form target: only its path counts
                (
                    "POST http://elsewhere.example/features/x?q",
                    "http:POST http://features/x",
                ),
            ],
        );
    }

    #[test]
    fn paths_outside_the_prefix_are_refused() {
        run(
            PREFIX,
            &[
                ("GET /features", "!InvalidUri"),
                ("GET /other/x", "!InvalidUri"),
                ("GET /Features/x", "!InvalidUri"),
                ("GET /%66eatures/x", "!InvalidUri"),
            ],
        );
    }

    #[test]
    fn normalisable_paths_are_refused() {
        let paths = [
            "../admin",
            "a/../../admin",
            "./x",
            "x/.",
            "x/..",
            "%2e%2e/admin",
            "%2E%2E/admin",
            ".%2e/admin",
            "%2e/admin",
            "a%2Fb",
            "a%2f..%2fb",
            "a%5Cb",
            "a%5c..%5cadmin",
            "/admin",
            "a//b",
            "public/..;/admin",
            "admin;jsessionid=1",
            "a%3Bb",
            "%252e%252e/admin",
            "a%25b",
            "a%00b",
            "a%0d%0ab",
            "a%7Fb",
            "a%zzb",
            "100%",
            "%C3%28",
        ];
        for path in paths {
            check(PREFIX, &format!("GET /features/{path}"), &[], "!InvalidUri");
        }
    }

    #[test]
    fn only_standard_methods() {
        let methods = ["TRACE", "CONNECT", "PROPFIND", "get"];
        for method in methods {
            check(PREFIX, &format!("{method} /features/x"), &[], "!MethodNotAllowed");
        }
    }

    #[test]
    fn prefix_without_trailing_slash_matches_at_segment_boundary() {
        run(
            Some("/features"),
            &[
                ("GET /features", "http:GET http://features/"),
                ("GET /features/", "http:GET http://features/"),
                ("GET /features/x/y", "http:GET http://features/x/y"),
                ("GET /featuresx", "!InvalidUri"),
                ("GET /features-admin/x", "!InvalidUri"),
                ("GET /features//x", "!InvalidUri"),
            ],
        );
    }

    #[test]
    fn host_routes_use_the_whole_path() {
        run(
            None,
            &[
                ("GET /", "http:GET http://features/"),
                (
                    "GET /get-online-features",
                    "http:GET http://features/get-online-features",
                ),
                ("GET /v1/a%20b/", "http:GET http://features/v1/a b/"),
                ("GET //x", "!InvalidUri"),
                ("GET /../x", "!InvalidUri"),
                ("GET /%2e%2e/x", "!InvalidUri"),
            ],
        );
    }

    #[test]
    fn override_headers_are_refused() {
        for header in OVERRIDE_HEADERS {
            check(
                PREFIX,
                "POST /features/x",
                &[(header, "DELETE")],
                "!InvalidArgument",
            );
        }
        let mixed_case = [("X-HTTP-Method-Override", "GET")];
        check(PREFIX, "POST /features/x", &mixed_case, "!InvalidArgument");
        let harmless = [("content-type", "application/json"), ("x-request-id", "1")];
        check(
            PREFIX,
            "POST /features/x",
            &harmless,
            "http:POST http://features/x",
        );
    }
}
