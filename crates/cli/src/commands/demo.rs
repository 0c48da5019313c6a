//! `anytime demo`: the shipped MSDNet on the Fashion-MNIST sample built into
//! the program (or `--data-dir`), exit by exit, then with real early exit.

use super::{WeightsArgs, load_registry_model_on};
use anyhow::Result;
use anytime_data::fmnist::{CLASSES, Split, fashion_mnist, fashion_mnist_sample_test};
use anytime_data::loader::{Augment, BatchConfig, Loader};
use anytime_eval::evaluate_anytime;
use anytime_flops::Mode;
use anytime_models::classify_early_exit;
use anytime_models::registry::lookup;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Arguments of `anytime demo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry model to show.
    #[arg(long, default_value = "msdnet-fmnist")]
    model: String,
    #[command(flatten)]
    weights: WeightsArgs,
    /// Max-softmax confidence at which an image leaves early.
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = super::num::THRESHOLD)]
    threshold: f64,
    /// Run on the test split of this Fashion-MNIST directory instead of the
    /// 1,000 sample images built into the program.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature); batches
    /// are built on the CPU and moved there.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn softmax_max(row: &[f32]) -> f32 {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
    1.0 / z
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    if a.threshold == 0.0 {
        anyhow::bail!("--threshold must be in (0, 1], got 0");
    }
    let entry = lookup(&a.model)?;
    let device = super::parse_device(&a.device)?;
    let model = load_registry_model_on(entry, &a.weights, &device)?;
    let (ds, source) = match &a.data_dir {
        Some(dir) => (fashion_mnist(dir, Split::Test)?, format!("the Fashion-MNIST test split in {}", dir.display())),
        None => (fashion_mnist_sample_test()?, "the bundled Fashion-MNIST sample".to_string()),
    };
    let ds = Arc::new(ds);
    let (_, h, w) = ds.image_shape();
    let n = ds.len();
    let loader = Loader::new(
        ds,
        BatchConfig { batch_size: 64, shuffle: false, seed: 0, augment: Augment::default(), drop_last: false },
    )?
    .on_device(device);
    let batches = || loader.epoch(0, 0).map(|b| b.map_err(|e| candle_core::Error::Msg(e.to_string())));
    let mflops = model.exit_costs(h, w)?.mflops(Mode::Reference);
    outln!("{} on {source} ({n} test images, batch 64)", a.model);
    outln!("anytime prediction, every exit:");
    outln!("{:>6}  {:>9}  {:>8}  {:>9}", "exit", "accuracy", "MFLOPs", "ms/image");
    let ev = evaluate_anytime(model.as_ref(), batches())?;
    for (k, ((acc, mf), ms)) in ev.accuracy.fractions().iter().zip(&mflops).zip(ev.ms_per_image()).enumerate() {
        outln!("{k:>6}  {:>8.2}%  {mf:>8.2}  {ms:>9.3}", 100.0 * acc);
    }
    let last = model.num_exits() - 1;
    let (mut correct, mut spent, mut per_exit) = (0usize, 0f64, vec![0usize; model.num_exits()]);
    let start = Instant::now();
    let mut first = None;
    for b in batches() {
        let (xs, ys) = b?;
        let ys = ys.to_vec1::<u32>()?;
        let t = a.threshold as f32;
        let d = classify_early_exit(model.as_ref(), &xs, &mflops, |k, row| {
            let c = softmax_max(row);
            (k < last && c >= t, c)
        })?;
        for (di, y) in d.iter().zip(&ys) {
            correct += usize::from(di.prediction == *y);
            spent += di.mflops;
            per_exit[di.exit] += 1;
        }
        first.get_or_insert(d[0]);
    }
    let secs = start.elapsed().as_secs_f64();
    outln!(
        "budgeted, real early exit (leave when max softmax >= {}): accuracy {:.2}%, {:.2} MFLOPs/image ({:.0}% of the full model), {:.3} ms/image (full model: {:.3}), exits used {:?}",
        a.threshold,
        100.0 * correct as f64 / n as f64,
        spent / n as f64,
        100.0 * spent / n as f64 / mflops[last],
        1e3 * secs / n as f64,
        ev.ms_per_image()[last],
        per_exit
    );
    if let Some(d) = first {
        outln!(
            "first image: {} (confidence {:.3}) from exit {} after {:.2} MFLOPs",
            CLASSES.get(d.prediction as usize).unwrap_or(&"?"),
            d.confidence,
            d.exit,
            d.mflops
        );
    }
    Ok(())
}
