//! Convolution without a column matrix ("shifted GEMMs").
//!
//! Stride 1 first. The inputs of a chunk of samples are copied once into
//! zero-padded planes laid side by side, `xp [cig, s·P]` with
//! `P = (h + 2p)·(w + 2p)`. On that
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
//!
//! Stride `st > 1` reduces to stride 1: the padded input is split into `st²`
//! phase planes (pixels `(st·u + a, st·v + b)` for phase `(a, b)`); tap
//! `(ki, kj)` reads phase `(ki·dil mod st, kj·dil mod st)` shifted by
//! `(ki·dil div st, kj·dil div st)`, so the same GEMMs run on the phase
//! planes, and each input pixel is still copied once.

use super::conv::{ConvGeom, POINTWISE_DIRECT_HW, per_chunk, sum_chunk_partials};
use super::{gemm, with_scratch};

/// Whether the shifted-GEMM kernels handle `g`: every geometry except 1x1,
/// stride-1 convolutions on maps big enough for per-sample GEMMs without any
/// copy (those stay with [`super::conv`]).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    !(g.k == 1 && g.stride == 1 && g.pad == 0 && g.h * g.w >= POINTWISE_DIRECT_HW)
}

/// The wide-grid layout of a chunk of samples. With stride `st` the padded
/// input is split into `st²` phase planes (`phase (a, b)` holds padded pixels
/// `(st·u + a, st·v + b)`), on which every tap is a stride-1 shift.
struct Wide {
    st: usize,
    /// Phase plane width and size.
    wq: usize,
    plane: usize,
    /// Samples in the chunk.
    samples: usize,
    /// Length of one channel-phase row: `samples · plane`.
    ld: usize,
    /// Columns each GEMM computes (up to the last valid output).
    cols: usize,
    /// Which phases some tap reads.
    used: Vec<bool>,
}

impl Wide {
    fn new(g: &ConvGeom, samples: usize) -> Self {
        let st = g.stride;
        let (hq, wq) = ((g.h + 2 * g.pad).div_ceil(st), (g.w + 2 * g.pad).div_ceil(st));
        let plane = hq * wq;
        let mut used = vec![false; st * st];
        for ki in 0..g.k {
            for kj in 0..g.k {
                used[(ki * g.dil % st) * st + kj * g.dil % st] = true;
            }
        }
        Wide { st, wq, plane, samples, ld: samples * plane, cols: (samples - 1) * plane + (g.oh - 1) * wq + g.ow, used }
    }
    fn phases(&self) -> usize {
        self.st * self.st
    }
    /// Row stride between input channels in the phase buffers.
    fn crow(&self) -> usize {
        self.phases() * self.ld
    }
    /// Where tap `(ki, kj)` starts reading in a channel's phase buffers.
    fn off(&self, g: &ConvGeom, ki: usize, kj: usize) -> usize {
        let (y, x) = (ki * g.dil, kj * g.dil);
        let phase = (y % self.st) * self.st + x % self.st;
        phase * self.ld + (y / self.st) * self.wq + x / self.st
    }
}

/// Copies group `gi` of samples `first..` into zero-padded phase planes.
fn pad_input(g: &ConvGeom, x: &[f32], first: usize, gi: usize, l: &Wide, xp: &mut [f32]) {
    let (cig, hw, p, w, st) = (g.cig(), g.hw(), g.pad, g.w, l.st);
    for ci in 0..cig {
        for j in 0..l.samples {
            let src = &x[((first + j) * g.c_in + gi * cig + ci) * hw..][..hw];
            for (phase, _) in l.used.iter().enumerate().filter(|u| *u.1) {
                let (a, b) = (phase / st, phase % st);
                let dst = &mut xp[ci * l.crow() + phase * l.ld + j * l.plane..][..l.plane];
                if st == 1 && p == 0 {
                    dst.copy_from_slice(src);
                    continue;
                }
                // Phase columns v whose input column st·v + b − p lies in [0, w).
                let vlo = p.saturating_sub(b).div_ceil(st);
                let vhi = (w + p).saturating_sub(b).div_ceil(st).min(l.wq).max(vlo);
                for (u, row) in dst.chunks_exact_mut(l.wq).enumerate() {
                    let y = st * u + a;
                    if y < p || y >= p + g.h {
                        row.fill(0.0);
                        continue;
                    }
                    let srow = &src[(y - p) * w..][..w];
                    row[..vlo].fill(0.0);
                    row[vhi..].fill(0.0);
                    let x0 = st * vlo + b - p;
                    if st == 1 {
                        row[vlo..vhi].copy_from_slice(&srow[x0..x0 + vhi - vlo]);
                    } else if vlo < vhi {
                        // With no valid column x0 may lie past the row.
                        for (o, &v) in row[vlo..vhi].iter_mut().zip(srow[x0..].iter().step_by(st)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// Copies the output gradients of group `gi` onto the wide grid, zero elsewhere.
fn wide_dy(g: &ConvGeom, dy: &[f32], first: usize, gi: usize, l: &Wide, dyw: &mut [f32]) {
    let (cog, ohw) = (g.cog(), g.ohw());
    for co in 0..cog {
        for j in 0..l.samples {
            let src = &dy[((first + j) * g.c_out + gi * cog + co) * ohw..][..ohw];
            let dst = &mut dyw[co * l.ld + j * l.plane..][..l.plane];
            dst[g.oh * l.wq..].fill(0.0);
            for (oy, row) in src.chunks_exact(g.ow).enumerate() {
                let d = &mut dst[oy * l.wq..][..l.wq];
                d[..g.ow].copy_from_slice(row);
                d[g.ow..].fill(0.0);
            }
        }
    }
}

/// Adds the phase planes of a padded input gradient back into `dx` (crop).
fn unpad_grad(g: &ConvGeom, dxp: &[f32], l: &Wide, gi: usize, dxc: &mut [f32]) {
    let (cig, hw, p, st) = (g.cig(), g.hw(), g.pad, l.st);
    for j in 0..l.samples {
        for ci in 0..cig {
            let dst = &mut dxc[(j * g.c_in + gi * cig + ci) * hw..][..hw];
            if st == 1 {
                let src = &dxp[ci * l.crow() + j * l.plane..];
                for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
                    row.copy_from_slice(&src[(y + p) * l.wq + p..][..g.w]);
                }
                continue;
            }
            for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
                let (u, a) = ((y + p) / st, (y + p) % st);
                // Columns x with (x + p) mod st = b come from phase (a, b),
                // consecutive there from v = (x0 + p) / st.
                for b in 0..st {
                    let x0 = (b + st - p % st) % st;
                    if x0 >= g.w {
                        continue;
                    }
                    let phase = a * st + b;
                    let cols = row[x0..].iter_mut().step_by(st);
                    if l.used[phase] {
                        let src = &dxp[ci * l.crow() + phase * l.ld + j * l.plane + u * l.wq + (x0 + p) / st..];
                        for (o, &v) in cols.zip(src) {
                            *o = v;
                        }
                    } else {
                        cols.for_each(|o| *o = 0.0);
                    }
                }
            }
        }
    }
}

/// `y [n, c_out, oh, ow]` of a convolution.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (cig, cog, ohw) = (g.cig(), g.cog(), g.ohw());
    let (k, kk, kcol) = (g.k, g.k * g.k, g.kcol());
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    per_chunk(g, &mut y, g.c_out * ohw, |first, yc, par| {
        let s = yc.len() / (g.c_out * ohw);
        let l = Wide::new(g, s);
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.crow(), cog * l.ld, |xp, yw| {
                pad_input(g, x, first, gi, &l, xp);
                for ki in 0..k {
                    for kj in 0..k {
                        let tap = ki * k + kj;
                        let rhs = &xp[l.off(g, ki, kj)..];
                        gemm(cog, l.cols, cig, yw, (l.ld, 1), tap > 0, &wg[tap..], (kcol, kk), rhs, (l.crow(), 1), par);
                    }
                }
                for j in 0..s {
                    for co in 0..cog {
                        let dst = &mut yc[((j * g.c_out + gi * cog + co) * ohw)..][..ohw];
                        let src = &yw[co * l.ld + j * l.plane..];
                        for (oy, row) in dst.chunks_exact_mut(g.ow).enumerate() {
                            row.copy_from_slice(&src[oy * l.wq..][..g.ow]);
                        }
                    }
                }
            });
        }
    });
    y
}

/// Input gradient `dx [n, c_in, h, w]` of a convolution.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (cig, cog, hw) = (g.cig(), g.cog(), g.hw());
    let (k, kk, kcol) = (g.k, g.k * g.k, g.kcol());
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    per_chunk(g, &mut dx, g.c_in * hw, |first, dxc, par| {
        let s = dxc.len() / (g.c_in * hw);
        let l = Wide::new(g, s);
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.crow(), cog * l.ld, |dxp, dyw| {
                wide_dy(g, dy, first, gi, &l, dyw);
                dxp.fill(0.0);
                for ki in 0..k {
                    for kj in 0..k {
                        let tap = ki * k + kj;
                        let dst = &mut dxp[l.off(g, ki, kj)..];
                        // dxp[.., off..] (cig x cols) += w_tapᵀ (cig x cog) · dyw (cog x cols)
                        gemm(cig, l.cols, cog, dst, (l.crow(), 1), true, &wg[tap..], (kk, kcol), dyw, (l.ld, 1), par);
                    }
                }
                unpad_grad(g, dxp, &l, gi, dxc);
            });
        }
    });
    dx
}

/// Weight gradient `dw [c_out, cig, k, k]` of a convolution, summed over the
/// batch chunk by chunk in a fixed order.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (cig, cog) = (g.cig(), g.cog());
    let (k, kk, kcol) = (g.k, g.k * g.k, g.kcol());
    let wlen = g.c_out * kcol;
    sum_chunk_partials(g, wlen, |first, samples, par| {
        let mut dw = vec![0f32; wlen];
        let l = Wide::new(g, samples);
        for gi in 0..g.groups {
            let dwg = &mut dw[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.crow(), cog * l.ld, |xp, dyw| {
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
                            (1, l.crow()),
                            par,
                        );
                    }
                }
            });
        }
        dw
    })
}
