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
    from_idx(format!("fashion-mnist/{p}"), images, &img_path, labels, &lbl_path)
}

/// Builds the dataset from decoded image and label arrays (`paths` name them in errors).
fn from_idx(name: String, images: idx::Idx, img_path: &Path, labels: idx::Idx, lbl_path: &Path) -> Result<Dataset> {
    let &[n, h, w] = images.dims.as_slice() else {
        return Err(Error::Format {
            path: img_path.to_path_buf(),
            msg: format!("expected 3 dimensions [N, 28, 28], got {:?}", images.dims),
        });
    };
    if labels.dims != [n] {
        return Err(Error::Format {
            path: lbl_path.to_path_buf(),
            msg: format!("expected {n} labels (one per image), got dimensions {:?}", labels.dims),
        });
    }
    if let Some(bad) = labels.data.iter().find(|&&l| l >= 10) {
        return Err(Error::Format { path: lbl_path.to_path_buf(), msg: format!("label {bad} is not a class (0..9)") });
    }
    Dataset::new(
        name,
        images.data,
        labels.data.into_iter().map(u32::from).collect(),
        (1, h, w),
        CLASSES.iter().map(|s| s.to_string()).collect(),
        normalization(),
    )
}

/// The committed sample directory: the first 1,000 test and 1,000 training
/// images (`fashion-mnist-sample/` inside this crate; the repository's
/// `data/fashion-mnist-sample` links to it).
pub fn fashion_mnist_sample_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fashion-mnist-sample"))
}

/// The sample's test images, gzip-compressed IDX, inside the binary.
const SAMPLE_TEST_IMAGES: &[u8] = include_bytes!("../fashion-mnist-sample/t10k-images-idx3-ubyte.gz");
/// The sample's test labels, gzip-compressed IDX, inside the binary.
const SAMPLE_TEST_LABELS: &[u8] = include_bytes!("../fashion-mnist-sample/t10k-labels-idx1-ubyte.gz");

/// The sample's 1,000 test images and labels, from a copy built into the
/// program (about 440 KB): it needs no file at run time, so an installed
/// binary shows them from any directory. Same images as
/// `fashion_mnist(&fashion_mnist_sample_dir(), Split::Test)`.
pub fn fashion_mnist_sample_test() -> Result<Dataset> {
    let (img_path, lbl_path) =
        (Path::new("<built-in>/t10k-images-idx3-ubyte.gz"), Path::new("<built-in>/t10k-labels-idx1-ubyte.gz"));
    let images = idx::parse(&idx::maybe_gunzip(SAMPLE_TEST_IMAGES.to_vec(), img_path)?, img_path)?;
    let labels = idx::parse(&idx::maybe_gunzip(SAMPLE_TEST_LABELS.to_vec(), lbl_path)?, lbl_path)?;
    from_idx("fashion-mnist/t10k".into(), images, img_path, labels, lbl_path)
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
    fn the_built_in_sample_is_the_committed_one() {
        let built_in = fashion_mnist_sample_test().unwrap();
        let on_disk = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test).unwrap();
        assert_eq!(built_in.len(), 1000);
        assert_eq!(built_in.labels(), on_disk.labels());
        assert!((0..1000).all(|i| built_in.image(i) == on_disk.image(i)));
        assert_eq!(built_in.image_shape(), on_disk.image_shape());
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
