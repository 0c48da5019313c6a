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

/// Trains, then exports when every epoch is done.
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
    anytime(&["export", "--model", &a.model])
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
