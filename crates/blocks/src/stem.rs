//! Multi-resolution first layers (MSDNet's `MSDNFirstLayer`, RANet's
//! `RAFirstLayer`): a stem followed by 3x3 ConvBasic units that build the
//! coarser scales.

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d};
use crate::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use anytime_ops::pool::max_pool2d;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The stem of a multi-resolution network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StemKind {
    /// CIFAR-style: one 3x3 ConvBasic, stride 1 (keys `net.0`, `net.1`).
    Cifar,
    /// ImageNet-style: 7x7/2 conv **with bias**, BN, ReLU, 3x3/2 max-pool
    /// (keys `0.weight`, `0.bias`, `1.*`); overall stride 4.
    #[serde(rename = "imagenet")]
    ImageNet,
}

/// The ImageNet stem: `Conv2d(7, 2, 3, bias=True)` → BN → ReLU → `MaxPool2d(3, 2, 1)`.
#[derive(Debug, Clone)]
pub struct ImageNetStem {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ImageNetStem {
    /// Keys `0.weight`, `0.bias`, `1.*` under `vb`.
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let p = Conv2dParams { stride: 2, padding: 3, ..Default::default() };
        Ok(Self {
            conv: Conv2d::new(vb.pp(0), in_channels, out_channels, 7, p, true)?,
            bn: BatchNorm2d::new(vb.pp(1), out_channels)?,
        })
    }
}

impl ImageNetStem {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H/4, W/4]` (rounded as torch does).
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let ys = self.conv.forward_bn(&self.bn, xs, mode, true)?;
        max_pool2d(&ys, (3, 3), (2, 2), (1, 1))
    }
}

impl CountFlops for ImageNetStem {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv.count_flops(c, x)?;
        let y = self.bn.count_flops(c, y)?;
        c.relu(y);
        c.pool2d(y, 3, 2, 1)
    }
}

#[derive(Debug, Clone)]
enum Unit {
    Basic(ConvBasic),
    ImageNet(ImageNetStem),
}

impl Unit {
    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        match self {
            Unit::Basic(u) => u.forward_t(xs, mode),
            Unit::ImageNet(u) => u.forward_t(xs, mode),
        }
    }

    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        match self {
            Unit::Basic(u) => u.count_flops(c, x),
            Unit::ImageNet(u) => u.count_flops(c, x),
        }
    }
}

/// A chain of units, each feeding the next, whose every output is kept:
/// `layers.0` is the stem, `layers.i` (i ≥ 1) a 3x3 ConvBasic of stride 1 or 2.
#[derive(Debug, Clone)]
pub struct FirstLayer {
    layers: Vec<Unit>,
    in_channels: usize,
}

impl FirstLayer {
    /// `channels[i]` is the output width of unit i; `strides[i]` (i ≥ 1) the
    /// stride of unit i (`strides[0]` is ignored: the stem decides). Keys live
    /// under `vb.pp("layers")`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        stem: StemKind,
        channels: &[usize],
        strides: &[usize],
    ) -> Result<Self> {
        if channels.is_empty() || channels.len() != strides.len() {
            candle_core::bail!(
                "first layer: {} channel counts for {} strides (need one of each per scale, at least one)",
                channels.len(),
                strides.len()
            )
        }
        let vb = vb.pp("layers");
        let mut layers = Vec::with_capacity(channels.len());
        layers.push(match stem {
            StemKind::Cifar => Unit::Basic(ConvBasic::new(vb.pp(0), in_channels, channels[0], 3, 1, 1)?),
            StemKind::ImageNet => Unit::ImageNet(ImageNetStem::new(vb.pp(0), in_channels, channels[0])?),
        });
        for i in 1..channels.len() {
            layers.push(Unit::Basic(ConvBasic::new(vb.pp(i), channels[i - 1], channels[i], 3, strides[i], 1)?));
        }
        Ok(Self { layers, in_channels })
    }

    /// Input channels the stem expects.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Runs every unit; returns all outputs in construction order.
    ///
    /// # Shapes
    /// `[N, in, H, W]` → `[[N, channels[i], H_i, W_i]; scales]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.layers.len());
        let mut x = xs.clone();
        for layer in &self.layers {
            x = layer.forward_t(&x, mode)?;
            out.push(x.clone());
        }
        Ok(out)
    }

    /// Counts every unit; returns all output shapes in construction order.
    pub fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Vec<Shape4>> {
        let mut out = Vec::with_capacity(self.layers.len());
        let mut x = x;
        for layer in &self.layers {
            x = layer.count_flops(c, x)?;
            out.push(x);
        }
        Ok(out)
    }
}
