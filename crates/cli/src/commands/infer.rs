//! `anytime infer`: every exit's logits (and, with `--features`, every exit's
//! feature) for an input tensor.

use super::ModelArgs;
use anyhow::{Context, Result, bail};
use anytime_models::exit::check_input;
use anytime_models::registry::load_model;
use candle_core::{DType, Device};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `anytime infer`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Weights: `.safetensors`, or an official `.pth` / `.pth.tar` checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// Input safetensors file holding `input`, an f32 tensor [N, C, H, W].
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors file; receives `logits.<i>` [N, classes] per exit.
    #[arg(long)]
    output: PathBuf,
    /// Also write `features.<i>` [N, D] per exit: the vector exit i's last
    /// linear layer reads (an embedding of the image at that depth).
    #[arg(long)]
    features: bool,
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let cfg = a.model.resolve()?;
    let model = load_model(&cfg, &a.weights)?;
    let tensors = candle_core::safetensors::load(&a.input, &Device::Cpu)
        .with_context(|| format!("cannot read input {}", a.input.display()))?;
    let Some(input) = tensors.get("input") else {
        bail!("{} has no tensor named `input` (found: {:?})", a.input.display(), tensors.keys().collect::<Vec<_>>());
    };
    if input.dtype() != DType::F32 {
        bail!("{}: `input` must be f32, got {:?}", a.input.display(), input.dtype());
    }
    check_input(model.as_ref(), input.dims())?;
    let mut out: BTreeMap<String, candle_core::Tensor> = BTreeMap::new();
    for (i, o) in model.forward_exits(input, &anytime_blocks::Mode::eval())?.into_iter().enumerate() {
        out.insert(format!("logits.{i}"), o.logits);
        if a.features {
            out.insert(format!("features.{i}"), o.feature);
        }
    }
    let bytes = safetensors::serialize(out.iter(), None).context("cannot serialise the outputs")?;
    anytime_io::atomic_write(&a.output, &bytes).with_context(|| format!("cannot write {}", a.output.display()))?;
    Ok(())
}
