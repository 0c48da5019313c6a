//! `cargo xtask check-cuda`: builds the `anytime` binary with Candle's CUDA
//! back end (`--features cuda`) on a machine without a GPU or a CUDA
//! installation, with the CUDA compiler from PyPI.
//!
//! 1. A scratch virtual environment under `target/check-cuda/venv` gets
//!    NVIDIA's CUDA 13.4 compiler wheels: `nvidia-cuda-nvcc` (nvcc, ptxas),
//!    `nvidia-nvvm`, `nvidia-cuda-runtime` and `nvidia-cuda-crt`, and
//!    `nvidia-cuda-cccl` (the `nv/target` headers `cuda_fp16.h` includes).
//!    13.4 is the newest release Candle's cudarc 0.19.10 knows (it refuses
//!    13.5). The CUDA 12 wheels (`nvidia-cuda-nvcc-cu12`,
//!    12.0 to 12.9) hold `ptxas` but not the `nvcc` driver that
//!    candle-kernels' build script runs, so they cannot build it.
//! 2. candle-kernels compiles its kernels to PTX with that nvcc for
//!    `--compute-cap` (90: Hopper, H100/H200).
//! 3. cudarc links the CUDA driver, cuBLAS, cuBLASLt, cuRAND and NVRTC
//!    dynamically, candle-kernels the CUDA runtime (from the runtime wheel,
//!    linked as it is). The others come with a GPU's driver and toolkit, not
//!    with the compiler; the link uses empty stand-ins under
//!    `target/check-cuda/stubs`
//!    (with unresolved symbols allowed), which proves that everything
//!    compiles and links by name. The stand-ins are then rebuilt with empty
//!    definitions of the functions the binary names (found with `nm`), so
//!    that it starts: `anytime models` runs on the CPU as a smoke test. On a
//!    GPU machine, build with the real libraries instead.
//!
//! Not part of CI: it downloads about 100 MB and compiles Candle a second
//! time (its own target directory).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Arguments of `cargo xtask check-cuda`.
#[derive(clap::Args)]
pub struct CheckCudaArgs {
    /// GPU architecture the kernels are compiled for (`CUDA_COMPUTE_CAP`):
    /// 90 Hopper (H100, H200), 89 Ada, 80 Ampere A100; CUDA 13 supports 75
    /// and above.
    #[arg(long, default_value_t = 90)]
    compute_cap: u32,
    /// The Python that creates the scratch environment.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The cargo features to build (`cuda`, or `cuda,cudnn` with cuDNN's
    /// headers installed separately).
    #[arg(long, default_value = "cuda")]
    features: String,
}

/// The libraries cudarc links (with `dynamic-linking`), by link name.
const LINKED: [&str; 5] = ["cuda", "cublas", "cublasLt", "curand", "nvrtc"];

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let s = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !s.success() {
        bail!("{what} failed ({s})");
    }
    Ok(())
}

/// `site-packages/nvidia/cu13` of the venv.
fn toolkit(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for e in std::fs::read_dir(&lib).with_context(|| format!("cannot read {}", lib.display()))? {
        let p = e?.path().join("site-packages/nvidia/cu13");
        if p.join("bin/nvcc").is_file() {
            return Ok(p);
        }
    }
    bail!("no nvidia/cu13/bin/nvcc under {}", lib.display())
}

/// Runs the task.
pub fn run(a: &CheckCudaArgs) -> Result<()> {
    let root = crate::root();
    let scratch = root.join("target/check-cuda");
    let venv = scratch.join("venv");
    std::fs::create_dir_all(&scratch)?;
    if !venv.join("bin/python").is_file() {
        status(Command::new(&a.python).args(["-m", "venv"]).arg(&venv), "python3 -m venv")?;
    }
    status(
        Command::new(venv.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "nvidia-cuda-nvcc==13.4.*",
            "nvidia-nvvm==13.4.*",
            "nvidia-cuda-runtime==13.4.*",
            "nvidia-cuda-crt==13.4.*",
            "nvidia-cuda-cccl>=13,<14",
        ]),
        "pip install nvidia-cuda-nvcc nvidia-cuda-cccl",
    )?;
    let cuda = toolkit(&venv)?;
    let version = Command::new(cuda.join("bin/nvcc")).arg("--version").output().context("cannot run nvcc")?;
    let version = String::from_utf8_lossy(&version.stdout);
    let release = version.lines().find(|l| l.contains("release")).unwrap_or("?").trim().to_string();
    eprintln!("nvcc from PyPI: {release} ({})", cuda.display());

    // Empty stand-ins for the libraries a GPU machine provides.
    let stubs = scratch.join("stubs");
    std::fs::create_dir_all(&stubs)?;
    let empty = stubs.join("empty.c");
    std::fs::write(&empty, "/* link-time stand-in: no GPU on this machine */\n")?;
    // The CUDA runtime is in the wheels (versioned name only): link the real
    // one (candle-kernels' MoE kernels need it).
    let cudart = stubs.join("libcudart.so");
    if !cudart.exists() {
        let real = std::fs::read_dir(cuda.join("lib"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcudart.so.")))
            .context("no libcudart.so.* in the CUDA runtime wheel")?;
        std::os::unix::fs::symlink(&real, &cudart)?;
    }
    for lib in LINKED {
        let so = stubs.join(format!("lib{lib}.so"));
        if !so.is_file() {
            status(
                Command::new("cc").args(["-shared", "-o"]).arg(&so).arg(&empty),
                &format!("cc -shared -o {}", so.display()),
            )?;
        }
    }

    let path = format!("{}:{}", cuda.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let rustflags = format!("-L native={} -C link-arg=-Wl,--unresolved-symbols=ignore-all", stubs.display());
    let target = scratch.join("target");
    eprintln!("building anytime with --features {} for compute capability {} …", a.features, a.compute_cap);
    status(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--release", "-p", "anytime-cli", "--features", &a.features])
            .env("CARGO_TARGET_DIR", &target)
            .env("CUDA_COMPUTE_CAP", a.compute_cap.to_string())
            .env("CUDA_ROOT", &cuda)
            .env("CUDA_PATH", &cuda)
            .env("CUDA_HOME", &cuda)
            .env("CUDA_TOOLKIT_ROOT_DIR", &cuda)
            .env("NVCC_PREPEND_FLAGS", format!("-I{}", cuda.join("include/cccl").display()))
            .env("PATH", &path)
            .env("RUSTFLAGS", &rustflags),
        "cargo build --features cuda",
    )?;
    let bin = target.join("release/anytime");
    // The binary binds every symbol at load time: give the stand-ins empty
    // definitions of the driver, cuBLAS, cuRAND and NVRTC functions it
    // names (never called on the CPU path), then start it.
    let undefined = Command::new("nm").args(["-D", "--undefined-only"]).arg(&bin).output().context("cannot run nm")?;
    let names: Vec<String> = String::from_utf8_lossy(&undefined.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| (n.starts_with("cu") && !n.starts_with("cuda")) || n.starts_with("nvrtc"))
        .collect();
    let defs: String = names.iter().map(|n| format!("void {n}(void) {{}}\n")).collect();
    let filled = stubs.join("filled.c");
    std::fs::write(&filled, format!("/* stand-ins: no GPU on this machine */\n{defs}"))?;
    for lib in LINKED {
        let so = stubs.join(format!("lib{lib}.so"));
        status(
            Command::new("cc").args(["-shared", "-o"]).arg(&so).arg(&filled),
            &format!("cc -shared -o {}", so.display()),
        )?;
    }
    // Smoke test: the CUDA build starts and runs a CPU command.
    let out = Command::new(&bin)
        .arg("models")
        .env("LD_LIBRARY_PATH", format!("{}:{}", stubs.display(), cuda.join("lib").display()))
        // The empty stand-ins were not needed at link time (`--as-needed`
        // left them out), so the filled one is preloaded.
        .env("LD_PRELOAD", stubs.join("libcuda.so"))
        .current_dir(&root)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} models failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "check-cuda: built {} with --features {} ({release}, kernels for sm_{}); `anytime models` runs",
        bin.display(),
        a.features,
        a.compute_cap
    );
    Ok(())
}
