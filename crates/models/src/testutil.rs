//! Helpers for the golden tests against the reference fixtures in
//! `tests/fixtures/` (produced by the authors' PyTorch code; see its README).

use candle_core::{Device, Tensor};
use serde_json::Value;
use std::path::PathBuf;

/// `tests/fixtures/<name>` in the repository.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(name)
}

/// A fixture's JSON file.
pub fn json(name: &str, file: &str) -> Value {
    let path = fixture(name).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The input and per-exit logits of an `io*.safetensors` file.
pub fn io(name: &str, file: &str) -> (Tensor, Vec<Tensor>) {
    let path = fixture(name).join(file);
    let mut ts =
        candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let input = ts.remove("input").expect("input");
    let logits = (0..).map_while(|i| ts.remove(&format!("logits.{i}"))).collect();
    (input, logits)
}

/// Asserts `|a - b| <= 1e-4 + 1e-4·|b|` element-wise (the fixtures' tolerance).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    assert_close_tol(what, a, b, 1e-4)
}

/// Asserts `|a - b| <= tol + tol·|b|` element-wise.
pub fn assert_close_tol(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (tol + tol * y.abs())).fold(0f32, f32::max);
    assert!(worst <= 1.0, "{what}: worst |a-b| / ({tol} + {tol}|b|) = {worst}");
}

/// Asserts `|a - b| <= tol·(1 + max|b|)` element-wise: round-off relative to
/// the tensor's scale, for values computed in another summation order
/// (another batch size), where elements near zero carry the round-off of the
/// large terms they were summed from.
pub fn assert_close_scaled(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a");
    let b = b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b");
    let scale = 1.0 + b.iter().fold(0f32, |m, y| m.max(y.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (tol * scale)).fold(0f32, f32::max);
    assert!(worst <= 1.0, "{what}: worst |a-b| / ({tol}·(1 + max|b|)) = {worst}");
}

/// The `flops` and `params` lists of a `flops.json` entry.
pub fn flops_entry(v: &Value) -> (Vec<u64>, Vec<u64>) {
    let list = |k: &str| -> Vec<u64> {
        v[k].as_array().unwrap_or_else(|| panic!("no {k}")).iter().map(|x| x.as_f64().expect("number") as u64).collect()
    };
    (list("flops"), list("params"))
}
