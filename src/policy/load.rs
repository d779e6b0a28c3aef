//! The policy file format (serde) and its compilation into a [`PolicySet`].
//!
//! Two layers, as for the main config: the `*Spec` structs mirror the file exactly
//! (`deny_unknown_fields`, so a typo is an error with its line), and compilation checks what
//! serde cannot and builds the compiled types. Compilation records a [`Problem`] and carries
//! on, so one run reports every problem in every file.

use std::collections::HashMap;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::glob::{Glob, Pattern, has_var};
use super::member::{ClaimTest, Member, Test};
use super::{Mode, PolicySet, Role, Rule};
use crate::diag::{Problem, line_of};

/// A whole policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    /// Default mode of every role in the file.
    mode: Option<ModeSpec>,
    #[serde(default)]
    roles: Vec<Spanned<RoleSpec>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ModeSpec {
    Enforce,
    Shadow,
}

impl From<ModeSpec> for Mode {
    fn from(spec: ModeSpec) -> Mode {
        match spec {
            ModeSpec::Enforce => Mode::Enforce,
            ModeSpec::Shadow => Mode::Shadow,
        }
    }
}

/// One `[[roles]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSpec {
    /// Optional in serde so that a nameless role does not hide the file's other problems.
    name: Option<Spanned<String>>,
    description: Option<String>,
    mode: Option<ModeSpec>,
    /// Optional in serde so that a missing list gets our clearer message.
    members: Option<Spanned<Vec<Spanned<MemberSpec>>>>,
    #[serde(default)]
    allow: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    deny: Vec<Spanned<RuleSpec>>,
}

/// One member entry. A single struct rather than an untagged enum, so that serde's errors
/// keep their lines and our checks can say exactly which field is missing or extra.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSpec {
    issuer: Option<String>,
    claim: Option<String>,
    equals: Option<String>,
    contains: Option<String>,
    glob: Option<String>,
    all: Option<Vec<Spanned<MemberSpec>>>,
}

/// One entry of `allow` or `deny`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    actions: Spanned<Vec<Spanned<String>>>,
    resources: Spanned<Vec<Spanned<String>>>,
}

impl PolicySet {
    /// Loads every `*.toml` in `dir`, sorted by file name, not recursing. Names starting with
    /// `.` are skipped (editor files, Kubernetes ConfigMap internals); symlinks are followed.
    ///
    /// `known_routes` are the names of the configured routes of kind `http`: a resource
    /// `http://<route>/…` must name one of them. An empty directory is not an error; it
    /// yields a set that denies everything.
    ///
    /// # Errors
    ///
    /// Every problem in every file (see [`PolicySet::from_sources`]), and any directory or
    /// file that cannot be read.
    pub fn load_dir(dir: &Path, known_routes: &[String]) -> Result<PolicySet, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for path in policy_files(dir)? {
            match fs::read_to_string(&path) {
                Ok(source) => files.push((path, source)),
                Err(err) => problems.push(Problem::file(&path, format!("cannot read policy file: {err}"))),
            }
        }
        match PolicySet::from_sources(&files, known_routes) {
            Ok(set) if problems.is_empty() => Ok(set),
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }

    /// Compiles policy files already read, in the order given.
    ///
    /// # Errors
    ///
    /// Every problem in every file, each with its file and (where it can be pinned) line.
    pub fn from_sources(
        files: &[(PathBuf, String)],
        known_routes: &[String],
    ) -> Result<PolicySet, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut roles = Vec::new();
        let mut defined = Defined::new();
        for (path, source) in files {
            match toml::from_str::<FileSpec>(source) {
                Ok(spec) => {
                    let mut loader = FileLoader {
                        path,
                        file: Arc::from(path.as_path()),
                        source,
                        known_routes,
                        problems: Vec::new(),
                    };
                    roles.extend(loader.roles(spec, &mut defined));
                    loader.problems.sort_by_key(|p| p.line);
                    problems.append(&mut loader.problems);
                }
                Err(err) => {
                    let first = Problem::from_toml(path, source, &err);
                    let mut more = problems_role_by_role(path, source, known_routes, &mut defined);
                    more.retain(|p| *p != first);
                    problems.push(first);
                    problems.append(&mut more);
                }
            }
        }
        if problems.is_empty() {
            Ok(PolicySet::new(roles))
        } else {
            Err(problems)
        }
    }
}

/// Role name → the file and line that first defined it, to report duplicates.
type Defined = HashMap<String, (PathBuf, usize)>;

/// The `*.toml` files of `dir`, sorted by file name.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<Problem>> {
    let entries = fs::read_dir(dir).map_err(|err| {
        vec![Problem::file(
            dir,
            format!("cannot read the policies directory: {err}"),
        )]
    })?;
    let mut paths = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(err) => {
                problems.push(Problem::file(
                    dir,
                    format!("cannot list the policies directory: {err}"),
                ));
                continue;
            }
        };
        let visible = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !n.starts_with('.'));
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        if visible && is_toml && path.is_file() {
            paths.push(path);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(paths)
}

/// Compiles the roles of one file, collecting its problems.
struct FileLoader<'a> {
    path: &'a Path,
    /// Shared by every compiled role of the file.
    file: Arc<Path>,
    source: &'a str,
    known_routes: &'a [String],
    problems: Vec<Problem>,
}

/// A file that failed to deserialize, read loosely: only to find where each role is.
#[derive(Deserialize)]
struct LooseFile {
    #[serde(default)]
    roles: Vec<Spanned<toml::Value>>,
}

/// After a serde error stopped a file, checks each `[[roles]]` table on its own so one typo
/// does not hide the other problems of the file. Each table is re-read from a copy of the
/// file that keeps only that table at its original line, so every problem keeps its line.
fn problems_role_by_role(
    path: &Path,
    source: &str,
    known_routes: &[String],
    defined: &mut Defined,
) -> Vec<Problem> {
    let Ok(loose) = toml::from_str::<LooseFile>(source) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    // A `[[roles]]` table runs from its header to the next header (top-level keys must come
    // before the first table, so nothing else can sit in between).
    let starts: Vec<usize> = loose.roles.iter().map(|r| r.span().start).collect();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(source.len());
        let span = start..end;
        let Some(table) = source.get(span.clone()) else {
            continue;
        };
        if !table.trim_start().starts_with("[[roles]]") {
            continue;
        }
        let padded = format!("{}{table}", "\n".repeat(line_of(source, span.start) - 1));
        match toml::from_str::<FileSpec>(&padded) {
            Ok(spec) => {
                let mut loader = FileLoader {
                    path,
                    file: Arc::from(path),
                    source: &padded,
                    known_routes,
                    problems: Vec::new(),
                };
                loader.roles(spec, defined);
                problems.append(&mut loader.problems);
            }
            Err(err) => problems.push(Problem::from_toml(path, &padded, &err)),
        }
    }
    problems
}

impl FileLoader<'_> {
    fn problem(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(self.path, self.source, span.start, message));
    }

    /// Compiles every role of the file; roles with problems are left out (their problems
    /// are recorded).
    fn roles(&mut self, spec: FileSpec, defined: &mut Defined) -> Vec<Role> {
        let mut roles = Vec::new();
        for role in spec.roles {
            let span = role.span();
            let role = role.into_inner();
            match &role.name {
                Some(name) => self.check_unique(name, defined),
                None => self.problem(span.clone(), "role has no `name`"),
            }
            roles.extend(self.role(role, span, spec.mode));
        }
        roles
    }

    /// Role names are global: STS sessions and audit records name a role by name alone.
    fn check_unique(&mut self, name: &Spanned<String>, defined: &mut Defined) {
        match defined.get(name.get_ref()) {
            Some((first, first_line)) => self.problem(
                name.span(),
                format!(
                    "duplicate role name `{}`: already defined at {}:{first_line}",
                    name.get_ref(),
                    first.display()
                ),
            ),
            None => {
                let line = line_of(self.source, name.span().start);
                defined.insert(name.get_ref().clone(), (self.path.to_path_buf(), line));
            }
        }
    }

    /// Compiles a role; `None` when it had problems (already recorded).
    fn role(&mut self, spec: RoleSpec, span: Range<usize>, file_mode: Option<ModeSpec>) -> Option<Role> {
        let before = self.problems.len();
        let (name, name_span) = match &spec.name {
            Some(name) => (name.get_ref().as_str(), name.span()),
            None => ("", span),
        };
        if let Some(Err(msg)) = spec.name.as_ref().map(|n| check_role_name(n.get_ref())) {
            self.problem(name_span.clone(), msg);
        }
        let members = match spec.members {
            Some(list) if list.get_ref().is_empty() => {
                self.problem(
                    list.span(),
                    format!("role `{name}` has an empty `members` list: nobody would hold it"),
                );
                Vec::new()
            }
            Some(list) => list
                .into_inner()
                .into_iter()
                .filter_map(|m| self.member(m))
                .collect(),
            None => {
                self.problem(
                    name_span,
                    format!("role `{name}` has no `members`: nobody would hold it"),
                );
                Vec::new()
            }
        };
        let allow: Vec<Rule> = spec.allow.into_iter().filter_map(|r| self.rule(r)).collect();
        let deny: Vec<Rule> = spec.deny.into_iter().filter_map(|r| self.rule(r)).collect();
        // A nameless role's problem was recorded by the caller.
        if self.problems.len() > before || spec.name.is_none() {
            return None;
        }
        Some(Role {
            name: Arc::from(name),
            description: spec.description.map(String::into_boxed_str),
            file: Arc::clone(&self.file),
            mode: spec.mode.or(file_mode).map_or(Mode::Enforce, Mode::from),
            members,
            allow,
            deny,
        })
    }

    fn member(&mut self, spec: Spanned<MemberSpec>) -> Option<Member> {
        let span = spec.span();
        let spec = spec.into_inner();
        if let Some(all) = spec.all {
            if spec.issuer.is_some()
                || spec.claim.is_some()
                || spec.equals.is_some()
                || spec.contains.is_some()
                || spec.glob.is_some()
            {
                self.problem(
                    span,
                    "an `all` entry takes no other fields: put each condition inside `all = [...]`",
                );
                return None;
            }
            if all.is_empty() {
                self.problem(span, "`all = []` is empty: it needs at least one condition");
                return None;
            }
            let count = all.len();
            let entries: Vec<Member> = all.into_iter().filter_map(|m| self.member(m)).collect();
            return (entries.len() == count).then_some(Member::All(entries));
        }
        let Some(claim) = spec.claim.filter(|c| !c.is_empty()) else {
            self.problem(span, "a member entry needs `claim = \"...\"` (or `all = [...]`)");
            return None;
        };
        let test = match (spec.equals, spec.contains, spec.glob) {
            (Some(v), None, None) => Test::Equals(v.into()),
            (None, Some(v), None) => Test::Contains(v.into()),
            (None, None, Some(v)) => Test::Glob(Glob::new(&v)),
            _ => {
                self.problem(
                    span,
                    format!(
                        "member entry for claim `{claim}` needs exactly one of `equals`, `contains` or `glob`"
                    ),
                );
                return None;
            }
        };
        Some(Member::Claim(ClaimTest {
            issuer: spec.issuer.map(String::into_boxed_str),
            claim: claim.into(),
            test,
        }))
    }

    fn rule(&mut self, spec: Spanned<RuleSpec>) -> Option<Rule> {
        let RuleSpec { actions, resources } = spec.into_inner();
        let before = self.problems.len();
        for (list, field) in [(&actions, "actions"), (&resources, "resources")] {
            if list.get_ref().is_empty() {
                self.problem(
                    list.span(),
                    format!("`{field}` is empty: the rule would never match"),
                );
            }
        }
        let compiled_actions: Vec<Glob> = actions.get_ref().iter().filter_map(|a| self.action(a)).collect();
        let compiled_resources: Vec<Pattern> = resources
            .get_ref()
            .iter()
            .filter_map(|r| self.resource(r))
            .collect();
        if self.problems.len() > before {
            return None;
        }
        self.check_schemes(actions.get_ref(), resources.get_ref());
        (self.problems.len() == before).then_some(Rule {
            actions: compiled_actions,
            resources: compiled_resources,
        })
    }

    fn action(&mut self, action: &Spanned<String>) -> Option<Glob> {
        match check_action(action.get_ref()) {
            Ok(()) => Some(Glob::new(action.get_ref())),
            Err(msg) => {
                self.problem(action.span(), msg);
                None
            }
        }
    }

    fn resource(&mut self, resource: &Spanned<String>) -> Option<Pattern> {
        let checked = check_resource(resource.get_ref(), self.known_routes)
            .and_then(|()| Pattern::parse(resource.get_ref()).map_err(|e| e.0));
        match checked {
            Ok(pattern) => Some(pattern),
            Err(msg) => {
                self.problem(resource.span(), msg);
                None
            }
        }
    }

    /// A resource whose scheme no action of the rule shares can never match: almost
    /// certainly a mistake (`http:GET` on `s3://…`).
    fn check_schemes(&mut self, actions: &[Spanned<String>], resources: &[Spanned<String>]) {
        for resource in resources {
            let (scheme, prefix) = if resource.get_ref().starts_with("s3://") {
                ("s3", "s3:")
            } else {
                ("http", "http:")
            };
            if !actions.iter().any(|a| a.get_ref().starts_with(prefix)) {
                self.problem(
                    resource.span(),
                    format!(
                        "resource `{}` can never match: the rule has no `{scheme}:` actions",
                        resource.get_ref()
                    ),
                );
            }
        }
    }
}

/// Role names appear in role ARNs (`arn:aws:iam::000000000000:role/<name>`), so they use
/// IAM's role-name characters.
fn check_role_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    if name.is_empty() {
        return Err("role `name` is empty".into());
    }
    if !name.chars().all(valid) {
        return Err(format!(
            "invalid role name `{name}`: use letters, digits and _+=,.@- (names appear in role ARNs)"
        ));
    }
    Ok(())
}

/// `s3:<Name>` (IAM action names, case-sensitive, `*` allowed) or `http:<METHOD>` (uppercase).
/// Levenshtein distance, for "did you mean" on short action names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn check_action(action: &str) -> Result<(), String> {
    if has_var(action) {
        return Err(format!(
            "`{action}`: `${{...}}` variables are only supported in resources"
        ));
    }
    let unknown = || {
        format!(
            "unknown action `{action}`: actions are `s3:<Action>` or `http:<METHOD>` (`s3:*`, `http:*` for all)"
        )
    };
    let Some((prefix, name)) = action.split_once(':') else {
        return Err(unknown());
    };
    match prefix {
        "s3" => {
            let shaped = name.starts_with(|c: char| c.is_ascii_uppercase() || c == '*')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '*');
            if !shaped {
                return Err(format!(
                    "invalid S3 action `{action}`: write IAM action names as AWS spells them, e.g. `s3:GetObject`, `s3:Get*`"
                ));
            }
            if !name.contains('*') && !crate::classify::is_s3_action(action) {
                let near = crate::classify::s3_actions()
                    .min_by_key(|known| edit_distance(known, action))
                    .filter(|known| edit_distance(known, action) <= 3);
                return Err(match near {
                    Some(n) => format!("unknown S3 action `{action}`: did you mean `{n}`?"),
                    None => format!(
                        "S3 action `{action}` is not one claimgate ever checks, so this rule could never match (the README's S3 operation table lists every action)"
                    ),
                });
            }
        }
        "http" => {
            let shaped = !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '*');
            if !shaped {
                return Err(format!(
                    "invalid HTTP action `{action}`: write `http:<METHOD>` in uppercase, e.g. `http:GET`, `http:*`"
                ));
            }
        }
        _ => return Err(unknown()),
    }
    Ok(())
}

/// `s3://` (the account), `s3://<bucket>[/<key glob>]` or `http://<route>[/<path glob>]` naming a configured http
/// route. The route must be literal: it decides which upstream the rule is about.
fn check_resource(resource: &str, known_routes: &[String]) -> Result<(), String> {
    if let Some(rest) = resource.strip_prefix("s3://") {
        // Bare `s3://` is the account-level resource: what ListBuckets
        // (`s3:ListAllMyBuckets`) acts on, IAM's `*`.
        if rest.is_empty() {
            return Ok(());
        }
        if rest.split('/').next().is_none_or(str::is_empty) {
            return Err(format!(
                "resource `{resource}` names no bucket: write `s3://<bucket>/<key glob>`"
            ));
        }
        return Ok(());
    }
    let Some(rest) = resource.strip_prefix("http://") else {
        return Err(format!(
            "resource `{resource}` must start with `s3://` (a bucket) or `http://` (an http route)"
        ));
    };
    let route = rest.split('/').next().unwrap_or_default();
    if route.is_empty() {
        return Err(format!(
            "resource `{resource}` names no route: write `http://<route>/<path glob>`"
        ));
    }
    if route.contains('*') || has_var(route) {
        return Err(format!(
            "resource `{resource}`: the route name must be written out, without `*` or `${{...}}`"
        ));
    }
    if !known_routes.iter().any(|r| r == route) {
        let configured = if known_routes.is_empty() {
            "no http routes are configured".to_string()
        } else {
            format!("http routes: {}", known_routes.join(", "))
        };
        return Err(format!(
            "resource `{resource}` names unknown http route `{route}` ({configured})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &["features"];

    fn routes() -> Vec<String> {
        ROUTES.iter().map(|s| s.to_string()).collect()
    }

    fn load(files: &[(&str, &str)]) -> Result<PolicySet, Vec<Problem>> {
        let files: Vec<(PathBuf, String)> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        PolicySet::from_sources(&files, &routes())
    }

    fn problems(src: &str) -> Vec<String> {
        match load(&[("policies/p.toml", src)]) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn actions_claimgate_never_checks_are_refused_with_a_suggestion() {
        let found = problems(&rule_src(
            "{ actions = [\"s3:GetObjekt\", \"s3:PutBucketPolicy\", \"s3:FlyToTheMoon\", \"s3:Get*\"], resources = [\"s3://b/*\"] }",
        ));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("did you mean `s3:GetObject`"), "{found:#?}");
        assert!(found[1].contains("never match"), "{found:#?}");
    }

    #[test]
    fn a_typo_in_one_role_does_not_hide_the_problems_of_the_others() {
        let src = "[[roles]]\nname = \"x\"\nmembers = []\n\n[[roles]]\nname = \"y\"\nmembers = [ { claim = \"sub\", equal = \"a\" } ]\n\n[[roles]]\nname = \"z\"\nmembers = [ { claim = \"sub\", equals = \"a\" } ]\nallow = [ { actions = [\"s3:getObject\"], resources = [\"s3://b/*\"] } ]\n";
        let found = problems(src);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found[0].starts_with("policies/p.toml:7:") && found[0].contains("equal"),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("policies/p.toml:3:") && p.contains("empty `members`")),
            "{found:#?}"
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("policies/p.toml:12:") && p.contains("s3:getObject")),
            "{found:#?}"
        );
    }

    /// Asserts exactly one problem, on `line`, whose message contains `needle`.
    fn one_problem(src: &str, line: usize, needle: &str) {
        let found = problems(src);
        assert_eq!(found.len(), 1, "want one problem, got {found:#?}");
        let want_prefix = format!("policies/p.toml:{line}: ");
        assert!(
            found[0].starts_with(&want_prefix),
            "want line {line}: {}",
            found[0]
        );
        assert!(found[0].contains(needle), "want `{needle}` in: {}", found[0]);
    }

    const CONFIG_EXAMPLE: &str = r#"
[[roles]]
name = "trainer"
description = "Training jobs of the ML platform team"
members = [
  { claim = "groups", contains = "ml-engineers" },
  { issuer = "https://oidc.eks.example.com", claim = "sub", glob = "system:serviceaccount:training:*" },
  { all = [ { claim = "sub", equals = "alice" }, { claim = "groups", contains = "ml-train" } ] },
]
allow = [
  { actions = ["s3:GetObject", "s3:ListBucket"], resources = ["s3://datasets/imagenet/*"] },
  { actions = ["s3:PutObject", "s3:AbortMultipartUpload"], resources = ["s3://checkpoints/${sub}/*"] },
  { actions = ["http:POST"], resources = ["http://features/get-online-features"] },
]
deny = [
  { actions = ["s3:*"], resources = ["s3://datasets/pii/*"] },
]
"#;

    #[test]
    fn loads_the_config_md_example() {
        let set = load(&[("policies/ml.toml", CONFIG_EXAMPLE)]).expect("valid");
        assert_eq!(set.role_count(), 1);
        let role = &set.roles[0];
        assert_eq!(&*role.name, "trainer");
        assert_eq!(role.members.len(), 3);
        assert_eq!(role.allow.len(), 3);
        assert_eq!(role.deny.len(), 1);
        assert_eq!(role.mode, Mode::Enforce);
        assert_eq!(
            role.description.as_deref(),
            Some("Training jobs of the ML platform team")
        );
        assert_eq!(&*role.file, Path::new("policies/ml.toml"));
    }

    #[test]
    fn modes_file_default_and_role_override() {
        let src = r#"
mode = "shadow"
[[roles]]
name = "a"
members = [{ claim = "sub", equals = "x" }]
[[roles]]
name = "b"
mode = "enforce"
members = [{ claim = "sub", equals = "x" }]
"#;
        let set = load(&[("p.toml", src)]).expect("valid");
        assert_eq!(set.roles[0].mode, Mode::Shadow);
        assert_eq!(set.roles[1].mode, Mode::Enforce);
        one_problem("mode = \"audit\"\n", 1, "unknown variant");
    }

    #[test]
    fn unknown_fields_are_errors_with_lines() {
        one_problem(
            "[[roles]]\nname = \"a\"\nmembers = [{ claim = \"sub\", equals = \"x\" }]\nalow = []\n",
            4,
            "alow",
        );
        one_problem(
            "[[roles]]\nname = \"a\"\nmembers = [{ claim = \"sub\", equal = \"x\" }]\n",
            3,
            "equal",
        );
        one_problem(
            "[[roles]]\nname = \"a\"\nmembers = [{ claim = \"sub\", equals = \"x\" }]\nallow = [{ action = [\"s3:*\"], resources = [\"s3://b\"] }]\n",
            4,
            "action",
        );
        one_problem("role = 1\n", 1, "role");
    }

    #[test]
    fn toml_syntax_errors_have_lines() {
        one_problem("[[roles]]\nname = \"a\n", 2, "");
    }

    #[test]
    fn collects_every_problem_in_every_file() {
        let bad1 = r#"[[roles]]
name = "a"
members = []
allow = [
  { actions = [], resources = ["s3://b/*"] },
  { actions = ["s3:getObject"], resources = ["ftp://x"] },
]
"#;
        let bad2 = "[[roles]]\nname = \"b\"\nmembers = [{ claim = \"g\", contains = \"x\", glob = \"y\" }]\nallow = [{ actions = [\"http:get\"], resources = [\"http://nope/x\"] }]\n";
        let syntax = "[[roles]\n";
        let err =
            load(&[("one.toml", bad1), ("two.toml", bad2), ("three.toml", syntax)]).expect_err("invalid");
        let lines: Vec<String> = err.iter().map(ToString::to_string).collect();
        let at = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(at("one.toml:3:"), 1, "{lines:#?}");
        assert_eq!(at("one.toml:5:"), 1, "{lines:#?}");
        assert_eq!(at("one.toml:6:"), 2, "{lines:#?}");
        assert_eq!(at("two.toml:3:"), 1, "{lines:#?}");
        assert_eq!(at("two.toml:4:"), 2, "{lines:#?}");
        assert_eq!(at("three.toml:1:"), 1, "{lines:#?}");
        assert_eq!(err.len(), 8, "{lines:#?}");
    }

    #[test]
    fn duplicate_role_names_across_files() {
        let a = "[[roles]]\nname = \"r\"\nmembers = [{ claim = \"sub\", equals = \"x\" }]\n";
        let b = "\n[[roles]]\nname = \"r\"\nmembers = [{ claim = \"sub\", equals = \"y\" }]\n";
        let err = load(&[("a.toml", a), ("b.toml", b)]).expect_err("duplicate");
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].to_string(),
            "b.toml:3: duplicate role name `r`: already defined at a.toml:2"
        );
    }

    #[test]
    fn member_entry_problems() {
        let role = |members: &str| format!("[[roles]]\nname = \"a\"\nmembers = [\n{members}\n]\n");
        one_problem(&role("{ claim = \"sub\" }"), 4, "exactly one of");
        one_problem(
            &role("{ claim = \"sub\", equals = \"a\", glob = \"b\" }"),
            4,
            "exactly one of",
        );
        one_problem(&role("{ equals = \"a\" }"), 4, "needs `claim");
        one_problem(&role("{ claim = \"\", equals = \"a\" }"), 4, "needs `claim");
        one_problem(&role("{ all = [] }"), 4, "empty");
        one_problem(
            &role("{ all = [{ claim = \"sub\", equals = \"a\" }], claim = \"x\" }"),
            4,
            "no other fields",
        );
        one_problem(&role("{ all = [{ claim = \"sub\" }] }"), 4, "exactly one of");
        one_problem(&role("{ claim = \"sub\", equals = 3 }"), 4, "string");
        one_problem("[[roles]]\nname = \"a\"\n", 2, "no `members`");
        one_problem("[[roles]]\nname = \"a\"\nmembers = []\n", 3, "empty `members`");
    }

    fn rule_src(rule: &str) -> String {
        format!(
            "[[roles]]\nname = \"a\"\nmembers = [{{ claim = \"sub\", equals = \"x\" }}]\nallow = [\n{rule}\n]\n"
        )
    }

    #[test]
    fn action_problems() {
        for bad in [
            "s3:getObject",
            "S3:GetObject",
            "s3:",
            "*",
            "GetObject",
            "http:get",
            "http:",
            "sts:AssumeRole",
            "s3:Get-Object",
            "s3:${x}",
        ] {
            let line = "{ actions = [\"ACTION\"], resources = [\"s3://b/*\", \"http://features/x\"] }"
                .replace("ACTION", bad);
            let found = problems(&rule_src(&line));
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with("policies/p.toml:5:") && p.contains(bad)),
                "{bad}: {found:#?}"
            );
        }
        for good in [
            "s3:*",
            "s3:Get*",
            "s3:GetObject",
            "s3:*Object",
            "http:GET",
            "http:*",
        ] {
            let line = format!(
                "{{ actions = [\"{good}\", \"s3:GetObject\", \"http:GET\"], resources = [\"s3://b/*\", \"http://features/x\"] }}"
            );
            assert!(problems(&rule_src(&line)).is_empty(), "{good}");
        }
    }

    #[test]
    fn resource_problems() {
        let cases = [
            ("datasets/x", "must start with"),
            ("S3://datasets/x", "must start with"),
            ("s3:///x", "names no bucket"),
            ("s3://b/${sub", "unclosed"),
            ("s3://b/${}", "empty variable"),
            ("s3://b/${aws:username}/*", "IAM variables"),
            ("http://other/x", "unknown http route `other`"),
            ("http:///x", "names no route"),
            ("http://*/x", "written out"),
            ("http://${team}/x", "written out"),
        ];
        for (bad, needle) in cases {
            let line = format!("{{ actions = [\"s3:*\", \"http:*\"], resources = [\"{bad}\"] }}");
            one_problem(&rule_src(&line), 5, needle);
        }
    }

    #[test]
    fn unknown_route_message_lists_routes() {
        let files = vec![(
            PathBuf::from("p.toml"),
            rule_src("{ actions = [\"http:GET\"], resources = [\"http://x/y\"] }"),
        )];
        let err = PolicySet::from_sources(&files, &[]).expect_err("no routes");
        assert!(
            err[0].message.contains("no http routes are configured"),
            "{}",
            err[0]
        );
    }

    #[test]
    fn empty_lists_and_scheme_mismatch() {
        one_problem(
            &rule_src("{ actions = [], resources = [\"s3://b\"] }"),
            5,
            "`actions` is empty",
        );
        one_problem(
            &rule_src("{ actions = [\"s3:*\"], resources = [] }"),
            5,
            "`resources` is empty",
        );
        one_problem(
            &rule_src("{ actions = [\"http:GET\"], resources = [\"s3://b/*\"] }"),
            5,
            "no `s3:` actions",
        );
        one_problem(
            &rule_src("{ actions = [\"s3:GetObject\"], resources = [\"http://features/x\"] }"),
            5,
            "no `http:` actions",
        );
    }

    #[test]
    fn role_name_problems() {
        one_problem(
            "[[roles]]\nname = \"bad name\"\nmembers = [{ claim = \"sub\", equals = \"x\" }]\n",
            2,
            "invalid role name",
        );
        one_problem(
            "[[roles]]\nname = \"\"\nmembers = [{ claim = \"sub\", equals = \"x\" }]\n",
            2,
            "empty",
        );
        one_problem(
            "[[roles]]\nmembers = [{ claim = \"sub\", equals = \"x\" }]\n",
            1,
            "role has no `name`",
        );
        // A nameless role does not hide the problems after it.
        let found = problems("[[roles]]\nmembers = [{ claim = \"sub\" }]\n");
        assert_eq!(found.len(), 2, "{found:#?}");
    }

    #[test]
    fn empty_file_and_empty_set_are_valid() {
        let set = load(&[("empty.toml", "")]).expect("valid");
        assert_eq!(set.role_count(), 0);
    }

    #[test]
    fn load_dir_sorts_and_filters() {
        let dir = std::env::temp_dir().join(format!("claimgate-policy-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub.toml")).expect("mkdir");
        let role = |name: &str| {
            format!("[[roles]]\nname = \"{name}\"\nmembers = [{{ claim = \"sub\", equals = \"x\" }}]\n")
        };
        fs::write(dir.join("b.toml"), role("second")).expect("write");
        fs::write(dir.join("a.toml"), role("first")).expect("write");
        fs::write(dir.join("c.toml.bak"), "not toml").expect("write");
        fs::write(dir.join(".#a.toml"), "not toml").expect("write");
        fs::write(dir.join("sub.toml").join("nested.toml"), role("nested")).expect("write");
        let set = PolicySet::load_dir(&dir, &[]).expect("valid");
        assert_eq!(set.role_names().collect::<Vec<_>>(), ["first", "second"]);
        fs::write(dir.join("c.toml"), "[[roles]]\nname = \"third\"\n").expect("write");
        let err = PolicySet::load_dir(&dir, &[]).expect_err("invalid");
        assert_eq!(err.len(), 1);
        assert!(err[0].file.ends_with("c.toml"), "{}", err[0]);
        fs::remove_dir_all(&dir).expect("cleanup");
        let err = PolicySet::load_dir(&dir, &[]).expect_err("missing dir");
        assert!(err[0].message.contains("cannot read the policies directory"));
    }
}
