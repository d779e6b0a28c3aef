//! Role policies: load, compile, evaluate, explain.
//!
//! The authorize stage of the pipeline. A [`PolicySet`] is compiled once from every `*.toml`
//! in the policies directory (see the README, "Role policies", and docs/reference/policies.md) and then shared read-only
//! (`Arc<PolicySet>`) by every request.
//!
//! | file        | what it holds                                                        |
//! |-------------|----------------------------------------------------------------------|
//! | `load.rs`   | the serde file format and its compilation, collecting every problem  |
//! | `member.rs` | member entries: who holds a role                                     |
//! | `glob.rs`   | `*` globs and resource patterns with `${claim}` variables            |
//! | `eval.rs`   | decisions and the explanation `claimgate check` prints               |
//!
//! # How a decision is made
//!
//! 1. **Roles held.** A role is held when any entry of its `members` matches the identity.
//!    An STS session holds only the role it assumed (and only while still a member of it).
//! 2. **Per access.** A request needs every one of its [`Access`]es. For each, a matching
//!    `deny` rule of any held role denies it, whatever any role allows; otherwise a matching
//!    `allow` rule allows it; otherwise it is denied by default.
//! 3. **Shadow roles** (`mode = "shadow"`) are held but never enforced: the enforced decision
//!    ignores them, and [`Decision::shadow`] reports what the decision *would* be with them
//!    counted, so the audit can record `would_allow` / `would_deny` before a role is switched on.
//!
//! Authorization yields a [`Permit`], which only this module can construct: code that signs and
//! forwards a request asks for one, so it cannot be handed an unauthorized request.
//!
//! # Claim variables
//!
//! `${claim}` in a resource inserts the claim's value as literal text. A value that could
//! change the pattern's meaning (missing, not a string, empty, `.` or `..`, or holding `*`, `?`,
//! `/`, `\` or a control character) is never inserted: an **allow** rule then does not match
//! for that identity (as IAM ignores a statement whose variable is missing), and a **deny** rule
//! treats the variable as `*`, so it denies more rather than less. A crafted claim can only
//! lose access, never gain it.
//!
//! # Member entries
//!
//! `equals` compares the whole claim; a number or boolean claim compares by its JSON text
//! (`equals = "true"` matches `true`). `contains` accepts an array with an element that
//! `equals` the value, or a claim that `equals` it itself — never a substring. `glob` matches a
//! string claim, or any string element of an array claim. `issuer`, when given, must equal
//! the identity's issuer exactly.
//!
//! # Modes
//!
//! A role's own `mode` wins over the file's top-level `mode`; the default is `"enforce"`.

mod eval;
mod glob;
mod load;
mod member;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

pub use eval::{AccessExplanation, Explanation, RoleExplanation, RuleCheck, Verdict};

use crate::model::{Access, Operation};
use glob::{Glob, OnUnusable, Pattern};
use member::Member;

/// Compiled role policies: immutable, `Send + Sync`, cheap to share in an `Arc`.
#[derive(Debug)]
pub struct PolicySet {
    /// Every role, in file order (files sorted by name, roles in the order written).
    roles: Vec<Role>,
    /// Role name → index in `roles`, for STS sessions and [`PolicySet::holds`].
    by_name: HashMap<Arc<str>, usize>,
    /// The whole proxy in shadow mode (`[policies] mode = "shadow"`): nothing is enforced,
    /// every decision is computed with all roles and audited as `would_allow`/`would_deny`.
    shadow_all: bool,
}

/// Whether a role's decisions are enforced or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The role's rules decide requests.
    #[default]
    Enforce,
    /// The role's rules are evaluated and audited (`would_allow` / `would_deny`) but decide
    /// nothing: a safe way to roll a new role out.
    Shadow,
}

impl Mode {
    /// The name used in policy files, audit records and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// A role the identity holds, as returned by [`PolicySet::roles_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleRef<'a> {
    /// The role's name.
    pub name: &'a str,
    /// The file that defines it.
    pub file: &'a Path,
    /// Enforced or shadow.
    pub mode: Mode,
    /// 0-based index of the first `members` entry that matched.
    pub member: usize,
}

/// Allow or deny: which list of a role a rule is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// An entry of the role's `allow` list.
    Allow,
    /// An entry of the role's `deny` list.
    Deny,
}

impl RuleKind {
    /// The list's name in a policy file.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
        }
    }

    /// How an unusable `${claim}` behaves in this kind of rule (see the module docs).
    fn on_unusable(self) -> OnUnusable {
        match self {
            RuleKind::Allow => OnUnusable::MatchNothing,
            RuleKind::Deny => OnUnusable::Widen,
        }
    }
}

/// Points at one rule of one role, for audit records and messages.
///
/// Displays as `policies/ml.toml: role trainer deny[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// The file that defines the role. Shared, so a reference costs no allocation.
    pub file: Arc<Path>,
    /// The role's name.
    pub role: Arc<str>,
    /// Which of the role's lists the rule is in.
    pub kind: RuleKind,
    /// 0-based position in that list.
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: role {} {}[{}]",
            self.file.display(),
            self.role,
            self.kind.as_str(),
            self.index
        )
    }
}

/// Proof that one [`Operation`] was authorized, and the operation itself.
///
/// Only [`PolicySet::decide`] constructs one (the fields are private and there is no
/// `Clone`), and the signer takes the operation it addresses from the permit, so nothing
/// is signed that was not authorized, and only as it was authorized.
#[derive(Debug)]
pub struct Permit {
    operation: Operation,
    /// The allow rule that granted each access, in the order of the request's accesses
    /// (empty when the basis is [`Basis::ShadowMode`]).
    rules: Vec<RuleRef>,
    basis: Basis,
}

/// On what grounds a [`Permit`] was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The identity's enforced roles allow every access.
    Enforced,
    /// The whole proxy is in shadow mode: nothing is enforced, and the decision the policies
    /// would have made is only audited.
    ShadowMode,
}

impl Permit {
    /// The operation that was authorized.
    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// The allow rule that granted each access, in the order of the request's accesses.
    pub fn rules(&self) -> &[RuleRef] {
        &self.rules
    }

    /// Why the request may go ahead.
    pub fn basis(&self) -> Basis {
        self.basis
    }
}

/// How much a denial tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialDetail {
    /// The action, resource, roles and deciding rule.
    Verbose,
    /// `Access Denied`, as S3 says it.
    Terse,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Names of the roles that took part in the decision (for an enforced denial, the
    /// enforced roles held; for a shadow one, enforced and shadow roles).
    pub roles: Vec<String>,
    /// The first access of the request that was not allowed (boxed: denials are the cold
    /// path, and keep the decision small).
    pub access: Box<Access>,
    /// `Some`: the deny rule that matched. `None`: no allow rule matched (default deny).
    pub rule: Option<RuleRef>,
}

impl Denial {
    /// The message for the caller: terse (`Access Denied`, as S3 says it) or verbose, naming
    /// the action, resource, roles and rule, so an ML engineer can fix the request or ask for
    /// the right role. Verbose is the default; `server.verbose_denials = false` makes it
    /// terse for deployments that do not want callers to learn about the policy.
    pub fn message(&self, detail: DenialDetail) -> String {
        if detail == DenialDetail::Terse {
            return "Access Denied".to_string();
        }
        let Access { action, resource } = &*self.access;
        match &self.rule {
            Some(rule) => format!(
                "Access denied: {action} on {resource} is denied by role {} {}[{}] in {}",
                rule.role,
                rule.kind.as_str(),
                rule.index,
                rule.file.display()
            ),
            None if self.roles.is_empty() => {
                format!("Access denied: {action} on {resource} is not allowed: the identity holds no role")
            }
            None => format!(
                "Access denied: {action} on {resource} is not allowed for roles [{}] (no rule allows it)",
                self.roles.join(", ")
            ),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message(DenialDetail::Verbose))
    }
}

/// What enforcement would decide if the identity's shadow roles were enforced too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShadowOutcome {
    /// Every access would be allowed, by these rules (one per access).
    WouldAllow {
        /// The allow rule that would grant each access.
        rules: Vec<RuleRef>,
    },
    /// The request would be refused.
    WouldDeny(Denial),
}

impl ShadowOutcome {
    /// `would_allow` / `would_deny`: the stable names audit records use.
    pub fn as_str(&self) -> &'static str {
        match self {
            ShadowOutcome::WouldAllow { .. } => "would_allow",
            ShadowOutcome::WouldDeny(_) => "would_deny",
        }
    }
}

/// The result of [`PolicySet::decide`].
#[derive(Debug)]
pub struct Decision {
    /// What enforcement decides; only enforced roles count. `?` turns a denial into the
    /// caller's error path.
    pub outcome: Result<Permit, Denial>,
    /// `Some` when the identity holds any shadow role: the decision with enforced and shadow
    /// roles counted together, for the audit record.
    pub shadow: Option<ShadowOutcome>,
    /// Every role the identity holds (enforced and shadow), in file order — what
    /// [`PolicySet::roles_for`] would return, kept here so the audit record need not
    /// evaluate membership a second time.
    pub roles: Vec<Arc<str>>,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// A compiled role.
#[derive(Debug)]
struct Role {
    name: Arc<str>,
    /// Shown by `claimgate check`.
    description: Option<Box<str>>,
    /// Shared by every role of the file and every [`RuleRef`] to it.
    file: Arc<Path>,
    mode: Mode,
    /// Any one entry matching is enough.
    members: Vec<Member>,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
}

impl Role {
    /// The first member entry the identity matches, if any.
    fn member_index(
        &self,
        issuer: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<usize> {
        self.members.iter().position(|m| m.matches(issuer, claims))
    }

    fn rule_ref(&self, kind: RuleKind, index: usize) -> RuleRef {
        RuleRef {
            file: Arc::clone(&self.file),
            role: Arc::clone(&self.name),
            kind,
            index,
        }
    }

    fn rules(&self, kind: RuleKind) -> &[Rule] {
        match kind {
            RuleKind::Allow => &self.allow,
            RuleKind::Deny => &self.deny,
        }
    }
}

/// One `{ actions = [...], resources = [...] }` entry: matches an access when any action
/// and any resource match.
#[derive(Debug)]
struct Rule {
    actions: Vec<Glob>,
    resources: Vec<Pattern>,
}

impl Rule {
    /// Action first: it is cheap and never needs the claims.
    fn matches(
        &self,
        access: &Access,
        claims: &serde_json::Map<String, serde_json::Value>,
        kind: RuleKind,
    ) -> bool {
        self.action_matches(&access.action)
            && self
                .resources
                .iter()
                .any(|r| r.matches(access.resource.as_str(), claims, kind.on_unusable()))
    }

    fn action_matches(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a.matches(action))
    }
}

/// Renders the rule as written, for explanations.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<&str> = self.actions.iter().map(Glob::as_str).collect();
        let resources: Vec<&str> = self.resources.iter().map(Pattern::as_str).collect();
        write!(f, "{{ actions = {actions:?}, resources = {resources:?} }}")
    }
}

impl PolicySet {
    fn new(roles: Vec<Role>) -> PolicySet {
        let by_name = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (Arc::clone(&r.name), i))
            .collect();
        PolicySet {
            roles,
            by_name,
            shadow_all: false,
        }
    }

    /// Puts the whole proxy in shadow mode (or back): with [`Mode::Shadow`] nothing is
    /// enforced and every decision is only audited as `would_allow` / `would_deny` — for
    /// switching claimgate in front of running jobs before enforcing anything.
    pub fn with_global_mode(mut self, mode: Mode) -> PolicySet {
        self.shadow_all = mode == Mode::Shadow;
        self
    }

    /// Whether the whole proxy is in shadow mode.
    pub fn is_global_shadow(&self) -> bool {
        self.shadow_all
    }

    /// How many roles the set defines.
    pub fn role_count(&self) -> usize {
        self.roles.len()
    }

    /// Every role name, in file order (for `claimgate validate` and STS error messages).
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| &*r.name)
    }

    /// Whether a role of that name exists.
    pub fn has_role(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleKind) -> RuleRef {
        RuleRef {
            file: Arc::from(Path::new("policies/ml.toml")),
            role: "trainer".into(),
            kind,
            index: 0,
        }
    }

    #[test]
    fn rule_ref_display() {
        assert_eq!(
            rule(RuleKind::Deny).to_string(),
            "policies/ml.toml: role trainer deny[0]"
        );
        assert_eq!(
            rule(RuleKind::Allow).to_string(),
            "policies/ml.toml: role trainer allow[0]"
        );
    }

    #[test]
    fn denial_messages() {
        let mut denial = Denial {
            roles: vec!["trainer".into()],
            access: Box::new(Access::new(
                "s3:PutObject",
                crate::model::Resource::parse("s3://datasets/x"),
            )),
            rule: None,
        };
        assert_eq!(denial.message(DenialDetail::Terse), "Access Denied");
        assert_eq!(
            denial.message(DenialDetail::Verbose),
            "Access denied: s3:PutObject on s3://datasets/x is not allowed for roles [trainer] (no rule allows it)"
        );
        denial.rule = Some(rule(RuleKind::Deny));
        assert_eq!(
            denial.message(DenialDetail::Verbose),
            "Access denied: s3:PutObject on s3://datasets/x is denied by role trainer deny[0] in policies/ml.toml"
        );
        assert_eq!(denial.message(DenialDetail::Terse), "Access Denied");
        denial.rule = None;
        denial.roles.clear();
        assert_eq!(
            denial.message(DenialDetail::Verbose),
            "Access denied: s3:PutObject on s3://datasets/x is not allowed: the identity holds no role"
        );
    }

    #[test]
    fn policy_set_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PolicySet>();
        assert_send_sync::<Decision>();
    }
}
