//! Secret values (keys, tokens, session secrets): never printed, wiped when dropped. Config
//! names them as `env:NAME`, `file:PATH` or a literal.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::{Zeroize, Zeroizing};

/// A secret that cannot be logged by accident: `Debug` and `Display` print a placeholder,
/// and its bytes are zeroed when it is dropped. It serializes as its value, for the one
/// place that needs that: a session sealed inside its (encrypted) session token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl Secret {
    /// Wraps a value known to be secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used (signing, sealing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Resolves a secret reference. `base` is the config file's directory, against which a
/// relative `file:` path is read. Errors never contain the secret, only where it was sought.
pub fn resolve(reference: &str, base: &Path) -> Result<Secret, String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Secret(v)),
            Ok(_) => Err(format!("environment variable {name} is empty")),
            Err(_) => Err(format!("environment variable {name} is not set")),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let path = base.join(path);
        return match std::fs::read_to_string(&path) {
            Ok(v) => {
                let v = Zeroizing::new(v);
                let v = v.trim_end_matches(['\n', '\r']).to_string();
                if v.is_empty() {
                    Err(format!("secret file {} is empty", path.display()))
                } else {
                    Ok(Secret(v))
                }
            }
            Err(e) => Err(format!("cannot read secret file {}: {e}", path.display())),
        };
    }
    if reference.is_empty() {
        return Err("secret is empty".into());
    }
    Ok(Secret(reference.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn resolves_file_and_literal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "abc\n").unwrap();
        assert_eq!(resolve("file:k", dir.path()).unwrap().expose(), "abc");
        assert_eq!(resolve("lit", dir.path()).unwrap().expose(), "lit");
        let err = resolve("env:CLAIMGATE_TEST_SURELY_UNSET", dir.path()).unwrap_err();
        assert!(err.contains("CLAIMGATE_TEST_SURELY_UNSET"));
        assert!(resolve("file:missing", dir.path()).is_err());
    }
}
