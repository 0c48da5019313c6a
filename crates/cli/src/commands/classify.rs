//! `anytime classify`: classifies images with real early exit under a FLOP
//! budget, or with anytime prediction under a wall-clock deadline; a
//! registry model or any checkpoint (`--arch --config --weights`); image
//! files, folders of them (streamed) or IDX files; text lines, or JSON Lines
//! in shards for a job array.

use super::calibrate::budget_mflops;
use super::eval::{DataSource, EvalSplit};
use super::input::{ModelSel, PreArgs, Selected, read_labels, split_images};
use anyhow::{Context, Result, bail};
use anytime_calibrate::{Calibration, Confidence, ExitScores, Thresholds, solve_budget};
use anytime_data::fmnist::{CLASSES, DEFAULT_FASHION_MNIST_DIR};
use anytime_data::folder::is_image;
use anytime_data::idx;
use anytime_eval::collect_logits_from;
use anytime_eval::shards::{Shard, ShardHeader, parse_shard, shard_range};
use anytime_models::{classify_anytime, classify_budgeted};
use candle_core::Tensor;
use rayon::prelude::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `anytime classify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    sel: ModelSel,
    #[command(flatten)]
    pre: PreArgs,
    /// Images: PNG / JPEG files, folders of them (searched recursively, in
    /// sorted order), or IDX image files (every image in them).
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
    /// Directory with the Fashion-MNIST IDX files (the held-out split of
    /// `--budget` for Fashion-MNIST models).
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// The held-out split of `--budget` from another dataset, `KIND:DIR`
    /// as `anytime eval --data` (a checkpoint without a registry entry needs
    /// it, or `--calibration`).
    #[arg(long, conflicts_with = "data_dir")]
    data: Option<DataSource>,
    /// Class names: a file with one per line, or an image folder (its class
    /// folder names), in the model's class order (default: the folder names
    /// of `--data imagefolder:DIR`, Fashion-MNIST's names for Fashion-MNIST
    /// models, class numbers otherwise).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Images per forward pass: 1 (the default) times each image alone;
    /// larger batches are faster per image.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = super::num::BATCH)]
    batch_size: usize,
    /// Write JSON Lines to FILE instead of text: a header line (the run,
    /// its thresholds, a summary), then one line per image (`index`,
    /// `image`, `prediction`, `label`, `confidence`, `exit`, `mflops`, `ms`;
    /// `error` for an unreadable image).
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,
    /// Classify only part K of N of the images (contiguous in sorted order,
    /// 1 ≤ K ≤ N), for a job array; `cargo xtask merge` combines the N files
    /// into the file of one run.
    #[arg(long, value_name = "K/N", requires = "jsonl")]
    shard: Option<String>,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature); batches
    /// are built on the CPU and moved there.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One image to classify.
enum Item {
    /// A PNG or JPEG file.
    File(PathBuf),
    /// Image `i` of an IDX file, its pixels read.
    Pixels(String, Vec<u8>),
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::File(p) => p.display().to_string(),
            Item::Pixels(n, _) => n.clone(),
        }
    }
}

/// Every PNG/JPEG under `dir`, recursively, sorted by path.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The images the arguments name, in order: folders expanded, IDX files
/// read (their images must be the model's size, grey).
fn items(paths: &[PathBuf], (c, h, w): (usize, usize, usize)) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            if files.is_empty() {
                bail!("{}: no PNG or JPEG files in this folder", p.display());
            }
            out.extend(files.into_iter().map(Item::File));
            continue;
        }
        if !p.exists() {
            bail!("cannot read {}: no such file or folder", p.display());
        }
        if !is_image(p) {
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
                    out.push(Item::Pixels(format!("{}#{i}", p.display()), a.data[i * h * w..(i + 1) * h * w].to_vec()));
                }
                continue;
            }
        }
        out.push(Item::File(p.clone()));
    }
    Ok(out)
}

/// The normalised input of one item, and a note on its size.
fn prepare(item: &Item, sel: &Selected) -> Result<(Vec<f32>, String)> {
    let input = &sel.input;
    let (c, h, w) = input.shape;
    let pad = input.pad;
    match item {
        Item::Pixels(_, px) => {
            let px = anytime_data::dataset::pad_image(px, (c, h - 2 * pad, w - 2 * pad), pad);
            Ok((input.pre.normalize(&px, c)?, String::new()))
        }
        Item::File(p) => {
            let (img, (ic, ih, iw)) = anytime_data::image::load_image_preprocessed(p, c, &input.pre)?;
            let px = anytime_data::dataset::pad_image(&img.pixels, (ic, ih, iw), pad);
            let note = if img.resized {
                let how = if input.pre.resize_shorter.is_some() || input.pre.centre_crop.is_some() {
                    "resized and centre-cropped"
                } else {
                    "resized"
                };
                format!(" ({how} from {}x{})", img.original.0, img.original.1)
            } else {
                String::new()
            };
            Ok((input.pre.normalize(&px, c)?, note))
        }
    }
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    if let Some(out) = &a.jsonl {
        anytime_io::check_replaceable(out).with_context(|| format!("cannot write --jsonl {}", out.display()))?;
    }
    let device = super::parse_device(&a.device)?;
    let sel = a.sel.load(&a.pre, &device)?;
    if let Some(out) = &a.jsonl {
        let mut inputs: Vec<&Path> = a.images.iter().map(PathBuf::as_path).collect();
        inputs.push(sel.weights.as_path());
        super::ensure_not_input("--jsonl", out, &inputs)?;
    }
    let (c, h, w) = sel.input.shape;
    let costs = sel.model.exit_costs(h, w)?;
    let costs = costs.mflops(costs.headline);
    let budget = budget_mflops(&sel.name, a.budget, a.budget_fraction, &costs)?;
    let labels = match (&a.labels, &a.data) {
        (Some(path), _) => read_labels(path, sel.model.num_classes())?,
        (None, Some(DataSource::ImageFolder(dir))) => read_labels(dir, sel.model.num_classes())?,
        (None, _) if sel.input.dataset == "fashion-mnist" && sel.model.num_classes() == CLASSES.len() => {
            CLASSES.iter().map(|s| s.to_string()).collect()
        }
        (None, _) => (0..sel.model.num_classes()).map(|k| k.to_string()).collect(),
    };
    let pad = sel.input.pad;
    let all = items(&a.images, (c, h - 2 * pad, w - 2 * pad))?;
    let total = all.len();
    let shard = a.shard.as_deref().map(parse_shard).transpose()?.unwrap_or((1, 1));
    let range = shard_range(total, shard.0, shard.1)?;
    let name = |k: u32| labels.get(k as usize).map_or("?", String::as_str);
    let thresholds = if a.deadline.is_some() {
        None
    } else if let Some(path) = &a.calibration {
        let sha = anytime_io::sha256_file(&sel.weights)?;
        Some(Calibration::load(path, &sha)?.thresholds)
    } else if let Some(b) = budget {
        let val = split_images(&sel, a.data.as_ref(), &a.data_dir, EvalSplit::Val)
            .context("--budget needs the held-out split")?
            .source(&sel, 256, &device)?;
        let (logits, labels) = collect_logits_from(sel.model.as_ref(), val.as_ref())?;
        let scores = ExitScores::from_logits(&logits, &labels, Confidence::MaxSoftmax)?;
        Some(solve_budget(&scores, &costs, b)?.0)
    } else {
        // No budget: every image goes to the last exit.
        Some(Thresholds::new(Confidence::MaxSoftmax, vec![f32::MAX; costs.len()]))
    };
    let mut records: Vec<Value> = Vec::with_capacity(range.len());
    let mut failures: Vec<(String, String)> = Vec::new();
    let batch = if a.deadline.is_some() { 1 } else { a.batch_size };
    let (mut any_read, mut unread) = (false, Vec::new());
    let mut start = range.start;
    while start < range.end {
        let end = (start + batch).min(range.end);
        let prepared: Vec<Result<(Vec<f32>, String)>> =
            all[start..end].par_iter().map(|it| prepare(it, &sel)).collect();
        let mut batch_records: Vec<Value> = Vec::new();
        let mut ok: Vec<(usize, String)> = Vec::new();
        let mut pixels = Vec::new();
        for (k, p) in prepared.into_iter().enumerate() {
            let i = start + k;
            match p {
                Ok((px, note)) => {
                    pixels.extend(px);
                    ok.push((i, note));
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    // The data crate's errors begin with the path.
                    let msg = msg.strip_prefix(&format!("{}: ", all[i].name())).map_or(msg.clone(), String::from);
                    failures.push((all[i].name(), msg.clone()));
                    batch_records.push(json!({"index": i, "image": all[i].name(), "error": msg}));
                }
            }
        }
        start = end;
        if !ok.is_empty() {
            let n = ok.len();
            let xs = Tensor::from_vec(pixels, (n, c, h, w), &device)?;
            if let Some(ms) = a.deadline {
                for (i, note) in &ok {
                    let r = classify_anytime(sel.model.as_ref(), &xs, Duration::from_secs_f64(ms / 1e3))?;
                    let row = r.logits.to_vec2::<f32>()?.remove(0);
                    let pred = anytime_models::exit::argmax(&row);
                    batch_records.push(json!({
                        "index": i, "image": all[*i].name(), "prediction": pred, "label": name(pred),
                        "confidence": Confidence::MaxSoftmax.score(&row), "exit": r.exit, "mflops": costs[r.exit],
                        "ms": r.elapsed.as_secs_f64() * 1e3, "late": r.late, "note": note,
                    }));
                }
            } else {
                let th = thresholds.as_ref().context("thresholds")?;
                let t0 = Instant::now();
                let decisions = classify_budgeted(sel.model.as_ref(), &xs, th, &costs)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
                for ((i, note), d) in ok.iter().zip(&decisions) {
                    batch_records.push(json!({
                        "index": i, "image": all[*i].name(), "prediction": d.prediction, "label": name(d.prediction),
                        "confidence": d.confidence, "exit": d.exit, "mflops": d.mflops, "ms": ms,
                        "fallback": d.fallback, "note": note,
                    }));
                }
            }
        }
        // Text lines as each batch is done; JSON Lines at the end.
        batch_records.sort_by_key(|r| r["index"].as_u64());
        if a.jsonl.is_none() {
            for r in batch_records.iter() {
                if r.get("error").is_some() && !any_read {
                    // Until an image is read, a run of unreadable ones may
                    // end as one error; their lines wait.
                    unread.push(r.clone());
                    continue;
                }
                if !any_read {
                    any_read = true;
                    for u in unread.drain(..) {
                        print_record(&u, false)?;
                    }
                }
                print_record(r, a.deadline.is_some())?;
            }
        }
        records.extend(batch_records);
    }
    let classified = records.iter().filter(|r| r.get("error").is_none()).count();
    if classified == 0 && !records.is_empty() {
        let list: Vec<String> = failures.iter().map(|(p, r)| format!("{p}: {r}")).collect();
        bail!("no image could be read: {}", list.join("; "));
    }
    if let Some(out) = &a.jsonl {
        let run = json!({
            "model": sel.name,
            "weights_sha256": anytime_io::sha256_file(&sel.weights)?,
            "images": a.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "exit_mflops": costs,
            "thresholds": thresholds,
            "deadline_ms": a.deadline,
            "labels": labels,
            "input": {"shape": sel.input.shape, "pad": pad, "resize": sel.input.pre.resize_shorter,
                      "crop": sel.input.pre.centre_crop, "mean": sel.input.pre.mean, "std": sel.input.pre.std},
        });
        let mut header = ShardHeader::new("classify", run, shard, total, range.clone());
        header.skipped =
            failures.iter().map(|(p, r)| anytime_eval::SkippedImage { path: p.clone(), reason: r.clone() }).collect();
        let file = Shard { header, records: records.iter().map(strip_note).collect() };
        file.save(out)?;
        let summary = anytime_eval::shards::summarize(&file.header, &file.records)?;
        eprintln!(
            "{classified} images classified (images {}..{} of {total}), {} unreadable, {:.2} MFLOPs/image: {}",
            range.start,
            range.end,
            failures.len(),
            summary["mflops_per_image"].as_f64().unwrap_or(0.0),
            out.display()
        );
    }
    Ok(())
}

/// Prints one record as a text line (an unreadable image on standard error).
fn print_record(r: &Value, deadline: bool) -> Result<()> {
    if let Some(e) = r.get("error").and_then(Value::as_str) {
        eprintln!("skipped {}: {e}", r["image"].as_str().unwrap_or(""));
        return Ok(());
    }
    let tail = if deadline {
        if r["late"] == true { " (deadline missed: even the first exit took longer)" } else { "" }
    } else if r["fallback"] == true {
        " (no exit confident: the mean of every exit's logits)"
    } else {
        ""
    };
    let (after_ms, after_exit) = if deadline { (tail, "") } else { ("", tail) };
    outln!(
        "{}: {} (confidence {:.3}), exit {}{}, {:.2} MFLOPs, {:.3} ms{}{}",
        r["image"].as_str().unwrap_or(""),
        r["label"].as_str().unwrap_or("?"),
        r["confidence"].as_f64().unwrap_or(f64::NAN),
        r["exit"],
        after_exit,
        r["mflops"].as_f64().unwrap_or(f64::NAN),
        r["ms"].as_f64().unwrap_or(f64::NAN),
        after_ms,
        r["note"].as_str().unwrap_or("")
    );
    Ok(())
}

/// A record without its display note (the JSON keeps only data).
fn strip_note(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("note");
    }
    r
}
