//! Integration tests: one binary, real HTTP against the simulator on 127.0.0.1, real Parquet.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod changes;
mod cli;
mod daemon;
mod operator;
mod resilience;
mod s3;
mod scan;
mod security;
mod support;
