//! `anytime flops` against the reference counter and the papers.

use crate::util::{fixture, ok, s, temp_dir};

#[test]
fn r05_json_equals_the_reference_counter() {
    let name = "msdnet_cifar100_lingrow";
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name, "flops.json")).expect("fixture")).expect("json");
    let out = ok(&[
        "flops",
        "--arch",
        "msdnet",
        "--config",
        s(&fixture(name, "config.json")),
        "--input-size",
        "32",
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(got["flops"], want["flops"]);
    assert_eq!(got["params"], want["params"]);
    assert_eq!(got["total_parameters"], want["total_parameters"]);
}

#[test]
fn r05_published_imagenet_numbers_from_a_pasted_command() {
    let dir = temp_dir("flops-imagenet");
    let cfg = dir.join("cfg.json");
    let cmd = "python3 main.py --data-root /PATH --data ImageNet --save /SAVE --arch msdnet --batch-size 256 --epochs 90 \
               --nBlocks 5 --stepmode even --step 4 --base 4 --nChannels 32 --growthRate 16 --grFactor 1-2-4-4 \
               --bnFactor 1-2-4-4 --workers 16";
    std::fs::write(&cfg, serde_json::json!({ "cli_args": cmd }).to_string()).expect("write");
    let out = ok(&["flops", "--arch", "msdnet", "--config", s(&cfg), "--input-size", "224x224", "--json"]);
    let got: serde_json::Value = serde_json::from_str(&out).expect("json");
    let m: Vec<f64> =
        got["flops"].as_array().expect("list").iter().map(|v| v.as_f64().expect("number") / 1e6).collect();
    for (a, b) in m.iter().zip([339.9, 685.5, 1008.2, 1254.5, 1360.5]) {
        assert!((a - b).abs() < 0.05, "{m:?}");
    }
    let table = ok(&["flops", "--model", "msdnet-cifar100-anytime"]);
    assert!(table.contains("15.14") && table.contains("75.94"), "{table}");
}

#[test]
fn r08_ranet_json_equals_the_reference_counter() {
    let name = "ranet_cifar10_lg";
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name, "flops.json")).expect("fixture")).expect("json");
    let out =
        ok(&["flops", "--arch", "ranet", "--config", s(&fixture(name, "config.json")), "--input-size", "32", "--json"]);
    let got: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(got["flops"], want["flops"]);
    assert_eq!(got["params"], want["params"]);
    assert_eq!(got["total_parameters"], want["total_parameters"]);
}
