//! ResNet-MC: a ResNet with classifiers attached to intermediate blocks, the
//! multi-classifier baseline of the MSDNet paper (Huang et al., ICLR 2018,
//! section 5), built from the workspace's residual blocks and heads.
//!
//! A CIFAR-style ResNet: a 3x3 ConvBasic stem (`stem.net.*`), stages of
//! basic blocks (`layers.<stage>.<block>.*`, the first block of every stage
//! after the first has stride 2), and an exit head after the blocks listed in
//! `exits` (`classifier.<e>.*`). Heads are the MSDNet classifier with global
//! pooling, so they fit any map size.

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::stages::{Chain, Stage, Stages, Step};
use anytime_blocks::Mode;
use anytime_blocks::residual::BasicBlock;
use anytime_blocks::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, ExitCosts, Shape4};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// A ResNet-MC configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetMcConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Classes every exit predicts.
    pub num_classes: usize,
    /// Width of the stem conv.
    pub stem_channels: usize,
    /// Width of every stage.
    pub widths: Vec<usize>,
    /// Basic blocks per stage.
    pub blocks: Vec<usize>,
    /// Exits, as the number of blocks run before each (increasing; the last
    /// equals the total block count).
    pub exits: Vec<usize>,
    /// Width of the exit heads' convolutions.
    pub head_channels: usize,
}

impl ResNetMcConfig {
    /// Checks every value.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        {
            use crate::limits::*;
            cap("the number of stages", self.widths.len(), MAX_BLOCKS)?;
            cap_all("widths", &self.widths, MAX_CHANNELS)?;
            cap_all("blocks", &self.blocks, MAX_STEP)?;
            cap("exits", self.exits.len(), MAX_BLOCKS)?;
            for (name, v) in [("stem_channels", self.stem_channels), ("head_channels", self.head_channels)] {
                cap(name, v, MAX_CHANNELS)?;
            }
            cap("num_classes", self.num_classes, MAX_CLASSES)?;
            cap("in_channels", self.in_channels, MAX_IN_CHANNELS)?;
            let layers = 2 * self.blocks.iter().sum::<usize>() + self.exits.len() * 2 + 1;
            cap("the number of layers", layers, MAX_LAYERS)?;
            let widest =
                self.widths.iter().chain([&self.stem_channels, &self.head_channels]).copied().max().unwrap_or(1);
            params_bound(layers, widest)?;
        }
        if self.widths.is_empty() || self.widths.len() != self.blocks.len() {
            return bad(format!("{} stage widths for {} stage block counts", self.widths.len(), self.blocks.len()));
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("stem_channels", self.stem_channels),
            ("head_channels", self.head_channels),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.widths.contains(&0) || self.blocks.contains(&0) {
            return bad("stage widths and block counts must be at least 1".into());
        }
        let total: usize = self.blocks.iter().sum();
        if self.exits.is_empty() || self.exits.windows(2).any(|w| w[0] >= w[1]) || self.exits[0] == 0 {
            return bad(format!("exits must be increasing block counts >= 1, got {:?}", self.exits));
        }
        if self.exits.last() != Some(&total) {
            return bad(format!("the last exit must follow the last block ({total}), got {:?}", self.exits));
        }
        Ok(())
    }

    fn from_json(v: &serde_json::Value) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_value(v.clone())?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// One step of a ResNet-MC stage (one stem per model: the size difference
/// does not matter).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Item {
    Stem(ConvBasic),
    Block(BasicBlock),
}

impl Step for Item {
    type State = Chain<Tensor>;
    type Shapes = Chain<Shape4>;

    fn forward(&self, s: &mut Chain<Tensor>, mode: &Mode) -> candle_core::Result<()> {
        s.x = match self {
            Item::Stem(u) => u.forward_t(&s.x, mode)?,
            Item::Block(b) => b.forward_t(&s.x, mode)?,
        };
        Ok(())
    }

    fn count(&self, s: &mut Chain<Shape4>, c: &mut Counter) -> anytime_flops::Result<()> {
        s.x = match self {
            Item::Stem(u) => u.count_flops(c, s.x)?,
            Item::Block(b) => b.count_flops(c, s.x)?,
        };
        Ok(())
    }
}

/// A ResNet with intermediate classifiers.
#[derive(Debug, Clone)]
pub struct ResNetMc {
    cfg: ResNetMcConfig,
    /// Stage e: the stem (e = 0), the blocks since the previous exit, then
    /// classifier e.
    stages: Stages<Item>,
}

impl ResNetMc {
    /// Builds the network under `vb`.
    pub fn new(cfg: &ResNetMcConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let mut steps = vec![Item::Stem(ConvBasic::new(vb.pp("stem"), cfg.in_channels, cfg.stem_channels, 3, 1, 1)?)];
        let mut list = Vec::with_capacity(cfg.exits.len());
        let mut done = 0;
        let mut c = cfg.stem_channels;
        for (s, (&w, &n)) in cfg.widths.iter().zip(&cfg.blocks).enumerate() {
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                steps.push(Item::Block(BasicBlock::new(vb.pp("layers").pp(s).pp(b), c, w, stride)?));
                c = w;
                done += 1;
                Stage::close_chain_stage(
                    &mut list,
                    &mut steps,
                    &cfg.exits,
                    done,
                    &vb,
                    w,
                    cfg.head_channels,
                    cfg.num_classes,
                )?;
            }
        }
        Ok(Self { cfg: cfg.clone(), stages: Stages::new("resnet_mc", list) })
    }

    /// Reads a configuration (the project's JSON form) and builds the network.
    pub fn from_json(v: &serde_json::Value, vb: VarBuilder) -> Result<Self> {
        Self::new(&ResNetMcConfig::from_json(v)?, vb)
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetMcConfig {
        &self.cfg
    }
}

impl MultiExit for ResNetMc {
    fn arch(&self) -> &'static str {
        "resnet_mc"
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
            .map_err(|e| ModelError::Input(format!("resnet_mc at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.stages.begin(xs)
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        self.stages.advance(state, mode)
    }
}

impl crate::registry::Architecture for ResNetMcConfig {
    const NAME: &'static str = "resnet_mc";
    const HELP: &'static str = "ResNet with intermediate classifiers; own JSON";

    fn from_json(v: &serde_json::Value) -> std::result::Result<Self, ConfigError> {
        ResNetMcConfig::from_json(v)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        ResNetMcConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(ResNetMc::new(self, vb)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn cfg() -> ResNetMcConfig {
        ResNetMcConfig {
            in_channels: 1,
            num_classes: 10,
            stem_channels: 8,
            widths: vec![8, 16],
            blocks: vec![2, 2],
            exits: vec![1, 3, 4],
            head_channels: 16,
        }
    }

    #[test]
    fn exits_shapes_and_costs() -> Result<()> {
        let m = ResNetMc::new(&cfg(), VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        let xs = Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?;
        let out = m.forward_exits(&xs, &anytime_blocks::Mode::eval())?;
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| o.logits.dims() == [2, 10] && o.feature.dims() == [2, 16]));
        let costs = m.exit_costs(28, 28)?;
        assert!(costs.exits.windows(2).all(|w| w[0].macs < w[1].macs));
        Ok(())
    }

    #[test]
    fn bad_exits_are_errors() {
        let mut c = cfg();
        c.exits = vec![1, 3];
        assert!(c.validate().unwrap_err().to_string().contains("last exit"));
        c.exits = vec![2, 2, 4];
        assert!(c.validate().is_err());
    }
}
