//! Confidence measures of one exit's logits, all in [0, 1], larger meaning
//! more confident.

use serde::{Deserialize, Serialize};

/// How confident an exit is in its prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// The largest softmax probability (MSDNet, RANet).
    #[default]
    MaxSoftmax,
    /// `1 - H(p) / ln K`: one minus the entropy of the softmax normalised by
    /// its maximum (1 for a one-hot softmax, 0 for a uniform one).
    Entropy,
    /// The gap between the two largest softmax probabilities.
    Margin,
}

/// Softmax of a logit row (shifted by its maximum, so large logits do not
/// overflow).
fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
    let z: f32 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

/// Index of the largest logit (the first one on ties), as the class
/// prediction; 0 for an empty row.
pub(crate) fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if row.get(best).is_some_and(|b| v > b) {
            best = i;
        }
    }
    best as u32
}

impl Confidence {
    /// The confidence of one logit row `[K]`, in [0, 1]. An empty row or one
    /// with a NaN or infinite logit gets 0 (never confident), so a sample with
    /// broken logits is never let out early; [`crate::ExitScores::from_logits`]
    /// rejects such rows instead.
    pub fn score(self, logits: &[f32]) -> f32 {
        if logits.is_empty() || logits.iter().any(|v| !v.is_finite()) {
            return 0.0;
        }
        let p = softmax(logits);
        let s = match self {
            Confidence::MaxSoftmax => p.iter().copied().fold(0.0, f32::max),
            Confidence::Entropy => {
                if p.len() < 2 {
                    return 1.0;
                }
                let h: f32 = p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
                1.0 - h / (p.len() as f32).ln()
            }
            Confidence::Margin => {
                let (mut a, mut b) = (0f32, 0f32);
                for &x in &p {
                    if x > a {
                        b = a;
                        a = x;
                    } else if x > b {
                        b = x;
                    }
                }
                a - b
            }
        };
        s.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Confidence; 3] = [Confidence::MaxSoftmax, Confidence::Entropy, Confidence::Margin];

    #[test]
    fn known_vectors() {
        // Logits [ln 3, 0] -> p = [0.75, 0.25].
        let row = [3f32.ln(), 0.0];
        assert!((Confidence::MaxSoftmax.score(&row) - 0.75).abs() < 1e-6);
        assert!((Confidence::Margin.score(&row) - 0.5).abs() < 1e-6);
        // 1 - H/ln 2 with H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.562335: 0.188722.
        assert!((Confidence::Entropy.score(&row) - 0.188_722).abs() < 1e-5);
        // Logits [ln 5, ln 3, ln 2] -> p = [0.5, 0.3, 0.2].
        let row = [5f32.ln(), 3f32.ln(), 2f32.ln()];
        assert!((Confidence::MaxSoftmax.score(&row) - 0.5).abs() < 1e-6);
        assert!((Confidence::Margin.score(&row) - 0.2).abs() < 1e-6);
        // H = 1.029653, ln 3 = 1.098612: 1 - H / ln 3 = 0.062770.
        assert!((Confidence::Entropy.score(&row) - 0.062_770).abs() < 1e-5);
    }

    #[test]
    fn extremes_and_degenerate_rows() {
        let uniform = [0.0f32; 4];
        assert!((Confidence::MaxSoftmax.score(&uniform) - 0.25).abs() < 1e-6);
        assert!(Confidence::Entropy.score(&uniform).abs() < 1e-6);
        assert!(Confidence::Margin.score(&uniform).abs() < 1e-6);
        // Huge logits neither overflow nor give NaN.
        let sure = [1e30f32, 0.0, -1e30];
        for c in ALL {
            assert!(c.score(&sure) > 0.999, "{c:?}");
            assert_eq!(c.score(&[f32::NAN, 1.0]), 0.0, "{c:?}");
            assert_eq!(c.score(&[f32::INFINITY, 1.0]), 0.0, "{c:?}");
            assert_eq!(c.score(&[]), 0.0, "{c:?}");
            // One class: the prediction is certain.
            assert_eq!(c.score(&[-3.0]), 1.0, "{c:?}");
        }
        // Two equal top classes: no margin.
        assert!(Confidence::Margin.score(&[2.0, 2.0, 0.0]).abs() < 1e-6);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, -1.0]), 1);
        assert_eq!(argmax(&[5.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
