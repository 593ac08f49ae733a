//! The crate's error types and the exit codes they map to.
//!
//! Module errors (`ConfigErrors`, `ApiError`, `StorageError`, `WriteError`) fold into
//! [`RunError`] for one connection's run, and into [`Error`] for a command. Each knows its
//! exit code, documented in README.md:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | every connection scanned and published |
//! | 1 | an unexpected internal error |
//! | 2 | usage or config error; nothing was contacted |
//! | 3 | a guard refused to publish (population drop, incomplete walk) |
//! | 4 | authentication or permission failure (401/403, unknown org) |
//! | 5 | the Atlassian API stayed unavailable after the retries (429/5xx/network) |
//! | 6 | the storage could not be written |

use crate::atlassian::client::ApiError;
use crate::config::ConfigErrors;
use crate::snapshot::writer::WriteError;
use crate::store::StorageError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: an unexpected internal error.
pub const EXIT_INTERNAL: u8 = 1;
/// Exit code: usage or config error.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: a guard refused to publish.
pub const EXIT_GUARD: u8 = 3;
/// Exit code: authentication or permission failure.
pub const EXIT_AUTH: u8 = 4;
/// Exit code: the API stayed unavailable.
pub const EXIT_API: u8 = 5;
/// Exit code: the storage could not be written.
pub const EXIT_STORAGE: u8 = 6;

/// Why one connection's run published nothing.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The Admin API failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The walk could not be completed safely (repeated cursor, bad response): publishing
    /// would risk a snapshot with users silently missing.
    #[error("connection {connection:?}: incomplete walk, nothing published: {reason}")]
    Incomplete {
        /// Connection name.
        connection: String,
        /// What went wrong.
        reason: String,
    },
    /// A guard refused to publish a complete scan.
    #[error("connection {connection:?}: not published: {reason}")]
    Guard {
        /// Connection name.
        connection: String,
        /// Why, with the numbers.
        reason: String,
    },
    /// The run was abandoned at shutdown before it could publish.
    #[error("connection {connection:?}: abandoned at shutdown; nothing published")]
    Cancelled {
        /// Connection name.
        connection: String,
    },
    /// A bug or an impossible state.
    #[error("connection {connection:?}: internal error: {reason}")]
    Internal {
        /// Connection name.
        connection: String,
        /// What failed.
        reason: String,
    },
}

impl RunError {
    /// The exit code this failure maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Api(e) => e.exit_code(),
            RunError::Storage(_) => EXIT_STORAGE,
            RunError::Incomplete { .. } | RunError::Guard { .. } => EXIT_GUARD,
            RunError::Internal { .. } | RunError::Cancelled { .. } => EXIT_INTERNAL,
        }
    }

    /// Folds a data-file write error into a run error for `connection`.
    pub fn from_write(connection: &str, e: WriteError) -> RunError {
        match e {
            WriteError::Storage(s) => RunError::Storage(s),
            WriteError::Encode { .. } => RunError::Internal {
                connection: connection.to_owned(),
                reason: e.to_string(),
            },
        }
    }
}

/// Why a command failed before or outside the per-connection runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// A command-line argument was wrong.
    #[error("{0}")]
    Usage(String),
    /// The store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Anything else that stops the command.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The exit code this failure maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Usage(_) => EXIT_CONFIG,
            Error::Storage(_) => EXIT_STORAGE,
            Error::Internal(_) => EXIT_INTERNAL,
        }
    }
}

/// `Result` with the crate's command error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
