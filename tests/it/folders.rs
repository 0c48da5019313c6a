//! Real images: an official checkpoint (the reference code's state dict)
//! classifying a folder of PNGs and JPEGs through `--arch --config
//! --weights`, checked against torchvision's preprocessing; image folders
//! streamed by `eval` and `calibrate` (odd sizes, grey and RGB, a corrupt
//! file skipped and named); shards that merge into the unsharded run.

use crate::util::{fails, fixture, ok, run, s, temp_dir};
use anytime_eval::shards::{Shard, merge};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The PNGs of the preprocessing fixture (torchvision's tensors for them are
/// exact) and its JPEGs.
const PNGS: [&str; 4] = ["grey_640x480.png", "rgb_257x1000.png", "rgb_300x200.png", "rgb_97x61.png"];
const JPEGS: [&str; 2] = ["grey_333x500.jpg", "rgb_500x375.jpg"];

fn photos(name: &str) -> PathBuf {
    let dir = temp_dir(name).join("photos");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in PNGS.iter().chain(&JPEGS) {
        std::fs::copy(fixture("preprocess", f), dir.join(f)).expect("copy");
    }
    dir
}

/// torchvision's `Resize(256)` + `CenterCrop(224)` bytes of each PNG,
/// normalised with ImageNet's mean and std, as one `[4, 3, 224, 224]` input.
fn torchvision_input() -> Tensor {
    use std::io::Read;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(fixture("preprocess", "expected.safetensors.gz")).expect("open"))
        .read_to_end(&mut bytes)
        .expect("gunzip");
    let t = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).expect("safetensors");
    let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
    let mut all = Vec::new();
    for f in PNGS {
        let u8s = t[f].flatten_all().and_then(|x| x.to_vec1::<u8>()).expect("u8");
        all.extend(
            u8s.iter().enumerate().map(|(i, &v)| (v as f32 / 255.0 - mean[i / (224 * 224)]) / std[i / (224 * 224)]),
        );
    }
    Tensor::from_vec(all, (PNGS.len(), 3, 224, 224), &Device::Cpu).expect("tensor")
}

fn records(path: &Path) -> Vec<Value> {
    Shard::load(path).expect("shard file").records
}

/// A record without its wall-clock time.
fn untimed(mut r: Value) -> Value {
    if let Some(o) = r.as_object_mut() {
        o.remove("ms");
    }
    r
}

#[test]
fn r26_an_official_checkpoint_classifies_a_folder_of_jpegs() {
    let dir = photos("official-classify");
    std::fs::write(dir.join("broken.jpg"), b"\xff\xd8\xff not really a JPEG").expect("write");
    let (config, weights) =
        (fixture("msdnet_imagenet_tiny", "config.json"), fixture("msdnet_imagenet_tiny", "state_dict.safetensors"));
    let model = ["--arch", "msdnet", "--config", s(&config), "--weights", s(&weights)];
    let out = run(&[&["classify"][..], &model, &[s(&dir)]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Six images in sorted order, the corrupt one skipped and named.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(
        lines[0].contains("grey_333x500.jpg") && lines[0].contains("resized and centre-cropped from 333x500"),
        "{}",
        lines[0]
    );
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    // No budget: every image through the last of the three exits.
    assert!(lines.iter().all(|l| l.contains("exit 2,")), "{stdout}");

    // The PNGs' answers are those of the reference transform's tensors run
    // through `infer` (the same weights): our preprocessing is torchvision's.
    let scratch = temp_dir("official-classify-infer");
    let input = scratch.join("input.safetensors");
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input".to_string(), torchvision_input())]),
        &input,
    )
    .expect("save");
    let got = crate::util::infer("msdnet", &config, &weights, &input, &scratch.join("out.safetensors"), &[]);
    let last = got["logits.2"].to_vec2::<f32>().expect("logits");
    let jsonl = scratch.join("all.jsonl");
    ok(&[&["classify"][..], &model, &[s(&dir), "--jsonl", s(&jsonl)]].concat());
    let recs = records(&jsonl);
    assert_eq!(recs.len(), 7);
    assert!(
        recs.iter().any(|r| r["image"].as_str().is_some_and(|i| i.ends_with("broken.jpg")) && r.get("error").is_some())
    );
    for (k, png) in PNGS.iter().enumerate() {
        let r = recs.iter().find(|r| r["image"].as_str().is_some_and(|i| i.ends_with(png))).expect("a record");
        let row = &last[k];
        let best = (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).expect("classes");
        assert_eq!(r["prediction"], best, "{png}: {r}");
        let max = row[best];
        let p = 1.0 / row.iter().map(|v| (v - max).exp()).sum::<f32>();
        assert!((r["confidence"].as_f64().expect("confidence") as f32 - p).abs() < 1e-4, "{png}: {r} vs {p}");
    }

    // Three shards merge into the unsharded file (times aside).
    let parts: Vec<Shard> = (1..=3)
        .map(|k| {
            let f = scratch.join(format!("part{k}.jsonl"));
            ok(&[&["classify"][..], &model, &[s(&dir), "--jsonl", s(&f), "--shard", &format!("{k}/3")]].concat());
            Shard::load(&f).expect("shard")
        })
        .collect();
    assert_eq!(parts.iter().map(|p| p.records.len()).collect::<Vec<_>>(), [2, 2, 3]);
    let merged = merge(parts).expect("merge");
    let whole = Shard::load(&jsonl).expect("whole");
    assert_eq!(merged.header.run, whole.header.run);
    assert_eq!(
        merged.records.into_iter().map(untimed).collect::<Vec<_>>(),
        whole.records.into_iter().map(untimed).collect::<Vec<_>>()
    );
    // Bad shard specifications and a checkpoint without its weights.
    let e = fails(&[&["classify"][..], &model, &[s(&dir), "--jsonl", s(&jsonl), "--shard", "4/3"]].concat());
    assert!(e.contains("K/N"), "{e}");
    let e = fails(&["classify", "--arch", "msdnet", "--config", s(&config), s(&dir)]);
    assert!(e.contains("--weights"), "{e}");
}

/// A CIFAR-10 style image folder in ImageNet's layout: `train/` and `val/`,
/// ten classes, PNG and JPEG, grey and RGB, odd sizes; one corrupt file in
/// `val/`.
fn folder(name: &str) -> PathBuf {
    let root = temp_dir(name);
    for (part, per) in [("train", 2u32), ("val", 2)] {
        for c in 0..10u32 {
            let dir = root.join(part).join(format!("class{c:02}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            for k in 0..per {
                let (w, h) = (17 + 9 * c + k, 23 + 5 * k);
                if k % 2 == 0 {
                    image::RgbImage::from_fn(w, h, |x, y| {
                        image::Rgb([(x * 9 + c * 20) as u8, (y * 7) as u8, (x + y + k) as u8])
                    })
                    .save(dir.join(format!("{k}.png")))
                    .expect("png");
                } else {
                    image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 5 + y * 3 + c * 11) as u8]))
                        .save(dir.join(format!("{k}.JPG")))
                        .expect("jpeg");
                }
            }
        }
    }
    std::fs::write(root.join("val/class03/corrupt.png"), b"\x89PNG\r\n\x1a\n not an image").expect("write");
    root
}

#[test]
fn r26_eval_and_calibrate_stream_an_image_folder() {
    let root = folder("imagefolder");
    let (config, weights) =
        (fixture("ranet_cifar10_lg", "config.json"), fixture("ranet_cifar10_lg", "state_dict.safetensors"));
    let model = ["--arch", "ranet", "--config", s(&config), "--weights", s(&weights)];
    let data = format!("imagefolder:{}", root.display());
    let out = run(&[&["eval"][..], &model, &["--data", &data, "--batch-size", "7", "--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt.png"), "{stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["images"], 20, "{r}");
    assert_eq!(r["skipped"].as_array().map(Vec::len), Some(1), "{r}");
    assert!(r["skipped"][0]["path"].as_str().is_some_and(|p| p.ends_with("val/class03/corrupt.png")), "{r}");
    let exits = r["exits"].as_array().expect("exits");
    assert!(!exits.is_empty());
    for e in exits {
        let (t1, t5) = (e["accuracy"].as_f64().expect("top-1"), e["top5"].as_f64().expect("top-5"));
        assert!(t1 <= t5 && t5 <= 1.0, "{e}");
    }
    // The held-out split is a tenth of train/: 2 images.
    let out = ok(&[&["eval"][..], &model, &["--data", &data, "--split", "val", "--json"]].concat());
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["images"], 2, "{out}");
    let cal = temp_dir("imagefolder-cal").join("cal.json");
    ok(&[&["calibrate"][..], &model, &["--data", &data, "--budget-fraction", "0.6", "--output", s(&cal)]].concat());
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&cal).expect("read")).expect("json");
    assert_eq!(c["holdout_images"], 2, "{c}");
    assert!(c["model"].as_str().is_some_and(|m| m.starts_with("ranet:")), "{c}");
    // Real early exit with those thresholds on the folder.
    let out = ok(&[&["eval"][..], &model, &["--data", &data, "--calibration", s(&cal), "--json"]].concat());
    let r2: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        r2["calibrated"]["exit_counts"].as_array().map(|c| c.iter().filter_map(Value::as_u64).sum::<u64>()),
        Some(20)
    );

    // Per-image results: three shards merge into the unsharded run, whose
    // summary is the anytime pass's accuracy.
    let scratch = temp_dir("imagefolder-shards");
    let whole = scratch.join("whole.jsonl");
    ok(&[&["eval"][..], &model, &["--data", &data, "--per-image", s(&whole)]].concat());
    let parts: Vec<Shard> = (1..=3)
        .map(|k| {
            let f = scratch.join(format!("p{k}.jsonl"));
            ok(&[&["eval"][..], &model, &["--data", &data, "--per-image", s(&f), "--shard", &format!("{k}/3")]]
                .concat());
            Shard::load(&f).expect("shard")
        })
        .collect();
    let merged = merge(parts).expect("merge");
    let whole = Shard::load(&whole).expect("whole");
    assert_eq!(merged.records, whole.records);
    assert_eq!(merged.header.skipped, whole.header.skipped);
    let (a, b) = (&merged.header.summary, &whole.header.summary);
    assert_eq!(a["images"], 20);
    for (k, e) in exits.iter().enumerate() {
        assert_eq!(a["exits"][k]["accuracy"], b["exits"][k]["accuracy"]);
        assert_eq!(a["exits"][k]["top5"], b["exits"][k]["top5"]);
        assert!(
            (a["exits"][k]["accuracy"].as_f64().expect("acc") - e["accuracy"].as_f64().expect("acc")).abs() < 1e-12
        );
    }

    // A folder of other classes, a folder without classes, a model whose
    // normalisation is unknown.
    let e = fails(
        &[&["eval"][..], &model, &["--data", &format!("imagefolder:{}", root.join("val/class01").display())]].concat(),
    );
    assert!(e.contains("no class folders"), "{e}");
    std::fs::create_dir_all(root.join("val/extra")).expect("mkdir");
    image::GrayImage::new(3, 3).save(root.join("val/extra/x.png")).expect("png");
    let e = fails(&[&["eval"][..], &model, &["--data", &data]].concat());
    assert!(e.contains("different class folders") || e.contains("11 class folders"), "{e}");
    let e = fails(&[&["eval"][..], &model, &["--data", &data, "--mean", "0.5"]].concat());
    assert!(e.contains("3 values"), "{e}");
}
