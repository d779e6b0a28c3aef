//! Patterns: `*` globs, and resource patterns with `${claim}` variables.
//!
//! Only `*` is special: it matches any run of characters, `/` and the empty run included.
//! Everything else is literal and case-sensitive. The matcher splits the pattern at its stars
//! and finds the pieces left to right, so it runs in time linear in the text for each piece
//! (no regex, no exponential backtracking) and never allocates.
//!
//! A variable inserts a claim's value as *literal* text. Values that could change what the
//! pattern means — `*`, `?`, `/`, `\`, control characters, `.`, `..`, the empty string — are
//! refused: an allow rule then does not match (it cannot grant anything), while a deny rule
//! treats the variable as `*` (it denies more, never less). Either way a crafted claim can
//! only lose access.

use serde_json::{Map, Value};

use crate::model::claim_at;

/// A compiled `*` glob.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    /// The pattern as written; kept for explanations.
    pattern: Box<str>,
    /// A fast path chosen at compile time for the common shapes.
    shape: Shape,
}

/// Common glob shapes that need no general matching.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// No star: the text must equal the pattern.
    Exact,
    /// `*` alone: anything.
    Any,
    /// `prefix*` with no other star.
    Prefix,
    /// Anything else.
    General,
}

impl Glob {
    /// Compiles a glob. Every string is a valid glob.
    pub(crate) fn new(pattern: &str) -> Glob {
        let stars = pattern.matches('*').count();
        let shape = match stars {
            0 => Shape::Exact,
            _ if pattern == "*" => Shape::Any,
            1 if pattern.ends_with('*') => Shape::Prefix,
            _ => Shape::General,
        };
        Glob {
            pattern: pattern.into(),
            shape,
        }
    }

    /// Does the whole of `text` match?
    pub(crate) fn matches(&self, text: &str) -> bool {
        match self.shape {
            Shape::Exact => *self.pattern == *text,
            Shape::Any => true,
            Shape::Prefix => text.starts_with(&self.pattern[..self.pattern.len() - 1]),
            Shape::General => glob_match(&self.pattern, text),
        }
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.pattern
    }
}

/// Matches `text` against a `*` glob without compiling it.
///
/// The pattern is `first*middle…*last`: the text must start with `first` and end with `last`
/// (without the two overlapping), and each middle piece is found leftmost, in order, in what
/// lies between. Taking the leftmost occurrence is always safe with `*` as the only wildcard,
/// so there is no backtracking.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let (middle, last) = rest.rsplit_once('*').unwrap_or(("", rest));
    let Some(text) = text.strip_prefix(first) else {
        return false;
    };
    let Some(mut between) = text.strip_suffix(last) else {
        return false;
    };
    for piece in middle.split('*').filter(|p| !p.is_empty()) {
        match between.find(piece) {
            Some(at) => between = &between[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A resource pattern: a plain glob, or a glob with `${claim}` variables.
#[derive(Debug, Clone)]
pub(crate) enum Pattern {
    /// No variables: compiled once.
    Fixed(Glob),
    /// Variables: resolved per identity.
    Template(Template),
}

/// A glob with variables, split into literal text (which may hold stars) and variables.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The pattern as written; kept for explanations.
    source: Box<str>,
    /// The literal text before the first star or variable: rejects most resources before
    /// anything is resolved or allocated.
    prefix: Box<str>,
    /// The pieces in order.
    parts: Vec<Part>,
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Glob text (stars keep their meaning).
    Text(Box<str>),
    /// `${claim}`: the claim's value, as literal text.
    Var(Box<str>),
}

/// Why a `${...}` in a pattern is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarSyntaxError(pub(crate) String);

/// Why a variable could not be used for one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnusableVar<'a> {
    /// The claim path inside `${...}`.
    pub(crate) claim: &'a str,
    /// Human-readable reason.
    pub(crate) reason: &'static str,
}

/// What happens to a rule whose variable cannot be used safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnUnusable {
    /// Allow rules: the pattern matches nothing.
    MatchNothing,
    /// Deny rules: the variable matches like `*`.
    Widen,
}

/// The outcome of matching a resource pattern, with the detail explanations show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PatternMatch<'a> {
    /// Whether the resource matched.
    pub(crate) matched: bool,
    /// A variable that could not be used for this identity, if any.
    pub(crate) unusable: Option<UnusableVar<'a>>,
}

impl Pattern {
    /// Parses a pattern, compiling it as a plain glob when it has no variables.
    pub(crate) fn parse(source: &str) -> Result<Pattern, VarSyntaxError> {
        let parts = parse_parts(source)?;
        if !parts.iter().any(|p| matches!(p, Part::Var(_))) {
            return Ok(Pattern::Fixed(Glob::new(source)));
        }
        let prefix = match parts.first() {
            Some(Part::Text(t)) => t.split('*').next().unwrap_or_default(),
            _ => "",
        };
        Ok(Pattern::Template(Template {
            source: source.into(),
            prefix: prefix.into(),
            parts,
        }))
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Pattern::Fixed(glob) => glob.as_str(),
            Pattern::Template(t) => &t.source,
        }
    }

    /// Does `text` match for the identity holding `claims`?
    pub(crate) fn matches(&self, text: &str, claims: &Map<String, Value>, on: OnUnusable) -> bool {
        self.check(text, claims, on).matched
    }

    /// Like [`Pattern::matches`], also reporting a variable that could not be used.
    pub(crate) fn check<'p>(
        &'p self,
        text: &str,
        claims: &Map<String, Value>,
        on: OnUnusable,
    ) -> PatternMatch<'p> {
        match self {
            Pattern::Fixed(glob) => PatternMatch {
                matched: glob.matches(text),
                unusable: None,
            },
            Pattern::Template(t) => t.check(text, claims, on),
        }
    }
}

impl Template {
    fn check<'p>(&'p self, text: &str, claims: &Map<String, Value>, on: OnUnusable) -> PatternMatch<'p> {
        if !text.starts_with(&*self.prefix) {
            return PatternMatch {
                matched: false,
                unusable: None,
            };
        }
        match self.resolve(claims) {
            Ok(pattern) => PatternMatch {
                matched: glob_match(&pattern, text),
                unusable: None,
            },
            Err(unusable) => PatternMatch {
                matched: on == OnUnusable::Widen && glob_match(&self.widened(claims), text),
                unusable: Some(unusable),
            },
        }
    }

    /// The pattern with every variable replaced by its value, or the first variable whose
    /// value cannot be used.
    fn resolve<'p>(&'p self, claims: &Map<String, Value>) -> Result<String, UnusableVar<'p>> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(claim) => match usable_value(claim_at(claims, claim)) {
                    Ok(value) => out.push_str(value),
                    Err(reason) => return Err(UnusableVar { claim, reason }),
                },
            }
        }
        Ok(out)
    }

    /// The pattern with usable variables replaced by their values and unusable ones by `*`.
    fn widened(&self, claims: &Map<String, Value>) -> String {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(claim) => out.push_str(usable_value(claim_at(claims, claim)).unwrap_or("*")),
            }
        }
        out
    }
}

/// A claim value that can be inserted into a pattern without changing its meaning.
fn usable_value(value: Option<&Value>) -> Result<&str, &'static str> {
    let value = match value {
        None => return Err("the claim is missing"),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("the claim is not a string"),
    };
    if value.is_empty() {
        return Err("the claim is empty");
    }
    if value == "." || value == ".." {
        return Err("the claim is a path step (. or ..)");
    }
    if value
        .chars()
        .any(|c| matches!(c, '*' | '?' | '/' | '\\') || c.is_control())
    {
        return Err("the claim holds glob or path characters");
    }
    Ok(value)
}

/// Splits a pattern into text and `${claim}` variables.
fn parse_parts(source: &str) -> Result<Vec<Part>, VarSyntaxError> {
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(open) = rest.find("${") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].into()));
        }
        let after = &rest[open + 2..];
        let Some(close) = after.find('}') else {
            return Err(VarSyntaxError(format!(
                "unclosed `${{` in `{source}`: write `${{claim}}`"
            )));
        };
        let name = &after[..close];
        check_var_name(name)?;
        parts.push(Part::Var(name.into()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.into()));
    }
    Ok(parts)
}

/// A variable names a claim by dotted path; IAM's own variables do not exist here.
fn check_var_name(name: &str) -> Result<(), VarSyntaxError> {
    if name.is_empty() {
        return Err(VarSyntaxError(
            "empty variable `${}`: name a claim, e.g. `${sub}`".into(),
        ));
    }
    if name.starts_with("aws:") {
        return Err(VarSyntaxError(format!(
            "unknown variable `${{{name}}}`: IAM variables are not available; name a token claim, e.g. `${{sub}}`"
        )));
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/');
    if let Some(bad) = name.chars().find(|&c| !valid(c)) {
        return Err(VarSyntaxError(format!(
            "invalid variable `${{{name}}}`: `{bad}` cannot appear in a claim name"
        )));
    }
    Ok(())
}

/// Whether a string uses `${` at all (for places where variables are not supported).
pub(crate) fn has_var(s: &str) -> bool {
    s.contains("${")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("claims must be an object"),
        }
    }

    #[test]
    fn glob_basics() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "ABC", false),
            ("*", "", true),
            ("*", "any/thing", true),
            ("a*", "a", true),
            ("a*", "ab/c", true),
            ("a*", "ba", false),
            ("*c", "abc", true),
            ("*c", "cb", false),
            ("a*c", "ac", true),
            ("a*c", "abbbc", true),
            ("a*c", "abcd", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("a**c", "ac", true),
            ("aa*aa", "aaa", false),
            ("aa*aa", "aaaa", true),
            ("s3://b/p/*", "s3://b/p/", true),
            ("s3://b/p/*", "s3://b/p", false),
            ("s3://b/*/x", "s3://b/a/b/x", true),
            ("*a*", "bab", true),
            ("*a*", "bbb", false),
            ("é*ü", "éxü", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(glob_match(pattern, text), want, "{pattern} vs {text}");
            assert_eq!(
                Glob::new(pattern).matches(text),
                want,
                "compiled {pattern} vs {text}"
            );
        }
    }

    #[test]
    fn glob_is_not_exponential() {
        let pattern = "a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let text = "a".repeat(20_000);
        assert!(!glob_match(pattern, &text));
    }

    #[test]
    fn glob_other_characters_are_literal() {
        assert!(!glob_match("a?c", "abc"));
        assert!(glob_match("a?c", "a?c"));
        assert!(!glob_match("[ab]", "a"));
        assert!(!glob_match("a.c", "abc"));
    }

    #[test]
    fn parses_variables() {
        let parts = parse_parts("s3://c/${sub}/x-${org.team}*").expect("valid");
        assert_eq!(
            parts,
            vec![
                Part::Text("s3://c/".into()),
                Part::Var("sub".into()),
                Part::Text("/x-".into()),
                Part::Var("org.team".into()),
                Part::Text("*".into()),
            ]
        );
        assert!(parse_parts("s3://c/${https://ex.com/tenant}/*").is_ok());
        assert!(
            parse_parts("s3://c/$sub/}{/*").is_ok(),
            "lone $ and braces are literal"
        );
    }

    #[test]
    fn rejects_bad_variables() {
        for bad in [
            "s3://c/${sub",
            "s3://c/${}/x",
            "s3://c/${aws:username}/x",
            "s3://c/${a b}/x",
            "s3://c/${a${b}}",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    fn allows(pattern: &str, text: &str, c: &Map<String, Value>) -> bool {
        Pattern::parse(pattern)
            .expect("valid")
            .matches(text, c, OnUnusable::MatchNothing)
    }

    fn denies(pattern: &str, text: &str, c: &Map<String, Value>) -> bool {
        Pattern::parse(pattern)
            .expect("valid")
            .matches(text, c, OnUnusable::Widen)
    }

    #[test]
    fn variables_insert_literal_values() {
        let c = claims(json!({"sub": "alice", "org": {"team": "vision"}}));
        assert!(allows(
            "s3://checkpoints/${sub}/*",
            "s3://checkpoints/alice/run1",
            &c
        ));
        assert!(!allows(
            "s3://checkpoints/${sub}/*",
            "s3://checkpoints/bob/run1",
            &c
        ));
        assert!(!allows("s3://checkpoints/${sub}/*", "s3://checkpoints/alice", &c));
        assert!(allows("s3://${org.team}-data/*", "s3://vision-data/x", &c));
        assert!(!allows("s3://${org.team}-data/*", "s3://audio-data/x", &c));
    }

    #[test]
    fn hostile_values_never_widen_an_allow() {
        let pattern = "s3://checkpoints/${sub}/*";
        let target = "s3://checkpoints/bob/x";
        for sub in [
            json!("*"),
            json!("alice/../bob"),
            json!(".."),
            json!("."),
            json!(""),
            json!("b*"),
            json!("bob/"),
            json!("?"),
            json!("a\\b"),
            json!("a\nb"),
            json!(["bob"]),
            json!(7),
            json!(null),
        ] {
            let c = claims(json!({ "sub": sub }));
            assert!(!allows(pattern, target, &c), "sub={sub} must not reach bob");
        }
        assert!(!allows(pattern, target, &Map::new()), "missing sub");
        // A refused value also does not match its own literal text.
        let c = claims(json!({"sub": "*"}));
        assert!(!allows(pattern, "s3://checkpoints/*/x", &c));
    }

    #[test]
    fn hostile_values_widen_a_deny() {
        let pattern = "s3://home/${sub}/secret/*";
        let c = claims(json!({"sub": "*"}));
        assert!(denies(pattern, "s3://home/bob/secret/k", &c));
        assert!(denies(pattern, "s3://home/bob/secret/k", &Map::new()));
        assert!(
            !denies(pattern, "s3://other/bob/secret/k", &Map::new()),
            "literal prefix still applies"
        );
        let c = claims(json!({"sub": "alice"}));
        assert!(denies(pattern, "s3://home/alice/secret/k", &c));
        assert!(!denies(pattern, "s3://home/bob/secret/k", &c));
    }

    #[test]
    fn check_reports_the_unusable_variable() {
        let p = Pattern::parse("s3://c/${sub}/*").expect("valid");
        let c = claims(json!({"sub": "../x"}));
        let m = p.check("s3://c/x/y", &c, OnUnusable::MatchNothing);
        assert!(!m.matched);
        assert_eq!(m.unusable.map(|u| u.claim), Some("sub"));
    }

    #[test]
    fn fixed_patterns_need_no_claims() {
        let p = Pattern::parse("s3://datasets/imagenet/*").expect("valid");
        assert!(matches!(p, Pattern::Fixed(_)));
        assert!(p.matches(
            "s3://datasets/imagenet/a.jpg",
            &Map::new(),
            OnUnusable::MatchNothing
        ));
        assert_eq!(p.as_str(), "s3://datasets/imagenet/*");
    }
}
