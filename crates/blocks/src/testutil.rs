//! Test helpers: golden fixtures written from PyTorch by
//! `scripts/fixtures/layers.py` and closeness checks.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use std::collections::HashMap;

/// The tensors of a fixture under `testdata/`.
pub(crate) fn fixture(name: &str) -> Result<HashMap<String, Tensor>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// The tensor `key` of a fixture, or a panic naming it.
pub(crate) fn get<'a>(f: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    f.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

/// Every fixture tensor as a `Var` (so gradients can be taken with respect
/// to the parameters a layer loads), and a builder over them.
pub(crate) fn var_builder(f: &HashMap<String, Tensor>) -> Result<(HashMap<String, Var>, VarBuilder<'static>)> {
    let vars: HashMap<String, Var> =
        f.iter().map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?))).collect::<Result<_>>()?;
    let tensors = vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    Ok((vars, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)))
}

/// Asserts `|a - b| <= 1e-4 + 1e-4·|b|` element-wise.
pub(crate) fn assert_golden(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{what}: element {i}: {x} vs {y}");
    }
    Ok(())
}

/// Checks the gradients in `grads` of the `Var`s `case.<name>` against the
/// fixture's `case.grad.<name>` for every name.
pub(crate) fn assert_grads(
    f: &HashMap<String, Tensor>,
    vars: &HashMap<String, Var>,
    grads: &candle_core::backprop::GradStore,
    case: &str,
    names: &[&str],
) -> Result<()> {
    for name in names {
        let v = vars.get(&format!("{case}.{name}")).unwrap_or_else(|| panic!("no var {case}.{name}"));
        let Some(g) = grads.get(v.as_tensor()) else { panic!("{case}: no gradient for {name}") };
        assert_golden(&format!("{case} grad {name}"), g, get(f, &format!("{case}.grad.{name}")))?;
    }
    Ok(())
}
