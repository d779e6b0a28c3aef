//! Strict, single percent-decoding of URI components.
//!
//! `percent_decode_str` alone passes a malformed escape (`%zz`, a trailing `%`) through
//! literally and yields bytes that may not be UTF-8. A resource built from such input could
//! name something other than what the upstream acts on, so every malformed component is
//! refused instead.

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;

/// How a raw `+` reads in the component being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plus {
    /// A literal `+` (paths, headers).
    Literal,
    /// A space, as in `application/x-www-form-urlencoded` query strings, which S3 and
    /// S3-compatible stores follow.
    Space,
}

/// Why a component could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
    /// The decoded text holds a NUL, which no store or policy should ever see: C-based
    /// tooling truncates at it, so it could make a log or upstream disagree with the policy.
    Nul,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::BadEscape => "bad percent-escape (a `%` must be followed by two hex digits)",
            DecodeError::NotUtf8 => "percent-decodes to invalid UTF-8",
            DecodeError::Nul => "contains a NUL character",
        })
    }
}

/// Percent-decodes `raw` exactly once.
pub(super) fn decode(raw: &str, plus: Plus) -> Result<String, DecodeError> {
    check_escapes(raw)?;
    let spaced: Cow<'_, str> = match plus {
        Plus::Space if raw.contains('+') => Cow::Owned(raw.replace('+', "%20")),
        _ => Cow::Borrowed(raw),
    };
    let decoded = percent_decode_str(&spaced)
        .decode_utf8()
        .map_err(|_| DecodeError::NotUtf8)?;
    if decoded.contains('\0') {
        return Err(DecodeError::Nul);
    }
    Ok(decoded.into_owned())
}

/// Every `%` must start a two-hex-digit escape.
fn check_escapes(raw: &str) -> Result<(), DecodeError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let escape = bytes.get(i + 1..i + 3).ok_or(DecodeError::BadEscape)?;
            if !escape.iter().all(u8::is_ascii_hexdigit) {
                return Err(DecodeError::BadEscape);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_once() {
        let cases: &[(&str, Plus, Result<&str, DecodeError>)] = &[
            ("", Plus::Literal, Ok("")),
            ("plain/key.txt", Plus::Literal, Ok("plain/key.txt")),
            ("a%20b", Plus::Literal, Ok("a b")),
            ("a%2Fb%2fc", Plus::Literal, Ok("a/b/c")),
            ("%252F", Plus::Literal, Ok("%2F")),
            ("a+b", Plus::Literal, Ok("a+b")),
            ("a+b", Plus::Space, Ok("a b")),
            ("a%2Bb", Plus::Space, Ok("a+b")),
            ("caf%C3%A9", Plus::Literal, Ok("café")),
            ("%E2%82%AC", Plus::Space, Ok("€")),
            ("100%", Plus::Literal, Err(DecodeError::BadEscape)),
            ("%4", Plus::Literal, Err(DecodeError::BadEscape)),
            ("%zz", Plus::Literal, Err(DecodeError::BadEscape)),
            ("%%41", Plus::Literal, Err(DecodeError::BadEscape)),
            ("%C3", Plus::Literal, Err(DecodeError::NotUtf8)),
            ("%FF%FE", Plus::Space, Err(DecodeError::NotUtf8)),
            ("a%00b", Plus::Literal, Err(DecodeError::Nul)),
        ];
        for (raw, plus, want) in cases {
            let got = decode(raw, *plus);
            assert_eq!(got.as_deref(), want.as_deref(), "decode({raw:?}, {plus:?})");
        }
    }
}
