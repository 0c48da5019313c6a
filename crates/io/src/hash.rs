//! SHA-256 digests of files and of tensor sets.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path`, as 64 lowercase hex digits.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// A stable SHA-256 of a tensor set, as 64 lowercase hex digits: it ties derived data (such as
/// calibrated exit thresholds) to the exact weights it was computed from.
///
/// For each tensor in key order, it hashes the key's byte length (u64 LE) and bytes, the rank
/// and each dimension (u64 LE), and the values as little-endian `f32`. The digest therefore
/// depends on names, shapes and values, not on dtype (for values `f32` represents exactly),
/// device or memory layout.
///
/// # Errors
/// When a tensor cannot be copied to the CPU as `f32`.
pub fn sha256_tensors(tensors: &BTreeMap<String, Tensor>) -> candle_core::Result<String> {
    let mut hasher = Sha256::new();
    for (key, tensor) in tensors {
        hasher.update((key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update((tensor.rank() as u64).to_le_bytes());
        for &d in tensor.dims() {
            hasher.update((d as u64).to_le_bytes());
        }
        let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn file_digest_matches_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.txt");
        std::fs::write(&path, b"abc").unwrap();
        // printf abc | sha256sum
        assert_eq!(sha256_file(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(matches!(sha256_file(dir.path().join("missing")), Err(Error::Io { .. })));
    }

    #[test]
    fn tensor_digest_depends_on_names_shapes_and_values_only() {
        let dev = Device::Cpu;
        let set = |name: &str, t: Tensor| BTreeMap::from([(name.to_owned(), t)]);
        let base = sha256_tensors(&set("w", Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap())).unwrap();
        assert_eq!(base.len(), 64);
        // Same values as f64, and as a transposed (non-contiguous) view: same digest.
        let f64s = Tensor::new(&[[1f64, 2.], [3., 4.]], &dev).unwrap();
        assert_eq!(sha256_tensors(&set("w", f64s)).unwrap(), base);
        let transposed = Tensor::new(&[[1f32, 3.], [2., 4.]], &dev).unwrap().t().unwrap();
        assert_eq!(sha256_tensors(&set("w", transposed)).unwrap(), base);
        // Another name, shape or value: another digest.
        for other in [
            set("v", Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap()),
            set("w", Tensor::new(&[1f32, 2., 3., 4.], &dev).unwrap()),
            set("w", Tensor::new(&[[1f32, 2.], [3., 5.]], &dev).unwrap()),
        ] {
            assert_ne!(sha256_tensors(&other).unwrap(), base);
        }
    }
}
