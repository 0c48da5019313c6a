//! CIFAR-10 and CIFAR-100 in their binary formats: records of one label byte
//! (CIFAR-10) or a coarse and a fine label byte (CIFAR-100), then 3,072 bytes
//! of 32x32 RGB pixels, channel-major.

use crate::dataset::{Dataset, Normalization};
use crate::error::{Error, Result};
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cifar {
    /// 10 classes, `data_batch_{1..5}.bin` / `test_batch.bin`.
    Ten,
    /// 100 fine classes, `train.bin` / `test.bin`.
    Hundred,
}

/// Parses one binary batch file's bytes.
pub fn parse(bytes: &[u8], kind: Cifar, path: &Path) -> Result<(Vec<u8>, Vec<u32>)> {
    let (label_bytes, classes) = match kind {
        Cifar::Ten => (1, 10),
        Cifar::Hundred => (2, 100),
    };
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(Error::Format {
            path: path.to_path_buf(),
            msg: format!("{} bytes is not a whole number of {rec}-byte CIFAR records", bytes.len()),
        });
    }
    let n = bytes.len() / rec;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[label_bytes - 1] as u32;
        if label >= classes {
            return Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("record {i}: label {label} is not one of {classes} classes"),
            });
        }
        labels.push(label);
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok((images, labels))
}

/// Loads the training (`train = true`) or test split from `dir`.
pub fn cifar(dir: &Path, kind: Cifar, train: bool) -> Result<Dataset> {
    let files: Vec<String> = match (kind, train) {
        (Cifar::Ten, true) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (Cifar::Ten, false) => vec!["test_batch.bin".into()],
        (Cifar::Hundred, true) => vec!["train.bin".into()],
        (Cifar::Hundred, false) => vec!["test.bin".into()],
    };
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(Error::Missing {
                msg: format!("{} not found (expected the CIFAR binary version: {})", p.display(), files.join(", ")),
            });
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::Io { path: p.clone(), source: e })?;
        let (i, l) = parse(&bytes, kind, &p)?;
        images.extend(i);
        labels.extend(l);
    }
    // The references' constants (MSDNet's and RANet's `dataloader.py`).
    let (classes, p) = match kind {
        Cifar::Ten => (10, crate::preprocess::Preprocess::cifar10()),
        Cifar::Hundred => (100, crate::preprocess::Preprocess::cifar100()),
    };
    let norm = Normalization { mean: p.mean, std: p.std };
    let names = (0..classes).map(|c| c.to_string()).collect();
    let name =
        format!("{}/{}", if kind == Cifar::Ten { "cifar10" } else { "cifar100" }, if train { "train" } else { "test" });
    Dataset::new(name, images, labels, (3, 32, 32), names, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_bad_lengths_and_labels() {
        let p = Path::new("b.bin");
        let mut ten = vec![3u8];
        ten.extend(std::iter::repeat_n(7u8, PIXELS));
        ten.push(9);
        ten.extend(std::iter::repeat_n(8u8, PIXELS));
        let (img, lab) = parse(&ten, Cifar::Ten, p).unwrap();
        assert_eq!(lab, vec![3, 9]);
        assert_eq!(img.len(), 2 * PIXELS);
        assert!(parse(&ten[..ten.len() - 1], Cifar::Ten, p).unwrap_err().to_string().contains("whole number"));
        let mut bad = ten.clone();
        bad[0] = 10;
        assert!(parse(&bad, Cifar::Ten, p).unwrap_err().to_string().contains("label 10"));
        // CIFAR-100: coarse then fine label.
        let mut hundred = vec![1u8, 42];
        hundred.extend(std::iter::repeat_n(0u8, PIXELS));
        assert_eq!(parse(&hundred, Cifar::Hundred, p).unwrap().1, vec![42]);
        assert!(parse(&[], Cifar::Hundred, p).is_err());
    }

    #[test]
    fn fuzz_never_panics() {
        let mut s = 99u64;
        for len in [0, 1, 3073, 3074, 6146, 6147, 10_000] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (s >> 56) as u8
                })
                .collect();
            let _ = parse(&bytes, Cifar::Ten, Path::new("f"));
            let _ = parse(&bytes, Cifar::Hundred, Path::new("f"));
        }
        assert!(
            cifar(Path::new("/nonexistent"), Cifar::Ten, true).unwrap_err().to_string().contains("data_batch_1.bin")
        );
    }
}
