//! SCAN's exit path (Zhang et al., NeurIPS 2019, `sresnet.py`): an attention
//! mask on the backbone's map, the ScalaNet shallow classifier, and `fc<k>`.
//!
//! The keys sit at the model's top level, as in the reference:
//! `attention<k>.{0,1,3,4}`, `scala<k>.{0,1,3,4,6,7}` and `fc<k>`, so a
//! [`ScanHead`] is built from the three prefixes.

use crate::{ExitHead, HeadOutput};
use anytime_blocks::Mode;
use anytime_blocks::layers::{BatchNorm2d, Conv2d, ConvTranspose2d, Linear};
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use anytime_ops::conv_transpose::ConvTranspose2dParams;
use anytime_ops::pool::avg_pool2d;
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// `x · sigmoid(bn(deconv(relu(bn(conv(x))))))`: a 3x3 stride-2 conv (with
/// bias, key `0`), BN (`1`), ReLU, a 4x4 stride-2 transposed conv with
/// padding 1 back to the input's size (with bias, `3`), BN (`4`), sigmoid;
/// the mask multiplies the input element-wise. The map's sides must be even.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    conv: Conv2d,
    bn1: BatchNorm2d,
    deconv: ConvTranspose2d,
    bn2: BatchNorm2d,
}

impl AttentionMask {
    /// A mask over `channels`-channel maps.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let down = Conv2dParams { stride: 2, padding: 1, ..Default::default() };
        let up = ConvTranspose2dParams { stride: 2, padding: 1, ..Default::default() };
        Ok(Self {
            conv: Conv2d::new(vb.pp(0), channels, channels, 3, down, true)?,
            bn1: BatchNorm2d::new(vb.pp(1), channels)?,
            deconv: ConvTranspose2d::new(vb.pp(3), channels, channels, 4, up, true)?,
            bn2: BatchNorm2d::new(vb.pp(4), channels)?,
        })
    }

    /// The mask alone, `[N, C, H, W]` in (0, 1).
    pub fn mask(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        if h % 2 != 0 || w % 2 != 0 {
            bail!(
                "attention mask: the map is {h}x{w}; its sides must be even (the reference's 32x32 inputs give 32, 16 and 8)"
            )
        }
        let ys = self.conv.forward_bn(&self.bn1, xs, mode, true)?;
        let ys = self.bn2.forward_t(&self.deconv.forward(&ys)?, mode)?;
        candle_nn::ops::sigmoid(&ys)
    }

    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]` (the masked map).
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.mask(xs, mode)? * xs
    }
}

impl CountFlops for AttentionMask {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let y = self.conv.count_flops(c, x)?;
        let y = self.bn1.count_flops(c, y)?;
        c.relu(y);
        let y = self.deconv.count_flops(c, y)?;
        let y = self.bn2.count_flops(c, y)?;
        if (y.h, y.w) != (x.h, x.w) {
            return Err(anytime_flops::Error::Shape(format!(
                "attention mask: a {}x{} map gives a {}x{} mask (its sides must be even)",
                x.h, x.w, y.h, y.w
            )));
        }
        c.sigmoid(y)?;
        c.gate(y, x)?;
        Ok(x)
    }
}

/// ScalaNet: 1x1 conv to `hidden` (with bias, key `0`), BN (`1`), ReLU; a
/// `k`x`k` conv with stride `k` (with bias, `3`), BN (`4`), ReLU; a 1x1 conv
/// to `out` (with bias, `6`), BN (`7`), ReLU; `AvgPool2d(4, 4)`.
#[derive(Debug, Clone)]
pub struct ScalaNet {
    convs: [Conv2d; 3],
    bns: [BatchNorm2d; 3],
}

impl ScalaNet {
    /// `in_channels → hidden → hidden (k x k, stride k) → out`.
    pub fn new(vb: VarBuilder, in_channels: usize, hidden: usize, out: usize, k: usize) -> Result<Self> {
        let one = Conv2dParams::default();
        let kk = Conv2dParams { stride: k, ..Default::default() };
        Ok(Self {
            convs: [
                Conv2d::new(vb.pp(0), in_channels, hidden, 1, one, true)?,
                Conv2d::new(vb.pp(3), hidden, hidden, k, kk, true)?,
                Conv2d::new(vb.pp(6), hidden, out, 1, one, true)?,
            ],
            bns: [
                BatchNorm2d::new(vb.pp(1), hidden)?,
                BatchNorm2d::new(vb.pp(4), hidden)?,
                BatchNorm2d::new(vb.pp(7), out)?,
            ],
        })
    }

    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H / k / 4, W / k / 4]`.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        let mut ys = xs.clone();
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            ys = conv.forward_bn(bn, &ys, mode, true)?;
        }
        pool4(&ys)
    }
}

impl CountFlops for ScalaNet {
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        let mut y = x;
        for (conv, bn) in self.convs.iter().zip(&self.bns) {
            y = conv.count_flops(c, y)?;
            y = bn.count_flops(c, y)?;
            c.relu(y);
        }
        c.pool2d(y, 4, 4, 0)
    }
}

/// `AvgPool2d(4, 4)`, which must leave a 1x1 map (the reference flattens
/// the pooled map into its linear layer).
fn pool4(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if h / 4 != 1 || w / 4 != 1 {
        bail!("SCAN exit: the {h}x{w} map its AvgPool(4) reads must pool to 1x1 (SCAN takes 32x32 inputs)")
    }
    avg_pool2d(xs, (4, 4), (4, 4), (0, 0), true)?.flatten_from(1)
}

/// One SCAN exit: the optional attention mask, then ScalaNet (the shallow
/// exits) or the bare `AvgPool2d(4)` (the deepest), then `fc<k>`. The
/// feature is what `fc<k>` reads.
#[derive(Debug, Clone)]
pub struct ScanHead {
    attention: Option<AttentionMask>,
    scala: Option<ScalaNet>,
    fc: Linear,
}

impl ScanHead {
    /// A shallow exit reading `in_channels`-channel maps: `attention` under
    /// `attention` (when given), ScalaNet under `scala` (`hidden`, `out`,
    /// `k`), `Linear(out, classes)` under `fc`.
    #[allow(clippy::too_many_arguments)]
    pub fn shallow(
        attention: Option<VarBuilder>,
        scala: VarBuilder,
        fc: VarBuilder,
        in_channels: usize,
        hidden: usize,
        out: usize,
        k: usize,
        num_classes: usize,
    ) -> Result<Self> {
        Ok(Self {
            attention: attention.map(|vb| AttentionMask::new(vb, in_channels)).transpose()?,
            scala: Some(ScalaNet::new(scala, in_channels, hidden, out, k)?),
            fc: Linear::new(fc, out, num_classes)?,
        })
    }

    /// The deepest exit: `AvgPool2d(4)` of the `channels`-channel map, then
    /// `Linear(channels, classes)` under `fc`.
    pub fn deepest(fc: VarBuilder, channels: usize, num_classes: usize) -> Result<Self> {
        Ok(Self { attention: None, scala: None, fc: Linear::new(fc, channels, num_classes)? })
    }

    /// Input width of `fc` (the feature size `D`).
    pub fn feature_dim(&self) -> usize {
        self.fc.in_features()
    }
}

impl ExitHead for ScanHead {
    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<HeadOutput> {
        let masked;
        let xs = match &self.attention {
            Some(a) => {
                masked = a.forward_t(xs, mode)?;
                &masked
            }
            None => xs,
        };
        let feature = match &self.scala {
            Some(s) => s.forward_t(xs, mode)?,
            None => pool4(xs)?,
        };
        HeadOutput::from_feature(&self.fc, feature)
    }

    fn count(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()> {
        let x = match &self.attention {
            Some(a) => a.count_flops(c, x)?,
            None => x,
        };
        let p = match &self.scala {
            Some(s) => s.count_flops(c, x)?,
            None => c.pool2d(x, 4, 4, 0)?,
        };
        if (p.h, p.w) != (1, 1) || p.c != self.fc.in_features() {
            return Err(anytime_flops::Error::Shape(format!(
                "SCAN exit: a {}x{} map pools to {}x{}x{} instead of the {}x1x1 its linear layer reads (SCAN takes 32x32 inputs)",
                x.h,
                x.w,
                p.c,
                p.h,
                p.w,
                self.fc.in_features()
            )));
        }
        self.fc.count_flops(c, p.n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_keys_and_size_errors() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let head = ScanHead::shallow(Some(vb.pp("attention1")), vb.pp("scala1"), vb.pp("fc1"), 8, 16, 64, 8, 10)?;
        let mut keys: Vec<String> =
            vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?.keys().cloned().collect();
        keys.sort();
        for k in ["attention1.0.bias", "attention1.3.weight", "attention1.4.running_var", "scala1.6.bias", "fc1.weight"]
        {
            assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
        }
        let xs = Tensor::randn(0f32, 1., (2, 8, 32, 32), &Device::Cpu)?;
        let out = head.forward_t(&xs, &Mode::eval())?;
        assert_eq!((out.logits.dims(), out.feature.dims()), (&[2, 10][..], &[2, 64][..]));
        let odd = Tensor::zeros((1, 8, 30, 30), DType::F32, &Device::Cpu)?;
        let e = head.forward_t(&odd, &Mode::eval()).unwrap_err().to_string();
        assert!(e.contains("32x32"), "{e}");
        let mut c = Counter::new();
        assert!(head.count(&mut c, Shape4::new(1, 8, 28, 28)).is_err());
        let deep = ScanHead::deepest(vb.pp("fc4"), 64, 10)?;
        let out = deep.forward_t(&Tensor::zeros((3, 64, 4, 4), DType::F32, &Device::Cpu)?, &Mode::eval())?;
        assert_eq!(out.feature.dims(), &[3, 64]);
        Ok(())
    }

    /// The mask is in (0, 1) and multiplies the map.
    #[test]
    fn attention_masks_the_map() -> Result<()> {
        let vm = VarMap::new();
        let a = AttentionMask::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), 4)?;
        let xs = Tensor::randn(0f32, 1., (2, 4, 8, 8), &Device::Cpu)?;
        let m = a.mask(&xs, &Mode::eval())?;
        let v = m.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().all(|&p| p > 0.0 && p < 1.0));
        let diff = (a.forward_t(&xs, &Mode::eval())? - (m * &xs)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
