//! Multipart upload ids bound to the bucket and key they were created for.
//!
//! Why: every caller reaches the store with the route's one access key, and stores such as
//! s3s-fs (what `claimgate dev` runs) tie an upload id to nothing but that key. A caller
//! allowed to write `checkpoints/alice/*` who learns another user's upload id (a
//! ListMultipartUploads answer lists them) could otherwise add parts to it, complete it,
//! abort it or list its parts under her own key — taking or corrupting someone else's
//! upload. AWS S3 binds the id to its key; claimgate does not rely on the store doing so.
//!
//! How: callers only ever see `<store id>~<tag>`, where the tag is the first 16 bytes of
//! HMAC-SHA256(binding key, `bucket NUL key NUL store id`), base64url without padding.
//! [`unwrap_request`] checks the tag against the bucket and key the request was authorized
//! for and puts the bare store id back in the forwarded query; a missing or foreign tag is
//! S3's own `NoSuchUpload`, and the request never reaches the store. [`rewrite_answer`]
//! tags the ids in the store's answers (CreateMultipartUpload, ListParts,
//! ListMultipartUploads).
//!
//! The binding key is the route's `upload_id_key`, the same on every replica in front of the
//! store. Without one (allowed only for a route with a static secret) it is derived from that
//! secret, and rotating the secret then invalidates the ids of uploads in flight (they must
//! be restarted).

use std::borrow::Cow;

use aws_lc_rs::hmac;
use base64::Engine as _;
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::model::{Operation, S3Address};

/// The largest store answer read whole to tag its upload ids. The answers rewritten are
/// small XML listings (at most 1000 uploads or parts); anything larger is refused.
pub const MAX_ANSWER: usize = 4 << 20;

/// Separates the store's id from the tag in the id callers see. Base64url never produces it.
const SEPARATOR: char = '~';

/// Bytes of the HMAC kept in the tag: 128 bits, beyond guessing.
const TAG_BYTES: usize = 16;

/// Context string of the binding-key derivation; a new scheme gets a new version.
const DERIVATION: &[u8] = b"claimgate upload-id binding v1";

/// S3's message for an unknown upload.
const NO_SUCH_UPLOAD: &str = "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.";

/// Why an upload id, or a store answer carrying them, could not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadIdError {
    /// The caller's id carries no tag, or one issued for another bucket, key or store id.
    /// Answered exactly as S3 answers an unknown upload; `detail` goes to the audit record.
    #[error("{NO_SUCH_UPLOAD}")]
    NoSuchUpload {
        /// Which check failed (audit only).
        detail: &'static str,
    },
    /// The store's answer is larger than [`MAX_ANSWER`]; its ids cannot be tagged.
    #[error("the upstream's answer is larger than the {max} bytes claimgate reads to bind its upload ids")]
    AnswerTooLarge {
        /// The cap.
        max: usize,
    },
    /// The store's answer is not the XML document the operation returns.
    #[error("the upstream's answer could not be read to bind its upload ids: {reason}")]
    MalformedAnswer {
        /// Why.
        reason: String,
    },
}

fn malformed(reason: impl Into<String>) -> UploadIdError {
    UploadIdError::MalformedAnswer {
        reason: reason.into(),
    }
}

/// The per-route key that tags upload ids.
pub struct UploadIdBinding {
    key: hmac::Key,
}

impl std::fmt::Debug for UploadIdBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UploadIdBinding(..)")
    }
}

impl UploadIdBinding {
    /// Derives the binding key from the route's secret access key:
    /// HMAC-SHA256(secret, "claimgate upload-id binding v1").
    pub fn from_secret(secret: &[u8]) -> UploadIdBinding {
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), DERIVATION);
        UploadIdBinding {
            key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    fn mac(&self, bucket: &str, key: &str, store_id: &str) -> [u8; TAG_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(bucket.as_bytes());
        ctx.update(b"\0");
        ctx.update(key.as_bytes());
        ctx.update(b"\0");
        ctx.update(store_id.as_bytes());
        let full = ctx.sign();
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(&full.as_ref()[..TAG_BYTES]);
        out
    }

    /// The id a caller sees for the store's `store_id` of an upload to `bucket`/`key`.
    pub fn tag(&self, bucket: &str, key: &str, store_id: &str) -> String {
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.mac(bucket, key, store_id));
        format!("{store_id}{SEPARATOR}{tag}")
    }

    /// The store id inside `presented`, if its tag was issued for `bucket`/`key`.
    pub fn open<'a>(&self, bucket: &str, key: &str, presented: &'a str) -> Result<&'a str, UploadIdError> {
        let (store_id, tag) = presented
            .rsplit_once(SEPARATOR)
            .ok_or(UploadIdError::NoSuchUpload {
                detail: "the upload id carries no claimgate tag",
            })?;
        let wrong = UploadIdError::NoSuchUpload {
            detail: "the upload id's tag was not issued for this bucket and key",
        };
        let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| wrong.clone())?;
        aws_lc_rs::constant_time::verify_slices_are_equal(&tag, &self.mac(bucket, key, store_id))
            .map_err(|_| wrong)?;
        Ok(store_id)
    }
}

/// Which store answer must have its upload ids tagged, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `<InitiateMultipartUploadResult>` or `<ListPartsResult>`: one `<UploadId>`, for the
    /// request's bucket and key.
    Single {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// `<ListMultipartUploadsResult>`: each upload's id tagged with its own `<Key>`, the
    /// markers with theirs.
    Uploads {
        /// The bucket.
        bucket: String,
        /// `encoding-type=url` was asked for: keys in the answer are percent-encoded.
        url_keys: bool,
    },
}

/// Whether the operation carries or returns upload ids.
pub fn involves(op: &Operation) -> bool {
    matches!(
        op.name,
        "CreateMultipartUpload"
            | "UploadPart"
            | "UploadPartCopy"
            | "CompleteMultipartUpload"
            | "AbortMultipartUpload"
            | "ListParts"
            | "ListMultipartUploads"
    )
}

/// Checks the tag of every upload id the request carries against the bucket and key it was
/// authorized for, and rewrites `uri`'s query to carry the bare store ids (`uploadId`; for
/// ListMultipartUploads `upload-id-marker`, bound to `key-marker`). Every other parameter is
/// kept byte for byte. Returns what the store's answer needs, if anything.
pub fn unwrap_request(
    binding: &UploadIdBinding,
    op: &Operation,
    uri: &mut http::Uri,
) -> Result<Option<Answer>, UploadIdError> {
    let query = uri.query().unwrap_or_default();
    let (bucket, key, param, answer) = match (op.name, &op.s3) {
        ("CreateMultipartUpload", Some(S3Address::Object { bucket, key })) => {
            return Ok(Some(Answer::Single {
                bucket: bucket.clone(),
                key: key.clone(),
            }));
        }
        (
            "UploadPart" | "UploadPartCopy" | "CompleteMultipartUpload" | "AbortMultipartUpload",
            Some(S3Address::Object { bucket, key }),
        ) => (bucket.clone(), key.clone(), "uploadId", None),
        ("ListParts", Some(S3Address::Object { bucket, key })) => (
            bucket.clone(),
            key.clone(),
            "uploadId",
            Some(Answer::Single {
                bucket: bucket.clone(),
                key: key.clone(),
            }),
        ),
        ("ListMultipartUploads", Some(S3Address::Bucket(bucket))) => {
            let key_marker = param_value(query, "key-marker").unwrap_or_default();
            let url_keys = param_value(query, "encoding-type").is_some_and(|v| v.eq_ignore_ascii_case("url"));
            let answer = Some(Answer::Uploads {
                bucket: bucket.clone(),
                url_keys,
            });
            (
                bucket.clone(),
                key_marker.into_owned(),
                "upload-id-marker",
                answer,
            )
        }
        _ => return Ok(None),
    };
    let mut changed = false;
    let mut pairs = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(name) != param {
            pairs.push(Cow::Borrowed(pair));
            continue;
        }
        let presented = form_decode(value);
        if presented.is_empty() && param == "upload-id-marker" {
            // An empty marker means "from the start", as S3 reads it.
            pairs.push(Cow::Borrowed(pair));
            continue;
        }
        let store_id = binding.open(&bucket, &key, &presented)?;
        let encoded = percent_encoding::utf8_percent_encode(store_id, crate::sigv4::UNRESERVED);
        pairs.push(Cow::Owned(format!("{name}={encoded}")));
        changed = true;
    }
    if changed {
        let path_and_query = format!("{}?{}", uri.path(), pairs.join("&"));
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(|_| UploadIdError::NoSuchUpload {
            detail: "the upload id cannot be written back into the query",
        })?);
        *uri = http::Uri::from_parts(parts).map_err(|_| UploadIdError::NoSuchUpload {
            detail: "the upload id cannot be written back into the query",
        })?;
    }
    Ok(answer)
}

/// A query component decoded as S3 reads it (`+` is a space).
fn form_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The decoded value of the query parameter `name` (classification already refused
/// duplicates and malformed escapes).
fn param_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (form_decode(n) == name).then(|| form_decode(v))
    })
}

/// A leaf element's text found in the answer: its decoded value and where its raw content
/// sits in the document.
#[derive(Debug, Default, Clone)]
struct Leaf {
    value: String,
    span: std::ops::Range<usize>,
}

/// Tags every upload id in the store's (2xx) `xml` answer; every other byte is kept.
pub fn rewrite_answer(
    binding: &UploadIdBinding,
    answer: &Answer,
    xml: &[u8],
) -> Result<Vec<u8>, UploadIdError> {
    let doc = read_leaves(xml)?;
    // (span, new id) of every upload id to replace
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    match answer {
        Answer::Single { bucket, key } => {
            if !matches!(
                doc.root.as_str(),
                "InitiateMultipartUploadResult" | "ListPartsResult"
            ) {
                return Err(malformed(format!("unexpected root element <{}>", doc.root)));
            }
            let ids: Vec<&Leaf> = doc
                .top
                .iter()
                .filter(|(n, _)| n == "UploadId")
                .map(|(_, l)| l)
                .collect();
            let [id] = ids.as_slice() else {
                return Err(malformed("the answer does not hold exactly one <UploadId>"));
            };
            if id.value.is_empty() {
                return Err(malformed("an empty <UploadId>"));
            }
            edits.push((id.span.clone(), binding.tag(bucket, key, &id.value)));
        }
        Answer::Uploads { bucket, url_keys } => {
            if doc.root != "ListMultipartUploadsResult" {
                return Err(malformed(format!("unexpected root element <{}>", doc.root)));
            }
            let key_of = |raw: &str| -> String {
                if *url_keys {
                    form_decode(raw).into_owned()
                } else {
                    raw.to_string()
                }
            };
            let top = |name: &str| doc.top.iter().find(|(n, _)| n == name).map(|(_, l)| l);
            for (id_name, key_name) in [
                ("UploadIdMarker", "KeyMarker"),
                ("NextUploadIdMarker", "NextKeyMarker"),
            ] {
                if let Some(id) = top(id_name)
                    && !id.value.is_empty()
                {
                    let key = top(key_name).map(|l| key_of(&l.value)).unwrap_or_default();
                    edits.push((id.span.clone(), binding.tag(bucket, &key, &id.value)));
                }
            }
            for upload in &doc.uploads {
                let key = upload
                    .iter()
                    .find(|(n, _)| n == "Key")
                    .map(|(_, l)| key_of(&l.value));
                let id = upload.iter().find(|(n, _)| n == "UploadId").map(|(_, l)| l);
                match (key, id) {
                    (Some(key), Some(id)) if !id.value.is_empty() => {
                        edits.push((id.span.clone(), binding.tag(bucket, &key, &id.value)));
                    }
                    _ => return Err(malformed("an <Upload> without a <Key> and an <UploadId>")),
                }
            }
        }
    }
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = Vec::with_capacity(xml.len() + edits.len() * 24);
    let mut at = 0;
    for (span, id) in edits {
        out.extend_from_slice(&xml[at..span.start]);
        out.extend_from_slice(quick_xml::escape::escape(id.as_str()).as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&xml[at..]);
    Ok(out)
}

/// The leaves of an answer that hold upload ids and their keys.
#[derive(Debug, Default)]
struct Leaves {
    /// The root element's local name.
    root: String,
    /// Leaves directly under the root, by local name.
    top: Vec<(String, Leaf)>,
    /// For each `<Upload>` under the root, its leaves.
    uploads: Vec<Vec<(String, Leaf)>>,
}

/// Reads the answer's root, its direct leaves and those of each `<Upload>`, with the byte
/// span of each leaf's raw content (so it can be replaced without re-serializing the rest).
fn read_leaves(xml: &[u8]) -> Result<Leaves, UploadIdError> {
    let mut reader = Reader::from_reader(xml);
    let mut doc = Leaves::default();
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    let mut content_start = 0usize;
    let mut buf = Vec::new();
    loop {
        let before = usize::try_from(reader.buffer_position()).map_err(|_| malformed("too large"))?;
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| malformed(format!("not well-formed XML: {e}")))?;
        let after = usize::try_from(reader.buffer_position()).map_err(|_| malformed("too large"))?;
        match event {
            Event::DocType(_) => return Err(malformed("a DTD")),
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    if !doc.root.is_empty() {
                        return Err(malformed("more than one root element"));
                    }
                    doc.root = name.clone();
                } else if path.len() == 1 && name == "Upload" {
                    doc.uploads.push(Vec::new());
                }
                path.push(name);
                text.clear();
                content_start = after;
            }
            Event::Empty(_) if path.is_empty() => return Err(malformed("an empty root element")),
            Event::Text(t) => {
                let s = t.decode().map_err(|e| malformed(format!("bad text: {e}")))?;
                let s = quick_xml::escape::unescape(&s).map_err(|e| malformed(format!("bad escape: {e}")))?;
                text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                // `&amp;` and friends arrive as references (see `crate::xml_text`).
                let c = crate::xml_text::reference_char(&r).map_err(malformed)?;
                text.push(c);
            }
            Event::CData(t) => {
                let s = String::from_utf8(t.into_inner().into_owned())
                    .map_err(|_| malformed("a CDATA section is not UTF-8"))?;
                text.push_str(&s);
            }
            Event::End(_) => {
                let name = path.pop().unwrap_or_default();
                let leaf = Leaf {
                    value: std::mem::take(&mut text),
                    span: content_start..before,
                };
                match path.len() {
                    1 => doc.top.push((name, leaf)),
                    2 if path[1] == "Upload" => {
                        if let Some(upload) = doc.uploads.last_mut() {
                            upload.push((name, leaf));
                        }
                    }
                    _ => {}
                }
                // An element's text is only what lies between its own tags.
                content_start = after;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if doc.root.is_empty() || !path.is_empty() {
        return Err(malformed("the document ends inside an element"));
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, Resource};

    fn binding() -> UploadIdBinding {
        UploadIdBinding::from_secret(b"route-secret")
    }

    fn op(name: &'static str, s3: S3Address) -> Operation {
        let mut op = Operation::new(name, Access::new("s3:PutObject", Resource::s3_object("b", "k")));
        op.s3 = Some(s3);
        op
    }

    fn object(key: &str) -> S3Address {
        S3Address::Object {
            bucket: "b".into(),
            key: key.into(),
        }
    }

    #[test]
    fn tags_open_only_for_their_bucket_key_and_id() {
        let b = binding();
        let id = b.tag("b", "k", "store-1");
        let (store, tag) = id.rsplit_once('~').unwrap();
        assert_eq!(store, "store-1");
        assert_eq!(tag.len(), 22);
        assert_eq!(b.open("b", "k", &id), Ok("store-1"));
        for (bucket, key, presented) in [
            ("b", "k2", id.as_str()),
            ("b2", "k", id.as_str()),
            ("b", "k", "store-1"),
            ("b", "k", &format!("store-2~{tag}")),
            ("b", "k", &format!("store-1~{}", &tag[1..])),
            ("b", "k", "store-1~!!"),
            // bucket/key boundaries cannot be moved
            ("b\0k", "", id.as_str()),
        ] {
            assert!(
                matches!(
                    b.open(bucket, key, presented),
                    Err(UploadIdError::NoSuchUpload { .. })
                ),
                "{bucket:?} {key:?} {presented:?}"
            );
        }
        // a store id that holds the separator itself
        let odd = b.tag("b", "k", "a~b");
        assert_eq!(b.open("b", "k", &odd), Ok("a~b"));
        // another route's secret makes other tags
        assert!(
            UploadIdBinding::from_secret(b"other")
                .open("b", "k", &id)
                .is_err()
        );
    }

    #[test]
    fn requests_carry_the_bare_store_id() {
        let b = binding();
        let id = b.tag("b", "dir/a b", "s/1+2");
        let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let mut uri: http::Uri = format!("/b/dir/a%20b?partNumber=3&uploadId={encoded}&x-id=UploadPart")
            .parse()
            .unwrap();
        let answer = unwrap_request(&b, &op("UploadPart", object("dir/a b")), &mut uri).unwrap();
        assert_eq!(answer, None);
        assert_eq!(
            uri.query(),
            Some("partNumber=3&uploadId=s%2F1%2B2&x-id=UploadPart")
        );
        assert_eq!(uri.path(), "/b/dir/a%20b");

        // ListParts: unwrapped, and its answer is to be tagged
        let mut uri: http::Uri = format!("http://h/b/k?uploadId={}", b.tag("b", "k", "u1"))
            .parse()
            .unwrap();
        let answer = unwrap_request(&b, &op("ListParts", object("k")), &mut uri).unwrap();
        assert_eq!(uri.to_string(), "http://h/b/k?uploadId=u1");
        assert!(matches!(answer, Some(Answer::Single { .. })));

        // another key's id, an untagged id
        for presented in [b.tag("b", "other", "u1"), "u1".to_string()] {
            for name in [
                "UploadPart",
                "UploadPartCopy",
                "CompleteMultipartUpload",
                "AbortMultipartUpload",
                "ListParts",
            ] {
                let mut uri: http::Uri = format!("/b/k?uploadId={presented}").parse().unwrap();
                let before = uri.clone();
                let got = unwrap_request(&b, &op(name, object("k")), &mut uri);
                assert!(matches!(got, Err(UploadIdError::NoSuchUpload { .. })), "{name}");
                assert_eq!(uri, before);
            }
        }
    }

    #[test]
    fn list_uploads_markers_are_bound_to_the_key_marker() {
        let b = binding();
        let list = op("ListMultipartUploads", S3Address::Bucket("b".into()));
        let marker = b.tag("b", "a&b c", "u9");
        let mut uri: http::Uri =
            format!("/b?uploads&key-marker=a%26b+c&upload-id-marker={marker}&encoding-type=url")
                .parse()
                .unwrap();
        let answer = unwrap_request(&b, &list, &mut uri).unwrap();
        assert_eq!(
            uri.query(),
            Some("uploads&key-marker=a%26b+c&upload-id-marker=u9&encoding-type=url")
        );
        assert_eq!(
            answer,
            Some(Answer::Uploads {
                bucket: "b".into(),
                url_keys: true
            })
        );
        // another key marker
        let mut uri: http::Uri = format!("/b?uploads&key-marker=zzz&upload-id-marker={marker}")
            .parse()
            .unwrap();
        assert!(unwrap_request(&b, &list, &mut uri).is_err());
        // no upload-id-marker, or an empty one: nothing to check
        let mut uri: http::Uri = "/b?uploads&key-marker=zzz&upload-id-marker=".parse().unwrap();
        assert!(unwrap_request(&b, &list, &mut uri).is_ok());
        assert_eq!(uri.query(), Some("uploads&key-marker=zzz&upload-id-marker="));
    }

    #[test]
    fn single_answers_are_tagged_in_place() {
        let b = binding();
        let xml = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><Key>k</Key><UploadId>u&amp;1</UploadId></InitiateMultipartUploadResult>";
        let answer = Answer::Single {
            bucket: "b".into(),
            key: "k".into(),
        };
        let out = String::from_utf8(rewrite_answer(&b, &answer, xml).unwrap()).unwrap();
        let want = quick_xml::escape::escape(b.tag("b", "k", "u&1")).into_owned();
        assert_eq!(
            out,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>b</Bucket><Key>k</Key><UploadId>{want}</UploadId></InitiateMultipartUploadResult>"
            )
        );
        // ListParts: the top-level id only; parts are left alone
        let xml = b"<ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u1</UploadId><Part><PartNumber>1</PartNumber></Part></ListPartsResult>";
        let out = String::from_utf8(rewrite_answer(&b, &answer, xml).unwrap()).unwrap();
        assert!(
            out.contains(&format!("<UploadId>{}</UploadId><Part>", b.tag("b", "k", "u1"))),
            "{out}"
        );
        // no id, two ids, another document
        for bad in [
            &b"<InitiateMultipartUploadResult><Key>k</Key></InitiateMultipartUploadResult>"[..],
            b"<ListPartsResult><UploadId>a</UploadId><UploadId>b</UploadId></ListPartsResult>",
            b"<Error><UploadId>a</UploadId></Error>",
            b"<ListPartsResult><UploadId>a</UploadId>",
            b"not xml",
        ] {
            assert!(
                matches!(
                    rewrite_answer(&b, &answer, bad),
                    Err(UploadIdError::MalformedAnswer { .. })
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn listed_uploads_are_tagged_with_their_own_keys() {
        let b = binding();
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket>\
            <KeyMarker>m&amp;k</KeyMarker><UploadIdMarker>m1</UploadIdMarker>\
            <NextKeyMarker>z</NextKeyMarker><NextUploadIdMarker>n1</NextUploadIdMarker>\
            <Upload><Key>a&amp;b</Key><UploadId>u1</UploadId></Upload>\
            <Upload><UploadId>u2</UploadId><Key><![CDATA[c<d]]></Key></Upload>\
            </ListMultipartUploadsResult>";
        let answer = Answer::Uploads {
            bucket: "b".into(),
            url_keys: false,
        };
        let out = String::from_utf8(rewrite_answer(&b, &answer, xml.as_bytes()).unwrap()).unwrap();
        for (key, id) in [("m&k", "m1"), ("z", "n1"), ("a&b", "u1"), ("c<d", "u2")] {
            let tagged = b.tag("b", key, id);
            assert!(out.contains(&format!(">{tagged}</")), "{key} {id}: {out}");
        }
        assert!(out.contains("<Key>a&amp;b</Key>"));

        // encoding-type=url: keys are percent-encoded in the answer, tags bind decoded keys
        let xml = "<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>\
            <NextKeyMarker>dir%2Fa+b%26c</NextKeyMarker><NextUploadIdMarker>n1</NextUploadIdMarker>\
            <Upload><Key>dir%2Fa+b%26c</Key><UploadId>u1</UploadId></Upload><IsTruncated>true</IsTruncated>\
            </ListMultipartUploadsResult>";
        let answer = Answer::Uploads {
            bucket: "b".into(),
            url_keys: true,
        };
        let out = String::from_utf8(rewrite_answer(&b, &answer, xml.as_bytes()).unwrap()).unwrap();
        assert!(
            out.contains(&format!("<UploadId>{}</UploadId>", b.tag("b", "dir/a b&c", "u1"))),
            "{out}"
        );
        assert!(
            out.contains(&format!("<NextUploadIdMarker>{}<", b.tag("b", "dir/a b&c", "n1"))),
            "{out}"
        );
        assert!(out.contains("<UploadIdMarker></UploadIdMarker>"), "{out}");
        assert!(out.contains("<Key>dir%2Fa+b%26c</Key>"), "{out}");

        // an upload without a key cannot be bound
        let bad = b"<ListMultipartUploadsResult><Upload><UploadId>u1</UploadId></Upload></ListMultipartUploadsResult>";
        assert!(rewrite_answer(&b, &answer, bad).is_err());
    }
}
