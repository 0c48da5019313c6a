//! `anytime flops`: cumulative per-exit cost from shapes.

use super::{ModelArgs, parse_size};
use anyhow::Result;
use anytime_flops::Mode;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// Arguments of `anytime flops`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Input size, `H` or `HxW` (default: the model's data size, or 32 / 224
    /// for CIFAR / ImageNet stems).
    #[arg(long)]
    input_size: Option<String>,
    /// Print `{"flops": [...], "params": [...], "total_parameters": N}`.
    #[arg(long)]
    json: bool,
    /// Also count batch norm, resizing, concatenation and bias adds.
    #[arg(long, conflicts_with = "macs")]
    complete: bool,
    /// Count multiply-accumulates only (convolutions, linear layers,
    /// recurrent cells). Default: the model's own rule (GFNet's is this one;
    /// the others follow the MSDNet/RANet reference counter).
    #[arg(long)]
    macs: bool,
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let cfg = a.model.resolve()?;
    let model = cfg.build(VarBuilder::zeros(DType::F32, &Device::Cpu))?;
    let (h, w) = match &a.input_size {
        Some(s) => parse_size(s)?,
        None => super::models::default_size(&a.model, &cfg),
    };
    anytime_models::exit::check_input(model.as_ref(), &[1, model.in_channels(), h, w])?;
    let costs = model.exit_costs(h, w)?;
    let mode = match (a.complete, a.macs) {
        (true, _) => Mode::Complete,
        (_, true) => Mode::Macs,
        _ => costs.headline,
    };
    let counting = match mode {
        Mode::Reference => "reference",
        Mode::Complete => "complete",
        Mode::Macs => "multiply-accumulate",
    };
    if a.json {
        let mut v = serde_json::json!({
            "flops": costs.flops(mode).iter().map(|&f| f as f64).collect::<Vec<_>>(),
            "params": costs.params(),
            "total_parameters": costs.total.params,
            "input_hw": [h, w],
            "counting": counting,
        });
        if a.complete {
            v["breakdown"] = serde_json::to_value(&costs.exits)?;
        }
        outln!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    outln!("{} at {h}x{w} ({counting} counting)", cfg.arch());
    outln!("{:>4}  {:>12}  {:>10}", "exit", "MFLOPs", "M params");
    for (i, (f, p)) in costs.mflops(mode).iter().zip(costs.params()).enumerate() {
        outln!("{i:>4}  {f:>12.2}  {:>10.4}", p as f64 / 1e6);
    }
    Ok(())
}
