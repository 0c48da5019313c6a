//! Register-blocked micro-kernels for the shifted layout of
//! [`super::shift`] (x86-64 with AVX2 and FMA, detected at run time).
//!
//! [`run`] computes `out[r, q] = Σ_t Σ_c w(r, c, t) · inp[c·rs + off_t + q]`:
//! on the padded planes every kernel tap reads a shifted, contiguous row, so
//! a block of [`MR`] × [`NR`] outputs is accumulated in twelve vector
//! registers over all taps and input channels and stored once, with the
//! weights read in place. A GEMM library run per tap instead packs the
//! shifted input once per tap and reads and writes the output once per tap;
//! with the 16–64 channels of small feature maps that traffic costs as much
//! as the arithmetic. The forward pass and the input gradient (a forward pass
//! of the output gradient with mirrored taps) use it; [`run_weight_grad`]
//! computes the weight gradient, dot products over the long column axis.
//!
//! The sum orders (taps, then channels; columns in fixed passes) do not
//! depend on the thread count, so results are deterministic.

use std::sync::atomic::{AtomicBool, Ordering};

/// Output rows per register block.
pub(crate) const MR: usize = 6;
/// Output columns per register block (`NV` 8-float vectors).
pub(crate) const NR: usize = 8 * NV;
const NV: usize = 2;
/// Columns per cache tile: the input rows of a tile stay in L2 while every
/// row block of the output passes over them.
const TILE: usize = 24 * NR;
/// Input channels per pass: with 16 channels the input rows one register
/// block reads (three kernel rows, two cache lines each) and its weights fit
/// in L1 together; more channels are summed in several passes over the
/// output.
const KC: usize = 16;
/// Multiply-adds per thread below which a call stays on one thread: waking
/// the rayon workers costs more than such small sums (batch-1 inference runs
/// many of them). The gemm crate's default threading threshold.
const PAR_MIN_MACS: usize = 48 * 48 * 256;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the kernel off or on (off: callers use their GEMM path); for
/// benchmarks and tests.
pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether callers should use the kernel: it is [`available`] and enabled.
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed) && available()
}

/// Whether this CPU runs the kernel (AVX2 and FMA).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Columns rounded up to whole register blocks: the kernel reads and writes
/// this many per row, so input rows need this much room past `off_t` and
/// output rows at least this stride.
pub(crate) fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(NR) * NR
}

/// One kernel tap for [`run`]: where it reads in an input row, and where its
/// weights start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tap {
    /// Offset of the tap's shifted view in every input row.
    pub inp: usize,
    /// Offset of the tap's weight `w(0, 0)` in the weight slice.
    pub w: usize,
    /// Which of the [`ColMasks`] this tap's reads go through (ignored
    /// without masks).
    pub mask: usize,
}

impl Tap {
    /// A tap whose reads are used as they are.
    pub(crate) fn new(inp: usize, w: usize) -> Self {
        Tap { inp, w, mask: 0 }
    }
}

/// Column masks for [`run`]: which input reads count, for layouts where a
/// tap's shifted view runs past a row's end into the next row (instead of
/// into padding zeros). Column `q` of mask `id` is valid iff
/// `valid(id, q mod period)`; the kernel keeps invalid reads out of the sums
/// by clearing their bits, so what lies there (even NaN) never matters.
pub(crate) struct ColMasks {
    period: usize,
    ids: usize,
    /// `bits[(start·ids + id)·NR + i]` for the block starting at column
    /// `start (mod period)`.
    bits: Vec<u32>,
}

impl ColMasks {
    pub(crate) fn new(period: usize, ids: usize, valid: impl Fn(usize, usize) -> bool) -> Self {
        let period = period.max(1);
        let mut bits = Vec::with_capacity(period * ids * NR);
        for start in 0..period {
            for id in 0..ids {
                bits.extend((0..NR).map(|i| if valid(id, (start + i) % period) { u32::MAX } else { 0 }));
            }
        }
        ColMasks { period, ids, bits }
    }
}

/// `out[r·out_rs + q] (+)= Σ_t Σ_c w[r·w_rs + c·w_cs + taps[t].w] ·
/// inp[c·in_rs + taps[t].inp + q]` for `r < m`, `q < cols`. The weights are
/// read where they are (a convolution's `[c_out, c_in, k, k]` tensor, or its
/// transpose through the strides), so nothing is packed per call: at batch 1
/// a network has about as many weights as multiply-adds per weight. Columns
/// up to [`padded_cols`]`(cols)` are computed (the extra ones are garbage for
/// the caller to ignore), so `inp` must extend that far and `out_rs` must be
/// at least that. With `masks`, tap `t`'s read of column `q` counts only
/// where its mask `taps[t].mask` is valid at `q`. `parallel` splits the
/// columns over the rayon threads when the call is big enough.
///
/// # Panics
/// If the kernel is not [`available`], or a slice is too short for the
/// reads and writes above.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    m: usize,
    cols: usize,
    nc: usize,
    taps: &[Tap],
    w: &[f32],
    (w_rs, w_cs): (usize, usize),
    inp: &[f32],
    in_rs: usize,
    out: &mut [f32],
    out_rs: usize,
    accumulate: bool,
    masks: Option<&ColMasks>,
    parallel: bool,
) {
    assert!(available(), "direct kernel: needs AVX2 and FMA");
    if m == 0 || cols == 0 {
        return;
    }
    if let Some(mk) = masks {
        assert!(taps.iter().all(|t| t.mask < mk.ids), "direct kernel: tap mask out of range");
    }
    let pc = padded_cols(cols);
    assert!(out_rs >= pc && out.len() >= (m - 1) * out_rs + pc, "direct kernel: output too small");
    if nc > 0 && !taps.is_empty() {
        let max_in = taps.iter().map(|t| t.inp).max().unwrap_or(0);
        let max_w = taps.iter().map(|t| t.w).max().unwrap_or(0);
        assert!(inp.len() >= (nc - 1) * in_rs + max_in + pc, "direct kernel: input too small");
        assert!(w.len() > (m - 1) * w_rs + (nc - 1) * w_cs + max_w, "direct kernel: weights too small");
    }
    let (pieces, threads) = (pc / NR, super::threads());
    let out_ptr = SendPtr(out.as_mut_ptr());
    let wide = use_avx512();
    // One tap reads a quarter of the input rows per channel that nine do:
    // four times the channels per pass still fit in L1.
    let kc_max = if taps.len() == 1 { 4 * KC } else { KC };
    let job = |lo: usize, hi: usize| {
        let out_ptr = &out_ptr;
        for t0 in (lo..hi).step_by(TILE) {
            let t1 = (t0 + TILE).min(hi);
            for c0 in (0..nc).step_by(kc_max) {
                let kc = kc_max.min(nc - c0);
                for r0 in (0..m).step_by(MR) {
                    let rows = MR.min(m - r0);
                    let mut q = t0;
                    while q < t1 {
                        let mp = |q: usize| {
                            masks.map_or(std::ptr::null(), |mk| mk.bits[(q % mk.period) * mk.ids * NR..].as_ptr())
                        };
                        // PAIR blocks side by side where the AVX-512 form runs
                        // and they fit: PAIR times the accumulators in flight.
                        let pair = wide && q + PAIR * NR <= t1;
                        // SAFETY: the asserts above bound every read of `inp`
                        // (channel < nc, offset ≤ the largest, column < pc),
                        // of `w` (row < m, channel < nc, offset ≤ the
                        // largest) and every write of `out` (row < m,
                        // column < pc ≤ out_rs; side-by-side blocks end at
                        // q + PAIR·NR ≤ t1 ≤ pc); threads write disjoint
                        // column ranges; AVX2 and FMA (and for the
                        // AVX-512 form AVX-512F) are present.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            let w = (w.as_ptr().add(r0 * w_rs + c0 * w_cs), w_rs, w_cs);
                            let inp = (inp.as_ptr().add(c0 * in_rs + q), in_rs);
                            let out = (out_ptr.0.add(r0 * out_rs + q), out_rs);
                            let acc = accumulate || c0 > 0;
                            if pair {
                                let masks = std::array::from_fn(|b| mp(q + b * NR));
                                block_avx512_wide_rows::<PAIR>(rows, taps, kc, w, inp, out, acc, masks);
                            } else if wide {
                                block_avx512_wide_rows::<1>(rows, taps, kc, w, inp, out, acc, [mp(q)]);
                            } else {
                                block_avx2_rows(rows, taps, kc, w, inp, out, acc, mp(q));
                            }
                        }
                        q += if pair { PAIR * NR } else { NR };
                    }
                }
            }
        }
    };
    let split = parallel && threads > 1 && pieces >= 2 * threads && m * pc * nc * taps.len() >= PAR_MIN_MACS * threads;
    split_range(pc, NR, if split { threads } else { 1 }, job);
}

/// Runs `job(lo, hi)` on `parts` contiguous ranges of `0..len` (bounds
/// multiples of `align`), in parallel when there are several.
fn split_range(len: usize, align: usize, parts: usize, job: impl Fn(usize, usize) + Sync) {
    if parts <= 1 {
        return job(0, len);
    }
    let per = len.div_ceil(parts).div_ceil(align) * align;
    rayon::scope(|s| {
        for i in 0..parts {
            let (lo, hi) = (i * per, ((i + 1) * per).min(len));
            if lo < hi {
                let job = &job;
                s.spawn(move |_| job(lo, hi));
            }
        }
    });
}

/// Output rows and input rows per register block of [`run_weight_grad`].
const WR: usize = 6;
const WC: usize = 2;
/// Columns per pass of [`run_weight_grad`]: the output-gradient rows of one
/// pass stay in L1/L2 while every input row is dotted with them.
const WQ: usize = 512;

/// The weight gradient of the same layout, a sum over the long column axis:
/// `dw[r·nc·T + c·T + t] = Σ_{q<cols} a[r·a_rs + q] · b[c·b_rs + offs[t] + q]`
/// for `r < m`, `c < nc`, `t < T = offs.len()`. Blocks of [`WR`] rows and
/// [`WC`] (channel, tap) pairs are summed in vector registers, per pass of
/// [`WQ`] columns, in a fixed order; `parallel` gives each rayon thread its
/// own pairs.
///
/// # Panics
/// If the kernel is not [`available`] or a slice is too short.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_weight_grad(
    m: usize,
    nc: usize,
    offs: &[usize],
    cols: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
    dw: &mut [f32],
    parallel: bool,
) {
    assert!(available(), "direct kernel: needs AVX2 and FMA");
    let taps = offs.len();
    let pairs = nc * taps;
    assert_eq!(dw.len(), m * pairs, "direct kernel: weight gradient size");
    dw.fill(0.0);
    if m == 0 || pairs == 0 || cols == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * a_rs + cols, "direct kernel: output gradient too small");
    let max_off = offs.iter().copied().max().unwrap_or(0);
    assert!(b.len() >= (nc - 1) * b_rs + max_off + cols, "direct kernel: input too small");
    let dw_ptr = SendPtr(dw.as_mut_ptr());
    let threads = super::threads();
    let wide = use_avx512();
    let job = |p_lo: usize, p_hi: usize| {
        let dw_ptr = &dw_ptr;
        let mut starts = [std::ptr::null::<f32>(); WC];
        for q0 in (0..cols).step_by(WQ) {
            let len = WQ.min(cols - q0);
            for r0 in (0..m).step_by(WR) {
                let rows = WR.min(m - r0);
                for p0 in (p_lo..p_hi).step_by(WC) {
                    let np = WC.min(p_hi - p0);
                    for (i, st) in starts.iter_mut().enumerate() {
                        // A missing second pair repeats the first (its sums are dropped).
                        let pair = p0 + i.min(np - 1);
                        let (c, t) = (pair / taps, pair % taps);
                        *st = b[c * b_rs + offs[t] + q0..].as_ptr();
                    }
                    // SAFETY: the asserts above bound the reads (`len`
                    // columns from q0 of rows < m of `a`, and of each pair's
                    // shifted row of `b`) and the writes (rows < m, pairs <
                    // nc·T of `dw`); threads own disjoint pairs; AVX2 and FMA
                    // are present.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let (a0, d0) = (a.as_ptr().add(r0 * a_rs + q0), dw_ptr.0.add(r0 * pairs + p0));
                        macro_rules! arms {
                            ($dot:ident) => {
                                match rows {
                                    6 => $dot::<6>(a0, a_rs, starts, len, d0, pairs, np),
                                    5 => $dot::<5>(a0, a_rs, starts, len, d0, pairs, np),
                                    4 => $dot::<4>(a0, a_rs, starts, len, d0, pairs, np),
                                    3 => $dot::<3>(a0, a_rs, starts, len, d0, pairs, np),
                                    2 => $dot::<2>(a0, a_rs, starts, len, d0, pairs, np),
                                    _ => $dot::<1>(a0, a_rs, starts, len, d0, pairs, np),
                                }
                            };
                        }
                        if wide { arms!(dot_add_avx512) } else { arms!(dot_add_avx2) }
                    }
                }
            }
        }
    };
    let split = parallel && threads > 1 && pairs >= 2 * WC * threads && m * pairs * cols >= PAR_MIN_MACS * threads;
    split_range(pairs, WC, if split { threads } else { 1 }, job);
}

/// Dot products of `R ≤ WR` rows of `a` (stride `a_rs`) with the [`WC`]
/// rows starting at `b`, over `len` columns (vector partial sums, a
/// horizontal sum, then the scalar tail), added to the first `np` columns of
/// `R` rows of `dw` (stride `dw_rs`).
///
/// # Safety
/// AVX2 and FMA must be available; the `R` rows of `a` and the rows of `b`
/// must be readable for `len` floats, and `dw` writable at `r·dw_rs + i` for
/// `r < R`, `i < np ≤ WC`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_add_avx2<const R: usize>(
    a: *const f32,
    a_rs: usize,
    b: [*const f32; WC],
    len: usize,
    dw: *mut f32,
    dw_rs: usize,
    np: usize,
) {
    use std::arch::x86_64::*;
    const _: () = assert!(WC == 2 && WR == 6, "two input rows per block; one dispatch arm per row count");
    // SAFETY (whole body): the caller guarantees the ranges.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); WC]; R];
        let full = len / 8 * 8;
        let mut q = 0;
        while q < full {
            let bv = [_mm256_loadu_ps(b[0].add(q)), _mm256_loadu_ps(b[1].add(q))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_loadu_ps(a.add(r * a_rs + q));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm256_fmadd_ps(av, bv, *acc);
                }
            }
            q += 8;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, &v) in acc.iter().enumerate().take(np) {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                let mut sum = _mm_cvtss_f32(s);
                for q in full..len {
                    sum += *a.add(r * a_rs + q) * *b[i].add(q);
                }
                *dw.add(r * dw_rs + i) += sum;
            }
        }
    }
}

/// [`dot_add_avx2`] in 16-float registers, the last partial vector read
/// through a mask: half the instructions per column. The partial sums run
/// over 16 lanes instead of 8, so the results differ from the AVX2 form's
/// in the last bits (deterministic on a given CPU kind, like every sum
/// here).
///
/// # Safety
/// As for [`dot_add_avx2`], with AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_add_avx512<const R: usize>(
    a: *const f32,
    a_rs: usize,
    b: [*const f32; WC],
    len: usize,
    dw: *mut f32,
    dw_rs: usize,
    np: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees the ranges; masked loads
    // read no lane past `len`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); WC]; R];
        let mut q = 0;
        while q < len {
            let left = len - q;
            let k: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
            let bv = [_mm512_maskz_loadu_ps(k, b[0].add(q)), _mm512_maskz_loadu_ps(k, b[1].add(q))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_maskz_loadu_ps(k, a.add(r * a_rs + q));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
            q += 16;
        }
        for (r, acc) in acc.iter().enumerate() {
            for (i, &v) in acc.iter().enumerate().take(np) {
                *dw.add(r * dw_rs + i) += _mm512_reduce_add_ps(v);
            }
        }
    }
}

/// The output pointer, shared by the threads of [`run`], which write
/// disjoint column ranges.
struct SendPtr(*mut f32);
// SAFETY: see `run`: each thread writes its own columns.
unsafe impl Sync for SendPtr {}

/// [`block_avx2`] for `rows` (1 to [`MR`]) rows, so short blocks do no work
/// for rows that do not exist.
///
/// # Safety
/// As for [`block_avx2`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx2_rows(
    rows: usize,
    taps: &[Tap],
    nc: usize,
    w: (*const f32, usize, usize),
    inp: (*const f32, usize),
    out: (*mut f32, usize),
    accumulate: bool,
    masks: *const u32,
) {
    const _: () = assert!(MR == 6, "one arm per row count");
    macro_rules! arms {
        ($block:ident, $masked:literal) => {
            match rows {
                6 => $block::<6, $masked>(taps, nc, w, inp, out, accumulate, masks),
                5 => $block::<5, $masked>(taps, nc, w, inp, out, accumulate, masks),
                4 => $block::<4, $masked>(taps, nc, w, inp, out, accumulate, masks),
                3 => $block::<3, $masked>(taps, nc, w, inp, out, accumulate, masks),
                2 => $block::<2, $masked>(taps, nc, w, inp, out, accumulate, masks),
                _ => $block::<1, $masked>(taps, nc, w, inp, out, accumulate, masks),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { if masks.is_null() { arms!(block_avx2, false) } else { arms!(block_avx2, true) } }
}

static AVX512_ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the AVX-512 kernel off or on (off: the AVX2 one runs on AVX-512
/// CPUs too); for benchmarks and tests of both paths.
pub(crate) fn set_avx512(on: bool) {
    AVX512_ENABLED.store(on, Ordering::Relaxed);
}

/// Whether this CPU has AVX-512F (and FMA).
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| available() && is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the forward kernel runs its AVX-512 form.
pub(crate) fn use_avx512() -> bool {
    AVX512_ENABLED.load(Ordering::Relaxed) && avx512_available()
}

/// [`block_avx512_wide`] for `rows` (1 to [`MR`]) rows.
///
/// # Safety
/// As for [`block_avx512_wide`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512_wide_rows<const B: usize>(
    rows: usize,
    taps: &[Tap],
    nc: usize,
    w: (*const f32, usize, usize),
    inp: (*const f32, usize),
    out: (*mut f32, usize),
    accumulate: bool,
    masks: [*const u32; B],
) {
    const _: () = assert!(MR == 6, "one arm per row count");
    macro_rules! arms {
        ($masked:literal) => {
            match rows {
                6 => block_avx512_wide::<6, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
                5 => block_avx512_wide::<5, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
                4 => block_avx512_wide::<4, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
                3 => block_avx512_wide::<3, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
                2 => block_avx512_wide::<2, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
                _ => block_avx512_wide::<1, B, $masked>(taps, nc, w, inp, out, accumulate, masks),
            }
        };
    }
    // SAFETY: forwarded from the caller.
    unsafe { if masks[0].is_null() { arms!(false) } else { arms!(true) } }
}

/// Blocks side by side in the AVX-512 form of the kernel: 24 accumulators
/// of the 32 registers. Against the AVX2 form on the AVX-512 EPYC, 3x3
/// convolution forwards took 0.67–0.83x the time with one block, 0.55–0.58x
/// with two and 0.53–0.55x with four (`xtask bench-ab --toggle avx512`).
const PAIR: usize = 4;

/// The AVX-512 form of [`block_avx2`]: `B` blocks side by side (columns
/// `b·NR..(b + 1)·NR`, each with its own masks), one 16-float register per
/// output row and block, so `R·B` multiply-add chains are in flight (with
/// one block the FMA latency, not the throughput, bounded the kernel), and
/// each input vector loaded serves `R` rows, each weight broadcast `B`
/// blocks. Each output is the AVX2 form's multiply-adds in the same order,
/// so the same bits.
///
/// # Safety
/// As for [`block_avx2`], for `B·NR` columns (inputs, outputs, and masks at
/// every pointer), with AVX-512F available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512_wide<const R: usize, const B: usize, const MASKED: bool>(
    taps: &[Tap],
    nc: usize,
    (w, w_rs, w_cs): (*const f32, usize, usize),
    (inp, rs): (*const f32, usize),
    (out, ors): (*mut f32, usize),
    accumulate: bool,
    masks: [*const u32; B],
) {
    use std::arch::x86_64::*;
    const _: () = assert!(NR == 16, "one 16-float register per row and block");
    // SAFETY (whole body): the caller guarantees the pointer ranges above.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        for tap in taps {
            let mut x = inp.add(tap.inp);
            let mut wc = w.add(tap.w);
            let mut keep = [_mm512_set1_epi32(-1); B];
            if MASKED {
                for (k, m) in keep.iter_mut().zip(masks) {
                    *k = _mm512_loadu_si512(m.add(tap.mask * NR) as *const __m512i);
                }
            }
            for _ in 0..nc {
                let mut xv = [_mm512_setzero_ps(); B];
                for (b, v) in xv.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(x.add(b * NR));
                    if MASKED {
                        *v = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(*v), keep[b]));
                    }
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wc.add(r * w_rs));
                    for (a, &v) in a.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, v, *a);
                    }
                }
                wc = wc.add(w_cs);
                x = x.add(rs);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (h, &v) in a.iter().enumerate() {
                let o = out.add(r * ors + h * NR);
                let v = if accumulate { _mm512_add_ps(v, _mm512_loadu_ps(o)) } else { v };
                _mm512_storeu_ps(o, v);
            }
        }
    }
}

/// One `R × NR` block (`R ≤ MR`): `R` output rows at `out = (pointer, row
/// stride)`, reading `nc` channels of `inp = (pointer, channel stride)` at
/// each tap's offset, with weight `(r, c)` of a tap at `w.0 + tap.w + r·w.1
/// + c·w.2`.
///
/// # Safety
/// AVX2 and FMA must be available; `inp` must be readable at
/// `c·stride + tap.inp + 0..NR` and the weights at the offsets above for
/// every `c < nc`, `r < R` and tap, and `out` writable at `r·stride + 0..NR`;
/// with `MASKED`, `masks` must be readable at `tap.mask·NR + 0..NR` for
/// every tap (the block's masks, see [`ColMasks`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<const R: usize, const MASKED: bool>(
    taps: &[Tap],
    nc: usize,
    (w, w_rs, w_cs): (*const f32, usize, usize),
    (inp, rs): (*const f32, usize),
    (out, ors): (*mut f32, usize),
    accumulate: bool,
    masks: *const u32,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees the pointer ranges above.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        for tap in taps {
            let mut x = inp.add(tap.inp);
            let mut wc = w.add(tap.w);
            let mut keep = [_mm256_setzero_ps(); NV];
            if MASKED {
                for (v, k) in keep.iter_mut().enumerate() {
                    *k = _mm256_castsi256_ps(_mm256_loadu_si256(masks.add(tap.mask * NR + 8 * v) as *const __m256i));
                }
            }
            for _ in 0..nc {
                let mut xv = [_mm256_setzero_ps(); NV];
                for (v, xv) in xv.iter_mut().enumerate() {
                    *xv = _mm256_loadu_ps(x.add(8 * v));
                    if MASKED {
                        *xv = _mm256_and_ps(*xv, keep[v]);
                    }
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*wc.add(r * w_rs));
                    for (a, &xv) in a.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(b, xv, *a);
                    }
                }
                wc = wc.add(w_cs);
                x = x.add(rs);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.add(r * ors);
            for (v, &a) in a.iter().enumerate() {
                let o = o.add(8 * v);
                let a = if accumulate { _mm256_add_ps(a, _mm256_loadu_ps(o)) } else { a };
                _mm256_storeu_ps(o, a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the plain sum, with row and column tails, several taps,
    /// accumulation and both thread modes (the last case is big enough to
    /// be split over threads).
    /// The AVX-512 and AVX2 forms give the same bits (same multiply-adds in
    /// the same order), masked and not, for every row count.
    #[test]
    fn avx512_equals_avx2_bit_for_bit() {
        if !avx512_available() {
            return;
        }
        let (m, cols, nc) = (13, 300, 5);
        let offs = [2usize, 0, 9, 4];
        let in_rs = padded_cols(cols) + 11;
        let inp: Vec<f32> =
            (0..nc * in_rs).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0 + 1e-3 * (i % 7) as f32).collect();
        let w: Vec<f32> =
            (0..m * nc * 4).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0 + 1e-3 * (i % 5) as f32).collect();
        let tl: Vec<Tap> = offs.iter().enumerate().map(|(t, &inp)| Tap { inp, w: t, mask: t % 2 }).collect();
        let masks = ColMasks::new(7, 2, |id, q| (q + id) % 3 != 0);
        let out_rs = padded_cols(cols) + 3;
        for mk in [None, Some(&masks)] {
            let go = |avx512: bool| {
                set_avx512(avx512);
                let mut out = vec![0.25f32; m * out_rs];
                run(m, cols, nc, &tl, &w, (nc * 4, 4), &inp, in_rs, &mut out, out_rs, true, mk, false);
                set_avx512(true);
                out
            };
            let (a, b) = (go(true), go(false));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "masked: {}", mk.is_some());
        }
    }

    #[test]
    fn matches_plain_sum() {
        if !available() {
            return;
        }
        for &(m, cols, nc, ref offs) in &[
            (1, 1, 1, vec![0]),
            (7, 37, 3, vec![0, 1, 5]),
            (13, 300, 5, vec![2, 0, 9, 4]),
            (6, 1000, 2, vec![3]),
            (20, 4000, 8, (0..9).collect()),
        ] {
            let offs: &Vec<usize> = offs;
            let taps = offs.len();
            let in_rs = padded_cols(cols) + 11;
            let inp: Vec<f32> = (0..nc * in_rs).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            let w: Vec<f32> = (0..m * nc * taps).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0).collect();
            let tl: Vec<Tap> = offs.iter().enumerate().map(|(t, &inp)| Tap::new(inp, t)).collect();
            let out_rs = padded_cols(cols) + 3;
            for accumulate in [false, true] {
                for parallel in [false, true] {
                    let mut out = vec![0.5f32; m * out_rs];
                    run(
                        m,
                        cols,
                        nc,
                        &tl,
                        &w,
                        (nc * taps, taps),
                        &inp,
                        in_rs,
                        &mut out,
                        out_rs,
                        accumulate,
                        None,
                        parallel,
                    );
                    for r in 0..m {
                        for q in 0..cols {
                            let mut want = if accumulate { 0.5f32 } else { 0.0 };
                            for (t, off) in offs.iter().enumerate() {
                                for c in 0..nc {
                                    want += w[(r * nc + c) * taps + t] * inp[c * in_rs + off + q];
                                }
                            }
                            let got = out[r * out_rs + q];
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{m} {cols} {nc} ({r}, {q}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The weight-gradient sums against the plain ones: row and pair tails,
    /// column tails, several passes, both thread modes (the third case is
    /// big enough to be split over threads), the AVX-512 and AVX2 forms.
    #[test]
    fn weight_grad_matches_plain_sum() {
        if !available() {
            return;
        }
        for &(m, nc, cols, ref offs) in
            &[(1, 1, 1, vec![0]), (7, 3, 37, vec![0, 4, 1]), (13, 5, 1300, vec![2, 0, 9]), (6, 8, 9, vec![3])]
        {
            let offs: &Vec<usize> = offs;
            let taps = offs.len();
            let (a_rs, b_rs) = (cols + 5, cols + 10);
            let a: Vec<f32> = (0..m * a_rs).map(|i| ((i * 613) % 19) as f32 / 9.0 - 1.0).collect();
            let b: Vec<f32> = (0..nc * b_rs).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            // Both forms where the CPU has AVX-512 (the AVX2 one elsewhere).
            for (parallel, avx512) in [(false, true), (true, true), (false, false), (true, false)] {
                let mut dw = vec![f32::NAN; m * nc * taps];
                set_avx512(avx512);
                run_weight_grad(m, nc, offs, cols, &a, a_rs, &b, b_rs, &mut dw, parallel);
                set_avx512(true);
                for r in 0..m {
                    for c in 0..nc {
                        for (t, off) in offs.iter().enumerate() {
                            let want: f32 = (0..cols).map(|q| a[r * a_rs + q] * b[c * b_rs + off + q]).sum();
                            let got = dw[(r * nc + c) * taps + t];
                            assert!(
                                (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                                "{m} {nc} {cols} ({r}, {c}, {t}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Masked reads are left out of the sums, even where the input holds
    /// NaN (garbage past a row's end must never reach an output).
    #[test]
    fn masked_reads_are_left_out() {
        if !available() {
            return;
        }
        // Tap t reads input position q + offs[t] for output column q; with
        // period 5 its mask keeps exactly the positions that are not
        // multiples of 5, which hold NaN in channel 1.
        let (m, cols, nc, period) = (7, 150, 3, 5);
        let offs = [0usize, 1, 2, 13];
        let valid = |id: usize, q: usize| !(q + offs[id]).is_multiple_of(5);
        let masks = ColMasks::new(period, offs.len(), valid);
        let in_rs = padded_cols(cols) + 20;
        let inp: Vec<f32> = (0..nc * in_rs)
            .map(|i| {
                let (c, pos) = (i / in_rs, i % in_rs);
                if c == 1 && pos % 5 == 0 { f32::NAN } else { ((i * 7919) % 23) as f32 / 11.0 - 1.0 }
            })
            .collect();
        let nt = offs.len();
        let w: Vec<f32> = (0..m * nc * nt).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0).collect();
        let taps: Vec<Tap> = offs.iter().enumerate().map(|(t, &o)| Tap { inp: o, w: t, mask: t }).collect();
        let out_rs = padded_cols(cols);
        for parallel in [false, true] {
            let mut out = vec![0f32; m * out_rs];
            run(m, cols, nc, &taps, &w, (nc * nt, nt), &inp, in_rs, &mut out, out_rs, false, Some(&masks), parallel);
            for r in 0..m {
                for q in 0..cols {
                    let mut want = 0f64;
                    for (t, &o) in offs.iter().enumerate().filter(|&(t, _)| valid(t, q % period)) {
                        for c in 0..nc {
                            want += (w[r * nc * nt + c * nt + t] * inp[c * in_rs + o + q]) as f64;
                        }
                    }
                    let got = out[r * out_rs + q];
                    assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "r {r} q {q}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "input too small")]
    fn short_input_is_refused() {
        if !available() {
            panic!("input too small (no AVX2 here)");
        }
        let mut out = vec![0f32; 2 * NR];
        run(2, 5, 2, &[Tap::new(0, 0)], &[1.0; 4], (2, 1), &[0.0; 20], 10, &mut out, NR, false, None, false);
    }
}
