//! `anytime export`: turns a finished run's best weights into a shipped
//! weight file with metadata (config, dataset, per-exit test accuracy and
//! MFLOPs, the training command and the commit).

use super::WeightsArgs;
use super::eval::{EvalSplit, report};
use super::train::stage_dir;
use anyhow::{Context, Result};
use anytime_data::fmnist::DEFAULT_FASHION_MNIST_DIR;
use anytime_io::WeightMeta;
use anytime_models::registry::lookup;
use anytime_train::checkpoint::Checkpoint;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `anytime export`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Registry model the run trained.
    #[arg(long)]
    model: String,
    /// Run directory; default `runs/<model>` for the recipe's first stage,
    /// `runs/<model>/<stage>` for a later one.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The recipe stage the run trained (default: the first).
    #[arg(long)]
    stage: Option<String>,
    /// Output file; default `weights/<registry file>`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// Export a run that has not finished its epochs (the metadata says so).
    #[arg(long)]
    partial: bool,
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let entry = lookup(&a.model)?;
    let r = anytime_train::recipes::recipe(&a.model)?;
    let (stage, dir) = stage_dir(&r, a.stage.as_deref(), a.run_dir.as_deref())?;
    let best = dir.join(anytime_train::trainer::BEST_FILE);
    let out = match (&a.out, entry.weights) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from("weights").join(p.file),
        (None, None) => anyhow::bail!("{} has no registry weight file name; pass --out", entry.name),
    };
    super::ensure_not_input("--out", &out, &[best.as_path()])?;
    anytime_io::check_replaceable(&out).with_context(|| format!("cannot write {}", out.display()))?;
    let state = Checkpoint::load(&dir.join(anytime_train::trainer::CHECKPOINT_FILE))?.state;
    // The plan the run was started with (an `--epochs` override included).
    let epochs = match &state.spec {
        Some(spec) => spec.epochs,
        None => r.stage(stage)?.1.spec.epochs,
    };
    if state.epoch < epochs && !a.partial {
        anyhow::bail!(
            "the run in {} has finished {} of {epochs} epochs; resume it, or pass --partial to export it as it is",
            dir.display(),
            state.epoch
        );
    }
    let eval = report(&super::eval::Args {
        sel: super::input::ModelSel {
            model: super::ModelArgs { model: Some(a.model.clone()), arch: None, config: None },
            weights: WeightsArgs { weights: Some(best.display().to_string()), ..Default::default() },
        },
        pre: Default::default(),
        data_dir: a.data_dir.clone(),
        data: None,
        split: EvalSplit::Test,
        batch_size: 256,
        limit: None,
        calibration: None,
        json: true,
        budgeted: false,
        methods: false,
        patch_policy: None,
        plots: None,
        per_image: None,
        shard: None,
        device: "cpu".into(),
    })?;
    let file = anytime_io::load_tensors(&best)?;
    let cfg = (entry.config)();
    let mut extra = BTreeMap::new();
    // A later stage keeps the record of the stage it started from (the
    // weight file's metadata), its own under a `<stage>_` prefix.
    let prefix = if stage == r.first_stage() { String::new() } else { format!("{stage}_") };
    if let Some(init) = &state.init_from {
        let from = anytime_io::read_meta(init).map(|m| m.extra).unwrap_or_default();
        for key in ["epochs_trained", "epochs_planned", "train_seconds", "holdout_final_exit_accuracy", "best_epoch"] {
            if let Some(v) = from.get(key) {
                extra.insert(key.to_string(), v.clone());
            }
        }
        extra.insert(format!("{prefix}init_from"), init.clone());
    }
    extra.insert(format!("{prefix}epochs_trained"), state.epoch.to_string());
    extra.insert(format!("{prefix}epochs_planned"), epochs.to_string());
    extra.insert(format!("{prefix}train_seconds"), format!("{:.0}", state.seconds));
    if let Some((acc, epoch)) = state.best {
        extra.insert(format!("{prefix}holdout_final_exit_accuracy"), format!("{acc:.4}"));
        extra.insert(format!("{prefix}best_epoch"), epoch.to_string());
        if state.best_is_average() {
            extra.insert(
                format!("{prefix}best_weights"),
                format!("average of {} epochs", state.averaged_epochs(epoch + 1)),
            );
        }
    }
    let meta = WeightMeta {
        architecture: cfg.arch().into(),
        config: serde_json::to_value(&cfg)?,
        dataset: "fashion-mnist".into(),
        exit_accuracy: eval.exits.iter().map(|e| e.accuracy).collect(),
        exit_mflops: eval.exits.iter().map(|e| e.mflops).collect(),
        training_command: format!("cargo xtask train --model {}", a.model),
        commit: git_commit(),
        extra,
    };
    anytime_io::save_safetensors(&out, &file.tensors, &meta)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let acc: Vec<String> = meta.exit_accuracy.iter().map(|a| format!("{:.2}%", 100.0 * a)).collect();
    eprintln!("wrote {} (test accuracy per exit: {})", out.display(), acc.join(" "));
    Ok(())
}
