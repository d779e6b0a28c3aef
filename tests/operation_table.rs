//! The README's S3 operation table is the contract users write policies against: every row's
//! request is classified here and must yield exactly the actions and resources the row names.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

use claimgate::classify::{ClassifyError, RequestTarget, S3Target, classify_s3};

/// One row: `| operation | request | actions | resources |`.
struct Row {
    operation: String,
    request: Vec<String>,
    actions_cell: String,
    actions: Vec<String>,
    resources: Vec<String>,
}

/// The `code spans` of a table cell.
fn spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- operation-table -->")
        .expect("table start marker");
    let end = readme
        .find("<!-- /operation-table -->")
        .expect("table end marker");
    readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| operation ") && !l.starts_with("|---"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 4, "row {line}");
            Row {
                operation: cells[0].to_string(),
                request: spans(cells[1]),
                actions_cell: cells[2].to_string(),
                actions: spans(cells[2])
                    .into_iter()
                    .filter(|s| s.contains(':') && s.starts_with("s3"))
                    .collect(),
                resources: spans(cells[3]),
            }
        })
        .collect()
}

/// Classifies the row's request, path-style, on a default (canonical-key) route.
fn classify(row: &Row) -> Result<claimgate::model::Operation, ClassifyError> {
    let (method, uri) = row.request[0].split_once(' ').unwrap();
    let mut b = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "s3.example.com");
    for header in &row.request[1..] {
        let (name, value) = header
            .split_once(": ")
            .unwrap_or_else(|| panic!("{}: header {header}", row.operation));
        b = b.header(name, value);
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    classify_s3(&parts, &RequestTarget::read(&parts)?, &S3Target::default())
}

/// What a row promises, checked; `Err` says how the code disagrees.
fn check(row: &Row) -> Result<(), String> {
    let result = classify(row);
    let base = row.operation.split(" (").next().unwrap();
    if row.actions_cell.contains("never forwarded") {
        return match result {
            Err(ClassifyError::NeverForwarded { operation, .. }) if operation == base => Ok(()),
            other => Err(format!("expected NeverForwarded, got {other:?}")),
        };
    }
    if row.actions_cell.contains("501") {
        return match result {
            Err(ClassifyError::NotImplemented { .. }) => Ok(()),
            other => Err(format!("expected NotImplemented, got {other:?}")),
        };
    }
    let op = match result {
        Ok(op) => op,
        Err(ClassifyError::BodyRequired(pending)) if base == "DeleteObjects" => {
            let op = pending.finish([("key", None)]).map_err(|e| e.to_string())?;
            let versioned = pending.finish([("key", Some("v"))]).map_err(|e| e.to_string())?;
            let got = (&op.primary().action, &versioned.primary().action);
            return if got
                == (
                    &"s3:DeleteObject".to_string(),
                    &"s3:DeleteObjectVersion".to_string(),
                )
                && op.primary().resource == "s3://bkt/key"
            {
                Ok(())
            } else {
                Err(format!("{op:?} / {versioned:?}"))
            };
        }
        Err(ClassifyError::FormRequired(pending)) if base == "PostObject" => {
            return check_form(row, &pending);
        }
        Err(e) => return Err(format!("refused: {e}")),
    };
    if op.name != base {
        return Err(format!("classified as {}", op.name));
    }
    let want: Vec<(String, String)> = match row.resources.len() {
        1 => row
            .actions
            .iter()
            .map(|a| (a.clone(), row.resources[0].clone()))
            .collect(),
        n if n == row.actions.len() => row
            .actions
            .iter()
            .cloned()
            .zip(row.resources.iter().cloned())
            .collect(),
        n => return Err(format!("{n} resources for {} actions", row.actions.len())),
    };
    let got: Vec<(String, String)> = op
        .accesses()
        .map(|a| (a.action.clone(), a.resource.to_string()))
        .collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("accesses {got:?}, the table says {want:?}"))
    }
}

/// PostObject: its key and options are form fields. A form with only `key` needs the first
/// action; with `acl` and `tagging` fields (the ones the row names), every action, all on
/// `s3://bkt/key`.
fn check_form(row: &Row, pending: &claimgate::classify::PendingPostObject) -> Result<(), String> {
    let content_type = row.request.get(1).ok_or("the row names no Content-Type")?;
    let boundary = content_type.rsplit("boundary=").next().unwrap_or_default();
    let resource = row.resources[0].replace("<key>", "key");
    for fields in [
        &[("key", "key")][..],
        &[("key", "key"), ("acl", "private"), ("tagging", "<Tagging/>")],
    ] {
        let mut body = String::new();
        for (name, value) in fields {
            body.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n"
        ));
        let form = pending
            .reader()
            .advance(body.as_bytes(), true)
            .map_err(|e| e.to_string())?
            .ok_or("the form did not complete")?;
        let op = pending.finish(&form).map_err(|e| e.to_string())?;
        let want: Vec<(String, String)> = row.actions
            [..if fields.len() == 1 { 1 } else { row.actions.len() }]
            .iter()
            .map(|a| (a.clone(), resource.clone()))
            .collect();
        let got: Vec<(String, String)> = op
            .accesses()
            .map(|a| (a.action.clone(), a.resource.to_string()))
            .collect();
        if op.name != "PostObject" || got != want {
            return Err(format!("{}: accesses {got:?}, the table says {want:?}", op.name));
        }
    }
    Ok(())
}

#[test]
fn every_row_of_the_readme_operation_table_matches_the_classifier() {
    let rows = rows();
    assert!(
        rows.len() > 100,
        "the table lists every S3 operation ({} rows)",
        rows.len()
    );
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            check(row)
                .err()
                .map(|e| format!("{} `{}`: {e}", row.operation, row.request.join("` `")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows disagree:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn every_action_the_classifier_can_ask_for_is_in_the_table() {
    let rows = rows();
    let listed: std::collections::BTreeSet<String> =
        rows.iter().flat_map(|r| r.actions.iter().cloned()).collect();
    let missing: Vec<&str> = claimgate::classify::s3_actions()
        .filter(|a| !listed.contains(*a))
        .collect();
    assert!(
        missing.is_empty(),
        "actions policies can use but the README never names: {missing:?}"
    );
}
