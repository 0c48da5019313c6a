//! The exit rule and MSDNet's dynamic evaluation.
//!
//! Reference: kalviny/MSDNet-PyTorch `adaptive_inference.py`
//! (`dynamic_evaluate`, `Tester.dynamic_eval_find_threshold`).

use crate::confidence::Confidence;
use crate::scores::ExitScores;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// One threshold per exit; a sample leaves at the first exit whose confidence
/// is at least its threshold. What a sample confident at no exit gets is the
/// [`Fallback`]: by default the last exit accepts everything. `f32::MAX`
/// means "nobody leaves here" and `f32::MIN` "everybody does" (both finite,
/// so calibrations stay valid JSON).
///
/// # Shapes
/// - `per_exit`: `[exits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The confidence measure the thresholds apply to.
    pub confidence: Confidence,
    /// Threshold per exit (with [`Fallback::LastExit`] the last one is
    /// ignored: it accepts everything).
    pub per_exit: Vec<f32>,
    /// What a sample that no exit is confident about gets.
    #[serde(default)]
    pub fallback: Fallback,
}

/// The answer for a sample whose confidence reaches no exit's threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The last exit accepts every sample that reaches it (MSDNet, RANet).
    #[default]
    LastExit,
    /// The last exit's threshold applies too; a sample confident nowhere gets
    /// the argmax of the mean of every exit's logits, at the full model's cost
    /// (SCAN, `inference.py` of pytorch-scalable-neural-networks).
    Ensemble,
}

impl Thresholds {
    /// Thresholds with the default fallback (the last exit accepts).
    pub fn new(confidence: Confidence, per_exit: Vec<f32>) -> Self {
        Self { confidence, per_exit, fallback: Fallback::LastExit }
    }

    /// Thresholds that let every sample out at the first exit.
    pub fn first_exit(confidence: Confidence, exits: usize) -> Self {
        Self::new(confidence, vec![f32::MIN; exits])
    }

    /// The same thresholds with another fallback.
    pub fn with_fallback(self, fallback: Fallback) -> Self {
        Self { fallback, ..self }
    }

    /// Whether a sample with confidence `conf` leaves at `exit` on its own
    /// confidence: when `conf` reaches the exit's threshold, and always at
    /// the last exit (and past it) with [`Fallback::LastExit`].
    pub fn stops(&self, exit: usize, conf: f32) -> bool {
        let last = exit + 1 >= self.per_exit.len();
        (last && self.fallback == Fallback::LastExit) || self.per_exit.get(exit).is_some_and(|&t| conf >= t)
    }

    /// Checks the thresholds fit `scores`: one per exit, none NaN, the same
    /// confidence measure.
    fn check(&self, scores: &ExitScores) -> Result<()> {
        if self.per_exit.len() != scores.exits() {
            return Err(Error::Length {
                what: "thresholds (one per exit)".into(),
                expected: scores.exits(),
                got: self.per_exit.len(),
            });
        }
        if let Some(exit) = self.per_exit.iter().position(|t| t.is_nan()) {
            return Err(Error::NanThreshold(exit));
        }
        if self.confidence != scores.confidence {
            return Err(Error::ConfidenceMismatch { thresholds: self.confidence, scores: scores.confidence });
        }
        if self.fallback == Fallback::Ensemble && scores.ensemble.is_none() {
            return Err(Error::NoEnsemble);
        }
        Ok(())
    }
}

/// What a threshold setting does on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Average cumulative cost per sample (the unit of the costs given).
    pub avg_cost: f64,
    /// Samples leaving at each exit, `[exits]` (samples given the ensemble
    /// fallback count at the last exit).
    pub exit_counts: Vec<usize>,
    /// The exit each sample leaves at, `[N]`.
    pub exits: Vec<usize>,
    /// Samples confident at no exit that got the [`Fallback::Ensemble`]
    /// answer (0 with [`Fallback::LastExit`]).
    #[serde(default)]
    pub fallback: usize,
}

impl Outcome {
    /// Whether `self` is preferable to `other`: more accurate, or as accurate
    /// and cheaper.
    pub(crate) fn better_than(&self, other: &Outcome) -> bool {
        self.accuracy > other.accuracy || (self.accuracy == other.accuracy && self.avg_cost < other.avg_cost)
    }
}

/// `accuracy − weight · avg_cost / full`: accuracy penalised by the cost
/// relative to the full model's (`full`; no penalty when it is 0).
pub(crate) fn penalised(accuracy: f64, avg_cost: f64, weight: f64, full: f64) -> f64 {
    if full > 0.0 { accuracy - weight * avg_cost / full } else { accuracy }
}

/// Checks `scores` and that `costs` has one finite, non-negative, cumulative
/// (non-decreasing) cost per exit.
pub(crate) fn check_inputs(scores: &ExitScores, costs: &[f64]) -> Result<()> {
    scores.validate()?;
    if costs.len() != scores.exits() {
        return Err(Error::Length {
            what: "exit costs (one per exit)".into(),
            expected: scores.exits(),
            got: costs.len(),
        });
    }
    check_costs(costs)
}

/// Checks `costs` are finite, non-negative and cumulative.
pub(crate) fn check_costs(costs: &[f64]) -> Result<()> {
    if costs.iter().any(|c| !c.is_finite() || *c < 0.0) || costs.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::Costs(costs.to_vec()));
    }
    Ok(())
}

/// [`simulate`] on inputs already checked.
pub(crate) fn apply(th: &Thresholds, scores: &ExitScores, costs: &[f64]) -> Outcome {
    let k = scores.exits();
    let mut exit_counts = vec![0usize; k];
    let mut exits = Vec::with_capacity(scores.len());
    let (mut correct, mut cost, mut fallback) = (0usize, 0f64, 0usize);
    for (i, &label) in scores.labels.iter().enumerate() {
        let found = (0..k).find(|&e| th.stops(e, scores.conf[e][i]));
        let e = found.unwrap_or(k - 1);
        let pred = match (found, &scores.ensemble) {
            (None, Some(ensemble)) if th.fallback == Fallback::Ensemble => {
                fallback += 1;
                ensemble[i]
            }
            _ => scores.pred[e][i],
        };
        exit_counts[e] += 1;
        exits.push(e);
        cost += costs[e];
        correct += usize::from(pred == label);
    }
    let n = scores.len() as f64;
    Outcome { accuracy: correct as f64 / n, avg_cost: cost / n, exit_counts, exits, fallback }
}

/// Applies the exit rule of `th` to every sample of `scores`.
///
/// # Shapes
/// - `costs`: `[exits]`, cumulative cost of reaching each exit (earlier
///   exits included), e.g. MFLOPs per image
pub fn simulate(th: &Thresholds, scores: &ExitScores, costs: &[f64]) -> Result<Outcome> {
    check_inputs(scores, costs)?;
    th.check(scores)?;
    Ok(apply(th, scores, costs))
}

/// The exit proportions of the q rule: `p_k = q^(k+1) / Σ_j q^(j+1)`
/// (computed in log space, so extreme q neither overflow nor underflow).
fn proportions(q: f64, exits: usize) -> Vec<f64> {
    let logs: Vec<f64> = (1..=exits).map(|j| j as f64 * q.ln()).collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logs.iter().map(|l| (l - top).exp()).collect();
    let z: f64 = w.iter().sum();
    w.iter().map(|v| v / z).collect()
}

/// [`dynamic_eval_thresholds`] on inputs already checked.
pub(crate) fn q_rule(scores: &ExitScores, q: f64) -> Thresholds {
    let (k, n) = (scores.exits(), scores.len());
    let p = proportions(q, k);
    let mut per_exit = vec![f32::MAX; k];
    let mut gone = vec![false; n];
    for e in 0..k - 1 {
        let conf = &scores.conf[e];
        let take = (n as f64 * p[e]).floor() as usize;
        let mut remaining: Vec<f32> = (0..n).filter(|&i| !gone[i]).map(|i| conf[i]).collect();
        remaining.sort_by(|a, b| b.total_cmp(a));
        if let Some(&t) = take.checked_sub(1).and_then(|last| remaining.get(last)) {
            per_exit[e] = t;
        }
        for (g, &c) in gone.iter_mut().zip(conf) {
            *g |= c >= per_exit[e];
        }
    }
    per_exit[k - 1] = f32::MIN;
    Thresholds::new(scores.confidence, per_exit)
}

/// MSDNet's dynamic-evaluation thresholds for `q`: exit k should take the
/// share `p_k = q^(k+1) / Σ_j q^(j+1)` of the samples (q < 1 favours early
/// exits, q > 1 late ones). Walking the exits in order, among the samples not
/// yet gone the `floor(N·p_k)` most confident at exit k leave: the threshold
/// is the confidence of the last one taken (ties with it leave too). As in the
/// reference, an exit whose count is 0, or larger than the samples left, lets
/// nobody out (`f32::MAX`); the last exit takes the rest (`f32::MIN`).
pub fn dynamic_eval_thresholds(scores: &ExitScores, q: f64) -> Result<Thresholds> {
    scores.validate()?;
    if !(q > 0.0 && q.is_finite()) {
        return Err(Error::Q(q));
    }
    Ok(q_rule(scores, q))
}

/// [`dynamic_eval_thresholds`] and what they do on `scores` ([`simulate`]).
///
/// # Shapes
/// - `costs`: `[exits]`, cumulative per-exit cost
pub fn dynamic_eval(scores: &ExitScores, costs: &[f64], q: f64) -> Result<(Thresholds, Outcome)> {
    check_inputs(scores, costs)?;
    let th = dynamic_eval_thresholds(scores, q)?;
    let out = apply(&th, scores, costs);
    Ok((th, out))
}

/// The reference sweep: q = 0.05, 0.10, …, 1.95.
pub fn default_qs() -> Vec<f64> {
    (1..40).map(|p| p as f64 / 20.0).collect()
}

/// [`dynamic_eval`] for every q: the held-out accuracy/cost curve.
pub fn sweep_q(scores: &ExitScores, costs: &[f64], qs: &[f64]) -> Result<Vec<(f64, Thresholds, Outcome)>> {
    qs.iter().map(|&q| dynamic_eval(scores, costs, q).map(|(t, o)| (q, t, o))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::synthetic;

    const COSTS: [f64; 3] = [1.0, 2.0, 4.0];

    /// 4 samples, 3 exits; exit k predicts class k for everyone.
    fn tiny() -> ExitScores {
        ExitScores {
            confidence: Confidence::MaxSoftmax,
            conf: vec![vec![0.9, 0.2, 0.5, 0.1], vec![0.3, 0.8, 0.7, 0.2], vec![0.5; 4]],
            pred: vec![vec![0; 4], vec![1; 4], vec![2; 4]],
            labels: vec![0, 1, 2, 2],
            ensemble: None,
        }
    }

    #[test]
    fn hand_computed_q_rule() {
        let s = tiny();
        // q = 1: p = 1/3 each, floor(4/3) = 1 per exit. Exit 0 takes sample 0
        // (0.9); among samples 1-3, exit 1 takes sample 1 (0.8).
        let (th, out) = dynamic_eval(&s, &COSTS, 1.0).unwrap();
        assert_eq!(th.per_exit, vec![0.9, 0.8, f32::MIN]);
        assert_eq!(out.exits, vec![0, 1, 2, 2]);
        assert_eq!(out.exit_counts, vec![1, 1, 2]);
        assert_eq!(out.accuracy, 1.0);
        assert_eq!(out.avg_cost, (1.0 + 2.0 + 4.0 + 4.0) / 4.0);
        // q = 0.5: p = [4/7, 2/7, 1/7], floor -> [2, 1]. Exit 0 takes samples 0
        // and 2 (0.9, 0.5); exit 1 takes sample 1 (0.8) of samples 1 and 3.
        let (th, out) = dynamic_eval(&s, &COSTS, 0.5).unwrap();
        assert_eq!(th.per_exit, vec![0.5, 0.8, f32::MIN]);
        assert_eq!(out.exits, vec![0, 1, 0, 2]);
        assert_eq!(out.accuracy, 0.75);
        assert_eq!(out.avg_cost, (1.0 + 2.0 + 1.0 + 4.0) / 4.0);
        // q = 3: p = [3, 9, 27] / 39 -> floor [0, 0]: nobody leaves early.
        let (th, out) = dynamic_eval(&s, &COSTS, 3.0).unwrap();
        assert_eq!(th.per_exit, vec![f32::MAX, f32::MAX, f32::MIN]);
        assert_eq!(out.exit_counts, vec![0, 0, 4]);
    }

    #[test]
    fn ties_leave_together_and_short_exits_let_nobody_out() {
        // q = 0.1: p ≈ [0.9009, 0.0901, 0.0090], floor(4p) = [3, 0]. The third
        // most confident at exit 0 has 0.4, tied with the fourth: all 4 leave.
        let mut s = tiny();
        s.conf[0] = vec![0.9, 0.4, 0.6, 0.4];
        let (th, out) = dynamic_eval(&s, &COSTS, 0.1).unwrap();
        assert_eq!(th.per_exit[0], 0.4);
        assert_eq!(out.exit_counts, vec![4, 0, 0]);
        // Two exits, q = 1e-3: floor(4 · 0.999) = 3 of 4 leave at exit 0.
        let two = ExitScores {
            confidence: Confidence::MaxSoftmax,
            conf: vec![vec![0.9, 0.8, 0.7, 0.6]; 2],
            pred: vec![vec![0; 4]; 2],
            labels: vec![0; 4],
            ensemble: None,
        };
        let (th, _) = dynamic_eval(&two, &[1.0, 2.0], 1e-3).unwrap();
        assert_eq!(th.per_exit, vec![0.7, f32::MIN]);
        // One exit: everything leaves there.
        let one = ExitScores { conf: vec![vec![0.1; 3]], pred: vec![vec![0; 3]], labels: vec![0, 0, 1], ..two };
        let (th, out) = dynamic_eval(&one, &[5.0], 0.5).unwrap();
        assert_eq!(th.per_exit, vec![f32::MIN]);
        assert!((out.accuracy - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn proportions_match_q() {
        let p = proportions(0.5, 3);
        for (got, want) in p.iter().zip([4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0]) {
            assert!((got - want).abs() < 1e-12);
        }
        // Extreme q stay finite and normalised.
        for q in [1e-300, 1e300] {
            let p = proportions(q, 10);
            assert!(p.iter().all(|v| v.is_finite()) && (p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let s = synthetic(2000);
        for q in [0.3, 0.5, 1.0, 1.7] {
            let (_, out) = dynamic_eval(&s, &COSTS, q).unwrap();
            let p = proportions(q, 3);
            // Continuous confidences, few ties: exits 0 and 1 take exactly floor(N p_k).
            for (e, share) in p.iter().take(2).enumerate() {
                assert_eq!(out.exit_counts[e], (2000.0 * share).floor() as usize, "q = {q}, exit {e}");
            }
            assert_eq!(out.exit_counts.iter().sum::<usize>(), 2000);
        }
    }

    #[test]
    fn cost_grows_with_q() {
        let s = synthetic(2000);
        let curve = sweep_q(&s, &COSTS, &default_qs()).unwrap();
        assert_eq!(curve.len(), 39);
        assert!(curve.windows(2).all(|w| w[0].2.avg_cost <= w[1].2.avg_cost));
        assert!(curve[0].2.avg_cost < curve[38].2.avg_cost);
    }

    #[test]
    fn simulate_uses_the_thresholds_and_the_last_exit_accepts() {
        let s = tiny();
        // Exit 0 lets out samples with confidence >= 0.5 (0 and 2), exit 1
        // nobody; the last exit ignores its threshold. Right: samples 0 and 3.
        let th = Thresholds::new(Confidence::MaxSoftmax, vec![0.5, f32::MAX, f32::MAX]);
        let out = simulate(&th, &s, &COSTS).unwrap();
        assert_eq!(out.exits, vec![0, 2, 0, 2]);
        assert_eq!(out.accuracy, 0.5);
        assert_eq!(out.avg_cost, 2.5);
        let out = simulate(&Thresholds::first_exit(Confidence::MaxSoftmax, 3), &s, &COSTS).unwrap();
        assert_eq!((out.exit_counts, out.avg_cost), (vec![4, 0, 0], 1.0));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = tiny();
        let msg = |r: Result<Outcome>| r.unwrap_err().to_string();
        let th = |per_exit: Vec<f32>| Thresholds::new(Confidence::MaxSoftmax, per_exit);
        assert!(msg(simulate(&th(vec![0.5; 2]), &s, &COSTS)).contains("thresholds (one per exit): expected 3, got 2"));
        assert!(msg(simulate(&th(vec![0.5, f32::NAN, 0.0]), &s, &COSTS)).contains("threshold of exit 1 is NaN"));
        let margin = Thresholds::new(Confidence::Margin, vec![0.5; 3]);
        assert!(msg(simulate(&margin, &s, &COSTS)).contains("Margin confidences applied to MaxSoftmax"));
        assert!(msg(simulate(&th(vec![0.5; 3]), &s, &[1.0, 2.0])).contains("exit costs (one per exit)"));
        for costs in [[3.0, 2.0, 1.0], [-1.0, 2.0, 3.0], [1.0, f64::NAN, 3.0]] {
            assert!(msg(simulate(&th(vec![0.5; 3]), &s, &costs)).contains("cumulative"), "{costs:?}");
        }
        for q in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = dynamic_eval_thresholds(&s, q).unwrap_err().to_string();
            assert!(e.contains("q must be a finite number > 0"), "{e}");
            assert!(sweep_q(&s, &COSTS, &[0.5, q]).is_err());
        }
        let mut nan = s.clone();
        nan.conf[2][3] = f32::NAN;
        assert!(dynamic_eval(&nan, &COSTS, 1.0).unwrap_err().to_string().contains("exit 2, sample 3"));
        let empty = ExitScores { conf: vec![], pred: vec![], ..s };
        assert!(matches!(dynamic_eval_thresholds(&empty, 1.0), Err(Error::NoExits)));
    }

    /// SCAN's rule: the last exit's threshold applies; a sample confident
    /// nowhere gets the mean-logit ensemble at the full cost.
    #[test]
    fn ensemble_fallback() {
        let logits = vec![
            vec![vec![4.0, 0.0], vec![0.0, 0.1], vec![0.0, 0.3]],
            vec![vec![5.0, 0.0], vec![0.0, 0.2], vec![0.5, 0.0]],
        ];
        let s = ExitScores::from_logits(&logits, &[0, 1, 0], Confidence::MaxSoftmax).unwrap();
        // Sample 2: exit 0 says 1, exit 1 says 0 (0.5 vs 0.3 in the mean).
        assert_eq!(s.ensemble, Some(vec![0, 1, 0]));
        let costs = [1.0, 3.0];
        let th = Thresholds::new(Confidence::MaxSoftmax, vec![0.9, 0.9]);
        let last = simulate(&th, &s, &costs).unwrap();
        assert_eq!((last.exit_counts.clone(), last.fallback), (vec![1, 2], 0));
        let ens = simulate(&th.clone().with_fallback(Fallback::Ensemble), &s, &costs).unwrap();
        assert_eq!((ens.exit_counts.clone(), ens.fallback, ens.exits.clone()), (vec![1, 2], 2, vec![0, 1, 1]));
        assert!((ens.avg_cost - 7.0 / 3.0).abs() < 1e-12);
        assert_eq!(ens.accuracy, 1.0);
        // A confident last exit answers for itself.
        let low = Thresholds::new(Confidence::MaxSoftmax, vec![0.9, 0.5]).with_fallback(Fallback::Ensemble);
        assert_eq!(simulate(&low, &s, &costs).unwrap().fallback, 0);
        // Old calibration files (no fallback field) read as LastExit.
        let old: Thresholds = serde_json::from_str(r#"{"confidence":"max_softmax","per_exit":[0.5,0.1]}"#).unwrap();
        assert_eq!(old.fallback, Fallback::LastExit);
        let parts = ExitScores::from_parts(s.confidence, s.conf.clone(), s.pred.clone(), s.labels.clone()).unwrap();
        let e = simulate(&th.with_fallback(Fallback::Ensemble), &parts, &costs).unwrap_err();
        assert!(matches!(e, Error::NoEnsemble), "{e}");
    }
}
