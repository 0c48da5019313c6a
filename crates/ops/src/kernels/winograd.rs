//! Winograd F(2×2, 3×3) forward convolution for 3×3, stride-1, padding-1
//! convolutions (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016).
//!
//! Every 2×2 output tile is `Aᵀ [U ⊙ V] A` with `U = G g Gᵀ` (the 3×3
//! filter as a 4×4 one) and `V = Bᵀ d B` (the tile's 4×4 input patch), and
//! summed over input channels the elementwise products become sixteen
//! matrix products, one per position `ξ` of the 4×4 transform:
//! `M_ξ [c_out, tiles] = U_ξ [c_out, c_in] · V_ξ [c_in, tiles]`. That is 16
//! multiply-adds per tile and channel pair instead of the direct
//! convolution's 36, 2.25× fewer, for the price of the two transforms, which
//! are additions only and cost in proportion to `c_in + c_out` instead of
//! `c_in · c_out`. The transforms are written for AVX-512 (sixteen tiles per
//! register, deinterleaved by permutes); the products run on
//! [`super::direct::run`] (one tap). Without AVX-512 these convolutions stay
//! with the direct kernel.
//!
//! The tiles are processed in blocks sized so that the transformed inputs
//! and products of a block stay in L2: transform the block's inputs, sixteen
//! products, transform back with the epilogue (bias, ReLU) on the way out.
//! Blocks are fixed by the geometry, not the thread count, and every sum
//! runs in a fixed order, so results are deterministic. They differ from a
//! direct convolution's by float rounding in the transforms (a few units in
//! the last place of the sums; the tests bound it).

use super::conv::{ConvGeom, Epilogue};
use super::direct::{self, Tap, padded_cols};
use super::{threads, with_scratch};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the Winograd forward off (`false`: the direct kernel runs these
/// convolutions too) or back on; for benchmarks and tests.
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether [`set_enabled`] left the Winograd forward on.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Channels (in and out, per group) from which the transforms pay: with
/// fewer, the products are too short to amortise them (16 → 16 on 28×28
/// maps took as long either way).
const MIN_CHANNELS: usize = 24;

/// Input plus output channels (per group) up to which a block of 64 tiles
/// keeps its transformed inputs and products (`64·(cig + cog)` bytes per
/// tile) in a 1 MiB L2; beyond, the direct kernel is faster (SCAN's
/// ResNet-18 with 256 and 512 channels took 1.06× as long).
const MAX_CHANNELS: usize = 256;

/// Whether the Winograd forward runs `g`: a 3×3, stride-1, dilation-1,
/// padding-1 convolution (same-size output) with at least
/// [`MIN_CHANNELS`] input and output channels per group and at most
/// [`MAX_CHANNELS`] together, on a CPU with
/// AVX-512 (the direct kernel's AVX-512 form runs the products).
pub(crate) fn applies(g: &ConvGeom) -> bool {
    enabled()
        && direct::enabled()
        && direct::use_avx512()
        && g.k == 3
        && g.stride == 1
        && g.dil == 1
        && g.pad == 1
        && g.cig() >= MIN_CHANNELS
        && g.cog() >= MIN_CHANNELS
        && g.cig() + g.cog() <= MAX_CHANNELS
        && g.h > 0
        && g.w > 0
}

/// Floats added to the stride of the transformed planes (three cache
/// lines), see [`forward`].
const SKEW: usize = 48;

/// Multiply-adds per thread below which a call stays on one thread (as in
/// the direct kernel).
const PAR_MIN_MACS: usize = 48 * 48 * 256;

/// A run of tile rows `ty0..ty1` of sample `s`, laid out in a block from
/// tile column `at` on.
#[derive(Debug, Clone, Copy)]
struct Seg {
    s: usize,
    ty0: usize,
    ty1: usize,
    at: usize,
}

/// The tile grid of a geometry and its blocks.
struct Plan {
    /// Tile rows and columns per sample.
    th: usize,
    tw: usize,
    /// Tiles per block at most (the scratch is sized for it).
    per_block: usize,
    blocks: Vec<Vec<Seg>>,
}

impl Plan {
    fn new(g: &ConvGeom) -> Self {
        let (th, tw) = (g.oh.div_ceil(2), g.ow.div_ceil(2));
        // The block's transformed inputs and products, 16·(cig + cog)·T
        // floats, in about half of a 1 MiB L2; at least a few register
        // blocks of columns.
        let target = (8192 / (g.cig() + g.cog())).max(64);
        let per_sample = th * tw;
        let mut blocks = Vec::new();
        if per_sample <= target {
            let samples = (target / per_sample).max(1);
            for s0 in (0..g.n).step_by(samples) {
                let segs = (s0..(s0 + samples).min(g.n))
                    .enumerate()
                    .map(|(i, s)| Seg { s, ty0: 0, ty1: th, at: i * per_sample })
                    .collect();
                blocks.push(segs);
            }
            return Plan { th, tw, per_block: samples.min(g.n) * per_sample, blocks };
        }
        let rows = (target / tw).max(1);
        for s in 0..g.n {
            for ty0 in (0..th).step_by(rows) {
                blocks.push(vec![Seg { s, ty0, ty1: (ty0 + rows).min(th), at: 0 }]);
            }
        }
        Plan { th, tw, per_block: rows.min(th) * tw, blocks }
    }
}

/// `U [16, cog, cig]` of group `gi`: every filter `g` as `G g Gᵀ`, value
/// `ξ` of filter `(co, ci)` at `ξ·us + co·cig + ci` with `us = cog·cig +
/// SKEW` (see [`forward`]).
fn transform_weights(g: &ConvGeom, w: &[f32], gi: usize) -> Vec<f32> {
    let (cig, cog) = (g.cig(), g.cog());
    let us = cog * cig + SKEW;
    let mut u = vec![0f32; 16 * us];
    // G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
    let gmul = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    for co in 0..cog {
        for ci in 0..cig {
            let f = &w[((gi * cog + co) * cig + ci) * 9..][..9];
            // Rows first (G g: 4 × 3), then columns ((G g) Gᵀ: 4 × 4).
            let cols: [[f32; 4]; 3] = std::array::from_fn(|j| gmul(f[j], f[3 + j], f[6 + j]));
            for i in 0..4 {
                let row = gmul(cols[0][i], cols[1][i], cols[2][i]);
                for (j, &v) in row.iter().enumerate() {
                    u[(i * 4 + j) * us + co * cig + ci] = v;
                }
            }
        }
    }
    u
}

/// Tiles per vector pass of the transforms: one 16-float register per
/// transformed value (maps narrower than 32 leave lanes idle).
const L: usize = 16;

/// Lanes `lo..hi` of a 16-lane mask.
fn lanes(lo: usize, hi: usize) -> u16 {
    let hi = hi.min(16);
    if hi <= lo { 0 } else { (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16 }
}

/// Tile rows per vector pass of the transforms: maps with at most eight
/// tiles per row (16×16 and smaller) pack several rows into the sixteen
/// lanes.
fn rows_per_pass(tw: usize) -> usize {
    if tw <= L / 2 { L / tw } else { 1 }
}

/// `V_ξ [c, at + tile]` of every input channel of group `gi` for the tiles
/// of `seg`: value `ξ` of tile `(ty, tx)` at `v[ξ·xs + c·cs + at + (ty −
/// ty0)·tw + tx]`, each `Bᵀ d B` of its 4×4 input patch (zeros outside the
/// map). A pass transforms sixteen consecutive tiles (of one tile row, or of
/// [`rows_per_pass`] rows), for every channel in turn (the masks and offsets
/// of a pass are the same for all of them).
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_seg(g: &ConvGeom, x: &[f32], gi: usize, seg: Seg, tw: usize, v: &mut [f32], (xs, cs): (usize, usize)) {
    let (hw, cig) = (g.hw(), g.cig());
    let first = (seg.s * g.c_in + gi * cig) * hw;
    assert!(cig > 0 && first + cig * hw <= x.len(), "winograd: input out of range");
    let last = (cig - 1) * cs + seg.at + (seg.ty1 - seg.ty0) * tw;
    assert!(15 * xs + last <= v.len(), "winograd: transformed inputs out of room");
    let dst0 = v.as_mut_ptr();
    let per = rows_per_pass(tw);
    for ty in (seg.ty0..seg.ty1).step_by(per) {
        let groups = per.min(seg.ty1 - ty);
        for tx0 in (0..tw).step_by(L) {
            let pass = Pass { ty, tx0, n_row: L.min(tw - tx0), groups, at: seg.at + (ty - seg.ty0) * tw + tx0 };
            // SAFETY: forwarded (AVX-512F; the asserts above bound the stores).
            unsafe {
                match per {
                    1 => input_pass::<1>(g, x, first, pass, dst0, (xs, cs)),
                    2 => input_pass::<2>(g, x, first, pass, dst0, (xs, cs)),
                    3 => input_pass::<3>(g, x, first, pass, dst0, (xs, cs)),
                    4 => input_pass::<4>(g, x, first, pass, dst0, (xs, cs)),
                    5 => input_pass::<5>(g, x, first, pass, dst0, (xs, cs)),
                    8 => input_pass::<8>(g, x, first, pass, dst0, (xs, cs)),
                    _ => input_pass::<16>(g, x, first, pass, dst0, (xs, cs)),
                }
            }
        }
    }
}

/// One pass of [`input_seg`]: tiles `tx0..tx0 + n_row` of tile rows `ty ..
/// ty + groups`, laid out from column `at`.
#[derive(Debug, Clone, Copy)]
struct Pass {
    ty: usize,
    tx0: usize,
    n_row: usize,
    groups: usize,
    at: usize,
}

/// [`input_seg`]'s pass over every channel, for `P ≥ groups` tile rows per
/// pass (a constant, so the loads of every group are unrolled and the
/// registers indexed at compile time).
///
/// # Safety
/// AVX-512F must be available; `dst` must be writable at `ξ·xs + c·cs +
/// at + 0..groups·n_row` for every ξ < 16 and channel c < cig.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // k, i, j, p index several arrays at once
unsafe fn input_pass<const P: usize>(
    g: &ConvGeom,
    x: &[f32],
    first: usize,
    ps: Pass,
    dst0: *mut f32,
    (xs, cs): (usize, usize),
) {
    use std::arch::x86_64::*;
    let (h, w, hw) = (g.h, g.w, g.hw());
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    // Tile lane l = p·n_row + t (tile tx0 + t of tile row ty + p) reads input
    // columns x0 + 2t .. x0 + 2t + 3 of rows 2·(ty + p) − 1 .. 2·(ty + p) + 2:
    // lanes 2l, 2l + 1 of the register pairs (a, b) (columns from x0) and
    // (c, d) (from x0 + 2). Load (k, i), i ∈ {a, b, c, d}, takes from group
    // p the lanes whose 2l lies in the group's range and whose column lies
    // inside the row, at `at[k][i][p]` (relative to a plane's start;
    // `masks` 0: no load).
    let x0 = 2 * ps.tx0 as isize - 1;
    let mut at = [[[0isize; P]; 4]; 4];
    let mut masks = [[[0u16; P]; 4]; 4];
    let mut span = (isize::MAX, isize::MIN);
    for p in 0..ps.groups.min(P) {
        for k in 0..4 {
            let y = (2 * (ps.ty + p) + k).wrapping_sub(1);
            if y >= h {
                continue;
            }
            for i in 0..4 {
                let (half, shift) = ((16 * (i % 2)) as isize, (2 * (i / 2)) as isize);
                let base = x0 + shift + half - (2 * p * ps.n_row) as isize;
                let lo = (2 * (p * ps.n_row) as isize - half).max(-base).max(0);
                let hi = (2 * ((p + 1) * ps.n_row) as isize - half).min(w as isize - base).min(16);
                if hi > lo {
                    let off = (y * w) as isize + base;
                    at[k][i][p] = off;
                    masks[k][i][p] = lanes(lo as usize, hi as usize);
                    span = (span.0.min(off), span.1.max(off + 16));
                }
            }
        }
    }
    let keep = lanes(0, ps.groups * ps.n_row);
    let cig = g.cig();
    for c in 0..cig {
        // Plain loads with the lanes outside the row zeroed after the load
        // where every read stays inside x (masked loads cost twice as
        // much); masked loads at the ends of x.
        let at_plane = (first + c * hw) as isize;
        let inside = at_plane + span.0 >= 0 && at_plane + span.1 <= x.len() as isize;
        // SAFETY (block): loads read plane c < cig only in lanes whose
        // column lies in 0..w of an existing row (the masks), or whole
        // registers inside x (`inside`); the stores are the caller's.
        unsafe {
            let plane = x.as_ptr().wrapping_offset(at_plane);
            // Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]
            // on the columns of the four input rows: cv[k][j].
            let mut cv = [[_mm512_setzero_ps(); 4]; 4];
            for (k, ck) in cv.iter_mut().enumerate() {
                let mut r4 = [_mm512_setzero_ps(); 4];
                for (i, ri) in r4.iter_mut().enumerate() {
                    for p in 0..P {
                        let m = masks[k][i][p];
                        if m == 0 {
                            continue;
                        }
                        let ptr = plane.wrapping_offset(at[k][i][p]);
                        *ri = if inside {
                            _mm512_mask_mov_ps(*ri, m, _mm512_loadu_ps(ptr))
                        } else {
                            _mm512_mask_loadu_ps(*ri, m, ptr)
                        };
                    }
                }
                let [a, b, c2, d] = r4;
                let a0 = _mm512_permutex2var_ps(a, even, b);
                let a1 = _mm512_permutex2var_ps(a, odd, b);
                let a2 = _mm512_permutex2var_ps(c2, even, d);
                let a3 = _mm512_permutex2var_ps(c2, odd, d);
                *ck = [_mm512_sub_ps(a0, a2), _mm512_add_ps(a1, a2), _mm512_sub_ps(a2, a1), _mm512_sub_ps(a1, a3)];
            }
            // Then on the rows.
            let dst = dst0.add(c * cs + ps.at);
            for j in 0..4 {
                let o = [
                    _mm512_sub_ps(cv[0][j], cv[2][j]),
                    _mm512_add_ps(cv[1][j], cv[2][j]),
                    _mm512_sub_ps(cv[2][j], cv[1][j]),
                    _mm512_sub_ps(cv[1][j], cv[3][j]),
                ];
                for (i, &o) in o.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.add((i * 4 + j) * xs), keep, o);
                }
            }
        }
    }
}

/// One output channel's rows for the tiles of a segment: `Aᵀ m A` of its
/// products `m[ξ·xs + ty·tw + tx]` for `nty` tile rows, times `scale`, plus
/// `bias`, then a ReLU if asked, cropped into the `rows` rows at `out` (the plane's rows
/// from the segment's first, `ow` wide); sixteen consecutive tiles per pass,
/// as in [`input_seg`].
///
/// # Safety
/// AVX-512F must be available; `out` must be writable for `rows · ow`
/// floats (only written, never read: it may be uninitialised).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_rows(
    m: &[f32],
    xs: usize,
    (tw, nty, ow): (usize, usize, usize),
    (scale, bias, relu): (f32, f32, bool),
    (out, rows): (*mut f32, usize),
) {
    use std::arch::x86_64::*;
    assert!(nty > 0 && 15 * xs + nty * tw <= m.len(), "winograd: products out of range");
    assert!(rows <= 2 * nty && 2 * tw >= ow, "winograd: output rows and tiles disagree");
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let (sv, bv, zero) = (_mm512_set1_ps(scale), _mm512_set1_ps(bias), _mm512_setzero_ps());
    let per = rows_per_pass(tw);
    for ty in (0..nty).step_by(per) {
        let groups = per.min(nty - ty);
        for tx0 in (0..tw).step_by(L) {
            let n_row = L.min(tw - tx0);
            let at = ty * tw + tx0;
            // SAFETY (block): n lanes read at at + ξ·xs (the first assert);
            // the stores write columns x0..x0 + cnt ≤ ow of rows oy < rows
            // of out.
            unsafe {
                let keep = lanes(0, groups * n_row);
                let mm: [__m512; 16] =
                    std::array::from_fn(|k| _mm512_maskz_loadu_ps(keep, m.as_ptr().add(at + k * xs)));
                // Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]] on the rows, then on the columns.
                let p: [[__m512; 4]; 2] = [
                    std::array::from_fn(|j| _mm512_add_ps(_mm512_add_ps(mm[j], mm[4 + j]), mm[8 + j])),
                    std::array::from_fn(|j| _mm512_sub_ps(_mm512_sub_ps(mm[4 + j], mm[8 + j]), mm[12 + j])),
                ];
                for (a, pa) in p.iter().enumerate() {
                    let e = _mm512_add_ps(_mm512_add_ps(pa[0], pa[1]), pa[2]);
                    let o = _mm512_sub_ps(_mm512_sub_ps(pa[1], pa[2]), pa[3]);
                    // As `Epilogue::copy`: times the scale, plus the bias
                    // (a multiply and an add, not fused).
                    let mut e = _mm512_add_ps(_mm512_mul_ps(e, sv), bv);
                    let mut o = _mm512_add_ps(_mm512_mul_ps(o, sv), bv);
                    if relu {
                        e = _mm512_max_ps(e, zero);
                        o = _mm512_max_ps(o, zero);
                    }
                    // Output columns of tile lane l at lanes 2l, 2l + 1 of (lo, hi).
                    let (vlo, vhi) = (_mm512_permutex2var_ps(e, lo, o), _mm512_permutex2var_ps(e, hi, o));
                    for gp in 0..groups {
                        let oy = 2 * (ty + gp) + a;
                        if oy >= rows {
                            break;
                        }
                        let x0 = 2 * tx0;
                        let (start, cnt) = (2 * gp * n_row, (2 * n_row).min(ow - x0));
                        let end = start + cnt;
                        // Lane R of (lo, hi) goes to column x0 + R − start.
                        let dst = out.add(oy * ow + x0).wrapping_sub(start);
                        if start < 16 {
                            _mm512_mask_storeu_ps(dst, lanes(start, end.min(16)), vlo);
                        }
                        if end > 16 {
                            _mm512_mask_storeu_ps(dst.wrapping_add(16), lanes(start.max(16) - 16, end - 16), vhi);
                        }
                    }
                }
            }
        }
    }
}

/// The geometry whose [`forward`] on the output gradient of `g` (3×3,
/// stride 1, padding 1) is its input gradient: input and output swapped.
pub(crate) fn transposed_geom(g: &ConvGeom) -> ConvGeom {
    ConvGeom { c_in: g.c_out, h: g.oh, w: g.ow, c_out: g.c_in, oh: g.h, ow: g.w, ..*g }
}

/// The weights of [`transposed_geom`]: every filter mirrored, input and
/// output channels swapped, group by group.
pub(crate) fn transposed_weights(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (cig, cog) = (g.cig(), g.cog());
    let mut wt = vec![0f32; w.len()];
    for gi in 0..g.groups {
        for co in 0..cog {
            for ci in 0..cig {
                let f = &w[((gi * cog + co) * cig + ci) * 9..][..9];
                let ft = &mut wt[((gi * cig + ci) * cog + co) * 9..][..9];
                for (k, v) in ft.iter_mut().enumerate() {
                    *v = f[8 - k];
                }
            }
        }
    }
    wt
}

/// The output pointer, shared by the threads, which write disjoint tiles.
struct OutPtr(*mut f32);
// SAFETY: every block writes the output rows of its own tiles only.
unsafe impl Sync for OutPtr {}

/// `y [n, c_out, oh, ow]` of a convolution that [`applies`], each value
/// passed through `ep`.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (cig, cog) = (g.cig(), g.cog());
    let plan = Plan::new(g);
    let tw = plan.tw;
    let tp = padded_cols(plan.per_block);
    // Strides of the sixteen transformed planes, skewed off multiples of
    // 4 KiB: at 16 KiB apart (64 channels of 64 tiles) every value of a
    // tile fell into the same L1 set, sixteen lines for twelve ways.
    let (vs, ms) = (cig * tp + SKEW, cog * tp + SKEW);
    let len = g.n * g.c_out * g.ohw();
    let mut y = Vec::with_capacity(len);
    let out = OutPtr(y.as_mut_ptr());
    let tiles = g.n * plan.th * tw;
    let par = threads() > 1 && plan.blocks.len() > 1 && 16 * cig * cog * tiles >= PAR_MIN_MACS * threads();
    for gi in 0..g.groups {
        let u = transform_weights(g, w, gi);
        let taps = [Tap::new(0, 0)];
        let block = |segs: &Vec<Seg>| {
            let out = &out;
            let cols = segs.iter().map(|s| s.at + (s.ty1 - s.ty0) * tw).max().unwrap_or(0);
            with_scratch(16 * vs, 16 * ms, |v, m| {
                for &seg in segs {
                    // SAFETY: `applies` checked AVX-512F; v holds 16·cig·tp values
                    // and the segments' tiles lie below tp.
                    unsafe { input_seg(g, x, gi, seg, tw, v, (vs, tp)) };
                }
                for xi in 0..16 {
                    let (uxi, vxi) = (&u[xi * (cog * cig + SKEW)..][..cog * cig], &v[xi * vs..][..cig * tp]);
                    let mxi = &mut m[xi * ms..][..cog * tp];
                    direct::run(cog, cols, cig, &taps, uxi, (cig, 1), vxi, tp, mxi, tp, false, None, false);
                }
                for &seg in segs {
                    let (r0, r1) = (2 * seg.ty0, (2 * seg.ty1).min(g.oh));
                    for co in 0..cog {
                        let c = gi * cog + co;
                        let (scale, bias) = ep.channel(c);
                        let dims = (tw, seg.ty1 - seg.ty0, g.ow);
                        // SAFETY: AVX-512F (as above); the products lie in m;
                        // rows r0..r1 of plane (s, c) lie inside the output
                        // (`out.0` has its capacity, not yet initialised, so
                        // written through the pointer only), and the blocks'
                        // tiles are disjoint: no other thread writes them.
                        unsafe {
                            let rows = out.0.add(((seg.s * g.c_out + c) * g.oh + r0) * g.ow);
                            output_rows(&m[co * tp + seg.at..], ms, dims, (scale, bias, ep.relu), (rows, r1 - r0));
                        }
                    }
                }
            })
        };
        if par {
            plan.blocks.par_iter().for_each(block);
        } else {
            plan.blocks.iter().for_each(block);
        }
    }
    // SAFETY: the blocks' segments cover tile rows 0..th of every sample,
    // and each writes whole output rows 2·ty0..min(2·ty1, oh) of every
    // channel of its group, for every group: every value is written.
    unsafe { y.set_len(len) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs in [−1, 1) and filter values in [−0.5, 0.5), fixed patterns.
    fn values(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect()
    }
    fn filters(len: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 104729) % 17) as f32 / 16.0 - 0.5).collect()
    }

    fn geom(n: usize, c_in: usize, c_out: usize, h: usize, w: usize, groups: usize) -> ConvGeom {
        ConvGeom { n, c_in, h, w, c_out, k: 3, stride: 1, pad: 1, dil: 1, groups, oh: h, ow: w }
    }

    /// Against the plain sums: even and odd map sizes (partial tiles),
    /// blocks of whole samples and of tile rows, groups, scale, bias and ReLU, one
    /// and several threads, the AVX-512 and AVX2 product kernels.
    #[test]
    fn matches_plain_convolution() {
        if !(direct::enabled() && direct::avx512_available()) {
            return;
        }
        for g in [
            geom(3, 16, 16, 8, 8, 1),
            geom(2, 16, 24, 7, 5, 1),
            geom(5, 32, 16, 3, 9, 1),
            geom(1, 16, 16, 1, 1, 1),
            geom(2, 16, 20, 70, 33, 1),
            geom(2, 32, 32, 6, 6, 2),
            geom(9, 64, 64, 8, 8, 1),
        ] {
            let x = values(g.n * g.c_in * g.hw());
            let w = filters(g.c_out * g.kcol());
            let bias: Vec<f32> = (0..g.c_out).map(|i| i as f32 / 7.0 - 1.0).collect();
            let scale: Vec<f32> = (0..g.c_out).map(|i| 0.5 + (i % 5) as f32 / 4.0).collect();
            for (sc, b, relu) in [
                (None, None, false),
                (None, Some(&bias[..]), true),
                (None, Some(&bias[..]), false),
                (Some(&scale[..]), Some(&bias[..]), true),
                (Some(&scale[..]), None, false),
            ] {
                let want = super::super::conv::plain(&g, &x, &w, Epilogue { scale: sc, bias: b, relu });
                for avx512 in [true, false] {
                    direct::set_avx512(avx512);
                    let got = forward(&g, &x, &w, Epilogue { scale: sc, bias: b, relu });
                    direct::set_avx512(true);
                    let scale = (g.cig() * 9) as f32;
                    for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                        assert!((a - e).abs() <= 2e-6 * scale * (1.0 + e.abs()), "{g:?} [{i}]: {a} vs {e}");
                    }
                }
            }
        }
    }

    /// The same bits on one thread and several (blocks do not depend on the
    /// thread count).
    #[test]
    fn same_bits_for_every_thread_count() {
        if !(direct::enabled() && direct::avx512_available()) {
            return;
        }
        let g = geom(16, 32, 48, 12, 12, 1);
        let x = values(g.n * g.c_in * g.hw());
        let w = filters(g.c_out * g.kcol());
        let run = |t: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a thread pool");
            pool.install(|| forward(&g, &x, &w, Epilogue::NONE))
        };
        let one = run(1);
        for t in [2, 3] {
            assert!(one.iter().zip(&run(t)).all(|(a, b)| a.to_bits() == b.to_bits()), "{t} threads");
        }
    }

    /// The input gradient through [`transposed_geom`] against the plain sums
    /// `dx[ci, y, x] = Σ dy[co, y − ki + 1, x − kj + 1] · w[co, ci, ki, kj]`,
    /// with groups.
    #[test]
    fn transposed_forward_is_the_input_gradient() {
        if !(direct::enabled() && direct::avx512_available()) {
            return;
        }
        for g in [geom(3, 32, 24, 7, 9, 1), geom(2, 48, 64, 8, 8, 2)] {
            let dy = values(g.n * g.c_out * g.ohw());
            let w = filters(g.c_out * g.kcol());
            let (t, wt) = (transposed_geom(&g), transposed_weights(&g, &w));
            let got = forward(&t, &dy, &wt, Epilogue::NONE);
            let (cig, cog) = (g.cig(), g.cog());
            for s in 0..g.n {
                for ci in 0..g.c_in {
                    let gi = ci / cig;
                    for y in 0..g.h {
                        for x in 0..g.w {
                            let mut want = 0f64;
                            for co in 0..cog {
                                for ki in 0..3 {
                                    for kj in 0..3 {
                                        let (oy, ox) = ((y + 1).wrapping_sub(ki), (x + 1).wrapping_sub(kj));
                                        if oy < g.oh && ox < g.ow {
                                            let d = dy[((s * g.c_out + gi * cog + co) * g.oh + oy) * g.ow + ox] as f64;
                                            want +=
                                                d * w[(((gi * cog + co) * cig + ci % cig) * 3 + ki) * 3 + kj] as f64;
                                        }
                                    }
                                }
                            }
                            let a = got[((s * g.c_in + ci) * g.h + y) * g.w + x];
                            assert!(
                                (a as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                                "{g:?} ({s}, {ci}, {y}, {x}): {a} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
