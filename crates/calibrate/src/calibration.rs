//! Calibrations saved as JSON and tied to the weights they were made for.

use crate::confidence::Confidence;
use crate::rules::Thresholds;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// How thresholds were found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Method {
    /// MSDNet's dynamic-evaluation rule with this q.
    Q {
        /// The geometric factor.
        q: f64,
    },
    /// The budget solver.
    Solver {
        /// Target average MFLOPs per image.
        budget_mflops: f64,
    },
    /// The genetic search.
    Genetic {
        /// Target average MFLOPs per image, if any.
        budget_mflops: Option<f64>,
        /// Cost weight in the fitness.
        lambda: f64,
    },
}

/// A saved threshold calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Registry model name.
    pub model: String,
    /// SHA-256 of the weights the thresholds were computed with.
    pub weights_sha256: String,
    /// How they were found.
    pub method: Method,
    /// The thresholds.
    pub thresholds: Thresholds,
    /// Cumulative MFLOPs per exit.
    pub exit_mflops: Vec<f64>,
    /// Held-out images used.
    pub holdout_images: usize,
    /// Held-out accuracy with these thresholds.
    pub holdout_accuracy: f64,
    /// Held-out average MFLOPs per image with these thresholds.
    pub holdout_mflops: f64,
}

impl Calibration {
    /// Writes pretty JSON atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |msg: String| Error::File { path: path.display().to_string(), msg };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| err("not a file path".into()))?.to_string_lossy();
        let tmp = dir.join(format!("{name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e.to_string())
        })
    }

    /// Reads a calibration and checks it was made for the weights whose
    /// SHA-256 is `weights_sha256`.
    pub fn load(path: &Path, weights_sha256: &str) -> Result<Self> {
        let err = |msg: String| Error::File { path: path.display().to_string(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let c: Self = serde_json::from_str(&text).map_err(|e| err(format!("not a calibration file: {e}")))?;
        if c.weights_sha256 != weights_sha256 {
            return Err(err(format!(
                "the calibration was made for weights {}, these weights are {weights_sha256}",
                c.weights_sha256
            )));
        }
        if c.thresholds.per_exit.len() != c.exit_mflops.len() || c.thresholds.per_exit.is_empty() {
            return Err(err("thresholds and exit costs disagree".into()));
        }
        Ok(c)
    }

    /// The confidence measure of the thresholds.
    pub fn confidence(&self) -> Confidence {
        self.thresholds.confidence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hash_check() {
        let dir = std::env::temp_dir().join(format!("anytime-cal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cal.json");
        let c = Calibration {
            model: "m".into(),
            weights_sha256: "abc".into(),
            method: Method::Q { q: 0.5 },
            thresholds: Thresholds { confidence: Confidence::MaxSoftmax, per_exit: vec![0.9, f32::MIN] },
            exit_mflops: vec![1.0, 2.0],
            holdout_images: 10,
            holdout_accuracy: 0.9,
            holdout_mflops: 1.5,
        };
        c.save(&path).unwrap();
        let back = Calibration::load(&path, "abc").unwrap();
        assert_eq!(back.thresholds.per_exit[0], 0.9);
        let err = Calibration::load(&path, "def").unwrap_err().to_string();
        assert!(err.contains("made for weights abc, these weights are def"), "{err}");
        std::fs::write(&path, "{}").unwrap();
        assert!(Calibration::load(&path, "abc").unwrap_err().to_string().contains("not a calibration"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
