//! Batch compaction (placeholder API, being replaced by the full implementation).

use candle_core::{Result, Tensor};

/// Keeps the samples at `indices` along dim 0.
pub fn select_rows(xs: &Tensor, indices: &[u32]) -> Result<Tensor> {
    let idx = Tensor::new(indices, xs.device())?;
    xs.index_select(&idx, 0)
}
