//! Decisions, and the explanation `claimgate check` prints.
//!
//! [`PolicySet::decide`] is the hot path: it matches member entries, then walks deny rules
//! and allow rules of the held roles, stopping at the first that decides. It allocates the
//! list of held roles and the permit's rule list, plus a small string per `${claim}` resource
//! whose literal prefix matches. [`PolicySet::explain`] uses the same [`judge`] for its verdicts
//! and additionally evaluates every rule, so what `check` prints is what `serve` does.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{
    Basis, Decision, Denial, Mode, Permit, PolicySet, Role, RoleRef, RuleKind, RuleRef, ShadowOutcome,
};
use crate::model::{Access, Identity, Operation};

/// A role the identity holds, with the member entry that matched.
#[derive(Clone, Copy)]
struct Held<'a> {
    role: &'a Role,
    member: usize,
}

/// What decided one access.
enum Judgement<'a> {
    Allowed(&'a Role, usize),
    Denied(&'a Role, usize),
    NoRule,
}

impl Judgement<'_> {
    fn verdict(&self) -> Verdict {
        match self {
            Judgement::Allowed(role, i) => Verdict::Allow(role.rule_ref(RuleKind::Allow, *i)),
            Judgement::Denied(role, i) => Verdict::Deny(role.rule_ref(RuleKind::Deny, *i)),
            Judgement::NoRule => Verdict::DefaultDeny,
        }
    }
}

/// Which held roles take part: enforcement counts only enforced roles; the shadow
/// computation counts them all.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    Enforced,
    All,
}

impl Counted {
    fn includes(self, role: &Role) -> bool {
        self == Counted::All || role.mode == Mode::Enforce
    }
}

/// Deny beats allow, across roles: every deny rule of every counted role is tried before
/// any allow rule.
fn judge<'a>(
    held: &[Held<'a>],
    counted: Counted,
    access: &Access,
    claims: &Map<String, Value>,
) -> Judgement<'a> {
    let roles = || held.iter().map(|h| h.role).filter(|r| counted.includes(r));
    for role in roles() {
        if let Some(i) = role
            .deny
            .iter()
            .position(|r| r.matches(access, claims, RuleKind::Deny))
        {
            return Judgement::Denied(role, i);
        }
    }
    for role in roles() {
        if let Some(i) = role
            .allow
            .iter()
            .position(|r| r.matches(access, claims, RuleKind::Allow))
        {
            return Judgement::Allowed(role, i);
        }
    }
    Judgement::NoRule
}

impl PolicySet {
    /// The roles held, in file order, with the member entry that matched.
    fn held(&self, id: &Identity) -> Vec<Held<'_>> {
        let candidates: &[Role] = match id.session_role() {
            Some(name) => match self.by_name.get(name) {
                Some(&i) => std::slice::from_ref(&self.roles[i]),
                None => &[],
            },
            None => &self.roles,
        };
        candidates
            .iter()
            .filter_map(|role| {
                let member = role.member_index(&id.issuer, &id.claims)?;
                Some(Held { role, member })
            })
            .collect()
    }

    /// Roles the identity holds (enforced and shadow), in file order. An STS session
    /// (`AuthMethod::Session { role: r, .. }`) holds only `r`, and only while the identity is
    /// still a member of it.
    pub fn roles_for(&self, id: &Identity) -> Vec<RoleRef<'_>> {
        self.held(id)
            .into_iter()
            .map(|h| RoleRef {
                name: &h.role.name,
                file: &h.role.file,
                mode: h.role.mode,
                member: h.member,
            })
            .collect()
    }

    /// Does the identity hold `role`? Follows [`PolicySet::roles_for`]: an STS session holds
    /// only the role it assumed, so a session cannot be used to assume a different role.
    pub fn holds(&self, id: &Identity, role: &str) -> bool {
        if id.session_role().is_some_and(|r| r != role) {
            return false;
        }
        self.by_name
            .get(role)
            .is_some_and(|&i| self.roles[i].member_index(&id.issuer, &id.claims).is_some())
    }

    /// The decision for `operation`, which needs every one of its accesses. An allowed
    /// operation comes back inside its [`Permit`].
    pub fn decide(&self, id: &Identity, operation: Operation) -> Decision {
        let held = self.held(id);
        let roles = held.iter().map(|h| Arc::clone(&h.role.name)).collect();
        if self.shadow_all {
            let shadow = match decide_all(&held, Counted::All, operation.accesses(), &id.claims) {
                Ok(rules) => ShadowOutcome::WouldAllow { rules },
                Err(denial) => ShadowOutcome::WouldDeny(denial),
            };
            return Decision {
                outcome: Ok(Permit {
                    operation,
                    rules: Vec::new(),
                    basis: Basis::ShadowMode,
                }),
                shadow: Some(shadow),
                roles,
            };
        }
        let shadow = held.iter().any(|h| h.role.mode == Mode::Shadow).then(|| {
            match decide_all(&held, Counted::All, operation.accesses(), &id.claims) {
                Ok(rules) => ShadowOutcome::WouldAllow { rules },
                Err(denial) => ShadowOutcome::WouldDeny(denial),
            }
        });
        let outcome =
            decide_all(&held, Counted::Enforced, operation.accesses(), &id.claims).map(|rules| Permit {
                operation,
                rules,
                basis: Basis::Enforced,
            });
        Decision {
            outcome,
            shadow,
            roles,
        }
    }

    /// Everything `claimgate check` prints: every role and whether (and through which member
    /// entry) the identity holds it; for each access, every rule of the held roles with
    /// whether it matched; and which rule decided. Its `Display` is the human-readable report.
    pub fn explain(&self, id: &Identity, accesses: &[Access]) -> Explanation {
        let held = self.held(id);
        let any_shadow = held.iter().any(|h| h.role.mode == Mode::Shadow);
        let roles = self
            .roles
            .iter()
            .map(|role| explain_role(role, &held, id))
            .collect();
        let accesses: Vec<AccessExplanation> = accesses
            .iter()
            .map(|access| AccessExplanation {
                access: access.clone(),
                rules: rule_checks(&held, access, &id.claims),
                verdict: judge(&held, Counted::Enforced, access, &id.claims).verdict(),
                shadow_verdict: any_shadow.then(|| judge(&held, Counted::All, access, &id.claims).verdict()),
            })
            .collect();
        let allowed = !accesses.is_empty() && accesses.iter().all(|a| a.verdict.is_allow());
        let would_allow = any_shadow.then(|| {
            !accesses.is_empty()
                && accesses
                    .iter()
                    .all(|a| a.shadow_verdict.as_ref().is_some_and(Verdict::is_allow))
        });
        Explanation {
            issuer: id.issuer.clone(),
            subject: id.subject.clone(),
            session_role: id.session_role().map(str::to_string),
            roles,
            accesses,
            allowed,
            would_allow,
        }
    }
}

/// Allowed: the allow rule for each access. Denied: the first access not allowed.
fn decide_all<'a>(
    held: &[Held<'_>],
    counted: Counted,
    accesses: impl Iterator<Item = &'a Access>,
    claims: &Map<String, Value>,
) -> Result<Vec<RuleRef>, Denial> {
    let denial = |access: &Access, rule| Denial {
        roles: held
            .iter()
            .filter(|h| counted.includes(h.role))
            .map(|h| h.role.name.to_string())
            .collect(),
        access: Box::new(access.clone()),
        rule,
    };
    let mut rules = Vec::with_capacity(accesses.size_hint().0);
    for access in accesses {
        match judge(held, counted, access, claims) {
            Judgement::Allowed(role, i) => rules.push(role.rule_ref(RuleKind::Allow, i)),
            Judgement::Denied(role, i) => {
                return Err(denial(access, Some(role.rule_ref(RuleKind::Deny, i))));
            }
            Judgement::NoRule => return Err(denial(access, None)),
        }
    }
    Ok(rules)
}

fn explain_role(role: &Role, held: &[Held<'_>], id: &Identity) -> RoleExplanation {
    let held_member = held.iter().find(|h| std::ptr::eq(h.role, role)).map(|h| h.member);
    let member = held_member.or_else(|| role.member_index(&id.issuer, &id.claims));
    RoleExplanation {
        name: role.name.to_string(),
        description: role.description.as_deref().map(str::to_string),
        file: role.file.to_path_buf(),
        mode: role.mode,
        held: held_member.is_some(),
        member: member.map(|i| (i, role.members[i].to_string())),
    }
}

/// Every rule of the held roles, in evaluation order (all denies, then all allows).
fn rule_checks(held: &[Held<'_>], access: &Access, claims: &Map<String, Value>) -> Vec<RuleCheck> {
    let mut checks = Vec::new();
    for kind in [RuleKind::Deny, RuleKind::Allow] {
        for h in held {
            let count = h.role.rules(kind).len();
            checks.extend((0..count).map(|i| rule_check(h.role, kind, i, access, claims)));
        }
    }
    checks
}

/// One rule against one access, with a note when a `${claim}` could not be used.
fn rule_check(
    role: &Role,
    kind: RuleKind,
    index: usize,
    access: &Access,
    claims: &Map<String, Value>,
) -> RuleCheck {
    let rule = &role.rules(kind)[index];
    let action_matched = rule.action_matches(&access.action);
    let mut resource_matched = false;
    let mut note = None;
    for pattern in &rule.resources {
        let checked = pattern.check(access.resource.as_str(), claims, kind.on_unusable());
        resource_matched |= checked.matched;
        if let (None, Some(var)) = (&note, checked.unusable) {
            let effect = match kind {
                RuleKind::Allow => "so this resource matches nothing",
                RuleKind::Deny => "so it matches like `*`",
            };
            note = Some(format!(
                "`${{{}}}` not usable: {}, {effect}",
                var.claim, var.reason
            ));
        }
    }
    RuleCheck {
        rule: role.rule_ref(kind, index),
        mode: role.mode,
        text: rule.to_string(),
        action_matched,
        resource_matched,
        matched: action_matched && resource_matched,
        note,
    }
}

/// The report of [`PolicySet::explain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The identity's issuer.
    pub issuer: String,
    /// The identity's subject.
    pub subject: String,
    /// The role an STS session assumed, if the identity is one.
    pub session_role: Option<String>,
    /// Every role of the set, in file order, held or not.
    pub roles: Vec<RoleExplanation>,
    /// One entry per access the request needs.
    pub accesses: Vec<AccessExplanation>,
    /// The enforced decision: every access allowed.
    pub allowed: bool,
    /// `Some` when the identity holds a shadow role: the decision with shadow roles counted.
    pub would_allow: Option<bool>,
}

/// One role, as `claimgate check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleExplanation {
    /// The role's name.
    pub name: String,
    /// Its description, if the file gives one.
    pub description: Option<String>,
    /// The file defining it.
    pub file: PathBuf,
    /// Enforced or shadow.
    pub mode: Mode,
    /// Whether the identity holds it.
    pub held: bool,
    /// The first member entry the identity matches (index and text). Can be `Some` for a role
    /// not held: an STS session holds only the role it assumed.
    pub member: Option<(usize, String)>,
}

/// One access and every rule considered for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessExplanation {
    /// The access.
    pub access: Access,
    /// Every rule of every held role, deny rules first (the order they are evaluated in).
    pub rules: Vec<RuleCheck>,
    /// What enforcement decided for this access.
    pub verdict: Verdict,
    /// With shadow roles counted; `Some` when the identity holds a shadow role.
    pub shadow_verdict: Option<Verdict>,
}

/// One rule checked against one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCheck {
    /// Which rule.
    pub rule: RuleRef,
    /// The mode of its role (shadow rules never decide enforcement).
    pub mode: Mode,
    /// The rule as written.
    pub text: String,
    /// Whether an action of the rule matched.
    pub action_matched: bool,
    /// Whether a resource of the rule matched.
    pub resource_matched: bool,
    /// Both: the rule applies to the access.
    pub matched: bool,
    /// Why a `${claim}` could not be used, when that affected the rule.
    pub note: Option<String>,
}

/// The outcome for one access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by this rule.
    Allow(RuleRef),
    /// Denied by this deny rule.
    Deny(RuleRef),
    /// No rule allowed it.
    DefaultDeny,
}

impl Verdict {
    /// Whether the access is allowed.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow(rule) => write!(f, "allowed by {rule}"),
            Verdict::Deny(rule) => write!(f, "denied by {rule}"),
            Verdict::DefaultDeny => f.write_str("denied: no rule allows it"),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "identity: {} (issuer {})", self.subject, self.issuer)?;
        if let Some(role) = &self.session_role {
            writeln!(f, "sts session: holds only role {role}")?;
        }
        self.fmt_roles(f)?;
        for access in &self.accesses {
            writeln!(f)?;
            write!(f, "{access}")?;
        }
        writeln!(f)?;
        writeln!(f, "decision: {}", if self.allowed { "ALLOW" } else { "DENY" })?;
        if let Some(would) = self.would_allow {
            writeln!(
                f,
                "shadow:   {}",
                if would { "would_allow" } else { "would_deny" }
            )?;
        }
        Ok(())
    }
}

impl Explanation {
    fn fmt_roles(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held: Vec<&RoleExplanation> = self.roles.iter().filter(|r| r.held).collect();
        if held.is_empty() {
            writeln!(f, "roles held: none")?;
        } else {
            writeln!(f, "roles held:")?;
        }
        for role in held {
            let (index, entry) = role.member.as_ref().map_or((0, ""), |(i, e)| (*i, e.as_str()));
            writeln!(
                f,
                "  {} ({}, {})",
                role.name,
                role.mode.as_str(),
                role.file.display()
            )?;
            if let Some(description) = &role.description {
                writeln!(f, "    {description}")?;
            }
            writeln!(f, "    via members[{index}] {entry}")?;
        }
        let member_only: Vec<&str> = self
            .roles
            .iter()
            .filter(|r| !r.held && r.member.is_some())
            .map(|r| r.name.as_str())
            .collect();
        if !member_only.is_empty() {
            writeln!(
                f,
                "member of, but not held by this session: {}",
                member_only.join(", ")
            )?;
        }
        let others: Vec<&str> = self
            .roles
            .iter()
            .filter(|r| r.member.is_none())
            .map(|r| r.name.as_str())
            .collect();
        if !others.is_empty() {
            writeln!(f, "not held (no member entry matches): {}", others.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Display for AccessExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} on {}", self.access.action, self.access.resource)?;
        if self.rules.is_empty() {
            writeln!(f, "  (no rules: the identity holds no role)")?;
        }
        for check in &self.rules {
            let mark = match (check.action_matched, check.resource_matched) {
                (true, true) => "MATCH        ",
                (false, _) => "no (action)  ",
                (true, false) => "no (resource)",
            };
            let shadow = if check.mode == Mode::Shadow {
                " [shadow]"
            } else {
                ""
            };
            writeln!(f, "  {mark} {}{shadow} {}", check.rule, check.text)?;
            if let Some(note) = &check.note {
                writeln!(f, "                note: {note}")?;
            }
        }
        writeln!(f, "  => {}", self.verdict)?;
        if let Some(shadow) = &self.shadow_verdict {
            writeln!(f, "  => with shadow roles: {shadow}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuthMethod, Resource};
    use serde_json::json;
    use std::path::Path;
    use std::sync::Arc;

    const ISS: &str = "https://login.example.com";
    const EKS: &str = "https://oidc.eks.example.com";

    const ML: &str = r#"
[[roles]]
name = "trainer"
description = "Training jobs of the ML platform team"
members = [
  { claim = "groups", contains = "ml-engineers" },
  { issuer = "https://oidc.eks.example.com", claim = "sub", glob = "system:serviceaccount:training:*" },
  { all = [ { claim = "sub", equals = "alice" }, { claim = "groups", contains = "ml-train" } ] },
]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/*"] },
  { actions = ["s3:PutObject", "s3:AbortMultipartUpload"], resources = ["s3://checkpoints/${sub}/*"] },
  { actions = ["http:POST"], resources = ["http://features/get-online-features"] },
]
deny = [
  { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] },
]

[[roles]]
name = "reader"
members = [{ claim = "realm_access.roles", contains = "reader" }]
allow = [{ actions = ["s3:Get*", "s3:ListBucket"], resources = ["s3://datasets/pii/*", "s3://public/*"] }]
"#;

    const SHADOW: &str = r#"
mode = "shadow"
[[roles]]
name = "pii-lockdown"
members = [{ claim = "groups", contains = "ml-engineers" }]
deny = [{ actions = ["s3:GetObject"], resources = ["s3://datasets/faces/*"] }]

[[roles]]
name = "writer"
members = [{ claim = "groups", contains = "writers" }]
allow = [{ actions = ["s3:PutObject"], resources = ["s3://datasets/*"] }]
"#;

    fn policies() -> PolicySet {
        let files = vec![
            (PathBuf::from("policies/ml.toml"), ML.to_string()),
            (PathBuf::from("policies/shadow.toml"), SHADOW.to_string()),
        ];
        PolicySet::from_sources(&files, &["features".to_string()]).expect("valid policies")
    }

    fn identity(issuer: &str, claims: Value) -> Identity {
        let Value::Object(claims) = claims else {
            panic!("claims must be an object")
        };
        Identity {
            issuer: issuer.to_string(),
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            claims,
            method: AuthMethod::Bearer,
            token_id: "t".to_string(),
        }
    }

    /// An operation needing `accesses`, the first one primary.
    fn op(accesses: &[Access]) -> Operation {
        let (first, rest) = accesses.split_first().expect("an operation needs an access");
        let mut op = Operation::new("test", first.clone());
        for a in rest {
            op.also_needs(a.clone());
        }
        op
    }

    fn session(role: &str) -> AuthMethod {
        AuthMethod::Session {
            role: role.into(),
            access_key_id: "ASIATEST".into(),
        }
    }

    fn engineer() -> Identity {
        identity(ISS, json!({"sub": "alice", "groups": ["ml-engineers"]}))
    }

    fn get(resource: &str) -> Access {
        Access::new("s3:GetObject", Resource::parse(resource))
    }

    fn put(resource: &str) -> Access {
        Access::new("s3:PutObject", Resource::parse(resource))
    }

    fn rule(file: &str, role: &str, kind: RuleKind, index: usize) -> RuleRef {
        RuleRef {
            file: Arc::from(Path::new(file)),
            role: role.into(),
            kind,
            index,
        }
    }

    fn names(set: &PolicySet, id: &Identity) -> Vec<String> {
        set.roles_for(id).iter().map(|r| r.name.to_string()).collect()
    }

    #[test]
    fn roles_held_in_file_order_with_member_entry() {
        let set = policies();
        let id = identity(
            ISS,
            json!({"sub": "a", "groups": ["ml-engineers", "writers"], "realm_access": {"roles": ["reader"]}}),
        );
        let roles = set.roles_for(&id);
        let got: Vec<(&str, Mode, usize)> = roles.iter().map(|r| (r.name, r.mode, r.member)).collect();
        assert_eq!(
            got,
            [
                ("trainer", Mode::Enforce, 0),
                ("reader", Mode::Enforce, 0),
                ("pii-lockdown", Mode::Shadow, 0),
                ("writer", Mode::Shadow, 0)
            ]
        );
        assert_eq!(roles[0].file, Path::new("policies/ml.toml"));
    }

    #[test]
    fn members_by_issuer_glob_and_all() {
        let set = policies();
        let sa = identity(EKS, json!({"sub": "system:serviceaccount:training:job-7"}));
        assert_eq!(set.roles_for(&sa)[0].member, 1);
        let wrong_issuer = identity(ISS, json!({"sub": "system:serviceaccount:training:job-7"}));
        assert!(names(&set, &wrong_issuer).is_empty());
        let alice = identity(ISS, json!({"sub": "alice", "groups": ["ml-train"]}));
        assert_eq!(set.roles_for(&alice)[0].member, 2);
        let bob = identity(ISS, json!({"sub": "bob", "groups": ["ml-train"]}));
        assert!(names(&set, &bob).is_empty());
    }

    #[test]
    fn sessions_hold_only_their_role() {
        let set = policies();
        let mut id = identity(
            ISS,
            json!({"sub": "a", "groups": ["ml-engineers"], "realm_access": {"roles": ["reader"]}}),
        );
        assert!(set.holds(&id, "trainer") && set.holds(&id, "reader"));
        id.method = session("reader");
        assert_eq!(names(&set, &id), ["reader"]);
        assert!(set.holds(&id, "reader"));
        assert!(!set.holds(&id, "trainer"), "a session cannot switch roles");
        assert!(set.decide(&id, op(&[get("s3://public/x")])).is_allowed());
        assert!(
            !set.decide(&id, op(&[get("s3://datasets/x")])).is_allowed(),
            "trainer's allow does not apply"
        );
        id.method = session("writer");
        assert!(names(&set, &id).is_empty(), "not a member of writer");
        id.method = session("nope");
        assert!(names(&set, &id).is_empty());
        assert!(!set.holds(&id, "nope"));
    }

    #[test]
    fn holds_unknown_role_is_false() {
        assert!(!policies().holds(&engineer(), "admin"));
    }

    #[test]
    fn allow_records_the_deciding_rule() {
        let set = policies();
        let decision = set.decide(&engineer(), op(&[get("s3://datasets/imagenet/1.jpg")]));
        let permit = decision.outcome.expect("allowed");
        assert_eq!(
            permit.rules(),
            [rule("policies/ml.toml", "trainer", RuleKind::Allow, 0)]
        );
        assert_eq!(permit.basis(), Basis::Enforced);
        assert_eq!(permit.operation().primary(), &get("s3://datasets/imagenet/1.jpg"));
    }

    #[test]
    fn whole_proxy_shadow_mode_issues_permits_that_say_so() {
        let set = policies().with_global_mode(Mode::Shadow);
        let denied = op(&[put("s3://datasets/x")]);
        let decision = set.decide(&engineer(), denied.clone());
        assert!(matches!(decision.shadow, Some(ShadowOutcome::WouldDeny(_))));
        let permit = decision.outcome.expect("shadow mode lets the request through");
        assert_eq!(permit.basis(), Basis::ShadowMode);
        assert!(permit.rules().is_empty(), "no rule allowed it");
        assert_eq!(permit.operation(), &denied);
    }

    #[test]
    fn deny_beats_allow_even_from_another_role() {
        let set = policies();
        let id = identity(
            ISS,
            json!({"sub": "a", "groups": ["ml-engineers"], "realm_access": {"roles": ["reader"]}}),
        );
        // reader allows s3://datasets/pii/*; trainer denies it.
        let decision = set.decide(&id, op(&[get("s3://datasets/pii/faces.csv")]));
        let denial = decision.outcome.expect_err("denied");
        assert_eq!(
            denial.rule,
            Some(rule("policies/ml.toml", "trainer", RuleKind::Deny, 0))
        );
        assert_eq!(denial.roles, ["trainer", "reader"]);
        assert_eq!(*denial.access, get("s3://datasets/pii/faces.csv"));
        // Without trainer, reader's allow stands.
        let reader = identity(ISS, json!({"sub": "r", "realm_access": {"roles": ["reader"]}}));
        assert!(
            set.decide(&reader, op(&[get("s3://datasets/pii/faces.csv")]))
                .is_allowed()
        );
    }

    #[test]
    fn default_deny() {
        let set = policies();
        let denial = set
            .decide(&engineer(), op(&[put("s3://datasets/x")]))
            .outcome
            .expect_err("denied");
        assert_eq!(denial.rule, None);
        assert_eq!(
            denial.message(crate::policy::DenialDetail::Verbose),
            "Access denied: s3:PutObject on s3://datasets/x is not allowed for roles [trainer] (no rule allows it)"
        );
        let nobody = identity(ISS, json!({"sub": "x"}));
        let denial = set
            .decide(&nobody, op(&[get("s3://public/x")]))
            .outcome
            .expect_err("denied");
        assert!(denial.roles.is_empty());
        assert!(set.decide(&nobody, op(&[get("s3://public/x")])).shadow.is_none());
    }

    #[test]
    fn every_access_must_be_allowed() {
        let set = policies();
        let copy = [
            put("s3://checkpoints/alice/run1"),
            get("s3://datasets/imagenet/1"),
        ];
        let permit = set.decide(&engineer(), op(&copy)).outcome.expect("allowed");
        assert_eq!(
            permit.rules(),
            [
                rule("policies/ml.toml", "trainer", RuleKind::Allow, 1),
                rule("policies/ml.toml", "trainer", RuleKind::Allow, 0)
            ]
        );
        let copy_pii = [
            put("s3://checkpoints/alice/run1"),
            get("s3://datasets/pii/x"),
            get("s3://nope/x"),
        ];
        let denial = set
            .decide(&engineer(), op(&copy_pii))
            .outcome
            .expect_err("denied");
        assert_eq!(
            *denial.access,
            get("s3://datasets/pii/x"),
            "the first access not allowed"
        );
        let copy_elsewhere = [put("s3://checkpoints/bob/run1"), get("s3://datasets/imagenet/1")];
        let denial = set
            .decide(&engineer(), op(&copy_elsewhere))
            .outcome
            .expect_err("denied");
        assert_eq!(*denial.access, put("s3://checkpoints/bob/run1"));
        assert_eq!(denial.rule, None);
    }

    #[test]
    fn empty_request_is_refused() {
        // An `Operation` cannot be empty (its type has a primary access); `check` can be
        // asked about nothing, and says no.
        assert!(!policies().explain(&engineer(), &[]).allowed);
    }

    #[test]
    fn claim_variables_cannot_reach_other_prefixes() {
        let set = policies();
        let target = put("s3://checkpoints/bob/x");
        for sub in ["*", "alice/../bob", "..", ".", "", "bob*", "b?b", "bob/"] {
            let id = identity(ISS, json!({"sub": sub, "groups": ["ml-engineers"]}));
            assert!(
                !set.decide(&id, op(std::slice::from_ref(&target))).is_allowed(),
                "sub={sub:?}"
            );
        }
        let id = identity(ISS, json!({"groups": ["ml-engineers"]}));
        assert!(
            !set.decide(&id, op(std::slice::from_ref(&target))).is_allowed(),
            "missing sub"
        );
        let bob = identity(ISS, json!({"sub": "bob", "groups": ["ml-engineers"]}));
        assert!(set.decide(&bob, op(&[target])).is_allowed());
    }

    #[test]
    fn http_actions() {
        let set = policies();
        let post = Access::new(
            "http:POST",
            Resource::parse("http://features/get-online-features"),
        );
        assert!(set.decide(&engineer(), op(&[post])).is_allowed());
        let get = Access::new("http:GET", Resource::parse("http://features/get-online-features"));
        assert!(!set.decide(&engineer(), op(&[get])).is_allowed());
        let lower = Access::new(
            "http:post",
            Resource::parse("http://features/get-online-features"),
        );
        assert!(
            !set.decide(&engineer(), op(&[lower])).is_allowed(),
            "methods are case-sensitive"
        );
    }

    #[test]
    fn shadow_roles_are_reported_not_enforced() {
        let set = policies();
        // pii-lockdown (shadow) would deny faces; trainer (enforced) allows it.
        let decision = set.decide(&engineer(), op(&[get("s3://datasets/faces/1.jpg")]));
        assert!(decision.is_allowed());
        let Some(ShadowOutcome::WouldDeny(denial)) = &decision.shadow else {
            panic!("want would_deny, got {:?}", decision.shadow)
        };
        assert_eq!(
            denial.rule,
            Some(rule("policies/shadow.toml", "pii-lockdown", RuleKind::Deny, 0))
        );
        assert_eq!(denial.roles, ["trainer", "pii-lockdown"]);
        assert_eq!(
            decision.shadow.as_ref().map(ShadowOutcome::as_str),
            Some("would_deny")
        );

        // writer (shadow) would allow a put that enforcement denies.
        let id = identity(ISS, json!({"sub": "w", "groups": ["writers"]}));
        let decision = set.decide(&id, op(&[put("s3://datasets/new")]));
        let denial = decision.outcome.expect_err("shadow allow does not count");
        assert!(
            denial.roles.is_empty(),
            "enforced denial lists enforced roles only"
        );
        assert_eq!(
            decision.shadow,
            Some(ShadowOutcome::WouldAllow {
                rules: vec![rule("policies/shadow.toml", "writer", RuleKind::Allow, 0)]
            })
        );
    }

    #[test]
    fn shadow_outcome_matches_enforcement_when_shadow_changes_nothing() {
        let set = policies();
        let decision = set.decide(&engineer(), op(&[get("s3://datasets/imagenet/1")]));
        assert!(decision.is_allowed());
        assert_eq!(
            decision.shadow.as_ref().map(ShadowOutcome::as_str),
            Some("would_allow")
        );
    }

    #[test]
    fn deny_with_unusable_variable_fails_closed() {
        let src = r#"
[[roles]]
name = "home"
members = [{ claim = "groups", contains = "staff" }]
allow = [{ actions = ["s3:*"], resources = ["s3://home/*"] }]
deny = [{ actions = ["s3:*"], resources = ["s3://home/${sub}/secret/*"] }]
"#;
        let set = PolicySet::from_sources(&[(PathBuf::from("h.toml"), src.into())], &[]).expect("valid");
        let anon = identity(ISS, json!({"groups": ["staff"]}));
        assert!(
            !set.decide(&anon, op(&[get("s3://home/bob/secret/k")]))
                .is_allowed()
        );
        assert!(
            set.decide(&anon, op(&[get("s3://home/bob/public/k")]))
                .is_allowed()
        );
        let alice = identity(ISS, json!({"sub": "alice", "groups": ["staff"]}));
        assert!(
            set.decide(&alice, op(&[get("s3://home/bob/secret/k")]))
                .is_allowed(),
            "bob's deny, not alice's"
        );
        assert!(
            !set.decide(&alice, op(&[get("s3://home/alice/secret/k")]))
                .is_allowed()
        );
    }

    #[test]
    fn explanation_agrees_with_decision() {
        let set = policies();
        let ids = [
            engineer(),
            identity(
                ISS,
                json!({"sub": "a", "groups": ["ml-engineers", "writers"], "realm_access": {"roles": ["reader"]}}),
            ),
            identity(ISS, json!({"sub": "*", "groups": ["writers"]})),
            identity(EKS, json!({"sub": "system:serviceaccount:training:x"})),
            identity(ISS, json!({})),
        ];
        let requests = [
            vec![get("s3://datasets/imagenet/1")],
            vec![get("s3://datasets/pii/1")],
            vec![get("s3://datasets/faces/1")],
            vec![put("s3://datasets/new")],
            vec![put("s3://checkpoints/alice/1"), get("s3://public/x")],
            vec![Access::new(
                "http:POST",
                Resource::parse("http://features/get-online-features"),
            )],
        ];
        for id in &ids {
            for accesses in &requests {
                let decision = set.decide(id, op(accesses));
                let explanation = set.explain(id, accesses);
                assert_eq!(explanation.allowed, decision.is_allowed(), "{explanation}");
                let shadow = decision
                    .shadow
                    .as_ref()
                    .map(|s| matches!(s, ShadowOutcome::WouldAllow { .. }));
                assert_eq!(explanation.would_allow, shadow, "{explanation}");
            }
        }
    }

    #[test]
    fn explanation_lists_roles_rules_and_verdict() {
        let set = policies();
        let explanation = set.explain(&engineer(), &[get("s3://datasets/pii/x")]);
        let held: Vec<(&str, bool)> = explanation
            .roles
            .iter()
            .map(|r| (r.name.as_str(), r.held))
            .collect();
        assert_eq!(
            held,
            [
                ("trainer", true),
                ("reader", false),
                ("pii-lockdown", true),
                ("writer", false)
            ]
        );
        assert_eq!(
            explanation.roles[0].member,
            Some((
                0,
                r#"{ claim = "groups", contains = "ml-engineers" }"#.to_string()
            ))
        );
        let access = &explanation.accesses[0];
        let considered: Vec<(String, bool)> = access
            .rules
            .iter()
            .map(|c| (c.rule.to_string(), c.matched))
            .collect();
        assert_eq!(
            considered,
            [
                ("policies/ml.toml: role trainer deny[0]".to_string(), true),
                (
                    "policies/shadow.toml: role pii-lockdown deny[0]".to_string(),
                    false
                ),
                ("policies/ml.toml: role trainer allow[0]".to_string(), true),
                ("policies/ml.toml: role trainer allow[1]".to_string(), false),
                ("policies/ml.toml: role trainer allow[2]".to_string(), false),
            ]
        );
        assert_eq!(
            access.verdict,
            Verdict::Deny(rule("policies/ml.toml", "trainer", RuleKind::Deny, 0))
        );
        assert!(!explanation.allowed);
        assert_eq!(explanation.would_allow, Some(false));

        let text = explanation.to_string();
        for needle in [
            "identity: alice (issuer https://login.example.com)",
            "roles held:",
            "trainer (enforce, policies/ml.toml)",
            "Training jobs of the ML platform team",
            "via members[0] { claim = \"groups\", contains = \"ml-engineers\" }",
            "pii-lockdown (shadow, policies/shadow.toml)",
            "not held (no member entry matches): reader, writer",
            "s3:GetObject on s3://datasets/pii/x",
            "MATCH         policies/ml.toml: role trainer deny[0] { actions = [\"s3:*\"], resources = [\"s3://datasets/pii/*\"] }",
            "no (action)   policies/ml.toml: role trainer allow[1]",
            "=> denied by policies/ml.toml: role trainer deny[0]",
            "decision: DENY",
            "shadow:   would_deny",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn explanation_notes_unusable_variables_and_sessions() {
        let set = policies();
        let mut id = identity(
            ISS,
            json!({"sub": "../bob", "groups": ["ml-engineers"], "realm_access": {"roles": ["reader"]}}),
        );
        id.method = session("trainer");
        let explanation = set.explain(&id, &[put("s3://checkpoints/bob/x")]);
        let note = explanation.accesses[0]
            .rules
            .iter()
            .find_map(|c| c.note.clone())
            .expect("a note");
        assert!(note.contains("`${sub}` not usable"), "{note}");
        let text = explanation.to_string();
        assert!(text.contains("sts session: holds only role trainer"), "{text}");
        assert!(
            text.contains("member of, but not held by this session: reader"),
            "{text}"
        );
        assert!(text.contains("=> denied: no rule allows it"), "{text}");
    }

    #[test]
    fn explanation_for_nobody() {
        let set = policies();
        let text = set
            .explain(&identity(ISS, json!({"sub": "x"})), &[get("s3://public/x")])
            .to_string();
        assert!(text.contains("roles held: none"), "{text}");
        assert!(text.contains("(no rules: the identity holds no role)"), "{text}");
        assert!(!text.contains("shadow:"), "{text}");
    }
}
