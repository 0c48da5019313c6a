//! Seeded dropout and drop-path (stochastic depth).
//!
//! Both draw their masks from a random generator the caller passes in, so a
//! run is reproducible from its seed and resumable from the generator's
//! state (`rand_chacha`'s generators can be saved and restored). In training
//! mode an element ([`dropout`]) or a whole sample ([`drop_path`], as
//! timm's `drop_path` and gen-efficientnet's `drop_connect`) is zeroed with
//! probability `p` and the rest are scaled by `1 / (1 - p)`, so the expected
//! value is unchanged; the gradient is the output gradient times the same
//! mask (the mask is a constant of the graph). In eval mode, and for
//! `p = 0`, both return the input unchanged and draw nothing.
//!
//! ```
//! use anytime_ops::dropout::{dropout, drop_path};
//! use candle_core::{DType, Device, Tensor};
//! use rand::SeedableRng;
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::ones((4, 3, 2, 2), DType::F32, &Device::Cpu)?;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
//! let y = dropout(&x, 0.5, true, &mut rng)?; // elements are 0 or 2
//! assert!(y.flatten_all()?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0 || v == 2.0));
//! let z = drop_path(&x, 0.25, false, &mut rng)?; // eval: the input itself
//! assert_eq!(z.flatten_all()?.to_vec1::<f32>()?, vec![1f32; 48]);
//! # Ok(()) }
//! ```

use candle_core::{Result, Tensor, bail};
use rand::Rng;

/// Checks that `p` is a probability in `[0, 1)`.
fn check_p(p: f64, what: &str) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        bail!("{what}: the drop probability must lie in [0, 1), got {p}")
    }
    Ok(())
}

/// `len` mask values: 0 with probability `p`, else `1 / (1 - p)`, drawn in
/// order from `rng`.
fn mask<R: Rng + ?Sized>(len: usize, p: f64, rng: &mut R) -> Vec<f32> {
    let scale = (1.0 / (1.0 - p)) as f32;
    (0..len).map(|_| if rng.random::<f64>() < p { 0.0 } else { scale }).collect()
}

/// Element-wise dropout, as `F.dropout(xs, p, training=train)`: each element
/// is zeroed with probability `p` and the others scaled by `1 / (1 - p)`.
/// Draws one number per element from `rng` in row-major order (training
/// with `p > 0` only). Differentiable; `p` outside `[0, 1)` is an error.
///
/// # Shapes
/// Any shape, kept.
pub fn dropout<R: Rng + ?Sized>(xs: &Tensor, p: f64, train: bool, rng: &mut R) -> Result<Tensor> {
    check_p(p, "dropout")?;
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    let m = Tensor::from_vec(mask(xs.elem_count(), p, rng), xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
    xs.mul(&m)
}

/// Per-sample drop-path (stochastic depth): each sample (index of the first
/// dimension) is zeroed as a whole with probability `p`, the others scaled by
/// `1 / (1 - p)`. Draws one number per sample from `rng` (training with
/// `p > 0` only). Differentiable; `p` outside `[0, 1)` is an error.
///
/// # Shapes
/// `[N, …]` → `[N, …]` (at least one dimension).
pub fn drop_path<R: Rng + ?Sized>(xs: &Tensor, p: f64, train: bool, rng: &mut R) -> Result<Tensor> {
    check_p(p, "drop_path")?;
    if xs.rank() == 0 {
        bail!("drop_path: expected a tensor with a batch dimension, got a scalar")
    }
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    let n = xs.dim(0)?;
    let mut dims = vec![1usize; xs.rank()];
    dims[0] = n;
    let m = Tensor::from_vec(mask(n, p, rng), dims, xs.device())?.to_dtype(xs.dtype())?;
    xs.broadcast_mul(&m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::rand_tensor;
    use candle_core::{DType, Device, Var};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type Drop = fn(&Tensor, f64, bool, &mut ChaCha8Rng) -> Result<Tensor>;
    const OPS: [(&str, Drop); 2] = [("dropout", dropout::<ChaCha8Rng>), ("drop_path", drop_path::<ChaCha8Rng>)];

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        t.flatten_all()?.to_vec1::<f32>()
    }

    #[test]
    fn eval_and_p_zero_are_identity_and_draw_nothing() -> Result<()> {
        let x = rand_tensor(&[3, 4, 5], 1, &Device::Cpu)?;
        for (name, f) in OPS {
            let mut rng = ChaCha8Rng::seed_from_u64(5);
            assert_eq!(values(&f(&x, 0.7, false, &mut rng)?)?, values(&x)?, "{name} eval");
            assert_eq!(values(&f(&x, 0.0, true, &mut rng)?)?, values(&x)?, "{name} p = 0");
            assert_eq!(rng.random::<u64>(), ChaCha8Rng::seed_from_u64(5).random::<u64>(), "{name} drew numbers");
        }
        Ok(())
    }

    #[test]
    fn same_seed_same_mask_and_resumable() -> Result<()> {
        let x = Tensor::ones((8, 3, 4, 4), DType::F32, &Device::Cpu)?;
        for (name, f) in OPS {
            let mut a = ChaCha8Rng::seed_from_u64(11);
            let mut b = ChaCha8Rng::seed_from_u64(11);
            let first = values(&f(&x, 0.4, true, &mut a)?)?;
            assert_eq!(first, values(&f(&x, 0.4, true, &mut b)?)?, "{name}");
            // A generator restored mid-run (cloned state) continues the same way.
            let mut resumed = a.clone();
            let next = values(&f(&x, 0.4, true, &mut a)?)?;
            assert_eq!(next, values(&f(&x, 0.4, true, &mut resumed)?)?, "{name} resumed");
            assert_ne!(first, next, "{name}: consecutive masks should differ");
            let mut c = ChaCha8Rng::seed_from_u64(12);
            assert_ne!(first, values(&f(&x, 0.4, true, &mut c)?)?, "{name}: another seed");
        }
        Ok(())
    }

    #[test]
    fn dropout_keeps_the_expected_fraction_and_scales() -> Result<()> {
        let x = Tensor::ones((100_000,), DType::F32, &Device::Cpu)?;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for p in [0.1, 0.5, 0.8] {
            let y = values(&dropout(&x, p, true, &mut rng)?)?;
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || v == scale), "p {p}: values other than 0 and {scale}");
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
            // Binomial standard deviation is at most 0.0016 here; allow 4σ.
            assert!((kept - (1.0 - p)).abs() < 0.0064, "p {p}: kept {kept}");
        }
        Ok(())
    }

    #[test]
    fn drop_path_drops_whole_samples() -> Result<()> {
        let x = (rand_tensor(&[4000, 2, 3, 3], 9, &Device::Cpu)? + 2.0)?; // no zeros
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let p = 0.3;
        let y = drop_path(&x, p, true, &mut rng)?;
        let ratio = (&y / &x)?.reshape((4000, 18))?.to_vec2::<f32>()?;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mut kept = 0;
        for row in &ratio {
            let first = row[0];
            assert!(first == 0.0 || (first - scale).abs() < 1e-6, "{first}");
            assert!(row.iter().all(|&v| (v - first).abs() < 1e-6), "a sample was partly dropped: {row:?}");
            kept += usize::from(first != 0.0);
        }
        let frac = kept as f64 / 4000.0;
        assert!((frac - 0.7).abs() < 0.03, "kept {frac}"); // σ ≈ 0.0072
        Ok(())
    }

    #[test]
    fn gradient_is_mask_times_scale() -> Result<()> {
        // With x = 1 the output is the mask itself, so d(sum(y·r))/dx = r·y.
        for (name, f) in OPS {
            let x = Var::ones((6, 5, 3), DType::F32, &Device::Cpu)?;
            let r = rand_tensor(&[6, 5, 3], 4, &Device::Cpu)?;
            let mut rng = ChaCha8Rng::seed_from_u64(23);
            let y = f(x.as_tensor(), 0.5, true, &mut rng)?;
            let grads = (&y * &r)?.sum_all()?.backward()?;
            let Some(g) = grads.get(x.as_tensor()) else { panic!("{name}: no gradient") };
            assert_eq!(values(g)?, values(&(&y * &r)?)?, "{name}");
            assert!(values(&y)?.contains(&0.0) && values(&y)?.contains(&2.0), "{name}: a trivial mask");
        }
        Ok(())
    }

    #[test]
    fn bad_probabilities_are_errors() -> Result<()> {
        let x = Tensor::ones((2, 2), DType::F32, &Device::Cpu)?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for (name, f) in OPS {
            for p in [1.0, 1.5, -0.1, f64::NAN] {
                for train in [true, false] {
                    let e = f(&x, p, train, &mut rng).unwrap_err().to_string();
                    assert!(e.contains("[0, 1)"), "{name} p {p}: {e}");
                }
            }
        }
        let s = Tensor::new(1f32, &Device::Cpu)?;
        assert!(drop_path(&s, 0.5, true, &mut rng).is_err());
        Ok(())
    }
}
