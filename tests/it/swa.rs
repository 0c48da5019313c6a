//! The weight-averaging stage of a recipe: it starts from the main stage's
//! best weights, averages the weights at every epoch's end, evaluates the
//! average with recalibrated batch-norm statistics, resumes exactly, refuses
//! changed settings on resume and weights of another architecture.

use crate::util::{anytime, fails, ok, root, s, temp_dir};
use std::path::Path;

fn data() -> String {
    s(&root().join("data/fashion-mnist-sample")).to_string()
}

fn swa_args<'a>(init: &'a str, dir: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        "msdnet-tiny",
        "--stage",
        "swa",
        "--init",
        init,
        "--data-dir",
        data,
        "--run-dir",
        dir,
        "--quiet",
        "--resume-or-start",
    ]
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn r07_weight_averaging_stage() {
    let data = data();
    let main = temp_dir("swa-main");
    ok(&["train", "--model", "msdnet-tiny", "--data-dir", &data, "--run-dir", s(&main), "--quiet"]);
    let init = main.join("best.safetensors");

    // Uninterrupted.
    let whole = temp_dir("swa-whole");
    ok(&swa_args(s(&init), s(&whole), &data));
    let m = metrics(&whole);
    assert_eq!(m.len(), 2, "two epochs of the tiny recipe's stage");
    for e in &m {
        let avg = e["swa_val_acc"].as_array().expect("the average is evaluated every epoch");
        assert_eq!(avg.len(), 3);
        assert!(avg.iter().all(|a| a.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a))));
    }
    // The first epoch started from the main stage's weights, not from
    // scratch: its held-out accuracy is far above chance (10 %).
    assert!(m[0]["val_acc"][2].as_f64().expect("accuracy") > 0.3, "{:?}", m[0]);
    let average = std::fs::read(whole.join("swa.safetensors")).expect("the average is written");

    // Stopped by a time limit at checkpoints and resumed: the same average,
    // bit for bit.
    let stopped = temp_dir("swa-stopped");
    let mut args = swa_args(s(&init), s(&stopped), &data);
    args.extend(["--max-minutes", "0.004"]);
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 200, "the resumed stage does not finish");
        let out = anytime().args(&args).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if String::from_utf8_lossy(&out.stderr).contains("finished") {
            break;
        }
    }
    assert!(runs >= 3, "the time limit did not stop the stage ({runs} runs)");
    assert_eq!(std::fs::read(stopped.join("swa.safetensors")).expect("average"), average, "after {runs} runs");

    // Resuming with other settings is refused, naming what differs.
    let other = temp_dir("swa-other");
    let mut args = swa_args(s(&init), s(&other), &data);
    args.extend(["--epochs", "1"]);
    ok(&args);
    let e = fails(&swa_args(s(&init), s(&other), &data));
    assert!(e.contains("other training settings") && e.contains("epochs: 1"), "{e}");

    // Weights of another architecture, a missing file, a recipe without
    // the stage.
    let resnet = root().join("weights/resnet-mc-fmnist.safetensors");
    let e = fails(&swa_args(s(&resnet), s(&temp_dir("swa-bad")), &data));
    assert!(e.contains("resnet-mc-fmnist.safetensors") && e.contains("does not fit"), "{e}");
    let e = fails(&swa_args("/nonexistent/w.safetensors", s(&temp_dir("swa-none")), &data));
    assert!(e.contains("/nonexistent/w.safetensors"), "{e}");
    let e = fails(&["train", "--model", "resnet-mc-fmnist", "--stage", "swa", "--data-dir", &data]);
    assert!(e.contains("has no stage 'swa'") && e.contains("its stages: main"), "{e}");
}
