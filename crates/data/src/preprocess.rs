//! The references' evaluation preprocessing, pixel for pixel as torchvision
//! does it on PIL images: MSDNet's and RANet's ImageNet `dataloader.py`
//! (`Resize(256)` → `CenterCrop(224)` → `ToTensor()` → `Normalize(mean,
//! std)`), and the CIFAR normalisation.
//!
//! - [`resize_bilinear`] is Pillow's bilinear resampling (`Resample.c`): a
//!   separable triangle filter whose support widens by the downscaling
//!   factor (so a downscale averages every source pixel, as PIL's
//!   "antialiased" resize), 22-bit fixed-point coefficients, the horizontal
//!   pass first, rounded to 8 bits between the passes.
//! - [`resize_shorter_size`] and [`centre_crop_box`] are torchvision's size
//!   and crop arithmetic (the crop rounds half to even, as Python's
//!   `round`; a crop larger than the image pads it with zeros first).
//!
//! `scripts/fixtures/preprocess.py` runs torchvision (with Pillow 12.3) on
//! test images of ours; the golden test matches its tensors exactly for
//! PNGs. JPEGs differ by the decoders, not by this module: PIL's
//! libjpeg-turbo and the `image` crate's decoder give a greyscale JPEG
//! within one level of 255 (0.3 % of values) and a colour (4:2:0) JPEG
//! within three (24 % of values). Pillow 13 chooses the order of the two
//! passes by a rule of its own (vertical first for some shapes), which moves
//! some values by one level; Pillow ≤ 12.3 always resizes horizontally
//! first, as here.
//!
//! ```
//! use anytime_data::preprocess::Preprocess;
//! // A 300x200 RGB image (width x height), interleaved.
//! let rgb: Vec<u8> = (0..300 * 200 * 3).map(|i| (i % 251) as u8).collect();
//! let p = Preprocess::imagenet();
//! let (pixels, (c, h, w)) = p.apply_u8(&rgb, 3, (300, 200)).unwrap();
//! assert_eq!((c, h, w), (3, 224, 224));
//! assert_eq!(pixels.len(), 3 * 224 * 224);
//! let x = p.normalize(&pixels, c).unwrap(); // (v/255 − mean) / std per channel
//! assert_eq!(x.len(), pixels.len());
//! ```

use crate::error::{Error, Result};

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// How an image becomes a model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Resize so that the shorter side has this many pixels (bilinear).
    pub resize_shorter: Option<usize>,
    /// Then crop this square from the centre.
    pub centre_crop: Option<usize>,
    /// Then, when the image is not already this `(height, width)`, resize it
    /// to exactly that (bilinear, as torchvision's `Resize((h, w))`): images
    /// of any size reach a model of a fixed input size.
    pub resize_to: Option<(usize, usize)>,
    /// Per-channel mean of `ToTensor`'s [0, 1] values.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Preprocess {
    /// MSDNet's and RANet's ImageNet evaluation transform.
    pub fn imagenet() -> Self {
        Self {
            resize_shorter: Some(256),
            centre_crop: Some(224),
            resize_to: None,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// MSDNet's CIFAR-10 normalisation (`dataloader.py`), no resizing.
    pub fn cifar10() -> Self {
        Self {
            resize_shorter: None,
            centre_crop: None,
            resize_to: None,
            mean: vec![0.4914, 0.4824, 0.4467],
            std: vec![0.2471, 0.2435, 0.2616],
        }
    }

    /// MSDNet's CIFAR-100 normalisation, no resizing.
    pub fn cifar100() -> Self {
        Self {
            resize_shorter: None,
            centre_crop: None,
            resize_to: None,
            mean: vec![0.5071, 0.4867, 0.4408],
            std: vec![0.2675, 0.2565, 0.2761],
        }
    }

    /// Resizes and crops an interleaved 8-bit image of `channels` channels
    /// and `(width, height)`; returns the planar `[C, H, W]` bytes and their
    /// shape.
    pub fn apply_u8(
        &self,
        pixels: &[u8],
        channels: usize,
        (width, height): (usize, usize),
    ) -> Result<(Vec<u8>, (usize, usize, usize))> {
        check_image(pixels, channels, (width, height))?;
        let (mut img, mut w, mut h) = (pixels.to_vec(), width, height);
        if let Some(s) = self.resize_shorter {
            let (nw, nh) = resize_shorter_size((w, h), s)?;
            img = resize_bilinear(&img, channels, (w, h), (nw, nh))?;
            (w, h) = (nw, nh);
        }
        if let Some(c) = self.centre_crop {
            img = centre_crop(&img, channels, (w, h), c)?;
            (w, h) = (c, c);
        }
        if let Some((th, tw)) = self.resize_to
            && (th, tw) != (h, w)
        {
            if th == 0 || tw == 0 {
                return Err(Error::Invalid(format!("preprocessing: cannot resize to {th}x{tw}")));
            }
            img = resize_bilinear(&img, channels, (w, h), (tw, th))?;
            (w, h) = (tw, th);
        }
        let mut planar = vec![0u8; img.len()];
        for (i, px) in img.chunks_exact(channels).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                planar[c * w * h + i] = v;
            }
        }
        Ok((planar, (channels, h, w)))
    }

    /// `ToTensor` then `Normalize`: `(v / 255 − mean[c]) / std[c]` over
    /// planar bytes of `channels` channels.
    pub fn normalize(&self, planar: &[u8], channels: usize) -> Result<Vec<f32>> {
        if self.mean.len() != channels || self.std.len() != channels {
            return Err(Error::Invalid(format!(
                "preprocessing: {} means and {} standard deviations for {channels} channels",
                self.mean.len(),
                self.std.len()
            )));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Invalid(format!("preprocessing: standard deviations must be > 0, got {s}")));
        }
        if channels == 0 || !planar.len().is_multiple_of(channels) {
            return Err(Error::Invalid(format!("preprocessing: {} bytes are not {channels} planes", planar.len())));
        }
        let plane = planar.len() / channels;
        Ok(planar
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / plane;
                (v as f32 / 255.0 - self.mean[c]) / self.std[c]
            })
            .collect())
    }
}

fn check_image(pixels: &[u8], channels: usize, (width, height): (usize, usize)) -> Result<()> {
    if channels == 0 || channels > 4 {
        return Err(Error::Invalid(format!("preprocessing: images have 1 to 4 channels, not {channels}")));
    }
    if width == 0 || height == 0 {
        return Err(Error::Invalid(format!("preprocessing: an empty {width}x{height} image")));
    }
    if width.checked_mul(height).and_then(|p| p.checked_mul(channels)) != Some(pixels.len()) {
        return Err(Error::Invalid(format!(
            "preprocessing: {} bytes are not a {width}x{height} image of {channels} channels",
            pixels.len()
        )));
    }
    Ok(())
}

/// torchvision's `Resize(size)` output `(width, height)` for an int size:
/// the shorter side becomes `size`, the longer `int(size · long / short)`.
pub fn resize_shorter_size((width, height): (usize, usize), size: usize) -> Result<(usize, usize)> {
    if size == 0 || size > 1 << 16 {
        return Err(Error::Invalid(format!("preprocessing: resize to 1 to 65536 pixels, not {size}")));
    }
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    if short == 0 {
        return Err(Error::Invalid(format!("preprocessing: an empty {width}x{height} image")));
    }
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if new_long > 1 << 16 {
        return Err(Error::Invalid(format!(
            "preprocessing: a {width}x{height} image resized to {size} would be {new_long} pixels long"
        )));
    }
    Ok(if width <= height { (size, new_long) } else { (new_long, size) })
}

/// One output pixel's first source index and its fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` for the bilinear filter over the whole
/// input, then `normalize_coeffs_8bpc`.
fn coefficients(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates; below zero it is clamped anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize).max(xmin);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| {
                    let t = ((x as f64 - center + 0.5) * ss).abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let weights =
                w.iter().map(|&k| if k < 0.0 { (-0.5 + k * one) as i32 } else { (0.5 + k * one) as i32 }).collect();
            Taps { first: xmin, weights }
        })
        .collect()
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's `Image.resize(size, Image.BILINEAR)` of an interleaved 8-bit
/// image: the horizontal pass (when the width changes), then the vertical
/// one (when the height changes), each rounding to bytes.
pub fn resize_bilinear(
    pixels: &[u8],
    channels: usize,
    (width, height): (usize, usize),
    (new_width, new_height): (usize, usize),
) -> Result<Vec<u8>> {
    check_image(pixels, channels, (width, height))?;
    if new_width == 0 || new_height == 0 || new_width > 1 << 16 || new_height > 1 << 16 {
        return Err(Error::Invalid(format!("preprocessing: cannot resize to {new_width}x{new_height}")));
    }
    let round = 1i64 << (PRECISION_BITS - 1);
    let mut img = pixels.to_vec();
    let mut w = width;
    if new_width != width {
        let taps = coefficients(width, new_width);
        let mut out = vec![0u8; new_width * height * channels];
        for y in 0..height {
            let row = &img[y * w * channels..(y + 1) * w * channels];
            for (xx, t) in taps.iter().enumerate() {
                for c in 0..channels {
                    let mut ss = round;
                    for (k, &wt) in t.weights.iter().enumerate() {
                        ss += row[(t.first + k) * channels + c] as i64 * wt as i64;
                    }
                    out[(y * new_width + xx) * channels + c] = clip8(ss);
                }
            }
        }
        img = out;
        w = new_width;
    }
    if new_height != height {
        let taps = coefficients(height, new_height);
        let stride = w * channels;
        let mut out = vec![0u8; new_height * stride];
        for (yy, t) in taps.iter().enumerate() {
            for i in 0..stride {
                let mut ss = round;
                for (k, &wt) in t.weights.iter().enumerate() {
                    ss += img[(t.first + k) * stride + i] as i64 * wt as i64;
                }
                out[yy * stride + i] = clip8(ss);
            }
        }
        img = out;
    }
    Ok(img)
}

/// Python's `round` (half to even) of a non-negative half-integer or
/// integer given as twice its value.
fn round_half_even_of_half(twice: usize) -> usize {
    let (q, r) = (twice / 2, twice % 2);
    if r == 1 && q % 2 == 1 { q + 1 } else { q }
}

/// torchvision's `CenterCrop(size)` window `(left, top)` on a
/// `(width, height)` image at least `size` on each side.
pub fn centre_crop_box((width, height): (usize, usize), size: usize) -> (usize, usize) {
    (round_half_even_of_half(width.saturating_sub(size)), round_half_even_of_half(height.saturating_sub(size)))
}

/// torchvision's `CenterCrop(size)` of an interleaved image: a side shorter
/// than `size` is first padded with zeros (`(size − side) / 2` before, the
/// rest after), then the centre window is cut.
pub fn centre_crop(pixels: &[u8], channels: usize, (width, height): (usize, usize), size: usize) -> Result<Vec<u8>> {
    check_image(pixels, channels, (width, height))?;
    if size == 0 || size > 1 << 16 {
        return Err(Error::Invalid(format!("preprocessing: crop 1 to 65536 pixels, not {size}")));
    }
    // Padding (torchvision: left/top = (size − side) // 2).
    let (pw, ph) = (width.max(size), height.max(size));
    let (pl, pt) = ((pw - width) / 2, (ph - height) / 2);
    let (left, top) = centre_crop_box((pw, ph), size);
    let mut out = vec![0u8; size * size * channels];
    for y in 0..size {
        let sy = (top + y) as isize - pt as isize;
        if sy < 0 || sy >= height as isize {
            continue;
        }
        for x in 0..size {
            let sx = (left + x) as isize - pl as isize;
            if sx < 0 || sx >= width as isize {
                continue;
            }
            let from = (sy as usize * width + sx as usize) * channels;
            out[(y * size + x) * channels..][..channels].copy_from_slice(&pixels[from..from + channels]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_crops_follow_torchvision() {
        assert_eq!(resize_shorter_size((500, 375), 256).unwrap(), (341, 256));
        assert_eq!(resize_shorter_size((375, 500), 256).unwrap(), (256, 341));
        assert_eq!(resize_shorter_size((256, 256), 256).unwrap(), (256, 256));
        assert_eq!(resize_shorter_size((100, 37), 256).unwrap(), (691, 256));
        assert!(resize_shorter_size((1, 100_000), 256).is_err());
        assert!(resize_shorter_size((10, 10), 0).is_err());
        // round((341 − 224) / 2) = round(58.5) = 58 (half to even);
        // round(59.5) = 60.
        assert_eq!(centre_crop_box((341, 256), 224), (58, 16));
        assert_eq!(centre_crop_box((343, 256), 224), (60, 16));
        assert_eq!(centre_crop_box((224, 224), 224), (0, 0));
    }

    #[test]
    fn resizing_keeps_constants_and_averages_when_shrinking() {
        let flat = vec![77u8; 13 * 9 * 3];
        assert_eq!(resize_bilinear(&flat, 3, (13, 9), (5, 20)).unwrap(), vec![77u8; 5 * 20 * 3]);
        // Halving a 0/255 alternating row: the triangle widens to ±2 source
        // pixels around each output centre (1, 3, 5, 7), weights 0.75,
        // 0.75, 0.25 (and 0.25 before) normalised by their sum: the first
        // output 0.75·255 / 1.75 = 109.3, inner ones 0.5·255 = 127.5 → 128
        // (the fixed-point rounding), the last (0.25·255 + 0.75·255) / 1.75.
        let row: Vec<u8> = (0..8).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect();
        assert_eq!(resize_bilinear(&row, 1, (8, 1), (4, 1)).unwrap(), vec![109u8, 128, 128, 146]);
        // The same size is the same image.
        let img: Vec<u8> = (0..30).map(|i| i as u8 * 7).collect();
        assert_eq!(resize_bilinear(&img, 1, (6, 5), (6, 5)).unwrap(), img);
        assert!(resize_bilinear(&img, 1, (6, 4), (3, 3)).is_err());
        assert!(resize_bilinear(&img, 1, (6, 5), (0, 3)).is_err());
    }

    /// torchvision's `Resize(256)` + `CenterCrop(224)` on our test images
    /// (`scripts/fixtures/preprocess.py`): exact for PNGs, within three
    /// levels of 255 for JPEGs (the decoders differ, see the module's doc);
    /// `ToTensor` + `Normalize` within 1e-5.
    #[test]
    fn matches_torchvision() {
        use std::io::Read;
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/preprocess"));
        let mut blob = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(dir.join("expected.safetensors.gz")).unwrap())
            .read_to_end(&mut blob)
            .unwrap();
        let expected = candle_core::safetensors::load_buffer(&blob, &candle_core::Device::Cpu).unwrap();
        // The images of the script, in its order.
        let meta = [
            "rgb_300x200.png",
            "rgb_97x61.png",
            "grey_640x480.png",
            "rgb_257x1000.png",
            "rgb_500x375.jpg",
            "grey_333x500.jpg",
        ];
        let p = Preprocess::imagenet();
        for name in meta {
            // As `anytime classify` reads an image for an ImageNet model.
            let (img, shape) = crate::image::load_image_preprocessed(&dir.join(name), 3, &p).unwrap();
            assert_eq!(shape, (3, 224, 224));
            assert!(img.resized);
            let ours = img.pixels;
            let want = expected[name].flatten_all().unwrap().to_vec1::<u8>().unwrap();
            let worst = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            let off = ours.iter().zip(&want).filter(|(a, b)| a != b).count();
            let limit = if name.ends_with(".png") { 0 } else { 3 };
            eprintln!("{name}: {off} of {} values differ, by up to {worst}", want.len());
            assert!(worst <= limit, "{name}: {off} of {} values differ, by up to {worst}", want.len());
            if let Some(t) = expected.get(&format!("{name}.normalized")) {
                let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let x = p.normalize(&ours, 3).unwrap();
                let worst = x.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{name}: normalised values differ by {worst}");
            }
        }
    }

    #[test]
    fn crops_pad_small_images_with_zeros() {
        // A 2x1 grey image cropped to 4: padded left 1, top 1.
        let out = centre_crop(&[5, 6], 1, (2, 1), 4).unwrap();
        assert_eq!(out, vec![0, 0, 0, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let p = Preprocess { mean: vec![0.5], std: vec![0.0], ..Preprocess::cifar10() };
        assert!(p.normalize(&[1, 2], 1).is_err());
        assert!(Preprocess::imagenet().normalize(&[1, 2], 1).is_err());
    }
}
