//! Convolution kernels: im2col + GEMM forward, GEMM + col2im input gradient,
//! GEMM weight gradient. NCHW, f32, square kernels, groups.

use super::{gemm, threads, with_scratch};
use rayon::prelude::*;

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub dil: usize,
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvGeom {
    fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of a group's column matrix.
    fn kcol(&self) -> usize {
        self.cig() * self.k * self.k
    }
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    fn hw(&self) -> usize {
        self.h * self.w
    }
    /// A 1x1, stride-1, unpadded conv needs no column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Valid output columns `[lo, hi)` for kernel column offset `off = kj·dil`.
    fn ox_range(&self, off: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
        let hi = if self.w + p > off { ((self.w + p - off - 1) / s + 1).min(self.ow) } else { 0 };
        (lo.min(hi), hi)
    }
}

/// Column matrix `[cig·k·k, oh·ow]` of one sample's group `x` `[cig, h, w]`.
fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32]) {
    let (k, s, d, ow, ohw, hw) = (g.k, g.stride, g.dil, g.ow, g.ohw(), g.hw());
    for ci in 0..g.cig() {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ki in 0..k {
            for kj in 0..k {
                let row = (ci * k + ki) * k + kj;
                let dst = &mut col[row * ohw..(row + 1) * ohw];
                let (lo, hi) = g.ox_range(kj * d);
                for oy in 0..g.oh {
                    let out = &mut dst[oy * ow..(oy + 1) * ow];
                    let iy = (oy * s + ki * d) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize || lo >= hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    let ix0 = lo * s + kj * d - g.pad;
                    if s == 1 {
                        out[lo..hi].copy_from_slice(&src[ix0..ix0 + hi - lo]);
                    } else {
                        for (o, ox) in out[lo..hi].iter_mut().zip(0..) {
                            *o = src[ix0 + ox * s];
                        }
                    }
                }
            }
        }
    }
}

/// Adds a column matrix back into one sample's group gradient `dx` `[cig, h, w]`.
fn col2im(g: &ConvGeom, col: &[f32], dx: &mut [f32]) {
    let (k, s, d, ow, ohw, hw) = (g.k, g.stride, g.dil, g.ow, g.ohw(), g.hw());
    for ci in 0..g.cig() {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ki in 0..k {
            for kj in 0..k {
                let row = (ci * k + ki) * k + kj;
                let src = &col[row * ohw..(row + 1) * ohw];
                let (lo, hi) = g.ox_range(kj * d);
                if lo >= hi {
                    continue;
                }
                for oy in 0..g.oh {
                    let iy = (oy * s + ki * d) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let row_in = &src[oy * ow..(oy + 1) * ow];
                    let ix0 = lo * s + kj * d - g.pad;
                    if s == 1 {
                        for (o, v) in dst[ix0..ix0 + hi - lo].iter_mut().zip(&row_in[lo..hi]) {
                            *o += v;
                        }
                    } else {
                        for (i, v) in row_in[lo..hi].iter().enumerate() {
                            dst[ix0 + i * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(sample, out_chunk)` for every sample, in parallel over samples
/// when there are enough of them (GEMMs then run single-threaded), else
/// sequentially with multi-threaded GEMMs.
fn per_sample(n: usize, out: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32], bool) + Sync) {
    if n >= threads() && threads() > 1 {
        out.par_chunks_mut(per).enumerate().for_each(|(i, o)| f(i, o, false));
    } else {
        out.chunks_mut(per).enumerate().for_each(|(i, o)| f(i, o, true));
    }
}

/// `y [n, c_out, oh, ow] = conv(x [n, c_in, h, w], w [c_out, cig, k, k])`.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    per_sample(g.n, &mut y, g.c_out * ohw, |i, yi, par| {
        let xi = &x[i * g.c_in * hw..(i + 1) * g.c_in * hw];
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            let xg = &xi[gi * cig * hw..(gi + 1) * cig * hw];
            let yg = &mut yi[gi * cog * ohw..(gi + 1) * cog * ohw];
            if g.pointwise() {
                gemm(cog, ohw, cig, yg, (ohw, 1), false, wg, (cig, 1), xg, (hw, 1), par);
            } else {
                with_scratch(kcol * ohw, |col| {
                    im2col(g, xg, col);
                    gemm(cog, ohw, kcol, yg, (ohw, 1), false, wg, (kcol, 1), col, (ohw, 1), par);
                });
            }
        }
    });
    y
}

/// Input gradient `dx [n, c_in, h, w]` from `dy [n, c_out, oh, ow]`.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    per_sample(g.n, &mut dx, g.c_in * hw, |i, dxi, par| {
        let dyi = &dy[i * g.c_out * ohw..(i + 1) * g.c_out * ohw];
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            let dyg = &dyi[gi * cog * ohw..(gi + 1) * cog * ohw];
            let dxg = &mut dxi[gi * cig * hw..(gi + 1) * cig * hw];
            if g.pointwise() {
                // dx (cig x hw) = wᵀ (cig x cog) · dy (cog x hw)
                gemm(cig, hw, cog, dxg, (hw, 1), false, wg, (1, cig), dyg, (ohw, 1), par);
            } else {
                with_scratch(kcol * ohw, |col| {
                    gemm(kcol, ohw, cog, col, (ohw, 1), false, wg, (1, kcol), dyg, (ohw, 1), par);
                    col2im(g, col, dxg);
                });
            }
        }
    });
    dx
}

/// Weight gradient `dw [c_out, cig, k, k]` from `x` and `dy`, summed over
/// the batch in a fixed order (deterministic for a given thread count).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let wlen = g.c_out * kcol;
    let chunks = threads().min(g.n).max(1);
    let per_chunk = g.n.div_ceil(chunks);
    let parallel_chunks = chunks > 1;
    let partial = |c: usize| -> Vec<f32> {
        let mut dw = vec![0f32; wlen];
        for i in c * per_chunk..((c + 1) * per_chunk).min(g.n) {
            let xi = &x[i * g.c_in * hw..(i + 1) * g.c_in * hw];
            let dyi = &dy[i * g.c_out * ohw..(i + 1) * g.c_out * ohw];
            for gi in 0..g.groups {
                let dwg = &mut dw[gi * cog * kcol..(gi + 1) * cog * kcol];
                let dyg = &dyi[gi * cog * ohw..(gi + 1) * cog * ohw];
                let xg = &xi[gi * cig * hw..(gi + 1) * cig * hw];
                if g.pointwise() {
                    // dw (cog x cig) += dy (cog x hw) · xᵀ (hw x cig)
                    gemm(cog, cig, ohw, dwg, (cig, 1), true, dyg, (ohw, 1), xg, (1, hw), !parallel_chunks);
                } else {
                    with_scratch(kcol * ohw, |col| {
                        im2col(g, xg, col);
                        gemm(cog, kcol, ohw, dwg, (kcol, 1), true, dyg, (ohw, 1), col, (1, ohw), !parallel_chunks);
                    });
                }
            }
        }
        dw
    };
    let parts: Vec<Vec<f32>> =
        if parallel_chunks { (0..chunks).into_par_iter().map(partial).collect() } else { vec![partial(0)] };
    let mut it = parts.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; wlen]);
    for p in it {
        for (a, b) in dw.iter_mut().zip(&p) {
            *a += b;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct (naive) convolution for reference.
    fn naive(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; g.n * g.c_out * g.ohw()];
        for n in 0..g.n {
            for co in 0..g.c_out {
                let gi = co / g.cog();
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = 0f32;
                        for ci in 0..g.cig() {
                            for ki in 0..g.k {
                                for kj in 0..g.k {
                                    let iy = (oy * g.stride + ki * g.dil) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kj * g.dil) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv =
                                        x[((n * g.c_in + gi * g.cig() + ci) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((co * g.cig() + ci) * g.k + ki) * g.k + kj];
                                    acc += xv * wv;
                                }
                            }
                        }
                        y[((n * g.c_out + co) * g.oh + oy) * g.ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_naive_on_awkward_geometry() {
        for &(k, stride, pad, dil, groups, h, w) in &[
            (3, 2, 1, 1, 1, 7, 9),
            (1, 1, 0, 1, 2, 5, 4),
            (3, 1, 2, 2, 1, 6, 5),
            (5, 3, 1, 1, 2, 11, 8),
            (1, 2, 0, 1, 1, 5, 5),
        ] {
            let (n, c_in, c_out) = (3, 4, 6);
            let oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let ow = (w + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let g = ConvGeom { n, c_in, h, w, c_out, k, stride, pad, dil, groups, oh, ow };
            let x: Vec<f32> = (0..n * c_in * h * w).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            let wt: Vec<f32> =
                (0..c_out * c_in / groups * k * k).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0).collect();
            let got = forward(&g, &x, &wt);
            let want = naive(&g, &x, &wt);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{g:?}: {a} vs {b}");
            }
        }
    }
}
