//! Finding published snapshots: which dates exist for a connection and what their
//! manifests say.
//!
//! Only the storage listing and the manifests are read here, never the data files. A
//! manifest that is missing or does not parse makes that snapshot unusable as a baseline;
//! callers are told which one was skipped.

use chrono::NaiveDate;
use object_store::ObjectStoreExt;

use super::manifest::Manifest;
use super::{SnapshotKey, USERS_DATASET};
use crate::store::{Storage, StorageError};

/// Dates that have a partition folder for `slug`, ascending.
pub async fn snapshot_dates(storage: &Storage, slug: &str) -> Result<Vec<NaiveDate>, StorageError> {
    let folder = storage.path(&format!("{USERS_DATASET}/connection={slug}"));
    let listing = storage
        .store
        .list_with_delimiter(Some(&folder))
        .await
        .map_err(|e| storage.error("listing", &folder, e))?;
    let mut dates: Vec<NaiveDate> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| {
            p.filename()?
                .strip_prefix("snapshot_date=")
                .map(str::to_owned)
        })
        .filter_map(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
        .collect();
    dates.sort();
    Ok(dates)
}

/// All connection slugs that have snapshots, ascending.
pub async fn connection_slugs(storage: &Storage) -> Result<Vec<String>, StorageError> {
    let folder = storage.path(USERS_DATASET);
    let listing = storage
        .store
        .list_with_delimiter(Some(&folder))
        .await
        .map_err(|e| storage.error("listing", &folder, e))?;
    let mut slugs: Vec<String> = listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename()?.strip_prefix("connection=").map(str::to_owned))
        .collect();
    slugs.sort();
    Ok(slugs)
}

/// Why a snapshot's manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestProblem {
    /// No manifest object (an interrupted run, or one from another tool).
    #[error("no manifest")]
    Missing,
    /// The manifest does not parse.
    #[error("the manifest is not valid JSON: {0}")]
    Invalid(String),
    /// The data file is missing or not the size the manifest recorded.
    #[error("the manifest does not match the data file")]
    Mismatch,
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Reads a snapshot's manifest.
pub async fn read_manifest(
    storage: &Storage,
    key: &SnapshotKey,
) -> Result<Manifest, ManifestProblem> {
    let path = storage.path(&key.manifest_path());
    let bytes = match storage.store.get(&path).await {
        Ok(r) => r
            .bytes()
            .await
            .map_err(|e| storage.error("reading", &path, e))?,
        Err(object_store::Error::NotFound { .. }) => return Err(ManifestProblem::Missing),
        Err(e) => return Err(storage.error("reading", &path, e).into()),
    };
    serde_json::from_slice(&bytes).map_err(|e| ManifestProblem::Invalid(e.to_string()))
}

/// Checks that the data file exists with the size the manifest recorded.
pub async fn data_matches_manifest(
    storage: &Storage,
    key: &SnapshotKey,
    manifest: &Manifest,
) -> Result<bool, StorageError> {
    let path = storage.path(&key.data_path());
    match storage.store.head(&path).await {
        Ok(meta) => Ok(meta.size == manifest.data_file.size_bytes),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(storage.error("reading", &path, e)),
    }
}

/// A snapshot's manifest, if the snapshot can be trusted: the manifest parses and the data
/// file exists with the size it records. Only such snapshots serve as baselines.
pub async fn usable_manifest(
    storage: &Storage,
    key: &SnapshotKey,
) -> Result<Manifest, ManifestProblem> {
    let manifest = read_manifest(storage, key).await?;
    if data_matches_manifest(storage, key, &manifest).await? {
        Ok(manifest)
    } else {
        Err(ManifestProblem::Mismatch)
    }
}

/// The most recent usable snapshot of `slug` dated on or before `date`, skipping (with a
/// warning) those whose manifest is missing, unreadable, or does not match its data file.
pub async fn latest_usable(
    storage: &Storage,
    slug: &str,
    date: NaiveDate,
) -> Result<Option<(NaiveDate, Manifest)>, StorageError> {
    let dates = snapshot_dates(storage, slug).await?;
    for d in dates.into_iter().rev().filter(|d| *d <= date) {
        let key = SnapshotKey {
            slug: slug.to_owned(),
            date: d,
        };
        match usable_manifest(storage, &key).await {
            Ok(m) => return Ok(Some((d, m))),
            Err(ManifestProblem::Storage(e)) => return Err(e),
            Err(problem) => {
                tracing::warn!(snapshot = %key.partition(), problem = %problem, "Skipping a snapshot that cannot serve as a baseline.")
            }
        }
    }
    Ok(None)
}
