//! Audit records: one JSON line per request, allowed or refused, written off the hot path —
//! claimgate's own record, or the same record as an OCSF API Activity event ([`ocsf`]).
//!
//! Durability, as promised to whoever reads the trail:
//!
//! - Every request takes a *slot* in the writer's bounded queue before anything else happens
//!   ([`AuditLog::reserve`]); its record is written into that slot when the response ends, so
//!   a request that was served always has room for its record. When the sink stalls and
//!   the queue is full, new requests wait for a slot (back-pressure) instead of piling up
//!   tasks or memory.
//! - A record is never half-written: records are serialized whole, and a write the sink cut
//!   short (disk full) is resumed from where it stopped once the sink takes data again.
//! - While the sink fails, [`AuditLog::is_up`] says so; data access is then refused or served
//!   according to `[audit] on_failure`. Records already accepted stay queued in memory until
//!   the sink recovers.
//! - The file is reopened on request ([`AuditLog::reopen`], SIGHUP/SIGUSR1) and when it is
//!   moved away or deleted (logrotate without `copytruncate`).
//! - [`AuditLog::flush`] waits until everything queued before it is on disk (shutdown).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub mod ocsf;
pub mod syslog;

use syslog::{Syslog, SyslogTarget};

use crate::metrics::Metrics;

/// How records are written (`[audit] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    /// claimgate's own record ([`AuditRecord`]), one JSON object per line.
    #[default]
    Json,
    /// OCSF API Activity (class 6003), one JSON object per line: what Amazon Security Lake
    /// and SIEMs ingest without a mapping of their own.
    Ocsf,
}

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
    /// The W3C trace id (32 hex digits) the request ran under: the caller's, from its
    /// `traceparent`, or a new one. The upstream saw it too, so the record, the trace and
    /// the store's own logs can be joined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

enum Msg {
    Record(Box<AuditRecord>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Records the queue holds (accepted but not yet written), at most.
const QUEUE: usize = 65_536;
/// How long a request waits for a queue slot before the sink counts as failing.
const SLOT_WAIT: Duration = Duration::from_secs(5);

/// What the writer thread shares with the request path.
struct Shared {
    /// False from a failed write until a write succeeds again.
    up: AtomicBool,
    /// Set by [`AuditLog::reopen`]; the writer reopens the file at its next turn.
    reopen: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

/// A reserved place in the writer's queue: whatever happens to the request, its record fits.
pub struct Slot {
    permit: mpsc::OwnedPermit<Msg>,
    shared: Arc<Shared>,
}

impl Slot {
    /// Hands the record to the writer. Never blocks, never fails.
    pub fn write(self, record: AuditRecord) {
        self.shared.metrics.audit_queued(1);
        self.permit.send(Msg::Record(Box::new(record)));
    }
}

/// No slot came free in time: the sink is stalled or failing and the queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit log is not keeping up: its queue of {QUEUE} records is full")]
pub struct QueueFull;

/// Where the writer puts records.
enum Out {
    /// A stream given to us (stdout, or a test's buffer).
    Stream(Box<dyn Write + Send>),
    /// A file we opened and may reopen.
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
    },
}

impl AuditLog {
    /// Opens the sink and starts the writer thread.
    /// A writer to `sink` (and a copy of every record to `syslog`, when set).
    pub fn open(
        sink: &AuditSink,
        format: AuditFormat,
        syslog: Option<SyslogTarget>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<AuditLog> {
        let out = match sink {
            AuditSink::Stdout => Out::Stream(Box::new(std::io::stdout())),
            AuditSink::File(path) => Out::File {
                file: Some(open_append(path)?),
                path: path.clone(),
            },
        };
        Ok(Self::start(out, format, syslog, metrics))
    }

    /// Starts a writer over any stream (tests, benches).
    pub fn with_writer(out: Box<dyn Write + Send>, format: AuditFormat, metrics: Arc<Metrics>) -> AuditLog {
        Self::start(Out::Stream(out), format, None, metrics)
    }

    fn start(out: Out, format: AuditFormat, syslog: Option<SyslogTarget>, metrics: Arc<Metrics>) -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        metrics.audit_sink_up(true);
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            reopen: AtomicBool::new(false),
            metrics,
        });
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("claimgate-audit".into())
            .spawn(move || {
                let mut writer = Writer::new(out, format, writer_shared);
                writer.syslog = syslog.map(Syslog::new);
                writer.run(rx)
            })
            .expect("spawn audit writer thread");
        AuditLog { tx, shared }
    }

    /// Reserves a slot for one request's record, waiting for room while the queue is full.
    pub async fn reserve(&self) -> Result<Slot, QueueFull> {
        // The common case, without arming a timer.
        if let Ok(slot) = self.try_reserve() {
            return Ok(slot);
        }
        match tokio::time::timeout(SLOT_WAIT, self.tx.clone().reserve_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                permit,
                shared: self.shared.clone(),
            }),
            Ok(Err(_)) | Err(_) => Err(QueueFull),
        }
    }

    /// Reserves a slot if one is free now, without waiting (while the sink is known to be
    /// failing, waiting for room would only delay the refusal).
    pub fn try_reserve(&self) -> Result<Slot, QueueFull> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Slot {
                permit,
                shared: self.shared.clone(),
            }),
            Err(_) => Err(QueueFull),
        }
    }

    /// Writes a record that has no slot (a refusal made because none was free): queued if
    /// there is room after all, else dropped and counted — never waited on, never spawned.
    pub fn write_unreserved(&self, record: AuditRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => self.shared.metrics.audit_queued(1),
            Err(_) => {
                self.shared.metrics.audit_dropped();
                tracing::error!("audit queue full: a record was dropped");
            }
        }
    }

    /// Whether the sink is taking records (false from a failed write until one succeeds).
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Asks the writer to reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
    }

    /// Waits until every record queued before this call is written and flushed.
    pub async fn flush(&self, within: Duration) -> bool {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        match tokio::time::timeout(within, self.tx.send(Msg::Flush(done_tx))).await {
            Ok(Ok(())) => {}
            _ => return false,
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
/// How often the writer checks whether its file was moved away.
const CHECK_MOVED_EVERY: Duration = Duration::from_secs(1);
/// How long the writer waits before retrying a failed sink.
const RETRY_EVERY: Duration = Duration::from_millis(250);
/// Records read from the queue into memory ahead of the sink, at most (bytes).
const PENDING_MAX: usize = 1 << 20;

/// The writer thread's state.
struct Writer {
    out: Out,
    format: AuditFormat,
    /// The best-effort copy to syslog, and whether it is failing (logged once a streak).
    syslog: Option<Syslog>,
    syslog_failing: bool,
    shared: Arc<Shared>,
    /// Serialized records not yet wholly taken by the sink.
    pending: Vec<u8>,
    /// Bytes at the start of `pending` the open file already holds (a record cut short).
    partial: usize,
    /// When opening the file last failed (retry pacing; logged once).
    open_failed_at: Option<std::time::Instant>,
    /// Records whose bytes are (wholly or partly) in `pending`.
    pending_records: i64,
    /// Flushes waiting for everything before them to be written.
    flushes: Vec<std::sync::mpsc::Sender<()>>,
    last_moved_check: std::time::Instant,
    /// When the sink last failed (retry pacing), and whether that was already logged.
    failed_at: Option<std::time::Instant>,
}

impl Writer {
    fn new(out: Out, format: AuditFormat, shared: Arc<Shared>) -> Writer {
        Writer {
            out,
            format,
            syslog: None,
            syslog_failing: false,
            shared,
            pending: Vec::with_capacity(64 * 1024),
            partial: 0,
            open_failed_at: None,
            pending_records: 0,
            flushes: Vec::new(),
            last_moved_check: std::time::Instant::now(),
            failed_at: None,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            self.maybe_reopen();
            let mut closed = false;
            // Take records while there is room in memory and no flush is waiting on older ones.
            while self.pending.len() < PENDING_MAX && self.flushes.is_empty() {
                match rx.try_recv() {
                    Ok(Msg::Record(record)) => {
                        // Serialized straight into the write buffer (no buffer per record);
                        // one that fails half-way is taken back out, so a record is written
                        // entirely or not at all.
                        let start = self.pending.len();
                        let written = match self.format {
                            AuditFormat::Json => serde_json::to_writer(&mut self.pending, &record),
                            AuditFormat::Ocsf => {
                                serde_json::to_writer(&mut self.pending, &ocsf::event(&record))
                            }
                        };
                        if written.is_ok() {
                            if let Some(syslog) = &mut self.syslog {
                                let severity =
                                    syslog::severity(record.decision == AuditDecision::Deny, record.status);
                                let operation = record.operation.unwrap_or("-");
                                match syslog.send(severity, &record.time, operation, &self.pending[start..]) {
                                    Ok(()) => self.syslog_failing = false,
                                    Err(e) => {
                                        if !self.syslog_failing {
                                            tracing::warn!(error = %e, "cannot send audit records to syslog; the file keeps them");
                                        }
                                        self.syslog_failing = true;
                                    }
                                }
                            }
                            self.pending.push(b'\n');
                            self.pending_records += 1;
                        } else {
                            self.pending.truncate(start);
                        }
                    }
                    Ok(Msg::Flush(done)) => self.flushes.push(done),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let retry_due = self.failed_at.is_none_or(|t| t.elapsed() >= RETRY_EVERY);
            // A failed flush with nothing left to write is retried too: the sink must be
            // seen to recover without waiting for new traffic.
            if (!self.pending.is_empty() || self.failed_at.is_some()) && retry_due {
                self.write_pending();
            }
            if self.pending.is_empty() && self.failed_at.is_none() {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
            }
            if closed && (self.pending.is_empty() || self.failed_at.is_some()) {
                if !self.pending.is_empty() {
                    tracing::error!(
                        records = self.pending_records,
                        "audit sink still failing at exit: records lost"
                    );
                }
                return;
            }
            std::thread::sleep(DRAIN_EVERY);
        }
    }

    /// Writes what is pending, keeping whatever the sink did not take.
    ///
    /// A write the sink cut short (disk full) leaves part of a record in the file. The rest
    /// follows into the same file when it takes data again; if the file is reopened first,
    /// the part is cut back off the old file ([`Writer::maybe_reopen`]) and the record is
    /// written whole into the new one. A stream cannot be cut back, and is never reopened.
    fn write_pending(&mut self) {
        let mut written = self.partial;
        let result = loop {
            if written == self.pending.len() {
                break self.flush_out();
            }
            match sink(&mut self.out).map(|w| w.write(&self.pending[written..])) {
                Some(Ok(0)) => break Err(std::io::ErrorKind::WriteZero.into()),
                Some(Ok(n)) => written += n,
                Some(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Some(Err(e)) => break Err(e),
                None => break Err(std::io::Error::other("the audit file is not open")),
            }
        };
        // Whole records written leave the buffer; a record cut short stays, with how much
        // of it the file already holds.
        let whole = match self.out {
            Out::File { .. } => self.pending[..written]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1),
            Out::Stream(_) => written,
        };
        let done = self.pending[..whole].iter().filter(|b| **b == b'\n').count() as i64;
        self.pending.drain(..whole);
        self.partial = written - whole;
        self.pending_records -= done;
        self.shared.metrics.audit_written(done);
        match result {
            Ok(()) => {
                self.shared.metrics.audit_written(self.pending_records);
                self.pending_records = 0;
                self.pending.clear();
                self.partial = 0;
                if self.failed_at.take().is_some() {
                    tracing::info!("audit sink writable again");
                }
                self.set_up(true);
            }
            Err(e) => {
                self.shared.metrics.audit_write_error();
                if self.failed_at.is_none() {
                    tracing::error!(error = %e, "cannot write audit records; keeping them queued");
                }
                self.failed_at = Some(std::time::Instant::now());
                self.set_up(false);
            }
        }
    }

    fn flush_out(&mut self) -> std::io::Result<()> {
        match sink(&mut self.out) {
            Some(w) => w.flush(),
            None => Err(std::io::Error::other("the audit file is not open")),
        }
    }

    fn set_up(&self, up: bool) {
        if self.shared.up.swap(up, Ordering::AcqRel) != up {
            self.shared.metrics.audit_sink_up(up);
        }
    }

    /// Reopens the file when asked to, when it was moved or deleted, or when it failed to open.
    fn maybe_reopen(&mut self) {
        let Out::File { path, file } = &mut self.out else {
            self.shared.reopen.store(false, Ordering::Relaxed);
            return;
        };
        let asked = self.shared.reopen.swap(false, Ordering::AcqRel);
        let check = self.last_moved_check.elapsed() >= CHECK_MOVED_EVERY;
        if check {
            self.last_moved_check = std::time::Instant::now();
        }
        let retry = file.is_none() && self.open_failed_at.is_none_or(|t| t.elapsed() >= RETRY_EVERY);
        if !(asked || retry || (check && moved(path, file.as_ref()))) {
            return;
        }
        // A record cut short in the old file is cut back off it, to be written whole anew.
        if self.partial > 0
            && let Some(old) = file.as_ref()
        {
            let cut = old
                .metadata()
                .and_then(|m| old.set_len(m.len().saturating_sub(self.partial as u64)));
            if let Err(e) = cut {
                tracing::warn!(error = %e, "cannot cut a half-written audit record off the old file");
            }
            self.partial = 0;
        }
        match open_append(path) {
            Ok(f) => {
                tracing::info!(path = %path.display(), "audit log reopened");
                *file = Some(f);
                self.open_failed_at = None;
            }
            Err(e) => {
                if self.open_failed_at.is_none() {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the audit log; retrying");
                }
                self.open_failed_at = Some(std::time::Instant::now());
                *file = None;
            }
        }
    }
}

/// The writer's sink, when it has one open.
fn sink(out: &mut Out) -> Option<&mut dyn Write> {
    match out {
        Out::Stream(w) => Some(w.as_mut()),
        Out::File { file, .. } => file.as_mut().map(|f| f as &mut dyn Write),
    }
}

/// Whether the file at `path` is no longer the one we hold open (rotated away or deleted).
#[cfg(unix)]
fn moved(path: &Path, open: Option<&std::fs::File>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(open) = open else { return true };
    match (std::fs::metadata(path), open.metadata()) {
        (Ok(now), Ok(held)) => now.ino() != held.ino() || now.dev() != held.dev(),
        (Err(_), _) => true,
        (_, Err(_)) => false,
    }
}

#[cfg(not(unix))]
fn moved(path: &Path, _open: Option<&std::fs::File>) -> bool {
    !path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(path: &Path) -> Writer {
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            reopen: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new()),
        });
        let out = Out::File {
            file: Some(open_append(path).unwrap()),
            path: path.to_path_buf(),
        };
        Writer::new(out, AuditFormat::Json, shared)
    }

    #[test]
    fn a_record_cut_short_by_a_full_disk_is_written_whole_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let mut w = writer(&log);
        // One whole record, then a second the disk took only 10 bytes of.
        std::fs::write(&log, "{\"n\":1}\n{\"n\":2,\"pa").unwrap();
        w.pending.extend_from_slice(b"{\"n\":2,\"path\":\"/x\"}\n");
        w.pending_records = 1;
        w.partial = 10;
        // logrotate moves the file away and asks for a reopen
        std::fs::rename(&log, dir.path().join("audit.log.1")).unwrap();
        w.shared.reopen.store(true, Ordering::Release);
        w.maybe_reopen();
        w.write_pending();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("audit.log.1")).unwrap(),
            "{\"n\":1}\n",
            "the half record was not cut off the old file"
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "{\"n\":2,\"path\":\"/x\"}\n"
        );
        assert!(w.pending.is_empty());
    }

    #[test]
    fn a_record_cut_short_resumes_in_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let mut w = writer(&log);
        std::fs::write(&log, "{\"n\":2,\"pa").unwrap();
        w.pending
            .extend_from_slice(b"{\"n\":2,\"path\":\"/x\"}\n{\"n\":3}\n");
        w.pending_records = 2;
        w.partial = 10;
        w.write_pending();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "{\"n\":2,\"path\":\"/x\"}\n{\"n\":3}\n"
        );
        assert_eq!(w.pending_records, 0);
    }
}
