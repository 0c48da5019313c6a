//! Per-sample batch manipulation, differentiable: compaction for real early
//! exit ([`select_rows`]), putting per-sample results back in their original
//! order ([`scatter_rows`]), and per-sample window crops with zero padding
//! for GFNet-style patches ([`crop_windows`]).
//!
//! All are index selections, so they run on any device and Candle's autograd
//! sends gradients back to the selected rows / pixels (an `index_add`,
//! linear in the input size).

use candle_core::{Result, Tensor, bail};

/// The start of `indices` if they are the consecutive run `s, s+1, …`
/// (0 when empty).
fn consecutive_run(indices: &[u32]) -> Option<usize> {
    let first = indices.first().copied().unwrap_or(0);
    let consecutive = indices.iter().zip(first..).all(|(&i, want)| i == want);
    consecutive.then_some(first as usize)
}

/// Keeps the samples at `indices` (in that order, repeats allowed) along
/// dim 0: the batch compaction behind real early exit. Differentiable: the
/// kept rows receive their gradients, the dropped rows zero. A consecutive
/// run of indices is a zero-copy view.
///
/// # Shapes
/// `[N, ...]` → `[indices.len(), ...]`.
///
/// # Errors
/// When `xs` is a scalar or an index is `>= N`.
pub fn select_rows(xs: &Tensor, indices: &[u32]) -> Result<Tensor> {
    let Some(&n) = xs.dims().first() else { bail!("select_rows: expected a batch tensor [N, ...], got a scalar") };
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= n) {
        bail!("select_rows: index {bad} is out of range for a batch of {n}")
    }
    match consecutive_run(indices) {
        Some(start) => xs.narrow(0, start, indices.len()),
        None => xs.index_select(&Tensor::new(indices, xs.device())?, 0),
    }
}

/// Reassembles a batch of `n` samples from parts: each part's row `j` goes to
/// row `indices[j]` of the result — the inverse of splitting a batch with
/// [`select_rows`]. Together the parts' indices must cover `0..n` exactly
/// once. Differentiable w.r.t. every part.
///
/// # Shapes
/// parts `(indices, [len, ...])` with equal trailing dims → `[n, ...]`.
///
/// # Errors
/// When there are no parts, a part's row count differs from its index
/// count, parts disagree on trailing dims, dtype or device, or an index is
/// out of range, repeated or missing.
pub fn scatter_rows(parts: &[(Vec<u32>, Tensor)], n: usize) -> Result<Tensor> {
    let Some((_, first)) = parts.first() else { bail!("scatter_rows: no parts to reassemble") };
    let tail = first.dims().get(1..).unwrap_or_default();
    // row_of[i]: the row of the concatenated parts that lands at position i.
    let mut row_of: Vec<Option<u32>> = vec![None; n];
    let mut row = 0u32;
    for (p, (indices, t)) in parts.iter().enumerate() {
        if t.dims().first() != Some(&indices.len()) || t.dims().get(1..).unwrap_or_default() != tail {
            bail!("scatter_rows: part {p} has shape {:?}, expected {} rows of {tail:?}", t.dims(), indices.len())
        }
        if t.dtype() != first.dtype() || !t.device().same_device(first.device()) {
            bail!(
                "scatter_rows: part {p} is {:?} on {:?}, part 0 is {:?} on {:?}",
                t.dtype(),
                t.device(),
                first.dtype(),
                first.device()
            )
        }
        for &i in indices {
            match row_of.get_mut(i as usize) {
                None => bail!("scatter_rows: part {p} has index {i}, out of range for a batch of {n}"),
                Some(Some(_)) => bail!("scatter_rows: index {i} appears more than once"),
                Some(slot) => *slot = Some(row),
            }
            row += 1;
        }
    }
    let order = row_of
        .iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| candle_core::Error::Msg(format!("scatter_rows: no part has index {i} of {n}"))))
        .collect::<Result<Vec<u32>>>()?;
    let rows: Vec<&Tensor> = parts.iter().filter(|(i, _)| !i.is_empty()).map(|(_, t)| t).collect();
    if rows.is_empty() {
        return Ok(first.clone());
    }
    let stacked = Tensor::cat(&rows, 0)?;
    select_rows(&stacked, &order)
}

/// Crops, from each sample `i`, the `(h, w)` window whose top-left corner is
/// `origins[i] = (y, x)`. Window parts past the bottom or right border are
/// zeros (GFNet pads the image). Differentiable w.r.t. `xs`.
///
/// # Shapes
/// `[N, C, H, W]` → `[N, C, h, w]`.
///
/// # Errors
/// When `xs` is not rank 4, `origins` does not have `N` entries, the window
/// is empty or too large, or the input is too large for 32-bit indexing.
pub fn crop_windows(xs: &Tensor, origins: &[(usize, usize)], (h, w): (usize, usize)) -> Result<Tensor> {
    let &[n, c, ih, iw] = xs.dims() else { bail!("crop_windows: expected an [N, C, H, W] input, got {:?}", xs.dims()) };
    if origins.len() != n {
        bail!("crop_windows: {} origins for a batch of {n}", origins.len())
    }
    if h == 0 || w == 0 {
        bail!("crop_windows: the window must be at least 1x1, got {h}x{w}")
    }
    let plane = ih * iw;
    // Flat source of every output element; `zero` points at an appended 0.
    let zero = xs.elem_count();
    if u32::try_from(zero).is_err() {
        bail!("crop_windows: input {:?} is too large for 32-bit indices", xs.dims())
    }
    let len = [n, c, h, w].iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let mut src = Vec::new();
    if len.is_none_or(|len| src.try_reserve_exact(len).is_err()) {
        bail!("crop_windows: {n}x{c} windows of {h}x{w} do not fit in memory")
    }
    for (s, &(y0, x0)) in origins.iter().enumerate() {
        for ch in 0..c {
            let base = (s * c + ch) * plane;
            for dy in 0..h {
                let row = y0.checked_add(dy).filter(|&y| y < ih);
                for dx in 0..w {
                    let col = x0.checked_add(dx).filter(|&x| x < iw);
                    src.push(match (row, col) {
                        (Some(y), Some(x)) => base + y * iw + x,
                        _ => zero,
                    } as u32);
                }
            }
        }
    }
    let padded = Tensor::cat(&[xs.flatten_all()?, Tensor::zeros(1, xs.dtype(), xs.device())?], 0)?;
    let index = Tensor::from_vec(src, n * c * h * w, xs.device())?;
    padded.index_select(&index, 0)?.reshape((n, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_check, rand_tensor};
    use candle_core::{DType, Device, Var};

    fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
        t.flatten_from(1)?.to_vec2::<f32>()
    }

    #[test]
    fn select_then_scatter_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let x = rand_tensor(&[5, 2, 3], 1, &dev)?;
        let (exit, rest) = (vec![3u32, 0], vec![1u32, 2, 4]);
        let a = select_rows(&x, &exit)?;
        let b = select_rows(&x, &rest)?;
        assert_eq!(rows(&a)?, [rows(&x)?[3].clone(), rows(&x)?[0].clone()]);
        // Consecutive indices: a view with the same values.
        assert_eq!(rows(&b.narrow(0, 0, 2)?)?, rows(&x.narrow(0, 1, 2)?)?);
        let back = scatter_rows(&[(exit, a), (rest, b), (vec![], x.narrow(0, 0, 0)?)], 5)?;
        assert_eq!(rows(&back)?, rows(&x)?);
        assert_eq!(select_rows(&x, &[])?.dims(), [0, 2, 3]);
        Ok(())
    }

    #[test]
    fn gradients_pass_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = rand_tensor(&[4, 3, 5, 6], 2, &dev)?;
        grad_check(&x, |t| select_rows(t, &[2, 0, 2]), 1e-3)?;
        grad_check(&x, |t| select_rows(t, &[1, 2]), 1e-3)?;
        grad_check(
            &x,
            |t| scatter_rows(&[(vec![2, 0], select_rows(t, &[0, 1])?), (vec![3, 1], select_rows(t, &[3, 2])?)], 4),
            1e-3,
        )?;
        // Inside, across the bottom-right border, and fully outside.
        let origins = [(1, 2), (3, 4), (0, 0), (9, 0)];
        grad_check(&x, |t| crop_windows(t, &origins, (3, 4)), 1e-3)?;
        // Batch 1.
        grad_check(&x.narrow(0, 0, 1)?, |t| crop_windows(t, &[(2, 1)], (2, 5)), 1e-3)?;
        Ok(())
    }

    #[test]
    fn dropped_rows_get_zero_gradient() -> Result<()> {
        let x = Var::from_tensor(&rand_tensor(&[3, 2], 3, &Device::Cpu)?)?;
        let grads = select_rows(x.as_tensor(), &[2, 2])?.sum_all()?.backward()?;
        let Some(g) = grads.get(x.as_tensor()) else { panic!("no gradient") };
        assert_eq!(g.to_vec2::<f32>()?, [[0.0, 0.0], [0.0, 0.0], [2.0, 2.0]]);
        Ok(())
    }

    #[test]
    fn crop_values_by_hand() -> Result<()> {
        // Two 1-channel 3x3 images 0..9 and 10..19.
        let x = Tensor::arange(0f32, 18.0, &Device::Cpu)?.reshape((2, 1, 3, 3))?;
        let y = crop_windows(&x, &[(1, 1), (2, 0)], (2, 3))?;
        let want = [[4.0, 5.0, 0.0, 7.0, 8.0, 0.0], [15.0, 16.0, 17.0, 0.0, 0.0, 0.0]];
        assert_eq!(rows(&y)?, want);
        // An origin at the end of the address space is just outside.
        let far = crop_windows(&x, &[(usize::MAX, 0), (0, usize::MAX - 1)], (2, 3))?;
        assert_eq!(far.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn bad_indices_are_errors() -> Result<()> {
        let x = Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?;
        let msg = |r: Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();
        assert!(msg(select_rows(&x, &[0, 3])).contains("index 3 is out of range for a batch of 3"));
        let part = |i: Vec<u32>| (i.clone(), Tensor::zeros((i.len(), 2), DType::F32, &Device::Cpu).unwrap());
        assert!(msg(scatter_rows(&[part(vec![0, 1])], 3)).contains("no part has index 2"));
        assert!(msg(scatter_rows(&[part(vec![0, 1]), part(vec![1, 2])], 3)).contains("index 1 appears more than once"));
        assert!(msg(scatter_rows(&[part(vec![0, 5])], 2)).contains("out of range"));
        assert!(msg(scatter_rows(&[(vec![0], x.clone())], 1)).contains("shape"));
        assert!(msg(scatter_rows(&[], 0)).contains("no parts"));
        let img = Tensor::zeros((2, 1, 3, 3), DType::F32, &Device::Cpu)?;
        assert!(msg(crop_windows(&img, &[(0, 0)], (2, 2))).contains("1 origins for a batch of 2"));
        assert!(msg(crop_windows(&img, &[(0, 0), (0, 0)], (0, 2))).contains("at least 1x1"));
        assert!(msg(crop_windows(&img, &[(0, 0), (0, 0)], (usize::MAX, 2))).contains("do not fit"));
        Ok(())
    }
}
