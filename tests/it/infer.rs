//! `anytime infer` on the reference fixtures.

use crate::util::{fixture, ok, s, temp_dir};
use candle_core::Device;

fn check(arch: &str, name: &str, weights: &str) {
    let dir = temp_dir(&format!("infer-{name}-{weights}"));
    let out = dir.join("out.safetensors");
    let io = fixture(name, "io.safetensors");
    ok(&[
        "infer",
        "--arch",
        arch,
        "--config",
        s(&fixture(name, "config.json")),
        "--weights",
        s(&fixture(name, weights)),
        "--input",
        s(&io),
        "--output",
        s(&out),
    ]);
    let got = candle_core::safetensors::load(&out, &Device::Cpu).expect("output");
    let want = candle_core::safetensors::load(&io, &Device::Cpu).expect("fixture");
    let n = want.keys().filter(|k| k.starts_with("logits.")).count();
    assert!(n > 0);
    assert_eq!(got.len(), n, "one logits tensor per exit");
    for i in 0..n {
        let k = format!("logits.{i}");
        let a = got[&k].flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
        let b = want[&k].flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{name} {weights} {k}: {x} vs {y}");
        }
    }
}

#[test]
fn r05_msdnet_fixture_from_safetensors_and_checkpoint() {
    check("msdnet", "msdnet_cifar100_lingrow", "state_dict.safetensors");
    check("msdnet", "msdnet_cifar100_lingrow", "checkpoint.pth.tar");
}

#[test]
fn r08_ranet_fixture_from_safetensors_and_checkpoint() {
    check("ranet", "ranet_cifar10_lg", "state_dict.safetensors");
    check("ranet", "ranet_cifar10_lg", "checkpoint.pth.tar");
}
