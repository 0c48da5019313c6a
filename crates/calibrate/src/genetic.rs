//! SCAN's genetic-algorithm threshold search (Zhang et al., "SCAN: A Scalable
//! Neural Networks Framework Towards Compact and Efficient Models", NeurIPS
//! 2019). The paper searches the per-exit thresholds with a genetic algorithm
//! trading accuracy against FLOPs; its public code has no search, so this one
//! is ours:
//!
//! - an individual is the vector of the early exits' thresholds, each within
//!   its exit's observed confidence range (the top a little above the largest
//!   confidence, meaning "nobody leaves");
//! - fitness is `accuracy − λ·(avg cost / full cost)`; with a budget,
//!   individuals over it rank below every individual within it (the less over,
//!   the better), so the result meets the budget;
//! - the first generation holds the "everyone leaves at exit 0" setting and
//!   the q rule's thresholds for the reference q sweep (at most half the
//!   population), the rest drawn uniformly; so the result is never worse than
//!   the best of those;
//! - each generation keeps the `elite` best, and breeds the rest by
//!   tournament selection, uniform crossover and Gaussian mutation;
//! - a seeded ChaCha8 generator makes it deterministic.

use crate::budget::Budget;
use crate::rules::{Fallback, Outcome, Thresholds, apply, check_inputs, default_qs, penalised, q_rule};
use crate::scores::ExitScores;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Genetic search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaParams {
    /// Individuals per generation (at least 2).
    pub population: usize,
    /// Generations bred after the first.
    pub generations: usize,
    /// Probability that a gene (threshold) mutates, in [0, 1].
    pub mutation_rate: f64,
    /// Standard deviation of a mutation, as a fraction of the exit's
    /// confidence range.
    pub mutation_scale: f64,
    /// Tournament size for selection (1 to `population`).
    pub tournament: usize,
    /// Best individuals copied unchanged into the next generation (1 to
    /// `population − 1`, so the best is never lost).
    pub elite: usize,
    /// Weight λ ≥ 0 of the normalised cost in the fitness.
    pub lambda: f64,
    /// Seed of the random generator.
    pub seed: u64,
    /// The exit rule's fallback: with [`Fallback::Ensemble`] the last exit's
    /// threshold is searched too (SCAN's rule).
    #[serde(default)]
    pub fallback: Fallback,
}

impl Default for GaParams {
    fn default() -> Self {
        Self {
            population: 80,
            generations: 40,
            mutation_rate: 0.3,
            mutation_scale: 0.1,
            tournament: 3,
            elite: 4,
            lambda: 0.1,
            seed: 0,
            fallback: Fallback::LastExit,
        }
    }
}

impl GaParams {
    /// Checks every setting is in its range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::GaParams(what));
        if self.population < 2 {
            return bad(format!("population must be at least 2, got {}", self.population));
        }
        if self.tournament == 0 || self.tournament > self.population {
            return bad(format!("tournament must be 1 to population ({}), got {}", self.population, self.tournament));
        }
        if self.elite == 0 || self.elite >= self.population {
            return bad(format!("elite must be 1 to population - 1 ({}), got {}", self.population - 1, self.elite));
        }
        if !(0.0..=1.0).contains(&self.mutation_rate) {
            return bad(format!("mutation_rate must be in [0, 1], got {}", self.mutation_rate));
        }
        if !(self.mutation_scale >= 0.0 && self.mutation_scale.is_finite()) {
            return bad(format!("mutation_scale must be finite and >= 0, got {}", self.mutation_scale));
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return bad(format!("lambda must be finite and >= 0, got {}", self.lambda));
        }
        Ok(())
    }
}

/// An evaluated individual.
struct Scored {
    genes: Vec<f64>,
    outcome: Outcome,
    /// Average cost above the budget (0 within it).
    over: f64,
    fitness: f64,
}

impl Scored {
    /// Best first: within budget (or less over), then fitter.
    fn rank(&self, other: &Scored) -> Ordering {
        self.over.total_cmp(&other.over).then(other.fitness.total_cmp(&self.fitness))
    }
}

/// The search problem: scores, costs, budget and gene ranges.
struct Problem<'a> {
    scores: &'a ExitScores,
    costs: &'a [f64],
    params: &'a GaParams,
    budget: Option<f64>,
    /// Per early exit: the lowest and highest threshold worth trying.
    ranges: Vec<(f64, f64)>,
}

impl Problem<'_> {
    fn thresholds(&self, genes: &[f64]) -> Thresholds {
        let mut per_exit: Vec<f32> = genes.iter().map(|&g| g as f32).collect();
        if per_exit.len() < self.scores.exits() {
            per_exit.push(f32::MIN);
        }
        Thresholds::new(self.scores.confidence, per_exit).with_fallback(self.params.fallback)
    }

    fn evaluate(&self, genes: Vec<f64>) -> Scored {
        let outcome = apply(&self.thresholds(&genes), self.scores, self.costs);
        let full = self.costs.last().copied().unwrap_or(0.0);
        let fitness = penalised(outcome.accuracy, outcome.avg_cost, self.params.lambda, full);
        let over = self.budget.map_or(0.0, |b| (outcome.avg_cost - b).max(0.0));
        Scored { genes, outcome, over, fitness }
    }

    /// Genes of `th` clamped into the ranges: `f32::MAX` ("nobody") becomes
    /// the top, `f32::MIN` ("everybody") the lowest confidence, which select
    /// the same samples.
    fn genes_of(&self, th: &Thresholds) -> Vec<f64> {
        self.ranges.iter().zip(&th.per_exit).map(|(&(lo, hi), &t)| f64::from(t).clamp(lo, hi)).collect()
    }

    /// The first generation: exit-0-only, q-rule seeds, then random.
    fn first_generation(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<f64>> {
        let n = self.params.population;
        let mut pop = vec![self.genes_of(&Thresholds::first_exit(self.scores.confidence, self.scores.exits()))];
        let qs = default_qs();
        let seeds = qs.len().min((n / 2).saturating_sub(1));
        for j in 0..seeds {
            let q = qs.get(j * qs.len() / seeds).copied().unwrap_or(1.0);
            pop.push(self.genes_of(&q_rule(self.scores, q)));
        }
        while pop.len() < n {
            pop.push(self.ranges.iter().map(|&(lo, hi)| rng.random_range(lo..=hi)).collect());
        }
        pop
    }

    /// A child of two tournament winners of `ranked` (sorted best first).
    fn breed(&self, ranked: &[Scored], rng: &mut ChaCha8Rng) -> Vec<f64> {
        let mut pick = || (0..self.params.tournament).map(|_| rng.random_range(0..ranked.len())).min().unwrap_or(0);
        let (a, b) = (pick(), pick());
        let (a, b) = (&ranked[a].genes, &ranked[b].genes);
        a.iter()
            .zip(b)
            .zip(&self.ranges)
            .map(|((&x, &y), &(lo, hi))| {
                let mut v = if rng.random_bool(0.5) { x } else { y };
                if rng.random_bool(self.params.mutation_rate) {
                    v += self.params.mutation_scale * (hi - lo) * normal(rng);
                }
                v.clamp(lo, hi)
            })
            .collect()
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Per searched exit (the early ones; every exit with
/// [`Fallback::Ensemble`]), the range thresholds are searched in: from the
/// lowest confidence (everybody leaves) to a little above the highest (nobody
/// does).
fn gene_ranges(scores: &ExitScores, fallback: Fallback) -> Vec<(f64, f64)> {
    let searched = match fallback {
        Fallback::LastExit => scores.exits() - 1,
        Fallback::Ensemble => scores.exits(),
    };
    scores.conf[..searched]
        .iter()
        .map(|c| {
            let lo = c.iter().copied().fold(f32::INFINITY, f32::min) as f64;
            let hi = c.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            (lo, hi + (0.01 * (hi - lo)).max(1e-3 * (1.0 + hi.abs())))
        })
        .collect()
}

/// Searches thresholds with the genetic algorithm and returns the best
/// individual seen. With `budget` (absolute MFLOPs per image; convert a
/// fraction with [`Budget::mflops`]) the result's average cost on `scores`
/// is at most the budget.
///
/// # Shapes
/// - `costs`: `[exits]`, cumulative per-exit cost
pub fn genetic_search(
    scores: &ExitScores,
    costs: &[f64],
    params: &GaParams,
    budget: Option<f64>,
) -> Result<(Thresholds, Outcome)> {
    check_inputs(scores, costs)?;
    params.validate()?;
    if params.fallback == Fallback::Ensemble && scores.ensemble.is_none() {
        return Err(Error::NoEnsemble);
    }
    let budget = budget.map(|b| Budget::Mflops(b).mflops(costs)).transpose()?;
    let problem = Problem { scores, costs, params, budget, ranges: gene_ranges(scores, params.fallback) };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut ranked: Vec<Scored> = problem.first_generation(&mut rng).into_iter().map(|g| problem.evaluate(g)).collect();
    ranked.sort_by(Scored::rank);
    for _ in 0..params.generations {
        let children: Vec<Vec<f64>> =
            (params.elite..params.population).map(|_| problem.breed(&ranked, &mut rng)).collect();
        ranked.truncate(params.elite);
        ranked.extend(children.into_iter().map(|g| problem.evaluate(g)));
        ranked.sort_by(Scored::rank);
    }
    let best = ranked.into_iter().next().ok_or_else(|| Error::GaParams("empty population".into()))?;
    Ok((problem.thresholds(&best.genes), best.outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{dynamic_eval, simulate, sweep_q};
    use crate::test_util::synthetic;

    const COSTS: [f64; 3] = [1.0, 2.0, 3.0];

    #[test]
    fn deterministic_for_a_seed() {
        let s = synthetic(600);
        let p = GaParams { generations: 10, ..GaParams::default() };
        let (t1, o1) = genetic_search(&s, &COSTS, &p, None).unwrap();
        let (t2, o2) = genetic_search(&s, &COSTS, &p, None).unwrap();
        assert_eq!((&t1, &o1), (&t2, &o2));
        assert_eq!(simulate(&t1, &s, &COSTS).unwrap(), o1);
        assert_eq!(*t1.per_exit.last().unwrap(), f32::MIN);
        // Another seed explores differently.
        let (t3, _) = genetic_search(&s, &COSTS, &GaParams { seed: 1, ..p }, None).unwrap();
        assert_ne!(t1, t3);
    }

    #[test]
    fn meets_a_budget_and_is_no_worse_than_the_q_rule() {
        let s = synthetic(1500);
        let p = GaParams { lambda: 0.0, ..GaParams::default() };
        for q in [0.3, 0.8] {
            let (_, q_out) = dynamic_eval(&s, &COSTS, q).unwrap();
            let (_, out) = genetic_search(&s, &COSTS, &p, Some(q_out.avg_cost)).unwrap();
            assert!(out.avg_cost <= q_out.avg_cost, "q = {q}: {out:?}");
            assert!(out.accuracy >= q_out.accuracy, "q = {q}: {} < {}", out.accuracy, q_out.accuracy);
        }
        // The cheapest budget: everyone leaves at exit 0.
        let (_, out) = genetic_search(&s, &COSTS, &p, Some(1.0)).unwrap();
        assert_eq!(out.exit_counts, vec![1500, 0, 0]);
    }

    #[test]
    fn lambda_trades_accuracy_for_cost() {
        let s = synthetic(1500);
        let fitness = |o: &Outcome, lambda: f64| o.accuracy - lambda * o.avg_cost / 3.0;
        let mut costs_found = Vec::new();
        for lambda in [0.02, 0.3] {
            let p = GaParams { lambda, generations: 20, ..GaParams::default() };
            let (_, out) = genetic_search(&s, &COSTS, &p, None).unwrap();
            // At least as fit as every setting of the reference q sweep.
            for (q, _, o) in sweep_q(&s, &COSTS, &default_qs()).unwrap() {
                assert!(fitness(&out, lambda) >= fitness(&o, lambda), "lambda {lambda}, q {q}");
            }
            costs_found.push(out.avg_cost);
        }
        assert!(costs_found[1] < costs_found[0], "{costs_found:?}");
    }

    /// With the ensemble fallback the last threshold is searched too, and
    /// the search never does worse than the same thresholds ending in the
    /// last exit (every last-exit setting is in its search space).
    #[test]
    fn ensemble_fallback_searches_the_last_exit() {
        let s = synthetic(800);
        let base = GaParams { lambda: 0.05, generations: 15, ..GaParams::default() };
        let (t_last, o_last) = genetic_search(&s, &COSTS, &base, None).unwrap();
        assert_eq!(o_last.fallback, 0);
        let p = GaParams { fallback: Fallback::Ensemble, ..base };
        let (t, o) = genetic_search(&s, &COSTS, &p, None).unwrap();
        assert_eq!(t.fallback, Fallback::Ensemble);
        assert_eq!(simulate(&t, &s, &COSTS).unwrap(), o);
        let fit = |o: &Outcome| o.accuracy - 0.05 * o.avg_cost / 3.0;
        let same_as_last = simulate(&t_last.clone().with_fallback(Fallback::Ensemble), &s, &COSTS).unwrap();
        assert!(fit(&o) >= fit(&same_as_last), "{o:?} vs {same_as_last:?}");
        // Scores without logits cannot give the ensemble answer.
        let parts = ExitScores::from_parts(s.confidence, s.conf.clone(), s.pred.clone(), s.labels.clone()).unwrap();
        assert!(matches!(genetic_search(&parts, &COSTS, &p, None), Err(Error::NoEnsemble)));
    }

    #[test]
    fn bad_parameters_are_errors() {
        let s = synthetic(20);
        let d = GaParams::default();
        let bad = [
            GaParams { population: 1, ..d.clone() },
            GaParams { tournament: 0, ..d.clone() },
            GaParams { tournament: 81, ..d.clone() },
            GaParams { elite: 0, ..d.clone() },
            GaParams { elite: 80, ..d.clone() },
            GaParams { mutation_rate: 1.5, ..d.clone() },
            GaParams { mutation_scale: f64::NAN, ..d.clone() },
            GaParams { lambda: -0.1, ..d.clone() },
        ];
        for p in bad {
            let e = genetic_search(&s, &COSTS, &p, None).unwrap_err().to_string();
            assert!(e.starts_with("genetic search parameters: "), "{e}");
        }
        assert!(matches!(genetic_search(&s, &COSTS, &d, Some(9.0)), Err(Error::Budget { .. })));
        assert!(matches!(genetic_search(&s, &COSTS[..2], &d, None), Err(Error::Length { .. })));
        // The smallest population works.
        let tiny = GaParams { population: 2, elite: 1, tournament: 2, generations: 3, ..d };
        assert!(genetic_search(&s, &COSTS, &tiny, Some(2.0)).unwrap().1.avg_cost <= 2.0);
    }
}
