//! Reading the AWS SigV4 test vectors in `tests/data/sigv4/` (shared by the signer and the
//! verifier tests).

/// A request as a vector's `*.txt` file writes it.
pub struct Request {
    pub method: String,
    /// Path and query, as written (raw, not percent-encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub fn parse_request(text: &str) -> Request {
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let request_line = lines.next().unwrap();
    let method = request_line.split(' ').next().unwrap().to_string();
    let target = request_line[method.len() + 1..request_line.rfind(" HTTP/").unwrap()].to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            // Obsolete line folding: HTTP/1.1 parsers (hyper's included) unfold it to a
            // space, which is how such a header reaches the signer and the verifier.
            let last = headers.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(line.trim_start());
        } else {
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.to_string(), v.to_string()));
        }
    }
    Request {
        method,
        target,
        headers,
        body: body.as_bytes().to_vec(),
    }
}

/// Cases describing behaviour S3 (and so claimgate) never has: a normalized path, or a
/// session token left out of the signature (S3 requires every `x-amz-*` header signed).
pub fn not_s3_behaviour(context: &serde_json::Value, target: &str) -> bool {
    let normalizes = context["normalize"] == true && ["/.", "//", ".."].iter().any(|p| target.contains(p));
    normalizes || context["omit_session_token"] == true
}
