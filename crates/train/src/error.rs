//! Errors of the training crate.

use std::path::PathBuf;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid training setting.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// A weight file that cannot be read (the message names it).
    #[error("{0}")]
    Weights(String),
    /// A checkpoint that cannot be read or written; the file is named.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file that cannot be read or written.
    #[error("{}: {msg}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model could not be built.
    #[error(transparent)]
    Model(#[from] anytime_models::ModelError),
    /// JSON encoding failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
