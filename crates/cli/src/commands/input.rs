//! What `eval`, `calibrate` and `classify` share: the model (a registry name,
//! or `--arch --config --weights` for any checkpoint), how an image becomes
//! its input (the preprocessing of its dataset, each step overridable by a
//! flag) and the images (the registry's data, or `--data KIND:DIR`).

use super::eval::{DataSource, EvalSplit};
use super::{ModelArgs, WeightsArgs, load_registry_model_from, resolve_weights};
use anyhow::{Context, Result, bail};
use anytime_data::dataset::{Dataset, Normalization};
use anytime_data::folder::{FolderStream, ImageFolder};
use anytime_data::loader::Loader;
use anytime_data::preprocess::Preprocess;
use anytime_data::source::EvalSource;
use anytime_models::MultiExit;
use anytime_models::registry::{ModelEntry, lookup};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The model of a command: a registry name, or an architecture, its
/// configuration and a weights file.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelSel {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub weights: WeightsArgs,
}

/// How images become the model's input; each flag overrides one step of
/// the dataset's preprocessing.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PreArgs {
    /// Resize the shorter side to N pixels (bilinear, as torchvision's
    /// `Resize(N)`), or `none`. Default: the dataset's (ImageNet 256, else
    /// none).
    #[arg(long, value_name = "N|none")]
    pub resize: Option<String>,
    /// Then crop the centre N x N, or `none`. Default: the dataset's
    /// (ImageNet 224, else none).
    #[arg(long, value_name = "N|none")]
    pub crop: Option<String>,
    /// Per-channel mean of the [0, 1] pixel values, comma-separated.
    /// Default: the dataset's (ImageNet 0.485,0.456,0.406).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "M1,M2,…")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma-separated. Default: the
    /// dataset's (ImageNet 0.229,0.224,0.225).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_name = "S1,S2,…")]
    pub std: Option<Vec<f32>>,
    /// The model's input size, H or HxW, for a configuration whose dataset
    /// does not fix it (default: the architecture's).
    #[arg(long, value_name = "HxW")]
    pub input_size: Option<String>,
}

/// How an image becomes a model input.
#[derive(Debug, Clone)]
pub struct Input {
    /// `fashion-mnist`, `cifar10`, `cifar100`, `imagenet`, or `unknown`.
    pub dataset: String,
    /// The model's input `(C, H, W)`.
    pub shape: (usize, usize, usize),
    /// Zero padding added around each image after preprocessing.
    pub pad: usize,
    /// Resizing, cropping (ending at `shape` less the padding) and
    /// normalisation.
    pub pre: Preprocess,
    /// Whether `--mean` / `--std` replaced the dataset's normalisation.
    pub normalization_overridden: bool,
}

impl Input {
    /// The normalisation of `pre`.
    pub fn normalization(&self) -> Normalization {
        Normalization { mean: self.pre.mean.clone(), std: self.pre.std.clone() }
    }
}

fn size_flag(flag: &str, v: &str) -> Result<Option<usize>> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => bail!("{flag} must be a positive number of pixels or `none`, got '{v}'"),
    }
}

/// A loaded model with everything the commands need about it.
pub struct Selected {
    /// How reports and calibrations name it: the registry name, or
    /// `ARCH:FILE` for a checkpoint.
    pub name: String,
    /// Its registry entry, when it has one.
    pub entry: Option<&'static ModelEntry>,
    /// The model, on its device.
    pub model: Box<dyn MultiExit>,
    /// The weights file.
    pub weights: PathBuf,
    /// How images become its input.
    pub input: Input,
}

impl ModelSel {
    /// Loads the model onto `device` and derives its input.
    pub fn load(&self, pre: &PreArgs, device: &candle_core::Device) -> Result<Selected> {
        let (name, entry, model, weights, cfg) = match &self.model.model {
            Some(name) => {
                let entry = lookup(name)?;
                let path = resolve_weights(entry, &self.weights)?;
                let model = load_registry_model_from(entry, &path, device)?;
                (name.clone(), Some(entry), model, path, (entry.config)())
            }
            None => {
                let cfg = self.model.resolve()?;
                let path = super::weights::resolve_checkpoint(&self.weights)?;
                let model = anytime_models::registry::load_model_on(&cfg, &path, device)
                    .with_context(|| format!("cannot load {} weights from {}", cfg.arch(), path.display()))?;
                let file = path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into());
                (format!("{}:{file}", cfg.arch()), None, model, path, cfg)
            }
        };
        let input = input_of(entry, &cfg, model.as_ref(), pre)?;
        Ok(Selected { name, entry, model, weights, input })
    }
}

/// The input of a model: its registry entry's data, or its configuration's
/// dataset; then the flags.
pub fn input_of(
    entry: Option<&ModelEntry>,
    cfg: &anytime_models::registry::ArchConfig,
    model: &dyn MultiExit,
    p: &PreArgs,
) -> Result<Input> {
    let c = model.in_channels();
    let (dataset, shape, pad, mut pre) = match entry {
        Some(e) => {
            if p.input_size.is_some() {
                bail!("--input-size applies to --arch/--config models; {} takes {:?}", e.name, e.data.input);
            }
            let pre = if e.data.dataset == "imagenet" {
                Preprocess { mean: e.data.mean.to_vec(), std: e.data.std.to_vec(), ..Preprocess::imagenet() }
            } else {
                Preprocess {
                    resize_shorter: None,
                    centre_crop: None,
                    resize_to: None,
                    mean: e.data.mean.to_vec(),
                    std: e.data.std.to_vec(),
                }
            };
            (e.data.dataset.to_string(), e.data.input, e.data.pad, pre)
        }
        None => {
            let dataset = cfg.dataset();
            let (h, w) = match &p.input_size {
                Some(s) => super::parse_size(s).context("--input-size")?,
                None if dataset == Some("imagenet") => (224, 224),
                None => cfg.default_size(),
            };
            let pre = match dataset {
                Some("imagenet") => Preprocess::imagenet(),
                Some("cifar10") => Preprocess::cifar10(),
                Some("cifar100") => Preprocess::cifar100(),
                _ => {
                    let (Some(mean), Some(std)) = (&p.mean, &p.std) else {
                        bail!(
                            "the {} configuration does not say its dataset, so its normalisation is unknown: give --mean and --std ({c} values each)",
                            cfg.arch()
                        );
                    };
                    Preprocess {
                        resize_shorter: None,
                        centre_crop: None,
                        resize_to: None,
                        mean: mean.clone(),
                        std: std.clone(),
                    }
                }
            };
            (dataset.unwrap_or("unknown").to_string(), (c, h, w), 0, pre)
        }
    };
    if let Some(v) = &p.resize {
        pre.resize_shorter = size_flag("--resize", v)?;
    }
    if let Some(v) = &p.crop {
        pre.centre_crop = size_flag("--crop", v)?;
    }
    let overridden = p.mean.is_some() || p.std.is_some();
    if let Some(m) = &p.mean {
        pre.mean = m.clone();
    }
    if let Some(s) = &p.std {
        pre.std = s.clone();
    }
    if pre.mean.len() != c || pre.std.len() != c {
        bail!(
            "the model takes {c}-channel images: --mean and --std need {c} values each (got {} and {})",
            pre.mean.len(),
            pre.std.len()
        );
    }
    if let Some(s) = pre.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!("--std values must be positive, got {s}");
    }
    if let Some(m) = pre.mean.iter().find(|m| !m.is_finite()) {
        bail!("--mean values must be finite, got {m}");
    }
    let (_, h, w) = shape;
    if h <= 2 * pad || w <= 2 * pad {
        bail!("input {h}x{w} leaves nothing inside a padding of {pad}");
    }
    // Whatever the resize and crop give, the image ends at the model's size.
    pre.resize_to = Some((h - 2 * pad, w - 2 * pad));
    Ok(Input { dataset, shape, pad, pre, normalization_overridden: overridden })
}

/// The images of a split before they become batches.
pub enum Images {
    /// Decoded in memory (Fashion-MNIST, CIFAR).
    Memory(Dataset),
    /// An image folder's index, streamed when read.
    Folder(ImageFolder),
}

impl Images {
    /// Images named.
    pub fn len(&self) -> usize {
        match self {
            Images::Memory(d) => d.len(),
            Images::Folder(f) => f.len(),
        }
    }

    /// The images at `range`.
    pub fn slice(self, range: std::ops::Range<usize>) -> Result<Self> {
        Ok(match self {
            Images::Memory(d) => {
                let idx: Vec<usize> = range.filter(|&i| i < d.len()).collect();
                let name = d.name.clone();
                Images::Memory(d.subset(&idx, name)?)
            }
            Images::Folder(f) => Images::Folder(f.slice(range)),
        })
    }

    /// The first `n` images (`--limit`).
    pub fn limit(self, n: Option<usize>) -> Result<Self> {
        match n {
            Some(0) => bail!("--limit must be at least 1"),
            Some(n) if n < self.len() => self.slice(0..n),
            _ => Ok(self),
        }
    }

    /// Class names.
    pub fn classes(&self) -> Vec<String> {
        match self {
            Images::Memory(d) => d.classes().to_vec(),
            Images::Folder(f) => f.classes().to_vec(),
        }
    }

    /// Batches of `batch` on `device`, as the model's input (a folder
    /// decoded in parallel, with a progress line on a terminal).
    pub fn source(self, sel: &Selected, batch: usize, device: &candle_core::Device) -> Result<Arc<dyn EvalSource>> {
        let input = &sel.input;
        Ok(match self {
            Images::Memory(mut d) => {
                if input.normalization_overridden {
                    d = d.with_normalization(input.normalization())?;
                }
                if d.image_shape() != input.shape {
                    bail!("{} gives {:?} images, {} takes {:?}", d.name, d.image_shape(), sel.name, input.shape);
                }
                Arc::new(Loader::in_order(Arc::new(d), batch)?.on_device(device.clone()))
            }
            Images::Folder(f) => {
                let f_len = f.len();
                if f.classes().len() != sel.model.num_classes() {
                    bail!(
                        "{} has {} class folders, {} has {} classes",
                        f.root().display(),
                        f.classes().len(),
                        sel.name,
                        sel.model.num_classes()
                    );
                }
                let mut s = FolderStream::new(Arc::new(f), input.shape.0, input.pre.clone(), batch)?
                    .with_pad(input.pad)
                    .on_device(device.clone());
                if std::io::stderr().is_terminal() {
                    let bar = indicatif::ProgressBar::new(f_len as u64).with_style(
                        indicatif::ProgressStyle::with_template("{wide_bar} {pos}/{len} images, {per_sec}, {eta} left")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    s = s.with_progress(Arc::new(move |done, total| {
                        bar.set_position(done as u64);
                        if done == total {
                            bar.finish_and_clear();
                        }
                    }));
                }
                Arc::new(s)
            }
        })
    }
}

/// The held-out part of a CIFAR or Fashion-MNIST training set for models
/// without a recipe: 5,000 images (MSDNet's and RANet's `dataloader.py`),
/// drawn with the project's split seed.
pub const DEFAULT_HOLDOUT: (usize, u64) = (5000, 2024);

/// The images of `split`: the registry entry's data, or `source`.
pub fn split_images(sel: &Selected, source: Option<&DataSource>, data_dir: &Path, split: EvalSplit) -> Result<Images> {
    use anytime_data::cifar::{Cifar, cifar};
    if let Some(DataSource::ImageFolder(dir)) = source {
        let (test, held) = ImageFolder::splits(dir)?;
        return Ok(Images::Folder(match split {
            EvalSplit::Test => test,
            EvalSplit::Val => held.with_context(|| {
                format!("{} has val/ but no train/ to hold images out of: no held-out split (give thresholds with --calibration, or add train/)", dir.display())
            })?,
        }));
    }
    if let Some(e) = sel.entry {
        return Ok(Images::Memory(super::eval::load_split_from(e.name, source, data_dir, split)?));
    }
    let (c, h, w) = sel.input.shape;
    let holdout = |ds: Dataset| -> Result<Dataset> {
        Ok(anytime_data::dataset::holdout_split(&ds, DEFAULT_HOLDOUT.0.min(ds.len() / 10).max(1), DEFAULT_HOLDOUT.1)?.1)
    };
    let ds = match source {
        None => bail!("{} has no registry data: name the images with --data KIND:DIR", sel.name),
        Some(DataSource::FashionMnist(dir)) => {
            use anytime_data::fmnist::{Split, fashion_mnist};
            if c != 1 || h != w || h < 28 || (h - 28) % 2 != 0 {
                bail!(
                    "--data fashion-mnist:…: {} takes {c}x{h}x{w} images, not 1x28x28 (padded) Fashion-MNIST images",
                    sel.name
                );
            }
            let pad = (h - 28) / 2;
            match split {
                EvalSplit::Test => fashion_mnist(dir, Split::Test)?.pad(pad)?,
                EvalSplit::Val => holdout(fashion_mnist(dir, Split::Train)?.pad(pad)?)?,
            }
        }
        Some(DataSource::Cifar10(dir) | DataSource::Cifar100(dir)) => {
            let kind = if matches!(source, Some(DataSource::Cifar10(_))) { Cifar::Ten } else { Cifar::Hundred };
            if (c, h, w) != (3, 32, 32) {
                bail!("--data cifar…: {} takes {c}x{h}x{w} images, not 3x32x32 CIFAR images", sel.name);
            }
            match split {
                EvalSplit::Test => cifar(dir, kind, false)?,
                EvalSplit::Val => holdout(cifar(dir, kind, true)?)?,
            }
        }
        Some(DataSource::ImageFolder(dir)) => bail!("imagefolder:{} is read as a stream", dir.display()),
    };
    if ds.classes().len() != sel.model.num_classes() {
        bail!("{} has {} classes, {} has {}", ds.name, ds.classes().len(), sel.name, sel.model.num_classes());
    }
    Ok(Images::Memory(ds))
}

/// Class names from `--labels`: a file with one name per line, or an image
/// folder (its class folder names, those of `val/` in ImageNet's layout);
/// checked against the model's class count.
pub fn read_labels(path: &Path, classes: usize) -> Result<Vec<String>> {
    let names: Vec<String> = if path.is_dir() {
        let root = if path.join("val").is_dir() { path.join("val") } else { path.to_path_buf() };
        ImageFolder::open(&root)?.classes().to_vec()
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the labels file {}", path.display()))?;
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    };
    if names.len() != classes {
        bail!("{}: {} class names for a model of {classes} classes", path.display(), names.len());
    }
    Ok(names)
}
