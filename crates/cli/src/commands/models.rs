//! `anytime models`: the registry.

use super::ModelArgs;
use anyhow::Result;
use anytime_flops::Mode;
use anytime_models::registry::{ArchConfig, REGISTRY, lookup};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

/// Arguments of `anytime models`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The input size to count a model at when none is given.
pub fn default_size(m: &ModelArgs, cfg: &ArchConfig) -> (usize, usize) {
    if let Some(Ok(e)) = m.model.as_deref().map(lookup) {
        return (e.data.input.1, e.data.input.2);
    }
    cfg.default_size()
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let mut rows = Vec::new();
    for e in REGISTRY {
        let cfg = (e.config)();
        let model = cfg.build(VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        let (_, h, w) = e.data.input;
        // Each model's own counting rule (GFNet's is multiply-accumulates).
        let costs = model.exit_costs(h, w)?;
        let mflops = costs.mflops(costs.headline);
        let dataset = match e.data.clutter {
            Some(c) => format!("{}-cluttered{}", e.data.dataset, c.canvas),
            None => e.data.dataset.to_string(),
        };
        // Found without downloading: $ANYTIME_WEIGHTS_DIR, ./weights, the Hugging Face cache.
        let weights = e.weights.as_ref().and_then(super::weights::find_local);
        let present = weights.as_ref().is_some_and(|p| p.exists());
        let accuracy = weights
            .as_ref()
            .filter(|_| present)
            .and_then(|p| anytime_io::read_meta(p).ok())
            .map(|m| m.exit_accuracy)
            .unwrap_or_default();
        rows.push(serde_json::json!({
            "name": e.name, "arch": cfg.arch(), "dataset": dataset, "exits": model.num_exits(),
            "mflops": mflops, "macs_only": costs.headline == Mode::Macs, "accuracy": accuracy, "weights": present,
            "description": e.description,
        }));
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let col = |k: &str, min: usize| rows.iter().filter_map(|r| r[k].as_str()).map(str::len).max().unwrap_or(0).max(min);
    let (wn, wd) = (col("name", 4), col("dataset", 7));
    outln!(
        "{:<wn$} {:<12} {:<wd$} {:>5}  {:<8} per-exit MFLOPs / top-1",
        "name",
        "arch",
        "dataset",
        "exits",
        "weights"
    );
    for r in &rows {
        let mut mf: Vec<String> =
            r["mflops"].as_array().into_iter().flatten().map(|v| format!("{:.1}", v.as_f64().unwrap_or(0.0))).collect();
        if r["macs_only"].as_bool() == Some(true) {
            mf.push("(MACs)".into());
        }
        let acc: Vec<String> = r["accuracy"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("{:.1}%", 100.0 * v.as_f64().unwrap_or(0.0)))
            .collect();
        outln!(
            "{:<wn$} {:<12} {:<wd$} {:>5}  {:<8} {}{}",
            r["name"].as_str().unwrap_or(""),
            r["arch"].as_str().unwrap_or(""),
            r["dataset"].as_str().unwrap_or(""),
            r["exits"].as_u64().unwrap_or(0),
            if r["weights"].as_bool() == Some(true) { "yes" } else { "no" },
            mf.join(" "),
            if acc.is_empty() { String::new() } else { format!(" / {}", acc.join(" ")) },
        );
    }
    Ok(())
}
