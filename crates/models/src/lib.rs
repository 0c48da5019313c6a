//! Multi-exit image classifiers assembled from `anytime` blocks: MSDNet, RANet,
//! SCAN, GFNet and the ResNet-MC / DenseNet-MC baselines, with the
//! [`MultiExit`] interface for lazy anytime evaluation and real early exit.
//!
//! ```
//! use anytime_models::msdnet::{MsdNet, MsdNetConfig};
//! use anytime_models::MultiExit;
//! use anytime_blocks::Mode;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> anytime_models::Result<()> {
//! let cfg = MsdNetConfig::cifar100_anytime();
//! let model = MsdNet::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
//! let costs = model.exit_costs(32, 32)?;
//! assert_eq!(costs.len(), 7);
//! let xs = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let exits = model.forward_exits(&xs, &Mode::eval())?;
//! assert_eq!(exits[6].logits.dims(), &[1, 100]);
//! assert_eq!(exits[6].feature.dims(), &[1, 128]); // what its linear layer reads
//! # Ok(()) }
//! ```

pub mod densenet_mc;
pub mod error;
pub mod exit;
pub mod gfnet;
pub mod limits;
pub mod msdnet;
pub mod ranet;
mod refargs;
pub mod registry;
pub mod resnet_mc;
pub mod scan;
pub mod stages;
#[cfg(test)]
mod testutil;

pub use error::{ConfigError, ModelError, Result};
pub use exit::{
    Anytime, AnytimeResult, ExitDecision, ExitOutput, ExitState, MultiExit, StageState, classify_anytime,
    classify_budgeted, classify_early_exit,
};
pub use refargs::Namespace;
