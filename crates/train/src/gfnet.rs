//! GFNet's training objectives (blackfeather-wang/GFNet-Pytorch@8a6775c,
//! `train.py` and `network.py`), on [`Gfnet::rollout`]:
//!
//! - [`PatchObjective`] (stages 1 and 3): every step's classification loss
//!   plus the encoders' own classifiers (`dsn`), `(Σ_t CE(logits_t) +
//!   dsn_ratio · Σ_t CE(dsn_t)) / T` (`train.py:355`), with the patches at
//!   uniform random positions (stage 1, `torch.rand`, line 318), sampled
//!   from the learned policy (stage 3: `select_action` with its default
//!   `training=True`, `network.py:85-94`), or, for our stage 0 (the
//!   reference starts from ImageNet weights, we from scratch), at uniform
//!   positions among those holding the item ([`brightest_blobs`]).
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

/// The bounding box `(top, left, bottom, right)` (exclusive ends) of each
/// image's brightest blob in `xs` `[N, C, H, W]`: the 8-connected set of
/// pixels above their channel's minimum (summed over channels) with the
/// largest total excess brightness.
///
/// On a cluttered canvas ([`anytime_data::cluttered`]) that is the item,
/// with any fragment that touches it: the fragments are smaller than the
/// item and few (the unit test measures how often the box holds the item).
pub fn brightest_blobs(xs: &Tensor) -> Result<Vec<[usize; 4]>> {
    let (_, c, h, w) = xs.dims4()?;
    let images = xs.to_dtype(candle_core::DType::F32)?.flatten_from(1)?.to_vec2::<f32>()?;
    Ok(images
        .iter()
        .map(|img| {
            let mut mass = vec![0f64; h * w];
            for plane in img.chunks_exact(h * w).take(c) {
                let lo = plane.iter().copied().fold(f32::INFINITY, f32::min);
                for (m, p) in mass.iter_mut().zip(plane) {
                    *m += (p - lo) as f64;
                }
            }
            let mut seen = vec![false; h * w];
            let (mut best, mut bbox) = (0f64, [0, 0, h, w]);
            let mut stack = Vec::new();
            for start in 0..h * w {
                if seen[start] || mass[start] <= 0.0 {
                    continue;
                }
                seen[start] = true;
                stack.push(start);
                let (mut total, mut b) = (0f64, [h, w, 0, 0]);
                while let Some(k) = stack.pop() {
                    let (y, x) = (k / w, k % w);
                    total += mass[k];
                    b = [b[0].min(y), b[1].min(x), b[2].max(y + 1), b[3].max(x + 1)];
                    for ny in y.saturating_sub(1)..(y + 2).min(h) {
                        for nx in x.saturating_sub(1)..(x + 2).min(w) {
                            let q = ny * w + nx;
                            if !seen[q] && mass[q] > 0.0 {
                                seen[q] = true;
                                stack.push(q);
                            }
                        }
                    }
                }
                if total > best {
                    (best, bbox) = (total, b);
                }
            }
            bbox
        })
        .collect())
}

/// Actions (row then column per box, flattened) whose `patch`-pixel
/// patches on a `size`-pixel image contain each box of `boxes` (as
/// [`brightest_blobs`] gives them), at uniform positions among those that
/// do: a corner r with r ≤ top and bottom ≤ r + P, as the action whose
/// floor(a·(H − P)) is r. A box larger than the patch gets a corner inside
/// it instead. Needs `patch ≤ size` and boxes inside the image.
fn box_actions(boxes: &[[usize; 4]], size: usize, patch: usize, rng: &mut impl Rng) -> Vec<f32> {
    let room = size - patch;
    let mut u = Vec::with_capacity(2 * boxes.len());
    for b in boxes {
        for (lo, hi) in [(b[0], b[2]), (b[1], b[3])] {
            let (first, last) = (hi.saturating_sub(patch).min(room), lo.min(room));
            let r = rng.random_range(first.min(last)..=first.max(last));
            u.push(if room == 0 { 0.0 } else { (r as f32 + 0.5) / room as f32 });
        }
    }
    u
}

/// GFNet's classification loss on random or policy-sampled patches.
#[derive(Debug, Clone)]
pub struct PatchObjective {
    /// Weight of the encoders' own classifiers.
    pub dsn_ratio: f64,
    /// `None`: uniform random actions; `Some(std)`: policy samples.
    pub policy_std: Option<f64>,
    /// Focus patches at uniform positions among those that hold the
    /// image's brightest blob ([`brightest_blobs`]): crops that contain a
    /// cluttered canvas's item (our stage 0).
    pub item_crops: bool,
}

impl Objective for PatchObjective {
    fn step(&self, cx: &mut StepContext<'_>) -> Result<StepOutput> {
        let model = gfnet(cx, "gfnet_patches")?;
        let StepContext { xs, ys, mode, rng, .. } = cx;
        let n = xs.dim(0)?;
        let std = self.policy_std;
        let (size, patch) = (model.config().image_size, model.config().patch_size);
        let items = if self.item_crops { Some(brightest_blobs(xs)?) } else { None };
        let mut choose = |_k: usize, mean: Option<&Tensor>| -> Result<Tensor> {
            match (std, mean, &items) {
                (Some(s), Some(m), _) => sample(m, s, rng),
                (_, _, Some(items)) => {
                    let u = box_actions(items, size, patch, rng);
                    Tensor::from_vec(u, (n, 2), xs.device())
                }
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
                    Box::new(PatchObjective { dsn_ratio: 5.0, policy_std: None, item_crops: false })
                        as Box<dyn Objective>,
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

    /// On cluttered Fashion-MNIST canvases the brightest blob's box holds
    /// the item for nearly every canvas, and item crops contain the box.
    #[test]
    fn item_crops_contain_the_item() {
        use anytime_data::cluttered::{ClutterSpec, compose};
        use anytime_data::fmnist::{Split, fashion_mnist, fashion_mnist_sample_dir};
        let ds = fashion_mnist(&fashion_mnist_sample_dir(), Split::Test).unwrap();
        let spec = ClutterSpec::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (n, side) = (ds.len().min(500), 96);
        let mut pixels = Vec::with_capacity(n * side * side);
        let mut truth = Vec::new();
        for i in 0..n {
            let mut canvas = vec![0u8; side * side];
            truth.push(compose(&ds, i, &spec, &mut rng, &mut canvas));
            // Normalised as the loader does (any affine map with a positive
            // scale gives the same blobs).
            pixels.extend(canvas.iter().map(|&p| (p as f32 / 255.0 - 0.286) / 0.353));
        }
        let xs = Tensor::from_vec(pixels, (n, 1, side, side), &Device::Cpu).unwrap();
        let boxes = brightest_blobs(&xs).unwrap();
        let acts = box_actions(&boxes, 96, 48, &mut rng);
        // The share of each item's brightness inside its patch.
        let mut shares: Vec<f64> = Vec::new();
        let mut corners = std::collections::HashSet::new();
        for (i, a) in acts.chunks(2).enumerate() {
            let (r, c) = ((a[0] * 48.0).floor() as usize, (a[1] * 48.0).floor() as usize);
            assert!(r <= 48 && c <= 48);
            let (ty, tx) = truth[i];
            let img = ds.image(i);
            let (mut inside, mut total) = (0f64, 0f64);
            for (k, &v) in img.iter().enumerate().take(28 * 28) {
                let (y, x) = (ty + k / 28, tx + k % 28);
                total += v as f64;
                if (r..r + 48).contains(&y) && (c..c + 48).contains(&x) {
                    inside += v as f64;
                }
            }
            shares.push(inside / total.max(1.0));
            corners.insert((r as isize - ty as isize, c as isize - tx as isize));
        }
        let whole = shares.iter().filter(|&&s| s >= 1.0).count();
        let most = shares.iter().filter(|&&s| s >= 0.9).count();
        eprintln!("of {n} item crops, {whole} hold the whole item and {most} at least 90 % of its brightness");
        assert!(n >= 100 && whole * 100 >= n * 98 && most * 100 >= n * 99, "{whole} / {most} of {n}");
        // The corners vary.
        assert!(corners.len() > 50, "{} distinct offsets", corners.len());
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
        let e = PatchObjective { dsn_ratio: 5.0, policy_std: None, item_crops: false }
            .step(&mut cx)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("GFNet"), "{e}");
    }
}
