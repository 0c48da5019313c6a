//! Per-exit confidences, predictions and labels of a held-out set.

use crate::confidence::{Confidence, argmax};
use crate::{Error, Result};

/// Per-exit confidences and predictions of a labelled set: everything the
/// exit rule needs to know about a model.
///
/// # Shapes
/// - `conf`, `pred`: `[exits][N]`
/// - `labels`: `[N]`
#[derive(Debug, Clone, PartialEq)]
pub struct ExitScores {
    /// How `conf` was measured.
    pub confidence: Confidence,
    /// `conf[k][i]`: confidence of exit k on sample i.
    pub conf: Vec<Vec<f32>>,
    /// `pred[k][i]`: prediction of exit k on sample i.
    pub pred: Vec<Vec<u32>>,
    /// True labels.
    pub labels: Vec<u32>,
    /// `ensemble[i]`: argmax of the mean of every exit's logits on sample i
    /// (the [`crate::Fallback::Ensemble`] answer); `None` when the scores
    /// were not made from logits.
    pub ensemble: Option<Vec<u32>>,
}

impl ExitScores {
    /// Scores from per-exit logits: the confidence is `confidence` of each
    /// row, the prediction its argmax.
    ///
    /// # Shapes
    /// - `logits`: `[exits][N][K]`, the same K everywhere
    /// - `labels`: `[N]`, each `< K`
    pub fn from_logits(logits: &[Vec<Vec<f32>>], labels: &[u32], confidence: Confidence) -> Result<Self> {
        let first = logits.first().ok_or(Error::NoExits)?;
        if labels.is_empty() {
            return Err(Error::NoSamples);
        }
        let classes = first.first().map_or(0, Vec::len);
        for (k, exit) in logits.iter().enumerate() {
            if exit.len() != labels.len() {
                return Err(Error::Length {
                    what: format!("exit {k}: logit rows (one per label)"),
                    expected: labels.len(),
                    got: exit.len(),
                });
            }
            for (i, row) in exit.iter().enumerate() {
                if row.is_empty() {
                    return Err(Error::EmptyRow { exit: k, sample: i });
                }
                if row.len() != classes {
                    return Err(Error::Length {
                        what: format!("exit {k}, sample {i}: classes (as in exit 0, sample 0)"),
                        expected: classes,
                        got: row.len(),
                    });
                }
                if let Some(&value) = row.iter().find(|v| !v.is_finite()) {
                    return Err(Error::NonFinite { exit: k, sample: i, what: "logit", value });
                }
            }
        }
        if let Some((sample, &label)) = labels.iter().enumerate().find(|(_, y)| **y as usize >= classes) {
            return Err(Error::Label { sample, label, classes });
        }
        let conf = logits.iter().map(|e| e.iter().map(|r| confidence.score(r)).collect()).collect();
        let pred = logits.iter().map(|e| e.iter().map(|r| argmax(r)).collect()).collect();
        let ensemble = (0..labels.len())
            .map(|i| {
                let mut sum = vec![0f32; classes];
                for exit in logits {
                    sum.iter_mut().zip(&exit[i]).for_each(|(s, v)| *s += v);
                }
                argmax(&sum)
            })
            .collect();
        Ok(Self { confidence, conf, pred, labels: labels.to_vec(), ensemble: Some(ensemble) })
    }

    /// Scores from precomputed confidences and predictions, checked with
    /// [`ExitScores::validate`].
    ///
    /// # Shapes
    /// - `conf`, `pred`: `[exits][N]`
    /// - `labels`: `[N]`
    pub fn from_parts(
        confidence: Confidence,
        conf: Vec<Vec<f32>>,
        pred: Vec<Vec<u32>>,
        labels: Vec<u32>,
    ) -> Result<Self> {
        let s = Self { confidence, conf, pred, labels, ensemble: None };
        s.validate()?;
        Ok(s)
    }

    /// Checks there is at least one exit and one sample, the lengths agree
    /// and every confidence is finite.
    pub fn validate(&self) -> Result<()> {
        let n = self.labels.len();
        if self.conf.is_empty() {
            return Err(Error::NoExits);
        }
        if n == 0 {
            return Err(Error::NoSamples);
        }
        if self.pred.len() != self.conf.len() {
            return Err(Error::Length {
                what: "prediction rows (one per exit of the confidences)".into(),
                expected: self.conf.len(),
                got: self.pred.len(),
            });
        }
        for (k, (c, p)) in self.conf.iter().zip(&self.pred).enumerate() {
            for (what, got) in [("confidences", c.len()), ("predictions", p.len())] {
                if got != n {
                    return Err(Error::Length { what: format!("exit {k}: {what} (one per label)"), expected: n, got });
                }
            }
            if let Some((i, &value)) = c.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite { exit: k, sample: i, what: "confidence", value });
            }
        }
        if let Some(got) = self.ensemble.as_ref().map(Vec::len).filter(|&got| got != n) {
            return Err(Error::Length { what: "ensemble predictions (one per label)".into(), expected: n, got });
        }
        Ok(())
    }

    /// Number of exits.
    pub fn exits(&self) -> usize {
        self.conf.len()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_logits_predicts_and_scores() {
        let logits = vec![vec![vec![3f32.ln(), 0.0], vec![0.0, 1.0]], vec![vec![0.0, 0.0], vec![2.0, 0.0]]];
        let s = ExitScores::from_logits(&logits, &[0, 1], Confidence::MaxSoftmax).unwrap();
        assert_eq!(s.pred, vec![vec![0, 1], vec![0, 0]]);
        assert!((s.conf[0][0] - 0.75).abs() < 1e-6);
        assert!((s.conf[1][0] - 0.5).abs() < 1e-6);
        assert_eq!((s.exits(), s.len(), s.is_empty()), (2, 2, false));
    }

    #[test]
    fn bad_logits_are_errors() {
        let ok = vec![vec![vec![0.0f32, 1.0]; 2]; 2];
        let err = |logits: &[Vec<Vec<f32>>], labels: &[u32]| {
            ExitScores::from_logits(logits, labels, Confidence::Entropy).unwrap_err().to_string()
        };
        assert!(err(&[], &[0]).contains("no exits"));
        assert!(err(&ok, &[]).contains("no samples"));
        assert!(err(&ok, &[0, 1, 1]).contains("exit 0: logit rows (one per label): expected 3, got 2"));
        let mut ragged = ok.clone();
        ragged[1][1].push(0.5);
        assert!(err(&ragged, &[0, 1]).contains("exit 1, sample 1: classes"), "{}", err(&ragged, &[0, 1]));
        let mut empty = ok.clone();
        empty[1][0].clear();
        assert!(err(&empty, &[0, 1]).contains("exit 1, sample 0: empty logit row"));
        let mut nan = ok.clone();
        nan[0][1][1] = f32::NAN;
        assert!(err(&nan, &[0, 1]).contains("exit 0, sample 1: logit NaN is not finite"));
        assert!(err(&ok, &[0, 2]).contains("sample 1: label 2 is not a class index (the logits have 2 classes)"));
    }

    #[test]
    fn bad_parts_are_errors() {
        let err = |conf: Vec<Vec<f32>>, pred: Vec<Vec<u32>>, labels: Vec<u32>| {
            ExitScores::from_parts(Confidence::Margin, conf, pred, labels).unwrap_err().to_string()
        };
        assert!(err(vec![], vec![], vec![1]).contains("no exits"));
        assert!(err(vec![vec![]], vec![vec![]], vec![]).contains("no samples"));
        assert!(err(vec![vec![0.5]], vec![], vec![1]).contains("prediction rows"));
        assert!(err(vec![vec![0.5, 0.1]], vec![vec![1]], vec![1]).contains("exit 0: confidences (one per label)"));
        assert!(err(vec![vec![0.5]], vec![vec![1, 1]], vec![1]).contains("exit 0: predictions"));
        let e = err(vec![vec![0.5], vec![f32::NAN]], vec![vec![1], vec![1]], vec![1]);
        assert!(e.contains("exit 1, sample 0: confidence NaN is not finite"), "{e}");
        assert!(ExitScores::from_parts(Confidence::Margin, vec![vec![0.5]], vec![vec![1]], vec![1]).is_ok());
    }
}
