//! Errors of the evaluation crate.

use std::path::PathBuf;

/// Errors of evaluation, reports and plots.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model could not be run or costed.
    #[error(transparent)]
    Model(#[from] anytime_models::ModelError),
    /// Threshold calibration failed.
    #[error(transparent)]
    Calibrate(#[from] anytime_calibrate::Error),
    /// A dataset or batch could not be made.
    #[error(transparent)]
    Data(#[from] anytime_data::Error),
    /// A request that cannot be measured (what is wrong is named).
    #[error("{0}")]
    Invalid(String),
    /// A file that cannot be read or written.
    #[error("{}: {msg}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
