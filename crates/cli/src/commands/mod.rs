//! One module per subcommand, plus shared helpers.

/// `println!` that returns an error instead of panicking when standard
/// output cannot be written (a full device). A closed pipe ends the process
/// quietly through the default SIGPIPE disposition `main` restores.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}"))?
    }};
}

/// `print!` with the error handling of `outln!`.
#[allow(unused_macros)]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)
            .map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}"))?
    }};
}

pub mod calibrate;
pub mod classify;
pub mod demo;
pub mod eval;
pub mod export;
pub mod flops;
pub mod infer;
pub mod input;
pub mod models;
pub mod num;
pub mod train;
pub mod weights;

pub use weights::{WeightsArgs, resolve_weights};

use anyhow::{Context, Result, bail};
use anytime_models::registry::{ArchConfig, lookup};
use std::path::{Path, PathBuf};

/// The device `--device` names: `cpu`, `cuda` / `cuda:N` or `metal`, each
/// available when the binary was built with the cargo feature of the same
/// name (`cudnn` implies `cuda`).
pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    let built_without = |what: &str, feature: &str| {
        anyhow::anyhow!(
            "--device {s}: this binary was built without {what} support; rebuild with `cargo build --release -p anytime-cli --features {feature}`"
        )
    };
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        "metal" if candle_core::utils::metal_is_available() => {
            candle_core::Device::new_metal(0).with_context(|| format!("--device {s}: no Metal device"))
        }
        "metal" => Err(built_without("Metal", "metal")),
        _ => {
            let Some(rest) = s.strip_prefix("cuda") else {
                bail!("--device must be cpu, cuda, cuda:N or metal, got '{s}'");
            };
            let ordinal = match rest.strip_prefix(':') {
                None if rest.is_empty() => 0,
                Some(n) => n.parse::<usize>().with_context(|| format!("--device {s}: '{n}' is not a GPU number"))?,
                None => bail!("--device must be cpu, cuda, cuda:N or metal, got '{s}'"),
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(built_without("CUDA", "cuda"));
            }
            candle_core::Device::new_cuda(ordinal).with_context(|| format!("--device {s}: no such CUDA device"))
        }
    }
}

/// Where the model comes from: a registry name, or an architecture plus a
/// configuration file.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// A registered model name (see `anytime models`).
    #[arg(long, conflicts_with_all = ["arch", "config"])]
    pub model: Option<String>,
    /// Architecture of a configuration file (the list comes from the
    /// architecture table, `anytime_models::registry::ARCHS`).
    #[arg(long, requires = "config", help = anytime_models::registry::arch_help())]
    pub arch: Option<String>,
    /// Configuration JSON: the project's own form, or a reference-style object
    /// with `args` (argparse namespace) or `cli_args` (the training command).
    #[arg(long, requires = "arch")]
    pub config: Option<PathBuf>,
}

impl ModelArgs {
    /// The configuration these arguments name.
    pub fn resolve(&self) -> Result<ArchConfig> {
        match (&self.model, &self.arch, &self.config) {
            (Some(name), _, _) => Ok((lookup(name)?.config)()),
            (None, Some(arch), Some(path)) => read_config(arch, path),
            _ => bail!("name a model with --model NAME, or give --arch ARCH --config FILE"),
        }
    }
}

/// Reads a configuration file for `arch`.
pub fn read_config(arch: &str, path: &Path) -> Result<ArchConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    ArchConfig::from_json(arch, &v).with_context(|| format!("config {}", path.display()))
}

/// Refuses an output that is one of the command's inputs (the same file,
/// through any path or hard link): replacing it would destroy the input.
pub fn ensure_not_input(option: &str, output: &Path, inputs: &[&Path]) -> Result<()> {
    let Ok(out) = std::fs::metadata(output) else { return Ok(()) };
    let same = |p: &Path| -> bool {
        let Ok(m) = std::fs::metadata(p) else { return false };
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            m.dev() == out.dev() && m.ino() == out.ino()
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            std::fs::canonicalize(p).ok() == std::fs::canonicalize(output).ok()
        }
    };
    if let Some(input) = inputs.iter().find(|p| same(p)) {
        bail!("{option} {} is also an input ({}); write the output somewhere else", output.display(), input.display());
    }
    Ok(())
}

/// Parses `H` or `HxW`.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let parse = |p: &str| p.trim().parse::<usize>().with_context(|| format!("bad input size '{s}': expected H or HxW"));
    let (h, w) = match s.split_once(['x', 'X']) {
        Some((h, w)) => (parse(h)?, parse(w)?),
        None => {
            let h = parse(s)?;
            (h, h)
        }
    };
    if h == 0 || w == 0 {
        bail!("bad input size '{s}': sizes must be at least 1");
    }
    Ok((h, w))
}

/// Loads a registry model with its weights (strict key checking) onto
/// `device`.
pub fn load_registry_model_on(
    entry: &anytime_models::registry::ModelEntry,
    w: &WeightsArgs,
    device: &candle_core::Device,
) -> Result<Box<dyn anytime_models::MultiExit>> {
    load_registry_model_from(entry, &resolve_weights(entry, w)?, device)
}

/// [`load_registry_model_on`] from an already resolved weights file.
pub fn load_registry_model_from(
    entry: &anytime_models::registry::ModelEntry,
    path: &Path,
    device: &candle_core::Device,
) -> Result<Box<dyn anytime_models::MultiExit>> {
    let cfg = (entry.config)();
    if let Ok(meta) = anytime_io::read_meta(path) {
        if !meta.architecture.is_empty() && meta.architecture != cfg.arch() {
            bail!(
                "{} holds {} weights, but {} is a {} model",
                path.display(),
                meta.architecture,
                entry.name,
                cfg.arch()
            );
        }
        let own = serde_json::to_value(&cfg)?;
        if !meta.config.is_null() && meta.config != own {
            bail!(
                "{} holds weights of another {} configuration than {} (file: {}; {}: {})",
                path.display(),
                cfg.arch(),
                entry.name,
                meta.config,
                entry.name,
                own
            );
        }
    }
    Ok(anytime_models::registry::load_model_on(&cfg, path, device)?)
}
