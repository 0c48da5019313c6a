//! ResNet in torchvision's layout, as GFNet's `models/resnet.py` builds it,
//! with its `state_dict` keys: GFNet's ResNet glance and focus encoders.
//!
//! - **Stem** `conv1` (7x7/2, padding 3, no bias) → `bn1` → ReLU → 3x3/2
//!   max-pool (padding 1);
//! - **`layer1` … `layer4`** of [`BasicBlock`]s (expansion 1) or
//!   [`Bottleneck`]s (expansion 4) with 64, 128, 256 and 512 planes, layers
//!   2–4 starting with stride 2 (on the 3x3 conv), `downsample.{0,1}`
//!   shortcuts where the stride or width changes;
//! - **Head**: global average pool → flatten: the *feature*
//!   `[N, 512·expansion]`; `fc` (linear) gives logits from it.
//!
//! [`ResNet::forward_t`] returns the feature and `layer4`'s output *map*, the
//! two things GFNet reads (its `forward` returns `(pooled, x.detach())`).
//!
//! ```
//! use anytime_blocks::Mode;
//! use anytime_blocks::resnet::{ResNet, ResNetConfig};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let cfg = ResNetConfig::named("resnet18", 1, 10).expect("a torchvision name");
//! let net = ResNet::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &cfg)?;
//! let out = net.forward_t(&Tensor::zeros((2, 1, 64, 64), DType::F32, &Device::Cpu)?, &Mode::eval())?;
//! assert_eq!(out.feature.dims(), &[2, 512]);
//! assert_eq!(out.map.dims(), &[2, 512, 2, 2]);
//! assert_eq!(net.classify(&out.feature)?.dims(), &[2, 10]);
//! # Ok(()) }
//! ```

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d, Linear};
use crate::mobilenet::EncoderOutput;
use crate::residual::{BasicBlock, Bottleneck};
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use anytime_ops::pool::max_pool2d;
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// The residual block of a torchvision ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResNetBlock {
    /// Two 3x3 convs (ResNet-18/34).
    Basic,
    /// 1x1, 3x3, 1x1 convs, expansion 4 (ResNet-50/101/152).
    Bottleneck,
}

/// A torchvision ResNet configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResNetConfig {
    /// The block type.
    pub block: ResNetBlock,
    /// Blocks in `layer1` … `layer4`.
    pub layers: [usize; 4],
    /// Input channels (3 in torchvision).
    pub in_channels: usize,
    /// Outputs of `fc`.
    pub num_classes: usize,
}

/// torchvision's named depths.
pub const NAMED: [(&str, ResNetBlock, [usize; 4]); 5] = [
    ("resnet18", ResNetBlock::Basic, [2, 2, 2, 2]),
    ("resnet34", ResNetBlock::Basic, [3, 4, 6, 3]),
    ("resnet50", ResNetBlock::Bottleneck, [3, 4, 6, 3]),
    ("resnet101", ResNetBlock::Bottleneck, [3, 4, 23, 3]),
    ("resnet152", ResNetBlock::Bottleneck, [3, 8, 36, 3]),
];

impl ResNetConfig {
    /// The torchvision model called `name` (`resnet18` … `resnet152`), or
    /// `None`.
    pub fn named(name: &str, in_channels: usize, num_classes: usize) -> Option<Self> {
        NAMED.iter().find(|n| n.0 == name).map(|&(_, block, layers)| Self { block, layers, in_channels, num_classes })
    }

    /// Output channels per plane.
    pub fn expansion(&self) -> usize {
        match self.block {
            ResNetBlock::Basic => 1,
            ResNetBlock::Bottleneck => Bottleneck::EXPANSION,
        }
    }

    /// Width of the feature (and channels of the map): `512·expansion`.
    pub fn feature_dim(&self) -> usize {
        512 * self.expansion()
    }
}

#[derive(Debug, Clone)]
enum Block {
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

/// A torchvision ResNet (keys `conv1`, `bn1`, `layer<k>.<i>.*`, `fc`).
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    blocks: Vec<Block>,
    fc: Linear,
    feature_dim: usize,
}

impl ResNet {
    /// Builds the network under `vb`.
    pub fn new(vb: VarBuilder, cfg: &ResNetConfig) -> Result<Self> {
        if cfg.in_channels == 0 || cfg.num_classes == 0 || cfg.layers.contains(&0) {
            bail!("resnet: in_channels, num_classes and every block count must be positive, got {cfg:?}")
        }
        let p = Conv2dParams { stride: 2, padding: 3, ..Default::default() };
        let conv1 = Conv2d::new(vb.pp("conv1"), cfg.in_channels, 64, 7, p, false)?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), 64)?;
        let mut blocks = Vec::new();
        let mut c = 64;
        for (k, &n) in cfg.layers.iter().enumerate() {
            let planes = 64 << k;
            let layer = vb.pp(format!("layer{}", k + 1));
            for i in 0..n {
                let stride = if k > 0 && i == 0 { 2 } else { 1 };
                blocks.push(match cfg.block {
                    ResNetBlock::Basic => Block::Basic(BasicBlock::torchvision(layer.pp(i), c, planes, stride)?),
                    ResNetBlock::Bottleneck => Block::Bottleneck(Bottleneck::new(layer.pp(i), c, planes, stride)?),
                });
                c = planes * cfg.expansion();
            }
        }
        let fc = Linear::new(vb.pp("fc"), c, cfg.num_classes)?;
        Ok(Self { conv1, bn1, blocks, fc, feature_dim: c })
    }

    /// Channels of the output map (= the feature width).
    pub fn map_channels(&self) -> usize {
        self.feature_dim
    }

    /// Width of the feature.
    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    /// # Shapes
    /// `[N, C_in, H, W]` → feature `[N, 512·e]`, map `[N, 512·e, h, w]` with
    /// h, w = H, W through the stem's two halvings and three more.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<EncoderOutput> {
        let ys = self.conv1.forward_bn(&self.bn1, xs, mode, true)?;
        let mut ys = max_pool2d(&ys, (3, 3), (2, 2), (1, 1))?;
        for b in &self.blocks {
            ys = match b {
                Block::Basic(b) => b.forward_t(&ys, mode)?,
                Block::Bottleneck(b) => b.forward_t(&ys, mode)?,
            };
        }
        let feature = ys.mean((2, 3))?;
        Ok(EncoderOutput { feature, map: ys })
    }

    /// `fc`'s logits `[N, classes]` for features `[N, 512·e]`.
    pub fn classify(&self, feature: &Tensor) -> Result<Tensor> {
        self.fc.forward(feature)
    }

    /// Adds the cost of encoding one input `x` and of `fc` (when
    /// `classify`); returns the map's shape.
    pub fn count(&self, c: &mut Counter, x: Shape4, classify: bool) -> anytime_flops::Result<Shape4> {
        let y = self.conv1.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, y)?;
        c.relu(y);
        let mut y = c.pool2d(y, 3, 2, 1)?;
        for b in &self.blocks {
            y = match b {
                Block::Basic(b) => b.count_flops(c, y)?,
                Block::Bottleneck(b) => b.count_flops(c, y)?,
            };
        }
        c.global_avg_pool(y);
        if classify {
            self.fc.count_flops(c, x.n);
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn keys_shapes_and_costs_follow_torchvision() -> Result<()> {
        let vm = VarMap::new();
        let cfg = ResNetConfig::named("resnet50", 3, 7).unwrap();
        let net = ResNet::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg)?;
        let data = vm.data().lock().unwrap();
        for key in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.0.downsample.0.weight",
            "layer4.2.conv3.weight",
            "layer4.0.downsample.1.bias",
            "fc.weight",
        ] {
            assert!(data.contains_key(key), "{key}");
        }
        assert!(!data.contains_key("layer1.1.downsample.0.weight"));
        assert_eq!(data["layer4.2.conv3.weight"].dims(), &[2048, 512, 1, 1]);
        assert_eq!(data["fc.weight"].dims(), &[7, 2048]);
        drop(data);
        let out = net.forward_t(&Tensor::zeros((1, 3, 96, 96), DType::F32, &Device::Cpu)?, &Mode::eval())?;
        assert_eq!((out.feature.dims(), out.map.dims()), (&[1, 2048][..], &[1, 2048, 3, 3][..]));
        // torchvision's ResNet-50 at 224x224: 4.09 G multiply-accumulates
        // (convs and fc), 25.6 M parameters with 1000 classes.
        let net = ResNet::new(
            VarBuilder::zeros(DType::F32, &Device::Cpu),
            &ResNetConfig::named("resnet50", 3, 1000).unwrap(),
        )?;
        let mut c = Counter::new();
        let map = net.count(&mut c, Shape4::new(1, 3, 224, 224), true).unwrap();
        assert_eq!((map.c, map.h, map.w), (2048, 7, 7));
        let cost = c.current();
        let macs = cost.total(anytime_flops::Mode::Macs);
        assert!((macs as f64 / 4.0889e9 - 1.0).abs() < 0.002, "{macs}");
        assert!((cost.params as f64 / 25.557e6 - 1.0).abs() < 0.002, "{}", cost.params);
        Ok(())
    }

    #[test]
    fn unknown_names_and_zero_sizes_are_refused() {
        assert!(ResNetConfig::named("resnet20", 3, 10).is_none());
        let cfg = ResNetConfig { block: ResNetBlock::Basic, layers: [2, 0, 2, 2], in_channels: 3, num_classes: 10 };
        let err = ResNet::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &cfg).unwrap_err();
        assert!(err.to_string().contains("block count"), "{err}");
    }
}
