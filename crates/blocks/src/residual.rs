//! Residual blocks (ResNet basic block), for ResNet-style multi-exit
//! baselines.

use crate::Mode;
use crate::layers::{BatchNorm2d, Conv2d};
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use candle_core::{Module, Result, Tensor};
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
    /// A block from `in_channels` to `out_channels` with the given stride.
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, stride: usize) -> Result<Self> {
        let p3 = |stride| Conv2dParams { stride, padding: 1, ..Default::default() };
        let shortcut = if stride != 1 || in_channels != out_channels {
            let s = vb.pp("shortcut");
            let p = Conv2dParams { stride, ..Default::default() };
            Some((
                Conv2d::new(s.pp(0), in_channels, out_channels, 1, p, false)?,
                BatchNorm2d::new(s.pp(1), out_channels)?,
            ))
        } else {
            None
        };
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
        let ys = self.bn1.forward_act(&self.conv1.forward(xs)?, mode, true)?;
        let ys = self.bn2.forward_act(&self.conv2.forward(&ys)?, mode, false)?;
        let short = match &self.shortcut {
            Some((conv, bn)) => bn.forward_act(&conv.forward(xs)?, mode, false)?,
            None => xs.clone(),
        };
        (ys + short)?.relu()
    }
}

impl CountFlops for BasicBlock {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv1.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, y)?;
        c.relu(y);
        let y = self.conv2.count_flops(c, y)?;
        let y = self.bn2.count_flops(c, y)?;
        if let Some((conv, bn)) = &self.shortcut {
            let s = conv.count_flops(c, x)?;
            bn.count_flops(c, s)?;
        }
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
}
