//! Stochastic weight averaging (Izmailov et al., 2018): a running mean of the
//! weights at the ends of the cycles of a cyclic (or constant) learning rate,
//! and the recalibration of batch-norm statistics the averaged weights need.
//!
//! The running statistics of the last epoch belong to the last weights, not
//! to their average; [`recalibrate_bn`] recomputes them as the plain mean of
//! the per-batch statistics over training batches (PyTorch's `update_bn`).

use crate::error::{Error, Result};
use anytime_blocks::Mode;
use anytime_blocks::layers::BN_MOMENTUM;
use anytime_models::MultiExit;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// When to average and how to recalibrate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaConfig {
    /// The first epoch (0-based) whose final weights join the average.
    pub start_epoch: usize,
    /// Training batches that recompute the batch-norm statistics of the
    /// average, at least 1.
    pub bn_batches: usize,
}

impl SwaConfig {
    /// Checks the values against a run of `epochs`.
    pub fn validate(&self, epochs: usize) -> std::result::Result<(), String> {
        if self.start_epoch >= epochs {
            return Err(format!(
                "weight averaging starts at epoch {} (0-based) of a run of {epochs} epochs; it must start earlier",
                self.start_epoch
            ));
        }
        if self.bn_batches == 0 {
            return Err("weight averaging needs at least one batch to recompute batch-norm statistics".into());
        }
        Ok(())
    }
}

/// Whether `name` is a batch-norm running statistic (averaging skips those).
pub fn is_running_stat(name: &str) -> bool {
    name.rsplit('.').next().is_some_and(|last| anytime_blocks::layers::BN_BUFFERS.contains(&last))
}

/// Adds `weights` (the model's parameters, running statistics skipped) to
/// the running mean `avg` of `count` earlier weights: `avg += (w - avg) / (count + 1)`.
pub fn accumulate(avg: &mut BTreeMap<String, Tensor>, weights: &BTreeMap<String, Tensor>, count: usize) -> Result<()> {
    let k = 1.0 / (count + 1) as f64;
    for (name, w) in weights.iter().filter(|(n, _)| !is_running_stat(n)) {
        let next = match avg.get(name) {
            Some(a) if count > 0 => {
                if a.shape() != w.shape() {
                    return Err(Error::Config(format!(
                        "weight average: {name} has shape {:?}, the model's is {:?}",
                        a.shape(),
                        w.shape()
                    )));
                }
                (a + ((w - a)? * k)?)?
            }
            _ => w.copy()?,
        };
        avg.insert(name.clone(), next);
    }
    Ok(())
}

/// Recomputes every batch-norm running statistic among `vars` (the model's
/// variables by key; the model's layers share their storage) of the modules
/// that train in `mode` (a training mode; frozen modules keep theirs) as the
/// mean of the per-batch statistics over at most `limit` batches, run
/// through the model in `mode`. Returns the number of batches used.
///
/// The layers update their statistics with momentum [`BN_MOMENTUM`] from
/// zero before each batch, which leaves `momentum × batch statistic`; the
/// sum of those over the batches, divided by `momentum × batches`, is the
/// mean.
pub fn recalibrate_bn<I>(
    model: &dyn MultiExit,
    mode: &Mode,
    vars: &BTreeMap<String, Var>,
    batches: I,
    limit: usize,
) -> Result<usize>
where
    I: IntoIterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    if !mode.is_train() {
        return Err(Error::Config("batch-norm recalibration needs a training mode".into()));
    }
    let module = |k: &str| k.rsplit_once('.').map_or("", |(m, _)| m).to_string();
    let stats: Vec<(&String, &Var)> = vars
        .iter()
        .filter(|(k, _)| (k.ends_with("running_mean") || k.ends_with("running_var")) && mode.trains(&module(k)))
        .collect();
    let mut sums: Vec<Tensor> =
        stats.iter().map(|(_, v)| v.as_tensor().zeros_like()).collect::<candle_core::Result<_>>()?;
    let mut used = 0usize;
    for batch in batches.into_iter().take(limit) {
        let (xs, _) = batch?;
        for (_, v) in &stats {
            v.set(&v.as_tensor().zeros_like()?)?;
        }
        drop(crate::objective::forward(model, &xs, mode)?);
        for (s, (_, v)) in sums.iter_mut().zip(&stats) {
            *s = (&*s + v.as_tensor().detach())?;
        }
        used += 1;
    }
    if used == 0 {
        return Err(Error::Config("batch-norm recalibration got no batches".into()));
    }
    let scale = 1.0 / (BN_MOMENTUM * used as f64);
    for (s, (_, v)) in sums.iter().zip(&stats) {
        v.set(&(s * scale)?)?;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn running_mean_of_weights_skips_statistics() -> Result<()> {
        let dev = Device::Cpu;
        let w = |a: f32, s: f32| -> candle_core::Result<BTreeMap<String, Tensor>> {
            Ok(BTreeMap::from([
                ("conv.weight".to_string(), Tensor::new(&[a, 2.0 * a], &dev)?),
                ("bn.running_mean".to_string(), Tensor::new(&[s], &dev)?),
            ]))
        };
        let mut avg = BTreeMap::new();
        for (i, a) in [1.0f32, 2.0, 6.0].into_iter().enumerate() {
            accumulate(&mut avg, &w(a, 100.0)?, i)?;
        }
        assert_eq!(avg["conv.weight"].to_vec1::<f32>()?, vec![3.0, 6.0]);
        assert!(!avg.contains_key("bn.running_mean"));
        let bad = BTreeMap::from([("conv.weight".to_string(), Tensor::new(&[1.0f32], &dev)?)]);
        assert!(accumulate(&mut avg, &bad, 3).is_err());
        assert!(SwaConfig { start_epoch: 3, bn_batches: 1 }.validate(3).is_err());
        assert!(SwaConfig { start_epoch: 0, bn_batches: 0 }.validate(3).is_err());
        assert!(SwaConfig { start_epoch: 2, bn_batches: 4 }.validate(3).is_ok());
        Ok(())
    }

    fn tiny() -> Result<(Box<dyn MultiExit>, BTreeMap<String, Var>)> {
        let map = candle_nn::VarMap::new();
        let cfg = anytime_models::registry::ArchConfig::new(anytime_models::registry::msdnet_tiny());
        let model = cfg.build(crate::init::seeded_var_builder(&map, 3, &Device::Cpu))?;
        let vars = map.data().lock().map_err(|e| Error::Config(e.to_string()))?.clone().into_iter().collect();
        Ok((model, vars))
    }

    fn batch(seed: u64) -> candle_core::Result<(Tensor, Tensor)> {
        let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
        let xs = crate::init::seeded_tensor(seed, "x", &(6, 1, 28, 28).into(), init, &Device::Cpu)?;
        Ok((xs, Tensor::zeros(6, candle_core::DType::U32, &Device::Cpu)?))
    }

    fn stats(vars: &BTreeMap<String, Var>) -> Result<Vec<Vec<f32>>> {
        vars.iter()
            .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
            .map(|(_, v)| Ok(v.as_tensor().to_vec1::<f32>()?))
            .collect()
    }

    /// Recalibrated statistics are the mean of the per-batch ones, and on a
    /// single batch they make eval mode reproduce training mode (up to the
    /// unbiased variance), so no factor of the momentum is left over.
    #[test]
    fn recalibration_averages_batch_statistics() -> Result<()> {
        let (model, vars) = tiny()?;
        let (a, b) = (batch(1)?, batch(2)?);
        recalibrate_bn(model.as_ref(), &Mode::train(), &vars, [Ok(a.clone())], 10)?;
        let sa = stats(&vars)?;
        let eval = crate::objective::forward(model.as_ref(), &a.0, &Mode::eval())?;
        let train = crate::objective::forward(model.as_ref(), &a.0, &Mode::train())?;
        for (e, t) in eval.iter().map(|e| &e.logits).zip(train.iter().map(|t| &t.logits)) {
            let diff = (e - t)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = t.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= 0.05 * scale, "eval after recalibration differs from train mode by {diff} (scale {scale})");
        }
        recalibrate_bn(model.as_ref(), &Mode::train(), &vars, [Ok(b.clone())], 10)?;
        let sb = stats(&vars)?;
        let used = recalibrate_bn(model.as_ref(), &Mode::train(), &vars, [Ok(a), Ok(b.clone()), Ok(b)], 2)?;
        assert_eq!(used, 2);
        for ((x, y), m) in sa.iter().zip(&sb).zip(stats(&vars)?) {
            for ((x, y), m) in x.iter().zip(y).zip(m) {
                assert!((0.5 * (x + y) - m).abs() <= 1e-4 * (1.0 + m.abs()), "{x} {y} -> {m}");
            }
        }
        assert!(recalibrate_bn(model.as_ref(), &Mode::train(), &vars, std::iter::empty(), 4).is_err());
        // A frozen module keeps its statistics; the others are recomputed.
        let in_block0 = |k: &String| anytime_blocks::mode::within(k, "blocks.0");
        let before: BTreeMap<String, Vec<f32>> = vars
            .iter()
            .filter(|(k, _)| is_running_stat(k) && !k.ends_with("num_batches_tracked"))
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_>>()?;
        let frozen = Mode::train().with_frozen(["blocks.0".to_string()]);
        recalibrate_bn(model.as_ref(), &frozen, &vars, [Ok(batch(5)?)], 1)?;
        let (mut kept, mut moved) = (0, 0);
        for (k, b) in &before {
            let now = vars[k].as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if in_block0(k) {
                assert_eq!(&now, b, "{k} is frozen");
                kept += 1;
            } else if &now != b {
                moved += 1;
            }
        }
        assert!(kept > 0 && moved > 0, "{kept} kept, {moved} recomputed");
        assert!(recalibrate_bn(model.as_ref(), &Mode::eval(), &vars, [Ok(batch(5)?)], 1).is_err());
        Ok(())
    }
}
