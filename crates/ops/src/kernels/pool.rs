//! Pooling kernels with padding and arbitrary kernel/stride, per plane.

use rayon::prelude::*;

/// Geometry of a 2-D pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolGeom {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub oh: usize,
    pub ow: usize,
}

impl PoolGeom {
    /// Window rows `[y0, y1)` clipped to the input, and the unclipped size
    /// (for `count_include_pad`), of output row `oy`.
    fn rows(&self, oy: usize) -> (usize, usize, usize) {
        let start = (oy * self.sh) as isize - self.ph as isize;
        let end = (start + self.kh as isize).min((self.h + self.ph) as isize);
        let padded = (end - start) as usize;
        (start.max(0) as usize, end.min(self.h as isize).max(0) as usize, padded)
    }
    fn cols(&self, ox: usize) -> (usize, usize, usize) {
        let start = (ox * self.sw) as isize - self.pw as isize;
        let end = (start + self.kw as isize).min((self.w + self.pw) as isize);
        let padded = (end - start) as usize;
        (start.max(0) as usize, end.min(self.w as isize).max(0) as usize, padded)
    }
}

fn divisor(g: &PoolGeom, oy: usize, ox: usize, include_pad: bool) -> f32 {
    let (y0, y1, py) = g.rows(oy);
    let (x0, x1, px) = g.cols(ox);
    if include_pad { (py * px) as f32 } else { ((y1 - y0) * (x1 - x0)).max(1) as f32 }
}

/// Average pooling forward.
pub(crate) fn avg_forward(g: &PoolGeom, x: &[f32], include_pad: bool) -> Vec<f32> {
    let mut y = vec![0f32; g.planes * g.oh * g.ow];
    y.par_chunks_mut(g.oh * g.ow).zip(x.par_chunks(g.h * g.w)).for_each(|(yp, xp)| {
        for oy in 0..g.oh {
            let (y0, y1, _) = g.rows(oy);
            for ox in 0..g.ow {
                let (x0, x1, _) = g.cols(ox);
                let mut s = 0f32;
                for iy in y0..y1 {
                    for v in &xp[iy * g.w + x0..iy * g.w + x1] {
                        s += v;
                    }
                }
                yp[oy * g.ow + ox] = s / divisor(g, oy, ox, include_pad);
            }
        }
    });
    y
}

/// Average pooling input gradient.
pub(crate) fn avg_backward(g: &PoolGeom, dy: &[f32], include_pad: bool) -> Vec<f32> {
    let mut dx = vec![0f32; g.planes * g.h * g.w];
    dx.par_chunks_mut(g.h * g.w).zip(dy.par_chunks(g.oh * g.ow)).for_each(|(dxp, dyp)| {
        for oy in 0..g.oh {
            let (y0, y1, _) = g.rows(oy);
            for ox in 0..g.ow {
                let (x0, x1, _) = g.cols(ox);
                let d = dyp[oy * g.ow + ox] / divisor(g, oy, ox, include_pad);
                for iy in y0..y1 {
                    for v in &mut dxp[iy * g.w + x0..iy * g.w + x1] {
                        *v += d;
                    }
                }
            }
        }
    });
    dx
}

/// Index (within the plane) of each window's maximum; the first one on ties,
/// as PyTorch. Padding never wins (it is -inf).
fn argmax(g: &PoolGeom, xp: &[f32], oy: usize, ox: usize) -> usize {
    let (y0, y1, _) = g.rows(oy);
    let (x0, x1, _) = g.cols(ox);
    let mut best = y0 * g.w + x0;
    for iy in y0..y1 {
        for ix in x0..x1 {
            let i = iy * g.w + ix;
            let v = xp[i];
            if v > xp[best] || v.is_nan() {
                best = i;
            }
        }
    }
    best
}

/// Max pooling forward.
pub(crate) fn max_forward(g: &PoolGeom, x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; g.planes * g.oh * g.ow];
    y.par_chunks_mut(g.oh * g.ow).zip(x.par_chunks(g.h * g.w)).for_each(|(yp, xp)| {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                yp[oy * g.ow + ox] = xp[argmax(g, xp, oy, ox)];
            }
        }
    });
    y
}

/// Max pooling input gradient: each output's gradient goes to its window's
/// maximum.
pub(crate) fn max_backward(g: &PoolGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; g.planes * g.h * g.w];
    dx.par_chunks_mut(g.h * g.w).zip(x.par_chunks(g.h * g.w)).zip(dy.par_chunks(g.oh * g.ow)).for_each(
        |((dxp, xp), dyp)| {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    dxp[argmax(g, xp, oy, ox)] += dyp[oy * g.ow + ox];
                }
            }
        },
    );
    dx
}
