//! Exit thresholds for budgeted batch classification.
//!
//! Everything here works on arrays — per-exit confidences, predictions and
//! labels of a held-out set ([`ExitScores`]), and the cumulative cost `C_k` of
//! reaching each exit (MFLOPs per image, earlier heads included) — never on
//! models, so any multi-exit network (MSDNet, RANet, ResNet-MC, …) uses it the
//! same way:
//!
//! - [`Confidence`]: max softmax (the default), `1 − H/ln K` and the top-2
//!   margin, all in [0, 1];
//! - [`simulate`]: the exit rule — a sample leaves at the first exit whose
//!   confidence reaches its threshold; the last exit takes everything left;
//! - [`dynamic_eval_thresholds`] / [`dynamic_eval`]: MSDNet's rule — exit
//!   shares `p_k ∝ q^(k+1)`, thresholds as confidence quantiles of the held-out
//!   set; [`sweep_q`] traces the accuracy/cost curve;
//! - [`solve_budget`]: thresholds meeting an average-cost [`Budget`] (MFLOPs or
//!   a fraction of the full model) with the best held-out accuracy found;
//! - [`genetic_search`]: SCAN's genetic-algorithm search (fitness = accuracy −
//!   λ·cost / full cost, optionally under a budget);
//! - [`Calibration`]: thresholds saved as JSON (atomically), tied to the
//!   SHA-256 of the weights they were made for.
//!
//! ```
//! use anytime_calibrate::{Budget, Confidence, ExitScores, dynamic_eval, simulate, solve_budget};
//! # fn main() -> anytime_calibrate::Result<()> {
//! // Two exits, four held-out samples: logits `[exit][sample][class]`.
//! let logits = vec![
//!     vec![vec![4.0, 0.0], vec![0.0, 0.1], vec![3.0, 0.0], vec![0.2, 0.0]],
//!     vec![vec![5.0, 0.0], vec![0.0, 5.0], vec![5.0, 0.0], vec![0.0, 5.0]],
//! ];
//! let scores = ExitScores::from_logits(&logits, &[0, 1, 0, 1], Confidence::MaxSoftmax)?;
//! let costs = [1.0, 3.0]; // cumulative MFLOPs per image at each exit
//!
//! // q = 1: equal shares, so the two most confident samples leave at exit 0.
//! let (thresholds, outcome) = dynamic_eval(&scores, &costs, 1.0)?;
//! assert_eq!(outcome.exit_counts, vec![2, 2]);
//! assert_eq!(outcome.exits, vec![0, 1, 0, 1]);
//! assert_eq!((outcome.accuracy, outcome.avg_cost), (1.0, 2.0));
//! assert_eq!(simulate(&thresholds, &scores, &costs)?, outcome);
//!
//! // At most half the full model's cost per image, as accurate as possible.
//! let (_, best) = solve_budget(&scores, &costs, Budget::Fraction(0.5))?;
//! assert!(best.avg_cost <= 1.5);
//! assert_eq!(best.accuracy, 0.75);
//!
//! // Budgets the exits cannot meet are errors naming the valid range.
//! let err = solve_budget(&scores, &costs, 0.5).unwrap_err().to_string();
//! assert!(err.contains("valid range 1 MFLOPs (first exit) to 3 MFLOPs (full model)"));
//! # Ok(()) }
//! ```

mod budget;
mod calibration;
mod confidence;
mod error;
mod genetic;
mod rules;
mod scores;
#[cfg(test)]
mod test_util;

pub use budget::{Budget, solve_budget};
pub use calibration::{Calibration, Method};
pub use confidence::Confidence;
pub use error::{Error, Result};
pub use genetic::{GaParams, genetic_search};
pub use rules::{Fallback, Outcome, Thresholds, default_qs, dynamic_eval, dynamic_eval_thresholds, simulate, sweep_q};
pub use scores::ExitScores;
