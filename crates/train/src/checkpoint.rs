//! Resumable training checkpoints.
//!
//! A checkpoint is one safetensors file holding the model's variables
//! (`model.<key>`, running statistics included), the optimiser state
//! (`optim.<key>`) and, in the header, the [`TrainState`] as JSON: epoch,
//! next batch, step counts, the seed, the best result so far and the metrics
//! history. Writes are atomic (temporary file, then rename), so a run killed
//! at any moment leaves the previous checkpoint intact.

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Header key holding the [`TrainState`] JSON.
const STATE_KEY: &str = "anytime.train_state";

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// The next batch of that epoch.
    pub batch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// The run's seed (order, augmentation and initialisation derive from it).
    pub seed: u64,
    /// Best final-exit validation accuracy so far, and its epoch.
    pub best: Option<(f64, usize)>,
    /// One entry per finished epoch.
    pub history: Vec<EpochMetrics>,
    /// Training seconds spent so far (across resumes).
    pub seconds: f64,
    /// Running sums of the epoch in progress, so a resumed epoch reports
    /// the same training metrics as an uninterrupted one.
    #[serde(default)]
    pub partial: PartialEpoch,
    /// The settings the run was started with (resuming checks them).
    #[serde(default)]
    pub spec: Option<crate::trainer::TrainSpec>,
    /// The weight file the run started from, if not the seeded
    /// initialisation.
    #[serde(default)]
    pub init_from: Option<String>,
    /// The state of the objective's random generator at the checkpoint
    /// (absent before the first checkpoint: a fresh generator).
    #[serde(default)]
    pub rng: Option<crate::objective::RngState>,
}

impl TrainState {
    /// How many of the first `epochs` finished epochs the weight average
    /// holds (0 without weight averaging).
    pub fn averaged_epochs(&self, epochs: usize) -> usize {
        self.spec.as_ref().and_then(|s| s.swa.as_ref()).map_or(0, |s| epochs.saturating_sub(s.start_epoch))
    }

    /// Whether the best weights are the weight average: the trainer keeps the
    /// average when its held-out final exit beats the plain weights' in that
    /// epoch.
    pub fn best_is_average(&self) -> bool {
        let last = |v: &[f64]| v.last().copied();
        self.best.and_then(|(_, e)| self.history.get(e)).is_some_and(|m| {
            m.swa_val_acc.as_deref().and_then(last).is_some_and(|a| last(&m.val_acc).is_none_or(|p| a > p))
        })
    }
}

/// Running sums of an unfinished epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialEpoch {
    /// Sum of batch losses.
    pub loss_sum: f64,
    /// Batches done.
    pub batches: usize,
    /// Correct training predictions per exit.
    pub correct: Vec<u64>,
    /// Training images seen.
    pub total: u64,
    /// Sums of the objective's logged scalars.
    #[serde(default)]
    pub logged: BTreeMap<String, f64>,
}

/// A checkpoint in memory.
pub struct Checkpoint {
    /// Model variables by reference key.
    pub model: BTreeMap<String, Tensor>,
    /// Optimiser state tensors.
    pub optim: BTreeMap<String, Tensor>,
    /// Progress.
    pub state: TrainState,
    /// Running mean of the parameters (weight averaging; empty otherwise).
    pub swa: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Serialises and writes atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut all: Vec<(String, &Tensor)> = Vec::with_capacity(self.model.len() + self.optim.len());
        all.extend(self.model.iter().map(|(k, t)| (format!("model.{k}"), t)));
        all.extend(self.optim.iter().map(|(k, t)| (format!("optim.{k}"), t)));
        all.extend(self.swa.iter().map(|(k, t)| (format!("swa.{k}"), t)));
        let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&self.state)?)]);
        let bytes = safetensors::serialize(all.iter().map(|(k, t)| (k.as_str(), *t)), Some(meta))
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })?;
        anytime_io::atomic_write(path, &bytes)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })
    }

    /// Reads a checkpoint; a truncated or corrupt file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        let state = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(STATE_KEY))
            .ok_or_else(|| bad("no training state in the header (not a training checkpoint)".into()))?;
        let state: TrainState = serde_json::from_str(state).map_err(|e| bad(format!("bad training state: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let (mut model, mut optim, mut swa) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (k, t) in tensors {
            if let Some(name) = k.strip_prefix("model.") {
                model.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("optim.") {
                optim.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("swa.") {
                swa.insert(name.to_string(), t);
            } else {
                return Err(bad(format!("unexpected tensor {k}")));
            }
        }
        Ok(Self { model, optim, state, swa })
    }
}
