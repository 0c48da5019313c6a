//! `anytime classify`: classifies images with real early exit under a FLOP
//! budget, or with anytime prediction under a wall-clock deadline.

use super::calibrate::budget_mflops;
use super::eval::{EvalSplit, load_split};
use super::{WeightsArgs, load_registry_model_on, resolve_weights};
use anyhow::{Context, Result, bail};
use anytime_calibrate::{Calibration, Confidence, ExitScores, Thresholds, solve_budget};
use anytime_data::fmnist::{CLASSES, DEFAULT_FASHION_MNIST_DIR};
use anytime_data::idx;
use anytime_data::image::{load_image, load_image_preprocessed};
use anytime_eval::collect_logits_on;
use anytime_models::registry::lookup;
use anytime_models::{classify_anytime, classify_budgeted};
use candle_core::Tensor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `anytime classify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry model.
    #[arg(long)]
    model: String,
    #[command(flatten)]
    weights: WeightsArgs,
    /// Images: PNG / JPEG files, or IDX image files (every image in them).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Average MFLOPs per image to spend (thresholds calibrated on the held-out split).
    #[arg(long, conflicts_with_all = ["deadline", "calibration"], allow_negative_numbers = true, value_parser = super::num::BUDGET)]
    budget: Option<f64>,
    /// Budget as a fraction of the full model's cost.
    #[arg(long, conflicts_with_all = ["budget", "deadline", "calibration"], allow_negative_numbers = true, value_parser = super::num::FRACTION)]
    budget_fraction: Option<f64>,
    /// Thresholds from `anytime calibrate`.
    #[arg(long, conflicts_with = "deadline")]
    calibration: Option<PathBuf>,
    /// Wall-clock deadline per image in milliseconds (anytime prediction).
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::DEADLINE_MS)]
    deadline: Option<f64>,
    /// Directory with the Fashion-MNIST IDX files (for `--budget`).
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// Class names, one per line, in the model's class order (default:
    /// Fashion-MNIST's names for Fashion-MNIST models, class numbers
    /// otherwise).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature); batches
    /// are built on the CPU and moved there.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The class names of `--labels` (one per non-empty line), checked against
/// the model's class count.
fn read_labels(path: &std::path::Path, classes: usize) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the labels file {}", path.display()))?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != classes {
        bail!("{}: {} class names for a model of {classes} classes", path.display(), names.len());
    }
    Ok(names)
}

struct Input {
    name: String,
    pixels: Vec<u8>,
    note: String,
}

fn read_inputs(paths: &[PathBuf], (c, h, w): (usize, usize, usize), dataset: &str) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        let raw = idx::maybe_gunzip(bytes, p)?;
        if raw.len() >= 4 && raw[..3] == [0, 0, 8] {
            let a = idx::parse(&raw, p)?;
            let &[n, ih, iw] = a.dims.as_slice() else {
                bail!("{}: an IDX image file must be [N, H, W], got {:?}", p.display(), a.dims);
            };
            if c != 1 || (ih, iw) != (h, w) {
                bail!("{}: IDX images are {ih}x{iw} grey, the model takes {c}x{h}x{w}", p.display());
            }
            for i in 0..n {
                out.push(Input {
                    name: format!("{}#{i}", p.display()),
                    pixels: a.data[i * h * w..(i + 1) * h * w].to_vec(),
                    note: String::new(),
                });
            }
        } else if dataset == "imagenet" {
            // The references' evaluation transform: shorter side to 256,
            // centre 224 crop.
            let pre = anytime_data::preprocess::Preprocess::imagenet();
            let (img, shape) = load_image_preprocessed(p, c, &pre)?;
            if shape != (c, h, w) {
                bail!("{}: preprocessing gave {shape:?}, the model takes {c}x{h}x{w}", p.display());
            }
            let note = format!(" (resized and centre-cropped from {}x{})", img.original.0, img.original.1);
            out.push(Input { name: p.display().to_string(), pixels: img.pixels, note });
        } else {
            let img = load_image(p, c, (h, w))?;
            let note = if img.resized {
                format!(" (resized from {}x{} to {w}x{h})", img.original.0, img.original.1)
            } else {
                String::new()
            };
            out.push(Input { name: p.display().to_string(), pixels: img.pixels, note });
        }
    }
    Ok(out)
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let entry = lookup(&a.model)?;
    let device = super::parse_device(&a.device)?;
    let model = load_registry_model_on(entry, &a.weights, &device)?;
    let (c, h, w) = entry.data.input;
    let costs = model.exit_costs(h, w)?;
    let costs = costs.mflops(costs.headline);
    let budget = budget_mflops(&a.model, a.budget, a.budget_fraction, &costs)?;
    // Images come at the dataset's size and are padded to the model's.
    let pad = entry.data.pad;
    let labels = match &a.labels {
        Some(path) => read_labels(path, model.num_classes())?,
        None if entry.data.dataset == "fashion-mnist" => CLASSES.iter().map(|s| s.to_string()).collect(),
        None => (0..model.num_classes()).map(|k| k.to_string()).collect(),
    };
    let mut inputs = read_inputs(&a.images, (c, h - 2 * pad, w - 2 * pad), entry.data.dataset)?;
    for inp in &mut inputs {
        inp.pixels = anytime_data::dataset::pad_image(&inp.pixels, (c, h - 2 * pad, w - 2 * pad), pad);
    }
    let norm = |px: &[u8]| -> Vec<f32> {
        px.iter()
            .enumerate()
            .map(|(i, &v)| (v as f32 / 255.0 - entry.data.mean[i / (h * w)]) / entry.data.std[i / (h * w)])
            .collect()
    };
    let name = |k: u32| labels.get(k as usize).map_or("?", String::as_str);
    if let Some(ms) = a.deadline {
        if !(ms > 0.0 && ms.is_finite()) {
            bail!("--deadline must be a positive number of milliseconds, got {ms}");
        }
        for inp in &inputs {
            let xs = Tensor::from_vec(norm(&inp.pixels), (1, c, h, w), &device)?;
            let r = classify_anytime(model.as_ref(), &xs, Duration::from_secs_f64(ms / 1e3))?;
            let row = r.logits.to_vec2::<f32>()?.remove(0);
            let pred = anytime_models::exit::argmax(&row);
            outln!(
                "{}: {} (confidence {:.3}), exit {}, {:.2} MFLOPs, {:.3} ms{}{}",
                inp.name,
                name(pred),
                Confidence::MaxSoftmax.score(&row),
                r.exit,
                costs[r.exit],
                r.elapsed.as_secs_f64() * 1e3,
                if r.late { " (deadline missed: even the first exit took longer)" } else { "" },
                inp.note
            );
        }
        return Ok(());
    }
    let thresholds = if let Some(path) = &a.calibration {
        let sha = anytime_io::sha256_file(resolve_weights(entry, &a.weights)?)?;
        Calibration::load(path, &sha)?.thresholds
    } else if let Some(b) = budget {
        let val = load_split(&a.model, &a.data_dir, EvalSplit::Val)?;
        let (logits, labels) = collect_logits_on(model.as_ref(), Arc::new(val), &device)?;
        let scores = ExitScores::from_logits(&logits, &labels, Confidence::MaxSoftmax)?;
        solve_budget(&scores, &costs, b)?.0
    } else {
        // No budget: every image goes to the last exit.
        Thresholds::new(Confidence::MaxSoftmax, vec![f32::MAX; costs.len()])
    };
    for inp in &inputs {
        let xs = Tensor::from_vec(norm(&inp.pixels), (1, c, h, w), &device)?;
        let start = Instant::now();
        let d = classify_budgeted(model.as_ref(), &xs, &thresholds, &costs)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let d = d.first().context("no decision")?;
        outln!(
            "{}: {} (confidence {:.3}), exit {}{}, {:.2} MFLOPs, {:.3} ms{}",
            inp.name,
            name(d.prediction),
            d.confidence,
            d.exit,
            if d.fallback { " (no exit confident: the mean of every exit's logits)" } else { "" },
            d.mflops,
            ms,
            inp.note
        );
    }
    Ok(())
}
