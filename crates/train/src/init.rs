//! Deterministic parameter initialisation.
//!
//! Candle draws new variables from an unseeded generator, so two runs never
//! start from the same weights. [`seeded_var_builder`] returns a `VarBuilder`
//! whose new variables follow each layer's own initialisation hint, drawn from
//! a generator seeded by `(seed, variable name)`: the same seed gives the same
//! weights bit for bit, whatever order the layers are built in.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{FanInOut, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A stable 64-bit FNV-1a hash of a variable name mixed with a seed.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Draws a tensor of `shape` following `init` from a generator seeded by
/// `(seed, name)`.
pub fn seeded_tensor(seed: u64, name: &str, shape: &Shape, init: Init, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(name_seed(seed, name));
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
        (0..n).map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32).collect()
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, stdev: f64| -> Vec<f32> {
        // Box-Muller, one value per draw pair for simplicity and determinism.
        (0..n)
            .map(|_| {
                let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                let u2 = rng.random::<f64>();
                (mean + stdev * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect()
    };
    let data = match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = match fan {
                FanInOut::FanIn | FanInOut::FanOut => fan.for_shape(shape),
            };
            let std = non_linearity.gain() / (fan.max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => uniform(&mut rng, -(3f64.sqrt() * std), 3f64.sqrt() * std),
                NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
            }
        }
    };
    Tensor::from_vec(data, shape.clone(), dev)
}

struct Seeded {
    map: VarMap,
    seed: u64,
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let var = Var::from_tensor(&seeded_tensor(self.seed, name, &s, h, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let data = self.map.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        match data.get(name) {
            Some(v) => Ok(v.as_tensor().clone()),
            None => candle_core::bail!("no variable named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.data().lock().map(|d| d.contains_key(name)).unwrap_or(false)
    }
}

/// A `VarBuilder` that stores every variable it creates in `map`, initialised
/// deterministically from `seed` (existing variables are returned as they are).
pub fn seeded_var_builder(map: &VarMap, seed: u64, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Seeded { map: map.clone(), seed }), DType::F32, dev.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_any_order() -> Result<()> {
        let dev = Device::Cpu;
        let (a, b) = (VarMap::new(), VarMap::new());
        let va = seeded_var_builder(&a, 7, &dev);
        let vb = seeded_var_builder(&b, 7, &dev);
        let hint = Init::Randn { mean: 0.0, stdev: 1.0 };
        let x1 = va.get_with_hints((3, 4), "x", hint)?;
        let y1 = va.get_with_hints(5, "y", Init::Uniform { lo: -1.0, up: 1.0 })?;
        let y2 = vb.get_with_hints(5, "y", Init::Uniform { lo: -1.0, up: 1.0 })?;
        let x2 = vb.get_with_hints((3, 4), "x", hint)?;
        assert_eq!(x1.to_vec2::<f32>()?, x2.to_vec2::<f32>()?);
        assert_eq!(y1.to_vec1::<f32>()?, y2.to_vec1::<f32>()?);
        let other = seeded_var_builder(&VarMap::new(), 8, &dev).get_with_hints((3, 4), "x", hint)?;
        assert_ne!(x1.to_vec2::<f32>()?, other.to_vec2::<f32>()?);
        // The variables live in the map.
        assert_eq!(a.all_vars().len(), 2);
        Ok(())
    }

    #[test]
    fn draws_follow_the_hint() -> Result<()> {
        let t = seeded_tensor(1, "w", &Shape::from(20_000), Init::Randn { mean: 0.5, stdev: 2.0 }, &Device::Cpu)?;
        let v = t.to_vec1::<f32>()?;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 0.5).abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05, "{mean} {var}");
        let u = seeded_tensor(1, "u", &Shape::from(1000), Init::Uniform { lo: -0.1, up: 0.3 }, &Device::Cpu)?;
        assert!(u.to_vec1::<f32>()?.iter().all(|&x| (-0.1..0.3).contains(&x)));
        Ok(())
    }
}
