//! Conv units shared by MSDNet and RANet: [`ConvBasic`] (conv → BN → ReLU)
//! and [`ConvBn`] (an optional 1x1 bottleneck, then a 3x3 conv).
//!
//! Both keep their layers in an `nn.Sequential` named `net`, so the keys are
//! `net.0.weight`, `net.1.running_mean`, … as in the reference `state_dict`.

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d};
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `Conv2d(bias=False)` → `BatchNorm2d` → `ReLU`, keys `net.0.*`, `net.1.*`.
#[derive(Debug, Clone)]
pub struct ConvBasic {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBasic {
    /// A unit with a `kernel`x`kernel` conv of the given stride and padding.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let vb = vb.pp("net");
        let p = Conv2dParams { stride, padding, ..Default::default() };
        Ok(Self {
            conv: Conv2d::new(vb.pp(0), in_channels, out_channels, kernel, p, false)?,
            bn: BatchNorm2d::new(vb.pp(1), out_channels)?,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }
}

impl ConvBasic {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H', W']`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.conv.forward_bn(&self.bn, xs, mode, true)
    }
}

impl CountFlops for ConvBasic {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv.count_flops(c, x)?;
        let y = self.bn.count_flops(c, y)?;
        c.relu(y);
        Ok(y)
    }
}

/// Whether a [`ConvBn`]'s 3x3 conv keeps the resolution or halves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// Stride 1 (`'normal'` in the reference).
    Normal,
    /// Stride 2 (`'down'` in the reference).
    Down,
}

/// The reference `ConvBN`: with a bottleneck, `1x1 conv → BN → ReLU → 3x3 conv
/// → BN → ReLU` (keys `net.0`, `net.1`, `net.3`, `net.4`); without,
/// `3x3 conv → BN → ReLU` (keys `net.0`, `net.1`). The bottleneck width is
/// `min(in, bn_width · out)`.
#[derive(Debug, Clone)]
pub struct ConvBn {
    bottleneck: Option<(Conv2d, BatchNorm2d)>,
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    /// Builds the unit; `bn_width` is only used with a bottleneck.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kind: ConvKind,
        bottleneck: bool,
        bn_width: usize,
    ) -> Result<Self> {
        let vb = vb.pp("net");
        let (bottleneck, inner, next) = if bottleneck {
            let inner = in_channels.min(bn_width * out_channels);
            let conv = Conv2d::new(vb.pp(0), in_channels, inner, 1, Conv2dParams::default(), false)?;
            let bn = BatchNorm2d::new(vb.pp(1), inner)?;
            (Some((conv, bn)), inner, 3)
        } else {
            (None, in_channels, 0)
        };
        let stride = match kind {
            ConvKind::Normal => 1,
            ConvKind::Down => 2,
        };
        let p = Conv2dParams { stride, padding: 1, ..Default::default() };
        Ok(Self {
            bottleneck,
            conv: Conv2d::new(vb.pp(next), inner, out_channels, 3, p, false)?,
            bn: BatchNorm2d::new(vb.pp(next + 1), out_channels)?,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }
}

impl ConvBn {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H, W]` (`Normal`) or `[N, out, ⌈H/2⌉, ⌈W/2⌉]` (`Down`).
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let xs = match &self.bottleneck {
            Some((conv, bn)) => conv.forward_bn(bn, xs, mode, true)?,
            None => xs.clone(),
        };
        self.conv.forward_bn(&self.bn, &xs, mode, true)
    }
}

impl CountFlops for ConvBn {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let x = match &self.bottleneck {
            Some((conv, bn)) => {
                let y = conv.count_flops(c, x)?;
                let y = bn.count_flops(c, y)?;
                c.relu(y);
                y
            }
            None => x,
        };
        let y = self.conv.count_flops(c, x)?;
        let y = self.bn.count_flops(c, y)?;
        c.relu(y);
        Ok(y)
    }
}
