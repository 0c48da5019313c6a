//! Dense blocks: layers that concatenate their input with new features, as
//! DenseNet, MSDNet (one scale) and RANet's `_BlockNormal` use them.

use crate::Mode;
use crate::multiscale::ConvNormal;
use crate::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, Shape4};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// RANet's `_BlockNormal`: `layers.<l>` dense layers (`cat[x, ConvBn(x)]`,
/// each adding `growth` channels) and an optional 1x1 transition `trans`
/// compressing the output to `floor(reduction · C)` channels.
#[derive(Debug, Clone)]
pub struct DenseBlock {
    layers: Vec<ConvNormal>,
    trans: Option<ConvBasic>,
    out_channels: usize,
}

impl DenseBlock {
    /// `num_layers` layers from `in_channels`; `bn_width` is the bottleneck
    /// factor; `trans` gives the transition's reduction.
    pub fn new(
        vb: VarBuilder,
        num_layers: usize,
        in_channels: usize,
        growth: usize,
        bn_width: usize,
        trans: Option<f64>,
    ) -> Result<Self> {
        let layers = (0..num_layers)
            .map(|i| ConvNormal::new(vb.pp("layers").pp(i), in_channels + i * growth, growth, true, bn_width))
            .collect::<Result<Vec<_>>>()?;
        let n_out = in_channels + num_layers * growth;
        let (trans, out_channels) = match trans {
            Some(r) => {
                let c = (r * n_out as f64).floor() as usize;
                if c == 0 {
                    candle_core::bail!("dense block: reduction {r} compresses {n_out} channels to none")
                }
                (Some(ConvBasic::new(vb.pp("trans"), n_out, c, 1, 1, 0)?), c)
            }
            None => (None, n_out),
        };
        Ok(Self { layers, trans, out_channels })
    }

    /// Channels of the block's output.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Returns the output and every layer's output, the input first (the
    /// transition's output is not in the list).
    ///
    /// # Shapes
    /// `[N, C, H, W]` → `[N, C_out, H, W]` and `L + 1` maps `[N, C + l·g, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<(Tensor, Vec<Tensor>)> {
        let mut outputs = Vec::with_capacity(self.layers.len() + 1);
        outputs.push(xs.clone());
        let mut x = xs.clone();
        for l in &self.layers {
            x = l.forward_t(&x, mode)?;
            outputs.push(x.clone());
        }
        let x = match &self.trans {
            Some(t) => t.forward_t(&x, mode)?,
            None => x,
        };
        Ok((x, outputs))
    }

    /// Counts the block; returns the output shape and the shapes of the
    /// per-layer outputs.
    pub fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<(Shape4, Vec<Shape4>)> {
        let mut outputs = vec![x];
        let mut x = x;
        for l in &self.layers {
            x = l.count_flops(c, x)?;
            outputs.push(x);
        }
        let x = match &self.trans {
            Some(t) => t.count_flops(c, x)?,
            None => x,
        };
        Ok((x, outputs))
    }
}
