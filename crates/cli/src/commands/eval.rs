//! `anytime eval`: per-exit accuracy, MFLOPs and latency on Fashion-MNIST.

use super::{WeightsArgs, load_registry_model};
use anyhow::{Context, Result};
use anytime_calibrate::{Calibration, Confidence, ExitScores, Thresholds, sweep_q};
use anytime_data::fmnist::{DEFAULT_FASHION_MNIST_DIR, Split, fashion_mnist};
use anytime_data::loader::{Augment, BatchConfig, Loader};
use anytime_flops::Mode;
use anytime_models::classify_budgeted;
use anytime_models::registry::lookup;
use anytime_train::metrics::evaluate_anytime;
use anytime_train::plot;
use anytime_train::recipes::recipe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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
    /// Evaluate only the first N images of the split (e.g. for quick
    /// batch-1 latency runs); default: all.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also measure budgeted classification with real early exit over a sweep
    /// of q (thresholds calibrated on the held-out split), and write SVG plots.
    #[arg(long)]
    pub budgeted: bool,
    /// Also measure real early exit with the thresholds of this calibration
    /// file (made by `anytime calibrate` for these weights).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Where `--budgeted` writes its plots (default `results/<model>`).
    #[arg(long)]
    pub plots: Option<PathBuf>,
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
    let mut ds = load_split(&a.model, &a.data_dir, a.split)?;
    if let Some(n) = a.limit {
        anyhow::ensure!(n > 0, "--limit must be at least 1");
        if n < ds.len() {
            ds = ds.take(n)?;
        }
    }
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
    // One untimed batch first, so that no timing below includes a cold start
    // (allocator, thread pool, caches).
    if let Some(b) = loader.epoch(0, 0).next() {
        model.forward_exits(&b?.0, &anytime_blocks::Mode::eval())?;
    }
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
    let mut out = serde_json::json!({
        "model": a.model,
        "split": match a.split { EvalSplit::Test => "test", EvalSplit::Val => "val" },
        "images": images,
        "batch_size": a.batch_size,
        "exits": exits,
    });
    let full_ms = ev.ms_per_image().last().copied().unwrap_or(0.0);
    let full_mflops = mflops.last().copied().unwrap_or(0.0);
    if let Some(path) = &a.calibration {
        let sha = anytime_io::sha256_file(super::resolve_weights(entry, &a.weights)?)?;
        let cal = Calibration::load(path, &sha)?;
        anyhow::ensure!(
            cal.thresholds.per_exit.len() == mflops.len(),
            "{} has {} thresholds, {} has {} exits",
            path.display(),
            cal.thresholds.per_exit.len(),
            a.model,
            mflops.len()
        );
        let mut row = early_exit(model.as_ref(), &loader, &cal.thresholds, &mflops)?;
        row["saving_ratio"] = saving_ratio(&row, full_mflops, full_ms);
        row["file"] = path.display().to_string().into();
        out["calibrated"] = row;
    }
    if a.budgeted {
        let mut budgeted = budgeted_sweep(a, model.as_ref(), &loader, &mflops)?;
        for b in &mut budgeted {
            b["saving_ratio"] = saving_ratio(b, full_mflops, full_ms);
        }
        let dir = a.plots.clone().unwrap_or_else(|| PathBuf::from("results").join(&a.model));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let anytime_pts = |x: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
            ev.accuracy.fractions().iter().enumerate().map(|(k, acc)| (x(k), 100.0 * acc)).collect()
        };
        let ms = ev.ms_per_image();
        let b_pts = |key: &str| -> Vec<(f64, f64)> {
            budgeted
                .iter()
                .map(|b| (b[key].as_f64().unwrap_or(0.0), 100.0 * b["accuracy"].as_f64().unwrap_or(0.0)))
                .collect()
        };
        plot::curves(
            &dir.join("accuracy_vs_mflops.svg"),
            &format!("{}: accuracy vs MFLOPs ({} split)", a.model, out["split"].as_str().unwrap_or("")),
            "MFLOPs per image",
            "top-1 accuracy (%)",
            &[
                ("anytime (per exit)".into(), anytime_pts(&|k| mflops[k])),
                ("budgeted (real early exit)".into(), b_pts("mflops")),
            ],
        )?;
        plot::curves(
            &dir.join("accuracy_vs_ms.svg"),
            &format!("{}: accuracy vs wall-clock (batch {})", a.model, a.batch_size),
            "ms per image",
            "top-1 accuracy (%)",
            &[
                ("anytime (per exit)".into(), anytime_pts(&|k| ms[k])),
                ("budgeted (real early exit)".into(), b_pts("ms_per_image")),
            ],
        )?;
        out["budgeted"] = serde_json::Value::Array(budgeted);
        out["plots"] = dir.display().to_string().into();
    }
    if a.calibration.is_some() || a.budgeted {
        out["full_ms_per_image"] = full_ms.into();
    }
    Ok(out)
}

/// Budgeted classification over a q sweep: thresholds from the held-out split,
/// measured on the evaluated split with real early exit.
fn budgeted_sweep(
    a: &Args,
    model: &dyn anytime_models::MultiExit,
    loader: &Loader,
    mflops: &[f64],
) -> Result<Vec<serde_json::Value>> {
    let val = load_split(&a.model, &a.data_dir, EvalSplit::Val)?;
    let (logits, labels) = super::calibrate::collect_logits(model, Arc::new(val))?;
    let scores = ExitScores::from_logits(&logits, &labels, Confidence::MaxSoftmax)?;
    let qs: Vec<f64> = (1..=10).map(|i| 0.2 * i as f64 - 0.1).collect();
    let mut rows = Vec::new();
    for (q, th, val_out) in sweep_q(&scores, mflops, &qs)? {
        let mut row = early_exit(model, loader, &th, mflops)?;
        row["q"] = q.into();
        row["holdout_accuracy"] = val_out.accuracy.into();
        row["holdout_mflops"] = val_out.avg_cost.into();
        rows.push(row);
    }
    Ok(rows)
}

/// Real early exit with `th` over every batch of `loader`: accuracy, average
/// MFLOPs, wall-clock ms per image and the images per exit.
fn early_exit(
    model: &dyn anytime_models::MultiExit,
    loader: &Loader,
    th: &Thresholds,
    mflops: &[f64],
) -> Result<serde_json::Value> {
    let (mut correct, mut spent, mut n) = (0usize, 0f64, 0usize);
    let mut counts = vec![0usize; mflops.len()];
    let start = Instant::now();
    for b in loader.epoch(0, 0) {
        let (xs, ys) = b?;
        let ys = ys.to_vec1::<u32>()?;
        for (d, y) in classify_budgeted(model, &xs, th, mflops)?.iter().zip(&ys) {
            correct += usize::from(d.prediction == *y);
            spent += d.mflops;
            counts[d.exit] += 1;
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "accuracy": correct as f64 / n.max(1) as f64,
        "mflops": spent / n.max(1) as f64,
        "ms_per_image": 1e3 * secs / n.max(1) as f64,
        "exit_counts": counts,
    }))
}

/// Wall-clock saving over FLOP saving of an early-exit `row`, both against
/// running every exit; `None` when nothing is saved.
fn saving_ratio(row: &serde_json::Value, full_mflops: f64, full_ms: f64) -> serde_json::Value {
    let flop_saving = 1.0 - row["mflops"].as_f64().unwrap_or(0.0) / full_mflops;
    let time_saving = 1.0 - row["ms_per_image"].as_f64().unwrap_or(0.0) / full_ms;
    if flop_saving > 1e-9 && full_ms > 0.0 { (time_saving / flop_saving).into() } else { serde_json::Value::Null }
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let r = report(&a)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "{} on {} images ({} split, batch {})",
        a.model,
        r["images"],
        r["split"].as_str().unwrap_or(""),
        a.batch_size
    );
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
    if let Some(c) = r.get("calibrated") {
        println!(
            "real early exit with {}: {:.2}% at {:.2} MFLOPs/image, {:.3} ms/image (full model {:.3}), exits used {}",
            c["file"].as_str().unwrap_or(""),
            100.0 * c["accuracy"].as_f64().unwrap_or(0.0),
            c["mflops"].as_f64().unwrap_or(0.0),
            c["ms_per_image"].as_f64().unwrap_or(0.0),
            r["full_ms_per_image"].as_f64().unwrap_or(0.0),
            c["exit_counts"]
        );
    }
    if let Some(rows) = r["budgeted"].as_array() {
        println!(
            "budgeted classification, real early exit (full model: {:.3} ms/image):",
            r["full_ms_per_image"].as_f64().unwrap_or(0.0)
        );
        println!("{:>5}  {:>9}  {:>8}  {:>9}  {:>22}", "q", "accuracy", "MFLOPs", "ms/image", "time / FLOP saving");
        for b in rows {
            println!(
                "{:>5.2}  {:>8.2}%  {:>8.2}  {:>9.3}  {:>22}",
                b["q"].as_f64().unwrap_or(0.0),
                100.0 * b["accuracy"].as_f64().unwrap_or(0.0),
                b["mflops"].as_f64().unwrap_or(0.0),
                b["ms_per_image"].as_f64().unwrap_or(0.0),
                b["saving_ratio"].as_f64().map_or("—".into(), |r| format!("{r:.2}"))
            );
        }
        println!("plots in {}", r["plots"].as_str().unwrap_or(""));
    }
    Ok(())
}
