//! Differentiable bilinear and bicubic resizing, exactly as PyTorch's
//! `F.interpolate(x, size=(oh, ow), mode=..., align_corners=...)` (no
//! antialiasing), for up- and down-sampling.
//!
//! Each axis is a linear map, so the resize is two matrix products
//! `A_h · X · A_wᵀ` with interpolation matrices built on the input's device;
//! Candle's autograd differentiates them (its `upsample_bilinear2d` has no
//! backward). An axis whose size does not change is skipped, so resizing to
//! the input's own size returns the input exactly.

use candle_core::{Result, Tensor, bail};

/// The 1-D interpolation kernel of a resize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Two taps, linear weights.
    Linear,
    /// Four taps, Keys cubic convolution with `a = -0.75` (PyTorch's choice).
    Cubic,
}

/// PyTorch's cubic-convolution coefficient.
const CUBIC_A: f64 = -0.75;

/// Cubic convolution weight for a tap at distance `x` in `[0, 1]`.
fn cubic_near(x: f64) -> f64 {
    ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
}

/// Cubic convolution weight for a tap at distance `x` in `[1, 2]`.
fn cubic_far(x: f64) -> f64 {
    ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// Source coordinate of output position `dst` (PyTorch's
/// `area_pixel_compute_source_index` with the scale computed from sizes).
fn source_coord(dst: usize, in_len: usize, out_len: usize, align_corners: bool, kernel: Kernel) -> f64 {
    let dst = dst as f64;
    if align_corners {
        if out_len > 1 { dst * (in_len - 1) as f64 / (out_len - 1) as f64 } else { 0.0 }
    } else {
        let src = (dst + 0.5) * in_len as f64 / out_len as f64 - 0.5;
        // Linear clamps at 0; cubic keeps negative coordinates (its taps are
        // clamped instead).
        if kernel == Kernel::Linear { src.max(0.0) } else { src }
    }
}

/// The `[out_len, in_len]` interpolation matrix of one axis (row-major):
/// row `i` holds the weights of output `i` over the inputs. Taps past the
/// border are clamped onto it, as PyTorch reads the input.
fn interp_matrix(in_len: usize, out_len: usize, align_corners: bool, kernel: Kernel) -> Vec<f32> {
    let last = in_len as isize - 1;
    let mut m = vec![0f64; out_len * in_len];
    for (i, row) in m.chunks_exact_mut(in_len).enumerate() {
        let src = source_coord(i, in_len, out_len, align_corners, kernel);
        // PyTorch's `guard_index_and_lambda`.
        let base = (src.floor() as isize).min(last);
        let t = (src - base as f64).clamp(0.0, 1.0);
        let mut add = |tap: isize, w: f64| row[tap.clamp(0, last) as usize] += w;
        match kernel {
            Kernel::Linear => {
                add(base, 1.0 - t);
                add(base + 1, t);
            }
            Kernel::Cubic => {
                add(base - 1, cubic_far(t + 1.0));
                add(base, cubic_near(t));
                add(base + 1, cubic_near(1.0 - t));
                add(base + 2, cubic_far(2.0 - t));
            }
        }
    }
    m.into_iter().map(|w| w as f32).collect()
}

/// Shared body of [`bilinear`] and [`bicubic`].
fn resize(xs: &Tensor, (oh, ow): (usize, usize), align_corners: bool, kernel: Kernel, what: &str) -> Result<Tensor> {
    let &[n, c, h, w] = xs.dims() else { bail!("{what}: expected an [N, C, H, W] input, got {:?}", xs.dims()) };
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        bail!("{what}: cannot resize {h}x{w} to {oh}x{ow}: sizes must be at least 1")
    }
    if oh.checked_mul(h).is_none() || ow.checked_mul(w).is_none() {
        bail!("{what}: cannot resize {h}x{w} to {oh}x{ow}: its interpolation matrices would not fit in memory")
    }
    if !xs.dtype().is_float() {
        bail!("{what}: expected a floating-point input, got {:?}", xs.dtype())
    }
    let matrix = |in_len: usize, out_len: usize| -> Result<Tensor> {
        let m = interp_matrix(in_len, out_len, align_corners, kernel);
        Tensor::from_vec(m, (out_len, in_len), xs.device())?.to_dtype(xs.dtype())
    };
    let mut ys = xs.clone();
    if ow != w {
        // [N·C·H, W] · A_wᵀ [W, ow]
        let a_wt = matrix(w, ow)?.t()?;
        ys = ys.reshape((n * c * h, w))?.matmul(&a_wt)?.reshape((n, c, h, ow))?;
    }
    if oh != h {
        // A_h [oh, H] · [N·C, H, ow], the matrix broadcast over the planes.
        let a_h = matrix(h, oh)?;
        ys = a_h.broadcast_matmul(&ys.reshape((n * c, h, ow))?)?.reshape((n, c, oh, ow))?;
    }
    Ok(ys)
}

/// Bilinear resize to `(oh, ow)`, as `F.interpolate(xs, size=(oh, ow),
/// mode='bilinear', align_corners=align_corners)`. Differentiable w.r.t. `xs`.
///
/// With `align_corners = false` output `i` samples the input at
/// `max((i + 0.5) · in / out - 0.5, 0)`; with `true` at `i · (in - 1) / (out - 1)`
/// (0 when `out == 1`).
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, oh, ow]`.
///
/// # Errors
/// When `xs` is not a rank-4 float tensor or a size is 0.
pub fn bilinear(xs: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    resize(xs, size, align_corners, Kernel::Linear, "bilinear resize")
}

/// Bicubic resize to `(oh, ow)`, as `F.interpolate(xs, size=(oh, ow),
/// mode='bicubic', align_corners=align_corners)`: cubic convolution with
/// `a = -0.75`, taps past the border clamped onto it. Differentiable w.r.t.
/// `xs`. Like PyTorch's, the output may overshoot the input's range.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, oh, ow]`.
///
/// # Errors
/// When `xs` is not a rank-4 float tensor or a size is 0.
pub fn bicubic(xs: &Tensor, size: (usize, usize), align_corners: bool) -> Result<Tensor> {
    resize(xs, size, align_corners, Kernel::Cubic, "bicubic resize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{assert_close, grad_check, rand_tensor};
    use candle_core::Device;

    /// `((i · mult) mod modulus) - offset` for i in 0..len: small exact
    /// integers, reproducible in PyTorch.
    fn pattern(dims: (usize, usize, usize, usize), mult: usize, modulus: usize, offset: f32) -> Result<Tensor> {
        let len = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f32> = (0..len).map(|i| ((i * mult) % modulus) as f32 - offset).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)
    }

    fn expect(dims: (usize, usize, usize, usize), v: &[f32]) -> Result<Tensor> {
        Tensor::from_slice(v, dims, &Device::Cpu)
    }

    // x = torch.tensor([float((i*7) % 11 - 5) for i in range(20)]).view(1,1,4,5)
    // F.interpolate(x, size=(3,7), mode=MODE, align_corners=AC).flatten()
    // (height down-sampled 4 -> 3, width up-sampled 5 -> 7)
    const MIXED: [(bool, bool, [f32; 21]); 4] = [
        (
            false,
            false,
            [
                -4.666667, -0.666667, 1.190476, -1.666667, 2.02381, 2.571429, 1.333333, -2.0, -1.142857, -0.071428,
                1.0, -1.857143, 0.0, 4.0, 0.666667, -1.619047, -1.333332, 3.666667, 0.809524, -1.261905, -2.500001,
            ],
        ),
        (
            false,
            true,
            [
                -5.0, -0.333333, 0.666667, -2.0, 2.666667, 3.666666, 1.0, -2.0, -1.0, 0.0, 1.0, -1.666667, -0.666666,
                4.0, 1.0, -1.666667, -0.666666, 4.0, 1.333333, -1.333334, -4.0,
            ],
        ),
        (
            true,
            false,
            [
                -5.313743, -0.135793, 1.886608, -1.747686, 2.324653, 3.22609, 1.061717, -2.118077, -1.287171, 0.279792,
                1.0, -3.628964, -0.754648, 5.744628, 1.077587, -2.438548, -1.829227, 3.747685, 1.382269, -1.688661,
                -2.86421,
            ],
        ),
        (
            true,
            true,
            [
                -5.0, 0.24074, 1.129628, -2.0, 3.018519, 4.518517, 1.0, -2.0, -1.138889, 0.418404, 1.0, -3.37095,
                -1.737268, 5.03125, 1.0, -2.518518, -1.018518, 4.0, 2.092592, -1.703704, -4.0,
            ],
        ),
    ];

    // x = torch.tensor([float((i*5) % 13 - 6) for i in range(42)]).view(1,1,6,7)
    // F.interpolate(x, size=(4,3), mode=MODE, align_corners=AC).flatten()
    const DOWN: [(bool, bool, [f32; 12]); 4] = [
        (
            false,
            false,
            [
                -2.583333, -1.75, 2.333336, 1.166667, 2.0, -0.416667, -1.583333, -0.75, -3.166667, 2.166667, 3.0,
                0.583333,
            ],
        ),
        (false, true, [-6.0, -4.0, -2.0, 0.333333, 2.333333, 0.0, -2.000001, -1e-06, -2.333333, 0.0, 2.0, 4.0]),
        (
            true,
            false,
            [
                -3.331958, -1.820312, 3.178316, 2.453197, 2.644531, -0.727287, -2.906177, -1.242188, -4.300854,
                2.878978, 3.222656, 1.331959,
            ],
        ),
        (true, true, [-6.0, -4.0, -2.0, 1.203706, 3.203705, 0.388889, -2.38889, -0.388889, -3.203702, 0.0, 2.0, 4.0]),
    ];

    fn run(cubic: bool, xs: &Tensor, size: (usize, usize), ac: bool) -> Result<Tensor> {
        if cubic { bicubic(xs, size, ac) } else { bilinear(xs, size, ac) }
    }

    #[test]
    fn matches_torch_up_and_down() -> Result<()> {
        let x = pattern((1, 1, 4, 5), 7, 11, 5.0)?;
        for (cubic, ac, want) in MIXED {
            let y = run(cubic, &x, (3, 7), ac)?;
            assert_close(&format!("mixed cubic={cubic} ac={ac}"), &y, &expect((1, 1, 3, 7), &want)?, 2e-5)?;
        }
        let x = pattern((1, 1, 6, 7), 5, 13, 6.0)?;
        for (cubic, ac, want) in DOWN {
            let y = run(cubic, &x, (4, 3), ac)?;
            assert_close(&format!("down cubic={cubic} ac={ac}"), &y, &expect((1, 1, 4, 3), &want)?, 2e-5)?;
            // torch: F.interpolate(x, size=(1,1), mode=MODE, align_corners=True) -> [[[[-6.]]]]
            let y = run(cubic, &x, (1, 1), true)?;
            assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [-6.0], "1x1 cubic={cubic}");
        }
        Ok(())
    }

    #[test]
    fn hand_computed_bilinear_doubling() -> Result<()> {
        // 1-D [0, 4] doubled without corner alignment samples at
        // -0.25 (clamped to 0), 0.25, 0.75 and 1.25 (clamped tap): 0, 1, 3, 4.
        let x = Tensor::new(&[[[[0f32, 4.0]]]], &Device::Cpu)?;
        let y = bilinear(&x, (1, 4), false)?;
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [0.0, 1.0, 3.0, 4.0]);
        Ok(())
    }

    #[test]
    fn same_size_is_exact_identity_and_rows_sum_to_one() -> Result<()> {
        let x = rand_tensor(&[2, 3, 5, 4], 3, &Device::Cpu)?;
        for cubic in [false, true] {
            for ac in [false, true] {
                let y = run(cubic, &x, (5, 4), ac)?;
                assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, x.flatten_all()?.to_vec1::<f32>()?);
                // A constant image stays constant (each row of weights sums to 1).
                let ones = Tensor::ones((1, 1, 5, 4), candle_core::DType::F32, &Device::Cpu)?;
                let y = run(cubic, &ones, (7, 2), ac)?;
                assert_close(
                    "constant",
                    &y,
                    &Tensor::ones((1, 1, 7, 2), candle_core::DType::F32, &Device::Cpu)?,
                    1e-6,
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_pass_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = rand_tensor(&[2, 1, 5, 3], 11, &dev)?;
        let b1 = rand_tensor(&[1, 2, 3, 4], 12, &dev)?;
        for cubic in [false, true] {
            for ac in [false, true] {
                // Up in both axes, down in both, mixed, and batch 1.
                for (t, size) in [(&x, (8, 7)), (&x, (2, 2)), (&x, (5, 1)), (&b1, (1, 6))] {
                    grad_check(t, |t| run(cubic, t, size, ac), 1e-3)?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() -> Result<()> {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu)?;
        assert!(bilinear(&x, (0, 3), false).unwrap_err().to_string().contains("at least 1"));
        assert!(bicubic(&x, (usize::MAX, 3), false).unwrap_err().to_string().contains("not fit"));
        assert!(bicubic(&x.flatten_all()?, (2, 2), false).unwrap_err().to_string().contains("[N, C, H, W]"));
        let ints = Tensor::zeros((1, 1, 2, 2), candle_core::DType::U32, &Device::Cpu)?;
        assert!(bilinear(&ints, (3, 3), true).unwrap_err().to_string().contains("floating-point"));
        Ok(())
    }
}
