//! Datasets for training and evaluating multi-exit classifiers.
//!
//! - [`fmnist`]: Fashion-MNIST from its IDX files (gzip or raw), as the
//!   Debian package `dataset-fashion-mnist` installs them, plus a committed
//!   1,000-image sample;
//! - [`dataset`]: in-memory datasets with their normalisation, and a seeded,
//!   **un-augmented** held-out split (the MSDNet reference calibrates on an
//!   augmented split; we do not);
//! - [`loader`]: seeded augmentation (pad + random crop, horizontal flip) and
//!   a prefetching, shuffling batch iterator that yields Candle tensors;
//! - [`idx`]: the IDX format;
//! - [`cifar`]: CIFAR-10/100 binary batches;
//! - [`cluttered`]: seeded cluttered canvases (GFNet's cluttered Fashion-MNIST),
//!   fixed for evaluation or fresh every epoch for training;
//! - [`folder`] and [`image`]: image folders (indexed, then streamed in
//!   parallel with bounded memory, unreadable files skipped and reported)
//!   and single PNG/JPEG images;
//! - [`source`]: what evaluation reads ([`source::EvalSource`]): ordered,
//!   un-augmented batches from a [`loader::Loader`] or a
//!   [`folder::FolderStream`];
//! - [`preprocess`]: the references' evaluation transforms (torchvision's
//!   `Resize` + `CenterCrop` on PIL images, pixel for pixel, and the
//!   normalisation constants).
//!
//! ```
//! use anytime_data::fmnist::{fashion_mnist, fashion_mnist_sample_dir, Split};
//! use anytime_data::loader::{Augment, BatchConfig, Loader};
//! # fn main() -> anytime_data::Result<()> {
//! let ds = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test)?;
//! let cfg = BatchConfig { batch_size: 64, shuffle: false, seed: 0, augment: Augment::default(), drop_last: false };
//! let loader = Loader::new(std::sync::Arc::new(ds), cfg)?;
//! let (images, labels) = loader.epoch(0, 0).next().expect("a batch")?;
//! assert_eq!(images.dims(), &[64, 1, 28, 28]);
//! assert_eq!(labels.dims(), &[64]);
//! # Ok(()) }
//! ```

pub mod cifar;
pub mod cluttered;
pub mod dataset;
pub mod error;
pub mod fmnist;
pub mod folder;
pub mod idx;
pub mod image;
pub mod loader;
pub mod preprocess;
pub mod source;

pub use error::{Error, Result};
