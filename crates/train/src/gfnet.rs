//! GFNet's training objectives (blackfeather-wang/GFNet-Pytorch@8a6775c,
//! `train.py` and `network.py`), on [`Gfnet::rollout`]:
//!
//! - [`PatchObjective`] (stages 1 and 3): every step's classification loss
//!   plus the encoders' own classifiers (`dsn`), `(Σ_t CE(logits_t) +
//!   dsn_ratio · Σ_t CE(dsn_t)) / T` (`train.py:355`), with the patches at
//!   uniform random positions (stage 1, `torch.rand`, line 318) or sampled
//!   from the learned policy (stage 3: `select_action` with its default
//!   `training=True`, `network.py:85-94`).
//! - [`PpoObjective`] (stage 2): the policy alone. Actions are sampled from
//!   N(mean, std²) and clamped to [0, 1] (`network.py:85-90`); the reward of
//!   step t is `p_t(y) − p_{t−1}(y)` (`train.py:338-341`); returns are
//!   discounted by γ over the steps and normalised over all steps and
//!   samples (`network.py:142-151`); the loss is `−ratio·advantage +
//!   0.5·MSE(value, return)` with advantage `return − value` (lines
//!   160-170). With one update per batch (`K_epochs = 1`) the ratio is 1
//!   (its gradient is the log-probability's) and the clip never acts; with a
//!   fixed standard deviation the entropy term is a constant.
//!
//! The generator of the step ([`StepContext::rng`]) draws every random
//! action, so a resumed run draws the same ones.

use crate::objective::{Objective, StepContext, StepOutput};
use anytime_models::gfnet::Gfnet;
use anytime_ops::loss::cross_entropy;
use candle_core::{D, Result, Tensor, bail};
use rand::Rng;

/// The GFNet model behind a step's `dyn MultiExit`, or an error naming the
/// objective.
fn gfnet<'a>(cx: &StepContext<'a>, objective: &str) -> Result<&'a Gfnet> {
    match cx.model.as_any().and_then(|a| a.downcast_ref::<Gfnet>()) {
        Some(g) => Ok(g),
        None => bail!("the {objective} objective trains GFNet models only, not {}", cx.model.arch()),
    }
}

/// `mean + std·z` clamped to [0, 1], z standard normal from `rng` (Box-Muller).
fn sample(mean: &Tensor, std: f64, rng: &mut impl Rng) -> Result<Tensor> {
    let n = mean.elem_count();
    let z: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    let noise = Tensor::from_vec(z, mean.dims(), mean.device())?;
    (mean.detach() + (noise * std)?)?.clamp(0f32, 1f32)
}

/// GFNet's classification loss on random or policy-sampled patches.
#[derive(Debug, Clone)]
pub struct PatchObjective {
    /// Weight of the encoders' own classifiers.
    pub dsn_ratio: f64,
    /// `None`: uniform random actions; `Some(std)`: policy samples.
    pub policy_std: Option<f64>,
}

impl Objective for PatchObjective {
    fn step(&self, cx: &mut StepContext<'_>) -> Result<StepOutput> {
        let model = gfnet(cx, "gfnet_patches")?;
        let StepContext { xs, ys, mode, rng, .. } = cx;
        let n = xs.dim(0)?;
        let std = self.policy_std;
        let mut choose = |_k: usize, mean: Option<&Tensor>| -> Result<Tensor> {
            match (std, mean) {
                (Some(s), Some(m)) => sample(m, s, rng),
                _ => {
                    let u: Vec<f32> = (0..2 * n).map(|_| rng.random::<f32>()).collect();
                    Tensor::from_vec(u, (n, 2), xs.device())
                }
            }
        };
        let r = model.rollout(xs, mode, std.is_some(), &mut choose)?;
        let t = r.logits.len() as f64;
        let mut ce = Tensor::zeros((), candle_core::DType::F32, xs.device())?;
        for l in &r.logits {
            ce = (ce + cross_entropy(l, ys, 0.0)?)?;
        }
        let mut dsn = Tensor::zeros((), candle_core::DType::F32, xs.device())?;
        for l in &r.dsn {
            dsn = (dsn + cross_entropy(l, ys, 0.0)?)?;
        }
        let loss = ((&ce + (&dsn * self.dsn_ratio)?)? / t)?;
        let logged = vec![
            ("ce".to_string(), ce.to_scalar::<f32>()? as f64 / t),
            ("dsn".to_string(), dsn.to_scalar::<f32>()? as f64 / t),
        ];
        Ok(StepOutput { loss, logged, logits: r.logits })
    }
}

/// GFNet's policy-gradient update of the patch policy.
#[derive(Debug, Clone)]
pub struct PpoObjective {
    /// The action noise's standard deviation.
    pub std: f64,
    /// Discount over steps.
    pub gamma: f64,
    /// Weight of the critic's squared error.
    pub value_coef: f64,
}

impl Objective for PpoObjective {
    fn step(&self, cx: &mut StepContext<'_>) -> Result<StepOutput> {
        let model = gfnet(cx, "gfnet_ppo")?;
        if model.config().t < 2 {
            bail!("gfnet_ppo: a model with T = 1 takes no action")
        }
        let StepContext { xs, ys, mode, rng, .. } = cx;
        let std = self.std;
        let mut choose = |k: usize, mean: Option<&Tensor>| -> Result<Tensor> {
            match mean {
                Some(m) => sample(m, std, rng),
                None => bail!("gfnet_ppo: step {k} has no policy mean"),
            }
        };
        let r = model.rollout(xs, mode, true, &mut choose)?;
        // The true class's probability after each step (no gradient).
        let target = ys.unsqueeze(1)?;
        let probs = r
            .logits
            .iter()
            .map(|l| candle_nn::ops::softmax(&l.detach(), D::Minus1)?.gather(&target, 1)?.squeeze(1))
            .collect::<Result<Vec<_>>>()?;
        let rewards = probs.windows(2).map(|w| &w[1] - &w[0]).collect::<Result<Vec<_>>>()?;
        // Discounted returns, last step first.
        let mut returns = vec![rewards[rewards.len() - 1].clone(); rewards.len()];
        for k in (0..rewards.len() - 1).rev() {
            returns[k] = (&rewards[k] + (&returns[k + 1] * self.gamma)?)?;
        }
        let returns = Tensor::stack(&returns, 0)?; // [T-1, N]
        let count = returns.elem_count();
        let mean = returns.mean_all()?;
        let centred = returns.broadcast_sub(&mean)?;
        // torch's std: unbiased.
        let var = (centred.sqr()?.sum_all()? / (count.saturating_sub(1).max(1)) as f64)?;
        let returns = centred.broadcast_div(&(var.sqrt()? + 1e-5)?)?;
        let means = Tensor::stack(&r.means, 0)?; // [T-1, N, 2]
        let actions = Tensor::stack(&r.actions, 0)?;
        let values = Tensor::stack(&r.values, 0)?; // [T-1, N]
        // log N(a; mean, std²) summed over the two coordinates.
        let logp = ((actions - &means)?.sqr()?.sum(D::Minus1)? * (-0.5 / (std * std)))?;
        let ratio = (&logp - logp.detach())?.exp()?;
        let advantages = (&returns - values.detach())?;
        let policy_loss = (ratio * &advantages)?.mean_all()?.neg()?;
        let value_loss = (&values - &returns)?.sqr()?.mean_all()?;
        let loss = (&policy_loss + (&value_loss * self.value_coef)?)?;
        let reward = Tensor::stack(&rewards, 0)?.mean_all()?.to_scalar::<f32>()? as f64;
        let logged =
            vec![("reward".to_string(), reward), ("value_loss".to_string(), value_loss.to_scalar::<f32>()? as f64)];
        Ok(StepOutput { loss, logged, logits: r.logits })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_blocks::Mode;
    use anytime_models::MultiExit;
    use anytime_models::gfnet::GfnetConfig;
    use candle_core::{DType, Device, Var};
    use candle_nn::{VarBuilder, VarMap};
    use rand::SeedableRng;

    fn tiny(arch: &str) -> (VarMap, Gfnet) {
        let cfg = GfnetConfig::from_json(&serde_json::json!({
            "model_arch": arch, "num_classes": 3, "image_size": 40, "patch_size": 32, "T": 3, "in_channels": 1,
            "channel_multiplier": if arch.starts_with("mobilenet") { 0.25 } else { 1.0 },
            "policy_hidden_dim": 8
        }))
        .unwrap();
        let map = VarMap::new();
        let vb = crate::init::seeded_var_builder(&map, 5, &Device::Cpu);
        let net = Gfnet::new(&cfg, vb).unwrap();
        (map, net)
    }

    fn vars(map: &VarMap, prefix: &str) -> Vec<Var> {
        let data = map.data().lock().unwrap();
        data.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect()
    }

    /// Stage 1's loss trains the focus encoder and the classifier, not a
    /// frozen glance encoder; stage 2's trains only the policy.
    #[test]
    fn gradients_reach_what_each_stage_trains() {
        let xs = Tensor::randn(0f32, 1., (4, 1, 40, 40), &Device::Cpu).unwrap();
        let ys = Tensor::new(&[0u32, 1, 2, 1], &Device::Cpu).unwrap();
        for arch in ["mobilenetv3_large_100", "resnet18"] {
            let (map, net) = tiny(arch);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            for (objective, frozen, trained) in [
                (
                    Box::new(PatchObjective { dsn_ratio: 5.0, policy_std: None }) as Box<dyn Objective>,
                    vec!["model_prime".to_string()],
                    ["model.", "fc."],
                ),
                (
                    Box::new(PpoObjective { std: 0.1, gamma: 0.7, value_coef: 0.5 }),
                    vec!["model_prime".into(), "model".into(), "fc".into()],
                    ["policy.", "policy.critic"],
                ),
            ] {
                let mode = Mode::train().with_frozen(frozen.clone());
                let mut cx =
                    StepContext { model: &net as &dyn MultiExit, xs: &xs, ys: &ys, mode: &mode, rng: &mut rng };
                let out = objective.step(&mut cx).unwrap();
                assert_eq!(out.logits.len(), 3);
                assert!(out.loss.to_scalar::<f32>().unwrap().is_finite(), "{arch}");
                let grads = out.loss.backward().unwrap();
                let touched = |prefix: &str| vars(&map, prefix).iter().any(|v| grads.get(v.as_tensor()).is_some());
                for p in trained {
                    assert!(touched(p), "{arch}: no gradient reaches {p}");
                }
                for p in &frozen {
                    assert!(!touched(&format!("{p}.")), "{arch}: a gradient reaches frozen {p}");
                }
            }
        }
    }

    /// Actions come from the step generator: the same generator state gives
    /// the same loss, another one another loss.
    #[test]
    fn random_actions_follow_the_generator() {
        let (_map, net) = tiny("mobilenetv3_large_100");
        let xs = Tensor::randn(0f32, 1., (2, 1, 40, 40), &Device::Cpu).unwrap();
        let ys = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let mode = Mode::train();
        let loss = |seed: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut cx = StepContext { model: &net as &dyn MultiExit, xs: &xs, ys: &ys, mode: &mode, rng: &mut rng };
            let o = PpoObjective { std: 0.1, gamma: 0.7, value_coef: 0.5 }.step(&mut cx).unwrap();
            o.loss.to_scalar::<f32>().unwrap()
        };
        assert_eq!(loss(3), loss(3));
        assert_ne!(loss(3), loss(4));
        // Other models are refused by name.
        let other = anytime_models::registry::ArchConfig::new(anytime_models::registry::msdnet_tiny())
            .build(VarBuilder::zeros(DType::F32, &Device::Cpu))
            .unwrap();
        let xs = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let ys = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut cx = StepContext { model: other.as_ref(), xs: &xs, ys: &ys, mode: &mode, rng: &mut rng };
        let e = PatchObjective { dsn_ratio: 5.0, policy_std: None }.step(&mut cx).err().unwrap().to_string();
        assert!(e.contains("GFNet"), "{e}");
    }
}
