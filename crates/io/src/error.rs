//! The crate's error type. Every variant names the file it is about.

use std::path::PathBuf;

use crate::checked::KeyReport;
use crate::pickle::PickleError;

/// Everything that can go wrong reading, checking or writing weight files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The content is neither safetensors nor a PyTorch zip checkpoint.
    #[error(
        "{}: not a safetensors file or a PyTorch zip checkpoint (first bytes: {head})",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// Its first bytes, hex-encoded.
        head: String,
    },
    /// A tensor holding NaN or infinite values: such weights give finite,
    /// plausible and wrong answers, so they are refused at load.
    #[error("{}: tensor `{key}` holds {count} NaN or infinite values (of {total})", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// How many of its values are not finite.
        count: usize,
        /// Its number of values.
        total: usize,
    },
    /// A legacy (non-zip) `torch.save` stream that does not hold together.
    #[error("{}: bad legacy PyTorch checkpoint: {problem}", path.display())]
    Legacy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file is shorter than its own header says.
    #[error(
        "{}: truncated: the header needs {expected} bytes but the file has {actual}",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The zip container of a PyTorch checkpoint cannot be read.
    #[error("{}: cannot read the zip archive: {source}", path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// The zip reader's error.
        source: zip::result::ZipError,
    },
    /// A zip archive without the `<root>/data.pkl` entry of `torch.save`.
    #[error(
        "{}: zip archive has no `<root>/data.pkl` entry, so torch.save did not write it",
        path.display()
    )]
    MissingDataPkl {
        /// The file.
        path: PathBuf,
    },
    /// A checkpoint written on a big-endian machine.
    #[error(
        "{}: checkpoint byte order is `{byteorder}`; only little-endian checkpoints are supported",
        path.display()
    )]
    ByteOrder {
        /// The file.
        path: PathBuf,
        /// The content of the archive's `byteorder` entry.
        byteorder: String,
    },
    /// The checkpoint's `data.pkl` cannot be interpreted.
    #[error("{}: data.pkl: {source}", path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// What the pickle reader found.
        source: PickleError,
    },
    /// The checkpoint holds no recognisable state dict.
    #[error(
        "{}: no state dict found: expected a dict of tensors or a dict with a `state_dict`, \
         `model_state_dict` or `model` entry, found {found}",
        path.display()
    )]
    NoStateDict {
        /// The file.
        path: PathBuf,
        /// What the file holds instead.
        found: String,
    },
    /// One entry of a state dict is not a readable tensor.
    #[error("{}: tensor `{key}`: {problem}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The state-dict key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor whose element type this crate does not load.
    #[error(
        "{}: tensor `{key}` has unsupported dtype {dtype} (supported: float32, float16, bfloat16, \
         float64, and int64 `num_batches_tracked` scalars, which are dropped)",
        path.display()
    )]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        key: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// Two keys are equal once the `module.` prefix is stripped.
    #[error(
        "{}: key `{key}` appears twice (with and without the `module.` prefix)",
        path.display()
    )]
    DuplicateKey {
        /// The file.
        path: PathBuf,
        /// The key after stripping.
        key: String,
    },
    /// The safetensors crate rejected the file.
    #[error("{}: invalid safetensors file: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The safetensors error.
        source: safetensors::SafeTensorError,
    },
    /// The safetensors header is not the JSON it should be.
    #[error("{}: invalid safetensors header: {problem}", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A [`WeightMeta`](crate::WeightMeta) field cannot be stored or read back.
    #[error("{}: weight metadata `{field}`: {problem}", path.display())]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// A tensor operation failed while converting data for `path`.
    #[error("{}: {source}", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The candle error.
        source: candle_core::Error,
    },
    /// The weights do not fit the model built from them.
    #[error("{0}")]
    KeyCheck(Box<KeyReport>),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    /// The [`Error::BadMeta`] for asking a PyTorch checkpoint for its weight metadata.
    pub(crate) fn no_weight_meta(path: impl Into<PathBuf>) -> Self {
        Self::BadMeta {
            path: path.into(),
            field: "__metadata__".into(),
            problem: "PyTorch checkpoints carry no weight metadata; only safetensors files do".into(),
        }
    }
}
