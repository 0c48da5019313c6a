//! `anytime eval`: per-exit accuracy (top-1, top-5), MFLOPs and latency of a
//! registry model or any checkpoint, on Fashion-MNIST, CIFAR or an image
//! folder; budgeted classification with real early exit; per-image results
//! in shards.

use super::input::{ModelSel, PreArgs, split_images};
use anyhow::{Context, Result};
use anytime_calibrate::Calibration;
use anytime_data::fmnist::DEFAULT_FASHION_MNIST_DIR;
use anytime_eval::shards::{Shard, ShardHeader, parse_shard, per_image_pass, shard_range};
use anytime_eval::{EvalReport, Request, evaluate_source};
use anytime_models::registry::lookup;
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

/// A dataset named on the command line (`--data KIND:DIR`) in place of the
/// registry entry's Fashion-MNIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `fashion-mnist:DIR`: the IDX files (plain or gzip) in DIR.
    FashionMnist(PathBuf),
    /// `cifar10:DIR`: CIFAR-10's binary version (`data_batch_{1..5}.bin`,
    /// `test_batch.bin`).
    Cifar10(PathBuf),
    /// `cifar100:DIR`: CIFAR-100's binary version (`train.bin`, `test.bin`).
    Cifar100(PathBuf),
    /// `imagefolder:DIR`: one folder of PNG/JPEG images per class, or
    /// `train/` and `val/` holding such folders (ImageNet's layout).
    ImageFolder(PathBuf),
}

impl DataSource {
    /// `KIND:DIR` as given.
    pub fn describe(&self) -> String {
        let (k, d) = match self {
            DataSource::FashionMnist(d) => ("fashion-mnist", d),
            DataSource::Cifar10(d) => ("cifar10", d),
            DataSource::Cifar100(d) => ("cifar100", d),
            DataSource::ImageFolder(d) => ("imagefolder", d),
        };
        format!("{k}:{}", d.display())
    }
}

impl std::str::FromStr for DataSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, dir) = s.split_once(':').ok_or_else(|| {
            format!("'{s}' is not KIND:DIR (kinds: fashion-mnist, cifar10, cifar100, imagefolder), e.g. cifar10:/data/cifar-10-batches-bin")
        })?;
        if dir.is_empty() {
            return Err(format!("'{s}': no directory after '{kind}:'"));
        }
        let dir = PathBuf::from(dir);
        match kind {
            "fashion-mnist" => Ok(Self::FashionMnist(dir)),
            "cifar10" => Ok(Self::Cifar10(dir)),
            "cifar100" => Ok(Self::Cifar100(dir)),
            "imagefolder" => Ok(Self::ImageFolder(dir)),
            _ => Err(format!("unknown data kind '{kind}' (kinds: fashion-mnist, cifar10, cifar100, imagefolder)")),
        }
    }
}

/// The split `source` names (or the registry entry's Fashion-MNIST from
/// `data_dir` when `None`), checked against the model's input.
pub fn load_split_from(
    model: &str,
    source: Option<&DataSource>,
    data_dir: &std::path::Path,
    split: EvalSplit,
) -> Result<anytime_data::dataset::Dataset> {
    use anytime_data::cifar::{Cifar, cifar};
    let (kind, dir, name) = match source {
        None => return load_split(model, data_dir, split),
        Some(DataSource::FashionMnist(dir)) => return load_split(model, dir, split),
        Some(DataSource::Cifar10(dir)) => (Cifar::Ten, dir, "cifar10"),
        Some(DataSource::Cifar100(dir)) => (Cifar::Hundred, dir, "cifar100"),
        Some(DataSource::ImageFolder(dir)) => {
            anyhow::bail!("imagefolder:{} is streamed, not loaded (see input::split_images)", dir.display())
        }
    };
    let entry = lookup(model)?;
    if entry.data.input != (3, 32, 32) || entry.data.clutter.is_some() {
        let (c, h, w) = entry.data.input;
        anyhow::bail!(
            "--data {name}:…: {model} takes {c}x{h}x{w} {} images, not 3x32x32 CIFAR images",
            entry.data.dataset
        );
    }
    let ds = match split {
        EvalSplit::Test => cifar(dir, kind, false)?,
        EvalSplit::Val => {
            let (holdout, seed) =
                recipe(model).map(|r| (r.holdout, r.split_seed)).unwrap_or(super::input::DEFAULT_HOLDOUT);
            anytime_data::dataset::holdout_split(&cifar(dir, kind, true)?, holdout, seed)?.1
        }
    };
    Ok(ds)
}

/// Arguments of `anytime eval`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub sel: ModelSel,
    #[command(flatten)]
    pub pre: PreArgs,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    pub data_dir: PathBuf,
    /// Another dataset, `KIND:DIR`: `fashion-mnist:DIR`, `cifar10:DIR` or
    /// `cifar100:DIR` (the binary versions; the held-out split is 5,000
    /// training images), or `imagefolder:DIR` (one folder of PNG/JPEG
    /// images per class, streamed; with `train/` and `val/` inside, the test
    /// split is `val/` and the held-out split 50,000 or a tenth of `train/`;
    /// otherwise a seeded tenth of the folder is held out and the rest is the
    /// test split). Unreadable images are skipped and listed.
    #[arg(long, conflicts_with = "data_dir")]
    pub data: Option<DataSource>,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value = "test")]
    pub split: EvalSplit,
    /// Images per batch.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true, value_parser = super::num::BATCH)]
    pub batch_size: usize,
    /// Evaluate only the first N images of the split (e.g. for quick
    /// batch-1 latency runs); default: all.
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::LIMIT)]
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
    /// Also compare the threshold searches (q rule, budget solver, genetic,
    /// genetic with the ensemble fallback) at seven budgets from the first
    /// exit's cost to three quarters of the way to the last exit's:
    /// thresholds from the held-out split, real early exit on the evaluated
    /// images.
    #[arg(long)]
    pub methods: bool,
    /// GFNet only: where the focus steps look — `learned` (the policy, the
    /// default), `centre`, or `random` / `random:SEED` (the baselines the
    /// learned policy is compared with).
    #[arg(long, value_parser = clap::value_parser!(anytime_models::gfnet::PatchPolicy))]
    pub patch_policy: Option<anytime_models::gfnet::PatchPolicy>,
    /// Where `--budgeted` writes its plots (default `results/<model>`).
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Write every image's answer at every exit (prediction, max-softmax
    /// confidence, top-5 hit) as JSON Lines to FILE: a header line with the
    /// run and its summary, then one line per image.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["budgeted", "methods", "calibration", "patch_policy"])]
    pub per_image: Option<PathBuf>,
    /// Evaluate only part K of N of the split (contiguous, 1 ≤ K ≤ N), for a
    /// job array; `cargo xtask merge` combines the N files of `--per-image`
    /// into the file of one run.
    #[arg(long, value_name = "K/N", requires = "per_image")]
    pub shard: Option<String>,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature); batches
    /// are built on the CPU and moved there.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl From<EvalSplit> for anytime_eval::Split {
    fn from(s: EvalSplit) -> Self {
        match s {
            EvalSplit::Test => anytime_eval::Split::Test,
            EvalSplit::Val => anytime_eval::Split::Val,
        }
    }
}

/// Loads the requested split, padded (and cluttered) as the model's registry
/// entry says.
pub fn load_split(model: &str, data_dir: &std::path::Path, split: EvalSplit) -> Result<anytime_data::dataset::Dataset> {
    let data = &lookup(model)?.data;
    Ok(match split {
        EvalSplit::Test => super::train::fmnist_test(data_dir, data)?,
        EvalSplit::Val => {
            let r = recipe(model)?;
            let (_, val) = super::train::fmnist_splits(data_dir, data, r.holdout, r.split_seed)?;
            Arc::try_unwrap(val).unwrap_or_else(|a| (*a).clone())
        }
    })
}

/// A cluttered split, its items' top-left corners and the items' side.
type SplitWithItems = (anytime_data::dataset::Dataset, Vec<(usize, usize)>, usize);

/// A cluttered split as [`load_split`] makes it, with where its items lie
/// on their canvases and the items' side.
fn split_with_items(model: &str, data_dir: &std::path::Path, split: EvalSplit) -> Result<SplitWithItems> {
    let data = &lookup(model)?.data;
    let c = data.clutter.with_context(|| format!("{model} has no cluttered data"))?;
    let (plain, seed) = match split {
        EvalSplit::Test => (
            anytime_data::fmnist::fashion_mnist(data_dir, anytime_data::fmnist::Split::Test)?.pad(data.pad)?,
            c.test_seed,
        ),
        EvalSplit::Val => {
            let r = recipe(model)?;
            let full =
                anytime_data::fmnist::fashion_mnist(data_dir, anytime_data::fmnist::Split::Train)?.pad(data.pad)?;
            (anytime_data::dataset::holdout_split(&full, r.holdout, r.split_seed)?.1, c.holdout_seed)
        }
    };
    let side = plain.image_shape().1;
    let (ds, items) = anytime_data::cluttered::cluttered_with_items(&plain, &super::train::clutter_spec(c), seed)?;
    Ok((ds, items, side))
}

/// Runs the measurements and returns the report (writing the plots of
/// `--budgeted`).
pub fn report(a: &Args) -> Result<EvalReport> {
    let device = super::parse_device(&a.device)?;
    let mut sel = a.sel.load(&a.pre, &device)?;
    let mut name = sel.name.clone();
    if let Some(p) = a.patch_policy {
        let Some(g) = sel.model.as_any().and_then(|m| m.downcast_ref::<anytime_models::gfnet::Gfnet>()) else {
            anyhow::bail!("--patch-policy applies to GFNet models; {} is a {} model", sel.name, sel.model.arch());
        };
        sel.model = Box::new(g.clone().with_patch_policy(p));
        name = format!("{} ({p} patches)", sel.name);
    }
    let images = split_images(&sel, a.data.as_ref(), &a.data_dir, a.split)?.limit(a.limit)?;
    let n = images.len();
    let source = images.source(&sel, a.batch_size, &device)?;
    let calibration = match &a.calibration {
        Some(path) => {
            let sha = anytime_io::sha256_file(&sel.weights)?;
            Some((path.display().to_string(), Calibration::load(path, &sha)?.thresholds))
        }
        None => None,
    };
    let val = || -> Result<Arc<dyn anytime_data::source::EvalSource>> {
        split_images(&sel, a.data.as_ref(), &a.data_dir, EvalSplit::Val)?.source(&sel, 256, &device)
    };
    let sweep_holdout = if a.budgeted { Some(val()?) } else { None };
    let methods_holdout = match (&sweep_holdout, a.methods) {
        (Some(h), true) => Some(h.clone()),
        (None, true) => Some(val()?),
        _ => None,
    };
    let request = Request {
        model: name,
        split: a.split.into(),
        batch_size: a.batch_size,
        calibration,
        sweep_holdout,
        methods_holdout,
        device: device.clone(),
    };
    let mut report = evaluate_source(sel.model.as_ref(), source.as_ref(), &request)?;
    // GFNet on cluttered canvases: how often each step's patch holds the
    // whole item.
    let gfnet = sel.model.as_any().and_then(|m| m.downcast_ref::<anytime_models::gfnet::Gfnet>());
    if let (Some(g), Some(entry)) = (gfnet, sel.entry)
        && let (Some(_), None | Some(DataSource::FashionMnist(_))) = (entry.data.clutter, &a.data)
    {
        let dir = match &a.data {
            Some(DataSource::FashionMnist(dir)) => dir,
            _ => &a.data_dir,
        };
        let (ds, items, side) = split_with_items(entry.name, dir, a.split)?;
        let ds = Arc::new(ds.take(n)?);
        report.patch_hits = Some(anytime_eval::measure::patch_hits(
            sel.model.as_ref(),
            ds,
            &items[..n],
            side,
            g.config().patch_size,
            &device,
        )?);
    }
    if a.budgeted {
        let dir = a.plots.clone().unwrap_or_else(|| PathBuf::from("results").join(sanitize(&sel.name)));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        anytime_eval::plot::report_plots(&report, &dir)?;
        report.plots = Some(dir.display().to_string());
    }
    Ok(report)
}

/// A model name as a directory name (`msdnet:w.safetensors` → `msdnet-w.safetensors`).
fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect()
}

/// `--per-image`: the anytime pass over (a shard of) the split, every
/// image's answers written as JSON Lines.
fn per_image(a: &Args, out: &std::path::Path) -> Result<Shard> {
    anytime_io::check_replaceable(out).with_context(|| format!("cannot write --per-image {}", out.display()))?;
    let device = super::parse_device(&a.device)?;
    let sel = a.sel.load(&a.pre, &device)?;
    super::ensure_not_input("--per-image", out, &[sel.weights.as_path()])?;
    let shard = a.shard.as_deref().map(parse_shard).transpose()?.unwrap_or((1, 1));
    let images = split_images(&sel, a.data.as_ref(), &a.data_dir, a.split)?.limit(a.limit)?;
    let total = images.len();
    let range = shard_range(total, shard.0, shard.1)?;
    let images = images.slice(range.clone())?;
    let (_, h, w) = sel.input.shape;
    let costs = sel.model.exit_costs(h, w)?;
    let mflops = costs.mflops(costs.headline);
    let run = serde_json::json!({
        "model": sel.name,
        "weights_sha256": anytime_io::sha256_file(&sel.weights)?,
        "data": a.data.as_ref().map_or_else(|| format!("fashion-mnist:{}", a.data_dir.display()), DataSource::describe),
        "split": a.split_name(),
        "limit": a.limit,
        "classes": images.classes(),
        "exit_mflops": mflops,
        "input": {"shape": sel.input.shape, "pad": sel.input.pad, "resize": sel.input.pre.resize_shorter,
                  "crop": sel.input.pre.centre_crop, "mean": sel.input.pre.mean, "std": sel.input.pre.std},
    });
    let mut header = ShardHeader::new("eval", run, shard, total, range.clone());
    let records = if images.len() == 0 {
        Vec::new()
    } else {
        let source = images.source(&sel, a.batch_size, &device)?;
        let (records, seconds) = per_image_pass(sel.model.as_ref(), source.as_ref(), range.start)?;
        header.seconds = seconds;
        header.skipped = source.skipped().into_iter().map(Into::into).collect();
        records
    };
    let shard = Shard { header, records };
    shard.save(out)?;
    Ok(shard)
}

impl Args {
    fn split_name(&self) -> &'static str {
        anytime_eval::Split::from(self.split).as_str()
    }
}

/// Prints the files a run skipped, on standard error.
fn warn_skipped(skipped: &[anytime_eval::SkippedImage]) {
    if skipped.is_empty() {
        return;
    }
    eprintln!("skipped {} unreadable image{}:", skipped.len(), if skipped.len() == 1 { "" } else { "s" });
    for s in skipped {
        eprintln!("  {}: {}", s.path, s.reason);
    }
}

/// The per-exit table (with a top-5 column for models of more than five
/// classes).
fn print_exits(exits: &[anytime_eval::ExitReport]) -> Result<()> {
    let top5 = exits.iter().any(|e| e.top5.is_some());
    if top5 {
        outln!("{:>4}  {:>9}  {:>9}  {:>8}  {:>11}", "exit", "top-1", "top-5", "MFLOPs", "ms/image");
    } else {
        outln!("{:>4}  {:>9}  {:>8}  {:>11}", "exit", "accuracy", "MFLOPs", "ms/image");
    }
    for e in exits {
        match e.top5 {
            Some(t5) if top5 => outln!(
                "{:>4}  {:>8.2}%  {:>8.2}%  {:>8.2}  {:>11.3}",
                e.exit,
                100.0 * e.accuracy,
                100.0 * t5,
                e.mflops,
                e.ms_per_image
            ),
            _ => outln!("{}  {:>8.2}%  {:>8.2}  {:>11.3}", e.exit, 100.0 * e.accuracy, e.mflops, e.ms_per_image),
        }
    }
    Ok(())
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    if let Some(out) = &a.per_image {
        let shard = per_image(&a, out)?;
        warn_skipped(&shard.header.skipped);
        let summary = anytime_eval::shards::summarize(&shard.header, &shard.records)?;
        if a.json {
            outln!("{}", serde_json::to_string(&summary)?);
            return Ok(());
        }
        let (k, n) = shard.header.shard;
        outln!(
            "{} images {}..{} of {} (shard {k}/{n}): {} read, per-image results in {}",
            shard.header.run["model"].as_str().unwrap_or(""),
            shard.header.start,
            shard.header.end,
            shard.header.total,
            summary["images"],
            out.display()
        );
        let exits: Vec<anytime_eval::ExitReport> = serde_json::from_value(summary["exits"].clone())?;
        print_exits(&exits)?;
        return Ok(());
    }
    let r = report(&a)?;
    warn_skipped(&r.skipped);
    if a.json {
        outln!("{}", serde_json::to_string(&r.to_json()?)?);
        return Ok(());
    }
    outln!("{} on {} images ({} split, batch {})", r.model, r.images, r.split.as_str(), a.batch_size);
    print_exits(&r.exits)?;
    if let Some(hits) = &r.patch_hits {
        let steps: Vec<String> =
            hits.iter().enumerate().filter_map(|(k, h)| h.map(|h| format!("exit {k} {:.1}%", 100.0 * h))).collect();
        outln!("patches holding the whole item: {}", steps.join(", "));
    }
    let full_ms = r.full_ms_per_image.unwrap_or(r.full()?.ms_per_image);
    if let Some(c) = &r.calibrated {
        outln!(
            "real early exit with {}: {:.2}% at {:.2} MFLOPs/image, {:.3} ms/image (full model {:.3}), exits used {}",
            c.file,
            100.0 * c.run.accuracy,
            c.run.mflops,
            c.run.ms_per_image,
            full_ms,
            serde_json::to_string(&c.run.exit_counts)?
        );
    }
    if let Some(points) = &r.budgeted {
        outln!("budgeted classification, real early exit (full model: {full_ms:.3} ms/image):");
        outln!("{:>5}  {:>9}  {:>8}  {:>9}  {:>22}", "q", "accuracy", "MFLOPs", "ms/image", "time / FLOP saving");
        for b in points {
            outln!(
                "{:>5.2}  {:>8.2}%  {:>8.2}  {:>9.3}  {:>22}",
                b.q,
                100.0 * b.run.accuracy,
                b.run.mflops,
                b.run.ms_per_image,
                b.run.saving_ratio.map_or("—".into(), |r| format!("{r:.2}"))
            );
        }
        outln!("plots in {}", r.plots.as_deref().unwrap_or(""));
    }
    if let Some(points) = &r.methods {
        outln!("threshold searches at the same budgets (held-out thresholds, real early exit):");
        outln!("{:>8}  {:<20}  {:>9}  {:>8}  {:>9}", "budget", "method", "accuracy", "MFLOPs", "ms/image");
        for p in points {
            outln!(
                "{:>8.2}  {:<20}  {:>8.2}%  {:>8.2}  {:>9.3}",
                p.budget_mflops,
                p.method.label(),
                100.0 * p.run.accuracy,
                p.run.mflops,
                p.run.ms_per_image
            );
        }
    }
    Ok(())
}
