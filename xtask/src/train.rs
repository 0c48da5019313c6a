//! `cargo xtask train` and `cargo xtask reproduce`.

use anyhow::{Result, bail};
use std::process::Command;

/// Arguments of `cargo xtask train`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Registry model to train.
    #[arg(long)]
    model: String,
    /// Override the recipe's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Continue the run in `runs/<model>`.
    #[arg(long)]
    resume: bool,
    /// Stop after this many minutes (with a checkpoint; resume later).
    #[arg(long)]
    max_minutes: Option<f64>,
}

/// `cargo run --release -p anytime-cli -- args` (building it first), from the
/// repository root, with the allocator setting the training runs use.
pub fn anytime_command(args: &[&str]) -> Command {
    eprintln!("$ anytime {}", args.join(" "));
    let mut c = Command::new(env!("CARGO"));
    c.args(["run", "--release", "-q", "-p", "anytime-cli", "--"])
        .args(args)
        .env("MIMALLOC_PURGE_DELAY", "-1")
        .current_dir(crate::root());
    c
}

/// Runs the release `anytime` binary with `args`.
pub fn anytime(args: &[&str]) -> Result<()> {
    let status = anytime_command(args).status()?;
    if !status.success() {
        bail!("anytime {} failed", args.join(" "));
    }
    Ok(())
}

/// Trains every stage of the model's recipe in order (a later stage starts
/// from the previous stage's best weights), then exports the last stage
/// when every epoch is done. `--epochs` applies to the first stage.
pub fn run(a: &TrainArgs) -> Result<()> {
    let recipe = anytime_train::recipes::recipe(&a.model)?;
    let root = crate::root();
    let minutes = a.max_minutes.map(|m| m.to_string());
    let epochs = a.epochs.map(|e| e.to_string());
    let mut last = recipe.first_stage();
    for (i, stage) in recipe.stages.iter().enumerate() {
        let mut args = vec!["train", "--model", &a.model, "--stage", stage.name];
        if let Some(e) = epochs.as_deref().filter(|_| i == 0) {
            args.extend(["--epochs", e]);
        }
        if a.resume {
            // A later stage's first launch has nothing to resume yet.
            args.push("--resume-or-start");
        }
        if let Some(m) = &minutes {
            args.extend(["--max-minutes", m]);
        }
        anytime(&args)?;
        // Start the next stage, or export, only once a stage has done all
        // its epochs (a time limit may stop it).
        if !finished(&root.join(recipe.run_dir(stage.name)?))? {
            return Ok(());
        }
        last = stage.name;
    }
    anytime(&["export", "--model", &a.model, "--stage", last])
}

/// Whether the run in `dir` has done the epochs it was started with (says
/// how to go on when not).
fn finished(dir: &std::path::Path) -> Result<bool> {
    let state = anytime_train::checkpoint::Checkpoint::load(&dir.join(anytime_train::trainer::CHECKPOINT_FILE))?.state;
    let planned = state.spec.as_ref().map_or(state.epoch, |s| s.epochs);
    if state.epoch < planned {
        eprintln!(
            "the run in {} stopped after {} of {planned} epochs; continue with --resume",
            dir.display(),
            state.epoch
        );
    }
    Ok(state.epoch >= planned)
}

/// Retrains every shipped model of a dataset family, then rewrites the results.
pub fn reproduce(what: &str) -> Result<()> {
    if what != "fmnist" {
        bail!("unknown family '{what}' (known: fmnist)");
    }
    for model in crate::results::FMNIST_MODELS {
        run(&TrainArgs { model: model.to_string(), epochs: None, resume: true, max_minutes: None })?;
    }
    crate::results::run(&crate::results::ResultsArgs::default())
}

/// Arguments of `cargo xtask scan-ablation`.
#[derive(clap::Args)]
pub struct AblationArgs {
    /// Stop after this many minutes (with a checkpoint; run the task again to
    /// go on).
    #[arg(long)]
    max_minutes: Option<f64>,
}

/// SCAN's ablation: trains the four variants of
/// `anytime_train::recipes::SCAN_ABLATION` (attention and self-distillation
/// each on or off) with one equal short schedule, resumably, then evaluates
/// each finished one on the test split into
/// `docs/data/scan-ablation/<variant>.json`.
pub fn scan_ablation(a: &AblationArgs) -> Result<()> {
    let root = crate::root();
    let out = root.join("docs/data/scan-ablation");
    std::fs::create_dir_all(&out)?;
    let minutes = a.max_minutes.map(|m| m.to_string());
    for variant in anytime_train::recipes::SCAN_ABLATION {
        let mut args = vec!["train", "--model", variant, "--resume-or-start", "--quiet"];
        if let Some(m) = &minutes {
            args.extend(["--max-minutes", m]);
        }
        anytime(&args)?;
        let dir = root.join(anytime_train::recipes::recipe(variant)?.run_dir("main")?);
        if !finished(&dir)? {
            return Ok(());
        }
        let best = dir.join(anytime_train::trainer::BEST_FILE);
        let report = out.join(format!("{variant}.json"));
        if report.exists() {
            continue;
        }
        let best = best.display().to_string();
        let output = anytime_command(&["eval", "--model", variant, "--weights", &best, "--json"]).output()?;
        if !output.status.success() {
            bail!("evaluating {variant} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        anytime_io::atomic_write(&report, &output.stdout)?;
    }
    Ok(())
}
