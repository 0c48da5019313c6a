//! [`Dropout`] and [`DropPath`] layers: the seeded ops of
//! [`anytime_ops::dropout`] switched on and off by the forward pass's
//! [`Mode`] under the layer's own name, so a frozen module's dropout is
//! inactive. Neither has parameters; the name only serves
//! [`Mode::trains`].
//!
//! ```
//! use anytime_blocks::Mode;
//! use anytime_blocks::drop::Dropout;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! use rand::SeedableRng;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let drop = Dropout::new(&vb.pp("classifier.0"), 0.2)?;
//! let x = Tensor::ones((2, 8), DType::F32, &Device::Cpu)?;
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
//! let frozen = Mode::train().with_frozen(["classifier".to_string()]);
//! let y = drop.forward(&x, &frozen, &mut rng)?; // frozen: eval mode, identity
//! assert_eq!(y.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
//! # Ok(()) }
//! ```

use crate::Mode;
use anytime_ops::dropout::{drop_path, dropout};
use candle_core::{Result, Tensor, bail};
use candle_nn::VarBuilder;
use rand::Rng;

/// Checks a drop probability at construction.
fn check(p: f64, what: &str, name: &str) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        bail!("{what} {name}: the drop probability must lie in [0, 1), got {p}")
    }
    Ok(())
}

/// Element-wise dropout, as `torch.nn.Dropout(p)`.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f64,
    name: String,
}

impl Dropout {
    /// A dropout layer named by `vb`'s prefix; `p` must lie in `[0, 1)`.
    pub fn new(vb: &VarBuilder, p: f64) -> Result<Self> {
        check(p, "dropout", &vb.prefix())?;
        Ok(Self { p, name: vb.prefix() })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Drops elements when `mode` trains this layer, drawing from `rng`;
    /// otherwise returns `xs` unchanged and draws nothing.
    ///
    /// # Shapes
    /// Any shape, kept.
    pub fn forward<R: Rng + ?Sized>(&self, xs: &Tensor, mode: &Mode, rng: &mut R) -> Result<Tensor> {
        dropout(xs, self.p, mode.trains(&self.name), rng)
    }
}

/// Per-sample drop-path (stochastic depth), as timm's `DropPath(p)`: drops
/// whole samples of a residual branch.
#[derive(Debug, Clone)]
pub struct DropPath {
    p: f64,
    name: String,
}

impl DropPath {
    /// A drop-path layer named by `vb`'s prefix; `p` must lie in `[0, 1)`.
    pub fn new(vb: &VarBuilder, p: f64) -> Result<Self> {
        check(p, "drop path", &vb.prefix())?;
        Ok(Self { p, name: vb.prefix() })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Drops whole samples when `mode` trains this layer, drawing one number
    /// per sample from `rng`; otherwise returns `xs` unchanged and draws
    /// nothing.
    ///
    /// # Shapes
    /// `[N, …]` → `[N, …]`.
    pub fn forward<R: Rng + ?Sized>(&self, xs: &Tensor, mode: &Mode, rng: &mut R) -> Result<Tensor> {
        drop_path(xs, self.p, mode.trains(&self.name), rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn mode_and_frozen_prefixes_decide() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let x = Tensor::ones((64, 4), DType::F32, &dev)?;
        let drop = Dropout::new(&vb.pp("head").pp("drop"), 0.5)?;
        let path = DropPath::new(&vb.pp("blocks.3").pp("drop_path"), 0.5)?;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let same = |y: Tensor| -> Result<bool> { Ok(y.to_vec2::<f32>()? == x.to_vec2::<f32>()?) };
        assert!(same(drop.forward(&x, &Mode::eval(), &mut rng)?)?);
        assert!(same(path.forward(&x, &Mode::eval(), &mut rng)?)?);
        let frozen = Mode::train().with_frozen(["head".to_string(), "blocks.3".to_string()]);
        assert!(same(drop.forward(&x, &frozen, &mut rng)?)?);
        assert!(same(path.forward(&x, &frozen, &mut rng)?)?);
        assert!(!same(drop.forward(&x, &Mode::train(), &mut rng)?)?);
        assert!(!same(path.forward(&x, &Mode::train(), &mut rng)?)?);
        Ok(())
    }

    #[test]
    fn bad_probability_is_an_error() {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let e = Dropout::new(&vb.pp("fc"), 1.0).unwrap_err().to_string();
        assert!(e.contains("dropout fc") && e.contains("[0, 1)"), "{e}");
        assert!(DropPath::new(&vb, -0.5).is_err());
    }
}
