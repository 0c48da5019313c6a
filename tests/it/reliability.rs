//! Issue 22's classes through the CLI: every bad input gets exit code 1 and
//! one clear line, no panic.

use crate::util::{anytime, fails, fixture, ok, root, s, temp_dir};
use std::path::Path;

fn tiny(dir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let data = root().join("data/fashion-mnist-sample");
    let mut v: Vec<String> =
        ["train", "--model", "msdnet-tiny", "--data-dir", s(&data), "--run-dir", s(dir), "--quiet"]
            .iter()
            .map(|a| a.to_string())
            .collect();
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Numeric options out of range (or out of a duration's range) are refused
/// by the parser with the accepted range, before any work.
#[test]
fn r22_numeric_options_are_validated() {
    let img = s(&root().join("data/fashion-mnist-sample/t10k-images-idx3-ubyte.gz")).to_string();
    for (args, range) in [
        (vec!["classify", "--model", "msdnet-fmnist", "--deadline", "1e23", &img], "(0, 3600000]"),
        (vec!["classify", "--model", "msdnet-fmnist", "--deadline", "nan", &img], "(0, 3600000]"),
        (vec!["train", "--model", "msdnet-tiny", "--max-minutes", "-1"], "(0, 525600]"),
        (vec!["train", "--model", "msdnet-tiny", "--max-minutes", "1e300"], "(0, 525600]"),
        (vec!["calibrate", "--model", "msdnet-fmnist", "--budget-fraction", "2", "--output", "x.json"], "(0, 1]"),
        (vec!["eval", "--model", "msdnet-fmnist", "--batch-size", "0"], "[1, 65536]"),
    ] {
        let e = fails(&args);
        assert!(e.contains(range), "{args:?}: {e}");
    }
    // A tiny positive duration is positive.
    let dir = temp_dir("tiny-minutes");
    let e = fails(&strs(&tiny(&dir, &["--max-minutes", "1e-9", "--epochs", "0"])));
    assert!(e.contains("--epochs"), "{e}");
    // A conflict names both sides on its one line.
    let e = fails(&["classify", "--model", "msdnet-fmnist", "--budget", "9", "--deadline", "2", &img]);
    assert!(e.contains("--budget") && e.contains("--deadline"), "{e}");
}

/// A full device is an error; a closed pipe ends the program quietly.
#[cfg(target_os = "linux")]
#[test]
fn r22_stdout_full_or_closed() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let out = anytime().arg("models").stdout(full).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: cannot write to standard output") && !err.contains("panicked"), "{err}");
    let mut child = anytime().arg("models").stdout(std::process::Stdio::piped()).spawn().expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

/// Outputs replace regular files only, and never one of the inputs.
#[cfg(unix)]
#[test]
fn r22_outputs_replace_regular_files_only() {
    let name = "msdnet_cifar100_lingrow";
    let dir = temp_dir("outputs");
    let weights = dir.join("w.safetensors");
    std::fs::copy(fixture(name, "state_dict.safetensors"), &weights).expect("copy");
    let target = dir.join("keep.bin");
    std::fs::write(&target, b"keep").expect("write");
    let link = dir.join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let cfg = fixture(name, "config.json");
    let io = fixture(name, "io.safetensors");
    let infer = |out: &std::path::Path| {
        fails(&[
            "infer",
            "--arch",
            "msdnet",
            "--config",
            s(&cfg),
            "--weights",
            s(&weights),
            "--input",
            s(&io),
            "--output",
            s(out),
        ])
    };
    let e = infer(&link);
    assert!(e.contains("symbolic link"), "{e}");
    assert_eq!(std::fs::read(&target).expect("target"), b"keep");
    let e = infer(std::path::Path::new("/dev/null"));
    assert!(e.contains("not a regular file"), "{e}");
    let e = infer(&dir);
    assert!(e.contains("directory") || e.contains("not a regular file"), "{e}");
    let before = std::fs::read(&weights).expect("weights");
    let e = infer(&weights);
    assert!(e.contains("is also an input"), "{e}");
    assert_eq!(std::fs::read(&weights).expect("weights"), before);
}

/// Checkpoints prove their integrity and runs never replace each other.
#[test]
fn r22_checkpoints_and_run_directories() {
    let dir = temp_dir("ckpt-integrity");
    // --resume without a checkpoint is an error, not a fresh start.
    let e = fails(&strs(&tiny(&dir, &["--resume"])));
    assert!(e.contains("no checkpoint to resume"), "{e}");
    ok(&strs(&tiny(&dir, &["--epochs", "1"])));
    // A new run in a directory that holds a run is refused; --force replaces it.
    let e = fails(&strs(&tiny(&dir, &["--epochs", "1"])));
    assert!(e.contains("another run's files") && e.contains("--force"), "{e}");
    let metrics = || crate::util::metrics_without_timings(&dir);
    let first = metrics();
    ok(&strs(&tiny(&dir, &["--epochs", "1", "--force"])));
    assert_eq!(metrics(), first, "same seed, same metrics");
    // One flipped bit in a tensor of the checkpoint is caught on resume.
    let path = dir.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&path).expect("checkpoint");
    let last = bytes.len() - 5;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).expect("flip");
    let e = fails(&strs(&tiny(&dir, &["--epochs", "1", "--resume"])));
    assert!(e.contains("checksum") && e.contains("checkpoint.safetensors"), "{e}");
}

/// NaN or infinite inputs and weights are errors naming the sample or the
/// tensor, never finite-looking logits.
#[test]
fn r22_non_finite_inputs_and_weights() {
    use candle_core::{Device, Tensor};
    use std::collections::HashMap;
    let name = "msdnet_cifar100_lingrow";
    let dir = temp_dir("non-finite");
    let cfg = fixture(name, "config.json");
    let weights = fixture(name, "state_dict.safetensors");
    let mut v = vec![0.5f32; 3 * 3 * 32 * 32];
    v[2 * 3 * 32 * 32 + 17] = f32::NAN;
    let input = dir.join("nan.safetensors");
    let t = Tensor::from_vec(v, (3, 3, 32, 32), &Device::Cpu).expect("tensor");
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), t)]), &input).expect("save");
    let out = dir.join("out.safetensors");
    let infer = |w: &std::path::Path, i: &std::path::Path| {
        fails(&[
            "infer",
            "--arch",
            "msdnet",
            "--config",
            s(&cfg),
            "--weights",
            s(w),
            "--input",
            s(i),
            "--output",
            s(&out),
        ])
    };
    let e = infer(&weights, &input);
    assert!(e.contains("sample 2") && e.contains("NaN"), "{e}");
    let mut w = candle_core::safetensors::load(&weights, &Device::Cpu).expect("weights");
    let key = "classifier.0.linear.bias".to_string();
    let bad = w[&key].affine(0.0, f64::INFINITY).expect("inf");
    w.insert(key, bad);
    let broken = dir.join("inf.safetensors");
    candle_core::safetensors::save(&w, &broken).expect("save");
    let e = infer(&broken, &fixture(name, "io.safetensors"));
    assert!(e.contains("classifier.0.linear.bias") && e.contains("NaN or infinite"), "{e}");
}

/// Configurations with absurd sizes are refused before anything is built,
/// well inside the tests' memory limit.
#[test]
fn r22_huge_configurations_are_refused_before_allocation() {
    let dir = temp_dir("huge-configs");
    for (arch, cfg, what) in [
        ("msdnet", r#"{"cli_args": "--nBlocks 1000000000"}"#, "nBlocks"),
        ("msdnet", r#"{"cli_args": "--nBlocks 1000"}"#, "nBlocks"),
        ("msdnet", r#"{"cli_args": "--nBlocks 3 --growthRate 1099511627776"}"#, "growthRate"),
        ("ranet", r#"{"cli_args": "--nBlocks 2 --nChannels 1099511627776"}"#, "nChannels"),
        (
            "resnet_mc",
            r#"{"in_channels": 1, "num_classes": 1099511627776, "stem_channels": 8, "widths": [8], "blocks": [1], "exits": [1], "head_channels": 8}"#,
            "num_classes",
        ),
        ("scan", r#"{"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "width": 1099511627776}"#, "width"),
    ] {
        let path = dir.join(format!("{arch}.json"));
        std::fs::write(&path, cfg).expect("config");
        let start = std::time::Instant::now();
        let e = fails(&["flops", "--arch", arch, "--config", s(&path)]);
        assert!(e.contains(what), "{arch} {cfg}: {e}");
        assert!(start.elapsed().as_secs_f64() < 5.0, "{arch} {cfg}: took {:?}", start.elapsed());
    }
}

/// `export` of an unfinished run is refused without `--partial`, before any
/// evaluation, naming the epochs done and planned (the run's own plan).
#[test]
fn r22_export_refuses_an_unfinished_run() {
    let dir = temp_dir("export-unfinished");
    ok(&strs(&tiny(&dir, &["--epochs", "3", "--max-minutes", "1e-9"])));
    let out = dir.join("w.safetensors");
    let start = std::time::Instant::now();
    let e = fails(&["export", "--model", "msdnet-tiny", "--run-dir", s(&dir), "--out", s(&out)]);
    assert!(e.contains("of 3 epochs") && e.contains("--partial"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 5.0);
    assert!(!out.exists());
}

/// A multi-GB weight file is refused from its size, before it is read (a
/// sparse file: no disk is used).
#[test]
fn r22_huge_files_are_refused_before_reading() {
    let name = "msdnet_cifar100_lingrow";
    let dir = temp_dir("huge-files");
    let big = dir.join("big.safetensors");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(9 << 30).expect("sparse file");
    let out = dir.join("out.safetensors");
    let (cfg, io) = (fixture(name, "config.json"), fixture(name, "io.safetensors"));
    let start = std::time::Instant::now();
    let e = fails(&[
        "infer",
        "--arch",
        "msdnet",
        "--config",
        s(&cfg),
        "--weights",
        s(&big),
        "--input",
        s(&io),
        "--output",
        s(&out),
    ]);
    assert!(e.contains("big.safetensors") && e.contains("more than"), "{e}");
    let e = fails(&[
        "infer",
        "--arch",
        "msdnet",
        "--config",
        s(&cfg),
        "--weights",
        s(&fixture(name, "state_dict.safetensors")),
        "--input",
        s(&big),
        "--output",
        s(&out),
    ]);
    assert!(e.contains("big.safetensors"), "{e}");
    assert!(start.elapsed().as_secs_f64() < 5.0);
}

/// Messages: one line without backtrace frames even with `RUST_BACKTRACE`
/// set, no Rust debug formatting, no path repeated.
#[test]
fn r22_messages_are_one_clean_line() {
    let name = "msdnet_cifar100_lingrow";
    let dir = temp_dir("messages");
    let out = dir.join("out.safetensors");
    let (cfg, io) = (fixture(name, "config.json"), fixture(name, "io.safetensors"));
    // Another architecture's weights: a long key report, on one line.
    let run = anytime()
        .env("RUST_BACKTRACE", "full")
        .args(["infer", "--arch", "msdnet", "--config", s(&cfg)])
        .args([
            "--weights",
            s(&fixture("ranet_cifar10_lg", "state_dict.safetensors")),
            "--input",
            s(&io),
            "--output",
            s(&out),
        ])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("stack backtrace") && !err.contains("rust_begin_unwind"), "{err}");
    // Starting from weights that do not fit: the keys named plainly.
    let data = crate::util::root().join("data/fashion-mnist-sample");
    let init = |run: &str, weights: &Path| {
        let run = dir.join(run);
        fails(&["train", "--model", "msdnet-tiny", "--data-dir", s(&data), "--run-dir", s(&run), "--init", s(weights)])
    };
    let e = init("run", &fixture("ranet_cifar10_lg", "state_dict.safetensors"));
    assert!(e.contains("does not fit this model") && !e.contains("Some(") && !e.contains("None"), "{e}");
    // A missing file is named once.
    let e = init("run2", &dir.join("missing.pth"));
    assert_eq!(e.matches("missing.pth").count(), 1, "{e}");
}
