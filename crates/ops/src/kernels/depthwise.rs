//! Direct depthwise convolution (groups = C_in = C_out): every channel plane
//! is convolved with its own k×k filter, row by row, without a column matrix
//! (im2col would copy k² times the input to feed a GEMM with one row).
//!
//! Work is split by plane (forward, input gradient) or by channel (weight
//! gradient, summing samples in order), so results do not depend on the
//! thread count.

use super::conv::{ConvGeom, Epilogue};
use rayon::prelude::*;

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

/// `y [n, c, oh, ow]` of `x [n, c, h, w]` and `w [c, 1, k, k]`, each plane
/// passed through `ep` once it is summed.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (hw, ohw, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.stride);
    let mut y = vec![0f32; g.n * g.c_out * ohw];
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

/// `Σ a[i]·b[i]` in eight independent lanes (so it vectorises), reduced in a
/// fixed order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// `dw [c, 1, k, k]` from `x [n, c, h, w]` and `dy [n, c, oh, ow]`.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (hw, ohw, kk, s) = (g.h * g.w, g.oh * g.ow, g.k * g.k, g.stride);
    let mut dw = vec![0f32; g.c_out * kk];
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
                    dot(gr, &row[ix0..ix0 + (hi - lo)])
                } else {
                    strided.clear();
                    strided.extend((0..hi - lo).map(|i| row[ix0 + i * s]));
                    dot(gr, &strided)
                };
            });
        }
    });
    dw
}
