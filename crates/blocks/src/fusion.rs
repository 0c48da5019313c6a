//! RANet's fusion blocks: a sub-network on a finer resolution reuses the
//! features of the previous (coarser) sub-network.
//!
//! [`ConvUpNormal`] adds `g` channels to the current features: `floor(g·c)`
//! from a conv of the coarser features (`conv_up`) and the rest from a conv of
//! the current ones (`conv_normal`, stride 2 when the layer down-samples);
//! the current features and `conv_up`'s output are resized (bilinear,
//! `align_corners=True`) to `conv_normal`'s output size and concatenated in
//! front of it. [`UpBlock`] stacks such layers, fuses the coarser block's final
//! features through `conv_last` (1x1), and optionally compresses (`trans`).

use crate::Mode;
use crate::units::{ConvBasic, ConvBn, ConvKind};
use anytime_flops::{CountFlops, Counter, Resize, Shape4};
use anytime_ops::resize::bilinear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

fn resize_to(xs: &Tensor, (h, w): (usize, usize)) -> Result<Tensor> {
    let (_, _, xh, xw) = xs.dims4()?;
    if (xh, xw) == (h, w) { Ok(xs.clone()) } else { bilinear(xs, (h, w), true) }
}

/// One fusion layer (`ConvUpNormal`).
#[derive(Debug, Clone)]
pub struct ConvUpNormal {
    conv_up: ConvBn,
    conv_normal: ConvBn,
}

impl ConvUpNormal {
    /// `cur_channels` / `low_channels`: the current and coarser inputs;
    /// `growth` new channels of which `floor(growth · compress)` come from the
    /// coarser input; `bn_widths` = (current, coarser) bottleneck factors.
    pub fn new(
        vb: VarBuilder,
        cur_channels: usize,
        low_channels: usize,
        growth: usize,
        bn_widths: (usize, usize),
        compress: f64,
        down: bool,
    ) -> Result<Self> {
        let up = (growth as f64 * compress).floor() as usize;
        if up == 0 || up >= growth {
            candle_core::bail!(
                "fusion layer: growth {growth} with compress factor {compress} gives {up} fused channels (need 1 to {})",
                growth.saturating_sub(1)
            )
        }
        let kind = if down { ConvKind::Down } else { ConvKind::Normal };
        Ok(Self {
            conv_up: ConvBn::new(vb.pp("conv_up"), low_channels, up, ConvKind::Normal, true, bn_widths.1)?,
            conv_normal: ConvBn::new(vb.pp("conv_normal"), cur_channels, growth - up, kind, true, bn_widths.0)?,
        })
    }

    /// # Shapes
    /// low `[N, Cl, h, w]`, cur `[N, C, H, W]` → `[N, C + g, H', W']` (H' = H, or
    /// ⌈H/2⌉ when down-sampling).
    pub fn forward_t(&self, low: &Tensor, cur: &Tensor, mode: &Mode) -> Result<Tensor> {
        let res = self.conv_normal.forward_t(cur, mode)?;
        let (_, _, h, w) = res.dims4()?;
        let up = resize_to(&self.conv_up.forward_t(low, mode)?, (h, w))?;
        Tensor::cat(&[&resize_to(cur, (h, w))?, &up, &res], 1)
    }

    /// Counts the layer.
    pub fn count_flops(&self, c: &mut Counter, low: Shape4, cur: Shape4) -> anytime_flops::Result<Shape4> {
        let res = self.conv_normal.count_flops(c, cur)?;
        let up = self.conv_up.count_flops(c, low)?;
        let a = c.resize(cur, res.h, res.w, Resize::Bilinear);
        let b = c.resize(up, res.h, res.w, Resize::Bilinear);
        Ok(c.concat(&[a, b, res]))
    }
}

/// RANet's `_BlockUpNormal`.
#[derive(Debug, Clone)]
pub struct UpBlock {
    layers: Vec<ConvUpNormal>,
    conv_last: ConvBasic,
    trans: Option<ConvBasic>,
    out_channels: usize,
}

/// Settings of an [`UpBlock`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpBlockSpec {
    /// Layers.
    pub num_layers: usize,
    /// Channels of the current input.
    pub in_channels: usize,
    /// New channels per layer.
    pub growth: usize,
    /// Share of each layer's new channels taken from the coarser features,
    /// and of the fused `conv_last` channels.
    pub compress: f64,
    /// Transition reduction, if any.
    pub trans: Option<f64>,
    /// Whether the last layer halves the resolution.
    pub down: bool,
    /// Bottleneck factors (current flow, coarser flow).
    pub bn_widths: (usize, usize),
}

impl UpBlock {
    /// `low_channels[l]` are the channels of the coarser block's l-th output
    /// (`num_layers + 1` entries). With one layer, that layer is also the last
    /// one, so it down-samples when the block does (the reference crashes on
    /// `--step 1`; this is its natural reading).
    pub fn new(vb: VarBuilder, s: UpBlockSpec, low_channels: &[usize]) -> Result<Self> {
        if s.num_layers == 0 {
            candle_core::bail!("fusion block: needs at least one layer")
        }
        if low_channels.len() != s.num_layers + 1 {
            candle_core::bail!(
                "fusion block: {} layers need {} coarser features, got {}",
                s.num_layers,
                s.num_layers + 1,
                low_channels.len()
            )
        }
        let layers = (0..s.num_layers)
            .map(|i| {
                let down = s.down && i + 1 == s.num_layers;
                ConvUpNormal::new(
                    vb.pp("layers").pp(i),
                    s.in_channels + i * s.growth,
                    low_channels[i],
                    s.growth,
                    s.bn_widths,
                    s.compress,
                    down,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let n_out = s.in_channels + s.num_layers * s.growth;
        let fused = (n_out as f64 * s.compress).floor() as usize;
        if fused == 0 {
            candle_core::bail!("fusion block: compress factor {} fuses no channels into {n_out}", s.compress)
        }
        let conv_last = ConvBasic::new(vb.pp("conv_last"), low_channels[s.num_layers], fused, 1, 1, 0)?;
        let n_out = n_out + fused;
        let (trans, out_channels) = match s.trans {
            Some(r) => {
                let c = (r * n_out as f64).floor() as usize;
                if c == 0 {
                    candle_core::bail!("fusion block: reduction {r} compresses {n_out} channels to none")
                }
                (Some(ConvBasic::new(vb.pp("trans"), n_out, c, 1, 1, 0)?), c)
            }
            None => (None, n_out),
        };
        Ok(Self { layers, conv_last, trans, out_channels })
    }

    /// Channels of the block's output.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Returns the output and every layer's output (input first), given the
    /// coarser block's per-layer outputs `low`.
    pub fn forward_t(&self, xs: &Tensor, low: &[Tensor], mode: &Mode) -> Result<(Tensor, Vec<Tensor>)> {
        if low.len() != self.layers.len() + 1 {
            candle_core::bail!("fusion block: expected {} coarser features, got {}", self.layers.len() + 1, low.len())
        }
        let mut outputs = Vec::with_capacity(self.layers.len() + 1);
        outputs.push(xs.clone());
        let mut x = xs.clone();
        for (l, lo) in self.layers.iter().zip(low) {
            x = l.forward_t(lo, &x, mode)?;
            outputs.push(x.clone());
        }
        let (_, _, h, w) = x.dims4()?;
        let last = resize_to(&self.conv_last.forward_t(&low[self.layers.len()], mode)?, (h, w))?;
        let x = Tensor::cat(&[&x, &last], 1)?;
        let x = match &self.trans {
            Some(t) => t.forward_t(&x, mode)?,
            None => x,
        };
        Ok((x, outputs))
    }

    /// Counts the block; returns the output shape and the per-layer shapes.
    pub fn count_flops(
        &self,
        c: &mut Counter,
        x: Shape4,
        low: &[Shape4],
    ) -> anytime_flops::Result<(Shape4, Vec<Shape4>)> {
        if low.len() != self.layers.len() + 1 {
            return Err(anytime_flops::Error::Shape(format!(
                "fusion block: expected {} coarser features, got {}",
                self.layers.len() + 1,
                low.len()
            )));
        }
        let mut outputs = vec![x];
        let mut x = x;
        for (l, lo) in self.layers.iter().zip(low) {
            x = l.count_flops(c, *lo, x)?;
            outputs.push(x);
        }
        let last = self.conv_last.count_flops(c, low[self.layers.len()])?;
        let last = c.resize(last, x.h, x.w, Resize::Bilinear);
        let x = c.concat(&[x, last]);
        let x = match &self.trans {
            Some(t) => t.count_flops(c, x)?,
            None => x,
        };
        Ok((x, outputs))
    }
}
