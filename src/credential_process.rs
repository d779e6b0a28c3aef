//! `claimgate credentials`: trades a web identity token at claimgate's STS and prints the
//! session for an SDK to use.
//!
//! Some SDKs cannot do web identity against a custom STS: the AWS C++ SDK (under pyarrow)
//! ignores `AWS_ENDPOINT_URL_STS`, and object_store (under Polars and delta-rs) refuses an
//! `http://` STS endpoint. Every AWS SDK runs a `credential_process`, though, and refreshes
//! by running it again when the `Expiration` it printed comes near. So the trade happens
//! here, with the same call boto3 makes (`AssumeRoleWithWebIdentity`, unsigned, form-encoded),
//! and the SDK only reads what is printed.
//!
//! Nothing secret is ever written to stderr: errors name the STS's code and message, which
//! never carry the token.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use quick_xml::events::Event;

use crate::net;
use crate::secret::Secret;

/// The largest STS answer read (real ones are about 2 KiB).
const MAX_RESPONSE: usize = 64 * 1024;
/// How long the whole call may take: an SDK waits on the process while a job stalls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why no credentials were printed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The arguments cannot make a call (bad endpoint, unreadable token file).
    #[error("{0}")]
    Usage(String),
    /// The STS could not be reached or did not answer in time.
    #[error("cannot reach the STS at {endpoint}: {reason}")]
    Unreachable {
        /// Where the call went.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The STS refused the trade (its `Code` and `Message`).
    #[error("the STS refused the token ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// STS error code, e.g. `InvalidIdentityToken`, `AccessDenied`.
        code: String,
        /// STS error message.
        message: String,
    },
    /// The answer is not an `AssumeRoleWithWebIdentity` response.
    #[error("the STS answered {status} with no credentials: {reason}")]
    BadResponse {
        /// HTTP status.
        status: u16,
        /// What is missing or wrong.
        reason: String,
    },
}

/// One trade.
pub struct Trade<'a> {
    /// claimgate's STS endpoint (the proxy's own URL).
    pub endpoint: &'a str,
    /// A role ARN, or a bare claimgate role name (made into an ARN of account 000000000000).
    pub role: &'a str,
    /// The web identity token (a JWT).
    pub token: Secret,
    /// `RoleSessionName`.
    pub session_name: &'a str,
    /// `DurationSeconds`, when asked for.
    pub duration: Option<Duration>,
    /// An extra CA to trust for an `https` endpoint (e.g. `claimgate dev --tls`'s).
    pub ca_file: Option<&'a Path>,
}

/// Credentials as the STS issued them.
pub struct Issued {
    /// `AccessKeyId`.
    pub access_key_id: String,
    /// `SecretAccessKey`.
    pub secret_access_key: Secret,
    /// `SessionToken`.
    pub session_token: Secret,
    /// `Expiration`, RFC 3339 as the STS wrote it.
    pub expiration: String,
}

/// How to print [`Issued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// AWS's `credential_process` JSON (`Version` 1).
    Process,
    /// `export` lines for a POSIX shell.
    Env,
}

/// A role ARN for `role`: kept as given when it is one already.
pub fn role_arn(role: &str) -> String {
    if role.starts_with("arn:") {
        role.to_string()
    } else {
        format!("arn:aws:iam::000000000000:role/{role}")
    }
}

/// Makes the call and reads the answer.
pub async fn trade(t: &Trade<'_>) -> Result<Issued, CredentialsError> {
    let uri: http::Uri = t
        .endpoint
        .parse()
        .map_err(|e| CredentialsError::Usage(format!("--endpoint {:?}: {e}", t.endpoint)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(CredentialsError::Usage(format!(
            "--endpoint {:?}: write the proxy's URL, e.g. http://127.0.0.1:7070",
            t.endpoint
        )));
    }
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", &role_arn(t.role))
        .append_pair("RoleSessionName", t.session_name)
        .append_pair("WebIdentityToken", t.token.expose());
    if let Some(d) = t.duration {
        form.append_pair("DurationSeconds", &d.as_secs().to_string());
    }
    let body = zeroize::Zeroizing::new(form.finish());
    let unreachable = |reason: String| CredentialsError::Unreachable {
        endpoint: t.endpoint.to_string(),
        reason,
    };
    let connector = net::connector(t.ca_file, Duration::from_secs(10)).map_err(CredentialsError::Usage)?;
    let client = net::client::<Full<Bytes>>(connector);
    let req = http::Request::post(uri)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .header(http::header::ACCEPT, "text/xml")
        .body(Full::new(Bytes::from(body.as_bytes().to_vec())))
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| unreachable(net::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, CredentialsError>((status, body))
    };
    let (status, body) = tokio::time::timeout(CALL_TIMEOUT, answer)
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))??;
    read_answer(status, &body)
}

/// Reads an STS answer: the credentials of a success, or the `Code` and `Message` of an
/// `ErrorResponse`.
pub fn read_answer(status: u16, body: &[u8]) -> Result<Issued, CredentialsError> {
    let fields = xml_fields(
        body,
        &[
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
            "Code",
            "Message",
        ],
    )
    .map_err(|reason| CredentialsError::BadResponse { status, reason })?;
    let [ak, sk, token, expiration, code, message] = fields;
    if !(200..300).contains(&status) || code.is_some() {
        return match code {
            Some(code) => Err(CredentialsError::Refused {
                status,
                code,
                message: message.unwrap_or_default(),
            }),
            None => Err(CredentialsError::BadResponse {
                status,
                reason: "an error without an STS ErrorResponse (is the endpoint claimgate's?)".into(),
            }),
        };
    }
    match (ak, sk, token, expiration) {
        (Some(access_key_id), Some(sk), Some(token), Some(expiration)) => Ok(Issued {
            access_key_id,
            secret_access_key: Secret::new(sk),
            session_token: Secret::new(token),
            expiration,
        }),
        _ => Err(CredentialsError::BadResponse {
            status,
            reason: "no AccessKeyId, SecretAccessKey, SessionToken and Expiration in the answer".into(),
        }),
    }
}

/// The text of the first element of each of `names`, wherever it sits in the document.
fn xml_fields<const N: usize>(body: &[u8], names: &[&str; N]) -> Result<[Option<String>; N], String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    let mut open: Option<usize> = None;
    let mut done = [false; N];
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let name = e.local_name();
                open = names
                    .iter()
                    .position(|n| n.as_bytes() == name.as_ref())
                    .filter(|&i| !done[i]);
            }
            Ok(Event::Text(t)) => {
                if let Some(i) = open {
                    let text = t.decode().map_err(|e| format!("not XML: {e}"))?;
                    out[i].get_or_insert_with(String::new).push_str(&text);
                }
            }
            Ok(Event::GeneralRef(r)) => {
                // `&amp;` and friends arrive as references of their own.
                if let Some(i) = open {
                    let c = crate::xml_text::reference_char(&r)?;
                    out[i].get_or_insert_with(String::new).push(c);
                }
            }
            Ok(Event::End(_)) => {
                if let Some(i) = open.take() {
                    done[i] = true;
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(format!("not XML: {e}")),
        }
        buf.clear();
    }
    for value in out.iter_mut().flatten() {
        *value = value.trim().to_string();
    }
    Ok(out)
}

/// `issued` as `format` prints it.
pub fn render(issued: &Issued, format: Format) -> zeroize::Zeroizing<String> {
    let mut out = zeroize::Zeroizing::new(String::with_capacity(1024));
    match format {
        Format::Process => {
            let doc = serde_json::json!({
                "Version": 1,
                "AccessKeyId": issued.access_key_id,
                "SecretAccessKey": issued.secret_access_key.expose(),
                "SessionToken": issued.session_token.expose(),
                "Expiration": issued.expiration,
            });
            out.push_str(&zeroize::Zeroizing::new(doc.to_string()));
            out.push('\n');
        }
        Format::Env => {
            for (name, value) in [
                ("AWS_ACCESS_KEY_ID", issued.access_key_id.as_str()),
                ("AWS_SECRET_ACCESS_KEY", issued.secret_access_key.expose()),
                ("AWS_SESSION_TOKEN", issued.session_token.expose()),
                ("AWS_CREDENTIAL_EXPIRATION", issued.expiration.as_str()),
            ] {
                let _ = writeln!(out, "export {name}='{}'", value.replace('\'', "'\\''"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <Credentials>
      <AccessKeyId>ASIACLAIMGATE1</AccessKeyId>
      <SecretAccessKey>wJal/rXU+tn</SecretAccessKey>
      <SessionToken>cg1.a&amp;b</SessionToken>
      <Expiration>2026-11-29T16:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn reads_a_success_and_prints_credential_process_json() {
        let issued = read_answer(200, OK.as_bytes()).expect("credentials");
        let json: serde_json::Value = serde_json::from_str(&render(&issued, Format::Process)).expect("JSON");
        assert_eq!(json["Version"], 1);
        assert_eq!(json["AccessKeyId"], "ASIACLAIMGATE1");
        assert_eq!(json["SecretAccessKey"], "wJal/rXU+tn");
        assert_eq!(json["SessionToken"], "cg1.a&b");
        assert_eq!(json["Expiration"], "2026-11-29T16:00:00Z");
    }

    #[test]
    fn env_lines_are_quoted_for_the_shell() {
        let mut issued = read_answer(200, OK.as_bytes()).expect("credentials");
        issued.session_token = Secret::new("it's");
        let env = render(&issued, Format::Env);
        assert!(
            env.contains("export AWS_SECRET_ACCESS_KEY='wJal/rXU+tn'\n"),
            "{}",
            *env
        );
        assert!(env.contains("export AWS_SESSION_TOKEN='it'\\''s'\n"), "{}", *env);
        assert!(env.contains("export AWS_CREDENTIAL_EXPIRATION='2026-11-29T16:00:00Z'\n"));
    }

    #[test]
    fn an_error_response_names_its_code_and_message() {
        let body = r#"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>the token expired</Message></Error><RequestId>1</RequestId></ErrorResponse>"#;
        match read_answer(400, body.as_bytes()) {
            Err(CredentialsError::Refused {
                status,
                code,
                message,
            }) => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (400, "InvalidIdentityToken", "the token expired")
                );
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn answers_without_credentials_are_refused() {
        for (status, body) in [
            (200, "<AssumeRoleWithWebIdentityResponse/>"),
            (502, "<html>bad gateway</html>"),
            (200, "not xml at all <<<"),
            (200, "<A><AccessKeyId>x</AccessKeyId></A>"),
        ] {
            assert!(
                matches!(
                    read_answer(status, body.as_bytes()),
                    Err(CredentialsError::BadResponse { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn a_bare_role_name_becomes_an_arn() {
        assert_eq!(role_arn("trainer"), "arn:aws:iam::000000000000:role/trainer");
        assert_eq!(
            role_arn("arn:aws:iam::123456789012:role/x"),
            "arn:aws:iam::123456789012:role/x"
        );
    }
}
