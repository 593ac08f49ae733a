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

/// The columns one batch contributes, downcast once.
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
    role_values: StringArray,
    mfa_enabled: BooleanArray,
    management_source: StringArray,
}

/// `account_id` and the compared fields: all the diff reads of a data file.
fn columns() -> impl Iterator<Item = &'static str> {
    std::iter::once("account_id").chain(crate::diff::COMPARED_FIELDS)
}

fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
    (!a.is_null(i)).then(|| a.value(i))
}

fn opt_bool(a: &BooleanArray, i: usize) -> Option<bool> {
    (!a.is_null(i)).then(|| a.value(i))
}

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
        let platform_roles = col("platform_roles")?
            .as_list_opt::<i32>()
            .cloned()
            .ok_or("column platform_roles is not a list column")?;
        let role_values = platform_roles
            .values()
            .as_string_opt::<i32>()
            .cloned()
            .ok_or("platform_roles does not hold strings")?;
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
            platform_roles,
            role_values,
            mfa_enabled: b("mfa_enabled")?,
            management_source: s("management_source")?,
        })
    }

    /// The row's roles, sorted and de-duplicated, into `out` (reused to avoid allocation).
    fn roles<'c>(&'c self, r: usize, out: &mut Vec<&'c str>) -> bool {
        out.clear();
        if self.platform_roles.is_null(r) {
            return false;
        }
        let offsets = self.platform_roles.value_offsets();
        for k in offsets[r] as usize..offsets[r + 1] as usize {
            if !self.role_values.is_null(k) {
                out.push(self.role_values.value(k));
            }
        }
        out.sort_unstable();
        out.dedup();
        true
    }

    fn compared(&self, r: usize) -> Compared {
        let s = |a: &StringArray| opt_str(a, r).map(str::to_owned);
        let mut roles = Vec::new();
        let has_roles = self.roles(r, &mut roles);
        Compared {
            status: s(&self.status),
            account_status: s(&self.account_status),
            membership_status: s(&self.membership_status),
            claim_status: s(&self.claim_status),
            is_managed: opt_bool(&self.is_managed, r),
            email: s(&self.email),
            name: s(&self.name),
            nickname: s(&self.nickname),
            platform_roles: has_roles.then(|| roles.into_iter().map(str::to_owned).collect()),
            mfa_enabled: opt_bool(&self.mfa_enabled, r),
            management_source: s(&self.management_source),
        }
    }

    /// Hashes the compared fields straight from the arrays; only a row with two or more
    /// roles allocates (to sort them).
    fn fingerprint(&self, r: usize, hasher: &RandomState) -> u64 {
        let mut h = hasher.build_hasher();
        for a in [
            &self.status,
            &self.account_status,
            &self.membership_status,
            &self.claim_status,
            &self.email,
            &self.name,
            &self.nickname,
            &self.management_source,
        ] {
            hash_opt_str(&mut h, opt_str(a, r));
        }
        for a in [&self.is_managed, &self.mfa_enabled] {
            h.write_u8(match opt_bool(a, r) {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            });
        }
        if self.platform_roles.is_null(r) {
            h.write_u8(0);
            return h.finish();
        }
        h.write_u8(1);
        let offsets = self.platform_roles.value_offsets();
        let (start, end) = (offsets[r] as usize, offsets[r + 1] as usize);
        let single = |k: usize| opt_str(&self.role_values, k);
        match end - start {
            0 => h.write_usize(0),
            1 => match single(start) {
                Some(role) => {
                    h.write_usize(1);
                    hash_opt_str(&mut h, Some(role));
                }
                None => h.write_usize(0),
            },
            _ => {
                let mut roles = Vec::new();
                self.roles(r, &mut roles);
                h.write_usize(roles.len());
                for role in roles {
                    hash_opt_str(&mut h, Some(role));
                }
            }
        }
        h.finish()
    }
}

/// A snapshot's compared columns held in memory, with each row's fingerprint.
pub struct SnapshotColumns {
    batches: Vec<Columns>,
    /// (batch, row) of each account kept.
    rows: Vec<(u32, u32)>,
    fingerprints: Vec<u64>,
}

impl SnapshotColumns {
    fn at(&self, i: usize) -> (&Columns, usize) {
        let (b, r) = self.rows[i];
        (&self.batches[b as usize], r as usize)
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
        c.compared(r)
    }

    fn fingerprint(&self, i: usize) -> u64 {
        self.fingerprints[i]
    }
}

/// One batch of a snapshot being streamed.
pub struct BatchSide<'h> {
    columns: Columns,
    rows: Vec<u32>,
    hasher: &'h RandomState,
}

impl Side for BatchSide<'_> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn account_id(&self, i: usize) -> &str {
        self.columns.account_id.value(self.rows[i] as usize)
    }

    fn compared(&self, i: usize) -> Compared {
        self.columns.compared(self.rows[i] as usize)
    }

    fn fingerprint(&self, i: usize) -> u64 {
        self.columns.fingerprint(self.rows[i] as usize, self.hasher)
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
    columns: impl IntoIterator<Item = &'static str>,
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

/// Reads the compared columns of a data file of `size` bytes into memory, fingerprinting
/// each row with `hasher`. With `managed_only`, only accounts whose `claim_status` is
/// `managed` are kept.
pub async fn read_compared(
    storage: &Storage,
    relative: &str,
    size: u64,
    managed_only: bool,
    hasher: &RandomState,
) -> Result<SnapshotColumns, ReadError> {
    let mut out = SnapshotColumns {
        batches: Vec::new(),
        rows: Vec::new(),
        fingerprints: Vec::new(),
    };
    for_each_batch(storage, relative, size, managed_only, hasher, |batch| {
        let b = out.batches.len() as u32;
        for &r in &batch.rows {
            out.rows.push((b, r));
            out.fingerprints
                .push(batch.columns.fingerprint(r as usize, hasher));
        }
        out.batches.push(batch.columns);
    })
    .await?;
    Ok(out)
}

/// Streams the compared columns of a data file of `size` bytes, one batch at a time.
pub async fn for_each_batch<'h>(
    storage: &Storage,
    relative: &str,
    size: u64,
    managed_only: bool,
    hasher: &'h RandomState,
    mut each: impl FnMut(BatchSide<'h>),
) -> Result<(), ReadError> {
    let err = |reason: String| ReadError {
        path: format!("{}/{relative}", storage.url.trim_end_matches('/')),
        reason,
    };
    let mut stream = open_stream(storage, relative, size, columns()).await?;
    while let Some(batch) = stream.try_next().await.map_err(|e| err(e.to_string()))? {
        let columns = Columns::from_batch(&batch).map_err(err)?;
        let mut rows = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            if columns.account_id.is_null(r) {
                return Err(err("a row has no account_id".into()));
            }
            if managed_only && opt_str(&columns.claim_status, r) != Some("managed") {
                continue;
            }
            rows.push(r as u32);
        }
        each(BatchSide {
            columns,
            rows,
            hasher,
        });
    }
    Ok(())
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
    let mut stream = open_stream(storage, relative, size, ["account_id"]).await?;
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
