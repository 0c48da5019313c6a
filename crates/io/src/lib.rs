//! Weight files for `anytime`: safetensors and PyTorch checkpoints in, safetensors out.
//!
//! - [`load_tensors`] reads a safetensors file or a `torch.save` checkpoint, zip or legacy
//!   (`.pth`, `.pth.tar`, recognised by content) into a [`TensorFile`] of `f32` CPU tensors, with the
//!   `module.` prefix of `nn.DataParallel` stripped and `num_batches_tracked` counters dropped.
//!   The pickle inside checkpoints is read by a small defensive VM of this crate: no byte
//!   sequence makes loading panic.
//! - [`CheckedLoader`] / [`build_checked`] build a model from a [`TensorFile`] and report every
//!   missing, unexpected and mismatched key in one [`Error::KeyCheck`].
//! - [`save_safetensors`] writes weights with a [`WeightMeta`] (architecture, config, data set,
//!   per-exit accuracy and MFLOPs, provenance) in the header; [`read_meta`] reads it back.
//! - [`atomic_write`] / [`atomic_write_with`] replace files atomically; every write of this
//!   crate goes through them, and other crates use them for checkpoints and results.
//! - [`sha256_file`] and [`sha256_tensors`] identify weight files and weight sets.
//! - [`synthetic`] makes weights from an integer formula any language reproduces, for parity
//!   fixtures too large to store.
//!
//! Layout follows the reference PyTorch checkpoints of MSDNet (kalviny/MSDNet-PyTorch) and RANet
//! (yangle15/RANet-pytorch): `{'epoch', 'arch', 'state_dict', 'best_prec1', 'optimizer'}` with
//! `module.`-prefixed keys. GFNet's checkpoints (blackfeather-wang/GFNet-Pytorch: `train.py`'s
//! `{'model_state_dict', 'model_prime_state_dict', 'fc', 'policy', ...}`, and the released files,
//! legacy-format with `module.` encoder keys) load as one state dict under the prefixes
//! `model.`, `model_prime.`, `fc.` and `policy.`.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeMap;
//! use anytime_io::{WeightMeta, build_checked, load_tensors, read_meta, save_safetensors};
//! use candle_core::{DType, Device, Tensor};
//!
//! let dev = Device::Cpu;
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("fc.safetensors");
//! let tensors = BTreeMap::from([
//!     ("fc.weight".to_owned(), Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)?),
//!     ("fc.bias".to_owned(), Tensor::new(&[0.5f32, -0.5], &dev)?),
//! ]);
//! let meta = WeightMeta {
//!     architecture: "toy".into(),
//!     exit_accuracy: vec![0.75],
//!     ..Default::default()
//! };
//! save_safetensors(&path, &tensors, &meta)?;
//! assert_eq!(read_meta(&path)?.exit_accuracy, [0.75]);
//!
//! // Build a model strictly: any missing, unexpected or mis-shaped key is an error.
//! let file = load_tensors(&path)?;
//! let fc = build_checked(file, DType::F32, &dev, |vb| candle_nn::linear(3, 2, vb.pp("fc")))?;
//! assert_eq!(fc.weight().to_vec2::<f32>()?, [[1., 2., 3.], [4., 5., 6.]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod atomic;
mod checked;
mod decode;
mod error;
mod format;
mod hash;
mod meta;
mod pickle;
mod pth;
mod safetensors_io;
pub mod synthetic;
mod tensor_file;
#[cfg(test)]
mod testutil;

pub use atomic::{atomic_write, atomic_write_with, check_replaceable};
pub use checked::{CheckedLoader, KeyReport, ShapeMismatch, build_checked};
pub use error::{Error, Result};
pub use format::Format;
pub use hash::{sha256_file, sha256_tensors};
pub use meta::{WeightMeta, read_meta};
pub use pickle::PickleError;
pub use safetensors_io::save_safetensors;
pub use tensor_file::{MAX_FILE_BYTES, TensorFile, load_tensors, parse_tensors};

/// Parses a pickle stream as the `.pth` reader does (for fuzzing the pickle
/// reader directly; `.pth` files go through [`load_tensors`]).
///
/// # Errors
/// The reader's error for a stream it cannot read.
#[doc(hidden)]
pub fn parse_pickle(data: &[u8]) -> std::result::Result<(), PickleError> {
    pickle::parse(data).map(|_| ())
}
