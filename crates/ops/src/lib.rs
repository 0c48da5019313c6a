//! Tensor operations for adaptive-inference (multi-exit) networks, on Candle.
//!
//! Candle 0.11 lacks or gets wrong several ops these networks need; this crate
//! provides them with forward **and** backward passes:
//!
//! - [`conv`]: 2-D convolution with a fast CPU path;
//! - [`norm`]: batch normalisation (training and eval), optionally fused with ReLU;
//!
//! Everything returns `candle_core::Result`.
//!
//! ```
//! use anytime_ops::conv::{conv2d, Conv2dParams};
//! use candle_core::{Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
//! let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let y = conv2d(&x, &w, None, Conv2dParams { padding: 1, ..Default::default() })?;
//! assert_eq!(y.dims(), &[1, 3, 5, 5]);
//! # Ok(()) }
//! ```

pub mod conv;
pub mod norm;
