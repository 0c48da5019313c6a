//! MobileNetV3-Large as GFNet's vendored gen-efficientnet 0.9.8 builds it
//! (`models/mobilenetv3.py`, `_gen_mobilenet_v3('mobilenetv3_large_100',
//! channel_multiplier)`), with its `state_dict` keys: GFNet's glance and
//! focus encoders.
//!
//! - **Stem** `conv_stem` (3x3/2, no bias) → `bn1` → hard-swish; its width
//!   is `make_divisible(16·m)`.
//! - **Blocks** `blocks.<stage>.<i>` (the large arch string, `mobilenetv3.py`
//!   lines 237–249): a depthwise-separable block (`conv_dw`, `bn1`, act,
//!   `conv_pw`, `bn2`), inverted residuals (`conv_pw`, `bn1`, act,
//!   `conv_dw`, `bn2`, act, optional `se`, `conv_pwl`, `bn3`) and a final
//!   1x1 `conv`/`bn1`/hard-swish. Output widths are `make_divisible(c·m)`,
//!   expanded widths `make_divisible(in·e)` (no second multiplier),
//!   squeeze-excite widths `make_divisible(mid/4)` with a ReLU inside and a
//!   hard-sigmoid gate. A block adds its input when its stride is 1 and its
//!   width does not change. Padding is `k // 2`; batch norm has eps 1e-5.
//! - **Head**: global average pool → `conv_head` (1x1 to `num_features`,
//!   1280 whatever the multiplier, with bias) → hard-swish → flatten: the
//!   *feature*. `classifier` (linear) gives the logits from it.
//!
//! [`MobileNetV3::forward_t`] returns the feature and the blocks' output
//! *map* (before pooling), the two things GFNet reads.
//!
//! ```
//! use anytime_blocks::Mode;
//! use anytime_blocks::mobilenet::{MobileNetV3, MobileNetV3Config};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let cfg = MobileNetV3Config { channel_multiplier: 0.5, in_channels: 1, num_classes: 10, num_features: 1280 };
//! let net = MobileNetV3::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &cfg)?;
//! let out = net.forward_t(&Tensor::zeros((2, 1, 48, 48), DType::F32, &Device::Cpu)?, &Mode::eval())?;
//! assert_eq!(out.feature.dims(), &[2, 1280]);
//! assert_eq!(out.map.dims(), &[2, 480, 2, 2]);
//! assert_eq!(net.classify(&out.feature)?.dims(), &[2, 10]);
//! # Ok(()) }
//! ```

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d, Linear};
use crate::se::{Gate, SqueezeExcite};
use anytime_flops::{Activation, CountFlops, Counter, Shape4};
use anytime_ops::act::hard_swish;
use anytime_ops::conv::Conv2dParams;
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// gen-efficientnet's `make_divisible(v, 8)`: the nearest multiple of 8 (at
/// least 8), raised by 8 when that is more than 10 % below `v`.
pub fn make_divisible(v: f64) -> usize {
    const D: f64 = 8.0;
    let mut n = (((v + D / 2.0) / D).floor() * D).max(D);
    if n < 0.9 * v {
        n += D;
    }
    n as usize
}

/// A MobileNetV3-Large configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct MobileNetV3Config {
    /// Width multiplier of the stem and every block (1.0 for
    /// `mobilenetv3_large_100`).
    pub channel_multiplier: f64,
    /// Input channels.
    pub in_channels: usize,
    /// Classes of `classifier`.
    pub num_classes: usize,
    /// Width of `conv_head` and of the feature (1280, not scaled).
    pub num_features: usize,
}

/// The activation of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Relu,
    HardSwish,
}

impl Act {
    fn count(self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()> {
        match self {
            Act::Relu => {
                c.relu(x);
                Ok(())
            }
            Act::HardSwish => c.activation(x, Activation::HardSwish),
        }
    }
}

/// A convolution, its batch norm, then the activation.
fn conv_bn_act(conv: &Conv2d, bn: &BatchNorm2d, xs: &Tensor, act: Act, mode: &Mode) -> Result<Tensor> {
    match act {
        Act::Relu => conv.forward_bn(bn, xs, mode, true),
        Act::HardSwish => hard_swish(&conv.forward_bn(bn, xs, mode, false)?),
    }
}

/// One row of the large arch string: (block kind, kernel, stride,
/// expansion, output channels before the multiplier, squeeze-excite,
/// activation).
#[derive(Debug, Clone, Copy)]
struct Row {
    kind: Kind,
    k: usize,
    s: usize,
    e: f64,
    c: usize,
    se: bool,
    act: Act,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ds,
    Ir,
    Cn,
}

/// `mobilenetv3.py` lines 237–249, one inner list per stage.
fn large_arch() -> Vec<Vec<Row>> {
    use Act::{HardSwish as H, Relu as R};
    let ir = |k, s, e, c, se, act| Row { kind: Kind::Ir, k, s, e, c, se, act };
    vec![
        vec![Row { kind: Kind::Ds, k: 3, s: 1, e: 1.0, c: 16, se: false, act: R }],
        vec![ir(3, 2, 4.0, 24, false, R), ir(3, 1, 3.0, 24, false, R)],
        vec![ir(5, 2, 3.0, 40, true, R); 3],
        vec![
            ir(3, 2, 6.0, 80, false, H),
            ir(3, 1, 2.5, 80, false, H),
            ir(3, 1, 2.3, 80, false, H),
            ir(3, 1, 2.3, 80, false, H),
        ],
        vec![ir(3, 1, 6.0, 112, true, H); 2],
        vec![ir(5, 2, 6.0, 160, true, H); 3],
        vec![Row { kind: Kind::Cn, k: 1, s: 1, e: 1.0, c: 960, se: false, act: H }],
    ]
}

/// One inverted-residual block (`conv_pw` → `bn1` → act → `conv_dw` → `bn2`
/// → act → optional `se` → `conv_pwl` → `bn3`, plus the input when the
/// stride is 1 and the width does not change), as the network builds it:
/// for benchmarks and for other MobileNet-like networks.
#[derive(Debug, Clone)]
pub struct InvertedResidual(Block);

impl InvertedResidual {
    /// A block from `cin` to `cout` channels with a `kernel`² depthwise
    /// convolution of `stride`, expanded widths `make_divisible(cin·expansion)`,
    /// squeeze-excite when `se`, hard-swish when `hard_swish` (else ReLU).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        expansion: f64,
        se: bool,
        hard_swish: bool,
    ) -> Result<Self> {
        if kernel == 0 || stride == 0 || !(expansion.is_finite() && expansion > 0.0) {
            bail!("inverted residual: kernel {kernel}, stride {stride} and expansion {expansion} must be positive")
        }
        let act = if hard_swish { Act::HardSwish } else { Act::Relu };
        let row = Row { kind: Kind::Ir, k: kernel, s: stride, e: expansion, c: cout, se, act };
        Ok(Self(Block::new(vb, &row, cin, cout, stride)?))
    }

    /// The block on `xs` `[N, cin, H, W]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.0.forward_t(xs, mode)
    }
}

/// A block of the network.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Block {
    /// Depthwise-separable: `conv_dw` → `bn1` → act → `conv_pw` → `bn2`.
    Ds { conv_dw: Conv2d, bn1: BatchNorm2d, conv_pw: Conv2d, bn2: BatchNorm2d, act: Act, skip: bool },
    /// Inverted residual.
    Ir {
        conv_pw: Conv2d,
        bn1: BatchNorm2d,
        conv_dw: Conv2d,
        bn2: BatchNorm2d,
        se: Option<SqueezeExcite>,
        conv_pwl: Conv2d,
        bn3: BatchNorm2d,
        act: Act,
        skip: bool,
    },
    /// 1x1 conv → `bn1` → act.
    Cn { conv: Conv2d, bn1: BatchNorm2d, act: Act },
}

impl Block {
    fn new(vb: VarBuilder, row: &Row, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let one = Conv2dParams::default();
        let dw = |c: usize| Conv2dParams { stride, padding: row.k / 2, groups: c, ..Default::default() };
        let skip = stride == 1 && cin == cout;
        Ok(match row.kind {
            Kind::Ds => Block::Ds {
                conv_dw: Conv2d::new(vb.pp("conv_dw"), cin, cin, row.k, dw(cin), false)?,
                bn1: BatchNorm2d::new(vb.pp("bn1"), cin)?,
                conv_pw: Conv2d::new(vb.pp("conv_pw"), cin, cout, 1, one, false)?,
                bn2: BatchNorm2d::new(vb.pp("bn2"), cout)?,
                act: row.act,
                skip,
            },
            Kind::Ir => {
                let mid = make_divisible(cin as f64 * row.e);
                let se = if row.se {
                    Some(SqueezeExcite::new(vb.pp("se"), mid, make_divisible(mid as f64 * 0.25), Gate::HardSigmoid)?)
                } else {
                    None
                };
                Block::Ir {
                    conv_pw: Conv2d::new(vb.pp("conv_pw"), cin, mid, 1, one, false)?,
                    bn1: BatchNorm2d::new(vb.pp("bn1"), mid)?,
                    conv_dw: Conv2d::new(vb.pp("conv_dw"), mid, mid, row.k, dw(mid), false)?,
                    bn2: BatchNorm2d::new(vb.pp("bn2"), mid)?,
                    se,
                    conv_pwl: Conv2d::new(vb.pp("conv_pwl"), mid, cout, 1, one, false)?,
                    bn3: BatchNorm2d::new(vb.pp("bn3"), cout)?,
                    act: row.act,
                    skip,
                }
            }
            Kind::Cn => Block::Cn {
                conv: Conv2d::new(vb.pp("conv"), cin, cout, 1, one, false)?,
                bn1: BatchNorm2d::new(vb.pp("bn1"), cout)?,
                act: row.act,
            },
        })
    }

    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        match self {
            Block::Ds { conv_dw, bn1, conv_pw, bn2, act, skip } => {
                let ys = conv_bn_act(conv_dw, bn1, xs, *act, mode)?;
                let ys = conv_pw.forward_bn(bn2, &ys, mode, false)?;
                if *skip { ys + xs } else { Ok(ys) }
            }
            Block::Ir { conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, act, skip } => {
                let ys = conv_bn_act(conv_pw, bn1, xs, *act, mode)?;
                let mut ys = conv_bn_act(conv_dw, bn2, &ys, *act, mode)?;
                if let Some(se) = se {
                    ys = se.forward(&ys)?;
                }
                let ys = conv_pwl.forward_bn(bn3, &ys, mode, false)?;
                if *skip { ys + xs } else { Ok(ys) }
            }
            Block::Cn { conv, bn1, act } => conv_bn_act(conv, bn1, xs, *act, mode),
        }
    }
}

impl CountFlops for Block {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        match self {
            Block::Ds { conv_dw, bn1, conv_pw, bn2, act, .. } => {
                let y = {
                    let t = conv_dw.count_flops(c, x)?;
                    bn1.count_flops(c, t)
                }?;
                act.count(c, y)?;
                {
                    let t = conv_pw.count_flops(c, y)?;
                    bn2.count_flops(c, t)
                }
            }
            Block::Ir { conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, act, .. } => {
                let y = {
                    let t = conv_pw.count_flops(c, x)?;
                    bn1.count_flops(c, t)
                }?;
                act.count(c, y)?;
                let y = {
                    let t = conv_dw.count_flops(c, y)?;
                    bn2.count_flops(c, t)
                }?;
                act.count(c, y)?;
                let y = match se {
                    Some(se) => se.count_flops(c, y)?,
                    None => y,
                };
                {
                    let t = conv_pwl.count_flops(c, y)?;
                    bn3.count_flops(c, t)
                }
            }
            Block::Cn { conv, bn1, act } => {
                let y = {
                    let t = conv.count_flops(c, x)?;
                    bn1.count_flops(c, t)
                }?;
                act.count(c, y)?;
                Ok(y)
            }
        }
    }
}

/// What the encoder gives for a batch.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// The pooled feature `[N, num_features]` (hard-swish of `conv_head`).
    pub feature: Tensor,
    /// The blocks' output map `[N, C, H/32, W/32]` (before pooling).
    pub map: Tensor,
}

/// MobileNetV3-Large (gen-efficientnet 0.9.8 layout and keys).
#[derive(Debug, Clone)]
pub struct MobileNetV3 {
    conv_stem: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    conv_head: Conv2d,
    classifier: Linear,
    map_channels: usize,
}

impl MobileNetV3 {
    /// Builds the network under `vb` (keys `conv_stem`, `bn1`, `blocks.*`,
    /// `conv_head`, `classifier`).
    pub fn new(vb: VarBuilder, cfg: &MobileNetV3Config) -> Result<Self> {
        let m = cfg.channel_multiplier;
        if !(m.is_finite() && m > 0.0 && m <= 8.0) {
            bail!("mobilenetv3: the channel multiplier must be in (0, 8], got {m}")
        }
        if cfg.in_channels == 0 || cfg.num_classes == 0 || cfg.num_features == 0 {
            bail!("mobilenetv3: in_channels, num_classes and num_features must be positive, got {cfg:?}")
        }
        let stem = make_divisible(16.0 * m);
        let p = Conv2dParams { stride: 2, padding: 1, ..Default::default() };
        let conv_stem = Conv2d::new(vb.pp("conv_stem"), cfg.in_channels, stem, 3, p, false)?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), stem)?;
        let mut blocks = Vec::new();
        let mut c = stem;
        for (s, stage) in large_arch().iter().enumerate() {
            for (i, row) in stage.iter().enumerate() {
                let out = make_divisible(row.c as f64 * m);
                let stride = if i == 0 { row.s } else { 1 };
                blocks.push(Block::new(vb.pp("blocks").pp(s).pp(i), row, c, out, stride)?);
                c = out;
            }
        }
        let conv_head = Conv2d::new(vb.pp("conv_head"), c, cfg.num_features, 1, Conv2dParams::default(), true)?;
        let classifier = Linear::new(vb.pp("classifier"), cfg.num_features, cfg.num_classes)?;
        Ok(Self { conv_stem, bn1, blocks, conv_head, classifier, map_channels: c })
    }

    /// Channels of the output map.
    pub fn map_channels(&self) -> usize {
        self.map_channels
    }

    /// Width of the feature.
    pub fn feature_dim(&self) -> usize {
        self.classifier.in_features()
    }

    /// # Shapes
    /// `[N, C_in, H, W]` → feature `[N, num_features]`, map `[N, C, ⌈H/32⌉, ⌈W/32⌉]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<EncoderOutput> {
        let mut ys = hard_swish(&self.conv_stem.forward_bn(&self.bn1, xs, mode, false)?)?;
        for b in &self.blocks {
            ys = b.forward_t(&ys, mode)?;
        }
        let pooled = ys.mean_keepdim((2, 3))?;
        let feature = hard_swish(&self.conv_head.forward(&pooled)?)?.flatten_from(1)?;
        Ok(EncoderOutput { feature, map: ys })
    }

    /// The classifier's logits `[N, classes]` for features `[N, num_features]`.
    pub fn classify(&self, feature: &Tensor) -> Result<Tensor> {
        self.classifier.forward(feature)
    }

    /// Adds the cost of encoding one input `x` and of the classifier (when
    /// `classify`); returns the map's shape.
    pub fn count(&self, c: &mut Counter, x: Shape4, classify: bool) -> anytime_flops::Result<Shape4> {
        let stem = self.conv_stem.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, stem)?;
        c.activation(y, Activation::HardSwish)?;
        let mut y = y;
        for b in &self.blocks {
            y = b.count_flops(c, y)?;
        }
        let p = c.global_avg_pool(y);
        let h = self.conv_head.count_flops(c, p)?;
        c.activation(h, Activation::HardSwish)?;
        if classify {
            self.classifier.count_flops(c, x.n);
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn make_divisible_matches_gen_efficientnet() {
        // (v, expected) from efficientnet_builder.py's rule.
        for (v, want) in
            [(8.0, 8), (18.0, 24), (100.0, 104), (92.0, 96), (480.0, 480), (4.0, 8), (60.0, 64), (12.0, 16)]
        {
            assert_eq!(make_divisible(v), want, "{v}");
        }
    }

    /// Logits, feature and map equal the reference's (GFNet's vendored
    /// gen-efficientnet, x0.5, 1 channel, 10 classes) at 48 and 96 pixels:
    /// `tests/fixtures/gfnet_mnv3_x050` from `scripts/fixtures/gfnet_mnv3.py`.
    #[test]
    fn matches_the_reference_at_half_width() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gfnet_mnv3_x050");
        let weights = candle_core::safetensors::load(dir.join("state_dict.safetensors"), &Device::Cpu)?;
        let weights = weights
            .into_iter()
            .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
            .collect::<Result<std::collections::HashMap<_, _>>>()?;
        let n_keys = weights.len();
        let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu)?;
        let cfg = MobileNetV3Config { channel_multiplier: 0.5, in_channels: 1, num_classes: 10, num_features: 1280 };
        let vm = candle_nn::VarMap::new();
        let net = MobileNetV3::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg)?;
        {
            let data = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            assert_eq!(data.len(), n_keys, "the model's variables and the reference's keys differ in number");
            for (k, v) in data.iter() {
                let t = weights.get(k).unwrap_or_else(|| panic!("reference has no {k}"));
                v.set(t)?;
            }
        }
        // Layer by layer, then the inference path (folded batch norms).
        for (mode, size) in [(Mode::eval(), 48), (Mode::eval(), 96), (Mode::inference(), 48), (Mode::inference(), 96)] {
            let out = net.forward_t(&io[&format!("input.{size}")], &mode)?;
            let logits = net.classify(&out.feature)?;
            for (what, a, b) in [
                ("map", &out.map, &io[&format!("map.{size}")]),
                ("feature", &out.feature, &io[&format!("feature.{size}")]),
                ("logits", &logits, &io[&format!("logits.{size}")]),
            ] {
                // The fixture's statistics make values of several hundred:
                // round-off is relative to the tensor's scale.
                assert_eq!(a.dims(), b.dims(), "{what} {size}");
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= 1e-4 * scale, "{what} at {size}: max |diff| {diff}, scale {scale}");
            }
        }
        Ok(())
    }

    #[test]
    fn shapes_costs_and_bad_configs() -> Result<()> {
        let cfg = MobileNetV3Config { channel_multiplier: 1.0, in_channels: 3, num_classes: 1000, num_features: 1280 };
        let net = MobileNetV3::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &cfg)?;
        assert_eq!(net.map_channels(), 960);
        let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
        let y =
            net.count(&mut c, Shape4::new(1, 3, 224, 224), true).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!((y.c, y.h, y.w), (960, 7, 7));
        // mobilenetv3_large_100 is published at about 219 M MACs at 224x224.
        let macs = c.current().macs as f64 / 1e6;
        assert!((210.0..230.0).contains(&macs), "{macs}");
        for m in [0.0, -1.0, f64::NAN, 100.0] {
            let bad = MobileNetV3Config { channel_multiplier: m, ..cfg.clone() };
            assert!(MobileNetV3::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &bad).is_err());
        }
        Ok(())
    }
}
