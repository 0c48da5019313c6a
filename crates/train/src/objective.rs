//! Training objectives: what one training step computes from a batch.
//!
//! An [`Objective`] receives the batch, the model, the step's [`Mode`] and a
//! seeded random generator ([`StepContext`]) and returns the loss to
//! differentiate, the named scalars to log and every exit's logits (for the
//! running training accuracy) as a [`StepOutput`]. The trainer only
//! back-propagates the loss and steps the optimiser, so a step may add terms
//! computed from the exits' features or be another algorithm altogether
//! (e.g. a policy-gradient update that samples actions from the generator).
//!
//! The built-in objectives are chosen by [`ObjectiveConfig`], part of the
//! serialisable [`crate::TrainSpec`] so a resume can check it:
//!
//! - [`ObjectiveConfig::MultiExitCe`] (the default): the spec's
//!   [`LossConfig`], i.e. the weighted sum of every exit's cross-entropy with
//!   optional self-distillation and feature hint;
//! - [`ObjectiveConfig::RandomExitWeights`]: the same loss with every exit's
//!   weight scaled, each step, by a factor drawn from the step's generator
//!   (stochastic exit weighting);
//! - [`ObjectiveConfig::GfnetPatches`] and [`ObjectiveConfig::GfnetPpo`]:
//!   GFNet's classification loss on random or policy-sampled patches, and
//!   its policy-gradient update ([`crate::gfnet`]).
//!
//! Every model call of training (the step, evaluation and batch-norm
//! recalibration) goes through [`forward`].
//!
//! The generator is a ChaCha8 stream seeded from the run's seed; its full
//! state ([`RngState`]) is part of every checkpoint, so a resumed stochastic
//! objective draws the same numbers as an uninterrupted one.
//!
//! ```
//! use anytime_train::objective::{ObjectiveConfig, RngState};
//! let cfg: ObjectiveConfig = serde_json::from_str(r#"{"kind": "random_exit_weights"}"#).unwrap();
//! assert_eq!(cfg, ObjectiveConfig::RandomExitWeights);
//! let mut rng = RngState::seeded(7).generator()?;
//! let a = rand::Rng::random::<u32>(&mut rng);
//! let state = RngState::of(&rng);
//! let (b, c) = (rand::Rng::random::<u32>(&mut rng), rand::Rng::random::<u32>(&mut state.generator()?));
//! assert_eq!(b, c);
//! assert_ne!(a, b);
//! # Ok::<(), String>(())
//! ```

use crate::loss::LossConfig;
use anytime_blocks::Mode;
use anytime_models::{ExitOutput, MultiExit};
use candle_core::{Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Runs `model` on `xs` `[N, C, H, W]` in `mode` and returns every exit's
/// output (logits and feature), in order. The one place where training,
/// evaluation and batch-norm recalibration call the model.
pub fn forward(model: &dyn MultiExit, xs: &Tensor, mode: &Mode) -> Result<Vec<ExitOutput>> {
    model.forward_exits(xs, mode)
}

/// What a training step sees.
pub struct StepContext<'a> {
    /// The model being trained.
    pub model: &'a dyn MultiExit,
    /// Images `[N, C, H, W]` f32.
    pub xs: &'a Tensor,
    /// Labels `[N]` u32.
    pub ys: &'a Tensor,
    /// The step's mode: training, with the frozen groups' modules in eval
    /// mode.
    pub mode: &'a Mode,
    /// The run's generator for stochastic objectives; saved with every
    /// checkpoint.
    pub rng: &'a mut ChaCha8Rng,
}

impl StepContext<'_> {
    /// Every exit's output on the batch in the step's mode (see [`forward`]).
    pub fn forward(&self) -> Result<Vec<ExitOutput>> {
        forward(self.model, self.xs, self.mode)
    }
}

/// What a training step returns.
pub struct StepOutput {
    /// The scalar to minimise.
    pub loss: Tensor,
    /// Named scalars logged per epoch (means over the epoch's batches).
    pub logged: Vec<(String, f64)>,
    /// Every exit's logits `[N, classes]` for the running training accuracy.
    pub logits: Vec<Tensor>,
}

/// One training step of an objective. Object safe: the trainer holds a
/// `Box<dyn Objective>`.
pub trait Objective: Send + Sync {
    /// Computes the step's loss on the batch in `cx`.
    fn step(&self, cx: &mut StepContext<'_>) -> Result<StepOutput>;
}

/// The built-in objectives, by name in a spec (`"kind": "..."`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectiveConfig {
    /// The spec's multi-exit loss (per-exit cross-entropy, optional
    /// distillation and feature hint).
    #[default]
    MultiExitCe,
    /// The spec's multi-exit loss with every exit's weight multiplied, each
    /// step, by a factor drawn uniformly from `[0, 2)` (mean 1) with the
    /// step's generator.
    RandomExitWeights,
    /// GFNet's classification loss (`train.py` stages 1 and 3, lines
    /// 283-355): `(Σ_t CE(logits_t) + dsn_ratio · Σ_t CE(dsn_t)) / T`, the
    /// patches at uniform random positions (stage 1) or sampled from the
    /// policy (stage 3).
    GfnetPatches {
        /// Weight of the encoders' own classifiers (5 for MobileNet).
        dsn_ratio: f64,
        /// `None`: uniform random actions (`torch.rand`); `Some(std)`: the
        /// policy's mean plus Gaussian noise of this standard deviation,
        /// clamped to [0, 1].
        policy_std: Option<f64>,
        /// Focus patches that contain the canvas's item, taken to be its
        /// brightest blob (our stage 0, with no ImageNet weights to start
        /// from); not with `policy_std`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        item_crops: bool,
    },
    /// GFNet's policy update (`train.py` stage 2, `network.py` `PPO`):
    /// actions sampled from N(mean, std²) and clamped to [0, 1], rewards
    /// the step's gain in the true class's probability, returns discounted
    /// by `gamma` and normalised over the batch's steps, loss
    /// `−ratio·advantage + value_coef·MSE(value, return)` (one update per
    /// batch, so the ratio is 1 and the clip never acts; a fixed standard
    /// deviation gives the entropy bonus no gradient).
    GfnetPpo {
        /// The action noise's standard deviation (0.1).
        std: f64,
        /// Discount over steps (0.7).
        gamma: f64,
        /// Weight of the critic's squared error (0.5).
        value_coef: f64,
    },
}

impl ObjectiveConfig {
    /// Checks the values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            Self::MultiExitCe | Self::RandomExitWeights => Ok(()),
            Self::GfnetPatches { dsn_ratio, policy_std, item_crops } => {
                if !(dsn_ratio.is_finite() && dsn_ratio >= 0.0) {
                    return Err(format!("gfnet_patches: dsn_ratio must be a finite number >= 0, got {dsn_ratio}"));
                }
                if item_crops && policy_std.is_some() {
                    return Err("gfnet_patches: item crops and policy samples are exclusive".into());
                }
                match policy_std {
                    Some(s) if !(s.is_finite() && s > 0.0) => {
                        Err(format!("gfnet_patches: policy_std must be a finite number > 0, got {s}"))
                    }
                    _ => Ok(()),
                }
            }
            Self::GfnetPpo { std, gamma, value_coef } => {
                if !(std.is_finite() && std > 0.0) {
                    Err(format!("gfnet_ppo: std must be a finite number > 0, got {std}"))
                } else if !(0.0..=1.0).contains(&gamma) {
                    Err(format!("gfnet_ppo: gamma must be in [0, 1], got {gamma}"))
                } else if !(value_coef.is_finite() && value_coef >= 0.0) {
                    Err(format!("gfnet_ppo: value_coef must be a finite number >= 0, got {value_coef}"))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The objective with `loss` as its multi-exit loss.
    pub fn build(&self, loss: &LossConfig) -> Box<dyn Objective> {
        match *self {
            Self::MultiExitCe => Box::new(MultiExitObjective { loss: loss.clone(), random_weights: false }),
            Self::RandomExitWeights => Box::new(MultiExitObjective { loss: loss.clone(), random_weights: true }),
            Self::GfnetPatches { dsn_ratio, policy_std, item_crops } => {
                Box::new(crate::gfnet::PatchObjective { dsn_ratio, policy_std, item_crops })
            }
            Self::GfnetPpo { std, gamma, value_coef } => {
                Box::new(crate::gfnet::PpoObjective { std, gamma, value_coef })
            }
        }
    }
}

/// The multi-exit loss on the exits of one forward pass in training mode,
/// optionally with random exit weights.
struct MultiExitObjective {
    loss: LossConfig,
    random_weights: bool,
}

impl Objective for MultiExitObjective {
    fn step(&self, cx: &mut StepContext<'_>) -> Result<StepOutput> {
        let exits = cx.forward()?;
        let mut loss = self.loss.clone();
        if self.random_weights {
            loss.exit_weights = (0..exits.len())
                .map(|k| self.loss.exit_weights.get(k).copied().unwrap_or(1.0) * cx.rng.random_range(0.0..2.0))
                .collect();
        }
        let terms = loss.terms(&exits, cx.ys)?;
        let mut logged = Vec::new();
        if let Some(hint) = &terms.hint {
            logged.push(("ce".to_string(), terms.ce.to_scalar::<f32>()? as f64));
            logged.push(("feature_hint".to_string(), hint.to_scalar::<f32>()? as f64));
        }
        Ok(StepOutput { loss: terms.total, logged, logits: exits.into_iter().map(|e| e.logits).collect() })
    }
}

/// The full state of a step generator: a ChaCha8 stream at a word position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The seed the stream was started from.
    pub seed: u64,
    /// The stream number.
    pub stream: u64,
    /// Words of the stream already used (as a decimal string: it may exceed
    /// 64 bits, JSON numbers do not).
    pub word_pos: String,
}

/// The stream of step generators (kept apart from other uses of the seed).
const STEP_STREAM: u64 = 0x6f62_6a65;

impl RngState {
    /// A fresh generator's state for a run with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self { seed, stream: STEP_STREAM, word_pos: "0".into() }
    }

    /// The state of `rng`, which must come from [`RngState::generator`].
    pub fn of(rng: &ChaCha8Rng) -> Self {
        let seed_bytes = rng.get_seed();
        let mut first = [0u8; 8];
        first.copy_from_slice(&seed_bytes[..8]);
        Self { seed: u64::from_le_bytes(first), stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    /// The generator at this state; an error names a malformed position.
    pub fn generator(&self) -> std::result::Result<ChaCha8Rng, String> {
        let pos =
            self.word_pos.parse::<u128>().map_err(|e| format!("bad generator position '{}': {e}", self.word_pos))?;
        let mut rng = ChaCha8Rng::from_seed(seed_bytes(self.seed));
        rng.set_stream(self.stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// The 32-byte ChaCha key of `seed`: its little-endian bytes, then zeros (so
/// [`RngState::of`] can read it back).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tiny() -> candle_core::Result<(Box<dyn MultiExit>, Tensor, Tensor)> {
        let map = candle_nn::VarMap::new();
        let cfg = anytime_models::registry::ArchConfig::new(anytime_models::registry::msdnet_tiny());
        let vb = crate::init::seeded_var_builder(&map, 3, &Device::Cpu);
        let model = cfg.build(vb).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let xs = crate::init::seeded_tensor(4, "x", &(6, 1, 28, 28).into(), init, &Device::Cpu)?;
        Ok((model, xs, Tensor::new(&[0u32, 1, 2, 3, 4, 5], &Device::Cpu)?))
    }

    fn loss_of(cfg: &ObjectiveConfig, model: &dyn MultiExit, xs: &Tensor, ys: &Tensor, rng: &mut ChaCha8Rng) -> f32 {
        let mode = Mode::eval();
        let out = cfg.build(&LossConfig::default()).step(&mut StepContext { model, xs, ys, mode: &mode, rng });
        out.and_then(|o| o.loss.to_scalar::<f32>()).unwrap_or(f32::NAN)
    }

    /// The default objective is the multi-exit loss of one forward pass, bit
    /// for bit, and draws nothing; random exit weights depend on the
    /// generator's state and only on it.
    #[test]
    fn default_is_the_plain_loss_and_random_weights_follow_the_generator() -> Result<()> {
        let (model, xs, ys) = tiny()?;
        let logits: Vec<Tensor> = forward(model.as_ref(), &xs, &Mode::eval())?.into_iter().map(|e| e.logits).collect();
        let plain = LossConfig::default().loss(&logits, &ys)?.to_scalar::<f32>()?;
        let mut rng = RngState::seeded(9).generator().map_err(candle_core::Error::Msg)?;
        let ce = loss_of(&ObjectiveConfig::MultiExitCe, model.as_ref(), &xs, &ys, &mut rng);
        assert_eq!(ce.to_bits(), plain.to_bits());
        assert_eq!(RngState::of(&rng), RngState::seeded(9), "the default objective draws nothing");
        let random = ObjectiveConfig::RandomExitWeights;
        let saved = RngState::of(&rng);
        let first = loss_of(&random, model.as_ref(), &xs, &ys, &mut rng);
        let second = loss_of(&random, model.as_ref(), &xs, &ys, &mut rng);
        let mut again = saved.generator().map_err(candle_core::Error::Msg)?;
        let replay = loss_of(&random, model.as_ref(), &xs, &ys, &mut again);
        assert!(first.is_finite() && first != second && first != plain, "{first} {second} {plain}");
        assert_eq!(first.to_bits(), replay.to_bits());
        Ok(())
    }

    #[test]
    fn generator_state_round_trips_through_json() {
        let mut rng = RngState::seeded(42).generator().expect("seeded");
        let _: Vec<u64> = (0..37).map(|_| rng.random()).collect();
        let saved = serde_json::to_string(&RngState::of(&rng)).expect("json");
        let mut back = serde_json::from_str::<RngState>(&saved).expect("json").generator().expect("saved");
        for _ in 0..10 {
            assert_eq!(rng.random::<u64>(), back.random::<u64>());
        }
        let draw = |seed| RngState::seeded(seed).generator().map(|mut r| r.random::<u64>());
        assert_ne!(draw(1), draw(2));
        let bad = RngState { word_pos: "x".into(), ..RngState::seeded(1) };
        assert!(bad.generator().is_err_and(|e| e.contains("'x'")));
    }
}
