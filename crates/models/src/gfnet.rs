//! GFNet (Wang et al., "Glance and Focus: a Dynamic Approach to Reducing
//! Spatial Redundancy in Image Classification", NeurIPS 2020), as the
//! authors' `inference.py` (blackfeather-wang/GFNet-Pytorch@8a6775c) runs
//! it. The steps are the exits.
//!
//! - **Step 0, the glance**: the whole image, resized to the patch size
//!   (bicubic, `align_corners=True`), goes through the glance encoder
//!   `model_prime`. MobileNet models answer with `model_prime`'s own
//!   `classifier`; ResNet models with the recurrent classifier.
//! - **Step k ≥ 1, a focus**: the policy reads step k−1's feature map
//!   (`model_prime`'s at step 1, the focus encoder's after), its GRU
//!   restarting from zeros at step 1; the action a ∈ [0,1]² is the actor's
//!   sigmoid mean; the patch is `image[:, :, r:r+P, c:c+P]` with
//!   (r, c) = ⌊a·(H − P)⌋ (`a[:,0]` is the row); the focus encoder `model`
//!   encodes it, and the classifier answers: the cascade head `fc_{k+1}` on
//!   the features of steps 0..k concatenated (MobileNet), or the recurrent
//!   classifier's next state (ResNet).
//!
//! Keys: `model_prime.*` and `model.*` (the encoders, gen-efficientnet's or
//! torchvision's), `policy.*` and `fc.*` (GFNet's `ActorCritic` and
//! `Full_layer`); [`anytime_io`] maps GFNet's checkpoints to them.
//!
//! Real early exit keeps, per sample, the image, the policy's GRU state, the
//! classifier's state and the last map, so compaction works across steps.
//! [`MultiExit::stage_extras`] gives each focus step's `actions` `[N, 2]`
//! and patch `coords` (i32 `[N, 2]`, row then column).
//!
//! Costs are multiply-accumulates ([`anytime_flops::Mode::Macs`], as GFNet's
//! paper counts): convolutions (squeeze-excite included), linear layers and
//! GRU steps; batch norm, activations, gates, pooling and resizing are
//! listed separately. Step 0 is the glance encoder and its classifier; step
//! k adds the policy, the focus encoder and head k.
//!
//! ```
//! use anytime_models::gfnet::{Gfnet, GfnetConfig};
//! use anytime_models::MultiExit;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = GfnetConfig::from_json(&serde_json::json!({
//!     "model_arch": "mobilenetv3_large_100", "channel_multiplier": 0.5, "num_classes": 10,
//!     "image_size": 96, "patch_size": 48, "T": 4, "in_channels": 1
//! }))?;
//! let net = Gfnet::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
//! let x = Tensor::zeros((2, 1, 96, 96), DType::F32, &Device::Cpu)?;
//! let exits = net.forward_exits(&x, &anytime_blocks::Mode::eval())?;
//! assert_eq!(exits.len(), 4);
//! assert_eq!(exits[3].logits.dims(), &[2, 10]);
//! assert_eq!(exits[3].feature.dims(), &[2, 4 * 1280]); // what fc_5 reads
//! let macs = net.exit_costs(96, 96)?.mflops(anytime_flops::Mode::Macs);
//! assert!(macs.windows(2).all(|w| w[0] < w[1]));
//! # Ok(()) }
//! ```

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::limits::{MAX_CHANNELS, MAX_CLASSES, MAX_IN_CHANNELS};
use crate::stages::Compact;
use anytime_blocks::Mode;
use anytime_blocks::mobilenet::{EncoderOutput, MobileNetV3, MobileNetV3Config};
use anytime_blocks::resnet::{ResNet, ResNetConfig};
use anytime_flops::{Counter, ExitCosts, Resize, Shape4};
use anytime_heads::gfnet::{GfnetClassifier, Policy, StateEncoder};
use candle_core::{DType, Tensor, bail};
use candle_nn::VarBuilder;
use serde::Serialize;
use serde_json::Value;

/// The MobileNetV3-Large names and their channel multipliers
/// (gen-efficientnet's factories).
const MOBILENETS: [(&str, f64); 3] =
    [("mobilenetv3_large_075", 0.75), ("mobilenetv3_large_100", 1.0), ("mobilenetv3_large_125", 1.25)];

/// Members of the JSON form.
const MEMBERS: [&str; 10] = [
    "model_arch",
    "channel_multiplier",
    "num_classes",
    "image_size",
    "patch_size",
    "T",
    "feature_num",
    "policy_hidden_dim",
    "fc_hidden_dim",
    "in_channels",
];

/// The largest image side.
pub const MAX_IMAGE_SIZE: usize = 4096;
/// The most steps.
pub const MAX_STEPS: usize = 64;

/// A GFNet configuration (`--arch gfnet`).
///
/// JSON: `{"model_arch", "num_classes", "image_size", "patch_size", "T"}`
/// and optionally `channel_multiplier` (MobileNet; default from the name:
/// 0.75, 1.0, 1.25), `feature_num` (MobileNet's `conv_head` width, default
/// 1280; a ResNet's is 512·expansion), `policy_hidden_dim` (default 256 for
/// MobileNet, 1024 for ResNet), `fc_hidden_dim` (the ResNet classifier's
/// GRU, default 1024) and `in_channels` (default 3).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GfnetConfig {
    /// `mobilenetv3_large_{075,100,125}` or `resnet{18,34,50,101,152}`.
    pub model_arch: String,
    /// MobileNet's channel multiplier (1.0 for ResNets).
    pub channel_multiplier: f64,
    /// Classes.
    pub num_classes: usize,
    /// Side of the (square) input images.
    pub image_size: usize,
    /// Side of the glance and of each patch.
    pub patch_size: usize,
    /// Steps (exits): the glance and T − 1 patches.
    #[serde(rename = "T")]
    pub t: usize,
    /// Width of an encoder's feature.
    pub feature_num: usize,
    /// The policy's GRU units.
    pub policy_hidden_dim: usize,
    /// The recurrent classifier's GRU units (ResNet only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fc_hidden_dim: Option<usize>,
    /// Input channels.
    pub in_channels: usize,
}

/// The encoder family of a `model_arch`.
#[derive(Debug, Clone, PartialEq)]
enum Family {
    MobileNet { multiplier: f64 },
    ResNet(ResNetConfig),
}

impl GfnetConfig {
    fn family(&self) -> std::result::Result<Family, ConfigError> {
        if let Some(&(_, m)) = MOBILENETS.iter().find(|(n, _)| *n == self.model_arch) {
            return Ok(Family::MobileNet { multiplier: m });
        }
        if let Some(r) = ResNetConfig::named(&self.model_arch, self.in_channels, self.num_classes) {
            return Ok(Family::ResNet(r));
        }
        let known: Vec<&str> =
            MOBILENETS.iter().map(|m| m.0).chain(anytime_blocks::resnet::NAMED.iter().map(|r| r.0)).collect();
        Err(ConfigError::Invalid(format!(
            "gfnet: unknown `model_arch` '{}' (known: {})",
            self.model_arch,
            known.join(", ")
        )))
    }

    /// Whether the encoders are MobileNets (cascade classifier, conv state
    /// encoder) rather than ResNets (recurrent classifier, linear state
    /// encoder).
    pub fn is_mobilenet(&self) -> bool {
        matches!(self.family(), Ok(Family::MobileNet { .. }))
    }

    /// Side of the encoders' output map: ⌈patch / 32⌉.
    pub fn map_size(&self) -> usize {
        self.patch_size.div_ceil(32)
    }

    /// Checks every value, naming the member that is wrong.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("gfnet: {m}")));
        let family = self.family()?;
        for (name, v, max) in [
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("in_channels", self.in_channels, MAX_IN_CHANNELS),
            ("image_size", self.image_size, MAX_IMAGE_SIZE),
            ("patch_size", self.patch_size, MAX_IMAGE_SIZE),
            ("T", self.t, MAX_STEPS),
            ("feature_num", self.feature_num, MAX_CHANNELS),
            ("policy_hidden_dim", self.policy_hidden_dim, MAX_CHANNELS),
        ] {
            if v == 0 || v > max {
                return bad(format!("`{name}` must be 1 to {max}, got {v}"));
            }
        }
        if self.patch_size > self.image_size {
            return bad(format!(
                "`patch_size` ({}) must not exceed `image_size` ({})",
                self.patch_size, self.image_size
            ));
        }
        let m = self.channel_multiplier;
        let (encoder, policy_in) = match &family {
            Family::MobileNet { .. } => {
                if !(m.is_finite() && m > 0.0 && m <= 8.0) {
                    return bad(format!("`channel_multiplier` must be in (0, 8], got {m}"));
                }
                if let Some(h) = self.fc_hidden_dim {
                    return bad(format!(
                        "`fc_hidden_dim` ({h}) is for ResNet encoders; {} uses the cascade classifier",
                        self.model_arch
                    ));
                }
                // About 5.5 M parameters at x1.0 before the head, scaling
                // with m², plus conv_head.
                let w = (m * 1000.0).ceil() as u128;
                (6 * w * w + 960 * w * self.feature_num as u128 / 1000 + 1, 32)
            }
            Family::ResNet(r) => {
                if m != 1.0 {
                    return bad(format!(
                        "`channel_multiplier` applies to MobileNet encoders only, got {m} for {}",
                        self.model_arch
                    ));
                }
                if self.feature_num != r.feature_dim() {
                    return bad(format!(
                        "`feature_num` of {} is {} (its pooled feature), got {}",
                        self.model_arch,
                        r.feature_dim(),
                        self.feature_num
                    ));
                }
                match self.fc_hidden_dim {
                    Some(h) if h == 0 || h > MAX_CHANNELS => {
                        return bad(format!("`fc_hidden_dim` must be 1 to {MAX_CHANNELS}, got {h}"));
                    }
                    None => return bad("`fc_hidden_dim` is missing (the ResNet classifier's GRU)".into()),
                    Some(_) => {}
                }
                (61_000_000, r.feature_dim() as u128)
            }
        };
        // Two encoders, the policy (state encoder, GRU, actor) and the
        // classifier (cascade heads or GRU).
        let (f, h, k) = (self.feature_num as u128, self.policy_hidden_dim as u128, self.num_classes as u128);
        let s = (self.map_size() as u128).pow(2);
        let fc_h = self.fc_hidden_dim.unwrap_or(0) as u128;
        let steps = (self.t as u128 + 1).max(5);
        let estimate = 2 * encoder
            + 2 * f * k
            + policy_in * s * 2048
            + 2048 * h
            + 6 * h * h
            + steps * steps * f * k
            + 6 * fc_h * (fc_h + f)
            + fc_h * k;
        crate::limits::params_cap(estimate).map_err(|e| ConfigError::Invalid(format!("gfnet: {e}")))?;
        Ok(())
    }

    /// Reads the project's JSON form, with an error naming any unknown,
    /// missing or ill-typed member.
    pub fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("gfnet: {m}"));
        let Some(obj) = v.as_object() else {
            return Err(bad(format!("the configuration must be a JSON object, got {v}")));
        };
        if let Some(k) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(bad(format!("unknown member `{k}` (known: {})", MEMBERS.join(", "))));
        }
        let get = |name: &str| obj.get(name).ok_or_else(|| bad(format!("missing member `{name}`")));
        let count = |name: &str, x: &Value| -> std::result::Result<usize, ConfigError> {
            x.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("`{name}` must be a whole number >= 0, got {x}")))
        };
        let model_arch = match get("model_arch")?.as_str() {
            Some(s) => s.to_string(),
            None => return Err(bad(format!("`model_arch` must be a string, got {}", obj["model_arch"]))),
        };
        let mut cfg = Self {
            model_arch,
            channel_multiplier: 1.0,
            num_classes: count("num_classes", get("num_classes")?)?,
            image_size: count("image_size", get("image_size")?)?,
            patch_size: count("patch_size", get("patch_size")?)?,
            t: count("T", get("T")?)?,
            feature_num: 0,
            policy_hidden_dim: 0,
            fc_hidden_dim: None,
            in_channels: obj.get("in_channels").filter(|x| !x.is_null()).map_or(Ok(3), |x| count("in_channels", x))?,
        };
        let family = cfg.family()?;
        // An optional member given as `null` counts as absent (Python's `None`).
        let opt = |name: &str| obj.get(name).filter(|x| !x.is_null()).map(|x| count(name, x)).transpose();
        let mobilenet = matches!(family, Family::MobileNet { .. });
        cfg.channel_multiplier = match (obj.get("channel_multiplier").filter(|x| !x.is_null()), &family) {
            (Some(x), _) => x.as_f64().ok_or_else(|| bad(format!("`channel_multiplier` must be a number, got {x}")))?,
            (None, Family::MobileNet { multiplier }) => *multiplier,
            (None, Family::ResNet(_)) => 1.0,
        };
        cfg.feature_num = match (opt("feature_num")?, &family) {
            (Some(f), _) => f,
            (None, Family::MobileNet { .. }) => 1280,
            (None, Family::ResNet(r)) => r.feature_dim(),
        };
        cfg.policy_hidden_dim = opt("policy_hidden_dim")?.unwrap_or(if mobilenet { 256 } else { 1024 });
        cfg.fc_hidden_dim = match opt("fc_hidden_dim")? {
            Some(h) => Some(h),
            None if mobilenet => None,
            None => Some(1024),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One of GFNet's encoders.
#[derive(Debug, Clone)]
enum Encoder {
    MobileNet(MobileNetV3),
    ResNet(ResNet),
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &GfnetConfig) -> Result<Self> {
        Ok(match cfg.family()? {
            Family::MobileNet { .. } => Encoder::MobileNet(MobileNetV3::new(
                vb,
                &MobileNetV3Config {
                    channel_multiplier: cfg.channel_multiplier,
                    in_channels: cfg.in_channels,
                    num_classes: cfg.num_classes,
                    num_features: cfg.feature_num,
                },
            )?),
            Family::ResNet(r) => Encoder::ResNet(ResNet::new(vb, &r)?),
        })
    }

    fn forward_t(&self, xs: &Tensor, mode: &Mode) -> candle_core::Result<EncoderOutput> {
        match self {
            Encoder::MobileNet(m) => m.forward_t(xs, mode),
            Encoder::ResNet(r) => r.forward_t(xs, mode),
        }
    }

    fn classify(&self, feature: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Encoder::MobileNet(m) => m.classify(feature),
            Encoder::ResNet(r) => r.classify(feature),
        }
    }

    fn map_channels(&self) -> usize {
        match self {
            Encoder::MobileNet(m) => m.map_channels(),
            Encoder::ResNet(r) => r.map_channels(),
        }
    }

    fn count(&self, c: &mut Counter, x: Shape4, classify: bool) -> anytime_flops::Result<Shape4> {
        match self {
            Encoder::MobileNet(m) => m.count(c, x, classify),
            Encoder::ResNet(r) => r.count(c, x, classify),
        }
    }
}

/// The GFNet network: two encoders, the policy and the classifier.
#[derive(Debug, Clone)]
pub struct Gfnet {
    cfg: GfnetConfig,
    glance: Encoder,
    focus: Encoder,
    policy: Policy,
    fc: GfnetClassifier,
    patches: PatchPolicy,
}

/// Where inference's focus steps look: the learned policy, or one of the
/// baselines GFNet's policy is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchPolicy {
    /// The policy's action (the actor's mean).
    #[default]
    Learned,
    /// Always the image's centre (a = (0.5, 0.5)).
    Centre,
    /// Uniform random positions, a function of the seed, the step and the
    /// sample's row in its batch.
    Random {
        /// The positions' seed.
        seed: u64,
    },
}

impl std::fmt::Display for PatchPolicy {
    /// The form [`PatchPolicy::from_str`](std::str::FromStr) reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Learned => f.write_str("learned"),
            Self::Centre => f.write_str("centre"),
            Self::Random { seed } => write!(f, "random:{seed}"),
        }
    }
}

impl std::str::FromStr for PatchPolicy {
    type Err = String;

    /// `learned`, `centre` (or `center`), `random` (seed 0) or `random:SEED`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "learned" => Ok(Self::Learned),
            "centre" | "center" => Ok(Self::Centre),
            "random" => Ok(Self::Random { seed: 0 }),
            _ => match s.strip_prefix("random:").map(str::parse::<u64>) {
                Some(Ok(seed)) => Ok(Self::Random { seed }),
                _ => Err(format!("unknown patch policy '{s}' (learned, centre, random or random:SEED)")),
            },
        }
    }
}

/// A uniform number in [0, 1) from `(seed, step, row, coordinate)`
/// (SplitMix64's finaliser; 24 bits, exact in f32).
fn uniform(seed: u64, step: usize, row: u32, coordinate: u64) -> f32 {
    let mut z = seed ^ ((step as u64) << 40) ^ (u64::from(row) << 2) ^ coordinate;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

impl Gfnet {
    /// Builds the network under `vb` (keys `model_prime.*`, `model.*`,
    /// `policy.*`, `fc.*`).
    pub fn new(cfg: &GfnetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let glance = Encoder::new(vb.pp("model_prime"), cfg)?;
        let focus = Encoder::new(vb.pp("model"), cfg)?;
        let s = cfg.map_size();
        let (kind, fc) = if cfg.is_mobilenet() {
            (StateEncoder::Conv, GfnetClassifier::cascade(vb.pp("fc"), cfg.feature_num, cfg.t - 1, cfg.num_classes)?)
        } else {
            let h = cfg.fc_hidden_dim.unwrap_or(1024);
            (StateEncoder::Linear, GfnetClassifier::recurrent(vb.pp("fc"), cfg.feature_num, h, cfg.num_classes)?)
        };
        let policy = Policy::new(vb.pp("policy"), kind, focus.map_channels(), (s, s), cfg.policy_hidden_dim)?;
        Ok(Self { cfg: cfg.clone(), glance, focus, policy, fc, patches: PatchPolicy::Learned })
    }

    /// The same network with inference's patches chosen by `patches` (the
    /// learned policy by default).
    pub fn with_patch_policy(mut self, patches: PatchPolicy) -> Self {
        self.patches = patches;
        self
    }

    /// How inference chooses its patches.
    pub fn patch_policy(&self) -> PatchPolicy {
        self.patches
    }

    /// The configuration.
    pub fn config(&self) -> &GfnetConfig {
        &self.cfg
    }

    /// A training pass over `xs`, as GFNet's `train.py` runs one: the glance,
    /// then `T − 1` focus steps at the actions `choose(step, mean)` returns
    /// (`[N, 2]` in [0, 1]; `mean` is the policy's, `Some` when
    /// `run_policy`). A module outside training in `mode` (a frozen
    /// `model_prime`, `model` or `fc`) runs without gradient, as the
    /// reference's `torch.no_grad()` blocks; maps are always detached (the
    /// encoders return `x.detach()`).
    pub fn rollout(
        &self,
        xs: &Tensor,
        mode: &Mode,
        run_policy: bool,
        choose: &mut dyn FnMut(usize, Option<&Tensor>) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Rollout> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let p = self.cfg.patch_size;
        let grad = |t: Tensor, module: &str| if mode.trains(module) { t } else { t.detach() };
        let glance = anytime_ops::resize::bicubic(xs, (p, p), true)?;
        let g = self.glance.forward_t(&glance, mode)?;
        let feature = grad(g.feature, "model_prime");
        let own = grad(self.glance.classify(&feature)?, "model_prime");
        let mut out = Rollout {
            logits: Vec::new(),
            dsn: vec![own.clone()],
            actions: Vec::new(),
            means: Vec::new(),
            values: Vec::new(),
        };
        let (mut feats, mut fc_h) = (None, None);
        match self.fc_step(&feature, &mut feats, &mut fc_h)? {
            Some((logits, _)) => out.logits.push(grad(logits, "fc")),
            None => out.logits.push(own),
        }
        let mut map = g.map.detach();
        let mut policy_h: Option<Tensor> = None;
        for k in 1..self.cfg.t {
            let mean = if run_policy {
                let (h, mean) = self.policy.act(&map, policy_h.as_ref())?;
                out.values.push(self.policy.value(&h)?.squeeze(1)?);
                policy_h = Some(h);
                Some(mean)
            } else {
                None
            };
            let action = choose(k, mean.as_ref())?.detach();
            if action.dims() != [xs.dim(0)?, 2] {
                bail!("gfnet: step {k}'s action must be [N, 2], got {:?}", action.dims())
            }
            let enc = self.focus.forward_t(&self.crop(xs, &self.coords(&action)?)?, mode)?;
            let feature = grad(enc.feature, "model");
            out.dsn.push(grad(self.focus.classify(&feature)?, "model"));
            let Some((logits, _)) = self.fc_step(&feature, &mut feats, &mut fc_h)? else {
                bail!("gfnet: the classifier gave no logits at step {k}")
            };
            out.logits.push(grad(logits, "fc"));
            map = enc.map.detach();
            out.actions.push(action);
            if let Some(m) = mean {
                out.means.push(m);
            }
        }
        Ok(out)
    }

    /// One step of the classifier (`Full_layer`) on the step's encoder
    /// feature: the cascade appends it to the features so far (`feats`), the
    /// recurrent classifier steps its state (`fc_h`). Returns the logits and
    /// the vector the answering layer read, or `None` for the cascade's first
    /// step, where MobileNet's glance answers with its own classifier.
    fn fc_step(
        &self,
        feature: &Tensor,
        feats: &mut Option<Tensor>,
        fc_h: &mut Option<Tensor>,
    ) -> candle_core::Result<Option<(Tensor, Tensor)>> {
        if !self.cfg.is_mobilenet() {
            let (h, logits) = self.fc.recurrent_step(feature, fc_h.as_ref())?;
            *fc_h = Some(h.clone());
            return Ok(Some((logits, h)));
        }
        let Some(earlier) = feats.take() else {
            *feats = Some(feature.clone());
            return Ok(None);
        };
        let all = Tensor::cat(&[&earlier, feature], 1)?;
        *feats = Some(all.clone());
        Ok(Some((self.fc.cascade_logits(&all)?, all)))
    }

    /// The patch positions of actions `[N, 2]`: ⌊a·(H − P)⌋ computed in
    /// f32 as the reference does, (row, column).
    fn coords(&self, action: &Tensor) -> candle_core::Result<Vec<[i32; 2]>> {
        let room = (self.cfg.image_size - self.cfg.patch_size) as f32;
        let scaled = action.to_dtype(DType::F32)?.affine(room as f64, 0.0)?.floor()?.to_vec2::<f32>()?;
        Ok(scaled.iter().map(|rc| [rc[0].clamp(0.0, room) as i32, rc[1].clamp(0.0, room) as i32]).collect())
    }

    /// The patches `[N, C, P, P]` at rows/columns `coords` of `image`.
    fn crop(&self, image: &Tensor, coords: &[[i32; 2]]) -> candle_core::Result<Tensor> {
        let p = self.cfg.patch_size;
        let patches = coords
            .iter()
            .enumerate()
            .map(|(i, &[r, c])| image.get(i)?.narrow(1, r as usize, p)?.narrow(2, c as usize, p))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&patches, 0)
    }
}

/// A training pass of GFNet ([`Gfnet::rollout`]): every step's outputs, in
/// step order.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Each step's logits `[N, classes]` (the glance's own classifier at step
    /// 0 for MobileNet models, else the cascade or recurrent classifier).
    pub logits: Vec<Tensor>,
    /// Each step's encoder's own classifier (`classifier` or `fc` of
    /// `model_prime` at step 0, of `model` after): the reference's
    /// deep-supervision (`dsn`) outputs.
    pub dsn: Vec<Tensor>,
    /// Each focus step's action `[N, 2]` (what the chooser returned).
    pub actions: Vec<Tensor>,
    /// Each focus step's policy mean `[N, 2]` (empty when the policy did not
    /// run).
    pub means: Vec<Tensor>,
    /// Each focus step's critic value `[N]` (empty when the policy did not
    /// run).
    pub values: Vec<Tensor>,
}

/// What a GFNet pass carries between steps, per sample.
#[derive(Debug, Clone)]
struct Carry {
    /// The full images `[N, C, H, W]`.
    image: Tensor,
    /// Each sample's row in the batch the pass began with (u32 `[N]`).
    rows: Tensor,
    /// The last step's feature map.
    map: Option<Tensor>,
    /// The policy's GRU state.
    policy_h: Option<Tensor>,
    /// The features of the steps so far, concatenated (cascade).
    feats: Option<Tensor>,
    /// The recurrent classifier's state.
    fc_h: Option<Tensor>,
    /// The last focus step's action means `[N, 2]` and patch coordinates
    /// (i32 `[N, 2]`).
    step: Option<(Tensor, Tensor)>,
}

impl Compact for Carry {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        Ok(Self {
            image: self.image.select(keep)?,
            rows: self.rows.select(keep)?,
            map: self.map.select(keep)?,
            policy_h: self.policy_h.select(keep)?,
            feats: self.feats.select(keep)?,
            fc_h: self.fc_h.select(keep)?,
            step: match &self.step {
                Some((a, c)) => Some((a.select(keep)?, c.select(keep)?)),
                None => None,
            },
        })
    }
}

impl MultiExit for Gfnet {
    fn arch(&self) -> &'static str {
        "gfnet"
    }

    fn num_exits(&self) -> usize {
        self.cfg.t
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    fn exit_costs(&self, h: usize, w: usize) -> Result<ExitCosts> {
        let (size, p) = (self.cfg.image_size, self.cfg.patch_size);
        if (h, w) != (size, size) {
            return Err(ModelError::Input(format!(
                "gfnet is configured for {size}x{size} images (`image_size`), got {h}x{w}"
            )));
        }
        let count = || -> anytime_flops::Result<ExitCosts> {
            let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
            let x = Shape4::new(1, self.cfg.in_channels, h, w);
            let glance = c.resize(x, p, p, Resize::Bicubic);
            let mut map = self.glance.count(&mut c, glance, self.cfg.is_mobilenet())?;
            self.fc.count(&mut c, 1, 0)?;
            c.mark_exit();
            for k in 1..self.cfg.t {
                let patch = x.with_hw(p, p);
                let focus = |c: &mut Counter| -> anytime_flops::Result<Shape4> {
                    self.policy.count(c, map)?;
                    self.focus.count(c, patch, false)
                };
                map = if k == 1 { focus(&mut c)? } else { c.reusing(focus)? };
                if self.cfg.is_mobilenet() {
                    self.fc.count(&mut c, 1, k)?;
                } else {
                    c.reusing(|c| self.fc.count(c, 1, k))?;
                }
                c.mark_exit();
            }
            c.try_finish()
        };
        count().map_err(|e| ModelError::Input(format!("gfnet at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let n = xs.dim(0)?;
        let rows = Tensor::arange(0u32, n as u32, xs.device())?;
        let carry = Carry { image: xs.clone(), rows, map: None, policy_h: None, feats: None, fc_h: None, step: None };
        Ok(ExitState::new(n, carry))
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        let k = state.next_exit();
        if k >= self.cfg.t {
            bail!("gfnet: all {} steps have run", self.cfg.t)
        }
        let Some(carry) = state.carry_mut::<Carry>() else { bail!("gfnet: the pass was not started by gfnet") };
        let p = self.cfg.patch_size;
        let enc = if k == 0 {
            let glance = anytime_ops::resize::bicubic(&carry.image, (p, p), true)?;
            self.glance.forward_t(&glance, mode)?
        } else {
            let Some(map) = &carry.map else { bail!("gfnet: step {k} has no map from step {}", k - 1) };
            let mean = match self.patches {
                PatchPolicy::Learned => {
                    let (h, mean) = self.policy.act(map, carry.policy_h.as_ref())?;
                    carry.policy_h = Some(h);
                    mean
                }
                PatchPolicy::Centre => Tensor::full(0.5f32, (carry.image.dim(0)?, 2), carry.image.device())?,
                PatchPolicy::Random { seed } => {
                    let rows = carry.rows.to_vec1::<u32>()?;
                    let u: Vec<f32> =
                        rows.iter().flat_map(|&r| [uniform(seed, k, r, 0), uniform(seed, k, r, 1)]).collect();
                    Tensor::from_vec(u, (rows.len(), 2), carry.image.device())?
                }
            };
            let coords = self.coords(&mean)?;
            let patches = self.crop(&carry.image, &coords)?;
            let flat: Vec<i32> = coords.iter().flatten().copied().collect();
            let coords = Tensor::from_vec(flat, (coords.len(), 2), mean.device())?;
            carry.step = Some((mean, coords));
            self.focus.forward_t(&patches, mode)?
        };
        carry.map = Some(enc.map);
        let out = match self.fc_step(&enc.feature, &mut carry.feats, &mut carry.fc_h)? {
            Some((logits, feature)) => ExitOutput { logits, feature },
            None => ExitOutput { logits: self.glance.classify(&enc.feature)?, feature: enc.feature },
        };
        state.finish_stage();
        Ok(out)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn stage_extras(&self, state: &mut ExitState) -> Vec<(&'static str, Tensor)> {
        // After a focus step (not the glance) the next exit is 2 or more.
        let focused = state.next_exit() >= 2;
        match state.carry_mut::<Carry>().and_then(|c| c.step.as_ref()) {
            Some((a, c)) if focused => vec![("actions", a.clone()), ("coords", c.clone())],
            _ => Vec::new(),
        }
    }
}

impl crate::registry::Architecture for GfnetConfig {
    const NAME: &'static str = "gfnet";
    const HELP: &'static str = "GFNet: a glance and policy-chosen patches through MobileNetV3 or ResNet encoders; own JSON (model_arch, image_size, patch_size, T, …)";

    fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        GfnetConfig::from_json(v)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        GfnetConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(Gfnet::new(self, vb)?))
    }

    fn default_size(&self) -> (usize, usize) {
        (self.image_size, self.image_size)
    }

    fn dataset(&self) -> Option<&'static str> {
        // The references' GFNet models are ImageNet models; ours on
        // cluttered Fashion-MNIST are registry entries.
        (self.in_channels == 3 && self.num_classes == 1000).then_some("imagenet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        GfnetConfig::from_json(&v).unwrap_err().to_string()
    }

    fn base() -> Value {
        json!({"model_arch": "mobilenetv3_large_100", "channel_multiplier": 0.5, "num_classes": 10,
               "image_size": 96, "patch_size": 48, "T": 4, "in_channels": 1})
    }

    fn with(key: &str, v: Value) -> Value {
        let mut b = base();
        b[key] = v;
        b
    }

    #[test]
    fn defaults_follow_the_encoder_family() {
        let m = GfnetConfig::from_json(&base()).unwrap();
        assert_eq!((m.feature_num, m.policy_hidden_dim, m.fc_hidden_dim), (1280, 256, None));
        let r = GfnetConfig::from_json(&json!({"model_arch": "resnet50", "num_classes": 1000, "image_size": 224,
            "patch_size": 96, "T": 5}))
        .unwrap();
        assert_eq!((r.feature_num, r.policy_hidden_dim, r.fc_hidden_dim, r.in_channels), (2048, 1024, Some(1024), 3));
        let big = GfnetConfig::from_json(&json!({"model_arch": "mobilenetv3_large_125", "num_classes": 5,
            "image_size": 64, "patch_size": 32, "T": 2}))
        .unwrap();
        assert_eq!(big.channel_multiplier, 1.25);
        // `null` (Python's None, as configs.py writes fc_hidden_dim) is absent.
        assert_eq!(GfnetConfig::from_json(&with("fc_hidden_dim", Value::Null)).unwrap(), m);
        // The JSON written back reads back the same.
        for c in [m, r, big] {
            assert_eq!(GfnetConfig::from_json(&serde_json::to_value(&c).unwrap()).unwrap(), c);
        }
    }

    #[test]
    fn bad_values_name_their_member() {
        assert!(err(with("model_arch", json!("vgg16"))).contains("`model_arch`"));
        assert!(err(with("model_arch", json!(3))).contains("`model_arch`"));
        assert!(err(with("patch_size", json!(128))).contains("`patch_size`"));
        assert!(err(with("T", json!(0))).contains("`T`"));
        assert!(err(with("T", json!(1000))).contains("`T`"));
        assert!(err(with("channel_multiplier", json!(-1.0))).contains("`channel_multiplier`"));
        assert!(err(with("channel_multiplier", json!("half"))).contains("`channel_multiplier`"));
        assert!(err(with("num_classes", json!(0))).contains("`num_classes`"));
        assert!(err(with("image_size", json!(1.5))).contains("`image_size`"));
        assert!(err(with("fc_hidden_dim", json!(64))).contains("`fc_hidden_dim`"));
        assert!(err(with("policy_hidden_dim", json!(1u64 << 40))).contains("`policy_hidden_dim`"));
        assert!(err(with("patchsize", json!(48))).contains("unknown member `patchsize`"));
        let mut no_t = base();
        no_t.as_object_mut().unwrap().remove("T");
        assert!(err(no_t).contains("missing member `T`"));
        let r = json!({"model_arch": "resnet18", "num_classes": 10, "image_size": 64, "patch_size": 32, "T": 3,
            "feature_num": 256});
        assert!(err(r).contains("`feature_num`"));
        let r = json!({"model_arch": "resnet18", "num_classes": 10, "image_size": 64, "patch_size": 32, "T": 3,
            "channel_multiplier": 0.5});
        assert!(err(r).contains("`channel_multiplier`"));
        // A huge GRU is refused from the estimate, before any allocation.
        assert!(err(with("policy_hidden_dim", json!(16_000))).contains("parameters"));
    }

    /// The fixture's model, its weights from the synthetic formula for the
    /// reference's key list (every key used, none missing), and its outputs.
    fn fixture(name: &str) -> (Gfnet, std::collections::HashMap<String, Tensor>) {
        use crate::testutil;
        let cfg = GfnetConfig::from_json(&testutil::json(name, "config.json")).unwrap();
        let keys: Vec<(String, Vec<usize>)> = serde_json::from_value(testutil::json(name, "keys.json")).unwrap();
        let tensors =
            keys.iter().map(|(k, shape)| (k.clone(), anytime_io::synthetic::tensor(k, shape).unwrap())).collect();
        let file = anytime_io::TensorFile {
            tensors,
            metadata: Default::default(),
            format: anytime_io::Format::Safetensors,
            path: testutil::fixture(name).join("keys.json"),
        };
        let net = anytime_io::build_checked(file, DType::F32, &candle_core::Device::Cpu, |vb| {
            Gfnet::new(&cfg, vb).map_err(|e| candle_core::Error::Msg(e.to_string()))
        })
        .unwrap();
        let io =
            candle_core::safetensors::load(testutil::fixture(name).join("io.safetensors"), &candle_core::Device::Cpu)
                .unwrap()
                .into_iter()
                .collect();
        (net, io)
    }

    /// Per-step logits, actions and patch coordinates equal the reference
    /// step loop's (`inference.py`), for MobileNetV3 (cascade heads) and
    /// ResNet-18 (recurrent classifier) encoders. Logits are compared
    /// relative to each tensor's scale: the synthetic weights make the
    /// MobileNet's activations grow to ~6e4, where the reference's own f32
    /// result differs from an f64 recomputation by up to 2.1e-4 of the
    /// scale (step 1; `scripts/fixtures/gfnet.py`'s weights in f64); ours
    /// differs from the reference by 1.6e-4. ResNet-18's stay near 1 and
    /// agree to 2e-5.
    #[test]
    fn steps_match_the_reference() {
        let cases: [(&str, f32); 2] = [("gfnet_mnv3_small", 4e-4), ("gfnet_resnet18", 3e-5)];
        // Layer by layer, then the inference path (folded batch norms).
        for (mode, (name, tol)) in
            [Mode::eval(), Mode::inference()].into_iter().flat_map(|m| cases.map(|c| (m.clone(), c)))
        {
            let (net, io) = fixture(name);
            let mut state = net.begin(&io["input"], &mode).unwrap();
            for k in 0..net.num_exits() {
                let out = net.advance(&mut state, &mode).unwrap();
                let extras = net.stage_extras(&mut state);
                if k == 0 {
                    assert!(extras.is_empty(), "{name}: the glance has no action");
                } else {
                    assert_eq!(extras.iter().map(|e| e.0).collect::<Vec<_>>(), ["actions", "coords"]);
                    // The MobileNet's large activations (see above) put
                    // the actions of the folded path (weights scaled by the
                    // batch norms before the sums) 1.02e-4 from the
                    // reference's: half the logits' scaled tolerance.
                    crate::testutil::assert_close_tol(
                        &format!("{name} actions.{k} (fold {})", mode.folds_batch_norm()),
                        &extras[0].1,
                        &io[&format!("actions.{k}")],
                        (tol / 2.0).max(1e-4),
                    );
                    let coords = |t: &Tensor| t.to_vec2::<i32>().unwrap();
                    assert_eq!(coords(&extras[1].1), coords(&io[&format!("coords.{k}")]), "{name} coords.{k}");
                }
                crate::testutil::assert_close_scaled(
                    &format!("{name} logits.{k}"),
                    &out.logits,
                    &io[&format!("logits.{k}")],
                    tol,
                );
            }
        }
    }

    /// Real early exit keeps each sample's image, policy and classifier
    /// state: a compacted pass gives the remaining samples' outputs.
    #[test]
    fn compaction_keeps_every_sample_state() {
        for name in ["gfnet_mnv3_small", "gfnet_resnet18"] {
            let (net, io) = fixture(name);
            let mode = Mode::eval();
            let mut state = net.begin(&io["input"], &mode).unwrap();
            net.advance(&mut state, &mode).unwrap();
            net.advance(&mut state, &mode).unwrap();
            let mut kept = state.select(&[2, 0]).unwrap();
            let out = net.advance(&mut kept, &mode).unwrap();
            let want =
                io["logits.2"].index_select(&Tensor::new(&[2u32, 0], &candle_core::Device::Cpu).unwrap(), 0).unwrap();
            crate::testutil::assert_close_scaled(&format!("{name} compacted logits.2"), &out.logits, &want, 4e-4);
            let coords = net.stage_extras(&mut kept)[1].1.to_vec2::<i32>().unwrap();
            let all = io["coords.2"].to_vec2::<i32>().unwrap();
            assert_eq!(coords, vec![all[2].clone(), all[0].clone()], "{name}");
        }
    }

    /// The baselines: centre patches sit at the middle; random ones differ
    /// by seed, repeat for a seed, and follow a sample through compaction.
    #[test]
    fn centre_and_random_patch_policies() {
        let (net, io) = fixture("gfnet_resnet18");
        let mode = Mode::eval();
        let coords = |net: &Gfnet, keep: Option<&[u32]>| {
            let mut state = net.begin(&io["input"], &mode).unwrap();
            net.advance(&mut state, &mode).unwrap();
            if let Some(k) = keep {
                state = state.select(k).unwrap();
            }
            net.advance(&mut state, &mode).unwrap();
            net.stage_extras(&mut state)[1].1.to_vec2::<i32>().unwrap()
        };
        let centre = net.clone().with_patch_policy(PatchPolicy::Centre);
        assert_eq!(coords(&centre, None), vec![vec![16, 16]; 3]); // ⌊0.5·(96 − 64)⌋
        let r1 = net.clone().with_patch_policy("random:1".parse().unwrap());
        let r2 = net.clone().with_patch_policy("random:2".parse().unwrap());
        let all = coords(&r1, None);
        assert_eq!(all, coords(&r1, None));
        assert_ne!(all, coords(&r2, None));
        assert_eq!(coords(&r1, Some(&[2, 0])), vec![all[2].clone(), all[0].clone()]);
        assert!("sideways".parse::<PatchPolicy>().is_err());
        for p in [PatchPolicy::Learned, PatchPolicy::Centre, PatchPolicy::Random { seed: 9 }] {
            assert_eq!(p.to_string().parse::<PatchPolicy>().unwrap(), p);
        }
    }

    #[test]
    fn inputs_of_another_size_are_refused() {
        let cfg = GfnetConfig::from_json(&base()).unwrap();
        let net = Gfnet::new(&cfg, VarBuilder::zeros(DType::F32, &candle_core::Device::Cpu)).unwrap();
        let e = net.exit_costs(64, 64).unwrap_err().to_string();
        assert!(e.contains("96x96"), "{e}");
        let x = Tensor::zeros((1, 1, 80, 96), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(net.begin(&x, &Mode::eval()).is_err());
    }
}
