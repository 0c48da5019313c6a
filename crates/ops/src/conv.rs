//! 2-D convolution with a fast CPU path.
//!
//! [`conv2d`] is the single entry point every block uses. On CPU it runs the
//! project's own kernels — sums of shifted views of zero-padded (phase)
//! planes for k×k kernels (register-blocked AVX2/FMA kernels where the CPU
//! has them, one GEMM per tap elsewhere), 1x1 convolutions of large maps on
//! the tensors in place, direct depthwise kernels; forward, input gradient
//! and weight gradient all as Candle custom ops so `Tensor::backward` works
//! (im2col + GEMM remains for comparison) — see `docs/results.md` for their speed
//! against stock Candle and PyTorch. On other devices it calls Candle's stock
//! `Tensor::conv2d`, so the `cuda` and `metal` features keep working.

use crate::kernels::{self, conv::ConvGeom};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

/// Hyper-parameters of a square 2-D convolution, as in `torch.nn.Conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding added on every side.
    pub padding: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
    /// Number of groups; `in_channels` and `out_channels` must both divide by it.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl Conv2dParams {
    /// Output size along one axis for an input of `size` and a kernel of `k`,
    /// or `None` when the kernel does not fit.
    pub fn out_size(&self, size: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k.max(1) - 1) + 1;
        (size + 2 * self.padding).checked_sub(span).map(|d| d / self.stride + 1)
    }
}

fn geometry(x: &[usize], w: &[usize], p: Conv2dParams) -> Result<ConvGeom> {
    let (&[n, c_in, h, wd], &[c_out, cig, k, k2]) = (x, w) else {
        bail!("conv2d: expected input [N, C, H, W] and weight [C_out, C_in/groups, k, k], got {x:?} and {w:?}")
    };
    if p.stride == 0 || p.dilation == 0 || p.groups == 0 {
        bail!("conv2d: stride, dilation and groups must be at least 1, got {p:?}")
    }
    if k != k2 || k == 0 {
        bail!("conv2d: only square, non-empty kernels are supported, got {k}x{k2}")
    }
    if c_in % p.groups != 0 || c_out % p.groups != 0 || cig * p.groups != c_in {
        bail!("conv2d: input {c_in} / output {c_out} channels and weight {w:?} do not fit {} groups", p.groups)
    }
    if h == 0 || wd == 0 {
        bail!("conv2d: the input maps are empty ({h}x{wd})")
    }
    let (Some(oh), Some(ow)) = (p.out_size(h, k), p.out_size(wd, k)) else {
        bail!("conv2d: a {k}x{k} kernel (dilation {}, padding {}) does not fit a {h}x{wd} input", p.dilation, p.padding)
    };
    Ok(ConvGeom {
        n,
        c_in,
        h,
        w: wd,
        c_out,
        k,
        stride: p.stride,
        pad: p.padding,
        dil: p.dilation,
        groups: p.groups,
        oh,
        ow,
    })
}

struct ConvFwd(Conv2dParams);
struct ConvBwdInput(ConvGeom);
struct ConvBwdWeight(ConvGeom);

impl CustomOp2 for ConvFwd {
    fn name(&self) -> &'static str {
        "anytime-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.dims(), l2.dims(), self.0)?;
        let x = kernels::f32_slice(s1, l1, "conv2d input")?;
        let w = kernels::f32_slice(s2, l2, "conv2d weight")?;
        let y = kernels::conv::forward(&g, x, w, kernels::conv::Epilogue::NONE);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = geometry(x.dims(), w.dims(), self.0)?;
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &ConvBwdInput(g))?;
        let dw = x.apply_op2_no_bwd(&dy, &ConvBwdWeight(g))?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for ConvBwdInput {
    fn name(&self) -> &'static str {
        "anytime-conv2d-bwd-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let dy = kernels::f32_slice(s1, l1, "conv2d output gradient")?;
        let w = kernels::f32_slice(s2, l2, "conv2d weight")?;
        let dx = kernels::conv::backward_input(&g, dy, w);
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}

impl CustomOp2 for ConvBwdWeight {
    fn name(&self) -> &'static str {
        "anytime-conv2d-bwd-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let x = kernels::f32_slice(s1, l1, "conv2d input")?;
        let dy = kernels::f32_slice(s2, l2, "conv2d output gradient")?;
        let dw = kernels::conv::backward_weight(&g, x, dy);
        Ok((CpuStorage::F32(dw), Shape::from((g.c_out, g.c_in / g.groups, g.k, g.k))))
    }
}

/// Convolves `xs` `[N, C_in, H, W]` with `weight` `[C_out, C_in / groups, k, k]`,
/// adding `bias` `[C_out]` when given. Differentiable in all three.
///
/// # Shapes
/// - output: `[N, C_out, H_out, W_out]` with `H_out = (H + 2p - d(k-1) - 1) / s + 1`.
pub fn conv2d(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    geometry(xs.dims(), weight.dims(), p)?;
    let ys = if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && !crate::stock_ops() {
        xs.contiguous()?.apply_op2(&weight.contiguous()?, ConvFwd(p))?
    } else {
        xs.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?
    };
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
    }
}

/// The fused inference convolution: a convolution, a per-channel bias and
/// optionally a ReLU in one pass, `relu(conv(x, w) + b)`; the bias and the
/// ReLU are applied to each output value as the kernel stores it, so they
/// cost no pass of their own. With a batch norm folded into `weight` and
/// `bias` ([`crate::norm::fold_bn_into_conv`]) this is conv → eval-mode
/// batch norm → ReLU as one operation.
///
/// Inference only: the result carries no gradient (it is a constant for
/// `Tensor::backward`). On other devices, or with [`crate::set_stock_ops`],
/// it runs the stock convolution, a broadcast add and a ReLU.
///
/// # Shapes
/// `xs` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, k, k]`, `bias`
/// `[C_out]`; output as [`conv2d`].
///
/// ```
/// use anytime_ops::conv::{Conv2dParams, conv2d, conv2d_bias_act};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// let x = Tensor::arange(0f32, 32., &Device::Cpu)?.reshape((1, 2, 4, 4))?;
/// let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let b = Tensor::new(&[-300f32, 0., 300.], &Device::Cpu)?;
/// let p = Conv2dParams { padding: 1, ..Default::default() };
/// let fused = conv2d_bias_act(&x, &w, &b, p, true)?;
/// let unfused = conv2d(&x, &w, Some(&b), p)?.relu()?;
/// assert_eq!(fused.dims(), &[1, 3, 4, 4]);
/// let diff = (fused - unfused)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-3);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_bias_act(xs: &Tensor, weight: &Tensor, bias: &Tensor, p: Conv2dParams, relu: bool) -> Result<Tensor> {
    let g = geometry(xs.dims(), weight.dims(), p)?;
    if bias.dims() != [g.c_out] {
        bail!("conv2d: expected a bias of [{}], got {:?}", g.c_out, bias.dims())
    }
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && !crate::stock_ops() {
        let op = ConvBiasAct { p, relu, scaled: false };
        return xs.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op);
    }
    let ys =
        xs.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?.broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
    if relu { ys.relu() } else { Ok(ys) }
}

/// [`conv2d_bias_act`] with a per-channel scale as well,
/// `relu(conv(x, w) · scale + shift)`, applied to each output value as the
/// kernel stores it. With the scale and shift of an eval-mode batch norm
/// ([`crate::norm::fold_bn_after_conv`]) this is conv → batch norm → ReLU
/// as one operation on the convolution's own weights: nothing the size of
/// the weights is made or kept (folding the batch norm into a copy of the
/// weights doubles a model's weight memory while it also keeps them for
/// training).
///
/// Inference only, as [`conv2d_bias_act`]. On other devices, or with
/// [`crate::set_stock_ops`], the stock convolution, a broadcast multiply and
/// add and a ReLU.
///
/// # Shapes
/// `xs` `[N, C_in, H, W]`, `weight` `[C_out, C_in / groups, k, k]`,
/// `scale` and `shift` `[C_out]`; output as [`conv2d`].
///
/// ```
/// use anytime_ops::conv::{Conv2dParams, conv2d, conv2d_scale_bias_act};
/// use candle_core::{Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// let x = Tensor::arange(0f32, 32., &Device::Cpu)?.reshape((1, 2, 4, 4))?;
/// let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
/// let (s, b) = (Tensor::new(&[2f32, 1., -1.], &Device::Cpu)?, Tensor::new(&[-300f32, 0., 300.], &Device::Cpu)?);
/// let p = Conv2dParams { padding: 1, ..Default::default() };
/// let fused = conv2d_scale_bias_act(&x, &w, &s, &b, p, true)?;
/// let unfused = conv2d(&x, &w, None, p)?.broadcast_mul(&s.reshape((1, 3, 1, 1))?)?.broadcast_add(&b.reshape((1, 3, 1, 1))?)?.relu()?;
/// let diff = (fused - unfused)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-3);
/// # Ok(())
/// # }
/// ```
pub fn conv2d_scale_bias_act(
    xs: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    p: Conv2dParams,
    relu: bool,
) -> Result<Tensor> {
    let g = geometry(xs.dims(), weight.dims(), p)?;
    for (what, t) in [("scale", scale), ("shift", shift)] {
        if t.dims() != [g.c_out] {
            bail!("conv2d: expected a {what} of [{}], got {:?}", g.c_out, t.dims())
        }
    }
    conv2d_scale_shift_packed_act(xs, weight, &Tensor::cat(&[scale, shift], 0)?, p, relu)
}

/// [`conv2d_scale_bias_act`] with the scale and shift packed as one tensor
/// `[scale; shift]` (`[2·C_out]`): the form a layer keeps, packed once,
/// instead of packing them on every call.
pub fn conv2d_scale_shift_packed_act(
    xs: &Tensor,
    weight: &Tensor,
    scale_shift: &Tensor,
    p: Conv2dParams,
    relu: bool,
) -> Result<Tensor> {
    let g = geometry(xs.dims(), weight.dims(), p)?;
    if scale_shift.dims() != [2 * g.c_out] {
        bail!("conv2d: expected a packed scale and shift of [{}], got {:?}", 2 * g.c_out, scale_shift.dims())
    }
    if xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32 && !crate::stock_ops() {
        let op = ConvBiasAct { p, relu, scaled: true };
        return xs.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &scale_shift.contiguous()?, &op);
    }
    let c = (1, g.c_out, 1, 1);
    let (scale, shift) = (scale_shift.narrow(0, 0, g.c_out)?, scale_shift.narrow(0, g.c_out, g.c_out)?);
    let ys = xs
        .conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?
        .broadcast_mul(&scale.reshape(c)?)?
        .broadcast_add(&shift.reshape(c)?)?;
    if relu { ys.relu() } else { Ok(ys) }
}

struct ConvBiasAct {
    p: Conv2dParams,
    relu: bool,
    /// The third tensor is `[scale; shift]` (`2·C_out`) instead of a bias.
    scaled: bool,
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "anytime-conv2d-bias-act"
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
        let g = geometry(l1.dims(), l2.dims(), self.p)?;
        let x = kernels::f32_slice(s1, l1, "conv2d input")?;
        let w = kernels::f32_slice(s2, l2, "conv2d weight")?;
        let b = kernels::f32_slice(s3, l3, "conv2d bias")?;
        let per = if self.scaled { 2 } else { 1 };
        if b.len() != per * g.c_out {
            bail!("conv2d: expected a bias of [{}], got {:?}", per * g.c_out, l3.dims())
        }
        let (scale, bias) = if self.scaled { (Some(&b[..g.c_out]), &b[g.c_out..]) } else { (None, b) };
        let ep = kernels::conv::Epilogue { scale, bias: Some(bias), relu: self.relu };
        let y = kernels::conv::forward(&g, x, w, ep);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }
}

/// Chooses how our CPU kernels run convolutions that are neither depthwise
/// nor 1x1 on large maps: shifted GEMMs on padded (phase) planes (`true`, the
/// default) or im2col + GEMM (`false`). Both give the same results up to float rounding; the switch
/// exists for the benchmark (`cargo xtask bench`) and the tests.
#[doc(hidden)]
pub fn set_shifted_gemm(on: bool) {
    kernels::conv::set_shifted(on);
}

/// Turns the AVX2/FMA micro-kernel of the shifted convolutions off (`false`:
/// one GEMM per kernel tap instead) or back on (the default where the CPU
/// has AVX2 and FMA). For the benchmark and the tests.
#[doc(hidden)]
pub fn set_direct_kernel(on: bool) {
    kernels::direct::set_enabled(on);
}

/// Turns the AVX-512 form of the direct convolution kernel off (`false`: the
/// AVX2/FMA form runs on AVX-512 CPUs too) or back on (the default where the
/// CPU has AVX-512F). Both give the same results, bit for bit. For the
/// benchmark and the tests.
#[doc(hidden)]
pub fn set_avx512_kernel(on: bool) {
    kernels::direct::set_avx512(on);
}

/// Turns the padded-plane depthwise kernels (stride 1: every tap one long
/// multiply-add over a zero-padded plane; larger strides in the forward:
/// the same over the padded plane's phases) off (`false`: the row-by-row
/// kernels run for every geometry) or back on (the default). Both give the
/// same results up to float rounding. For the benchmark and the tests.
#[doc(hidden)]
pub fn set_depthwise_padded(on: bool) {
    kernels::depthwise::set_padded(on);
}

/// Turns the Winograd F(2×2, 3×3) forward of 3×3, stride-1, padding-1
/// convolutions off (`false`: the direct kernel runs them) or back on (the
/// default where the direct kernel runs). The two agree up to float
/// rounding. For the benchmark and the tests.
#[doc(hidden)]
pub fn set_winograd(on: bool) {
    #[cfg(target_arch = "x86_64")]
    kernels::winograd::set_enabled(on);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = on;
}

/// Whether the Winograd forward is on (see [`set_winograd`]; it runs only
/// where the CPU has AVX-512F).
#[doc(hidden)]
pub fn winograd_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    return kernels::winograd::enabled();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Candle's stock convolution with the same interface (the comparison point
/// of the tests and the benchmark).
pub fn conv2d_stock(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let ys = xs.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?;
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, grad_check, rand_tensor};
    use candle_core::{Device, Var};

    /// Our conv against Candle's stock conv: forward and the three gradients.
    fn check(
        n: usize,
        c_in: usize,
        c_out: usize,
        hw: (usize, usize),
        k: usize,
        p: Conv2dParams,
        seed: u64,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&rand_tensor(&[n, c_in, hw.0, hw.1], seed, &dev)?)?;
        let w = Var::from_tensor(&rand_tensor(&[c_out, c_in / p.groups, k, k], seed + 1, &dev)?)?;
        let b = Var::from_tensor(&rand_tensor(&[c_out], seed + 2, &dev)?)?;
        let ours = conv2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?;
        let stock = conv2d_stock(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?;
        let what = format!("n{n} c{c_in}->{c_out} {hw:?} k{k} {p:?}");
        assert_close(&format!("{what} forward"), &ours, &stock, 1e-4)?;
        let r = rand_tensor(ours.dims(), seed + 3, &dev)?;
        let g1 = (ours * &r)?.sum_all()?.backward()?;
        let stock_grads =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (&stock * &r)?.sum_all()?.backward()));
        match stock_grads {
            Ok(Ok(g2)) => {
                for (name, v) in [("dx", &x), ("dw", &w), ("db", &b)] {
                    let a = g1.get(v.as_tensor()).expect("grad");
                    let b = g2.get(v.as_tensor()).expect("grad");
                    assert_close(&format!("{what} {name}"), a, b, 1e-4)?;
                }
            }
            // Candle's own conv backward errors or panics on some strided or
            // dilated geometries (its transposed conv gets the output size
            // wrong); check ours against finite differences there.
            _ => {
                let (xt, wt) = (x.as_tensor().clone(), w.as_tensor().clone());
                grad_check(&xt, |t| conv2d(t, &wt, None, p), 2e-2)?;
                grad_check(&wt, |t| conv2d(&xt, t, None, p), 2e-2)?;
            }
        }
        Ok(())
    }

    #[test]
    fn matches_stock_candle_on_random_geometries() -> Result<()> {
        // A seeded sweep over odd sizes, strides, padding, dilation, groups
        // and batch 1 (a property test with a fixed seed, so CI is stable).
        let mut rng = crate::test_util::Lcg(12345);
        for case in 0..40 {
            let k = [1, 3, 5][rng.below(3)];
            let groups = [1, 1, 2, 3][rng.below(4)];
            let stride = 1 + rng.below(3);
            let dilation = 1 + rng.below(2) * usize::from(k > 1);
            let padding = rng.below(k / 2 + 2);
            let c_in = groups * (1 + rng.below(4));
            let c_out = groups * (1 + rng.below(4));
            let n = 1 + rng.below(3);
            let span = dilation * (k - 1) + 1;
            let h = span.saturating_sub(2 * padding).max(1) + rng.below(9);
            let w = span.saturating_sub(2 * padding).max(1) + rng.below(9);
            check(n, c_in, c_out, (h, w), k, Conv2dParams { stride, padding, dilation, groups }, 100 + case)?;
        }
        Ok(())
    }

    #[test]
    fn large_maps_match_stock_candle() -> Result<()> {
        // Maps big enough for the per-sample 1x1 GEMMs, several samples per
        // chunk, and 3x3 shifted GEMMs over several chunks.
        let p1 = Conv2dParams::default();
        check(5, 6, 4, (14, 14), 1, p1, 31)?;
        check(4, 4, 6, (16, 13), 1, Conv2dParams { groups: 2, ..p1 }, 32)?;
        check(7, 3, 5, (28, 28), 1, p1, 33)?;
        check(9, 4, 3, (20, 17), 3, Conv2dParams { padding: 1, ..p1 }, 34)?;
        // 1x1 through the register-blocked kernel: columns past its last
        // whole block (225 = 14·16 + 1), more input channels than one pass
        // of it, output rows past its last whole row block; batch 1 on a
        // small map (35 = 2·16 + 3 columns).
        check(3, 20, 13, (15, 15), 1, p1, 35)?;
        check(1, 17, 7, (5, 7), 1, p1, 36)?;
        Ok(())
    }

    /// Strided convolutions on rows longer than one 32-float chunk of the
    /// dealing into phase planes (odd and even widths and paddings).
    #[test]
    fn strided_wide_rows_match_stock_candle() -> Result<()> {
        let p = Conv2dParams { stride: 2, ..Default::default() };
        check(2, 3, 4, (7, 45), 3, Conv2dParams { padding: 1, ..p }, 41)?;
        check(2, 3, 4, (6, 66), 3, Conv2dParams { padding: 2, ..p }, 42)?;
        check(1, 2, 3, (5, 33), 5, Conv2dParams { padding: 0, ..p }, 43)?;
        Ok(())
    }

    #[test]
    fn depthwise_matches_stock_candle() -> Result<()> {
        // The direct depthwise kernels: 3x3 and 5x5, stride 1 and 2, odd
        // sizes, padding, dilation, batch 1; stride 1 through the
        // padded-plane kernels and through the row-by-row ones.
        for padded in [true, false] {
            set_depthwise_padded(padded);
            let r = depthwise_cases();
            set_depthwise_padded(true);
            r?;
        }
        Ok(())
    }

    fn depthwise_cases() -> Result<()> {
        let mut rng = crate::test_util::Lcg(777);
        for case in 0..24 {
            let k = [3, 5][case % 2];
            let stride = 1 + (case / 2) % 2;
            let dilation = 1 + usize::from(case % 7 == 0);
            let padding = rng.below(k / 2 + 2);
            let c = 1 + rng.below(6);
            let n = 1 + rng.below(3);
            let span = dilation * (k - 1) + 1;
            let h = span.saturating_sub(2 * padding).max(1) + rng.below(8);
            let w = span.saturating_sub(2 * padding).max(1) + rng.below(8);
            check(n, c, c, (h, w), k, Conv2dParams { stride, padding, dilation, groups: c }, 900 + case as u64)?;
        }
        // Batches and channel counts past one weight-gradient task (8
        // samples × 16 channels) and not whole ones; 7×7.
        for (i, (n, c, k, padding)) in [(17, 37, 3, 1), (9, 20, 5, 2), (10, 17, 7, 3)].into_iter().enumerate() {
            check(n, c, c, (9, 8), k, Conv2dParams { stride: 1, padding, dilation: 1, groups: c }, 950 + i as u64)?;
        }
        Ok(())
    }

    /// The fused inference convolution equals conv + bias + ReLU through
    /// every kernel path: shifted (tight and wide layouts, stride 2, direct
    /// kernel and GEMM taps), 1x1 in place and through columns, im2col,
    /// depthwise and grouped.
    #[test]
    fn bias_act_matches_conv_then_bias_then_relu() -> Result<()> {
        let dev = Device::Cpu;
        let p1 = Conv2dParams::default();
        type Case = (usize, usize, usize, (usize, usize), usize, Conv2dParams);
        let cases: [Case; 8] = [
            (3, 5, 7, (8, 8), 3, Conv2dParams { padding: 1, ..p1 }),
            (2, 4, 13, (9, 7), 3, Conv2dParams { padding: 2, ..p1 }),
            (2, 6, 8, (11, 10), 3, Conv2dParams { stride: 2, padding: 1, ..p1 }),
            (3, 20, 9, (16, 16), 1, p1),
            (4, 8, 6, (5, 5), 1, p1),
            (2, 6, 6, (12, 12), 3, Conv2dParams { padding: 1, groups: 6, ..p1 }),
            (2, 4, 6, (7, 9), 5, Conv2dParams { padding: 2, groups: 2, ..p1 }),
            (1, 3, 4, (6, 6), 3, Conv2dParams { padding: 1, dilation: 2, ..p1 }),
        ];
        for (i, &(n, c_in, c_out, (h, w), k, p)) in cases.iter().enumerate() {
            let seed = 900 + 10 * i as u64;
            let x = rand_tensor(&[n, c_in, h, w], seed, &dev)?;
            let wt = rand_tensor(&[c_out, c_in / p.groups, k, k], seed + 1, &dev)?;
            let b = rand_tensor(&[c_out], seed + 2, &dev)?;
            for relu in [false, true] {
                let reference = conv2d_stock(&x, &wt, Some(&b), p)?;
                let reference = if relu { reference.relu()? } else { reference };
                for (shifted, direct) in [(true, true), (true, false), (false, true)] {
                    set_shifted_gemm(shifted);
                    set_direct_kernel(direct);
                    let fused = conv2d_bias_act(&x, &wt, &b, p, relu);
                    set_shifted_gemm(true);
                    set_direct_kernel(true);
                    assert_close(
                        &format!("case {i} relu {relu} shifted {shifted} direct {direct}"),
                        &fused?,
                        &reference,
                        1e-4,
                    )?;
                }
            }
        }
        let x = rand_tensor(&[1, 3, 4, 4], 1, &dev)?;
        let wt = rand_tensor(&[2, 3, 3, 3], 2, &dev)?;
        let err = conv2d_bias_act(&x, &wt, &rand_tensor(&[3], 3, &dev)?, p1, true).unwrap_err().to_string();
        assert!(err.contains("expected a bias of [2]"), "{err}");
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), candle_core::DType::F32, &dev)?;
        let w = Tensor::zeros((2, 3, 5, 5), candle_core::DType::F32, &dev)?;
        let err = conv2d(&x, &w, None, Conv2dParams::default()).unwrap_err().to_string();
        assert!(err.contains("does not fit a 4x4 input"), "{err}");
        let w = Tensor::zeros((2, 2, 3, 3), candle_core::DType::F32, &dev)?;
        assert!(conv2d(&x, &w, None, Conv2dParams::default()).is_err());
        // Empty maps are an error even where the padding would give an output.
        let x = Tensor::zeros((1, 2, 0, 4), candle_core::DType::F32, &dev)?;
        let w = Tensor::zeros((2, 1, 3, 3), candle_core::DType::F32, &dev)?;
        let p = Conv2dParams { padding: 2, groups: 2, ..Default::default() };
        let err = conv2d(&x, &w, None, p).unwrap_err().to_string();
        assert!(err.contains("input maps are empty (0x4)"), "{err}");
        Ok(())
    }
}
