//! [`TensorFile`] and [`load_tensors`]: one entry point for every supported weight format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::format::{Detected, Format, detect, hex_head};
use crate::meta::WeightMeta;
use crate::{pth, safetensors_io};

/// The `nn.DataParallel` prefix that loading strips from every key.
const DATA_PARALLEL_PREFIX: &str = "module.";

/// The tensors of a weight file, as loaded by [`load_tensors`].
#[derive(Debug, Clone)]
pub struct TensorFile {
    /// Tensors by key: CPU, `f32`, contiguous, `module.` prefix stripped, `num_batches_tracked`
    /// counters dropped.
    pub tensors: BTreeMap<String, Tensor>,
    /// The safetensors header metadata (`__metadata__`); empty for PyTorch checkpoints.
    pub metadata: BTreeMap<String, String>,
    /// The format the file was recognised as.
    pub format: Format,
    /// Where the tensors came from, for error messages.
    pub path: PathBuf,
}

impl TensorFile {
    /// Checks that every tensor holds finite values only.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the first tensor (in key order) with a NaN
    /// or an infinity.
    pub fn check_finite(&self) -> Result<()> {
        for (key, t) in &self.tensors {
            let values = t
                .flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| Error::BadMeta { path: self.path.clone(), field: key.clone(), problem: e.to_string() })?;
            let count = values.iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                return Err(Error::NonFinite { path: self.path.clone(), key: key.clone(), count, total: values.len() });
            }
        }
        Ok(())
    }

    /// The [`WeightMeta`] stored in the header by [`save_safetensors`](crate::save_safetensors).
    /// Fields missing from the header keep their defaults; unknown entries go to `extra`.
    ///
    /// # Errors
    /// [`Error::BadMeta`] for a PyTorch checkpoint (it has no header metadata) or a structured
    /// field that is not valid JSON.
    pub fn weight_meta(&self) -> Result<WeightMeta> {
        match self.format {
            Format::Safetensors => WeightMeta::from_metadata(&self.path, &self.metadata),
            Format::PyTorchZip | Format::PyTorchLegacy => Err(Error::no_weight_meta(&self.path)),
        }
    }
}

/// The largest weight file read: 8 GiB.
pub const MAX_FILE_BYTES: u64 = 8 << 30;

/// Loads every tensor of a safetensors file or a PyTorch zip checkpoint (`.pth`, `.pth.tar`).
///
/// The format is recognised from the content, not the extension. For a checkpoint, the state
/// dict is the `state_dict`, `model_state_dict` or `model` entry of the saved dict, or the saved
/// dict itself. Float tensors (f32, f16, bf16, f64) become `f32`; int64 `num_batches_tracked`
/// scalars are dropped; an optional `module.` prefix is stripped from every key.
///
/// # Errors
/// A typed [`Error`] naming the file for: I/O failures, an unknown or legacy (non-zip) format, a
/// truncated file, a bad safetensors header, a zip without `data.pkl`, a pickle that cannot be
/// read (unsupported opcode, truncation), no state dict, a tensor with another dtype, a tensor
/// view outside its storage, or two keys that collide after stripping `module.`.
pub fn load_tensors(path: impl AsRef<Path>) -> Result<TensorFile> {
    let path = path.as_ref();
    // Checked before anything is read: no model anytime builds has more than
    // 2^30 parameters (4 GiB of f32; an f64 file twice that).
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > MAX_FILE_BYTES {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{len} bytes, more than the {MAX_FILE_BYTES} a weight file may have"),
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(path, &bytes)
}

/// [`load_tensors`] on bytes already in memory; `path` only names them in
/// errors.
///
/// # Errors
/// As [`load_tensors`].
pub fn parse_tensors(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    parse(path, bytes)
}

/// [`load_tensors`] on the content `bytes` of `path`.
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<TensorFile> {
    let (format, entries, metadata) = match detect(bytes) {
        Detected::Known(Format::Safetensors) => {
            let (entries, metadata) = safetensors_io::read(path, bytes)?;
            (Format::Safetensors, entries, metadata)
        }
        Detected::Known(Format::PyTorchZip) => (Format::PyTorchZip, pth::read(path, bytes)?, BTreeMap::new()),
        Detected::LegacyTorch | Detected::Known(Format::PyTorchLegacy) => {
            (Format::PyTorchLegacy, pth::read_legacy(path, bytes)?, BTreeMap::new())
        }
        Detected::Unknown => {
            return Err(Error::UnknownFormat { path: path.to_owned(), head: hex_head(bytes) });
        }
    };
    let mut tensors = BTreeMap::new();
    for (key, tensor) in entries {
        let key = key.strip_prefix(DATA_PARALLEL_PREFIX).map(str::to_owned).unwrap_or(key);
        if tensors.contains_key(&key) {
            return Err(Error::DuplicateKey { path: path.to_owned(), key });
        }
        tensors.insert(key, tensor);
    }
    Ok(TensorFile { tensors, metadata, format, path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{fixture, testdata};

    /// The values `gen_testdata.py` stores (see testdata/README.md), without the `module.` prefix.
    fn expected_tiny() -> BTreeMap<&'static str, (Vec<usize>, Vec<f32>)> {
        let arange: Vec<f32> = (0..12).map(|i| i as f32).collect();
        BTreeMap::from([
            ("conv.weight", (vec![3, 4], arange)),
            ("conv.weight_t", (vec![4, 3], vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.])),
            ("conv.row", (vec![4], vec![4., 5., 6., 7.])),
            ("conv.every_other", (vec![3, 2], vec![0., 2., 4., 6., 8., 10.])),
            ("bn.running_mean", (vec![2], vec![0.5, -1.5])),
            ("half", (vec![3], vec![1.0, -2.5, 65504.0])),
            ("brain", (vec![2, 2], vec![1.0, 0.5, -3.0, 256.0])),
            ("double", (vec![2], vec![0.1f64 as f32, 1e-3f64 as f32])),
            ("scalar", (vec![], vec![2.0])),
            ("param", (vec![2], vec![3.0, 4.0])),
        ])
    }

    fn assert_tiny(file: &TensorFile) {
        let expected = expected_tiny();
        let keys: Vec<&str> = file.tensors.keys().map(String::as_str).collect();
        let expected_keys: Vec<&str> = expected.keys().copied().collect();
        assert_eq!(keys, expected_keys, "{}", file.path.display());
        for (key, (shape, values)) in expected {
            let t = &file.tensors[key];
            assert_eq!(t.dtype(), candle_core::DType::F32);
            assert_eq!(t.dims(), shape.as_slice(), "{key}");
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values, "{key}");
        }
    }

    #[test]
    fn loads_every_torch_save_layout() {
        for name in [
            "bare_state_dict.pth",
            "checkpoint_module.pth.tar",
            "model_state_dict.pth",
            "model_key.pth",
            "protocol4.pth",
        ] {
            let file = load_tensors(testdata(name)).unwrap();
            assert_eq!(file.format, Format::PyTorchZip);
            assert!(file.metadata.is_empty());
            assert_tiny(&file);
        }
    }

    /// The legacy (pre-1.6, non-zip) format: the bare state dict, and a training checkpoint
    /// with `module.` keys, an optimiser state (its momentum buffer) and int64 and bool tensors
    /// outside the state dict, whose storages sit between the state dict's in the data section.
    #[test]
    fn loads_the_legacy_non_zip_format() {
        for name in ["legacy.pth", "legacy_checkpoint_module.pth.tar"] {
            let file = load_tensors(testdata(name)).unwrap();
            assert_eq!(file.format, Format::PyTorchLegacy);
            assert_tiny(&file);
        }
        // Truncated anywhere: a typed error naming the file, never a panic.
        let bytes = std::fs::read(testdata("legacy_checkpoint_module.pth.tar")).unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            if let Err(e) = parse(Path::new("cut.pth"), &bytes[..cut]) {
                assert!(e.to_string().contains("cut.pth"), "{e}");
            }
        }
        let err = parse(Path::new("cut.pth"), &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(matches!(err, Error::Legacy { .. }), "{err}");
    }

    /// GFNet's two checkpoint forms (testdata/README.md): what `train.py` saves (zip, encoder
    /// keys bare) and the released files (legacy, encoder keys with `module.`, metadata entries)
    /// load as one state dict under `model.`, `model_prime.`, `fc.` and `policy.`; the optimiser
    /// states and metadata are left out.
    #[test]
    fn gfnet_checkpoints_load_under_the_component_prefixes() {
        for (name, format) in
            [("gfnet_train.pth.tar", Format::PyTorchZip), ("gfnet_released.pth.tar", Format::PyTorchLegacy)]
        {
            let file = load_tensors(testdata(name)).unwrap();
            assert_eq!(file.format, format, "{name}");
            let values = |k: &str| file.tensors[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(values("model.conv_stem.weight"), (0..8).map(|i| i as f32).collect::<Vec<_>>(), "{name}");
            assert_eq!(values("model_prime.bn1.running_var"), [1400.0, 1401.0], "{name}");
            assert_eq!(values("fc.fc_3.bias"), [2300.0, 2301.0, 2302.0], "{name}");
            assert_eq!(file.tensors["policy.state_encoder.0.weight"].dims(), &[2, 2, 1, 1], "{name}");
            let prefixes = ["model.", "model_prime.", "fc.", "policy."];
            assert!(file.tensors.keys().all(|k| prefixes.iter().any(|p| k.starts_with(p))), "{name}");
            assert!(!file.tensors.keys().any(|k| k.contains("module.") || k.ends_with("num_batches_tracked")));
            // 7 + 7 encoder tensors, 4 cascade heads, 11 policy tensors.
            assert_eq!(file.tensors.len(), 29, "{name}: {:?}", file.tensors.keys());
        }
    }

    #[test]
    fn safetensors_copy_of_the_tiny_state_dict_loads_the_same() {
        // gen_testdata.py: safetensors.torch.save_file({k: v.contiguous() ...}, "tiny.safetensors")
        let file = load_tensors(testdata("tiny.safetensors")).unwrap();
        assert_eq!(file.format, Format::Safetensors);
        assert_eq!(file.metadata.get("source").map(String::as_str), Some("gen_testdata.py"));
        assert_tiny(&file);
    }

    #[test]
    fn reference_checkpoint_and_safetensors_hold_identical_tensors() {
        let pth = load_tensors(fixture("msdnet_cifar100_lingrow/checkpoint.pth.tar")).unwrap();
        let st = load_tensors(fixture("msdnet_cifar100_lingrow/state_dict.safetensors")).unwrap();
        assert_eq!(pth.format, Format::PyTorchZip);
        assert_eq!(st.format, Format::Safetensors);
        assert!(pth.tensors.keys().eq(st.tensors.keys()));
        assert!(pth.tensors.len() > 300, "{}", pth.tensors.len());
        assert!(pth.tensors.contains_key("classifier.0.linear.weight"));
        assert!(!pth.tensors.keys().any(|k| k.starts_with("module.") || k.ends_with("num_batches_tracked")));
        for (key, a) in &pth.tensors {
            let b = &st.tensors[key];
            assert_eq!(a.dims(), b.dims(), "{key}");
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{key}");
        }
        assert_eq!(st.metadata.get("format").map(String::as_str), Some("pt"));
    }

    #[test]
    fn unsupported_files_get_typed_errors_naming_the_file() {
        let err = load_tensors(testdata("no_state_dict.pth")).unwrap_err();
        assert!(matches!(err, Error::NoStateDict { .. }), "{err}");
        assert!(err.to_string().contains(r#""epoch", "arch""#), "{err}");

        let err = load_tensors(testdata("int_tensor.pth")).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedDtype { key, dtype, .. } if key == "index" && dtype == "int64"),
            "{err}"
        );

        let err = load_tensors(testdata("README.md")).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");

        let err = load_tensors(testdata("does_not_exist.pth")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("does_not_exist.pth"), "{err}");
    }

    #[test]
    fn module_prefix_collision_is_an_error() {
        let tensors = [("module.a", 1.0f32), ("a", 2.0)]
            .map(|(k, v)| (k.to_owned(), Tensor::new(&[v], &candle_core::Device::Cpu).unwrap()));
        let bytes = crate::testutil::safetensors_bytes(&tensors);
        let err = parse(Path::new("dup.safetensors"), &bytes).unwrap_err();
        assert!(matches!(&err, Error::DuplicateKey { key, .. } if key == "a"), "{err}");
    }

    #[test]
    fn weight_meta_of_a_checkpoint_is_an_error() {
        let file = load_tensors(testdata("bare_state_dict.pth")).unwrap();
        let err = file.weight_meta().unwrap_err();
        assert!(err.to_string().contains("carry no weight metadata"), "{err}");
    }
}
