//! Test helpers: seeded random tensors, closeness checks and a
//! central-difference gradient checker.

use candle_core::{Device, Result, Tensor, Var};

/// A tiny deterministic generator (64-bit LCG) for test cases.
pub struct Lcg(pub u64);

impl Lcg {
    /// Next raw value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform float in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

/// A tensor of uniform [-1, 1) values from `seed`.
pub fn rand_tensor(dims: &[usize], seed: u64, dev: &Device) -> Result<Tensor> {
    let mut rng = Lcg(seed.wrapping_mul(2654435761).wrapping_add(1));
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.unit()).collect::<Vec<_>>(), dims, dev)
}

/// Asserts `|a - b| <= tol · (1 + |b|)` element-wise.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
    }
    Ok(())
}

/// Checks the gradient of `f(x)·r` (r a fixed random weighting) with respect
/// to `x` against central differences in f64 over every element, where `f`
/// maps a tensor to a tensor.
pub fn grad_check(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>, tol: f64) -> Result<()> {
    let xv = Var::from_tensor(x)?;
    let y = f(xv.as_tensor())?;
    let r = rand_tensor(y.dims(), 77, x.device())?;
    let analytic = (y * &r)?.sum_all()?.backward()?;
    let g = analytic.get(xv.as_tensor()).expect("no gradient").flatten_all()?.to_vec1::<f32>()?;
    let base = x.flatten_all()?.to_vec1::<f32>()?;
    let eps = 1e-2f32;
    let value = |v: &[f32]| -> Result<f64> {
        let t = Tensor::from_vec(v.to_vec(), x.dims(), x.device())?;
        let y = f(&t)?;
        let s = (y.to_dtype(candle_core::DType::F64)? * r.to_dtype(candle_core::DType::F64)?)?.sum_all()?;
        s.to_scalar::<f64>()
    };
    for i in 0..base.len() {
        let mut p = base.clone();
        p[i] += eps;
        let up = value(&p)?;
        p[i] -= 2.0 * eps;
        let down = value(&p)?;
        let numeric = (up - down) / (2.0 * eps as f64);
        let a = g[i] as f64;
        assert!((a - numeric).abs() <= tol * (1.0 + numeric.abs()), "element {i}: analytic {a} vs numeric {numeric}");
    }
    Ok(())
}

/// The tensors of a golden fixture under `testdata/` (written by
/// `scripts/fixtures/layers.py` from PyTorch).
pub fn fixture(name: &str) -> Result<std::collections::HashMap<String, Tensor>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
    candle_core::safetensors::load(path, &Device::Cpu)
}

/// The tensor `key` of a fixture, or a panic naming it.
pub fn get<'a>(f: &'a std::collections::HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    f.get(key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}
