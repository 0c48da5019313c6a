//! `anytime train`: trains a registry model with its recipe, resumably.

use anyhow::{Context, Result};
use anytime_data::dataset::holdout_split;
use anytime_data::fmnist::{DEFAULT_FASHION_MNIST_DIR, Split, fashion_mnist};
use anytime_data::loader::{Augment, BatchConfig, Loader};
use anytime_models::registry::{Clutter, DataSpec, lookup};
use anytime_train::metrics::EpochMetrics;
use anytime_train::recipes::{Recipe, recipe};
use anytime_train::{Observer, RunEnd, Start, StepProgress, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `anytime train`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry model to train (see `anytime models`).
    #[arg(long)]
    model: String,
    /// Run directory (checkpoints, metrics, curves); default `runs/<model>`
    /// for the recipe's first stage, `runs/<model>/<stage>` for a later one.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Recipe stage (default: the first). The first stage trains from the
    /// seeded initialisation; a later one (e.g. `swa`, weight averaging over
    /// a cyclic schedule) starts from `--init`, by default the previous
    /// stage's `best.safetensors`.
    #[arg(long)]
    stage: Option<String>,
    /// Start a new run from these weights (safetensors or PyTorch file with
    /// every variable of the model) instead of the seeded initialisation.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Continue the run in the run directory (an error when it holds no checkpoint).
    #[arg(long, conflicts_with_all = ["resume_or_start", "force"])]
    resume: bool,
    /// Continue the run in the run directory if it holds a checkpoint, else start one.
    #[arg(long, conflicts_with = "force")]
    resume_or_start: bool,
    /// Start a new run even if the run directory holds another run's files (they are replaced).
    #[arg(long)]
    force: bool,
    /// Override the recipe's number of epochs.
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::EPOCHS)]
    epochs: Option<usize>,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// Stop (with a checkpoint) after this many minutes; resume later.
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::MINUTES)]
    max_minutes: Option<f64>,
    /// No progress bars; one line per epoch.
    #[arg(long)]
    quiet: bool,
    /// Where the model trains: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature; our CPU
    /// kernels are replaced by Candle's stock ops there). Batches are built
    /// on the CPU and moved; checkpoints are the same files on every device.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The stage `--stage` names (default: the recipe's first) and its run
/// directory (`given`, or the stage's default).
pub fn stage_dir(r: &Recipe, stage: Option<&str>, given: Option<&Path>) -> Result<(&'static str, PathBuf)> {
    let (_, s) = r.stage(stage.unwrap_or(r.first_stage()))?;
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => r.run_dir(s.name)?,
    };
    Ok((s.name, dir))
}

struct Progress {
    bar: Option<ProgressBar>,
    /// Without a terminal: print a status line this often.
    every: Option<Duration>,
    last: std::time::Instant,
}

impl Observer for Progress {
    fn on_step(&mut self, p: &StepProgress) {
        let acc: Vec<String> = p.train_acc.iter().map(|a| format!("{:.1}", 100.0 * a)).collect();
        let msg = format!(
            "epoch {}/{} loss {:.3} lr {:.4} acc [{}] {:.0} img/s",
            p.epoch + 1,
            p.epochs,
            p.loss,
            p.lr,
            acc.join(" "),
            p.images_per_s
        );
        if let Some(bar) = &self.bar {
            bar.set_length(p.batches as u64);
            bar.set_position(p.batch as u64 + 1);
            bar.set_message(msg);
        } else if self.every.is_some_and(|e| self.last.elapsed() >= e) {
            self.last = std::time::Instant::now();
            eprintln!("batch {}/{} {msg}", p.batch + 1, p.batches);
        }
    }

    fn on_epoch(&mut self, m: &EpochMetrics) {
        let pct = |v: &[f64]| v.iter().map(|a| format!("{:.2}", 100.0 * a)).collect::<Vec<_>>().join(" ");
        let swa = m.swa_val_acc.as_deref().map(|v| format!(", weight average [{}]", pct(v))).unwrap_or_default();
        let terms: Vec<String> = m.train_logged.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let terms = if terms.is_empty() { String::new() } else { format!(" ({})", terms.join(", ")) };
        let line = format!(
            "epoch {} train loss {:.4}{terms} held-out accuracy per exit [{}]{swa} ({:.0} img/s, {:.0} s)",
            m.epoch + 1,
            m.train_loss,
            pct(&m.val_acc),
            m.images_per_s,
            m.seconds
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}

/// Loads Fashion-MNIST's training set, padded as the registry entry's
/// `data` says, and splits off the held-out images; for cluttered data the
/// held-out images go on their fixed canvases (the training images stay
/// plain: [`training_loader`] makes fresh canvases every epoch).
pub fn fmnist_splits(
    data_dir: &Path,
    data: &DataSpec,
    holdout: usize,
    seed: u64,
) -> Result<(Arc<anytime_data::dataset::Dataset>, Arc<anytime_data::dataset::Dataset>)> {
    let full = fashion_mnist(data_dir, Split::Train)?.pad(data.pad)?;
    let (train, val) = holdout_split(&full, holdout, seed)?;
    let val = on_canvases(val, data, |c| c.holdout_seed)?;
    Ok((Arc::new(train), Arc::new(val)))
}

/// `ds` on its fixed canvases (the seed `seed` picks) for cluttered data, as
/// it is otherwise.
fn on_canvases(
    ds: anytime_data::dataset::Dataset,
    data: &DataSpec,
    seed: impl Fn(&Clutter) -> u64,
) -> Result<anytime_data::dataset::Dataset> {
    Ok(match &data.clutter {
        Some(c) => anytime_data::cluttered::cluttered(&ds, &clutter_spec(*c), seed(c))?,
        None => ds,
    })
}

/// The data crate's spec of a registry entry's clutter.
pub fn clutter_spec(c: Clutter) -> anytime_data::cluttered::ClutterSpec {
    anytime_data::cluttered::ClutterSpec { canvas: c.canvas, fragments: c.fragments, fragment: c.fragment }
}

/// Fashion-MNIST's test images as the registry entry's `data` says:
/// padded, and on their fixed canvases for cluttered data.
pub fn fmnist_test(data_dir: &Path, data: &DataSpec) -> Result<anytime_data::dataset::Dataset> {
    on_canvases(fashion_mnist(data_dir, Split::Test)?.pad(data.pad)?, data, |c| c.test_seed)
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let entry = lookup(&a.model)?;
    let r = recipe(&a.model)?;
    let device = super::parse_device(&a.device)?;
    let (stage, dir) = stage_dir(&r, a.stage.as_deref(), a.run_dir.as_deref())?;
    let mut spec = r.stage(stage)?.1.spec.clone();
    if let Some(e) = a.epochs {
        spec.epochs = e;
    }
    let (train, val) = fmnist_splits(&a.data_dir, &entry.data, r.holdout, r.split_seed)?;
    let train = Loader::new(
        train,
        BatchConfig { batch_size: r.batch_size, shuffle: true, seed: spec.seed, augment: r.augment, drop_last: true },
    )?;
    let train = match entry.data.clutter {
        Some(c) => train.with_clutter(clutter_spec(c))?,
        None => train,
    }
    .on_device(device.clone());
    let val = Loader::new(
        val,
        BatchConfig { batch_size: 256, shuffle: false, seed: 0, augment: Augment::default(), drop_last: false },
    )?
    .on_device(device.clone());
    let cfg = (entry.config)();
    let epochs = spec.epochs;
    let start = match (a.resume, a.resume_or_start, a.force) {
        (true, _, _) => Start::Resume,
        (_, true, _) => Start::ResumeOrNew,
        (_, _, true) => Start::Overwrite,
        _ => Start::New,
    };
    let mut trainer = Trainer::new_on(spec, |vb| cfg.build(vb), &dir, start, &device)
        .with_context(|| format!("cannot start the run in {}", dir.display()))?;
    let init = match (&a.init, r.previous(stage)?) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(prev)) => Some(r.run_dir(prev.name)?.join(anytime_train::trainer::BEST_FILE)),
        (None, None) => None,
    };
    // A resumed run holds its weights already.
    if let Some(path) = init.filter(|_| trainer.state().step == 0) {
        trainer.init_from(&path).context("cannot start from the given weights")?;
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = (!a.quiet && tty).then(|| {
        let bar = ProgressBar::new(train.num_batches() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let every = (!a.quiet && !tty).then(|| Duration::from_secs(30));
    let mut obs = Progress { bar, every, last: std::time::Instant::now() };
    let limit = a.max_minutes.map(|m| Duration::from_secs_f64(m * 60.0));
    let end = trainer.run(&train, &val, &mut obs, limit)?;
    if let Some(bar) = &obs.bar {
        bar.finish_and_clear();
    }
    match end {
        RunEnd::Finished => eprintln!(
            "finished {} epochs; best weights in {}",
            epochs,
            dir.join(anytime_train::trainer::BEST_FILE).display()
        ),
        RunEnd::TimeLimit => {
            eprintln!("time limit reached at epoch {}; continue with --resume", trainer.state().epoch + 1)
        }
    }
    Ok(())
}
