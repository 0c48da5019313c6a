//! Multi-exit losses: the (weighted) sum of every exit's cross-entropy, as
//! MSDNet and RANet train, optionally with self-distillation from the last
//! exit (IMTA / SCAN style: KL divergence at temperature T) and a feature
//! hint pulling every earlier exit's feature towards the last exit's (SCAN).

use anytime_models::ExitOutput;
use anytime_ops::loss::{cross_entropy, kl_div_with_temperature};
use candle_core::{Result, Tensor, bail};
use serde::{Deserialize, Serialize};

/// How the exits' losses combine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    /// Per-exit weights; empty means 1 for every exit (MSDNet).
    #[serde(default)]
    pub exit_weights: Vec<f64>,
    /// Label smoothing of the cross-entropy (0 for none).
    #[serde(default)]
    pub label_smoothing: f64,
    /// Distillation from the last exit into the earlier ones.
    #[serde(default)]
    pub distill: Option<Distill>,
    /// A feature hint from the last exit into the earlier ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_hint: Option<FeatureHint>,
}

/// The feature hint `coef · Σ_k ‖f_k − f_last‖²` over the earlier exits `k`,
/// the last exit's feature `f_last` detached (a target, as in SCAN), the
/// squared norm summed over the feature dimension and reduced over the batch
/// by `reduction`. SCAN uses the sum over the batch with `coef` 5e-7.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureHint {
    /// Weight of the term.
    pub coef: f64,
    /// How the per-sample squared distances combine.
    #[serde(default)]
    pub reduction: Reduction,
}

/// How per-sample values combine over a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reduction {
    /// Sum over the batch (SCAN).
    #[default]
    Sum,
    /// Mean over the batch.
    Mean,
}

/// The parts of one step's multi-exit loss.
pub struct LossTerms {
    /// Everything: what the step minimises.
    pub total: Tensor,
    /// The cross-entropy and distillation terms.
    pub ce: Tensor,
    /// The feature hint, when configured.
    pub hint: Option<Tensor>,
}

/// Self-distillation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// Softmax temperature.
    pub temperature: f64,
    /// Weight of the KL term per early exit.
    pub weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { exit_weights: Vec::new(), label_smoothing: 0.0, distill: None, feature_hint: None }
    }
}

impl LossConfig {
    /// Checks the values against a model with `exits` exits.
    pub fn validate(&self, exits: usize) -> std::result::Result<(), String> {
        if !self.exit_weights.is_empty() && self.exit_weights.len() != exits {
            return Err(format!("{} exit weights for a model with {exits} exits", self.exit_weights.len()));
        }
        if self.exit_weights.iter().any(|w| !(*w >= 0.0 && w.is_finite())) {
            return Err(format!("exit weights must be finite and >= 0, got {:?}", self.exit_weights));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(format!("label smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if let Some(d) = &self.distill
            && !(d.temperature > 0.0 && d.weight >= 0.0)
        {
            return Err(format!("distillation needs T > 0 and weight >= 0, got {d:?}"));
        }
        if let Some(h) = &self.feature_hint
            && !(h.coef >= 0.0 && h.coef.is_finite())
        {
            return Err(format!("the feature hint's coefficient must be finite and >= 0, got {}", h.coef));
        }
        Ok(())
    }

    /// The training loss for every exit's logits against `targets` `[N]` (u32).
    ///
    /// # Shapes
    /// `logits`: exits × `[N, classes]` → scalar.
    pub fn loss(&self, logits: &[Tensor], targets: &Tensor) -> Result<Tensor> {
        let Some(last) = logits.last() else { bail!("multi-exit loss: no exits") };
        let teacher = last.detach();
        let mut total: Option<Tensor> = None;
        for (k, l) in logits.iter().enumerate() {
            let w = self.exit_weights.get(k).copied().unwrap_or(1.0);
            let mut term = (cross_entropy(l, targets, self.label_smoothing)? * w)?;
            if let (Some(d), true) = (&self.distill, k + 1 < logits.len()) {
                term = (term + (kl_div_with_temperature(l, &teacher, d.temperature)? * d.weight)?)?;
            }
            total = Some(match total {
                None => term,
                Some(t) => (t + term)?,
            });
        }
        total.ok_or_else(|| candle_core::Error::Msg("multi-exit loss: no exits".into()))
    }

    /// The loss of every exit's output against `targets` `[N]` (u32): the
    /// cross-entropy terms of [`LossConfig::loss`] plus the feature hint.
    ///
    /// # Shapes
    /// `exits`: logits `[N, classes]` and features `[N, D]` (the same `D`
    /// for every exit when there is a feature hint) → scalars.
    pub fn terms(&self, exits: &[ExitOutput], targets: &Tensor) -> Result<LossTerms> {
        let logits: Vec<Tensor> = exits.iter().map(|e| e.logits.clone()).collect();
        let ce = self.loss(&logits, targets)?;
        let Some(h) = &self.feature_hint else { return Ok(LossTerms { total: ce.clone(), ce, hint: None }) };
        let Some(last) = exits.last() else { bail!("multi-exit loss: no exits") };
        let target = last.feature.detach();
        if target.rank() != 2 || target.dim(1)? == 0 {
            bail!("the feature hint needs every exit's feature [N, D]; the model gives {:?}", target.shape());
        }
        let mut sum = target.zeros_like()?.sum_all()?;
        for (k, e) in exits[..exits.len() - 1].iter().enumerate() {
            if e.feature.shape() != target.shape() {
                bail!(
                    "the feature hint compares exit {k}'s feature {:?} with the last exit's {:?}; they must have the same shape",
                    e.feature.shape(),
                    target.shape()
                );
            }
            sum = (sum + (&e.feature - &target)?.sqr()?.sum_all()?)?;
        }
        if h.reduction == Reduction::Mean {
            sum = (sum / target.dim(0)?.max(1) as f64)?;
        }
        let hint = (sum * h.coef)?;
        Ok(LossTerms { total: (&ce + &hint)?, ce, hint: Some(hint) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn exit(logits: &[f32], feature: &Tensor) -> Result<ExitOutput> {
        Ok(ExitOutput {
            logits: Tensor::new(logits, &Device::Cpu)?.reshape((1, logits.len()))?,
            feature: feature.clone(),
        })
    }

    /// The hint is coef · Σ‖f_k − f_last‖² with the last feature a target:
    /// its gradient reaches the earlier features only.
    #[test]
    fn feature_hint_sums_squared_distances_to_the_detached_last_feature() -> Result<()> {
        let dev = Device::Cpu;
        let f0 = Var::new(&[[1.0f32, 2.0], [0.0, 0.0]], &dev)?;
        let f1 = Var::new(&[[0.0f32, 0.0], [3.0, 0.0]], &dev)?;
        let f2 = Var::new(&[[1.0f32, 0.0], [0.0, 4.0]], &dev)?;
        let logits = Tensor::new(&[[0.0f32, 1.0], [1.0, 0.0]], &dev)?;
        let exits: Vec<ExitOutput> = [&f0, &f1, &f2]
            .iter()
            .map(|f| ExitOutput { logits: logits.clone(), feature: f.as_tensor().clone() })
            .collect();
        let ys = Tensor::new(&[1u32, 0], &dev)?;
        let plain = LossConfig::default();
        let with = |reduction| LossConfig { feature_hint: Some(FeatureHint { coef: 0.5, reduction }), ..plain.clone() };
        let base = plain.terms(&exits, &ys)?;
        assert!(base.hint.is_none());
        // f0 − f2: (0, 2), (0, −4) → 4 + 16; f1 − f2: (−1, 0), (3, −4) → 1 + 25.
        let sum = with(Reduction::Sum).terms(&exits, &ys)?;
        let hint = sum.hint.as_ref().map(|h| h.to_scalar::<f32>()).transpose()?;
        assert_eq!(hint, Some(0.5 * 46.0));
        let total = sum.total.to_scalar::<f32>()?;
        assert!((total - base.total.to_scalar::<f32>()? - 23.0).abs() < 1e-5);
        let mean = with(Reduction::Mean).terms(&exits, &ys)?.hint.map(|h| h.to_scalar::<f32>()).transpose()?;
        assert_eq!(mean, Some(0.5 * 23.0));
        let grads = sum.hint.map(|h| h.backward()).transpose()?.expect("a hint");
        assert!(grads.get(f2.as_tensor()).is_none(), "the last exit's feature is a target");
        let g0 = grads.get(f0.as_tensor()).map(|g| g.to_vec2::<f32>()).transpose()?;
        assert_eq!(g0, Some(vec![vec![0.0, 2.0], vec![0.0, -4.0]]));
        // Features of different widths, and a model without features.
        let narrow = Tensor::zeros((2, 1), candle_core::DType::F32, &dev)?;
        let mut bad = exits.clone();
        bad[0].feature = narrow;
        let e = with(Reduction::Sum).terms(&bad, &ys).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("exit 0"), "{e}");
        let none = Tensor::zeros((1, 0), candle_core::DType::F32, &dev)?;
        let bare = vec![exit(&[0.0, 1.0], &none)?, exit(&[1.0, 0.0], &none)?];
        assert!(with(Reduction::Sum).terms(&bare, &Tensor::new(&[1u32], &dev)?).is_err());
        assert!(with(Reduction::Sum).validate(3).is_ok());
        let negative =
            LossConfig { feature_hint: Some(FeatureHint { coef: -1.0, reduction: Reduction::Sum }), ..plain };
        assert!(negative.validate(3).is_err());
        Ok(())
    }
}
