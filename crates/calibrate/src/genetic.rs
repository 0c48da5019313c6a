//! SCAN's genetic-algorithm threshold search (Zhang et al., NeurIPS 2019):
//! a population of threshold vectors evolves by tournament selection, uniform
//! crossover and Gaussian mutation, keeping the best (elitism). Fitness is
//! `accuracy − λ·(cost / full cost)`, minus a large penalty for exceeding an
//! optional budget. Seeded, hence deterministic.

use crate::rules::{ExitScores, Outcome, Thresholds, simulate};
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Genetic search settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GaParams {
    /// Individuals per generation.
    pub population: usize,
    /// Generations.
    pub generations: usize,
    /// Probability that a gene (threshold) mutates.
    pub mutation_rate: f64,
    /// Standard deviation of a mutation.
    pub mutation_scale: f64,
    /// Tournament size for selection.
    pub tournament: usize,
    /// Individuals copied unchanged into the next generation.
    pub elite: usize,
    /// Weight of the normalised cost in the fitness.
    pub lambda: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for GaParams {
    fn default() -> Self {
        Self {
            population: 64,
            generations: 60,
            mutation_rate: 0.2,
            mutation_scale: 0.08,
            tournament: 3,
            elite: 4,
            lambda: 0.1,
            seed: 0,
        }
    }
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Searches thresholds with the genetic algorithm; with `budget`, individuals
/// whose average cost exceeds it are penalised so the result meets it.
pub fn genetic_search(
    scores: &ExitScores,
    costs: &[f64],
    p: &GaParams,
    budget: Option<f64>,
) -> Result<(Thresholds, Outcome)> {
    if p.population < 2 || p.tournament == 0 || p.elite >= p.population {
        return Err(Error::Input(format!(
            "genetic search needs population >= 2, tournament >= 1, elite < population: {p:?}"
        )));
    }
    if !(0.0..=1.0).contains(&p.mutation_rate)
        || p.mutation_scale.is_nan()
        || p.mutation_scale < 0.0
        || !p.lambda.is_finite()
    {
        return Err(Error::Input(format!("bad genetic search rates: {p:?}")));
    }
    if let Some(b) = budget {
        let (min, max) = (costs.first().copied().unwrap_or(0.0), costs.last().copied().unwrap_or(0.0));
        if !(b >= min && b <= max) {
            return Err(Error::Budget { budget: b, min, max });
        }
    }
    let k = scores.exits();
    let full = costs.last().copied().unwrap_or(1.0).max(1e-12);
    let genes = k.saturating_sub(1);
    let to_th = |g: &[f64]| {
        let mut per_exit: Vec<f32> = g.iter().map(|&v| v as f32).collect();
        per_exit.push(f32::MIN);
        Thresholds { confidence: scores.confidence, per_exit }
    };
    let fitness = |o: &Outcome| {
        let over = budget.map_or(0.0, |b| (o.avg_cost - b).max(0.0) / full);
        o.accuracy - p.lambda * o.avg_cost / full - 10.0 * over
    };
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut pop: Vec<Vec<f64>> = (0..p.population).map(|_| (0..genes).map(|_| rng.random::<f64>()).collect()).collect();
    let mut scored: Vec<(f64, Vec<f64>, Outcome)> = Vec::with_capacity(p.population);
    for generation in 0..=p.generations {
        scored.clear();
        for g in &pop {
            let o = simulate(&to_th(g), scores, costs)?;
            scored.push((fitness(&o), g.clone(), o));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        if generation == p.generations {
            break;
        }
        let pick = |rng: &mut ChaCha8Rng| -> usize {
            (0..p.tournament).map(|_| rng.random_range(0..scored.len())).min().unwrap_or(0)
        };
        let mut next: Vec<Vec<f64>> = scored.iter().take(p.elite).map(|s| s.1.clone()).collect();
        while next.len() < p.population {
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            let child: Vec<f64> = (0..genes)
                .map(|i| {
                    let mut v = if rng.random_bool(0.5) { scored[a].1[i] } else { scored[b].1[i] };
                    if rng.random_bool(p.mutation_rate) {
                        v += p.mutation_scale * normal(&mut rng);
                    }
                    v.clamp(0.0, 1.0)
                })
                .collect();
            next.push(child);
        }
        pop = next;
    }
    let (_, g, o) = scored.into_iter().next().ok_or_else(|| Error::Input("empty population".into()))?;
    Ok((to_th(&g), o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{dynamic_eval, tests::synthetic};

    #[test]
    fn deterministic_and_no_worse_than_the_q_rule() {
        let s = synthetic(1500);
        let costs = [1.0, 2.0, 3.0];
        let (_, q) = dynamic_eval(&s, &costs, 0.8).unwrap();
        let p = GaParams { generations: 30, ..Default::default() };
        let (t1, o1) = genetic_search(&s, &costs, &p, Some(q.avg_cost)).unwrap();
        let (t2, o2) = genetic_search(&s, &costs, &p, Some(q.avg_cost)).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(o1, o2);
        assert!(o1.avg_cost <= q.avg_cost + 1e-9, "{o1:?}");
        assert!(o1.accuracy >= q.accuracy - 0.01, "{o1:?} vs {q:?}");
        assert!(genetic_search(&s, &costs, &GaParams { population: 1, ..p }, None).is_err());
        assert!(genetic_search(&s, &costs, &GaParams::default(), Some(9.0)).is_err());
    }
}
