//! The multi-exit model interface, lazy anytime evaluation and real early
//! exit with batch compaction.
//!
//! A [`MultiExit`] model runs in *stages*: stage k computes whatever exit k
//! needs beyond what is already computed (MSDNet's lazy evaluation) and
//! returns exit k's logits. [`MultiExit::begin`] starts a pass and
//! [`MultiExit::advance`] runs one stage; the [`ExitState`] between stages
//! holds the features later stages reuse and can be *compacted* to a subset of
//! the batch, so samples that have left early cost nothing afterwards.

use crate::error::{ModelError, Result};
use anytime_flops::ExitCosts;
use candle_core::{Tensor, bail};

/// The features a lazy pass carries from one stage to the next.
///
/// The layout of `feats` is private to each model; every tensor's first
/// dimension is the batch.
#[derive(Debug, Clone)]
pub struct ExitState {
    next: usize,
    batch: usize,
    feats: Vec<Vec<Tensor>>,
}

impl ExitState {
    /// A state before stage `next` for a batch of `batch` samples.
    pub fn new(next: usize, batch: usize, feats: Vec<Vec<Tensor>>) -> Self {
        Self { next, batch, feats }
    }

    /// Index of the exit the next stage computes.
    pub fn next_exit(&self) -> usize {
        self.next
    }

    /// Samples still in the batch.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// The carried features (model-specific layout).
    pub fn feats(&self) -> &[Vec<Tensor>] {
        &self.feats
    }

    /// Replaces the features and moves to the next stage.
    pub fn set(&mut self, feats: Vec<Vec<Tensor>>) {
        self.feats = feats;
        self.next += 1;
    }

    /// Keeps only the samples at positions `keep` (in the current batch), in
    /// that order: the batch compaction behind real early exit.
    pub fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        if let Some(&bad) = keep.iter().find(|&&i| i as usize >= self.batch) {
            bail!("early exit: sample {bad} is not in a batch of {}", self.batch)
        }
        let feats = self
            .feats
            .iter()
            .map(|group| group.iter().map(|t| anytime_ops::batch::select_rows(t, keep)).collect())
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { next: self.next, batch: keep.len(), feats })
    }
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
    /// computes nothing else.
    fn begin(&self, xs: &Tensor, train: bool) -> candle_core::Result<ExitState>;

    /// Runs the next stage and returns its exit's logits `[N, classes]`.
    fn advance(&self, state: &mut ExitState, train: bool) -> candle_core::Result<Tensor>;

    /// Logits of every exit, in order.
    ///
    /// # Shapes
    /// `[N, C, H, W]` → `num_exits` × `[N, classes]`.
    fn forward_exits(&self, xs: &Tensor, train: bool) -> candle_core::Result<Vec<Tensor>> {
        let mut state = self.begin(xs, train)?;
        (0..self.num_exits()).map(|_| self.advance(&mut state, train)).collect()
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

/// A lazy iterator over a model's exits: the k-th item is exit k's logits,
/// computed only when asked for, so a caller can stop anywhere.
pub struct Anytime<'a> {
    model: &'a dyn MultiExit,
    state: ExitState,
}

impl<'a> Anytime<'a> {
    /// Starts an eval-mode pass over `xs`.
    pub fn new(model: &'a dyn MultiExit, xs: &Tensor) -> candle_core::Result<Self> {
        Ok(Self { model, state: model.begin(xs, false)? })
    }

    /// The state between stages (for compaction by the caller).
    pub fn state_mut(&mut self) -> &mut ExitState {
        &mut self.state
    }
}

impl Iterator for Anytime<'_> {
    type Item = candle_core::Result<Tensor>;

    fn next(&mut self) -> Option<Self::Item> {
        (self.state.next_exit() < self.model.num_exits()).then(|| self.model.advance(&mut self.state, false))
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
    mut rule: impl FnMut(usize, &[f32]) -> (bool, f32),
) -> candle_core::Result<Vec<ExitDecision>> {
    let k_exits = model.num_exits();
    if exit_mflops.len() != k_exits {
        bail!("early exit: {} exit costs for a model with {k_exits} exits", exit_mflops.len())
    }
    let n = xs.dim(0)?;
    let mut state = model.begin(xs, false)?;
    let mut alive: Vec<usize> = (0..n).collect();
    let mut out: Vec<Option<ExitDecision>> = vec![None; n];
    for (k, &mflops) in exit_mflops.iter().enumerate() {
        let rows = model.advance(&mut state, false)?.to_vec2::<f32>()?;
        let last = k + 1 == k_exits;
        let mut keep = Vec::with_capacity(rows.len());
        for (j, row) in rows.iter().enumerate() {
            let (stop, confidence) = rule(k, row);
            if stop || last {
                out[alive[j]] = Some(ExitDecision { prediction: argmax(row), confidence, exit: k, mflops });
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
