//! Typed reports of an evaluation, as `anytime eval --json` prints them and
//! `docs/data/<model>/*.json` keeps them.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which images were evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The test set.
    Test,
    /// The held-out part of the training set (used for calibration).
    Val,
}

impl Split {
    /// `test` or `val`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Val => "val",
        }
    }
}

/// One exit of the anytime pass: every image through every exit up to here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExitReport {
    /// The exit (0-based).
    pub exit: usize,
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Top-5 accuracy in [0, 1] (models of more than five classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top5: Option<f64>,
    /// Cumulative MFLOPs per image to reach this exit.
    pub mflops: f64,
    /// Cumulative wall-clock milliseconds per image to reach this exit.
    pub ms_per_image: f64,
}

/// Real early exit with one set of thresholds over the evaluated images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EarlyExitRun {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Average MFLOPs spent per image.
    pub mflops: f64,
    /// Wall-clock milliseconds per image.
    pub ms_per_image: f64,
    /// Images that left at each exit.
    pub exit_counts: Vec<usize>,
    /// Wall-clock saving over FLOP saving, both against running every exit
    /// ([`saving_ratio`]); `None` when nothing is saved.
    #[serde(default)]
    pub saving_ratio: Option<f64>,
}

/// One point of the q sweep: MSDNet's thresholds for `q` from the held-out
/// split, then real early exit on the evaluated images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The q of the exit shares `p_k ∝ q^(k+1)`.
    pub q: f64,
    /// Accuracy of these thresholds on the held-out split.
    pub holdout_accuracy: f64,
    /// Average MFLOPs of these thresholds on the held-out split.
    pub holdout_mflops: f64,
    /// The measurement on the evaluated images.
    #[serde(flatten)]
    pub run: EarlyExitRun,
}

/// How a [`MethodPoint`]'s thresholds were found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// MSDNet's q rule: the most accurate q of the sweep within the budget.
    Q,
    /// The budget solver.
    Solver,
    /// SCAN's genetic search (last-exit fallback).
    Genetic,
    /// SCAN's genetic search with SCAN's ensemble fallback.
    GeneticEnsemble,
}

impl ThresholdMethod {
    /// Every method, in the order reports list them.
    pub const ALL: [ThresholdMethod; 4] =
        [ThresholdMethod::Q, ThresholdMethod::Solver, ThresholdMethod::Genetic, ThresholdMethod::GeneticEnsemble];

    /// Its name in tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            ThresholdMethod::Q => "q rule",
            ThresholdMethod::Solver => "budget solver",
            ThresholdMethod::Genetic => "genetic",
            ThresholdMethod::GeneticEnsemble => "genetic + ensemble",
        }
    }
}

/// One budget of the threshold-method comparison: thresholds searched on
/// the held-out split for the budget, then real early exit on the evaluated
/// images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodPoint {
    /// The search.
    pub method: ThresholdMethod,
    /// The budget, MFLOPs per image.
    pub budget_mflops: f64,
    /// Accuracy of the thresholds on the held-out split.
    pub holdout_accuracy: f64,
    /// Average MFLOPs on the held-out split.
    pub holdout_mflops: f64,
    /// The measurement on the evaluated images.
    #[serde(flatten)]
    pub run: EarlyExitRun,
}

/// Real early exit with the thresholds of a calibration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibratedRun {
    /// The calibration file, as given.
    pub file: String,
    /// The measurement.
    #[serde(flatten)]
    pub run: EarlyExitRun,
}

/// When, with what and where a report was measured (filled in by
/// `cargo xtask results`, absent from the CLI's output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// Commit of the binary that measured.
    pub commit: String,
    /// The machine.
    pub machine: String,
}

/// Everything one `anytime eval` run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Registry model.
    pub model: String,
    /// Which images.
    pub split: Split,
    /// Images evaluated.
    pub images: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// The anytime pass, one entry per exit.
    pub exits: Vec<ExitReport>,
    /// Real early exit with a calibration file's thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibrated: Option<CalibratedRun>,
    /// Real early exit over the q sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgeted: Option<Vec<SweepPoint>>,
    /// The threshold methods compared at the same budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<MethodPoint>>,
    /// Where the plots of the q sweep were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plots: Option<String>,
    /// Milliseconds per image through every exit (the reference of the
    /// saving ratios; present with `calibrated` or `budgeted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_ms_per_image: Option<f64>,
    /// GFNet on cluttered canvases: per exit, the share of images whose
    /// patch holds the whole item (`null` at the glance, which looks at the
    /// whole canvas); see [`crate::measure::patch_hits`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_hits: Option<Vec<Option<f64>>>,
    /// Files that could not be read (an image folder's corrupt images),
    /// left out of every measurement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedImage>,
    /// When and where it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Provenance>,
}

/// An image left out because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedImage {
    /// Its path.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl From<anytime_data::source::Skipped> for SkippedImage {
    fn from(s: anytime_data::source::Skipped) -> Self {
        Self { path: s.path.display().to_string(), reason: s.reason }
    }
}

/// Wall-clock saving over FLOP saving of an early-exit run, both against
/// running every exit (`full_mflops`, `full_ms`): 1.0 means the FLOPs saved
/// turn fully into time saved. `None` when no FLOPs are saved.
pub fn saving_ratio(mflops: f64, ms_per_image: f64, full_mflops: f64, full_ms: f64) -> Option<f64> {
    let flop_saving = 1.0 - mflops / full_mflops;
    let time_saving = 1.0 - ms_per_image / full_ms;
    (flop_saving > 1e-9 && full_ms > 0.0).then_some(time_saving / flop_saving)
}

impl EvalReport {
    /// The last exit (the full model); an error for a report without exits.
    pub fn full(&self) -> Result<&ExitReport> {
        self.exits.last().ok_or_else(|| Error::Invalid(format!("{}: report without exits", self.model)))
    }

    /// The anytime curve: (MFLOPs, accuracy %) per exit.
    pub fn anytime_curve(&self) -> Vec<(f64, f64)> {
        self.exits.iter().map(|e| (e.mflops, 100.0 * e.accuracy)).collect()
    }

    /// The q sweep's (x, accuracy %) points in q order, x from `x`; empty
    /// without a sweep.
    pub fn budgeted_curve(&self, x: impl Fn(&EarlyExitRun) -> f64) -> Vec<(f64, f64)> {
        self.budgeted.iter().flatten().map(|b| (x(&b.run), 100.0 * b.run.accuracy)).collect()
    }

    /// Reads a report written as JSON.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Io { path: path.to_path_buf(), msg: format!("cannot read: {e}") })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Io { path: path.to_path_buf(), msg: format!("not an evaluation report: {e}") })
    }

    /// The report as one JSON object with its keys in alphabetical order (the
    /// order `anytime eval --json` has always printed).
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Invalid(format!("cannot encode the report: {e}")))
    }

    /// Writes the report as pretty JSON (keys in alphabetical order),
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()?)
            .map_err(|e| Error::Invalid(format!("cannot encode the report: {e}")))?;
        anytime_io::atomic_write(path, format!("{text}\n").as_bytes())
            .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> EvalReport {
        let run = |acc, mf, ms| EarlyExitRun {
            accuracy: acc,
            mflops: mf,
            ms_per_image: ms,
            exit_counts: vec![3, 1],
            saving_ratio: saving_ratio(mf, ms, 4.0, 2.0),
        };
        EvalReport {
            model: "m".into(),
            split: Split::Test,
            images: 4,
            batch_size: 2,
            exits: vec![
                ExitReport { exit: 0, accuracy: 0.5, top5: None, mflops: 1.0, ms_per_image: 0.5 },
                ExitReport { exit: 1, accuracy: 0.75, top5: None, mflops: 4.0, ms_per_image: 2.0 },
            ],
            calibrated: Some(CalibratedRun { file: "c.json".into(), run: run(0.75, 1.75, 1.0) }),
            methods: Some(vec![MethodPoint {
                method: ThresholdMethod::GeneticEnsemble,
                budget_mflops: 2.0,
                holdout_accuracy: 0.7,
                holdout_mflops: 1.9,
                run: run(0.75, 1.8, 1.1),
            }]),
            budgeted: Some(vec![SweepPoint {
                q: 0.5,
                holdout_accuracy: 0.7,
                holdout_mflops: 1.7,
                run: run(0.5, 4.0, 2.0),
            }]),
            plots: Some("p".into()),
            full_ms_per_image: Some(2.0),
            patch_hits: Some(vec![None, Some(0.5)]),
            skipped: Vec::new(),
            measured: None,
        }
    }

    #[test]
    fn saving_ratio_compares_time_and_flop_savings() {
        // Half the FLOPs, a quarter of the time saved.
        assert_eq!(saving_ratio(2.0, 1.5, 4.0, 2.0), Some(0.5));
        assert_eq!(saving_ratio(4.0, 1.0, 4.0, 2.0), None);
        assert_eq!(saving_ratio(2.0, 1.0, 4.0, 0.0), None);
    }

    #[test]
    fn json_keeps_the_flat_alphabetical_layout_and_round_trips() {
        let r = report();
        let v = r.to_json().unwrap();
        let text = serde_json::to_string(&v).unwrap();
        assert!(
            text.starts_with(
                r#"{"batch_size":2,"budgeted":[{"accuracy":0.5,"exit_counts":[3,1],"holdout_accuracy":0.7,"#
            )
        );
        assert!(text.contains(r#""saving_ratio":null"#), "{text}");
        assert!(text.contains(r#""calibrated":{"accuracy":0.75,"exit_counts":[3,1],"file":"c.json","#), "{text}");
        assert!(!text.contains("measured"));
        let back: EvalReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.anytime_curve(), vec![(1.0, 50.0), (4.0, 75.0)]);
        assert_eq!(r.budgeted_curve(|b| b.ms_per_image), vec![(2.0, 50.0)]);
        assert_eq!(r.full().unwrap().exit, 1);
    }

    #[test]
    fn files_round_trip_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        report().save(&p).unwrap();
        assert_eq!(EvalReport::load(&p).unwrap(), report());
        std::fs::write(&p, "{\"model\": 1}").unwrap();
        let e = EvalReport::load(&p).unwrap_err().to_string();
        assert!(e.contains("r.json") && e.contains("not an evaluation report"), "{e}");
    }
}
