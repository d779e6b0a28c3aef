//! One canonical object key, decided before authorization.
//!
//! The policy is checked against the key as S3 spells it (percent-decoded once), and the
//! signer forwards exactly that key. That is only safe if the store acts on the object the
//! key names. AWS S3 keeps `.`, `..` and empty segments literal, but filesystem-backed stores
//! (s3s-fs, which `claimgate dev` runs, and many others) resolve them:
//! `datasets/imagenet/../pii/users.csv` is authorized as an `imagenet` key and served from
//! `pii/`, and `checkpoints/alice/../../models/x` lands in another bucket. A store that trims
//! a leading `/` (s3s-fs does, for list prefixes) turns `/pii/` into `pii/`.
//!
//! So by default a key or prefix with a `.` or `..` segment, or an empty segment (a leading
//! `/`, or `//` anywhere), is refused whatever its spelling, since the check runs on the
//! decoded key: `%2e%2E`, `.%2e`, `a%2F..%2Fb` all decode to the segments they spell. A
//! trailing `/` stays allowed (the "folder" objects consoles create), as does every other
//! name that merely starts with a dot (`.hidden`, `..x`). Segments of only dots and spaces
//! (`...`, `.. `) are refused too: Windows drops trailing dots and spaces, so they resolve
//! like `.` or `..` on a store there.
//!
//! A route whose store keeps keys literal (AWS S3 itself) can opt in to forwarding such keys
//! (`literal_dot_keys = true`); the key forwarded is still byte-for-byte the key authorized.

use super::ClassifyError;

/// How a route treats keys with dot or empty segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyRule {
    /// Refuse them (the default): the store may resolve them to another object.
    #[default]
    Canonical,
    /// Forward them literally: only for stores that never resolve them (AWS S3).
    Literal,
}

/// What the key is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyUse {
    /// An object key (path, virtual-hosted path, copy source, DeleteObjects entry).
    Key,
    /// A listing prefix or marker: it may end inside a segment.
    Prefix,
}

impl KeyUse {
    fn noun(self) -> &'static str {
        match self {
            KeyUse::Key => "object key",
            KeyUse::Prefix => "prefix",
        }
    }
}

/// Why a decoded key is not canonical, if it is not.
///
/// `\` counts as a separator too: a store on Windows (or one that maps keys to paths with
/// a library that accepts both) would resolve `a\..\b` like `a/../b`.
pub(super) fn non_canonical(key: &str, used: KeyUse) -> Option<&'static str> {
    // One pass over the bytes (this runs on every request): a segment ends at `/` or `\`.
    let bytes = key.as_bytes();
    let mut start = 0;
    for end in (0..=bytes.len()).filter(|&i| i == bytes.len() || matches!(bytes[i], b'/' | b'\\')) {
        let segment = &bytes[start..end];
        let (first, last) = (start == 0, end == bytes.len());
        start = end + 1;
        match segment {
            b"." | b".." => return Some("has a `.` or `..` segment"),
            // Windows drops trailing dots and spaces: `.. ` and `...` resolve like `..`/`.`.
            s if !s.is_empty() && s.iter().all(|b| *b == b'.' || *b == b' ') => {
                return Some(
                    "has a segment of only dots and spaces, which Windows resolves like `.` or `..`",
                );
            }
            // A key or prefix may end with a separator ("folder/"); nothing else may be empty.
            b"" if last && !first => {}
            // An empty prefix lists the whole bucket.
            b"" if used == KeyUse::Prefix && last && first => {}
            b"" => return Some("has an empty segment (a leading `/` or `//`)"),
            _ => {}
        }
    }
    None
}

/// Refuses a non-canonical key under [`KeyRule::Canonical`]. `what` names where the key
/// came from ("the object key", "x-amz-copy-source", …) for the caller.
pub(super) fn check(key: &str, used: KeyUse, rule: KeyRule, what: &str) -> Result<(), ClassifyError> {
    if rule == KeyRule::Literal {
        return Ok(());
    }
    match non_canonical(key, used) {
        None => Ok(()),
        Some(why) => {
            let reason = format!(
                "{what} {why}; the store behind claimgate may resolve it to another {noun}, so \
                 it is refused (a route whose store keeps keys literal can set literal_dot_keys)",
                noun = used.noun()
            );
            Err(match used {
                KeyUse::Key => ClassifyError::InvalidUri { reason },
                KeyUse::Prefix => ClassifyError::InvalidArgument { reason },
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_empty_segments_are_found() {
        let bad_keys = [
            ".", "..", "./a", "../a", "a/.", "a/..", "a/./b", "a/../b", "a//b", "/a", "//", "/", "a\\..\\b",
            "a\\.\\b", "a/..\\b", "a\\\\b", "...", "a/.../b", "a/.. /b", "a/. ", " ",
        ];
        for key in bad_keys {
            assert!(non_canonical(key, KeyUse::Key).is_some(), "key {key:?}");
            assert!(non_canonical(key, KeyUse::Prefix).is_some(), "prefix {key:?}");
        }
        let good = [
            "a",
            "a/",
            "a/b/",
            ".hidden",
            "a/.hidden/b",
            "a..b",
            "a /b",
            "..a",
            "a/b.",
            "%2e%2e",
            "a b/c",
        ];
        for key in good {
            assert_eq!(non_canonical(key, KeyUse::Key), None, "key {key:?}");
            assert_eq!(non_canonical(key, KeyUse::Prefix), None, "prefix {key:?}");
        }
        assert_eq!(non_canonical("", KeyUse::Prefix), None);
        assert!(non_canonical("", KeyUse::Key).is_some());
    }

    #[test]
    fn literal_routes_forward_anything() {
        assert!(check("a/../b", KeyUse::Key, KeyRule::Literal, "the key").is_ok());
        let err = check("a/../b", KeyUse::Key, KeyRule::Canonical, "the object key").unwrap_err();
        assert!(matches!(err, ClassifyError::InvalidUri { .. }));
        assert!(err.to_string().contains("literal_dot_keys"), "{err}");
        let err = check("/pii/", KeyUse::Prefix, KeyRule::Canonical, "prefix").unwrap_err();
        assert!(matches!(err, ClassifyError::InvalidArgument { .. }));
    }
}
