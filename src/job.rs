//! One run: for each connection, test it, walk every page of users, write the snapshot, and
//! report.
//!
//! The stages are wired as in vector's architecture: a walker task fetches and decodes pages
//! and sends them through a bounded channel to the writer, so the next page is being fetched
//! while the previous one is encoded, and memory holds a few pages, not the organization. The
//! data file is completed only after the walk finished cleanly; any failure aborts the upload
//! and publishes nothing, leaving the previous snapshot as it was. Connections run concurrently
//! up to `max_concurrent_connections`, and one failing does not stop the others.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::sync::mpsc;

use crate::atlassian::client::{AdminClient, ApiError, UsersFilter};
use crate::atlassian::model::{ClaimTag, Cursor, UserRecord};
use crate::changes::{self, FeedOutcome};
use crate::config::{Config, ConnectionConfig};
use crate::error::RunError;
use crate::progress::{ConnectionProgress, ProgressBoard};
use crate::schedule::Cancel;
use crate::snapshot::manifest::{Counts, DataFileFacts, HttpEffort, Manifest};
use crate::snapshot::schema::{SCHEMA_VERSION, UsersBatchBuilder, users_schema};
use crate::snapshot::writer::{ParquetUpload, writer_properties};
use crate::snapshot::{SnapshotKey, catalog};
use crate::store::Storage;

/// Rows gathered before a batch is handed to the Parquet encoder.
const BATCH_ROWS: usize = 4096;
/// Decoded pages in flight between the walks and the writer.
const CHANNEL_PAGES: usize = 8;
/// Most walks of one connection at the same time (partitioned walks).
pub const MAX_CONCURRENT_WALKS: usize = 4;
/// The documented `status` values, the partitions of a partitioned walk.
const KNOWN_STATUSES: [&str; 5] = [
    "active",
    "suspended",
    "not_invited",
    "deactivated",
    "for_deletion",
];

/// Options of one `run` (or `demo`) invocation.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the snapshot date (backfills, tests). Default: UTC date at scan start.
    pub snapshot_date: Option<NaiveDate>,
    /// Publish even if the population guard would refuse.
    pub accept_drop: bool,
    /// Fires when the run must give up (the daemon's shutdown grace is over); the upload is
    /// then aborted and nothing is published.
    pub cancel: Cancel,
    /// Where to report progress, if anyone is watching.
    pub progress: Option<Arc<ProgressBoard>>,
}

/// What one connection's successful run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The manifest that was published.
    pub manifest: Manifest,
    /// Wall time of the run.
    pub duration: Duration,
    /// Where the data file went (URL form).
    pub location: String,
    /// The change feed: written, not needed (first snapshot), or failed (the snapshot itself
    /// is published all the same).
    pub changes: Result<FeedOutcome, String>,
}

/// One connection's outcome, in config order.
#[derive(Debug)]
pub struct ConnectionReport {
    /// Connection name.
    pub name: String,
    /// Published summary or the reason nothing was published.
    pub outcome: Result<RunSummary, RunError>,
    /// Wall time of the run, failed or not.
    pub duration: Duration,
    /// HTTP requests the run sent, retries included.
    pub http_requests: u64,
    /// HTTP requests that were retries.
    pub http_retries: u64,
}

impl ConnectionReport {
    /// 0 on success, else the failure's exit code. A published snapshot whose change feed
    /// could not be written counts as a storage failure (6).
    pub fn exit_code(&self) -> u8 {
        match &self.outcome {
            Ok(summary) if summary.changes.is_err() => crate::error::EXIT_STORAGE,
            Ok(_) => 0,
            Err(e) => e.exit_code(),
        }
    }
}

/// Runs one connection and reports on it, whatever happens.
pub async fn run_one(
    config: &Config,
    storage: &Storage,
    conn: &ConnectionConfig,
    options: &RunOptions,
) -> ConnectionReport {
    let start = Instant::now();
    let (outcome, requests, retries) = match AdminClient::new(conn, &config.http) {
        Ok(client) => {
            let outcome = run_connection(storage, conn, &client, options).await;
            (outcome, client.stats().requests(), client.stats().retries())
        }
        Err(reason) => (
            Err(RunError::Internal {
                connection: conn.name.clone(),
                reason,
            }),
            0,
            0,
        ),
    };
    if let Err(e) = &outcome {
        tracing::error!(connection = %conn.name, exit_code = e.exit_code(), error = %e, "Run failed; nothing published.");
    }
    ConnectionReport {
        name: conn.name.clone(),
        outcome,
        duration: start.elapsed(),
        http_requests: requests,
        http_retries: retries,
    }
}

/// Runs every selected connection (those with a resolved token), at most
/// `max_concurrent_connections` at a time, and returns one report per connection in config
/// order.
pub async fn run_all(
    config: &Config,
    storage: &Storage,
    options: &RunOptions,
) -> Vec<ConnectionReport> {
    let selected: Vec<&ConnectionConfig> = config
        .connections
        .iter()
        .filter(|c| c.token.is_some())
        .collect();
    futures::stream::iter(selected)
        .map(|conn| run_one(config, storage, conn, options))
        .buffered(config.max_concurrent_connections)
        .collect()
        .await
}

/// Scans one connection and publishes its snapshot.
#[tracing::instrument(skip_all, fields(connection = %conn.name))]
pub async fn run_connection(
    storage: &Storage,
    conn: &ConnectionConfig,
    client: &AdminClient,
    options: &RunOptions,
) -> Result<RunSummary, RunError> {
    let clock = Instant::now();
    let started_at = Utc::now();
    if conn.allow_insecure_http && conn.api_base_url.scheme() == "http" {
        tracing::warn!(api_base_url = %conn.api_base_url, "Plain HTTP to the Admin API (allow_insecure_http = true): use this only for a local simulator.");
    }

    // Test the connection first: a bad key or org ID fails here with a clear message, before
    // any upload is started.
    client.directories_page(1, None).await?;

    let key = SnapshotKey {
        slug: conn.slug.clone(),
        date: options
            .snapshot_date
            .unwrap_or_else(|| started_at.date_naive()),
    };
    let filter = UsersFilter {
        claim_status: (!conn.scan_unmanaged_users).then_some("managed"),
        status: None,
    };
    let mut manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        idsnap_version: env!("CARGO_PKG_VERSION").to_owned(),
        connection: conn.name.clone(),
        connection_slug: conn.slug.clone(),
        org_id: conn.org_id.clone(),
        snapshot_date: key.date.format("%Y-%m-%d").to_string(),
        scan_started_at: rfc3339(started_at),
        scan_finished_at: String::new(),
        users_endpoint: conn.users_endpoint.as_str().to_owned(),
        scan_unmanaged_users: conn.scan_unmanaged_users,
        member_source_of_truth: conn.member_source_of_truth,
        counts: Counts::default(),
        pages: 0,
        api_count: None,
        http: HttpEffort::default(),
        data_file: DataFileFacts {
            path: key.data_path(),
            size_bytes: 0,
            rows: 0,
        },
    };

    // The count is asked first too: it sizes the de-duplication set (no doubling while the
    // walk runs) and gives the progress display its total. The count recorded in the
    // manifest is the one asked after the walk.
    let expected = client.users_count(&filter).await.ok();
    let progress = options
        .progress
        .as_ref()
        .map(|board| board.start(&conn.name));
    if let (Some(p), Some(n)) = (&progress, expected) {
        p.set_total(n);
    }
    let walks = plan_walks(client, conn, &filter).await;
    // A 400 on a cursor (expired, or the API lost it) restarts the walk once from the
    // beginning, on a fresh upload; a second one fails the run.
    let mut restarted = false;
    let (upload, stats) = loop {
        match scan_once(
            storage,
            conn,
            client,
            &walks,
            &key,
            ScanContext {
                cancel: options.cancel.clone(),
                progress: progress.clone(),
                expected_users: expected,
            },
        )
        .await
        {
            Ok(done) => break done,
            Err(RunError::Api(e @ ApiError::BadCursor { .. })) if !restarted => {
                tracing::warn!(error = %e, "The API rejected a page cursor; restarting the walk from the first page.");
                restarted = true;
            }
            Err(e) => return Err(e),
        }
    };

    if let Some(p) = &progress {
        p.finish();
    }
    manifest.counts = stats.counts;
    manifest.pages = stats.pages;
    // The count endpoint is a cross-check; if it fails, the scan is still complete.
    manifest.api_count = match client.users_count(&filter).await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "The users count endpoint did not answer; the API count is not recorded.");
            None
        }
    };
    if let Some(api) = manifest.api_count.filter(|n| *n != manifest.counts.users) {
        tracing::warn!(
            api_count = api,
            users = manifest.counts.users,
            "The API's user count differs from the users written (users may have changed during the scan)."
        );
    }
    let finished_at = Utc::now();
    manifest.scan_finished_at = rfc3339(finished_at);
    let effort = client.stats();
    manifest.http = HttpEffort {
        requests: effort.requests(),
        retries: effort.retries(),
        wait_secs: effort.waited().as_secs_f64(),
    };

    if let Err(e) = population_guard(
        storage,
        conn,
        &key,
        manifest.counts.users,
        options.accept_drop,
    )
    .await
    {
        upload.abort().await;
        return Err(e);
    }

    if options.cancel.is_cancelled() {
        upload.abort().await;
        return Err(RunError::Cancelled {
            connection: conn.name.clone(),
        });
    }
    let data = upload
        .finish(manifest.key_values())
        .await
        .map_err(|e| RunError::from_write(&conn.name, e))?;
    manifest.data_file.size_bytes = data.size_bytes;
    manifest.data_file.rows = data.rows;
    let manifest_path = storage.path(&key.manifest_path());
    storage
        .store
        .put(&manifest_path, PutPayload::from(manifest.to_json()))
        .await
        .map_err(|e| storage.error("writing", &manifest_path, e))?;
    tracing::info!(users = manifest.counts.users, pages = manifest.pages, path = %manifest.data_file.path, "Published snapshot.");
    let changes = changes::publish_feed(storage, &key)
        .await
        .map_err(|e| e.to_string());
    match &changes {
        Ok(FeedOutcome::First) => {
            tracing::info!("First snapshot of this connection: no change feed to write.")
        }
        Ok(FeedOutcome::Written {
            previous, counts, ..
        }) => tracing::info!(
            previous = %previous,
            appeared = counts[0],
            vanished = counts[1],
            reappeared = counts[2],
            changed = counts[3],
            "Wrote the change feed."
        ),
        Err(e) => {
            tracing::error!(error = %e, "The snapshot is published, but the change feed could not be written.")
        }
    }
    Ok(RunSummary {
        location: format!("{}/{}", storage.url.trim_end_matches('/'), key.data_path()),
        manifest,
        duration: clock.elapsed(),
        changes,
    })
}

/// What a scan is told besides where to walk: when to give up, whom to tell, how many
/// users to expect.
struct ScanContext {
    cancel: Cancel,
    progress: Option<Arc<ConnectionProgress>>,
    expected_users: Option<u64>,
}

/// Walks every page of every filter (one walk each, at most [`MAX_CONCURRENT_WALKS`] at a
/// time) into a new upload. On success the upload holds every row but is not completed yet;
/// on failure it has been aborted.
async fn scan_once(
    storage: &Storage,
    conn: &ConnectionConfig,
    client: &AdminClient,
    filters: &[UsersFilter],
    key: &SnapshotKey,
    context: ScanContext,
) -> Result<(ParquetUpload, WalkStats), RunError> {
    let ScanContext {
        mut cancel,
        progress,
        expected_users,
    } = context;
    let write_err = |e| RunError::from_write(&conn.name, e);
    // A walk's result, with a panicked walk counted as an internal error.
    let joined = |done: Result<Result<u64, RunError>, tokio::task::JoinError>| {
        done.unwrap_or_else(|e| {
            Err(RunError::Internal {
                connection: conn.name.clone(),
                reason: format!("a page walker stopped: {e}"),
            })
        })
    };
    let mut upload = ParquetUpload::create(
        storage,
        &key.data_path(),
        users_schema(),
        writer_properties(Vec::new()),
    )
    .map_err(write_err)?;
    let (tx, mut rx) = mpsc::channel::<Page>(CHANNEL_PAGES);
    // A little room over the API's count, which drifts while users change; capped, so a
    // hostile count cannot make us allocate without bound.
    let capacity = expected_users.map_or(0, |n| n.min(50_000_000) as usize * 21 / 20 + 1024);
    let tally = Arc::new(Mutex::new(Tally {
        seen: AccountSet::with_capacity(capacity),
        counts: Counts::default(),
    }));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_WALKS));
    let mut walkers = tokio::task::JoinSet::new();
    for filter in filters {
        let (client, filter, tally, tx, permits) = (
            client.clone(),
            filter.clone(),
            Arc::clone(&tally),
            tx.clone(),
            Arc::clone(&permits),
        );
        let keep_unmanaged = conn.scan_unmanaged_users;
        let progress = progress.clone();
        walkers.spawn(tracing::Instrument::instrument(
            async move {
                // The semaphore is never closed, so acquiring only waits.
                let _permit = permits.acquire_owned().await;
                walk(client, filter, keep_unmanaged, tally, tx, progress).await
            },
            tracing::Span::current(),
        ));
    }
    drop(tx);

    let mut builder = UsersBatchBuilder::new(&conn.org_id);
    let mut pages = 0u64;
    let mut failure: Option<RunError> = loop {
        tokio::select! {
            page = rx.recv() => {
                let Some(page) = page else { break None };
                for (user, tag) in &page.users {
                    builder.append(user, *tag, page.received_at);
                }
                if builder.len() >= BATCH_ROWS
                    && let Err(e) = upload.write(&builder.finish()).await {
                        break Some(write_err(e));
                    }
            }
            Some(done) = walkers.join_next() => match joined(done) {
                Ok(n) => pages += n,
                Err(e) => break Some(e),
            },
            _ = cancel.cancelled() => break Some(RunError::Cancelled { connection: conn.name.clone() }),
        }
    };
    // Once every sender is gone, every walk has ended; collect the ones not yet joined.
    while failure.is_none() {
        match walkers.join_next().await.map(joined) {
            None => break,
            Some(Ok(n)) => pages += n,
            Some(Err(e)) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        // The other walks may be waiting out a retry; they have nothing left to deliver to.
        walkers.abort_all();
        upload.abort().await;
        return Err(e);
    }
    if !builder.is_empty()
        && let Err(e) = upload.write(&builder.finish()).await
    {
        upload.abort().await;
        return Err(write_err(e));
    }
    let mut counts = std::mem::take(&mut lock(&tally).counts);
    counts.unparsed_timestamps = builder.bad_timestamps;
    Ok((upload, WalkStats { counts, pages }))
}

/// Decides how to walk a connection: one walk with the base filter, or, with
/// `partitioned_walk`, disjoint walks by `claimStatus` and `status` whose counts the count
/// endpoint confirms add up to the whole. If they do not (an undocumented status value,
/// accounts without `claimStatus`, counts drifting), it falls back to one walk and says so.
async fn plan_walks(
    client: &AdminClient,
    conn: &ConnectionConfig,
    base: &UsersFilter,
) -> Vec<UsersFilter> {
    if !conn.partitioned_walk {
        return vec![base.clone()];
    }
    let claims: &[&'static str] = if conn.scan_unmanaged_users {
        &["managed", "unmanaged"]
    } else {
        &["managed"]
    };
    let parts: Vec<UsersFilter> = claims
        .iter()
        .flat_map(|claim| {
            KNOWN_STATUSES.iter().map(move |status| UsersFilter {
                claim_status: Some(claim),
                status: Some((*status).to_owned()),
            })
        })
        .collect();
    let total = client.users_count(base);
    let counts = futures::future::join_all(parts.iter().map(|f| client.users_count(f)));
    let (total, counts) = tokio::join!(total, counts);
    let counts: Result<Vec<u64>, _> = counts.into_iter().collect();
    match (total, counts) {
        (Ok(total), Ok(counts)) if counts.iter().sum::<u64>() == total => {
            let walks: Vec<UsersFilter> = parts
                .into_iter()
                .zip(&counts)
                .filter(|(_, n)| **n > 0)
                .map(|(f, _)| f)
                .collect();
            tracing::info!(
                walks = walks.len(),
                users = total,
                "Partitioned walk: the partitions' counts add up."
            );
            if walks.is_empty() {
                vec![base.clone()]
            } else {
                walks
            }
        }
        (Ok(total), Ok(counts)) => {
            tracing::warn!(
                total,
                partitions = counts.iter().sum::<u64>(),
                "The partitions' counts do not add up to the total (an unknown status value, or users changing); walking once instead."
            );
            vec![base.clone()]
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "The count endpoint did not answer; walking once instead of partitioning.");
            vec![base.clone()]
        }
    }
}

/// Refuses to publish a scan far smaller than the latest earlier snapshot of the same
/// connection, which usually means a broken key scope or an API incident, not a layoff.
async fn population_guard(
    storage: &Storage,
    conn: &ConnectionConfig,
    key: &SnapshotKey,
    users: u64,
    accept_drop: bool,
) -> Result<(), RunError> {
    if accept_drop {
        return Ok(());
    }
    let Some((date, previous)) = catalog::latest_usable(storage, &key.slug, key.date).await? else {
        return Ok(());
    };
    let before = previous.counts.users;
    if before == 0 || users >= before {
        return Ok(());
    }
    let drop_percent = (before - users) as f64 * 100.0 / before as f64;
    if drop_percent <= f64::from(conn.max_drop_percent) {
        return Ok(());
    }
    Err(RunError::Guard {
        connection: conn.name.clone(),
        reason: format!(
            "population guard: this scan found {users} users, the snapshot of {date} had {before} (a drop of {drop_percent:.1}%, more than max_drop_percent = {}). If the drop is real, rerun with --accept-drop or raise max_drop_percent for this connection",
            conn.max_drop_percent
        ),
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One decoded page on its way to the writer.
struct Page {
    users: Vec<(UserRecord, ClaimTag)>,
    received_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct WalkStats {
    counts: Counts,
    pages: u64,
}

/// What every walk of one scan shares: the accounts seen and the tallies.
#[derive(Default)]
struct Tally {
    seen: AccountSet,
    counts: Counts,
}

/// Locks the tally; it holds plain counters, so a panicked holder leaves nothing to repair.
fn lock(m: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Walks every page of one filter, de-duplicating by `accountId` across all walks of the
/// scan and dropping non-managed records when only managed ones were asked for. Returns the
/// pages fetched.
async fn walk(
    client: AdminClient,
    filter: UsersFilter,
    keep_unmanaged: bool,
    tally: Arc<Mutex<Tally>>,
    tx: mpsc::Sender<Page>,
    progress: Option<Arc<ConnectionProgress>>,
) -> Result<u64, RunError> {
    let connection = client.connection().to_owned();
    let incomplete = |reason: String| RunError::Incomplete {
        connection: connection.clone(),
        reason,
    };
    let mut pages = 0u64;
    let mut cursors: HashSet<Cursor> = HashSet::new();
    let mut cursor: Option<Cursor> = None;
    loop {
        let page = client.users_page(&filter, cursor.as_ref()).await?;
        let received_at = Utc::now();
        pages += 1;
        let max_pages = client.limits().max_pages_per_walk;
        if pages > max_pages {
            return Err(incomplete(format!(
                "the walk passed {max_pages} pages ([http] max_pages_per_walk) without reaching the end"
            )));
        }
        let mut users = Vec::with_capacity(page.users.len());
        {
            let mut t = lock(&tally);
            for user in page.users {
                if !t.seen.insert(&user.account_id) {
                    t.counts.duplicates += 1;
                    continue;
                }
                let tag = ClaimTag::from_claim_status(user.claim_status.as_deref());
                if !keep_unmanaged && tag != ClaimTag::Managed {
                    t.counts.dropped_not_managed += 1;
                    continue;
                }
                match tag {
                    ClaimTag::Managed => t.counts.managed += 1,
                    ClaimTag::Unmanaged => t.counts.unmanaged += 1,
                    ClaimTag::Unknown => t.counts.unknown += 1,
                }
                t.counts.users += 1;
                users.push((user, tag));
            }
        }
        if let Some(p) = &progress {
            p.page(users.len());
        }
        if tx.send(Page { users, received_at }).await.is_err() {
            // The writer stopped; it reports its own error.
            return Ok(pages);
        }
        match page.next {
            None => return Ok(pages),
            Some(next) => {
                if !cursors.insert(next.clone()) {
                    return Err(incomplete(format!(
                        "the API returned the same page cursor twice (after {pages} pages); stopping instead of looping"
                    )));
                }
                cursor = Some(next);
            }
        }
    }
}

/// The set of account IDs seen in one scan, kept compact: each ID is stored as a 128-bit
/// keyed hash (16 bytes) instead of an owned string. Two independent random SipHash keys make
/// a false "duplicate" astronomically unlikely (about n²/2¹²⁹: below 10⁻²⁶ for a million
/// users), and the keys change every run, so no input can be crafted to collide.
#[derive(Default)]
pub struct AccountSet {
    keys: (RandomState, RandomState),
    hashes: HashSet<u128, BuildHasherDefault<PreHashed>>,
}

impl AccountSet {
    /// An empty set with room for `n` IDs.
    pub fn with_capacity(n: usize) -> Self {
        AccountSet {
            keys: Default::default(),
            hashes: HashSet::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Adds an ID; false if it was already present.
    pub fn insert(&mut self, account_id: &str) -> bool {
        let a = self.keys.0.hash_one(account_id);
        let b = self.keys.1.hash_one(account_id);
        self.hashes.insert((u128::from(a) << 64) | u128::from(b))
    }

    /// IDs held.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The values are already uniform hashes, so the table uses their low bits as they are.
#[derive(Default)]
pub struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_set_dedupes() {
        let mut s = AccountSet::default();
        assert!(s.insert("a"));
        assert!(s.insert("b"));
        assert!(!s.insert("a"));
        assert_eq!(s.len(), 2);
    }
}
