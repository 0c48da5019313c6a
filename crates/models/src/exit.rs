//! The multi-exit model interface, lazy anytime evaluation and real early
//! exit with batch compaction.
//!
//! A [`MultiExit`] model runs in *stages*: stage k computes whatever exit k
//! needs beyond what is already computed (MSDNet's lazy evaluation) and
//! returns exit k's [`ExitOutput`]: its logits and its feature.
//! [`MultiExit::begin`] starts a pass and [`MultiExit::advance`] runs one
//! stage; the [`ExitState`] between stages holds the features later stages
//! reuse and can be *compacted* to a subset of the batch, so samples that have
//! left early cost nothing afterwards.

use crate::error::{ModelError, Result};
use crate::stages::Compact;
use anytime_blocks::Mode;
use anytime_flops::ExitCosts;
use candle_core::{Tensor, bail};
use std::any::Any;

/// The typed state a model's lazy pass carries between stages (each model
/// defines its own, see [`crate::stages`]), behind a trait object so that
/// [`MultiExit`] stays object-safe.
///
/// Every type that is [`Compact`] (knows how to keep a subset of the batch),
/// `Clone`, `Debug`, `Send` and `Sync` is a stage state.
pub trait StageState: Any + std::fmt::Debug + Send + Sync {
    /// The state restricted to the samples at positions `keep`, in that order.
    fn select_boxed(&self, keep: &[u32]) -> candle_core::Result<Box<dyn StageState>>;
    /// A copy of the state.
    fn clone_boxed(&self) -> Box<dyn StageState>;
    /// The state as `Any`, for the model to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Compact + Clone + std::fmt::Debug + Send + Sync + 'static> StageState for T {
    fn select_boxed(&self, keep: &[u32]) -> candle_core::Result<Box<dyn StageState>> {
        Ok(Box::new(self.select(keep)?))
    }

    fn clone_boxed(&self) -> Box<dyn StageState> {
        Box::new(self.clone())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A lazy pass between stages: the index of the next exit, the batch size and
/// the model's typed state.
#[derive(Debug)]
pub struct ExitState {
    next: usize,
    batch: usize,
    carry: Box<dyn StageState>,
}

impl Clone for ExitState {
    fn clone(&self) -> Self {
        Self { next: self.next, batch: self.batch, carry: self.carry.clone_boxed() }
    }
}

impl ExitState {
    /// A pass before stage 0 for a batch of `batch` samples, carrying `carry`.
    pub fn new<T: StageState>(batch: usize, carry: T) -> Self {
        Self { next: 0, batch, carry: Box::new(carry) }
    }

    /// Index of the exit the next stage computes.
    pub fn next_exit(&self) -> usize {
        self.next
    }

    /// Samples still in the batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The carried state as the model's type `T`, or `None` when the pass
    /// was started by another kind of model.
    pub fn carry_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.carry.as_mut().as_any_mut().downcast_mut::<T>()
    }

    /// Moves to the next stage (the model calls it once a stage has run).
    pub fn finish_stage(&mut self) {
        self.next += 1;
    }

    /// Keeps only the samples at positions `keep` (in the current batch), in
    /// that order: the batch compaction behind real early exit.
    pub fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        if let Some(&bad) = keep.iter().find(|&&i| i as usize >= self.batch) {
            bail!("early exit: sample {bad} is not in a batch of {}", self.batch)
        }
        Ok(Self { next: self.next, batch: keep.len(), carry: self.carry.select_boxed(keep)? })
    }
}

/// What one exit produces.
///
/// # Shapes
/// `logits` `[N, classes]`; `feature` `[N, D]`, the vector the exit
/// classifier's last linear layer reads (an embedding of the image at that
/// depth; SCAN's feature hint and GFNet's cascade heads read it).
#[derive(Debug, Clone)]
pub struct ExitOutput {
    /// The exit's logits `[N, classes]`.
    pub logits: Tensor,
    /// The exit's feature `[N, D]`.
    pub feature: Tensor,
}

/// A network with several classifiers along its depth.
pub trait MultiExit: Send + Sync {
    /// Architecture name (`msdnet`, `ranet`, …).
    fn arch(&self) -> &'static str;

    /// Number of exits.
    fn num_exits(&self) -> usize;

    /// Number of classes every exit predicts.
    fn num_classes(&self) -> usize;

    /// Input channels.
    fn in_channels(&self) -> usize;

    /// Cumulative per-exit cost of one `h`x`w` image, computed from shapes, in
    /// forward order with earlier exits included; an error when the size is
    /// not valid for the model.
    fn exit_costs(&self, h: usize, w: usize) -> Result<ExitCosts>;

    /// Starts a lazy pass over `xs` `[N, C, H, W]`: validates the input and
    /// computes nothing else. `mode` decides, per module, train or eval mode
    /// (batch norm statistics) for every stage of the pass.
    fn begin(&self, xs: &Tensor, mode: &Mode) -> candle_core::Result<ExitState>;

    /// Runs the next stage and returns its exit's logits `[N, classes]` and
    /// feature `[N, D]`.
    fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput>;

    /// The model as `Any`, for code that needs the concrete type (a
    /// model-specific training objective, such as GFNet's policy gradient);
    /// `None` for models that need no such access.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Named outputs of the stage [`MultiExit::advance`] ran last, besides
    /// its logits and feature, each with the batch as its first dimension
    /// (GFNet's focus steps: `actions` `[N, 2]` and patch `coords`, i32
    /// `[N, 2]`). None for most models.
    fn stage_extras(&self, _state: &mut ExitState) -> Vec<(&'static str, Tensor)> {
        Vec::new()
    }

    /// Logits and features of every exit, in order.
    ///
    /// # Shapes
    /// `[N, C, H, W]` → `num_exits` × (`[N, classes]`, `[N, D_k]`).
    fn forward_exits(&self, xs: &Tensor, mode: &Mode) -> candle_core::Result<Vec<ExitOutput>> {
        let mut state = self.begin(xs, mode)?;
        (0..self.num_exits()).map(|_| self.advance(&mut state, mode)).collect()
    }
}

/// The range of square input sizes `lo..=hi` a model accepts, found from shapes
/// (sizes up to 4096 are tried), or `None` when none is valid.
pub fn valid_size_range(model: &dyn MultiExit) -> Option<(usize, usize)> {
    let ok: Vec<usize> = (1..=4096).filter(|&s| model.exit_costs(s, s).is_ok()).collect();
    Some((*ok.first()?, *ok.last()?))
}

/// Checks that `dims` is an `[N, C, H, W]` input the model can take, with a
/// message naming the valid channels and sizes otherwise.
pub fn check_input(model: &dyn MultiExit, dims: &[usize]) -> Result<()> {
    let [n, c, h, w] = dims else {
        return Err(ModelError::Input(format!(
            "{}: expected an input of shape [N, {}, H, W], got {dims:?}",
            model.arch(),
            model.in_channels()
        )));
    };
    if *n == 0 {
        return Err(ModelError::Input(format!("{}: the input batch is empty", model.arch())));
    }
    if *c != model.in_channels() {
        return Err(ModelError::Input(format!(
            "{}: the model takes {}-channel images, the input has {c} channels",
            model.arch(),
            model.in_channels()
        )));
    }
    if let Err(e) = model.exit_costs(*h, *w) {
        let range = match valid_size_range(model) {
            Some((lo, hi)) => format!("height and width must be {lo} to {hi}"),
            None => "no input size is valid for this configuration".to_string(),
        };
        return Err(ModelError::Input(format!("{}: a {h}x{w} input is not valid ({range}): {e}", model.arch())));
    }
    Ok(())
}

/// A lazy iterator over a model's exits: the k-th item is exit k's output
/// (logits and feature), computed only when asked for, so a caller can stop
/// anywhere.
pub struct Anytime<'a> {
    model: &'a dyn MultiExit,
    state: ExitState,
    mode: Mode,
}

impl<'a> Anytime<'a> {
    /// Starts an inference pass over `xs` ([`Mode::inference`]: batch norms
    /// folded into their convolutions).
    pub fn new(model: &'a dyn MultiExit, xs: &Tensor) -> candle_core::Result<Self> {
        let mode = Mode::inference();
        Ok(Self { model, state: model.begin(xs, &mode)?, mode })
    }

    /// The state between stages (for compaction by the caller).
    pub fn state_mut(&mut self) -> &mut ExitState {
        &mut self.state
    }
}

impl Iterator for Anytime<'_> {
    type Item = candle_core::Result<ExitOutput>;

    fn next(&mut self) -> Option<Self::Item> {
        (self.state.next_exit() < self.model.num_exits()).then(|| self.model.advance(&mut self.state, &self.mode))
    }
}

/// What real early exit decided for one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExitDecision {
    /// Predicted class.
    pub prediction: u32,
    /// Confidence the stopping rule measured at the exit taken.
    pub confidence: f32,
    /// The exit taken.
    pub exit: usize,
    /// Cumulative MFLOPs spent on this sample (the exit's cumulative cost).
    pub mflops: f64,
    /// Whether no exit was confident and the prediction is the ensemble
    /// fallback's (the mean of every exit's logits; `exit` is then the last).
    pub fallback: bool,
}

/// Classifies `xs` with real early exit: stage by stage, each remaining
/// sample's logits row goes to `rule(exit, logits_row) -> (stop, confidence)`;
/// samples that stop leave the batch (their features are dropped by
/// compaction), the last exit takes everything left, and later stages run only
/// on the samples still in the batch.
///
/// `exit_mflops[k]` is the cumulative cost of exit k, reported per sample.
pub fn classify_early_exit(
    model: &dyn MultiExit,
    xs: &Tensor,
    exit_mflops: &[f64],
    rule: impl FnMut(usize, &[f32]) -> (bool, f32),
) -> candle_core::Result<Vec<ExitDecision>> {
    early_exit(model, xs, exit_mflops, false, rule)
}

/// [`classify_early_exit`], where with `ensemble` a sample the rule does not
/// stop at the last exit gets the argmax of the mean of its logits over every
/// exit (SCAN's fallback) instead of the last exit's.
fn early_exit(
    model: &dyn MultiExit,
    xs: &Tensor,
    exit_mflops: &[f64],
    ensemble: bool,
    mut rule: impl FnMut(usize, &[f32]) -> (bool, f32),
) -> candle_core::Result<Vec<ExitDecision>> {
    let k_exits = model.num_exits();
    if exit_mflops.len() != k_exits {
        bail!("early exit: {} exit costs for a model with {k_exits} exits", exit_mflops.len())
    }
    let n = xs.dim(0)?;
    let eval = Mode::inference();
    let mut state = model.begin(xs, &eval)?;
    let mut alive: Vec<usize> = (0..n).collect();
    let mut out: Vec<Option<ExitDecision>> = vec![None; n];
    // Per alive sample, the sum of its logits so far (for the ensemble).
    let mut sums: Vec<Vec<f32>> = Vec::new();
    for (k, &mflops) in exit_mflops.iter().enumerate() {
        let rows = model.advance(&mut state, &eval)?.logits.to_vec2::<f32>()?;
        let last = k + 1 == k_exits;
        if ensemble {
            if sums.is_empty() {
                sums = rows.clone();
            } else {
                for (s, row) in sums.iter_mut().zip(&rows) {
                    s.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
            }
        }
        let mut keep = Vec::with_capacity(rows.len());
        for (j, row) in rows.iter().enumerate() {
            let (stop, confidence) = rule(k, row);
            if stop || last {
                let fallback = ensemble && !stop;
                // The mean's argmax is the sum's: no division needed.
                let prediction = if fallback { argmax(&sums[j]) } else { argmax(row) };
                out[alive[j]] = Some(ExitDecision { prediction, confidence, exit: k, mflops, fallback });
            } else {
                keep.push(j as u32);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < alive.len() {
            state = state.select(&keep)?;
            alive = keep.iter().map(|&j| alive[j as usize]).collect();
            if ensemble {
                sums = keep.iter().map(|&j| std::mem::take(&mut sums[j as usize])).collect();
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, d)| d.ok_or_else(|| candle_core::Error::Msg(format!("early exit: sample {i} never exited"))))
        .collect()
}

/// Index of the largest value (the first on ties); 0 for an empty row.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Budgeted classification with real early exit: a sample leaves at the first
/// exit whose confidence (the measure the thresholds were calibrated with)
/// reaches that exit's threshold; one confident nowhere gets the last exit's
/// answer or, with [`anytime_calibrate::Fallback::Ensemble`], the mean of
/// every exit's logits. Its predictions equal those of
/// [`anytime_calibrate::simulate`] on the same logits.
pub fn classify_budgeted(
    model: &dyn MultiExit,
    xs: &Tensor,
    thresholds: &anytime_calibrate::Thresholds,
    exit_mflops: &[f64],
) -> candle_core::Result<Vec<ExitDecision>> {
    if thresholds.per_exit.len() != model.num_exits() {
        bail!("budgeted classification: {} thresholds for {} exits", thresholds.per_exit.len(), model.num_exits())
    }
    let ensemble = thresholds.fallback == anytime_calibrate::Fallback::Ensemble;
    early_exit(model, xs, exit_mflops, ensemble, |k, row| {
        let c = thresholds.confidence.score(row);
        (thresholds.stops(k, c), c)
    })
}

/// What an anytime deadline allowed.
#[derive(Debug, Clone)]
pub struct AnytimeResult {
    /// The deepest exit finished before the deadline (0 when even exit 0
    /// finished late: its logits are then still returned, see `late`).
    pub exit: usize,
    /// That exit's logits `[N, classes]`.
    pub logits: Tensor,
    /// Whether the deadline passed before exit 0 finished.
    pub late: bool,
    /// Time spent.
    pub elapsed: std::time::Duration,
}

/// Anytime prediction under a wall-clock deadline: runs stage after stage and
/// returns the deepest exit finished within `deadline`. Exit 0 is always
/// computed (a prediction must exist); later stages start only while time is
/// left, and a stage that finishes after the deadline is not used.
pub fn classify_anytime(
    model: &dyn MultiExit,
    xs: &Tensor,
    deadline: std::time::Duration,
) -> candle_core::Result<AnytimeResult> {
    if deadline.is_zero() {
        bail!("anytime: the deadline must be positive")
    }
    let start = std::time::Instant::now();
    let eval = Mode::inference();
    let mut state = model.begin(xs, &eval)?;
    let mut logits = model.advance(&mut state, &eval)?.logits;
    let late = start.elapsed() > deadline;
    let mut exit = 0;
    while !late && state.next_exit() < model.num_exits() && start.elapsed() < deadline {
        let next = model.advance(&mut state, &eval)?.logits;
        if start.elapsed() > deadline {
            break;
        }
        logits = next;
        exit += 1;
    }
    Ok(AnytimeResult { exit, logits, late, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msdnet::{MsdNet, MsdNetConfig};
    use anytime_calibrate::{Confidence, ExitScores, dynamic_eval, simulate};
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    fn model() -> MsdNet {
        let vm = VarMap::new();
        let cfg = MsdNetConfig { num_classes: 10, in_channels: 1, ..crate::registry::msdnet_tiny() };
        MsdNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).expect("model")
    }

    /// Real early exit (compaction) gives exactly the simulated rule's exits
    /// and predictions, for every architecture of the registry.
    #[test]
    fn real_early_exit_equals_the_simulated_rule() -> candle_core::Result<()> {
        let mut fell_back = 0;
        for name in ["msdnet-tiny", "ranet-fmnist", "resnet-mc-fmnist", "densenet-mc-fmnist", "scan-resnet18-fmnist"] {
            let vm = VarMap::new();
            let m = crate::registry::create_model(name, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
                .expect("registry model");
            real_equals_simulated(m.as_ref(), name, &mut fell_back)?;
        }
        // The ensemble fallback was exercised, with compaction, somewhere.
        assert!(fell_back > 0, "no sample of any model took the fallback");
        Ok(())
    }

    /// A seeded input batch `[n, 1, 28, 28]` (uniform in [-2, 2)).
    fn seeded_batch(n: usize, seed: u64) -> candle_core::Result<Tensor> {
        seeded_batch_hw(n, 28, seed)
    }

    /// A seeded input batch `[n, 1, hw, hw]` (uniform in [-2, 2)).
    fn seeded_batch_hw(n: usize, hw: usize, seed: u64) -> candle_core::Result<Tensor> {
        let mut state = seed;
        let v: Vec<f32> = (0..n * hw * hw)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, (n, 1, hw, hw), &Device::Cpu)
    }

    fn real_equals_simulated(m: &dyn MultiExit, name: &str, fell_back: &mut usize) -> candle_core::Result<()> {
        const N: usize = 40;
        let hw = crate::registry::lookup(name).expect("entry").data.input.1;
        let xs = seeded_batch_hw(N, hw, 7)?;
        let logits: Vec<Vec<Vec<f32>>> = m
            .forward_exits(&xs, &Mode::eval())?
            .iter()
            .map(|o| o.logits.to_vec2::<f32>())
            .collect::<candle_core::Result<_>>()?;
        let labels: Vec<u32> = (0..N as u32).map(|i| i % 10).collect();
        let costs = m.exit_costs(hw, hw).expect("costs").mflops(anytime_flops::Mode::Reference);
        for conf in [Confidence::MaxSoftmax, Confidence::Entropy, Confidence::Margin] {
            let scores = ExitScores::from_logits(&logits, &labels, conf).expect("scores");
            for q in [0.3, 1.0, 2.0] {
                let (mut th, _) = dynamic_eval(&scores, &costs, q).expect("q rule");
                // Quantile thresholds equal some sample's confidence, and a
                // compacted batch rounds logits differently in the last bits
                // (other GEMM shapes). Move each threshold into the nearest
                // gap between neighbouring confidences that is wider than
                // round-off, so that no sample sits on a threshold.
                // (The last exit's too: the ensemble fallback below uses it.)
                for (e, t) in th.per_exit.iter_mut().enumerate() {
                    let mut c: Vec<f32> = scores.conf[e].clone();
                    c.sort_by(f32::total_cmp);
                    let at = c.partition_point(|v| *v < *t);
                    // The usable gap (wider than round-off) nearest to it.
                    let usable = |i: &usize| c[*i] - c[*i - 1] > 2e-6 * c[*i].abs().max(1.0);
                    let i = (1..c.len()).filter(usable).min_by_key(|i| i.abs_diff(at));
                    // Random, un-normalised weights can saturate every
                    // confidence (all 1.0): then no sample leaves here.
                    *t = match i {
                        Some(i) => c[i - 1] + (c[i] - c[i - 1]) / 2.0,
                        None => c[c.len() - 1] + 1.0,
                    };
                }
                let sim = simulate(&th, &scores, &costs).expect("sim");
                let real = classify_budgeted(m, &xs, &th, &costs)?;
                let mut counts = vec![0usize; m.num_exits()];
                for (i, d) in real.iter().enumerate() {
                    counts[d.exit] += 1;
                    assert_eq!(d.prediction, scores.pred[d.exit][i], "{name}: sample {i}");
                    assert_eq!(d.mflops, costs[d.exit]);
                }
                assert_eq!(counts, sim.exit_counts, "{name}: {conf:?} q={q}");
                // The rule must exit early somewhere, or the comparison would
                // not exercise compaction (the tiny MSDNet's confidences never
                // saturate).
                if q < 1.0 && name == "msdnet-tiny" {
                    assert!(counts[0] > 0 && counts[0] < N, "{name}: {counts:?}");
                }
                // SCAN's fallback: confident nowhere → the mean of every
                // exit's logits. The last exit's threshold is the q rule's
                // median-ish gap, so some samples take it.
                let mut th = th.with_fallback(anytime_calibrate::Fallback::Ensemble);
                let last = m.num_exits() - 1;
                let mut c: Vec<f32> = scores.conf[last].clone();
                c.sort_by(f32::total_cmp);
                let mid = (1..c.len())
                    .filter(|&i| c[i] - c[i - 1] > 2e-6 * c[i].abs().max(1.0))
                    .min_by_key(|i| i.abs_diff(c.len() / 2));
                if let Some(i) = mid {
                    th.per_exit[last] = c[i - 1] + (c[i] - c[i - 1]) / 2.0;
                }
                let mut sim = simulate(&th, &scores, &costs).expect("sim");
                // The weights are random: when every sample that reaches the
                // last exit happens to be confident there, raise its
                // threshold above every confidence so they all fall back.
                if sim.fallback == 0 && sim.exit_counts[last] > 0 {
                    th.per_exit[last] = c[c.len() - 1] + 1.0;
                    sim = simulate(&th, &scores, &costs).expect("sim");
                }
                let real = classify_budgeted(m, &xs, &th, &costs)?;
                let ensemble = scores.ensemble.as_ref().expect("ensemble");
                for (i, d) in real.iter().enumerate() {
                    assert_eq!(d.exit, sim.exits[i], "{name}: sample {i}");
                    let want = if d.fallback { ensemble[i] } else { scores.pred[d.exit][i] };
                    assert_eq!(d.prediction, want, "{name}: ensemble sample {i}");
                }
                assert_eq!(real.iter().filter(|d| d.fallback).count(), sim.fallback, "{name}: {conf:?} q={q}");
                if sim.exit_counts[last] > 0 {
                    assert!(sim.fallback > 0, "{name}: no sample took the fallback");
                }
                *fell_back += sim.fallback;
            }
        }
        Ok(())
    }

    /// Frozen modules run in eval mode inside a training pass: their batch
    /// norm statistics stay bit-identical while the others' change, and an
    /// exit computed only by frozen modules equals its eval-mode output.
    #[test]
    fn frozen_modules_keep_their_statistics() -> candle_core::Result<()> {
        let vm = VarMap::new();
        let cfg = MsdNetConfig { num_classes: 10, in_channels: 1, ..crate::registry::msdnet_tiny() };
        let m = MsdNet::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).expect("model");
        let stats = || -> candle_core::Result<Vec<(String, Vec<f32>)>> {
            let data = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut v: Vec<(String, Vec<f32>)> = data
                .iter()
                .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
                .map(|(k, t)| Ok((k.clone(), t.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
                .collect::<candle_core::Result<_>>()?;
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(v)
        };
        let xs = seeded_batch(8, 3)?;
        let eval = m.forward_exits(&xs, &Mode::eval())?;
        let before = stats()?;
        let frozen = ["blocks.0".to_string(), "classifier.0".to_string()];
        let mode = Mode::train().with_frozen(frozen.clone());
        let train = m.forward_exits(&xs, &mode)?;
        let after = stats()?;
        let is_frozen = |k: &str| frozen.iter().any(|p| anytime_blocks::mode::within(k, p));
        let (mut kept, mut changed) = (0, 0);
        for ((k, a), (_, b)) in before.iter().zip(&after) {
            if is_frozen(k) {
                assert_eq!(a, b, "{k} is frozen but its statistics changed");
                kept += 1;
            } else if a != b {
                changed += 1;
            }
        }
        assert!(kept > 0 && changed > 0, "{kept} frozen, {changed} changed");
        // Exit 0 reads only block 0 and classifier 0, both frozen.
        assert_eq!(train[0].logits.to_vec2::<f32>()?, eval[0].logits.to_vec2::<f32>()?);
        assert_eq!(train[0].feature.to_vec2::<f32>()?, eval[0].feature.to_vec2::<f32>()?);
        // Exit 1 is not frozen: batch statistics change it.
        assert_ne!(train[1].logits.to_vec2::<f32>()?, eval[1].logits.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn deadlines() -> candle_core::Result<()> {
        let m = model();
        let xs = Tensor::randn(0f32, 1., (2, 1, 28, 28), &Device::Cpu)?;
        let r = classify_anytime(&m, &xs, std::time::Duration::from_secs(60))?;
        assert_eq!(r.exit, m.num_exits() - 1);
        // The anytime pass is an inference pass (folded batch norms).
        let full = m.forward_exits(&xs, &Mode::inference())?;
        assert_eq!(r.logits.to_vec2::<f32>()?, full[m.num_exits() - 1].logits.to_vec2::<f32>()?);
        let r = classify_anytime(&m, &xs, std::time::Duration::from_nanos(1))?;
        assert_eq!(r.exit, 0);
        assert!(classify_anytime(&m, &xs, std::time::Duration::ZERO).is_err());
        Ok(())
    }
}
