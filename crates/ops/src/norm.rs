//! Batch normalisation over `[N, C, H, W]`, optionally fused with a ReLU.
//!
//! Training mode normalises with the batch statistics and returns them so the
//! caller can update its running statistics; eval mode applies the folded
//! per-channel scale and shift. On CPU both are single-pass custom ops (one
//! pass forward, one pass backward); elsewhere they are built from stock ops.

use crate::kernels::{self, bn::Stats};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, Layout, Result, Shape, Tensor, bail};
use std::sync::{Arc, Mutex};

/// Result of a training-mode batch norm.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised (and, if asked, rectified) output, same shape as the input.
    pub ys: Tensor,
    /// Per-channel batch mean `[C]` (detached).
    pub mean: Tensor,
    /// Per-channel biased batch variance `[C]` (detached).
    pub var: Tensor,
}

struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<Option<Stats>>>,
}

struct BnTrainBwd {
    relu: bool,
    stats: Stats,
    gamma: Vec<f32>,
}

fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => bail!("batch norm: expected an [N, C, H, W] input, got {d:?}"),
    }
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "anytime-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let x = kernels::f32_slice(s1, l1, "batch norm input")?;
        let gamma = kernels::f32_slice(s2, l2, "batch norm weight")?;
        let beta = kernels::f32_slice(s3, l3, "batch norm bias")?;
        let st = kernels::bn::stats(x, n, c, hw, self.eps);
        let scale: Vec<f32> = (0..c).map(|i| gamma[i] * st.invstd[i]).collect();
        let shift: Vec<f32> = (0..c).map(|i| beta[i] - st.mean[i] * scale[i]).collect();
        let y = kernels::bn::affine(x, c, hw, &scale, &shift, self.relu);
        *self.stats.lock().map_err(|e| candle_core::Error::Msg(e.to_string()))? = Some(st);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .stats
            .lock()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch norm backward before forward".into()))?;
        let c = x.dim(1)?;
        let numel = x.elem_count();
        // One op computes dx, dgamma and dbeta: its output packs them.
        let op = BnTrainBwd { relu: self.relu, stats, gamma: gamma.to_vec1()? };
        let packed = x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let dx = packed.narrow(0, 0, numel)?.reshape(x.dims())?;
        let dgamma = packed.narrow(0, numel, c)?;
        let dbeta = packed.narrow(0, numel + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

impl CustomOp3 for BnTrainBwd {
    fn name(&self) -> &'static str {
        "anytime-batch-norm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = dims(l1)?;
        let x = kernels::f32_slice(s1, l1, "batch norm input")?;
        let z = kernels::f32_slice(s2, l2, "batch norm output")?;
        let dz = kernels::f32_slice(s3, l3, "batch norm output gradient")?;
        let (mut dx, dgamma, dbeta) = kernels::bn::backward(x, z, dz, (n, c, hw), &self.gamma, &self.stats, self.relu);
        dx.extend_from_slice(&dgamma);
        dx.extend_from_slice(&dbeta);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// Training-mode batch norm: `y = gamma * (x - mean) / sqrt(var + eps) + beta`,
/// statistics over `N, H, W`, followed by a ReLU when `relu`. Differentiable in
/// `xs`, `gamma` and `beta`.
///
/// # Shapes
/// `xs` `[N, C, H, W]`, `gamma`, `beta` `[C]` → `ys` `[N, C, H, W]`, `mean`, `var` `[C]`.
pub fn batch_norm_train(xs: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64, relu: bool) -> Result<BatchNormTrain> {
    let (_, c, _, _) = xs.dims4()?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        bail!("batch norm: weight {:?} and bias {:?} must both be [{c}]", gamma.dims(), beta.dims())
    }
    if xs.elem_count() == 0 {
        bail!("batch norm in training mode needs a non-empty input, got {:?}", xs.dims())
    }
    if !(xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32) || crate::stock_ops() {
        return batch_norm_train_stock(xs, gamma, beta, eps, relu);
    }
    let stats = Arc::new(Mutex::new(None));
    let op = BnTrain { eps, relu, stats: stats.clone() };
    let ys = xs.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let st = stats
        .lock()
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("batch norm: statistics missing".into()))?;
    let dev = xs.device();
    Ok(BatchNormTrain { ys, mean: Tensor::from_vec(st.mean, c, dev)?, var: Tensor::from_vec(st.var, c, dev)? })
}

/// Training-mode batch norm from stock Candle ops (the reference for the
/// tests and the non-CPU path).
pub fn batch_norm_train_stock(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let (n, c, h, w) = xs.dims4()?;
    let xt = xs.transpose(0, 1)?.flatten_from(1)?; // [C, N*H*W]
    let mean = xt.mean_keepdim(D::Minus1)?;
    let centered = xt.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var.clone() + eps)?.sqrt()?.recip()?;
    let scale = inv.broadcast_mul(&gamma.reshape((c, 1))?)?;
    let ys = centered.broadcast_mul(&scale)?.broadcast_add(&beta.reshape((c, 1))?)?;
    let ys = ys.reshape((c, n, h, w))?.transpose(0, 1)?;
    let ys = if relu { ys.relu()? } else { ys };
    Ok(BatchNormTrain { ys, mean: mean.flatten_all()?.detach(), var: var.flatten_all()?.detach() })
}

struct BnEval {
    scale: Vec<f32>,
    shift: Vec<f32>,
    relu: bool,
}

impl CustomOp1 for BnEval {
    fn name(&self) -> &'static str {
        "anytime-batch-norm-eval"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = dims(l)?;
        let x = kernels::f32_slice(s, l, "batch norm input")?;
        Ok((CpuStorage::F32(kernels::bn::affine(x, c, hw, &self.scale, &self.shift, self.relu)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = self.scale.len();
        let scale = Tensor::from_slice(&self.scale, (1, c, 1, 1), grad.device())?;
        let g = grad.broadcast_mul(&scale)?;
        Ok(Some(if self.relu { (g * res.gt(0f32)?.to_dtype(candle_core::DType::F32)?)? } else { g }))
    }
}

/// Per-channel `(scale, shift)` of eval-mode batch norm:
/// `scale = gamma / sqrt(running_var + eps)`, `shift = beta - running_mean · scale`.
pub fn fold_bn(
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let scale = (running_var + eps)?.sqrt()?.recip()?.mul(gamma)?;
    let shift = (beta - running_mean.mul(&scale)?)?;
    Ok((scale, shift))
}

/// Eval-mode batch norm with running statistics:
/// `y = (x - running_mean) * gamma / sqrt(running_var + eps) + beta`, then a
/// ReLU when `relu`. Differentiable in `xs` only (the statistics and affine
/// parameters are constants in eval mode).
pub fn batch_norm_eval(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = xs.dim(1)?;
    let (scale, shift) = fold_bn(gamma, beta, running_mean, running_var, eps)?;
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && xs.rank() == 4 && !crate::stock_ops() {
        let op = BnEval { scale: scale.to_vec1()?, shift: shift.to_vec1()?, relu };
        return xs.contiguous()?.apply_op1(op);
    }
    let ys = xs.broadcast_mul(&scale.reshape((1, c, 1, 1))?)?.broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
    if relu { ys.relu() } else { Ok(ys) }
}

/// The per-channel scale and shift of an eval-mode batch norm that follows
/// a convolution with `bias`: `bn(conv(x, w) + b) == conv(x, w) · scale +
/// shift`, for [`crate::conv::conv2d_scale_bias_act`] (which applies them
/// as the convolution stores its outputs, on the weights as they are).
///
/// # Shapes
/// Every tensor `[C_out]`.
pub fn fold_bn_after_conv(
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = fold_bn(gamma, beta, running_mean, running_var, eps)?;
    let shift = match bias {
        Some(b) => (b.mul(&scale)? + shift)?,
        None => shift,
    };
    Ok((scale, shift))
}

/// Folds an eval-mode batch norm that follows a convolution into the
/// convolution's weight and bias: `conv(x, w') + b' == bn(conv(x, w) + b)`.
///
/// # Shapes
/// `weight` `[C_out, C_in/groups, k, k]`, the rest `[C_out]`.
pub fn fold_bn_into_conv(
    weight: &Tensor,
    bias: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let (scale, b) = fold_bn_after_conv(bias, gamma, beta, running_mean, running_var, eps)?;
    let c = scale.dim(0)?;
    let w = weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{Conv2dParams, conv2d, conv2d_scale_bias_act};
    use crate::test_util::{assert_close, rand_tensor};
    use candle_core::{Device, Var};

    #[test]
    fn train_matches_stock_forward_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (i, &(n, c, h, w, relu)) in
            [(4, 3, 5, 7, false), (1, 2, 3, 3, true), (8, 5, 1, 1, true), (3, 4, 6, 2, false)].iter().enumerate()
        {
            let x = Var::from_tensor(&(rand_tensor(&[n, c, h, w], 10 + i as u64, &dev)? * 3.0)?.affine(1.0, 1.0)?)?;
            let g = Var::from_tensor(&(rand_tensor(&[c], 20 + i as u64, &dev)? + 1.5)?)?;
            let b = Var::from_tensor(&rand_tensor(&[c], 30 + i as u64, &dev)?)?;
            let ours = batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, relu)?;
            let stock = batch_norm_train_stock(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, relu)?;
            assert_close("forward", &ours.ys, &stock.ys, 1e-4)?;
            assert_close("mean", &ours.mean, &stock.mean, 1e-5)?;
            assert_close("var", &ours.var, &stock.var, 1e-4)?;
            let r = rand_tensor(ours.ys.dims(), 40, &dev)?;
            let g1 = (ours.ys * &r)?.sum_all()?.backward()?;
            let g2 = (stock.ys * &r)?.sum_all()?.backward()?;
            for (name, v) in [("dx", &x), ("dgamma", &g), ("dbeta", &b)] {
                assert_close(name, g1.get(v.as_tensor()).expect("grad"), g2.get(v.as_tensor()).expect("grad"), 1e-4)?;
            }
        }
        Ok(())
    }

    #[test]
    fn eval_and_folding_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = rand_tensor(&[2, 3, 5, 5], 1, &dev)?;
        let w = rand_tensor(&[4, 3, 3, 3], 2, &dev)?;
        let (g, b) = ((rand_tensor(&[4], 3, &dev)? + 1.0)?, rand_tensor(&[4], 4, &dev)?);
        let (m, v) = (rand_tensor(&[4], 5, &dev)?, (rand_tensor(&[4], 6, &dev)? + 1.5)?);
        let p = Conv2dParams { padding: 1, ..Default::default() };
        let y = conv2d(&x, &w, None, p)?;
        let reference = batch_norm_eval(&y, &g, &b, &m, &v, 1e-5, false)?;
        let manual = y
            .broadcast_sub(&m.reshape((1, 4, 1, 1))?)?
            .broadcast_div(&(v.reshape((1, 4, 1, 1))? + 1e-5)?.sqrt()?)?
            .broadcast_mul(&g.reshape((1, 4, 1, 1))?)?
            .broadcast_add(&b.reshape((1, 4, 1, 1))?)?;
        assert_close("eval", &reference, &manual, 1e-5)?;
        let (fw, fb) = fold_bn_into_conv(&w, None, &g, &b, &m, &v, 1e-5)?;
        assert_close("folded", &conv2d(&x, &fw, Some(&fb), p)?, &reference, 1e-4)?;
        // The same as a scale and shift after the convolution, with a
        // convolution bias too, through the fused op.
        let cb = rand_tensor(&[4], 7, &dev)?;
        let with_bias = batch_norm_eval(&conv2d(&x, &w, Some(&cb), p)?, &g, &b, &m, &v, 1e-5, true)?;
        let (s, t) = fold_bn_after_conv(Some(&cb), &g, &b, &m, &v, 1e-5)?;
        assert_close("scale and shift", &conv2d_scale_bias_act(&x, &w, &s, &t, p, true)?, &with_bias, 1e-4)?;
        let err = conv2d_scale_bias_act(&x, &w, &s.narrow(0, 0, 3)?, &t, p, true).expect_err("3 scales for 4 channels");
        assert!(err.to_string().contains("scale of [4]"), "{err}");
        let relu = batch_norm_eval(&y, &g, &b, &m, &v, 1e-5, true)?;
        assert_close("relu", &relu, &reference.relu()?, 1e-6)?;
        Ok(())
    }

    #[test]
    fn empty_inputs() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((0, 3, 4, 4), candle_core::DType::F32, &dev)?;
        let (g, b) =
            (Tensor::ones(3, candle_core::DType::F32, &dev)?, Tensor::zeros(3, candle_core::DType::F32, &dev)?);
        let err = batch_norm_train(&x, &g, &b, 1e-5, true).expect_err("an empty batch has no statistics");
        assert!(err.to_string().contains("non-empty"), "{err}");
        let y = batch_norm_eval(&x, &g, &b, &b, &g, 1e-5, true)?;
        assert_eq!(y.dims(), [0, 3, 4, 4]);
        Ok(())
    }
}
