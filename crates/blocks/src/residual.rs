//! Residual blocks: the ResNet basic block (with `shortcut` keys for the
//! ResNet-MC baseline, or torchvision's `downsample` keys) and the
//! torchvision bottleneck, for ResNet-style multi-exit networks (ResNet-MC,
//! SCAN).

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d};
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))` with 3x3 convs;
/// the shortcut is a 1x1 conv + BN (keys `shortcut.0`, `shortcut.1`) when
/// the stride or width changes, the identity otherwise. Keys `conv1`, `bn1`,
/// `conv2`, `bn2` as in torchvision.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    /// A block from `in_channels` to `out_channels` with the given stride
    /// (shortcut keys `shortcut.0`, `shortcut.1`).
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, stride: usize) -> Result<Self> {
        Self::with_shortcut_key(vb, in_channels, out_channels, stride, "shortcut")
    }

    /// torchvision's `BasicBlock` (expansion 1): shortcut keys `downsample.0`,
    /// `downsample.1`.
    pub fn torchvision(vb: VarBuilder, in_channels: usize, out_channels: usize, stride: usize) -> Result<Self> {
        Self::with_shortcut_key(vb, in_channels, out_channels, stride, "downsample")
    }

    fn with_shortcut_key(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        key: &str,
    ) -> Result<Self> {
        let p3 = |stride| Conv2dParams { stride, padding: 1, ..Default::default() };
        let shortcut = projection(&vb.pp(key), in_channels, out_channels, stride)?;
        Ok(Self {
            conv1: Conv2d::new(vb.pp("conv1"), in_channels, out_channels, 3, p3(stride), false)?,
            bn1: BatchNorm2d::new(vb.pp("bn1"), out_channels)?,
            conv2: Conv2d::new(vb.pp("conv2"), out_channels, out_channels, 3, p3(1), false)?,
            bn2: BatchNorm2d::new(vb.pp("bn2"), out_channels)?,
            shortcut,
        })
    }
}

impl BasicBlock {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H / stride, W / stride]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let ys = self.conv1.forward_bn(&self.bn1, xs, mode, true)?;
        let ys = self.conv2.forward_bn(&self.bn2, &ys, mode, false)?;
        (ys + shortcut_forward(&self.shortcut, xs, mode)?)?.relu()
    }
}

/// The 1x1 conv + BN projection shortcut under `vb` (`0`, `1`), when the
/// stride or the width changes.
fn projection(vb: &VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Option<(Conv2d, BatchNorm2d)>> {
    if stride == 1 && cin == cout {
        return Ok(None);
    }
    let p = Conv2dParams { stride, ..Default::default() };
    Ok(Some((Conv2d::new(vb.pp(0), cin, cout, 1, p, false)?, BatchNorm2d::new(vb.pp(1), cout)?)))
}

fn shortcut_forward(s: &Option<(Conv2d, BatchNorm2d)>, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
    match s {
        Some((conv, bn)) => conv.forward_bn(bn, xs, mode, false),
        None => Ok(xs.clone()),
    }
}

fn shortcut_count(s: &Option<(Conv2d, BatchNorm2d)>, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()> {
    if let Some((conv, bn)) = s {
        let y = conv.count_flops(c, x)?;
        bn.count_flops(c, y)?;
    }
    Ok(())
}

/// torchvision's `Bottleneck` (expansion 4), as the SCAN reference uses it:
/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))) + downsample(x))`
/// with `conv1` 1x1 `in → planes`, `conv2` 3x3 `planes → planes` carrying the
/// stride, `conv3` 1x1 `planes → 4·planes`; the shortcut is a 1x1 conv + BN
/// (`downsample.0`, `downsample.1`) when the stride or width changes.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    conv3: Conv2d,
    bn3: BatchNorm2d,
    shortcut: Option<(Conv2d, BatchNorm2d)>,
}

impl Bottleneck {
    /// Output channels per `planes`.
    pub const EXPANSION: usize = 4;

    /// A block from `in_channels` to `4·planes` with the given stride.
    pub fn new(vb: VarBuilder, in_channels: usize, planes: usize, stride: usize) -> Result<Self> {
        let out = planes * Self::EXPANSION;
        let p1 = Conv2dParams::default();
        let p3 = Conv2dParams { stride, padding: 1, ..Default::default() };
        Ok(Self {
            conv1: Conv2d::new(vb.pp("conv1"), in_channels, planes, 1, p1, false)?,
            bn1: BatchNorm2d::new(vb.pp("bn1"), planes)?,
            conv2: Conv2d::new(vb.pp("conv2"), planes, planes, 3, p3, false)?,
            bn2: BatchNorm2d::new(vb.pp("bn2"), planes)?,
            conv3: Conv2d::new(vb.pp("conv3"), planes, out, 1, p1, false)?,
            bn3: BatchNorm2d::new(vb.pp("bn3"), out)?,
            shortcut: projection(&vb.pp("downsample"), in_channels, out, stride)?,
        })
    }

    /// # Shapes
    /// `[N, in, H, W]` → `[N, 4·planes, ⌈H / stride⌉, ⌈W / stride⌉]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let ys = self.conv1.forward_bn(&self.bn1, xs, mode, true)?;
        let ys = self.conv2.forward_bn(&self.bn2, &ys, mode, true)?;
        let ys = self.conv3.forward_bn(&self.bn3, &ys, mode, false)?;
        (ys + shortcut_forward(&self.shortcut, xs, mode)?)?.relu()
    }
}

impl CountFlops for Bottleneck {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv1.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, y)?;
        c.relu(y);
        let y = self.conv2.count_flops(c, y)?;
        let y = self.bn2.count_flops(c, y)?;
        c.relu(y);
        let y = self.conv3.count_flops(c, y)?;
        let y = self.bn3.count_flops(c, y)?;
        shortcut_count(&self.shortcut, c, x)?;
        c.relu(y);
        Ok(y)
    }
}

impl CountFlops for BasicBlock {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv1.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, y)?;
        c.relu(y);
        let y = self.conv2.count_flops(c, y)?;
        let y = self.bn2.count_flops(c, y)?;
        shortcut_count(&self.shortcut, c, x)?;
        c.relu(y);
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_keys_and_costs() -> Result<()> {
        let vm = VarMap::new();
        let b = BasicBlock::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), 8, 16, 2)?;
        let mut keys: Vec<String> =
            vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.keys().cloned().collect();
        keys.sort();
        assert!(keys.contains(&"shortcut.0.weight".to_string()) && keys.contains(&"bn2.running_var".to_string()));
        let xs = Tensor::randn(0f32, 1., (2, 8, 9, 9), &Device::Cpu)?;
        assert_eq!(b.forward_t(&xs, &Mode::train())?.dims(), &[2, 16, 5, 5]);
        let mut c = Counter::new();
        let y = b.count_flops(&mut c, Shape4::new(1, 8, 9, 9)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!((y.c, y.h, y.w), (16, 5, 5));
        let convs = 8 * 16 * 9 * 25 + 16 * 16 * 9 * 25 + 8 * 16 * 25;
        assert_eq!(c.current().macs, convs + 2 * 16 * 25);
        Ok(())
    }

    #[test]
    fn bottleneck_keys_shapes_and_costs() -> Result<()> {
        let vm = VarMap::new();
        let b = Bottleneck::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), 8, 4, 2)?;
        let mut keys: Vec<String> =
            vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.keys().cloned().collect();
        keys.sort();
        for k in ["conv3.weight", "bn3.running_mean", "downsample.0.weight", "downsample.1.weight"] {
            assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
        }
        let xs = Tensor::randn(0f32, 1., (2, 8, 9, 9), &Device::Cpu)?;
        assert_eq!(b.forward_t(&xs, &Mode::train())?.dims(), &[2, 16, 5, 5]);
        let mut c = Counter::new();
        let y = b.count_flops(&mut c, Shape4::new(1, 8, 9, 9)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!((y.c, y.h, y.w), (16, 5, 5));
        // conv1 at 9x9, conv2 (stride 2) and conv3 at 5x5, the 1x1 stride-2 shortcut.
        let convs = 8 * 4 * 81 + 4 * 4 * 9 * 25 + 4 * 16 * 25 + 8 * 16 * 25;
        assert_eq!(c.current().macs, convs + 4 * 81 + 4 * 25 + 16 * 25);
        let plain = BasicBlock::torchvision(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu).pp("b"), 8, 8, 1)?;
        assert!(plain.shortcut.is_none());
        Ok(())
    }
}
