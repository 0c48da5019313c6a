//! `cargo xtask fuzz --minutes N`: runs every fuzz target of `anytime-fuzz`
//! with fresh seeds for N minutes, each batch in a child process under a
//! 4 GiB address-space limit. A panic, an abort or a death by memory saves
//! the input under `crates/fuzz/regressions/<target>-<hash>.bin`, which
//! `cargo test -p anytime-fuzz` replays from then on. Prints the counts.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Arguments of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Only this target (default: all, in turn).
    #[arg(long)]
    target: Option<String>,
    /// Inputs per child process.
    #[arg(long, default_value_t = 20_000)]
    batch: usize,
}

/// Arguments of the child process (`cargo xtask fuzz-worker`).
#[derive(clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    iterations: usize,
    /// Where each input is written before it runs.
    #[arg(long)]
    last: PathBuf,
}

const MEMORY_LIMIT: u64 = 4 << 30;

fn regressions() -> PathBuf {
    crate::root().join("crates/fuzz/regressions")
}

fn save(target: &str, input: &[u8]) -> Result<PathBuf> {
    let digest: String = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        input.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let path = regressions().join(format!("{target}-{digest}.bin"));
    anytime_io::atomic_write(&path, input)?;
    Ok(path)
}

/// The child: runs one batch, writing each input to `last` first; a caught
/// panic exits with status 2 after writing the input there.
pub fn worker(a: &WorkerArgs) -> Result<()> {
    std::panic::set_hook(Box::new(|_| {}));
    let t = anytime_fuzz::target(&a.target).with_context(|| format!("no fuzz target {}", a.target))?;
    let result = anytime_fuzz::fuzz_with(t, a.seed, a.iterations, |input| {
        let _ = std::fs::write(&a.last, input);
    });
    match result {
        Ok(_) => Ok(()),
        Err(c) => {
            std::fs::write(&a.last, &c.input)?;
            eprintln!("{}: {}", c.target, c.message);
            std::process::exit(2);
        }
    }
}

fn spawn(target: &str, seed: u64, iterations: usize, last: &Path) -> Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    let mut c = Command::new(exe);
    c.args(["fuzz-worker", "--target", target, "--seed", &seed.to_string(), "--iterations", &iterations.to_string()])
        .arg("--last")
        .arg(last);
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: MEMORY_LIMIT, rlim_max: MEMORY_LIMIT };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(c.status()?)
}

/// Runs the campaign.
pub fn run(a: &FuzzArgs) -> Result<()> {
    if !(a.minutes > 0.0 && a.minutes.is_finite() && a.minutes <= 7.0 * 24.0 * 60.0) {
        bail!("--minutes must be in (0, 10080], got {}", a.minutes);
    }
    let targets: Vec<&str> = match &a.target {
        Some(t) => vec![anytime_fuzz::target(t).with_context(|| format!("no fuzz target {t}"))?.name],
        None => anytime_fuzz::TARGETS.iter().map(|t| t.name).collect(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let last = std::env::temp_dir().join(format!("anytime-fuzz-last-{}", std::process::id()));
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut counts: Vec<(usize, usize)> = vec![(0, 0); targets.len()];
    let mut round = 0u64;
    while Instant::now() < deadline {
        for (i, t) in targets.iter().enumerate() {
            let seed = base.wrapping_mul(1_000_003).wrapping_add(round * 97 + i as u64);
            let status = spawn(t, seed, a.batch, &last)?;
            counts[i].0 += a.batch;
            if !status.success() {
                let input = std::fs::read(&last).unwrap_or_default();
                let path = save(t, &input)?;
                counts[i].1 += 1;
                eprintln!("{t}: crash ({status}) saved to {}", path.display());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        round += 1;
    }
    let _ = std::fs::remove_file(&last);
    println!("fuzzed for {:.1} minutes ({} rounds of {} inputs per target):", a.minutes, round, a.batch);
    for (t, (n, crashes)) in targets.iter().zip(&counts) {
        println!("  {t:<12} {n:>10} inputs  {crashes} crashes");
    }
    if counts.iter().any(|c| c.1 > 0) {
        bail!("crashes were found; their inputs are in {}", regressions().display());
    }
    Ok(())
}
