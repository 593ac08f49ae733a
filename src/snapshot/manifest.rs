//! The facts of a run: written into the Parquet footer's key-value metadata and, after the
//! data file, as `_manifest.json` beside it.
//!
//! The footer is written last, so the file itself is the commit record; the JSON copy is for
//! tools that do not read Parquet footers and for cheap listing. Neither ever holds a secret.

use parquet::file::metadata::KeyValue;
use serde::{Deserialize, Serialize};

/// Tallies of one scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows written.
    pub users: u64,
    /// Rows tagged managed.
    pub managed: u64,
    /// Rows tagged unmanaged.
    pub unmanaged: u64,
    /// Rows whose `claimStatus` was absent or undocumented.
    pub unknown: u64,
    /// Records dropped because they were not managed while `scan_unmanaged_users = false`.
    pub dropped_not_managed: u64,
    /// Records skipped because their `accountId` was already seen in this scan.
    pub duplicates: u64,
    /// `addedToOrg` values that were not ISO-8601 (stored as null; kept in `raw`).
    pub unparsed_timestamps: u64,
}

/// HTTP effort of one scan.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpEffort {
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Seconds spent waiting for retries and rate-limit resets.
    pub wait_secs: f64,
}

/// The data file the manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFileFacts {
    /// Path relative to `storage.url`.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Row count.
    pub rows: u64,
}

/// Everything recorded about one published snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of the `atlassian_users` schema.
    pub schema_version: u32,
    /// idsnap's version.
    pub idsnap_version: String,
    /// Connection name.
    pub connection: String,
    /// Connection slug (the partition value).
    pub connection_slug: String,
    /// Atlassian Organization ID.
    pub org_id: String,
    /// `YYYY-MM-DD`.
    pub snapshot_date: String,
    /// RFC 3339, UTC.
    pub scan_started_at: String,
    /// RFC 3339, UTC.
    pub scan_finished_at: String,
    /// `list` or `search`.
    pub users_endpoint: String,
    /// As configured.
    pub scan_unmanaged_users: bool,
    /// As configured.
    pub member_source_of_truth: bool,
    /// Tallies.
    pub counts: Counts,
    /// Pages fetched.
    pub pages: u64,
    /// What `/users/count` said after the walk (same filter), if it answered.
    pub api_count: Option<u64>,
    /// HTTP effort.
    pub http: HttpEffort,
    /// The data file.
    pub data_file: DataFileFacts,
}

impl Manifest {
    /// The facts as Parquet key-value metadata (`idsnap.*` keys). The data-file facts are
    /// left out: a file cannot describe its own final size.
    pub fn key_values(&self) -> Vec<KeyValue> {
        let kv = |k: &str, v: String| KeyValue::new(format!("idsnap.{k}"), v);
        let c = &self.counts;
        vec![
            kv("schema_version", self.schema_version.to_string()),
            kv("idsnap_version", self.idsnap_version.clone()),
            kv("connection", self.connection.clone()),
            kv("connection_slug", self.connection_slug.clone()),
            kv("org_id", self.org_id.clone()),
            kv("snapshot_date", self.snapshot_date.clone()),
            kv("scan_started_at", self.scan_started_at.clone()),
            kv("scan_finished_at", self.scan_finished_at.clone()),
            kv("users_endpoint", self.users_endpoint.clone()),
            kv(
                "scan_unmanaged_users",
                self.scan_unmanaged_users.to_string(),
            ),
            kv(
                "member_source_of_truth",
                self.member_source_of_truth.to_string(),
            ),
            kv("users", c.users.to_string()),
            kv("managed", c.managed.to_string()),
            kv("unmanaged", c.unmanaged.to_string()),
            kv("unknown", c.unknown.to_string()),
            kv("dropped_not_managed", c.dropped_not_managed.to_string()),
            kv("duplicates", c.duplicates.to_string()),
            kv("pages", self.pages.to_string()),
            kv(
                "api_count",
                self.api_count.map(|n| n.to_string()).unwrap_or_default(),
            ),
            kv("http_requests", self.http.requests.to_string()),
            kv("http_retries", self.http.retries.to_string()),
            kv("http_wait_secs", format!("{:.3}", self.http.wait_secs)),
        ]
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Serialising plain strings, numbers and booleans cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}
