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
use anytime_blocks::Mode;
use anytime_blocks::multiscale::ConvNormal;
use anytime_blocks::units::ConvBasic;
use anytime_flops::{CountFlops, Counter, ExitCosts, Shape4};
use anytime_heads::{ConvHead, HeadPool};
use anytime_ops::pool::avg_pool2d;
use candle_core::{Tensor, bail};
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

#[derive(Debug, Clone)]
enum Item {
    Layer(ConvNormal),
    Transition(ConvBasic),
}

/// A DenseNet with intermediate classifiers.
#[derive(Debug, Clone)]
pub struct DenseNetMc {
    cfg: DenseNetMcConfig,
    stem: ConvBasic,
    features: Vec<Item>,
    /// For each exit, the end (exclusive) of its items in `features`.
    stage_end: Vec<usize>,
    classifier: Vec<ConvHead>,
}

impl DenseNetMc {
    /// Builds the network under `vb`.
    pub fn new(cfg: &DenseNetMcConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let stem = ConvBasic::new(vb.pp("stem"), cfg.in_channels, cfg.stem_channels, 3, 1, 1)?;
        let mut features = Vec::new();
        let mut widths_after_layer = Vec::new();
        let mut layer_end = Vec::new();
        let mut c = cfg.stem_channels;
        for (b, &n) in cfg.blocks.iter().enumerate() {
            if b > 0 {
                let out = ((c as f64) * cfg.compression).floor().max(1.0) as usize;
                features.push(Item::Transition(ConvBasic::new(vb.pp("features").pp(features.len()), c, out, 1, 1, 0)?));
                c = out;
            }
            for _ in 0..n {
                let vbi = vb.pp("features").pp(features.len());
                features.push(Item::Layer(ConvNormal::new(vbi, c, cfg.growth_rate, true, cfg.bottleneck_factor)?));
                c += cfg.growth_rate;
                widths_after_layer.push(c);
                layer_end.push(features.len());
            }
        }
        let stage_end = cfg.exits.iter().map(|&e| layer_end[e - 1]).collect();
        let classifier = cfg
            .exits
            .iter()
            .enumerate()
            .map(|(e, &after)| {
                let c = widths_after_layer[after - 1];
                ConvHead::with_pool(vb.pp("classifier").pp(e), c, cfg.head_channels, cfg.num_classes, HeadPool::Global)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { cfg: cfg.clone(), stem, features, stage_end, classifier })
    }

    /// The configuration.
    pub fn config(&self) -> &DenseNetMcConfig {
        &self.cfg
    }

    fn stage(&self, e: usize) -> std::ops::Range<usize> {
        (if e == 0 { 0 } else { self.stage_end[e - 1] })..self.stage_end[e]
    }
}

impl MultiExit for DenseNetMc {
    fn arch(&self) -> &'static str {
        "densenet_mc"
    }

    fn num_exits(&self) -> usize {
        self.cfg.exits.len()
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }

    fn exit_costs(&self, h: usize, w: usize) -> Result<ExitCosts> {
        let err = |e: anytime_flops::Error| ModelError::Input(format!("densenet_mc at {h}x{w}: {e}"));
        let mut c = Counter::new();
        let mut x = self.stem.count_flops(&mut c, Shape4::new(1, self.cfg.in_channels, h, w)).map_err(err)?;
        for e in 0..self.num_exits() {
            for item in &self.features[self.stage(e)] {
                x = match item {
                    Item::Layer(l) => l.count_flops(&mut c, x).map_err(err)?,
                    Item::Transition(t) => {
                        let y = t.count_flops(&mut c, x).map_err(err)?;
                        c.pool2d(y, 2, 2, 0).map_err(err)?
                    }
                };
            }
            self.classifier[e].count_flops(&mut c, x).map_err(err)?;
            c.mark_exit();
        }
        Ok(c.finish())
    }

    fn begin(&self, xs: &Tensor, _mode: &Mode) -> candle_core::Result<ExitState> {
        check_input(self, xs.dims()).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(ExitState::new(0, xs.dim(0)?, vec![vec![xs.clone()]]))
    }

    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        let e = state.next_exit();
        if e >= self.num_exits() {
            bail!("densenet_mc: all {} exits were already computed", self.num_exits())
        }
        let Some(mut x) = state.feats().first().and_then(|f| f.first()).cloned() else {
            bail!("densenet_mc: empty state")
        };
        if e == 0 {
            x = self.stem.forward_t(&x, mode)?;
        }
        for item in &self.features[self.stage(e)] {
            x = match item {
                Item::Layer(l) => l.forward_t(&x, mode)?,
                Item::Transition(t) => avg_pool2d(&t.forward_t(&x, mode)?, (2, 2), (2, 2), (0, 0), true)?,
            };
        }
        let out = self.classifier[e].forward_t(&x, mode)?;
        state.set(vec![vec![x]]);
        Ok(ExitOutput { logits: out.logits, feature: out.feature })
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
