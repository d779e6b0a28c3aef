//! The dev S3 store: s3s-fs (a real S3 implementation that verifies SigV4) over a folder,
//! seeded with demo data, with the object tagging and ACLs s3s-fs lacks added by
//! [`DevStore`]; and a stand-in feature store for the example HTTP route.
//!
//! ```text
//! DIR/data/<bucket>/<key>        objects (s3s-fs's own layout, and its metadata files)
//! DIR/meta/objects/<hash>.json   each object's tags and canned ACL (DevStore's sidecars)
//! DIR/meta/uploads/<hash>.json   tags and ACL given to a multipart upload, until it completes
//! ```
//!
//! A sidecar belongs to the *file* s3s-fs serves, not to the key's spelling: s3s-fs resolves
//! dot segments, so `a/../b` and `b` are one object with one body — and one tag set. A
//! request that reaches an object's body through such a key reaches its tags too, so the
//! dev store exposes no less than its data path does. Sidecars are named by the SHA-256 of
//! the object's path under `data`: no key can name a file outside `meta/`, whatever it
//! holds, and no name outgrows the file system's limit.

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3s::dto;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// Demo objects, written on first start only (a second start keeps whatever is there).
const SEED: [(&str, &str, &str); 6] = [
    (
        "datasets",
        "imagenet/train/0001.tar",
        "demo training shard 0001\n",
    ),
    (
        "datasets",
        "imagenet/train/0002.tar",
        "demo training shard 0002\n",
    ),
    (
        "datasets",
        "curated/sales.csv",
        "region,quarter,revenue\nemea,q3,1200\n",
    ),
    (
        "datasets",
        "pii/users.csv",
        "name,email\nAda Lovelace,ada@example.com\n",
    ),
    ("checkpoints", "alice/README", "alice's checkpoints go here\n"),
    ("models", "ci/README", "models published by CI\n"),
];

/// Creates the buckets and demo objects when `data` does not exist yet.
pub fn seed(data: &Path) -> Result<bool, String> {
    if data.exists() {
        return Ok(false);
    }
    for (bucket, key, body) in SEED {
        let path = data.join(bucket).join(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(true)
}

/// Serves S3 over `data`, accepting only requests signed with this access key and secret.
/// Object tags and ACLs are kept in `meta` (made if missing), outside `data` so no key can
/// reach them.
pub async fn serve_s3(
    listener: TcpListener,
    data: &Path,
    meta: &Path,
    access_key: &str,
    secret: &str,
) -> Result<(), String> {
    let store = DevStore::new(data, meta)?;
    let mut builder = s3s::service::S3ServiceBuilder::new(store);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret.to_string()));
    let service = builder.build();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // s3s-fs streams responses; without NODELAY each stalls on delayed ACKs.
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

/// The owner every object and bucket of the dev store reports (one account).
const OWNER_ID: &str = "claimgate-dev";
/// S3's group of everyone, signed or not.
const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";
/// S3's group of every signed-in AWS account.
const AUTHENTICATED_USERS: &str = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers";
/// S3's limit on tags per object.
const MAX_TAGS: usize = 10;

/// What an [`S3`] method returns: the trait is written with `async_trait`, whose methods
/// return a boxed, sendable future.
type Answer<'f, T> = Pin<Box<dyn Future<Output = S3Result<S3Response<T>>> + Send + 'f>>;

/// s3s-fs with object tagging (Get/Put/DeleteObjectTagging), object ACLs (Get/PutObjectAcl,
/// canned ACLs only) and GetBucketAcl. Every operation s3s-fs implements is passed to it;
/// writes and deletes then keep the sidecars in step (tags and ACL given with PutObject,
/// CopyObject or CreateMultipartUpload land on the new object; a deleted object loses them).
#[derive(Debug)]
pub struct DevStore {
    /// The S3 implementation objects live in.
    fs: s3s_fs::FileSystem,
    /// The data dir as s3s-fs sees it (absolute, canonical): objects are resolved under it.
    root: PathBuf,
    /// The sidecar dir (`objects/` and `uploads/`).
    meta: PathBuf,
    /// Names temporary files, so concurrent sidecar writes never share one.
    tmp: AtomicU64,
}

/// What the store keeps about an object beside s3s-fs's files.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Sidecar {
    /// The object's path under the data dir, for a person reading `meta/`.
    #[serde(default)]
    object: String,
    /// The object's tags, in the order they were set.
    #[serde(default)]
    tags: Vec<(String, String)>,
    /// The canned ACL last set on the object; `None` is `private`.
    #[serde(default)]
    acl: Option<String>,
}

impl Sidecar {
    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.acl.is_none()
    }
}

impl DevStore {
    /// s3s-fs over `data` (which must exist), sidecars in `meta` (made if missing).
    pub fn new(data: &Path, meta: &Path) -> Result<DevStore, String> {
        let fs = s3s_fs::FileSystem::new(data).map_err(|e| format!("{}: {e:?}", data.display()))?;
        // The root s3s-fs resolves keys under: the working dir joined, then canonicalized.
        let root = std::env::current_dir()
            .map(|cwd| cwd.join(data))
            .and_then(|d| d.canonicalize())
            .map_err(|e| format!("{}: {e}", data.display()))?;
        for sub in ["objects", "uploads"] {
            let d = meta.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(DevStore {
            fs,
            root,
            meta: meta.to_path_buf(),
            tmp: AtomicU64::new(0),
        })
    }

    /// The file of an existing object, or what s3s-fs's HeadObject answers when there is
    /// none: NoSuchBucket, else NoSuchKey.
    fn existing(&self, bucket: &str, key: &str) -> S3Result<PathBuf> {
        match object_path(&self.root, bucket, key) {
            Some(path) if path.exists() => Ok(path),
            _ if !self.root.join(bucket).is_dir() => Err(s3_error!(NoSuchBucket)),
            _ => Err(s3_error!(NoSuchKey)),
        }
    }

    fn object_sidecar(&self, object: &Path) -> PathBuf {
        let relative = object.strip_prefix(&self.root).unwrap_or(object);
        sidecar_file(&self.meta.join("objects"), relative.to_string_lossy().as_bytes())
    }

    fn upload_sidecar(&self, upload_id: &str) -> PathBuf {
        sidecar_file(&self.meta.join("uploads"), upload_id.as_bytes())
    }

    /// The sidecar at `path`; an empty one when there is none.
    async fn load(&self, path: &Path) -> S3Result<Sidecar> {
        match tokio::fs::read(path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| s3_error!(e, InternalError)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sidecar::default()),
            Err(e) => Err(s3_error!(e, InternalError)),
        }
    }

    /// Writes the sidecar at `path` (whole, via a rename), or removes it when it is empty.
    async fn save(&self, path: &Path, sidecar: &Sidecar) -> S3Result<()> {
        if sidecar.is_empty() {
            return self.remove(path).await;
        }
        let json = serde_json::to_vec_pretty(sidecar).map_err(|e| s3_error!(e, InternalError))?;
        let n = self.tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{n}"));
        tokio::fs::write(&tmp, json)
            .await
            .map_err(|e| s3_error!(e, InternalError))?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(|e| s3_error!(e, InternalError))
    }

    async fn remove(&self, path: &Path) -> S3Result<()> {
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(s3_error!(e, InternalError)),
            _ => Ok(()),
        }
    }

    /// Gives the object just written at `bucket`/`key` these tags and ACL, replacing any
    /// it had (an object written anew starts with only what came with the write).
    async fn replace(&self, bucket: &str, key: &str, mut sidecar: Sidecar) -> S3Result<()> {
        let Some(object) = object_path(&self.root, bucket, key) else {
            return Ok(());
        };
        sidecar.object = relative_name(&self.root, &object);
        self.save(&self.object_sidecar(&object), &sidecar).await
    }

    /// Drops the sidecar of `bucket`/`key` once s3s-fs has removed its file.
    async fn forget_if_gone(&self, bucket: &str, key: &str) -> S3Result<()> {
        match object_path(&self.root, bucket, key) {
            Some(object) if !object.exists() => self.remove(&self.object_sidecar(&object)).await,
            _ => Ok(()),
        }
    }

    async fn put(&self, req: S3Request<dto::PutObjectInput>) -> S3Result<S3Response<dto::PutObjectOutput>> {
        let input = &req.input;
        let sidecar = Sidecar {
            tags: header_tags(input.tagging.as_deref())?,
            acl: canned_acl(input.acl.as_ref())?,
            ..Sidecar::default()
        };
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let answer = self.fs.put_object(req).await?;
        self.replace(&bucket, &key, sidecar).await?;
        Ok(answer)
    }

    async fn copy(
        &self,
        req: S3Request<dto::CopyObjectInput>,
    ) -> S3Result<S3Response<dto::CopyObjectOutput>> {
        let input = &req.input;
        let replace = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == dto::TaggingDirective::REPLACE);
        let tags = match (&input.copy_source, replace) {
            (_, true) => header_tags(input.tagging.as_deref())?,
            (dto::CopySource::Bucket { bucket, key, .. }, false) => {
                match object_path(&self.root, bucket, key) {
                    Some(source) => self.load(&self.object_sidecar(&source)).await?.tags,
                    None => Vec::new(),
                }
            }
            (_, false) => Vec::new(),
        };
        let sidecar = Sidecar {
            tags,
            acl: canned_acl(input.acl.as_ref())?,
            ..Sidecar::default()
        };
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let answer = self.fs.copy_object(req).await?;
        self.replace(&bucket, &key, sidecar).await?;
        Ok(answer)
    }

    async fn delete(
        &self,
        req: S3Request<dto::DeleteObjectInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let answer = self.fs.delete_object(req).await?;
        self.forget_if_gone(&bucket, &key).await?;
        Ok(answer)
    }

    async fn delete_many(
        &self,
        req: S3Request<dto::DeleteObjectsInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectsOutput>> {
        let bucket = req.input.bucket.clone();
        let keys: Vec<String> = req.input.delete.objects.iter().map(|o| o.key.clone()).collect();
        let answer = self.fs.delete_objects(req).await?;
        for key in keys {
            self.forget_if_gone(&bucket, &key).await?;
        }
        Ok(answer)
    }

    async fn create_upload(
        &self,
        req: S3Request<dto::CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CreateMultipartUploadOutput>> {
        let input = &req.input;
        let sidecar = Sidecar {
            tags: header_tags(input.tagging.as_deref())?,
            acl: canned_acl(input.acl.as_ref())?,
            ..Sidecar::default()
        };
        let answer = self.fs.create_multipart_upload(req).await?;
        if let Some(upload_id) = &answer.output.upload_id {
            self.save(&self.upload_sidecar(upload_id), &sidecar).await?;
        }
        Ok(answer)
    }

    async fn complete_upload(
        &self,
        req: S3Request<dto::CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::CompleteMultipartUploadOutput>> {
        let input = &req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let pending = self.upload_sidecar(&input.upload_id);
        let sidecar = self.load(&pending).await?;
        let answer = self.fs.complete_multipart_upload(req).await?;
        self.replace(&bucket, &key, sidecar).await?;
        self.remove(&pending).await?;
        Ok(answer)
    }

    async fn abort_upload(
        &self,
        req: S3Request<dto::AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<dto::AbortMultipartUploadOutput>> {
        let pending = self.upload_sidecar(&req.input.upload_id);
        let answer = self.fs.abort_multipart_upload(req).await?;
        self.remove(&pending).await?;
        Ok(answer)
    }

    /// A folder is not an object: S3 answers NoSuchKey for a key that only prefixes others
    /// (pyarrow asks, to tell a dataset folder from a file), where s3s-fs fails on the
    /// directory with a 500.
    fn not_a_folder(&self, bucket: &str, key: &str) -> S3Result<()> {
        match object_path(&self.root, bucket, key) {
            Some(path) if path.is_dir() => Err(s3_error!(NoSuchKey)),
            _ => Ok(()),
        }
    }

    async fn head(
        &self,
        req: S3Request<dto::HeadObjectInput>,
    ) -> S3Result<S3Response<dto::HeadObjectOutput>> {
        self.not_a_folder(&req.input.bucket, &req.input.key)?;
        self.fs.head_object(req).await
    }

    async fn get(
        &self,
        mut req: S3Request<dto::GetObjectInput>,
    ) -> S3Result<S3Response<dto::GetObjectOutput>> {
        self.not_a_folder(&req.input.bucket, &req.input.key)?;
        // A suffix range longer than the object is the whole object (RFC 9110 §14.1.3), as
        // S3 serves it; s3s-fs fails with a 500. Parquet readers ask for the last 64 KiB.
        if let Some(dto::Range::Suffix { length }) = req.input.range
            && let Some(path) = object_path(&self.root, &req.input.bucket, &req.input.key)
            && let Ok(meta) = tokio::fs::metadata(&path).await
            && length >= meta.len()
        {
            req.input.range = Some(dto::Range::Int { first: 0, last: None });
        }
        self.fs.get_object(req).await
    }

    /// An empty `delimiter` is no delimiter, as S3 reads it (the CRT client under
    /// s3torchconnector sends `delimiter=`); s3s-fs would group every key under it.
    async fn list_v2(
        &self,
        mut req: S3Request<dto::ListObjectsV2Input>,
    ) -> S3Result<S3Response<dto::ListObjectsV2Output>> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        let bucket = req.input.bucket.clone();
        let (credentials, region, service) =
            (req.credentials.clone(), req.region.clone(), req.service.clone());
        let mut resp = self.fs.list_objects_v2(req).await?;
        // S3 lists every object with its ETag (the CRT under s3torchconnector insists);
        // s3s-fs leaves it out. Each is read as HeadObject reads it, so the two agree.
        for object in resp.output.contents.iter_mut().flatten() {
            let Some(key) = object.key.clone() else { continue };
            if object.e_tag.is_some() {
                continue;
            }
            let head = S3Request {
                input: dto::HeadObjectInput {
                    bucket: bucket.clone(),
                    key,
                    ..Default::default()
                },
                method: http::Method::HEAD,
                uri: http::Uri::from_static("/"),
                headers: http::HeaderMap::new(),
                extensions: http::Extensions::new(),
                credentials: credentials.clone(),
                region: region.clone(),
                service: service.clone(),
                trailing_headers: None,
            };
            if let Ok(found) = self.fs.head_object(head).await {
                object.e_tag = found.output.e_tag;
            }
        }
        Ok(resp)
    }

    async fn get_tagging(
        &self,
        req: S3Request<dto::GetObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::GetObjectTaggingOutput>> {
        let object = self.existing(&req.input.bucket, &req.input.key)?;
        let sidecar = self.load(&self.object_sidecar(&object)).await?;
        let tag_set = sidecar
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

    async fn put_tagging(
        &self,
        req: S3Request<dto::PutObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::PutObjectTaggingOutput>> {
        let input = req.input;
        let tags = xml_tags(input.tagging)?;
        let object = self.existing(&input.bucket, &input.key)?;
        let path = self.object_sidecar(&object);
        let mut sidecar = self.load(&path).await?;
        sidecar.object = relative_name(&self.root, &object);
        sidecar.tags = tags;
        self.save(&path, &sidecar).await?;
        Ok(S3Response::new(dto::PutObjectTaggingOutput::default()))
    }

    async fn delete_tagging(
        &self,
        req: S3Request<dto::DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<dto::DeleteObjectTaggingOutput>> {
        let object = self.existing(&req.input.bucket, &req.input.key)?;
        let path = self.object_sidecar(&object);
        let mut sidecar = self.load(&path).await?;
        sidecar.tags.clear();
        self.save(&path, &sidecar).await?;
        Ok(S3Response::new(dto::DeleteObjectTaggingOutput::default()))
    }

    async fn get_acl(
        &self,
        req: S3Request<dto::GetObjectAclInput>,
    ) -> S3Result<S3Response<dto::GetObjectAclOutput>> {
        let object = self.existing(&req.input.bucket, &req.input.key)?;
        let sidecar = self.load(&self.object_sidecar(&object)).await?;
        Ok(S3Response::new(dto::GetObjectAclOutput {
            grants: Some(grants(sidecar.acl.as_deref())),
            owner: Some(owner()),
            request_charged: None,
        }))
    }

    async fn put_acl(
        &self,
        req: S3Request<dto::PutObjectAclInput>,
    ) -> S3Result<S3Response<dto::PutObjectAclOutput>> {
        let input = req.input;
        let explicit = input.access_control_policy.is_some()
            || input.grant_full_control.is_some()
            || input.grant_read.is_some()
            || input.grant_read_acp.is_some()
            || input.grant_write.is_some()
            || input.grant_write_acp.is_some();
        if explicit {
            return Err(s3_error!(
                NotImplemented,
                "the dev store takes canned ACLs only (x-amz-acl), not grants"
            ));
        }
        if input.acl.is_none() {
            return Err(s3_error!(InvalidRequest, "give a canned ACL in x-amz-acl"));
        }
        let acl = canned_acl(input.acl.as_ref())?;
        let object = self.existing(&input.bucket, &input.key)?;
        let path = self.object_sidecar(&object);
        let mut sidecar = self.load(&path).await?;
        sidecar.object = relative_name(&self.root, &object);
        sidecar.acl = acl;
        self.save(&path, &sidecar).await?;
        Ok(S3Response::new(dto::PutObjectAclOutput::default()))
    }

    async fn bucket_acl(
        &self,
        req: S3Request<dto::GetBucketAclInput>,
    ) -> S3Result<S3Response<dto::GetBucketAclOutput>> {
        let head = req.map_input(|i| dto::HeadBucketInput {
            bucket: i.bucket,
            ..Default::default()
        });
        self.fs.head_bucket(head).await?;
        Ok(S3Response::new(dto::GetBucketAclOutput {
            grants: Some(grants(None)),
            owner: Some(owner()),
        }))
    }
}

/// Operations s3s-fs implements, passed to it unchanged.
macro_rules! passed_to_s3s_fs {
    ($($op:ident: $input:ident => $output:ident;)*) => {$(
        fn $op<'a, 'f>(&'a self, req: S3Request<dto::$input>) -> Answer<'f, dto::$output>
        where
            'a: 'f,
            Self: 'f,
        {
            self.fs.$op(req)
        }
    )*};
}

/// Operations answered (or completed) by a [`DevStore`] method.
macro_rules! answered_here {
    ($($op:ident: $input:ident => $output:ident by $method:ident;)*) => {$(
        fn $op<'a, 'f>(&'a self, req: S3Request<dto::$input>) -> Answer<'f, dto::$output>
        where
            'a: 'f,
            Self: 'f,
        {
            Box::pin(self.$method(req))
        }
    )*};
}

impl S3 for DevStore {
    passed_to_s3s_fs! {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        delete_bucket: DeleteBucketInput => DeleteBucketOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        upload_part: UploadPartInput => UploadPartOutput;
        upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
        list_parts: ListPartsInput => ListPartsOutput;
    }

    answered_here! {
        get_object: GetObjectInput => GetObjectOutput by get;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output by list_v2;
        head_object: HeadObjectInput => HeadObjectOutput by head;
        put_object: PutObjectInput => PutObjectOutput by put;
        copy_object: CopyObjectInput => CopyObjectOutput by copy;
        delete_object: DeleteObjectInput => DeleteObjectOutput by delete;
        delete_objects: DeleteObjectsInput => DeleteObjectsOutput by delete_many;
        create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput by create_upload;
        complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput by complete_upload;
        abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput by abort_upload;
        get_object_tagging: GetObjectTaggingInput => GetObjectTaggingOutput by get_tagging;
        put_object_tagging: PutObjectTaggingInput => PutObjectTaggingOutput by put_tagging;
        delete_object_tagging: DeleteObjectTaggingInput => DeleteObjectTaggingOutput by delete_tagging;
        get_object_acl: GetObjectAclInput => GetObjectAclOutput by get_acl;
        put_object_acl: PutObjectAclInput => PutObjectAclOutput by put_acl;
        get_bucket_acl: GetBucketAclInput => GetBucketAclOutput by bucket_acl;
    }
}

/// The file s3s-fs serves for `bucket`/`key`, found the way s3s-fs finds it
/// (path-absolutize's `absolutize_virtually` of `bucket/key` under `root`): `.` and empty
/// segments vanish, `..` drops the segment before it and is ignored once nothing is left
/// (so it can leave the bucket but never `root`), and a key starting with `/` makes the
/// path absolute, kept only if it lies under `root`. `None` where s3s-fs refuses the key
/// or fails on it (nothing left at all).
fn object_path(root: &Path, bucket: &str, key: &str) -> Option<PathBuf> {
    let joined = Path::new(bucket).join(key);
    let mut segments = Vec::new();
    for c in joined.components() {
        match c {
            Component::Normal(s) => segments.push(s),
            Component::ParentDir => {
                segments.pop();
            }
            Component::CurDir | Component::RootDir => {}
            Component::Prefix(_) => return None,
        }
    }
    if joined.is_absolute() {
        let path: PathBuf = std::iter::once(Component::RootDir.as_os_str())
            .chain(segments)
            .collect();
        return path.starts_with(root).then_some(path);
    }
    if segments.is_empty() {
        return None;
    }
    Some(segments.into_iter().fold(root.to_path_buf(), |p, s| p.join(s)))
}

/// How a sidecar names its object: the path under the data dir.
fn relative_name(root: &Path, object: &Path) -> String {
    object
        .strip_prefix(root)
        .unwrap_or(object)
        .to_string_lossy()
        .into_owned()
}

/// `dir/<hex SHA-256 of id>.json`: a flat name whatever `id` holds.
fn sidecar_file(dir: &Path, id: &[u8]) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id);
    dir.join(format!("{}.json", hex::encode(digest.as_ref())))
}

/// Tags from an `x-amz-tagging` header: a URL-encoded query string, `k1=v1&k2=v2`.
fn header_tags(header: Option<&str>) -> S3Result<Vec<(String, String)>> {
    let tags = url::form_urlencoded::parse(header.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    checked_tags(tags)
}

/// Tags from a PutObjectTagging body.
fn xml_tags(tagging: dto::Tagging) -> S3Result<Vec<(String, String)>> {
    let tags = tagging
        .tag_set
        .into_iter()
        .map(|t| match t.key {
            Some(key) => Ok((key, t.value.unwrap_or_default())),
            None => Err(s3_error!(InvalidTag, "a tag has no Key")),
        })
        .collect::<S3Result<Vec<_>>>()?;
    checked_tags(tags)
}

/// S3's rules: at most 10 tags, keys of 1 to 128 characters, values of at most 256, no key
/// twice.
fn checked_tags(tags: Vec<(String, String)>) -> S3Result<Vec<(String, String)>> {
    if tags.len() > MAX_TAGS {
        return Err(s3_error!(
            InvalidTag,
            "an object can have at most {MAX_TAGS} tags"
        ));
    }
    for (i, (key, value)) in tags.iter().enumerate() {
        let key_len = key.chars().count();
        if key_len == 0 || key_len > 128 {
            return Err(s3_error!(InvalidTag, "a tag key must have 1 to 128 characters"));
        }
        if value.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "a tag value can have at most 256 characters"
            ));
        }
        if tags[..i].iter().any(|(k, _)| k == key) {
            return Err(s3_error!(InvalidTag, "tag keys must be unique"));
        }
    }
    Ok(tags)
}

/// The canned ACL to keep: `None` for none or `private` (the default), an error for a name
/// S3 does not define for objects.
fn canned_acl(acl: Option<&dto::ObjectCannedACL>) -> S3Result<Option<String>> {
    match acl.map(dto::ObjectCannedACL::as_str) {
        None | Some(dto::ObjectCannedACL::PRIVATE) => Ok(None),
        Some(name) if canned_grants(name).is_some() => Ok(Some(name.to_string())),
        Some(name) => Err(s3_error!(InvalidArgument, "unknown canned ACL {name:?}")),
    }
}

/// The group grants a canned ACL adds to the owner's FULL_CONTROL. The bucket owner is the
/// object owner here (one account) and there is no EC2, so the `bucket-owner-*` and
/// `aws-exec-read` ACLs add nothing.
fn canned_grants(acl: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match acl {
        "private" | "bucket-owner-read" | "bucket-owner-full-control" | "aws-exec-read" => Some(&[]),
        "public-read" => Some(&[(ALL_USERS, dto::Permission::READ)]),
        "public-read-write" => Some(&[
            (ALL_USERS, dto::Permission::READ),
            (ALL_USERS, dto::Permission::WRITE),
        ]),
        "authenticated-read" => Some(&[(AUTHENTICATED_USERS, dto::Permission::READ)]),
        _ => None,
    }
}

fn owner() -> dto::Owner {
    dto::Owner {
        display_name: Some(OWNER_ID.to_string()),
        id: Some(OWNER_ID.to_string()),
    }
}

/// The owner's FULL_CONTROL, then what the canned ACL grants.
fn grants(acl: Option<&str>) -> dto::Grants {
    let owner_grant = dto::Grant {
        grantee: Some(dto::Grantee {
            display_name: Some(OWNER_ID.to_string()),
            email_address: None,
            id: Some(OWNER_ID.to_string()),
            type_: dto::Type::from_static(dto::Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(dto::Permission::from_static(dto::Permission::FULL_CONTROL)),
    };
    let groups = acl.and_then(canned_grants).unwrap_or_default();
    std::iter::once(owner_grant)
        .chain(groups.iter().map(|(uri, permission)| dto::Grant {
            grantee: Some(dto::Grantee {
                display_name: None,
                email_address: None,
                id: None,
                type_: dto::Type::from_static(dto::Type::GROUP),
                uri: Some((*uri).to_string()),
            }),
            permission: Some(dto::Permission::from_static(permission)),
        }))
        .collect()
}

/// A feature-store stand-in: `POST /get-online-features` answers demo features to callers
/// presenting `token` — so the dev proxy's credential swap is really checked.
pub async fn serve_features(listener: TcpListener, token: String) {
    let expected = format!("Bearer {token}");
    crate::server::serve_simple(listener, move |req| {
        let authorized = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == expected.as_str());
        let found = req.uri().path() == "/get-online-features";
        let (status, body) = match (authorized, found) {
            (false, _) => (401, r#"{"error":"missing or wrong feature-store credential"}"#),
            (true, false) => (404, r#"{"error":"no such endpoint"}"#),
            (true, true) => (
                200,
                r#"{"metadata":{"feature_names":["user_id","avg_session_minutes"]},"results":[{"values":[1001,37.5]}]}"#,
            ),
        };
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap_or_default()
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn objects_resolve_as_s3s_fs_resolves_them() {
        let root = Path::new("/srv/data");
        let at = |bucket: &str, key: &str| object_path(root, bucket, key);
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(at("b", "x/y.tar"), p("/srv/data/b/x/y.tar"));
        assert_eq!(at("b", "dir/"), p("/srv/data/b/dir"));
        assert_eq!(at("b", "a//./c"), p("/srv/data/b/a/c"));
        assert_eq!(at("b", "./x"), p("/srv/data/b/x"));
        assert_eq!(at("b", "a/../c"), p("/srv/data/b/c"));
        // `..` leaves the bucket, but once nothing is left it is ignored: never above root.
        assert_eq!(at("b", "../other/k"), p("/srv/data/other/k"));
        assert_eq!(at("b", "../../../etc/passwd"), p("/srv/data/etc/passwd"));
        // A leading `/` makes the path absolute: kept only under root.
        assert_eq!(at("b", "/srv/data/b/k"), p("/srv/data/b/k"));
        assert_eq!(at("b", "/srv/data/../x"), None);
        assert_eq!(at("b", "/etc/passwd"), None);
        assert_eq!(at("b", ".."), None);
        // Percent signs are not decoded again: `%2e%2e` is a name.
        assert_eq!(at("b", "%2e%2e/k"), p("/srv/data/b/%2e%2e/k"));
    }

    #[test]
    fn sidecars_have_flat_names_inside_their_dir() {
        let dir = Path::new("/m/objects");
        for id in ["b/k", "../../etc/passwd", "/abs", "", &"k".repeat(5000)] {
            let f = sidecar_file(dir, id.as_bytes());
            assert_eq!(f.parent(), Some(dir), "{id}");
            assert_eq!(f.file_name().unwrap().len(), 64 + ".json".len());
        }
        assert_ne!(sidecar_file(dir, b"b/a"), sidecar_file(dir, b"b/b"));
    }

    #[test]
    fn header_tags_are_url_decoded_and_checked() {
        assert_eq!(
            header_tags(Some("team=ml&run%20id=exp+42&empty=")).unwrap(),
            vec![
                ("team".to_string(), "ml".to_string()),
                ("run id".to_string(), "exp 42".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        assert!(header_tags(None).unwrap().is_empty());
        assert!(header_tags(Some("a=1&a=2")).is_err());
        assert!(header_tags(Some("=v")).is_err());
        let eleven: Vec<String> = (0..11).map(|i| format!("k{i}=v")).collect();
        assert!(header_tags(Some(&eleven.join("&"))).is_err());
        assert!(header_tags(Some(&format!("k={}", "v".repeat(257)))).is_err());
    }

    #[test]
    fn xml_tags_need_keys() {
        let tag = |k: Option<&str>, v: Option<&str>| dto::Tag {
            key: k.map(str::to_string),
            value: v.map(str::to_string),
        };
        let tagging = |tag_set| dto::Tagging { tag_set };
        assert_eq!(
            xml_tags(tagging(vec![tag(Some("k"), Some("v")), tag(Some("e"), None)])).unwrap(),
            vec![("k".into(), "v".into()), ("e".into(), String::new())]
        );
        assert!(xml_tags(tagging(vec![tag(None, Some("v"))])).is_err());
    }

    #[test]
    fn canned_acls_become_grants() {
        let acl = |s: &'static str| dto::ObjectCannedACL::from_static(s);
        assert_eq!(canned_acl(None).unwrap(), None);
        assert_eq!(canned_acl(Some(&acl("private"))).unwrap(), None);
        assert_eq!(
            canned_acl(Some(&acl("public-read"))).unwrap().as_deref(),
            Some("public-read")
        );
        assert!(canned_acl(Some(&acl("log-delivery-write"))).is_err());

        let view = |g: dto::Grants| -> Vec<(String, String)> {
            g.into_iter()
                .map(|g| {
                    let who = g.grantee.unwrap();
                    (
                        who.id.or(who.uri).unwrap(),
                        g.permission.unwrap().as_str().to_string(),
                    )
                })
                .collect()
        };
        let full = (OWNER_ID.to_string(), "FULL_CONTROL".to_string());
        assert_eq!(view(grants(None)), vec![full.clone()]);
        assert_eq!(
            view(grants(Some("public-read-write"))),
            vec![
                full.clone(),
                (ALL_USERS.to_string(), "READ".to_string()),
                (ALL_USERS.to_string(), "WRITE".to_string()),
            ]
        );
        assert_eq!(
            view(grants(Some("authenticated-read"))),
            vec![full, (AUTHENTICATED_USERS.to_string(), "READ".to_string())]
        );
    }
}
