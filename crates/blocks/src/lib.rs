//! Building blocks for multi-exit networks, on Candle.
//!
//! - [`layers`]: `Conv2d`, `ConvTranspose2d`, `BatchNorm2d` (training mode
//!   updates running statistics in place; a frozen one runs in eval mode),
//!   `Linear`;
//! - [`gru`]: `GruCell` and a one-layer `Gru` (PyTorch's gate order and keys);
//! - [`se`]: squeeze-and-excitation with a sigmoid or hard-sigmoid gate;
//! - [`mobilenet`]: MobileNetV3-Large in GFNet's gen-efficientnet layout
//!   (its glance and focus encoders);
//! - [`drop`]: seeded `Dropout` and `DropPath` (stochastic depth), active
//!   when the [`Mode`] trains them;
//! - [`units`]: the conv units MSDNet and RANet share (`ConvBasic`, `ConvBn`);
//! - [`stem`]: multi-resolution first layers with a CIFAR or an ImageNet stem;
//! - [`multiscale`]: MSDNet's multi-scale dense layers and transitions;
//! - [`dense`]: dense blocks (RANet's `_BlockNormal`, DenseNet);
//! - [`fusion`]: RANet's fusion layers and blocks (features of a coarser
//!   sub-network resized and concatenated into a finer one);
//! - [`residual`]: ResNet basic and bottleneck blocks;
//! - [`resnet`]: torchvision's ResNet-18 … 152 (GFNet's ResNet encoders);
//! - [`mode`]: train or eval mode per module, frozen prefixes.
//!
//! Every block loads its parameters through a `candle_nn::VarBuilder` under the
//! reference PyTorch `state_dict` names, runs with `forward_t(xs, &mode)` (a
//! [`Mode`]: train or eval, decided per module by its variable prefix), and
//! reports its cost from shapes through [`anytime_flops`]. The golden tests of
//! the layers for SCAN and GFNet compare with PyTorch values written by
//! `scripts/fixtures/layers.py` into `testdata/`.
//!
//! ```
//! use anytime_blocks::units::ConvBasic;
//! use anytime_flops::{CountFlops, Counter, Shape4};
//! use anytime_blocks::Mode;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let unit = ConvBasic::new(vb, 3, 8, 3, 2, 1)?; // keys net.0.weight, net.1.*
//! let xs = Tensor::zeros((2, 3, 17, 17), DType::F32, &Device::Cpu)?;
//! assert_eq!(unit.forward_t(&xs, &Mode::eval())?.dims(), &[2, 8, 9, 9]);
//! let mut c = Counter::new();
//! let y = unit.count_flops(&mut c, Shape4::new(1, 3, 17, 17)).unwrap();
//! assert_eq!((y.c, y.h, y.w), (8, 9, 9));
//! # Ok(()) }
//! ```

pub mod dense;
pub mod drop;
pub mod fusion;
pub mod gru;
pub mod layers;
pub mod mobilenet;
pub mod mode;
pub mod multiscale;
pub mod residual;
pub mod resnet;
pub mod se;
pub mod stem;
#[cfg(test)]
pub(crate) mod testutil;
pub mod units;

pub use mode::Mode;
