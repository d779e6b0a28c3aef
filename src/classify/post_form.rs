//! PostObject (browser form upload): `POST /<bucket>` with a `multipart/form-data` body whose
//! `key` field names the object and whose `file` part holds its bytes.
//!
//! Like DeleteObjects, the accesses are in the body, so [`classify_s3`](super::classify_s3)
//! answers [`ClassifyError::FormRequired`] with a [`PendingPostObject`]. The pipeline feeds the
//! body to a [`FormReader`] (size-capped) until the `file` part's headers are complete; the
//! fields before it are everything S3 acts on (S3 ignores fields after the file), so nothing of
//! the file itself is ever buffered. [`PendingPostObject::finish`] then builds the operation
//! from the [`PostForm`].
//!
//! The reader is strict, because the upstream must read the same form we authorized:
//!
//! - the body starts with the first boundary (no preamble), and every part has exactly one
//!   `Content-Disposition: form-data; name="…"` and at most a `Content-Type` (plain text for
//!   fields); any other part header, a `filename` on anything but the `file` part, a
//!   duplicated parameter or header, or a field value that is not UTF-8 is refused;
//! - field names compare case-insensitively, as S3 treats them; a field given twice is
//!   ambiguous and refused, since which value a store takes is not ours to guess;
//! - a form without a `key` field or without a `file` part is refused as S3 refuses it.
//!
//! `${filename}` in the key is replaced by the file part's filename, as S3 does, and the key
//! authorized is the replaced one. The upstream receives that key literally (claimgate
//! rebuilds the fields it forwards), so a key that would still hold `${filename}` after the
//! replacement — which the store would replace a second time — is refused.

use http::header::{self, HeaderMap};
use http::request::Parts;
use memchr::memmem;

use super::ClassifyError;
use super::key::{self, KeyRule, KeyUse};
use super::s3::WRITE_HEADER_ACTIONS;
use crate::model::{Access, Operation, Resource, S3Address};

/// The most bytes the header block of one part may hold. Real forms send two short headers;
/// the bound keeps re-scanning an incomplete header block cheap.
const MAX_PART_HEADERS: usize = 8 * 1024;

/// The most fields a form may have before its `file` (s3s stops at 1000; real forms send a
/// few dozen). Bounds the work an unauthenticated caller can cause while the form is read.
const MAX_FIELDS: usize = 1000;

/// Form fields that carry the caller's credentials: read by the authenticate stage, never
/// forwarded (the upstream gets a policy claimgate signs itself).
const CREDENTIAL_FIELDS: [&str; 8] = [
    "policy",
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-signature",
    "awsaccesskeyid",
    "signature",
];

/// Fields that make the upload do more than write the object, besides the header-named ones
/// of [`WRITE_HEADER_ACTIONS`] (stores such as s3s read those from form fields too): S3's
/// own form fields for a canned ACL and for tags.
const FIELD_ACTIONS: [(&str, &str); 2] = [("acl", "s3:PutObjectAcl"), ("tagging", "s3:PutObjectTagging")];

/// The substitution S3 applies to the key field.
const FILENAME_VARIABLE: &str = "${filename}";

fn malformed(reason: impl Into<String>) -> ClassifyError {
    ClassifyError::MalformedPost {
        reason: reason.into(),
    }
}

fn invalid(reason: impl Into<String>) -> ClassifyError {
    ClassifyError::InvalidArgument {
        reason: reason.into(),
    }
}

/// Whether a request is shaped like a browser form upload: a POST whose media type is
/// `multipart/form-data`. Lets the pipeline look for credentials in the form when the
/// request carries none in its head.
pub fn is_form_upload(parts: &Parts) -> bool {
    parts.method == http::Method::POST
        && parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| media_type(v).eq_ignore_ascii_case("multipart/form-data"))
}

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// A multipart boundary, validated (RFC 2046: 1–70 of `bchars`, not ending in a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary(String);

impl Boundary {
    /// The boundary as the Content-Type gives it (without the leading `--`).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `\r\n--<boundary>`: what ends every part's content.
    pub fn delimiter(&self) -> Vec<u8> {
        format!("\r\n--{}", self.0).into_bytes()
    }
}

/// The boundary of a `multipart/form-data` request: `Ok(None)` when the request is not one
/// (no Content-Type, or another media type), an error when it is one without a usable
/// boundary, or has two Content-Type headers.
pub(super) fn form_boundary(headers: &HeaderMap) -> Result<Option<Boundary>, ClassifyError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("the request has more than one Content-Type header"));
    }
    let value = value
        .to_str()
        .map_err(|_| malformed("the Content-Type header is not visible ASCII"))?;
    if !media_type(value).eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    let mut boundary = None;
    for param in value.split(';').skip(1) {
        let (name, raw) = param.split_once('=').unwrap_or((param, ""));
        if !name.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let raw = raw.trim();
        let unquoted = match raw.strip_prefix('"') {
            Some(rest) => rest
                .strip_suffix('"')
                .ok_or_else(|| malformed("the multipart boundary has an unterminated quote"))?,
            None => raw,
        };
        if boundary.replace(unquoted).is_some() {
            return Err(malformed("the Content-Type names more than one boundary"));
        }
    }
    let boundary = boundary.ok_or_else(|| malformed("multipart/form-data without a boundary parameter"))?;
    let bchar = |b: u8| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b);
    if boundary.is_empty() || boundary.len() > 70 || boundary.ends_with(' ') || !boundary.bytes().all(bchar) {
        return Err(malformed(
            "the multipart boundary must be 1 to 70 letters, digits or '()+_,-./:=? (not ending in a space)",
        ));
    }
    Ok(Some(Boundary(boundary.to_owned())))
}

/// A PostObject request waiting for its form.
///
/// Only the classifier makes one, so a finished PostObject operation always comes from a
/// request classified as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPostObject {
    /// The bucket from the request line or Host.
    bucket: String,
    /// The route's rule for dot and empty segments, applied to the key.
    keys: KeyRule,
    /// From the Content-Type.
    boundary: Boundary,
}

impl PendingPostObject {
    pub(super) fn new(bucket: String, keys: KeyRule, boundary: Boundary) -> Self {
        PendingPostObject {
            bucket,
            keys,
            boundary,
        }
    }

    /// The bucket the object is written to.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A reader for this request's body.
    pub fn reader(&self) -> FormReader {
        FormReader::new(self.boundary.clone())
    }

    /// The operation the form asks for: `s3:PutObject` on `s3://<bucket>/<key>`, plus
    /// `s3:PutObjectAcl` for an `acl` field (or any ACL field S3 takes as a header),
    /// `s3:PutObjectTagging` for `tagging` (or `x-amz-tagging`), and the object-lock
    /// permissions for object-lock fields, as PutObject's headers need them.
    ///
    /// Refuses an empty key, a key holding NUL, a non-canonical key (per the route's
    /// [`KeyRule`]), and a `bucket` field naming another bucket than the request.
    pub fn finish(&self, form: &PostForm) -> Result<Operation, ClassifyError> {
        let key = form.key();
        if key.is_empty() || key.contains('\0') {
            return Err(invalid("the form's key is empty or holds NUL"));
        }
        key::check(key, KeyUse::Key, self.keys, "the form's key")?;
        if let Some(named) = form.field("bucket")
            && named != self.bucket
        {
            return Err(invalid(format!(
                "the form's bucket field names `{named}`, but the request is addressed to `{}`",
                self.bucket
            )));
        }
        let resource = Resource::s3_object(&self.bucket, key);
        let mut op = Operation::new("PostObject", Access::new("s3:PutObject", resource.clone()));
        for (field, action) in FIELD_ACTIONS.iter().chain(WRITE_HEADER_ACTIONS) {
            if form.field(field).is_some() && !op.needs_action(action) {
                op.also_needs(Access::new(*action, resource.clone()));
            }
        }
        op.s3 = Some(S3Address::FormUpload {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
        });
        Ok(op)
    }
}

/// The `file` part, as its headers describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The `filename` parameter, if sent.
    pub filename: Option<String>,
    /// The part's Content-Type, if sent.
    pub content_type: Option<String>,
}

/// A form read up to the content of its `file` part. `Debug` leaves out the values of the
/// credential fields (the session token, the signature, the policy); the values are wiped
/// when the form is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PostForm {
    /// Every field before the file, in order, names lowercased.
    fields: Vec<(String, String)>,
    /// The `key` field with `${filename}` replaced: the key the object is stored under.
    key: String,
    file: FilePart,
    /// Offset of the file's first content byte in the body.
    content_start: usize,
    boundary: Boundary,
}

impl std::fmt::Debug for PostForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: Vec<(&str, &str)> = (self.fields.iter())
            .map(|(n, v)| {
                let shown = if CREDENTIAL_FIELDS.contains(&n.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (n.as_str(), shown)
            })
            .collect();
        f.debug_struct("PostForm")
            .field("fields", &fields)
            .field("key", &self.key)
            .field("file", &self.file)
            .field("content_start", &self.content_start)
            .finish_non_exhaustive()
    }
}

impl Drop for PostForm {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for (name, value) in &mut self.fields {
            if CREDENTIAL_FIELDS.contains(&name.as_str()) {
                value.zeroize();
            }
        }
    }
}

impl PostForm {
    /// The key the object is stored under (`${filename}` replaced).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A field's value; `name` lowercase.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every field before the file, in order, names lowercased (the `key` field as sent).
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The fields that go upstream: all but `key` (sent as [`key`](Self::key)) and the
    /// caller's credentials.
    pub fn forwarded_fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields()
            .filter(|(n, _)| *n != "key" && !is_credential_field(n))
    }

    /// The credential fields the form carries, if any.
    pub fn credential_fields(&self) -> impl Iterator<Item = &str> {
        self.fields().map(|(n, _)| n).filter(|n| is_credential_field(n))
    }

    /// The `file` part's headers.
    pub fn file(&self) -> &FilePart {
        &self.file
    }

    /// Where the file's content starts in the body: everything before it is the field
    /// section claimgate replaces.
    pub fn content_start(&self) -> usize {
        self.content_start
    }

    /// The body's boundary.
    pub fn boundary(&self) -> &Boundary {
        &self.boundary
    }
}

/// Whether a (lowercase) field name carries credentials.
fn is_credential_field(name: &str) -> bool {
    CREDENTIAL_FIELDS.contains(&name)
}

/// Where the reader is in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the first boundary.
    Start,
    /// At a part's header block.
    Headers,
    /// Inside a field's value, which started at `start`.
    Value { name: String, start: usize },
    /// Just after a delimiter: `\r\n` (another part) or `--` (the end) follows.
    AfterDelimiter,
    /// The close delimiter came before any `file` part.
    Closed,
    /// A refusal was returned; the reader refuses from then on.
    Failed,
}

/// Reads a form's field section incrementally: feed it the body read so far, as often as new
/// bytes arrive. Each call resumes where the last one stopped, so reading a body in many
/// small frames costs time linear in its size.
#[derive(Debug, Clone)]
pub struct FormReader {
    boundary: Boundary,
    /// `\r\n--<boundary>`.
    delimiter: Vec<u8>,
    state: State,
    /// Offset of the next unread byte of structure (a part's start, a value's start, …).
    pos: usize,
    /// Where to resume searching for the end of a header block or value.
    search_from: usize,
    fields: Vec<(String, String)>,
    /// The field names seen so far, for the duplicate check in constant time.
    names: std::collections::HashSet<String>,
}

impl FormReader {
    fn new(boundary: Boundary) -> Self {
        FormReader {
            delimiter: boundary.delimiter(),
            boundary,
            state: State::Start,
            pos: 0,
            search_from: 0,
            fields: Vec::new(),
            names: std::collections::HashSet::new(),
        }
    }

    /// Reads as far as `body` (the body from its first byte, grown since the last call)
    /// allows. `Ok(Some(form))` once the `file` part's headers are complete; `Ok(None)` when
    /// more bytes are needed. `eof`: `body` is the whole body, so an incomplete form is an
    /// error.
    pub fn advance(&mut self, body: &[u8], eof: bool) -> Result<Option<PostForm>, ClassifyError> {
        loop {
            match self.step(body)? {
                Step::Continue => {}
                Step::NeedMore if eof => return Err(self.ended_early()),
                Step::NeedMore => return Ok(None),
                Step::File(form) => return Ok(Some(form)),
            }
        }
    }

    fn ended_early(&self) -> ClassifyError {
        match self.state {
            State::Closed => {
                invalid("POST requires exactly one file upload per request: the form has no file part")
            }
            _ => malformed("the form ends before its file part"),
        }
    }

    fn step(&mut self, body: &[u8]) -> Result<Step, ClassifyError> {
        let rest = &body[self.pos.min(body.len())..];
        // Every path that goes on sets the next state; a refusal leaves `Failed`.
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Start => {
                let first = &self.delimiter[2..];
                if rest.len() < first.len() + 2 {
                    self.state = State::Start;
                    return if first.starts_with(&rest[..rest.len().min(first.len())]) {
                        Ok(Step::NeedMore)
                    } else {
                        Err(malformed("the body does not start with the multipart boundary"))
                    };
                }
                if !rest.starts_with(first) || &rest[first.len()..first.len() + 2] != b"\r\n" {
                    return Err(malformed("the body does not start with the multipart boundary"));
                }
                self.pos += first.len() + 2;
                self.search_from = self.pos;
                self.state = State::Headers;
                Ok(Step::Continue)
            }
            State::Headers => self.headers(body),
            State::Value { name, start } => {
                // The CRLF that ends the header block also opens a delimiter: a value that
                // begins `--<boundary>` is empty to every RFC 2046 reader (s3s among them),
                // so the search starts two bytes early and claimgate reads it the same way.
                let earliest = start.saturating_sub(2);
                let from = self.search_from.max(earliest);
                match memmem::find(body.get(from..).unwrap_or_default(), &self.delimiter) {
                    None => {
                        self.search_from = body.len().saturating_sub(self.delimiter.len() - 1).max(earliest);
                        self.state = State::Value { name, start };
                        Ok(Step::NeedMore)
                    }
                    Some(i) => {
                        let end = from + i;
                        let value = std::str::from_utf8(body.get(start..end).unwrap_or_default())
                            .map_err(|_| malformed(format!("the value of field `{name}` is not UTF-8")))?;
                        self.fields.push((name, value.to_owned()));
                        self.pos = end + self.delimiter.len();
                        self.state = State::AfterDelimiter;
                        Ok(Step::Continue)
                    }
                }
            }
            State::AfterDelimiter => {
                if rest.len() < 2 {
                    self.state = State::AfterDelimiter;
                    return Ok(Step::NeedMore);
                }
                match &rest[..2] {
                    b"\r\n" => {
                        self.pos += 2;
                        self.search_from = self.pos;
                        self.state = State::Headers;
                        Ok(Step::Continue)
                    }
                    b"--" => {
                        self.state = State::Closed;
                        Err(self.ended_early())
                    }
                    _ => Err(malformed(
                        "a multipart boundary is followed by something other than CRLF or --",
                    )),
                }
            }
            State::Closed => {
                self.state = State::Closed;
                Err(self.ended_early())
            }
            State::Failed => Err(malformed("the form was already refused")),
        }
    }

    /// A part's header block: finds its end, reads `Content-Disposition` and `Content-Type`.
    fn headers(&mut self, body: &[u8]) -> Result<Step, ClassifyError> {
        let start = self.pos;
        if body.len() >= start + 2 && &body[start..start + 2] == b"\r\n" {
            return Err(malformed("a form part has no Content-Disposition header"));
        }
        let from = self.search_from.max(start);
        let Some(i) = memmem::find(body.get(from..).unwrap_or_default(), b"\r\n\r\n") else {
            if body.len().saturating_sub(start) > MAX_PART_HEADERS {
                return Err(malformed(format!(
                    "a form part's headers are longer than {MAX_PART_HEADERS} bytes"
                )));
            }
            self.search_from = body.len().saturating_sub(3).max(start);
            self.state = State::Headers;
            return Ok(Step::NeedMore);
        };
        let end = from + i;
        if end - start > MAX_PART_HEADERS {
            return Err(malformed(format!(
                "a form part's headers are longer than {MAX_PART_HEADERS} bytes"
            )));
        }
        let block = std::str::from_utf8(&body[start..end])
            .map_err(|_| malformed("a form part's headers are not UTF-8"))?;
        let part = PartHeaders::parse(block)?;
        let content = end + 4;
        let name = part.name.to_ascii_lowercase();
        if name == "file" {
            return self.file(part, content).map(Step::File);
        }
        if part.filename.is_some() {
            return Err(malformed(format!(
                "field `{}` has a filename: only the file part may carry one",
                part.name
            )));
        }
        if let Some(ct) = &part.content_type
            && !is_plain_text(ct)
        {
            return Err(malformed(format!(
                "field `{}` has Content-Type {ct:?}: form fields are plain text",
                part.name
            )));
        }
        if !self.names.insert(name.clone()) {
            return Err(invalid(format!(
                "the form field `{name}` is given more than once (names compare case-insensitively)"
            )));
        }
        if self.names.len() > MAX_FIELDS {
            return Err(malformed(format!(
                "the form has more than {MAX_FIELDS} fields before its file"
            )));
        }
        self.pos = content;
        self.search_from = content.saturating_sub(2);
        self.state = State::Value { name, start: content };
        Ok(Step::Continue)
    }

    /// The `file` part's headers are complete: the form is read.
    fn file(&mut self, part: PartHeaders, content_start: usize) -> Result<PostForm, ClassifyError> {
        let raw_key = self
            .fields
            .iter()
            .find(|(n, _)| n == "key")
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| {
                invalid(
                    "Bucket POST must contain a field named 'key'. If it is specified, please check the \
                     order of the fields (the file must come last).",
                )
            })?;
        let key = if raw_key.contains(FILENAME_VARIABLE) {
            let filename = part
                .filename
                .as_deref()
                .ok_or_else(|| invalid("the key uses ${filename}, but the file part has no filename"))?;
            raw_key.replace(FILENAME_VARIABLE, filename)
        } else {
            raw_key.to_owned()
        };
        if key.contains(FILENAME_VARIABLE) {
            return Err(invalid(
                "the key still holds ${filename} after the replacement, which the store would replace again",
            ));
        }
        if memmem::find(key.as_bytes(), &self.delimiter).is_some() {
            return Err(invalid("the key holds the form's boundary"));
        }
        Ok(PostForm {
            fields: std::mem::take(&mut self.fields),
            key,
            file: FilePart {
                filename: part.filename,
                content_type: part.content_type,
            },
            content_start,
            boundary: self.boundary.clone(),
        })
    }
}

/// What one call of [`FormReader::step`] achieved.
enum Step {
    Continue,
    NeedMore,
    File(PostForm),
}

/// `text/plain`, optionally with a UTF-8 or US-ASCII charset: the only type a field may
/// declare (anything else would change how its bytes read).
fn is_plain_text(content_type: &str) -> bool {
    let mut params = content_type.split(';');
    if !params
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("text/plain")
    {
        return false;
    }
    params.all(|p| {
        let (name, value) = p.split_once('=').unwrap_or((p, ""));
        name.trim().eq_ignore_ascii_case("charset")
            && ["utf-8", "us-ascii", "\"utf-8\""]
                .iter()
                .any(|c| value.trim().eq_ignore_ascii_case(c))
    })
}

/// One part's headers, read strictly.
#[derive(Debug, PartialEq, Eq)]
struct PartHeaders {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
}

impl PartHeaders {
    /// Parses `Name: value` lines (CRLF-separated, no folding).
    fn parse(block: &str) -> Result<Self, ClassifyError> {
        let (mut disposition, mut content_type) = (None, None);
        for line in block.split("\r\n") {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| malformed("a form part has a header line without a colon"))?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(malformed("a form part has a malformed header name"));
            }
            let value = value.trim_matches([' ', '\t']);
            if value.chars().any(char::is_control) {
                return Err(malformed("a form part's header holds a control character"));
            }
            let slot = if name.eq_ignore_ascii_case("content-disposition") {
                &mut disposition
            } else if name.eq_ignore_ascii_case("content-type") {
                &mut content_type
            } else {
                return Err(malformed(format!(
                    "unexpected header `{name}` in a form part: only Content-Disposition and Content-Type are read"
                )));
            };
            if slot.replace(value).is_some() {
                return Err(malformed(format!("a form part has two {name} headers")));
            }
        }
        let disposition =
            disposition.ok_or_else(|| malformed("a form part has no Content-Disposition header"))?;
        let (name, filename) = content_disposition(disposition)?;
        Ok(PartHeaders {
            name,
            filename,
            content_type: content_type.map(str::to_owned),
        })
    }
}

/// `form-data; name="…"[; filename="…"]`, parameters in any order, names case-insensitive,
/// values quoted (a quoted value holds no `"`).
fn content_disposition(value: &str) -> Result<(String, Option<String>), ClassifyError> {
    let bad = |why: &str| {
        malformed(format!(
            "Content-Disposition {why}: expected form-data; name=\"…\""
        ))
    };
    let (kind, mut rest) = value.split_at(value.find(';').unwrap_or(value.len()));
    if !kind
        .trim_end_matches([' ', '\t'])
        .eq_ignore_ascii_case("form-data")
    {
        return Err(bad("is not form-data"));
    }
    let (mut name, mut filename) = (None, None);
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix(';')
            .ok_or_else(|| bad("has text between its parameters"))?
            .trim_start_matches([' ', '\t']);
        let eq = rest
            .find('=')
            .ok_or_else(|| bad("has a parameter without a value"))?;
        let param = rest[..eq].trim_end_matches([' ', '\t']);
        let after = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let quoted = after
            .strip_prefix('"')
            .ok_or_else(|| bad("has an unquoted parameter value"))?;
        let close = quoted.find('"').ok_or_else(|| bad("has an unterminated quote"))?;
        let val = &quoted[..close];
        rest = &quoted[close + 1..];
        let slot = if param.eq_ignore_ascii_case("name") {
            &mut name
        } else if param.eq_ignore_ascii_case("filename") {
            &mut filename
        } else {
            return Err(bad(&format!("has an unexpected parameter `{param}`")));
        };
        if slot.replace(val.to_owned()).is_some() {
            return Err(bad(&format!("gives `{param}` twice")));
        }
    }
    let name = name.ok_or_else(|| bad("has no name"))?;
    if name.is_empty() {
        return Err(bad("has an empty name"));
    }
    Ok((name, filename))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &str = "----cgTestBoundary7";

    fn part(name: &str, value: &str) -> String {
        format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    }

    fn body(fields: &[(&str, &str)], file_headers: &str, content: &str) -> Vec<u8> {
        let mut s: String = fields.iter().map(|(n, v)| part(n, v)).collect();
        s.push_str(&format!(
            "--{B}\r\n{file_headers}\r\n\r\n{content}\r\n--{B}--\r\n"
        ));
        s.into_bytes()
    }

    const FILE: &str =
        "Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain";

    fn pending() -> PendingPostObject {
        PendingPostObject::new("bkt".into(), KeyRule::Canonical, Boundary(B.into()))
    }

    /// Reads a whole body at once, then in 1..=7-byte steps: both must agree.
    fn read(body: &[u8]) -> Result<PostForm, ClassifyError> {
        let whole = pending()
            .reader()
            .advance(body, true)
            .map(|f| f.expect("complete at eof"));
        for step in 1..=7 {
            let mut reader = pending().reader();
            let mut got = None;
            let mut end = 0;
            while got.is_none() {
                end = (end + step).min(body.len());
                let eof = end == body.len();
                match reader.advance(&body[..end], eof) {
                    Ok(Some(form)) => got = Some(Ok(form)),
                    Ok(None) => assert!(!eof),
                    Err(e) => got = Some(Err(e)),
                }
            }
            assert_eq!(got.unwrap(), whole, "step {step}");
        }
        whole
    }

    fn code(r: &Result<PostForm, ClassifyError>) -> &'static str {
        match r {
            Ok(_) => "ok",
            Err(ClassifyError::MalformedPost { .. }) => "MalformedPost",
            Err(ClassifyError::InvalidArgument { .. }) => "InvalidArgument",
            Err(_) => "other",
        }
    }

    #[test]
    fn reads_fields_up_to_the_file() {
        let b = body(
            &[
                ("Key", "uploads/${filename}"),
                ("acl", "private"),
                ("x-amz-meta-run", "r 7\r\nline"),
            ],
            FILE,
            "hello",
        );
        let form = read(&b).unwrap();
        assert_eq!(form.key(), "uploads/a.txt");
        assert_eq!(form.field("key"), Some("uploads/${filename}"));
        assert_eq!(form.field("x-amz-meta-run"), Some("r 7\r\nline"));
        assert_eq!(form.file().filename.as_deref(), Some("a.txt"));
        assert_eq!(form.file().content_type.as_deref(), Some("text/plain"));
        assert_eq!(&b[form.content_start()..form.content_start() + 5], b"hello");
        let op = pending().finish(&form).unwrap();
        assert_eq!(op.name, "PostObject");
        let got: Vec<String> = op
            .accesses()
            .map(|a| format!("{} {}", a.action, a.resource))
            .collect();
        assert_eq!(
            got,
            [
                "s3:PutObject s3://bkt/uploads/a.txt",
                "s3:PutObjectAcl s3://bkt/uploads/a.txt"
            ]
        );
        assert_eq!(
            op.s3,
            Some(S3Address::FormUpload {
                bucket: "bkt".into(),
                key: "uploads/a.txt".into()
            })
        );
    }

    /// A value that begins with the boundary is empty to RFC 2046 readers (s3s among them),
    /// and what follows is another part: claimgate reads it the same way, so the smuggled
    /// part is seen — and here refused as a second `key`.
    #[test]
    fn a_value_opening_with_the_boundary_is_empty_as_the_store_reads_it() {
        let smuggled = format!("--{B}\r\nContent-Disposition: form-data; name=\"x-ignore-z\"\r\n\r\nq");
        let form = read(&body(&[("key", "k"), ("x-amz-meta-a", &smuggled)], FILE, "x")).unwrap();
        assert_eq!(form.field("x-amz-meta-a"), Some(""));
        assert_eq!(form.field("x-ignore-z"), Some("q"));
        let second_key = format!("--{B}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nother");
        let r = read(&body(&[("key", "k"), ("x-amz-meta-a", &second_key)], FILE, "x"));
        assert_eq!(code(&r), "InvalidArgument", "{r:?}");
    }

    #[test]
    fn more_fields_than_any_form_needs_are_refused() {
        let names: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("x-ignore-{i}")).collect();
        let mut fields: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        fields.push(("key", "k"));
        let r = pending().reader().advance(&body(&fields, FILE, "x"), true);
        assert!(matches!(r, Err(ClassifyError::MalformedPost { .. })), "{r:?}");
    }

    #[test]
    fn option_fields_add_their_permissions() {
        let b = body(
            &[
                ("key", "k"),
                ("tagging", "<Tagging/>"),
                ("x-amz-acl", "public-read"),
                ("x-amz-object-lock-mode", "GOVERNANCE"),
            ],
            FILE,
            "",
        );
        let op = pending().finish(&read(&b).unwrap()).unwrap();
        let actions: Vec<&str> = op.accesses().map(|a| a.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "s3:PutObject",
                "s3:PutObjectTagging",
                "s3:PutObjectAcl",
                "s3:PutObjectRetention"
            ]
        );
    }

    #[test]
    fn credentials_are_set_apart() {
        let b = body(
            &[
                ("key", "k"),
                ("Policy", "e30="),
                ("X-Amz-Signature", "00"),
                ("content-type", "image/png"),
            ],
            FILE,
            "",
        );
        let form = read(&b).unwrap();
        assert_eq!(
            form.credential_fields().collect::<Vec<_>>(),
            ["policy", "x-amz-signature"]
        );
        assert_eq!(
            form.forwarded_fields().collect::<Vec<_>>(),
            [("content-type", "image/png")]
        );
    }

    #[test]
    fn refuses_what_s3_refuses_and_what_is_ambiguous() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (body(&[("acl", "private")], FILE, ""), "InvalidArgument"),
            (format!("{}--{B}--\r\n", part("key", "k")).into_bytes(), "InvalidArgument"),
            (body(&[("key", "a"), ("KEY", "b")], FILE, ""), "InvalidArgument"),
            (body(&[("key", "${filename}")], "Content-Disposition: form-data; name=\"file\"", ""), "InvalidArgument"),
            (
                body(&[("key", "x${filename}")], "Content-Disposition: form-data; name=\"file\"; filename=\"${filename}\"", ""),
                "InvalidArgument",
            ),
            (body(&[("key", "k")], "Content-Disposition: form-data; name=\"file\"; filename=\"a\"; filename=\"b\"", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Disposition: attachment; name=\"file\"", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Disposition: form-data; name=file", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''a", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Disposition: form-data; name=\"file\"\r\nX-Other: 1", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Disposition: form-data; name=\"file\"\r\nContent-Disposition: form-data; name=\"file\"", ""), "MalformedPost"),
            (body(&[("key", "k")], "Content-Type: text/plain", ""), "MalformedPost"),
            (format!("preamble\r\n{}", String::from_utf8(body(&[("key", "k")], FILE, "")).unwrap()).into_bytes(), "MalformedPost"),
            (
                format!("--{B}\r\nContent-Disposition: form-data; name=\"key\"; filename=\"k\"\r\n\r\nk\r\n--{B}\r\n{FILE}\r\n\r\nx").into_bytes(),
                "MalformedPost",
            ),
            (
                format!("--{B}\r\nContent-Disposition: form-data; name=\"key\"\r\nContent-Type: application/json\r\n\r\nk\r\n--{B}\r\n{FILE}\r\n\r\nx").into_bytes(),
                "MalformedPost",
            ),
            (
                [
                    format!("--{B}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\n").into_bytes(),
                    vec![0xff],
                    format!("\r\n--{B}\r\n{FILE}\r\n\r\n").into_bytes(),
                ]
                .concat(),
                "MalformedPost",
            ),
            (format!("--{B}\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nk\r\n--{B}xx{FILE}\r\n\r\n").into_bytes(), "MalformedPost"),
            (part("key", "k").into_bytes(), "MalformedPost"),
            (Vec::new(), "MalformedPost"),
        ];
        for (b, want) in cases {
            assert_eq!(code(&read(&b)), want, "{}", String::from_utf8_lossy(&b));
        }
        // quoted, case-insensitive parameter names are fine; so is a text/plain field
        let ok = format!(
            "--{B}\r\ncontent-disposition: form-data;name=\"key\"\r\ncontent-type: text/plain; charset=UTF-8\r\n\r\nk\r\n--{B}\r\nContent-Disposition: form-data; FILENAME=\"f\" ; Name=\"FILE\"\r\n\r\n"
        );
        assert_eq!(read(ok.as_bytes()).unwrap().file().filename.as_deref(), Some("f"));
    }

    #[test]
    fn traversal_keys_are_refused_after_substitution() {
        for (key, filename) in [
            ("imagenet/../pii/x", "f"),
            ("imagenet/${filename}", "../x"),
            ("${filename}", "a\\..\\b"),
        ] {
            let b = body(
                &[("key", key)],
                &format!("Content-Disposition: form-data; name=\"file\"; filename=\"{filename}\""),
                "",
            );
            let err = pending().finish(&read(&b).unwrap()).unwrap_err();
            assert!(
                matches!(err, ClassifyError::InvalidUri { .. }),
                "{key} {filename}: {err:?}"
            );
        }
        let b = body(&[("key", "k"), ("bucket", "other")], FILE, "");
        assert!(matches!(
            pending().finish(&read(&b).unwrap()),
            Err(ClassifyError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn part_headers_are_bounded() {
        let mut b = format!("--{B}\r\nContent-Disposition: form-data; name=\"");
        b.push_str(&"k".repeat(MAX_PART_HEADERS + 10));
        let mut reader = pending().reader();
        assert!(matches!(
            reader.advance(b.as_bytes(), false),
            Err(ClassifyError::MalformedPost { .. })
        ));
    }

    fn headers(content_type: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in content_type {
            h.append(header::CONTENT_TYPE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        let b = |v: &str| form_boundary(&headers(&[v])).map(|o| o.map(|b| b.as_str().to_owned()));
        assert_eq!(b("multipart/form-data; boundary=abc"), Ok(Some("abc".into())));
        assert_eq!(
            b("Multipart/Form-Data;boundary=\"a b:c\""),
            Ok(Some("a b:c".into()))
        );
        assert_eq!(
            b("multipart/form-data; charset=utf-8; BOUNDARY=x"),
            Ok(Some("x".into()))
        );
        assert_eq!(b("application/xml"), Ok(None));
        assert_eq!(form_boundary(&HeaderMap::new()), Ok(None));
        for bad in [
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"abc",
            "multipart/form-data; boundary=a; boundary=b",
            "multipart/form-data; boundary=a\"b",
            "multipart/form-data; boundary=\"ab \"",
        ] {
            assert!(b(bad).is_err(), "{bad}");
        }
        let long = format!("multipart/form-data; boundary={}", "a".repeat(71));
        assert!(b(&long).is_err());
        assert!(
            form_boundary(&headers(&[
                "multipart/form-data; boundary=a",
                "multipart/form-data; boundary=b"
            ]))
            .is_err()
        );
    }
}
