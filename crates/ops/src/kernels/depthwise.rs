//! Direct depthwise convolution (groups = C_in = C_out): every channel plane
//! is convolved with its own k×k filter, row by row, without a column matrix
//! (im2col would copy k² times the input to feed a GEMM with one row).
//!
//! Work is split by plane (forward, input gradient) or by channel (weight
//! gradient, summing samples in order), so results do not depend on the
//! thread count.

use super::conv::{ConvGeom, Epilogue};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether `g` is a depthwise convolution with channel multiplier 1.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.groups == g.c_in && g.c_out == g.c_in
}

/// Calls `f(ki, kj, oy, iy, lo, hi, ix0)` for every kernel tap and output row
/// whose input row `iy` is inside the image; output columns `[lo, hi)` read
/// input columns `ix0, ix0 + s, …`.
fn taps(g: &ConvGeom, mut f: impl FnMut(usize, usize, usize, usize, usize, usize, usize)) {
    for ki in 0..g.k {
        for kj in 0..g.k {
            let (lo, hi) = g.ox_range(kj * g.dil);
            if lo >= hi {
                continue;
            }
            let ix0 = lo * g.stride + kj * g.dil - g.pad;
            for oy in 0..g.oh {
                let iy = (oy * g.stride + ki * g.dil) as isize - g.pad as isize;
                if iy >= 0 && (iy as usize) < g.h {
                    f(ki, kj, oy, iy as usize, lo, hi, ix0);
                }
            }
        }
    }
}

/// Whether the padded-plane kernels handle `g`: stride 1, no dilation, and
/// padding within the kernel's reach (`p < k`), so that the input gradient
/// is the same kind of convolution (padding `k − 1 − p`).
fn padded(g: &ConvGeom) -> bool {
    PADDED.load(Ordering::Relaxed) && g.stride == 1 && g.dil == 1 && g.pad < g.k
}

static PADDED: AtomicBool = AtomicBool::new(true);

/// Turns the padded-plane kernels off (`false`: the row-by-row ones run for
/// every geometry) or back on; for benchmarks and tests.
pub(crate) fn set_padded(on: bool) {
    PADDED.store(on, Ordering::Relaxed);
}

/// One plane `src [h, w]` zero-padded by `p` into `pb` (rows `wq = w + 2p`
/// wide, `h + 2p` of them, then `k` zeros of slack for the last taps'
/// reads past the grid).
#[inline(always)]
fn pad_plane(src: &[f32], (h, w, p): (usize, usize, usize), pb: &mut [f32]) {
    let wq = w + 2 * p;
    // Only the border is zeroed; the rows of the plane are written over.
    pb[..p * wq + p].fill(0.0);
    for (y, row) in src.chunks_exact(w).enumerate().take(h) {
        let at = (y + p) * wq + p;
        super::copy_short(&mut pb[at..at + w], row);
        let next = if y + 1 < h { at + wq } else { pb.len() };
        pb[at + w..next].fill(0.0);
    }
}

/// `acc[q] = Σ_t weight(t) · pb[q + off_t]` for `q < acc.len()`, the taps in
/// row-major order, `off_t = ki·wq + kj`: every tap one long contiguous
/// multiply-add over the padded plane (vectorised), instead of one short one
/// per output row.
#[inline(always)]
fn taps_wide(weight: impl Fn(usize) -> f32, k: usize, wq: usize, pb: &[f32], acc: &mut [f32]) {
    // Blocks of SPAN outputs summed over every tap in registers, stored
    // once; the sum order per output is the taps' order either way.
    const SPAN: usize = 64;
    let n = acc.len();
    let mut blocks = acc.chunks_exact_mut(SPAN);
    for (b, out) in (&mut blocks).enumerate() {
        let q = b * SPAN;
        let mut a = [0f32; SPAN];
        for t in 0..k * k {
            let wv = weight(t);
            if let Ok(src) = <&[f32; SPAN]>::try_from(&pb[(t / k) * wq + t % k + q..][..SPAN]) {
                for l in 0..SPAN {
                    a[l] += wv * src[l];
                }
            }
        }
        out.copy_from_slice(&a);
    }
    let rest = blocks.into_remainder();
    let q = n - rest.len();
    rest.fill(0.0);
    for t in 0..k * k {
        let wv = weight(t);
        for (a, &v) in rest.iter_mut().zip(&pb[(t / k) * wq + t % k + q..]) {
            *a += wv * v;
        }
    }
}

/// The forward pass of one plane on the padded layout: `out [oh, ow]` of
/// `src [h, w]` with `filt [k, k]`, passed through `ep` for channel `c`.
#[inline(always)]
fn forward_plane(g: &ConvGeom, src: &[f32], filt: &[f32], out: &mut [f32], ep: Epilogue, c: usize) {
    let wq = g.w + 2 * g.pad;
    let cols = g.oh * wq;
    super::with_scratch((g.h + 2 * g.pad) * wq + g.k, cols, |pb, acc| {
        pad_plane(src, (g.h, g.w, g.pad), pb);
        taps_wide(|t| filt[t], g.k, wq, pb, acc);
        for (row, wide) in out.chunks_exact_mut(g.ow).zip(acc.chunks(wq)) {
            ep.copy(c, row, &wide[..g.ow]);
        }
    });
}

/// The input gradient of one plane on the padded layout: a forward pass of
/// `grad [oh, ow]` with the filter mirrored and padding `k − 1 − p`.
#[inline(always)]
fn backward_input_plane(g: &ConvGeom, grad: &[f32], filt: &[f32], out: &mut [f32]) {
    let q = g.k - 1 - g.pad;
    let wq = g.ow + 2 * q;
    let kk = g.k * g.k;
    super::with_scratch((g.oh + 2 * q) * wq + g.k, g.h * wq, |pb, acc| {
        pad_plane(grad, (g.oh, g.ow, q), pb);
        taps_wide(|t| filt[kk - 1 - t], g.k, wq, pb, acc);
        for (row, wide) in out.chunks_exact_mut(g.w).zip(acc.chunks(wq)) {
            super::copy_short(row, &wide[..g.w]);
        }
    });
}

/// `Σ a[i]·b[i]` in `L` independent lanes (so it vectorises; more lanes,
/// more partial sums in flight), reduced in a fixed order.
#[inline(always)]
fn dot<const L: usize>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..L {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// The weight gradient of one plane on the padded layout, added to `out
/// [k, k]`: the output gradient laid on the wide grid (zeros in the extra
/// columns) dotted with each tap's shifted view of the padded input.
#[inline(always)]
fn backward_weight_plane(g: &ConvGeom, src: &[f32], grad: &[f32], out: &mut [f32]) {
    let wq = g.w + 2 * g.pad;
    let cols = g.oh * wq;
    super::with_scratch((g.h + 2 * g.pad) * wq + g.k, cols, |pb, gw| {
        pad_plane(src, (g.h, g.w, g.pad), pb);
        for (wide, row) in gw.chunks_mut(wq).zip(grad.chunks_exact(g.ow)) {
            super::copy_short(&mut wide[..g.ow], row);
            wide[g.ow..].fill(0.0);
        }
        for ki in 0..g.k {
            for kj in 0..g.k {
                out[ki * g.k + kj] += dot::<64>(gw, &pb[ki * wq + kj..][..cols]);
            }
        }
    });
}

/// Which instruction set the padded-plane kernels are compiled for (the
/// same operations in the same order on every one, so the same results).
#[derive(Clone, Copy)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if super::direct::use_avx512() {
            return Isa::Avx512;
        }
        if super::direct::available() {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

/// Instantiates a plane function for each instruction set and dispatches on
/// [`isa`].
macro_rules! per_isa {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            match isa {
                Isa::Generic => $body($($arg),*),
                // SAFETY: `isa` reports these features only where the CPU has them.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}

per_isa!(forward_plane_isa, forward_plane, (g: &ConvGeom, src: &[f32], filt: &[f32], out: &mut [f32], ep: Epilogue, c: usize));
per_isa!(backward_input_plane_isa, backward_input_plane, (g: &ConvGeom, grad: &[f32], filt: &[f32], out: &mut [f32]));
per_isa!(backward_weight_plane_isa, backward_weight_plane, (g: &ConvGeom, src: &[f32], grad: &[f32], out: &mut [f32]));

/// `y [n, c, oh, ow]` of `x [n, c, h, w]` and `w [c, 1, k, k]`, each plane
/// passed through `ep` once it is summed.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (hw, ohw, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.stride);
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    if padded(g) {
        let isa = isa();
        y.par_chunks_mut(ohw).enumerate().for_each(|(plane, out)| {
            let c = plane % g.c_in;
            forward_plane_isa(isa, g, &x[plane * hw..(plane + 1) * hw], &w[c * kk..(c + 1) * kk], out, ep, c);
        });
        return y;
    }
    y.par_chunks_mut(ohw).enumerate().for_each(|(plane, out)| {
        let c = plane % g.c_in;
        let src = &x[plane * hw..(plane + 1) * hw];
        let filt = &w[c * kk..(c + 1) * kk];
        taps(g, |ki, kj, oy, iy, lo, hi, ix0| {
            let wv = filt[ki * g.k + kj];
            let row = &src[iy * g.w..(iy + 1) * g.w];
            let dst = &mut out[oy * g.ow + lo..oy * g.ow + hi];
            if s == 1 {
                for (o, v) in dst.iter_mut().zip(&row[ix0..ix0 + (hi - lo)]) {
                    *o += wv * v;
                }
            } else {
                for (i, o) in dst.iter_mut().enumerate() {
                    *o += wv * row[ix0 + i * s];
                }
            }
        });
        ep.apply(c, out);
    });
    y
}

/// `dx [n, c, h, w]` from `dy [n, c, oh, ow]` and `w [c, 1, k, k]`.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (hw, ohw, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.stride);
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    if padded(g) {
        let isa = isa();
        dx.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
            let c = plane % g.c_in;
            backward_input_plane_isa(isa, g, &dy[plane * ohw..(plane + 1) * ohw], &w[c * kk..(c + 1) * kk], out);
        });
        return dx;
    }
    dx.par_chunks_mut(hw).enumerate().for_each(|(plane, out)| {
        let c = plane % g.c_in;
        let grad = &dy[plane * ohw..(plane + 1) * ohw];
        let filt = &w[c * kk..(c + 1) * kk];
        taps(g, |ki, kj, oy, iy, lo, hi, ix0| {
            let wv = filt[ki * g.k + kj];
            let src = &grad[oy * g.ow + lo..oy * g.ow + hi];
            let row = &mut out[iy * g.w..(iy + 1) * g.w];
            if s == 1 {
                for (o, v) in row[ix0..ix0 + (hi - lo)].iter_mut().zip(src) {
                    *o += wv * v;
                }
            } else {
                for (i, v) in src.iter().enumerate() {
                    row[ix0 + i * s] += wv * v;
                }
            }
        });
    });
    dx
}

/// `dw [c, 1, k, k]` from `x [n, c, h, w]` and `dy [n, c, oh, ow]`.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (hw, ohw, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.stride);
    let mut dw = vec![0f32; g.c_out * kk];
    if padded(g) {
        let isa = isa();
        dw.par_chunks_mut(kk).enumerate().for_each(|(c, out)| {
            for n in 0..g.n {
                let plane = n * g.c_in + c;
                backward_weight_plane_isa(
                    isa,
                    g,
                    &x[plane * hw..(plane + 1) * hw],
                    &dy[plane * ohw..(plane + 1) * ohw],
                    out,
                );
            }
        });
        return dw;
    }
    dw.par_chunks_mut(kk).enumerate().for_each(|(c, out)| {
        let mut strided = Vec::new();
        for n in 0..g.n {
            let plane = n * g.c_in + c;
            let src = &x[plane * hw..(plane + 1) * hw];
            let grad = &dy[plane * ohw..(plane + 1) * ohw];
            taps(g, |ki, kj, oy, iy, lo, hi, ix0| {
                let row = &src[iy * g.w..(iy + 1) * g.w];
                let gr = &grad[oy * g.ow + lo..oy * g.ow + hi];
                out[ki * g.k + kj] += if s == 1 {
                    dot::<8>(gr, &row[ix0..ix0 + (hi - lo)])
                } else {
                    strided.clear();
                    strided.extend((0..hi - lo).map(|i| row[ix0 + i * s]));
                    dot::<8>(gr, &strided)
                };
            });
        }
    });
    dw
}
