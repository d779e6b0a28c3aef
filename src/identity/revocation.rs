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
//! jti = "4f1c…"                         # one token: its `jti` with the issuer that minted it
//! issuer = "https://login.example.com"
//!
//! [[revoked]]
//! jti = "sha256:0123456789abcdef"       # or claimgate's own id for it, from an audit record
//!
//! [[revoked]]
//! access_key_id = "ASIAEXAMPLE123456789" # one STS session
//! ```
//!
//! A `jti` is unique only within the issuer that minted it, so a `jti` entry names that
//! issuer (claimgate's `sha256:` ids hash the whole token and need none).
//!
//! The list is part of the config set: it is read when the config is, and a change to the
//! file reloads the set ([`crate::config::Sources`]). A list that fails to parse fails the
//! reload and the previous list stays in force: a typo must not silently un-revoke everyone.

use std::path::Path;
use std::time::UNIX_EPOCH;

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
    Subject {
        issuer: Option<String>,
        subject: String,
    },
    /// A token id: a `jti` with its issuer, or claimgate's `sha256:` id (issuer `None`).
    TokenId {
        issuer: Option<String>,
        id: String,
    },
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
    /// Reads and parses the list file.
    pub fn load(path: &Path) -> Result<RevocationList, Vec<Problem>> {
        RevocationList::parse(path, &read_text(path)?)
    }

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
            if e.issuer.is_some() && e.access_key_id.is_some() {
                problems.push(at(
                    "`issuer` qualifies a `subject` or `jti` entry, not an `access_key_id`".into(),
                ));
                continue;
            }
            if let Some(j) = &e.jti
                && e.issuer.is_none()
                && !j.starts_with("sha256:")
            {
                problems.push(at(format!(
                    "jti {j:?} needs the `issuer` that minted it: a jti is unique only within \
                     one issuer (or use claimgate's sha256:… token id from the audit record)"
                )));
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
                Target::TokenId {
                    issuer: e.issuer.clone(),
                    id: j.clone(),
                }
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
                Target::TokenId { issuer: i, id } => {
                    id == token_id && i.as_deref().is_none_or(|i| i == issuer)
                }
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
            "[[revoked]]\nsubject = \"alice\"\nreason = \"stolen laptop\"\n\n[[revoked]]\njti = \"t1\"\nissuer = \"https://x\"\n\n[[revoked]]\naccess_key_id = \"ASIA1\"\n\n[[revoked]]\nsubject = \"bob\"\nissuer = \"https://a\"\nuntil = \"2000-01-01T00:00:00Z\"\n",
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
    fn a_jti_belongs_to_its_issuer() {
        let l =
            list("[[revoked]]\njti = \"j1\"\nissuer = \"https://a\"\n\n[[revoked]]\njti = \"sha256:00ff\"\n");
        assert_eq!(l.check_parts("https://a", "x", "j1", None, 0), Some("revoked"));
        // the same jti from another issuer is another token
        assert_eq!(l.check_parts("https://b", "x", "j1", None, 0), None);
        assert_eq!(
            l.check_parts("https://b", "x", "sha256:00ff", None, 0),
            Some("revoked")
        );
        let e = RevocationList::parse(Path::new("r.toml"), "[[revoked]]\njti = \"j1\"\n").unwrap_err();
        assert!(e[0].message.contains("needs the `issuer`"), "{}", e[0].message);
    }
}
