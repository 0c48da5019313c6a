//! SVG plots of training curves. The plotting itself lives in
//! [`anytime_eval::plot`] (with the evaluation curves); this module draws a
//! run's history with it.

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use anytime_eval::plot::EpochPoint;
use std::path::Path;

pub use anytime_eval::plot::Series;

/// Writes `path` (atomically): training loss, and held-out accuracy per exit
/// (and of the weight average's last exit, where there is one), against
/// epochs.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let points: Vec<EpochPoint> = history
        .iter()
        .map(|m| EpochPoint {
            epoch: m.epoch,
            train_loss: m.train_loss,
            val_acc: m.val_acc.clone(),
            swa_val_acc: m.swa_val_acc.clone(),
        })
        .collect();
    anytime_eval::plot::training_curves(path, &points).map_err(|e| match e {
        anytime_eval::Error::Io { path, msg } => Error::Io { path, msg },
        e => Error::Io { path: path.to_path_buf(), msg: e.to_string() },
    })
}
