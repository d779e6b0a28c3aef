//! The revocation list: subjects, token ids and session access key ids that are cut off now,
//! on every replica, without waiting for their tokens or sessions to expire.
//!
//! ```toml
//! [[revoked]]
//! subject = "alice"                     # optionally with issuer = "https://…"
//! reason = "laptop reported stolen"
//! until = "2026-12-31T00:00:00Z"        # optional: the entry lapses then
//!
//! [[revoked]]
//! jti = "4f1c…"                         # one token (its `jti`, or claimgate's sha256:… id)
//!
//! [[revoked]]
//! access_key_id = "ASIAEXAMPLE123456789" # one STS session
//! ```
//!
//! The file is read every second and re-parsed when its contents change (compared by hash,
//! not modification time, which `cp -p` or two edits within one tick would fool). A file
//! that fails to parse is reported and the previous list stays in force: a typo must not
//! silently un-revoke everyone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use serde::Deserialize;

use crate::diag::Problem;
use crate::model::Identity;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawList {
    #[serde(default)]
    revoked: Vec<toml::Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    subject: Option<String>,
    issuer: Option<String>,
    jti: Option<String>,
    access_key_id: Option<String>,
    reason: Option<String>,
    until: Option<String>,
}

/// What an entry cuts off.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Subject { issuer: Option<String>, subject: String },
    TokenId(String),
    AccessKeyId(String),
}

#[derive(Debug, Clone)]
struct Entry {
    target: Target,
    reason: String,
    until: Option<i64>,
}

/// A parsed list.
#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    entries: Vec<Entry>,
}

impl RevocationList {
    /// Parses list text, reporting every problem with its line.
    pub fn parse(path: &Path, source: &str) -> Result<RevocationList, Vec<Problem>> {
        let raw: RawList = toml::from_str(source).map_err(|e| vec![Problem::from_toml(path, source, &e)])?;
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for spanned in &raw.revoked {
            let e = spanned.get_ref();
            let at = |m: String| Problem::at(path, source, spanned.span().start, m);
            let targets = [e.subject.is_some(), e.jti.is_some(), e.access_key_id.is_some()];
            if targets.iter().filter(|t| **t).count() != 1 {
                problems.push(at(
                    "an entry names exactly one of `subject`, `jti`, `access_key_id`".into(),
                ));
                continue;
            }
            if e.issuer.is_some() && e.subject.is_none() {
                problems.push(at("`issuer` only qualifies a `subject` entry".into()));
                continue;
            }
            let until = match &e.until {
                None => None,
                Some(t) => match humantime::parse_rfc3339_weak(t) {
                    Ok(ts) => Some(ts.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)),
                    Err(err) => {
                        problems.push(at(format!(
                            "bad `until` {t:?}: {err} (write e.g. \"2026-12-31T00:00:00Z\")"
                        )));
                        continue;
                    }
                },
            };
            let target = if let Some(s) = &e.subject {
                Target::Subject {
                    issuer: e.issuer.clone(),
                    subject: s.clone(),
                }
            } else if let Some(j) = &e.jti {
                Target::TokenId(j.clone())
            } else {
                Target::AccessKeyId(e.access_key_id.clone().unwrap_or_default())
            };
            entries.push(Entry {
                target,
                reason: e.reason.clone().unwrap_or_else(|| "revoked".into()),
                until,
            });
        }
        if problems.is_empty() {
            Ok(RevocationList { entries })
        } else {
            Err(problems)
        }
    }

    /// The reason, when `id` is revoked at `now`.
    pub fn check(&self, id: &Identity, now: i64) -> Option<&str> {
        self.check_parts(&id.issuer, &id.subject, &id.token_id, id.session_id(), now)
    }

    /// Like [`RevocationList::check`], from the parts (STS checks before an identity exists).
    pub fn check_parts(
        &self,
        issuer: &str,
        subject: &str,
        token_id: &str,
        access_key_id: Option<&str>,
        now: i64,
    ) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.until.is_none_or(|u| now < u))
            .find(|e| match &e.target {
                Target::Subject {
                    issuer: i,
                    subject: s,
                } => s == subject && i.as_deref().is_none_or(|i| i == issuer),
                Target::TokenId(j) => j == token_id,
                Target::AccessKeyId(a) => Some(a.as_str()) == access_key_id,
            })
            .map(|e| e.reason.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The live list, reloaded when the file changes.
pub struct Revocations {
    path: PathBuf,
    /// The list in force and the SHA-256 of the text it came from (or of the last bad text,
    /// so a bad edit is reported once).
    state: RwLock<(Arc<RevocationList>, [u8; 32])>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    /// Loads the file now; a missing or bad file is an error at start-up.
    pub fn load(path: &Path) -> Result<Revocations, Vec<Problem>> {
        let source = read_text(path)?;
        let list = RevocationList::parse(path, &source)?;
        Ok(Revocations {
            path: path.to_path_buf(),
            state: RwLock::new((Arc::new(list), crate::identity::token_digest(&source))),
        })
    }

    /// The list in force.
    pub fn current(&self) -> Arc<RevocationList> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Re-reads the file if its contents changed. Returns whether a new list took effect.
    pub fn reload_if_changed(&self) -> bool {
        let source = match read_text(&self.path) {
            Ok(s) => s,
            Err(problems) => {
                for p in &problems {
                    tracing::warn!("{p} (keeping the previous revocation list)");
                }
                return false;
            }
        };
        let digest = crate::identity::token_digest(&source);
        if digest == self.state.read().unwrap_or_else(|e| e.into_inner()).1 {
            return false;
        }
        match RevocationList::parse(&self.path, &source) {
            Ok(list) => {
                tracing::info!(path = %self.path.display(), entries = list.len(), "revocation list reloaded");
                *self.state.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(list), digest);
                true
            }
            Err(problems) => {
                for p in &problems {
                    tracing::error!("{p} (keeping the previous revocation list)");
                }
                self.state.write().unwrap_or_else(|e| e.into_inner()).1 = digest;
                false
            }
        }
    }

    /// Watches the file in the background.
    pub fn spawn_watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                me.reload_if_changed();
            }
        })
    }
}

fn read_text(path: &Path) -> Result<String, Vec<Problem>> {
    std::fs::read_to_string(path)
        .map_err(|e| vec![Problem::file(path, format!("cannot read revocation list: {e}"))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(src: &str) -> RevocationList {
        RevocationList::parse(Path::new("r.toml"), src).unwrap()
    }

    #[test]
    fn entries_match_what_they_name() {
        let l = list(
            "[[revoked]]\nsubject = \"alice\"\nreason = \"stolen laptop\"\n\n[[revoked]]\njti = \"t1\"\n\n[[revoked]]\naccess_key_id = \"ASIA1\"\n\n[[revoked]]\nsubject = \"bob\"\nissuer = \"https://a\"\nuntil = \"2000-01-01T00:00:00Z\"\n",
        );
        let now = 1_800_000_000;
        assert_eq!(
            l.check_parts("https://x", "alice", "j", None, now),
            Some("stolen laptop")
        );
        assert_eq!(
            l.check_parts("https://x", "carol", "t1", None, now),
            Some("revoked")
        );
        assert_eq!(
            l.check_parts("https://x", "carol", "j", Some("ASIA1"), now),
            Some("revoked")
        );
        assert_eq!(l.check_parts("https://x", "carol", "j", Some("ASIA2"), now), None);
        // lapsed entry
        assert_eq!(l.check_parts("https://a", "bob", "j", None, now), None);
        assert_eq!(
            l.check_parts("https://a", "bob", "j", None, 900_000_000),
            Some("revoked")
        );
    }

    #[test]
    fn problems_have_lines() {
        let e = RevocationList::parse(
            Path::new("r.toml"),
            "[[revoked]]\nsubject = \"a\"\njti = \"b\"\n\n[[revoked]]\nsubject = \"c\"\nuntil = \"soon\"\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].line, Some(1));
        assert_eq!(e[1].line, Some(5));
    }

    #[test]
    fn a_bad_edit_keeps_the_previous_list_and_same_second_edits_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, "[[revoked]]\nsubject = \"a\"\n").unwrap();
        let r = Revocations::load(&path).unwrap();
        assert!(!r.reload_if_changed());
        std::fs::write(&path, "[[revoked]]\nsubjekt = \"a\"\n").unwrap();
        assert!(!r.reload_if_changed());
        assert_eq!(r.current().len(), 1);
        // written twice within the same instant: contents decide, not timestamps
        std::fs::write(&path, "[[revoked]]\nsubject = \"a\"\n[[revoked]]\njti = \"b\"\n").unwrap();
        assert!(r.reload_if_changed());
        std::fs::write(&path, "[[revoked]]\nsubject = \"a\"\n[[revoked]]\njti = \"c\"\n").unwrap();
        assert!(r.reload_if_changed());
        assert_eq!(r.current().check_parts("i", "x", "c", None, 0), Some("revoked"));
    }
}
