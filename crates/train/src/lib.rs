//! Training for multi-exit networks on Candle.
//!
//! - [`loss`]: the multi-exit loss (weighted sum of cross-entropies, optional
//!   self-distillation from the last exit and feature hint);
//! - [`objective`]: what a training step computes (the multi-exit loss by
//!   default, or a stochastic objective with a checkpointed generator);
//! - [`optim`]: SGD with momentum, Nesterov and weight decay (PyTorch's exact
//!   rule), AdamW, gradient clipping, parameter groups (learning-rate
//!   factors, weight decays, frozen parts);
//! - [`schedule`]: multistep, cosine and cyclic cosine schedules with warm-up;
//! - [`swa`]: stochastic weight averaging and batch-norm recalibration;
//! - [`init`]: deterministic, seeded initialisation;
//! - [`checkpoint`] and [`trainer`]: resumable, atomic checkpoints and the
//!   loop, for any [`anytime_models::MultiExit`] model;
//! - [`metrics`] and [`plot`]: per-epoch records, a JSON-lines log, SVG
//!   training curves (per-exit accuracy and the plotting come from
//!   `anytime_eval`, re-exported where training uses them).
//! - [`recipes`]: each trainable model's recipe, a list of stages.
//!
//! ```
//! use anytime_train::optim::{OptimConfig, Optimizer};
//! use candle_core::{Device, Var};
//! # fn main() -> candle_core::Result<()> {
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
//! let mut opt = Optimizer::new(OptimConfig::msdnet_sgd(), vec![("w".into(), w.clone())]);
//! let loss = w.as_tensor().sqr()?.sum_all()?;
//! opt.step(&loss.backward()?, 0.1)?;
//! assert!(w.as_tensor().to_vec1::<f32>()?[0] < 1.0);
//! # Ok(()) }
//! ```

pub mod checkpoint;
pub mod error;
pub mod gfnet;
pub mod init;
pub mod loss;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod plot;
pub mod recipes;
pub mod schedule;
pub mod swa;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::{Batches, Observer, RunEnd, Silent, Start, StepProgress, TrainSpec, Trainer};
