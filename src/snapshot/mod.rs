//! Snapshots: where they live, what they contain, and how they are written and committed.
//!
//! The layout is the contract analysts query (Hive-style partitions):
//! ```text
//! <storage.url>/atlassian_users/connection=<slug>/snapshot_date=<YYYY-MM-DD>/users.parquet
//! <storage.url>/atlassian_users/connection=<slug>/snapshot_date=<YYYY-MM-DD>/_manifest.json
//! ```
//! The data file is written first and appears whole or not at all (a single PUT, or a
//! multipart upload that is completed only after the walk succeeded); the manifest follows.

pub mod catalog;
pub mod manifest;
pub mod reader;
pub mod schema;
pub mod writer;

use chrono::NaiveDate;

/// The dataset folder under `storage.url`.
pub const USERS_DATASET: &str = "atlassian_users";
/// The data file's name inside a partition.
pub const DATA_FILE: &str = "users.parquet";
/// The manifest's name inside a partition.
pub const MANIFEST_FILE: &str = "_manifest.json";
/// MIME type of Parquet objects.
pub const PARQUET_CONTENT_TYPE: &str = "application/vnd.apache.parquet";

/// Identifies one snapshot: a connection's slug and a UTC date.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotKey {
    /// The connection slug (already restricted to `[a-z0-9-]`).
    pub slug: String,
    /// The snapshot date.
    pub date: NaiveDate,
}

impl SnapshotKey {
    /// `atlassian_users/connection=<slug>/snapshot_date=<date>`, relative to the storage prefix.
    pub fn partition(&self) -> String {
        format!(
            "{USERS_DATASET}/connection={}/snapshot_date={}",
            self.slug,
            self.date.format("%Y-%m-%d")
        )
    }

    /// The data file, relative to the storage prefix.
    pub fn data_path(&self) -> String {
        format!("{}/{DATA_FILE}", self.partition())
    }

    /// The manifest, relative to the storage prefix.
    pub fn manifest_path(&self) -> String {
        format!("{}/{MANIFEST_FILE}", self.partition())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let key = SnapshotKey {
            slug: "emea-atlassian".into(),
            date: NaiveDate::from_ymd_opt(2026, 12, 3).unwrap(),
        };
        assert_eq!(
            key.data_path(),
            "atlassian_users/connection=emea-atlassian/snapshot_date=2026-12-03/users.parquet"
        );
        assert_eq!(
            key.manifest_path(),
            "atlassian_users/connection=emea-atlassian/snapshot_date=2026-12-03/_manifest.json"
        );
    }
}
