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

/// Trains (the main stage, then the weight-averaging stage where the recipe
/// has one, from the main stage's best weights), then exports the last
/// stage when every epoch is done.
pub fn run(a: &TrainArgs) -> Result<()> {
    let mut args = vec!["train".to_string(), "--model".into(), a.model.clone()];
    if let Some(e) = a.epochs {
        args.extend(["--epochs".into(), e.to_string()]);
    }
    if a.resume {
        args.push("--resume".into());
    }
    if let Some(m) = a.max_minutes {
        args.extend(["--max-minutes".into(), m.to_string()]);
    }
    anytime(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    // Export, or start the second stage from the first one's best weights,
    // only once a stage has done all its epochs (a time limit may stop it).
    use anytime_train::recipes::Stage;
    let root = crate::root();
    if !finished(&root.join(Stage::Main.run_dir(&a.model)))? {
        return Ok(());
    }
    let swa = anytime_train::recipes::recipe(&a.model).is_ok_and(|r| r.swa_stage.is_some());
    if !swa {
        return anytime(&["export", "--model", &a.model]);
    }
    let mut args = vec!["train", "--model", &a.model, "--stage", "swa"];
    if a.resume {
        args.push("--resume");
    }
    let minutes = a.max_minutes.map(|m| m.to_string());
    if let Some(m) = &minutes {
        args.extend(["--max-minutes", m]);
    }
    anytime(&args)?;
    if !finished(&root.join(Stage::Swa.run_dir(&a.model)))? {
        return Ok(());
    }
    anytime(&["export", "--model", &a.model, "--stage", "swa"])
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
