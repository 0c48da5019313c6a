//! Seeded augmentation and a prefetching, shuffling batch iterator that
//! yields Candle tensors.
//!
//! The order of an epoch and every sample's augmentation depend only on
//! `(seed, epoch, sample index)`, never on thread timing, so training is
//! reproducible and can resume at any batch.

use crate::cluttered::ClutterSpec;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    /// Zero-pad by this many pixels, then crop a random window of the
    /// original size.
    pub pad_crop: Option<usize>,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
    /// Random-resized crop (Inception style): a window covering a random
    /// share of the area in `[min_scale, 1]` with an aspect ratio in
    /// `[3/4, 4/3]`, resized (bilinear) back to the image size.
    pub random_resized_crop: Option<f32>,
}

/// How a [`Loader`] batches an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (seeded by `(seed, epoch)`).
    pub shuffle: bool,
    /// Seed of the order and the augmentation.
    pub seed: u64,
    /// Augmentation (training only).
    pub augment: Augment,
    /// Drop a last, incomplete batch.
    pub drop_last: bool,
}

fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut h = a ^ 0x9e37_79b9_7f4a_7c15;
    for v in [b, c] {
        h = (h ^ v).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
    }
    h
}

/// A dataset with a batching policy; [`Loader::epoch`] iterates one epoch.
#[derive(Debug, Clone)]
pub struct Loader {
    ds: Arc<Dataset>,
    cfg: BatchConfig,
    clutter: Option<ClutterSpec>,
    device: Device,
}

impl Loader {
    /// A loader over `ds`.
    pub fn new(ds: Arc<Dataset>, cfg: BatchConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        if ds.is_empty() {
            return Err(Error::Invalid(format!("{}: no samples", ds.name)));
        }
        Ok(Self { ds, cfg, clutter: None, device: Device::Cpu })
    }

    /// The same loader, its epochs' batches moved to `device` (they are
    /// built on the CPU).
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The same loader, each sample placed on a fresh cluttered canvas
    /// ([`crate::cluttered`]) drawn from a generator seeded by (seed, epoch,
    /// sample), in place of the augmentation.
    pub fn with_clutter(mut self, spec: ClutterSpec) -> Result<Self> {
        spec.check(self.ds.image_shape(), self.ds.len())?;
        self.clutter = Some(spec);
        Ok(self)
    }

    /// `(channels, height, width)` of the samples this loader yields (the
    /// canvas with clutter, else the dataset's images).
    pub fn sample_shape(&self) -> (usize, usize, usize) {
        let (c, h, w) = self.ds.image_shape();
        match self.clutter {
            Some(spec) => (c, spec.canvas, spec.canvas),
            None => (c, h, w),
        }
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.ds
    }

    /// A loader of `ds` in its order, without augmentation: what evaluation
    /// reads (see [`crate::source::EvalSource`]).
    pub fn in_order(ds: Arc<Dataset>, batch_size: usize) -> Result<Self> {
        Self::new(
            ds,
            BatchConfig { batch_size, shuffle: false, seed: 0, augment: Augment::default(), drop_last: false },
        )
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.ds.len();
        if self.cfg.drop_last { n / self.cfg.batch_size } else { n.div_ceil(self.cfg.batch_size) }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.ds.len()).collect();
        if self.cfg.shuffle {
            idx.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, epoch as u64, u64::MAX)));
        }
        idx
    }

    /// Normalised (and augmented) f32 pixels of sample `i` in `epoch`.
    fn sample(&self, epoch: usize, i: usize, out: &mut [f32]) {
        let (c, h, w) = self.ds.image_shape();
        let img = self.ds.image(i);
        let norm = self.ds.normalization();
        let aug = self.cfg.augment;
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.cfg.seed, epoch as u64, i as u64));
        if let Some(spec) = &self.clutter {
            let mut canvas = vec![0u8; out.len()];
            let _item = crate::cluttered::compose(&self.ds, i, spec, &mut rng, &mut canvas);
            let plane = spec.canvas * spec.canvas;
            for (k, (o, p)) in out.iter_mut().zip(&canvas).enumerate() {
                let ch = k / plane;
                *o = (*p as f32 / 255.0 - norm.mean[ch]) / norm.std[ch];
            }
            return;
        }
        let (dy, dx) = match aug.pad_crop {
            Some(p) if p > 0 => {
                (rng.random_range(0..=2 * p) as isize - p as isize, rng.random_range(0..=2 * p) as isize - p as isize)
            }
            _ => (0, 0),
        };
        let flip = aug.hflip && rng.random_bool(0.5);
        if let Some(min_scale) = aug.random_resized_crop {
            self.resized_crop(img, (c, h, w), min_scale, flip, &mut rng, out);
            return;
        }
        for ch in 0..c {
            let (m, s) = (norm.mean[ch], norm.std[ch]);
            let zero = (0.0 - m) / s;
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as isize + dx;
                    let sy = y as isize + dy;
                    let v = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        zero
                    } else {
                        (img[(ch * h + sy as usize) * w + sx as usize] as f32 / 255.0 - m) / s
                    };
                    out[(ch * h + y) * w + x] = v;
                }
            }
        }
    }

    /// Random-resized crop of `img` into `out` (normalised), bilinear.
    fn resized_crop(
        &self,
        img: &[u8],
        (c, h, w): (usize, usize, usize),
        min_scale: f32,
        flip: bool,
        rng: &mut ChaCha8Rng,
        out: &mut [f32],
    ) {
        let area = (h * w) as f32;
        let (mut ch_, mut cw, mut y0, mut x0) = (h as f32, w as f32, 0f32, 0f32);
        for _ in 0..10 {
            let s = rng.random_range(min_scale.clamp(0.01, 1.0)..=1.0);
            let r = (rng.random_range((0.75f32).ln()..=(4.0f32 / 3.0).ln())).exp();
            let (tw, th) = ((area * s * r).sqrt(), (area * s / r).sqrt());
            if tw <= w as f32 && th <= h as f32 {
                (ch_, cw) = (th, tw);
                y0 = rng.random_range(0.0..=(h as f32 - th));
                x0 = rng.random_range(0.0..=(w as f32 - tw));
                break;
            }
        }
        let norm = self.ds.normalization();
        for chn in 0..c {
            let plane = &img[chn * h * w..(chn + 1) * h * w];
            let (m, sd) = (norm.mean[chn], norm.std[chn]);
            for y in 0..h {
                let sy = (y0 + (y as f32 + 0.5) * ch_ / h as f32 - 0.5).clamp(0.0, (h - 1) as f32);
                let (iy, fy) = (sy.floor() as usize, sy.fract());
                let iy1 = (iy + 1).min(h - 1);
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = (x0 + (xx as f32 + 0.5) * cw / w as f32 - 0.5).clamp(0.0, (w - 1) as f32);
                    let (ix, fx) = (sx.floor() as usize, sx.fract());
                    let ix1 = (ix + 1).min(w - 1);
                    let p = |yy: usize, xq: usize| plane[yy * w + xq] as f32;
                    let v = (1.0 - fy) * ((1.0 - fx) * p(iy, ix) + fx * p(iy, ix1))
                        + fy * ((1.0 - fx) * p(iy1, ix) + fx * p(iy1, ix1));
                    out[(chn * h + y) * w + x] = (v / 255.0 - m) / sd;
                }
            }
        }
    }

    /// Builds the batch of the given sample indices.
    pub fn batch(&self, epoch: usize, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let (c, h, w) = self.sample_shape();
        let per = c * h * w;
        let mut pixels = vec![0f32; indices.len() * per];
        pixels.par_chunks_mut(per).zip(indices.par_iter()).for_each(|(out, &i)| self.sample(epoch, i, out));
        let labels: Vec<u32> = indices.iter().map(|&i| self.ds.labels()[i]).collect();
        Ok((
            Tensor::from_vec(pixels, (indices.len(), c, h, w), device)?,
            Tensor::from_vec(labels, indices.len(), device)?,
        ))
    }

    /// Iterates `epoch` from batch `start`, preparing up to two batches ahead
    /// on a background thread.
    pub fn epoch(&self, epoch: usize, start: usize) -> Batches {
        let order = self.order(epoch);
        let bs = self.cfg.batch_size;
        let end = self.num_batches();
        let (tx, rx) = sync_channel(2);
        let this = self.clone();
        std::thread::spawn(move || {
            for b in start..end {
                let idx = &order[b * bs..((b + 1) * bs).min(order.len())];
                if tx.send(this.batch(epoch, idx, &Device::Cpu)).is_err() {
                    break;
                }
            }
        });
        Batches { rx, device: self.device.clone() }
    }
}

/// The batches of one epoch (see [`Loader::epoch`]).
pub struct Batches {
    rx: Receiver<Result<(Tensor, Tensor)>>,
    device: Device,
}

impl Iterator for Batches {
    type Item = Result<(Tensor, Tensor)>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.rx.recv().ok()?;
        if self.device.is_cpu() {
            return Some(batch);
        }
        Some(batch.and_then(|(xs, ys)| Ok((xs.to_device(&self.device)?, ys.to_device(&self.device)?))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Normalization;

    fn toy(n: usize) -> Arc<Dataset> {
        let images = (0..n * 9).map(|i| (i * 37 % 256) as u8).collect();
        let labels = (0..n as u32).collect();
        let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
        let classes = (0..n).map(|i| i.to_string()).collect();
        Arc::new(Dataset::new("toy", images, labels, (1, 3, 3), classes, norm).unwrap())
    }

    fn cfg(augment: Augment) -> BatchConfig {
        BatchConfig { batch_size: 4, shuffle: true, seed: 3, augment, drop_last: false }
    }

    fn labels(l: &Loader, epoch: usize, start: usize) -> Vec<u32> {
        l.epoch(epoch, start).flat_map(|b| b.unwrap().1.to_vec1::<u32>().unwrap()).collect()
    }

    #[test]
    fn every_sample_once_seeded_order_and_resume() {
        let l = Loader::new(toy(10), cfg(Augment::default())).unwrap();
        assert_eq!(l.num_batches(), 3);
        let e0 = labels(&l, 0, 0);
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(e0, labels(&l, 0, 0));
        assert_ne!(e0, labels(&l, 1, 0));
        // Resuming at batch 1 gives the rest of the same epoch.
        assert_eq!(labels(&l, 0, 1), e0[4..].to_vec());
    }

    #[test]
    fn augmentation_is_deterministic_and_does_something() {
        let aug = Augment { pad_crop: Some(1), hflip: true, random_resized_crop: None };
        let l = Loader::new(toy(6), cfg(aug)).unwrap();
        let a =
            l.batch(0, &[0, 1, 2, 3, 4, 5], &Device::Cpu).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b =
            l.batch(0, &[0, 1, 2, 3, 4, 5], &Device::Cpu).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let plain = Loader::new(toy(6), cfg(Augment::default())).unwrap();
        let c = plain
            .batch(0, &[0, 1, 2, 3, 4, 5], &Device::Cpu)
            .unwrap()
            .0
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(a, c);
        // Without augmentation, pixel 0 of image 0 is (0/255 - 0.5) / 0.5.
        assert_eq!(c[0], -1.0);
    }

    /// Training canvases change every epoch, repeat for a given (seed,
    /// epoch), and keep the labels.
    #[test]
    fn cluttered_batches_are_fresh_per_epoch_and_reproducible() {
        let ds = Arc::new(
            crate::fmnist::fashion_mnist(&crate::fmnist::fashion_mnist_sample_dir(), crate::fmnist::Split::Test)
                .unwrap()
                .take(16)
                .unwrap(),
        );
        let cfg = BatchConfig { batch_size: 4, shuffle: false, seed: 3, augment: Augment::default(), drop_last: false };
        let l = Loader::new(ds.clone(), cfg).unwrap().with_clutter(ClutterSpec::default()).unwrap();
        assert_eq!(l.sample_shape(), (1, 96, 96));
        let get = |e| l.batch(e, &[0, 1, 2, 3], &Device::Cpu).unwrap();
        let ((a, ya), (b, _), (c, _)) = (get(0), get(0), get(1));
        assert_eq!(a.dims(), &[4, 1, 96, 96]);
        assert_eq!(ya.to_vec1::<u32>().unwrap(), &ds.labels()[..4]);
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        // A 28x28 image does not fit a 20x20 canvas.
        assert!(
            Loader::new(ds, cfg).unwrap().with_clutter(ClutterSpec { canvas: 20, ..ClutterSpec::default() }).is_err()
        );
    }

    #[test]
    fn random_resized_crop_is_deterministic_and_in_range() {
        let aug = Augment { pad_crop: None, hflip: true, random_resized_crop: Some(0.3) };
        let l = Loader::new(toy(4), cfg(aug)).unwrap();
        let a = l.batch(2, &[0, 1, 2, 3], &Device::Cpu).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = l.batch(2, &[0, 1, 2, 3], &Device::Cpu).unwrap().0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        // Normalised bytes stay within [(0 - 0.5) / 0.5, (1 - 0.5) / 0.5].
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn zero_batch_size_is_an_error() {
        let mut c = cfg(Augment::default());
        c.batch_size = 0;
        assert!(Loader::new(toy(3), c).is_err());
    }
}
