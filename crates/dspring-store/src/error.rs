//! Errors, split by whose fault they are: the storage (I/O, SQLite), the file's contents
//! (corrupt or from a newer version), the key, or the caller (misuse).

use std::path::PathBuf;

use thiserror::Error;

/// A stored row that could not be read back: where it is and what is wrong with it.
#[derive(Debug, Error)]
#[error("corrupt row in table `{table}` ({key}): {reason}")]
pub struct Corrupt {
    pub table: &'static str,
    pub key: String,
    pub reason: String,
}

impl Corrupt {
    pub(crate) fn new(table: &'static str, key: impl Into<String>, reason: impl ToString) -> Self {
        Self {
            table,
            key: key.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0} is in use by another dspring process (one node per data directory)")]
    InUse(PathBuf),
    #[error(
        "the database has schema version {found}, newer than this program supports ({supported}); \
         upgrade dspring"
    )]
    NewerSchema { found: u32, supported: u32 },
    #[error("the key does not open this database (wrong key file or passphrase)")]
    WrongKey,
    #[error(
        "the database exists but its key file {0} is missing; restore it (without it the \
         stored secrets cannot be read)"
    )]
    KeyFileMissing(PathBuf),
    #[error("key file {path} is accessible to other users (mode {mode:o}); run `chmod 600` on it")]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("key file {0} is not a {len}-byte key", len = crate::at_rest::KEY_LEN)]
    KeyFileInvalid(PathBuf),
    #[error("the database is protected by a passphrase; give it")]
    PassphraseRequired,
    #[error("the database is protected by a key file, not a passphrase")]
    NotPassphraseProtected,
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why a store operation failed. Nothing was written when it fails.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The storage itself failed (disk full, I/O error, locked): retry or report.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row is unreadable.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The caller asked for something this store cannot do.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StoreError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid(reason.into())
    }
}
