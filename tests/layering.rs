//! The stages stay leaves: a module may use the modules below it, never the ones above.
//!
//! The request flow (README, "What goes where") is layered: shared vocabulary and plumbing at the bottom
//! (`model`, `sigv4`, `net`, …), the stages above them (`identity`, `classify`, `policy`,
//! `upstream`), and only `pipeline`, `server`, `dev` and `main` wiring stages together. An
//! upward import is how a stage starts doing another's work (and how import circles start),
//! so this test reads every `crate::…` path in `src/` and fails on one.

use std::collections::BTreeSet;
use std::path::Path;

/// Modules each layer may not use.
const RULES: &[(&[&str], &[&str])] = &[
    // Vocabulary and plumbing: below every stage.
    (
        &[
            "model",
            "sigv4",
            "net",
            "xml_text",
            "diag",
            "clock",
            "secret",
            "metrics",
            "credential_process",
        ],
        &[
            "identity",
            "classify",
            "policy",
            "upstream",
            "pipeline",
            "server",
            "reload",
            "dev",
            "rejection",
            "config",
            "audit",
            "body",
            "form_file",
            "digest",
        ],
    ),
    // The stages: never the wiring above them, nor the rendering of their errors.
    (
        &["identity", "classify", "policy"],
        &[
            "upstream",
            "pipeline",
            "server",
            "reload",
            "dev",
            "rejection",
            "body",
            "audit",
        ],
    ),
    (
        &["upstream"],
        &["pipeline", "server", "reload", "dev", "rejection", "audit"],
    ),
    (
        &["config"],
        &["upstream", "pipeline", "server", "reload", "dev", "rejection"],
    ),
    // A request runs under one config set; replacing sets is the server's business.
    (&["pipeline"], &["server", "reload"]),
    // Everything but the binary's own commands runs without the dev tooling.
    (
        &[
            "pipeline",
            "server",
            "reload",
            "rejection",
            "audit",
            "body",
            "form_file",
            "digest",
        ],
        &["dev"],
    ),
];

#[test]
fn no_module_imports_upward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for file in rust_files(&root) {
        let rel = file.strip_prefix(&root).expect("under src");
        let layer = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file).expect("readable source");
        if code_of(&text).contains("super::super") {
            // A path that climbs out of its own module is an import the rules cannot see.
            violations.push(format!(
                "src/{} climbs with super::super; name the module by its crate path",
                rel.display()
            ));
        }
        let used = crate_modules(&text);
        for (layers, forbidden) in RULES {
            if !layers.contains(&layer.as_str()) {
                continue;
            }
            for m in used.iter().filter(|m| forbidden.contains(&m.as_str())) {
                violations.push(format!("src/{} uses crate::{m}", rel.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_reader_sees_grouped_and_inline_paths() {
    let used = crate_modules(
        "use crate::{model::Access, upstream::{sign, Route}};\nfn f() { crate::pipeline::x(); }\n// crate::dev in a comment\n\
         let u = \"s3://\"; crate::server::go(); let s = \"crate::audit\"; let q = '\"'; crate::body::x();\n",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["body", "model", "pipeline", "server", "upstream"]
    );
}

/// The source without comments and without the contents of string and char literals (a
/// `"s3://"` must not hide the rest of its line, nor a `"crate::x"` in a message count).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
                out.push('"');
            }
            // A char literal ('"', '\'') would otherwise open a string; lifetimes pass.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let literal = rest.starts_with('\\') || rest.chars().nth(1) == Some('\'');
                out.push('\'');
                if literal {
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => {
                                chars.next();
                            }
                            '\'' => break,
                            _ => {}
                        }
                    }
                    out.push('\'');
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level modules a source file names through `crate::`, comments aside: inline
/// paths (`crate::a::b`) and the first segment of each item of a `use crate::{…}` group.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let code = code_of(text);
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => item_start = true,
                    c if depth == 1 && item_start && (c.is_alphanumeric() || c == '_') => name.push(c),
                    _ if depth == 1 && item_start && !name.is_empty() => {
                        out.insert(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
            }
            if !name.is_empty() {
                out.insert(name);
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
        rest = after;
    }
    out
}
