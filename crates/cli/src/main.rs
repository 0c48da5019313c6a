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

/// mimalloc's `mi_option_purge_delay` (not among the constants of
/// libmimalloc-sys: its place in the option enum of mimalloc v2 and v3, just
/// before `mi_option_use_numa_nodes`, checked here).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const _: () = assert!(libmimalloc_sys::mi_option_use_numa_nodes == MI_OPTION_PURGE_DELAY + 1);

/// Keeps freed memory mapped instead of returning it to the OS 10 ms later
/// (mimalloc's default): every batch and training step frees and allocates
/// the same sizes again, and memory given back must be faulted in and
/// zeroed again; on the 2-core VM, with mimalloc v3, this took a MSDNet
/// training step 1.7x as long (`cargo xtask bench-ab --toggle keep-freed`)
/// and kept memory cost 13-22 % more peak (docs/log/
/// 2026-12-03-fused-inference-and-avx512.md). With mimalloc v2, which the
/// workspace builds now, returning after 10 ms measured about as fast and
/// about as high (docs/log/2026-12-03-allocator-and-backward-memory.md);
/// returning at once (`0`) still costs training steps 0.7x. A user who sets
/// `MIMALLOC_PURGE_DELAY` (e.g. `0`: memory back at once) keeps that choice.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: setting a mimalloc option is thread-safe.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Adaptive-inference (multi-exit) image classifiers: MSDNet, RANet and
/// multi-exit baselines, with real early exit.
#[derive(Parser)]
#[command(name = "anytime", version = VERSION, about)]
struct Cli {
    /// Run inference with every batch norm as a layer of its own instead of
    /// folded into the convolution before it (the default, which runs conv,
    /// batch norm and ReLU as one operation: the batch norm as a per-channel
    /// scale and shift applied as the convolution stores its output; both
    /// give the same results up to float rounding). For comparing the two
    /// paths.
    #[arg(long, global = true)]
    no_fold: bool,
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
    /// Evaluates every exit (top-1, top-5, MFLOPs, latency) of a registry model or
    /// any checkpoint on Fashion-MNIST, CIFAR or an image folder; budgeted
    /// classification with real early exit; per-image results in shards.
    Eval(commands::eval::Args),
    /// Writes a finished run's best weights, with metadata, for shipping.
    Export(commands::export::Args),
    /// Shows the shipped MSDNet on the bundled sample: every exit, then real early exit.
    Demo(commands::demo::Args),
    /// Computes exit thresholds for a budget on the held-out split (a registry
    /// model or any checkpoint, any --data).
    Calibrate(commands::calibrate::Args),
    /// Classifies image files or folders under a FLOP budget (real early exit)
    /// or a deadline; text lines, or JSON Lines in shards.
    Classify(commands::classify::Args),
}

/// An error message on one line: without the backtrace frames Candle
/// appends to its errors when `RUST_BACKTRACE` is set (`   N: symbol` and
/// `      at file:line` lines), other line breaks as spaces.
fn one_line(msg: &str) -> String {
    let frame = |l: &str| {
        let t = l.trim_start();
        let indented = t.len() < l.len();
        let numbered = t.split_once(": ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        (indented && (numbered || t.starts_with("at "))) || t == "stack backtrace:"
    };
    let lines: Vec<&str> = msg.lines().filter(|l| !frame(l) && !l.trim().is_empty()).map(str::trim).collect();
    lines.join(" ")
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
    keep_freed_memory();
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
            // One line, like every other failure: clap's message with its
            // continuation lines (e.g. what an argument conflicts with), without
            // the usage and tips.
            let text = e.to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let line = parts.join(" ");
            let line = line.trim_start_matches("error: ");
            let line = if line.is_empty() { "invalid arguments" } else { line };
            eprintln!("error: {line} (see `anytime --help`)");
            return ExitCode::FAILURE;
        }
    };
    anytime_blocks::mode::set_fold_batch_norm(!cli.no_fold);
    // On a thread of the kernels' pool, so that each parallel kernel keeps
    // part of its work on this thread instead of sleeping until the pool
    // is done (see `anytime_ops::on_worker`).
    let result = anytime_ops::on_worker(move || match cli.command {
        Command::Infer(a) => commands::infer::run(a),
        Command::Flops(a) => commands::flops::run(a),
        Command::Models(a) => commands::models::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::Classify(a) => commands::classify::run(a),
    });
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
            eprintln!("error: {}", one_line(&msg));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_line_drops_backtrace_frames() {
        let msg = "cannot load x: shape mismatch\n   0: candle_core::error::Error::bt\n             at /src/error.rs:260:25\n  12: main\nwhile building";
        assert_eq!(super::one_line(msg), "cannot load x: shape mismatch while building");
        assert_eq!(super::one_line("a\nb"), "a b");
    }
}
