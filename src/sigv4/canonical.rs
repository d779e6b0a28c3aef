//! The canonical request of a request as it arrived, by S3's rules:
//!
//! - **canonical URI**: the path as received, each segment percent-decoded once and
//!   re-encoded with only `A-Z a-z 0-9 - _ . ~` left bare; never dot-segment normalized,
//!   `//` kept;
//! - **canonical query**: every parameter (but `X-Amz-Signature` on a presigned URL), name
//!   and value percent-decoded (`+` stays `+`) and re-encoded the same way, sorted by name
//!   then value; a parameter without `=` has an empty value;
//! - **canonical headers**: each signed header, its values joined by `,`, each trimmed of
//!   spaces and with runs of spaces collapsed; `host` is the `Host` header or, without one
//!   (HTTP/2), the URI's authority.

use http::request::Parts;
use percent_encoding::percent_decode_str;

use super::Carrier;

/// The canonical request of `parts` as received, as bytes (header values may carry
/// non-UTF-8 octets). `None` when a signed header is missing: nothing could match.
/// A presigned URL's own `X-Amz-Signature` is left out of the query.
pub fn canonical_request(
    parts: &Parts,
    signed_headers: &[String],
    carrier: Carrier,
    payload_hash: &str,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(super::canonical_s3_path(parts.uri.path()).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_query(parts.uri.query().unwrap_or_default(), carrier).as_bytes());
    out.push(b'\n');
    for name in signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut values: Vec<&[u8]> = parts
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if values.is_empty() && name == "host" {
            values.extend(parts.uri.authority().map(|a| a.as_str().as_bytes()));
        }
        if values.is_empty() {
            return None;
        }
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, v);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Some(out)
}

/// Appends a header value with leading and trailing spaces removed and each run of spaces
/// collapsed to one (spaces only, as S3 does).
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let start = value.iter().position(|b| *b != b' ').unwrap_or(value.len());
    let end = value.iter().rposition(|b| *b != b' ').map_or(start, |i| i + 1);
    let mut prev_space = false;
    for &b in &value[start..end] {
        if b == b' ' && prev_space {
            continue;
        }
        prev_space = b == b' ';
        out.push(b);
    }
}

/// Every query parameter (but `X-Amz-Signature` when presigned), decoded once, re-encoded
/// with only unreserved characters bare, sorted, `name=value` joined by `&`.
pub fn canonical_query(query: &str, carrier: Carrier) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .filter(|(name, _)| !(carrier == Carrier::Query && decoded_eq(name, super::param::SIGNATURE)))
        .map(|(name, value)| (reencode(name), reencode(value)))
        .collect();
    pairs.sort_unstable();
    let mut out = String::with_capacity(query.len() + 16);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// A raw query name or value, decoded once and [`super::encode`]d.
pub fn reencode(raw: &str) -> String {
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    super::encode(&bytes).to_string()
}

/// The raw `(name, value)` pairs of a query; empty pieces (`a&&b`) are skipped, a piece
/// without `=` has an empty value.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether a raw (percent-encoded) query name decodes to `want`, case-sensitively.
pub fn decoded_eq(raw: &str, want: &str) -> bool {
    if !raw.contains('%') {
        return raw == want;
    }
    percent_decode_str(raw).eq(want.bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_trimmed_and_spaces_collapsed() {
        let mut out = Vec::new();
        push_trimmed(&mut out, b"  \"a   b   c\"  ");
        assert_eq!(out, b"\"a b c\"");
        out.clear();
        push_trimmed(&mut out, b"   ");
        assert!(out.is_empty());
    }
}
