//! The config set in force, and replacing it while serving.
//!
//! A reload — SIGHUP, `POST /-/reload` on the admin port, or a change to any file the config
//! was read from — reads and validates the whole set again (config, policies, revocation
//! list, TLS certificate and key, CA files, secret files) and swaps it in atomically. A set
//! with any problem is refused whole: every problem is logged as `file:line: reason`, counted
//! in `claimgate_reload_total{result="error"}`, and the set in force keeps serving.
//!
//! Requests hold the set they started with ([`Live::current`] hands out an `Arc`), so an
//! in-flight transfer finishes under the policies it was authorized by. New connections take
//! the new certificate; open ones keep theirs.
//!
//! What a reload cannot change without new sockets — the listen addresses, the audit file's
//! path, and whether the listener speaks TLS — is kept as it was started and reported; a set
//! that switches TLS on or off is refused, since clients would meet the wrong protocol.
//!
//! Files are watched by polling their contents (every [`WATCH_EVERY`]) rather than by
//! inotify: a content digest sees every way a file can change — an editor's rename, the
//! `..data` symlink swap of a Kubernetes ConfigMap or Secret, an in-place write, a network
//! filesystem that sends no events — and costs a few small reads a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::digest;

use crate::audit::{AuditFormat, AuditSink};
use crate::config::{Config, ConfigError, Sources};
use crate::diag::Problem;
use crate::pipeline::{Proxy, Shared};

/// How often watched files are checked for changes. A change is loaded once two checks in
/// a row agree on it, so a file caught half-written (a truncated revocation list is still
/// valid TOML) is not put in force: a saved edit is in force 0.25–0.5 s later.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// A digest no set of files has: the next check always reloads.
const UNKNOWN: [u8; 32] = [0; 32];

/// What asked for a reload (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /-/reload`.
    Admin,
    /// A watched file changed.
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::Admin => "POST /-/reload",
            Trigger::FileChange => "a watched file changed",
        }
    }
}

/// A reload that took effect.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The new set's generation.
    pub generation: u64,
    /// Settings that changed but wait for a restart.
    pub deferred: Vec<String>,
}

/// What was started with the first set and stays until restart.
#[derive(Debug, Clone, PartialEq)]
struct Fixed {
    listen: std::net::SocketAddr,
    workers: usize,
    admin: Option<std::net::SocketAddr>,
    audit: AuditSink,
    audit_format: AuditFormat,
    audit_syslog: Option<crate::audit::syslog::SyslogTarget>,
    tls: bool,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        Fixed {
            listen: config.server.listen,
            workers: config.server.workers,
            admin: config.admin,
            audit: config.audit.sink.clone(),
            audit_format: config.audit.format,
            audit_syslog: config.audit.syslog.clone(),
            tls: config.server.tls.is_some(),
        }
    }
}

/// The watcher's view of the files: which ones, and their digest when last loaded.
struct Watched {
    sources: Sources,
    digest: [u8; 32],
}

/// The config set in force and the means to replace it.
pub struct Live {
    current: ArcSwap<Proxy>,
    shared: Shared,
    path: PathBuf,
    fixed: Fixed,
    /// Serializes reloads; holds what the watcher compares against.
    watched: tokio::sync::Mutex<Watched>,
    /// Unix time the set in force was loaded.
    loaded_at: AtomicU64,
    /// Set when the server starts draining: readiness goes false so load balancers stop
    /// sending new work while in-flight requests finish.
    draining: std::sync::atomic::AtomicBool,
}

impl Live {
    /// Puts the first set into force (generation 1).
    pub fn new(config: Arc<Config>, shared: Shared) -> Result<Live, String> {
        let digest = fingerprint(&config.sources);
        let watched = Watched {
            sources: config.sources.clone(),
            digest,
        };
        let fixed = Fixed::of(&config);
        let path = config.path.clone();
        let proxy = Proxy::new(config, &shared, 1, None)?;
        let now = shared.clock.unix().max(0) as u64;
        shared.metrics.config_loaded(1, now as f64, false);
        Ok(Live {
            current: ArcSwap::from_pointee(proxy),
            shared,
            path,
            fixed,
            watched: tokio::sync::Mutex::new(watched),
            loaded_at: AtomicU64::new(now),
            draining: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The set in force. A request keeps the `Arc` to its end.
    pub fn current(&self) -> Arc<Proxy> {
        self.current.load_full()
    }

    /// What every set shares (audit writer, metrics, clock).
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Unix time the set in force was loaded.
    pub fn loaded_at(&self) -> u64 {
        self.loaded_at.load(Ordering::Relaxed)
    }

    /// The server is draining (SIGTERM): not ready for new work.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the set in force's background work (issuer keys).
    pub fn start(&self) {
        self.current().start_background();
    }

    /// Stops the background work of the set in force (shutdown).
    pub fn stop(&self) {
        self.current().stop_background();
    }

    /// Reads, validates and swaps in the whole set. On any problem the set in force stays.
    pub async fn reload(&self, trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let mut watched = self.watched.lock().await;
        let before = watched.sources.clone();
        // The digest is taken *before* the files are read: a file changed while they are
        // read then differs from it, and the next check loads the set again. (Taken after,
        // it would hide that change until some other file changed.)
        let seen = tokio::task::spawn_blocking(move || fingerprint(&before))
            .await
            .unwrap_or(UNKNOWN);
        let path = self.path.clone();
        // File reads and policy compilation block: off the request threads.
        let result = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(loaded) => loaded.and_then(|config| self.install(config, trigger)),
            Err(e) => Err(ConfigError::of(vec![Problem::file(
                &self.path,
                format!("reading the config set failed: {e}"),
            )])),
        };
        match &result {
            Ok(_) => {
                let sources = self.current().config.sources.clone();
                // A set read from other files than before has no digest taken before its
                // reading: the next check loads it once more, to be sure.
                watched.digest = if sources == watched.sources { seen } else { UNKNOWN };
                watched.sources = sources;
            }
            Err(e) => {
                // Not retried until a file changes again: one of the set in force, or one
                // the refused set named. The second kind matters where files arrive apart,
                // as a ConfigMap and a Secret do on Kubernetes: a config naming a key file
                // that is not there yet is refused, and is tried again once the file appears.
                let in_force = self.current().config.sources.clone();
                let sources = in_force.union(&e.sources);
                if sources == in_force {
                    watched.digest = seen;
                } else {
                    // The refused set's files had no digest taken before they were read, so
                    // one is taken now; a file that changed in between (milliseconds) waits
                    // for its next change.
                    let all = sources.clone();
                    watched.digest = tokio::task::spawn_blocking(move || fingerprint(&all))
                        .await
                        .unwrap_or(seen);
                }
                watched.sources = sources;
                self.shared.metrics.reload_failed();
                for p in &e.problems {
                    tracing::error!("{p}");
                }
                tracing::error!(
                    trigger = trigger.as_str(),
                    problems = e.problems.len(),
                    "reload refused; the config set in force keeps serving"
                );
            }
        }
        result
    }

    fn install(&self, config: Config, trigger: Trigger) -> Result<Reloaded, ConfigError> {
        let fixed = Fixed::of(&config);
        let sources = config.sources.clone();
        let refuse = |message: String| ConfigError {
            problems: vec![Problem::file(&config.path, message)],
            sources: sources.clone(),
        };
        if fixed.tls != self.fixed.tls {
            return Err(refuse(
                "[server] tls was switched on or off: the listener's protocol changes only at restart".into(),
            ));
        }
        let mut deferred = Vec::new();
        if fixed.listen != self.fixed.listen {
            deferred.push(format!(
                "[server] listen changed to {} (serving on {} until restart)",
                fixed.listen, self.fixed.listen
            ));
        }
        if fixed.workers != self.fixed.workers {
            deferred.push(format!(
                "[server] workers changed to {} (running {} until restart)",
                fixed.workers, self.fixed.workers
            ));
        }
        if fixed.admin != self.fixed.admin {
            deferred.push("[admin] listen changed (takes effect at restart)".to_string());
        }
        if fixed.audit != self.fixed.audit {
            deferred.push("[audit] path changed (takes effect at restart)".to_string());
        }
        if fixed.audit_format != self.fixed.audit_format {
            deferred.push("[audit] format changed (takes effect at restart)".to_string());
        }
        if fixed.audit_syslog != self.fixed.audit_syslog {
            deferred.push("[audit] syslog changed (takes effect at restart)".to_string());
        }
        let old = self.current();
        let generation = old.generation + 1;
        let proxy =
            Proxy::new(Arc::new(config), &self.shared, generation, Some(&old)).map_err(|e| ConfigError {
                problems: vec![Problem::file(&self.path, e)],
                sources: sources.clone(),
            })?;
        warn_of_weakening(&old, &proxy);
        proxy.start_background();
        self.current.store(Arc::new(proxy));
        old.stop_background();
        let now = self.shared.clock.unix().max(0) as u64;
        self.loaded_at.store(now, Ordering::Relaxed);
        self.shared.metrics.config_loaded(generation, now as f64, true);
        for d in &deferred {
            tracing::warn!("{d}");
        }
        tracing::info!(generation, trigger = trigger.as_str(), "config reloaded");
        Ok(Reloaded { generation, deferred })
    }

    /// Reloads whenever a file the set was read from changes. Runs until aborted.
    pub async fn watch(self: Arc<Self>) {
        // The digest of the last check, when it differed from the set in force.
        let mut pending: Option<[u8; 32]> = None;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let (sources, known) = {
                let w = self.watched.lock().await;
                (w.sources.clone(), w.digest)
            };
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&sources)).await else {
                continue;
            };
            if now == known {
                pending = None;
            } else if pending.replace(now) == Some(now) {
                // Settled: the same change seen twice.
                pending = None;
                let _ = self.reload(Trigger::FileChange).await;
            }
        }
    }
}

/// Says loudly what a reload takes away from enforcement, so an edit that weakens it by
/// accident is seen in the log: shadow mode switched on, revocations removed.
fn warn_of_weakening(old: &Proxy, new: &Proxy) {
    if new.policies.is_global_shadow() && !old.policies.is_global_shadow() {
        tracing::warn!(
            "[policies] mode = \"shadow\" after this reload: NOTHING IS ENFORCED; decisions are only audited"
        );
    }
    let count = |p: &Proxy| p.config.revocations.as_ref().map_or(0, |r| r.len());
    let (before, after) = (count(old), count(new));
    if after < before {
        tracing::warn!(
            before,
            after,
            "the revocation list has fewer entries after this reload"
        );
    }
}

/// A digest of everything the sources hold: each file's bytes (or the error reading it),
/// each directory's entry names and their bytes. Symlinks are followed, so a swapped
/// `..data` link changes the digest.
pub fn fingerprint(sources: &Sources) -> [u8; 32] {
    let mut d = digest::Context::new(&digest::SHA256);
    let file = |d: &mut digest::Context, path: &std::path::Path| {
        d.update(path.as_os_str().as_encoded_bytes());
        d.update(&[0]);
        match std::fs::read(path) {
            Ok(bytes) => {
                d.update(&(bytes.len() as u64).to_be_bytes());
                d.update(&bytes);
            }
            Err(e) => d.update(format!("error:{:?}", e.kind()).as_bytes()),
        }
        d.update(&[0]);
    };
    for path in &sources.files {
        file(&mut d, path);
    }
    for dir in &sources.dirs {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for entry in entries.iter().filter(|p| p.is_file()) {
            file(&mut d, entry);
        }
    }
    d.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_sees_edits_renames_new_files_and_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("policies")).unwrap();
        std::fs::write(p.join("policies/a.toml"), "a").unwrap();
        std::fs::write(p.join("cert.pem"), "one").unwrap();
        let sources = Sources {
            files: vec![p.join("cert.pem")],
            dirs: vec![p.join("policies")],
        };
        let mut last = fingerprint(&sources);
        assert_eq!(last, fingerprint(&sources), "stable while nothing changes");
        let mut changed = |what: &str| {
            let now = fingerprint(&sources);
            assert_ne!(now, last, "{what} was not seen");
            last = now;
        };
        // same length, same second: contents decide
        std::fs::write(p.join("cert.pem"), "two").unwrap();
        changed("an in-place edit");
        std::fs::write(p.join("new.pem"), "three").unwrap();
        std::fs::rename(p.join("new.pem"), p.join("cert.pem")).unwrap();
        changed("a replace by rename");
        std::fs::write(p.join("policies/b.toml"), "b").unwrap();
        changed("a new policy file");
        std::fs::remove_file(p.join("policies/a.toml")).unwrap();
        changed("a removed policy file");
        #[cfg(unix)]
        {
            // Kubernetes: files are links through `..data`, swapped atomically.
            std::fs::create_dir(p.join("v1")).unwrap();
            std::fs::create_dir(p.join("v2")).unwrap();
            std::fs::write(p.join("v1/key"), "k1").unwrap();
            std::fs::write(p.join("v2/key"), "k2").unwrap();
            std::os::unix::fs::symlink(p.join("v1"), p.join("..data")).unwrap();
            std::os::unix::fs::symlink(p.join("..data/key"), p.join("key")).unwrap();
            let sources = Sources {
                files: vec![p.join("key")],
                dirs: vec![],
            };
            let before = fingerprint(&sources);
            std::os::unix::fs::symlink(p.join("v2"), p.join("..data.tmp")).unwrap();
            std::fs::rename(p.join("..data.tmp"), p.join("..data")).unwrap();
            assert_ne!(
                before,
                fingerprint(&sources),
                "a ..data symlink swap was not seen"
            );
        }
    }
}
