//! GFNet's patch policy and its classifiers (`network.py` of
//! blackfeather-wang/GFNet-Pytorch@8a6775c), with the reference keys.
//!
//! - [`Policy`] (`ActorCritic`, keys under `policy.`): a *state encoder*
//!   reading the previous step's feature map — for MobileNet-style encoders
//!   a bias-free 1x1 conv to 32 channels, ReLU, flatten in (C, H, W) order,
//!   linear, ReLU (`state_encoder.0`, `state_encoder.3`); for ResNet-style
//!   ones flatten, linear to 2048, ReLU, linear, ReLU (`state_encoder.0`,
//!   `state_encoder.2`) — then a GRU (`gru.*_l0`), the actor (`actor.0`,
//!   linear to 2 then sigmoid: the action's mean) and the critic
//!   (`critic.0`, linear to 1, used in training only).
//! - [`GfnetClassifier`] (`Full_layer`, keys under `fc.`): either the
//!   *cascade* of MobileNet-style models, where step t's logits are
//!   `fc_{t+1}` of the concatenated features of steps 0..t (step 0 has no
//!   cascade head: the glance encoder's own classifier answers), or the
//!   *recurrent* classifier of ResNet-style models, a GRU over the steps'
//!   features (`rnn.*_l0`) and a linear layer (`fc`) on its state.
//!
//! ```
//! use anytime_heads::gfnet::{GfnetClassifier, Policy, StateEncoder};
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! // MobileNetV3 x0.5 at 48-pixel patches: 480-channel 2x2 maps.
//! let policy = Policy::new(vb.pp("policy"), StateEncoder::Conv, 480, (2, 2), 256)?;
//! let map = Tensor::zeros((3, 480, 2, 2), DType::F32, &Device::Cpu)?;
//! let (h, action) = policy.act(&map, None)?;
//! assert_eq!((h.dims(), action.dims()), (&[3, 256][..], &[3, 2][..]));
//! let fc = GfnetClassifier::cascade(vb.pp("fc"), 1280, 4, 10)?; // fc_2 … fc_5
//! let feats = Tensor::zeros((3, 2 * 1280), DType::F32, &Device::Cpu)?;
//! assert_eq!(fc.cascade_logits(&feats)?.dims(), &[3, 10]);
//! # Ok(()) }
//! ```

use anytime_blocks::gru::Gru;
use anytime_blocks::layers::{Conv2d, Linear};
use anytime_flops::{Counter, Shape4};
use anytime_ops::conv::Conv2dParams;
use candle_core::{Module, Result, Tensor, bail};
use candle_nn::VarBuilder;

/// How the policy reads a feature map (`policy_conv` in `configs.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEncoder {
    /// 1x1 conv to 32 channels, ReLU, flatten, linear, ReLU (MobileNetV3,
    /// EfficientNet, RegNet).
    Conv,
    /// Flatten, linear to 2048, ReLU, linear, ReLU (ResNet, DenseNet).
    Linear,
}

/// Channels of the policy's 1x1 conv.
const CONV_STATE_CHANNELS: usize = 32;
/// Width of the linear state encoder's first layer.
const LINEAR_STATE_WIDTH: usize = 2048;

#[derive(Debug, Clone)]
enum Encoder {
    Conv { conv: Conv2d, linear: Linear },
    Linear { l0: Linear, l2: Linear },
}

/// GFNet's patch policy (`ActorCritic`).
#[derive(Debug, Clone)]
pub struct Policy {
    encoder: Encoder,
    gru: Gru,
    actor: Linear,
    critic: Linear,
    map: (usize, usize, usize),
}

impl Policy {
    /// A policy for maps of `channels` x `hw` under `vb` (keys
    /// `state_encoder.*`, `gru.*`, `actor.0.*`, `critic.0.*`), with a GRU of
    /// `hidden` units.
    pub fn new(vb: VarBuilder, kind: StateEncoder, channels: usize, hw: (usize, usize), hidden: usize) -> Result<Self> {
        if channels == 0 || hw.0 == 0 || hw.1 == 0 || hidden == 0 {
            bail!(
                "gfnet policy: channels, map size and hidden units must be positive, got {channels}, {hw:?}, {hidden}"
            )
        }
        let se = vb.pp("state_encoder");
        let encoder = match kind {
            StateEncoder::Conv => Encoder::Conv {
                conv: Conv2d::new(se.pp(0), channels, CONV_STATE_CHANNELS, 1, Conv2dParams::default(), false)?,
                linear: Linear::new(se.pp(3), CONV_STATE_CHANNELS * hw.0 * hw.1, hidden)?,
            },
            StateEncoder::Linear => Encoder::Linear {
                l0: Linear::new(se.pp(0), channels * hw.0 * hw.1, LINEAR_STATE_WIDTH)?,
                l2: Linear::new(se.pp(2), LINEAR_STATE_WIDTH, hidden)?,
            },
        };
        Ok(Self {
            encoder,
            gru: Gru::new(vb.pp("gru"), hidden, hidden, true)?,
            actor: Linear::new(vb.pp("actor").pp(0), hidden, 2)?,
            critic: Linear::new(vb.pp("critic").pp(0), hidden, 1)?,
            map: (channels, hw.0, hw.1),
        })
    }

    /// GRU units.
    pub fn hidden_size(&self) -> usize {
        self.gru.hidden_size()
    }

    /// The state encoder's output `[N, hidden]` for maps `[N, C, h, w]`.
    pub fn encode(&self, map: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = map.dims4()?;
        if (c, h, w) != self.map {
            bail!(
                "gfnet policy: expected maps [N, {}, {}, {}], got {:?}",
                self.map.0,
                self.map.1,
                self.map.2,
                map.dims()
            )
        }
        match &self.encoder {
            Encoder::Conv { conv, linear } => linear.forward(&conv.forward(map)?.relu()?.flatten_from(1)?)?.relu(),
            Encoder::Linear { l0, l2 } => l2.forward(&l0.forward(&map.flatten_from(1)?)?.relu()?)?.relu(),
        }
    }

    /// One policy step: the GRU's next state from the map and the previous
    /// state (zeros when `None`: the reference's `restart_batch`), and the
    /// action's mean `sigmoid(actor(state))` `[N, 2]` (row, column), which
    /// is the action at inference.
    pub fn act(&self, map: &Tensor, hidden: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let h = self.gru.step(&self.encode(map)?, hidden)?;
        let mean = candle_nn::ops::sigmoid(&self.actor.forward(&h)?)?;
        Ok((h, mean))
    }

    /// The critic's value `[N, 1]` of GRU states `[N, hidden]`.
    pub fn value(&self, hidden: &Tensor) -> Result<Tensor> {
        self.critic.forward(hidden)
    }

    /// Adds the cost of one step on the map `x` (state encoder, GRU, actor;
    /// the critic runs in training only). Call inside
    /// [`Counter::reusing`] for every step after the first.
    pub fn count(&self, c: &mut Counter, x: Shape4) -> anytime_flops::Result<()> {
        let n = x.n;
        match &self.encoder {
            Encoder::Conv { conv, linear } => {
                let y = anytime_flops::CountFlops::count_flops(conv, c, x)?;
                c.relu(y);
                linear.count_flops(c, n);
                c.relu(Shape4::new(n, linear.out_features(), 1, 1));
            }
            Encoder::Linear { l0, l2 } => {
                l0.count_flops(c, n);
                c.relu(Shape4::new(n, l0.out_features(), 1, 1));
                l2.count_flops(c, n);
                c.relu(Shape4::new(n, l2.out_features(), 1, 1));
            }
        }
        self.gru.count_flops(c, n, 1)?;
        self.actor.count_flops(c, n);
        c.sigmoid(Shape4::new(n, 2, 1, 1))?;
        Ok(())
    }
}

/// GFNet's classifier (`Full_layer`).
#[derive(Debug, Clone)]
pub enum GfnetClassifier {
    /// `fc_2` … `fc_K`: `fc_k` classifies the concatenation of `k` features.
    Cascade {
        /// `fc_2` first.
        heads: Vec<Linear>,
        /// Width of one step's feature.
        feature: usize,
    },
    /// A GRU over the steps' features and a linear layer on its state.
    Recurrent {
        /// `rnn`.
        rnn: Gru,
        /// `fc`.
        fc: Linear,
    },
}

impl GfnetClassifier {
    /// The cascade for features of width `feature` and steps 1..`steps`
    /// (`fc_2` … `fc_{steps+1}`; the reference always has `fc_2` … `fc_5`,
    /// so at least those are made).
    pub fn cascade(vb: VarBuilder, feature: usize, steps: usize, classes: usize) -> Result<Self> {
        let last = (steps + 1).max(5);
        let heads = (2..=last)
            .map(|k| Linear::new(vb.pp(format!("fc_{k}")), feature * k, classes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Cascade { heads, feature })
    }

    /// The recurrent classifier: `rnn` (GRU from `feature` to `hidden`) and
    /// `fc` (linear to `classes`).
    pub fn recurrent(vb: VarBuilder, feature: usize, hidden: usize, classes: usize) -> Result<Self> {
        Ok(Self::Recurrent {
            rnn: Gru::new(vb.pp("rnn"), feature, hidden, true)?,
            fc: Linear::new(vb.pp("fc"), hidden, classes)?,
        })
    }

    /// The cascade head's logits `[N, classes]` for the concatenated
    /// features `[N, k·feature]` of k ≥ 2 steps.
    pub fn cascade_logits(&self, features: &Tensor) -> Result<Tensor> {
        let Self::Cascade { heads, feature } = self else {
            bail!("gfnet: the recurrent classifier has no cascade heads")
        };
        let width = features.dim(1)?;
        let k = width / feature;
        if width % feature != 0 || k < 2 || k - 2 >= heads.len() {
            bail!(
                "gfnet: no cascade head for {width} features ({} steps of {feature}; heads fc_2 … fc_{})",
                k,
                heads.len() + 1
            )
        }
        heads[k - 2].forward(features)
    }

    /// The recurrent classifier's next state and logits for a step's feature
    /// `[N, feature]` (state zeros when `None`: the reference's `restart`).
    pub fn recurrent_step(&self, feature: &Tensor, hidden: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let Self::Recurrent { rnn, fc } = self else { bail!("gfnet: the cascade classifier has no recurrent state") };
        let h = rnn.step(feature, hidden)?;
        let logits = fc.forward(&h)?;
        Ok((h, logits))
    }

    /// Adds the cost of step `step`'s classification on `n` images (the
    /// cascade has none at step 0). Call inside [`Counter::reusing`] for a
    /// recurrent step after the first.
    pub fn count(&self, c: &mut Counter, n: usize, step: usize) -> anytime_flops::Result<()> {
        match self {
            Self::Cascade { heads, .. } => {
                if let Some(h) = step.checked_sub(1).and_then(|k| heads.get(k)) {
                    h.count_flops(c, n);
                }
            }
            Self::Recurrent { rnn, fc } => {
                rnn.count_flops(c, n, 1)?;
                fc.count_flops(c, n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn keys_follow_the_reference() -> Result<()> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        Policy::new(vb.pp("p"), StateEncoder::Conv, 480, (2, 2), 256)?;
        Policy::new(vb.pp("q"), StateEncoder::Linear, 512, (2, 2), 64)?;
        GfnetClassifier::cascade(vb.pp("c"), 16, 3, 10)?;
        GfnetClassifier::recurrent(vb.pp("r"), 16, 32, 10)?;
        let data = vm.data().lock().unwrap();
        let shape = |k: &str| data.get(k).map(|v| v.dims().to_vec());
        assert_eq!(shape("p.state_encoder.0.weight"), Some(vec![32, 480, 1, 1]));
        assert_eq!(shape("p.state_encoder.0.bias"), None);
        assert_eq!(shape("p.state_encoder.3.weight"), Some(vec![256, 128]));
        assert_eq!(shape("p.gru.weight_ih_l0"), Some(vec![768, 256]));
        assert_eq!(shape("p.actor.0.weight"), Some(vec![2, 256]));
        assert_eq!(shape("p.critic.0.bias"), Some(vec![1]));
        assert_eq!(shape("q.state_encoder.0.weight"), Some(vec![2048, 2048]));
        assert_eq!(shape("q.state_encoder.2.weight"), Some(vec![64, 2048]));
        assert_eq!(shape("c.fc_2.weight"), Some(vec![10, 32]));
        assert_eq!(shape("c.fc_5.weight"), Some(vec![10, 80]));
        assert_eq!(shape("c.fc_6.weight"), None);
        assert_eq!(shape("r.rnn.weight_hh_l0"), Some(vec![96, 32]));
        assert_eq!(shape("r.fc.weight"), Some(vec![10, 32]));
        Ok(())
    }

    #[test]
    fn cascade_beyond_five_steps_and_bad_widths() -> Result<()> {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let fc = GfnetClassifier::cascade(vb, 4, 7, 3)?; // fc_2 … fc_8
        let x = |k: usize| Tensor::zeros((2, 4 * k), DType::F32, &Device::Cpu);
        assert_eq!(fc.cascade_logits(&x(8)?)?.dims(), &[2, 3]);
        assert!(fc.cascade_logits(&x(9)?).is_err());
        assert!(fc.cascade_logits(&x(1)?).is_err());
        assert!(fc.cascade_logits(&Tensor::zeros((2, 6), DType::F32, &Device::Cpu)?).is_err());
        Ok(())
    }

    #[test]
    fn the_action_is_a_sigmoid_and_maps_are_checked() -> Result<()> {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let p = Policy::new(vb, StateEncoder::Linear, 8, (1, 1), 4)?;
        let (_, a) = p.act(&Tensor::ones((2, 8, 1, 1), DType::F32, &Device::Cpu)?, None)?;
        assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, vec![0.5; 4]); // zero weights: sigmoid(0)
        assert!(p.act(&Tensor::ones((2, 8, 2, 1), DType::F32, &Device::Cpu)?, None).is_err());
        Ok(())
    }
}
