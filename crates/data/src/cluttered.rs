//! Cluttered canvases: each image placed at a random position on a larger
//! blank canvas among fragments cut from other images of the same set (the
//! "cluttered MNIST" of recurrent-attention work), GFNet's benchmark where
//! most of the canvas is redundant.
//!
//! A canvas is built from a seeded generator: [`ClutterSpec::fragments`]
//! fragments of [`ClutterSpec::fragment`]² pixels, each cut at a random
//! position of a random *other* image and pasted at a random canvas
//! position, then the image itself at a random position; overlapping pixels
//! keep the brighter value (Fashion-MNIST's background is 0). Labels are the
//! image's.
//!
//! - [`cluttered`] makes a fixed set (the test and held-out canvases): sample
//!   i's canvas depends only on the seed and i.
//! - [`compose`] makes one canvas from any generator: a training loader calls
//!   it with a generator seeded by (seed, epoch, sample), so the canvases
//!   change every epoch and a resumed run sees the same ones
//!   ([`crate::loader::Loader::with_clutter`]).
//!
//! ```
//! use anytime_data::cluttered::{ClutterSpec, cluttered};
//! use anytime_data::fmnist::{fashion_mnist, fashion_mnist_sample_dir, Split};
//! # fn main() -> anytime_data::Result<()> {
//! let ds = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test)?.take(20)?;
//! let canvases = cluttered(&ds, &ClutterSpec::default(), 7)?;
//! assert_eq!(canvases.image_shape(), (1, 96, 96));
//! assert_eq!(canvases.labels(), ds.labels());
//! assert_eq!(canvases, cluttered(&ds, &ClutterSpec::default(), 7)?); // fixed by the seed
//! # Ok(()) }
//! ```

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How canvases are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClutterSpec {
    /// Side of the square canvas (96).
    pub canvas: usize,
    /// Clutter fragments per canvas (6).
    pub fragments: usize,
    /// Side of a fragment (8).
    pub fragment: usize,
}

impl Default for ClutterSpec {
    /// GFNet's benchmark: 96x96 canvases, six 8x8 fragments.
    fn default() -> Self {
        Self { canvas: 96, fragments: 6, fragment: 8 }
    }
}

impl ClutterSpec {
    /// Checks the spec against images of `(c, h, w)` in a set of `n`.
    pub fn check(&self, (_, h, w): (usize, usize, usize), n: usize) -> Result<()> {
        if self.canvas == 0 || self.canvas > 4096 {
            return Err(Error::Invalid(format!("clutter: the canvas side must be 1 to 4096, got {}", self.canvas)));
        }
        if h > self.canvas || w > self.canvas {
            return Err(Error::Invalid(format!("clutter: {h}x{w} images do not fit a {0}x{0} canvas", self.canvas)));
        }
        if self.fragments > 0 && (self.fragment == 0 || self.fragment > h.min(w)) {
            return Err(Error::Invalid(format!(
                "clutter: fragments must be 1 to {} pixels wide for {h}x{w} images, got {}",
                h.min(w),
                self.fragment
            )));
        }
        if self.fragments > 0 && n < 2 {
            return Err(Error::Invalid("clutter: fragments need a second image to come from".into()));
        }
        if self.fragments > 1024 {
            return Err(Error::Invalid(format!("clutter: at most 1024 fragments, got {}", self.fragments)));
        }
        Ok(())
    }
}

/// Pastes `src` (`c` planes of `h`x`w`, window at `(sy, sx)` of size
/// `fh`x`fw`) into `out` (`c` planes of `side`x`side`) at `(y, x)`, keeping
/// the brighter value.
#[allow(clippy::too_many_arguments)]
fn paste(
    out: &mut [u8],
    side: usize,
    src: &[u8],
    (c, h, w): (usize, usize, usize),
    (sy, sx): (usize, usize),
    (fh, fw): (usize, usize),
    (y, x): (usize, usize),
) {
    for ch in 0..c {
        for r in 0..fh {
            let from = &src[(ch * h + sy + r) * w + sx..][..fw];
            let to = &mut out[(ch * side + y + r) * side + x..][..fw];
            for (t, f) in to.iter_mut().zip(from) {
                *t = (*t).max(*f);
            }
        }
    }
}

/// The canvas of sample `index` of `ds` into `out` (`C·canvas²` bytes),
/// drawing positions and fragment sources from `rng`; returns the item's
/// top-left corner (row, column).
///
/// # Panics
/// Never for a spec that passed [`ClutterSpec::check`] and an `out` of the
/// right length; callers check both.
pub fn compose(ds: &Dataset, index: usize, spec: &ClutterSpec, rng: &mut impl Rng, out: &mut [u8]) -> (usize, usize) {
    let (c, h, w) = ds.image_shape();
    let side = spec.canvas;
    out.fill(0);
    let f = spec.fragment;
    for _ in 0..spec.fragments {
        // Another image: one of the n − 1 others, uniformly.
        let mut src = rng.random_range(0..ds.len() - 1);
        if src >= index {
            src += 1;
        }
        let (sy, sx) = (rng.random_range(0..=h - f), rng.random_range(0..=w - f));
        let (y, x) = (rng.random_range(0..=side - f), rng.random_range(0..=side - f));
        paste(out, side, ds.image(src), (c, h, w), (sy, sx), (f, f), (y, x));
    }
    let (y, x) = (rng.random_range(0..=side - h), rng.random_range(0..=side - w));
    paste(out, side, ds.image(index), (c, h, w), (0, 0), (h, w), (y, x));
    (y, x)
}

/// The generator of a fixed set's sample `i`.
fn fixed_rng(seed: u64, i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Every sample of `ds` on its canvas, fixed by `seed`.
pub fn cluttered(ds: &Dataset, spec: &ClutterSpec, seed: u64) -> Result<Dataset> {
    Ok(cluttered_with_items(ds, spec, seed)?.0)
}

/// [`cluttered`], and where each item lies: the top-left corner (row,
/// column) of its `h`x`w` square on the canvas.
pub fn cluttered_with_items(ds: &Dataset, spec: &ClutterSpec, seed: u64) -> Result<(Dataset, Vec<(usize, usize)>)> {
    let (c, _, _) = ds.image_shape();
    spec.check(ds.image_shape(), ds.len())?;
    let per = c * spec.canvas * spec.canvas;
    let total = per
        .checked_mul(ds.len())
        .filter(|&t| t <= 1 << 34)
        .ok_or_else(|| Error::Invalid(format!("clutter: {} canvases of {per} bytes are too many to hold", ds.len())))?;
    let mut images = vec![0u8; total];
    use rayon::prelude::*;
    let items: Vec<(usize, usize)> = images
        .par_chunks_mut(per)
        .enumerate()
        .map(|(i, out)| compose(ds, i, spec, &mut fixed_rng(seed, i), out))
        .collect();
    let set = Dataset::new(
        format!("{}+clutter{}", ds.name, spec.canvas),
        images,
        ds.labels().to_vec(),
        (c, spec.canvas, spec.canvas),
        ds.classes().to_vec(),
        ds.normalization().clone(),
    )?;
    Ok((set, items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Normalization;

    fn tiny() -> Dataset {
        // Three 4x4 images: all 10, all 20, all 30.
        let images = [10u8, 20, 30].iter().flat_map(|&v| std::iter::repeat_n(v, 16)).collect();
        let norm = Normalization { mean: vec![0.0], std: vec![1.0] };
        Dataset::new("tiny", images, vec![0, 1, 2], (1, 4, 4), vec!["a".into(), "b".into(), "c".into()], norm).unwrap()
    }

    #[test]
    fn the_item_is_whole_and_fragments_come_from_other_images() {
        let ds = tiny();
        let spec = ClutterSpec { canvas: 12, fragments: 3, fragment: 2 };
        for seed in 0..50 {
            let set = cluttered(&ds, &spec, seed).unwrap();
            for i in 0..3 {
                let canvas = set.image(i);
                let own = [10u8, 20, 30][i];
                // The item: a 4x4 block of its value or brighter fragments;
                // at least 16 pixels are >= its value.
                assert!(canvas.iter().filter(|&&p| p >= own).count() >= 16, "seed {seed} sample {i}");
                // Nothing but 0, the item and the other images' values.
                assert!(canvas.iter().all(|p| [0, 10, 20, 30].contains(p)));
                // At most 16 + 3·4 lit pixels.
                assert!(canvas.iter().filter(|&&p| p > 0).count() <= 28);
            }
        }
        // Another seed, other canvases; the same seed, the same ones.
        assert_ne!(cluttered(&ds, &spec, 1).unwrap(), cluttered(&ds, &spec, 2).unwrap());
        // The item's square holds its value (or a brighter fragment's).
        for seed in 0..20 {
            let (set, items) = cluttered_with_items(&ds, &spec, seed).unwrap();
            for (i, &(y, x)) in items.iter().enumerate() {
                let own = [10u8, 20, 30][i];
                let canvas = set.image(i);
                assert!((0..16).all(|k| canvas[(y + k / 4) * 12 + x + k % 4] >= own), "seed {seed} sample {i}");
            }
        }
    }

    #[test]
    fn bad_specs_are_errors() {
        let ds = tiny();
        for spec in [
            ClutterSpec { canvas: 3, fragments: 1, fragment: 2 },
            ClutterSpec { canvas: 12, fragments: 1, fragment: 5 },
            ClutterSpec { canvas: 12, fragments: 1, fragment: 0 },
            ClutterSpec { canvas: 0, fragments: 0, fragment: 0 },
        ] {
            assert!(cluttered(&ds, &spec, 0).is_err(), "{spec:?}");
        }
        let one = ds.take(1).unwrap();
        assert!(cluttered(&one, &ClutterSpec { canvas: 12, fragments: 1, fragment: 2 }, 0).is_err());
        // No fragments: a single image is fine.
        assert!(cluttered(&one, &ClutterSpec { canvas: 12, fragments: 0, fragment: 0 }, 0).is_ok());
    }
}
