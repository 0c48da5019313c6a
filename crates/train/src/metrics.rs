//! Training metrics: per-epoch records and their JSON-lines log. Per-exit
//! accuracy and the evaluation passes live in [`anytime_eval::metrics`] and
//! are re-exported here.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use anytime_eval::metrics::{AnytimeEval, ExitAccuracy, evaluate, evaluate_anytime};

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
