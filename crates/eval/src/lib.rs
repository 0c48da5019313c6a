//! Evaluation of multi-exit networks, as a library: what `anytime eval`,
//! `anytime calibrate` and `cargo xtask results` measure, with typed reports.
//!
//! - [`measure`]: the anytime pass (accuracy, cumulative MFLOPs and wall-clock
//!   time at every exit), real early exit with given thresholds, MSDNet's q
//!   sweep with thresholds from a held-out split, and the held-out logits that
//!   calibration works on; [`evaluate_model`] runs what a [`Request`] asks for;
//! - [`report`]: the typed results ([`EvalReport`], [`ExitReport`],
//!   [`SweepPoint`], [`EarlyExitRun`]), serialised as the JSON that
//!   `anytime eval --json` prints and `docs/data/<model>/` keeps;
//! - [`metrics`]: per-exit top-1 accuracy and the timed lazy pass;
//! - [`plot`]: SVG curves of reports and of training runs;
//! - [`shards`]: per-image results as JSON Lines, in shards (`--shard K/N`)
//!   that merge into the file of one run.
//!
//! ```
//! use anytime_data::dataset::{Dataset, Normalization};
//! use anytime_eval::{EvalReport, Request, Split, evaluate_model};
//! use anytime_models::registry::create_model;
//! use candle_core::{DType, Device};
//! use candle_nn::VarBuilder;
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An untrained ResNet-MC (all weights zero) and four blank 28×28 images.
//! let model = create_model("resnet-mc-fmnist", VarBuilder::zeros(DType::F32, &Device::Cpu))?;
//! let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
//! let classes = (0..10).map(|c| c.to_string()).collect();
//! let images = Dataset::new("blank", vec![0; 4 * 28 * 28], vec![0, 0, 0, 1], (1, 28, 28), classes, norm)?;
//! let request = Request {
//!     model: "resnet-mc-fmnist".into(),
//!     split: Split::Test,
//!     batch_size: 2,
//!     calibration: None,
//!     sweep_holdout: None,
//!     methods_holdout: None,
//!     device: candle_core::Device::Cpu,
//! };
//! let report = evaluate_model(model.as_ref(), Arc::new(images), &request)?;
//! assert_eq!((report.images, report.exits.len()), (4, 6));
//! // Zero weights give zero logits: every exit predicts class 0, right for 3 of 4.
//! assert!(report.exits.iter().all(|e| e.accuracy == 0.75));
//! assert!(report.exits[0].mflops < report.exits[5].mflops);
//! // The report is plain JSON.
//! let json = report.to_json()?;
//! assert_eq!(json["exits"][5]["exit"], 5);
//! assert_eq!(serde_json::from_value::<EvalReport>(json)?, report);
//! # Ok(()) }
//! ```

pub mod error;
mod exits;
pub mod measure;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod shards;

pub use error::{Error, Result};
pub use exits::{exit_logits, timed_exit_logits};
pub use measure::{
    ExitLogits, METHOD_BUDGET_STEPS, Request, anytime_exits, collect_logits, collect_logits_from, collect_logits_on,
    early_exit, evaluate_model, evaluate_source, exit_mflops, method_budgets, method_comparison, q_sweep, sweep_qs,
};
pub use metrics::{AnytimeEval, ExitAccuracy, evaluate, evaluate_anytime};
pub use report::{
    CalibratedRun, EarlyExitRun, EvalReport, ExitReport, MethodPoint, Provenance, SkippedImage, Split, SweepPoint,
    ThresholdMethod, saving_ratio,
};
