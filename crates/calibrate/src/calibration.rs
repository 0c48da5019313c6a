//! Calibrations saved as JSON and tied to the weights they were made for.

use crate::confidence::Confidence;
use crate::rules::{Thresholds, check_costs};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A saved threshold calibration: the thresholds (with their confidence
/// measure), how they were found, what they did on the held-out set, and the
/// SHA-256 of the weights they belong to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Registry model name.
    pub model: String,
    /// SHA-256 (hex) of the weights the thresholds were computed with.
    pub weights_sha256: String,
    /// How they were found (q or budget included).
    pub method: Method,
    /// The thresholds and their confidence measure.
    pub thresholds: Thresholds,
    /// Cumulative MFLOPs per image at each exit, `[exits]`.
    pub exit_mflops: Vec<f64>,
    /// Held-out images used.
    pub holdout_images: usize,
    /// Expected accuracy: held-out accuracy with these thresholds, in [0, 1].
    pub holdout_accuracy: f64,
    /// Expected cost: held-out average MFLOPs per image with these thresholds.
    pub holdout_mflops: f64,
}

impl Calibration {
    /// Writes pretty JSON atomically: a temporary file in the same directory,
    /// fsync, rename, so readers see the old file or the new one, never a
    /// partial one. A calibration that [`Calibration::load`] would reject is
    /// not written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let invalid = |reason: String| Error::Invalid { path: path.into(), reason };
        self.check().map_err(invalid)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| invalid(e.to_string()))?;
        atomic_write(path, text.as_bytes()).map_err(|source| Error::Io { path: path.into(), source })
    }

    /// Reads a calibration and checks it was made for the weights whose
    /// SHA-256 is `weights_sha256` (hex, either case) and that its contents
    /// fit together.
    pub fn load(path: &Path, weights_sha256: &str) -> Result<Self> {
        // A calibration is a few hundred bytes; a huge file is not one.
        let len = std::fs::metadata(path).map_err(|source| Error::Io { path: path.into(), source })?.len();
        if len > 1 << 24 {
            return Err(Error::Invalid { path: path.into(), reason: format!("{len} bytes is not a calibration file") });
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::parse(path, &text, weights_sha256)
    }

    /// [`Calibration::load`] on text already read; `path` names it in errors.
    pub fn parse(path: &Path, text: &str, weights_sha256: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text).map_err(|source| Error::Malformed { path: path.into(), source })?;
        if !c.weights_sha256.eq_ignore_ascii_case(weights_sha256) {
            return Err(Error::WeightsMismatch {
                path: path.into(),
                calibrated: c.weights_sha256,
                given: weights_sha256.into(),
            });
        }
        c.check().map_err(|reason| Error::Invalid { path: path.into(), reason })?;
        Ok(c)
    }

    /// What is inconsistent in a loaded calibration, if anything.
    fn check(&self) -> std::result::Result<(), String> {
        let (t, m) = (self.thresholds.per_exit.len(), self.exit_mflops.len());
        if t == 0 || t != m {
            return Err(format!("{t} thresholds for {m} exit costs (one per exit, at least one)"));
        }
        if let Some(exit) = self.thresholds.per_exit.iter().position(|v| v.is_nan()) {
            return Err(Error::NanThreshold(exit).to_string());
        }
        check_costs(&self.exit_mflops).map_err(|e| e.to_string())?;
        if !(0.0..=1.0).contains(&self.holdout_accuracy) {
            return Err(format!("holdout_accuracy {} is not in [0, 1]", self.holdout_accuracy));
        }
        if !self.holdout_mflops.is_finite() {
            return Err(format!("holdout_mflops {} is not finite", self.holdout_mflops));
        }
        Ok(())
    }

    /// The confidence measure of the thresholds.
    pub fn confidence(&self) -> Confidence {
        self.thresholds.confidence
    }
}

/// Writes `bytes` to `<path>.tmp-<pid>-<n>`, fsyncs it, renames it over
/// `path` and fsyncs the directory; the temporary is removed on failure.
fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name =
        path.file_name().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    // Only a regular file is replaced (not a link, directory, device or FIFO).
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is not a regular file (a link, directory, device or FIFO); refusing to replace it",
            ));
        }
        _ => {}
    }
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    };
    write().inspect_err(|_| {
        // Best effort: the write already failed, and that error is the one to report.
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("anytime-calibrate-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn example() -> Calibration {
        Calibration {
            model: "msdnet_tiny".into(),
            weights_sha256: "abc123".into(),
            method: Method::Genetic { budget_mflops: Some(1.5), lambda: 0.1 },
            thresholds: Thresholds::new(Confidence::Entropy, vec![0.9, f32::MAX, f32::MIN]),
            exit_mflops: vec![1.0, 2.0, 3.0],
            holdout_images: 10,
            holdout_accuracy: 0.9,
            holdout_mflops: 1.5,
        }
    }

    #[test]
    fn round_trip_leaves_no_temporaries() {
        let dir = scratch("round-trip");
        let path = dir.join("cal.json");
        std::fs::write(&path, "old contents").unwrap();
        example().save(&path).unwrap();
        let back = Calibration::load(&path, "ABC123").unwrap();
        assert_eq!(back, example());
        assert_eq!(back.confidence(), Confidence::Entropy);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"kind\": \"genetic\"") && text.contains("\"confidence\": \"entropy\""), "{text}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["cal.json"]);
        // Inconsistent calibrations are not written.
        let nan = Calibration { holdout_mflops: f64::NAN, ..example() };
        let e = nan.save(&path).unwrap_err().to_string();
        assert!(e.ends_with("cal.json: invalid calibration: holdout_mflops NaN is not finite"), "{e}");
        // A missing directory is an I/O error naming the file.
        let e = example().save(&dir.join("missing/cal.json")).unwrap_err().to_string();
        assert!(e.contains("missing/cal.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_errors_name_the_problem() {
        let dir = scratch("load-errors");
        let path = dir.join("cal.json");
        example().save(&path).unwrap();
        let e = Calibration::load(&path, "def456").unwrap_err().to_string();
        assert!(e.ends_with("cal.json: the calibration was made for weights abc123, these weights are def456"), "{e}");
        let write_and_load = |c: &Calibration| {
            std::fs::write(&path, serde_json::to_string(c).unwrap()).unwrap();
            Calibration::load(&path, "abc123").unwrap_err().to_string()
        };
        let short = Calibration { exit_mflops: vec![1.0, 2.0], ..example() };
        assert!(write_and_load(&short).contains("invalid calibration: 3 thresholds for 2 exit costs"));
        let decreasing = Calibration { exit_mflops: vec![1.0, 3.0, 2.0], ..example() };
        assert!(write_and_load(&decreasing).contains("cumulative"));
        let accuracy = Calibration { holdout_accuracy: 90.0, ..example() };
        assert!(write_and_load(&accuracy).contains("holdout_accuracy 90 is not in [0, 1]"));
        std::fs::write(&path, "{\"model\": 3}").unwrap();
        assert!(Calibration::load(&path, "abc123").unwrap_err().to_string().contains("not a calibration file"));
        let e = Calibration::load(&dir.join("absent.json"), "abc123").unwrap_err();
        assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("absent.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
