//! `cargo xtask bench`: our CPU kernels, stock Candle and PyTorch eager, side
//! by side, in one run, with the same thread count.
//!
//! Prints, per case, the median time of each, the ratios to PyTorch, the
//! GFLOP/s reached and the share of the machine's peak (a large f32 matmul
//! measured in the same run), and writes the table to `docs/bench.md` and the
//! report to `docs/data/bench.json` (the speed table of `docs/results.md`).

use anyhow::{Context, Result, bail};
use anytime_models::MultiExit;
use anytime_models::registry::ArchConfig;
use anytime_ops::conv::{Conv2dParams, conv2d};
use anytime_ops::norm::batch_norm_train;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Instant;

/// Arguments of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Python with torch; default: `.venv-bench/bin/python`, created with
    /// `python3 -m venv` and `pip install torch` when missing.
    #[arg(long)]
    python: Option<String>,
    /// Threads for every side (rayon, candle and torch).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Skip the model cases.
    #[arg(long)]
    kernels_only: bool,
    /// Run only the cases whose name contains this text (docs/bench.md is
    /// then left as it is).
    #[arg(long)]
    only: Option<String>,
    /// Run our convolutions through im2col instead of the shifted GEMMs (to compare the two; docs/bench.md is then left as it is).
    #[arg(long)]
    im2col: bool,
    /// Run the shifted convolutions as one GEMM per kernel tap instead of the AVX2/FMA micro-kernels (to compare the two; docs/bench.md is then left as it is).
    #[arg(long)]
    gemm_taps: bool,
    /// Run the direct convolution kernel in its AVX2/FMA form on an AVX-512
    /// CPU (to compare the two; docs/bench.md is then left as it is).
    #[arg(long)]
    no_avx512: bool,
    /// Run inference with every batch norm as a layer of its own instead of
    /// folded into its convolution (to compare the two; docs/bench.md is
    /// then left as it is).
    #[arg(long)]
    no_fold: bool,
    /// Rounds: in each, every case is timed on our side and then on the
    /// torch side (one long-lived torch process), so load that comes and goes
    /// hits both sides alike; a case's ratio is the median of its per-round
    /// ratios.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Also measure the peak resident memory of every model case (training
    /// step and forward at batch 64 and more), each side in a process of its
    /// own: ours (this binary) and torch (`torch_bench.py --memory`).
    #[arg(long)]
    memory: bool,
}

/// Arguments of the hidden `bench-memory` task.
#[derive(clap::Args)]
pub struct MemoryArgs {
    /// The case's name.
    #[arg(long)]
    case: String,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Runs of the case (more: a longer profile, e.g. under `perf record`).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// A size field of `/proc/self/status` in MiB: `VmRSS` (resident now) or
/// `VmHWM` (the peak so far); `None` where there is no such file.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs case `a.case` `a.repeat` times (three by default) in this process
/// and prints the case's peak resident memory in MiB: the process's peak
/// while it runs, less the resident size of the bare binary before any case
/// was built (torch's side: less Python with torch imported). Only this
/// case is built, with freed memory returned to the OS at once, and what is
/// left free is handed back before the peak is restarted; the runs keep
/// freed memory, as the binaries do.
pub fn memory_worker(a: &MemoryArgs) -> Result<()> {
    // SAFETY: set before any thread of ours starts; read by rayon and candle.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        anytime_ops::no_barrier_spin_unless_set();
    }
    let base = status_mib("VmRSS").context("no /proc/self/status")?;
    crate::return_freed_memory_at_once();
    let mut case = build_case(&a.case, false)?;
    crate::release_freed_memory();
    // Restart the high-water mark from the current resident size (Linux ≥
    // 4.0, `clear_refs` value 5).
    std::fs::write("/proc/self/clear_refs", "5").context("cannot reset the peak resident size")?;
    let run = &mut case.run;
    anytime_ops::on_worker(|| (0..a.repeat.max(1)).try_for_each(|_| run()))?;
    println!("{}", status_mib("VmHWM").context("no /proc/self/status")? - base);
    Ok(())
}

/// Arguments of the hidden `bench-ab` task.
#[derive(clap::Args)]
pub struct AbArgs {
    /// The case's name.
    #[arg(long)]
    case: String,
    /// What to switch: `fold` (batch norms folded into convolutions at
    /// inference), `avx512` (the AVX-512 form of the direct kernel),
    /// `direct` (the direct kernel against one GEMM per tap), `keep-freed`
    /// (freed memory kept mapped against returned to the OS) or
    /// `depthwise-padded` (the padded-plane depthwise kernels against the
    /// row-by-row ones) or `winograd` (the Winograd forward of 3×3 stride-1
    /// convolutions against the direct kernel).
    #[arg(long)]
    toggle: String,
    /// Pairs of runs.
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// Times case `a.case` with `a.toggle` on and off, alternating (on, off, on,
/// off …, after two warm-up runs each), and prints both medians and the
/// median and range of the per-pair ratios on / off.
pub fn ab(a: &AbArgs) -> Result<()> {
    // SAFETY: set before any thread of ours starts; read by rayon and candle.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        anytime_ops::no_barrier_spin_unless_set();
    }
    let set: fn(bool) = match a.toggle.as_str() {
        "fold" => anytime_blocks::mode::set_fold_batch_norm,
        "avx512" => anytime_ops::conv::set_avx512_kernel,
        "direct" => anytime_ops::conv::set_direct_kernel,
        "keep-freed" => crate::keep_freed_memory,
        "depthwise-padded" => anytime_ops::conv::set_depthwise_padded,
        "winograd" => anytime_ops::conv::set_winograd,
        other => bail!("unknown toggle '{other}' (fold, avx512, direct, keep-freed, depthwise-padded or winograd)"),
    };
    let mut case = build_case(&a.case, false)?;
    let (mut on, mut off, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let run = &mut case.run;
    anytime_ops::on_worker(|| -> Result<()> {
        for i in 0..a.pairs.max(1) + 2 {
            let mut time = |flag: bool| -> Result<f64> {
                set(flag);
                let t = Instant::now();
                run()?;
                Ok(t.elapsed().as_secs_f64() * 1e3)
            };
            let (t_on, t_off) = (time(true)?, time(false)?);
            if i >= 2 {
                on.push(t_on);
                off.push(t_off);
                ratios.push(t_on / t_off);
            }
        }
        Ok(())
    })?;
    set(true);
    let r = RatioSpread::of(&ratios).context("no runs")?;
    println!(
        "{}: {} on {:.2} ms, off {:.2} ms (medians of {}); on / off {:.3} (range {:.3}–{:.3})",
        a.case,
        a.toggle,
        median(&on).unwrap_or(f64::NAN),
        median(&off).unwrap_or(f64::NAN),
        on.len(),
        r.median,
        r.lo,
        r.hi
    );
    Ok(())
}

/// Whether a case's peak memory is measured: model cases at batch 64 or
/// more (training steps and forwards).
fn measures_memory(spec: &Value) -> bool {
    matches!(spec["kind"].as_str(), Some("model" | "registry"))
        && spec["n"].as_u64().is_some_and(|n| n >= 16)
        && matches!(spec["mode"].as_str(), Some("train" | "forward"))
}

/// Peak resident memory of case `name` on both sides, each in a fresh
/// process, MiB: (ours, torch).
fn case_memory(
    py: &str,
    spec_path: &std::path::Path,
    threads: usize,
    name: &str,
) -> Result<(Option<f64>, Option<f64>)> {
    let read = |out: std::process::Output| -> Option<f64> {
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten()
    };
    let ours = Command::new(std::env::current_exe()?)
        .args(["bench-memory", "--case", name, "--threads", &threads.to_string()])
        .output()
        .context("running the memory worker")?;
    let torch = Command::new(py)
        .arg(crate::root().join("xtask/bench/torch_bench.py"))
        .arg("--memory")
        .arg(spec_path)
        .arg(threads.to_string())
        .arg(name)
        .output()
        .context("running the torch memory case")?;
    Ok((read(ours), read(torch)))
}

/// One case of a full benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchCase {
    /// The case, e.g. `conv 3x3/1 16->16 28x28 n64 fwd`.
    pub name: String,
    /// Our median time, ms.
    pub ours_ms: f64,
    /// Stock Candle's median time, ms (`None`: it failed).
    pub stock_ms: Option<f64>,
    /// PyTorch's median time, ms (`None`: no torch side for this case).
    pub torch_ms: Option<f64>,
    /// GFLOP/s of ours (`None`: no operation count for this case).
    pub gflops: Option<f64>,
    /// ours / torch as the median of per-round ratios, with their range
    /// (`None`: no torch side, or a report from before the rounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<RatioSpread>,
    /// Peak resident memory of a process running only this case, ours and
    /// torch's, MiB (`bench --memory`; `None`: not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mib: Option<(Option<f64>, Option<f64>)>,
}

/// The per-round ratios of a case: the median and the range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioSpread {
    /// Median of the per-round ratios.
    pub median: f64,
    /// Smallest per-round ratio.
    pub lo: f64,
    /// Largest per-round ratio.
    pub hi: f64,
    /// Rounds.
    pub rounds: u32,
}

impl RatioSpread {
    /// The median and range of `ratios` (none: `None`).
    pub fn of(ratios: &[f64]) -> Option<Self> {
        let mut r: Vec<f64> = ratios.iter().copied().filter(|x| x.is_finite()).collect();
        if r.is_empty() {
            return None;
        }
        r.sort_by(f64::total_cmp);
        let median = if r.len() % 2 == 1 { r[r.len() / 2] } else { (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0 };
        Some(Self { median, lo: r[0], hi: r[r.len() - 1], rounds: r.len() as u32 })
    }
}

/// When, with what and where a benchmark ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchProvenance {
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// Commit of the measured build.
    pub commit: String,
    /// The machine.
    pub machine: String,
}

/// A full `cargo xtask bench` run, as `docs/data/bench.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// When and where.
    pub measured: BenchProvenance,
    /// Threads of every side.
    pub threads: usize,
    /// torch's version.
    pub torch: String,
    /// GFLOP/s of a 2048³ f32 matmul with the gemm crate, same run.
    pub peak_gflops: f64,
    /// Our convolution micro-kernels on this CPU (`AVX2/FMA` or `generic`;
    /// absent in reports from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<String>,
    /// The cases, in order.
    pub cases: Vec<BenchCase>,
    /// Where the numbers come from, if not from a run writing this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl BenchReport {
    /// The Markdown table of `docs/bench.md`.
    pub fn table(&self) -> String {
        let fmt = |t: Option<f64>| t.map_or("—".to_string(), |t| format!("{t:.2}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "—".into(),
        };
        let mut table = String::from(
            "| case | ours ms | stock Candle ms | torch ms | ours / torch | per-round range | stock / torch | ours GFLOP/s | % of peak |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for c in &self.cases {
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.name,
                fmt(Some(c.ours_ms)),
                fmt(c.stock_ms),
                fmt(c.torch_ms),
                c.ratio.map_or_else(|| ratio(Some(c.ours_ms), c.torch_ms), |r| format!("{:.2}", r.median)),
                c.ratio.map_or("—".into(), |r| format!("{:.2}–{:.2} ({} rounds)", r.lo, r.hi, r.rounds)),
                ratio(c.stock_ms, c.torch_ms),
                c.gflops.map_or("—".into(), |g| format!("{g:.1}")),
                c.gflops.map_or("—".into(), |g| format!("{:.0}%", 100.0 * g / self.peak_gflops)),
            ));
        }
        let measured: Vec<&BenchCase> = self.cases.iter().filter(|c| c.peak_mib.is_some()).collect();
        if !measured.is_empty() {
            table.push_str(
                "\nPeak resident memory of the case, MiB: a process of its own runs it three times; its peak \
                 resident size less its size before the case was built (ours: the bare binary, which keeps freed \
                 memory mapped; torch: Python with torch imported).\n\n| case | ours | torch | ours / torch \
                 |\n|---|---|---|---|\n",
            );
            for c in measured {
                let (o, t) = c.peak_mib.unwrap_or((None, None));
                table.push_str(&format!("| {} | {} | {} | {} |\n", c.name, fmt(o), fmt(t), ratio(o, t)));
            }
        }
        table
    }
}

fn median_time(mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    for _ in 0..2 {
        f()?;
    }
    let mut times = Vec::new();
    while times.len() < 3 || (times.iter().sum::<f64>() < 0.5 && times.len() < 20) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn rand(dims: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1.0, dims, &Device::Cpu)
}

/// A benchmark case: its JSON description (shared with the torch script),
/// its operation count per run, and a runner for our side.
struct Case {
    spec: Value,
    flops: Option<f64>,
    run: Box<dyn FnMut() -> candle_core::Result<()> + Send>,
}

/// A case by name, built on demand: a process measuring one case's memory
/// builds that case alone (building the others and dropping them left tens
/// of MiB resident in the allocator).
struct Lazy {
    name: String,
    build: Box<dyn FnOnce() -> Result<Case>>,
}

impl Lazy {
    fn new(name: String, build: impl FnOnce() -> Result<Case> + 'static) -> Self {
        Self { name, build: Box::new(build) }
    }

    /// The built case, its name checked against the one promised.
    fn build(self) -> Result<Case> {
        let case = (self.build)()?;
        if case.spec["name"] != self.name.as_str() {
            bail!("case '{}' was built as '{}'", self.name, case.spec["name"]);
        }
        Ok(case)
    }
}

/// Builds the case named `name` alone.
fn build_case(name: &str, kernels_only: bool) -> Result<Case> {
    match cases(kernels_only)?.into_iter().find(|c| c.name == name) {
        Some(c) => c.build(),
        None => bail!("no benchmark case named '{name}'"),
    }
}

#[allow(clippy::too_many_arguments)] // one argument per geometry parameter
fn conv(n: usize, cin: usize, cout: usize, hw: usize, k: usize, stride: usize, groups: usize, backward: bool) -> Lazy {
    let kind = if groups == cin && groups > 1 { "depthwise" } else { "conv" };
    let name =
        format!("{kind} {k}x{k}/{stride} {cin}->{cout} {hw}x{hw} n{n} {}", if backward { "fwd+bwd" } else { "fwd" });
    Lazy::new(name.clone(), move || {
        let x = Var::from_tensor(&rand(&[n, cin, hw, hw])?)?;
        let w = Var::from_tensor(&rand(&[cout, cin / groups, k, k])?)?;
        let p = Conv2dParams { stride, padding: k / 2, dilation: 1, groups };
        let out = p.out_size(hw, k).context("kernel too large")?;
        let macs = (n * cout * cin / groups * k * k * out * out) as f64;
        Ok(Case {
            spec: json!({"kind": "conv", "name": name, "n": n, "cin": cin, "cout": cout, "hw": hw, "k": k, "stride": stride, "groups": groups, "backward": backward}),
            flops: Some(2.0 * macs * if backward { 3.0 } else { 1.0 }),
            run: Box::new(move || {
                let y = conv2d(x.as_tensor(), w.as_tensor(), None, p)?;
                if backward {
                    y.sum_all()?.backward()?;
                } else {
                    y.sum_all()?;
                }
                Ok(())
            }),
        })
    })
}

fn bn(n: usize, c: usize, hw: usize) -> Lazy {
    let name = format!("batch norm + ReLU train fwd+bwd {c}ch {hw}x{hw} n{n}");
    Lazy::new(name.clone(), move || {
        let x = Var::from_tensor(&rand(&[n, c, hw, hw])?)?;
        let g = Var::from_tensor(&Tensor::ones(c, DType::F32, &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::zeros(c, DType::F32, &Device::Cpu)?)?;
        Ok(Case {
            spec: json!({"kind": "bn", "name": name, "n": n, "c": c, "hw": hw}),
            flops: None,
            run: Box::new(move || {
                batch_norm_train(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5, true)?.ys.sum_all()?.backward()?;
                Ok(())
            }),
        })
    })
}

/// A MobileNetV3 inverted-residual block (gen-efficientnet's layout), the
/// forward in eval mode or a training step's forward and backward.
#[allow(clippy::too_many_arguments)]
fn inverted_residual(
    n: usize,
    c: usize,
    hw: usize,
    k: usize,
    expansion: f64,
    se: bool,
    hard_swish: bool,
    train: bool,
) -> Lazy {
    use anytime_blocks::mobilenet::{InvertedResidual, make_divisible};
    let mid = make_divisible(c as f64 * expansion);
    let name = format!(
        "inverted residual {k}x{k} {c}->{mid}->{c}{}{} {hw}x{hw} n{n} {}",
        if se { " SE" } else { "" },
        if hard_swish { " hswish" } else { " relu" },
        if train { "train fwd+bwd" } else { "fwd" }
    );
    Lazy::new(name.clone(), move || {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let block = InvertedResidual::new(vb, c, c, k, 1, expansion, se, hard_swish)?;
        let x = rand(&[n, c, hw, hw])?;
        let red = make_divisible(mid as f64 * 0.25);
        let px = (n * hw * hw) as f64;
        let macs = px * (2 * c * mid + mid * k * k) as f64 + if se { (n * 2 * mid * red) as f64 } else { 0.0 };
        let mode = if train { anytime_blocks::Mode::train() } else { anytime_blocks::Mode::inference() };
        Ok(Case {
            spec: json!({"kind": "inverted_residual", "name": name, "n": n, "c": c, "hw": hw, "k": k, "mid": mid, "reduce": red, "se": se, "hard_swish": hard_swish, "train": train}),
            flops: Some(2.0 * macs * if train { 3.0 } else { 1.0 }),
            run: Box::new(move || {
                let y = block.forward_t(&x, &mode)?;
                if train {
                    y.sum_all()?.backward()?;
                }
                Ok(())
            }),
        })
    })
}

fn dense(n: usize, c: usize, hw: usize, layers: usize, growth: usize) -> Lazy {
    let name = format!("dense 2-scale stack {layers} layers g{growth} {hw}x{hw} n{n} fwd+bwd");
    Lazy::new(name.clone(), move || {
        // Two scales; per layer: a 3x3 conv-BN-ReLU on each scale and a strided
        // one from the finer to the coarser, concatenated (as the torch script).
        let mut params = Vec::new();
        let mut ch = (c, 2 * c);
        let mut macs = 0.0;
        for _ in 0..layers {
            let mk = |cin: usize| -> candle_core::Result<[Var; 3]> {
                Ok([
                    Var::from_tensor(&(rand(&[growth, cin, 3, 3])? * 0.1)?)?,
                    Var::from_tensor(&Tensor::ones(growth, DType::F32, &Device::Cpu)?)?,
                    Var::from_tensor(&Tensor::zeros(growth, DType::F32, &Device::Cpu)?)?,
                ])
            };
            params.push([mk(ch.0)?, mk(ch.0)?, mk(ch.1)?]);
            let (h, h2) = ((hw * hw) as f64, ((hw / 2) * (hw / 2)) as f64);
            macs += n as f64 * 9.0 * growth as f64 * (ch.0 as f64 * h + ch.0 as f64 * h2 + ch.1 as f64 * h2);
            ch = (ch.0 + growth, ch.1 + 2 * growth);
        }
        let x0 = rand(&[n, c, hw, hw])?;
        let x1 = rand(&[n, 2 * c, hw / 2, hw / 2])?;
        let unit = |x: &Tensor, p: &[Var; 3], stride: usize| -> candle_core::Result<Tensor> {
            let y = conv2d(x, p[0].as_tensor(), None, Conv2dParams { stride, padding: 1, ..Default::default() })?;
            Ok(batch_norm_train(&y, p[1].as_tensor(), p[2].as_tensor(), 1e-5, true)?.ys)
        };
        Ok(Case {
            spec: json!({"kind": "dense", "name": name, "n": n, "c": c, "hw": hw, "layers": layers, "growth": growth}),
            flops: Some(2.0 * 3.0 * macs),
            run: Box::new(move || {
                let (mut a, mut b) = (x0.clone(), x1.clone());
                for p in &params {
                    let na = Tensor::cat(&[&a, &unit(&a, &p[0], 1)?], 1)?;
                    let nb = Tensor::cat(&[&b, &unit(&a, &p[1], 2)?, &unit(&b, &p[2], 1)?], 1)?;
                    (a, b) = (na, nb);
                }
                (a.sum_all()? + b.sum_all()?)?.backward()?;
                Ok(())
            }),
        })
    })
}

fn model(label: &str, cfg: ArchConfig, args: Value, n: usize, hw: usize, mode: &str) -> Lazy {
    model_with_channels(label, cfg, args, n, 3, hw, mode, "model")
}

/// A training step of a registry model on its own input size (ours and stock
/// Candle only: the reference code has no 1-channel stems).
fn registry_train(name: &str, n: usize) -> Result<Lazy> {
    let e = anytime_models::registry::lookup(name)?;
    let (c, h, _) = e.data.input;
    Ok(model_with_channels(name, (e.config)(), Value::Null, n, c, h, "train", "registry"))
}

/// A training step's labels (`n` of them, cycling through 10 classes) and
/// its optimiser (MSDNet's SGD) over every variable of `vm`.
fn training_parts(vm: &VarMap, n: usize) -> Result<(Tensor, anytime_train::optim::Optimizer)> {
    let y = Tensor::from_vec((0..n as u32).map(|i| i % 10).collect::<Vec<_>>(), n, &Device::Cpu)?;
    let params: Vec<(String, Var)> =
        vm.data().lock().map_err(|e| anyhow::anyhow!("{e}"))?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok((y, anytime_train::optim::Optimizer::new(anytime_train::optim::OptimConfig::msdnet_sgd(), params)))
}

/// GFNet's encoder alone, MobileNetV3-Large with its classifier, as the
/// torch side builds it (a one-step GFNet would also hold the second encoder
/// and the policy: 6x the weights). `mode` "train" or "forward".
fn mobilenet(label: &str, args: Value, n: usize, hw: usize, mode: &'static str) -> Lazy {
    use anytime_blocks::mobilenet::{MobileNetV3, MobileNetV3Config};
    let name = format!("{label} {mode} n{n}");
    Lazy::new(name.clone(), move || {
        let g = anytime_models::gfnet::GfnetConfig::from_json(&args)?;
        let cfg = MobileNetV3Config {
            channel_multiplier: g.channel_multiplier,
            in_channels: g.in_channels,
            num_classes: g.num_classes,
            num_features: g.feature_num,
        };
        let vm = VarMap::new();
        let m = MobileNetV3::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg)?;
        let mut c = anytime_flops::Counter::new();
        m.count(&mut c, anytime_flops::Shape4::new(1, cfg.in_channels, hw, hw), true)?;
        c.mark_exit();
        let macs = *c.finish().flops(anytime_flops::Mode::Reference).last().context("no exits")? as f64;
        let x = rand(&[n, cfg.in_channels, hw, hw])?;
        let (y, mut opt) = training_parts(&vm, n)?;
        let train = mode == "train";
        Ok(Case {
            spec: json!({"kind": "model", "name": name, "arch": "gfnet", "args": args, "n": n, "hw": hw, "mode": mode}),
            flops: Some(2.0 * macs * n as f64 * if train { 3.0 } else { 1.0 }),
            run: Box::new(move || {
                let mode = if train { anytime_blocks::Mode::train() } else { anytime_blocks::Mode::inference() };
                let logits = m.classify(&m.forward_t(&x, &mode)?.feature)?;
                if train {
                    opt.step(&anytime_ops::loss::cross_entropy(&logits, &y, 0.0)?.backward()?, 0.01)?;
                }
                Ok(())
            }),
        })
    })
}

/// A model case (`kind` "model", or "registry": ours only) in `mode`
/// "train", "forward" or "exit K".
#[allow(clippy::too_many_arguments)]
fn model_with_channels(
    label: &str,
    cfg: ArchConfig,
    args: Value,
    n: usize,
    channels: usize,
    hw: usize,
    mode: &str,
    kind: &'static str,
) -> Lazy {
    let name = match mode.strip_prefix("exit ") {
        Some(k) => format!("{label} to exit {k} n{n}"),
        None => format!("{label} {mode} n{n}"),
    };
    let mode = mode.to_string();
    Lazy::new(name.clone(), move || {
        let vm = VarMap::new();
        let m: Box<dyn MultiExit> = cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        let macs = *m.exit_costs(hw, hw)?.flops(anytime_flops::Mode::Reference).last().context("no exits")? as f64;
        let x = rand(&[n, channels, hw, hw])?;
        let (y, mut opt) = training_parts(&vm, n)?;
        let train = mode == "train";
        // "exit K": batch-1 latency to exit K (0-based), stopping there.
        let upto = mode.strip_prefix("exit ").map(str::parse::<usize>).transpose()?;
        if let Some(k) = upto {
            let macs =
                *m.exit_costs(hw, hw)?.flops(anytime_flops::Mode::Reference).get(k).context("no such exit")? as f64;
            return Ok(Case {
                spec: json!({"kind": kind, "name": name, "arch": cfg.arch(), "args": args, "n": n, "hw": hw, "mode": "exit", "exit": k}),
                flops: Some(2.0 * macs * n as f64),
                run: Box::new(move || {
                    let mode = anytime_blocks::Mode::inference();
                    let mut state = m.begin(&x, &mode)?;
                    for _ in 0..=k {
                        m.advance(&mut state, &mode)?;
                    }
                    Ok(())
                }),
            });
        }
        Ok(Case {
            spec: json!({"kind": kind, "name": name, "arch": cfg.arch(), "args": args, "n": n, "hw": hw, "mode": mode}),
            flops: Some(2.0 * macs * n as f64 * if train { 3.0 } else { 1.0 }),
            run: Box::new(move || {
                let mode = if train { anytime_blocks::Mode::train() } else { anytime_blocks::Mode::inference() };
                let logits: Vec<_> = m.forward_exits(&x, &mode)?.into_iter().map(|o| o.logits).collect();
                if train {
                    let mut loss = anytime_ops::loss::cross_entropy(&logits[0], &y, 0.0)?;
                    for l in &logits[1..] {
                        loss = (loss + anytime_ops::loss::cross_entropy(l, &y, 0.0)?)?;
                    }
                    opt.step(&loss.backward()?, 0.01)?;
                }
                Ok(())
            }),
        })
    })
}

fn cases(kernels_only: bool) -> Result<Vec<Lazy>> {
    let mut v = vec![
        conv(64, 16, 16, 28, 3, 1, 1, false),
        conv(64, 16, 16, 28, 3, 1, 1, true),
        conv(64, 32, 32, 16, 3, 1, 1, false),
        conv(64, 32, 32, 16, 3, 1, 1, true),
        conv(64, 64, 64, 8, 3, 1, 1, false),
        conv(64, 64, 64, 8, 3, 1, 1, true),
        conv(64, 32, 64, 16, 3, 2, 1, true),
        conv(64, 128, 128, 32, 3, 1, 1, false),
        conv(64, 64, 32, 16, 1, 1, 1, false),
        conv(64, 64, 32, 16, 1, 1, 1, true),
        conv(64, 32, 32, 28, 3, 1, 32, false),
        conv(64, 32, 32, 28, 3, 1, 32, true),
        conv(64, 32, 32, 28, 5, 1, 32, true),
        bn(64, 32, 28),
        bn(64, 64, 14),
        dense(64, 16, 28, 4, 8),
        // MobileNetV3-Large x0.5 blocks at GFNet's 48-pixel patches: stage
        // 2 (5x5, squeeze-excite, ReLU, 12x12) and stage 3 (3x3,
        // hard-swish, 6x6).
        inverted_residual(64, 24, 12, 5, 3.0, true, false, false),
        inverted_residual(64, 24, 12, 5, 3.0, true, false, true),
        inverted_residual(64, 40, 6, 3, 2.5, false, true, false),
        inverted_residual(64, 40, 6, 3, 2.5, false, true, true),
    ];
    if !kernels_only {
        use anytime_models::msdnet::MsdNetConfig;
        use anytime_models::ranet::RaNetConfig;
        let msd = ArchConfig::new(MsdNetConfig { num_classes: 10, ..MsdNetConfig::cifar100_budgeted() });
        let msd_args = json!({"data": "cifar10", "nBlocks": 5, "nChannels": 16, "base": 1, "step": 1, "stepmode": "lin_grow", "growthRate": 6,
            "grFactor": [1, 2, 4], "bnFactor": [1, 2, 4], "nScales": 3, "prune": "max", "bottleneck": true, "reduction": 0.5});
        let ra = ArchConfig::new(RaNetConfig::cifar10_readme());
        let ra_args = json!({"data": "cifar10", "nBlocks": 2, "block_step": 2, "step": 2, "stepmode": "lg", "scale_list": [1, 2, 3],
            "grFactor": [4, 2, 1], "bnFactor": [4, 2, 1], "nScales": 3, "compress_factor": 0.25, "reduction": 0.5, "growthRate": 6, "nChannels": 16});
        for (label, cfg, args) in
            [("MSDNet CIFAR budgeted (README)", msd, msd_args), ("RANet CIFAR-10 (README)", ra, ra_args)]
        {
            v.push(model(label, cfg.clone(), args.clone(), 64, 32, "train"));
            v.push(model(label, cfg.clone(), args.clone(), 64, 32, "forward"));
            v.push(model(label, cfg.clone(), args.clone(), 1, 32, "forward"));
            if cfg.arch() == "msdnet" {
                for k in 0..5 {
                    v.push(model(label, cfg.clone(), args.clone(), 1, 32, &format!("exit {k}")));
                }
            }
        }
        // SCAN as the reference `sresnet.py` builds it (3 channels, width 64):
        // ResNet-18 with its attention and ScalaNet exits, CIFAR-100. Its
        // training step is ~10x MSDNet's, so the batch is 16.
        let scan = ArchConfig::new(anytime_models::scan::ScanConfig::resnet18(100));
        let scan_args = json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 100});
        let label = "SCAN ResNet-18 CIFAR-100 (sresnet.py)";
        v.push(model(label, scan.clone(), scan_args.clone(), 16, 32, "train"));
        v.push(model(label, scan.clone(), scan_args.clone(), 16, 32, "forward"));
        v.push(model(label, scan, scan_args, 1, 32, "forward"));
        // GFNet's encoder, MobileNetV3-Large x0.5 (gen-efficientnet, 3
        // channels, 10 classes) at GFNet's 48-pixel patches, with its
        // classifier.
        let mnv3_args = json!({"model_arch": "mobilenetv3_large_100", "channel_multiplier": 0.5, "num_classes": 10,
            "image_size": 48, "patch_size": 48, "T": 1});
        let label = "MobileNetV3-Large x0.5 48x48 (gen-efficientnet)";
        v.push(mobilenet(label, mnv3_args.clone(), 64, 48, "train"));
        v.push(mobilenet(label, mnv3_args.clone(), 64, 48, "forward"));
        v.push(mobilenet(label, mnv3_args, 1, 48, "forward"));
        // GFNet's per-step latency at batch 1 (ours; the reference's step
        // loop runs on CUDA only).
        let gf = anytime_models::registry::lookup("gfnet-mnv3-cluttered-fmnist")?;
        for k in 0..4 {
            let label = "gfnet-mnv3-cluttered-fmnist";
            v.push(model_with_channels(label, (gf.config)(), Value::Null, 1, 1, 96, &format!("exit {k}"), "registry"));
        }
        for name in crate::results::FMNIST_MODELS {
            v.push(registry_train(name, 64)?);
        }
    }
    Ok(v)
}

/// Peak GFLOP/s of a 2048³ f32 matmul with the gemm crate.
fn peak(threads: usize) -> Result<f64> {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![1.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let t = median_time(|| {
        // SAFETY: all three buffers are n x n, row-major.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / t / 1e9)
}

fn python(a: &BenchArgs) -> Result<String> {
    if let Some(p) = &a.python {
        return Ok(p.clone());
    }
    let venv = crate::root().join(".venv-bench");
    let py = venv.join("bin/python");
    if !py.exists() {
        eprintln!("creating {} with torch from PyPI (one time)", venv.display());
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?.success()
            && Command::new(&py).args(["-m", "pip", "install", "-q", "torch", "numpy"]).status()?.success();
        if !ok {
            bail!("could not create the benchmark virtualenv; pass --python PATH to a Python with torch");
        }
    }
    Ok(py.display().to_string())
}

/// The median of `xs` (`None` when empty).
fn median(xs: &[f64]) -> Option<f64> {
    RatioSpread::of(xs).map(|r| r.median)
}

/// The torch side as one long-lived process (`torch_bench.py --serve`):
/// one case timed per request, each case built once.
struct TorchServer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl TorchServer {
    fn start(py: &str, spec: &std::path::Path, threads: usize) -> Result<Self> {
        let mut child = Command::new(py)
            .arg(crate::root().join("xtask/bench/torch_bench.py"))
            .arg("--serve")
            .arg(spec)
            .arg(threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the torch benchmark")?;
        let stdin = child.stdin.take().context("torch benchmark stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("torch benchmark stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    /// torch's median time of case `name`, seconds (`None`: no torch side).
    fn time(&mut self, name: &str) -> Result<Option<f64>> {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{name}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the torch benchmark ended at case '{name}'");
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("torch benchmark answer: {line}"))?;
        if v["name"] != name {
            bail!("the torch benchmark answered for {} instead of '{name}'", v["name"]);
        }
        Ok(v["seconds"].as_f64())
    }
}

impl Drop for TorchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the benchmark.
pub fn run(a: &BenchArgs) -> Result<()> {
    // SAFETY: set before any thread of ours starts; read by rayon and candle.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", a.threads.to_string());
        anytime_ops::no_barrier_spin_unless_set();
    }
    let py = python(a)?;
    let peak = peak(a.threads)?;
    let mut cases = cases(a.kernels_only)?;
    if let Some(only) = &a.only {
        cases.retain(|c| c.name.contains(only.as_str()));
        if cases.is_empty() {
            bail!("no benchmark case name contains '{only}'");
        }
    }
    let mut cases = cases.into_iter().map(Lazy::build).collect::<Result<Vec<_>>>()?;
    anytime_ops::conv::set_shifted_gemm(!a.im2col);
    anytime_ops::conv::set_direct_kernel(!a.gemm_taps);
    anytime_ops::conv::set_avx512_kernel(!a.no_avx512);
    anytime_blocks::mode::set_fold_batch_norm(!a.no_fold);
    let spec_path = std::env::temp_dir().join(format!("anytime-bench-{}.json", std::process::id()));
    std::fs::write(&spec_path, serde_json::to_string(&cases.iter().map(|c| c.spec.clone()).collect::<Vec<_>>())?)?;
    let mut server = TorchServer::start(&py, &spec_path, a.threads)?;
    // Wait until the server has imported torch and answers (a name that is
    // no case gets `null`): otherwise the first round times our side while
    // Python starts on the same cores, which made our first-round times up
    // to 1.7x slower (docs/log/2026-12-02-engine-redesign-bench-ab.md).
    server.time("(ready)")?;
    let n = cases.len();
    let (mut ours, mut torch) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    let mut stock = vec![None; n];
    for round in 0..a.rounds {
        eprintln!("round {} of {}", round + 1, a.rounds);
        for (i, c) in cases.iter_mut().enumerate() {
            anytime_ops::set_stock_ops(false);
            // Timed on a thread of the kernels' pool, as the binary runs
            // every command (`anytime_ops::on_worker`).
            let run = &mut c.run;
            ours[i].push(anytime_ops::on_worker(|| median_time(&mut *run))?);
            if round == 0 {
                // Candle's stock ops, once (they are not what the goals
                // compare); their conv backward fails on some shapes.
                anytime_ops::set_stock_ops(true);
                stock[i] = anytime_ops::on_worker(|| median_time(&mut *run)).ok();
                anytime_ops::set_stock_ops(false);
            }
            let name = c.spec["name"].as_str().unwrap_or("");
            torch[i].push(server.time(name)?);
        }
    }
    drop(server);
    let mut memory = vec![None; n];
    if a.memory {
        for (i, c) in cases.iter().enumerate().filter(|(_, c)| measures_memory(&c.spec)) {
            let name = c.spec["name"].as_str().unwrap_or("");
            eprintln!("peak memory: {name}");
            memory[i] = Some(case_memory(&py, &spec_path, a.threads, name)?);
        }
    }
    let _ = std::fs::remove_file(&spec_path);
    let torch_version = String::from_utf8_lossy(
        &Command::new(&py).args(["-c", "import torch; print(torch.__version__)"]).output()?.stdout,
    )
    .trim()
    .to_string();
    let stamp = crate::results::provenance();
    let report = BenchReport {
        measured: BenchProvenance { date: stamp.date, commit: stamp.commit, machine: stamp.machine },
        threads: a.threads,
        torch: torch_version,
        peak_gflops: peak,
        kernels: Some(anytime_ops::kernel_set().to_string()),
        cases: cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = c.spec["name"].as_str().unwrap_or("").to_string();
                let ours_s = median(&ours[i]).unwrap_or(f64::NAN);
                let torch_s: Vec<f64> = torch[i].iter().flatten().copied().collect();
                let ratios: Vec<f64> = ours[i].iter().zip(&torch[i]).filter_map(|(o, t)| t.map(|t| o / t)).collect();
                BenchCase {
                    gflops: c.flops.map(|f| f / ours_s / 1e9),
                    name,
                    ours_ms: ours_s * 1e3,
                    stock_ms: stock[i].map(|t| t * 1e3),
                    torch_ms: median(&torch_s).map(|t| t * 1e3),
                    ratio: RatioSpread::of(&ratios),
                    peak_mib: memory[i],
                }
            })
            .collect(),
        note: None,
    };
    let table = report.table();
    let header = format!(
        "Measured by `cargo xtask bench` on {} ({} threads for ours, stock Candle and torch {}; our kernels: {}; inference {}; peak = {:.1} GFLOP/s, a 2048³ f32 matmul with the gemm crate in the same run). {} rounds, each timing every case on our side then on the torch side (one long-lived torch process); times are medians over the rounds and ours / torch is the median of the per-round ratios, with their range; stock Candle is timed in the first round only. Model cases on the torch side use the reference implementations (ANYTIME_REF_MSDNET / ANYTIME_REF_RANET / ANYTIME_REF_SCAN / ANYTIME_REF_GFNET) and show — without them.\n\n",
        report.measured.machine,
        a.threads,
        report.torch,
        anytime_ops::kernel_set(),
        if a.no_fold {
            "with batch norms as layers of their own"
        } else {
            "with batch norms folded into the convolutions"
        },
        peak,
        a.rounds
    );
    println!("{header}{table}");
    if a.only.is_none() && !a.im2col && !a.gemm_taps && !a.no_avx512 && !a.no_fold {
        let doc = format!("# Kernel and model benchmark\n\n{header}{table}");
        anytime_io::atomic_write(crate::root().join("docs/bench.md"), doc.as_bytes())?;
        let json = serde_json::to_string_pretty(&report)?;
        anytime_io::atomic_write(crate::root().join("docs/data/bench.json"), format!("{json}\n").as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_table_has_ratios_and_dashes_for_missing_sides() {
        let case = |name: &str, stock, torch, gflops| BenchCase {
            name: name.into(),
            ours_ms: 2.0,
            stock_ms: stock,
            torch_ms: torch,
            gflops,
            ratio: None,
            peak_mib: None,
        };
        let r = BenchReport {
            measured: BenchProvenance { date: "2026-12-01".into(), commit: "abc1234".into(), machine: "m".into() },
            threads: 2,
            torch: "2.15.0".into(),
            peak_gflops: 100.0,
            kernels: Some("AVX2/FMA".into()),
            cases: vec![
                case("a", Some(8.0), Some(4.0), Some(50.0)),
                case("b", None, None, None),
                BenchCase { ratio: RatioSpread::of(&[0.4, 0.7, 0.5]), ..case("c", None, Some(4.0), None) },
            ],
            note: None,
        };
        let t = r.table();
        assert!(t.contains("| a | 2.00 | 8.00 | 4.00 | 0.50 | — | 2.00 | 50.0 | 50% |"), "{t}");
        assert!(t.contains("| b | 2.00 | — | — | — | — | — | — | — |"), "{t}");
        assert!(!t.contains("Peak resident memory"), "{t}");
        let mut with_memory = r.clone();
        with_memory.cases[0].peak_mib = Some((Some(300.0), Some(600.0)));
        assert!(with_memory.table().contains("| a | 300.00 | 600.00 | 0.50 |"), "{}", with_memory.table());
        // The median of the per-round ratios, not ours / torch of the medians.
        assert!(t.contains("| c | 2.00 | — | 4.00 | 0.50 | 0.40–0.70 (3 rounds) | — | — | — |"), "{t}");
        assert_eq!(RatioSpread::of(&[3.0, 1.0]).map(|r| r.median), Some(2.0));
        assert_eq!(RatioSpread::of(&[f64::NAN]), None);
        let back: BenchReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // The committed report reads.
        let text = std::fs::read_to_string(crate::root().join("docs/data/bench.json")).unwrap();
        let committed: BenchReport = serde_json::from_str(&text).unwrap();
        assert!(!committed.cases.is_empty() && committed.peak_gflops > 0.0);
    }
}
