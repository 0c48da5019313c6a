//! Measures the batch iterator on the full Fashion-MNIST training set: one
//! epoch at batch 64 with the training augmentation (pad-2 crop, flip), and
//! the time to read and decode the 60k + 10k IDX files.
//!
//! `cargo run --release -p anytime-data --example loader_throughput [DIR]`

use anytime_data::fmnist::{DEFAULT_FASHION_MNIST_DIR, Split, fashion_mnist};
use anytime_data::loader::{Augment, BatchConfig, Loader};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_FASHION_MNIST_DIR));
    let t = Instant::now();
    let train = fashion_mnist(&dir, Split::Train)?;
    let test = fashion_mnist(&dir, Split::Test)?;
    let read = t.elapsed().as_secs_f64();
    println!("read {} train + {} test images in {read:.2} s", train.len(), test.len());
    let augment = Augment { pad_crop: Some(2), hflip: true, random_resized_crop: None };
    let loader =
        Loader::new(Arc::new(train), BatchConfig { batch_size: 64, shuffle: true, seed: 1, augment, drop_last: true })?;
    let t = Instant::now();
    let mut images = 0;
    for batch in loader.epoch(0, 0) {
        images += batch?.1.dims1()?;
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "one augmented epoch at batch 64: {images} images in {s:.2} s = {:.0} images/s ({} threads)",
        images as f64 / s,
        rayon::current_num_threads()
    );
    Ok(())
}
