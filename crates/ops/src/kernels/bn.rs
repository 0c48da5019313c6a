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
    if relu { grad_sums_masked::<true>(x, z, dz, mu) } else { grad_sums_masked::<false>(x, z, dz, mu) }
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

/// Statistics of `x` `[n, c, hw]` per channel (f64 accumulation).
pub(crate) fn stats(x: &[f32], n: usize, c: usize, hw: usize, eps: f64) -> Stats {
    let m = (n * hw) as f64;
    let per: Vec<(f32, f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (mut s, mut s2) = (0f64, 0f64);
            for ni in 0..n {
                let (a, b) = sum_sq(&x[(ni * c + ci) * hw..(ni * c + ci + 1) * hw]);
                s += a as f64;
                s2 += b as f64;
            }
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
    let sums: Vec<(f64, f64)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (mu, inv) = (st.mean[ci], st.invstd[ci]);
            let (mut sd, mut sdx) = (0f64, 0f64);
            for ni in 0..n {
                let o = (ni * c + ci) * hw;
                let (a, b) = grad_sums(&x[o..o + hw], &z[o..o + hw], &dz[o..o + hw], mu, relu);
                sd += a as f64;
                sdx += (b * inv) as f64;
            }
            (sd, sdx)
        })
        .collect();
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
