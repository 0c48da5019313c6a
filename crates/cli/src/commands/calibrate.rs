//! `anytime calibrate`: exit thresholds for a budget, from the held-out split.

use super::eval::EvalSplit;
use super::input::{ModelSel, PreArgs, split_images};
use anyhow::{Context, Result, bail};
use anytime_calibrate::{
    Calibration, Confidence, ExitScores, Fallback, GaParams, Method, default_qs, dynamic_eval, genetic_search,
    solve_budget, sweep_q,
};
use anytime_data::fmnist::DEFAULT_FASHION_MNIST_DIR;
use anytime_eval::collect_logits_from;
use std::path::PathBuf;

/// Threshold search methods.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodArg {
    /// MSDNet's dynamic-evaluation rule (exit proportions ∝ q^k).
    Q,
    /// The budget solver (q rule, then per-threshold refinement).
    Solver,
    /// SCAN's genetic-algorithm search.
    Ga,
}

/// What a sample confident at no exit gets.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackArg {
    /// The last exit's answer (MSDNet, RANet).
    LastExit,
    /// The mean of every exit's logits, and the last exit gets a threshold
    /// too (SCAN's rule; searched by `--method ga`).
    Ensemble,
}

/// Confidence measures.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfidenceArg {
    /// Largest softmax probability.
    MaxSoftmax,
    /// One minus the normalised entropy.
    Entropy,
    /// Gap between the two largest probabilities.
    Margin,
}

impl From<ConfidenceArg> for Confidence {
    fn from(c: ConfidenceArg) -> Self {
        match c {
            ConfidenceArg::MaxSoftmax => Confidence::MaxSoftmax,
            ConfidenceArg::Entropy => Confidence::Entropy,
            ConfidenceArg::Margin => Confidence::Margin,
        }
    }
}

/// Arguments of `anytime calibrate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    sel: ModelSel,
    #[command(flatten)]
    pre: PreArgs,
    /// Target average MFLOPs per image.
    #[arg(long, conflicts_with = "budget_fraction", allow_negative_numbers = true, value_parser = super::num::BUDGET)]
    budget: Option<f64>,
    /// Target average cost as a fraction of the full model's.
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::FRACTION)]
    budget_fraction: Option<f64>,
    /// Search method.
    #[arg(long, value_enum, default_value = "solver")]
    method: MethodArg,
    /// q of the `q` method (without a budget).
    #[arg(long, allow_negative_numbers = true, value_parser = super::num::Q)]
    q: Option<f64>,
    /// Cost weight of the genetic search's fitness.
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true, value_parser = super::num::LAMBDA)]
    lambda: f64,
    /// Confidence measure.
    #[arg(long, value_enum, default_value = "max-softmax")]
    confidence: ConfidenceArg,
    /// The exit rule's fallback when no exit is confident.
    #[arg(long, value_enum, default_value = "last-exit")]
    fallback: FallbackArg,
    /// Directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = DEFAULT_FASHION_MNIST_DIR)]
    data_dir: PathBuf,
    /// Another dataset, `KIND:DIR` (`fashion-mnist`, `cifar10`, `cifar100`,
    /// `imagefolder`), as `anytime eval --data`: its held-out split.
    #[arg(long, conflicts_with = "data_dir")]
    data: Option<super::eval::DataSource>,
    /// Output calibration JSON.
    #[arg(long)]
    output: PathBuf,
    /// Where the model runs: `cpu` (default), `cuda`, `cuda:N` or `metal`
    /// (a binary built with the `cuda`, `cudnn` or `metal` feature); batches
    /// are built on the CPU and moved there.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Resolves `--budget` / `--budget-fraction` against the exit costs of
/// `model`, before any work: the budget must lie between the first exit's
/// cost and the full model's. A budget within 0.05 MFLOPs of either end (the
/// precision `anytime models` prints, e.g. 29.9 for 29.8586) is taken as
/// that end.
pub fn budget_mflops(model: &str, budget: Option<f64>, fraction: Option<f64>, costs: &[f64]) -> Result<Option<f64>> {
    let (Some(&first), Some(&full)) = (costs.first(), costs.last()) else { bail!("{model} has no exits") };
    let b = match (budget, fraction) {
        (Some(b), _) => b,
        (None, Some(f)) => {
            if !(f > 0.0 && f <= 1.0) {
                bail!("--budget-fraction must be in (0, 1], got {f}");
            }
            f * full
        }
        (None, None) => return Ok(None),
    };
    const PRINTED: f64 = 0.05;
    if b < first - PRINTED || b > full + PRINTED || !b.is_finite() {
        bail!(
            "budget {b:.3} MFLOPs is outside {model}'s range: {first:.3} (first exit) to {full:.3} (full model) MFLOPs per image"
        );
    }
    Ok(Some(b.clamp(first, full)))
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let fallback = match a.fallback {
        FallbackArg::LastExit => Fallback::LastExit,
        FallbackArg::Ensemble => Fallback::Ensemble,
    };
    if fallback == Fallback::Ensemble && a.method != MethodArg::Ga {
        bail!(
            "--fallback ensemble needs --method ga: the q rule and the budget solver set no threshold at the last exit"
        );
    }
    anytime_io::check_replaceable(&a.output)
        .with_context(|| format!("cannot write --output {}", a.output.display()))?;
    let device = super::parse_device(&a.device)?;
    let sel = a.sel.load(&a.pre, &device)?;
    let path = sel.weights.clone();
    super::ensure_not_input("--output", &a.output, &[path.as_path()])?;
    let (_, h, w) = sel.input.shape;
    let costs = sel.model.exit_costs(h, w)?;
    let costs = costs.mflops(costs.headline);
    let budget = budget_mflops(&sel.name, a.budget, a.budget_fraction, &costs)?;
    let source = split_images(&sel, a.data.as_ref(), &a.data_dir, EvalSplit::Val)?.source(&sel, 256, &device)?;
    let (logits, labels) = collect_logits_from(sel.model.as_ref(), source.as_ref())?;
    let n = labels.len();
    for s in source.skipped() {
        eprintln!("skipped unreadable image {}: {}", s.path.display(), s.reason);
    }
    let scores = ExitScores::from_logits(&logits, &labels, a.confidence.into())?;
    let (method, (th, out)) = match (a.method, budget) {
        (MethodArg::Q, None) => {
            let q = a.q.context("the q method needs --q Q (or a budget)")?;
            (Method::Q { q }, dynamic_eval(&scores, &costs, q)?)
        }
        (MethodArg::Q, Some(b)) => {
            let best = sweep_q(&scores, &costs, &default_qs())?
                .into_iter()
                .filter(|(_, _, o)| o.avg_cost <= b)
                .max_by(|x, y| x.2.accuracy.total_cmp(&y.2.accuracy))
                .context("no q of the sweep meets the budget")?;
            (Method::Q { q: best.0 }, (best.1, best.2))
        }
        (MethodArg::Solver, Some(b)) => (Method::Solver { budget_mflops: b }, solve_budget(&scores, &costs, b)?),
        (MethodArg::Solver, None) => bail!("the solver needs --budget MFLOPS or --budget-fraction F"),
        (MethodArg::Ga, b) => {
            let p = GaParams { lambda: a.lambda, fallback, ..GaParams::default() };
            (Method::Genetic { budget_mflops: b, lambda: a.lambda }, genetic_search(&scores, &costs, &p, b)?)
        }
    };
    let cal = Calibration {
        model: sel.name.clone(),
        weights_sha256: anytime_io::sha256_file(&path)?,
        method,
        thresholds: th,
        exit_mflops: costs,
        holdout_images: n,
        holdout_accuracy: out.accuracy,
        holdout_mflops: out.avg_cost,
    };
    cal.save(&a.output)?;
    eprintln!(
        "wrote {}: held-out accuracy {:.2}% at {:.2} MFLOPs/image, exits used {:?}{}",
        a.output.display(),
        100.0 * out.accuracy,
        out.avg_cost,
        out.exit_counts,
        if fallback == Fallback::Ensemble {
            format!(" ({} of them the ensemble)", out.fallback)
        } else {
            String::new()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::budget_mflops;

    /// A budget is checked against the model's range before any work; one
    /// within the printed precision of an end (29.9 for 29.8586) is that end.
    #[test]
    fn budgets_are_checked_with_the_printed_precision() {
        let costs = [4.838, 11.0, 29.8586];
        assert_eq!(budget_mflops("m", Some(29.9), None, &costs).ok().flatten(), Some(29.8586));
        assert_eq!(budget_mflops("m", Some(4.8), None, &costs).ok().flatten(), Some(4.838));
        assert_eq!(budget_mflops("m", None, Some(0.5), &costs).ok().flatten(), Some(0.5 * 29.8586));
        let e = budget_mflops("m", Some(31.0), None, &costs).unwrap_err().to_string();
        assert!(e.contains("outside m's range") && e.contains("29.859"), "{e}");
        assert!(budget_mflops("m", Some(4.7), None, &costs).is_err());
        assert_eq!(budget_mflops("m", None, None, &costs).ok().flatten(), None);
    }
}
