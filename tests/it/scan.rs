//! SCAN through the CLI: reference parity from both weight forms, features,
//! costs, and one clear error per bad configuration.

use crate::util::{close, fails, fixture, ok, s, temp_dir};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

const FIXTURES: [&str; 2] = ["scan_basic_w8", "scan_bottleneck_w4"];

fn infer(name: &str, weights: &str, extra: &[&str]) -> HashMap<String, Tensor> {
    let out = temp_dir(&format!("scan-{name}-{weights}")).join("out.safetensors");
    let (config, file, io) = (fixture(name, "config.json"), fixture(name, weights), fixture(name, "io.safetensors"));
    crate::util::infer("scan", &config, &file, &io, &out, extra)
}

/// Per-exit logits (depth order) and features equal the reference
/// `sresnet.py`'s, from safetensors and from `torch.save(state_dict)` (bare,
/// and with `module.` keys).
#[test]
fn r23_scan_matches_the_reference_from_both_weight_forms() {
    for name in FIXTURES {
        let want = candle_core::safetensors::load(fixture(name, "io.safetensors"), &Device::Cpu).expect("fixture");
        for weights in ["state_dict.safetensors", "checkpoint.pth"] {
            let got = infer(name, weights, &["--features"]);
            assert_eq!(got.len(), 8, "{name}: logits and features of 4 exits");
            for k in 0..4 {
                for t in ["logits", "features"] {
                    let key = format!("{t}.{k}");
                    close(&format!("{name} {weights} {key}"), &got[&key], &want[&key]);
                }
            }
        }
    }
}

/// `flops --arch scan` prints the four exits' costs at 32x32, and refuses 28x28.
#[test]
fn r23_scan_flops_and_input_size() {
    let cfg = temp_dir("scan-flops").join("r18w16.json");
    std::fs::write(
        &cfg,
        r#"{"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "in_channels": 1, "width": 16}"#,
    )
    .expect("config");
    let out = ok(&["flops", "--arch", "scan", "--config", s(&cfg), "--input-size", "32"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|t| t.first().is_some_and(|x| x.parse::<usize>().is_ok()))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    // Reference rule (MACs + activations + pooling + linear biases).
    assert_eq!(rows[3][1], "42.40", "{out}");
    let e = fails(&["flops", "--arch", "scan", "--config", s(&cfg), "--input-size", "28"]);
    assert!(e.contains("32x32") && e.contains("28x28"), "{e}");
}

/// One clear error per bad configuration, naming what is wrong.
#[test]
fn r23_scan_bad_configurations() {
    let dir = temp_dir("scan-bad");
    let input = dir.join("in.safetensors");
    let zeros = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).expect("tensor");
    candle_core::safetensors::save(&HashMap::from([("input".to_string(), zeros)]), &input).expect("save");
    let weights = fixture("scan_basic_w8", "state_dict.safetensors");
    let run = |cfg: &str, what: &str| {
        let path = dir.join(format!("{what}.json"));
        std::fs::write(&path, cfg).expect("config");
        let out = dir.join("out.safetensors");
        let e = fails(&[
            "infer",
            "--arch",
            "scan",
            "--config",
            s(&path),
            "--weights",
            s(&weights),
            "--input",
            s(&input),
            "--output",
            s(&out),
        ]);
        assert!(e.contains(what), "{what}: {e}");
        e
    };
    let base = r#""layers": [2, 2, 2, 2], "num_classes": 10, "in_channels": 1, "width": 8"#;
    run(&format!(r#"{{"block": "wide", {base}}}"#), "`block`");
    run(r#"{"block": "basic", "layers": [2, 2, 2], "num_classes": 10, "in_channels": 1, "width": 8}"#, "`layers`");
    run(r#"{"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "in_channels": 1, "width": 0}"#, "`width`");
    run(&format!(r#"{{"block": "basic", {base}, "depth": 18}}"#), "`depth`");
    // A valid configuration and the fixture's weights, but a 28x28 input.
    run(&format!(r#"{{"block": "basic", {base}}}"#), "32x32");
}
