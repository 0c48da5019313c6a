//! RANet: Resolution Adaptive Networks for Efficient Inference (Yang, Han,
//! Chen, Song, Dai, Huang, CVPR 2020).
//!
//! reference: yangle15/RANet-pytorch `models/RANet.py`@be0f25a; keys mirror its
//! `state_dict` (`FirstLayer.layers.<i>…`, `scale_flows.<f>.<b>…`,
//! `classifier.<e>…`), so official checkpoints load as they are.
//!
//! The first layer builds base features at every resolution of `scale_list`
//! (a repeated scale gets a stride-1 conv). Sub-network (flow) 0 runs dense
//! blocks on the *lowest* resolution; flow f > 0 runs on a higher resolution
//! and, for its first `n_blocks[f]` blocks, fuses the features of flow f − 1's
//! block at the same position (`UpBlock`: up-sampled `conv_up` features,
//! strided `conv_normal` in the down-sampling blocks, `conv_last`); its later
//! blocks are plain dense blocks followed by a classifier. Exits come in
//! forward order: the coarsest flow's first. Evaluation is lazy: stage k runs
//! exactly the blocks exit k needs beyond what is computed.

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::refargs::{self, COMMON, Namespace, OptSpec, choice, flag, opt};
use crate::stages::{Carry, Compact, Stage, Stages, Step};
use anytime_blocks::Mode;
use anytime_blocks::dense::DenseBlock;
use anytime_blocks::fusion::{UpBlock, UpBlockSpec};
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
pub enum RaStepMode {
    /// `step` layers in every block.
    Even,
    /// Linear growth across all blocks in construction order: the block at
    /// position b (in any flow) has `step · (b + 1)` layers.
    Lg,
}

/// A RANet configuration. Field names follow the reference arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaNetConfig {
    /// `cifar` or `imagenet` stem.
    pub stem: StemKind,
    /// Classes every exit predicts.
    pub num_classes: usize,
    /// Input channels (3 in the reference).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Blocks of flow 0 (`--nBlocks`); flow f has `n_blocks + f · block_step`.
    pub n_blocks: usize,
    /// Extra blocks per flow (`--block-step`).
    pub block_step: usize,
    /// Layers per block, or the growth step (`--step`). With 1, a fusion
    /// block's single layer is also its last one and so down-samples when the
    /// block does (the reference crashes on 1).
    pub step: usize,
    /// `even` or `lg` (`--stepmode`).
    pub stepmode: RaStepMode,
    /// Scale of each flow, lowest resolution first (`--scale-list 1-2-3`):
    /// equal neighbours share a resolution.
    pub scale_list: Vec<usize>,
    /// Width multiplier per flow (`--grFactor 4-2-1`).
    pub gr_factor: Vec<usize>,
    /// Bottleneck factor per flow (`--bnFactor 4-2-1`).
    pub bn_factor: Vec<usize>,
    /// Share of fused channels from the coarser flow (`--compress-factor`).
    pub compress_factor: f64,
    /// Transition compression (`--reduction`).
    pub reduction: f64,
    /// Base growth rate (`--growthRate`).
    pub growth_rate: usize,
    /// Base width (`--nChannels`).
    pub n_channels: usize,
}

fn three() -> usize {
    3
}

/// The reference parser's RANet options (besides [`COMMON`]).
const RANET_OPTS: &[OptSpec] = &[
    opt(&["--arch"], "arch"),
    opt(&["--nBlocks"], "nBlocks"),
    opt(&["--nChannels"], "nChannels"),
    opt(&["--growthRate"], "growthRate"),
    opt(&["--grFactor"], "grFactor"),
    opt(&["--bnFactor"], "bnFactor"),
    opt(&["--block-step"], "block_step"),
    opt(&["--scale-list"], "scale_list"),
    opt(&["--compress-factor"], "compress_factor"),
    opt(&["--step"], "step"),
    choice(&["--stepmode"], "stepmode", &["even", "lg"]),
    flag(&["--bnAfter"], "bnAfter"),
];

/// Where one block sits and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    /// Flow (0 = lowest resolution).
    pub flow: usize,
    /// Position within the flow.
    pub pos: usize,
    /// Layers.
    pub layers: usize,
    /// A fusion block (else a dense block with an exit after it).
    pub up: bool,
    /// Whether its last fusion layer halves the resolution.
    pub down: bool,
    /// Whether it ends with a transition.
    pub trans: bool,
}

impl RaNetConfig {
    /// The README's CIFAR-10 command (`--step 2 --nChannels 16 --stepmode lg
    /// --scale-list 1-2-3 --grFactor 4-2-1 --bnFactor 4-2-1`).
    pub fn cifar10_readme() -> Self {
        Self {
            stem: StemKind::Cifar,
            num_classes: 10,
            in_channels: 3,
            n_blocks: 2,
            block_step: 2,
            step: 2,
            stepmode: RaStepMode::Lg,
            scale_list: vec![1, 2, 3],
            gr_factor: vec![4, 2, 1],
            bn_factor: vec![4, 2, 1],
            compress_factor: 0.25,
            reduction: 0.5,
            growth_rate: 6,
            n_channels: 16,
        }
    }

    /// The README's ImageNet command (`--step 8 --growthRate 16 --nChannels 32
    /// --stepmode even --scale-list 1-2-3-4 --grFactor 4-2-2-1 --bnFactor 4-2-2-1`).
    pub fn imagenet_readme() -> Self {
        Self {
            stem: StemKind::ImageNet,
            num_classes: 1000,
            step: 8,
            growth_rate: 16,
            n_channels: 32,
            stepmode: RaStepMode::Even,
            scale_list: vec![1, 2, 3, 4],
            gr_factor: vec![4, 2, 2, 1],
            bn_factor: vec![4, 2, 2, 1],
            ..Self::cifar10_readme()
        }
    }

    /// Reads a configuration: the project's JSON form, or a reference-style
    /// object with `args` or `cli_args` (RANet's `args.py` defaults).
    pub fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        let cfg = match refargs::reference_namespace(v, &[COMMON, RANET_OPTS])? {
            Some(ns) => Self::from_namespace(&ns)?,
            None => serde_json::from_value(v.clone())?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A configuration from a reference namespace.
    pub fn from_namespace(ns: &Namespace) -> std::result::Result<Self, ConfigError> {
        let (stem, num_classes) = match ns.str_or("data", "cifar10")?.as_str() {
            "cifar10" => (StemKind::Cifar, 10),
            "cifar100" => (StemKind::Cifar, 100),
            "ImageNet" => (StemKind::ImageNet, 1000),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "data '{other}' is not one of 'cifar10', 'cifar100', 'ImageNet'"
                )));
            }
        };
        let stepmode = match ns.str_or("stepmode", "even")?.as_str() {
            "even" => RaStepMode::Even,
            "lg" => RaStepMode::Lg,
            other => return Err(ConfigError::Invalid(format!("stepmode '{other}' is not one of 'even', 'lg'"))),
        };
        Ok(Self {
            stem,
            num_classes: ns.usize_or("num_classes", num_classes)?,
            in_channels: 3,
            n_blocks: ns.usize_or("nBlocks", 2)?,
            block_step: ns.usize_or("block_step", 2)?,
            step: ns.usize_or("step", 4)?,
            stepmode,
            scale_list: ns.list_or("scale_list", "1-2-3")?,
            gr_factor: ns.list_or("grFactor", "4-2-1")?,
            bn_factor: ns.list_or("bnFactor", "4-2-1")?,
            compress_factor: ns.float_or("compress_factor", 0.25)?,
            reduction: ns.float_or("reduction", 0.5)?,
            growth_rate: ns.usize_or("growthRate", 6)?,
            n_channels: ns.usize_or("nChannels", 16)?,
        })
    }

    /// Number of flows.
    pub fn n_scales(&self) -> usize {
        self.scale_list.len()
    }

    /// Blocks in flow f: `n_blocks + f · block_step`.
    pub fn flow_blocks(&self, f: usize) -> usize {
        self.n_blocks + f * self.block_step
    }

    /// Layers of the block at position `pos` (in any flow).
    pub fn layers_at(&self, pos: usize) -> usize {
        match self.stepmode {
            RaStepMode::Even => self.step,
            RaStepMode::Lg => self.step * (pos + 1),
        }
    }

    /// Every block, flow by flow, in construction (= forward) order.
    pub fn plan(&self) -> Vec<BlockPlan> {
        let mut out = Vec::new();
        for f in 0..self.n_scales() {
            let total = self.flow_blocks(f);
            let prev = if f == 0 { 0 } else { self.flow_blocks(f - 1) };
            let s = self.scale_list[f];
            // The reference takes the last `s - 1` entries of [0, n_1, .., n_f]
            // (all of them when s - 1 is 0, Python's `[-0:]`).
            let ends: Vec<usize> = std::iter::once(0).chain((0..f).map(|g| self.flow_blocks(g))).collect();
            let downs: &[usize] = if s <= 1 { &ends } else { &ends[ends.len().saturating_sub(s - 1)..] };
            for pos in 0..total {
                let n = pos + 1;
                let trans = (0..s.saturating_sub(1)).any(|i| n == (i + 1) * total / s);
                let up = n <= prev;
                out.push(BlockPlan {
                    flow: f,
                    pos,
                    layers: self.layers_at(pos),
                    up,
                    down: up && downs.contains(&n),
                    trans,
                });
            }
        }
        out
    }

    /// Checks every value; the error names the offending one.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let k = self.scale_list.len();
        if k == 0 {
            return bad("scale-list must list at least one scale".into());
        }
        {
            use crate::limits::*;
            cap("nBlocks", self.n_blocks, MAX_BLOCKS)?;
            cap("block-step", self.block_step, MAX_STEP)?;
            cap("step", self.step, MAX_STEP)?;
            cap("nChannels", self.n_channels, MAX_CHANNELS)?;
            cap("growthRate", self.growth_rate, MAX_CHANNELS)?;
            cap("number of scales (scale-list)", k, MAX_SCALES)?;
            cap_all("scale-list", &self.scale_list, MAX_SCALES)?;
            cap_all("grFactor", &self.gr_factor, MAX_FACTOR)?;
            cap_all("bnFactor", &self.bn_factor, MAX_FACTOR)?;
            cap("num_classes", self.num_classes, MAX_CLASSES)?;
            cap("in_channels", self.in_channels, MAX_IN_CHANNELS)?;
            let layers = self.n_blocks.max(1) * self.step.max(self.block_step).max(1) * k;
            cap("the number of layers", layers, MAX_LAYERS)?;
            let factor = self.gr_factor.iter().chain(&self.bn_factor).copied().max().unwrap_or(1);
            let widest = (self.n_channels + layers * self.growth_rate) * factor;
            dense_params_bound(layers, widest, self.growth_rate * factor, self.n_blocks * k)?;
        }
        if self.gr_factor.len() != k || self.bn_factor.len() != k {
            return bad(format!(
                "scale-list has {k} entries, grFactor {} and bnFactor {} (one per scale)",
                self.gr_factor.len(),
                self.bn_factor.len()
            ));
        }
        if self.scale_list.contains(&0) || self.scale_list.windows(2).any(|w| w[1] < w[0]) {
            return bad(format!("scale-list must be positive and non-decreasing, got {:?}", self.scale_list));
        }
        if self.gr_factor.contains(&0) || self.bn_factor.contains(&0) {
            return bad("grFactor and bnFactor entries must be at least 1".into());
        }
        for (name, v) in [
            ("nBlocks", self.n_blocks),
            ("step", self.step),
            ("growthRate", self.growth_rate),
            ("nChannels", self.n_channels),
            ("num_classes", self.num_classes),
            ("in_channels", self.in_channels),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if !(self.compress_factor > 0.0 && self.compress_factor < 1.0) {
            return bad(format!("compress-factor must be in (0, 1), got {}", self.compress_factor));
        }
        if !(self.reduction > 0.0 && self.reduction <= 1.0) {
            return bad(format!("reduction must be in (0, 1], got {}", self.reduction));
        }
        for f in 1..k {
            let g = self.growth_rate * self.gr_factor[f];
            let up = (g as f64 * self.compress_factor).floor() as usize;
            if up == 0 || up >= g {
                return bad(format!(
                    "flow {f}: growth {g} with compress-factor {} fuses {up} channels per layer (need 1 to {})",
                    self.compress_factor,
                    g - 1
                ));
            }
        }
        Ok(())
    }
}

/// One step of a RANet stage.
#[derive(Debug, Clone)]
enum Item {
    /// The first layer: base features of every flow.
    First(FirstLayer),
    /// Starts the next flow: its first-layer features become the current
    /// map, and the previous flow's block outputs become what its fusion
    /// blocks read.
    NextFlow,
    /// A dense block (an exit follows it).
    Dense(DenseBlock),
    /// A fusion block at position `pos` of its flow, reading the coarser
    /// flow's block `pos`.
    Up { pos: usize, block: UpBlock },
}

/// What a RANet pass carries between steps.
#[derive(Debug, Clone)]
struct Flows<V> {
    /// First-layer outputs of the flows not started yet, lowest resolution
    /// first.
    pending: Vec<V>,
    /// The current map (the input before the first layer).
    x: Option<V>,
    /// The current flow's per-block outputs (each block's input and layer
    /// outputs), which the next flow fuses.
    outs: Vec<Vec<V>>,
    /// The previous flow's per-block outputs, while the current flow's fusion
    /// blocks run (dropped at its first dense block).
    low: Vec<Vec<V>>,
}

impl<V> Carry<V> for Flows<V> {
    fn start(input: V) -> Self {
        Self { pending: Vec::new(), x: Some(input), outs: Vec::new(), low: Vec::new() }
    }

    fn head_input(&self) -> Option<&V> {
        self.x.as_ref()
    }
}

impl Compact for Flows<Tensor> {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        Ok(Self {
            pending: self.pending.select(keep)?,
            x: self.x.select(keep)?,
            outs: self.outs.select(keep)?,
            low: self.low.select(keep)?,
        })
    }
}

impl<V: Clone> Flows<V> {
    /// Moves to the next flow; `None` when no flow is left.
    fn next_flow(&mut self) -> Option<()> {
        if self.pending.is_empty() {
            return None;
        }
        self.low = std::mem::take(&mut self.outs);
        self.x = Some(self.pending.remove(0));
        Some(())
    }

    /// Records a block's output and its per-layer outputs.
    fn block_done(&mut self, y: V, outs: Vec<V>, dense: bool) {
        self.x = Some(y);
        self.outs.push(outs);
        if dense {
            // Fusion blocks come first in a flow: nothing reads `low` now.
            self.low.clear();
        }
    }
}

fn shape_err(m: String) -> anytime_flops::Error {
    anytime_flops::Error::Shape(m)
}

impl Step for Item {
    type State = Flows<Tensor>;
    type Shapes = Flows<Shape4>;

    fn forward(&self, s: &mut Flows<Tensor>, mode: &Mode) -> candle_core::Result<()> {
        match self {
            Item::First(f) => {
                let Some(x) = s.x.take() else { bail!("ranet: no input for the first layer") };
                let mut inp = f.forward_t(&x, mode)?;
                inp.reverse();
                s.pending = inp;
            }
            Item::NextFlow => {
                if s.next_flow().is_none() {
                    bail!("ranet: no first-layer features left for the next flow")
                }
            }
            Item::Dense(d) => {
                let Some(x) = &s.x else { bail!("ranet: no current features") };
                let (y, outs) = d.forward_t(x, mode)?;
                s.block_done(y, outs, true);
            }
            Item::Up { pos, block } => {
                let Some(x) = &s.x else { bail!("ranet: no current features") };
                let Some(low) = s.low.get(*pos) else { bail!("ranet: fusion block {pos} has no coarser features") };
                let (y, outs) = block.forward_t(x, low, mode)?;
                s.block_done(y, outs, false);
            }
        }
        Ok(())
    }

    fn count(&self, s: &mut Flows<Shape4>, c: &mut Counter) -> anytime_flops::Result<()> {
        match self {
            Item::First(f) => {
                let x = s.x.take().ok_or_else(|| shape_err("ranet: no input for the first layer".into()))?;
                let mut inp = f.count_flops(c, x)?;
                inp.reverse();
                s.pending = inp;
            }
            Item::NextFlow => s
                .next_flow()
                .ok_or_else(|| shape_err("ranet: no first-layer features left for the next flow".into()))?,
            Item::Dense(d) => {
                let x = s.x.ok_or_else(|| shape_err("ranet: no current features".into()))?;
                let (y, outs) = d.count_flops(c, x)?;
                s.block_done(y, outs, true);
            }
            Item::Up { pos, block } => {
                let x = s.x.ok_or_else(|| shape_err("ranet: no current features".into()))?;
                let low = s
                    .low
                    .get(*pos)
                    .ok_or_else(|| shape_err(format!("ranet: fusion block {pos} has no coarser map")))?;
                let (y, outs) = block.count_flops(c, x, low)?;
                s.block_done(y, outs, false);
            }
        }
        Ok(())
    }
}

/// A RANet.
#[derive(Debug, Clone)]
pub struct RaNet {
    cfg: RaNetConfig,
    /// Stage k: whatever exit k needs beyond the previous stages (the first
    /// layer, flow starts, fusion and dense blocks), then classifier k.
    stages: Stages<Item>,
}

impl RaNet {
    /// Builds the network; parameters are read under the reference keys.
    pub fn new(cfg: &RaNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let k = cfg.n_scales();
        // First layer: finest first (reversed factors and scales).
        let rev_gr: Vec<usize> = cfg.gr_factor.iter().rev().copied().collect();
        let rev_scale: Vec<usize> = cfg.scale_list.iter().rev().copied().collect();
        let channels: Vec<usize> = rev_gr.iter().map(|g| cfg.n_channels * g).collect();
        let strides: Vec<usize> =
            (0..k).map(|i| if i > 0 && rev_scale[i] != rev_scale[i - 1] { 2 } else { 1 }).collect();
        let first = FirstLayer::new(vb.pp("FirstLayer"), cfg.in_channels, cfg.stem, &channels, &strides)?;
        let plan = cfg.plan();
        let mut list = Vec::new();
        let mut steps = vec![Item::First(first)];
        let mut low_channels: Vec<Vec<usize>> = Vec::new();
        for f in 0..k {
            steps.push(Item::NextFlow);
            let mut n_in = cfg.n_channels * cfg.gr_factor[f];
            let growth = cfg.growth_rate * cfg.gr_factor[f];
            let mut this_low = Vec::new();
            for p in plan.iter().filter(|p| p.flow == f) {
                let vbb = vb.pp("scale_flows").pp(f).pp(p.pos);
                let trans = p.trans.then_some(cfg.reduction);
                let outs: Vec<usize> = (0..=p.layers).map(|i| n_in + i * growth).collect();
                if p.up {
                    let spec = UpBlockSpec {
                        num_layers: p.layers,
                        in_channels: n_in,
                        growth,
                        compress: cfg.compress_factor,
                        trans,
                        down: p.down,
                        bn_widths: (cfg.bn_factor[f], cfg.bn_factor[f - 1]),
                    };
                    let low = low_channels.get(p.pos).ok_or_else(|| {
                        ModelError::Input(format!("ranet: flow {f} block {} has no coarser block to fuse", p.pos))
                    })?;
                    let block = UpBlock::new(vbb, spec, low)?;
                    n_in = block.out_channels();
                    steps.push(Item::Up { pos: p.pos, block });
                } else {
                    let block = DenseBlock::new(vbb, p.layers, n_in, growth, cfg.bn_factor[f], trans)?;
                    n_in = block.out_channels();
                    steps.push(Item::Dense(block));
                    let inner = match cfg.stem {
                        StemKind::Cifar => 128,
                        StemKind::ImageNet => n_in,
                    };
                    let head = ConvHead::new(vb.pp("classifier").pp(list.len()), n_in, inner, cfg.num_classes)?;
                    list.push(Stage { steps: std::mem::take(&mut steps), head });
                }
                this_low.push(outs);
            }
            low_channels = this_low;
        }
        Ok(Self { cfg: cfg.clone(), stages: Stages::new("ranet", list) })
    }

    /// The configuration.
    pub fn config(&self) -> &RaNetConfig {
        &self.cfg
    }
}

impl MultiExit for RaNet {
    fn arch(&self) -> &'static str {
        "ranet"
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
        self.stages
            .costs(Shape4::new(1, self.cfg.in_channels, h, w))
            .map_err(|e| ModelError::Input(format!("ranet at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.stages.begin(xs)
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        self.stages.advance(state, mode)
    }
}

impl crate::registry::Architecture for RaNetConfig {
    const NAME: &'static str = "ranet";
    const HELP: &'static str = "RANet; own JSON, or reference `args` / `cli_args`";

    fn from_json(v: &Value) -> std::result::Result<Self, ConfigError> {
        RaNetConfig::from_json(v)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        RaNetConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(RaNet::new(self, vb)?))
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
    use crate::registry::{ArchConfig, load_model};
    use crate::testutil;
    use anytime_flops::Mode;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    const FIXTURE: &str = "ranet_cifar10_lg";

    fn zeros(cfg: &RaNetConfig) -> RaNet {
        RaNet::new(cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).expect("build")
    }

    #[test]
    fn reads_the_fixture_config_both_ways() {
        let v = testutil::json(FIXTURE, "config.json");
        let a = RaNetConfig::from_json(&serde_json::json!({ "args": v["args"] })).unwrap();
        let b = RaNetConfig::from_json(&serde_json::json!({ "cli_args": v["cli_args"] })).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.n_channels, a.growth_rate, a.stepmode), (8, 4, RaStepMode::Lg));
        let own = serde_json::to_value(&a).unwrap();
        assert_eq!(RaNetConfig::from_json(&own).unwrap(), a);
    }

    #[test]
    fn structure_matches_the_fixture_description() {
        let v = testutil::json(FIXTURE, "config.json");
        let cfg = RaNetConfig::from_json(&v).unwrap();
        let plan = cfg.plan();
        for (f, flow) in v["structure"]["scale_flows"].as_array().unwrap().iter().enumerate() {
            for (pos, b) in flow["blocks"].as_array().unwrap().iter().enumerate() {
                let p = plan.iter().find(|p| p.flow == f && p.pos == pos).unwrap();
                assert_eq!(p.layers as u64, b["num_layers"].as_u64().unwrap(), "flow {f} block {pos}");
                assert_eq!(p.up, b["type"] == "up", "flow {f} block {pos}");
                assert_eq!(p.trans, b["transition"].as_bool().unwrap(), "flow {f} block {pos}");
                if p.up {
                    assert_eq!(p.down, b["down_sample"].as_bool().unwrap(), "flow {f} block {pos}");
                }
            }
        }
    }

    #[test]
    fn flops_and_params_equal_the_reference_counter() {
        let v = testutil::json(FIXTURE, "flops.json");
        let cfg = RaNetConfig::from_json(&testutil::json(FIXTURE, "config.json")).unwrap();
        let model = zeros(&cfg);
        for (size, entry) in v["by_input_size"].as_object().unwrap() {
            let (h, w) = size.split_once('x').unwrap();
            let costs = model.exit_costs(h.parse().unwrap(), w.parse().unwrap()).unwrap();
            let (flops, params) = testutil::flops_entry(entry);
            assert_eq!(costs.flops(Mode::Reference), flops, "flops at {size}");
            assert_eq!(costs.params(), params, "params at {size}");
        }
        assert_eq!(model.exit_costs(32, 32).unwrap().total.params, v["total_parameters"].as_u64().unwrap());
    }

    #[test]
    fn logits_match_the_reference() {
        let cfg = ArchConfig::from_json("ranet", &testutil::json(FIXTURE, "config.json")).unwrap();
        let (input, expected) = testutil::io(FIXTURE, "io.safetensors");
        for file in ["state_dict.safetensors", "checkpoint.pth.tar"] {
            let path = testutil::fixture(FIXTURE).join(file);
            if !path.exists() {
                panic!("{} missing", path.display());
            }
            let model = load_model(&cfg, &path).unwrap();
            let got = model.forward_exits(&input, &anytime_blocks::Mode::eval()).unwrap();
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                testutil::assert_close(&format!("{file} exit {i}"), &g.logits, e);
            }
        }
    }

    #[test]
    fn readme_cifar10_flops() {
        let m = zeros(&RaNetConfig::cifar10_readme()).exit_costs(32, 32).unwrap().mflops(Mode::Reference);
        let want = [8.36, 21.77, 32.84, 41.52, 53.23, 58.92];
        assert_eq!(m.len(), want.len());
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 0.005, "{m:?}");
        }
    }

    #[test]
    fn lazy_stages_and_compaction_equal_the_full_forward() -> candle_core::Result<()> {
        let cfg = RaNetConfig::from_json(&testutil::json(FIXTURE, "config.json")).unwrap();
        let vm = VarMap::new();
        let model = RaNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let xs = Tensor::randn(0f32, 1., (4, 3, 32, 32), &Device::Cpu)?;
        let full = model.forward_exits(&xs, &anytime_blocks::Mode::eval())?;
        let mut state = model.begin(&xs, &anytime_blocks::Mode::eval())?;
        let mut keep: Vec<u32> = vec![0, 1, 2, 3];
        for (e, want) in full.iter().enumerate() {
            let got = model.advance(&mut state, &anytime_blocks::Mode::eval())?;
            let rows = Tensor::new(keep.as_slice(), &Device::Cpu)?;
            // Another batch size changes the GEMMs' summation order, so the
            // comparison allows float round-off (random, un-normalised weights
            // give large activations).
            testutil::assert_close_tol(&format!("exit {e}"), &got.logits, &want.logits.index_select(&rows, 0)?, 1e-3);
            testutil::assert_close_scaled(
                &format!("exit {e} feature"),
                &got.feature,
                &want.feature.index_select(&rows, 0)?,
                1e-3,
            );
            if e == 1 || e == 2 {
                // Drop the first remaining sample, as real early exit does.
                let positions: Vec<u32> = (1..keep.len() as u32).collect();
                state = state.select(&positions)?;
                keep.remove(0);
            }
        }
        Ok(())
    }

    #[test]
    fn step_one_builds_and_runs() -> candle_core::Result<()> {
        let cfg = RaNetConfig {
            step: 1,
            stepmode: RaStepMode::Even,
            n_channels: 4,
            growth_rate: 4,
            ..RaNetConfig::cifar10_readme()
        };
        let m = zeros(&cfg);
        let out =
            m.forward_exits(&Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?, &anytime_blocks::Mode::eval())?;
        assert_eq!(out.len(), m.num_exits());
        assert!(m.exit_costs(32, 32).is_ok());
        Ok(())
    }

    #[test]
    fn bad_configs_and_sizes() {
        let base = serde_json::to_value(RaNetConfig::cifar10_readme()).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = base.clone();
            c[k] = v;
            RaNetConfig::from_json(&c).unwrap_err().to_string()
        };
        assert!(with("stepmode", "foo".into()).contains("unknown variant `foo`"));
        assert!(with("scale_list", serde_json::json!([1, 2])).contains("scale-list has 2 entries"));
        assert!(with("scale_list", serde_json::json!([2, 1, 3])).contains("non-decreasing"));
        assert!(with("n_blocks", 0.into()).contains("nBlocks must be at least 1"));
        assert!(with("step", 0.into()).contains("step must be at least 1"));
        let cli = |s: &str| RaNetConfig::from_json(&serde_json::json!({ "cli_args": s })).unwrap_err().to_string();
        assert!(cli("--stepmode foo").contains("invalid choice"));
        assert_eq!(valid_size_range(&zeros(&RaNetConfig::cifar10_readme())), Some((17, 48)));
    }
}
