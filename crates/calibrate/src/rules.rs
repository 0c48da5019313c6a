//! The exit rule, MSDNet's dynamic evaluation and the budget solver.

use crate::confidence::Confidence;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Per-exit confidences and predictions of a labelled set.
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
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

impl ExitScores {
    /// Scores from logits `[exit][sample][class]`.
    pub fn from_logits(logits: &[Vec<Vec<f32>>], labels: &[u32], confidence: Confidence) -> Result<Self> {
        let conf = logits.iter().map(|e| e.iter().map(|r| confidence.score(r)).collect()).collect();
        let pred = logits.iter().map(|e| e.iter().map(|r| argmax(r)).collect()).collect();
        let s = Self { confidence, conf, pred, labels: labels.to_vec() };
        s.validate()?;
        Ok(s)
    }

    /// Checks the shapes agree and nothing is empty.
    pub fn validate(&self) -> Result<()> {
        let n = self.labels.len();
        if self.conf.is_empty() {
            return Err(Error::Input("no exits".into()));
        }
        if n == 0 {
            return Err(Error::Input("no samples".into()));
        }
        if self.conf.len() != self.pred.len() {
            return Err(Error::Input(format!(
                "{} confidence rows for {} prediction rows",
                self.conf.len(),
                self.pred.len()
            )));
        }
        for (k, (c, p)) in self.conf.iter().zip(&self.pred).enumerate() {
            if c.len() != n || p.len() != n {
                return Err(Error::Input(format!(
                    "exit {k}: {} confidences, {} predictions for {n} labels",
                    c.len(),
                    p.len()
                )));
            }
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

/// One threshold per exit; a sample leaves at the first exit whose confidence
/// is at least its threshold. The last exit always accepts. Confidences lie in
/// [0, 1], so `f32::MAX` means "nobody leaves here" and `f32::MIN` "everybody
/// does" (both finite, so calibrations stay valid JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// The confidence measure the thresholds apply to.
    pub confidence: Confidence,
    /// Threshold per exit (the last one is ignored: it accepts everything).
    pub per_exit: Vec<f32>,
}

impl Thresholds {
    /// Whether a sample with confidence `conf` leaves at `exit`.
    pub fn stops(&self, exit: usize, conf: f32) -> bool {
        exit + 1 >= self.per_exit.len() || self.per_exit.get(exit).is_some_and(|&t| conf >= t)
    }
}

/// What a threshold setting does on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Average cumulative cost per sample (the unit of the costs given).
    pub avg_cost: f64,
    /// Samples leaving at each exit.
    pub exit_counts: Vec<usize>,
}

fn check_costs(scores: &ExitScores, costs: &[f64]) -> Result<()> {
    scores.validate()?;
    if costs.len() != scores.exits() {
        return Err(Error::Input(format!("{} exit costs for {} exits", costs.len(), scores.exits())));
    }
    if costs.iter().any(|c| !c.is_finite() || *c < 0.0) || costs.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::Input(format!("exit costs must be finite, non-negative and cumulative, got {costs:?}")));
    }
    Ok(())
}

/// Applies `th` to `scores`.
pub fn simulate(th: &Thresholds, scores: &ExitScores, costs: &[f64]) -> Result<Outcome> {
    check_costs(scores, costs)?;
    if th.per_exit.len() != scores.exits() {
        return Err(Error::Input(format!("{} thresholds for {} exits", th.per_exit.len(), scores.exits())));
    }
    if th.confidence != scores.confidence {
        return Err(Error::Input(format!(
            "thresholds for {:?} confidences applied to {:?} scores",
            th.confidence, scores.confidence
        )));
    }
    let k = scores.exits();
    let mut counts = vec![0usize; k];
    let (mut correct, mut cost) = (0usize, 0f64);
    for i in 0..scores.len() {
        let e = (0..k).find(|&e| th.stops(e, scores.conf[e][i])).unwrap_or(k - 1);
        counts[e] += 1;
        cost += costs[e];
        correct += usize::from(scores.pred[e][i] == scores.labels[i]);
    }
    let n = scores.len() as f64;
    Ok(Outcome { accuracy: correct as f64 / n, avg_cost: cost / n, exit_counts: counts })
}

/// MSDNet's dynamic evaluation: exit proportions `p_k = q^(k+1) / Σ_j q^(j+1)`;
/// walking the exits in order, among the samples not yet gone the top
/// `floor(N·p_k)` by exit-k confidence leave (the threshold is the confidence
/// of the last one taken; none leave when that count is 0). `q` must be > 0:
/// q < 1 favours early exits, q > 1 late ones.
pub fn dynamic_eval(scores: &ExitScores, costs: &[f64], q: f64) -> Result<(Thresholds, Outcome)> {
    check_costs(scores, costs)?;
    if !(q > 0.0 && q.is_finite()) {
        return Err(Error::Input(format!("q must be a finite number > 0, got {q}")));
    }
    let (k, n) = (scores.exits(), scores.len());
    let w: Vec<f64> = (1..=k).map(|j| q.powi(j as i32)).collect();
    let z: f64 = w.iter().sum();
    let mut per_exit = vec![f32::MAX; k];
    let mut gone = vec![false; n];
    for e in 0..k.saturating_sub(1) {
        let take = ((n as f64) * w[e] / z).floor() as usize;
        let mut order: Vec<usize> = (0..n).filter(|&i| !gone[i]).collect();
        order.sort_by(|&a, &b| scores.conf[e][b].total_cmp(&scores.conf[e][a]));
        if take > 0 {
            if let Some(&last) = order.get(take - 1) {
                per_exit[e] = scores.conf[e][last];
            }
        }
        for (g, &c) in gone.iter_mut().zip(&scores.conf[e]) {
            if c >= per_exit[e] {
                *g = true;
            }
        }
    }
    if let Some(last) = per_exit.last_mut() {
        *last = f32::MIN;
    }
    let th = Thresholds { confidence: scores.confidence, per_exit };
    let out = simulate(&th, scores, costs)?;
    Ok((th, out))
}

/// The reference sweep: q = 0.05, 0.10, …, 1.95.
pub fn default_qs() -> Vec<f64> {
    (1..40).map(|p| p as f64 / 20.0).collect()
}

/// [`dynamic_eval`] for every q.
pub fn sweep_q(scores: &ExitScores, costs: &[f64], qs: &[f64]) -> Result<Vec<(f64, Thresholds, Outcome)>> {
    qs.iter().map(|&q| dynamic_eval(scores, costs, q).map(|(t, o)| (q, t, o))).collect()
}

/// Thresholds whose average cost on `scores` is at most `budget`, with the
/// best accuracy found: the q family is searched by bisection for the budget,
/// then each threshold is moved along the held-out confidences while the cost
/// stays within budget and the accuracy rises.
pub fn solve_budget(scores: &ExitScores, costs: &[f64], budget: f64) -> Result<(Thresholds, Outcome)> {
    check_costs(scores, costs)?;
    let (min, max) = (costs[0], costs[costs.len() - 1]);
    if !(budget >= min && budget <= max) {
        return Err(Error::Budget { budget, min, max });
    }
    // Bisection over log q: cost grows with q.
    let (mut lo, mut hi) = (-12f64, 12f64);
    let mut best = dynamic_eval(scores, costs, lo.exp())?;
    if best.1.avg_cost > budget {
        // Even the earliest-heavy split is too costly: everything at exit 0.
        let th = Thresholds { confidence: scores.confidence, per_exit: vec![f32::MIN; scores.exits()] };
        best = (th.clone(), simulate(&th, scores, costs)?);
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let cand = dynamic_eval(scores, costs, mid.exp())?;
        if cand.1.avg_cost <= budget {
            if cand.1.accuracy >= best.1.accuracy || best.1.avg_cost > budget {
                best = cand;
            }
            lo = mid;
        } else {
            hi = mid;
        }
    }
    refine(scores, costs, budget, best)
}

/// Greedy coordinate moves of single thresholds over the observed confidences.
fn refine(
    scores: &ExitScores,
    costs: &[f64],
    budget: f64,
    start: (Thresholds, Outcome),
) -> Result<(Thresholds, Outcome)> {
    let (mut th, mut out) = start;
    let k = scores.exits();
    let candidates: Vec<Vec<f32>> = scores.conf[..k - 1]
        .iter()
        .map(|c| {
            let mut v = c.clone();
            v.sort_by(f32::total_cmp);
            v.dedup();
            // At most 64 quantiles per exit keep the search cheap.
            let step = v.len().div_ceil(64).max(1);
            let mut q: Vec<f32> = v.into_iter().step_by(step).collect();
            q.push(f32::MAX);
            q
        })
        .collect();
    for _round in 0..4 {
        let mut improved = false;
        for (e, cands) in candidates.iter().enumerate() {
            for &t in cands {
                let mut cand = th.clone();
                cand.per_exit[e] = t;
                let o = simulate(&cand, scores, costs)?;
                if o.avg_cost <= budget && o.accuracy > out.accuracy {
                    th = cand;
                    out = o;
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    Ok((th, out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic 3-exit set: later exits are more accurate and confident.
    pub(crate) fn synthetic(n: usize) -> ExitScores {
        let mut state = 7u64;
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % 10_000) as f32 / 10_000.0
        };
        let mut conf = vec![vec![0.0; n]; 3];
        let mut pred = vec![vec![0u32; n]; 3];
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        for i in 0..n {
            let difficulty = rnd();
            for k in 0..3 {
                let skill = 0.5 + 0.2 * k as f32;
                let c = (1.0 - difficulty) * skill + 0.3 * rnd();
                conf[k][i] = c.min(1.0);
                pred[k][i] = if c > 0.45 { labels[i] } else { (labels[i] + 1) % 10 };
            }
        }
        ExitScores { confidence: Confidence::MaxSoftmax, conf, pred, labels }
    }

    #[test]
    fn hand_computed_q_rule() {
        // 4 samples, 3 exits, q = 1: p = 1/3 each, floor(4/3) = 1 per exit.
        let s = ExitScores {
            confidence: Confidence::MaxSoftmax,
            conf: vec![vec![0.9, 0.2, 0.5, 0.1], vec![0.3, 0.8, 0.7, 0.2], vec![0.5; 4]],
            pred: vec![vec![0, 0, 0, 0], vec![1, 1, 1, 1], vec![2, 2, 2, 2]],
            labels: vec![0, 1, 2, 2],
        };
        let (th, out) = dynamic_eval(&s, &[1.0, 2.0, 4.0], 1.0).unwrap();
        // Exit 0 takes sample 0 (0.9); exit 1 takes sample 1 (0.8) among the rest.
        assert_eq!(th.per_exit[..2], [0.9, 0.8]);
        assert_eq!(out.exit_counts, vec![1, 1, 2]);
        assert_eq!(out.accuracy, 1.0);
        assert!((out.avg_cost - (1.0 + 2.0 + 8.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn proportions_follow_q_and_cost_grows_with_q() {
        let s = synthetic(2000);
        let costs = [1.0, 2.0, 3.0];
        let (_, out) = dynamic_eval(&s, &costs, 0.5).unwrap();
        // p ∝ [0.5, 0.25, 0.125] -> [4/7, 2/7, 1/7] of 2000.
        assert_eq!(out.exit_counts[0], 1142);
        assert_eq!(out.exit_counts[1], 571);
        let curve = sweep_q(&s, &costs, &default_qs()).unwrap();
        assert!(curve.windows(2).all(|w| w[0].2.avg_cost <= w[1].2.avg_cost + 1e-12));
        assert!(dynamic_eval(&s, &costs, 0.0).is_err());
        assert!(dynamic_eval(&s, &costs, -1.0).is_err());
        assert!(dynamic_eval(&s, &costs, f64::NAN).is_err());
    }

    #[test]
    fn solver_meets_the_budget_and_beats_the_q_rule() {
        let s = synthetic(2000);
        let costs = [1.0, 2.0, 3.0];
        let (_, q_out) = dynamic_eval(&s, &costs, 0.6).unwrap();
        let (th, out) = solve_budget(&s, &costs, q_out.avg_cost).unwrap();
        assert!(out.avg_cost <= q_out.avg_cost + 1e-12);
        assert!(out.accuracy >= q_out.accuracy, "{out:?} vs {q_out:?}");
        assert_eq!(simulate(&th, &s, &costs).unwrap(), out);
        assert!(matches!(solve_budget(&s, &costs, 0.5), Err(Error::Budget { .. })));
        assert!(matches!(solve_budget(&s, &costs, 3.5), Err(Error::Budget { .. })));
        // The full model's budget gives the full model's accuracy or better.
        let (_, full) = solve_budget(&s, &costs, 3.0).unwrap();
        let last = s.pred[2].iter().zip(&s.labels).filter(|(p, y)| p == y).count() as f64 / 2000.0;
        assert!(full.accuracy >= last);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let mut s = synthetic(10);
        assert!(
            simulate(&Thresholds { confidence: Confidence::MaxSoftmax, per_exit: vec![0.5; 2] }, &s, &[1.0, 2.0, 3.0])
                .is_err()
        );
        assert!(dynamic_eval(&s, &[1.0, 2.0], 1.0).is_err());
        assert!(dynamic_eval(&s, &[3.0, 2.0, 1.0], 1.0).is_err());
        s.labels.pop();
        assert!(s.validate().is_err());
        assert!(ExitScores::from_logits(&[], &[], Confidence::Margin).is_err());
    }
}
