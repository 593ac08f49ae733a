//! Storage: from `storage.url` to an object store and a prefix inside it.
//!
//! This module owns the mapping from a URL (`file://./snapshots`, `s3://bucket/prefix`,
//! `gs://…`, `az://…`, `memory://`) and `[storage.options]` to an
//! [`object_store::ObjectStore`]. Cloud builders start from their `from_env()` form, so the
//! usual credential sources (environment, profile, web identity, instance metadata) work
//! without any secret in the config file; `[storage.options]` keys override them and an
//! unknown key is an error rather than silently ignored. It knows nothing of snapshots.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use crate::config::StorageConfig;

/// A validated `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// A folder on this machine (`file://./snapshots`, `file:///var/lib/idsnap`, or a bare path).
    Local(PathBuf),
    /// Any other object_store URL.
    Remote(Url),
}

impl StorageUrl {
    /// Parses a storage URL; relative `file://` paths are relative to the working directory.
    pub fn parse(raw: &str) -> Result<StorageUrl, String> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("file://") {
            if rest.is_empty() {
                return Err("file:// needs a path, e.g. file://./snapshots".into());
            }
            return Ok(StorageUrl::Local(PathBuf::from(rest)));
        }
        if !raw.contains("://") {
            if raw.is_empty() {
                return Err("must not be empty".into());
            }
            return Ok(StorageUrl::Local(PathBuf::from(raw)));
        }
        let url = Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
        match url.scheme() {
            "memory" => {}
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!(
                        "{} URL needs a bucket or container: {}://NAME/prefix",
                        url.scheme(),
                        url.scheme()
                    ));
                }
            }
            other => {
                return Err(format!(
                    "unsupported scheme {other:?}: use file://, s3://, gs://, az:// or memory://"
                ));
            }
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(
                "must not have a query or fragment; put settings in [storage.options]".into(),
            );
        }
        Ok(StorageUrl::Remote(url))
    }
}

impl fmt::Display for StorageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageUrl::Local(p) => write!(f, "file://{}", p.display()),
            StorageUrl::Remote(u) => write!(f, "{u}"),
        }
    }
}

/// An opened store plus the prefix every snapshot path goes under.
#[derive(Clone)]
pub struct Storage {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// The path inside the store that `storage.url` points at.
    pub prefix: Path,
    /// `storage.url` as written, for messages.
    pub url: String,
    /// Whether the store keeps object attributes such as the content type (the local file
    /// system does not, and refuses uploads that carry them).
    pub supports_attributes: bool,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Why a store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The URL or options were rejected by the store's builder.
    #[error("cannot open storage {url}: {message}")]
    Open {
        /// `storage.url`.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// An operation on the store failed.
    #[error("storage {url}: {action} {path} failed: {}", explain(.source))]
    Operation {
        /// `storage.url`.
        url: String,
        /// What we were doing ("uploading", "reading", ...).
        action: &'static str,
        /// The object concerned.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
}

impl Storage {
    /// Opens the store named by `[storage]`. A local folder is created if missing.
    pub fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        let url = config.url.to_string();
        let open_err = |message: String| StorageError::Open {
            url: url.clone(),
            message,
        };
        match &config.url {
            StorageUrl::Local(dir) => {
                if !config.options.is_empty() {
                    return Err(open_err(
                        "[storage.options] do not apply to a local folder".into(),
                    ));
                }
                std::fs::create_dir_all(dir).map_err(|e| {
                    open_err(format!("cannot create folder {}: {e}", dir.display()))
                })?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| open_err(e.to_string()))?;
                Ok(Storage {
                    store: Arc::new(store),
                    prefix: Path::default(),
                    url,
                    supports_attributes: false,
                })
            }
            StorageUrl::Remote(remote) => {
                let (store, prefix) = open_remote(remote, config).map_err(open_err)?;
                Ok(Storage {
                    store,
                    prefix,
                    url,
                    supports_attributes: true,
                })
            }
        }
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Storage {
        Storage {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: Path::default(),
            url: "memory://".into(),
            supports_attributes: true,
        }
    }

    /// `prefix/relative`.
    pub fn path(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// Wraps an object_store error with the URL, what we were doing and the object.
    pub fn error(
        &self,
        action: &'static str,
        path: &Path,
        source: object_store::Error,
    ) -> StorageError {
        StorageError::Operation {
            url: self.url.clone(),
            action,
            path: path.to_string(),
            source: Box::new(source),
        }
    }
}

impl Storage {
    /// Writes, reads back and deletes a small probe object under the prefix, and says in
    /// plain words what failed.
    pub async fn probe(&self) -> Result<(), String> {
        use object_store::ObjectStoreExt;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self.path(&format!("_idsnap_probe/{nonce:x}.txt"));
        let body = format!("idsnap storage probe {nonce:x}\n");
        self.store
            .put(&path, object_store::PutPayload::from(body.clone()))
            .await
            .map_err(|e| format!("cannot write {path}: {}", explain(&e)))?;
        let back = match self.store.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| format!("cannot read back {path}: {}", explain(&e)))?,
            Err(e) => return Err(format!("cannot read back {path}: {}", explain(&e))),
        };
        if back.as_ref() != body.as_bytes() {
            return Err(format!("read back {path} but got different bytes"));
        }
        self.store
            .delete(&path)
            .await
            .map_err(|e| format!("cannot delete {path}: {}", explain(&e)))?;
        Ok(())
    }
}

/// Turns an object_store error into the likely cause, in plain words, followed by the
/// store's own text.
pub fn explain(e: &object_store::Error) -> String {
    let text = e.to_string();
    let has = |needle: &str| text.contains(needle);
    let cause = if has("NoSuchBucket")
        || has("ContainerNotFound")
        || has("The specified bucket does not exist")
    {
        "the bucket does not exist"
    } else if has("PermanentRedirect")
        || has("AuthorizationHeaderMalformed")
        || has("IllegalLocationConstraint")
        || has("wrong region")
    {
        "the bucket is in another region: set aws_region in [storage.options]"
    } else if matches!(
        e,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || has("AccessDenied")
        || has("InvalidAccessKeyId")
        || has("SignatureDoesNotMatch")
        || has("403")
    {
        "access denied: check the credentials and the bucket policy"
    } else if has("error sending request")
        || has("Connection refused")
        || has("dns error")
        || has("timed out")
        || has("connect")
    {
        "the endpoint is unreachable: check aws_endpoint and the network"
    } else if matches!(e, object_store::Error::NotFound { .. }) {
        "not found (does the bucket exist?)"
    } else {
        "the store refused the request"
    };
    format!("{cause} ({text})")
}

fn open_remote(url: &Url, config: &StorageConfig) -> Result<(Arc<dyn ObjectStore>, Path), String> {
    let prefix = Path::from_url_path(url.path()).map_err(|e| e.to_string())?;
    let retry = object_store::RetryConfig {
        max_retries: config.max_retries,
        retry_timeout: config.retry_timeout,
        ..Default::default()
    };
    let opts = &config.options;
    let unknown = |k: &str| {
        format!(
            "unknown [storage.options] key {k:?} for {}://",
            url.scheme()
        )
    };
    // The three cloud builders share one shape: start from the environment's credentials,
    // apply every option through the store's own key parser (so typos are errors), build.
    macro_rules! cloud {
        ($builder:ty, $key:ty) => {{
            let mut b = <$builder>::from_env()
                .with_url(url.as_str())
                .with_retry(retry);
            for (k, v) in opts {
                let key = <$key>::from_str(&k.to_ascii_lowercase()).map_err(|_| unknown(k))?;
                b = b.with_config(key, v);
            }
            Arc::new(b.build().map_err(|e| e.to_string())?)
        }};
    }
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "memory" => {
            if let Some(k) = opts.keys().next() {
                return Err(unknown(k));
            }
            Arc::new(object_store::memory::InMemory::new())
        }
        "s3" | "s3a" => cloud!(
            object_store::aws::AmazonS3Builder,
            object_store::aws::AmazonS3ConfigKey
        ),
        "gs" => cloud!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey
        ),
        _ => cloud!(
            object_store::azure::MicrosoftAzureBuilder,
            object_store::azure::AzureConfigKey
        ),
    };
    Ok((store, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            StorageUrl::parse("file://./snapshots").unwrap(),
            StorageUrl::Local("./snapshots".into())
        );
        assert_eq!(
            StorageUrl::parse("/var/lib/x").unwrap(),
            StorageUrl::Local("/var/lib/x".into())
        );
        assert!(matches!(
            StorageUrl::parse("s3://bucket/prefix").unwrap(),
            StorageUrl::Remote(_)
        ));
        assert!(StorageUrl::parse("s3:///nobucket").is_err());
        assert!(StorageUrl::parse("ftp://x/y").is_err());
        assert!(StorageUrl::parse("not a url://").is_err());
    }

    #[test]
    fn unknown_s3_option_is_rejected() {
        let mut config = StorageConfig::new(StorageUrl::parse("s3://bucket/p").unwrap());
        config
            .options
            .insert("aws_endpont".into(), "http://x".into());
        let err = Storage::open(&config).unwrap_err().to_string();
        assert!(err.contains("aws_endpont"), "{err}");
    }
}
