//! `--data KIND:DIR` on `eval` and `calibrate`: CIFAR's binary version,
//! generated here, through a registry CIFAR model with seeded weights.

use crate::util::{fails, ok, s, temp_dir};
use std::path::{Path, PathBuf};

/// A CIFAR-10 binary directory: five training batches of `per` records and
/// a test batch of `test` records, pixels and labels from a formula.
fn cifar10_dir(name: &str, per: usize, test: usize) -> PathBuf {
    let dir = temp_dir(name);
    let record = |i: usize| -> Vec<u8> {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..3072).map(|p| ((p * 7 + i * 13) % 256) as u8));
        r
    };
    for b in 1..=5 {
        let bytes: Vec<u8> = (0..per).flat_map(|i| record(b * 1000 + i)).collect();
        std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).expect("write");
    }
    let bytes: Vec<u8> = (0..test).flat_map(record).collect();
    std::fs::write(dir.join("test_batch.bin"), bytes).expect("write");
    dir
}

/// Seeded weights for a registry model, written as safetensors.
fn seeded_weights(model: &str, path: &Path) {
    let entry = anytime_models::registry::lookup(model).expect("registry model");
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
    (entry.config)().build(vb).expect("build");
    vm.save(path).expect("save");
}

#[test]
fn r26_eval_and_calibrate_read_cifar() {
    let dir = cifar10_dir("cifar10", 1100, 12);
    let weights = temp_dir("cifar-weights").join("ranet-cifar10.safetensors");
    seeded_weights("ranet-cifar10", &weights);
    let data = format!("cifar10:{}", dir.display());
    let out = ok(&["eval", "--model", "ranet-cifar10", "--weights", s(&weights), "--data", &data, "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(r["images"], 12, "{out}");
    assert_eq!(r["exits"].as_array().map(Vec::len), Some(6), "{out}");
    // The held-out split is 5,000 of the 5,500 training records.
    let out = ok(&[
        "eval",
        "--model",
        "ranet-cifar10",
        "--weights",
        s(&weights),
        "--data",
        &data,
        "--split",
        "val",
        "--limit",
        "20",
        "--json",
    ]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).expect("json")["images"], 20, "{out}");
    let cal = temp_dir("cifar-cal").join("cal.json");
    ok(&[
        "calibrate",
        "--model",
        "ranet-cifar10",
        "--weights",
        s(&weights),
        "--data",
        &data,
        "--budget-fraction",
        "0.5",
        "--output",
        s(&cal),
    ]);
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cal).expect("read")).expect("json");
    assert_eq!(c["holdout_images"], 5000, "{c}");

    // The reference RANet checkpoint through --arch/--config/--weights on the
    // same data (its configuration says CIFAR-10: MSDNet's normalisation).
    let (config, fixture_weights) = (
        crate::util::fixture("ranet_cifar10_lg", "config.json"),
        crate::util::fixture("ranet_cifar10_lg", "state_dict.safetensors"),
    );
    let model = ["--arch", "ranet", "--config", s(&config), "--weights", s(&fixture_weights)];
    let out = ok(&[&["eval"][..], &model, &["--data", &data, "--json"]].concat());
    let r: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!((r["images"].as_u64(), r["model"].as_str()), (Some(12), Some("ranet:state_dict.safetensors")), "{out}");
    assert!(r["exits"][0]["top5"].is_number(), "{out}");
    // A checkpoint has no registry data: the images must be named.
    let e = fails(&[&["eval"][..], &model].concat());
    assert!(e.contains("--data KIND:DIR"), "{e}");
    // Options that do not go together, and bad preprocessing flags.
    let e = fails(&[&["eval"][..], &model, &["--data", &data, "--per-image", "x.jsonl", "--budgeted"]].concat());
    assert!(e.contains("cannot be used with"), "{e}");
    let e = fails(&[&["eval"][..], &model, &["--data", &data, "--crop", "0"]].concat());
    assert!(e.contains("--crop must be a positive number"), "{e}");
    let e = fails(&[&["eval"][..], &model, &["--data", &data, "--std", "0.2,0,0.2"]].concat());
    assert!(e.contains("--std values must be positive"), "{e}");
    let e = fails(&[&["eval"][..], &model, &["--data", "imagefolder:/no/such/folder"]].concat());
    assert!(e.contains("/no/such/folder"), "{e}");

    // A model of other images, a missing file, an unknown kind, a bad form.
    let e = fails(&["eval", "--model", "msdnet-fmnist", "--data", &data]);
    assert!(e.contains("takes 1x28x28") && e.contains("not 3x32x32"), "{e}");
    std::fs::remove_file(dir.join("test_batch.bin")).expect("remove");
    let e = fails(&["eval", "--model", "ranet-cifar10", "--weights", s(&weights), "--data", &data]);
    assert!(e.contains("test_batch.bin") && e.contains("not found"), "{e}");
    let e = fails(&["eval", "--model", "ranet-cifar10", "--data", "svhn:/x"]);
    assert!(e.contains("unknown data kind 'svhn'"), "{e}");
    let e = fails(&["eval", "--model", "ranet-cifar10", "--data", "cifar10"]);
    assert!(e.contains("is not KIND:DIR"), "{e}");
    // Too few training images for the held-out split.
    let small = cifar10_dir("cifar10-small", 10, 4);
    let e = fails(&[
        "calibrate",
        "--model",
        "ranet-cifar10",
        "--weights",
        s(&weights),
        "--data",
        &format!("cifar10:{}", small.display()),
        "--budget-fraction",
        "0.5",
        "--output",
        s(&cal),
    ]);
    assert!(e.contains("5000"), "{e}");
}
