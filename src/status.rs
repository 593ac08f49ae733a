//! The status file: each connection's last attempt, last success, exit code and counts,
//! rewritten atomically after every run so a monitor can alert on staleness.
//!
//! The file is JSON. It is written to a temporary file in the same folder, flushed to disk,
//! and renamed over the old one, so a reader never sees half of it. Updates are serialised
//! in-process (connections may finish at the same time) and merge with what the file already
//! holds, so `last_success` survives failed runs and runs of other connections.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::job::ConnectionReport;

/// One connection's entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// Connection name.
    pub connection: String,
    /// When the last run ended (RFC 3339).
    pub last_attempt: Option<String>,
    /// When the last successful run ended.
    pub last_success: Option<String>,
    /// Exit code of the last run.
    pub last_exit_code: Option<u8>,
    /// Why the last run failed, if it did.
    pub last_error: Option<String>,
    /// Snapshot date of the last successful run.
    pub last_snapshot_date: Option<String>,
    /// Users in the last published snapshot.
    pub users: Option<u64>,
    /// Managed users in it.
    pub managed: Option<u64>,
    /// Unmanaged users in it.
    pub unmanaged: Option<u64>,
    /// Users tagged unknown in it.
    pub unknown: Option<u64>,
    /// Runs recorded since the file was created.
    pub runs: u64,
    /// Failed runs recorded since the file was created.
    pub failures: u64,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFile {
    /// When the file was last written.
    pub updated_at: Option<String>,
    /// Entries by connection slug.
    pub connections: BTreeMap<String, ConnectionStatus>,
}

/// Serialises writers of one status file within the process.
static WRITE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Merges `reports` (with their slugs) into the file at `path` and rewrites it atomically.
pub async fn record(path: &Path, reports: &[(String, &ConnectionReport)]) -> std::io::Result<()> {
    let _guard = WRITE_LOCK.lock().await;
    let now = rfc3339(Utc::now());
    let mut file: StatusFile = match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "The status file does not parse; starting it afresh.");
            StatusFile::default()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StatusFile::default(),
        Err(e) => return Err(e),
    };
    for (slug, report) in reports {
        let entry = file.connections.entry(slug.clone()).or_default();
        entry.connection = report.name.clone();
        entry.last_attempt = Some(now.clone());
        entry.last_exit_code = Some(report.exit_code());
        entry.runs += 1;
        match &report.outcome {
            Ok(summary) => {
                let c = &summary.manifest.counts;
                entry.last_success = Some(now.clone());
                entry.last_snapshot_date = Some(summary.manifest.snapshot_date.clone());
                entry.users = Some(c.users);
                entry.managed = Some(c.managed);
                entry.unmanaged = Some(c.unmanaged);
                entry.unknown = Some(c.unknown);
                entry.last_error = summary
                    .changes
                    .as_ref()
                    .err()
                    .map(|e| format!("change feed: {e}"));
                if summary.changes.is_err() {
                    entry.failures += 1;
                }
            }
            Err(e) => {
                entry.failures += 1;
                entry.last_error = Some(e.to_string());
            }
        }
    }
    file.updated_at = Some(now);
    let mut text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
    text.push('\n');
    write_atomically(path, text.as_bytes()).await
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_owned();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        std::fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "status".into());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(std::io::Error::other)?
}
