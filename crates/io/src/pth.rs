//! PyTorch zip checkpoints, as `torch.save` writes them since PyTorch 1.6.
//!
//! The archive holds `<root>/data.pkl`, a pickle in which every tensor is a call of
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a
//! persistent id `('storage', torch.FloatStorage, key, location, numel)` whose bytes are the
//! archive entry `<root>/data/<key>`. Each storage is read once, even when several tensors are
//! views of it; views with any offset and strides are materialised as contiguous tensors.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use zip::ZipArchive;
use zip::result::ZipError;

use crate::decode::{NamedTensors, decode_f32, is_batch_counter, torch_name};
use crate::error::{Error, Result};
use crate::pickle::{self, Obj, Value};

/// Entries of a checkpoint dict that hold the state dict, in order of preference.
const STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];

/// Reads the state dict of the `torch.save` archive `bytes` (read from `path`).
///
/// Float tensors come back as `f32`; integer `num_batches_tracked` scalars are dropped. Keys are
/// returned as stored (with any `module.` prefix).
pub(crate) fn read(path: &Path, bytes: &[u8]) -> Result<NamedTensors> {
    let zip_err = |source| Error::Zip { path: path.to_owned(), source };
    let mut archive = open_archive(bytes).map_err(zip_err)?;
    let root = archive_root(&archive).ok_or_else(|| Error::MissingDataPkl { path: path.to_owned() })?;
    check_byte_order(path, &mut archive, &root)?;
    let pickle_bytes = read_entry(&mut archive, &format!("{root}/data.pkl")).map_err(zip_err)?;
    let obj = pickle::parse(&pickle_bytes).map_err(|source| Error::Pickle { path: path.to_owned(), source })?;
    let mut storages = Storages { path, archive, root, cache: HashMap::new() };
    tensors_of(path, &obj, |key, storage| storages.get(key, storage))
}

/// The state dict's tensors of the checkpoint object `obj`, each storage fetched through
/// `storage(tensor_key, storage_ref)`.
fn tensors_of(
    path: &Path,
    obj: &Obj,
    mut storage_of: impl FnMut(&str, &StorageRef) -> Result<Tensor>,
) -> Result<NamedTensors> {
    let parts = find_state_dicts(obj).map_err(|found| Error::NoStateDict { path: path.to_owned(), found })?;
    let mut tensors = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
    for (prefix, (key, value)) in parts.iter().flat_map(|(prefix, dict)| dict.iter().map(move |e| (*prefix, e))) {
        let Some(key) = key.as_str() else {
            return Err(Error::NoStateDict {
                path: path.to_owned(),
                found: format!("a dict with a non-string key ({})", key.value.kind()),
            });
        };
        // A part of a composite checkpoint gets its prefix in place of
        // `nn.DataParallel`'s `module.`.
        let full;
        let key = if prefix.is_empty() {
            key
        } else {
            full = format!("{prefix}{}", key.strip_prefix("module.").unwrap_or(key));
            full.as_str()
        };
        let bad = |problem: String| Error::BadTensor { path: path.to_owned(), key: key.to_owned(), problem };
        let spec = TensorSpec::parse(value).map_err(bad)?;
        match spec.storage.dtype {
            StorageDtype::Float(_) => {}
            StorageDtype::Int64 if is_batch_counter(key, &spec.shape) => continue,
            StorageDtype::Int64 => return Err(unsupported(path, key, "int64")),
            StorageDtype::Other(ref class) => return Err(unsupported(path, key, class)),
        }
        let storage = storage_of(key, &spec.storage)?;
        tensors.push((key.to_owned(), spec.view(&storage).map_err(bad)?));
    }
    Ok(tensors)
}

/// Reads the state dict of a legacy (pre-1.6, non-zip) `torch.save` stream `bytes`: the magic
/// number, protocol version and system information pickles, the object pickle, the pickle of
/// the storage keys, then for each key in that order its element count (u64, little-endian) and
/// its bytes. Every storage of the object is located (optimiser states included) so that the
/// data section can be walked; only the state dict's float storages are decoded. Nothing in the
/// pickles is executed.
pub(crate) fn read_legacy(path: &Path, bytes: &[u8]) -> Result<NamedTensors> {
    let bad_file = |problem: String| Error::Legacy { path: path.to_owned(), problem };
    let magic = crate::format::LEGACY_TORCH_MAGIC.len();
    if bytes.get(magic) != Some(&b'.') {
        return Err(bad_file("the magic number's pickle does not end where it should".into()));
    }
    let mut pos = magic + 1;
    // The protocol version, the system information, the object, the storage keys.
    let mut next = || -> Result<Obj> {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (obj, n) = pickle::parse_prefix(rest).map_err(|source| Error::Pickle { path: path.to_owned(), source })?;
        pos += n;
        Ok(obj)
    };
    let _protocol = next()?;
    let _sys_info = next()?;
    let obj = next()?;
    let keys = next()?;
    let keys: Vec<&str> = keys
        .as_list()
        .ok_or_else(|| bad_file(format!("the storage keys are {}, not a list", keys.value.kind())))?
        .iter()
        .map(|k| k.as_str().ok_or_else(|| bad_file("a storage key is not a str".into())))
        .collect::<Result<_>>()?;
    let mut ids = HashMap::new();
    collect_storages(&obj, &mut ids, 0).map_err(bad_file)?;
    // The data section: each storage's element count, then its bytes.
    let mut data: HashMap<&str, &[u8]> = HashMap::with_capacity(keys.len());
    for key in keys {
        let id: &StorageRef = ids.get(key).ok_or_else(|| bad_file(format!("storage `{key}` is used by no tensor")))?;
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| bad_file(format!("truncated before storage `{key}`")))?;
        if count != id.numel as u64 {
            return Err(bad_file(format!("storage `{key}` holds {count} elements, its tensors say {}", id.numel)));
        }
        let size = id
            .dtype
            .element_size()
            .ok_or_else(|| bad_file(format!("storage `{key}` has an unknown element type {:?}", id.dtype)))?;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(size))
            .ok_or_else(|| bad_file(format!("storage `{key}` is too large")))?;
        let start = pos + 8;
        let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            bad_file(format!(
                "truncated: storage `{key}` needs {len} bytes at byte {start}, the file has {}",
                bytes.len()
            ))
        })?;
        data.insert(key, &bytes[start..end]);
        pos = end;
    }
    let mut cache: HashMap<String, (DType, Tensor)> = HashMap::new();
    tensors_of(path, &obj, |key, storage| {
        let bad = |problem: String| Error::BadTensor { path: path.to_owned(), key: key.to_owned(), problem };
        let StorageDtype::Float(dtype) = storage.dtype else {
            return Err(bad(format!("storage `{}` is not a float storage", storage.key)));
        };
        if let Some((cached, t)) = cache.get(&storage.key) {
            if *cached != dtype {
                return Err(bad(format!("storage `{}` is used with two dtypes", storage.key)));
            }
            return Ok(t.clone());
        }
        let raw = data
            .get(storage.key.as_str())
            .ok_or_else(|| bad(format!("storage `{}` is not in the file", storage.key)))?;
        let t = decode_f32(raw, dtype, &[storage.numel])
            .map_err(|e| bad(format!("storage `{}` ({} {}): {e}", storage.key, storage.numel, torch_name(dtype))))?;
        cache.insert(storage.key.clone(), (dtype, t.clone()));
        Ok(t)
    })
}

/// Every storage id in `obj`, by key (depth-bounded by the pickle reader).
fn collect_storages(obj: &Obj, ids: &mut HashMap<String, StorageRef>, depth: u32) -> std::result::Result<(), String> {
    if depth > 200 {
        return Err("the object nests too deeply".into());
    }
    match &obj.value {
        Value::PersistentId(id) => {
            let s = StorageRef::parse(id)?;
            if let Some(old) = ids.get(&s.key) {
                if old.dtype != s.dtype || old.numel != s.numel {
                    return Err(format!("storage `{}` is described twice, differently", s.key));
                }
            } else {
                ids.insert(s.key.clone(), s);
            }
        }
        Value::Tuple(items) | Value::List(items) => {
            for i in items {
                collect_storages(i, ids, depth + 1)?;
            }
        }
        Value::Dict(entries) => {
            for (k, v) in entries {
                collect_storages(k, ids, depth + 1)?;
                collect_storages(v, ids, depth + 1)?;
            }
        }
        Value::Call { callable, args } => {
            collect_storages(callable, ids, depth + 1)?;
            collect_storages(args, ids, depth + 1)?;
        }
        _ => {}
    }
    Ok(())
}

/// Opens the zip archive `bytes`, which starts at byte 0 as torch.save writes it.
///
/// The zip crate's default archive-offset detection rejects some valid torch.save archives
/// ("Invalid Central Directory header" on `testdata/checkpoint_module.pth.tar` with zip 9.8.2),
/// so the offset is fixed instead of detected.
pub(crate) fn open_archive(bytes: &[u8]) -> std::result::Result<ZipArchive<Cursor<&[u8]>>, ZipError> {
    let config = zip::read::Config { archive_offset: zip::read::ArchiveOffset::Known(0) };
    ZipArchive::with_config(config, Cursor::new(bytes))
}

fn unsupported(path: &Path, key: &str, dtype: &str) -> Error {
    Error::UnsupportedDtype { path: path.to_owned(), key: key.to_owned(), dtype: dtype.to_owned() }
}

/// The `<root>` of the single-level `<root>/data.pkl` entry, if there is one.
fn archive_root(archive: &ZipArchive<Cursor<&[u8]>>) -> Option<String> {
    archive.file_names().find_map(|name| {
        let name = name.ok()?;
        let (root, file) = name.split_once('/')?;
        (file == "data.pkl").then(|| root.to_owned())
    })
}

/// Fails unless the archive's optional `byteorder` entry says `little`.
fn check_byte_order(path: &Path, archive: &mut ZipArchive<Cursor<&[u8]>>, root: &str) -> Result<()> {
    match read_entry(archive, &format!("{root}/byteorder")) {
        Ok(bytes) if bytes == b"little" => Ok(()),
        Ok(bytes) => {
            Err(Error::ByteOrder { path: path.to_owned(), byteorder: String::from_utf8_lossy(&bytes).into_owned() })
        }
        // Archives written before the entry existed are little-endian.
        Err(ZipError::FileNotFound) => Ok(()),
        Err(source) => Err(Error::Zip { path: path.to_owned(), source }),
    }
}

/// The whole content of one archive entry.
fn read_entry(archive: &mut ZipArchive<Cursor<&[u8]>>, name: &str) -> std::result::Result<Vec<u8>, ZipError> {
    let mut entry = archive.by_name(name)?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The entries of a GFNet checkpoint (`train.py` and the released files) that hold state dicts,
/// and the prefixes their keys get (GFNet's encoders, classifier and policy).
const GFNET_PARTS: [(&str, &str); 4] =
    [("model_prime_state_dict", "model_prime."), ("model_state_dict", "model."), ("fc", "fc."), ("policy", "policy.")];

/// A state dict and the prefix its keys get.
type Part<'a> = (&'static str, &'a [(Obj, Obj)]);

/// Finds the state dicts and the prefix each one's keys get:
/// - a GFNet checkpoint (a top-level dict with a `model_prime_state_dict` dict): its
///   `model_prime_state_dict`, `model_state_dict`, `fc` and `policy` dicts, under
///   `model_prime.`, `model.`, `fc.` and `policy.`;
/// - else the `state_dict`, `model_state_dict` or `model` entry of the top-level dict if one
///   holds a dict, else the top-level dict itself if all its values are tensors (no prefix).
///
/// On failure, describes what the file holds instead.
fn find_state_dicts(obj: &Obj) -> std::result::Result<Vec<Part<'_>>, String> {
    let dict = obj.as_dict().ok_or_else(|| obj.value.kind())?;
    let entry = |name: &str| dict.iter().find(|(k, _)| k.as_str() == Some(name)).map(|(_, v)| v);
    if entry(GFNET_PARTS[0].0).and_then(|v| v.as_dict()).is_some() {
        return Ok(GFNET_PARTS.iter().filter_map(|&(name, prefix)| Some((prefix, entry(name)?.as_dict()?))).collect());
    }
    if let Some(inner) = STATE_DICT_KEYS.iter().find_map(|&name| entry(name)?.as_dict()) {
        return Ok(vec![("", inner)]);
    }
    if dict.iter().all(|(_, v)| matches!(v.value, Value::Call { .. })) {
        return Ok(vec![("", dict)]);
    }
    let keys: Vec<String> = dict.iter().take(10).map(|(k, _)| format!("{:?}", k.as_str().unwrap_or("?"))).collect();
    Err(format!("a dict with keys [{}]", keys.join(", ")))
}

/// The element type of a storage, from its class name.
#[derive(Debug, Clone, PartialEq)]
enum StorageDtype {
    /// A float type, loaded as `f32`.
    Float(DType),
    /// `torch.LongStorage`: only `num_batches_tracked` counters are accepted (and dropped).
    Int64,
    /// Anything else, by class name.
    Other(String),
}

impl StorageDtype {
    /// Bytes per element, for the storage classes torch writes.
    fn element_size(&self) -> Option<usize> {
        Some(match self {
            Self::Float(d) => d.size_in_bytes(),
            Self::Int64 => 8,
            Self::Other(class) => match class.as_str() {
                "torch.IntStorage" | "torch.ComplexHalfStorage" => 4,
                "torch.ShortStorage" => 2,
                "torch.CharStorage"
                | "torch.ByteStorage"
                | "torch.BoolStorage"
                | "torch.QInt8Storage"
                | "torch.QUInt8Storage" => 1,
                "torch.ComplexFloatStorage" => 8,
                "torch.ComplexDoubleStorage" => 16,
                "torch.QInt32Storage" => 4,
                _ => return None,
            },
        })
    }

    fn from_class(module: &str, name: &str) -> Self {
        match (module, name) {
            ("torch", "FloatStorage") => Self::Float(DType::F32),
            ("torch", "DoubleStorage") => Self::Float(DType::F64),
            ("torch", "HalfStorage") => Self::Float(DType::F16),
            ("torch", "BFloat16Storage") => Self::Float(DType::BF16),
            ("torch", "LongStorage") => Self::Int64,
            _ => Self::Other(format!("{module}.{name}")),
        }
    }
}

/// A storage reference: `('storage', class, key, location, numel)`.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: StorageDtype,
    numel: usize,
}

/// How a tensor views its storage.
#[derive(Debug, Clone)]
struct TensorSpec {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

fn usize_of(obj: &Obj, what: &str) -> std::result::Result<usize, String> {
    obj.as_int()
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| format!("{what} is {}, not a non-negative int", obj.value.kind()))
}

fn usizes_of(obj: &Obj, what: &str) -> std::result::Result<Vec<usize>, String> {
    let items = obj.as_tuple().ok_or_else(|| format!("{what} is {}, not a tuple", obj.value.kind()))?;
    items.iter().map(|item| usize_of(item, what)).collect()
}

/// `args[i]`, or an error naming the rebuild function.
fn arg<'a>(args: &'a [Obj], i: usize, function: &str) -> std::result::Result<&'a Obj, String> {
    args.get(i).ok_or_else(|| format!("{function} has {} arguments, expected more than {i}", args.len()))
}

impl TensorSpec {
    /// Reads the tensor description out of a state-dict value.
    fn parse(obj: &Obj) -> std::result::Result<Self, String> {
        let Value::Call { callable, args } = &obj.value else {
            return Err(format!("is {}, not a tensor", obj.value.kind()));
        };
        Self::from_call(callable, args)
    }

    fn from_call(callable: &Obj, args: &Obj) -> std::result::Result<Self, String> {
        let args = args.as_tuple().ok_or("rebuild arguments are not a tuple")?;
        match callable.as_global() {
            Some(("torch._utils", f @ ("_rebuild_tensor_v2" | "_rebuild_tensor"))) => Self::from_view_args(args, f),
            // nn.Parameter(data, requires_grad, hooks[, state]): the data is a tensor.
            Some(("torch._utils", f @ ("_rebuild_parameter" | "_rebuild_parameter_with_state"))) => {
                Self::parse(arg(args, 0, f)?)
            }
            // Tensor subclasses: _rebuild_from_type_v2(func, new_type, func_args, state).
            Some(("torch._tensor", f @ "_rebuild_from_type_v2")) => Self::from_call(arg(args, 0, f)?, arg(args, 2, f)?),
            Some((module, name)) => Err(format!("is built by {module}.{name}, not a plain tensor")),
            None => Err(format!("is a call of {}, not a tensor", callable.value.kind())),
        }
    }

    /// `(storage, storage_offset, size, stride, ...)` of `_rebuild_tensor(_v2)`.
    fn from_view_args(args: &[Obj], function: &str) -> std::result::Result<Self, String> {
        let Value::PersistentId(id) = &arg(args, 0, function)?.value else {
            return Err("storage argument is not a persistent id".into());
        };
        Ok(Self {
            storage: StorageRef::parse(id)?,
            offset: usize_of(arg(args, 1, function)?, "storage offset")?,
            shape: usizes_of(arg(args, 2, function)?, "size")?,
            stride: usizes_of(arg(args, 3, function)?, "stride")?,
        })
    }

    /// The tensor this spec describes, copied out of `storage` (a 1-D `f32` tensor).
    fn view(&self, storage: &Tensor) -> std::result::Result<Tensor, String> {
        let shape = &self.shape;
        let describe = || format!("view (offset {}, size {shape:?}, stride {:?})", self.offset, self.stride);
        if self.stride.len() != shape.len() {
            return Err(format!("{} has a stride per dimension missing", describe()));
        }
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        // More elements than the storage only comes from stride-0 (expanded) views; refusing
        // them bounds memory by the file size.
        let numel = numel.filter(|&n| n <= self.storage.numel).ok_or_else(|| {
            format!(
                "{} has more elements than its storage `{}` ({}); expanded views are not supported",
                describe(),
                self.storage.key,
                self.storage.numel
            )
        })?;
        if numel == 0 {
            return Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).map_err(|e| e.to_string());
        }
        // Highest storage element the view touches.
        let last = shape
            .iter()
            .zip(&self.stride)
            .try_fold(self.offset, |acc, (&d, &s)| (d - 1).checked_mul(s).and_then(|step| acc.checked_add(step)));
        match last {
            Some(last) if last < self.storage.numel => {}
            _ => {
                return Err(format!(
                    "{} reaches beyond storage `{}` of {} elements",
                    describe(),
                    self.storage.key,
                    self.storage.numel
                ));
            }
        }
        let tensor = if is_row_major(shape, &self.stride) {
            storage.narrow(0, self.offset, numel)
        } else {
            let index = Tensor::from_vec(self.element_indices(), numel, &Device::Cpu).map_err(|e| e.to_string())?;
            storage.index_select(&index, 0)
        };
        tensor.and_then(|t| t.reshape(shape.as_slice())).map_err(|e| e.to_string())
    }

    /// Storage index of every element, in row-major order (bounds already checked by `view`).
    fn element_indices(&self) -> Vec<i64> {
        let mut indices = vec![self.offset as i64];
        for (&d, &s) in self.shape.iter().zip(&self.stride) {
            indices = indices.iter().flat_map(|&base| (0..d).map(move |i| base + (i * s) as i64)).collect();
        }
        indices
    }
}

/// Whether `stride` is the contiguous row-major stride of `shape` (size-1 dimensions may have
/// any stride).
fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected *= d;
    }
    true
}

impl StorageRef {
    /// Reads `('storage', class, key, location, numel)` (the zip format) or
    /// `('storage', class, key, location, numel, None)` (the legacy format, whose sixth field,
    /// a view of another storage, PyTorch stopped writing long ago).
    fn parse(id: &Obj) -> std::result::Result<Self, String> {
        let fields = id.as_tuple().ok_or("storage id is not a tuple")?;
        let (tag, class, key, numel) = match fields {
            [tag, class, key, _location, numel] => (tag, class, key, numel),
            [tag, class, key, _location, numel, view] => {
                if !matches!(view.value, Value::None) {
                    return Err("storage views (legacy view metadata) are not supported".into());
                }
                (tag, class, key, numel)
            }
            _ => return Err(format!("storage id has {} fields, expected 5 or 6", fields.len())),
        };
        if tag.as_str() != Some("storage") {
            return Err("persistent id is not a storage".into());
        }
        let (module, name) = class.as_global().ok_or("storage class is not a global")?;
        Ok(Self {
            key: key.as_str().ok_or("storage key is not a str")?.to_owned(),
            dtype: StorageDtype::from_class(module, name),
            numel: usize_of(numel, "storage size")?,
        })
    }
}

/// Storages read from the archive so far, each decoded once to a 1-D `f32` tensor.
struct Storages<'a> {
    path: &'a Path,
    archive: ZipArchive<Cursor<&'a [u8]>>,
    root: String,
    cache: HashMap<String, (DType, Tensor)>,
}

impl Storages<'_> {
    /// The float storage `storage`, needed by tensor `key` (named in errors).
    fn get(&mut self, key: &str, storage: &StorageRef) -> Result<Tensor> {
        let bad = |problem: String| Error::BadTensor { path: self.path.to_owned(), key: key.to_owned(), problem };
        let StorageDtype::Float(dtype) = storage.dtype else {
            return Err(bad(format!("storage `{}` is not a float storage", storage.key)));
        };
        if let Some((cached_dtype, tensor)) = self.cache.get(&storage.key) {
            if *cached_dtype != dtype {
                return Err(bad(format!("storage `{}` is used with two dtypes", storage.key)));
            }
            return Ok(tensor.clone());
        }
        let entry = format!("{}/data/{}", self.root, storage.key);
        let bytes = match read_entry(&mut self.archive, &entry) {
            Ok(bytes) => bytes,
            Err(ZipError::FileNotFound) => {
                return Err(bad(format!("storage entry `{entry}` is missing")));
            }
            Err(source) => {
                return Err(Error::Zip { path: self.path.to_owned(), source });
            }
        };
        let tensor = decode_f32(&bytes, dtype, &[storage.numel])
            .map_err(|e| bad(format!("storage `{entry}` ({} {}): {e}", storage.numel, torch_name(dtype))))?;
        self.cache.insert(storage.key.clone(), (dtype, tensor.clone()));
        Ok(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, rezip, testdata};

    fn checkpoint() -> Vec<u8> {
        std::fs::read(testdata("checkpoint_module.pth.tar")).unwrap()
    }

    fn load(bytes: &[u8]) -> Result<NamedTensors> {
        read(Path::new("c.pth"), bytes)
    }

    /// `checkpoint()` with the entry whose name ends in `suffix` replaced by `edit(bytes)`.
    fn edited(suffix: &str, edit: impl Fn(Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
        rezip(&checkpoint(), |name, bytes| if name.ends_with(suffix) { edit(bytes) } else { Some(bytes) })
    }

    #[test]
    fn keys_keep_their_prefix_and_counters_are_dropped() {
        let tensors = load(&checkpoint()).unwrap();
        assert_eq!(tensors.len(), 10);
        assert!(tensors.iter().all(|(k, _)| k.starts_with("module.") && !k.ends_with("num_batches_tracked")));
    }

    #[test]
    fn strided_views_are_copied_element_by_element() {
        let storage = Tensor::arange(0f32, 24., &Device::Cpu).unwrap();
        let spec = |offset, shape: &[usize], stride: &[usize]| TensorSpec {
            storage: StorageRef { key: "0".into(), dtype: StorageDtype::Float(DType::F32), numel: 24 },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        };
        // x = torch.arange(24.).reshape(2, 3, 4); v = x.permute(2, 0, 1)[1:, :, ::2]
        // v.storage_offset() == 1, v.stride() == (1, 12, 8), v.flatten().tolist() == want
        let t = spec(1, &[3, 2, 2], &[1, 12, 8]).view(&storage).unwrap();
        let want = [1., 9., 13., 21., 2., 10., 14., 22., 3., 11., 15., 23.];
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        // Broadcast-like zero strides, size-1 dimensions with any stride, empty tensors.
        let t = spec(5, &[2, 3], &[0, 1]).view(&storage).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[5., 6., 7.], [5., 6., 7.]]);
        let t = spec(2, &[1, 3], &[99, 1]).view(&storage).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), [[2., 3., 4.]]);
        assert_eq!(spec(0, &[0, 7], &[7, 1]).view(&storage).unwrap().dims(), [0, 7]);
        // Out of bounds, overflowing, inconsistent.
        for (offset, shape, stride) in [
            (20, &[5][..], &[1][..]),
            (0, &[2, 13], &[13, 1]),
            (0, &[usize::MAX, 2], &[1, 1]),
            (0, &[1 << 40], &[0]),
            (0, &[2, 2], &[usize::MAX, 1]),
            (0, &[2, 2], &[1]),
        ] {
            let err = spec(offset, shape, stride).view(&storage).unwrap_err();
            assert!(err.contains("view (offset"), "{err}");
        }
    }

    #[test]
    fn broken_archives_get_typed_errors() {
        // No data.pkl.
        let err = load(&edited("data.pkl", |_| None)).unwrap_err();
        assert!(matches!(err, Error::MissingDataPkl { .. }), "{err}");
        // Big-endian.
        let err = load(&edited("byteorder", |_| Some(b"big".to_vec()))).unwrap_err();
        assert!(matches!(&err, Error::ByteOrder { byteorder, .. } if byteorder == "big"), "{err}");
        // A missing storage entry, and one with too few bytes.
        let err = load(&edited("/data/0", |_| None)).unwrap_err();
        assert!(
            err.to_string().contains("`module.conv.weight`: storage entry `checkpoint_module.pth/data/0` is missing"),
            "{err}"
        );
        let err = load(&edited("/data/0", |b| Some(b[..40].to_vec()))).unwrap_err();
        assert!(matches!(&err, Error::BadTensor { key, .. } if key == "module.conv.weight"), "{err}");
        assert!(err.to_string().contains("40 bytes cannot hold"), "{err}");
        // An unsupported opcode (SHORT_BINSTRING) right after PROTO, and a truncated pickle.
        let err = load(&edited("data.pkl", |b| Some([&b[..2], b"U\x01a", &b[2..]].concat()))).unwrap_err();
        assert!(
            matches!(err, Error::Pickle { source: PickleError::UnsupportedOpcode { opcode: b'U', offset: 2 }, .. }),
            "{err}"
        );
        let err = load(&edited("data.pkl", |b| Some(b[..b.len() / 2].to_vec()))).unwrap_err();
        assert!(matches!(err, Error::Pickle { source: PickleError::UnexpectedEnd { .. }, .. }), "{err}");
        // The container itself truncated.
        let bytes = checkpoint();
        let err = load(&bytes[..bytes.len() - 10]).unwrap_err();
        assert!(matches!(err, Error::Zip { .. }), "{err}");
        assert!(err.to_string().contains("c.pth: cannot read the zip archive"), "{err}");
    }

    use crate::pickle::PickleError;

    /// Truncations, bit flips of the archive and of its pickle, and random archives: every
    /// outcome is `Ok` or `Err`, never a panic.
    #[test]
    fn fuzzed_checkpoints_never_panic() {
        let valid = checkpoint();
        let mut rng = Rng::new(0x7043);
        for len in (0..valid.len()).step_by(3) {
            let _ = load(&valid[..len]);
        }
        for _ in 0..2000 {
            let mut bytes = valid.clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            let _ = load(&bytes);
        }
        // Mutate data.pkl inside a consistent archive so the pickle reader sees the damage.
        let pickle_bytes = {
            let mut archive = open_archive(&valid).unwrap();
            read_entry(&mut archive, "checkpoint_module.pth/data.pkl").unwrap()
        };
        for round in 0..1500 {
            let mut p = pickle_bytes.clone();
            match round % 3 {
                0 => {
                    let i = rng.below(p.len());
                    p[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(p.len());
                    p[i] = rng.below(256) as u8;
                }
                _ => p.truncate(rng.below(p.len())),
            }
            let _ = crate::pickle::parse(&p);
            let _ = load(&edited("data.pkl", |_| Some(p.clone())));
        }
        for _ in 0..1000 {
            let len = rng.below(200);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            bytes.splice(0..0, *b"PK\x03\x04");
            let _ = load(&bytes);
        }
    }
}
