//! Image folders: `root/<class>/*.{png,jpg,jpeg}` (ImageNet's validation set
//! once sorted into class folders), classes in sorted order.
//!
//! - [`ImageFolder`] is the index: paths and labels, no pixels. Its
//!   [`ImageFolder::splits`] follow one rule for both layouts a user has:
//!   `root/train/` + `root/val/` (the references' ImageNet layout: the test
//!   split is `val/`, the held-out split a seeded part of `train/`), or class
//!   folders directly under `root` (a seeded tenth is held out, the rest is
//!   the test split).
//! - [`FolderStream`] reads an index in batches: decoding and preprocessing
//!   run in parallel (rayon) on a background thread one batch ahead, so at
//!   most three batches of pixels exist at a time, whatever the folder's
//!   size. An unreadable file is skipped and reported with its path
//!   ([`EvalSource::skipped`]), never fatal.
//! - [`image_folder`] loads a small folder into memory.
//!
//! ```
//! use anytime_data::folder::{FolderStream, ImageFolder};
//! use anytime_data::preprocess::Preprocess;
//! use anytime_data::source::EvalSource;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let root = std::env::temp_dir().join(format!("anytime-folder-doc-{}", std::process::id()));
//! for (class, shade) in [("cat", 40u8), ("dog", 200)] {
//!     std::fs::create_dir_all(root.join(class))?;
//!     image::RgbImage::from_pixel(50, 30, image::Rgb([shade; 3])).save(root.join(class).join("a.png"))?;
//! }
//! std::fs::write(root.join("dog").join("broken.jpg"), b"not a JPEG")?;
//! let folder = ImageFolder::open(&root)?;
//! assert_eq!((folder.len(), folder.classes()), (3, &["cat".to_string(), "dog".to_string()][..]));
//! // Resize to exactly 32x32 and normalise as CIFAR-10.
//! let pre = Preprocess { resize_to: Some((32, 32)), ..Preprocess::cifar10() };
//! let stream = FolderStream::new(folder.into(), 3, pre, 2)?;
//! let batches: Vec<_> = stream.batches().collect::<Result<_, _>>()?;
//! let n: usize = batches.iter().map(|b| b.indices.len()).sum();
//! assert_eq!(n, 2); // the broken file is skipped …
//! assert_eq!(batches[0].images.dims(), &[2, 3, 32, 32]);
//! assert!(stream.skipped()[0].path.ends_with("dog/broken.jpg")); // … and reported
//! std::fs::remove_dir_all(&root)?;
//! # Ok(()) }
//! ```

use crate::dataset::{Dataset, Normalization};
use crate::error::{Error, Result};
use crate::image::load_image;
use crate::preprocess::Preprocess;
use crate::source::{EvalBatch, EvalSource, Skipped};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};

/// Whether `p` names an image this crate reads: `.png`, `.jpg` or `.jpeg`,
/// in any case.
pub fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn read_dir(p: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(p).map_err(|e| Error::Io { path: p.to_path_buf(), source: e })?;
    let mut out = Vec::new();
    for e in entries {
        out.push(e.map_err(|e| Error::Io { path: p.to_path_buf(), source: e })?.path());
    }
    out.sort();
    Ok(out)
}

/// The images of a folder of class folders: paths and labels, no pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    root: PathBuf,
    classes: Vec<String>,
    items: Vec<(PathBuf, u32)>,
}

/// The held-out part of a `train/` folder: 50,000 images (MSDNet's and
/// RANet's ImageNet rule) or a tenth of them, whichever is smaller.
pub const IMAGENET_HOLDOUT: usize = 50_000;
/// The seed of every folder's held-out split.
pub const FOLDER_SPLIT_SEED: u64 = 2024;

impl ImageFolder {
    /// Indexes `root/<class>/*.{png,jpg,jpeg}` (extensions in any case),
    /// classes and files in sorted order. Other files are ignored.
    pub fn open(root: &Path) -> Result<Self> {
        let classes: Vec<PathBuf> = read_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if classes.is_empty() {
            return Err(Error::Missing {
                msg: format!(
                    "{}: no class folders (an image folder holds one folder of images per class)",
                    root.display()
                ),
            });
        }
        let mut items = Vec::new();
        let mut names = Vec::with_capacity(classes.len());
        for (label, dir) in classes.iter().enumerate() {
            let label =
                u32::try_from(label).map_err(|_| Error::Invalid(format!("{}: too many classes", root.display())))?;
            names.push(dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            items.extend(read_dir(dir)?.into_iter().filter(|p| is_image(p) && !p.is_dir()).map(|p| (p, label)));
        }
        if items.is_empty() {
            return Err(Error::Missing {
                msg: format!("{}: no PNG or JPEG files in its class folders", root.display()),
            });
        }
        Ok(Self { root: root.to_path_buf(), classes: names, items })
    }

    /// The folder's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Class names (the folder names, sorted).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Images indexed.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no image is indexed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Path and label of every image, in order.
    pub fn items(&self) -> &[(PathBuf, u32)] {
        &self.items
    }

    /// The images at `range` (clamped to the index), for `--limit` and
    /// shards.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        let end = range.end.min(self.items.len());
        let start = range.start.min(end);
        Self { root: self.root.clone(), classes: self.classes.clone(), items: self.items[start..end].to_vec() }
    }

    /// Splits off a seeded held-out part of `n_holdout` images: `(rest,
    /// held_out)`, disjoint, each in the original order.
    pub fn holdout(&self, n_holdout: usize, seed: u64) -> Result<(Self, Self)> {
        if n_holdout == 0 || n_holdout >= self.len() {
            return Err(Error::Invalid(format!(
                "{}: cannot hold out {n_holdout} of {} images",
                self.root.display(),
                self.len()
            )));
        }
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (hold, rest) = idx.split_at_mut(n_holdout);
        hold.sort_unstable();
        rest.sort_unstable();
        let pick = |ix: &[usize]| Self {
            root: self.root.clone(),
            classes: self.classes.clone(),
            items: ix.iter().map(|&i| self.items[i].clone()).collect(),
        };
        Ok((pick(rest), pick(hold)))
    }

    /// The test and held-out splits of `root`:
    /// - with `root/val/` (ImageNet's layout): the test split is `val/`; the
    ///   held-out split is [`IMAGENET_HOLDOUT`] images of `root/train/` or a
    ///   tenth of them, whichever is fewer (`None` without `train/`);
    /// - otherwise `root` holds the class folders: a seeded tenth of them
    ///   (at least one) is held out and the rest is the test split.
    ///
    /// The held-out part is drawn with [`FOLDER_SPLIT_SEED`]; both splits
    /// name their classes in the same order (checked).
    pub fn splits(root: &Path) -> Result<(Self, Option<Self>)> {
        let val = root.join("val");
        if val.is_dir() {
            let test = Self::open(&val)?;
            let train = root.join("train");
            if !train.is_dir() {
                return Ok((test, None));
            }
            let train = Self::open(&train)?;
            if train.classes != test.classes {
                return Err(Error::Invalid(format!(
                    "{}: train/ and val/ have different class folders ({} and {})",
                    root.display(),
                    train.classes.len(),
                    test.classes.len()
                )));
            }
            let n = IMAGENET_HOLDOUT.min(train.len() / 10).max(1);
            if train.len() < 2 {
                return Ok((test, None));
            }
            return Ok((test, Some(train.holdout(n, FOLDER_SPLIT_SEED)?.1)));
        }
        let all = Self::open(root)?;
        if all.len() < 2 {
            return Err(Error::Invalid(format!(
                "{}: one image cannot be split into a test and a held-out part",
                root.display()
            )));
        }
        let (test, held) = all.holdout((all.len() / 10).max(1), FOLDER_SPLIT_SEED)?;
        Ok((test, Some(held)))
    }
}

/// Decodes one file as `channels` (1: grey, 3: RGB), applies `pre`'s
/// resizing and cropping, surrounds it with `pad` zero pixels and normalises
/// it: the planar `[C, H, W]` values and their shape.
pub fn read_preprocessed(path: &Path, channels: usize, pre: &Preprocess, pad: usize) -> Result<Decoded> {
    let (img, (c, h, w)) = crate::image::load_image_preprocessed(path, channels, pre)?;
    let pixels = if pad == 0 { img.pixels } else { crate::dataset::pad_image(&img.pixels, (c, h, w), pad) };
    Ok((pre.normalize(&pixels, channels)?, (c, h + 2 * pad, w + 2 * pad)))
}

/// One decoded image: normalised planar values and their shape.
type Decoded = (Vec<f32>, (usize, usize, usize));

/// Reads an [`ImageFolder`] in batches, decoding in parallel one batch
/// ahead; unreadable files are skipped and reported. Clones share the
/// record of skipped files.
#[derive(Clone)]
pub struct FolderStream {
    folder: Arc<ImageFolder>,
    channels: usize,
    shape: (usize, usize, usize),
    pre: Preprocess,
    pad: usize,
    batch_size: usize,
    device: Device,
    skipped: Arc<Mutex<BTreeMap<PathBuf, String>>>,
    progress: Option<Arc<dyn Fn(usize, usize) + Send + Sync>>,
}

impl std::fmt::Debug for FolderStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderStream")
            .field("root", &self.folder.root)
            .field("images", &self.folder.len())
            .field("shape", &self.shape)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl FolderStream {
    /// Streams `folder` as `channels`-channel images through `pre`, which
    /// must end at a fixed size (`resize_to`, or `centre_crop` without
    /// `resize_to`).
    pub fn new(folder: Arc<ImageFolder>, channels: usize, pre: Preprocess, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        if channels != 1 && channels != 3 {
            return Err(Error::Invalid(format!("image folders are read with 1 or 3 channels, not {channels}")));
        }
        let (h, w) = match (pre.resize_to, pre.centre_crop) {
            (Some(hw), _) => hw,
            (None, Some(c)) => (c, c),
            (None, None) => {
                return Err(Error::Invalid(
                    "image folders need a fixed image size: a centre crop or a resize to the model's input".into(),
                ));
            }
        };
        if h == 0 || w == 0 {
            return Err(Error::Invalid(format!("cannot read images at {h}x{w}")));
        }
        // The normalisation's checks, once, before any file is read.
        pre.normalize(&vec![0; channels], channels)?;
        Ok(Self {
            folder,
            channels,
            shape: (channels, h, w),
            pre,
            pad: 0,
            batch_size,
            device: Device::Cpu,
            skipped: Arc::default(),
            progress: None,
        })
    }

    /// The same stream, each image surrounded by `pad` zero pixels after
    /// preprocessing (a model trained on padded images, such as SCAN's 32x32
    /// on Fashion-MNIST's 28x28).
    pub fn with_pad(mut self, pad: usize) -> Self {
        let (c, h, w) = self.shape;
        self.shape = (c, h - 2 * self.pad + 2 * pad, w - 2 * self.pad + 2 * pad);
        self.pad = pad;
        self
    }

    /// The same stream, its batches moved to `device`.
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The same stream, calling `f(images read, images in the folder)` after
    /// each batch is decoded (a progress display).
    pub fn with_progress(mut self, f: Arc<dyn Fn(usize, usize) + Send + Sync>) -> Self {
        self.progress = Some(f);
        self
    }

    /// The index streamed.
    pub fn folder(&self) -> &ImageFolder {
        &self.folder
    }

    /// Decodes the images `start..end` of the index: the batch of the
    /// readable ones (`None` when none is) and the unreadable ones.
    fn decode(&self, start: usize, end: usize) -> Result<Option<EvalBatch>> {
        let items = &self.folder.items[start..end];
        let decoded: Vec<Result<Decoded>> =
            items.par_iter().map(|(p, _)| read_preprocessed(p, self.channels, &self.pre, self.pad)).collect();
        let (mut pixels, mut labels, mut indices) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (d, (path, label))) in decoded.into_iter().zip(items).enumerate() {
            match d {
                Ok((px, shape)) if shape == self.shape => {
                    pixels.extend(px);
                    labels.push(*label);
                    indices.push(start + k);
                }
                Ok((_, shape)) => {
                    return Err(Error::Invalid(format!(
                        "{}: preprocessing gave {shape:?}, not {:?}",
                        path.display(),
                        self.shape
                    )));
                }
                Err(e) => {
                    let reason = match e {
                        Error::Io { source, .. } => source.to_string(),
                        Error::Format { msg, .. } => msg,
                        e => e.to_string(),
                    };
                    if let Ok(mut s) = self.skipped.lock() {
                        s.insert(path.clone(), reason);
                    }
                }
            }
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let (c, h, w) = self.shape;
        let n = indices.len();
        Ok(Some(EvalBatch {
            images: Tensor::from_vec(pixels, (n, c, h, w), &Device::Cpu)?,
            labels: Tensor::from_vec(labels, n, &Device::Cpu)?,
            indices,
        }))
    }
}

impl EvalSource for FolderStream {
    fn len(&self) -> usize {
        self.folder.len()
    }

    fn sample_shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    fn classes(&self) -> Vec<String> {
        self.folder.classes.clone()
    }

    fn batches(&self) -> Box<dyn Iterator<Item = Result<EvalBatch>> + '_> {
        // One batch in the channel, one being decoded, one in use: memory
        // stays at three batches.
        let (tx, rx) = sync_channel::<Result<EvalBatch>>(1);
        let this = self.clone();
        std::thread::spawn(move || {
            let n = this.folder.len();
            for start in (0..n).step_by(this.batch_size) {
                let end = (start + this.batch_size).min(n);
                let b = this.decode(start, end);
                if let Some(f) = &this.progress {
                    f(end, n);
                }
                let stop = b.is_err();
                if let Some(b) = b.transpose()
                    && tx.send(b).is_err()
                {
                    break;
                }
                if stop {
                    break;
                }
            }
        });
        let device = self.device.clone();
        Box::new(rx.into_iter().map(move |b| {
            let b = b?;
            if device.is_cpu() {
                return Ok(b);
            }
            Ok(EvalBatch {
                images: b.images.to_device(&device)?,
                labels: b.labels.to_device(&device)?,
                indices: b.indices,
            })
        }))
    }

    fn image_name(&self, index: usize) -> String {
        self.folder.items.get(index).map_or_else(|| format!("#{index}"), |(p, _)| p.display().to_string())
    }

    fn skipped(&self) -> Vec<Skipped> {
        self.skipped
            .lock()
            .map(|s| s.iter().map(|(path, reason)| Skipped { path: path.clone(), reason: reason.clone() }).collect())
            .unwrap_or_default()
    }
}

/// Loads every image under `root/<class>/` into memory, as `channels` x
/// `size` x `size` (bilinear resize of the whole image). An unreadable image
/// is an error naming it. For large folders, stream with [`FolderStream`].
pub fn image_folder(root: &Path, channels: usize, size: usize, norm: Normalization) -> Result<Dataset> {
    let folder = ImageFolder::open(root)?;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (f, c) in &folder.items {
        images.extend(load_image(f, channels, (size, size))?.pixels);
        labels.push(*c);
    }
    Dataset::new(format!("folder:{}", root.display()), images, labels, (channels, size, size), folder.classes, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("anytime-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    #[test]
    fn loads_sorted_classes_and_reports_bad_images() {
        let root = scratch("mem");
        for (c, v) in [("b", 200u8), ("a", 10)] {
            std::fs::create_dir_all(root.join(c)).unwrap();
            image::GrayImage::from_pixel(5, 7, image::Luma([v])).save(root.join(c).join("x.png")).unwrap();
        }
        let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
        let ds = image_folder(&root, 1, 4, norm.clone()).unwrap();
        assert_eq!(ds.classes(), &["a".to_string(), "b".to_string()]);
        assert_eq!(ds.labels(), &[0, 1]);
        assert_eq!(ds.image(0)[0], 10);
        std::fs::write(root.join("a").join("bad.jpg"), b"nope").unwrap();
        assert!(image_folder(&root, 1, 4, norm).unwrap_err().to_string().contains("bad.jpg"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn streams_in_order_skipping_unreadable_files() {
        let root = scratch("stream");
        let mut expect = Vec::new();
        for (c, class) in ["x", "y", "z"].iter().enumerate() {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for k in 0..3u8 {
                let v = 30 * c as u8 + k;
                image::GrayImage::from_pixel(7 + k as u32, 5, image::Luma([v]))
                    .save(root.join(class).join(format!("{k}.png")))
                    .unwrap();
                expect.push((v, c as u32));
            }
        }
        std::fs::write(root.join("y").join("1.png"), b"\x89PNG broken").unwrap();
        std::fs::write(root.join("y").join("notes.txt"), b"ignored").unwrap();
        let folder = Arc::new(ImageFolder::open(&root).unwrap());
        assert_eq!(folder.len(), 9);
        let pre = Preprocess { resize_to: Some((4, 4)), mean: vec![0.0], std: vec![1.0], ..Preprocess::cifar10() };
        let s = FolderStream::new(folder.clone(), 1, pre, 4).unwrap();
        let got: Vec<EvalBatch> = s.batches().collect::<Result<_>>().unwrap();
        let idx: Vec<usize> = got.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(idx, [0, 1, 2, 3, 5, 6, 7, 8]);
        let labels: Vec<u32> = got.iter().flat_map(|b| b.labels.to_vec1::<u32>().unwrap()).collect();
        assert_eq!(labels, [0, 0, 0, 1, 1, 2, 2, 2]);
        // A flat image resizes to the same value everywhere.
        let first = got[0].images.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(first.iter().all(|&v| (v - 0.0).abs() < 1e-6), "{first:?}");
        let last = got[2].images.get(0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(last.iter().all(|&v| (v - 62.0 / 255.0).abs() < 1e-6), "{last:?}");
        let skipped = s.skipped();
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].path.ends_with("y/1.png"));
        assert!(!skipped[0].reason.is_empty());
        assert_eq!(s.image_name(4), root.join("y").join("1.png").display().to_string());
        // A slice and a held-out split are disjoint and keep the order.
        assert_eq!(folder.slice(2..4).items(), &folder.items()[2..4]);
        let (rest, held) = folder.holdout(3, 1).unwrap();
        assert_eq!((rest.len(), held.len()), (6, 3));
        assert!(held.items().iter().all(|i| !rest.items().contains(i)));
        assert_eq!(folder.holdout(3, 1).unwrap(), (rest, held));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn splits_follow_the_layout() {
        let root = scratch("splits");
        for part in ["train", "val"] {
            for class in ["a", "b"] {
                std::fs::create_dir_all(root.join(part).join(class)).unwrap();
                for k in 0..10 {
                    image::GrayImage::new(2, 2).save(root.join(part).join(class).join(format!("{k}.png"))).unwrap();
                }
            }
        }
        let (test, held) = ImageFolder::splits(&root).unwrap();
        assert_eq!(test.root(), root.join("val"));
        assert_eq!((test.len(), held.as_ref().map(ImageFolder::len)), (20, Some(2)));
        assert!(held.unwrap().items().iter().all(|(p, _)| p.starts_with(root.join("train"))));
        // Class folders directly: a tenth held out.
        let (test, held) = ImageFolder::splits(&root.join("train")).unwrap();
        assert_eq!((test.len(), held.map(|h| h.len())), (18, Some(2)));
        // Errors name the folder.
        let e = ImageFolder::open(&root.join("val").join("a")).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
        assert!(ImageFolder::open(&root.join("missing")).unwrap_err().to_string().contains("missing"));
        let bad = Preprocess { mean: vec![0.5, 0.5], ..Preprocess::imagenet() };
        let f = Arc::new(ImageFolder::open(&root.join("val")).unwrap());
        assert!(FolderStream::new(f.clone(), 3, bad, 2).is_err());
        assert!(FolderStream::new(f.clone(), 3, Preprocess::cifar10(), 2).unwrap_err().to_string().contains("fixed"));
        assert!(FolderStream::new(f, 3, Preprocess::imagenet(), 0).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
