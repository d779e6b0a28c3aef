//! The dev S3 store: s3s-fs (a real S3 implementation that verifies SigV4) over a folder,
//! seeded with demo data; and a stand-in feature store for the example HTTP route.

use std::path::Path;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
pub async fn serve_s3(
    listener: TcpListener,
    data: &Path,
    access_key: &str,
    secret: &str,
) -> Result<(), String> {
    let fs = s3s_fs::FileSystem::new(data).map_err(|e| format!("{}: {e:?}", data.display()))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
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
