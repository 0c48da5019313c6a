//! Batch-norm kernels over NCHW, one pass forward and one pass backward,
//! optionally fused with a ReLU.

use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Lanes of the vectorisable accumulations: independent partial sums the
/// compiler can keep in one SIMD register (a single running sum cannot be
/// vectorised without reassociating floating-point additions).
const LANES: usize = 16;

/// `(Σ v, Σ v²)` of a slice, in f32 lanes, reduced in a fixed order.
fn sum_sq(x: &[f32]) -> (f32, f32) {
    let mut a = [0f32; LANES];
    let mut b = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            a[l] += c[l];
            b[l] += c[l] * c[l];
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for &v in rest {
        sa += v;
        sb += v * v;
    }
    (sa, sb)
}

/// `(Σ d, Σ d·(x − μ))` with `d = dz` masked by `z > 0` when `relu`.
fn grad_sums(x: &[f32], z: &[f32], dz: &[f32], mu: f32, relu: bool) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if super::direct::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe {
            if relu { grad_sums_avx2::<true>(x, z, dz, mu) } else { grad_sums_avx2::<false>(x, z, dz, mu) }
        };
    }
    if relu { grad_sums_masked::<true>(x, z, dz, mu) } else { grad_sums_masked::<false>(x, z, dz, mu) }
}

/// [`grad_sums_masked`] in AVX2 registers: the same lanes, the same
/// operations in the same order (multiply, then add: no fused multiply-add),
/// so the same sums; the compiler kept the generic loop scalar, with the
/// lanes on the stack (half of the batch-norm bench case's time).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_sums_avx2<const RELU: bool>(x: &[f32], z: &[f32], dz: &[f32], mu: f32) -> (f32, f32) {
    use std::arch::x86_64::*;
    const _: () = assert!(LANES == 16, "two 8-float registers of lanes");
    let len = x.len().min(z.len()).min(dz.len());
    let full = len / LANES * LANES;
    // SAFETY (loads): every index read is below `full` <= the three lengths.
    let (a, b) = unsafe {
        let (zero, m) = (_mm256_setzero_ps(), _mm256_set1_ps(mu));
        let (mut a, mut b) = ([zero; 2], [zero; 2]);
        let mut i = 0;
        while i < full {
            for h in 0..2 {
                let o = i + 8 * h;
                let mut d = _mm256_loadu_ps(dz.as_ptr().add(o));
                if RELU {
                    let off = _mm256_cmp_ps::<_CMP_LE_OQ>(_mm256_loadu_ps(z.as_ptr().add(o)), zero);
                    d = _mm256_andnot_ps(off, d);
                }
                a[h] = _mm256_add_ps(a[h], d);
                let xc = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(o)), m);
                b[h] = _mm256_add_ps(b[h], _mm256_mul_ps(d, xc));
            }
            i += LANES;
        }
        let (mut la, mut lb) = ([0f32; LANES], [0f32; LANES]);
        for h in 0..2 {
            _mm256_storeu_ps(la.as_mut_ptr().add(8 * h), a[h]);
            _mm256_storeu_ps(lb.as_mut_ptr().add(8 * h), b[h]);
        }
        (la, lb)
    };
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for ((&xv, &zv), &dv) in x[full..len].iter().zip(&z[full..len]).zip(&dz[full..len]) {
        let d = if RELU && zv <= 0.0 { 0.0 } else { dv };
        sa += d;
        sb += d * (xv - mu);
    }
    (sa, sb)
}

/// [`grad_sums`] with the mask decided at compile time; the zipped fixed-size
/// chunks carry no bounds checks (indexing three slices did, which kept the
/// loop scalar).
fn grad_sums_masked<const RELU: bool>(x: &[f32], z: &[f32], dz: &[f32], mu: f32) -> (f32, f32) {
    let mask = |z: f32, d: f32| if RELU && z <= 0.0 { 0.0 } else { d };
    let mut a = [0f32; LANES];
    let mut b = [0f32; LANES];
    let (cx, cz, cd) = (x.chunks_exact(LANES), z.chunks_exact(LANES), dz.chunks_exact(LANES));
    let (rx, rz, rd) = (cx.remainder(), cz.remainder(), cd.remainder());
    for ((xc, zc), dc) in cx.zip(cz).zip(cd) {
        for l in 0..LANES {
            let d = mask(zc[l], dc[l]);
            a[l] += d;
            b[l] += d * (xc[l] - mu);
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for ((&xv, &zv), &dv) in rx.iter().zip(rz).zip(rd) {
        let d = mask(zv, dv);
        sa += d;
        sb += d * (xv - mu);
    }
    (sa, sb)
}

/// Per-channel batch statistics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stats {
    pub mean: Vec<f32>,
    /// Biased variance.
    pub var: Vec<f32>,
    pub invstd: Vec<f32>,
}

/// Samples per chunk of [`channel_sums`]: a fixed number, so the sums do
/// not depend on the thread count.
const SUM_CHUNK: usize = 4;

/// `Σ_samples f(sample, channel)` for every channel, as f64 pairs. The
/// samples are split into chunks of [`SUM_CHUNK`] summed in parallel, each
/// visiting its planes in memory order (sample by sample, channel by
/// channel: one stream through the tensors instead of `c` strided ones),
/// and the chunks' sums are added in order, so the result is deterministic.
fn channel_sums(n: usize, c: usize, f: impl Fn(usize, usize) -> (f64, f64) + Sync) -> Vec<(f64, f64)> {
    let chunks: Vec<Vec<(f64, f64)>> = (0..n.div_ceil(SUM_CHUNK))
        .into_par_iter()
        .map(|k| {
            let mut acc = vec![(0f64, 0f64); c];
            for ni in k * SUM_CHUNK..((k + 1) * SUM_CHUNK).min(n) {
                for (ci, a) in acc.iter_mut().enumerate() {
                    let (x, y) = f(ni, ci);
                    a.0 += x;
                    a.1 += y;
                }
            }
            acc
        })
        .collect();
    let mut total = vec![(0f64, 0f64); c];
    for chunk in chunks {
        for (t, a) in total.iter_mut().zip(chunk) {
            t.0 += a.0;
            t.1 += a.1;
        }
    }
    total
}

/// Statistics of `x` `[n, c, hw]` per channel (f64 accumulation).
pub(crate) fn stats(x: &[f32], n: usize, c: usize, hw: usize, eps: f64) -> Stats {
    let m = (n * hw) as f64;
    let sums = channel_sums(n, c, |ni, ci| {
        let (a, b) = sum_sq(&x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw]);
        (a as f64, b as f64)
    });
    let per: Vec<(f32, f32, f32)> = sums
        .iter()
        .map(|&(s, s2)| {
            let mean = s / m;
            let var = (s2 / m - mean * mean).max(0.0);
            (mean as f32, var as f32, (1.0 / (var + eps).sqrt()) as f32)
        })
        .collect();
    Stats {
        mean: per.iter().map(|p| p.0).collect(),
        var: per.iter().map(|p| p.1).collect(),
        invstd: per.iter().map(|p| p.2).collect(),
    }
}

/// `y = x · scale[c] + shift[c]`, then a ReLU when `relu`.
pub(crate) fn affine(x: &[f32], c: usize, hw: usize, scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    if x.is_empty() {
        return Vec::new();
    }
    let fill = |y: &mut [MaybeUninit<f32>]| {
        y.par_chunks_mut(c * hw).zip(x.par_chunks(c * hw)).for_each(|(ys, xs)| {
            for ci in 0..c {
                let (a, b) = (scale[ci], shift[ci]);
                let (yo, xi) = (&mut ys[ci * hw..(ci + 1) * hw], &xs[ci * hw..(ci + 1) * hw]);
                if relu {
                    for (o, &v) in yo.iter_mut().zip(xi) {
                        o.write((v * a + b).max(0.0));
                    }
                } else {
                    for (o, &v) in yo.iter_mut().zip(xi) {
                        o.write(v * a + b);
                    }
                }
            }
        });
    };
    // SAFETY: the chunks cover `x.len()` elements (a whole number of samples)
    // and every channel plane of every chunk is written.
    unsafe { super::written_vec(x.len(), 0, fill) }
}

/// Gradients of training-mode batch norm. `z` is the forward output (used
/// for the ReLU mask). Returns `(dx, dgamma, dbeta)`; `dx` has room for
/// `2·c` more elements, so the caller can append `dgamma` and `dbeta` to it
/// without a copy.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    z: &[f32],
    dz: &[f32],
    (n, c, hw): (usize, usize, usize),
    gamma: &[f32],
    st: &Stats,
    relu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = (n * hw) as f64;
    let sums = channel_sums(n, c, |ni, ci| {
        let (mu, inv) = (st.mean[ci], st.invstd[ci]);
        let o = (ni * c + ci) * hw;
        let (a, b) = grad_sums(&x[o..o + hw], &z[o..o + hw], &dz[o..o + hw], mu, relu);
        (a as f64, (b * inv) as f64)
    });
    let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(c * hw).enumerate().for_each(|(ni, out)| {
            for ci in 0..c {
                let (mu, inv) = (st.mean[ci], st.invstd[ci]);
                let k = gamma[ci] * inv;
                let (mb, mg) = ((sums[ci].0 / m) as f32, (sums[ci].1 / m) as f32);
                // dx = k·(d − mb − (x − μ)·inv·mg) = k·d − k·mb + k·inv·mg·μ − k·inv·mg·x
                let (a, b) = (k * inv * mg, k * (inv * mg * mu - mb));
                let o = (ni * c + ci) * hw;
                let (xs, zs, ds) = (&x[o..o + hw], &z[o..o + hw], &dz[o..o + hw]);
                let dst = out[ci * hw..(ci + 1) * hw].iter_mut().zip(xs).zip(zs.iter().zip(ds));
                if relu {
                    for ((d, &xv), (&zv, &dv)) in dst {
                        let g = if zv <= 0.0 { 0.0 } else { dv };
                        d.write(k * g + b - a * xv);
                    }
                } else {
                    for ((d, &xv), (_, &dv)) in dst {
                        d.write(k * dv + b - a * xv);
                    }
                }
            }
        });
    };
    // SAFETY: the chunks are whole samples of `x.len()` elements, and every
    // channel plane of each is written.
    let dx = unsafe { super::written_vec(x.len(), 2 * c, fill) };
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 gradient sums equal the generic ones bit for bit (lengths
    /// with and without a remainder, the ReLU mask on and off, values either
    /// side of zero).
    #[test]
    fn avx2_grad_sums_equal_the_generic_ones() {
        if !super::super::direct::available() {
            return;
        }
        for len in [0usize, 5, 16, 37, 64, 200] {
            let v = |k: usize| (0..len).map(|i| (((i * k) % 29) as f32 - 14.0) / 7.0).collect::<Vec<f32>>();
            let (x, z, d) = (v(7), v(11), v(13));
            for relu in [false, true] {
                // SAFETY: AVX2 and FMA are present (checked above).
                let fast = unsafe {
                    if relu {
                        grad_sums_avx2::<true>(&x, &z, &d, 0.3)
                    } else {
                        grad_sums_avx2::<false>(&x, &z, &d, 0.3)
                    }
                };
                let slow = if relu {
                    grad_sums_masked::<true>(&x, &z, &d, 0.3)
                } else {
                    grad_sums_masked::<false>(&x, &z, &d, 0.3)
                };
                assert_eq!(
                    (fast.0.to_bits(), fast.1.to_bits()),
                    (slow.0.to_bits(), slow.1.to_bits()),
                    "len {len} relu {relu}"
                );
            }
        }
    }
}
