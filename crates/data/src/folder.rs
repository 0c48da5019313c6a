//! Image folders: `root/<class>/*.{png,jpg,jpeg}`, classes in sorted order,
//! every image converted and resized to a fixed size at load time.

use crate::dataset::{Dataset, Normalization};
use crate::error::{Error, Result};
use crate::image::load_image;
use std::path::Path;

/// Loads every image under `root/<class>/`, as `channels` x `size` x `size`.
pub fn image_folder(root: &Path, channels: usize, size: usize, norm: Normalization) -> Result<Dataset> {
    let read = |p: &Path| std::fs::read_dir(p).map_err(|e| Error::Io { path: p.to_path_buf(), source: e });
    let mut classes: Vec<String> = read(root)?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(Error::Missing { msg: format!("{}: no class directories", root.display()) });
    }
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (c, name) in classes.iter().enumerate() {
        let mut files: Vec<_> = read(&root.join(name))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            })
            .collect();
        files.sort();
        for f in files {
            images.extend(load_image(&f, channels, (size, size))?.pixels);
            labels.push(c as u32);
        }
    }
    Dataset::new(format!("folder:{}", root.display()), images, labels, (channels, size, size), classes, norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_sorted_classes_and_reports_bad_images() {
        let root = std::env::temp_dir().join(format!("anytime-folder-{}", std::process::id()));
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
}
