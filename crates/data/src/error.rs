//! Errors of the data crate; every variant names the file involved.

use std::path::PathBuf;

/// Errors reading or preparing data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not what the format requires.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A dataset directory without the expected files.
    #[error("{msg}")]
    Missing {
        /// What is missing and how to get it.
        msg: String,
    },
    /// An invalid request (sizes, indices, split sizes).
    #[error("{0}")]
    Invalid(String),
    /// A tensor could not be built.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
