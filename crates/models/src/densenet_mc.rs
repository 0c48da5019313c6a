//! DenseNet-MC: a DenseNet with classifiers attached to intermediate layers,
//! the second multi-classifier baseline of the MSDNet paper (Huang et al.,
//! ICLR 2018, section 5), built from the workspace's dense layers and heads.
//!
//! A 3x3 ConvBasic stem (`stem.net.*`), dense blocks of bottleneck dense
//! layers (`cat[x, 3x3(1x1(x))]`, the same unit as MSDNet's, keys
//! `features.<i>.conv_normal.net.*`), transitions between blocks (a 1x1
//! ConvBasic compressing the channels, `features.<i>.net.*`, then a 2x2
//! average pool), and an exit head after the dense layers listed in `exits`
//! (`classifier.<e>.*`).

use crate::error::{ConfigError, ModelError, Result};
use crate::exit::{ExitOutput, ExitState, MultiExit, check_input};
use crate::stages::{Chain, Stage, Stages, Step};
use anytime_blocks::Mode;
use anytime_blocks::multiscale::ConvNormal;
use anytime_blocks::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, ExitCosts, Shape4};
use anytime_ops::pool::avg_pool2d;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// A DenseNet-MC configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseNetMcConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Classes every exit predicts.
    pub num_classes: usize,
    /// Width of the stem conv.
    pub stem_channels: usize,
    /// New channels per dense layer.
    pub growth_rate: usize,
    /// Dense layers per block.
    pub blocks: Vec<usize>,
    /// Bottleneck width as a multiple of the growth rate (DenseNet-BC: 4).
    pub bottleneck_factor: usize,
    /// Transition compression in (0, 1].
    pub compression: f64,
    /// Exits, as the number of dense layers run before each (increasing; the
    /// last equals the total layer count).
    pub exits: Vec<usize>,
    /// Width of the exit heads' convolutions.
    pub head_channels: usize,
}

impl DenseNetMcConfig {
    /// Checks every value.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        {
            use crate::limits::*;
            cap("the number of dense blocks", self.blocks.len(), MAX_BLOCKS)?;
            cap_all("blocks", &self.blocks, MAX_STEP)?;
            cap("exits", self.exits.len(), MAX_LAYERS)?;
            for (name, v) in [
                ("stem_channels", self.stem_channels),
                ("growth_rate", self.growth_rate),
                ("head_channels", self.head_channels),
            ] {
                cap(name, v, MAX_CHANNELS)?;
            }
            cap("bottleneck_factor", self.bottleneck_factor, MAX_FACTOR)?;
            cap("num_classes", self.num_classes, MAX_CLASSES)?;
            cap("in_channels", self.in_channels, MAX_IN_CHANNELS)?;
            let layers: usize = 2 * self.blocks.iter().sum::<usize>() + self.blocks.len() + 2 * self.exits.len() + 1;
            cap("the number of layers", layers, MAX_LAYERS)?;
            let widest = (self.stem_channels + self.blocks.iter().sum::<usize>() * self.growth_rate)
                .max(self.growth_rate * self.bottleneck_factor)
                .max(self.head_channels);
            dense_params_bound(layers, widest, self.growth_rate * self.bottleneck_factor, self.blocks.len())?;
        }
        for (name, v) in [
            ("in_channels", self.in_channels),
            ("num_classes", self.num_classes),
            ("stem_channels", self.stem_channels),
            ("growth_rate", self.growth_rate),
            ("bottleneck_factor", self.bottleneck_factor),
            ("head_channels", self.head_channels),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.blocks.is_empty() || self.blocks.contains(&0) {
            return bad(format!("blocks must list at least one non-empty dense block, got {:?}", self.blocks));
        }
        if !(self.compression > 0.0 && self.compression <= 1.0) {
            return bad(format!("compression must be in (0, 1], got {}", self.compression));
        }
        let total: usize = self.blocks.iter().sum();
        if self.exits.is_empty() || self.exits[0] == 0 || self.exits.windows(2).any(|w| w[0] >= w[1]) {
            return bad(format!("exits must be increasing layer counts >= 1, got {:?}", self.exits));
        }
        if self.exits.last() != Some(&total) {
            return bad(format!("the last exit must follow the last layer ({total}), got {:?}", self.exits));
        }
        Ok(())
    }
}

/// One step of a DenseNet-MC stage.
#[derive(Debug, Clone)]
enum Item {
    Stem(ConvBasic),
    Layer(ConvNormal),
    /// A 1x1 ConvBasic, then a 2x2 average pool.
    Transition(ConvBasic),
}

impl Step for Item {
    type State = Chain<Tensor>;
    type Shapes = Chain<Shape4>;

    fn forward(&self, s: &mut Chain<Tensor>, mode: &Mode) -> candle_core::Result<()> {
        s.x = match self {
            Item::Stem(u) => u.forward_t(&s.x, mode)?,
            Item::Layer(l) => l.forward_t(&s.x, mode)?,
            Item::Transition(t) => avg_pool2d(&t.forward_t(&s.x, mode)?, (2, 2), (2, 2), (0, 0), true)?,
        };
        Ok(())
    }

    fn count(&self, s: &mut Chain<Shape4>, c: &mut Counter) -> anytime_flops::Result<()> {
        s.x = match self {
            Item::Stem(u) => u.count_flops(c, s.x)?,
            Item::Layer(l) => l.count_flops(c, s.x)?,
            Item::Transition(t) => {
                let y = t.count_flops(c, s.x)?;
                c.pool2d(y, 2, 2, 0)?
            }
        };
        Ok(())
    }
}

/// A DenseNet with intermediate classifiers.
#[derive(Debug, Clone)]
pub struct DenseNetMc {
    cfg: DenseNetMcConfig,
    /// Stage e: the stem (e = 0), the layers and transitions since the
    /// previous exit, then classifier e.
    stages: Stages<Item>,
}

impl DenseNetMc {
    /// Builds the network under `vb`.
    pub fn new(cfg: &DenseNetMcConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let mut steps = vec![Item::Stem(ConvBasic::new(vb.pp("stem"), cfg.in_channels, cfg.stem_channels, 3, 1, 1)?)];
        let mut list = Vec::with_capacity(cfg.exits.len());
        // Index of the next `features.<i>` module, and dense layers so far.
        let (mut i, mut done) = (0, 0);
        let mut c = cfg.stem_channels;
        for (b, &n) in cfg.blocks.iter().enumerate() {
            if b > 0 {
                let out = ((c as f64) * cfg.compression).floor().max(1.0) as usize;
                steps.push(Item::Transition(ConvBasic::new(vb.pp("features").pp(i), c, out, 1, 1, 0)?));
                i += 1;
                c = out;
            }
            for _ in 0..n {
                let vbi = vb.pp("features").pp(i);
                steps.push(Item::Layer(ConvNormal::new(vbi, c, cfg.growth_rate, true, cfg.bottleneck_factor)?));
                i += 1;
                c += cfg.growth_rate;
                done += 1;
                Stage::close_chain_stage(
                    &mut list,
                    &mut steps,
                    &cfg.exits,
                    done,
                    &vb,
                    c,
                    cfg.head_channels,
                    cfg.num_classes,
                )?;
            }
        }
        Ok(Self { cfg: cfg.clone(), stages: Stages::new("densenet_mc", list) })
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetMcConfig {
        &self.cfg
    }
}

impl MultiExit for DenseNetMc {
    fn arch(&self) -> &'static str {
        "densenet_mc"
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
            .map_err(|e| ModelError::Input(format!("densenet_mc at {h}x{w}: {e}")))
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.stages.begin(xs)
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        self.stages.advance(state, mode)
    }
}

impl crate::registry::Architecture for DenseNetMcConfig {
    const NAME: &'static str = "densenet_mc";
    const HELP: &'static str = "DenseNet with intermediate classifiers; own JSON";

    fn from_json(v: &serde_json::Value) -> std::result::Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_value(v.clone())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        DenseNetMcConfig::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Ok(Box::new(DenseNetMc::new(self, vb)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn exits_shapes_and_costs() -> Result<()> {
        let cfg = DenseNetMcConfig {
            in_channels: 1,
            num_classes: 10,
            stem_channels: 8,
            growth_rate: 4,
            blocks: vec![2, 2, 2],
            bottleneck_factor: 4,
            compression: 0.5,
            exits: vec![2, 4, 6],
            head_channels: 16,
        };
        let m = DenseNetMc::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        let out =
            m.forward_exits(&Tensor::zeros((2, 1, 28, 28), DType::F32, &Device::Cpu)?, &anytime_blocks::Mode::eval())?;
        assert_eq!(out.len(), 3);
        let costs = m.exit_costs(28, 28)?;
        assert_eq!(costs.len(), 3);
        assert!(costs.exits.windows(2).all(|w| w[0].macs < w[1].macs));
        Ok(())
    }
}
