//! GFNet through the CLI: the reference step loop's logits, actions and
//! patch coordinates from `infer --arch gfnet`, per-step costs, and clear
//! errors for bad configurations and inputs.

use crate::util::{close_tol, fails, fixture, infer, ok, s, temp_dir};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// The fixture's synthetic weights (`anytime_io::synthetic` on its key
/// list), written as safetensors.
fn weights(name: &str, dir: &std::path::Path) -> PathBuf {
    let keys: Vec<(String, Vec<usize>)> =
        serde_json::from_str(&std::fs::read_to_string(fixture(name, "keys.json")).expect("keys")).expect("key list");
    let tensors: HashMap<String, Tensor> =
        keys.iter().map(|(k, shape)| (k.clone(), anytime_io::synthetic::tensor(k, shape).expect("tensor"))).collect();
    let path = dir.join("weights.safetensors");
    candle_core::safetensors::save(&tensors, &path).expect("save");
    path
}

/// The reference's logits, actions and coordinates for both encoder
/// families (scale-relative tolerance: see the models crate's parity test).
#[test]
fn r24_gfnet_infer_matches_the_reference_step_loop() {
    // The fused inference path (the default), then layer by layer.
    let runs =
        [("gfnet_mnv3_small", 4e-4f32), ("gfnet_resnet18", 3e-5)].into_iter().flat_map(|c| [(c, true), (c, false)]);
    for ((name, tol), fold) in runs {
        let dir = temp_dir(&format!("gfnet-{name}-{fold}"));
        let w = weights(name, &dir);
        let out = dir.join("out.safetensors");
        let (cfg, io) = (fixture(name, "config.json"), fixture(name, "io.safetensors"));
        let got = infer("gfnet", &cfg, &w, &io, &out, if fold { &[] } else { &["--no-fold"] });
        let want = candle_core::safetensors::load(&io, &Device::Cpu).expect("fixture");
        let t: usize = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&cfg).expect("config"))
            .expect("json")["T"]
            .as_u64()
            .expect("T") as usize;
        let mut names: Vec<&String> = got.keys().collect();
        names.sort();
        assert_eq!(names.len(), t + 2 * (t - 1), "{name}: {names:?}");
        for k in 0..t {
            let (a, b) = (
                got[&format!("logits.{k}")].to_vec2::<f32>().unwrap(),
                want[&format!("logits.{k}")].to_vec2::<f32>().unwrap(),
            );
            let scale = 1.0 + b.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((x - y).abs() <= tol * scale, "{name} logits.{k}: {x} vs {y}");
            }
            if k == 0 {
                continue;
            }
            // The MobileNet fixture's activations of ~6e4 put the folded
            // path's actions up to 1.5e-4 from the reference's (weights
            // scaled by the batch norms before the sums): half the logits'
            // scaled tolerance there, the fixtures' 1e-4 otherwise.
            let atol = if fold { (tol / 2.0).max(1e-4) } else { 1e-4 };
            let what = format!("{name} actions.{k} (fold {fold})");
            close_tol(&what, &got[&format!("actions.{k}")], &want[&format!("actions.{k}")], atol);
            let coords = &got[&format!("coords.{k}")];
            assert_eq!(coords.dtype(), candle_core::DType::I32, "{name}");
            assert_eq!(
                coords.to_vec2::<i32>().unwrap(),
                want[&format!("coords.{k}")].to_vec2::<i32>().unwrap(),
                "{name} coords.{k}"
            );
        }
    }
}

/// `flops --arch gfnet` counts multiply-accumulates per step at the
/// configured image size: the issue's MobileNetV3-Large x0.5 (1 channel, 10
/// classes) at 48-pixel glance and patches costs about 4.45 M per encoder
/// pass; other sizes are refused.
#[test]
fn r24_gfnet_flops_and_bad_configurations() {
    let dir = temp_dir("gfnet-flops");
    let cfg = dir.join("mnv3.json");
    std::fs::write(
        &cfg,
        r#"{"model_arch": "mobilenetv3_large_100", "channel_multiplier": 0.5, "num_classes": 10,
            "image_size": 96, "patch_size": 48, "T": 4, "in_channels": 1}"#,
    )
    .expect("config");
    let out = ok(&["flops", "--arch", "gfnet", "--config", s(&cfg), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["counting"], "multiply-accumulate", "{out}");
    let flops: Vec<f64> = v["flops"].as_array().expect("flops").iter().map(|x| x.as_f64().expect("f")).collect();
    assert_eq!(flops.len(), 4);
    // Step 0: the encoder with its classifier (4.45 M, as counted from the
    // reference in the project's notes); each later step adds the encoder
    // (without the classifier, 1280·10), the policy (1x1 conv 480→32 on 2x2,
    // linear 128→256, a GRU step 3·(256·256 + 256·256), the actor 256→2) and
    // cascade head k (1280·(k+1)·10).
    assert!((flops[0] / 1e6 - 4.45).abs() < 0.05, "{flops:?}");
    let policy = 480.0 * 32.0 * 4.0 + 128.0 * 256.0 + 3.0 * 2.0 * 256.0 * 256.0 + 256.0 * 2.0;
    for k in 1..4 {
        let step = flops[k] - flops[k - 1];
        assert_eq!(step, flops[0] - 12_800.0 + policy + 12_800.0 * (k as f64 + 1.0), "step {k}: {flops:?}");
    }
    assert!(flops.windows(2).all(|w| w[1] > w[0]));
    let e = fails(&["flops", "--arch", "gfnet", "--config", s(&cfg), "--input-size", "64"]);
    assert!(e.contains("96x96") && e.contains("64x64"), "{e}");
    for (json, member) in [
        (r#"{"model_arch": "vgg", "num_classes": 10, "image_size": 96, "patch_size": 48, "T": 4}"#, "model_arch"),
        (r#"{"model_arch": "resnet50", "num_classes": 10, "image_size": 96, "patch_size": 128, "T": 4}"#, "patch_size"),
        (r#"{"model_arch": "resnet50", "num_classes": 10, "image_size": 96, "patch_size": 48}"#, "T"),
        (
            r#"{"model_arch": "resnet50", "num_classes": 10, "image_size": 96, "patch_size": 48, "T": 2, "glance": 1}"#,
            "glance",
        ),
    ] {
        let bad = dir.join(format!("{member}.json"));
        std::fs::write(&bad, json).expect("config");
        let e = fails(&["flops", "--arch", "gfnet", "--config", s(&bad)]);
        assert!(e.contains(&format!("`{member}`")), "{member}: {e}");
    }
}

/// `eval --patch-policy` (the learned policy's baselines) applies to GFNet
/// models only, and names the accepted values.
#[test]
fn r24_patch_policy_option_is_checked() {
    let e = fails(&["eval", "--model", "msdnet-fmnist", "--patch-policy", "centre"]);
    assert!(e.contains("GFNet") && e.contains("msdnet"), "{e}");
    let e = fails(&["eval", "--model", "msdnet-fmnist", "--patch-policy", "sideways"]);
    assert!(e.contains("random:SEED"), "{e}");
}
