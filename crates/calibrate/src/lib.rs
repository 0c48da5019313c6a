//! Exit thresholds for budgeted batch classification.
//!
//! Everything here works on arrays — per-exit confidences, predictions and
//! labels of a held-out set, and the cumulative cost of each exit — never on
//! models, so any multi-exit network (MSDNet, RANet, ResNet-MC, …) uses it the
//! same way:
//!
//! - [`Confidence`]: max softmax (the default), entropy and margin;
//! - [`simulate`]: the exit rule — a sample leaves at the first exit whose
//!   confidence reaches its threshold; the last exit takes everything left;
//! - [`dynamic_eval`]: MSDNet's rule — exit proportions `p_k ∝ q^k`, thresholds
//!   as confidence quantiles of the held-out set; [`sweep_q`] traces the
//!   accuracy/cost curve;
//! - [`solve_budget`]: thresholds meeting an average-cost budget with the best
//!   held-out accuracy found;
//! - [`genetic_search`]: SCAN's genetic-algorithm search (fitness = accuracy −
//!   λ·cost);
//! - [`Calibration`]: thresholds saved as JSON, tied to a weight hash.
//!
//! ```
//! use anytime_calibrate::{Confidence, ExitScores, dynamic_eval, simulate};
//! # fn main() -> anytime_calibrate::Result<()> {
//! // Two exits, four held-out samples: logits per exit and sample.
//! let logits = vec![
//!     vec![vec![4.0, 0.0], vec![0.0, 0.1], vec![3.0, 0.0], vec![0.2, 0.0]],
//!     vec![vec![5.0, 0.0], vec![0.0, 5.0], vec![5.0, 0.0], vec![0.0, 5.0]],
//! ];
//! let scores = ExitScores::from_logits(&logits, &[0, 1, 0, 1], Confidence::MaxSoftmax)?;
//! let costs = [1.0, 3.0]; // cumulative MFLOPs per exit
//! let (thresholds, outcome) = dynamic_eval(&scores, &costs, 1.0)?;
//! assert_eq!(outcome.exit_counts, vec![2, 2]); // half leave at exit 0 (q = 1: equal shares)
//! assert_eq!(outcome.accuracy, 1.0);
//! assert_eq!(simulate(&thresholds, &scores, &costs)?.avg_cost, 2.0);
//! # Ok(()) }
//! ```

mod calibration;
mod confidence;
mod genetic;
mod rules;

pub use calibration::{Calibration, Method};
pub use confidence::Confidence;
pub use genetic::{GaParams, genetic_search};
pub use rules::{ExitScores, Outcome, Thresholds, default_qs, dynamic_eval, simulate, solve_budget, sweep_q};

/// Errors of threshold calibration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Inconsistent or empty inputs.
    #[error("{0}")]
    Input(String),
    /// A budget outside what the exits can meet.
    #[error("budget {budget:.3} MFLOPs is outside the model's range {min:.3} (first exit) to {max:.3} (full model)")]
    Budget {
        /// Requested average cost.
        budget: f64,
        /// Cost of the first exit.
        min: f64,
        /// Cost of the full model.
        max: f64,
    },
    /// A calibration file that cannot be read or does not belong to the weights.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
