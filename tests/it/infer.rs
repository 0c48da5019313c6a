//! `anytime infer` on the reference fixtures.

use crate::util::{close, fixture, infer, infer_args, ok, s, temp_dir};
use candle_core::Device;

fn check(arch: &str, name: &str, weights: &str) {
    let out = temp_dir(&format!("infer-{name}-{weights}")).join("out.safetensors");
    let io = fixture(name, "io.safetensors");
    let got = infer(arch, &fixture(name, "config.json"), &fixture(name, weights), &io, &out, &[]);
    let want = candle_core::safetensors::load(&io, &Device::Cpu).expect("fixture");
    let n = want.keys().filter(|k| k.starts_with("logits.")).count();
    assert!(n > 0);
    assert_eq!(got.len(), n, "one logits tensor per exit");
    for i in 0..n {
        let k = format!("logits.{i}");
        close(
            &format!("{name} {weights} {k}"),
            &got[&k].flatten_all().expect("f32"),
            &want[&k].flatten_all().expect("f32"),
        );
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

/// `--features` writes `features.<k>` [N, D] next to `logits.<k>`, and each is
/// the input of exit k's last linear layer: `features.k · Wᵀ + b` equals
/// `logits.k` with W, b the fixture's `classifier.<k>.linear.*`.
fn check_features(arch: &str, name: &str) {
    let dir = temp_dir(&format!("infer-features-{name}"));
    let out = dir.join("out.safetensors");
    let weights = fixture(name, "state_dict.safetensors");
    let config = fixture(name, "config.json");
    let args = ["--arch", arch, "--config", s(&config), "--weights", s(&weights)];
    let io = fixture(name, "io.safetensors");
    ok(&[&["infer"], &args[..], &["--input", s(&io), "--output", s(&out), "--features"]].concat());
    let got = candle_core::safetensors::load(&out, &Device::Cpu).expect("output");
    let params = candle_core::safetensors::load(&weights, &Device::Cpu).expect("weights");
    let input = candle_core::safetensors::load(&io, &Device::Cpu).expect("fixture");
    let n = input["input"].dim(0).expect("batch");
    let exits = got.keys().filter(|k| k.starts_with("logits.")).count();
    assert!(exits > 1);
    assert_eq!(got.len(), 2 * exits, "one logits and one features tensor per exit");
    for k in 0..exits {
        let w = &params[&format!("classifier.{k}.linear.weight")];
        let b = &params[&format!("classifier.{k}.linear.bias")];
        let f = &got[&format!("features.{k}")];
        let logits = &got[&format!("logits.{k}")];
        assert_eq!(f.dims(), &[n, w.dim(1).expect("in features")], "{name} features.{k}");
        let again = f.matmul(&w.t().expect("t")).and_then(|t| t.broadcast_add(b)).expect("linear");
        let a = again.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
        let l = logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32");
        assert_eq!(a.len(), l.len());
        for (x, y) in a.iter().zip(&l) {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{name} exit {k}: {x} vs {y}");
        }
    }
    // Without the flag, only logits.
    let plain = dir.join("plain.safetensors");
    ok(&[&["infer"], &args[..], &["--input", s(&io), "--output", s(&plain)]].concat());
    let plain = candle_core::safetensors::load(&plain, &Device::Cpu).expect("output");
    assert_eq!(plain.len(), exits);
}

#[test]
fn features_are_the_last_linear_layers_input() {
    check_features("msdnet", "msdnet_cifar100_lingrow");
    check_features("ranet", "ranet_cifar10_lg");
}

/// `--device`: cpu runs; a GPU device in a binary built without its feature,
/// and an unknown device, are one clear error each.
#[test]
fn r26_device_option() {
    let dir = temp_dir("infer-device");
    let out = dir.join("out.safetensors");
    let name = "scan_basic_w8";
    let (config, weights, io) =
        (fixture(name, "config.json"), fixture(name, "state_dict.safetensors"), fixture(name, "io.safetensors"));
    let run = |device: &str| {
        crate::util::run(&[&infer_args("scan", &config, &weights, &io, &out)[..], &["--device", device]].concat())
    };
    assert!(run("cpu").status.success());
    if !cfg!(feature = "cuda") {
        let e = String::from_utf8_lossy(&run("cuda:0").stderr).to_string();
        assert!(e.contains("without CUDA") && e.contains("--features cuda"), "{e}");
    }
    let e = String::from_utf8_lossy(&run("tpu").stderr).to_string();
    assert!(e.contains("cpu, cuda, cuda:N or metal"), "{e}");
}

/// `--device` on the commands that read datasets: `cpu` runs, a GPU without
/// its feature and an unknown device are one clear error, before any work.
#[test]
fn r26_device_option_on_every_data_command() {
    let sample = crate::util::root().join("data/fashion-mnist-sample");
    let images = sample.join("t10k-images-idx3-ubyte.gz");
    let (sample, images) = (sample.to_str().expect("utf-8 path"), images.to_str().expect("utf-8 path"));
    let cal = temp_dir("device-cal").join("cal.json");
    let cal = cal.to_str().expect("utf-8 path");
    // (command, whether it runs on the sample: calibration needs the full
    // training set's 5,000 held-out images, so it is only checked for the
    // device errors, which come before any data is read).
    let run_dir = temp_dir("device-train");
    let run_dir = run_dir.to_str().expect("utf-8 path");
    let commands: [(Vec<&str>, bool); 5] = [
        (vec!["eval", "--model", "msdnet-fmnist", "--data-dir", sample, "--limit", "64"], true),
        (vec!["calibrate", "--model", "msdnet-fmnist", "--budget-fraction", "0.5", "--output", cal], false),
        (vec!["train", "--model", "msdnet-tiny", "--run-dir", run_dir, "--data-dir", sample, "--epochs", "1"], false),
        (vec!["classify", "--model", "msdnet-fmnist", "--deadline", "100", images], true),
        (vec!["demo"], true),
    ];
    for (args, runs) in &commands {
        let with = |device: &str| crate::util::run(&[&args[..], &["--device", device]].concat());
        if *runs {
            let out = with("cpu");
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        for (device, feature) in [("cuda", "cuda"), ("metal", "metal")] {
            if !cfg!(feature = "cuda") && !cfg!(feature = "metal") {
                let e = String::from_utf8_lossy(&with(device).stderr).to_string();
                assert!(e.contains(&format!("--features {feature}")), "{args:?} {device}: {e}");
            }
        }
        let e = String::from_utf8_lossy(&with("tpu").stderr).to_string();
        assert!(e.contains("cpu, cuda, cuda:N or metal"), "{args:?}: {e}");
    }
}
