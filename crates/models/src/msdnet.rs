//! MSDNet: Multi-Scale Dense Networks for Resource Efficient Image
//! Classification (Huang, Chen, Li, Wu, van der Maaten, Weinberger, ICLR 2018).
//!
//! reference: kalviny/MSDNet-PyTorch `models/msdnet.py`@f654595; keys mirror its
//! `state_dict` (`blocks.<b>.<i>…`, `classifier.<e>…`), so official checkpoints
//! load as they are.
//!
//! The network is a grid of depth × scales. Block b holds `steps[b]` multi-scale
//! dense layers (block 0 starts with the first layer that builds every scale);
//! scales no later classifier needs are dropped as depth grows (`prune`), with
//! a transition where the scale count drops (`prune max`) or at one and two
//! thirds of the depth (`prune min`). Classifier b reads the coarsest scale
//! after block b. Evaluation is lazy: stage b runs block b and classifier b.

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::refargs::{self, COMMON, Namespace, OptSpec, choice, opt};
use crate::stages::{Carry, Compact, Stage, Stages, Step};
use anytime_blocks::Mode;
use anytime_blocks::multiscale::{MsdLayer, ScaleFactors, Transition};
use anytime_blocks::stem::{FirstLayer, StemKind};
use anytime_flops::{Counter, ExitCosts, Shape4};
use anytime_heads::ConvHead;
use candle_core::{Tensor, bail};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How the number of layers per block grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepMode {
    /// `base`, then `step` layers in every later block.
    Even,
    /// `base`, then `step · b + 1` layers in block b.
    LinGrow,
}

/// How scales are dropped along the depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prune {
    /// Keep only the scales the remaining layers can still reach the coarsest
    /// scale from; transitions at 1/3 and 2/3 of the depth.
    Min,
    /// Drop one scale every `ceil(layers / scales)` layers, with a transition
    /// at each drop.
    Max,
}

/// An MSDNet configuration. Field names follow the reference arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsdNetConfig {
    /// The stem: `cifar` (3x3 conv) or `imagenet` (7x7/2 conv with bias + max-pool).
    pub stem: StemKind,
    /// Classes every exit predicts (the reference derives it from `--data`).
    pub num_classes: usize,
    /// Input channels (3 in the reference; 1 for grey-scale data).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Number of blocks, hence of exits (`--nBlocks`).
    pub n_blocks: usize,
    /// Base width of the first layer (`--nChannels`).
    pub n_channels: usize,
    /// Layers in the first block (`--base`).
    pub base: usize,
    /// Layer-count step (`--step`).
    pub step: usize,
    /// `even` or `lin_grow` (`--stepmode`).
    pub stepmode: StepMode,
    /// New channels per layer at the finest scale (`--growthRate`).
    pub growth_rate: usize,
    /// Width multiplier per scale, finest first; its length is the number of
    /// scales (`--grFactor 1-2-4`).
    pub gr_factor: Vec<usize>,
    /// Bottleneck width multiplier per scale (`--bnFactor 1-2-4`).
    pub bn_factor: Vec<usize>,
    /// `min` or `max` (`--prune`).
    pub prune: Prune,
    /// 1x1 bottlenecks in the conv units (`--bottleneck`).
    pub bottleneck: bool,
    /// Transition compression: 0 means no transitions; any positive value
    /// (1 included, as in the reference) inserts them (`--reduction`).
    pub reduction: f64,
}

fn three() -> usize {
    3
}

/// The reference parser's MSDNet options (besides [`COMMON`]).
const MSDNET_OPTS: &[OptSpec] = &[
    choice(&["--arch", "-a"], "arch", &["msdnet"]),
    opt(&["--nBlocks"], "nBlocks"),
    opt(&["--nChannels"], "nChannels"),
    opt(&["--base"], "base"),
    choice(&["--stepmode"], "stepmode", &["even", "lin_grow"]),
    opt(&["--step"], "step"),
    opt(&["--growthRate"], "growthRate"),
    opt(&["--grFactor"], "grFactor"),
    choice(&["--prune"], "prune", &["min", "max"]),
    opt(&["--bnFactor"], "bnFactor"),
    opt(&["--bottleneck"], "bottleneck"),
];

/// One entry of a block, in `nn.Sequential` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanItem {
    /// The first layer (block 0, index 0).
    First,
    /// A multi-scale layer from `n_in` base channels and `in_scales` to `out_scales`.
    Layer {
        /// Base input width.
        n_in: usize,
        /// Scales in.
        in_scales: usize,
        /// Scales out.
        out_scales: usize,
    },
    /// A transition on the `scales` coarsest scales, `n_in` → `n_out` base channels.
    Transition {
        /// Base input width.
        n_in: usize,
        /// Base output width.
        n_out: usize,
        /// Scales it applies to.
        scales: usize,
    },
}

impl MsdNetConfig {
    /// The README's CIFAR-100 anytime-prediction model (7 blocks, `even`, step 2, base 4).
    pub fn cifar100_anytime() -> Self {
        Self {
            stem: StemKind::Cifar,
            num_classes: 100,
            in_channels: 3,
            n_blocks: 7,
            n_channels: 16,
            base: 4,
            step: 2,
            stepmode: StepMode::Even,
            growth_rate: 6,
            gr_factor: vec![1, 2, 4],
            bn_factor: vec![1, 2, 4],
            prune: Prune::Max,
            bottleneck: true,
            reduction: 0.5,
        }
    }

    /// The README's CIFAR-100 budgeted-batch model (5 blocks, `lin_grow`, step 1, base 1).
    pub fn cifar100_budgeted() -> Self {
        Self { n_blocks: 5, base: 1, step: 1, stepmode: StepMode::LinGrow, ..Self::cifar100_anytime() }
    }

    /// The README's ImageNet model (5 blocks, step 4, 4 scales).
    pub fn imagenet_step4() -> Self {
        Self {
            stem: StemKind::ImageNet,
            num_classes: 1000,
            in_channels: 3,
            n_blocks: 5,
            n_channels: 32,
            base: 4,
            step: 4,
            stepmode: StepMode::Even,
            growth_rate: 16,
            gr_factor: vec![1, 2, 4, 4],
            bn_factor: vec![1, 2, 4, 4],
            prune: Prune::Max,
            bottleneck: true,
            reduction: 0.5,
        }
    }

    /// Reads a configuration: the project's own JSON form (this struct), or a
    /// reference-style object with `args` (the argparse namespace) or
    /// `cli_args` (the training command line).
    pub fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        let cfg = match refargs::reference_namespace(v, &[COMMON, MSDNET_OPTS])? {
            Some(ns) => Self::from_namespace(&ns)?,
            None => serde_json::from_value(v.clone())?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Builds a configuration from a reference namespace with the reference
    /// `args.py` defaults.
    pub fn from_namespace(ns: &Namespace) -> std::result::Result<Self, ConfigError> {
        let data = ns.str_or("data", "cifar10")?;
        let (stem, num_classes) = match data.as_str() {
            "cifar10" => (StemKind::Cifar, 10),
            "cifar100" => (StemKind::Cifar, 100),
            "ImageNet" => (StemKind::ImageNet, 1000),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "data '{other}' is not one of 'cifar10', 'cifar100', 'ImageNet'"
                )));
            }
        };
        // The reference treats any stepmode other than 'even' (its default is
        // None) as lin_grow.
        let stepmode = match ns.str_opt("stepmode")?.as_deref() {
            Some("even") => StepMode::Even,
            Some("lin_grow") | None => StepMode::LinGrow,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("stepmode '{other}' is not one of 'even', 'lin_grow'")));
            }
        };
        let prune = match ns.str_or("prune", "max")?.as_str() {
            "min" => Prune::Min,
            "max" => Prune::Max,
            other => return Err(ConfigError::Invalid(format!("prune '{other}' is not one of 'min', 'max'"))),
        };
        Ok(Self {
            stem,
            num_classes: ns.usize_or("num_classes", num_classes)?,
            in_channels: 3,
            n_blocks: ns.usize_or("nBlocks", 1)?,
            n_channels: ns.usize_or("nChannels", 32)?,
            base: ns.usize_or("base", 4)?,
            step: ns.usize_or("step", 1)?,
            stepmode,
            growth_rate: ns.usize_or("growthRate", 6)?,
            gr_factor: ns.list_or("grFactor", "1-2-4")?,
            bn_factor: ns.list_or("bnFactor", "1-2-4")?,
            prune,
            bottleneck: ns.bool_or("bottleneck", true)?,
            reduction: ns.float_or("reduction", 0.5)?,
        })
    }

    /// Number of scales (`len(grFactor)`).
    pub fn n_scales(&self) -> usize {
        self.gr_factor.len()
    }

    /// Layers per block.
    pub fn steps(&self) -> Vec<usize> {
        (0..self.n_blocks)
            .map(|b| match (b, self.stepmode) {
                (0, _) => self.base,
                (_, StepMode::Even) => self.step,
                (_, StepMode::LinGrow) => self.step * b + 1,
            })
            .collect()
    }

    /// Checks every value; the error names the offending one.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.n_blocks == 0 {
            return bad("nBlocks must be at least 1".into());
        }
        {
            use crate::limits::*;
            cap("nBlocks", self.n_blocks, MAX_BLOCKS)?;
            cap("base", self.base, MAX_STEP)?;
            cap("step", self.step, MAX_STEP)?;
            cap("nChannels", self.n_channels, MAX_CHANNELS)?;
            cap("growthRate", self.growth_rate, MAX_CHANNELS)?;
            cap("number of scales (grFactor)", self.gr_factor.len(), MAX_SCALES)?;
            cap_all("grFactor", &self.gr_factor, MAX_FACTOR)?;
            cap_all("bnFactor", &self.bn_factor, MAX_FACTOR)?;
            cap("num_classes", self.num_classes, MAX_CLASSES)?;
            cap("in_channels", self.in_channels, MAX_IN_CHANNELS)?;
            let layers: usize = self.steps().iter().sum();
            cap("the number of layers", layers, MAX_LAYERS)?;
            let factor = self.gr_factor.iter().chain(&self.bn_factor).copied().max().unwrap_or(1);
            let widest = (self.n_channels + layers * self.growth_rate) * factor;
            dense_params_bound(layers, widest, self.growth_rate * factor, self.n_blocks * self.gr_factor.len())?;
        }
        if self.gr_factor.is_empty() {
            return bad("grFactor must list at least one scale".into());
        }
        if self.bn_factor.len() != self.gr_factor.len() {
            return bad(format!(
                "bnFactor has {} entries but grFactor has {} (one per scale)",
                self.bn_factor.len(),
                self.gr_factor.len()
            ));
        }
        if self.gr_factor.contains(&0) || self.bn_factor.contains(&0) {
            return bad("grFactor and bnFactor entries must be at least 1".into());
        }
        for (name, v) in [
            ("nChannels", self.n_channels),
            ("growthRate", self.growth_rate),
            ("num_classes", self.num_classes),
            ("in_channels", self.in_channels),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !(self.reduction.is_finite() && (0.0..=1.0).contains(&self.reduction)) {
            return bad(format!("reduction must be in [0, 1], got {}", self.reduction));
        }
        if self.steps().iter().sum::<usize>() == 0 {
            return bad("the network has no layers (base and step are both 0)".into());
        }
        for (s, g) in self.gr_factor.iter().enumerate().skip(1) {
            if !(self.growth_rate * g).is_multiple_of(2) {
                return bad(format!(
                    "growthRate {} x grFactor[{s}] {g} is odd: scale {s} splits its new channels between two convs",
                    self.growth_rate
                ));
            }
        }
        let plan = self.plan();
        for items in &plan {
            for item in items {
                if let PlanItem::Transition { n_out: 0, .. } = item {
                    return bad(format!("reduction {} compresses a transition to 0 channels", self.reduction));
                }
            }
        }
        Ok(())
    }

    /// The layer plan of every block, as the reference `_build_block` lays it
    /// out, and the base width after each block.
    pub fn plan(&self) -> Vec<Vec<PlanItem>> {
        let steps = self.steps();
        let n_all: usize = steps.iter().sum();
        let n_scales = self.n_scales();
        let mut n_in = self.n_channels;
        let mut cur = 0;
        let mut plan = Vec::with_capacity(self.n_blocks);
        for (b, &step) in steps.iter().enumerate() {
            let mut items = Vec::new();
            if b == 0 {
                items.push(PlanItem::First);
            }
            for _ in 0..step {
                cur += 1;
                let (in_scales, out_scales) = match self.prune {
                    Prune::Min => (n_scales.min(n_all + 2 - cur), n_scales.min(n_all + 1 - cur)),
                    Prune::Max => {
                        let interval = n_all.div_ceil(n_scales);
                        (n_scales - cur.saturating_sub(2) / interval, n_scales - (cur - 1) / interval)
                    }
                };
                items.push(PlanItem::Layer { n_in, in_scales, out_scales });
                n_in += self.growth_rate;
                let transition = self.reduction > 0.0
                    && match self.prune {
                        Prune::Max => in_scales > out_scales,
                        Prune::Min => cur == n_all / 3 || cur == 2 * n_all / 3,
                    };
                if transition {
                    let n_out = (self.reduction * n_in as f64).floor() as usize;
                    items.push(PlanItem::Transition { n_in, n_out, scales: out_scales });
                    n_in = n_out;
                }
            }
            plan.push(items);
        }
        plan
    }

    /// Base width after every block (the classifier reads
    /// `width · grFactor[-1]` channels).
    fn block_widths(&self) -> Vec<usize> {
        let mut n = self.n_channels;
        self.plan()
            .iter()
            .map(|items| {
                for item in items {
                    match *item {
                        PlanItem::Layer { n_in, .. } => n = n_in + self.growth_rate,
                        PlanItem::Transition { n_out, .. } => n = n_out,
                        PlanItem::First => {}
                    }
                }
                n
            })
            .collect()
    }
}

/// One step of an MSDNet stage, in `nn.Sequential` order within its block.
#[derive(Debug, Clone)]
enum Item {
    First(FirstLayer),
    Layer(MsdLayer),
    Transition(Transition),
}

/// What an MSDNet pass carries between steps: the maps of the scales still in
/// use, finest first (the input alone before the first layer).
#[derive(Debug, Clone)]
struct Scales<V> {
    maps: Vec<V>,
}

impl<V> Carry<V> for Scales<V> {
    fn start(input: V) -> Self {
        Self { maps: vec![input] }
    }

    /// Classifier b reads the coarsest scale.
    fn head_input(&self) -> Option<&V> {
        self.maps.last()
    }
}

impl Compact for Scales<Tensor> {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        Ok(Self { maps: self.maps.select(keep)? })
    }
}

impl Step for Item {
    type State = Scales<Tensor>;
    type Shapes = Scales<Shape4>;

    fn forward(&self, s: &mut Scales<Tensor>, mode: &Mode) -> candle_core::Result<()> {
        s.maps = match self {
            Item::First(f) => match s.maps.as_slice() {
                [x] => f.forward_t(x, mode)?,
                _ => bail!("msdnet: the first layer takes one input"),
            },
            Item::Layer(l) => l.forward_t(&s.maps, mode)?,
            Item::Transition(t) => t.forward_t(&s.maps, mode)?,
        };
        Ok(())
    }

    fn count(&self, s: &mut Scales<Shape4>, c: &mut Counter) -> anytime_flops::Result<()> {
        s.maps = match self {
            Item::First(f) => match s.maps.as_slice() {
                [x] => f.count_flops(c, *x)?,
                _ => return Err(anytime_flops::Error::Shape("msdnet: the first layer takes one input".into())),
            },
            Item::Layer(l) => l.count_flops(c, &s.maps)?,
            Item::Transition(t) => t.count_flops(c, &s.maps)?,
        };
        Ok(())
    }
}

/// An MSDNet. Build it with [`MsdNet::new`] from a [`MsdNetConfig`] and a
/// `VarBuilder` (weights from a file, a `VarMap` for training, or zeros).
#[derive(Debug, Clone)]
pub struct MsdNet {
    cfg: MsdNetConfig,
    /// Stage b: block b's layers, then classifier b.
    stages: Stages<Item>,
}

impl MsdNet {
    /// Builds the network; parameters are read under the reference keys.
    pub fn new(cfg: &MsdNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let n_scales = cfg.n_scales();
        let f = ScaleFactors {
            growth: cfg.gr_factor.clone(),
            bottleneck: cfg.bn_factor.clone(),
            use_bottleneck: cfg.bottleneck,
        };
        let mut blocks: Vec<Vec<Item>> = Vec::with_capacity(cfg.n_blocks);
        for (b, items) in cfg.plan().into_iter().enumerate() {
            let vb = vb.pp("blocks").pp(b);
            let built = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let vb = vb.pp(i);
                    Ok(match *item {
                        PlanItem::First => {
                            let channels: Vec<usize> = cfg.gr_factor.iter().map(|g| cfg.n_channels * g).collect();
                            let mut strides = vec![2; n_scales];
                            strides[0] = 1;
                            Item::First(FirstLayer::new(vb, cfg.in_channels, cfg.stem, &channels, &strides)?)
                        }
                        PlanItem::Layer { n_in, in_scales, out_scales } => {
                            Item::Layer(MsdLayer::new(vb, n_in, cfg.growth_rate, in_scales, out_scales, &f)?)
                        }
                        PlanItem::Transition { n_in, n_out, scales } => Item::Transition(Transition::new(
                            vb,
                            n_in,
                            n_out,
                            scales,
                            n_scales - scales,
                            &cfg.gr_factor,
                        )?),
                    })
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            blocks.push(built);
        }
        let last = cfg.gr_factor[n_scales - 1];
        let classifier: Vec<ConvHead> = cfg
            .block_widths()
            .iter()
            .enumerate()
            .map(|(b, w)| {
                let c = w * last;
                let inner = match cfg.stem {
                    StemKind::Cifar => 128,
                    StemKind::ImageNet => c,
                };
                ConvHead::new(vb.pp("classifier").pp(b), c, inner, cfg.num_classes)
            })
            .collect::<candle_core::Result<_>>()?;
        let list = blocks.into_iter().zip(classifier).map(|(steps, head)| Stage { steps, head }).collect();
        Ok(Self { cfg: cfg.clone(), stages: Stages::new("msdnet", list) })
    }

    /// The configuration.
    pub fn config(&self) -> &MsdNetConfig {
        &self.cfg
    }
}

impl MultiExit for MsdNet {
    fn arch(&self) -> &'static str {
        "msdnet"
    }

    fn num_exits(&self) -> usize {
        self.cfg.n_blocks
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    fn exit_costs(&self, h: usize, w: usize) -> Result<ExitCosts> {
        self.stages
            .costs(Shape4::new(1, self.cfg.in_channels, h, w))
            .map_err(|e| ModelError::Input(format!("msdnet at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.stages.begin(xs)
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        self.stages.advance(state, mode)
    }
}

impl crate::registry::Architecture for MsdNetConfig {
    const NAME: &'static str = "msdnet";
    const HELP: &'static str = "MSDNet; own JSON, or reference `args` / `cli_args`";

    fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        MsdNetConfig::from_json(v)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        MsdNetConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(MsdNet::new(self, vb)?))
    }

    fn default_size(&self) -> (usize, usize) {
        match self.stem {
            StemKind::ImageNet => (224, 224),
            StemKind::Cifar => (32, 32),
        }
    }

    fn dataset(&self) -> Option<&'static str> {
        Some(match (self.stem, self.num_classes) {
            (StemKind::ImageNet, _) => "imagenet",
            (StemKind::Cifar, 100) => "cifar100",
            (StemKind::Cifar, _) => "cifar10",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::valid_size_range;
    use crate::testutil;
    use anytime_flops::Mode;
    use candle_core::{DType, Device};

    const FIXTURE: &str = "msdnet_cifar100_lingrow";

    fn zeros(cfg: &MsdNetConfig) -> MsdNet {
        MsdNet::new(cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).expect("build")
    }

    fn mflops(cfg: &MsdNetConfig, size: usize) -> Vec<f64> {
        zeros(cfg).exit_costs(size, size).expect("costs").mflops(Mode::Reference)
    }

    #[test]
    fn reads_the_fixture_config_both_ways() {
        let v = testutil::json(FIXTURE, "config.json");
        let from_args = MsdNetConfig::from_json(&serde_json::json!({ "args": v["args"] })).unwrap();
        let from_cli = MsdNetConfig::from_json(&serde_json::json!({ "cli_args": v["cli_args"] })).unwrap();
        assert_eq!(from_args, from_cli);
        assert_eq!(from_args.steps(), vec![1, 2, 3, 4]);
        assert_eq!((from_args.n_channels, from_args.growth_rate, from_args.num_classes), (8, 4, 100));
        // The own JSON form round-trips.
        let own = serde_json::to_value(&from_args).unwrap();
        assert_eq!(MsdNetConfig::from_json(&own).unwrap(), from_args);
    }

    #[test]
    fn flops_and_params_equal_the_reference_counter() {
        let v = testutil::json(FIXTURE, "flops.json");
        let cfg = MsdNetConfig::from_json(&testutil::json(FIXTURE, "config.json")).unwrap();
        let model = zeros(&cfg);
        let sizes = v["by_input_size"].as_object().unwrap();
        assert!(!sizes.is_empty());
        for (size, entry) in sizes {
            let (h, w) = size.split_once('x').unwrap();
            let costs = model.exit_costs(h.parse().unwrap(), w.parse().unwrap()).unwrap();
            let (flops, params) = testutil::flops_entry(entry);
            assert_eq!(costs.flops(Mode::Reference), flops, "flops at {size}");
            assert_eq!(costs.params(), params, "params at {size}");
        }
        assert_eq!(model.exit_costs(32, 32).unwrap().total.params, v["total_parameters"].as_u64().unwrap());
    }

    #[test]
    fn published_readme_flops() {
        // README CIFAR-100 anytime model: 15.14 ... 75.94 MFLOPs.
        let m = mflops(&MsdNetConfig::cifar100_anytime(), 32);
        assert_eq!(m.len(), 7);
        assert!((m[0] - 15.14).abs() < 0.005 && (m[6] - 75.94).abs() < 0.005, "{m:?}");
        // README ImageNet model at 224x224.
        let m = mflops(&MsdNetConfig::imagenet_step4(), 224);
        let paper = [339.9, 685.5, 1008.2, 1254.5, 1360.5];
        for (a, b) in m.iter().zip(paper) {
            assert!((a - b).abs() < 0.05, "{m:?} vs {paper:?}");
        }
    }

    #[test]
    fn valid_input_ranges_come_from_the_config() {
        let cifar = zeros(&MsdNetConfig::cifar100_budgeted());
        assert_eq!(valid_size_range(&cifar), Some((17, 48)));
        let imagenet = zeros(&MsdNetConfig::imagenet_step4());
        assert_eq!(valid_size_range(&imagenet), Some((129, 384)));
        let err = crate::exit::check_input(&cifar, &[1, 3, 16, 16]).unwrap_err().to_string();
        assert!(err.contains("17 to 48"), "{err}");
        let err = crate::exit::check_input(&cifar, &[1, 1, 32, 32]).unwrap_err().to_string();
        assert!(err.contains("3-channel"), "{err}");
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let base = serde_json::to_value(MsdNetConfig::cifar100_anytime()).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            MsdNetConfig::from_json(&c).unwrap_err().to_string()
        };
        assert!(with("stepmode", "foo".into()).contains("unknown variant `foo`"));
        assert!(with("prune", "x".into()).contains("unknown variant `x`"));
        assert!(with("n_blocks", 0.into()).contains("nBlocks must be at least 1"));
        assert!(with("gr_factor", serde_json::json!([1, 2])).contains("bnFactor has 3 entries but grFactor has 2"));
        let odd = MsdNetConfig { growth_rate: 3, gr_factor: vec![1, 3, 4], ..MsdNetConfig::cifar100_anytime() };
        assert!(odd.validate().unwrap_err().to_string().contains("growthRate 3 x grFactor[1] 3 is odd"));
        let cli = |s: &str| MsdNetConfig::from_json(&serde_json::json!({ "cli_args": s })).unwrap_err().to_string();
        assert!(cli("--stepmode foo").contains("invalid choice: 'foo'"));
        assert!(cli("--prune x").contains("invalid choice: 'x'"));
        assert!(cli("--nBlocks 0").contains("nBlocks must be at least 1"));
        assert!(cli("--grFactor 1-2 --bnFactor 1-2-4").contains("bnFactor has 3"));
    }

    #[test]
    fn reference_quirks() {
        // `--bottleneck False` is True for argparse's type=bool; only '' is False.
        let cfg = |s: &str| MsdNetConfig::from_json(&serde_json::json!({ "cli_args": s })).unwrap();
        assert!(cfg("--nBlocks 2 --bottleneck False").bottleneck);
        assert!(!cfg("--nBlocks 2 --bottleneck ''").bottleneck);
        // Without --stepmode the reference grows linearly.
        assert_eq!(cfg("--nBlocks 3 --step 2 --base 1").steps(), vec![1, 3, 5]);
        // reduction 1 still inserts transitions; 0 inserts none.
        let count = |r: f64| {
            let c = MsdNetConfig { reduction: r, ..MsdNetConfig::cifar100_anytime() };
            c.plan().iter().flatten().filter(|i| matches!(i, PlanItem::Transition { .. })).count()
        };
        assert_eq!(count(1.0), 2);
        assert_eq!(count(0.0), 0);
    }

    #[test]
    fn lazy_stages_equal_the_full_forward() -> candle_core::Result<()> {
        let cfg = MsdNetConfig::from_json(&testutil::json(FIXTURE, "config.json")).unwrap();
        let model = zeros(&cfg);
        let xs = Tensor::randn(0f32, 1., (3, 3, 20, 28), &Device::Cpu)?;
        let full = model.forward_exits(&xs, &anytime_blocks::Mode::eval())?;
        let lazy: Vec<ExitOutput> = crate::exit::Anytime::new(&model, &xs)?.collect::<candle_core::Result<_>>()?;
        assert_eq!(full.len(), lazy.len());
        for (a, b) in full.iter().zip(&lazy) {
            assert_eq!(a.logits.to_vec2::<f32>()?, b.logits.to_vec2::<f32>()?);
            assert_eq!(a.feature.to_vec2::<f32>()?, b.feature.to_vec2::<f32>()?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod golden {
    use crate::registry::{ArchConfig, load_model};
    use crate::testutil;

    /// The reference logits, from the bare `state_dict` (safetensors) and from
    /// the official training checkpoint (`module.`-prefixed `.pth.tar`), both
    /// loaded with strict key checking.
    #[test]
    fn logits_match_the_reference_from_both_weight_files() {
        let name = "msdnet_cifar100_lingrow";
        let cfg = ArchConfig::from_json("msdnet", &testutil::json(name, "config.json")).unwrap();
        let (input, expected) = testutil::io(name, "io.safetensors");
        for file in ["state_dict.safetensors", "checkpoint.pth.tar"] {
            let model = load_model(&cfg, &testutil::fixture(name).join(file)).unwrap();
            let got = model.forward_exits(&input, &anytime_blocks::Mode::eval()).unwrap();
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                testutil::assert_close(&format!("{file} exit {i}"), &g.logits, e);
            }
        }
    }

    #[test]
    fn wrong_weights_are_reported_key_by_key() {
        let name = "msdnet_cifar100_lingrow";
        let mut v = testutil::json(name, "config.json");
        v["args"]["growthRate"] = 6.into();
        let cfg = ArchConfig::from_json("msdnet", &v).unwrap();
        let Err(err) = load_model(&cfg, &testutil::fixture(name).join("state_dict.safetensors")) else {
            panic!("weights of another configuration were accepted")
        };
        let err = err.to_string();
        assert!(err.contains("shape"), "{err}");
    }
}
