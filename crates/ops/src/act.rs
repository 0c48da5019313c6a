//! Piecewise-linear activations of mobile networks, differentiable:
//! `relu6`, `hard_sigmoid` and `hard_swish` (PyTorch's `F.relu6`,
//! `F.hardsigmoid`, `F.hardswish`).
//!
//! On CPU f32 tensors each is one fused element-wise custom op whose
//! backward is another (one pass each way); other devices and dtypes use
//! compositions of Candle's differentiable `clamp`. At the kinks the fused
//! ops take the flat side's gradient, as PyTorch; the compositions may
//! split it there.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Which activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Relu6,
    HardSigmoid,
    HardSwish,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Relu6 => "relu6",
            Kind::HardSigmoid => "hard_sigmoid",
            Kind::HardSwish => "hard_swish",
        }
    }

    fn value(self, x: f32) -> f32 {
        match self {
            Kind::Relu6 => x.clamp(0.0, 6.0),
            Kind::HardSigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Kind::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// Derivative; at a kink, the flat side's, as PyTorch 2.15 computes it
    /// (checked against it: `relu6` 0 at 0 and 6, `hard_sigmoid` 0 at ±3,
    /// `hard_swish` 0 at -3 and 1 at 3). Older PyTorch releases took
    /// `hard_swish`'s middle piece on the closed interval [-3, 3] instead.
    fn slope(self, x: f32) -> f32 {
        match self {
            Kind::Relu6 if x > 0.0 && x < 6.0 => 1.0,
            Kind::HardSigmoid if x > -3.0 && x < 3.0 => 1.0 / 6.0,
            Kind::HardSwish if x >= 3.0 => 1.0,
            Kind::HardSwish if x > -3.0 => x / 3.0 + 0.5,
            _ => 0.0,
        }
    }

    /// The same function from Candle's differentiable ops, for any device.
    fn composed(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Kind::Relu6 => xs.clamp(0.0, 6.0),
            Kind::HardSigmoid => (xs + 3.0)?.clamp(0.0, 6.0)? / 6.0,
            Kind::HardSwish => xs * Kind::HardSigmoid.composed(xs)?,
        }
    }
}

/// Element chunk per rayon task.
const CHUNK: usize = 1 << 14;

/// The forward custom op.
struct Act(Kind);

/// The backward custom op: `(x, dy) → dy · f'(x)`.
struct ActGrad(Kind);

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("{what}: expected contiguous f32 data"),
    }
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.0.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = self.0.value(x));
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &ActGrad(self.0))?))
    }
}

impl CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "activation-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "activation input")?;
        let dy = f32_data(s2, l2, "activation output gradient")?;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(|((dx, x), dy)| {
            for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
                *dx = dy * self.0.slope(x);
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

fn apply(xs: &Tensor, kind: Kind) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?.apply_op1(Act(kind))
    } else {
        kind.composed(xs)
    }
}

/// `min(max(x, 0), 6)`, element-wise. Differentiable.
///
/// # Shapes
/// Any shape, kept.
pub fn relu6(xs: &Tensor) -> Result<Tensor> {
    apply(xs, Kind::Relu6)
}

/// `relu6(x + 3) / 6`, element-wise. Differentiable.
///
/// # Shapes
/// Any shape, kept.
pub fn hard_sigmoid(xs: &Tensor) -> Result<Tensor> {
    apply(xs, Kind::HardSigmoid)
}

/// `x · hard_sigmoid(x)`, element-wise. Differentiable.
///
/// # Shapes
/// Any shape, kept.
pub fn hard_swish(xs: &Tensor) -> Result<Tensor> {
    apply(xs, Kind::HardSwish)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, fixture, get, grad_check, rand_tensor};
    use candle_core::{Device, Var};

    /// A public activation function.
    type Activation = fn(&Tensor) -> Result<Tensor>;

    const KINDS: [(Kind, Activation); 3] =
        [(Kind::Relu6, relu6), (Kind::HardSigmoid, hard_sigmoid), (Kind::HardSwish, hard_swish)];

    #[test]
    fn values_by_hand() -> Result<()> {
        let x = Tensor::new(&[-4f32, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0, 7.0], &Device::Cpu)?;
        let v = |t: Tensor| t.to_vec1::<f32>();
        assert_eq!(v(relu6(&x)?)?, [0.0, 0.0, 0.0, 0.0, 1.5, 3.0, 6.0, 6.0]);
        assert_eq!(v(hard_sigmoid(&x)?)?, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(v(hard_swish(&x)?)?, [0.0, 0.0, -0.375, 0.0, 1.125, 3.0, 6.0, 7.0]);
        Ok(())
    }

    #[test]
    fn gradients_at_kinks_match_torch() -> Result<()> {
        // x = torch.tensor([-3., 0., 3., 6.], requires_grad=True); f(x).sum().backward(); x.grad
        // relu6 -> [0, 0, 1, 0]; hardsigmoid -> [0, 1/6, 0, 0]; hardswish -> [0, 0.5, 1, 1]
        // (PyTorch 2.15.0; releases before the hardswish_backward change gave
        // -0.5 at -3 and 1.5 at 3).
        let want: [[f32; 4]; 3] = [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0 / 6.0, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]];
        for ((kind, f), want) in KINDS.into_iter().zip(want) {
            let x = Var::new(&[-3f32, 0.0, 3.0, 6.0], &Device::Cpu)?;
            let grads = f(x.as_tensor())?.sum_all()?.backward()?;
            let Some(g) = grads.get(x.as_tensor()) else { panic!("{}: no gradient", kind.name()) };
            assert_eq!(g.to_vec1::<f32>()?, want, "{}", kind.name());
        }
        Ok(())
    }

    #[test]
    fn values_and_gradients_match_pytorch() -> Result<()> {
        // F.relu6 / F.hardsigmoid / F.hardswish of PyTorch 2.15 on values
        // that include -3, 0, 3 and 6 exactly and ±1e-4 around them, plus
        // random ones (scripts/fixtures/layers.py); gradients of sum(y · r).
        let f = fixture("ops.safetensors")?;
        let x = Var::from_tensor(get(&f, "act.x"))?;
        let exact = x.as_tensor().to_vec1::<f32>()?;
        assert!([-3f32, 0.0, 3.0, 6.0].iter().all(|k| exact.contains(k)), "the kinks are missing");
        for (name, func) in [("relu6", relu6 as Activation), ("hardsigmoid", hard_sigmoid), ("hardswish", hard_swish)] {
            let y = func(x.as_tensor())?;
            assert_close(&format!("{name} y"), &y, get(&f, &format!("act.{name}.y")), 1e-4)?;
            let grads = (y * get(&f, "act.r"))?.sum_all()?.backward()?;
            let Some(g) = grads.get(x.as_tensor()) else { panic!("{name}: no gradient") };
            // Exact at the kinks: the slopes differ by at least 1/6 there.
            assert_close(&format!("{name} grad"), g, get(&f, &format!("act.{name}.grad")), 1e-4)?;
        }
        Ok(())
    }

    #[test]
    fn gradients_pass_finite_differences() -> Result<()> {
        // Values in [-8, 8): every piece of every function; samples within
        // the finite-difference step (0.01) of a kink are moved off it.
        let kinks = [-3f32, 0.0, 3.0, 6.0];
        let raw = (rand_tensor(&[2, 3, 4, 5], 21, &Device::Cpu)? * 8.0)?.flatten_all()?.to_vec1::<f32>()?;
        let off_kinks = raw.iter().map(|&v| if kinks.iter().any(|k| (v - k).abs() < 0.02) { v + 0.05 } else { v });
        let x = Tensor::from_vec(off_kinks.collect::<Vec<_>>(), (2, 3, 4, 5), &Device::Cpu)?;
        for (_, f) in KINDS {
            grad_check(&x, f, 1e-3)?;
        }
        Ok(())
    }

    #[test]
    fn fallback_matches_fused_op() -> Result<()> {
        // The composition (used off CPU or for other dtypes), run in f64.
        let x = (rand_tensor(&[40], 8, &Device::Cpu)? * 8.0)?;
        let x64 = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
        let xv = Var::from_tensor(&x)?;
        for (kind, f) in KINDS {
            let y = f(xv.as_tensor())?;
            let y64 = f(x64.as_tensor())?;
            assert_close(kind.name(), &y64.to_dtype(DType::F32)?, &y, 1e-6)?;
            let g = y.sum_all()?.backward()?;
            let g64 = y64.sum_all()?.backward()?;
            let (Some(g), Some(g64)) = (g.get(xv.as_tensor()), g64.get(x64.as_tensor())) else { panic!("no gradient") };
            assert_close(kind.name(), &g64.to_dtype(DType::F32)?, g, 1e-6)?;
        }
        Ok(())
    }
}
