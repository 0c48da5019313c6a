//! Stride-1 convolution without a column matrix ("shifted GEMMs").
//!
//! The inputs of a chunk of samples are copied once into zero-padded planes
//! laid side by side, `xp [cig, s·P]` with `P = (h + 2p)·(w + 2p)`. On that
//! layout the input seen by kernel tap `(ki, kj)` for output position
//! `q = oy·wp + ox` is `xp[.., q + off]` with `off = (ki·wp + kj)·dil`: one
//! contiguous, shifted view per tap. The output is computed on the same wide
//! grid (`ox < wp`, the extra columns are discarded) as `k²` accumulated GEMMs
//! `y += w[.., .., tap] · xp[.., off..]`, so nothing is copied `k²` times as
//! im2col does; small feature maps, where im2col's short rows cost more than
//! the GEMM, gain most. The gradients are the same GEMMs transposed: the
//! input gradient accumulates into shifted views of a padded buffer, the
//! weight gradient reduces over the wide grid, whose extra columns carry zero
//! output gradient.

use super::conv::{ConvGeom, POINTWISE_DIRECT_HW, per_chunk};
use super::{gemm, threads, with_scratch};
use rayon::prelude::*;

/// Whether the shifted-GEMM kernels handle `g`: stride 1, except 1x1
/// convolutions on maps big enough for per-sample GEMMs without any copy
/// (those stay with [`super::conv`]). On a 1x1 convolution the padded planes
/// are plain copies, one per channel and sample.
pub(crate) fn applies(g: &ConvGeom) -> bool {
    g.stride == 1 && !(g.k == 1 && g.pad == 0 && g.h * g.w >= POINTWISE_DIRECT_HW)
}

/// The wide-grid layout of a chunk of `s` samples.
struct Wide {
    /// Padded plane width and size.
    wp: usize,
    plane: usize,
    /// Row stride of the `[channels, s·plane]` buffers.
    ld: usize,
    /// Columns each GEMM computes (up to the last valid output).
    cols: usize,
}

impl Wide {
    fn new(g: &ConvGeom, s: usize) -> Self {
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let plane = hp * wp;
        Wide { wp, plane, ld: s * plane, cols: (s - 1) * plane + (g.oh - 1) * wp + g.ow }
    }
    /// Offset of kernel tap `(ki, kj)` on the wide grid.
    fn off(&self, g: &ConvGeom, ki: usize, kj: usize) -> usize {
        (ki * self.wp + kj) * g.dil
    }
}

/// Copies group `gi` of samples `first..first + s` into zero-padded planes.
fn pad_input(g: &ConvGeom, x: &[f32], first: usize, gi: usize, l: &Wide, xp: &mut [f32]) {
    let (cig, hw, p, w) = (g.c_in / g.groups, g.h * g.w, g.pad, g.w);
    let s = l.ld / l.plane;
    for ci in 0..cig {
        for j in 0..s {
            let src = &x[((first + j) * g.c_in + gi * cig + ci) * hw..][..hw];
            let dst = &mut xp[ci * l.ld + j * l.plane..][..l.plane];
            if p == 0 {
                dst.copy_from_slice(src);
                continue;
            }
            dst[..p * l.wp].fill(0.0);
            dst[(p + g.h) * l.wp..].fill(0.0);
            for (y, row) in src.chunks_exact(w).enumerate() {
                let d = &mut dst[(y + p) * l.wp..][..l.wp];
                d[..p].fill(0.0);
                d[p..p + w].copy_from_slice(row);
                d[p + w..].fill(0.0);
            }
        }
    }
}

/// Copies the output gradients of group `gi` onto the wide grid, zero elsewhere.
fn wide_dy(g: &ConvGeom, dy: &[f32], first: usize, gi: usize, l: &Wide, dyw: &mut [f32]) {
    let (cog, ohw) = (g.c_out / g.groups, g.oh * g.ow);
    let s = l.ld / l.plane;
    for co in 0..cog {
        for j in 0..s {
            let src = &dy[((first + j) * g.c_out + gi * cog + co) * ohw..][..ohw];
            let dst = &mut dyw[co * l.ld + j * l.plane..][..l.plane];
            dst[g.oh * l.wp..].fill(0.0);
            for (oy, row) in src.chunks_exact(g.ow).enumerate() {
                let d = &mut dst[oy * l.wp..][..l.wp];
                d[..g.ow].copy_from_slice(row);
                d[g.ow..].fill(0.0);
            }
        }
    }
}

/// `y [n, c_out, oh, ow]` for a stride-1 convolution.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (cig, cog, ohw) = (g.c_in / g.groups, g.c_out / g.groups, g.oh * g.ow);
    let (k, kk, kcol) = (g.k, g.k * g.k, g.c_in / g.groups * g.k * g.k);
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    per_chunk(g, &mut y, g.c_out * ohw, |first, yc, par| {
        let s = yc.len() / (g.c_out * ohw);
        let l = Wide::new(g, s);
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.ld, cog * l.ld, |xp, yw| {
                pad_input(g, x, first, gi, &l, xp);
                for ki in 0..k {
                    for kj in 0..k {
                        let tap = ki * k + kj;
                        let off = l.off(g, ki, kj);
                        let rhs = &xp[off..];
                        gemm(cog, l.cols, cig, yw, (l.ld, 1), tap > 0, &wg[tap..], (kcol, kk), rhs, (l.ld, 1), par);
                    }
                }
                for j in 0..s {
                    for co in 0..cog {
                        let dst = &mut yc[((j * g.c_out + gi * cog + co) * ohw)..][..ohw];
                        let src = &yw[co * l.ld + j * l.plane..];
                        for (oy, row) in dst.chunks_exact_mut(g.ow).enumerate() {
                            row.copy_from_slice(&src[oy * l.wp..][..g.ow]);
                        }
                    }
                }
            });
        }
    });
    y
}

/// Input gradient `dx [n, c_in, h, w]` of a stride-1 convolution.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (cig, cog, hw) = (g.c_in / g.groups, g.c_out / g.groups, g.h * g.w);
    let (k, kk, kcol, p) = (g.k, g.k * g.k, g.c_in / g.groups * g.k * g.k, g.pad);
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    per_chunk(g, &mut dx, g.c_in * hw, |first, dxc, par| {
        let s = dxc.len() / (g.c_in * hw);
        let l = Wide::new(g, s);
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.ld, cog * l.ld, |dxp, dyw| {
                wide_dy(g, dy, first, gi, &l, dyw);
                dxp.fill(0.0);
                for ki in 0..k {
                    for kj in 0..k {
                        let tap = ki * k + kj;
                        let dst = &mut dxp[l.off(g, ki, kj)..];
                        // dxp[.., off..] (cig x cols) += w_tapᵀ (cig x cog) · dyw (cog x cols)
                        gemm(cig, l.cols, cog, dst, (l.ld, 1), true, &wg[tap..], (kk, kcol), dyw, (l.ld, 1), par);
                    }
                }
                for j in 0..s {
                    for ci in 0..cig {
                        let dst = &mut dxc[(j * g.c_in + gi * cig + ci) * hw..][..hw];
                        let src = &dxp[ci * l.ld + j * l.plane..];
                        for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
                            row.copy_from_slice(&src[(y + p) * l.wp + p..][..g.w]);
                        }
                    }
                }
            });
        }
    });
    dx
}

/// Weight gradient `dw [c_out, cig, k, k]` of a stride-1 convolution, summed
/// over the batch chunk by chunk in a fixed order.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
    let (k, kk, kcol) = (g.k, g.k * g.k, g.c_in / g.groups * g.k * g.k);
    let wlen = g.c_out * kcol;
    let chunk = g.chunk();
    let chunks = g.n.div_ceil(chunk);
    let parallel = chunks > 1 && threads() > 1;
    let partial = |c: usize| -> Vec<f32> {
        let mut dw = vec![0f32; wlen];
        let first = c * chunk;
        let l = Wide::new(g, chunk.min(g.n - first));
        for gi in 0..g.groups {
            let dwg = &mut dw[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.ld, cog * l.ld, |xp, dyw| {
                pad_input(g, x, first, gi, &l, xp);
                wide_dy(g, dy, first, gi, &l, dyw);
                for ki in 0..k {
                    for kj in 0..k {
                        let tap = ki * k + kj;
                        let rhs = &xp[l.off(g, ki, kj)..];
                        // dw_tap (cog x cig) = dyw (cog x cols) · xp_shiftedᵀ (cols x cig)
                        gemm(
                            cog,
                            cig,
                            l.cols,
                            &mut dwg[tap..],
                            (kcol, kk),
                            false,
                            dyw,
                            (l.ld, 1),
                            rhs,
                            (1, l.ld),
                            !parallel,
                        );
                    }
                }
            });
        }
        dw
    };
    let parts: Vec<Vec<f32>> =
        if parallel { (0..chunks).into_par_iter().map(partial).collect() } else { (0..chunks).map(partial).collect() };
    let mut it = parts.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; wlen]);
    for p in it {
        for (a, b) in dw.iter_mut().zip(&p) {
            *a += b;
        }
    }
    dw
}
