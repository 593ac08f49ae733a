//! idsnap: nightly identity snapshots of Atlassian organizations, as Parquet on object storage.
//!
//! # Layout
//! - [`cli`]: the command line (clap), printing, and the exit code of each command.
//! - [`config`]: the TOML file plus `IDSNAP__` environment overrides, validated in full.
//! - [`secret`]: the API token type that cannot be printed.
//! - [`atlassian`]: the Admin API client (retries, rate limits) and its wire models.
//! - [`job`]: one run: walk every page of every connection and publish the snapshots.
//! - [`snapshot`]: the output layout, Arrow schema, Parquet writer and reader, manifest, and
//!   the catalog of published snapshots.
//! - [`diff`]: the pure comparison of two snapshots.
//! - [`changes`]: the change feed written after each run, and on-demand comparisons.
//! - [`store`]: `storage.url` to an object store.
//! - [`schedule`]: the cron-driven daemon (`idsnap schedule`).
//! - [`status`]: the status file for monitors.
//! - [`metrics`]: the Prometheus textfile-collector file.
//! - [`progress`]: scan progress for people (bars on a terminal, log lines otherwise).
//! - [`simulator`]: the simulated Admin API used by `demo`, tests and benchmarks.
//! - [`error`]: error types and exit codes.

#![forbid(unsafe_code)]

pub mod atlassian;
pub mod changes;
pub mod cli;
pub mod config;
pub mod diff;
pub mod error;
pub mod job;
pub mod metrics;
pub mod progress;
pub mod schedule;
pub mod secret;
pub mod simulator;
pub mod snapshot;
pub mod status;
pub mod store;

pub use error::{Error, Result, RunError};
