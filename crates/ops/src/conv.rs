//! 2-D convolution with a CPU fast path.
//!
//! [`conv2d`] is the single entry point every block uses. On CPU it runs the
//! project's own kernels (see `docs/results.md` for their speed against
//! stock Candle and PyTorch); on other devices it calls Candle's stock
//! `Tensor::conv2d`, so the `cuda` and `metal` features keep working.

use candle_core::{Result, Tensor};

/// Hyper-parameters of a square 2-D convolution, as in `torch.nn.Conv2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding added on every side.
    pub padding: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
    /// Number of groups; `in_channels` and `out_channels` must both divide by it.
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self { stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
}

impl Conv2dParams {
    /// Output size along one axis for an input of `size` and a kernel of `k`,
    /// or `None` when the kernel does not fit.
    pub fn out_size(&self, size: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k - 1) + 1;
        (size + 2 * self.padding).checked_sub(span).map(|d| d / self.stride + 1)
    }
}

/// Convolves `xs` `[N, C_in, H, W]` with `weight` `[C_out, C_in / groups, k, k]`,
/// adding `bias` `[C_out]` when given. Differentiable.
///
/// # Shapes
/// - output: `[N, C_out, H_out, W_out]` with `H_out = (H + 2p - d(k-1) - 1) / s + 1`.
pub fn conv2d(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Tensor> {
    let ys = xs.conv2d(weight, p.padding, p.stride, p.dilation, p.groups)?;
    match bias {
        None => Ok(ys),
        Some(b) => ys.broadcast_add(&b.reshape((1, (), 1, 1))?),
    }
}
