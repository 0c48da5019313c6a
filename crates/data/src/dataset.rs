//! In-memory image classification datasets and seeded held-out splits.

use crate::error::{Error, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Per-channel normalisation, part of a dataset's description:
/// `x = (pixel / 255 - mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel.
    pub std: Vec<f32>,
}

/// Images `[N, C, H, W]` as bytes, with labels and class names.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Dataset name, e.g. `fashion-mnist/train`.
    pub name: String,
    images: Vec<u8>,
    labels: Vec<u32>,
    shape: (usize, usize, usize),
    classes: Vec<String>,
    norm: Normalization,
}

impl Dataset {
    /// A dataset from raw parts; checks that the sizes agree and every label
    /// names a class.
    pub fn new(
        name: impl Into<String>,
        images: Vec<u8>,
        labels: Vec<u32>,
        shape: (usize, usize, usize),
        classes: Vec<String>,
        norm: Normalization,
    ) -> Result<Self> {
        let name = name.into();
        let per = shape.0 * shape.1 * shape.2;
        if per == 0 || images.len() != labels.len() * per {
            return Err(Error::Invalid(format!(
                "{name}: {} image bytes for {} labels of shape {shape:?}",
                images.len(),
                labels.len()
            )));
        }
        if norm.mean.len() != shape.0 || norm.std.len() != shape.0 || norm.std.iter().any(|s| *s <= 0.0) {
            return Err(Error::Invalid(format!("{name}: normalisation {norm:?} does not fit {} channels", shape.0)));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes.len()) {
            return Err(Error::Invalid(format!("{name}: label {bad} but only {} classes", classes.len())));
        }
        Ok(Self { name, images, labels, shape, classes, norm })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `(channels, height, width)` of every image.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Class names.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The normalisation statistics.
    pub fn normalization(&self) -> &Normalization {
        &self.norm
    }

    /// Labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The bytes of image `i` (`C·H·W`).
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.shape.0 * self.shape.1 * self.shape.2;
        &self.images[i * per..(i + 1) * per]
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], name: impl Into<String>) -> Result<Self> {
        if let Some(bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!("{}: index {bad} out of range ({} samples)", self.name, self.len())));
        }
        let mut images = Vec::with_capacity(indices.len() * self.image(0).len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Self::new(name, images, labels, self.shape, self.classes.clone(), self.norm.clone())
    }

    /// Every image zero-padded by `pad` pixels on each side (pixel value 0,
    /// Fashion-MNIST's background): `(C, H, W)` becomes `(C, H + 2·pad,
    /// W + 2·pad)`. How SCAN's 32x32 geometry takes 28x28 Fashion-MNIST.
    pub fn pad(&self, pad: usize) -> Result<Self> {
        if pad == 0 {
            return Ok(self.clone());
        }
        let (c, h, w) = self.shape;
        let too_big = || Error::Invalid(format!("{}: padding {h}x{w} images by {pad} is too large", self.name));
        let p2 = pad.checked_mul(2).ok_or_else(too_big)?;
        let (ph, pw) = (h.checked_add(p2).ok_or_else(too_big)?, w.checked_add(p2).ok_or_else(too_big)?);
        let per = c.checked_mul(ph).and_then(|v| v.checked_mul(pw)).ok_or_else(too_big)?;
        let total = per.checked_mul(self.len()).filter(|&t| t <= 1 << 34).ok_or_else(too_big)?;
        let mut images = Vec::with_capacity(total);
        for i in 0..self.len() {
            images.extend(pad_image(self.image(i), self.shape, pad));
        }
        Self::new(
            format!("{}+pad{pad}", self.name),
            images,
            self.labels.clone(),
            (c, ph, pw),
            self.classes.clone(),
            self.norm.clone(),
        )
    }

    /// The same images with another normalisation (`--mean` / `--std`).
    pub fn with_normalization(mut self, norm: Normalization) -> Result<Self> {
        let c = self.shape.0;
        if norm.mean.len() != c || norm.std.len() != c {
            return Err(Error::Invalid(format!(
                "{}: {} means and {} standard deviations for {c} channels",
                self.name,
                norm.mean.len(),
                norm.std.len()
            )));
        }
        if let Some(s) = norm.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Invalid(format!("{}: standard deviations must be > 0, got {s}", self.name)));
        }
        self.norm = norm;
        Ok(self)
    }

    /// The first `n` samples.
    pub fn take(&self, n: usize) -> Result<Self> {
        let idx: Vec<usize> = (0..n.min(self.len())).collect();
        self.subset(&idx, format!("{}[..{}]", self.name, idx.len()))
    }
}

/// `pixels` `[c, h, w]` surrounded by `pad` zero pixels on each side:
/// `[c, h + 2·pad, w + 2·pad]` (see [`Dataset::pad`]).
pub fn pad_image(pixels: &[u8], (c, h, w): (usize, usize, usize), pad: usize) -> Vec<u8> {
    let (ph, pw) = (h + 2 * pad, w + 2 * pad);
    let mut out = vec![0u8; c * ph * pw];
    for ch in 0..c {
        for y in 0..h {
            let at = (ch * ph + y + pad) * pw + pad;
            out[at..at + w].copy_from_slice(&pixels[(ch * h + y) * w..(ch * h + y + 1) * w]);
        }
    }
    out
}

/// Splits off a seeded, un-augmented held-out set of `n_holdout` samples:
/// returns `(train, holdout)`, disjoint, each in the original order. The
/// same seed always gives the same split.
pub fn holdout_split(ds: &Dataset, n_holdout: usize, seed: u64) -> Result<(Dataset, Dataset)> {
    if n_holdout == 0 || n_holdout >= ds.len() {
        return Err(Error::Invalid(format!("{}: cannot hold out {n_holdout} of {} samples", ds.name, ds.len())));
    }
    let mut idx: Vec<usize> = (0..ds.len()).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (hold, train) = idx.split_at_mut(n_holdout);
    hold.sort_unstable();
    train.sort_unstable();
    Ok((ds.subset(train, format!("{}-train", ds.name))?, ds.subset(hold, format!("{}-holdout", ds.name))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn toy(n: usize) -> Dataset {
        let images = (0..n * 4).map(|i| (i % 251) as u8).collect();
        let labels = (0..n as u32).map(|i| i % 3).collect();
        let norm = Normalization { mean: vec![0.5], std: vec![0.25] };
        Dataset::new("toy", images, labels, (1, 2, 2), vec!["a".into(), "b".into(), "c".into()], norm).unwrap()
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let ds = toy(50);
        let (a, b) = holdout_split(&ds, 10, 7).unwrap();
        let (a2, b2) = holdout_split(&ds, 10, 7).unwrap();
        assert_eq!((a.len(), b.len()), (40, 10));
        assert_eq!(a, a2);
        assert_eq!(b, b2);
        let (_, b3) = holdout_split(&ds, 10, 8).unwrap();
        assert_ne!(b, b3);
        assert!(holdout_split(&ds, 50, 1).is_err());
    }

    #[test]
    fn inconsistent_parts_are_errors() {
        let norm = Normalization { mean: vec![0.5], std: vec![0.25] };
        assert!(Dataset::new("x", vec![0; 7], vec![0, 0], (1, 2, 2), vec!["a".into()], norm.clone()).is_err());
        assert!(Dataset::new("x", vec![0; 8], vec![0, 1], (1, 2, 2), vec!["a".into()], norm).is_err());
        assert!(toy(5).subset(&[9], "s").is_err());
    }

    #[test]
    fn pad_surrounds_every_image_with_zeros() {
        let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
        let ds =
            Dataset::new("t", vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0, 1], (1, 2, 2), vec!["a".into(), "b".into()], norm)
                .expect("dataset");
        let p = ds.pad(1).expect("pad");
        assert_eq!(p.image_shape(), (1, 4, 4));
        assert_eq!(p.image(1), &[0, 0, 0, 0, 0, 5, 6, 0, 0, 7, 8, 0, 0, 0, 0, 0]);
        assert_eq!(p.labels(), ds.labels());
        assert_eq!(ds.pad(0).expect("same"), ds);
        assert!(ds.pad(usize::MAX / 2).is_err());
    }
}
