//! Bad inputs: a clear one-line error and exit code 1, never a panic.

use crate::util::{fails, fixture, s, temp_dir};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

const NAME: &str = "msdnet_cifar100_lingrow";

fn infer(weights: &str, input: &str) -> String {
    let out = temp_dir("bad-out").join("out.safetensors");
    fails(&[
        "infer",
        "--arch",
        "msdnet",
        "--config",
        s(&fixture(NAME, "config.json")),
        "--weights",
        weights,
        "--input",
        input,
        "--output",
        s(&out),
    ])
}

fn input_file(dir: &std::path::Path, name: &str, dims: &[usize], dtype: DType) -> String {
    let t = Tensor::zeros(dims, dtype, &Device::Cpu).expect("tensor");
    let p = dir.join(name);
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), t)]), &p).expect("save");
    s(&p).to_string()
}

#[test]
fn r05_bad_weights() {
    let dir = temp_dir("bad-weights");
    let input = s(&fixture(NAME, "io.safetensors")).to_string();
    // Another model's weights: wrong key set.
    let e = infer(s(&fixture("ranet_cifar10_lg", "io.safetensors")), &input);
    assert!(e.contains("missing"), "{e}");
    // A truncated checkpoint.
    let bytes = std::fs::read(fixture(NAME, "checkpoint.pth.tar")).expect("fixture");
    let cut = dir.join("cut.pth.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = infer(s(&cut), &input);
    assert!(e.contains("cut.pth.tar"), "{e}");
    // Garbage.
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not weights at all").expect("write");
    assert!(infer(s(&junk), &input).contains("junk.safetensors"));
    // Missing file.
    assert!(infer("/nonexistent/w.safetensors", &input).contains("/nonexistent/w.safetensors"));
}

#[test]
fn r05_bad_inputs() {
    let dir = temp_dir("bad-inputs");
    let w = s(&fixture(NAME, "state_dict.safetensors")).to_string();
    let e = infer(&w, &input_file(&dir, "gray.safetensors", &[1, 1, 32, 32], DType::F32));
    assert!(e.contains("3-channel") && e.contains("1 channels"), "{e}");
    let e = infer(&w, &input_file(&dir, "small.safetensors", &[1, 3, 8, 8], DType::F32));
    assert!(e.contains("17 to 48"), "{e}");
    let e = infer(&w, &input_file(&dir, "large.safetensors", &[1, 3, 64, 64], DType::F32));
    assert!(e.contains("17 to 48"), "{e}");
    let e = infer(&w, &input_file(&dir, "f64.safetensors", &[1, 3, 32, 32], DType::F64));
    assert!(e.contains("f32"), "{e}");
    let e = infer(&w, &input_file(&dir, "rank3.safetensors", &[3, 32, 32], DType::F32));
    assert!(e.contains("[N, 3, H, W]"), "{e}");
}

#[test]
fn r05_bad_configs_and_names() {
    let dir = temp_dir("bad-configs");
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, r#"{"cli_args": "--nBlocks 3 --stepmode foo"}"#).expect("write");
    let e = fails(&["flops", "--arch", "msdnet", "--config", s(&cfg)]);
    assert!(e.contains("invalid choice: 'foo'"), "{e}");
    std::fs::write(&cfg, r#"{"cli_args": "--nBlocks 0"}"#).expect("write");
    assert!(fails(&["flops", "--arch", "msdnet", "--config", s(&cfg)]).contains("nBlocks must be at least 1"));
    std::fs::write(&cfg, "{ not json").expect("write");
    assert!(fails(&["flops", "--arch", "msdnet", "--config", s(&cfg)]).contains("not valid JSON"));
    assert!(fails(&["flops", "--model", "nope"]).contains("unknown model 'nope'"));
    assert!(fails(&["flops", "--model", "msdnet-fmnist", "--input-size", "0"]).contains("at least 1"));
    assert!(fails(&["flops", "--model", "msdnet-fmnist", "--input-size", "10"]).contains("17 to 48"));
    assert!(
        fails(&["eval", "--model", "msdnet-fmnist", "--weights", "/nonexistent.safetensors"])
            .contains("does not exist")
    );
    let e = fails(&[
        "eval",
        "--model",
        "msdnet-tiny",
        "--weights",
        s(&fixture(NAME, "state_dict.safetensors")),
        "--data-dir",
        "/nonexistent",
    ]);
    assert!(e.contains("missing") || e.contains("apt-get"), "{e}");
}
