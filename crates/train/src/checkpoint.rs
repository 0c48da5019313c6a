//! Resumable training checkpoints.
//!
//! A checkpoint is one safetensors file holding the model's variables
//! (`model.<key>`, running statistics included), the optimiser state
//! (`optim.<key>`) and, in the header, the [`TrainState`] as JSON: epoch,
//! next batch, step counts, the seed, the best result so far and the metrics
//! history. Writes are atomic (temporary file, then rename), so a run killed
//! at any moment leaves the previous checkpoint intact.
//!
//! The header also holds a SHA-256 over the state JSON and every tensor byte
//! (the file's data section); loading verifies it, so a flipped bit, a
//! removed or altered tensor or an edited state is refused. (Checkpoints
//! written before the checksum existed load without the check.)

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Header key holding the [`TrainState`] JSON.
const STATE_KEY: &str = "anytime.train_state";
/// Header key holding the SHA-256 of the state JSON and the data section.
const CHECKSUM_KEY: &str = "anytime.checksum";

/// SHA-256 (hex) of the state JSON's length and bytes, then the tensor data.
fn checksum(state: &str, data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((state.len() as u64).to_le_bytes());
    h.update(state.as_bytes());
    h.update(data);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The data section of a safetensors file: what follows the 8-byte header
/// length and the header.
fn data_section(bytes: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    bytes.get(8usize.checked_add(usize::try_from(n).ok()?)?..)
}

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
    /// Checks the state against the plan: `epochs` epochs of `batches`
    /// batches. A state outside it (a later epoch, a batch past the end, more
    /// steps than the plan has, a history that does not match the epoch) is
    /// an error saying what is wrong.
    pub fn validate(&self, epochs: usize, batches: usize) -> std::result::Result<(), String> {
        if self.epoch > epochs {
            return Err(format!("epoch {} is past the plan's {epochs} epochs", self.epoch));
        }
        if self.batch > batches {
            return Err(format!("batch {} is past the {batches} batches of an epoch", self.batch));
        }
        let most = (epochs as u64).saturating_mul(batches as u64);
        if self.step > most {
            return Err(format!("{} optimiser steps, more than the plan's {most}", self.step));
        }
        if self.history.len() != self.epoch {
            return Err(format!(
                "{} finished epochs in the history, but the run is at epoch {}",
                self.history.len(),
                self.epoch
            ));
        }
        if let Some((acc, e)) = self.best
            && (e >= self.history.len() || !(0.0..=1.0).contains(&acc))
        {
            return Err(format!("best result {acc} at epoch {e} does not fit the history"));
        }
        if !(self.seconds.is_finite() && self.seconds >= 0.0) {
            return Err(format!("training time {} s is not a duration", self.seconds));
        }
        Ok(())
    }

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
        let state = serde_json::to_string(&self.state)?;
        let err = |e: safetensors::SafeTensorError| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() };
        // Serialise once with a placeholder checksum of the right length,
        // hash the data section, then write the digest over the placeholder
        // in the header (the header's length does not change).
        let placeholder = "0".repeat(64);
        let meta =
            HashMap::from([(STATE_KEY.to_string(), state.clone()), (CHECKSUM_KEY.to_string(), placeholder.clone())]);
        let mut bytes = safetensors::serialize(all.iter().map(|(k, t)| (k.as_str(), *t)), Some(meta)).map_err(err)?;
        let missing =
            || Error::Checkpoint { path: path.to_path_buf(), msg: "serialised file has no checksum slot".into() };
        let sum = checksum(&state, data_section(&bytes).ok_or_else(missing)?);
        let slot = format!("\"{CHECKSUM_KEY}\":\"{placeholder}\"");
        let header_end = bytes.len() - data_section(&bytes).ok_or_else(missing)?.len();
        let at = bytes[..header_end].windows(slot.len()).position(|w| w == slot.as_bytes()).ok_or_else(missing)?
            + slot.len()
            - 65;
        bytes[at..at + 64].copy_from_slice(sum.as_bytes());
        anytime_io::atomic_write(path, &bytes)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })
    }

    /// Reads a checkpoint; a truncated or corrupt file is an error naming it.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
        let len = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?.len();
        if len > anytime_io::MAX_FILE_BYTES {
            return Err(bad(format!("{len} bytes, more than a checkpoint of any supported model")));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(path, &bytes)
    }

    /// [`Checkpoint::load`] on bytes already read; `path` names them in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint { path: path.to_path_buf(), msg };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a checkpoint: {e}")))?;
        let meta = header.metadata().as_ref();
        let state = meta
            .and_then(|m| m.get(STATE_KEY))
            .ok_or_else(|| bad("no training state in the header (not a training checkpoint)".into()))?;
        if let Some(want) = meta.and_then(|m| m.get(CHECKSUM_KEY)) {
            let data = data_section(bytes).ok_or_else(|| bad("truncated: no data section".into()))?;
            if checksum(state, data) != *want {
                return Err(bad(
                    "its checksum does not match its contents (a changed, missing or corrupt tensor or state); it cannot be resumed"
                        .into(),
                ));
            }
        }
        let state: TrainState = serde_json::from_str(state).map_err(|e| bad(format!("bad training state: {e}")))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: usize, batch: usize, step: u64, history: usize) -> TrainState {
        let m = EpochMetrics {
            epoch: 0,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: vec![0.5],
            val_acc: vec![0.5],
            images_per_s: 1.0,
            seconds: 1.0,
            train_logged: BTreeMap::new(),
            swa_val_acc: None,
        };
        TrainState {
            epoch,
            batch,
            step,
            seed: 1,
            best: None,
            history: vec![m; history],
            seconds: 1.0,
            partial: PartialEpoch::default(),
            spec: None,
            init_from: None,
            rng: None,
        }
    }

    /// A state outside its plan (absurd epochs, batches or steps, a history
    /// that does not match) is refused, naming what is wrong.
    #[test]
    fn states_outside_the_plan_are_refused() {
        assert!(state(2, 5, 25, 2).validate(3, 10).is_ok());
        assert!(state(3, 0, 30, 3).validate(3, 10).is_ok(), "a finished run");
        let err = |s: TrainState| s.validate(3, 10).unwrap_err();
        assert!(err(state(1_000_000, 0, 0, 0)).contains("epoch 1000000"));
        assert!(err(state(1, 11, 11, 1)).contains("batch 11"));
        assert!(err(state(1, 0, u64::MAX, 1)).contains("optimiser steps"));
        assert!(err(state(2, 0, 20, 1)).contains("history"));
        let mut bad = state(1, 0, 10, 1);
        bad.best = Some((0.9, 5));
        assert!(err(bad).contains("best"));
        let mut bad = state(1, 0, 10, 1);
        bad.seconds = f64::NAN;
        assert!(err(bad).contains("time"));
    }
}
