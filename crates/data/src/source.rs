//! What evaluation reads: batches in a fixed order, without augmentation,
//! from an in-memory dataset ([`Loader`]) or a folder streamed from disk
//! ([`crate::folder::FolderStream`]).
//!
//! ```
//! use anytime_data::fmnist::{fashion_mnist, fashion_mnist_sample_dir, Split};
//! use anytime_data::loader::Loader;
//! use anytime_data::source::EvalSource;
//! # fn main() -> anytime_data::Result<()> {
//! let ds = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test)?.take(100)?;
//! let source = Loader::in_order(std::sync::Arc::new(ds), 64)?;
//! let sizes: Vec<usize> = source.batches().map(|b| b.map(|b| b.indices.len())).collect::<Result<_, _>>()?;
//! assert_eq!(sizes, [64, 36]);
//! assert_eq!(source.image_name(3), "#3");
//! # Ok(()) }
//! ```

use crate::error::Result;
use crate::loader::Loader;
use candle_core::Tensor;
use std::path::PathBuf;

/// One batch of an [`EvalSource`].
#[derive(Debug, Clone)]
pub struct EvalBatch {
    /// Normalised images `[N, C, H, W]` on the source's device.
    pub images: Tensor,
    /// Labels `[N]` (u32).
    pub labels: Tensor,
    /// Each image's index in the source (`0..len()`), ascending; an
    /// unreadable image's index is missing.
    pub indices: Vec<usize>,
}

/// An image that could not be read, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// Batches in a fixed order without augmentation: what an evaluation pass
/// reads, as often as it needs.
pub trait EvalSource: Send + Sync + std::fmt::Debug {
    /// Images the source names (unreadable ones included: they are only
    /// found when read).
    fn len(&self) -> usize;
    /// Whether the source names no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape `(C, H, W)` of every image in a batch.
    fn sample_shape(&self) -> (usize, usize, usize);
    /// Class names, in label order.
    fn classes(&self) -> Vec<String>;
    /// The batches of one pass, in index order.
    fn batches(&self) -> Box<dyn Iterator<Item = Result<EvalBatch>> + '_>;
    /// How image `index` is named in per-image results: its path, or `#index`.
    fn image_name(&self, index: usize) -> String {
        format!("#{index}")
    }
    /// The images found unreadable so far (each pass reads the same ones).
    fn skipped(&self) -> Vec<Skipped> {
        Vec::new()
    }
}

impl EvalSource for Loader {
    fn len(&self) -> usize {
        self.dataset().len()
    }

    fn sample_shape(&self) -> (usize, usize, usize) {
        Loader::sample_shape(self)
    }

    fn classes(&self) -> Vec<String> {
        self.dataset().classes().to_vec()
    }

    fn batches(&self) -> Box<dyn Iterator<Item = Result<EvalBatch>> + '_> {
        let order = self.order(0);
        let mut start = 0;
        Box::new(self.epoch(0, 0).map(move |b| {
            let (images, labels) = b?;
            let n = images.dim(0)?;
            let indices = order[start..start + n].to_vec();
            start += n;
            Ok(EvalBatch { images, labels, indices })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Dataset, Normalization};
    use std::sync::Arc;

    #[test]
    fn a_loader_yields_every_index_once_in_order() {
        let norm = Normalization { mean: vec![0.0], std: vec![1.0] };
        let ds = Dataset::new(
            "t",
            (0..5 * 4).map(|i| i as u8).collect(),
            vec![0, 1, 0, 1, 0],
            (1, 2, 2),
            vec!["a".into(), "b".into()],
            norm,
        )
        .unwrap();
        let l = Loader::in_order(Arc::new(ds), 2).unwrap();
        let batches: Vec<EvalBatch> = l.batches().collect::<Result<_>>().unwrap();
        let idx: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(idx, [0, 1, 2, 3, 4]);
        assert_eq!(batches[2].labels.to_vec1::<u32>().unwrap(), [0]);
        assert_eq!(EvalSource::len(&l), 5);
        assert!(l.skipped().is_empty());
    }
}
