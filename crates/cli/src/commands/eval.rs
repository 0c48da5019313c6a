//! `anytime eval`: per-exit accuracy, MFLOPs and latency on Fashion-MNIST.

use super::{WeightsArgs, load_registry_model};
use anyhow::Result;
use anytime_data::fmnist::{DEFAULT_FASHION_MNIST_DIR, Split, fashion_mnist};
use anytime_data::loader::{Augment, BatchConfig, Loader};
use anytime_flops::Mode;
use anytime_models::registry::lookup;
use anytime_train::metrics::evaluate_anytime;
use anytime_train::recipes::recipe;
use std::path::PathBuf;
use std::sync::Arc;

/// Which images to evaluate on.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    /// The 10,000 test images.
    Test,
    /// The held-out part of the training set (used for calibration).
    Val,
}

/// Arguments of `anytime eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry model (see `anytime models`).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    pub data_dir: PathBuf,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: EvalSplit,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Loads the requested split.
pub fn load_split(model: &str, data_dir: &std::path::Path, split: EvalSplit) -> Result<anytime_data::dataset::Dataset> {
    Ok(match split {
        EvalSplit::Test => fashion_mnist(data_dir, Split::Test)?,
        EvalSplit::Val => {
            let r = recipe(model)?;
            let (_, val) = super::train::fmnist_splits(data_dir, r.holdout, r.split_seed)?;
            Arc::try_unwrap(val).unwrap_or_else(|a| (*a).clone())
        }
    })
}

/// Runs the command and returns the report.
pub fn report(a: &Args) -> Result<serde_json::Value> {
    let entry = lookup(&a.model)?;
    let model = load_registry_model(entry, &a.weights)?;
    let ds = load_split(&a.model, &a.data_dir, a.split)?;
    let images = ds.len();
    let (_, h, w) = ds.image_shape();
    let loader = Loader::new(
        Arc::new(ds),
        BatchConfig {
            batch_size: a.batch_size,
            shuffle: false,
            seed: 0,
            augment: Augment::default(),
            drop_last: false,
        },
    )?;
    let ev = evaluate_anytime(
        model.as_ref(),
        loader.epoch(0, 0).map(|b| b.map_err(|e| candle_core::Error::Msg(e.to_string()))),
    )?;
    let mflops = model.exit_costs(h, w)?.mflops(Mode::Reference);
    let exits: Vec<serde_json::Value> = ev
        .accuracy
        .fractions()
        .iter()
        .zip(&mflops)
        .zip(ev.ms_per_image())
        .enumerate()
        .map(|(i, ((acc, mf), ms))| serde_json::json!({"exit": i, "accuracy": acc, "mflops": mf, "ms_per_image": ms}))
        .collect();
    Ok(serde_json::json!({
        "model": a.model,
        "split": match a.split { EvalSplit::Test => "test", EvalSplit::Val => "val" },
        "images": images,
        "batch_size": a.batch_size,
        "exits": exits,
    }))
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let r = report(&a)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("{} on {} images ({} split)", a.model, r["images"], r["split"].as_str().unwrap_or(""));
    println!("{:>4}  {:>9}  {:>8}  {:>11}", "exit", "accuracy", "MFLOPs", "ms/image");
    for e in r["exits"].as_array().into_iter().flatten() {
        println!(
            "{:>4}  {:>8.2}%  {:>8.2}  {:>11.3}",
            e["exit"],
            100.0 * e["accuracy"].as_f64().unwrap_or(0.0),
            e["mflops"].as_f64().unwrap_or(0.0),
            e["ms_per_image"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
