//! The stages stay leaves: a module may use the modules below it, never the ones above.
//!
//! The request flow (DESIGN.md) is layered: shared vocabulary and plumbing at the bottom
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
            "model", "sigv4", "net", "xml_text", "diag", "clock", "secret", "metrics",
        ],
        &[
            "identity",
            "classify",
            "policy",
            "upstream",
            "pipeline",
            "server",
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
            "dev",
            "rejection",
            "body",
            "audit",
        ],
    ),
    (
        &["upstream"],
        &["pipeline", "server", "dev", "rejection", "audit"],
    ),
    (
        &["config"],
        &["upstream", "pipeline", "server", "dev", "rejection"],
    ),
    // Everything but the binary's own commands runs without the dev tooling.
    (
        &[
            "pipeline",
            "server",
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
        "use crate::{model::Access, upstream::{sign, Route}};\nfn f() { crate::pipeline::x(); }\n// crate::dev in a comment\n",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["model", "pipeline", "upstream"]
    );
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
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
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
