//! Reading snapshots back for the diff: only the compared columns, from any object store.
//!
//! A data file is read with ranged GETs through parquet's async reader, projected to
//! `account_id` and the [`crate::diff::COMPARED_FIELDS`] (never `raw`, the bulk of the file),
//! and kept as Arrow arrays, which are far more compact than one struct per account. The
//! result implements [`Side`], fingerprinting rows straight from the arrays.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, ListArray, RecordBatch, StringArray};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::diff::{Compared, Side, hash_opt_str};
use crate::store::Storage;

/// An [`AsyncFileReader`] over one object of known size.
struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        let (store, path) = (Arc::clone(&self.store), self.path.clone());
        async move { store.get_range(&path, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let (store, path) = (Arc::clone(&self.store), self.path.clone());
        async move { store.get_ranges(&path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// The columns one batch contributes.
struct Columns {
    account_id: StringArray,
    status: StringArray,
    account_status: StringArray,
    membership_status: StringArray,
    claim_status: StringArray,
    is_managed: BooleanArray,
    email: StringArray,
    name: StringArray,
    nickname: StringArray,
    platform_roles: ListArray,
    mfa_enabled: BooleanArray,
    management_source: StringArray,
}

const COLUMNS: [&str; 12] = [
    "account_id",
    "status",
    "account_status",
    "membership_status",
    "claim_status",
    "is_managed",
    "email",
    "name",
    "nickname",
    "platform_roles",
    "mfa_enabled",
    "management_source",
];

impl Columns {
    fn from_batch(batch: &RecordBatch) -> Result<Columns, String> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("column {name} is missing"))
        };
        let s = |name: &str| -> Result<StringArray, String> {
            col(name)?
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| format!("column {name} is not a string column"))
        };
        let b = |name: &str| -> Result<BooleanArray, String> {
            col(name)?
                .as_boolean_opt()
                .cloned()
                .ok_or_else(|| format!("column {name} is not a boolean column"))
        };
        Ok(Columns {
            account_id: s("account_id")?,
            status: s("status")?,
            account_status: s("account_status")?,
            membership_status: s("membership_status")?,
            claim_status: s("claim_status")?,
            is_managed: b("is_managed")?,
            email: s("email")?,
            name: s("name")?,
            nickname: s("nickname")?,
            platform_roles: col("platform_roles")?
                .as_list_opt::<i32>()
                .cloned()
                .ok_or("column platform_roles is not a list column")?,
            mfa_enabled: b("mfa_enabled")?,
            management_source: s("management_source")?,
        })
    }
}

fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn opt_bool(a: &BooleanArray, i: usize) -> Option<bool> {
    (!a.is_null(i)).then(|| a.value(i))
}

/// A snapshot's compared columns, as Arrow arrays.
pub struct SnapshotColumns {
    batches: Vec<Columns>,
    /// (batch, row) of each account kept.
    rows: Vec<(u32, u32)>,
}

impl SnapshotColumns {
    fn at(&self, i: usize) -> (&Columns, usize) {
        let (b, r) = self.rows[i];
        (&self.batches[b as usize], r as usize)
    }

    fn roles(c: &Columns, r: usize) -> Option<Vec<String>> {
        if c.platform_roles.is_null(r) {
            return None;
        }
        let values = c.platform_roles.value(r);
        let values = values.as_string::<i32>();
        let mut roles: Vec<String> = values.iter().flatten().map(str::to_owned).collect();
        roles.sort();
        roles.dedup();
        Some(roles)
    }
}

impl Side for SnapshotColumns {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn account_id(&self, i: usize) -> &str {
        let (c, r) = self.at(i);
        c.account_id.value(r)
    }

    fn compared(&self, i: usize) -> Compared {
        let (c, r) = self.at(i);
        let s = |a: &StringArray| opt_str(a, r).map(str::to_owned);
        Compared {
            status: s(&c.status),
            account_status: s(&c.account_status),
            membership_status: s(&c.membership_status),
            claim_status: s(&c.claim_status),
            is_managed: opt_bool(&c.is_managed, r),
            email: s(&c.email),
            name: s(&c.name),
            nickname: s(&c.nickname),
            platform_roles: Self::roles(c, r),
            mfa_enabled: opt_bool(&c.mfa_enabled, r),
            management_source: s(&c.management_source),
        }
    }

    fn fingerprint(&self, i: usize, hasher: &RandomState) -> u64 {
        let (c, r) = self.at(i);
        let mut h = hasher.build_hasher();
        for a in [
            &c.status,
            &c.account_status,
            &c.membership_status,
            &c.claim_status,
            &c.email,
            &c.name,
            &c.nickname,
            &c.management_source,
        ] {
            hash_opt_str(&mut h, opt_str(a, r));
        }
        for a in [&c.is_managed, &c.mfa_enabled] {
            h.write_u8(match opt_bool(a, r) {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            });
        }
        if c.platform_roles.is_null(r) {
            h.write_u8(0);
        } else {
            let values = c.platform_roles.value(r);
            let mut roles: Vec<&str> = values.as_string::<i32>().iter().flatten().collect();
            roles.sort_unstable();
            roles.dedup();
            h.write_u8(1);
            h.write_usize(roles.len());
            for role in roles {
                hash_opt_str(&mut h, Some(role));
            }
        }
        h.finish()
    }
}

/// Why a snapshot could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading snapshot {path} failed: {reason}")]
pub struct ReadError {
    /// The data file.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

async fn open_stream(
    storage: &Storage,
    relative: &str,
    size: u64,
    columns: &[&str],
) -> Result<parquet::arrow::async_reader::ParquetRecordBatchStream<ObjectReader>, ReadError> {
    let path = storage.path(relative);
    let err = |reason: String| ReadError {
        path: format!("{}/{relative}", storage.url.trim_end_matches('/')),
        reason,
    };
    let reader = ObjectReader {
        store: Arc::clone(&storage.store),
        path,
        size,
    };
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| err(e.to_string()))?;
    let arrow_schema = builder.schema().clone();
    let mut roots = Vec::new();
    for name in columns {
        let index = arrow_schema
            .index_of(name)
            .map_err(|_| err(format!("column {name} is missing")))?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(16 * 1024)
        .build()
        .map_err(|e| err(e.to_string()))
}

/// Reads the compared columns of a data file of `size` bytes. With `managed_only`, only
/// accounts whose `claim_status` is `managed` are kept.
pub async fn read_compared(
    storage: &Storage,
    relative: &str,
    size: u64,
    managed_only: bool,
) -> Result<SnapshotColumns, ReadError> {
    let err = |reason: String| ReadError {
        path: format!("{}/{relative}", storage.url.trim_end_matches('/')),
        reason,
    };
    let mut stream = open_stream(storage, relative, size, &COLUMNS).await?;
    let mut out = SnapshotColumns {
        batches: Vec::new(),
        rows: Vec::new(),
    };
    while let Some(batch) = stream.try_next().await.map_err(|e| err(e.to_string()))? {
        let columns = Columns::from_batch(&batch).map_err(err)?;
        let b = out.batches.len() as u32;
        for r in 0..batch.num_rows() {
            if columns.account_id.is_null(r) {
                return Err(err("a row has no account_id".into()));
            }
            if managed_only && opt_str(&columns.claim_status, r) != Some("managed") {
                continue;
            }
            out.rows.push((b, r as u32));
        }
        out.batches.push(columns);
    }
    Ok(out)
}

/// Calls `each` with every `account_id` of a data file of `size` bytes.
pub async fn for_each_account_id(
    storage: &Storage,
    relative: &str,
    size: u64,
    mut each: impl FnMut(&str),
) -> Result<(), ReadError> {
    let err = |reason: String| ReadError {
        path: format!("{}/{relative}", storage.url.trim_end_matches('/')),
        reason,
    };
    let mut stream = open_stream(storage, relative, size, &["account_id"]).await?;
    while let Some(batch) = stream.try_next().await.map_err(|e| err(e.to_string()))? {
        let ids = batch
            .column(0)
            .as_string_opt::<i32>()
            .ok_or_else(|| err("account_id is not a string column".into()))?;
        for id in ids.iter().flatten() {
            each(id);
        }
    }
    Ok(())
}

/// The size of an object, if it exists.
pub async fn object_size(storage: &Storage, relative: &str) -> Option<u64> {
    storage
        .store
        .head(&storage.path(relative))
        .await
        .ok()
        .map(|m| m.size)
}
