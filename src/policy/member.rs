//! Member entries: who holds a role, decided from the identity's issuer and claims.

use std::fmt;

use serde_json::{Map, Value};

use super::glob::Glob;
use crate::model::claim_at;

/// One entry of a role's `members` list.
#[derive(Debug, Clone)]
pub(crate) enum Member {
    /// `{ claim = "…", equals|contains|glob = "…", issuer = "…"? }`
    Claim(ClaimTest),
    /// `{ all = [ … ] }`: every entry must match.
    All(Vec<Member>),
}

/// A condition on one claim, optionally restricted to one issuer.
#[derive(Debug, Clone)]
pub(crate) struct ClaimTest {
    /// When set, the identity's issuer must equal it exactly: the same claim value from two
    /// IdPs can name different people.
    pub(crate) issuer: Option<Box<str>>,
    /// Dotted claim path, looked up with [`claim_at`].
    pub(crate) claim: Box<str>,
    /// What the claim must satisfy.
    pub(crate) test: Test,
}

/// The comparison a [`ClaimTest`] makes.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// The claim is exactly this string (a number or boolean claim compares by its JSON
    /// text, so `equals = "true"` matches `true`).
    Equals(Box<str>),
    /// The claim is an array with an element that `equals` this, or itself `equals` it.
    /// Never a substring match: `"ml"` does not match `"ml-engineers"`.
    Contains(Box<str>),
    /// The claim is a string matching the glob, or an array with such a string.
    Glob(Glob),
}

impl Member {
    /// Does an identity from `issuer` with `claims` satisfy this entry?
    pub(crate) fn matches(&self, issuer: &str, claims: &Map<String, Value>) -> bool {
        match self {
            Member::Claim(test) => test.matches(issuer, claims),
            Member::All(entries) => entries.iter().all(|m| m.matches(issuer, claims)),
        }
    }
}

impl ClaimTest {
    fn matches(&self, issuer: &str, claims: &Map<String, Value>) -> bool {
        if self.issuer.as_deref().is_some_and(|want| want != issuer) {
            return false;
        }
        let Some(value) = claim_at(claims, &self.claim) else {
            return false;
        };
        match &self.test {
            Test::Equals(want) => scalar_equals(value, want),
            Test::Contains(want) => match value {
                Value::Array(items) => items.iter().any(|item| scalar_equals(item, want)),
                other => scalar_equals(other, want),
            },
            Test::Glob(glob) => match value {
                Value::String(s) => glob.matches(s),
                Value::Array(items) => items.iter().any(|i| i.as_str().is_some_and(|s| glob.matches(s))),
                _ => false,
            },
        }
    }
}

/// A scalar claim compared with a configured string: strings exactly, numbers and booleans
/// by their JSON text. Arrays, objects and null never equal anything.
fn scalar_equals(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s == want,
        Value::Bool(b) => want == if *b { "true" } else { "false" },
        Value::Number(n) => n.to_string() == want,
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// Renders the entry the way it is written in a policy file, for `claimgate check`.
impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Claim(test) => write!(f, "{test}"),
            Member::All(entries) => {
                f.write_str("{ all = [")?;
                for (i, entry) in entries.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{entry}")?;
                }
                f.write_str(" ] }")
            }
        }
    }
}

impl fmt::Display for ClaimTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{ ")?;
        if let Some(issuer) = &self.issuer {
            write!(f, "issuer = {issuer:?}, ")?;
        }
        write!(f, "claim = {:?}, ", self.claim)?;
        match &self.test {
            Test::Equals(v) => write!(f, "equals = {v:?}")?,
            Test::Contains(v) => write!(f, "contains = {v:?}")?,
            Test::Glob(g) => write!(f, "glob = {:?}", g.as_str())?,
        }
        f.write_str(" }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISS: &str = "https://idp.example.com";

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    fn claim(path: &str, test: Test) -> Member {
        Member::Claim(ClaimTest {
            issuer: None,
            claim: path.into(),
            test,
        })
    }

    #[test]
    fn equals_is_exact() {
        let m = claim("sub", Test::Equals("alice".into()));
        assert!(m.matches(ISS, &claims(json!({"sub": "alice"}))));
        assert!(!m.matches(ISS, &claims(json!({"sub": "alice2"}))));
        assert!(!m.matches(ISS, &claims(json!({"sub": "Alice"}))));
        assert!(!m.matches(ISS, &claims(json!({"sub": ["alice"]}))));
        assert!(!m.matches(ISS, &claims(json!({}))));
    }

    #[test]
    fn equals_compares_scalars_by_json_text() {
        let m = claim("email_verified", Test::Equals("true".into()));
        assert!(m.matches(ISS, &claims(json!({"email_verified": true}))));
        assert!(m.matches(ISS, &claims(json!({"email_verified": "true"}))));
        assert!(!m.matches(ISS, &claims(json!({"email_verified": false}))));
        let m = claim("level", Test::Equals("3".into()));
        assert!(m.matches(ISS, &claims(json!({"level": 3}))));
        assert!(!m.matches(ISS, &claims(json!({"level": 30}))));
        assert!(!m.matches(ISS, &claims(json!({"level": null}))));
    }

    #[test]
    fn contains_is_never_a_substring() {
        let m = claim("groups", Test::Contains("ml".into()));
        assert!(m.matches(ISS, &claims(json!({"groups": ["web", "ml"]}))));
        assert!(m.matches(ISS, &claims(json!({"groups": "ml"}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": ["ml-engineers"]}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": "ml-engineers"}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": "web ml"}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": [["ml"]]}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": {"ml": true}}))));
    }

    #[test]
    fn glob_matches_strings_and_array_elements() {
        let m = claim("sub", Test::Glob(Glob::new("system:serviceaccount:training:*")));
        assert!(m.matches(
            ISS,
            &claims(json!({"sub": "system:serviceaccount:training:job-1"}))
        ));
        assert!(!m.matches(
            ISS,
            &claims(json!({"sub": "system:serviceaccount:serving:job-1"}))
        ));
        let m = claim("groups", Test::Glob(Glob::new("ml-*")));
        assert!(m.matches(ISS, &claims(json!({"groups": ["web", "ml-eng"]}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": ["web"]}))));
        assert!(!m.matches(ISS, &claims(json!({"groups": 5}))));
    }

    #[test]
    fn dotted_paths_and_namespaced_claims() {
        let m = claim("realm_access.roles", Test::Contains("trainer".into()));
        assert!(m.matches(ISS, &claims(json!({"realm_access": {"roles": ["trainer"]}}))));
        let m = claim("https://example.com/groups", Test::Contains("ml".into()));
        assert!(m.matches(ISS, &claims(json!({"https://example.com/groups": ["ml"]}))));
    }

    #[test]
    fn issuer_must_match_exactly() {
        let m = Member::Claim(ClaimTest {
            issuer: Some(ISS.into()),
            claim: "sub".into(),
            test: Test::Equals("alice".into()),
        });
        let c = claims(json!({"sub": "alice"}));
        assert!(m.matches(ISS, &c));
        assert!(!m.matches("https://evil.example.com", &c));
        assert!(!m.matches("https://idp.example.com/", &c));
    }

    #[test]
    fn all_needs_every_entry() {
        let m = Member::All(vec![
            claim("sub", Test::Equals("alice".into())),
            claim("groups", Test::Contains("ml-train".into())),
        ]);
        assert!(m.matches(ISS, &claims(json!({"sub": "alice", "groups": ["ml-train"]}))));
        assert!(!m.matches(ISS, &claims(json!({"sub": "alice", "groups": []}))));
        assert!(!m.matches(ISS, &claims(json!({"sub": "bob", "groups": ["ml-train"]}))));
    }

    #[test]
    fn displays_like_the_file() {
        let m = Member::All(vec![
            claim("sub", Test::Equals("alice".into())),
            Member::Claim(ClaimTest {
                issuer: Some(ISS.into()),
                claim: "sub".into(),
                test: Test::Glob(Glob::new("x:*")),
            }),
        ]);
        assert_eq!(
            m.to_string(),
            r#"{ all = [ { claim = "sub", equals = "alice" }, { issuer = "https://idp.example.com", claim = "sub", glob = "x:*" } ] }"#
        );
    }
}
