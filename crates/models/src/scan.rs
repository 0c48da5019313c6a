//! SCAN (Zhang et al., "SCAN: A Scalable Neural Networks Framework Towards
//! Compact and Efficient Models", NeurIPS 2019), as the authors'
//! `sresnet.py` (ArchipLab-LinfengZhang/pytorch-scalable-neural-networks)
//! builds it.
//!
//! - **Backbone**: a CIFAR-style ResNet: 3x3 stride-1 stem `conv1`/`bn1`
//!   (no max-pool), `layer1` … `layer4` of torchvision basic blocks or
//!   bottlenecks with `downsample.{0,1}` shortcuts, widths `width`, 2×, 4×,
//!   8× (times the block's expansion), layers 2–4 starting with stride 2.
//! - **Exits 0–2** read layers 1–3: `attention<k>` masks the map (the
//!   backbone goes on with the unmasked one), `scala<k>` (ScalaNet, stride
//!   8/4/2) brings it to `8·width·expansion` channels at 1x1, `fc<k>`
//!   classifies. **Exit 3** is `AvgPool2d(4)` of layer 4, then `fc4`. Exits
//!   are in depth order (the reference returns them deepest first).
//! - Every channel count the reference writes as 64/128/256/512 scales with
//!   `width / 64`; ScalaNet's hidden 128 is `2·width`.
//! - Inputs are 32x32 (the reference's geometry: the third attention mask
//!   and the AvgPool(4)s need it); Fashion-MNIST is zero-padded to 32.
//!
//! `attention: false` (not in the reference) feeds the shallow classifiers
//! the plain map: the ablation of the attention modules.
//!
//! Costs follow the project's reference rule like every other model (so the
//! models compare on one axis); `Mode::Macs` gives the multiply-accumulates
//! alone, the SCAN paper's rule (12.9 / 23.5 / 33.8 / 42.2 M per exit for
//! `scan-resnet18-fmnist`).

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::stages::{Chain, Stage, Stages, Step};
use anytime_blocks::Mode;
use anytime_blocks::layers::{BatchNorm2d, Conv2d};
use anytime_blocks::residual::{BasicBlock, Bottleneck};
use anytime_flops::{CountFlops, Counter, ExitCosts, Shape4};
use anytime_heads::scan::ScanHead;
use anytime_ops::conv::Conv2dParams;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The residual block of the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanBlock {
    /// Two 3x3 convs (expansion 1): ResNet-18/34.
    Basic,
    /// 1x1, 3x3, 1x1 convs (expansion 4): ResNet-50/101/152.
    Bottleneck,
}

impl ScanBlock {
    /// Output channels per plane.
    pub fn expansion(self) -> usize {
        match self {
            ScanBlock::Basic => 1,
            ScanBlock::Bottleneck => Bottleneck::EXPANSION,
        }
    }
}

/// A SCAN configuration (`--arch scan`).
///
/// JSON: `{"block": "basic" | "bottleneck", "layers": [4 block counts],
/// "num_classes": K, "in_channels": 3, "width": 64, "attention": true}`;
/// `in_channels`, `width` and `attention` may be left out (these defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanConfig {
    /// The residual block.
    pub block: ScanBlock,
    /// Blocks in `layer1` … `layer4`, e.g. `[2, 2, 2, 2]` for ResNet-18.
    pub layers: Vec<usize>,
    /// Classes every exit predicts.
    pub num_classes: usize,
    /// Input channels.
    pub in_channels: usize,
    /// The planes of `layer1` (64 in the reference); later layers have 2×,
    /// 4× and 8×.
    pub width: usize,
    /// Whether the shallow exits read attention-masked maps (the reference)
    /// or the plain ones (an ablation).
    pub attention: bool,
}

/// Upper limits that keep every size and count far from overflow and the
/// model within memory (a width of 2048 is 32 times the reference's); the
/// parameter estimate is checked against `limits::MAX_PARAMS` too.
const MAX_WIDTH: usize = 2048;
const MAX_BLOCKS: usize = crate::limits::MAX_STEP;
const MAX_CLASSES: usize = crate::limits::MAX_CLASSES;
const MAX_IN_CHANNELS: usize = crate::limits::MAX_IN_CHANNELS;
const MEMBERS: [&str; 6] = ["block", "layers", "num_classes", "in_channels", "width", "attention"];

impl ScanConfig {
    /// ResNet-18 layout (`basic`, `[2, 2, 2, 2]`) at the reference's width.
    pub fn resnet18(num_classes: usize) -> Self {
        Self { block: ScanBlock::Basic, layers: vec![2; 4], num_classes, in_channels: 3, width: 64, attention: true }
    }

    /// Channels of layer `k`'s output (k = 0..4).
    pub fn channels(&self, k: usize) -> usize {
        (self.width << k) * self.block.expansion()
    }

    /// Checks every value, naming the member that is wrong.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("scan: {m}")));
        if self.layers.len() != 4 {
            return bad(format!("`layers` must list 4 block counts (layer1 … layer4), got {:?}", self.layers));
        }
        if let Some(n) = self.layers.iter().find(|&&n| n == 0 || n > MAX_BLOCKS) {
            return bad(format!("`layers`: every block count must be 1 to {MAX_BLOCKS}, got {n} in {:?}", self.layers));
        }
        for (name, v, max) in [
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("in_channels", self.in_channels, MAX_IN_CHANNELS),
            ("width", self.width, MAX_WIDTH),
        ] {
            if v == 0 || v > max {
                return bad(format!("`{name}` must be 1 to {max}, got {v}"));
            }
        }
        // Parameters, estimated from the widths: residual blocks (18·p² for
        // two 3x3 convs, 17·p² for a bottleneck), the attention convs
        // (9·c² + 16·c²) and the classifiers.
        let mut estimate: u128 = 0;
        for (k, &n) in self.layers.iter().enumerate() {
            let p = (self.width as u128) << k;
            let c = self.channels(k) as u128;
            estimate += n as u128 * p * p * if self.block == ScanBlock::Basic { 18 } else { 17 };
            if k < 3 {
                estimate += 25 * c * c;
            }
            estimate += 8 * c * self.width as u128 * self.block.expansion() as u128;
        }
        estimate += self.channels(3) as u128 * 4 * self.num_classes as u128;
        crate::limits::params_cap(estimate).map_err(|e| ConfigError::Invalid(format!("scan: {e}")))?;
        Ok(())
    }

    /// Reads the project's JSON form, with an error naming any unknown or
    /// ill-typed member.
    pub fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("scan: {m}"));
        let Some(obj) = v.as_object() else {
            return Err(bad(format!("the configuration must be a JSON object, got {v}")));
        };
        if let Some(k) = obj.keys().find(|k| !MEMBERS.contains(&k.as_str())) {
            return Err(bad(format!("unknown member `{k}` (known: {})", MEMBERS.join(", "))));
        }
        let count = |name: &str, x: &Value| -> std::result::Result<usize, ConfigError> {
            x.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| bad(format!("`{name}` must be a whole number >= 0, got {x}")))
        };
        let get = |name: &str| obj.get(name).ok_or_else(|| bad(format!("missing member `{name}`")));
        let block = match get("block")?.as_str() {
            Some("basic") => ScanBlock::Basic,
            Some("bottleneck") => ScanBlock::Bottleneck,
            _ => return Err(bad(format!("`block` must be \"basic\" or \"bottleneck\", got {}", obj["block"]))),
        };
        let layers = match get("layers")?.as_array() {
            Some(a) => a.iter().map(|x| count("layers", x)).collect::<std::result::Result<Vec<_>, _>>()?,
            None => return Err(bad(format!("`layers` must be an array of 4 block counts, got {}", obj["layers"]))),
        };
        let or = |name: &str, default: usize| obj.get(name).map_or(Ok(default), |x| count(name, x));
        let attention = match obj.get("attention") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(x) => return Err(bad(format!("`attention` must be true or false, got {x}"))),
        };
        let cfg = Self {
            block,
            layers,
            num_classes: count("num_classes", get("num_classes")?)?,
            in_channels: or("in_channels", 3)?,
            width: or("width", 64)?,
            attention,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One step of the backbone.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Item {
    /// `relu(bn1(conv1(x)))`.
    Stem(Conv2d, BatchNorm2d),
    Basic(BasicBlock),
    Bottleneck(Bottleneck),
}

impl Step for Item {
    type State = Chain<Tensor>;
    type Shapes = Chain<Shape4>;

    fn forward(&self, s: &mut Chain<Tensor>, mode: &Mode) -> candle_core::Result<()> {
        s.x = match self {
            Item::Stem(conv, bn) => conv.forward_bn(bn, &s.x, mode, true)?,
            Item::Basic(b) => b.forward_t(&s.x, mode)?,
            Item::Bottleneck(b) => b.forward_t(&s.x, mode)?,
        };
        Ok(())
    }

    fn count(&self, s: &mut Chain<Shape4>, c: &mut Counter) -> anytime_flops::Result<()> {
        s.x = match self {
            Item::Stem(conv, bn) => {
                let y = conv.count_flops(c, s.x)?;
                let y = bn.count_flops(c, y)?;
                c.relu(y);
                y
            }
            Item::Basic(b) => b.count_flops(c, s.x)?,
            Item::Bottleneck(b) => b.count_flops(c, s.x)?,
        };
        Ok(())
    }
}

/// The SCAN network.
#[derive(Debug, Clone)]
pub struct Scan {
    cfg: ScanConfig,
    stages: Stages<Item, ScanHead>,
}

/// The stride of each shallow classifier's k x k conv (`sresnet.py`'s
/// `size`): what brings layers 1–3 (32, 16, 8 pixels) to 4x4.
const SCALA_STRIDES: [usize; 3] = [8, 4, 2];

/// The input size the reference geometry needs.
pub const INPUT_SIZE: usize = 32;

impl Scan {
    /// Builds the network under `vb` (the reference's keys).
    pub fn new(cfg: &ScanConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let stem = Conv2dParams { padding: 1, ..Default::default() };
        let mut steps = vec![Item::Stem(
            Conv2d::new(vb.pp("conv1"), cfg.in_channels, cfg.width, 3, stem, false)?,
            BatchNorm2d::new(vb.pp("bn1"), cfg.width)?,
        )];
        let mut list = Vec::with_capacity(4);
        let mut c = cfg.width;
        let out = cfg.channels(3);
        for (k, &n) in cfg.layers.iter().enumerate() {
            let planes = cfg.width << k;
            let layer = vb.pp(format!("layer{}", k + 1));
            for b in 0..n {
                let stride = if k > 0 && b == 0 { 2 } else { 1 };
                steps.push(match cfg.block {
                    ScanBlock::Basic => Item::Basic(BasicBlock::torchvision(layer.pp(b), c, planes, stride)?),
                    ScanBlock::Bottleneck => Item::Bottleneck(Bottleneck::new(layer.pp(b), c, planes, stride)?),
                });
                c = cfg.channels(k);
            }
            let fc = vb.pp(format!("fc{}", k + 1));
            let head = match SCALA_STRIDES.get(k) {
                Some(&stride) => ScanHead::shallow(
                    cfg.attention.then(|| vb.pp(format!("attention{}", k + 1))),
                    vb.pp(format!("scala{}", k + 1)),
                    fc,
                    c,
                    2 * cfg.width,
                    out,
                    stride,
                    cfg.num_classes,
                )?,
                None => ScanHead::deepest(fc, out, cfg.num_classes)?,
            };
            list.push(Stage { steps: std::mem::take(&mut steps), head });
        }
        Ok(Self { cfg: cfg.clone(), stages: Stages::new("scan", list) })
    }

    /// The configuration.
    pub fn config(&self) -> &ScanConfig {
        &self.cfg
    }
}

impl MultiExit for Scan {
    fn arch(&self) -> &'static str {
        "scan"
    }

    fn num_exits(&self) -> usize {
        self.stages.len()
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    fn exit_costs(&self, h: usize, w: usize) -> Result<ExitCosts> {
        if (h, w) != (INPUT_SIZE, INPUT_SIZE) {
            return Err(ModelError::Input(format!(
                "scan takes {INPUT_SIZE}x{INPUT_SIZE} inputs (the reference geometry), got {h}x{w}; pad smaller images such as Fashion-MNIST's 28x28 to 32"
            )));
        }
        self.stages
            .costs(Shape4::new(1, self.cfg.in_channels, h, w))
            .map_err(|e| ModelError::Input(format!("scan at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.stages.begin(xs)
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        self.stages.advance(state, mode)
    }
}

impl crate::registry::Architecture for ScanConfig {
    const NAME: &'static str = "scan";
    const HELP: &'static str = "SCAN: ResNet with attention and ScalaNet shallow classifiers, 32x32 inputs; own JSON";

    fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        ScanConfig::from_json(v)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        ScanConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(Scan::new(self, vb)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use serde_json::json;

    fn err(v: Value) -> String {
        ScanConfig::from_json(&v).unwrap_err().to_string()
    }

    #[test]
    fn bad_configurations_name_the_member() {
        let ok = json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10});
        let cfg = ScanConfig::from_json(&ok).expect("valid");
        assert_eq!(cfg, ScanConfig { num_classes: 10, ..ScanConfig::resnet18(10) });
        assert!(err(json!({"block": "wide", "layers": [2, 2, 2, 2], "num_classes": 10})).contains("`block`"));
        assert!(err(json!({"block": "basic", "layers": [2, 2, 2], "num_classes": 10})).contains("`layers`"));
        assert!(
            err(json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "width": 0})).contains("`width`")
        );
        assert!(
            err(json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "depth": 18})).contains("`depth`")
        );
        assert!(err(json!({"block": "basic", "layers": [2, 2, 2, 2]})).contains("`num_classes`"));
        assert!(err(json!({"block": "basic", "layers": [2, -1, 2, 2], "num_classes": 3})).contains("`layers`"));
        assert!(
            err(json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 3, "width": 1e12})).contains("`width`")
        );
        assert!(
            err(json!({"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 3, "attention": "yes"}))
                .contains("`attention`")
        );
        assert!(err(json!([1, 2])).contains("object"));
    }

    /// The figures: ResNet-18 at width 16, 1 channel, 32x32.
    #[test]
    fn resnet18_width16_costs() -> Result<()> {
        let cfg = ScanConfig { in_channels: 1, width: 16, ..ScanConfig::resnet18(10) };
        let m = Scan::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        let macs = m.exit_costs(32, 32)?.mflops(anytime_flops::Mode::Macs);
        let want = [12.9, 23.5, 33.8, 42.2];
        assert!(macs.iter().zip(want).all(|(m, w)| (m - w).abs() < 0.05), "{macs:?}");
        let e = m.exit_costs(28, 28).unwrap_err().to_string();
        assert!(e.contains("32x32") && e.contains("28x28"), "{e}");
        let xs = Tensor::zeros((1, 1, 28, 28), DType::F32, &Device::Cpu)?;
        let e = m.forward_exits(&xs, &Mode::eval()).unwrap_err().to_string();
        assert!(e.contains("32"), "{e}");
        Ok(())
    }

    #[test]
    fn exits_and_ablation_shapes() -> Result<()> {
        for attention in [true, false] {
            for block in [ScanBlock::Basic, ScanBlock::Bottleneck] {
                let cfg =
                    ScanConfig { block, layers: vec![1, 1, 1, 1], num_classes: 5, in_channels: 2, width: 4, attention };
                let m = Scan::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
                let xs = Tensor::randn(0f32, 1., (3, 2, 32, 32), &Device::Cpu)?;
                let out = m.forward_exits(&xs, &Mode::train())?;
                assert_eq!(out.len(), 4);
                for o in &out {
                    assert_eq!(o.logits.dims(), &[3, 5]);
                    assert_eq!(o.feature.dims(), &[3, 32 * block.expansion()]);
                }
                let costs = m.exit_costs(32, 32)?;
                assert!(costs.exits.windows(2).all(|w| w[0].macs < w[1].macs));
            }
        }
        Ok(())
    }

    /// Per-exit logits and features equal the reference's, from both weight
    /// forms (safetensors; `torch.save(state_dict)` bare and with `module.`).
    #[test]
    fn logits_and_features_match_the_reference() {
        use crate::testutil;
        for name in ["scan_basic_w8", "scan_bottleneck_w4"] {
            let cfg = crate::registry::ArchConfig::from_json("scan", &testutil::json(name, "config.json")).unwrap();
            let path = testutil::fixture(name).join("io.safetensors");
            let io = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            for file in ["state_dict.safetensors", "checkpoint.pth"] {
                let model = crate::registry::load_model(&cfg, &testutil::fixture(name).join(file)).unwrap();
                // Layer by layer, then the inference path (folded batch norms).
                for mode in [Mode::eval(), Mode::inference()] {
                    let got = model.forward_exits(&io["input"], &mode).unwrap();
                    assert_eq!(got.len(), 4);
                    for (k, g) in got.iter().enumerate() {
                        let fold = mode.folds_batch_norm();
                        testutil::assert_close(
                            &format!("{name} {file} logits {k} (fold {fold})"),
                            &g.logits,
                            &io[&format!("logits.{k}")],
                        );
                        testutil::assert_close(
                            &format!("{name} {file} features {k} (fold {fold})"),
                            &g.feature,
                            &io[&format!("features.{k}")],
                        );
                    }
                    // The reference's hint sum, from the features.
                    let last = &got[3].feature;
                    let mut hint = 0f32;
                    for g in &got[..3] {
                        hint +=
                            (last - &g.feature).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                    }
                    let want = io["feature_loss"].to_vec1::<f32>().unwrap()[0];
                    assert!((hint - want).abs() <= 1e-4 * want.abs() + 1e-4, "{name}: hint {hint} vs {want}");
                }
            }
        }
    }
}
