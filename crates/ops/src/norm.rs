//! Batch normalisation over `[N, C, H, W]`, optionally fused with a ReLU.
//!
//! Training mode normalises with the batch statistics and returns them so the
//! caller can update its running statistics; eval mode applies the folded
//! per-channel scale and shift.

use candle_core::{D, Result, Tensor};

/// Result of a training-mode batch norm.
#[derive(Debug, Clone)]
pub struct BatchNormTrain {
    /// The normalised (and, if asked, rectified) output, same shape as the input.
    pub ys: Tensor,
    /// Per-channel batch mean `[C]` (detached).
    pub mean: Tensor,
    /// Per-channel biased batch variance `[C]` (detached).
    pub var: Tensor,
}

/// Training-mode batch norm: `y = gamma * (x - mean) / sqrt(var + eps) + beta`,
/// statistics over `N, H, W`. Differentiable in `xs`, `gamma` and `beta`.
pub fn batch_norm_train(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    let (_n, c, _h, _w) = xs.dims4()?;
    let xt = xs.transpose(0, 1)?.flatten_from(1)?; // [C, N*H*W]
    let mean = xt.mean_keepdim(D::Minus1)?;
    let centered = xt.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (var.clone() + eps)?.sqrt()?.recip()?;
    let scale = inv.broadcast_mul(&gamma.reshape((c, 1))?)?;
    let ys = centered.broadcast_mul(&scale)?.broadcast_add(&beta.reshape((c, 1))?)?;
    let ys = ys.reshape((c, xs.dim(0)?, xs.dim(2)?, xs.dim(3)?))?.transpose(0, 1)?;
    let ys = if relu { ys.relu()? } else { ys };
    Ok(BatchNormTrain {
        ys,
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
    })
}

/// Eval-mode batch norm with running statistics:
/// `y = (x - running_mean) * gamma / sqrt(running_var + eps) + beta`.
pub fn batch_norm_eval(
    xs: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let c = xs.dim(1)?;
    let scale = (running_var + eps)?.sqrt()?.recip()?.mul(gamma)?;
    let shift = (beta - running_mean.mul(&scale)?)?;
    let ys = xs
        .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
        .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
    if relu { ys.relu() } else { Ok(ys) }
}
