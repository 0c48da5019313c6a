//! See <https://github.com/matklad/cargo-xtask/>.
//!
//! `cargo xtask <task>` puts the project's slow or multi-step jobs in order:
//! every step is a call to the `anytime` binary or to cargo; the logic lives
//! in the library crates.

#[cfg(test)]
mod arch_doc;
mod bench;
mod ci;
mod cuda;
mod fuzz;
mod page;
mod results;
mod train;

use anyhow::Result;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "xtask", about = "anytime's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// The checks CI runs: formatting, clippy with -D warnings, and the tests.
    Ci,
    /// Trains a registry model with its recipe, resumably, then exports its
    /// best weights with metadata to `weights/`.
    Train(train::TrainArgs),
    /// Evaluates a registry model on the Fashion-MNIST test set (JSON).
    Eval {
        /// Registry model.
        #[arg(long)]
        model: String,
    },
    /// Times our kernels, stock Candle and PyTorch side by side (writes docs/bench.md and docs/data/bench.json).
    Bench(bench::BenchArgs),
    /// Measures every trained Fashion-MNIST model (anytime, budgeted at batch 64
    /// and 1, a 50 % calibration) into docs/data/, then regenerates
    /// docs/results.md and the plots in docs/plots/ from those reports
    /// (`--reuse`: measure only what is missing).
    Results(results::ResultsArgs),
    /// Fuzzes every parser and validator for N minutes (crashes are saved
    /// as regression inputs under crates/fuzz/regressions/).
    Fuzz(fuzz::FuzzArgs),
    /// One batch of a fuzz campaign (the child process `fuzz` runs).
    #[command(hide = true)]
    FuzzWorker(fuzz::WorkerArgs),
    /// One benchmark case in a process of its own, printing its peak
    /// resident memory (the child process `bench --memory` runs).
    #[command(hide = true)]
    BenchMemory(bench::MemoryArgs),
    /// A/B of one benchmark case in one process: a kernel choice on and off,
    /// alternated run by run; prints the median times and the median of the
    /// per-pair ratios.
    #[command(hide = true)]
    BenchAb(bench::AbArgs),
    /// SCAN's ablation: the four variants (attention, self-distillation, each
    /// on or off) trained with one short schedule and evaluated into
    /// docs/data/scan-ablation/ (resumable).
    ScanAblation(train::AblationArgs),
    /// Builds the `anytime` binary with `--features cuda` without a GPU:
    /// nvcc from PyPI in a scratch venv, stand-in libraries for the link
    /// (not part of CI).
    CheckCuda(cuda::CheckCudaArgs),
    /// Merges the JSON Lines shards of `anytime eval --per-image FILE --shard
    /// K/N` or `anytime classify --jsonl FILE --shard K/N` (in any order)
    /// into the file one unsharded run writes, checking that they belong to
    /// one run and cover every image once, and prints its summary.
    Merge {
        /// Where the merged file goes (written atomically).
        #[arg(long)]
        output: PathBuf,
        /// The shard files.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
    },
    /// Retrains every shipped Fashion-MNIST model, re-exports its weights and
    /// rewrites the results tables (`results`).
    Reproduce {
        /// Dataset family (only `fmnist` exists).
        #[arg(default_value = "fmnist")]
        what: String,
    },
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// mimalloc's `mi_option_purge_delay` (not among the constants of
/// libmimalloc-sys: its place in the option enum of mimalloc v2 and v3, just
/// before `mi_option_use_numa_nodes`, checked here).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const _: () = assert!(libmimalloc_sys::mi_option_use_numa_nodes == MI_OPTION_PURGE_DELAY + 1);

/// Whether freed memory stays mapped (`true`, set at start-up, as the CLI
/// does: see its `keep_freed_memory`) or goes back to the OS after
/// mimalloc's default 10 ms (`false`); `bench-ab --toggle keep-freed`
/// compares the two.
pub fn keep_freed_memory(keep: bool) {
    // SAFETY: setting a mimalloc option is thread-safe.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, if keep { -1 } else { 10 }) }
}

/// Returns freed memory to the OS at once from now on (the memory worker,
/// while it builds its case: memory freed while it is
/// kept is not handed back even by a later collection).
pub fn return_freed_memory_at_once() {
    // SAFETY: setting a mimalloc option is thread-safe.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}

/// Hands every freed page back to the OS now (the memory worker, before it
/// restarts its peak), then keeps freed memory again, as the binaries run.
pub fn release_freed_memory() {
    return_freed_memory_at_once();
    // SAFETY: collecting is thread-safe.
    unsafe { libmimalloc_sys::mi_collect(true) }
    keep_freed_memory_unless_chosen();
}

/// Keeps freed memory mapped unless the user chose mimalloc's purge delay
/// in `MIMALLOC_PURGE_DELAY` (e.g. 0: a lower peak, slower steps).
fn keep_freed_memory_unless_chosen() {
    match std::env::var("MIMALLOC_PURGE_DELAY").ok().and_then(|v| v.trim().parse::<std::ffi::c_long>().ok()) {
        // SAFETY: setting a mimalloc option is thread-safe.
        Some(ms) => unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) },
        None if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() => keep_freed_memory(true),
        // Unreadable: mimalloc's own reading of the variable stands.
        None => {}
    }
}

fn main() -> Result<()> {
    keep_freed_memory_unless_chosen();
    match Cli::parse().task {
        Task::Ci => ci::run(),
        Task::Fuzz(a) => fuzz::run(&a),
        Task::ScanAblation(a) => train::scan_ablation(&a),
        Task::FuzzWorker(a) => fuzz::worker(&a),
        Task::Bench(a) => bench::run(&a),
        Task::BenchMemory(a) => bench::memory_worker(&a),
        Task::BenchAb(a) => bench::ab(&a),
        Task::Train(a) => train::run(&a),
        Task::Eval { model } => train::anytime(&["eval", "--model", &model, "--json"]),
        Task::Results(a) => results::run(&a),
        Task::Reproduce { what } => train::reproduce(&what),
        Task::Merge { output, shards } => merge(&output, &shards),
        Task::CheckCuda(a) => cuda::run(&a),
    }
}

/// `cargo xtask merge`.
fn merge(output: &std::path::Path, shards: &[PathBuf]) -> Result<()> {
    use anytime_eval::shards::{Shard, merge};
    if shards.iter().any(|s| s == output) {
        anyhow::bail!("--output {} is one of the shards; write the merged file somewhere else", output.display());
    }
    let parts = shards.iter().map(|p| Shard::load(p)).collect::<Result<Vec<_>, _>>()?;
    let merged = merge(parts)?;
    merged.save(output)?;
    for s in &merged.header.skipped {
        eprintln!("skipped (unreadable): {}: {}", s.path, s.reason);
    }
    println!(
        "{} shards, {} images: {}",
        shards.len(),
        merged.header.total,
        serde_json::to_string(&anytime_eval::shards::summarize(&merged.header, &merged.records)?)?
    );
    println!("wrote {}", output.display());
    Ok(())
}
