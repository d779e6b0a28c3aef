//! The body of a DeleteObjects request: which keys it deletes, read strictly, and the body
//! claimgate forwards in its place.
//!
//! Only `<Delete>` with `<Object><Key>…</Key>[<VersionId>…</VersionId>]</Object>` entries and
//! `<Quiet>` is understood; a DTD, another root, or any other element at the `<Delete>` level
//! is refused. Children of `<Object>` that only add conditions (`ETag`, `LastModifiedTime`,
//! `Size`) are kept.
//!
//! Two XML parsers never agree on everything (CDATA, entities, namespaces, whitespace): the
//! store's parser could read another key out of the very bytes claimgate authorized — s3s
//! drops CDATA sections that quick-xml keeps, so `<Key><![CDATA[alice/]]>bob/x</Key>` would be
//! authorized as `alice/bob/x` and delete `bob/x`. So the caller's body is never forwarded:
//! [`DeleteList::render`] writes a new one, plain and escaped, from exactly the entries that
//! were authorized.

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

/// One `<Object>` of a DeleteObjects body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteEntry {
    /// The key, as the XML holds it (not percent-encoded).
    pub key: String,
    /// `<VersionId>`, when given.
    pub version: Option<String>,
    /// Conditional-delete children (`ETag`, `LastModifiedTime`, `Size`), kept in order.
    conditions: Vec<(&'static str, String)>,
}

/// A parsed DeleteObjects body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteList {
    /// The objects, in order.
    pub objects: Vec<DeleteEntry>,
    /// `<Quiet>`, when given.
    quiet: Option<bool>,
}

impl DeleteList {
    /// `(key, version id)` of every object.
    pub fn keys(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.objects
            .iter()
            .map(|o| (o.key.as_str(), o.version.as_deref()))
    }

    /// The body forwarded upstream: the same request, written by claimgate.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Delete xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        if let Some(quiet) = self.quiet {
            out.push_str(if quiet {
                "<Quiet>true</Quiet>"
            } else {
                "<Quiet>false</Quiet>"
            });
        }
        for o in &self.objects {
            out.push_str("<Object>");
            element(&mut out, "Key", &o.key);
            if let Some(v) = &o.version {
                element(&mut out, "VersionId", v);
            }
            for (name, value) in &o.conditions {
                element(&mut out, name, value);
            }
            out.push_str("</Object>");
        }
        out.push_str("</Delete>");
        out
    }
}

/// `<name>value</name>`, the value escaped so that any XML parser reads it back exactly:
/// markup characters and the whitespace XML would normalize become references.
fn element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Parses a DeleteObjects body.
pub fn parse_delete_objects(xml: &[u8]) -> Result<DeleteList, ClassifyError> {
    let mut reader = Reader::from_reader(xml);
    let mut doc = Document::default();
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        match event {
            Event::DocType(_) => return Err(malformed("DTDs are not accepted")),
            Event::Start(e) => doc.open(e.local_name().as_ref())?,
            Event::Empty(e) => return Err(doc.empty(e.local_name().as_ref())),
            Event::Text(t) => {
                let s = t.decode().map_err(|e| malformed(format!("bad text: {e}")))?;
                let s = quick_xml::escape::unescape(&s).map_err(|e| malformed(format!("bad escape: {e}")))?;
                if !in_leaf(&doc.path) && !s.trim().is_empty() {
                    return Err(malformed("text outside the elements that hold values"));
                }
                push_text(&mut doc.text, &s, &doc.path)?;
            }
            Event::GeneralRef(r) => {
                // `&amp;` and friends arrive as references (see `crate::xml_text`).
                let c = crate::xml_text::reference_char(&r).map_err(malformed)?;
                push_text(&mut doc.text, c.encode_utf8(&mut [0; 4]), &doc.path)?;
            }
            Event::CData(t) => {
                let s = String::from_utf8(t.into_inner().into_owned())
                    .map_err(|_| malformed("a CDATA section is not UTF-8"))?;
                push_text(&mut doc.text, &s, &doc.path)?;
            }
            Event::End(_) => doc.close()?,
            Event::Eof => break,
            // Comments and processing instructions carry nothing; the body is rewritten anyway.
            _ => {}
        }
        buf.clear();
    }
    if !doc.path.is_empty() || !doc.root_seen {
        return Err(malformed("the document ends inside an element"));
    }
    Ok(DeleteList {
        objects: doc.objects,
        quiet: doc.quiet,
    })
}

/// What the parser has read so far.
#[derive(Default)]
struct Document {
    /// The open elements, outermost first.
    path: Vec<Vec<u8>>,
    objects: Vec<DeleteEntry>,
    /// The `<Object>` being read.
    current: Option<DeleteEntry>,
    quiet: Option<bool>,
    /// The text of the element being read.
    text: String,
    root_seen: bool,
}

impl Document {
    fn open(&mut self, name: &[u8]) -> Result<(), ClassifyError> {
        check_position(&self.path, name)?;
        if self.path.is_empty() && std::mem::replace(&mut self.root_seen, true) {
            return Err(malformed("the document has more than one root element"));
        }
        if name == b"Object" {
            self.current = Some(DeleteEntry {
                key: String::new(),
                version: None,
                conditions: Vec::new(),
            });
        }
        self.path.push(name.to_vec());
        self.text.clear();
        Ok(())
    }

    /// `<Name/>`: every element of the schema holds something.
    fn empty(&self, name: &[u8]) -> ClassifyError {
        if let Err(e) = check_position(&self.path, name) {
            return e;
        }
        if self.path.is_empty() {
            return malformed("the <Delete> element is empty");
        }
        malformed(format!("an empty <{}/> element", String::from_utf8_lossy(name)))
    }

    fn close(&mut self) -> Result<(), ClassifyError> {
        let name = self.path.pop().unwrap_or_default();
        let value = std::mem::take(&mut self.text);
        match (name.as_slice(), self.current.as_mut()) {
            (b"Object", _) => {
                let entry = self
                    .current
                    .take()
                    .ok_or_else(|| malformed("an unopened <Object>"))?;
                if entry.key.is_empty() {
                    return Err(malformed("an <Object> without a <Key>"));
                }
                self.objects.push(entry);
            }
            (b"Key", Some(entry)) if !entry.key.is_empty() => {
                return Err(malformed("an <Object> with more than one <Key>"));
            }
            (b"Key", Some(_)) if value.is_empty() => return Err(malformed("an empty <Key>")),
            (b"Key", Some(entry)) => entry.key = value,
            (b"VersionId", Some(entry)) if entry.version.is_some() => {
                return Err(malformed("an <Object> with more than one <VersionId>"));
            }
            (b"VersionId", Some(entry)) => entry.version = Some(value),
            (b"ETag", Some(entry)) => add_condition(entry, "ETag", value)?,
            (b"LastModifiedTime", Some(entry)) => add_condition(entry, "LastModifiedTime", value)?,
            (b"Size", Some(entry)) => add_condition(entry, "Size", value)?,
            (b"Quiet", _) if self.quiet.is_some() => {
                return Err(malformed("<Quiet> is given more than once"));
            }
            (b"Quiet", _) => {
                self.quiet = Some(match value.trim() {
                    "true" => true,
                    "false" => false,
                    other => return Err(malformed(format!("<Quiet> must be true or false, not `{other}`"))),
                });
            }
            _ => {}
        }
        Ok(())
    }
}

/// A conditional-delete element (`ETag`, `LastModifiedTime`, `Size`), at most once each.
fn add_condition(entry: &mut DeleteEntry, name: &'static str, value: String) -> Result<(), ClassifyError> {
    if entry.conditions.iter().any(|(n, _)| *n == name) {
        return Err(malformed(format!("an <Object> with more than one <{name}>")));
    }
    if name == "Size" && (value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit())) {
        return Err(malformed("<Size> must be a whole number of bytes"));
    }
    entry.conditions.push((name, value));
    Ok(())
}

/// Adds decoded text to the current value, refusing what no key can hold: control characters
/// other than tab and line breaks (XML 1.0 cannot carry them) and oversized values.
fn push_text(text: &mut String, s: &str, path: &[Vec<u8>]) -> Result<(), ClassifyError> {
    if !in_leaf(path) {
        return Ok(());
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(malformed("a value holds a control character"));
    }
    text.push_str(s);
    if text.len() > MAX_FIELD {
        return Err(malformed("a value is longer than any S3 key"));
    }
    Ok(())
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
        let keys: Vec<_> = got.keys().collect();
        assert_eq!(keys, vec![("a/b&c.txt", None), ("x", Some("v1"))]);
    }

    /// What claimgate forwards reads back, with any parser, as exactly what it authorized —
    /// whatever spelling (CDATA, references, namespaces, comments) the caller used.
    #[test]
    fn the_forwarded_body_is_written_from_the_authorized_entries() {
        let tricky = br#"<?xml version="1.0"?><!-- c --><s3:Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Quiet>true</s3:Quiet><s3:Object><s3:Key><![CDATA[alice/]]>bob/&lt;x&gt;&#9;'"</s3:Key><s3:ETag>"e"</s3:ETag></s3:Object><Object><Key>a&#13;&#10;b</Key><VersionId>v&amp;1</VersionId><Size>3</Size></Object></s3:Delete>"#;
        let parsed = parse_delete_objects(tricky).unwrap();
        let keys: Vec<_> = parsed.keys().collect();
        assert_eq!(keys, vec![("alice/bob/<x>\t'\"", None), ("a\r\nb", Some("v&1"))]);
        let rendered = parsed.render();
        assert!(
            !rendered.contains("CDATA") && !rendered.contains("s3:"),
            "{rendered}"
        );
        assert_eq!(parse_delete_objects(rendered.as_bytes()).unwrap(), parsed);
        assert!(rendered.contains("<Quiet>true</Quiet>"), "{rendered}");
        assert!(rendered.contains("<ETag>&quot;e&quot;</ETag>"), "{rendered}");
        assert!(
            rendered.contains("<Key>a&#13;&#10;b</Key><VersionId>v&amp;1</VersionId><Size>3</Size>"),
            "{rendered}"
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
            b"<Delete><Object><Key/></Object></Delete>",
            b"<Delete><Object><Key></Key></Object></Delete>",
            b"<Delete><Object><Key>a&#1;b</Key></Object></Delete>",
            b"<Delete><Quiet>maybe</Quiet><Object><Key>a</Key></Object></Delete>",
            b"<Delete><Object><Key>a</Key><ETag>1</ETag><ETag>2</ETag></Object></Delete>",
            b"",
        ] {
            assert!(
                parse_delete_objects(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
