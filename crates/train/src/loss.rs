//! Multi-exit losses: the (weighted) sum of every exit's cross-entropy, as
//! MSDNet and RANet train, optionally with self-distillation from the last
//! exit (IMTA / SCAN style: KL divergence at temperature T).

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
        Self { exit_weights: Vec::new(), label_smoothing: 0.0, distill: None }
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
        if let Some(d) = &self.distill {
            if !(d.temperature > 0.0 && d.weight >= 0.0) {
                return Err(format!("distillation needs T > 0 and weight >= 0, got {d:?}"));
            }
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
}
