//! Fashion-MNIST (Xiao, Rasul, Vollgraf, 2017): 28x28 grey-scale images of 10
//! clothing classes, 60,000 training and 10,000 test images, in IDX files as
//! the Debian package `dataset-fashion-mnist` installs them.

use crate::dataset::{Dataset, Normalization};
use crate::error::{Error, Result};
use crate::idx;
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten class names, in label order.
pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Normalisation statistics of the training set.
pub fn normalization() -> Normalization {
    Normalization { mean: vec![0.2860], std: vec![0.3530] }
}

/// Which part of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images (`train-*`).
    Train,
    /// The 10,000 test images (`t10k-*`).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Loads a split from `dir`, which holds `<split>-images-idx3-ubyte[.gz]` and
/// `<split>-labels-idx1-ubyte[.gz]`.
pub fn fashion_mnist(dir: &Path, split: Split) -> Result<Dataset> {
    let p = split.prefix();
    let (img_name, lbl_name) = (format!("{p}-images-idx3-ubyte"), format!("{p}-labels-idx1-ubyte"));
    let (Some(img_path), Some(lbl_path)) = (find(dir, &img_name), find(dir, &lbl_name)) else {
        return Err(Error::Missing {
            msg: format!(
                "Fashion-MNIST files {img_name}[.gz] and {lbl_name}[.gz] not found in {}: install them with \
                 `apt-get install dataset-fashion-mnist` (they go to {DEFAULT_FASHION_MNIST_DIR}) or pass a \
                 directory holding the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
                 t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz)",
                dir.display()
            ),
        });
    };
    let images = idx::read(&img_path)?;
    let labels = idx::read(&lbl_path)?;
    let &[n, h, w] = images.dims.as_slice() else {
        return Err(Error::Format {
            path: img_path,
            msg: format!("expected 3 dimensions [N, 28, 28], got {:?}", images.dims),
        });
    };
    if labels.dims != [n] {
        return Err(Error::Format {
            path: lbl_path,
            msg: format!("expected {n} labels (one per image), got dimensions {:?}", labels.dims),
        });
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
        return Err(Error::Format { path: lbl_path, msg: format!("label {bad} is not a class (0..9)") });
    }
    Dataset::new(
        format!("fashion-mnist/{p}"),
        images.data,
        labels.data.into_iter().map(u32::from).collect(),
        (1, h, w),
        CLASSES.iter().map(|s| s.to_string()).collect(),
        normalization(),
    )
}

/// The committed sample: the first 1,000 test images.
pub fn fashion_mnist_sample_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/fashion-mnist-sample"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_committed_sample() {
        let ds = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test).unwrap();
        assert_eq!(ds.len(), 1000);
        assert_eq!(ds.image_shape(), (1, 28, 28));
        // The first test image is an ankle boot (label 9), the second a pullover.
        assert_eq!(&ds.labels()[..2], &[9, 2]);
    }

    #[test]
    fn missing_files_say_how_to_get_them() {
        let err = fashion_mnist(Path::new("/nonexistent"), Split::Train).unwrap_err().to_string();
        assert!(err.contains("apt-get install dataset-fashion-mnist"), "{err}");
    }

    #[test]
    fn full_dataset_when_installed() {
        let dir = Path::new(DEFAULT_FASHION_MNIST_DIR);
        if !dir.join("train-images-idx3-ubyte.gz").exists() {
            eprintln!("skipped: {DEFAULT_FASHION_MNIST_DIR} not installed (apt-get install dataset-fashion-mnist)");
            return;
        }
        assert_eq!(fashion_mnist(dir, Split::Train).unwrap().len(), 60_000);
        assert_eq!(fashion_mnist(dir, Split::Test).unwrap().len(), 10_000);
    }
}
