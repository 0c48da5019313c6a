//! Strict loading: build a model from a [`TensorFile`] and report, in one error, every key the
//! model asked for but the file lacks, every key the file has but nobody asked for, and every
//! shape that differs.
//!
//! While the model is built, a missing or mismatched tensor does not abort construction: the
//! model gets zeros of the requested shape, so that one run collects every problem.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};

use crate::error::{Error, Result};
use crate::tensor_file::TensorFile;

/// How many entries of each kind [`KeyReport`]'s `Display` lists before summarising the rest.
const SHOWN_PER_KIND: usize = 20;

/// A tensor whose shape in the file differs from the shape the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShapeMismatch {
    /// The tensor name.
    pub key: String,
    /// The shape stored in the file.
    pub file: Vec<usize>,
    /// The shape the model requested.
    pub expected: Vec<usize>,
}

/// Everything that did not match between a weight file and the model built from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyReport {
    /// The weight file.
    pub path: PathBuf,
    /// Keys the model requested that the file does not have, sorted.
    pub missing: Vec<String>,
    /// Keys in the file that the model never requested (`*.num_batches_tracked` excepted), sorted.
    pub unexpected: Vec<String>,
    /// Keys whose shapes differ, sorted by key.
    pub mismatched: Vec<ShapeMismatch>,
    /// The model constructor's own error, if it failed.
    pub build_error: Option<String>,
}

impl KeyReport {
    /// Whether the file and the model agree completely.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.build_error.is_none()
    }
}

/// Writes `title (n):` and up to [`SHOWN_PER_KIND`] items, one per line.
fn write_list<T>(f: &mut fmt::Formatter<'_>, title: &str, items: &[T], show: impl Fn(&T) -> String) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "\n  {title} ({}):", items.len())?;
    for item in items.iter().take(SHOWN_PER_KIND) {
        write!(f, "\n    {}", show(item))?;
    }
    if items.len() > SHOWN_PER_KIND {
        write!(f, "\n    ... and {} more", items.len() - SHOWN_PER_KIND)?;
    }
    Ok(())
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: weights do not match the model: {} missing, {} unexpected, {} mismatched",
            self.path.display(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )?;
        if let Some(e) = &self.build_error {
            write!(f, "\n  building the model failed: {e}")?;
        }
        write_list(f, "missing from the file", &self.missing, String::clone)?;
        write_list(f, "unexpected in the file", &self.unexpected, String::clone)?;
        write_list(f, "shape mismatches", &self.mismatched, |m| {
            format!("{}: file {:?}, model expects {:?}", m.key, m.file, m.expected)
        })
    }
}

/// The state shared between a [`CheckedLoader`] and the backends of its var builders.
#[derive(Debug)]
struct Shared {
    file: TensorFile,
    /// Every request: name and shape (`None` for `get_unchecked`).
    requests: Mutex<Vec<(String, Option<Shape>)>>,
}

impl Shared {
    fn record(&self, name: &str, shape: Option<Shape>) {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).push((name.to_owned(), shape));
    }
}

/// The [`SimpleBackend`] behind [`CheckedLoader::var_builder`].
struct Backend(Arc<Shared>);

impl SimpleBackend for Backend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.record(name, Some(s.clone()));
        match self.0.file.tensors.get(name) {
            Some(t) if t.shape() == &s => t.to_dtype(dtype)?.to_device(dev),
            // Recorded; reported by `finish`. Zeros let construction go on.
            _ => Tensor::zeros(s, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.0.file.tensors.get(name);
        self.0.record(name, tensor.map(|t| t.shape().clone()));
        match tensor {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => {
                candle_core::bail!("`{name}` is missing from {} (its shape is unknown)", self.0.file.path.display())
            }
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.file.tensors.contains_key(name)
    }
}

/// Serves the tensors of a [`TensorFile`] to a model constructor and checks, afterwards, that
/// the model used exactly the tensors the file holds, with the same shapes.
///
/// ```
/// use anytime_io::{CheckedLoader, Format, TensorFile};
/// use candle_core::{DType, Device, Tensor};
///
/// let dev = Device::Cpu;
/// let tensors = [("fc.weight".to_owned(), Tensor::zeros((2, 3), DType::F32, &dev)?)].into();
/// let file = TensorFile {
///     tensors,
///     metadata: Default::default(),
///     format: Format::Safetensors,
///     path: "w.safetensors".into(),
/// };
/// let loader = CheckedLoader::new(file);
/// let vb = loader.var_builder(DType::F32, &dev);
/// let _fc = candle_nn::linear(3, 2, vb.pp("fc"))?; // asks for fc.weight [2, 3] and fc.bias [2]
/// let err = loader.finish().unwrap_err().to_string();
/// assert!(err.contains("1 missing") && err.contains("fc.bias"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct CheckedLoader {
    shared: Arc<Shared>,
}

impl CheckedLoader {
    /// A loader serving the tensors of `file`.
    pub fn new(file: TensorFile) -> Self {
        Self { shared: Arc::new(Shared { file, requests: Mutex::new(Vec::new()) }) }
    }

    /// A var builder that serves the file's tensors converted to `dtype` on `device` and records
    /// every request. A missing or mismatched tensor is served as zeros of the requested shape.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Backend(Arc::clone(&self.shared))), dtype, device.clone())
    }

    /// Compares the requests recorded so far with the file's content.
    pub fn report(&self) -> KeyReport {
        let file = &self.shared.file;
        let requests = self.shared.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut missing = BTreeSet::new();
        let mut mismatched = BTreeSet::new();
        let mut requested = BTreeSet::new();
        for (name, shape) in requests.iter() {
            requested.insert(name.as_str());
            match (file.tensors.get(name), shape) {
                (None, _) => {
                    missing.insert(name.clone());
                }
                (Some(t), Some(shape)) if t.shape() != shape => {
                    mismatched.insert(ShapeMismatch {
                        key: name.clone(),
                        file: t.dims().to_vec(),
                        expected: shape.dims().to_vec(),
                    });
                }
                _ => {}
            }
        }
        let unexpected = file
            .tensors
            .keys()
            .filter(|k| !requested.contains(k.as_str()) && !k.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        KeyReport {
            path: file.path.clone(),
            missing: missing.into_iter().collect(),
            unexpected,
            mismatched: mismatched.into_iter().collect(),
            build_error: None,
        }
    }

    /// Succeeds when every request matched a tensor of the same shape and every tensor of the
    /// file was requested.
    ///
    /// # Errors
    /// [`Error::KeyCheck`] listing every missing, unexpected and mismatched key.
    pub fn finish(self) -> Result<()> {
        let report = self.report();
        if report.is_clean() { Ok(()) } else { Err(Error::KeyCheck(Box::new(report))) }
    }
}

/// Builds a model with `f` from the tensors of `file` (converted to `dtype` on `device`) and
/// checks strictly that the model used exactly the file's tensors (see [`CheckedLoader`]).
///
/// # Errors
/// [`Error::KeyCheck`] listing every missing, unexpected and mismatched key, and the
/// constructor's own error when `f` failed.
pub fn build_checked<T>(
    file: TensorFile,
    dtype: DType,
    device: &Device,
    f: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    file.check_finite()?;
    let loader = CheckedLoader::new(file);
    let built = f(loader.var_builder(dtype, device));
    let mut report = loader.report();
    match built {
        Ok(model) if report.is_clean() => Ok(model),
        Ok(_) => Err(Error::KeyCheck(Box::new(report))),
        Err(e) => {
            report.build_error = Some(e.to_string());
            Err(Error::KeyCheck(Box::new(report)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Format;

    fn file(entries: &[(&str, &[usize])]) -> TensorFile {
        let tensors: BTreeMap<String, Tensor> = entries
            .iter()
            .map(|&(k, shape)| (k.to_owned(), Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()))
            .collect();
        TensorFile { tensors, metadata: BTreeMap::new(), format: Format::Safetensors, path: "w.safetensors".into() }
    }

    /// A tiny "model": a 3→2 linear layer `fc` and a 2-channel batch norm `bn`.
    fn model(vb: VarBuilder<'static>) -> candle_core::Result<(candle_nn::Linear, candle_nn::BatchNorm)> {
        let fc = candle_nn::linear(3, 2, vb.pp("fc"))?;
        let bn = candle_nn::batch_norm(2, 1e-5, vb.pp("bn"))?;
        Ok((fc, bn))
    }

    const BN: [(&str, &[usize]); 4] =
        [("bn.weight", &[2]), ("bn.bias", &[2]), ("bn.running_mean", &[2]), ("bn.running_var", &[2])];

    #[test]
    fn exact_match_builds_with_the_file_values() {
        let mut entries = vec![("fc.weight", &[2usize, 3][..]), ("fc.bias", &[2]), ("bn.num_batches_tracked", &[])];
        entries.extend(BN);
        let (fc, _) = build_checked(file(&entries), DType::F32, &Device::Cpu, model).unwrap();
        assert_eq!(fc.weight().to_vec2::<f32>().unwrap(), [[1.0; 3]; 2]);
    }

    #[test]
    fn every_problem_is_reported_in_one_error() {
        // fc.bias missing, fc.weight transposed, two stray keys.
        let mut entries = vec![("fc.weight", &[3usize, 2][..]), ("extra.a", &[1]), ("extra.b", &[1])];
        entries.extend(BN);
        let err = build_checked(file(&entries), DType::F32, &Device::Cpu, model).unwrap_err();
        let Error::KeyCheck(report) = &err else { panic!("{err}") };
        assert_eq!(report.missing, ["fc.bias"]);
        assert_eq!(report.unexpected, ["extra.a", "extra.b"]);
        assert_eq!(
            report.mismatched,
            [ShapeMismatch { key: "fc.weight".into(), file: vec![3, 2], expected: vec![2, 3] }]
        );
        assert!(report.build_error.is_none());
        let text = err.to_string();
        let summary = "w.safetensors: weights do not match the model: 1 missing, 2 unexpected, 1 mismatched";
        assert!(text.starts_with(summary), "{text}");
        assert!(text.contains("fc.weight: file [3, 2], model expects [2, 3]"), "{text}");
    }

    #[test]
    fn constructor_failure_is_reported_with_the_key_problems() {
        let entries = [("fc.weight", &[2usize, 3][..]), ("fc.bias", &[2]), ("stray", &[1])];
        let err = build_checked(file(&entries), DType::F32, &Device::Cpu, |vb| {
            vb.get_unchecked("gone")?;
            Ok(())
        })
        .unwrap_err();
        let Error::KeyCheck(report) = &err else { panic!("{err}") };
        assert_eq!(report.missing, ["gone"]);
        assert_eq!(report.unexpected, ["fc.bias", "fc.weight", "stray"]);
        assert!(report.build_error.as_deref().is_some_and(|e| e.contains("`gone` is missing")), "{err}");
        assert!(err.to_string().contains("building the model failed"), "{err}");
    }

    #[test]
    fn long_lists_are_truncated_in_display() {
        let names: Vec<String> = (0..45).map(|i| format!("k{i:02}")).collect();
        let entries: Vec<(&str, &[usize])> = names.iter().map(|n| (n.as_str(), &[1usize][..])).collect();
        let err = build_checked(file(&entries), DType::F32, &Device::Cpu, |_| Ok(())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("45 unexpected") && text.contains("k19") && !text.contains("k20"), "{text}");
        assert!(text.contains("... and 25 more"), "{text}");
        assert!(text.lines().count() <= 1 + 1 + SHOWN_PER_KIND + 1, "{text}");
    }

    #[test]
    fn reference_checkpoint_keys_match_its_safetensors_twin() {
        // The strict checker run with the safetensors key list as the "model".
        let st =
            crate::load_tensors(crate::testutil::fixture("msdnet_cifar100_lingrow/state_dict.safetensors")).unwrap();
        let pth = crate::load_tensors(crate::testutil::fixture("msdnet_cifar100_lingrow/checkpoint.pth.tar")).unwrap();
        build_checked(pth, DType::F32, &Device::Cpu, |vb| {
            st.tensors.iter().try_for_each(|(k, t)| vb.get(t.shape(), k).map(drop))
        })
        .unwrap();
    }
}
