//! Shared helpers: running the binary, fixture paths, temporary directories,
//! `infer` runs and the fixtures' tolerance.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/<name>/<file>`.
pub fn fixture(name: &str, file: &str) -> PathBuf {
    root().join("tests/fixtures").join(name).join(file)
}

/// The address-space limit every `anytime` run of these tests gets (far below
/// the machine's memory): a bad input that made the program allocate without
/// bound fails the test instead of exhausting the machine.
pub const MEMORY_LIMIT_BYTES: u64 = 6 << 30;

/// A command running the `anytime` binary in the repository root, under
/// [`MEMORY_LIMIT_BYTES`] of address space.
pub fn anytime() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anytime"));
    c.current_dir(root());
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit { rlim_cur: MEMORY_LIMIT_BYTES, rlim_max: MEMORY_LIMIT_BYTES };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c
}

/// Runs `anytime args...` and returns its output.
pub fn run(args: &[&str]) -> Output {
    anytime().args(args).output().expect("the anytime binary runs")
}

/// Asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "anytime {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The arguments of `anytime infer --arch … --config … --weights … --input …
/// --output …`.
pub fn infer_args<'a>(
    arch: &'a str,
    config: &'a Path,
    weights: &'a Path,
    input: &'a Path,
    out: &'a Path,
) -> Vec<&'a str> {
    vec![
        "infer",
        "--arch",
        arch,
        "--config",
        s(config),
        "--weights",
        s(weights),
        "--input",
        s(input),
        "--output",
        s(out),
    ]
}

/// Runs `anytime infer` (with `extra` arguments), which must succeed, and
/// returns the tensors it wrote to `out`.
pub fn infer(
    arch: &str,
    config: &Path,
    weights: &Path,
    input: &Path,
    out: &Path,
    extra: &[&str],
) -> HashMap<String, Tensor> {
    ok(&[&infer_args(arch, config, weights, input, out)[..], extra].concat());
    candle_core::safetensors::load(out, &Device::Cpu).expect("output")
}

/// Asserts `|a − b| ≤ 1e-4 + 1e-4·|b|` element-wise (the fixtures'
/// tolerance), with equal shapes.
pub fn close(what: &str, a: &Tensor, b: &Tensor) {
    close_tol(what, a, b, 1e-4)
}

/// Asserts `|a − b| ≤ tol + tol·|b|` element-wise, with equal shapes.
pub fn close_tol(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol + tol * y.abs(), "{what}: {x} vs {y}");
    }
}

/// Asserts a clean failure: exit code 1, exactly one `error:` line on
/// stderr, no panic; returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "anytime {args:?} should fail with code 1; stderr: {err}");
    assert!(!err.contains("panicked"), "anytime {args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "anytime {args:?}: expected one error line, got {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// A fresh, empty temporary directory unique to this test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anytime-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `cmd` cut off from the weights and hub settings of the caller's
/// environment: no `ANYTIME_WEIGHTS_DIR`, `HF_*` or proxy variables, and the
/// Hugging Face cache under `hf_home`.
pub fn isolated(mut cmd: Command, hf_home: &Path) -> Command {
    for v in [
        "ANYTIME_WEIGHTS_DIR",
        "HF_HUB_OFFLINE",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "XDG_CACHE_HOME",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HF_HOME", hf_home);
    cmd
}

/// Runs `cmd` to completion, killing it after `limit` (then the test fails).
pub fn output_within(mut cmd: Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the anytime binary starts");
    let pipe = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = pipe(Box::new(child.stdout.take().expect("stdout")));
    let err = pipe(Box::new(child.stderr.take().expect("stderr")));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// The lines of a run's `metrics.jsonl` without their timings (`seconds`,
/// `images_per_s`): what identical runs must agree on.
pub fn metrics_without_timings(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
                o.remove("images_per_s");
            }
            v
        })
        .collect()
}
