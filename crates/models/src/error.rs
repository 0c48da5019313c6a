//! Errors of model configuration, construction and loading.

/// A configuration that cannot describe a valid network.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A reference command line the reference parser would reject.
    #[error("invalid reference command line: {0}")]
    Cli(String),
    /// Malformed JSON.
    #[error("invalid configuration JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Errors of the models crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// See [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An input the model cannot take (channels, size).
    #[error("{0}")]
    Input(String),
    /// A weight file that cannot be read or does not fit the model.
    #[error(transparent)]
    Weights(#[from] anytime_io::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A configuration or weights file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// An unknown model or architecture name.
    #[error("{0}")]
    Unknown(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
