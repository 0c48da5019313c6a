//! Squeeze-and-excitation, as gen-efficientnet's `SqueezeExcite` (the
//! MobileNetV3 encoders of GFNet use it with a hard-sigmoid gate):
//!
//! ```text
//! s = mean over H, W of x            [N, C, 1, 1]
//! s = relu(conv_reduce(s))           1x1 conv with bias, C → reduced
//! s = gate(conv_expand(s))           1x1 conv with bias, reduced → C
//! y = x ⊙ s                          broadcast over H, W
//! ```
//!
//! Keys `conv_reduce.weight`, `conv_reduce.bias`, `conv_expand.weight`,
//! `conv_expand.bias`. The caller chooses the reduced width (GFNet's
//! MobileNetV3: `make_divisible(mid / 4, 8)`).
//!
//! ```
//! use anytime_blocks::se::{Gate, SqueezeExcite};
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let se = SqueezeExcite::new(vb, 16, 8, Gate::HardSigmoid)?;
//! let x = Tensor::ones((2, 16, 5, 5), DType::F32, &Device::Cpu)?;
//! // Zero weights: the gate sees 0, hard_sigmoid(0) = 1/2.
//! let y = se.forward(&x)?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?[0], 0.5);
//! # Ok(()) }
//! ```

use crate::layers::Conv2d;
use anytime_flops::{Activation, CountFlops, Counter, Shape4};
use anytime_ops::act::hard_sigmoid;
use anytime_ops::conv::Conv2dParams;
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// The gating function applied to the expanded squeeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gate {
    /// The logistic sigmoid (`torch.sigmoid`, EfficientNet).
    Sigmoid,
    /// `relu6(x + 3) / 6` (`F.hardsigmoid`, MobileNetV3), with PyTorch's
    /// gradient (zero at ±3).
    HardSigmoid,
}

impl Gate {
    /// Applies the gate element-wise.
    pub fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Gate::Sigmoid => candle_nn::ops::sigmoid(xs),
            Gate::HardSigmoid => hard_sigmoid(xs),
        }
    }
}

/// A squeeze-and-excitation block: global average pool → `conv_reduce`
/// (1x1, bias) → ReLU → `conv_expand` (1x1, bias) → gate → multiply the
/// input.
#[derive(Debug, Clone)]
pub struct SqueezeExcite {
    conv_reduce: Conv2d,
    conv_expand: Conv2d,
    gate: Gate,
    channels: usize,
}

impl SqueezeExcite {
    /// Loads or creates the two 1x1 convolutions under `vb`
    /// (`conv_reduce`: `channels → reduced`, `conv_expand`: `reduced →
    /// channels`, both with a bias). New weights are drawn from N(0, 2 /
    /// out_channels) and biases are zero, as gen-efficientnet initialises
    /// them.
    pub fn new(vb: VarBuilder, channels: usize, reduced: usize, gate: Gate) -> Result<Self> {
        if channels == 0 || reduced == 0 {
            bail!(
                "squeeze-excite {}: channels ({channels}) and reduced channels ({reduced}) must be positive",
                vb.prefix()
            )
        }
        let p = Conv2dParams::default();
        Ok(Self {
            conv_reduce: Conv2d::new(vb.pp("conv_reduce"), channels, reduced, 1, p, true)?,
            conv_expand: Conv2d::new(vb.pp("conv_expand"), reduced, channels, 1, p, true)?,
            gate,
            channels,
        })
    }

    /// Channels in and out.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The gate.
    pub fn gate(&self) -> Gate {
        self.gate
    }
}

impl CountFlops for SqueezeExcite {
    /// The two 1x1 convolutions on the pooled vector (MACs and params), the
    /// pooling, ReLU and gate, and the broadcast product with the input.
    fn count_flops(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        if x.c != self.channels {
            return Err(anytime_flops::Error::Channels { layer: "squeeze-excite", expected: self.channels, got: x.c });
        }
        let gate = match self.gate {
            Gate::Sigmoid => Activation::Sigmoid,
            Gate::HardSigmoid => Activation::HardSigmoid,
        };
        c.squeeze_excite(x, self.conv_reduce.out_channels(), gate)
    }
}

impl Module for SqueezeExcite {
    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = xs.dims4()?;
        if c != self.channels {
            bail!("squeeze-excite: expected {} channels, got {c}", self.channels)
        }
        let s = xs.mean_keepdim(3)?.mean_keepdim(2)?;
        let s = self.conv_reduce.forward(&s)?.relu()?;
        let s = self.gate.apply(&self.conv_expand.forward(&s)?)?;
        xs.broadcast_mul(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_golden, assert_grads, fixture, get, var_builder};
    use candle_core::{DType, Device};

    #[test]
    fn matches_pytorch_with_both_gates() -> Result<()> {
        // gen-efficientnet's SqueezeExcite, 8 channels reduced to 3, with
        // torch.sigmoid and F.hardsigmoid gates whose inputs reach both flat
        // parts: the output and the gradients of sum(y · r).
        let f = fixture("layers.safetensors")?;
        let (vars, vb) = var_builder(&f)?;
        for (case, gate) in [("se_sigmoid", Gate::Sigmoid), ("se_hardsigmoid", Gate::HardSigmoid)] {
            let se = SqueezeExcite::new(vb.pp(case), 8, 3, gate)?;
            let y = se.forward(vars[&format!("{case}.x")].as_tensor())?;
            assert_golden(case, &y, get(&f, &format!("{case}.y")))?;
            let grads = (y * get(&f, &format!("{case}.r")))?.sum_all()?.backward()?;
            let names = ["x", "conv_reduce.weight", "conv_reduce.bias", "conv_expand.weight", "conv_expand.bias"];
            assert_grads(&f, &vars, &grads, case, &names)?;
        }
        Ok(())
    }

    #[test]
    fn channel_mismatch_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let se = SqueezeExcite::new(VarBuilder::zeros(DType::F32, &dev), 4, 2, Gate::Sigmoid)?;
        let x = Tensor::zeros((1, 3, 2, 2), DType::F32, &dev)?;
        assert!(se.forward(&x).unwrap_err().to_string().contains("expected 4 channels, got 3"));
        assert!(SqueezeExcite::new(VarBuilder::zeros(DType::F32, &dev), 4, 0, Gate::Sigmoid).is_err());
        Ok(())
    }

    /// SE counts its two 1x1 convs on the pooled vector (with a bias each) and
    /// lists the pooling, activations and product separately.
    #[test]
    fn counts_flops() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
        let se = SqueezeExcite::new(vb, 16, 8, Gate::HardSigmoid)?;
        let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
        let y = se.count_flops(&mut c, Shape4::new(1, 16, 7, 7)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!(y, Shape4::new(1, 16, 7, 7));
        let cost = c.current();
        assert_eq!(cost.macs, 2 * 16 * 8);
        assert_eq!(cost.params, 2 * 16 * 8 + 8 + 16);
        assert_eq!(cost.gate, 16 * 49);
        assert!(se.count_flops(&mut c, Shape4::new(1, 8, 7, 7)).is_err());
        Ok(())
    }
}
