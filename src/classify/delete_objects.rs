//! The body of a DeleteObjects request: which keys it deletes, read strictly.
//!
//! Only `<Delete>` with `<Object><Key>…</Key>[<VersionId>…</VersionId>]</Object>` entries and
//! `<Quiet>` is understood; a DTD, another root, or any other element at the `<Delete>` level
//! is refused, so the keys authorized are exactly the keys the upstream will delete. Children
//! of `<Object>` that only add conditions (`ETag`, `LastModifiedTime`, `Size`) are allowed.

use quick_xml::Reader;
use quick_xml::events::Event;

use super::ClassifyError;

/// Most bytes a key or version id may hold (S3's key limit is 1024).
const MAX_FIELD: usize = 4096;

fn malformed(reason: impl Into<String>) -> ClassifyError {
    ClassifyError::MalformedXml {
        reason: reason.into(),
    }
}

/// `(key, version id)` for every `<Object>` of a DeleteObjects body.
pub fn parse_delete_objects(xml: &[u8]) -> Result<Vec<(String, Option<String>)>, ClassifyError> {
    let mut reader = Reader::from_reader(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut objects = Vec::new();
    let mut key: Option<String> = None;
    let mut version: Option<String> = None;
    let mut text = String::new();
    let mut buf = Vec::new();
    let mut root_seen = false;
    let mut quiet_seen = false;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        match event {
            Event::DocType(_) => return Err(malformed("DTDs are not accepted")),
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_vec();
                check_position(&path, &name)?;
                if path.is_empty() && std::mem::replace(&mut root_seen, true) {
                    return Err(malformed("the document has more than one root element"));
                }
                if name == b"Quiet" && std::mem::replace(&mut quiet_seen, true) {
                    return Err(malformed("<Quiet> is given more than once"));
                }
                if name == b"Object" {
                    key = None;
                    version = None;
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                let name = e.local_name().as_ref().to_vec();
                check_position(&path, &name)?;
                if path.is_empty() {
                    return Err(malformed("the <Delete> element is empty"));
                }
                if name == b"Object" {
                    return Err(malformed("an <Object> without a <Key>"));
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| malformed(format!("bad text: {e}")))?;
                let s = quick_xml::escape::unescape(&s).map_err(|e| malformed(format!("bad escape: {e}")))?;
                if !in_leaf(&path) && !s.trim().is_empty() {
                    return Err(malformed("text outside the elements that hold values"));
                }
                text.push_str(&s);
                if text.len() > MAX_FIELD {
                    return Err(malformed("a value is longer than any S3 key"));
                }
            }
            Event::GeneralRef(r) => {
                // `&amp;` and friends arrive as references; only XML's five are allowed.
                let name = r.decode().map_err(|e| malformed(format!("bad reference: {e}")))?;
                let c = match name.as_ref() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    other => match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => return Err(malformed(format!("unknown entity &{other};"))),
                    },
                };
                text.push(c);
            }
            Event::CData(t) => text.push_str(&String::from_utf8_lossy(&t.into_inner())),
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                match (name.as_slice(), path.last().map(Vec::as_slice)) {
                    (b"Key", Some(b"Object")) if key.is_some() => {
                        return Err(malformed("an <Object> with more than one <Key>"));
                    }
                    (b"Key", Some(b"Object")) => key = Some(std::mem::take(&mut text)),
                    (b"VersionId", Some(b"Object")) if version.is_some() => {
                        return Err(malformed("an <Object> with more than one <VersionId>"));
                    }
                    (b"VersionId", Some(b"Object")) => version = Some(std::mem::take(&mut text)),
                    (b"Object", _) => {
                        let k = key
                            .take()
                            .ok_or_else(|| malformed("an <Object> without a <Key>"))?;
                        objects.push((k, version.take()));
                    }
                    _ => {}
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !path.is_empty() {
        return Err(malformed("the document ends inside an element"));
    }
    Ok(objects)
}

/// Whether the innermost open element holds a value (text is meaningful there).
fn in_leaf(path: &[Vec<u8>]) -> bool {
    matches!(
        path.last().map(Vec::as_slice),
        Some(b"Key" | b"VersionId" | b"Quiet" | b"ETag" | b"LastModifiedTime" | b"Size")
    )
}

/// Refuses elements anywhere but where DeleteObjects puts them.
fn check_position(path: &[Vec<u8>], name: &[u8]) -> Result<(), ClassifyError> {
    let ok = match path.iter().map(Vec::as_slice).collect::<Vec<_>>().as_slice() {
        [] => name == b"Delete",
        [b"Delete"] => name == b"Object" || name == b"Quiet",
        [b"Delete", b"Object"] => matches!(
            name,
            b"Key" | b"VersionId" | b"ETag" | b"LastModifiedTime" | b"Size"
        ),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(malformed(format!(
            "unexpected element <{}> in a DeleteObjects request",
            String::from_utf8_lossy(name)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_versions() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>a/b&amp;c.txt</Key></Object><Object><Key>x</Key><VersionId>v1</VersionId></Object><Quiet>true</Quiet></Delete>"#;
        let got = parse_delete_objects(xml).unwrap();
        assert_eq!(
            got,
            vec![
                ("a/b&c.txt".to_string(), None),
                ("x".to_string(), Some("v1".to_string()))
            ]
        );
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            &b"<Delete><Object><Key>a</Key></Object>"[..],
            b"<Other><Object><Key>a</Key></Object></Other>",
            b"<Delete><Bucket>b</Bucket></Delete>",
            b"<Delete><Object><Key>a</Key><Key2>b</Key2></Object></Delete>",
            b"<Delete><Object><VersionId>v</VersionId></Object></Delete>",
            b"<!DOCTYPE x [<!ENTITY e \"boom\">]><Delete><Object><Key>&e;</Key></Object></Delete>",
            b"<Delete><Object><Key>&e;</Key></Object></Delete>",
            b"not xml <<<",
            b"<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>",
            b"<Delete><Object><Key>a</Key><VersionId>1</VersionId><VersionId>2</VersionId></Object></Delete>",
            b"<Delete><Object><Key>a</Key></Object></Delete><Delete><Object><Key>b</Key></Object></Delete>",
            b"<Delete><Quiet>true</Quiet><Quiet>false</Quiet><Object><Key>a</Key></Object></Delete>",
            b"<Delete>b<Object><Key>a</Key></Object></Delete>",
            b"<Delete><Object>b<Key>a</Key></Object></Delete>",
            b"<Delete/>",
        ] {
            assert!(
                parse_delete_objects(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
