//! 2-D transposed convolution ("deconvolution"), as `torch.nn.ConvTranspose2d`.
//!
//! A transposed convolution is the input gradient of a convolution, so on CPU
//! [`conv_transpose2d`] runs the kernels of [`crate::conv`] with the roles
//! swapped: for the convolution `conv` with the same weight, stride and
//! padding that maps the transposed convolution's *output* back to its
//! *input*,
//!
//! - forward = `conv`'s input gradient (applied to `xs`),
//! - input gradient = `conv`'s forward (applied to the output gradient),
//! - weight gradient = `conv`'s weight gradient with the output gradient as
//!   `conv`'s input and `xs` as `conv`'s output gradient.
//!
//! All three are Candle custom ops, so `Tensor::backward` works. Other
//! devices and dtypes (and [`crate::set_stock_ops`]) use Candle's stock
//! `Tensor::conv_transpose2d`, which has its own backward pass.
//!
//! Only what SCAN needs is supported: square kernels, one group, no
//! dilation; anything else is an error naming the parameter.

use crate::kernels::{self, conv::ConvGeom};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

/// Hyper-parameters of a square 2-D transposed convolution, as in
/// `torch.nn.ConvTranspose2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvTranspose2dParams {
    /// Stride in both directions (the upsampling factor).
    pub stride: usize,
    /// Rows and columns removed from each side of the full output.
    pub padding: usize,
    /// Rows and columns added at the bottom and right of the output; must be
    /// less than `stride` (PyTorch's rule with dilation 1).
    pub output_padding: usize,
    /// Spacing between kernel taps; only 1 is supported.
    pub dilation: usize,
    /// Number of groups; only 1 is supported.
    pub groups: usize,
}

impl Default for ConvTranspose2dParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, output_padding: 0, dilation: 1, groups: 1 }
    }
}

impl ConvTranspose2dParams {
    /// Output size along one axis for an input of `size` and a kernel of
    /// `k`: `(size - 1)·stride - 2·padding + k + output_padding`, or `None`
    /// when that is not positive.
    pub fn out_size(&self, size: usize, k: usize) -> Option<usize> {
        let full = size.checked_sub(1)? * self.stride + k + self.output_padding;
        full.checked_sub(2 * self.padding).filter(|&o| o > 0)
    }

    /// Checks the parameters themselves (not the shapes).
    fn validate(&self) -> Result<()> {
        if self.stride == 0 {
            bail!("conv_transpose2d: stride must be at least 1, got {self:?}")
        }
        if self.dilation != 1 {
            bail!("conv_transpose2d: only dilation 1 is supported, got dilation {}", self.dilation)
        }
        if self.groups != 1 {
            bail!("conv_transpose2d: only groups 1 is supported, got groups {}", self.groups)
        }
        if self.output_padding >= self.stride {
            bail!(
                "conv_transpose2d: output_padding ({}) must be smaller than stride ({})",
                self.output_padding,
                self.stride
            )
        }
        Ok(())
    }
}

/// The convolution whose input gradient is the transposed convolution: its
/// input is the transposed convolution's output `[n, c_out, oh, ow]`, its
/// output the transposed convolution's input `[n, c_in, h, w]`, its weight
/// `[c_in, c_out, k, k]` the same tensor.
fn geometry(x: &[usize], w: &[usize], p: ConvTranspose2dParams) -> Result<ConvGeom> {
    p.validate()?;
    let (&[n, c_in, h, wd], &[wc_in, c_out, k, k2]) = (x, w) else {
        bail!("conv_transpose2d: expected input [N, C_in, H, W] and weight [C_in, C_out, k, k], got {x:?} and {w:?}")
    };
    if k != k2 || k == 0 {
        bail!("conv_transpose2d: only square, non-empty kernels are supported, got {k}x{k2}")
    }
    if wc_in != c_in {
        bail!("conv_transpose2d: the input has {c_in} channels but the weight {w:?} expects {wc_in}")
    }
    if c_out == 0 || h == 0 || wd == 0 {
        bail!("conv_transpose2d: empty input {x:?} or weight {w:?}")
    }
    let (Some(oh), Some(ow)) = (p.out_size(h, k), p.out_size(wd, k)) else {
        bail!("conv_transpose2d: a {h}x{wd} input with a {k}x{k} kernel and {p:?} gives an empty output")
    };
    Ok(ConvGeom {
        n,
        c_in: c_out,
        h: oh,
        w: ow,
        c_out: c_in,
        k,
        stride: p.stride,
        pad: p.padding,
        dil: 1,
        groups: 1,
        oh: h,
        ow: wd,
    })
}

/// Forward: `(xs, weight) → ys`.
struct ConvTFwd(ConvTranspose2dParams);
/// Input gradient: `(dy, weight) → dx` (a convolution).
struct ConvTBwdInput(ConvGeom);
/// Weight gradient: `(dy, xs) → dw`.
struct ConvTBwdWeight(ConvGeom);

impl CustomOp2 for ConvTFwd {
    fn name(&self) -> &'static str {
        "anytime-conv-transpose2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = geometry(l1.dims(), l2.dims(), self.0)?;
        let x = kernels::f32_slice(s1, l1, "conv_transpose2d input")?;
        let w = kernels::f32_slice(s2, l2, "conv_transpose2d weight")?;
        let y = kernels::conv::backward_input(&g, x, w);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.c_in, g.h, g.w))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = geometry(x.dims(), w.dims(), self.0)?;
        let dy = dy.contiguous()?;
        let dx = dy.apply_op2_no_bwd(w, &ConvTBwdInput(g))?;
        let dw = dy.apply_op2_no_bwd(x, &ConvTBwdWeight(g))?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp2 for ConvTBwdInput {
    fn name(&self) -> &'static str {
        "anytime-conv-transpose2d-bwd-input"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let dy = kernels::f32_slice(s1, l1, "conv_transpose2d output gradient")?;
        let w = kernels::f32_slice(s2, l2, "conv_transpose2d weight")?;
        let dx = kernels::conv::forward(&g, dy, w, kernels::conv::Epilogue::NONE);
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }
}

impl CustomOp2 for ConvTBwdWeight {
    fn name(&self) -> &'static str {
        "anytime-conv-transpose2d-bwd-weight"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let dy = kernels::f32_slice(s1, l1, "conv_transpose2d output gradient")?;
        let x = kernels::f32_slice(s2, l2, "conv_transpose2d input")?;
        let dw = kernels::conv::backward_weight(&g, dy, x);
        Ok((CpuStorage::F32(dw), Shape::from((g.c_out, g.c_in, g.k, g.k))))
    }
}

/// Transposed convolution of `xs` `[N, C_in, H, W]` with `weight`
/// `[C_in, C_out, k, k]` (PyTorch's layout), adding `bias` `[C_out]` when
/// given. Differentiable in all three.
///
/// Errors on non-square kernels, dilation or groups other than 1,
/// `output_padding >= stride`, mismatched channels and empty outputs.
///
/// # Shapes
/// - output: `[N, C_out, H_out, W_out]` with
///   `H_out = (H - 1)·stride - 2·padding + k + output_padding`.
///
/// ```
/// use anytime_ops::conv_transpose::{conv_transpose2d, ConvTranspose2dParams};
/// use candle_core::{DType, Device, Tensor};
/// # fn main() -> candle_core::Result<()> {
/// let x = Tensor::ones((1, 4, 7, 5), DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((4, 2, 4, 4), DType::F32, &Device::Cpu)?;
/// // SCAN's upsampling: 4x4, stride 2, padding 1 doubles the size.
/// let p = ConvTranspose2dParams { stride: 2, padding: 1, ..Default::default() };
/// assert_eq!(conv_transpose2d(&x, &w, None, p)?.dims(), &[1, 2, 14, 10]);
/// # Ok(()) }
/// ```
pub fn conv_transpose2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    p: ConvTranspose2dParams,
) -> Result<Tensor> {
    let g = geometry(xs.dims(), weight.dims(), p)?;
    if let Some(b) = bias
        && b.dims() != [g.c_in]
    {
        bail!("conv_transpose2d: expected a bias of shape [{}], got {:?}", g.c_in, b.dims())
    }
    let ys = if xs.device().is_cpu() && xs.dtype() == DType::F32 && !crate::stock_ops() {
        xs.contiguous()?.apply_op2(&weight.contiguous()?, ConvTFwd(p))?
    } else {
        conv_transpose2d_candle(xs, weight, p)?
    };
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
    }
}

/// Candle's stock transposed convolution (no bias).
fn conv_transpose2d_candle(xs: &Tensor, weight: &Tensor, p: ConvTranspose2dParams) -> Result<Tensor> {
    xs.conv_transpose2d(weight, p.padding, p.output_padding, p.stride, p.dilation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{Lcg, assert_close, fixture, get, grad_check, rand_tensor};
    use candle_core::{Device, Var};

    /// Direct (naive) transposed convolution, the definition: every input
    /// pixel scatters `x · w` into the full output, which is then cropped.
    fn naive(x: &Tensor, w: &Tensor, p: ConvTranspose2dParams) -> Result<Tensor> {
        let (n, c_in, h, wd) = x.dims4()?;
        let (_, c_out, k, _) = w.dims4()?;
        let (oh, ow) = (p.out_size(h, k).expect("size"), p.out_size(wd, k).expect("size"));
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let wv = w.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; n * c_out * oh * ow];
        for b in 0..n {
            for ci in 0..c_in {
                for iy in 0..h {
                    for ix in 0..wd {
                        let v = xv[((b * c_in + ci) * h + iy) * wd + ix];
                        for co in 0..c_out {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let oy = (iy * p.stride + ki) as isize - p.padding as isize;
                                    let ox = (ix * p.stride + kj) as isize - p.padding as isize;
                                    if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                        continue;
                                    }
                                    y[((b * c_out + co) * oh + oy as usize) * ow + ox as usize] +=
                                        v * wv[((ci * c_out + co) * k + ki) * k + kj];
                                }
                            }
                        }
                    }
                }
            }
        }
        Tensor::from_vec(y, (n, c_out, oh, ow), x.device())
    }

    #[test]
    fn matches_naive_and_finite_differences_on_random_geometries() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = Lcg(4242);
        for case in 0..30u64 {
            let k = 1 + rng.below(5);
            let stride = 1 + rng.below(3);
            let padding = rng.below(3);
            let output_padding = rng.below(stride);
            let p = ConvTranspose2dParams { stride, padding, output_padding, ..Default::default() };
            let (n, c_in, c_out) = (1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(4));
            let (h, w) = (1 + rng.below(6), 1 + rng.below(6));
            if p.out_size(h, k).is_none() || p.out_size(w, k).is_none() {
                continue;
            }
            let x = rand_tensor(&[n, c_in, h, w], 10 * case, &dev)?;
            let wt = rand_tensor(&[c_in, c_out, k, k], 10 * case + 1, &dev)?;
            let what = format!("n{n} {c_in}->{c_out} {h}x{w} k{k} {p:?}");
            let ours = conv_transpose2d(&x, &wt, None, p)?;
            assert_close(&what, &ours, &naive(&x, &wt, p)?, 1e-5)?;
            if case % 3 == 0 {
                grad_check(&x, |t| conv_transpose2d(t, &wt, None, p), 2e-2)?;
                grad_check(&wt, |t| conv_transpose2d(&x, t, None, p), 2e-2)?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_candle_stock_on_scan_geometry() -> Result<()> {
        // SCAN's 4x4 / 2, padding 1, with a bias, on a batch large enough
        // for several chunks; Candle's stock op has a correct backward here.
        let dev = Device::Cpu;
        let p = ConvTranspose2dParams { stride: 2, padding: 1, ..Default::default() };
        let x = Var::from_tensor(&rand_tensor(&[9, 6, 8, 7], 1, &dev)?)?;
        let w = Var::from_tensor(&rand_tensor(&[6, 5, 4, 4], 2, &dev)?)?;
        let b = Var::from_tensor(&rand_tensor(&[5], 3, &dev)?)?;
        let ours = conv_transpose2d(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), p)?;
        let stock =
            conv_transpose2d_candle(x.as_tensor(), w.as_tensor(), p)?.broadcast_add(&b.reshape((1, 5, 1, 1))?)?;
        assert_close("forward", &ours, &stock, 1e-4)?;
        let r = rand_tensor(ours.dims(), 4, &dev)?;
        let g1 = (ours * &r)?.sum_all()?.backward()?;
        let g2 = (stock * &r)?.sum_all()?.backward()?;
        for (name, v) in [("dx", &x), ("dw", &w), ("db", &b)] {
            let (Some(a), Some(b)) = (g1.get(v.as_tensor()), g2.get(v.as_tensor())) else {
                panic!("{name}: no gradient")
            };
            assert_close(name, a, b, 1e-4)?;
        }
        Ok(())
    }

    #[test]
    fn matches_pytorch() -> Result<()> {
        // F.conv_transpose2d on the geometries of scripts/fixtures/layers.py:
        // forward and the gradients of sum(y · r), within 1e-4 abs + 1e-4 rel.
        let f = fixture("ops.safetensors")?;
        let mut cases = 0;
        while let Some(params) = f.get(&format!("convt.{cases}.params")) {
            let key = |k: &str| get(&f, &format!("convt.{cases}.{k}"));
            let [stride, padding, output_padding, bias] = params.to_vec1::<i64>()?[..] else { panic!("params") };
            let p = ConvTranspose2dParams {
                stride: stride as usize,
                padding: padding as usize,
                output_padding: output_padding as usize,
                ..Default::default()
            };
            let x = Var::from_tensor(key("x"))?;
            let w = Var::from_tensor(key("weight"))?;
            let b = if bias == 1 { Some(Var::from_tensor(key("bias"))?) } else { None };
            let y = conv_transpose2d(x.as_tensor(), w.as_tensor(), b.as_ref().map(|b| b.as_tensor()), p)?;
            let what = format!("case {cases} {p:?}");
            assert_close(&format!("{what} y"), &y, key("y"), 1e-4)?;
            let grads = (y * key("r"))?.sum_all()?.backward()?;
            let mut named = vec![("x", &x), ("weight", &w)];
            if let Some(b) = &b {
                named.push(("bias", b));
            }
            for (name, v) in named {
                let Some(g) = grads.get(v.as_tensor()) else { panic!("{what}: no gradient for {name}") };
                assert_close(&format!("{what} grad {name}"), g, key(&format!("grad.{name}")), 1e-4)?;
            }
            cases += 1;
        }
        assert!(cases >= 9, "only {cases} cases in the fixture");
        Ok(())
    }

    #[test]
    fn unsupported_parameters_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
        let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev)?;
        let err = |p: ConvTranspose2dParams, w: &Tensor| conv_transpose2d(&x, w, None, p).unwrap_err().to_string();
        let d = ConvTranspose2dParams::default();
        assert!(err(ConvTranspose2dParams { dilation: 2, ..d }, &w).contains("dilation"));
        assert!(err(ConvTranspose2dParams { groups: 3, ..d }, &w).contains("groups"));
        assert!(err(ConvTranspose2dParams { stride: 2, output_padding: 2, ..d }, &w).contains("output_padding"));
        assert!(err(ConvTranspose2dParams { stride: 0, ..d }, &w).contains("stride"));
        let w2 = Tensor::zeros((3, 2, 3, 2), DType::F32, &dev)?;
        assert!(err(d, &w2).contains("square"));
        let w3 = Tensor::zeros((2, 2, 3, 3), DType::F32, &dev)?;
        assert!(err(d, &w3).contains("3 channels"));
        // 1x1 input, 1x1 kernel, padding 1: an empty output.
        let x1 = Tensor::zeros((1, 3, 1, 1), DType::F32, &dev)?;
        let w1 = Tensor::zeros((3, 2, 1, 1), DType::F32, &dev)?;
        let e = conv_transpose2d(&x1, &w1, None, ConvTranspose2dParams { padding: 1, ..d }).unwrap_err();
        assert!(e.to_string().contains("empty output"), "{e}");
        let b = Tensor::zeros(3, DType::F32, &dev)?;
        assert!(conv_transpose2d(&x, &w, Some(&b), d).unwrap_err().to_string().contains("bias"));
        Ok(())
    }
}
