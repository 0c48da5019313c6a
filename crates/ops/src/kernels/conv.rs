//! Convolution kernels: im2col + GEMM forward, GEMM + col2im input gradient,
//! GEMM weight gradient. NCHW, f32, square kernels, groups; depthwise
//! convolutions go to the direct kernels of [`super::depthwise`], the others
//! to the shifted GEMMs of [`super::shift`], except 1x1 convolutions on large
//! maps (and at batch 1), which run here on the tensors in place (forward and
//! input gradient through the register-blocked kernel of [`super::direct`],
//! weight gradient by GEMM); the im2col path remains for comparison.

#[cfg(target_arch = "x86_64")]
use super::winograd;
use super::{depthwise, direct, gemm, shift, threads, with_scratch};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static SHIFTED: AtomicBool = AtomicBool::new(true);

/// Turns the shifted-GEMM kernels on or off (then im2col handles those
/// convolutions); for benchmarks and tests.
pub(crate) fn set_shifted(on: bool) {
    SHIFTED.store(on, Ordering::Relaxed);
}

fn use_shift(g: &ConvGeom) -> bool {
    SHIFTED.load(Ordering::Relaxed) && shift::applies(g)
}

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
    pub(crate) fn cig(&self) -> usize {
        self.c_in / self.groups
    }
    pub(crate) fn cog(&self) -> usize {
        self.c_out / self.groups
    }
    /// Rows of a group's column matrix.
    pub(crate) fn kcol(&self) -> usize {
        self.cig() * self.k * self.k
    }
    pub(crate) fn ohw(&self) -> usize {
        self.oh * self.ow
    }
    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }
    /// A 1x1, stride-1, unpadded conv needs no column matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// A 1x1 convolution on `s` samples runs as one GEMM per sample on the
    /// input as it is (no copy) when there is one sample or the maps are big
    /// enough for per-sample GEMMs to be efficient.
    fn direct_pointwise(&self, s: usize) -> bool {
        self.pointwise() && (s == 1 || self.hw() >= POINTWISE_DIRECT_HW)
    }
    /// Valid output columns `[lo, hi)` for kernel column offset `off = kj·dil`.
    pub(crate) fn ox_range(&self, off: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if off >= p { 0 } else { (p - off).div_ceil(s) };
        let hi = if self.w + p > off { ((self.w + p - off - 1) / s + 1).min(self.ow) } else { 0 };
        (lo.min(hi), hi)
    }
}

/// Samples per GEMM: enough that every GEMM has about this many columns
/// (small feature maps would otherwise make skinny, slow GEMMs).
const TARGET_COLS: usize = 2048;

/// Feature-map size from which 1x1 convolutions skip the column matrix.
pub(crate) const POINTWISE_DIRECT_HW: usize = 196;

impl ConvGeom {
    /// Samples per chunk: enough columns per GEMM, and at least one chunk per
    /// thread when the batch allows.
    pub(crate) fn chunk(&self) -> usize {
        let by_cols = TARGET_COLS.div_ceil(self.ohw().max(1));
        by_cols.min(self.n.div_ceil(threads())).clamp(1, self.n.max(1))
    }
}

/// Writes one sample's group `x` `[cig, h, w]` into the column matrix `col`
/// (rows of length `ld`; this sample's columns start at 0 of the slice).
fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32], ld: usize) {
    let (k, s, d, ow, ohw, hw) = (g.k, g.stride, g.dil, g.ow, g.ohw(), g.hw());
    for ci in 0..g.cig() {
        let plane = &x[ci * hw..(ci + 1) * hw];
        for ki in 0..k {
            for kj in 0..k {
                let row = (ci * k + ki) * k + kj;
                let dst = &mut col[row * ld..row * ld + ohw];
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

/// Adds one sample's columns (rows of length `ld`) back into its group
/// gradient `dx` `[cig, h, w]`.
fn col2im(g: &ConvGeom, col: &[f32], ld: usize, dx: &mut [f32]) {
    let (k, s, d, ow, ohw, hw) = (g.k, g.stride, g.dil, g.ow, g.ohw(), g.hw());
    for ci in 0..g.cig() {
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        for ki in 0..k {
            for kj in 0..k {
                let row = (ci * k + ki) * k + kj;
                let src = &col[row * ld..row * ld + ohw];
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

/// Runs `f(first_sample, out_chunk, parallel_gemm)` over chunks of samples:
/// in parallel over chunks when there are several (GEMMs single-threaded),
/// else one chunk with multi-threaded GEMMs. `per` is the output size of one
/// sample.
pub(crate) fn per_chunk(g: &ConvGeom, out: &mut [f32], per: usize, f: impl Fn(usize, &mut [f32], bool) + Sync) {
    let chunk = g.chunk();
    if g.n > chunk && threads() > 1 {
        out.par_chunks_mut(per * chunk).enumerate().for_each(|(c, o)| f(c * chunk, o, false));
    } else {
        out.chunks_mut(per * chunk).enumerate().for_each(|(c, o)| f(c * chunk, o, true));
    }
}

/// What a convolution does to each output value on its way out, while the
/// value is still in cache: multiply by a per-output-channel scale, add a
/// per-output-channel bias, then a ReLU. The fused inference convolution
/// (an eval-mode batch norm as the scale and shift) uses it; training
/// convolutions run with [`Epilogue::NONE`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// `[c_out]`, every value of its channel multiplied by it.
    pub scale: Option<&'a [f32]>,
    /// `[c_out]`, added to every value of its channel (after the scale).
    pub bias: Option<&'a [f32]>,
    /// `max(v, 0)` after the bias.
    pub relu: bool,
}

impl Epilogue<'_> {
    /// Values go out as computed.
    pub(crate) const NONE: Epilogue<'static> = Epilogue { scale: None, bias: None, relu: false };

    fn is_none(&self) -> bool {
        self.scale.is_none() && self.bias.is_none() && !self.relu
    }

    /// The scale and bias of output channel `co` (1 and 0 where absent).
    #[inline]
    pub(crate) fn channel(&self, co: usize) -> (f32, f32) {
        (self.scale.map_or(1.0, |s| s[co]), self.bias.map_or(0.0, |b| b[co]))
    }

    /// The epilogue of output channel `co`.
    #[inline]
    pub(crate) fn at(&self, co: usize) -> ChannelEpilogue {
        let (scale, bias) = self.channel(co);
        ChannelEpilogue { on: !self.is_none(), scale, bias, relu: self.relu }
    }

    /// Applies the epilogue to values of output channel `co`, in place.
    #[inline]
    pub(crate) fn apply(&self, co: usize, v: &mut [f32]) {
        self.at(co).apply(v);
    }

    /// Copies values of output channel `co` from `src` to `dst`, applying
    /// the epilogue on the way.
    #[inline]
    pub(crate) fn copy(&self, co: usize, dst: &mut [f32], src: &[f32]) {
        if self.is_none() {
            return super::copy_short(dst, src);
        }
        let c = self.at(co);
        if c.relu {
            dst.iter_mut().zip(src).for_each(|(o, &x)| *o = (x * c.scale + c.bias).max(0.0));
        } else {
            dst.iter_mut().zip(src).for_each(|(o, &x)| *o = x * c.scale + c.bias);
        }
    }
}

/// The epilogue of one output channel: `x·scale + bias` (the scale 1 where
/// absent: the same bits as `x + bias`), then the ReLU; nothing at all for
/// [`Epilogue::NONE`] (`on` false). Small and `Copy`, so that a kernel body
/// compiled for an instruction set applies it to its blocks inline.
#[derive(Clone, Copy)]
pub(crate) struct ChannelEpilogue {
    on: bool,
    scale: f32,
    bias: f32,
    relu: bool,
}

impl ChannelEpilogue {
    /// Applies it to `v` in place.
    #[inline(always)]
    pub(crate) fn apply(self, v: &mut [f32]) {
        if !self.on {
            return;
        }
        if self.relu {
            v.iter_mut().for_each(|x| *x = (*x * self.scale + self.bias).max(0.0));
        } else {
            v.iter_mut().for_each(|x| *x = *x * self.scale + self.bias);
        }
    }
}

/// `y [n, c_out, oh, ow] = conv(x [n, c_in, h, w], w [c_out, cig, k, k])`,
/// each value passed through `ep` as it is stored.
pub(crate) fn forward(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    if let Some(b) = ep.bias {
        assert_eq!(b.len(), g.c_out, "conv epilogue: one bias per output channel");
    }
    if let Some(s) = ep.scale {
        assert_eq!(s.len(), g.c_out, "conv epilogue: one scale per output channel");
    }
    if depthwise::applies(g) {
        return depthwise::forward(g, x, w, ep);
    }
    if use_shift(g) {
        #[cfg(target_arch = "x86_64")]
        if winograd::applies(g) {
            return winograd::forward(g, x, w, ep);
        }
        return shift::forward(g, x, w, ep);
    }
    forward_im2col(g, x, w, ep)
}

/// The im2col + GEMM forward (any geometry).
fn forward_im2col(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let mut y = vec![0f32; g.n * g.c_out * ohw];
    per_chunk(g, &mut y, g.c_out * ohw, |first, yc, par| {
        let s = yc.len() / (g.c_out * ohw);
        let ld = s * ohw;
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            if g.direct_pointwise(s) {
                // 1x1: each sample's input already is its column matrix.
                for j in 0..s {
                    let xg = &x[((first + j) * g.c_in + gi * cig) * hw..][..cig * hw];
                    let yg = &mut yc[(j * g.c_out + gi * cog) * ohw..][..cog * ohw];
                    pointwise(cog, hw, cig, wg, (cig, 1), xg, yg, par);
                    if !ep.is_none() {
                        for (co, plane) in yg.chunks_exact_mut(ohw).enumerate() {
                            ep.apply(gi * cog + co, plane);
                        }
                    }
                }
                continue;
            }
            with_scratch(kcol * ld, cog * ld, |col, out| {
                for j in 0..s {
                    let n = first + j;
                    let xg = &x[(n * g.c_in + gi * cig) * hw..(n * g.c_in + (gi + 1) * cig) * hw];
                    im2col(g, xg, &mut col[j * ohw..], ld);
                }
                gemm(cog, ld, kcol, out, (ld, 1), false, wg, (kcol, 1), col, (ld, 1), par);
                for j in 0..s {
                    for co in 0..cog {
                        let dst = (j * g.c_out + gi * cog + co) * ohw;
                        let src = &out[co * ld + j * ohw..co * ld + (j + 1) * ohw];
                        ep.copy(gi * cog + co, &mut yc[dst..dst + ohw], src);
                    }
                }
            });
        }
    });
    y
}

/// `out (m x cols) = w (m x nc) · inp (nc x cols)` for one sample of a 1x1
/// convolution, rows `cols` long in `inp` and `out`, with the weights read
/// through the strides `(w_rs, w_cs)` (the transpose for the input
/// gradient). The register-blocked kernel of [`direct`] takes the columns up
/// to a whole number of its blocks, reading and writing the tensors in place
/// (it would overrun a row with more); a GEMM takes the rest, and all of them
/// when the kernel is off.
#[allow(clippy::too_many_arguments)]
fn pointwise(m: usize, cols: usize, nc: usize, w: &[f32], ws: (usize, usize), inp: &[f32], out: &mut [f32], par: bool) {
    let body = if direct::enabled() { cols / direct::NR * direct::NR } else { 0 };
    if body > 0 {
        direct::run(m, body, nc, &[direct::Tap::new(0, 0)], w, ws, inp, cols, out, cols, false, None, par);
    }
    if body < cols {
        gemm(m, cols - body, nc, &mut out[body..], (cols, 1), false, w, ws, &inp[body..], (cols, 1), par && body == 0);
    }
}

/// Gathers the chunk's output gradients of group `gi` into `buf` `[cog, s·ohw]`.
fn gather_dy(g: &ConvGeom, dy: &[f32], first: usize, s: usize, gi: usize, buf: &mut [f32]) {
    let (ohw, cog) = (g.ohw(), g.cog());
    let ld = s * ohw;
    for j in 0..s {
        for co in 0..cog {
            let src = ((first + j) * g.c_out + gi * cog + co) * ohw;
            buf[co * ld + j * ohw..co * ld + (j + 1) * ohw].copy_from_slice(&dy[src..src + ohw]);
        }
    }
}

/// Input gradient `dx [n, c_in, h, w]` from `dy [n, c_out, oh, ow]`.
pub(crate) fn backward_input(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    if depthwise::applies(g) {
        return depthwise::backward_input(g, dy, w);
    }
    if use_shift(g) {
        // Stride 1, padding 1, 3×3: a forward convolution of the output
        // gradient, which the Winograd forward runs where both directions
        // qualify.
        #[cfg(target_arch = "x86_64")]
        {
            let t = winograd::transposed_geom(g);
            if winograd::applies(g) && winograd::applies(&t) {
                return winograd::forward(&t, dy, &winograd::transposed_weights(g, w), Epilogue::NONE);
            }
        }
        return shift::backward_input(g, dy, w);
    }
    backward_input_im2col(g, dy, w)
}

/// The GEMM + col2im input gradient (any geometry).
fn backward_input_im2col(g: &ConvGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let mut dx = vec![0f32; g.n * g.c_in * hw];
    per_chunk(g, &mut dx, g.c_in * hw, |first, dxc, par| {
        let s = dxc.len() / (g.c_in * hw);
        let ld = s * ohw;
        for gi in 0..g.groups {
            let wg = &w[gi * cog * kcol..(gi + 1) * cog * kcol];
            if g.direct_pointwise(s) {
                for j in 0..s {
                    let dyg = &dy[((first + j) * g.c_out + gi * cog) * ohw..][..cog * ohw];
                    let dxg = &mut dxc[(j * g.c_in + gi * cig) * hw..][..cig * hw];
                    pointwise(cig, hw, cog, wg, (1, cig), dyg, dxg, par);
                }
                continue;
            }
            with_scratch(kcol * ld, cog * ld, |col, dyb| {
                gather_dy(g, dy, first, s, gi, dyb);
                // dcol (kcol x s·ohw) = wᵀ (kcol x cog) · dy (cog x s·ohw)
                gemm(kcol, ld, cog, col, (ld, 1), false, wg, (1, kcol), dyb, (ld, 1), par);
                for j in 0..s {
                    let dxg = &mut dxc[(j * g.c_in + gi * cig) * hw..(j * g.c_in + (gi + 1) * cig) * hw];
                    col2im(g, &col[j * ohw..], ld, dxg);
                }
            });
        }
    });
    dx
}

/// Weight gradient `dw [c_out, cig, k, k]` from `x` and `dy`, summed over
/// the batch chunk by chunk in a fixed order (deterministic for a given
/// thread count).
pub(crate) fn backward_weight(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if depthwise::applies(g) {
        return depthwise::backward_weight(g, x, dy);
    }
    if use_shift(g) {
        return shift::backward_weight(g, x, dy);
    }
    backward_weight_im2col(g, x, dy)
}

/// The im2col + GEMM weight gradient (any geometry).
fn backward_weight_im2col(g: &ConvGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (ohw, cog, kcol, cig, hw) = (g.ohw(), g.cog(), g.kcol(), g.cig(), g.hw());
    let wlen = g.c_out * kcol;
    sum_chunk_partials(g, wlen, |first, s, par| {
        let mut dw = vec![0f32; wlen];
        let ld = s * ohw;
        for gi in 0..g.groups {
            let dwg = &mut dw[gi * cog * kcol..(gi + 1) * cog * kcol];
            if g.direct_pointwise(s) {
                for j in 0..s {
                    let dyg = &dy[((first + j) * g.c_out + gi * cog) * ohw..][..cog * ohw];
                    let xg = &x[((first + j) * g.c_in + gi * cig) * hw..][..cig * hw];
                    // dw (cog x cig) += dy_j (cog x hw) · x_jᵀ (hw x cig)
                    gemm(cog, kcol, ohw, dwg, (kcol, 1), j > 0, dyg, (ohw, 1), xg, (1, hw), par);
                }
                continue;
            }
            with_scratch(kcol * ld, cog * ld, |col, dyb| {
                gather_dy(g, dy, first, s, gi, dyb);
                for j in 0..s {
                    let n = first + j;
                    let xg = &x[(n * g.c_in + gi * cig) * hw..(n * g.c_in + (gi + 1) * cig) * hw];
                    im2col(g, xg, &mut col[j * ohw..], ld);
                }
                // dw (cog x kcol) = dy (cog x s·ohw) · colᵀ (s·ohw x kcol)
                gemm(cog, kcol, ld, dwg, (kcol, 1), false, dyb, (ld, 1), col, (1, ld), par);
            });
        }
        dw
    })
}

/// Sums per-chunk partial weight gradients of length `len`:
/// `partial(first, samples, parallel_gemm)` covers samples `first..first +
/// samples`; chunks run in parallel when there are several (their GEMMs then
/// single-threaded) and are summed in chunk order, so the result is the same
/// for a given thread count.
pub(crate) fn sum_chunk_partials(
    g: &ConvGeom,
    len: usize,
    partial: impl Fn(usize, usize, bool) -> Vec<f32> + Sync + Send,
) -> Vec<f32> {
    let chunk = g.chunk();
    let chunks = g.n.div_ceil(chunk);
    let parallel = chunks > 1 && threads() > 1;
    let run = |c: usize| {
        let first = c * chunk;
        partial(first, chunk.min(g.n - first), !parallel)
    };
    let parts: Vec<Vec<f32>> =
        if parallel { (0..chunks).into_par_iter().map(run).collect() } else { (0..chunks).map(run).collect() };
    let mut it = parts.into_iter();
    let mut dw = it.next().unwrap_or_else(|| vec![0f32; len]);
    for p in it {
        for (a, b) in dw.iter_mut().zip(&p) {
            *a += b;
        }
    }
    dw
}

/// The convolution of `g` as plain f64 sums (any stride, padding,
/// dilation and groups), each value passed through `ep`: the reference the
/// kernels' tests compare with.
#[cfg(test)]
pub(crate) fn plain(g: &ConvGeom, x: &[f32], w: &[f32], ep: Epilogue) -> Vec<f32> {
    let (cig, cog) = (g.cig(), g.cog());
    let mut y = vec![0f32; g.n * g.c_out * g.ohw()];
    for n in 0..g.n {
        for co in 0..g.c_out {
            let gi = co / cog;
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = 0f64;
                    for ci in 0..cig {
                        for ki in 0..g.k {
                            for kj in 0..g.k {
                                let iy = (oy * g.stride + ki * g.dil).wrapping_sub(g.pad);
                                let ix = (ox * g.stride + kj * g.dil).wrapping_sub(g.pad);
                                if iy < g.h && ix < g.w {
                                    let xv = x[((n * g.c_in + gi * cig + ci) * g.h + iy) * g.w + ix];
                                    acc += f64::from(xv) * f64::from(w[((co * cig + ci) * g.k + ki) * g.k + kj]);
                                }
                            }
                        }
                    }
                    let acc =
                        acc * ep.scale.map_or(1.0, |s| f64::from(s[co])) + ep.bias.map_or(0.0, |b| f64::from(b[co]));
                    y[((n * g.c_out + co) * g.oh + oy) * g.ow + ox] = if ep.relu { acc.max(0.0) } else { acc } as f32;
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shifted-GEMM kernels, with and without the direct micro-kernel,
    /// against the im2col ones: forward and both gradients, several chunks
    /// per batch (so partial sums are reduced), groups, padding 0..3 (also
    /// beyond the kernel's reach) and dilation.
    #[test]
    fn shifted_gemm_matches_im2col() {
        for direct_on in [true, false] {
            super::super::direct::set_enabled(direct_on);
            shifted_gemm_matches_im2col_once();
        }
        super::super::direct::set_enabled(true);
    }

    fn shifted_gemm_matches_im2col_once() {
        for &(n, c_in, c_out, k, stride, pad, dil, groups, h, w) in &[
            (37, 5, 4, 3, 1, 1, 1, 1, 7, 7),
            (9, 6, 9, 3, 1, 0, 1, 3, 9, 6),
            (5, 4, 3, 5, 1, 2, 1, 1, 11, 8),
            (4, 3, 5, 3, 1, 2, 2, 1, 6, 7),
            (3, 2, 2, 1, 1, 1, 1, 2, 4, 5),
            (50, 6, 5, 1, 1, 0, 1, 1, 7, 7),
            (1, 8, 16, 3, 1, 1, 1, 1, 28, 28),
            (40, 4, 6, 3, 2, 1, 1, 1, 7, 7),
            (6, 4, 6, 3, 2, 1, 1, 2, 16, 15),
            (3, 3, 2, 5, 3, 2, 1, 1, 13, 11),
            (4, 3, 4, 3, 2, 0, 2, 1, 12, 9),
            (5, 4, 4, 1, 2, 0, 1, 1, 9, 8),
            (2, 2, 3, 2, 2, 1, 1, 1, 6, 5),
            (3, 3, 4, 3, 1, 3, 1, 1, 5, 6),
            (2, 7, 13, 3, 1, 1, 1, 1, 8, 8),
            // The tight layout (masked reads): a 5x5 kernel with less than
            // "same" padding, more channels than one kernel pass on rows
            // that are no multiple of the register block.
            (3, 5, 6, 5, 1, 1, 1, 1, 9, 10),
            (2, 20, 7, 3, 1, 1, 1, 1, 19, 21),
        ] {
            let oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let ow = (w + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let g = ConvGeom { n, c_in, h, w, c_out, k, stride, pad, dil, groups, oh, ow };
            assert!(shift::applies(&g));
            let x: Vec<f32> = (0..n * c_in * h * w).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            let wt: Vec<f32> =
                (0..c_out * c_in / groups * k * k).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0).collect();
            let dy: Vec<f32> = (0..n * c_out * oh * ow).map(|i| ((i * 613) % 19) as f32 / 9.0 - 1.0).collect();
            let pairs = [
                ("forward", shift::forward(&g, &x, &wt, Epilogue::NONE), forward_im2col(&g, &x, &wt, Epilogue::NONE)),
                ("dx", shift::backward_input(&g, &dy, &wt), backward_input_im2col(&g, &dy, &wt)),
                ("dw", shift::backward_weight(&g, &x, &dy), backward_weight_im2col(&g, &x, &dy)),
            ];
            for (what, a, b) in pairs {
                assert_eq!(a.len(), b.len(), "{g:?} {what}");
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{g:?} {what}: {u} vs {v}");
                }
            }
            assert_eq!(forward(&g, &x, &wt, Epilogue::NONE), shift::forward(&g, &x, &wt, Epilogue::NONE), "dispatch");
        }
    }

    #[test]
    fn forward_matches_naive_on_awkward_geometry() {
        for &(k, stride, pad, dil, groups, h, w) in &[
            (3, 2, 1, 1, 1, 7, 9),
            (1, 1, 0, 1, 2, 5, 4),
            (3, 1, 2, 2, 1, 6, 5),
            (5, 3, 1, 1, 2, 11, 8),
            (1, 2, 0, 1, 1, 5, 5),
            (1, 1, 0, 1, 1, 14, 14),
            (1, 1, 0, 1, 2, 16, 13),
        ] {
            let (n, c_in, c_out) = (3, 4, 6);
            let oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let ow = (w + 2 * pad - dil * (k - 1) - 1) / stride + 1;
            let g = ConvGeom { n, c_in, h, w, c_out, k, stride, pad, dil, groups, oh, ow };
            let x: Vec<f32> = (0..n * c_in * h * w).map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0).collect();
            let wt: Vec<f32> =
                (0..c_out * c_in / groups * k * k).map(|i| ((i * 104729) % 17) as f32 / 8.0 - 1.0).collect();
            let got = forward(&g, &x, &wt, Epilogue::NONE);
            let want = plain(&g, &x, &wt, Epilogue::NONE);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{g:?}: {a} vs {b}");
            }
        }
    }
}
