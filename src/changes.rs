//! The change feed: comparing a snapshot with the one before it and publishing the result.
//!
//! After every published snapshot, the run compares it with the latest earlier usable
//! snapshot of the same connection and writes
//! `atlassian_user_changes/connection=<slug>/snapshot_date=<date>/changes.parquet`; `idsnap
//! diff` uses the same comparison for any two dates. A snapshot whose manifest is missing or
//! does not match its data file is never a baseline. When the two snapshots were taken with
//! different `scan_unmanaged_users` settings, only managed accounts are compared, and the
//! comparison says so, instead of reporting every unmanaged account as appeared or vanished.

use std::collections::HashSet;
use std::hash::RandomState;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Builder, ListBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use object_store::ObjectStoreExt;
use parquet::file::metadata::KeyValue;

use crate::diff::{ChangeType, DiffBuilder, Difference};
use crate::snapshot::SnapshotKey;
use crate::snapshot::catalog;
use crate::snapshot::manifest::Manifest;
use crate::snapshot::reader::{self, ReadError};
use crate::snapshot::writer::{ParquetUpload, WriteError, writer_properties};
use crate::store::{Storage, StorageError};

/// The change feed's dataset folder.
pub const CHANGES_DATASET: &str = "atlassian_user_changes";
/// The change file's name inside a partition.
pub const CHANGES_FILE: &str = "changes.parquet";

/// `atlassian_user_changes/connection=<slug>/snapshot_date=<date>/changes.parquet`.
pub fn changes_path(key: &SnapshotKey) -> String {
    format!(
        "{CHANGES_DATASET}/connection={}/snapshot_date={}/{CHANGES_FILE}",
        key.slug,
        key.date.format("%Y-%m-%d")
    )
}

/// Why two snapshots could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A snapshot asked for does not exist or cannot be used.
    #[error("snapshot {date} of connection {slug:?} cannot be used: {reason}")]
    Unusable {
        /// Connection slug.
        slug: String,
        /// The date asked for.
        date: NaiveDate,
        /// Why.
        reason: String,
    },
    /// Fewer than two snapshots exist.
    #[error("connection {slug:?} has {found} usable snapshot(s); a diff needs two")]
    TooFew {
        /// Connection slug.
        slug: String,
        /// How many there are.
        found: usize,
    },
    /// Reading a data file failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing the change file failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Two snapshots compared.
#[derive(Debug)]
pub struct Comparison {
    /// Connection slug.
    pub slug: String,
    /// The baseline, or `None` for a connection's first snapshot.
    pub from: Option<(NaiveDate, Manifest)>,
    /// The snapshot compared.
    pub to: (NaiveDate, Manifest),
    /// The changes (empty for a first snapshot).
    pub difference: Difference,
    /// Set when the two scans had different scopes and only managed accounts were compared.
    pub scope_note: Option<String>,
    /// Snapshots passed over as baselines, with the reason.
    pub skipped: Vec<String>,
}

async fn usable(storage: &Storage, slug: &str, date: NaiveDate) -> Result<Manifest, String> {
    let key = SnapshotKey {
        slug: slug.to_owned(),
        date,
    };
    catalog::usable_manifest(storage, &key)
        .await
        .map_err(|p| p.to_string())
}

/// Compares snapshot `to` of `slug` with `from`, or by default with the latest usable
/// snapshot before `to`. `to = None` means the latest snapshot.
pub async fn compare(
    storage: &Storage,
    slug: &str,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<Comparison, DiffError> {
    let dates = catalog::snapshot_dates(storage, slug).await?;
    let unusable = |date, reason| DiffError::Unusable {
        slug: slug.to_owned(),
        date,
        reason,
    };
    let to_date = match to.or_else(|| dates.last().copied()) {
        Some(d) => d,
        None => {
            return Err(DiffError::TooFew {
                slug: slug.to_owned(),
                found: 0,
            });
        }
    };
    if !dates.contains(&to_date) {
        return Err(unusable(to_date, "no such snapshot".into()));
    }
    let to_manifest = usable(storage, slug, to_date)
        .await
        .map_err(|r| unusable(to_date, r))?;

    let mut skipped = Vec::new();
    let baseline = match from {
        Some(d) if d >= to_date => {
            return Err(unusable(
                d,
                format!("--from must be earlier than {to_date}"),
            ));
        }
        Some(d) if !dates.contains(&d) => return Err(unusable(d, "no such snapshot".into())),
        Some(d) => Some((
            d,
            usable(storage, slug, d).await.map_err(|r| unusable(d, r))?,
        )),
        None => {
            let mut found = None;
            for &d in dates.iter().rev().filter(|d| **d < to_date) {
                match usable(storage, slug, d).await {
                    Ok(m) => {
                        found = Some((d, m));
                        break;
                    }
                    Err(reason) => {
                        tracing::warn!(connection = slug, snapshot_date = %d, reason = %reason, "Not using this snapshot as a baseline.");
                        skipped.push(format!("{d}: {reason}"));
                    }
                }
            }
            found
        }
    };
    let Some((from_date, from_manifest)) = baseline else {
        return Ok(Comparison {
            slug: slug.to_owned(),
            from: None,
            to: (to_date, to_manifest),
            difference: Difference::default(),
            scope_note: None,
            skipped,
        });
    };

    let scope_note = (from_manifest.scan_unmanaged_users != to_manifest.scan_unmanaged_users).then(|| {
        format!(
            "scan_unmanaged_users differs ({from_date}: {}, {to_date}: {}): only managed accounts were compared",
            from_manifest.scan_unmanaged_users, to_manifest.scan_unmanaged_users
        )
    });
    let managed_only = scope_note.is_some();
    if let Some(note) = &scope_note {
        tracing::warn!(connection = slug, "{note}");
    }
    let key = |date| SnapshotKey {
        slug: slug.to_owned(),
        date,
    };
    // One keyed hasher for both sides, so their fingerprints compare.
    let hasher = RandomState::new();
    let before = reader::read_compared(
        storage,
        &key(from_date).data_path(),
        from_manifest.data_file.size_bytes,
        managed_only,
        &hasher,
    )
    .await?;
    let mut builder = DiffBuilder::new(&before);
    reader::for_each_batch(
        storage,
        &key(to_date).data_path(),
        to_manifest.data_file.size_bytes,
        managed_only,
        &hasher,
        |batch| builder.push(&batch),
    )
    .await?;
    let mut difference = builder.finish();

    // Accounts new since `from` are "reappeared" if any older usable snapshot had them.
    let candidates: HashSet<&str> = difference.appeared_ids().collect();
    let mut seen_earlier: HashSet<String> = HashSet::new();
    if !candidates.is_empty() {
        for &d in dates.iter().filter(|d| **d < from_date) {
            let Ok(m) = usable(storage, slug, d).await else {
                continue;
            };
            reader::for_each_account_id(
                storage,
                &key(d).data_path(),
                m.data_file.size_bytes,
                |id| {
                    if candidates.contains(id) && !seen_earlier.contains(id) {
                        seen_earlier.insert(id.to_owned());
                    }
                },
            )
            .await?;
            if seen_earlier.len() == candidates.len() {
                break;
            }
        }
    }
    drop(candidates);
    difference.mark_reappeared(&|id| seen_earlier.contains(id));
    Ok(Comparison {
        slug: slug.to_owned(),
        from: Some((from_date, from_manifest)),
        to: (to_date, to_manifest),
        difference,
        scope_note,
        skipped,
    })
}

/// The change file's schema.
pub fn changes_schema() -> SchemaRef {
    let s = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::Utf8, false),
        Field::new("change_type", DataType::Utf8, false),
        Field::new(
            "changed_fields",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        Field::new("previous_snapshot_date", DataType::Date32, true),
        s("email"),
        s("name"),
        s("claim_status"),
        s("status"),
        s("before"),
        s("after"),
    ]))
}

/// The comparison as one record batch of the change-file schema.
pub fn changes_batch(c: &Comparison) -> RecordBatch {
    let mut account_id = StringBuilder::new();
    let mut change_type = StringBuilder::new();
    let mut changed_fields = ListBuilder::new(StringBuilder::new());
    let mut previous = Date32Builder::new();
    let (mut email, mut name, mut claim, mut status, mut before, mut after) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let previous_days = c.from.as_ref().map(|(d, _)| (*d - epoch).num_days() as i32);
    for change in &c.difference.changes {
        account_id.append_value(&change.account_id);
        change_type.append_value(change.change_type.as_str());
        if change.change_type == ChangeType::Changed {
            for f in &change.changed_fields {
                changed_fields.values().append_value(f);
            }
            changed_fields.append(true);
        } else {
            changed_fields.append(false);
        }
        previous.append_option(previous_days);
        let current = change.current();
        email.append_option(current.email.as_deref());
        name.append_option(current.name.as_deref());
        claim.append_option(current.claim_status.as_deref());
        status.append_option(current.status.as_deref());
        before.append_option(change.before.as_ref().map(|b| b.to_json()));
        after.append_option(change.after.as_ref().map(|a| a.to_json()));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(account_id.finish()),
        Arc::new(change_type.finish()),
        Arc::new(changed_fields.finish()),
        Arc::new(previous.finish()),
        Arc::new(email.finish()),
        Arc::new(name.finish()),
        Arc::new(claim.finish()),
        Arc::new(status.finish()),
        Arc::new(before.finish()),
        Arc::new(after.finish()),
    ];
    // Built column by column in schema order, one value per change each: cannot fail.
    #[allow(clippy::expect_used)]
    RecordBatch::try_new(changes_schema(), columns).expect("change columns match changes_schema")
}

/// What the run did about the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedOutcome {
    /// The connection's first usable snapshot: nothing to compare with, no file written.
    First,
    /// The change file was written.
    Written {
        /// The baseline's date.
        previous: NaiveDate,
        /// Rows per change type, in [`ChangeType::ALL`] order.
        counts: [usize; 4],
        /// Set when only managed accounts were compared.
        scope_note: Option<String>,
        /// Baselines passed over.
        skipped: Vec<String>,
    },
}

/// Compares the just-published snapshot `key` with its predecessor and writes (or, for a
/// first snapshot, removes any stale) change file for that date.
pub async fn publish_feed(storage: &Storage, key: &SnapshotKey) -> Result<FeedOutcome, DiffError> {
    let comparison = compare(storage, &key.slug, None, Some(key.date)).await?;
    let path = changes_path(key);
    let Some((previous, _)) = &comparison.from else {
        // A rerun may find that the earlier snapshots are gone or unusable: an old change
        // file for this date would then describe a comparison that no longer holds.
        let object = storage.path(&path);
        match storage.store.delete(&object).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage.error("deleting", &object, e).into()),
        }
        return Ok(FeedOutcome::First);
    };
    let d = &comparison.difference;
    let counts = ChangeType::ALL.map(|t| d.count(t));
    let mut kv = vec![
        KeyValue::new(
            "idsnap.snapshot_date".into(),
            key.date.format("%Y-%m-%d").to_string(),
        ),
        KeyValue::new(
            "idsnap.previous_snapshot_date".into(),
            previous.format("%Y-%m-%d").to_string(),
        ),
        KeyValue::new("idsnap.connection_slug".into(), key.slug.clone()),
        KeyValue::new(
            "idsnap.idsnap_version".into(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    for (t, n) in ChangeType::ALL.iter().zip(counts) {
        kv.push(KeyValue::new(
            format!("idsnap.{}", t.as_str()),
            n.to_string(),
        ));
    }
    if let Some(note) = &comparison.scope_note {
        kv.push(KeyValue::new("idsnap.scope_note".into(), note.clone()));
    }
    let mut upload = ParquetUpload::create(
        storage,
        &path,
        changes_schema(),
        writer_properties(Vec::new()),
    )?;
    if let Err(e) = upload.write(&changes_batch(&comparison)).await {
        upload.abort().await;
        return Err(e.into());
    }
    upload.finish(kv).await?;
    Ok(FeedOutcome::Written {
        previous: *previous,
        counts,
        scope_note: comparison.scope_note,
        skipped: comparison.skipped,
    })
}
