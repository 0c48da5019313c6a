//! Reading and writing safetensors files.
//!
//! Before a buffer reaches the `safetensors` crate, its header is parsed here and every data
//! offset is checked against the buffer length: the crate adds header-supplied offsets without
//! overflow checks, and this check also lets a truncated file be reported as such.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors, View};
use serde::Deserialize;

use crate::atomic::atomic_write;
use crate::decode::{NamedTensors, decode_f32, is_batch_counter, torch_name};
use crate::error::{Error, Result};
use crate::format::{Detected, Format, detect};
use crate::meta::WeightMeta;

/// Bytes of the little-endian header-length prefix.
const LEN_BYTES: usize = 8;
/// The largest header accepted, as in the `safetensors` crate.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The parts of the JSON header checked here; other fields are left to the `safetensors` crate.
#[derive(Deserialize)]
struct Header {
    #[serde(rename = "__metadata__", default)]
    metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    tensors: BTreeMap<String, HeaderEntry>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    data_offsets: (u64, u64),
}

/// The header length announced by the first 8 bytes of `bytes`.
fn header_len(path: &Path, bytes: &[u8]) -> Result<u64> {
    let prefix: [u8; LEN_BYTES] = bytes.get(..LEN_BYTES).and_then(|b| b.try_into().ok()).ok_or(Error::Truncated {
        path: path.to_owned(),
        expected: LEN_BYTES as u64,
        actual: bytes.len() as u64,
    })?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES {
        return Err(Error::BadHeader {
            path: path.to_owned(),
            problem: format!("header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit"),
        });
    }
    Ok(n)
}

fn parse_header(path: &Path, json: &[u8]) -> Result<Header> {
    serde_json::from_slice(json).map_err(|e| Error::BadHeader { path: path.to_owned(), problem: e.to_string() })
}

/// Reads every tensor of the safetensors buffer `bytes` (the content of `path`) and its header
/// metadata. Float tensors become `f32`; int64 `num_batches_tracked` scalars are dropped.
pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<(NamedTensors, BTreeMap<String, String>)> {
    let actual = bytes.len() as u64;
    let header_end = LEN_BYTES as u64 + header_len(path, bytes)?;
    let truncated = |expected| Error::Truncated { path: path.to_owned(), expected, actual };
    let json = usize::try_from(header_end).ok().and_then(|end| bytes.get(LEN_BYTES..end));
    let header = parse_header(path, json.ok_or_else(|| truncated(header_end))?)?;
    let data_len = header.tensors.values().map(|e| e.data_offsets.1).max().unwrap_or(0);
    let expected = header_end.saturating_add(data_len);
    if actual < expected {
        return Err(truncated(expected));
    }

    let st = SafeTensors::deserialize(bytes).map_err(|source| Error::Safetensors { path: path.to_owned(), source })?;
    let mut tensors = Vec::with_capacity(st.len());
    for (key, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I64 if is_batch_counter(key, view.shape()) => continue,
            other => {
                return Err(Error::UnsupportedDtype {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let tensor = decode_f32(view.data(), dtype, view.shape())
            .map_err(|source| Error::Tensor { path: path.to_owned(), source })?;
        tensors.push((key.to_owned(), tensor));
    }
    Ok((tensors, header.metadata))
}

/// Reads only the header metadata of the safetensors file at `path`.
pub(crate) fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut prefix = Vec::with_capacity(LEN_BYTES);
    (&mut file).take(LEN_BYTES as u64).read_to_end(&mut prefix).map_err(|e| Error::io(path, e))?;
    if detect(&prefix) == Detected::Known(Format::PyTorchZip) {
        return Err(Error::no_weight_meta(path));
    }
    let n = header_len(path, &prefix)?;
    let mut json = Vec::new();
    file.take(n).read_to_end(&mut json).map_err(|e| Error::io(path, e))?;
    if (json.len() as u64) < n {
        let actual = (LEN_BYTES + json.len()) as u64;
        return Err(Error::Truncated { path: path.to_owned(), expected: LEN_BYTES as u64 + n, actual });
    }
    Ok(parse_header(path, &json)?.metadata)
}

/// Saves `tensors` as a safetensors file with `meta` in its header metadata, atomically (see
/// [`atomic_write`]). Tensors are stored as `f32`, the dtype loading produces, from any device.
///
/// # Errors
/// [`Error::UnsupportedDtype`] for a non-float tensor, [`Error::BadMeta`] when `meta` cannot be
/// stored (an `extra` key that shadows a field, a non-finite number), or an I/O error.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &BTreeMap<String, Tensor>, meta: &WeightMeta) -> Result<()> {
    let path = path.as_ref();
    let views = tensors
        .iter()
        .map(|(key, tensor)| Ok((key.as_str(), F32View::new(path, key, tensor)?)))
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = meta.to_metadata(path)?.into_iter().collect();
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|source| Error::Safetensors { path: path.to_owned(), source })?;
    atomic_write(path, &bytes)
}

/// A tensor's data as little-endian `f32` bytes, for `safetensors::serialize`.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(path: &Path, key: &str, tensor: &Tensor) -> Result<Self> {
        if !tensor.dtype().is_float() {
            return Err(Error::UnsupportedDtype {
                path: path.to_owned(),
                key: key.to_owned(),
                dtype: torch_name(tensor.dtype()),
            });
        }
        let values = tensor
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|source| Error::Tensor { path: path.to_owned(), source })?;
        Ok(Self { shape: tensor.dims().to_vec(), bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect() })
    }
}

impl View for F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }

    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, testdata};

    fn tiny_bytes() -> Vec<u8> {
        std::fs::read(testdata("tiny.safetensors")).unwrap()
    }

    #[test]
    fn save_then_load_round_trips_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        let tensors = BTreeMap::from([
            ("a.weight".to_owned(), Tensor::new(&[[1.0f32, -2.0], [3.5, 4.0]], &dev).unwrap()),
            ("a.bias".to_owned(), Tensor::new(&[0.25f64, 8.0], &dev).unwrap()),
            ("t".to_owned(), Tensor::new(&[[1.0f32, 2.0, 3.0]], &dev).unwrap().t().unwrap()),
        ]);
        let meta = WeightMeta {
            architecture: "msdnet".into(),
            config: serde_json::json!({"nBlocks": 4, "grFactor": [1, 2, 4]}),
            exit_accuracy: vec![0.5, 0.625],
            ..WeightMeta::default()
        };
        save_safetensors(&path, &tensors, &meta).unwrap();
        let file = crate::load_tensors(&path).unwrap();
        assert_eq!(file.weight_meta().unwrap(), meta);
        assert_eq!(crate::read_meta(&path).unwrap(), meta);
        assert_eq!(file.tensors.len(), 3);
        for (key, t) in &tensors {
            let loaded = &file.tensors[key];
            assert_eq!(loaded.dims(), t.dims(), "{key}");
            let want = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(loaded.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{key}");
        }
        // Only the target is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn saving_an_integer_tensor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensors = BTreeMap::from([("idx".to_owned(), Tensor::new(&[1u32, 2], &Device::Cpu).unwrap())]);
        let err = save_safetensors(&path, &tensors, &WeightMeta::default()).unwrap_err();
        assert!(matches!(&err, Error::UnsupportedDtype { key, .. } if key == "idx"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn truncated_files_are_reported_as_truncated() {
        let bytes = tiny_bytes();
        for len in [0, 5, 20, bytes.len() - 1] {
            let err = read(Path::new("t.safetensors"), &bytes[..len]).unwrap_err();
            assert!(matches!(err, Error::Truncated { .. }), "{len}: {err}");
            assert!(err.to_string().contains("t.safetensors: truncated"), "{err}");
        }
    }

    #[test]
    fn bad_headers_are_reported() {
        let path = Path::new("h.safetensors");
        let with_header = |json: &str, data: usize| {
            let mut b = (json.len() as u64).to_le_bytes().to_vec();
            b.extend(json.as_bytes());
            b.extend(vec![0u8; data]);
            b
        };
        let err = read(path, &with_header("{not json", 0)).unwrap_err();
        assert!(matches!(err, Error::BadHeader { .. }), "{err}");
        let err = read(path, &u64::MAX.to_le_bytes()).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        // Offsets whose sum overflows usize must not reach the safetensors crate.
        let json = format!(
            r#"{{"a":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}},"b":{{"dtype":"U8","shape":[1],"data_offsets":[{big},{end}]}}}}"#,
            big = u64::MAX - 8,
            end = u64::MAX - 7
        );
        assert!(read(path, &with_header(&json, 1)).is_err());
        // Shape and offsets that disagree.
        let json = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let err = read(path, &with_header(json, 8)).unwrap_err();
        assert!(matches!(err, Error::Safetensors { .. }), "{err}");
        let json = r#"{"a":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}"#;
        let err = read(path, &with_header(json, 8)).unwrap_err();
        assert!(matches!(&err, Error::UnsupportedDtype { dtype, .. } if dtype == "I32"), "{err}");
    }

    #[test]
    fn read_meta_reads_only_a_valid_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.safetensors");
        std::fs::write(&path, &tiny_bytes()[..30]).unwrap();
        let err = read_metadata(&path).unwrap_err();
        assert!(matches!(err, Error::Truncated { .. }), "{err}");
        let err = read_metadata(&testdata("bare_state_dict.pth")).unwrap_err();
        assert!(err.to_string().contains("carry no weight metadata"), "{err}");
        let meta = read_metadata(&testdata("tiny.safetensors")).unwrap();
        assert_eq!(meta.get("source").map(String::as_str), Some("gen_testdata.py"));
    }

    /// Random buffers, bit flips, truncations and header edits: never a panic.
    #[test]
    fn fuzzed_buffers_never_panic() {
        let path = Path::new("fuzz.safetensors");
        let valid = tiny_bytes();
        let mut rng = Rng::new(0x5afe);
        for len in 0..valid.len() {
            let _ = read(path, &valid[..len]);
        }
        for _ in 0..3000 {
            let mut bytes = valid.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            let _ = crate::tensor_file::parse(path, &bytes);
        }
        // Header edits: replace a digit or a structural character of the JSON.
        let header_end = 8 + usize::try_from(u64::from_le_bytes(valid[..8].try_into().unwrap())).unwrap();
        for _ in 0..3000 {
            let mut bytes = valid.clone();
            let i = 8 + rng.below(header_end - 8);
            bytes[i] = *b"0123456789{}[],:\"-e. x".get(rng.below(22)).unwrap();
            let _ = read(path, &bytes);
        }
        for _ in 0..2000 {
            let len = rng.below(64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            if bytes.len() > 8 {
                bytes[8] = b'{';
            }
            let _ = crate::tensor_file::parse(path, &bytes);
        }
    }
}
