//! Audit records: one JSON line per request, allowed or refused, written off the hot path.
//!
//! Records go through a bounded channel to a writer thread that batches writes and flushes
//! whenever the queue runs dry. When the queue is full the request waits for room rather
//! than dropping its record: an audit trail with holes is worse than a slower request.
//! [`AuditLog::flush`] waits until everything queued before it is on disk (shutdown).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output, one JSON line per record.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

/// Who the record is about. Never holds a token, signature or secret; `token_id` is the
/// token's `jti` or a short hash of it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AuditIdentity {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// `email`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `azp`, else `client_id`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Roles held (for a session: its assumed role).
    pub roles: Vec<String>,
    /// `bearer` or `sts_session`.
    pub auth_method: &'static str,
    /// `jti` or `sha256:<16 hex>`.
    pub token_id: String,
    /// The STS session's access key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// The shadow-mode outcome, when shadow roles are held.
#[derive(Debug, Clone, Serialize)]
pub struct AuditShadow {
    /// `would_allow` or `would_deny`.
    pub outcome: &'static str,
    /// The rule that would decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// What authorization came to, as audit records spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditDecision {
    /// Policy allowed the request (or shadow mode let it through).
    Allow,
    /// Policy denied it.
    Deny,
    /// No decision was reached: the request ended before authorization.
    Error,
}

impl AuditDecision {
    /// The record's (and the metric label's) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
            AuditDecision::Error => "error",
        }
    }
}

/// One request's record. Field names are a stable interface: security teams query them.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    /// Also sent to the caller as `x-amz-request-id`.
    pub request_id: String,
    /// Route name, or `-` before routing.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Request path without the query (presigned URLs carry signatures there).
    pub path: String,
    /// The caller, once authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<AuditIdentity>,
    /// API operation (`GetObject`, `http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<&'static str>,
    /// Primary IAM action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Primary resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Further `action resource` pairs the request needed (CopyObject's source, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// `allow`, `deny` or `error`.
    pub decision: AuditDecision,
    /// The deciding rule (`file: role R allow[i]`), when a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why it was refused: `policy`, an auth reason (`expired`, …), `unclassified`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The refusal message as sent to the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Shadow-mode outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<AuditShadow>,
    /// Status sent to the caller.
    pub status: u16,
    /// Status the upstream answered, when it was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_status: Option<u16>,
    /// Request body bytes read from the caller.
    pub bytes_in: u64,
    /// Response body bytes sent to the caller.
    pub bytes_out: u64,
    /// From request head to end of response body.
    pub duration_ms: f64,
    /// Peer address.
    pub source: String,
    /// `User-Agent`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// True when the response body ended early (client went away, upstream broke).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Opens the sink and starts the writer thread.
    pub fn open(sink: &AuditSink) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match sink {
            AuditSink::Stdout => Box::new(std::io::stdout()),
            AuditSink::File(path) => Box::new(open_append(path)?),
        };
        Ok(Self::with_writer(out))
    }

    /// Starts a writer over any sink (tests, benches).
    pub fn with_writer(out: Box<dyn Write + Send>) -> AuditLog {
        let (tx, rx) = mpsc::channel(65_536);
        std::thread::Builder::new()
            .name("claimgate-audit".into())
            .spawn(move || writer(rx, out))
            .expect("spawn audit writer thread");
        AuditLog { tx }
    }

    /// Queues a record from synchronous code (a body's `Drop`). Never blocks: when the
    /// queue is full it hands the record to a task that waits for room.
    pub fn write_now(&self, record: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = tx.send(msg).await;
                    });
                }
            }
        }
    }

    /// Waits until every record queued before this call is written and flushed.
    pub async fn flush(&self, within: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if self.tx.send(Msg::Flush(done_tx)).await.is_err() {
            return false;
        }
        tokio::task::spawn_blocking(move || done_rx.recv_timeout(within).is_ok())
            .await
            .unwrap_or(false)
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

/// How often the writer wakes to drain the queue. Polling instead of blocking on the channel
/// means senders never have to wake this thread: at thousands of requests per second a
/// wake-up per record costs more CPU (context switches) than writing the record.
const DRAIN_EVERY: Duration = Duration::from_millis(5);

fn writer(mut rx: mpsc::Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Record(record)) => {
                    // Serialized whole first, so a record is written entirely or not at all.
                    if let Ok(mut line) = serde_json::to_vec(&record) {
                        line.push(b'\n');
                        if let Err(e) = out.write_all(&line) {
                            tracing::error!(error = %e, "cannot write audit record");
                        }
                    }
                    wrote = true;
                }
                Ok(Msg::Flush(done)) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}
