//! 2-D pooling with kernel, stride and padding (PyTorch semantics,
//! `ceil_mode=False`), with correct gradients for odd sizes, padding and
//! overlapping windows — Candle's stock `max_pool2d` gradient is scaled by
//! `1 / (kh·kw)` (1/4 for 2×2) and its `avg_pool2d` gradient is wrong on odd
//! sizes — plus adaptive and global average pooling.

use crate::kernels::{self, pool::PoolGeom};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};

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
        Ok((
            CpuStorage::F32(kernels::pool::avg_backward(&self.g, dy, self.include_pad)),
            Shape::from(self.in_dims.clone()),
        ))
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

/// Whether the fused CPU kernels apply.
fn fused(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Pooling from Candle's stock ops, for other devices and dtypes: kernel ==
/// stride, no padding. The rows and columns no window reaches are cut off
/// first, so the stock gradients (which assume the kernel divides the size)
/// are right; max pooling is a reshape and two `max` reductions, since the
/// stock `max_pool2d` gradient is wrong.
fn stock(xs: &Tensor, g: &PoolGeom, max: bool, what: &str) -> Result<Tensor> {
    if (g.ph, g.pw) != (0, 0) || (g.kh, g.kw) != (g.sh, g.sw) {
        bail!(
            "{what}: padding {:?} or kernel {:?} != stride {:?} needs CPU f32 tensors, got {:?} on {:?}",
            (g.ph, g.pw),
            (g.kh, g.kw),
            (g.sh, g.sw),
            xs.dtype(),
            xs.device()
        )
    }
    let (n, c) = (xs.dim(0)?, xs.dim(1)?);
    let covered = xs.narrow(2, 0, g.oh * g.kh)?.narrow(3, 0, g.ow * g.kw)?;
    if max {
        // [N·C, oh, kh, ow, kw] → max over kw, then kh.
        covered.reshape((n * c, g.oh, g.kh, g.ow, g.kw))?.max(4)?.max(2)?.reshape((n, c, g.oh, g.ow))
    } else {
        covered.contiguous()?.avg_pool2d((g.kh, g.kw))
    }
}

/// Average pooling as `F.avg_pool2d(x, kernel, stride, padding,
/// ceil_mode=False, count_include_pad)`. Differentiable.
///
/// CPU f32 tensors take any geometry (fused kernels, parallel over the
/// `N·C` planes); other devices and dtypes use Candle's stock ops, which
/// only cover kernel == stride without padding.
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
    if fused(xs) {
        xs.contiguous()?.apply_op1(AvgPool { g, include_pad: count_include_pad })
    } else {
        stock(xs, &g, false, "avg_pool2d")
    }
}

/// Max pooling as `F.max_pool2d(x, kernel, stride, padding)` (padding is
/// -inf). Differentiable: each window's gradient goes to its first maximum
/// (on other devices and dtypes, to every tied maximum).
///
/// Devices, dtypes and geometries as [`avg_pool2d`].
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`.
pub fn max_pool2d(
    xs: &Tensor,
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    let g = geometry(xs.dims(), kernel, stride, padding, "max_pool2d")?;
    if fused(xs) { xs.contiguous()?.apply_op1(MaxPool { g }) } else { stock(xs, &g, true, "max_pool2d") }
}

/// Adaptive average pooling to `(oh, ow)`, as `F.adaptive_avg_pool2d`: output
/// cell i covers input rows `floor(i·H/oh) .. ceil((i+1)·H/oh)`. When the
/// output size divides the input's this is [`avg_pool2d`]; otherwise it is
/// built from differentiable slices and means.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, oh, ow]`.
pub fn adaptive_avg_pool2d(xs: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let &[_, _, h, w] = xs.dims() else {
        bail!("adaptive_avg_pool2d: expected an [N, C, H, W] input, got {:?}", xs.dims())
    };
    if oh == 0 || ow == 0 || h == 0 || w == 0 {
        bail!("adaptive_avg_pool2d: cannot pool {h}x{w} to {oh}x{ow}: sizes must be at least 1")
    }
    if h % oh == 0 && w % ow == 0 {
        let k = (h / oh, w / ow);
        return avg_pool2d(xs, k, k, (0, 0), true);
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
    if xs.rank() != 4 {
        bail!("global_avg_pool: expected an [N, C, H, W] input, got {:?}", xs.dims())
    }
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
        for &(k, s, p, inc) in &[
            ((2, 2), (2, 2), (0, 0), true),
            ((3, 3), (2, 2), (1, 1), true),
            ((3, 2), (1, 2), (1, 1), false),
            ((2, 3), (3, 1), (0, 1), true),
        ] {
            grad_check(&x, |t| avg_pool2d(t, k, s, p, inc), 1e-3)?;
            grad_check(&x, |t| max_pool2d(t, k, s, p), 1e-3)?;
        }
        grad_check(&x, |t| adaptive_avg_pool2d(t, (3, 2)), 1e-3)?;
        grad_check(&x, |t| adaptive_avg_pool2d(t, (7, 1)), 1e-3)?;
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
        assert_eq!(g_stock, 1.0, "Candle's is a quarter of that; if this fails, Candle changed its max-pool gradient");
        Ok(())
    }

    /// The gradient checker rejects a gradient that is off by a factor (here
    /// Candle's stock max-pool one, a quarter of the right one).
    #[test]
    #[should_panic(expected = "analytic")]
    fn grad_check_rejects_stock_max_pool_gradient() {
        let x = rand_tensor(&[1, 2, 4, 6], 4, &Device::Cpu).unwrap();
        grad_check(&x, |t| t.max_pool2d(2), 1e-3).unwrap();
    }

    #[test]
    fn stock_path_matches_fused_kernels() -> Result<()> {
        // f64 takes the stock-op path (as other devices do); odd sizes leave
        // rows and columns outside every window.
        let dev = Device::Cpu;
        let x = (Tensor::arange(0f32, 2.0 * 7.0 * 5.0, &dev)?.reshape((1, 2, 7, 5))? * 0.37)?.sin()?;
        let x32 = Var::from_tensor(&x)?;
        let x64 = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
        for max in [false, true] {
            let pool = |t: &Tensor| {
                if max { max_pool2d(t, (2, 3), (2, 3), (0, 0)) } else { avg_pool2d(t, (2, 3), (2, 3), (0, 0), true) }
            };
            let (y32, y64) = (pool(x32.as_tensor())?, pool(x64.as_tensor())?);
            assert_close("stock forward", &y64.to_dtype(DType::F32)?, &y32, 1e-6)?;
            let r = rand_tensor(y32.dims(), 5, &dev)?;
            let g32 = (y32 * &r)?.sum_all()?.backward()?;
            let g64 = (y64 * r.to_dtype(DType::F64)?)?.sum_all()?.backward()?;
            let (Some(g32), Some(g64)) = (g32.get(x32.as_tensor()), g64.get(x64.as_tensor())) else {
                panic!("no gradient")
            };
            assert_close("stock gradient", &g64.to_dtype(DType::F32)?, g32, 1e-6)?;
        }
        let err = max_pool2d(x64.as_tensor(), (3, 3), (2, 2), (1, 1)).unwrap_err().to_string();
        assert!(err.contains("needs CPU f32 tensors"), "{err}");
        Ok(())
    }

    #[test]
    fn adaptive_matches_torch_windows() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 5.0, &dev)?.reshape((1, 1, 1, 5))?;
        // torch: F.adaptive_avg_pool2d(torch.arange(5.).view(1,1,1,5), (1, 3)) -> [0.5, 2.0, 3.5]
        let y = adaptive_avg_pool2d(&x, (1, 3))?;
        assert_close("adaptive", &y, &Tensor::new(&[[[[0.5f32, 2.0, 3.5]]]], &dev)?, 1e-6)?;
        // Dividing sizes (the avg_pool2d path): 2x2 window means of 0..24 as 4x6.
        let x = Tensor::arange(0f32, 24.0, &dev)?.reshape((1, 1, 4, 6))?;
        let y = adaptive_avg_pool2d(&x, (2, 3))?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [3.5, 5.5, 7.5, 15.5, 17.5, 19.5]);
        assert!(adaptive_avg_pool2d(&x, (0, 1)).is_err());
        assert!(global_avg_pool(&x.flatten_all()?).unwrap_err().to_string().contains("[N, C, H, W]"));
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
