//! The STS `AssumeRoleWithWebIdentity` API, as AWS SDKs speak it: an OIDC token in, sealed
//! short-lived credentials for one role out. Requests are unsigned (the token is the proof),
//! form-encoded `POST /` or query `GET /?Action=…`; answers and errors use STS's XML shapes
//! and codes so SDKs surface them as they would AWS's own.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;

use super::session::{Keyring, Session};
use super::{AuthError, Authenticator};
use crate::model::Identity;
use crate::policy::PolicySet;
use crate::secret::Secret;
use crate::xml_text::escape as xml_escape;

/// The STS API version SDKs send.
pub const VERSION: &str = "2011-06-15";

/// STS settings (used once the STS endpoint is enabled).
#[derive(Clone, Debug)]
pub struct StsConfig {
    /// Seals and opens sessions (built from the sealing keys, newest first).
    pub keyring: Arc<Keyring>,
    /// Session length when the caller asks for none.
    pub default_session: Duration,
    /// Longest session a caller may ask for.
    pub max_session: Duration,
}

/// What one AssumeRoleWithWebIdentity call came to: the answer, and what its audit record
/// names.
pub struct Assumed {
    /// The role ARN asked for, once the call parsed.
    pub role_arn: Option<String>,
    /// The caller, once its token verified (a revoked caller too).
    pub caller: Option<Arc<Identity>>,
    /// The session issued, or why not.
    pub outcome: Result<Grant, StsRefusal>,
}

/// A session handed out.
pub struct Grant {
    /// The role it assumed.
    pub role: String,
    /// Its access key id (not secret; audited).
    pub access_key_id: String,
    /// The `AssumeRoleWithWebIdentityResponse`: it carries the session's secret.
    pub answer: Secret,
}

/// Why no session was issued.
#[derive(Debug)]
pub struct StsRefusal {
    /// The answer, in STS's terms.
    pub error: StsError,
    /// What decided it.
    pub cause: StsCause,
}

/// What decided a refusal: the audit record's `decision` and `reason` follow it.
#[derive(Debug)]
pub enum StsCause {
    /// The call itself was malformed.
    Request,
    /// The web identity token did not authenticate (or its identity is revoked).
    Auth(AuthError),
    /// The identity does not hold the role: a policy decision.
    RoleNotHeld,
    /// Our failure.
    Internal,
}

impl From<StsError> for StsRefusal {
    fn from(error: StsError) -> Self {
        let cause = match error {
            StsError::Internal => StsCause::Internal,
            _ => StsCause::Request,
        };
        StsRefusal { error, cause }
    }
}

/// Serves AssumeRoleWithWebIdentity: the web identity token is authenticated as a bearer
/// token is (revocation included), the identity must hold the role, and the session handed
/// out is sealed into its own token. `params` are the form body's and the query's together.
pub async fn assume_role(
    auth: &Authenticator,
    policies: &PolicySet,
    config: &StsConfig,
    params: &[(String, String)],
    now: i64,
    request_id: &str,
) -> Assumed {
    let (mut role_arn, mut caller) = (None, None);
    let outcome = async {
        let req = parse(params)?;
        role_arn = Some(req.role_arn.clone());
        let identity = auth.authenticate_token(req.token.expose()).await.map_err(|e| {
            caller = e.proven_identity().cloned();
            StsRefusal {
                error: StsError::from(e.clone()),
                cause: StsCause::Auth(e),
            }
        })?;
        caller = Some(identity.clone());
        grant(policies, config, req, &identity, now, request_id)
    }
    .await;
    Assumed {
        role_arn,
        caller,
        outcome,
    }
}

/// Hands the role's session to `identity`, if it holds the role.
fn grant(
    policies: &PolicySet,
    config: &StsConfig,
    req: AssumeRequest,
    identity: &Arc<Identity>,
    now: i64,
    request_id: &str,
) -> Result<Grant, StsRefusal> {
    if !policies.holds(identity, &req.role) {
        let held: Vec<String> = policies
            .roles_for(identity)
            .iter()
            .map(|r| r.name.to_string())
            .collect();
        return Err(StsRefusal {
            error: StsError::AccessDenied(format!(
                "Not authorized to perform sts:AssumeRoleWithWebIdentity: {} does not hold role {} (roles held: [{}])",
                identity.subject,
                req.role,
                held.join(", ")
            )),
            cause: StsCause::RoleNotHeld,
        });
    }
    let length = session_length(req.duration, config.default_session, config.max_session)?;
    issue(&config.keyring, identity, req, length, now, request_id)
}

/// Makes the session: fresh credentials, sealed with the claims that made them into the
/// session token, and the answer that hands them out.
fn issue(
    keyring: &Keyring,
    identity: &Identity,
    req: AssumeRequest,
    length: Duration,
    now: i64,
    request_id: &str,
) -> Result<Grant, StsRefusal> {
    let (access_key_id, secret_access_key) =
        super::session::new_credentials().map_err(|_| StsError::Internal)?;
    let session = Session {
        access_key_id: access_key_id.clone(),
        secret_access_key,
        issuer: identity.issuer.clone(),
        subject: identity.subject.clone(),
        token_id: identity.token_id.clone(),
        role: req.role.clone(),
        session_name: req.session_name.clone(),
        claims: identity.claims.clone(),
        issued_at: now,
        expires_at: now.saturating_add(i64::try_from(length.as_secs()).unwrap_or(i64::MAX)),
    };
    let token = keyring.seal(&session).map_err(|e| {
        tracing::error!(error = %e, "cannot seal a session");
        StsError::Internal
    })?;
    let audience = identity
        .claim("aud")
        .and_then(|a| a.as_str().or_else(|| a.as_array()?.first()?.as_str()))
        .unwrap_or_default();
    let answer = Secret::new(success_xml(&Issued {
        request: &req,
        subject: &identity.subject,
        audience,
        provider: &identity.issuer,
        access_key_id: &access_key_id,
        secret_access_key: session.secret_access_key.expose(),
        session_token: token.expose(),
        expires_at: session.expires_at,
        request_id,
    }));
    Ok(Grant {
        role: req.role,
        access_key_id,
        answer,
    })
}

/// Refusals of the STS endpoint, each with the code AWS STS uses for the same failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StsError {
    /// A parameter is missing or malformed (`ValidationError`).
    #[error("{0}")]
    Validation(String),
    /// An Action other than AssumeRoleWithWebIdentity (`InvalidAction`).
    #[error("{0}")]
    InvalidAction(String),
    /// The web identity token is not valid (`InvalidIdentityToken`).
    #[error("{0}")]
    InvalidIdentityToken(String),
    /// The web identity token has expired (`ExpiredTokenException`).
    #[error("{0}")]
    ExpiredToken(String),
    /// The token is valid but its claims are not accepted here (`IDPRejectedClaim`).
    #[error("{0}")]
    IdpRejectedClaim(String),
    /// The identity may not assume the role, or is revoked (`AccessDenied`).
    #[error("{0}")]
    AccessDenied(String),
    /// The IdP's keys cannot be had (`IDPCommunicationError`; SDKs retry it).
    #[error("{0}")]
    IdpCommunication(String),
    /// Our failure; details are logged, not returned (`InternalFailure`).
    #[error("internal failure")]
    Internal,
}

impl StsError {
    /// Status and code.
    pub fn wire(&self) -> (StatusCode, &'static str) {
        match self {
            StsError::Validation(_) => (StatusCode::BAD_REQUEST, "ValidationError"),
            StsError::InvalidAction(_) => (StatusCode::BAD_REQUEST, "InvalidAction"),
            StsError::InvalidIdentityToken(_) => (StatusCode::BAD_REQUEST, "InvalidIdentityToken"),
            StsError::ExpiredToken(_) => (StatusCode::BAD_REQUEST, "ExpiredTokenException"),
            StsError::IdpRejectedClaim(_) => (StatusCode::FORBIDDEN, "IDPRejectedClaim"),
            StsError::AccessDenied(_) => (StatusCode::FORBIDDEN, "AccessDenied"),
            StsError::IdpCommunication(_) => (StatusCode::BAD_REQUEST, "IDPCommunicationError"),
            StsError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure"),
        }
    }

    /// Stable short name for audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            StsError::Validation(_) => "validation",
            StsError::InvalidAction(_) => "invalid_action",
            StsError::InvalidIdentityToken(_) => "invalid_identity_token",
            StsError::ExpiredToken(_) => "expired",
            StsError::IdpRejectedClaim(_) => "idp_rejected_claim",
            StsError::AccessDenied(_) => "access_denied",
            StsError::IdpCommunication(_) => "keys_unavailable",
            StsError::Internal => "internal",
        }
    }

    /// The STS `ErrorResponse` document.
    pub fn to_xml(&self, request_id: &str) -> String {
        let (status, code) = self.wire();
        let kind = if status.is_server_error() {
            "Receiver"
        } else {
            "Sender"
        };
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n</ErrorResponse>\n",
            xml_escape(&self.to_string()),
            xml_escape(request_id)
        )
    }
}

impl From<AuthError> for StsError {
    fn from(e: AuthError) -> Self {
        let msg = e.to_string();
        match e {
            AuthError::Expired { .. } => StsError::ExpiredToken(msg),
            AuthError::WrongAudience { .. } | AuthError::UnknownIssuer { .. } => {
                StsError::IdpRejectedClaim(msg)
            }
            AuthError::KeysUnavailable { .. } => StsError::IdpCommunication(msg),
            AuthError::Revoked { .. } => StsError::AccessDenied(
                "Not authorized to perform sts:AssumeRoleWithWebIdentity: the identity is revoked".into(),
            ),
            AuthError::SigV4(_)
            | AuthError::UnknownAccessKey
            | AuthError::SessionInvalid { .. }
            | AuthError::SessionExpired { .. } => StsError::InvalidIdentityToken(msg),
            _ => StsError::InvalidIdentityToken(msg),
        }
    }
}

/// A parsed AssumeRoleWithWebIdentity call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRequest {
    /// `arn:aws:iam::<account>:role/<path/><name>`.
    pub role_arn: String,
    /// The account in the ARN.
    pub account: String,
    /// The role's name: the ARN's last segment, which names a claimgate role.
    pub role: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `WebIdentityToken`.
    pub token: Secret,
    /// `DurationSeconds`, when given.
    pub duration: Option<u64>,
}

/// Whether a request is an STS call (routed before S3 classification).
pub fn is_sts_request(parts: &http::request::Parts) -> bool {
    if parts.uri.path() != "/" {
        return false;
    }
    let form = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let query_action = parts
        .uri
        .query()
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "Action"));
    (parts.method == http::Method::POST && (form || query_action))
        || (parts.method == http::Method::GET && query_action)
}

/// Parses the call's parameters (form body and query together).
pub fn parse(params: &[(String, String)]) -> Result<AssumeRequest, StsError> {
    let get = |name: &str| -> Result<Option<&str>, StsError> {
        let mut found = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = found.next();
        if found.next().is_some() {
            return Err(StsError::Validation(format!("parameter {name} is given twice")));
        }
        Ok(first)
    };
    let required = |name: &str| -> Result<&str, StsError> {
        get(name)?
            .filter(|v| !v.is_empty())
            .ok_or_else(|| StsError::Validation(format!("1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null")))
    };
    match get("Action")? {
        Some("AssumeRoleWithWebIdentity") => {}
        Some(other) => {
            return Err(StsError::InvalidAction(format!(
                "Could not find operation {} for version {VERSION}; claimgate serves AssumeRoleWithWebIdentity only",
                other.chars().take(64).collect::<String>()
            )));
        }
        None => return Err(StsError::InvalidAction("the Action parameter is missing".into())),
    }
    if let Some(v) = get("Version")?
        && v != VERSION
    {
        return Err(StsError::Validation(format!(
            "unsupported Version {v:?}; use {VERSION}"
        )));
    }
    for unsupported in ["Policy", "PolicyArns.member.1"] {
        if get(unsupported)?.is_some() {
            return Err(StsError::Validation(format!(
                "session policies ({unsupported}) are not supported: the role's policy applies as is"
            )));
        }
    }
    let role_arn = required("RoleArn")?.to_string();
    let (account, role) = parse_role_arn(&role_arn)?;
    let session_name = required("RoleSessionName")?.to_string();
    let valid_name = (2..=64).contains(&session_name.len())
        && session_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c));
    if !valid_name {
        return Err(StsError::Validation(
            "RoleSessionName must be 2-64 characters of [A-Za-z0-9_+=,.@-]".into(),
        ));
    }
    let token = Secret::new(required("WebIdentityToken")?);
    let duration = match get("DurationSeconds")? {
        None => None,
        Some(d) => Some(d.parse::<u64>().map_err(|_| {
            StsError::Validation(format!("DurationSeconds {d:?} is not a whole number of seconds"))
        })?),
    };
    Ok(AssumeRequest {
        role_arn,
        account,
        role,
        session_name,
        token,
        duration,
    })
}

/// `arn:aws:iam::123456789012:role/path/name` → (account, name).
fn parse_role_arn(arn: &str) -> Result<(String, String), StsError> {
    let bad = || {
        StsError::Validation(format!(
            "RoleArn {:?} is not a role ARN: write arn:aws:iam::<12-digit account>:role/<role name>",
            arn.chars().take(128).collect::<String>()
        ))
    };
    let rest = arn.strip_prefix("arn:").ok_or_else(bad)?;
    let mut parts = rest.splitn(5, ':');
    let (Some(_partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(bad());
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let path = resource.strip_prefix("role/").ok_or_else(bad)?;
    let name = path
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .ok_or_else(bad)?;
    Ok((account.to_string(), name.to_string()))
}

/// Picks the session length: asked-for within [15 min, max], default otherwise.
pub fn session_length(asked: Option<u64>, default: Duration, max: Duration) -> Result<Duration, StsError> {
    match asked {
        None => Ok(default.min(max)),
        Some(s) if s < 900 => Err(StsError::Validation(format!(
            "1 validation error detected: Value '{s}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to 900"
        ))),
        Some(s) if s > max.as_secs() => Err(StsError::Validation(format!(
            "The requested DurationSeconds ({s}) exceeds the maximum session duration set for this proxy ({} s)",
            max.as_secs()
        ))),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// What a successful call returns.
pub struct Issued<'a> {
    /// The call.
    pub request: &'a AssumeRequest,
    /// `sub` of the web identity token.
    pub subject: &'a str,
    /// Its audience (first `aud`, or `azp`).
    pub audience: &'a str,
    /// Its issuer.
    pub provider: &'a str,
    /// The new credentials.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Sealed session token.
    pub session_token: &'a str,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// Request id.
    pub request_id: &'a str,
}

/// The `AssumeRoleWithWebIdentityResponse` document, element for element as AWS sends it.
pub fn success_xml(i: &Issued<'_>) -> String {
    let r = i.request;
    let expiration =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(i.expires_at.max(0) as u64));
    let assumed_arn = format!(
        "arn:aws:sts::{}:assumed-role/{}/{}",
        r.account, r.role, r.session_name
    );
    let unique = i.access_key_id.strip_prefix("ASIA").unwrap_or(i.access_key_id);
    let role_id = format!("AROA{unique}:{}", r.session_name);
    let e = xml_escape;
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{}</SubjectFromWebIdentityToken>
    <Audience>{}</Audience>
    <AssumedRoleUser>
      <Arn>{}</Arn>
      <AssumedRoleId>{}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{}</SessionToken>
      <SecretAccessKey>{}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{}</AccessKeyId>
    </Credentials>
    <Provider>{}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>{}</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
",
        e(i.subject),
        e(i.audience),
        e(&assumed_arn),
        e(&role_id),
        e(i.session_token),
        e(i.secret_access_key),
        e(i.access_key_id),
        e(i.provider),
        e(i.request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", "arn:aws:iam::000000000000:role/ml/trainer"),
            ("RoleSessionName", "botocore-session-1700000000"),
            ("WebIdentityToken", "eyJ.x.y"),
        ]
    }

    #[test]
    fn parses_what_boto3_sends() {
        let r = parse(&params(&base())).unwrap();
        assert_eq!(r.role, "trainer");
        assert_eq!(r.account, "000000000000");
        assert_eq!(r.duration, None);
    }

    #[test]
    fn refuses_bad_calls_with_sts_codes() {
        let mut p = base();
        p[2].1 = "arn:aws:iam::000000000000:user/alice";
        assert_eq!(parse(&params(&p)).unwrap_err().wire().1, "ValidationError");
        let mut p = base();
        p[0].1 = "AssumeRole";
        assert_eq!(parse(&params(&p)).unwrap_err().wire().1, "InvalidAction");
        let mut p = base();
        p.retain(|(k, _)| *k != "WebIdentityToken");
        assert_eq!(parse(&params(&p)).unwrap_err().wire().1, "ValidationError");
        let mut p = base();
        p.push(("RoleArn", "arn:aws:iam::000000000000:role/other"));
        assert!(parse(&params(&p)).is_err());
        let mut p = base();
        p[3].1 = "has space";
        assert!(parse(&params(&p)).is_err());
    }

    #[test]
    fn session_lengths_are_bounded() {
        let (d, m) = (Duration::from_secs(3600), Duration::from_secs(7200));
        assert_eq!(session_length(None, d, m).unwrap(), d);
        assert_eq!(session_length(Some(900), d, m).unwrap().as_secs(), 900);
        assert!(session_length(Some(899), d, m).is_err());
        assert!(session_length(Some(7201), d, m).is_err());
    }

    #[test]
    fn errors_render_as_sts_xml() {
        let x = StsError::AccessDenied("no <role>".into()).to_xml("rid");
        assert!(x.contains("<Code>AccessDenied</Code>"));
        assert!(x.contains("<Type>Sender</Type>"));
        assert!(x.contains("no &lt;role&gt;"));
    }
}
