//! Training and evaluation metrics: per-exit accuracy, per-epoch records and
//! their JSON-lines log.

use crate::error::{Error, Result};
use anytime_models::MultiExit;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Counts correct top-1 predictions per exit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitAccuracy {
    /// Correct predictions per exit.
    pub correct: Vec<u64>,
    /// Samples seen.
    pub total: u64,
}

impl ExitAccuracy {
    /// Adds one batch: `logits` per exit `[N, classes]`, `targets` `[N]` u32.
    pub fn update(&mut self, logits: &[Tensor], targets: &Tensor) -> candle_core::Result<()> {
        let t = targets.to_vec1::<u32>()?;
        if self.correct.len() < logits.len() {
            self.correct.resize(logits.len(), 0);
        }
        for (k, l) in logits.iter().enumerate() {
            let pred = l.argmax(1)?.to_vec1::<u32>()?;
            self.correct[k] += pred.iter().zip(&t).filter(|(p, y)| p == y).count() as u64;
        }
        self.total += t.len() as u64;
        Ok(())
    }

    /// Accuracy per exit as fractions in [0, 1].
    pub fn fractions(&self) -> Vec<f64> {
        self.correct.iter().map(|&c| c as f64 / self.total.max(1) as f64).collect()
    }
}

/// What one epoch produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Learning rate at the epoch's start.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy per exit (on augmented batches, in training mode).
    pub train_acc: Vec<f64>,
    /// Held-out accuracy per exit.
    pub val_acc: Vec<f64>,
    /// Training throughput.
    pub images_per_s: f64,
    /// Training seconds so far.
    pub seconds: f64,
    /// Held-out accuracy per exit of the weight average (weight averaging only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_val_acc: Option<Vec<f64>>,
    /// Epoch means of the scalars the objective logs (e.g. its loss terms).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub train_logged: std::collections::BTreeMap<String, f64>,
}

/// Evaluates every exit on `batches` (eval mode).
pub fn evaluate<I>(model: &dyn MultiExit, batches: I) -> candle_core::Result<ExitAccuracy>
where
    I: IntoIterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    let mut acc = ExitAccuracy::default();
    for b in batches {
        let (xs, ys) = b?;
        let exits = crate::objective::forward(model, &xs, &anytime_blocks::Mode::eval())?;
        acc.update(&exits.into_iter().map(|e| e.logits).collect::<Vec<_>>(), &ys)?;
    }
    Ok(acc)
}

/// Rewrites the metrics log (one JSON object per line) atomically.
pub fn write_jsonl(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut text = String::new();
    for m in history {
        text.push_str(&serde_json::to_string(m)?);
        text.push('\n');
    }
    anytime_io::atomic_write(path, text.as_bytes())
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}

/// Per-exit accuracy together with the wall-clock time to reach each exit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnytimeEval {
    /// Correct predictions per exit.
    pub accuracy: ExitAccuracy,
    /// Cumulative seconds spent reaching each exit (lazy evaluation: exit k
    /// includes every stage before it), summed over all batches.
    pub seconds: Vec<f64>,
}

impl AnytimeEval {
    /// Milliseconds per image to reach each exit.
    pub fn ms_per_image(&self) -> Vec<f64> {
        self.seconds.iter().map(|s| 1e3 * s / self.accuracy.total.max(1) as f64).collect()
    }
}

/// Evaluates every exit with the lazy anytime iterator, timing each stage.
pub fn evaluate_anytime<I>(model: &dyn MultiExit, batches: I) -> candle_core::Result<AnytimeEval>
where
    I: IntoIterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    let k = model.num_exits();
    let mut out = AnytimeEval { accuracy: ExitAccuracy::default(), seconds: vec![0.0; k] };
    for b in batches {
        let (xs, ys) = b?;
        let start = std::time::Instant::now();
        let mut logits = Vec::with_capacity(k);
        for (i, l) in anytime_models::Anytime::new(model, &xs)?.enumerate() {
            // Force the computation before reading the clock.
            let l = l?.logits.contiguous()?;
            out.seconds[i] += start.elapsed().as_secs_f64();
            logits.push(l);
        }
        out.accuracy.update(&logits, &ys)?;
    }
    Ok(out)
}
