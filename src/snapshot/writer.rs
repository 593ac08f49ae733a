//! Streams Arrow batches into one Parquet object on any object store.
//!
//! The encoder is parquet's synchronous `ArrowWriter` over an in-memory buffer; whatever it
//! has encoded is moved to an `object_store` `BufWriter`, which sends 10 MiB multipart parts
//! as they fill (a single PUT for small files). Memory is bounded by the row-group limits and
//! the part size, not by the number of users. Nothing becomes visible until
//! [`ParquetUpload::finish`] completes the upload; [`ParquetUpload::abort`] discards it.

use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{Attribute, Attributes};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tokio::io::AsyncWriteExt;

use super::PARQUET_CONTENT_TYPE;
use crate::store::{Storage, StorageError};

/// Most rows in one row group.
pub const MAX_ROW_GROUP_ROWS: usize = 64 * 1024;
/// Most estimated encoded bytes in one row group.
pub const MAX_ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// Multipart part size (S3 rejects parts under 5 MiB).
pub const PART_BYTES: usize = 10 * 1024 * 1024;
/// Parts uploading at the same time: each holds a part's bytes until it is sent, so this
/// bounds that memory (object_store's default is 8).
pub const PARTS_IN_FLIGHT: usize = 2;

/// Why writing the data file failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Encoding failed (a bug, not bad input).
    #[error("encoding Parquet for {path} failed: {source}")]
    Encode {
        /// The object being written.
        path: String,
        /// parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The store refused the bytes.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Writer properties for snapshot files: zstd, dictionaries and page statistics on, except
/// dictionaries for columns that are unique per row.
pub fn writer_properties(kv: Vec<KeyValue>) -> WriterProperties {
    // Level 3 is zstd's default and always valid.
    let zstd = ZstdLevel::try_new(3).unwrap_or_default();
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_dictionary_enabled(ColumnPath::from("raw"), false)
        .set_column_dictionary_enabled(ColumnPath::from("account_id"), false)
        .set_max_row_group_row_count(Some(MAX_ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(MAX_ROW_GROUP_BYTES))
        .set_created_by(concat!("idsnap ", env!("CARGO_PKG_VERSION")).to_owned())
        .set_key_value_metadata(Some(kv))
        .build()
}

/// Size and row count of a completed data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFile {
    /// Bytes in the object.
    pub size_bytes: u64,
    /// Rows in the file.
    pub rows: u64,
}

/// An upload in progress.
pub struct ParquetUpload {
    encoder: ArrowWriter<Vec<u8>>,
    sink: BufWriter,
    storage: Storage,
    path: Path,
    rows: u64,
}

impl ParquetUpload {
    /// Starts writing `relative` (under the storage prefix). Nothing is sent yet.
    pub fn create(
        storage: &Storage,
        relative: &str,
        schema: arrow::datatypes::SchemaRef,
        props: WriterProperties,
    ) -> Result<Self, WriteError> {
        let path = storage.path(relative);
        let encoder = ArrowWriter::try_new(Vec::with_capacity(1 << 20), schema, Some(props))
            .map_err(|source| WriteError::Encode {
                path: path.to_string(),
                source,
            })?;
        let mut sink =
            BufWriter::with_capacity(Arc::clone(&storage.store), path.clone(), PART_BYTES)
                .with_max_concurrency(PARTS_IN_FLIGHT);
        if storage.supports_attributes {
            sink = sink.with_attributes(Attributes::from_iter([(
                Attribute::ContentType,
                PARQUET_CONTENT_TYPE,
            )]));
        }
        Ok(ParquetUpload {
            encoder,
            sink,
            storage: storage.clone(),
            path,
            rows: 0,
        })
    }

    /// The object's path in the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes a batch and sends whatever is ready.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        self.encoder
            .write(batch)
            .map_err(|source| self.encode_err(source))?;
        self.rows += batch.num_rows() as u64;
        self.drain().await
    }

    /// Adds footer metadata, completes the upload and returns the file's size. After this
    /// returns `Ok`, the object is visible.
    pub async fn finish(mut self, kv: Vec<KeyValue>) -> Result<DataFile, WriteError> {
        for item in kv {
            self.encoder.append_key_value_metadata(item);
        }
        if let Err(source) = self.encoder.finish() {
            let e = self.encode_err(source);
            self.abort().await;
            return Err(e);
        }
        if let Err(e) = self.drain().await {
            self.abort().await;
            return Err(e);
        }
        let size_bytes = self.encoder.bytes_written() as u64;
        if let Err(e) = self.sink.shutdown().await {
            let source = object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            };
            // A failed completion has already aborted the multipart upload (object_store's
            // `WriteMultipart::finish`), and the writer is shut down: nothing to abort here.
            return Err(self
                .storage
                .error("completing the upload of", &self.path, source)
                .into());
        }
        Ok(DataFile {
            size_bytes,
            rows: self.rows,
        })
    }

    /// Discards the upload: an unfinished multipart upload is aborted, so no part of the
    /// file ever becomes visible. Failures to abort are logged (the store's lifecycle rules
    /// clean up what remains).
    pub async fn abort(mut self) {
        if let Err(e) = self.sink.abort().await {
            tracing::warn!(path = %self.path, error = %e, "Could not abort the unfinished upload.");
        }
    }

    async fn drain(&mut self) -> Result<(), WriteError> {
        let buffered = self.encoder.inner_mut();
        if buffered.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(buffered));
        self.sink
            .put(chunk)
            .await
            .map_err(|source| self.storage.error("uploading", &self.path, source).into())
    }

    fn encode_err(&self, source: parquet::errors::ParquetError) -> WriteError {
        WriteError::Encode {
            path: self.path.to_string(),
            source,
        }
    }
}
