//! Exit classifiers ("heads") for multi-exit networks.
//!
//! - [`ConvHead`]: the MSDNet / RANet classifier (`ClassifierModule`): two
//!   3x3/2 ConvBasic units, a 2x2 average pool, and a linear layer. Its keys
//!   are `m.0.net.*`, `m.1.net.*` and `linear.*`, as in the reference.
//! - [`LinearHead`]: global average pooling and a linear layer, the head of
//!   ResNet-, DenseNet- or MobileNet-style multi-exit baselines.
//! - [`gfnet`]: GFNet's patch policy and its cascade or recurrent classifier.
//! - [`scan::ScanHead`]: SCAN's attention mask, ScalaNet shallow classifier
//!   and linear layer.
//!
//! Every head a model's stages use implements [`ExitHead`].
//!
//! A head returns a [`HeadOutput`]: the logits and the exit's *feature*, the
//! vector its last linear layer reads (an embedding of the image at that
//! depth). A head's `count_flops` adds its cost and marks nothing: the model
//! marks the exit once the head has run.
//!
//! ```
//! use anytime_blocks::Mode;
//! use anytime_heads::ConvHead;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let head = ConvHead::new(vb, 48, 128, 100)?; // the CIFAR classifier
//! let xs = Tensor::zeros((2, 48, 8, 8), DType::F32, &Device::Cpu)?;
//! let out = head.forward_t(&xs, &Mode::eval())?;
//! assert_eq!(out.logits.dims(), &[2, 100]);
//! assert_eq!(out.feature.dims(), &[2, 128]); // what the linear layer reads
//! # Ok(()) }
//! ```

use anytime_blocks::Mode;
use anytime_blocks::layers::Linear;
use anytime_blocks::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::pool::avg_pool2d;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub mod gfnet;
pub mod scan;

/// An exit classifier as a model's stages run and count it.
pub trait ExitHead: std::fmt::Debug + Send + Sync {
    /// Logits and feature of a batch of maps.
    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<HeadOutput>;
    /// Adds the head's cost for input `x` (marks nothing).
    fn count(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()>;
}

impl ExitHead for ConvHead {
    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<HeadOutput> {
        ConvHead::forward_t(self, xs, mode)
    }

    fn count(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()> {
        self.count_flops(c, x).map(|_| ())
    }
}

/// What a head produces.
///
/// # Shapes
/// `logits` `[N, classes]`; `feature` `[N, D]` with `D` the input width of the
/// head's last linear layer, so that `logits = feature · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// Logits `[N, classes]`.
    pub logits: Tensor,
    /// The last linear layer's input `[N, D]`.
    pub feature: Tensor,
}

impl HeadOutput {
    /// Applies `linear` to `feature`.
    fn from_feature(linear: &Linear, feature: Tensor) -> Result<Self> {
        Ok(Self { logits: linear.forward(&feature)?, feature })
    }
}

/// `ConvBasic(in, inner, 3, stride 2) → ConvBasic(inner, inner, 3, stride 2)
/// → pool → Linear(inner, classes)`.
///
/// With [`HeadPool::Avg2`] (the reference) the pooled map must be 1x1, which
/// bounds the valid input sizes: the map fed to the head must be 5 to 12
/// pixels on each side. [`HeadPool::Global`] takes any size.
#[derive(Debug, Clone)]
pub struct ConvHead {
    m: [ConvBasic; 2],
    pool: HeadPool,
    linear: Linear,
}

/// The pooling of a [`ConvHead`] before its linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPool {
    /// `AvgPool2d(2)`, as MSDNet and RANet (the map must pool to 1x1).
    Avg2,
    /// Global average pooling (any map size).
    Global,
}

impl ConvHead {
    /// The reference head; `inner` is 128 in the CIFAR heads and
    /// `in_channels` in the ImageNet ones.
    pub fn new(vb: VarBuilder, in_channels: usize, inner: usize, num_classes: usize) -> Result<Self> {
        Self::with_pool(vb, in_channels, inner, num_classes, HeadPool::Avg2)
    }

    /// A head with the given final pooling.
    pub fn with_pool(
        vb: VarBuilder,
        in_channels: usize,
        inner: usize,
        num_classes: usize,
        pool: HeadPool,
    ) -> Result<Self> {
        let m = vb.pp("m");
        Ok(Self {
            m: [ConvBasic::new(m.pp(0), in_channels, inner, 3, 2, 1)?, ConvBasic::new(m.pp(1), inner, inner, 3, 2, 1)?],
            pool,
            linear: Linear::new(vb.pp("linear"), inner, num_classes)?,
        })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.linear.out_features()
    }

    /// Input width of the linear layer (the feature size `D`).
    pub fn feature_dim(&self) -> usize {
        self.linear.in_features()
    }

    /// # Shapes
    /// `[N, in, H, W]` (H, W in 5..=12) → logits `[N, classes]` and feature
    /// `[N, inner]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<HeadOutput> {
        let ys = self.m[1].forward_t(&self.m[0].forward_t(xs, mode)?, mode)?;
        let pooled = match self.pool {
            HeadPool::Global => ys.mean((2, 3))?,
            HeadPool::Avg2 => {
                let (_, _, h, w) = ys.dims4()?;
                if h / 2 != 1 || w / 2 != 1 {
                    candle_core::bail!(
                        "exit head: the {}x{} map it reads pools to {}x{} instead of 1x1 (the map must be 5 to 12 pixels a side)",
                        xs.dim(2)?,
                        xs.dim(3)?,
                        h / 2,
                        w / 2
                    )
                }
                avg_pool2d(&ys, (2, 2), (2, 2), (0, 0), true)?.flatten_from(1)?
            }
        };
        HeadOutput::from_feature(&self.linear, pooled)
    }
}

impl CountFlops for ConvHead {
    /// Returns `[N, classes, 1, 1]`.
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.m[0].count_flops(c, x)?;
        let y = self.m[1].count_flops(c, y)?;
        let p = match self.pool {
            HeadPool::Global => c.global_avg_pool(y),
            HeadPool::Avg2 => c.pool2d(y, 2, 2, 0)?,
        };
        if (p.h, p.w) != (1, 1) {
            return Err(anytime_flops::Error::Shape(format!(
                "exit head: a {}x{} input pools to {}x{} instead of 1x1 (the map must be 5 to 12 pixels a side)",
                x.h, x.w, p.h, p.w
            )));
        }
        self.linear.count_flops(c, p.n);
        Ok(Shape4::new(p.n, self.num_classes(), 1, 1))
    }
}

/// Global average pooling and a linear layer (`linear.*` keys under the given
/// prefix).
#[derive(Debug, Clone)]
pub struct LinearHead {
    linear: Linear,
}

impl LinearHead {
    /// A head for `in_channels`-channel maps of any size.
    pub fn new(vb: VarBuilder, in_channels: usize, num_classes: usize) -> Result<Self> {
        Ok(Self { linear: Linear::new(vb, in_channels, num_classes)? })
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.linear.out_features()
    }

    /// Input width of the linear layer (the feature size `D`).
    pub fn feature_dim(&self) -> usize {
        self.linear.in_features()
    }

    /// # Shapes
    /// `[N, C, H, W]` → logits `[N, classes]` and feature `[N, C]` (the
    /// pooled map).
    pub fn forward(&self, xs: &Tensor) -> Result<HeadOutput> {
        HeadOutput::from_feature(&self.linear, xs.mean((2, 3))?)
    }
}

impl CountFlops for LinearHead {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let p = c.global_avg_pool(x);
        self.linear.count_flops(c, p.n);
        Ok(Shape4::new(p.n, self.num_classes(), 1, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The feature is what the linear layer reads: `feature · Wᵀ + b` gives
    /// the logits, for both heads.
    #[test]
    fn the_feature_is_the_linear_layers_input() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let conv = ConvHead::with_pool(vb.pp("c"), 6, 8, 5, HeadPool::Global)?;
        let lin = LinearHead::new(vb.pp("l"), 6, 5)?;
        // A non-zero bias, so the check sees it.
        let vars = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.clone();
        let var = |k: &str| -> Result<Var> {
            vars.get(k).cloned().ok_or_else(|| candle_core::Error::Msg(format!("no variable {k}")))
        };
        for k in ["c.linear.bias", "l.bias"] {
            var(k)?.set(&Tensor::arange(0f32, 5., &dev)?)?;
        }
        let xs = Tensor::randn(0f32, 1., (3, 6, 7, 7), &dev)?;
        for (out, prefix, d) in [
            (conv.forward_t(&xs, &Mode::eval())?, "c.linear", conv.feature_dim()),
            (lin.forward(&xs)?, "l", lin.feature_dim()),
        ] {
            assert_eq!(out.feature.dims(), &[3, d]);
            assert_eq!(out.logits.dims(), &[3, 5]);
            let w = var(&format!("{prefix}.weight"))?;
            let b = var(&format!("{prefix}.bias"))?;
            let again = out.feature.matmul(&w.as_tensor().t()?)?.broadcast_add(b.as_tensor())?;
            let diff = (again - &out.logits)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{prefix}: {diff}");
        }
        Ok(())
    }
}
