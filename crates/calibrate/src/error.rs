//! The crate's error type.

use crate::budget::Budget;
use crate::confidence::Confidence;
use std::path::PathBuf;

/// Errors of threshold calibration; each names the exit, sample, value or
/// file that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No exits were given.
    #[error("no exits: calibration needs the scores of at least one exit")]
    NoExits,
    /// The held-out set is empty.
    #[error("no samples: the held-out set is empty")]
    NoSamples,
    /// The ensemble fallback asked for on scores made without logits.
    #[error("the ensemble fallback needs scores made from every exit's logits (ExitScores::from_logits)")]
    NoEnsemble,
    /// Two inputs that must agree in length do not.
    #[error("{what}: expected {expected}, got {got}")]
    Length {
        /// What was counted.
        what: String,
        /// The length the other inputs imply.
        expected: usize,
        /// The length found.
        got: usize,
    },
    /// A logit row without classes.
    #[error("exit {exit}, sample {sample}: empty logit row (no classes)")]
    EmptyRow {
        /// The exit.
        exit: usize,
        /// The sample.
        sample: usize,
    },
    /// A logit or confidence that is NaN or infinite.
    #[error("exit {exit}, sample {sample}: {what} {value} is not finite")]
    NonFinite {
        /// The exit.
        exit: usize,
        /// The sample.
        sample: usize,
        /// `"logit"` or `"confidence"`.
        what: &'static str,
        /// The value found.
        value: f32,
    },
    /// A label that is not a class index of the logits.
    #[error("sample {sample}: label {label} is not a class index (the logits have {classes} classes)")]
    Label {
        /// The sample.
        sample: usize,
        /// Its label.
        label: u32,
        /// Classes per logit row.
        classes: usize,
    },
    /// Exit costs that are not finite, non-negative and cumulative.
    #[error("exit costs must be finite, non-negative and cumulative (non-decreasing), got {0:?}")]
    Costs(Vec<f64>),
    /// A NaN threshold.
    #[error("the threshold of exit {0} is NaN")]
    NanThreshold(usize),
    /// Thresholds applied to scores of another confidence measure.
    #[error("thresholds for {thresholds:?} confidences applied to {scores:?} scores")]
    ConfidenceMismatch {
        /// The thresholds' measure.
        thresholds: Confidence,
        /// The scores' measure.
        scores: Confidence,
    },
    /// A q of the dynamic-evaluation rule that is not a finite number > 0.
    #[error("q must be a finite number > 0, got {0}")]
    Q(f64),
    /// A budget outside what the exits can meet.
    #[error(
        "budget {requested} is outside the valid range {min} MFLOPs (first exit) to {max} MFLOPs (full model), \
         i.e. fractions {:.4} to 1 of the full model",
        .min / .max
    )]
    Budget {
        /// The budget asked for.
        requested: Budget,
        /// Cost of the first exit.
        min: f64,
        /// Cost of the full model.
        max: f64,
    },
    /// Genetic-search parameters out of range.
    #[error("genetic search parameters: {0}")]
    GaParams(String),
    /// A calibration file that cannot be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that is not calibration JSON.
    #[error("{}: not a calibration file: {source}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A calibration file whose contents do not fit together.
    #[error("{}: invalid calibration: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A calibration made for other weights.
    #[error("{}: the calibration was made for weights {calibrated}, these weights are {given}", .path.display())]
    WeightsMismatch {
        /// The file.
        path: PathBuf,
        /// SHA-256 recorded in the file.
        calibrated: String,
        /// SHA-256 of the weights in use.
        given: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
