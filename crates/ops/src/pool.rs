//! 2-D pooling with kernel, stride and padding (PyTorch semantics,
//! `ceil_mode=False`), with correct gradients for odd sizes, padding and
//! overlapping windows — Candle's stock `max_pool2d` gradient is scaled by
//! 1/4 and its `avg_pool2d` gradient is wrong on odd sizes — plus adaptive
//! and global average pooling.

use crate::kernels::{self, pool::PoolGeom};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};

fn geometry(dims: &[usize], k: (usize, usize), s: (usize, usize), p: (usize, usize), what: &str) -> Result<PoolGeom> {
    let &[n, c, h, w] = dims else { bail!("{what}: expected an [N, C, H, W] input, got {dims:?}") };
    if k.0 == 0 || k.1 == 0 || s.0 == 0 || s.1 == 0 {
        bail!("{what}: kernel {k:?} and stride {s:?} must be at least 1")
    }
    if 2 * p.0 > k.0 || 2 * p.1 > k.1 {
        bail!("{what}: padding {p:?} must be at most half the kernel {k:?}")
    }
    if h + 2 * p.0 < k.0 || w + 2 * p.1 < k.1 {
        bail!("{what}: a {}x{} window (padding {p:?}) does not fit a {h}x{w} input", k.0, k.1)
    }
    let oh = (h + 2 * p.0 - k.0) / s.0 + 1;
    let ow = (w + 2 * p.1 - k.1) / s.1 + 1;
    Ok(PoolGeom { planes: n * c, h, w, kh: k.0, kw: k.1, sh: s.0, sw: s.1, ph: p.0, pw: p.1, oh, ow })
}

struct AvgPool {
    g: PoolGeom,
    include_pad: bool,
}

struct AvgPoolBwd {
    g: PoolGeom,
    include_pad: bool,
    in_dims: Vec<usize>,
}

struct MaxPool {
    g: PoolGeom,
}

struct MaxPoolBwd {
    g: PoolGeom,
}

fn out_shape(l: &Layout, g: &PoolGeom) -> Shape {
    let d = l.dims();
    Shape::from((d[0], d[1], g.oh, g.ow))
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "anytime-avg-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = kernels::f32_slice(s, l, "avg_pool2d input")?;
        Ok((CpuStorage::F32(kernels::pool::avg_forward(&self.g, x, self.include_pad)), out_shape(l, &self.g)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = AvgPoolBwd { g: self.g, include_pad: self.include_pad, in_dims: arg.dims().to_vec() };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for AvgPoolBwd {
    fn name(&self) -> &'static str {
        "anytime-avg-pool2d-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = kernels::f32_slice(s, l, "avg_pool2d output gradient")?;
        Ok((CpuStorage::F32(kernels::pool::avg_backward(&self.g, dy, self.include_pad)), Shape::from(self.in_dims.clone())))
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "anytime-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = kernels::f32_slice(s, l, "max_pool2d input")?;
        Ok((CpuStorage::F32(kernels::pool::max_forward(&self.g, x)), out_shape(l, &self.g)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolBwd { g: self.g })?))
    }
}

impl CustomOp2 for MaxPoolBwd {
    fn name(&self) -> &'static str {
        "anytime-max-pool2d-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = kernels::f32_slice(s1, l1, "max_pool2d input")?;
        let dy = kernels::f32_slice(s2, l2, "max_pool2d output gradient")?;
        Ok((CpuStorage::F32(kernels::pool::max_backward(&self.g, x, dy)), l1.shape().clone()))
    }
}

fn on_cpu_f32(xs: &Tensor, what: &str) -> Result<()> {
    if !(xs.device().is_cpu() && xs.dtype() == candle_core::DType::F32) {
        bail!("{what}: padded or overlapping pooling runs on CPU f32 tensors only, got {:?} on {:?}", xs.dtype(), xs.device())
    }
    Ok(())
}

/// Average pooling as `F.avg_pool2d(x, kernel, stride, padding,
/// ceil_mode=False, count_include_pad)`. Differentiable.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`.
pub fn avg_pool2d(
    xs: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
    count_include_pad: bool,
) -> Result<Tensor> {
    let g = geometry(xs.dims(), kernel, stride, padding, "avg_pool2d")?;
    if !xs.device().is_cpu() && padding == (0, 0) && kernel == stride {
        return xs.avg_pool2d_with_stride(kernel, stride);
    }
    on_cpu_f32(xs, "avg_pool2d")?;
    xs.contiguous()?.apply_op1(AvgPool { g, include_pad: count_include_pad })
}

/// Max pooling as `F.max_pool2d(x, kernel, stride, padding)` (padding is
/// -inf). Differentiable: each window's gradient goes to its first maximum.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`.
pub fn max_pool2d(xs: &Tensor, kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Result<Tensor> {
    let g = geometry(xs.dims(), kernel, stride, padding, "max_pool2d")?;
    on_cpu_f32(xs, "max_pool2d")?;
    xs.contiguous()?.apply_op1(MaxPool { g })
}

/// Adaptive average pooling to `(oh, ow)`, as `F.adaptive_avg_pool2d`: output
/// cell i covers input rows `floor(i·H/oh) .. ceil((i+1)·H/oh)`. Built from
/// differentiable slices and means.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, oh, ow]`.
pub fn adaptive_avg_pool2d(xs: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if oh == 0 || ow == 0 {
        bail!("adaptive_avg_pool2d: output size must be at least 1x1, got {oh}x{ow}")
    }
    let bounds = |i: usize, out: usize, len: usize| (i * len / out, ((i + 1) * len).div_ceil(out));
    let mut rows = Vec::with_capacity(oh);
    for i in 0..oh {
        let (y0, y1) = bounds(i, oh, h);
        let band = xs.narrow(2, y0, y1 - y0)?;
        let mut cells = Vec::with_capacity(ow);
        for j in 0..ow {
            let (x0, x1) = bounds(j, ow, w);
            cells.push(band.narrow(3, x0, x1 - x0)?.mean_keepdim(2)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// Global average pooling.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C]`.
pub fn global_avg_pool(xs: &Tensor) -> Result<Tensor> {
    let _ = xs.dims4()?;
    xs.mean((2, 3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, grad_check, rand_tensor};
    use candle_core::{Device, Var};

    #[test]
    fn forward_values_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // 1x1x3x3 input 1..9, 2x2 windows, stride 1, no padding.
        let x = Tensor::arange(1f32, 10., &dev)?.reshape((1, 1, 3, 3))?;
        let avg = avg_pool2d(&x, (2, 2), (1, 1), (0, 0), true)?;
        assert_eq!(avg.flatten_all()?.to_vec1::<f32>()?, [3.0, 4.0, 6.0, 7.0]);
        let max = max_pool2d(&x, (3, 3), (2, 2), (1, 1))?;
        assert_eq!(max.flatten_all()?.to_vec1::<f32>()?, [5.0, 6.0, 8.0, 9.0]);
        // Padding counted or not: corner window holds 1 real value of 4.
        let a = avg_pool2d(&x, (2, 2), (2, 2), (1, 1), true)?.flatten_all()?.to_vec1::<f32>()?;
        let b = avg_pool2d(&x, (2, 2), (2, 2), (1, 1), false)?.flatten_all()?.to_vec1::<f32>()?;
        // torch: F.avg_pool2d(x, 2, 2, 1) -> [[0.25, 1.25], [2.75, 7.0]]; count_include_pad=False -> [[1, 2.5], [5.5, 7]]
        assert_eq!(a, [0.25, 1.25, 2.75, 7.0]);
        assert_eq!(b, [1.0, 2.5, 5.5, 7.0]);
        Ok(())
    }

    #[test]
    fn gradients_pass_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        // Well-separated values so max windows have unique maxima.
        let x = (Tensor::arange(0f32, 2.0 * 7.0 * 5.0, &dev)?.reshape((1, 2, 7, 5))? * 0.37)?.sin()?;
        for &(k, s, p, inc) in &[((2, 2), (2, 2), (0, 0), true), ((3, 3), (2, 2), (1, 1), true), ((3, 2), (1, 2), (1, 1), false), ((2, 3), (3, 1), (0, 1), true)] {
            grad_check(&x, |t| avg_pool2d(t, k, s, p, inc), 1e-3)?;
            grad_check(&x, |t| max_pool2d(t, k, s, p), 1e-3)?;
        }
        grad_check(&x, |t| adaptive_avg_pool2d(t, (3, 2)), 1e-3)?;
        grad_check(&x, global_avg_pool, 1e-3)?;
        Ok(())
    }

    /// Regression: Candle 0.11's stock max-pool gradient is 1/4 of the right
    /// one; ours gives each window's gradient to its maximum.
    #[test]
    fn stock_max_pool_gradient_is_wrong_ours_is_right() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&rand_tensor(&[1, 1, 4, 4], 9, &dev)?)?;
        let ours = max_pool2d(x.as_tensor(), (2, 2), (2, 2), (0, 0))?.sum_all()?.backward()?;
        let stock = x.as_tensor().max_pool2d(2)?.sum_all()?.backward()?;
        let g_ours = ours.get(x.as_tensor()).expect("grad").sum_all()?.to_scalar::<f32>()?;
        let g_stock = stock.get(x.as_tensor()).expect("grad").sum_all()?.to_scalar::<f32>()?;
        assert_eq!(g_ours, 4.0, "one unit of gradient per window");
        assert_ne!(g_stock, 4.0, "if Candle fixed its max-pool gradient, this note can go");
        Ok(())
    }

    #[test]
    fn adaptive_matches_torch_windows() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 5.0, &dev)?.reshape((1, 1, 1, 5))?;
        // torch: F.adaptive_avg_pool2d(torch.arange(5.).view(1,1,1,5), (1, 3)) -> [0.5, 2.0, 3.5]
        let y = adaptive_avg_pool2d(&x, (1, 3))?;
        assert_close("adaptive", &y, &Tensor::new(&[[[[0.5f32, 2.0, 3.5]]]], &dev)?, 1e-6)?;
        Ok(())
    }

    #[test]
    fn bad_geometry_is_an_error() -> Result<()> {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        assert!(avg_pool2d(&x, (3, 3), (1, 1), (0, 0), true).is_err());
        assert!(max_pool2d(&x, (2, 2), (1, 1), (2, 2)).unwrap_err().to_string().contains("at most half"));
        assert!(max_pool2d(&x, (2, 2), (0, 1), (0, 0)).is_err());
        Ok(())
    }
}
