//! Convolution without a column matrix ("shifted GEMMs").
//!
//! Stride 1 first. The inputs of a chunk of samples are copied once into
//! zero-padded planes laid one after another, `xp [cig, lead + s·P]`, that
//! share their padding: rows are `wq = w + p` wide (a row's right zeros are
//! the next row's left ones), planes `P = (h + p)·wq` (a sample's bottom zeros
//! are the next one's top), after `lead = p·wq + p` zeros. On that layout the
//! input seen by kernel tap `(ki, kj)` for output position `q = oy·wq + ox`
//! is `xp[.., q + off]` with `off = (ki·wq + kj)·dil`: one contiguous, shifted
//! view per tap. The output is computed on the same wide grid (`ox < wq`, the
//! extra columns are discarded) as `y = Σ_tap w[.., .., tap] · xp[.., off..]`,
//! either by the register-blocked kernel of [`super::direct`] (AVX2 + FMA),
//! which sums all taps in registers, or by one accumulated GEMM per tap; in
//! both, nothing is copied `k²` times as im2col does, so small feature maps,
//! where im2col's short rows cost more than the arithmetic, gain most. The
//! gradients are the same sums transposed: the input gradient is a forward
//! pass of the output gradient with mirrored taps (direct kernel) or
//! accumulates into shifted views of a padded buffer (GEMMs); the weight
//! gradient reduces over the wide grid, whose extra columns carry zero output
//! gradient.
//!
//! Stride `st > 1` reduces to stride 1: the padded input is split into `st²`
//! phase planes (pixels `(st·u + a, st·v + b)` for phase `(a, b)`); tap
//! `(ki, kj)` reads phase `(ki·dil mod st, kj·dil mod st)` shifted by
//! `(ki·dil div st, kj·dil div st)`, so the same GEMMs run on the phase
//! planes, and each input pixel is still copied once.

use super::conv::{ConvGeom, Epilogue, POINTWISE_DIRECT_HW, per_chunk, sum_chunk_partials};
use super::direct::{self, ColMasks, NR, Tap, padded_cols};
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
    /// Zeros in front of the first sample (stride 1 only, see [`Wide::new`]).
    lead: usize,
    /// Length of one channel-phase row: `lead + samples · plane`.
    ld: usize,
    /// Columns each GEMM computes (up to the last valid output).
    cols: usize,
    /// Which phases some tap reads.
    used: Vec<bool>,
}

impl Wide {
    /// With stride 1 the planes share their padding: a row's right zeros are
    /// the next row's left ones and a sample's bottom zeros the next one's
    /// top, so a row is `w + gap` wide and a plane `h + gap` rows high, with
    /// `gap = p` (more only when the padding exceeds the kernel's reach and
    /// the output is wider than that). On 8×8 maps with padding 1 this
    /// computes 81 columns per sample instead of 100.
    ///
    /// `tight` (stride 1, see [`tight`]) drops the padding columns too: rows
    /// are `w` wide, so a tap's view runs past a row's end into the next row,
    /// and the reads that stand for padding must be masked out
    /// ([`col_masks`]); 8×8 maps then cost 72 columns per sample.
    fn new(g: &ConvGeom, samples: usize, tight: bool) -> Self {
        let st = g.stride;
        let p = g.pad;
        let (hq, wq, lead) = if tight {
            (g.h + p, g.w, p * g.w + p)
        } else if st == 1 {
            let gap = p + p.saturating_sub((g.k - 1) * g.dil);
            (g.h + gap, g.w + gap, p * (g.w + gap) + p)
        } else {
            ((g.h + 2 * p).div_ceil(st), (g.w + 2 * p).div_ceil(st), 0)
        };
        let plane = hq * wq;
        let mut used = vec![false; st * st];
        for ki in 0..g.k {
            for kj in 0..g.k {
                used[(ki * g.dil % st) * st + kj * g.dil % st] = true;
            }
        }
        let cols = (samples - 1) * plane + (g.oh - 1) * wq + g.ow;
        Wide { st, wq, plane, samples, lead, ld: lead + samples * plane, cols, used }
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
        let (phase, shift) = self.tap(g, ki, kj);
        phase * self.ld + shift
    }
    /// The phase plane tap `(ki, kj)` reads, and its shift within it.
    fn tap(&self, g: &ConvGeom, ki: usize, kj: usize) -> (usize, usize) {
        let (y, x) = (ki * g.dil, kj * g.dil);
        ((y % self.st) * self.st + x % self.st, (y / self.st) * self.wq + x / self.st)
    }
}

/// Whether the forward pass of `g` can run on the tight layout of
/// [`Wide::new`] (with the register-blocked kernel, which masks reads):
/// stride 1, and padding that keeps the output no larger than the input
/// (`2p ≤ (k − 1)·dil`, so every output column fits a `w`-wide row); without
/// padding there is nothing to drop.
fn tight(g: &ConvGeom) -> bool {
    g.stride == 1 && g.pad > 0 && 2 * g.pad <= (g.k - 1) * g.dil
}

/// The masks of the tight layout, one per kernel column `kj`: output column
/// `ox` reads input column `ox + kj·dil − p`, which must lie in `[0, w)`.
fn col_masks(g: &ConvGeom) -> ColMasks {
    ColMasks::new(g.w, g.k, |kj, ox| {
        let x = ox + kj * g.dil;
        x >= g.pad && x - g.pad < g.w
    })
}

/// Copies group `gi` of samples `first..` into zero-padded (phase) planes.
fn pad_input(g: &ConvGeom, x: &[f32], first: usize, gi: usize, l: &Wide, xp: &mut [f32]) {
    let (cig, hw, p, w, st) = (g.cig(), g.hw(), g.pad, g.w, l.st);
    if st == 1 {
        // Shared padding: pixel (y, x) of sample j at lead + j·plane + y·wq + x.
        for ci in 0..cig {
            let chan = &mut xp[ci * l.ld..][..l.ld];
            chan[..l.lead].fill(0.0);
            for j in 0..l.samples {
                let src = &x[((first + j) * g.c_in + gi * cig + ci) * hw..][..hw];
                let dst = &mut chan[l.lead + j * l.plane..][..l.plane];
                let (rows, band) = dst.split_at_mut(g.h * l.wq);
                if l.wq == w {
                    // The tight layout: the plane goes over as it is.
                    rows.copy_from_slice(src);
                } else {
                    for (row, srow) in rows.chunks_exact_mut(l.wq).zip(src.chunks_exact(w)) {
                        row[..w].copy_from_slice(srow);
                        row[w..].fill(0.0);
                    }
                }
                band.fill(0.0);
            }
        }
        return;
    }
    // Strided: padded pixel (py, px) = (y + p, x + p) goes to phase
    // (py mod st, px mod st) at (py div st, px div st). Each used phase
    // plane is zeroed, then every input row is dealt out over the phases in
    // one pass; which input columns go to which phase column is the same
    // for every row, so it is worked out once.
    let cols: Vec<(usize, usize, usize, usize)> = (0..st)
        .filter_map(|b| {
            // Input columns x ≡ b − p (mod st), from x0, at v0 = (x0 + p) div st on.
            let x0 = (b + st - p % st) % st;
            (x0 < w).then(|| (b, x0, (x0 + p) / st, (w - x0).div_ceil(st)))
        })
        .collect();
    for ci in 0..cig {
        for j in 0..l.samples {
            let src = &x[((first + j) * g.c_in + gi * cig + ci) * hw..][..hw];
            let base = ci * l.crow() + j * l.plane;
            for (phase, _) in l.used.iter().enumerate().filter(|u| *u.1) {
                xp[base + phase * l.ld..][..l.plane].fill(0.0);
            }
            for (y, srow) in src.chunks_exact(w).enumerate() {
                let (a, u) = ((y + p) % st, (y + p) / st);
                if st == 2 && l.used[2 * a] && l.used[2 * a + 1] {
                    // Both column phases of this row in one pass over it.
                    let row = |b: usize| base + (2 * a + b) * l.ld + u * l.wq;
                    split_pairs(srow, p, &mut xp[..], (row(p % 2), row(1 - p % 2)));
                    continue;
                }
                for &(b, x0, v0, n) in &cols {
                    let phase = a * st + b;
                    if l.used[phase] {
                        let dst = &mut xp[base + phase * l.ld + u * l.wq + v0..][..n];
                        if st == 2 {
                            deal::<2>(dst, &srow[x0..]);
                        } else {
                            for (o, &v) in dst.iter_mut().zip(srow[x0..].iter().step_by(st)) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Stride 2: deals one input row over its two column phases in one pass,
/// pair by pair (the loop the compiler turns into deinterleaving shuffles):
/// padded column `x + p` of phase `(x + p) mod 2` lands at `(x + p) div 2`,
/// so even columns go to the row at `even` from `p div 2` on and odd ones to
/// the row at `odd` from `(p + 1) div 2` on (offsets into `xp`; the two rows
/// lie in different phase planes, so they do not overlap).
fn split_pairs(srow: &[f32], p: usize, xp: &mut [f32], (even, odd): (usize, usize)) {
    let w = srow.len();
    let (ne, no) = (w.div_ceil(2), w / 2);
    let (e0, o0) = (even + p / 2, odd + p.div_ceil(2));
    let (de, dodd) = if e0 < o0 {
        let (lo, hi) = xp.split_at_mut(o0);
        (&mut lo[e0..e0 + ne], &mut hi[..no])
    } else {
        let (lo, hi) = xp.split_at_mut(e0);
        (&mut hi[..ne], &mut lo[o0..o0 + no])
    };
    for ((pair, e), o) in srow.chunks_exact(2).zip(de.iter_mut()).zip(dodd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
    if w % 2 == 1 {
        de[ne - 1] = srow[w - 1];
    }
}

/// `dst[k] = src[ST·k]` for every `k < dst.len()`.
#[inline(always)]
fn deal<const ST: usize>(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    if n == 0 {
        return;
    }
    let src = &src[..ST * (n - 1) + 1];
    for (k, o) in dst.iter_mut().enumerate() {
        // SAFETY: ST·k ≤ ST·(n − 1) < src.len(), checked by the slice above.
        *o = unsafe { *src.get_unchecked(ST * k) };
    }
}

/// Copies the output gradients of group `gi` onto the wide grid, zero
/// elsewhere: channel `co`'s grid starts at `base + co·rs` of `dyw`.
#[allow(clippy::too_many_arguments)]
fn wide_dy(g: &ConvGeom, dy: &[f32], first: usize, gi: usize, l: &Wide, dyw: &mut [f32], rs: usize, base: usize) {
    let (cog, ohw) = (g.cog(), g.ohw());
    for co in 0..cog {
        for j in 0..l.samples {
            let src = &dy[((first + j) * g.c_out + gi * cog + co) * ohw..][..ohw];
            let dst = &mut dyw[base + co * rs + j * l.plane..][..l.plane];
            dst[g.oh * l.wq..].fill(0.0);
            for (oy, row) in src.chunks_exact(g.ow).enumerate() {
                let d = &mut dst[oy * l.wq..][..l.wq];
                d[..g.ow].copy_from_slice(row);
                d[g.ow..].fill(0.0);
            }
        }
    }
}

/// Adds the phase planes of a padded input gradient back into `dx` (crop);
/// phase `f` of channel `ci` starts at `ci·crow + f·pstride` of `dxp`.
fn unpad_grad(g: &ConvGeom, dxp: &[f32], l: &Wide, (crow, pstride): (usize, usize), gi: usize, dxc: &mut [f32]) {
    let (cig, hw, p, st) = (g.cig(), g.hw(), g.pad, l.st);
    for j in 0..l.samples {
        for ci in 0..cig {
            let dst = &mut dxc[(j * g.c_in + gi * cig + ci) * hw..][..hw];
            if st == 1 {
                let src = &dxp[ci * crow + l.lead + j * l.plane..];
                for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
                    row.copy_from_slice(&src[y * l.wq..][..g.w]);
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
                        let src = &dxp[ci * crow + phase * pstride + j * l.plane + u * l.wq + (x0 + p) / st..];
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
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (cig, cog, ohw) = (g.cig(), g.cog(), g.ohw());
    let (k, kk, kcol) = (g.k, g.k * g.k, g.kcol());
    let fast = direct::enabled();
    let masks = (fast && tight(g)).then(|| col_masks(g));
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    per_chunk(g, &mut y, g.c_out * ohw, |first, yc, par| {
        let s = yc.len() / (g.c_out * ohw);
        let l = Wide::new(g, s, masks.is_some());
        // Output rows on the wide grid; the direct kernel writes whole
        // register blocks, and reads that far past the last channel row
        // (on the tight layout up to `p` more, all of them masked reads).
        let (ldy, slack) = if fast { (padded_cols(l.ld), NR + g.pad) } else { (l.ld, 0) };
        let offs: Vec<usize> = (0..kk).map(|t| l.off(g, t / k, t % k)).collect();
        let taps: Vec<Tap> = offs.iter().enumerate().map(|(t, &inp)| Tap { inp, w: t, mask: t % k }).collect();
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.crow() + slack, cog * ldy, |xp, yw| {
                pad_input(g, x, first, gi, &l, xp);
                if fast {
                    direct::run(
                        cog,
                        l.cols,
                        cig,
                        &taps,
                        wg,
                        (kcol, kk),
                        xp,
                        l.crow(),
                        yw,
                        ldy,
                        false,
                        masks.as_ref(),
                        par,
                    );
                } else {
                    for (tap, &off) in offs.iter().enumerate() {
                        gemm(
                            cog,
                            l.cols,
                            cig,
                            yw,
                            (ldy, 1),
                            tap > 0,
                            &wg[tap..],
                            (kcol, kk),
                            &xp[off..],
                            (l.crow(), 1),
                            par,
                        );
                    }
                }
                for j in 0..s {
                    for co in 0..cog {
                        let dst = &mut yc[((j * g.c_out + gi * cog + co) * ohw)..][..ohw];
                        let src = &yw[co * ldy + j * l.plane..];
                        if l.wq == g.ow {
                            // Output rows as wide as the grid's: one copy.
                            ep.copy(gi * cog + co, dst, &src[..ohw]);
                        } else {
                            for (oy, row) in dst.chunks_exact_mut(g.ow).enumerate() {
                                ep.copy(gi * cog + co, row, &src[oy * l.wq..][..g.ow]);
                            }
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
    // The input gradient is a forward convolution of the output gradient
    // (taps mirrored, weights transposed), one per phase plane with that
    // plane's taps, which the direct kernel runs as a gather; otherwise
    // GEMMs scatter it into shifted views.
    let fast = direct::enabled();
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    per_chunk(g, &mut dx, g.c_in * hw, |first, dxc, par| {
        let s = dxc.len() / (g.c_in * hw);
        let l = Wide::new(g, s, false);
        let taps: Vec<(usize, usize)> = (0..kk).map(|t| l.tap(g, t / k, t % k)).collect();
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            if fast {
                // dxp[ci, phase, p] = Σ_{taps of phase} Σ_co w[co, ci, tap] ·
                // dyw[co, p − shift_tap]: each output-gradient row gets a zero
                // margin of the largest shift in front, so `p − shift` never
                // goes below zero.
                let margin = taps.iter().map(|t| t.1).max().unwrap_or(0);
                let rs = margin + l.ld;
                let pstride = padded_cols(l.ld);
                let crow = l.phases() * pstride;
                with_scratch(crow * cig, cog * rs + NR, |dxp, dyw| {
                    for row in dyw.chunks_mut(rs) {
                        let front = margin.min(row.len());
                        row[..front].fill(0.0);
                    }
                    dyw[cog * rs..].fill(0.0);
                    wide_dy(g, dy, first, gi, &l, dyw, rs, margin);
                    for phase in (0..l.phases()).filter(|&f| l.used[f]) {
                        // Weights transposed: row ci at stride kk, channel co at kcol.
                        let mirrored: Vec<Tap> =
                            (0..kk).filter(|&t| taps[t].0 == phase).map(|t| Tap::new(margin - taps[t].1, t)).collect();
                        let out = &mut dxp[phase * pstride..];
                        direct::run(cig, l.ld, cog, &mirrored, wg, (kk, kcol), dyw, rs, out, crow, false, None, par);
                    }
                    unpad_grad(g, dxp, &l, (crow, pstride), gi, dxc);
                });
                continue;
            }
            with_scratch(cig * l.crow(), cog * l.ld, |dxp, dyw| {
                wide_dy(g, dy, first, gi, &l, dyw, l.ld, 0);
                dxp.fill(0.0);
                for (tap, &(phase, shift)) in taps.iter().enumerate() {
                    // dxp[.., off..] (cig x cols) += w_tapᵀ (cig x cog) · dyw (cog x cols)
                    let dst = &mut dxp[phase * l.ld + shift..];
                    gemm(cig, l.cols, cog, dst, (l.crow(), 1), true, &wg[tap..], (kk, kcol), dyw, (l.ld, 1), par);
                }
                unpad_grad(g, dxp, &l, (l.crow(), l.ld), gi, dxc);
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
        let l = Wide::new(g, samples, false);
        for gi in 0..g.groups {
            let dwg = &mut dw[gi * cog * kcol..(gi + 1) * cog * kcol];
            with_scratch(cig * l.crow(), cog * l.ld, |xp, dyw| {
                pad_input(g, x, first, gi, &l, xp);
                wide_dy(g, dy, first, gi, &l, dyw, l.ld, 0);
                if direct::enabled() {
                    let offs: Vec<usize> = (0..kk).map(|t| l.off(g, t / k, t % k)).collect();
                    direct::run_weight_grad(cog, cig, &offs, l.cols, dyw, l.ld, xp, l.crow(), dwg, par);
                    return;
                }
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
