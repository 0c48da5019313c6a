//! Direct depthwise convolution (groups = C_in = C_out): every channel plane
//! is convolved with its own k×k filter, row by row, without a column matrix
//! (im2col would copy k² times the input to feed a GEMM with one row).
//!
//! Work is split by plane (forward, input gradient) or by channel (weight
//! gradient, summing samples in order), so results do not depend on the
//! thread count.

use super::conv::{ChannelEpilogue, ConvGeom, Epilogue};
use super::{Isa, isa, per_isa};
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

/// Whether the phase-plane forward handles `g`: a stride above 1, no
/// dilation, padding within the kernel's reach.
fn phased(g: &ConvGeom) -> bool {
    PADDED.load(Ordering::Relaxed) && g.stride > 1 && g.dil == 1 && g.pad < g.k
}

static PADDED: AtomicBool = AtomicBool::new(true);

/// Turns the padded-plane kernels off (`false`: the row-by-row ones run for
/// every geometry) or back on; for benchmarks and tests.
pub(crate) fn set_padded(on: bool) {
    PADDED.store(on, Ordering::Relaxed);
}

/// The two scratch buffers of a padded-plane kernel: the padded plane and
/// the wide output (or output gradient) grid. A task zeroes them once
/// ([`Scratch::new`]) and the kernels write only the plane's own values
/// into them, so the zero border stays (a fill of the border per plane row
/// cost a `memset` call per row). They are made outside the kernels'
/// instruction-set variants, so that all of a kernel's code is compiled
/// inside them (a closure handed to a function that is not inlined is
/// compiled for the baseline instruction set).
struct Scratch {
    pb: Vec<f32>,
    wide: Vec<f32>,
}

/// Outputs summed per block in the forward pass and the input gradient
/// (four AVX-512 registers); the wide grid is a whole number of blocks.
const SPAN: usize = 64;

/// Lanes of the weight gradient's partial sums (one AVX-512 register).
const LANES: usize = 16;

impl Scratch {
    /// Zeroed buffers for planes `[h, w]` padded by `p` and convolved with
    /// a `k`×`k` filter: the padded plane (rows `w + 2p` wide, then slack
    /// for the last blocks' reads past the grid) and the wide grid of
    /// `h + 2p − k + 1` rows, rounded up to whole blocks.
    fn new((h, w, p): (usize, usize, usize), k: usize) -> Self {
        let wq = w + 2 * p;
        let cols = (h + 2 * p + 1 - k) * wq;
        Scratch { pb: vec![0.0; (h + 2 * p) * wq + k + SPAN], wide: vec![0.0; cols.div_ceil(SPAN) * SPAN] }
    }
}

/// One plane `src [h, w]` written into the zero-padded plane `pb` (rows
/// `wq = w + 2p` wide); the border is left as it is (zero).
#[inline(always)]
fn pad_plane(src: &[f32], (h, w, p): (usize, usize, usize), pb: &mut [f32]) {
    let wq = w + 2 * p;
    for (y, row) in src.chunks_exact(w).enumerate().take(h) {
        let at = (y + p) * wq + p;
        super::copy_short(&mut pb[at..at + w], row);
    }
}

/// `acc[q] = Σ_t filt[t] · pb[q + off_t]` for every `q` of `acc` (a whole
/// number of blocks), the taps in row-major order, `off_t = ki·wq + kj`:
/// every tap one long contiguous multiply-add over the padded plane, a
/// block of outputs kept in registers over all taps. The channel's
/// epilogue is applied to each block as it leaves the registers, in the
/// kernels' instruction set (a copy of every short output row through
/// [`Epilogue::copy`] afterwards ran scalar and took 8 % of a MobileNetV3
/// forward).
#[inline(always)]
fn taps_wide(filt: &[f32], k: usize, wq: usize, pb: &[f32], acc: &mut [f32], ep: ChannelEpilogue) {
    for (b, out) in acc.chunks_exact_mut(SPAN).enumerate() {
        let q = b * SPAN;
        let mut a = [0f32; SPAN];
        for ki in 0..k {
            for kj in 0..k {
                let wv = filt[ki * k + kj];
                if let Ok(src) = <&[f32; SPAN]>::try_from(&pb[ki * wq + kj + q..][..SPAN]) {
                    for l in 0..SPAN {
                        a[l] += wv * src[l];
                    }
                }
            }
        }
        ep.apply(&mut a);
        if let Ok(out) = <&mut [f32; SPAN]>::try_from(out) {
            *out = a;
        }
    }
}

/// A stride-1 pass over zero-padded planes `[h, w]` (padding `p`, `k`×`k`
/// filters) giving planes `out_w` wide: the forward pass (the input planes,
/// the convolution's padding) or the input gradient (the output-gradient
/// planes, padding `k − 1 − p`, with the filters mirrored: the same kind of
/// convolution).
#[derive(Clone, Copy)]
struct Pass {
    h: usize,
    w: usize,
    p: usize,
    k: usize,
    out_w: usize,
}

impl Pass {
    fn forward(g: &ConvGeom) -> Self {
        Pass { h: g.h, w: g.w, p: g.pad, k: g.k, out_w: g.ow }
    }

    fn input_grad(g: &ConvGeom) -> Self {
        Pass { h: g.oh, w: g.ow, p: g.k - 1 - g.pad, k: g.k, out_w: g.w }
    }
}

/// One plane of `pass`: `out` from `src` with `filt [k, k]`, passed through
/// `ep` as channel `c`.
#[inline(always)]
fn pass_plane(pass: Pass, src: &[f32], filt: &[f32], out: &mut [f32], ep: (Epilogue, usize), s: &mut Scratch) {
    let wq = pass.w + 2 * pass.p;
    pad_plane(src, (pass.h, pass.w, pass.p), &mut s.pb);
    taps_wide(filt, pass.k, wq, &s.pb, &mut s.wide, ep.0.at(ep.1));
    for (row, wide) in out.chunks_exact_mut(pass.out_w).zip(s.wide.chunks(wq)) {
        super::copy_short(row, &wide[..pass.out_w]);
    }
}

/// A strided forward on phase planes: the zero-padded plane dealt into its
/// `s²` phases (phase `(a, b)` holds padded pixels `(s·r + a, s·c + b)`),
/// so that tap `(ki, kj)` reads phase `(ki mod s, kj mod s)` shifted by
/// `(ki div s, kj div s)`: a stride-1 sum of contiguous multiply-adds over
/// the phases, as [`taps_wide`] does on one plane.
struct Phases {
    h: usize,
    w: usize,
    p: usize,
    k: usize,
    s: usize,
    oh: usize,
    ow: usize,
    /// Width and height of a phase plane: `ow + (k − 1) div s`, `oh + …`.
    wq: usize,
    hq: usize,
    /// Where each tap (row-major) starts in the phase buffer.
    offs: Vec<usize>,
    /// Per phase row (`a`) and per phase column (`b`): the phase plane's
    /// rows (columns) `[lo, hi)` that fall inside the input, and the input
    /// row (column) `s·lo + a − p` of the first; the rest is padding.
    rows: Vec<(usize, usize, usize)>,
    cols: Vec<(usize, usize, usize)>,
}

impl Phases {
    fn new(g: &ConvGeom) -> Self {
        let reach = (g.k - 1) / g.stride;
        let mut ph = Phases {
            h: g.h,
            w: g.w,
            p: g.pad,
            k: g.k,
            s: g.stride,
            oh: g.oh,
            ow: g.ow,
            wq: g.ow + reach,
            hq: g.oh + reach,
            offs: Vec::new(),
            rows: Vec::new(),
            cols: Vec::new(),
        };
        ph.offs = ph.offsets();
        ph.rows = (0..ph.s).map(|a| ph.span(a, ph.hq, ph.h)).collect();
        ph.cols = (0..ph.s).map(|b| ph.span(b, ph.wq, ph.w)).collect();
        ph
    }

    /// The phase-plane indices `i < len` whose input index `s·i + phase − p`
    /// lies in `[0, size)`, as `(lo, hi, first input index)`.
    fn span(&self, phase: usize, len: usize, size: usize) -> (usize, usize, usize) {
        let inside = |i: usize| (self.s * i + phase).checked_sub(self.p).is_some_and(|x| x < size);
        let lo = (0..len).find(|&i| inside(i)).unwrap_or(len);
        let hi = (lo..len).find(|&i| !inside(i)).unwrap_or(len);
        (lo, hi, (self.s * lo + phase).saturating_sub(self.p))
    }

    fn plane(&self) -> usize {
        self.hq * self.wq
    }

    /// Zeroed buffers: the phase planes one after the other, then slack for
    /// the last blocks' reads past them; the wide output grid (`oh` rows
    /// `wq` wide) in whole blocks.
    fn scratch(&self) -> Scratch {
        let wide = (self.oh * self.wq).div_ceil(SPAN) * SPAN;
        Scratch { pb: vec![0.0; self.s * self.s * self.plane() + self.k * self.wq + 2 * SPAN], wide: vec![0.0; wide] }
    }

    fn offsets(&self) -> Vec<usize> {
        (0..self.k * self.k)
            .map(|t| {
                let (ki, kj) = (t / self.k, t % self.k);
                ((ki % self.s) * self.s + kj % self.s) * self.plane() + (ki / self.s) * self.wq + kj / self.s
            })
            .collect()
    }
}

/// One plane of a strided forward: `out [oh, ow]` from `src [h, w]` with
/// `filt [k, k]`, passed through `ep` as channel `c`. Only the phases'
/// pixels inside the input are written: the padding around them is the
/// same for every plane and stays zero from [`Phases::scratch`].
#[inline(always)]
fn phase_plane(ph: &Phases, src: &[f32], filt: &[f32], out: &mut [f32], ep: (Epilogue, usize), s: &mut Scratch) {
    let (plane, offs, finish) = (ph.plane(), &ph.offs, ep.0.at(ep.1));
    for (a, &(r_lo, r_hi, y0)) in ph.rows.iter().enumerate() {
        for (b, &(c_lo, c_hi, x0)) in ph.cols.iter().enumerate().filter(|(_, c)| c.0 < c.1) {
            let base = (a * ph.s + b) * plane;
            for r in r_lo..r_hi {
                let y = y0 + (r - r_lo) * ph.s;
                let row = &src[y * ph.w + x0..(y + 1) * ph.w];
                let dst = &mut s.pb[base + r * ph.wq + c_lo..base + r * ph.wq + c_hi];
                for (d, v) in dst.iter_mut().zip(row.iter().step_by(ph.s)) {
                    *d = *v;
                }
            }
        }
    }
    for (b, acc) in s.wide.chunks_exact_mut(SPAN).enumerate() {
        let q = b * SPAN;
        let mut sum = [0f32; SPAN];
        for (&wv, &off) in filt.iter().zip(offs) {
            if let Ok(src) = <&[f32; SPAN]>::try_from(&s.pb[off + q..][..SPAN]) {
                for l in 0..SPAN {
                    sum[l] += wv * src[l];
                }
            }
        }
        finish.apply(&mut sum);
        if let Ok(acc) = <&mut [f32; SPAN]>::try_from(acc) {
            *acc = sum;
        }
    }
    for (row, wide) in out.chunks_exact_mut(ph.ow).zip(s.wide.chunks(ph.wq)) {
        super::copy_short(row, &wide[..ph.ow]);
    }
}

/// `acc[t][l] += Σ_b gw[16b + l] · pb[off[t] + 16b + l]` over the blocks
/// `b` of the wide grid: `T` taps at once, each block of the output
/// gradient loaded once for all of them.
#[inline(always)]
fn taps_dot<const T: usize>(gw: &[f32], pb: &[f32], off: [usize; T], acc: &mut [[f32; LANES]; T]) {
    // A local copy, so that the sums stay in registers.
    let mut a = *acc;
    for (b, gv) in gw.chunks_exact(LANES).enumerate() {
        let q = b * LANES;
        for t in 0..T {
            if let Ok(src) = <&[f32; LANES]>::try_from(&pb[off[t] + q..][..LANES]) {
                for l in 0..LANES {
                    a[t][l] += gv[l] * src[l];
                }
            }
        }
    }
    *acc = a;
}

/// The weight gradient's partial sums of one plane on the padded layout,
/// added to `acc` (`k²` taps of 16 lanes each): the output gradient laid
/// on the wide grid (zeros in the extra columns) dotted with each tap's
/// shifted view of the padded input, nine taps per pass.
#[inline(always)]
fn backward_weight_plane(g: &ConvGeom, src: &[f32], grad: &[f32], acc: &mut [[f32; LANES]], s: &mut Scratch) {
    let wq = g.w + 2 * g.pad;
    pad_plane(src, (g.h, g.w, g.pad), &mut s.pb);
    for (wide, row) in s.wide.chunks_mut(wq).zip(grad.chunks_exact(g.ow)) {
        super::copy_short(&mut wide[..g.ow], row);
    }
    let off = |t: usize| (t / g.k) * wq + t % g.k;
    let mut nine = acc.chunks_exact_mut(9);
    let mut t0 = 0;
    for part in &mut nine {
        if let Ok(part) = <&mut [[f32; LANES]; 9]>::try_from(part) {
            taps_dot(&s.wide, &s.pb, std::array::from_fn(|i| off(t0 + i)), part);
        }
        t0 += 9;
    }
    for (i, one) in nine.into_remainder().iter_mut().enumerate() {
        taps_dot(&s.wide, &s.pb, [off(t0 + i)], std::array::from_mut(one));
    }
}

/// `Σ a[i]·b[i]` in 8 independent lanes (so it vectorises), reduced in a
/// fixed order: the row-by-row weight gradient's dot product.
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

per_isa!(pass_plane_isa, pass_plane, (pass: Pass, src: &[f32], filt: &[f32], out: &mut [f32], ep: (Epilogue, usize), s: &mut Scratch));
per_isa!(phase_plane_isa, phase_plane, (ph: &Phases, src: &[f32], filt: &[f32], out: &mut [f32], ep: (Epilogue, usize), s: &mut Scratch));
per_isa!(backward_weight_plane_isa, backward_weight_plane, (g: &ConvGeom, src: &[f32], grad: &[f32], acc: &mut [[f32; LANES]], s: &mut Scratch));

/// `y [n, c, oh, ow]` of `x [n, c, h, w]` and `w [c, 1, k, k]`, each plane
/// passed through `ep` once it is summed.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    if padded(g) {
        return forward_padded(isa(), g, x, w, ep);
    }
    if phased(g) {
        return forward_phased(isa(), g, x, w, ep);
    }
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

/// [`forward`] on the padded layout with the kernels of `isa`.
fn forward_padded(isa: Isa, g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    run_pass(isa, Pass::forward(g), (g.n, g.c_in), x, w, ep)
}

/// [`forward`] of a strided convolution on phase planes with the kernels of
/// `isa`.
fn forward_phased(isa: Isa, g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let ph = Phases::new(g);
    let (hw, ohw, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    y.par_chunks_mut(ohw).enumerate().for_each_init(
        || ph.scratch(),
        |s, (plane, out)| {
            let c = plane % g.c_in;
            let (src, filt) = (&x[plane * hw..(plane + 1) * hw], &w[c * kk..(c + 1) * kk]);
            phase_plane_isa(isa, &ph, src, filt, out, (ep, c), s);
        },
    );
    y
}

/// Every plane of `src [n, channels, h, w]` (filter `w [channels, 1, k, k]`)
/// through `pass` with the kernels of `isa`.
fn run_pass(isa: Isa, pass: Pass, (n, channels): (usize, usize), src: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (in_len, kk) = (pass.h * pass.w, pass.k * pass.k);
    let out_len = (pass.h + 2 * pass.p + 1 - pass.k) * pass.out_w;
    let mut out = vec![0f32; n * channels * out_len];
    let new = || Scratch::new((pass.h, pass.w, pass.p), pass.k);
    out.par_chunks_mut(out_len).enumerate().for_each_init(new, |s, (plane, o)| {
        let c = plane % channels;
        let (src, filt) = (&src[plane * in_len..(plane + 1) * in_len], &w[c * kk..(c + 1) * kk]);
        pass_plane_isa(isa, pass, src, filt, o, (ep, c), s);
    });
    out
}

/// `dx [n, c, h, w]` from `dy [n, c, oh, ow]` and `w [c, 1, k, k]`.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if padded(g) {
        return backward_input_padded(isa(), g, dy, w);
    }
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

/// [`backward_input`] on the padded layout with the kernels of `isa`.
fn backward_input_padded(isa: Isa, g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    // Each filter's taps in reverse order.
    let kk = g.k * g.k;
    let mirrored: Vec<f32> = w.chunks_exact(kk).flat_map(|f| f.iter().rev().copied()).collect();
    run_pass(isa, Pass::input_grad(g), (g.n, g.c_in), dy, &mirrored, Epilogue::NONE)
}

/// `dw [c, 1, k, k]` from `x [n, c, h, w]` and `dy [n, c, oh, ow]`.
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if padded(g) {
        return backward_weight_padded(isa(), g, x, dy);
    }
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

/// [`backward_weight`] on the padded layout with the kernels of `isa`.
///
/// Tasks of `SAMPLES` samples × `CHANNELS` channels, so that each reads its
/// planes in memory order (a task per channel jumped a whole sample between
/// planes and waited on memory for half its time). A task sums in lanes,
/// then each tap's lanes in order; the tasks' sums are added in sample
/// order: the same order for any thread count and instruction set.
fn backward_weight_padded(isa: Isa, g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    const SAMPLES: usize = 8;
    const CHANNELS: usize = 16;
    let (hw, ohw, kk) = (g.h * g.w, g.oh * g.ow, g.k * g.k);
    let (blocks, block) = (g.c_in.div_ceil(CHANNELS), CHANNELS * kk);
    let mut part = vec![0f32; g.n.div_ceil(SAMPLES) * blocks * block];
    let new = || (Scratch::new((g.h, g.w, g.pad), g.k), vec![[0f32; LANES]; block]);
    part.par_chunks_mut(block).enumerate().for_each_init(new, |(s, acc), (task, sums)| {
        let (n0, c0) = ((task / blocks) * SAMPLES, (task % blocks) * CHANNELS);
        let cs = CHANNELS.min(g.c_in - c0);
        acc.fill([0.0; LANES]);
        for n in n0..g.n.min(n0 + SAMPLES) {
            for (c, acc) in (c0..c0 + cs).zip(acc.chunks_exact_mut(kk)) {
                let plane = n * g.c_in + c;
                let (src, grad) = (&x[plane * hw..(plane + 1) * hw], &dy[plane * ohw..(plane + 1) * ohw]);
                backward_weight_plane_isa(isa, g, src, grad, acc, s);
            }
        }
        for (o, lanes) in sums.iter_mut().zip(&acc[..cs * kk]) {
            *o = lanes.iter().sum();
        }
    });
    // `part` is [sample group][channel block][channel, tap] with whole
    // blocks; `dw` is [channel, tap].
    let mut dw = vec![0f32; g.c_out * kk];
    for group in part.chunks_exact(blocks * block) {
        for (d, v) in dw.iter_mut().zip(group) {
            *d += v;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::test_util::Lcg(seed);
        (0..n).map(|_| r.unit()).collect()
    }

    /// Every instruction set this CPU runs the kernels in.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            if super::super::direct::available() {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && super::super::direct::available() {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn geom(n: usize, c: usize, (h, w): (usize, usize), k: usize, pad: usize) -> ConvGeom {
        let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
        ConvGeom { n, c_in: c, h, w, c_out: c, k, stride: 1, pad, dil: 1, groups: c, oh, ow }
    }

    /// The phase-plane forward of strided convolutions: plain sums within
    /// float rounding, the same bits on every instruction set this CPU has
    /// and for any thread count (strides 2 and 3, odd sizes, padding 0 to
    /// k − 1, the epilogue).
    #[test]
    fn phased_forward_matches_plain_sums_with_the_same_bits_everywhere() {
        let isas = isas();
        let cases = [
            (3, 7, (9, 11), 3, 1, 2),
            (2, 5, (12, 12), 5, 2, 2),
            (2, 3, (10, 7), 3, 0, 3),
            (1, 4, (24, 23), 5, 4, 2),
            (2, 2, (3, 3), 3, 2, 2),
            // Phases with no pixel of the input in them.
            (2, 3, (1, 1), 3, 2, 2),
            (1, 2, (2, 5), 5, 4, 3),
        ];
        for (i, &(n, c, (h, w), k, pad, stride)) in cases.iter().enumerate() {
            let (oh, ow) = ((h + 2 * pad - k) / stride + 1, (w + 2 * pad - k) / stride + 1);
            let g = ConvGeom { n, c_in: c, h, w, c_out: c, k, stride, pad, dil: 1, groups: c, oh, ow };
            assert!(g.stride > 1 && g.pad < g.k, "a geometry the phase planes take");
            let x = rand(n * c * h * w, 50 + i as u64);
            let f = rand(c * k * k, 60 + i as u64);
            let bias = rand(c, 70 + i as u64);
            let ep = Epilogue { scale: None, bias: Some(&bias), relu: true };
            let want = super::super::conv::plain(&g, &x, &f, ep);
            let run = |isa: Isa, threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                pool.install(|| forward_phased(isa, &g, &x, &f, ep))
            };
            let first = run(Isa::Generic, 1);
            assert!(first.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "case {i}");
            for &isa in &isas {
                for threads in [1, 3] {
                    let r = run(isa, threads);
                    assert!(
                        r.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "case {i}: {threads} threads"
                    );
                }
            }
        }
    }

    /// The padded-plane kernels give the same bits on every instruction set
    /// this CPU has and for any thread count, over batches and channel
    /// counts that are not whole task blocks.
    #[test]
    fn padded_kernels_same_bits_for_every_isa_and_thread_count() {
        let isas = isas();
        for (i, &(n, c, hw, k, pad)) in
            [(17, 37, (9, 11), 3, 1), (3, 5, (7, 6), 5, 2), (9, 17, (13, 5), 7, 3), (2, 3, (4, 4), 3, 0)]
                .iter()
                .enumerate()
        {
            let g = geom(n, c, hw, k, pad);
            let x = rand(n * c * hw.0 * hw.1, 10 + i as u64);
            let w = rand(c * k * k, 20 + i as u64);
            let dy = rand(n * c * g.oh * g.ow, 30 + i as u64);
            let bias = rand(c, 40 + i as u64);
            let run = |isa: Isa, threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                pool.install(|| {
                    (
                        forward_padded(isa, &g, &x, &w, Epilogue { scale: None, bias: Some(&bias), relu: true }),
                        backward_input_padded(isa, &g, &dy, &w),
                        backward_weight_padded(isa, &g, &x, &dy),
                    )
                })
            };
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let first = run(Isa::Generic, 1);
            for &isa in &isas {
                for threads in [1, 3] {
                    let r = run(isa, threads);
                    for (name, a, b) in [("y", &r.0, &first.0), ("dx", &r.1, &first.1), ("dw", &r.2, &first.2)] {
                        assert!(bits(a) == bits(b), "case {i}: {name} differs ({threads} threads)");
                    }
                }
            }
        }
    }
}
