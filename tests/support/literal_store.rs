//! A test S3 store that keeps keys literal, the way AWS S3 does: `a/../b`, `./x`, `a//b`
//! and `%2e%2e` are four objects, none of them `b`. (s3s-fs, behind [`super::TestS3`], maps
//! keys onto paths and so resolves `..`; a proxy test against it cannot tell a key that was
//! kept from one that was rewritten.) It verifies SigV4 with the same upstream credentials
//! as `TestS3` and records every (operation, bucket, key) it receives, so a test can assert
//! the store acted on exactly the key the proxy authorized.
//!
//! Each object is one file, `root/<bucket>/<encoded key>`. The encoding percent-encodes
//! every byte outside `[A-Za-z0-9_-]`, so a key becomes one flat name with no `/` and no
//! `.`: nothing the file system could resolve. An encoded name longer than
//! [`NAME_CHUNK`] bytes is split into directories named `~<chunk>` (`~` is never produced
//! by the encoding) and a last chunk as the file name. Tags, content types and user
//! metadata live in memory, as do multipart parts until the upload completes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::crypto::{Checksum, Md5};
use s3s::dto;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;

use super::{S3_ACCESS_KEY, S3_SECRET_KEY};

/// Longest encoded chunk kept in one file or directory name (file systems allow 255 bytes).
pub const NAME_CHUNK: usize = 240;
/// The owner GetObjectAcl and ListBuckets report.
const OWNER_ID: &str = "literal-store";

/// A running literal-key store on 127.0.0.1.
pub struct LiteralS3 {
    /// `http://localhost:<port>`.
    pub url: String,
    /// Where the buckets and objects live.
    pub root: tempfile::TempDir,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl LiteralS3 {
    /// Starts a store on a free port with these buckets made.
    pub async fn start(buckets: &[&str]) -> LiteralS3 {
        let root = tempfile::tempdir().unwrap();
        for b in buckets {
            std::fs::create_dir_all(root.path().join(b)).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = Literal {
            root: root.path().to_path_buf(),
            seen: seen.clone(),
            state: Mutex::new(State::default()),
            counter: AtomicU64::new(0),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let service = service.clone();
                        async move { hyper::service::Service::call(&service, req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        LiteralS3 {
            url,
            root,
            requests,
            seen,
        }
    }

    /// Requests that reached the store so far (signed or not).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The file that holds `bucket`/`key`.
    pub fn path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(encode_key(key))
    }

    /// Every key in `bucket`, decoded from the file names, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        stored_keys(&self.root.path().join(bucket))
    }

    /// Every (operation, bucket, key) the store received, in order: S3's operation name,
    /// and the bucket and key exactly as the store decoded them from the request.
    /// Bucket-level operations have an empty key (ListObjects/ListObjectsV2: the prefix),
    /// ListBuckets an empty bucket too. CopyObject records its source as `CopySource`
    /// first, then the destination; DeleteObjects one entry per key.
    pub fn seen(&self) -> Vec<(String, String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

/// The relative path of `key`'s file under its bucket dir.
pub fn encode_key(key: &str) -> PathBuf {
    let mut encoded = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let chunks: Vec<&str> = encoded
        .as_bytes()
        .chunks(NAME_CHUNK)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let mut path = PathBuf::new();
    match chunks.split_last() {
        None => path.push(""),
        Some((last, dirs)) => {
            for d in dirs {
                path.push(format!("~{d}"));
            }
            path.push(last);
        }
    }
    path
}

/// The key whose file is at `relative` (as [`encode_key`] made it); `None` for any other
/// file, such as a write in progress.
pub fn decode_key(relative: &Path) -> Option<String> {
    let names: Vec<&str> = relative.iter().map(|n| n.to_str()).collect::<Option<Vec<_>>>()?;
    let (last, dirs) = names.split_last()?;
    let mut encoded = String::new();
    for d in dirs {
        encoded.push_str(d.strip_prefix('~')?);
    }
    encoded.push_str(last);
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&encoded).collect();
    let key = String::from_utf8(bytes).ok()?;
    (encode_key(&key) == relative).then_some(key)
}

/// Every key under a bucket dir, sorted bytewise (as S3 lists them).
fn stored_keys(bucket_dir: &Path) -> Vec<String> {
    let mut keys = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(bucket_dir.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(rel),
                Ok(_) => keys.extend(decode_key(&rel)),
                Err(_) => {}
            }
        }
    }
    keys.sort();
    keys
}

/// What S3 keeps beside an object's bytes.
#[derive(Debug, Clone, Default)]
struct Meta {
    content_type: Option<String>,
    metadata: Option<dto::Metadata>,
    tags: Vec<(String, String)>,
}

#[derive(Debug)]
struct Upload {
    bucket: String,
    key: String,
    meta: Meta,
    parts: BTreeMap<i32, Bytes>,
}

#[derive(Debug, Default)]
struct State {
    /// By (bucket, key).
    objects: HashMap<(String, String), Meta>,
    /// By upload id.
    uploads: HashMap<String, Upload>,
}

struct Literal {
    root: PathBuf,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
    state: Mutex<State>,
    /// Upload ids and temporary file names.
    counter: AtomicU64,
}

fn internal<E: std::error::Error + Send + Sync + 'static>(e: E) -> s3s::S3Error {
    s3_error!(e, InternalError)
}

fn etag(body: &[u8]) -> String {
    hex::encode(Md5::checksum(body))
}

fn header_tags(header: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(header.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn owner() -> dto::Owner {
    dto::Owner {
        display_name: Some(OWNER_ID.to_string()),
        id: Some(OWNER_ID.to_string()),
    }
}

/// A key, prefix or delimiter as a listing answers it: as is, or URL-encoded when the
/// client asked for `encoding-type=url` (botocore always does, and decodes).
fn listed(s: &str, url: bool) -> String {
    if !url {
        return s.to_string();
    }
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// One page of a listing.
struct Page {
    objects: Vec<dto::Object>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or common prefix on the page: where the next page starts after.
    last: Option<String>,
}

impl Literal {
    fn record(&self, op: &str, bucket: &str, key: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((op.to_string(), bucket.to_string(), key.to_string()));
        }
    }

    fn bucket_dir(&self, bucket: &str) -> S3Result<PathBuf> {
        let dir = self.root.join(bucket);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(s3_error!(NoSuchBucket))
        }
    }

    fn file(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        Ok(self.bucket_dir(bucket)?.join(encode_key(key)))
    }

    fn meta(&self, bucket: &str, key: &str) -> Meta {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .objects
            .get(&(bucket.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    fn set_meta(&self, bucket: &str, key: &str, meta: Option<Meta>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let id = (bucket.to_string(), key.to_string());
        match meta {
            Some(m) => state.objects.insert(id, m),
            None => state.objects.remove(&id),
        };
    }

    /// The object's bytes, or NoSuchBucket / NoSuchKey.
    async fn read(&self, bucket: &str, key: &str) -> S3Result<(Bytes, std::fs::Metadata)> {
        let path = self.file(bucket, key)?;
        match tokio::fs::read(&path).await {
            Ok(body) => {
                let info = tokio::fs::metadata(&path).await.map_err(internal)?;
                Ok((Bytes::from(body), info))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(s3_error!(NoSuchKey)),
            Err(e) => Err(internal(e)),
        }
    }

    /// Stores `body` as `bucket`/`key` (written aside, then renamed into place).
    async fn write(&self, bucket: &str, key: &str, body: &[u8], meta: Meta) -> S3Result<String> {
        let dir = self.bucket_dir(bucket)?;
        let path = dir.join(encode_key(key));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(internal)?;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // A leading `.` is never an encoded name, so a write in progress is never listed.
        let tmp = dir.join(format!(".tmp-{n}"));
        tokio::fs::write(&tmp, body).await.map_err(internal)?;
        tokio::fs::rename(&tmp, &path).await.map_err(internal)?;
        self.set_meta(bucket, key, Some(meta));
        Ok(etag(body))
    }

    async fn remove(&self, bucket: &str, key: &str) -> S3Result<()> {
        let path = self.file(bucket, key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(internal(e)),
            _ => {}
        }
        self.set_meta(bucket, key, None);
        Ok(())
    }

    fn object(&self, bucket_dir: &Path, key: &str) -> Option<dto::Object> {
        let path = bucket_dir.join(encode_key(key));
        let info = std::fs::metadata(&path).ok()?;
        let body = std::fs::read(&path).ok()?;
        Some(dto::Object {
            key: Some(key.to_string()),
            size: i64::try_from(info.len()).ok(),
            e_tag: Some(dto::ETag::Strong(etag(&body))),
            last_modified: info.modified().ok().map(dto::Timestamp::from),
            storage_class: Some(dto::ObjectStorageClass::from_static(
                dto::ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
    }

    /// Keys of `bucket` under `prefix` after `after`, up to `max` entries, keys sharing a
    /// segment up to `delimiter` rolled into one common prefix.
    fn page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: i32,
    ) -> S3Result<Page> {
        let dir = self.bucket_dir(bucket)?;
        let max = usize::try_from(max.clamp(0, 1000)).unwrap_or(1000);
        let mut page = Page {
            objects: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
            last: None,
        };
        for key in stored_keys(&dir) {
            let Some(rest) = key.strip_prefix(prefix) else {
                continue;
            };
            let common = delimiter
                .filter(|d| !d.is_empty())
                .and_then(|d| rest.find(d).map(|i| format!("{prefix}{}", &rest[..i + d.len()])));
            let entry = common.clone().unwrap_or_else(|| key.clone());
            if after.is_some_and(|a| entry.as_str() <= a) || page.last.as_ref() == Some(&entry) {
                continue;
            }
            if page.objects.len() + page.prefixes.len() >= max {
                page.truncated = true;
                break;
            }
            match common {
                Some(p) => page.prefixes.push(p),
                None => page.objects.extend(self.object(&dir, &key)),
            }
            page.last = Some(entry);
        }
        Ok(page)
    }

    async fn create_bucket(
        &self,
        req: S3Request<dto::CreateBucketInput>,
    ) -> S3Result<S3Response<dto::CreateBucketOutput>> {
        let bucket = req.input.bucket;
        self.record("CreateBucket", &bucket, "");
        let dir = self.root.join(&bucket);
        if dir.exists() {
            return Err(s3_error!(BucketAlreadyOwnedByYou));
        }
        tokio::fs::create_dir(&dir).await.map_err(internal)?;
        Ok(S3Response::new(dto::CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<dto::HeadBucketInput>,
    ) -> S3Result<S3Response<dto::HeadBucketOutput>> {
        self.record("HeadBucket", &req.input.bucket, "");
        self.bucket_dir(&req.input.bucket)?;
        Ok(S3Response::new(dto::HeadBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<dto::ListBucketsInput>,
    ) -> S3Result<S3Response<dto::ListBucketsOutput>> {
        self.record("ListBuckets", "", "");
        let mut buckets = Vec::new();
        let mut entries = tokio::fs::read_dir(&self.root).await.map_err(internal)?;
        while let Some(entry) = entries.next_entry().await.map_err(internal)? {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !entry.path().is_dir() || !s3s::path::check_bucket_name(&name) {
                continue;
            }
            let created = entry.metadata().await.ok().and_then(|m| m.modified().ok());
            buckets.push(dto::Bucket {
                name: Some(name),
                creation_date: created.map(dto::Timestamp::from),
                bucket_region: None,
            });
        }
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(S3Response::new(dto::ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(owner()),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<dto::PutObjectInput>,
    ) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let input = req.input;
        self.record("PutObject", &input.bucket, &input.key);
        self.bucket_dir(&input.bucket)?;
        let mut body = Vec::new();
        if let Some(mut stream) = input.body {
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
            }
        }
        let meta = Meta {
            content_type: input.content_type,
            metadata: input.metadata,
            tags: header_tags(input.tagging.as_deref()),
        };
        let e_tag = self.write(&input.bucket, &input.key, &body, meta).await?;
        Ok(S3Response::new(dto::PutObjectOutput {
            e_tag: Some(dto::ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        let input = req.input;
        self.record("GetObject", &input.bucket, &input.key);
        let (body, info) = self.read(&input.bucket, &input.key).await?;
        let meta = self.meta(&input.bucket, &input.key);
        let len = body.len() as u64;
        let (part, content_range) = match &input.range {
            Some(r) => {
                let span = r.check(len).map_err(|_| s3_error!(InvalidRange))?;
                let range = format!("bytes {}-{}/{len}", span.start, span.end - 1);
                let start = usize::try_from(span.start).map_err(internal)?;
                let end = usize::try_from(span.end).map_err(internal)?;
                (body.slice(start..end), Some(range))
            }
            None => (body.clone(), None),
        };
        let length = i64::try_from(part.len()).map_err(internal)?;
        let tag_count = i32::try_from(meta.tags.len()).ok().filter(|n| *n > 0);
        Ok(S3Response::new(dto::GetObjectOutput {
            body: Some(dto::StreamingBlob::from(s3s::Body::from(part))),
            content_length: Some(length),
            content_range,
            accept_ranges: Some("bytes".to_string()),
            content_type: meta.content_type,
            metadata: meta.metadata,
            e_tag: Some(dto::ETag::Strong(etag(&body))),
            last_modified: info.modified().ok().map(dto::Timestamp::from),
            tag_count,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        let input = req.input;
        self.record("HeadObject", &input.bucket, &input.key);
        let (body, info) = self.read(&input.bucket, &input.key).await?;
        let meta = self.meta(&input.bucket, &input.key);
        Ok(S3Response::new(dto::HeadObjectOutput {
            content_length: Some(i64::try_from(body.len()).map_err(internal)?),
            accept_ranges: Some("bytes".to_string()),
            content_type: meta.content_type,
            metadata: meta.metadata,
            e_tag: Some(dto::ETag::Strong(etag(&body))),
            last_modified: info.modified().ok().map(dto::Timestamp::from),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let input = req.input;
        self.record("DeleteObject", &input.bucket, &input.key);
        self.remove(&input.bucket, &input.key).await?;
        Ok(S3Response::new(dto::DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        let input = req.input;
        self.bucket_dir(&input.bucket)?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        for object in input.delete.objects {
            self.record("DeleteObjects", &input.bucket, &object.key);
            self.remove(&input.bucket, &object.key).await?;
            if !quiet {
                deleted.push(dto::DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(dto::DeleteObjectsOutput {
            deleted: Some(deleted),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        let input = req.input;
        let dto::CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copy from an access point"));
        };
        self.record("CopySource", src_bucket, src_key);
        self.record("CopyObject", &input.bucket, &input.key);
        let (body, _) = self.read(src_bucket, src_key).await?;
        let source = self.meta(src_bucket, src_key);
        let replace = |d: Option<&str>| d == Some("REPLACE");
        let meta = Meta {
            content_type: if replace(input.metadata_directive.as_ref().map(|d| d.as_str())) {
                input.content_type.clone()
            } else {
                source.content_type.clone()
            },
            metadata: if replace(input.metadata_directive.as_ref().map(|d| d.as_str())) {
                input.metadata.clone()
            } else {
                source.metadata.clone()
            },
            tags: if replace(input.tagging_directive.as_ref().map(|d| d.as_str())) {
                header_tags(input.tagging.as_deref())
            } else {
                source.tags.clone()
            },
        };
        let e_tag = self.write(&input.bucket, &input.key, &body, meta).await?;
        Ok(S3Response::new(dto::CopyObjectOutput {
            copy_object_result: Some(dto::CopyObjectResult {
                e_tag: Some(dto::ETag::Strong(e_tag)),
                last_modified: Some(dto::Timestamp::from(std::time::SystemTime::now())),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        self.record("ListObjectsV2", &input.bucket, &prefix);
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => Some(token.as_str()),
            (None, start) => start.as_deref(),
        };
        let page = self.page(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            after,
            input.max_keys.unwrap_or(1000),
        )?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == dto::EncodingType::URL);
        let key_count = i32::try_from(page.objects.len() + page.prefixes.len()).unwrap_or(i32::MAX);
        Ok(S3Response::new(dto::ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(listed(&prefix, url)),
            delimiter: input.delimiter.as_deref().map(|d| listed(d, url)),
            start_after: input.start_after.as_deref().map(|s| listed(s, url)),
            max_keys: input.max_keys.or(Some(1000)),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.truncated),
            next_continuation_token: page.last.filter(|_| page.truncated),
            contents: Some(listed_objects(page.objects, url)),
            common_prefixes: Some(listed_prefixes(page.prefixes, url)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<dto::ListObjectsInput>,
    ) -> S3Result<S3Response<dto::ListObjectsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        self.record("ListObjects", &input.bucket, &prefix);
        let page = self.page(
            &input.bucket,
            &prefix,
            input.delimiter.as_deref(),
            input.marker.as_deref(),
            input.max_keys.unwrap_or(1000),
        )?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == dto::EncodingType::URL);
        Ok(S3Response::new(dto::ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(listed(&prefix, url)),
            delimiter: input.delimiter.as_deref().map(|d| listed(d, url)),
            marker: Some(listed(input.marker.as_deref().unwrap_or_default(), url)),
            max_keys: input.max_keys.or(Some(1000)),
            is_truncated: Some(page.truncated),
            next_marker: page.last.filter(|_| page.truncated).map(|m| listed(&m, url)),
            contents: Some(listed_objects(page.objects, url)),
            common_prefixes: Some(listed_prefixes(page.prefixes, url)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let input = req.input;
        self.record("CreateMultipartUpload", &input.bucket, &input.key);
        self.bucket_dir(&input.bucket)?;
        let upload_id = format!("upload-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        let upload = Upload {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            meta: Meta {
                content_type: input.content_type,
                metadata: input.metadata,
                tags: header_tags(input.tagging.as_deref()),
            },
            parts: BTreeMap::new(),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.uploads.insert(upload_id.clone(), upload);
        Ok(S3Response::new(dto::CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<dto::UploadPartInput>,
    ) -> S3Result<S3Response<dto::UploadPartOutput>> {
        let input = req.input;
        self.record("UploadPart", &input.bucket, &input.key);
        let mut body = Vec::new();
        if let Some(mut stream) = input.body {
            while let Some(chunk) = stream.next().await {
                body.extend_from_slice(&chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
            }
        }
        let e_tag = etag(&body);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let upload = state
            .uploads
            .get_mut(&input.upload_id)
            .filter(|u| u.bucket == input.bucket && u.key == input.key)
            .ok_or_else(|| s3_error!(NoSuchUpload))?;
        upload.parts.insert(input.part_number, Bytes::from(body));
        Ok(S3Response::new(dto::UploadPartOutput {
            e_tag: Some(dto::ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let input = req.input;
        self.record("CompleteMultipartUpload", &input.bucket, &input.key);
        let upload = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match state.uploads.get(&input.upload_id) {
                Some(u) if u.bucket == input.bucket && u.key == input.key => {}
                _ => return Err(s3_error!(NoSuchUpload)),
            }
            state
                .uploads
                .remove(&input.upload_id)
                .ok_or_else(|| s3_error!(NoSuchUpload))?
        };
        let wanted: Vec<i32> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .iter()
            .map(|p| p.part_number.unwrap_or(0))
            .collect();
        if wanted.is_empty() {
            return Err(s3_error!(MalformedXML, "no parts"));
        }
        if wanted.windows(2).any(|w| w[0] >= w[1]) {
            return Err(s3_error!(InvalidPartOrder));
        }
        let mut body = Vec::new();
        let mut digests = Vec::new();
        for n in &wanted {
            let part = upload.parts.get(n).ok_or_else(|| s3_error!(InvalidPart))?;
            digests.extend_from_slice(&Md5::checksum(part));
            body.extend_from_slice(part);
        }
        self.write(&input.bucket, &input.key, &body, upload.meta).await?;
        let e_tag = format!("{}-{}", hex::encode(Md5::checksum(&digests)), wanted.len());
        Ok(S3Response::new(dto::CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(dto::ETag::Strong(e_tag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let input = req.input;
        self.record("AbortMultipartUpload", &input.bucket, &input.key);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.uploads.get(&input.upload_id) {
            Some(u) if u.bucket == input.bucket && u.key == input.key => {
                state.uploads.remove(&input.upload_id);
                Ok(S3Response::new(dto::AbortMultipartUploadOutput::default()))
            }
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<dto::GetObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::GetObjectTaggingOutput>> {
        let input = req.input;
        self.record("GetObjectTagging", &input.bucket, &input.key);
        self.read(&input.bucket, &input.key).await?;
        let tag_set = self
            .meta(&input.bucket, &input.key)
            .tags
            .into_iter()
            .map(|(key, value)| dto::Tag {
                key: Some(key),
                value: Some(value),
            })
            .collect();
        Ok(S3Response::new(dto::GetObjectTaggingOutput {
            tag_set,
            version_id: None,
        }))
    }

    async fn put_object_tagging(
        &self,
        req: S3Request<dto::PutObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::PutObjectTaggingOutput>> {
        let input = req.input;
        self.record("PutObjectTagging", &input.bucket, &input.key);
        self.read(&input.bucket, &input.key).await?;
        let mut meta = self.meta(&input.bucket, &input.key);
        meta.tags = input
            .tagging
            .tag_set
            .into_iter()
            .map(|t| (t.key.unwrap_or_default(), t.value.unwrap_or_default()))
            .collect();
        self.set_meta(&input.bucket, &input.key, Some(meta));
        Ok(S3Response::new(dto::PutObjectTaggingOutput::default()))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<dto::DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectTaggingOutput>> {
        let input = req.input;
        self.record("DeleteObjectTagging", &input.bucket, &input.key);
        self.read(&input.bucket, &input.key).await?;
        let mut meta = self.meta(&input.bucket, &input.key);
        meta.tags.clear();
        self.set_meta(&input.bucket, &input.key, Some(meta));
        Ok(S3Response::new(dto::DeleteObjectTaggingOutput::default()))
    }

    async fn get_object_acl(
        &self,
        req: S3Request<dto::GetObjectAclInput>,
    ) -> S3Result<S3Response<dto::GetObjectAclOutput>> {
        let input = req.input;
        self.record("GetObjectAcl", &input.bucket, &input.key);
        self.read(&input.bucket, &input.key).await?;
        let grant = dto::Grant {
            grantee: Some(dto::Grantee {
                display_name: Some(OWNER_ID.to_string()),
                email_address: None,
                id: Some(OWNER_ID.to_string()),
                type_: dto::Type::from_static(dto::Type::CANONICAL_USER),
                uri: None,
            }),
            permission: Some(dto::Permission::from_static(dto::Permission::FULL_CONTROL)),
        };
        Ok(S3Response::new(dto::GetObjectAclOutput {
            grants: Some(vec![grant]),
            owner: Some(owner()),
            request_charged: None,
        }))
    }
}

fn listed_objects(objects: Vec<dto::Object>, url: bool) -> Vec<dto::Object> {
    objects
        .into_iter()
        .map(|mut o| {
            o.key = o.key.map(|k| listed(&k, url));
            o
        })
        .collect()
}

fn listed_prefixes(prefixes: Vec<String>, url: bool) -> Vec<dto::CommonPrefix> {
    prefixes
        .into_iter()
        .map(|p| dto::CommonPrefix {
            prefix: Some(listed(&p, url)),
        })
        .collect()
}

/// What an [`S3`] method returns (the trait is written with `async_trait`).
type Answer<'f, T> = Pin<Box<dyn Future<Output = S3Result<S3Response<T>>> + Send + 'f>>;

/// Each operation boxes the [`Literal`] method of the same name.
macro_rules! operations {
    ($($op:ident: $input:ident => $output:ident;)*) => {
        impl S3 for Literal {$(
            fn $op<'a, 'f>(&'a self, req: S3Request<dto::$input>) -> Answer<'f, dto::$output>
            where
                'a: 'f,
                Self: 'f,
            {
                Box::pin(Literal::$op(self, req))
            }
        )*}
    };
}

operations! {
    create_bucket: CreateBucketInput => CreateBucketOutput;
    head_bucket: HeadBucketInput => HeadBucketOutput;
    list_buckets: ListBucketsInput => ListBucketsOutput;
    put_object: PutObjectInput => PutObjectOutput;
    get_object: GetObjectInput => GetObjectOutput;
    head_object: HeadObjectInput => HeadObjectOutput;
    delete_object: DeleteObjectInput => DeleteObjectOutput;
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
    copy_object: CopyObjectInput => CopyObjectOutput;
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
    list_objects: ListObjectsInput => ListObjectsOutput;
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
    upload_part: UploadPartInput => UploadPartOutput;
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
    get_object_tagging: GetObjectTaggingInput => GetObjectTaggingOutput;
    put_object_tagging: PutObjectTaggingInput => PutObjectTaggingOutput;
    delete_object_tagging: DeleteObjectTaggingInput => DeleteObjectTaggingOutput;
    get_object_acl: GetObjectAclInput => GetObjectAclOutput;
}
