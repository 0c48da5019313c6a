//! `anytime`: adaptive-inference image classification from the command line.
//!
//! Subcommands: `infer` (all exits' logits for an input tensor), `flops`
//! (per-exit cost from shapes), `models` (the registry), and the training,
//! evaluation and budgeted-classification commands. Every failure prints one
//! line, `error: ...`, and exits with status 1.

mod commands;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// `anytime --version`: the package version and the commit the binary was
/// built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("ANYTIME_GIT_COMMIT"), ")");

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Adaptive-inference (multi-exit) image classifiers: MSDNet, RANet and
/// multi-exit baselines, with real early exit.
#[derive(Parser)]
#[command(name = "anytime", version = VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a model on an input tensor and writes every exit's logits.
    Infer(commands::infer::Args),
    /// Prints the cumulative per-exit MACs and parameters of a model, from shapes.
    Flops(commands::flops::Args),
    /// Lists the model registry.
    Models(commands::models::Args),
    /// Trains a registry model with its recipe (resumable).
    Train(commands::train::Args),
    /// Evaluates every exit of a registry model on Fashion-MNIST.
    Eval(commands::eval::Args),
    /// Writes a finished run's best weights, with metadata, for shipping.
    Export(commands::export::Args),
    /// Shows the shipped MSDNet on the bundled sample: every exit, then real early exit.
    Demo(commands::demo::Args),
    /// Computes exit thresholds for a budget on the held-out split.
    Calibrate(commands::calibrate::Args),
    /// Classifies images under a FLOP budget (real early exit) or a deadline.
    Classify(commands::classify::Args),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`anytime flops | head`), as Unix tools do,
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // SAFETY: first thing in main, before any thread exists.
    unsafe { anytime_ops::no_barrier_spin_unless_set() };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
        Err(e) => {
            // One line, like every other failure.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
            eprintln!("error: {first} (see `anytime --help`)");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Infer(a) => commands::infer::run(a),
        Command::Flops(a) => commands::flops::run(a),
        Command::Models(a) => commands::models::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::Classify(a) => commands::classify::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The context chain on one line; a cause whose text the line
            // already holds (library errors often print their source) is
            // not repeated.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
