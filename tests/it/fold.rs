//! The fused inference path (each batch norm folded into the convolution
//! before it, the ReLU applied as the convolution stores its output: the
//! default) against the layer-by-layer one (`--no-fold`), on every shipped
//! model, through `anytime infer`: per-exit logits and features within
//! 1e-4 of each tensor's scale, the same predictions.

use crate::util::{ok, temp_dir};
use candle_core::{Device, Tensor};
use std::io::Read;

/// The first `n` images of the bundled Fashion-MNIST sample, normalised as
/// the shipped models were trained (mean 0.286, std 0.353), each in the
/// middle of a `side`×`side` canvas of the background value.
fn sample_input(n: usize, side: usize) -> Tensor {
    let path = crate::util::root().join("data/fashion-mnist-sample/t10k-images-idx3-ubyte.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("the bundled sample"))
        .read_to_end(&mut bytes)
        .expect("gzip");
    assert_eq!(&bytes[..4], &[0, 0, 8, 3], "an IDX image file");
    let pixels = &bytes[16..];
    let (mean, std) = (0.286f32, 0.353f32);
    let off = (side - 28) / 2;
    let mut v = vec![-mean / std; n * side * side];
    for i in 0..n {
        for y in 0..28 {
            for x in 0..28 {
                let p = f32::from(pixels[i * 784 + y * 28 + x]) / 255.0;
                v[i * side * side + (y + off) * side + x + off] = (p - mean) / std;
            }
        }
    }
    Tensor::from_vec(v, (n, 1, side, side), &Device::Cpu).expect("input")
}

#[test]
fn folded_inference_matches_layer_by_layer_on_every_shipped_model() {
    let models: serde_json::Value = serde_json::from_str(&ok(&["models", "--json"])).expect("models --json");
    let shipped: Vec<(String, String)> = models
        .as_array()
        .expect("a list")
        .iter()
        .filter(|m| m["weights"] == true)
        .map(|m| {
            let arch = m["arch"].as_str().expect("arch");
            // SCAN takes Fashion-MNIST padded to 32x32.
            let dataset = if arch == "scan" { "fashion-mnist-pad32" } else { m["dataset"].as_str().expect("dataset") };
            (m["name"].as_str().expect("name").to_string(), dataset.to_string())
        })
        .collect();
    assert!(shipped.len() >= 6, "{shipped:?}");
    let dir = temp_dir("fold");
    for (name, dataset) in &shipped {
        let side = match dataset.as_str() {
            "fashion-mnist" => 28,
            "fashion-mnist-pad32" => 32,
            "fashion-mnist-cluttered96" => 96,
            other => panic!("{name}: no sample input for dataset {other}; add one here"),
        };
        let input = dir.join(format!("{name}-input.safetensors"));
        candle_core::safetensors::save(&[("input", sample_input(32, side))].into_iter().collect(), &input)
            .expect("write input");
        let run = |fold: bool| {
            let out = dir.join(format!("{name}-{fold}.safetensors"));
            let weights = crate::util::root().join("weights").join(format!("{name}.safetensors"));
            let (i, o, w) =
                (input.to_str().expect("utf-8"), out.to_str().expect("utf-8"), weights.to_str().expect("utf-8"));
            let mut args = vec!["infer", "--model", name, "--weights", w, "--input", i, "--output", o, "--features"];
            if !fold {
                args.push("--no-fold");
            }
            ok(&args);
            candle_core::safetensors::load(&out, &Device::Cpu).expect("read output")
        };
        let (fused, plain) = (run(true), run(false));
        assert_eq!(fused.len(), plain.len(), "{name}");
        for (key, want) in &plain {
            let got = &fused[key];
            if key.starts_with("coords") {
                // GFNet's patch positions: the same patches.
                assert_eq!(
                    got.to_vec2::<i32>().expect("coords"),
                    want.to_vec2::<i32>().expect("coords"),
                    "{name} {key}"
                );
                continue;
            }
            let scale = want.abs().and_then(|t| t.max_all()).and_then(|t| t.to_scalar::<f32>()).expect("scale");
            let diff = (got - want).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>());
            let diff = diff.expect("difference");
            assert!(
                diff <= 1e-4 * scale.max(1e-3),
                "{name} {key}: folded and layer-by-layer differ by {diff} (scale {scale})"
            );
            if key.starts_with("logits") {
                let argmax = |t: &Tensor| t.argmax(1).and_then(|a| a.to_vec1::<u32>()).expect("argmax");
                assert_eq!(argmax(got), argmax(want), "{name} {key}: predictions");
            }
        }
    }
}
