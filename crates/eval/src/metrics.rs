//! Per-exit accuracy, and the lazy anytime pass timed exit by exit.

use crate::exits::{exit_logits, timed_exit_logits};
use anytime_models::MultiExit;
use candle_core::Tensor;

/// Counts correct top-1 (and top-5) predictions per exit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitAccuracy {
    /// Correct predictions per exit.
    pub correct: Vec<u64>,
    /// Samples whose class is among the five highest logits, per exit
    /// (counted for models of more than five classes, else empty).
    pub top5: Vec<u64>,
    /// Samples seen.
    pub total: u64,
}

/// Whether class `y` is among the five highest of `row` (ties counted in its
/// favour, as a sort that keeps equal values in place would).
pub fn in_top5(row: &[f32], y: u32) -> bool {
    let Some(&v) = row.get(y as usize) else { return false };
    row.iter().filter(|&&o| o > v).count() < 5
}

impl ExitAccuracy {
    /// Adds one batch: `logits` per exit `[N, classes]`, `targets` `[N]` u32.
    pub fn update(&mut self, logits: &[Tensor], targets: &Tensor) -> candle_core::Result<()> {
        self.add(logits, targets, true)
    }

    /// [`ExitAccuracy::update`] without top-5 (no copy of the logits to the
    /// host beyond the argmax): what a training step's running accuracy
    /// needs.
    pub fn update_top1(&mut self, logits: &[Tensor], targets: &Tensor) -> candle_core::Result<()> {
        self.add(logits, targets, false)
    }

    fn add(&mut self, logits: &[Tensor], targets: &Tensor, top5: bool) -> candle_core::Result<()> {
        let t = targets.to_vec1::<u32>()?;
        if self.correct.len() < logits.len() {
            self.correct.resize(logits.len(), 0);
        }
        for (k, l) in logits.iter().enumerate() {
            let pred = l.argmax(1)?.to_vec1::<u32>()?;
            self.correct[k] += pred.iter().zip(&t).filter(|(p, y)| p == y).count() as u64;
            if top5 && l.dim(1)? > 5 {
                if self.top5.len() < logits.len() {
                    self.top5.resize(logits.len(), 0);
                }
                let rows = l.to_vec2::<f32>()?;
                self.top5[k] += rows.iter().zip(&t).filter(|(r, y)| in_top5(r, **y)).count() as u64;
            }
        }
        self.total += t.len() as u64;
        Ok(())
    }

    /// Accuracy per exit as fractions in [0, 1].
    pub fn fractions(&self) -> Vec<f64> {
        self.correct.iter().map(|&c| c as f64 / self.total.max(1) as f64).collect()
    }

    /// Top-5 accuracy per exit, or `None` per exit for models of five
    /// classes or fewer.
    pub fn top5_fractions(&self) -> Vec<Option<f64>> {
        (0..self.correct.len()).map(|k| self.top5.get(k).map(|&c| c as f64 / self.total.max(1) as f64)).collect()
    }
}

/// Evaluates every exit on `batches` (eval mode).
pub fn evaluate<I>(model: &dyn MultiExit, batches: I) -> candle_core::Result<ExitAccuracy>
where
    I: IntoIterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    let mut acc = ExitAccuracy::default();
    for b in batches {
        let (xs, ys) = b?;
        acc.update(&exit_logits(model, &xs)?, &ys)?;
    }
    Ok(acc)
}

/// Per-exit accuracy together with the wall-clock time to reach each exit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnytimeEval {
    /// Correct predictions per exit.
    pub accuracy: ExitAccuracy,
    /// Cumulative seconds spent reaching each exit (lazy evaluation: exit k
    /// includes every stage before it), summed over all batches.
    pub seconds: Vec<f64>,
}

impl AnytimeEval {
    /// Milliseconds per image to reach each exit.
    pub fn ms_per_image(&self) -> Vec<f64> {
        self.seconds.iter().map(|s| 1e3 * s / self.accuracy.total.max(1) as f64).collect()
    }
}

/// Evaluates every exit with the lazy anytime iterator, timing each stage.
pub fn evaluate_anytime<I>(model: &dyn MultiExit, batches: I) -> candle_core::Result<AnytimeEval>
where
    I: IntoIterator<Item = candle_core::Result<(Tensor, Tensor)>>,
{
    let mut out = AnytimeEval { accuracy: ExitAccuracy::default(), seconds: vec![0.0; model.num_exits()] };
    for b in batches {
        let (xs, ys) = b?;
        let logits = timed_exit_logits(model, &xs, &mut out.seconds)?;
        out.accuracy.update(&logits, &ys)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accuracy_counts_top1_per_exit() {
        let dev = Device::Cpu;
        let l0 = Tensor::new(&[[1f32, 0.0], [1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let l1 = Tensor::new(&[[0f32, 1.0], [1.0, 0.0], [0.0, 1.0]], &dev).unwrap();
        let y = Tensor::new(&[0u32, 0, 0], &dev).unwrap();
        let mut a = ExitAccuracy::default();
        a.update(&[l0, l1], &y).unwrap();
        assert_eq!((a.correct.clone(), a.total), (vec![2, 1], 3));
        assert_eq!(a.fractions(), vec![2.0 / 3.0, 1.0 / 3.0]);
        assert_eq!(a.top5_fractions(), [None, None]);
        let ev = AnytimeEval { accuracy: a, seconds: vec![0.003, 0.006] };
        assert_eq!(ev.ms_per_image(), vec![1.0, 2.0]);
        assert_eq!(ExitAccuracy::default().fractions(), Vec::<f64>::new());
    }

    #[test]
    fn top5_counts_the_class_among_the_five_highest() {
        let row = [0.0f32, 5.0, 4.0, 3.0, 2.0, 1.0, 1.0, -1.0];
        assert!(in_top5(&row, 1) && in_top5(&row, 5) && in_top5(&row, 6));
        assert!(!in_top5(&row, 0) && !in_top5(&row, 7) && !in_top5(&row, 99));
        let dev = Device::Cpu;
        let l = Tensor::new(&[row, row], &dev).unwrap();
        let y = Tensor::new(&[5u32, 7], &dev).unwrap();
        let mut a = ExitAccuracy::default();
        a.update(&[l], &y).unwrap();
        assert_eq!((a.correct.clone(), a.top5.clone()), (vec![0], vec![1]));
        assert_eq!(a.top5_fractions(), [Some(0.5)]);
    }
}
