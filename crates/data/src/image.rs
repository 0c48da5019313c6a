//! Loading single images (PNG, JPEG) for classification.

use crate::error::{Error, Result};
use image::imageops::FilterType;
use std::path::Path;

/// An image converted to the model's input layout.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedImage {
    /// Pixels `[C, H, W]`, 0..=255.
    pub pixels: Vec<u8>,
    /// The original `(width, height)`.
    pub original: (u32, u32),
    /// Whether it had to be resized to the requested size.
    pub resized: bool,
}

/// Reads a PNG or JPEG, converts it to `channels` (1: grey, 3: RGB) and
/// resizes it (bilinear, whole image) to `height`x`width` when its size differs.
pub fn load_image(path: &Path, channels: usize, (height, width): (usize, usize)) -> Result<LoadedImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    decode_image(&bytes, path, channels, (height, width))
}

/// [`load_image`] on the bytes of a file (`path` names it in errors).
pub fn decode_image(
    bytes: &[u8],
    path: &Path,
    channels: usize,
    (height, width): (usize, usize),
) -> Result<LoadedImage> {
    if channels != 1 && channels != 3 {
        return Err(Error::Invalid(format!("images can be loaded with 1 or 3 channels, not {channels}")));
    }
    if height == 0 || width == 0 {
        return Err(Error::Invalid(format!("cannot resize an image to {height}x{width}")));
    }
    let img = image::load_from_memory(bytes)
        .map_err(|e| Error::Format { path: path.to_path_buf(), msg: format!("unreadable image: {e}") })?;
    let original = (img.width(), img.height());
    let resized = original != (width as u32, height as u32);
    let img = if resized { img.resize_exact(width as u32, height as u32, FilterType::Triangle) } else { img };
    let pixels = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        let rgb = img.to_rgb8();
        let (w, h) = (width, height);
        let mut chw = vec![0u8; 3 * h * w];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = p[c];
            }
        }
        chw
    };
    Ok(LoadedImage { pixels, original, resized })
}

/// Reads a PNG or JPEG as `channels` (1: grey, 3: RGB, as PIL's `convert`)
/// and applies `p`'s resize and crop ([`crate::preprocess`]): the planar
/// bytes the references' evaluation transform gives before `ToTensor`.
/// `LoadedImage::resized` says whether the size changed.
pub fn load_image_preprocessed(
    path: &Path,
    channels: usize,
    p: &crate::preprocess::Preprocess,
) -> Result<(LoadedImage, (usize, usize, usize))> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    if channels != 1 && channels != 3 {
        return Err(Error::Invalid(format!("images can be loaded with 1 or 3 channels, not {channels}")));
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| Error::Format { path: path.to_path_buf(), msg: format!("unreadable image: {e}") })?;
    let original = (img.width(), img.height());
    let raw = if channels == 1 { img.to_luma8().into_raw() } else { img.to_rgb8().into_raw() };
    let (pixels, shape) = p
        .apply_u8(&raw, channels, (original.0 as usize, original.1 as usize))
        .map_err(|e| Error::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    let resized = (shape.2 as u32, shape.1 as u32) != original;
    Ok((LoadedImage { pixels, original, resized }, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_resize_and_errors() {
        let dir = std::env::temp_dir().join(format!("anytime-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.png");
        let img = image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x + y) as u8]));
        img.save(&p).unwrap();
        let l = load_image(&p, 1, (28, 28)).unwrap();
        assert!(!l.resized);
        assert_eq!(l.pixels[28 + 3], 4);
        let l = load_image(&p, 3, (14, 10)).unwrap();
        assert!(l.resized);
        assert_eq!(l.pixels.len(), 3 * 14 * 10);
        assert_eq!(l.original, (28, 28));
        let bad = dir.join("bad.png");
        std::fs::write(&bad, b"\x89PNG not really").unwrap();
        assert!(load_image(&bad, 1, (28, 28)).unwrap_err().to_string().contains("unreadable image"));
        assert!(load_image(&dir.join("none.png"), 1, (28, 28)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Mutated and truncated PNG and JPEG files give an image or an error,
    /// never a panic.
    #[test]
    fn fuzzed_images_never_panic() {
        let img = image::RgbImage::from_fn(20, 12, |x, y| image::Rgb([x as u8 * 9, y as u8 * 17, (x ^ y) as u8]));
        let mut valid = Vec::new();
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let mut buf = std::io::Cursor::new(Vec::new());
            img.write_to(&mut buf, format).unwrap();
            valid.push(buf.into_inner());
        }
        let p = Path::new("fuzz.img");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        for file in &valid {
            assert!(decode_image(file, p, 3, (28, 28)).is_ok());
            for _ in 0..300 {
                let mut bytes = file.clone();
                for _ in 0..1 + next() % 8 {
                    let i = next() % bytes.len();
                    bytes[i] = next() as u8;
                }
                if next() % 3 == 0 {
                    bytes.truncate(next() % bytes.len());
                }
                if let Err(e) = decode_image(&bytes, p, 1, (28, 28)) {
                    assert!(e.to_string().contains("fuzz.img"), "{e}");
                }
            }
        }
        assert!(decode_image(&valid[0], p, 1, (0, 28)).is_err());
    }
}
