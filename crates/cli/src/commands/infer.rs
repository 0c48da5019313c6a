//! `anytime infer`: every exit's logits (and, with `--features`, every exit's
//! feature, and whatever else a model's steps produce, such as GFNet's
//! actions and patch coordinates) for an input tensor.

use super::ModelArgs;
use anyhow::{Context, Result, bail};
use anytime_models::exit::check_input;
use anytime_models::registry::load_model_on;
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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
    /// Output safetensors file; receives `logits.<i>` [N, classes] per exit
    /// (GFNet also `actions.<i>` f32 [N, 2] and `coords.<i>` i32 [N, 2], row
    /// then column, for each focus step i ≥ 1).
    #[arg(long)]
    output: PathBuf,
    /// Also write `features.<i>` [N, D] per exit: the vector exit i's last
    /// linear layer reads (an embedding of the image at that depth).
    #[arg(long)]
    features: bool,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (with a binary built with the `cuda`, `cudnn` or `metal` feature). Our
    /// CPU kernels are replaced by Candle's stock ops on other devices.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The largest input `infer` reads, in bytes (1 GiB of f32 values).
const MAX_INPUT_BYTES: u64 = 1 << 30;
/// Samples per forward pass: the activations' memory stays bounded whatever
/// the input's batch size.
const CHUNK: usize = 64;

/// Reads the f32 tensor `input` of a safetensors file, checking its header
/// (dtype, a shape the model takes, the size) before reading any data, and
/// then that every value is finite.
fn read_input(path: &Path, model: &dyn anytime_models::MultiExit) -> Result<Tensor> {
    let shown = path.display();
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read input {shown}"))?;
    let len = f.metadata().with_context(|| format!("cannot read input {shown}"))?.len();
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8).map_err(|_| anyhow::anyhow!("input {shown}: not a safetensors file ({len} bytes)"))?;
    let n = u64::from_le_bytes(n8);
    if n > 100 << 20 || n.saturating_add(8) > len {
        bail!("input {shown}: not a safetensors file (a header of {n} bytes in a file of {len})");
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_context(|| format!("cannot read input {shown}"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| anyhow::anyhow!("input {shown}: bad safetensors header: {e}"))?;
    let Some(entry) = header.get("input") else {
        let names: Vec<&str> = header
            .as_object()
            .map(|o| o.keys().map(String::as_str).filter(|k| *k != "__metadata__").collect())
            .unwrap_or_default();
        bail!("input {shown} has no tensor named `input` (found: {})", names.join(", "));
    };
    let dtype = entry.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
    if dtype != "F32" {
        bail!("input {shown}: `input` must be f32, got {dtype}");
    }
    let dims: Vec<usize> = entry
        .get("shape")
        .and_then(|s| s.as_array())
        .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect())
        .with_context(|| format!("input {shown}: `input` has no valid shape"))?;
    check_input(model, &dims).with_context(|| format!("input {shown}"))?;
    let bytes = dims.iter().try_fold(4u64, |acc, &d| acc.checked_mul(d as u64)).unwrap_or(u64::MAX);
    if bytes > MAX_INPUT_BYTES {
        bail!("input {shown}: `input` {dims:?} is {bytes} bytes, more than the 1 GiB `infer` reads at once; split it");
    }
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .and_then(|a| a.iter().map(|v| v.as_u64()).collect())
        .filter(|o: &Vec<u64>| o.len() == 2 && o[0] <= o[1])
        .with_context(|| format!("input {shown}: `input` has no valid data offsets"))?;
    if offsets[1] - offsets[0] != bytes || (8 + n).saturating_add(offsets[1]) > len {
        bail!("input {shown}: `input` {dims:?} needs {bytes} bytes; the file is truncated or its offsets are wrong");
    }
    f.seek(SeekFrom::Start(8 + n + offsets[0])).with_context(|| format!("cannot read input {shown}"))?;
    let mut raw = vec![0u8; bytes as usize];
    f.read_exact(&mut raw).with_context(|| format!("cannot read input {shown}"))?;
    let values: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let per = values.len() / dims[0].max(1);
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!("input {shown}: sample {} holds NaN or infinite values", i / per.max(1));
    }
    Ok(Tensor::from_vec(values, dims, &Device::Cpu)?)
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    anytime_io::check_replaceable(&a.output)
        .with_context(|| format!("cannot write --output {}", a.output.display()))?;
    let mut inputs = vec![a.weights.as_path(), a.input.as_path()];
    if let Some(c) = &a.model.config {
        inputs.push(c.as_path());
    }
    super::ensure_not_input("--output", &a.output, &inputs)?;
    let device = super::parse_device(&a.device)?;
    let cfg = a.model.resolve()?;
    let model = load_model_on(&cfg, &a.weights, &device)?;
    let input = read_input(&a.input, model.as_ref())?.to_device(&device)?;
    let n = input.dim(0)?;
    // Per output name, the chunks in order: `logits.<k>`, `features.<k>`
    // and each stage's extras (`<name>.<k>`, e.g. GFNet's actions).
    let mut parts: BTreeMap<String, Vec<Tensor>> = BTreeMap::new();
    let mode = anytime_blocks::Mode::inference();
    for start in (0..n).step_by(CHUNK) {
        let xs = input.narrow(0, start, CHUNK.min(n - start))?;
        let mut state = model.begin(&xs, &mode)?;
        for k in 0..model.num_exits() {
            let o = model.advance(&mut state, &mode)?;
            parts.entry(format!("logits.{k}")).or_default().push(o.logits);
            if a.features {
                parts.entry(format!("features.{k}")).or_default().push(o.feature);
            }
            for (name, t) in model.stage_extras(&mut state) {
                parts.entry(format!("{name}.{k}")).or_default().push(t);
            }
        }
    }
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, chunks) in parts {
        out.insert(name, Tensor::cat(&chunks, 0)?.to_device(&Device::Cpu)?);
    }
    let bytes = safetensors::serialize(out.iter(), None).context("cannot serialise the outputs")?;
    anytime_io::atomic_write(&a.output, &bytes).with_context(|| format!("cannot write {}", a.output.display()))?;
    Ok(())
}
