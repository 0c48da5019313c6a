//! Multi-scale dense layers (MSDNet).
//!
//! A [`MsdLayer`] maps the features of `in_scales` scales (finest first) to
//! `out_scales` scales. At every output scale it concatenates, densely, the
//! identity with new features from a regular conv of that scale
//! (`conv_normal`) and — except at the finest kept scale when no scale is
//! dropped — a strided conv of the next finer scale (`conv_down`).
//! [`Transition`] compresses every remaining scale with a 1x1 ConvBasic.

use crate::Mode;
use crate::units::{ConvBasic, ConvBn, ConvKind};
use anytime_flops::{CountFlops, Counter, Shape4};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// Channel settings shared by every layer of a multi-scale network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleFactors {
    /// Width multiplier per scale (finest first), the reference `grFactor`.
    pub growth: Vec<usize>,
    /// Bottleneck width multiplier per scale, the reference `bnFactor`.
    pub bottleneck: Vec<usize>,
    /// Whether `ConvBn` units use a 1x1 bottleneck.
    pub use_bottleneck: bool,
}

/// `cat[x, conv_normal(x)]` (the reference `ConvNormal`).
#[derive(Debug, Clone)]
pub struct ConvNormal {
    conv_normal: ConvBn,
}

impl ConvNormal {
    /// `conv_normal` maps `in_channels` to `growth` new channels.
    pub fn new(vb: VarBuilder, in_channels: usize, growth: usize, bottleneck: bool, bn_width: usize) -> Result<Self> {
        Ok(Self {
            conv_normal: ConvBn::new(
                vb.pp("conv_normal"),
                in_channels,
                growth,
                ConvKind::Normal,
                bottleneck,
                bn_width,
            )?,
        })
    }
}

impl ConvNormal {
    /// # Shapes
    /// `[N, C, H, W]` → `[N, C + growth, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        Tensor::cat(&[xs, &self.conv_normal.forward_t(xs, mode)?], 1)
    }
}

impl CountFlops for ConvNormal {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv_normal.count_flops(c, x)?;
        Ok(c.concat(&[x, y]))
    }
}

/// `cat[fine_to_coarse..., coarse, conv_down(fine), conv_normal(coarse)]`
/// (the reference `ConvDownNormal`); each conv adds `out / 2` channels.
#[derive(Debug, Clone)]
pub struct ConvDownNormal {
    conv_down: ConvBn,
    conv_normal: ConvBn,
}

impl ConvDownNormal {
    /// `fine_channels` and `coarse_channels` are the two inputs' widths; `out`
    /// the new channels (odd values lose one channel, as in the reference).
    pub fn new(
        vb: VarBuilder,
        fine_channels: usize,
        coarse_channels: usize,
        out: usize,
        bottleneck: bool,
        bn_widths: (usize, usize),
    ) -> Result<Self> {
        Ok(Self {
            conv_down: ConvBn::new(
                vb.pp("conv_down"),
                fine_channels,
                out / 2,
                ConvKind::Down,
                bottleneck,
                bn_widths.0,
            )?,
            conv_normal: ConvBn::new(
                vb.pp("conv_normal"),
                coarse_channels,
                out / 2,
                ConvKind::Normal,
                bottleneck,
                bn_widths.1,
            )?,
        })
    }

    /// # Shapes
    /// fine `[N, Cf, 2H, 2W]`, coarse `[N, Cc, H, W]` → `[N, Cc + 2·(out/2), H, W]`.
    pub fn forward_t(&self, fine: &Tensor, coarse: &Tensor, mode: &Mode) -> Result<Tensor> {
        let down = self.conv_down.forward_t(fine, mode)?;
        let normal = self.conv_normal.forward_t(coarse, mode)?;
        if down.dims()[2..] != coarse.dims()[2..] {
            candle_core::bail!(
                "multi-scale layer: a strided conv of the {:?} scale gives {:?}, which does not match the next scale {:?}",
                fine.dims(),
                down.dims(),
                coarse.dims()
            )
        }
        Tensor::cat(&[coarse, &down, &normal], 1)
    }

    /// Counts both convs and the concatenation.
    pub fn count_flops(&self, c: &mut Counter, fine: Shape4, coarse: Shape4) -> anytime_flops::Result<Shape4> {
        let down = self.conv_down.count_flops(c, fine)?;
        let normal = self.conv_normal.count_flops(c, coarse)?;
        if (down.h, down.w) != (coarse.h, coarse.w) {
            return Err(anytime_flops::Error::Shape(format!(
                "multi-scale layer: a strided conv of a {}x{} map gives {}x{}, the next scale is {}x{}",
                fine.h, fine.w, down.h, down.w, coarse.h, coarse.w
            )));
        }
        Ok(c.concat(&[coarse, down, normal]))
    }
}

// A handful of units per layer, built once: the size difference between the
// variants (a few hundred bytes of tensor handles) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum ScaleUnit {
    Normal(ConvNormal),
    DownNormal(ConvDownNormal),
}

/// One MSDNet layer (`MSDNLayer`): `layers.<i>` per output scale.
#[derive(Debug, Clone)]
pub struct MsdLayer {
    layers: Vec<ScaleUnit>,
    in_scales: usize,
    out_scales: usize,
}

impl MsdLayer {
    /// A layer of an `n_scales`-scale network taking `in_scales` and giving
    /// `out_scales` scales (`in_scales - out_scales` is 0 or 1); `n_in` is the
    /// base width (scale s has `n_in · growth[s]` channels) and `n_out` the base
    /// growth rate.
    pub fn new(
        vb: VarBuilder,
        n_in: usize,
        n_out: usize,
        in_scales: usize,
        out_scales: usize,
        f: &ScaleFactors,
    ) -> Result<Self> {
        let n_scales = f.growth.len();
        if out_scales == 0 || out_scales > in_scales || in_scales > n_scales || in_scales - out_scales > 1 {
            candle_core::bail!("multi-scale layer: cannot go from {in_scales} to {out_scales} of {n_scales} scales")
        }
        if f.bottleneck.len() < n_scales {
            candle_core::bail!("multi-scale layer: {} bottleneck factors for {n_scales} scales", f.bottleneck.len())
        }
        let vb = vb.pp("layers");
        let discard = in_scales - out_scales;
        let offset = n_scales - out_scales;
        let (g, b, bn) = (&f.growth, &f.bottleneck, f.use_bottleneck);
        let mut layers = Vec::with_capacity(out_scales);
        let down_normal = |i: usize, s: usize| {
            ConvDownNormal::new(vb.pp(i), n_in * g[s - 1], n_in * g[s], n_out * g[s], bn, (b[s - 1], b[s]))
                .map(ScaleUnit::DownNormal)
        };
        if discard > 0 {
            layers.push(down_normal(0, offset)?);
        } else {
            layers.push(ScaleUnit::Normal(ConvNormal::new(
                vb.pp(0),
                n_in * g[offset],
                n_out * g[offset],
                bn,
                b[offset],
            )?));
        }
        for s in offset + 1..n_scales {
            layers.push(down_normal(s - offset, s)?);
        }
        Ok(Self { layers, in_scales, out_scales })
    }

    /// Number of output scales.
    pub fn out_scales(&self) -> usize {
        self.out_scales
    }

    fn check_inputs(&self, n: usize) -> Result<()> {
        if n != self.in_scales {
            candle_core::bail!("multi-scale layer: expected {} scales, got {n}", self.in_scales)
        }
        Ok(())
    }

    /// # Shapes
    /// `in_scales` maps (finest first) → `out_scales` maps (finest first).
    pub fn forward_t(&self, xs: &[Tensor], mode: &Mode) -> Result<Vec<Tensor>> {
        self.check_inputs(xs.len())?;
        let first = xs.len() - self.out_scales; // index of the finest kept scale
        self.layers
            .iter()
            .enumerate()
            .map(|(i, unit)| match unit {
                ScaleUnit::Normal(u) => u.forward_t(&xs[first + i], mode),
                ScaleUnit::DownNormal(u) => u.forward_t(&xs[first + i - 1], &xs[first + i], mode),
            })
            .collect()
    }

    /// Counts every unit; returns the output shapes (finest first).
    pub fn count_flops(&self, c: &mut Counter, xs: &[Shape4]) -> anytime_flops::Result<Vec<Shape4>> {
        if xs.len() != self.in_scales {
            return Err(anytime_flops::Error::Shape(format!(
                "multi-scale layer: expected {} scales, got {}",
                self.in_scales,
                xs.len()
            )));
        }
        let first = xs.len() - self.out_scales;
        self.layers
            .iter()
            .enumerate()
            .map(|(i, unit)| match unit {
                ScaleUnit::Normal(u) => u.count_flops(c, xs[first + i]),
                ScaleUnit::DownNormal(u) => u.count_flops(c, xs[first + i - 1], xs[first + i]),
            })
            .collect()
    }
}

/// A transition (`ParallelModule` of 1x1 ConvBasic units, keys `m.<i>`): scale
/// `offset + i` goes from `n_in · growth[offset + i]` to `n_out · growth[offset + i]`
/// channels.
#[derive(Debug, Clone)]
pub struct Transition {
    m: Vec<ConvBasic>,
}

impl Transition {
    /// One 1x1 ConvBasic per remaining scale.
    pub fn new(
        vb: VarBuilder,
        n_in: usize,
        n_out: usize,
        scales: usize,
        offset: usize,
        growth: &[usize],
    ) -> Result<Self> {
        if offset + scales > growth.len() {
            candle_core::bail!(
                "transition: scales {offset}..{} exceed {} growth factors",
                offset + scales,
                growth.len()
            )
        }
        let vb = vb.pp("m");
        let m = (0..scales)
            .map(|i| {
                let g = growth[offset + i];
                ConvBasic::new(vb.pp(i), n_in * g, n_out * g, 1, 1, 0)
            })
            .collect::<Result<_>>()?;
        Ok(Self { m })
    }

    /// # Shapes
    /// one map per scale → the same maps with compressed channels.
    pub fn forward_t(&self, xs: &[Tensor], mode: &Mode) -> Result<Vec<Tensor>> {
        if xs.len() != self.m.len() {
            candle_core::bail!("transition: expected {} scales, got {}", self.m.len(), xs.len())
        }
        self.m.iter().zip(xs).map(|(m, x)| m.forward_t(x, mode)).collect()
    }

    /// Counts every unit.
    pub fn count_flops(&self, c: &mut Counter, xs: &[Shape4]) -> anytime_flops::Result<Vec<Shape4>> {
        if xs.len() != self.m.len() {
            return Err(anytime_flops::Error::Shape(format!(
                "transition: expected {} scales, got {}",
                self.m.len(),
                xs.len()
            )));
        }
        self.m.iter().zip(xs).map(|(m, x)| m.count_flops(c, *x)).collect()
    }
}
