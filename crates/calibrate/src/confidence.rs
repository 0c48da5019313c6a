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
    /// `1 - H(p) / ln K`: one minus the normalised entropy of the softmax.
    Entropy,
    /// The gap between the two largest softmax probabilities.
    Margin,
}

/// Softmax of a logit row (numerically stable).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
    let z: f32 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

impl Confidence {
    /// The confidence of one logit row; NaN logits give 0.
    pub fn score(self, logits: &[f32]) -> f32 {
        if logits.is_empty() || logits.iter().any(|v| v.is_nan()) {
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

    #[test]
    fn known_values() {
        let uniform = [0.0f32; 4];
        assert!((Confidence::MaxSoftmax.score(&uniform) - 0.25).abs() < 1e-6);
        assert!(Confidence::Entropy.score(&uniform).abs() < 1e-6);
        assert!(Confidence::Margin.score(&uniform).abs() < 1e-6);
        let sure = [100.0f32, 0.0, 0.0];
        for c in [Confidence::MaxSoftmax, Confidence::Entropy, Confidence::Margin] {
            assert!(c.score(&sure) > 0.999, "{c:?}");
        }
        // p = [0.5, 0.5 * e^0 ...]: logits [ln 3, ln 1] -> p = [0.75, 0.25].
        let row = [3f32.ln(), 0.0];
        assert!((Confidence::MaxSoftmax.score(&row) - 0.75).abs() < 1e-6);
        assert!((Confidence::Margin.score(&row) - 0.5).abs() < 1e-6);
        let h = -(0.75f32 * 0.75f32.ln() + 0.25 * 0.25f32.ln());
        assert!((Confidence::Entropy.score(&row) - (1.0 - h / 2f32.ln())).abs() < 1e-6);
        assert_eq!(Confidence::MaxSoftmax.score(&[f32::NAN, 1.0]), 0.0);
    }
}
