//! Measurements on a model and a batch loader: the anytime pass, real early
//! exit with given thresholds, the q sweep, and the held-out logits that
//! calibration works on.

use crate::error::{Error, Result};
use crate::exits::exit_logits;
use crate::metrics::evaluate_anytime;
use crate::report::{
    CalibratedRun, EarlyExitRun, EvalReport, ExitReport, MethodPoint, Split, SweepPoint, ThresholdMethod, saving_ratio,
};
use anytime_calibrate::{Confidence, ExitScores, Thresholds, sweep_q};
use anytime_data::dataset::Dataset;
use anytime_data::loader::{Augment, BatchConfig, Loader};
use anytime_data::source::EvalSource;
use anytime_models::{MultiExit, classify_budgeted};
use std::sync::Arc;
use std::time::Instant;

/// Logits `[exit][sample][class]`.
pub type ExitLogits = Vec<Vec<Vec<f32>>>;

/// The q values of the sweep: 0.1, 0.3, …, 1.9.
pub fn sweep_qs() -> Vec<f64> {
    (1..=10).map(|i| 0.2 * i as f64 - 0.1).collect()
}

/// Every exit's logits and the labels of `ds` (in order, batches of 256,
/// no augmentation): what threshold calibration works on.
pub fn collect_logits(model: &dyn MultiExit, ds: Arc<Dataset>) -> Result<(ExitLogits, Vec<u32>)> {
    collect_logits_on(model, ds, &candle_core::Device::Cpu)
}

/// [`collect_logits`] for a model on `device`.
pub fn collect_logits_on(
    model: &dyn MultiExit,
    ds: Arc<Dataset>,
    device: &candle_core::Device,
) -> Result<(ExitLogits, Vec<u32>)> {
    let loader = Loader::in_order(ds, 256)?.on_device(device.clone());
    collect_logits_from(model, &loader)
}

/// Every exit's logits and the labels of the images `source` reads, in order
/// (unreadable ones left out).
pub fn collect_logits_from(model: &dyn MultiExit, source: &dyn EvalSource) -> Result<(ExitLogits, Vec<u32>)> {
    let mut logits = vec![Vec::new(); model.num_exits()];
    let mut labels = Vec::new();
    for b in source.batches() {
        let b = b?;
        for (k, l) in exit_logits(model, &b.images)?.iter().enumerate() {
            logits[k].extend(l.to_vec2::<f32>()?);
        }
        labels.extend(b.labels.to_vec1::<u32>()?);
    }
    if labels.is_empty() {
        return Err(Error::Invalid("no readable images to collect logits from".into()));
    }
    Ok((logits, labels))
}

/// Cumulative MFLOPs per image at each exit for the source's image size,
/// by the model's own rule (the MSDNet/RANet reference counter; GFNet's
/// multiply-accumulates).
pub fn exit_mflops(model: &dyn MultiExit, source: &dyn EvalSource) -> Result<Vec<f64>> {
    let (_, h, w) = source.sample_shape();
    let costs = model.exit_costs(h, w)?;
    Ok(costs.mflops(costs.headline))
}

/// The anytime pass over every batch of `source` (after one untimed batch, so
/// that no timing includes a cold start): accuracy (top-1, and top-5 for
/// more than five classes), cumulative MFLOPs and cumulative ms per image at
/// each exit. An error when no image could be read.
pub fn anytime_exits(model: &dyn MultiExit, source: &dyn EvalSource, mflops: &[f64]) -> Result<Vec<ExitReport>> {
    if mflops.len() != model.num_exits() {
        return Err(Error::Invalid(format!("{} exit costs for {} exits", mflops.len(), model.num_exits())));
    }
    if let Some(b) = source.batches().next() {
        exit_logits(model, &b?.images)?;
    }
    let batches =
        source.batches().map(|b| b.map(|b| (b.images, b.labels)).map_err(|e| candle_core::Error::Msg(e.to_string())));
    let ev = evaluate_anytime(model, batches)?;
    if ev.accuracy.total == 0 {
        return Err(Error::Invalid(format!("none of the {} images could be read", source.len())));
    }
    Ok(ev
        .accuracy
        .fractions()
        .iter()
        .zip(ev.accuracy.top5_fractions())
        .zip(mflops)
        .zip(ev.ms_per_image())
        .enumerate()
        .map(|(exit, (((&accuracy, top5), &mflops), ms_per_image))| ExitReport {
            exit,
            accuracy,
            top5,
            mflops,
            ms_per_image,
        })
        .collect())
}

/// Where a model's patches fall on images whose object is known (GFNet on
/// cluttered canvases): per exit, the share of the images of `ds` whose
/// `patch`-pixel patch (the stage's `coords` extra, row then column) holds
/// the whole `side`-pixel square at `items[i]` (its top-left corner); `None`
/// at exits whose stage reports no coordinates.
pub fn patch_hits(
    model: &dyn MultiExit,
    ds: Arc<Dataset>,
    items: &[(usize, usize)],
    side: usize,
    patch: usize,
    device: &candle_core::Device,
) -> Result<Vec<Option<f64>>> {
    if items.len() != ds.len() {
        return Err(Error::Invalid(format!("{} item positions for {} images", items.len(), ds.len())));
    }
    if side > patch {
        return Err(Error::Invalid(format!("a {side}-pixel item cannot fit a {patch}-pixel patch")));
    }
    let loader = Loader::new(
        ds,
        BatchConfig { batch_size: 256, shuffle: false, seed: 0, augment: Augment::default(), drop_last: false },
    )?
    .on_device(device.clone());
    let mode = anytime_blocks::Mode::inference();
    let mut hits: Vec<Option<usize>> = vec![None; model.num_exits()];
    let mut done = 0usize;
    for b in loader.epoch(0, 0) {
        let (xs, _) = b?;
        let n = xs.dim(0)?;
        let mut state = model.begin(&xs, &mode)?;
        for hit in hits.iter_mut() {
            model.advance(&mut state, &mode)?;
            let Some((_, coords)) = model.stage_extras(&mut state).into_iter().find(|(k, _)| *k == "coords") else {
                continue;
            };
            let coords = coords.to_vec2::<i32>()?;
            let inside = |at: usize, c: i32| c >= 0 && (c as usize) <= at && at + side <= c as usize + patch;
            let count = coords
                .iter()
                .zip(&items[done..done + n])
                .filter(|&(rc, &(y, x))| rc.len() == 2 && inside(y, rc[0]) && inside(x, rc[1]))
                .count();
            *hit = Some(hit.unwrap_or(0) + count);
        }
        done += n;
    }
    Ok(hits.into_iter().map(|h| h.map(|c| c as f64 / done.max(1) as f64)).collect())
}

/// Real early exit with `th` over every batch of `source`: accuracy, average
/// MFLOPs, wall-clock ms per image and the images per exit (no saving ratio:
/// that needs the full model's time, see [`EvalReport::fill_saving_ratios`]).
pub fn early_exit(
    model: &dyn MultiExit,
    source: &dyn EvalSource,
    th: &Thresholds,
    mflops: &[f64],
) -> Result<EarlyExitRun> {
    let (mut correct, mut spent, mut n) = (0usize, 0f64, 0usize);
    let mut counts = vec![0usize; mflops.len()];
    let start = Instant::now();
    for b in source.batches() {
        let b = b?;
        let ys = b.labels.to_vec1::<u32>()?;
        for (d, y) in classify_budgeted(model, &b.images, th, mflops)?.iter().zip(&ys) {
            correct += usize::from(d.prediction == *y);
            spent += d.mflops;
            counts[d.exit] += 1;
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(EarlyExitRun {
        accuracy: correct as f64 / n.max(1) as f64,
        mflops: spent / n.max(1) as f64,
        ms_per_image: 1e3 * secs / n.max(1) as f64,
        exit_counts: counts,
        saving_ratio: None,
    })
}

/// Budgeted classification over the q sweep `qs`: MSDNet's thresholds from
/// the held-out `holdout` logits and labels (max-softmax confidence), each
/// measured on `source` with real early exit.
pub fn q_sweep(
    model: &dyn MultiExit,
    source: &dyn EvalSource,
    holdout: (&ExitLogits, &[u32]),
    mflops: &[f64],
    qs: &[f64],
) -> Result<Vec<SweepPoint>> {
    let scores = ExitScores::from_logits(holdout.0, holdout.1, Confidence::MaxSoftmax)?;
    let mut points = Vec::with_capacity(qs.len());
    for (q, th, val) in sweep_q(&scores, mflops, qs)? {
        points.push(SweepPoint {
            q,
            holdout_accuracy: val.accuracy,
            holdout_mflops: val.avg_cost,
            run: early_exit(model, source, &th, mflops)?,
        });
    }
    Ok(points)
}

/// Where the method comparison's budgets lie between the first exit's cost
/// (0) and the last exit's (1): dense near the cheap end, where the methods
/// differ (with a first exit at a third of the full cost, fractions of the
/// full cost would put most budgets where every method already reaches the
/// best accuracy).
pub const METHOD_BUDGET_STEPS: [f64; 7] = [0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75];

/// The budgets of the method comparison for exits costing `mflops` (MFLOPs per
/// image, in exit order): `c0 + t·(c_last − c0)` for each
/// [`METHOD_BUDGET_STEPS`] `t`.
///
/// ```
/// let b = anytime_eval::method_budgets(&[10.0, 20.0, 30.0]);
/// assert_eq!(b, [10.0, 11.0, 12.0, 14.0, 17.0, 20.0, 25.0]);
/// ```
pub fn method_budgets(mflops: &[f64]) -> Vec<f64> {
    let (Some(&c0), Some(&last)) = (mflops.first(), mflops.last()) else { return Vec::new() };
    METHOD_BUDGET_STEPS.iter().map(|t| c0 + t * (last - c0)).collect()
}

/// Thresholds for each budget of `budgets` (MFLOPs per image) by each of
/// `methods`, searched on the held-out logits and labels (max-softmax
/// confidence), each measured with real early exit on `source`. A budget
/// below the first exit's cost is skipped; a method that finds nothing within
/// the budget is left out.
pub fn method_comparison(
    model: &dyn MultiExit,
    source: &dyn EvalSource,
    holdout: (&ExitLogits, &[u32]),
    mflops: &[f64],
    budgets: &[f64],
    methods: &[ThresholdMethod],
) -> Result<Vec<MethodPoint>> {
    use anytime_calibrate::{Fallback, GaParams, genetic_search, solve_budget};
    let scores = ExitScores::from_logits(holdout.0, holdout.1, Confidence::MaxSoftmax)?;
    let sweep = sweep_q(&scores, mflops, &anytime_calibrate::default_qs())?;
    let mut points = Vec::new();
    for &budget in budgets {
        if mflops.first().is_none_or(|&c0| budget < c0) {
            continue;
        }
        for &method in methods {
            let found = match method {
                ThresholdMethod::Q => sweep
                    .iter()
                    .filter(|(_, _, o)| o.avg_cost <= budget)
                    .max_by(|x, y| x.2.accuracy.total_cmp(&y.2.accuracy))
                    .map(|(_, th, o)| (th.clone(), o.clone())),
                ThresholdMethod::Solver => Some(solve_budget(&scores, mflops, budget)?),
                ThresholdMethod::Genetic | ThresholdMethod::GeneticEnsemble => {
                    let fallback =
                        if method == ThresholdMethod::Genetic { Fallback::LastExit } else { Fallback::Ensemble };
                    let p = GaParams { fallback, ..GaParams::default() };
                    Some(genetic_search(&scores, mflops, &p, Some(budget))?)
                }
            };
            let Some((th, val)) = found else { continue };
            points.push(MethodPoint {
                method,
                budget_mflops: budget,
                holdout_accuracy: val.accuracy,
                holdout_mflops: val.avg_cost,
                run: early_exit(model, source, &th, mflops)?,
            });
        }
    }
    Ok(points)
}

/// What `anytime eval` measures: the anytime pass always, real early exit
/// with a calibration's thresholds and the q sweep on request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Registry model name (for the report).
    pub model: String,
    /// Which images are evaluated (for the report).
    pub split: Split,
    /// Images per batch.
    pub batch_size: usize,
    /// Real early exit with these thresholds; the string names their file.
    pub calibration: Option<(String, Thresholds)>,
    /// The q sweep ([`sweep_qs`]), thresholds from this held-out split.
    pub sweep_holdout: Option<Arc<dyn EvalSource>>,
    /// The threshold methods compared at the [`method_budgets`],
    /// thresholds from this held-out split.
    pub methods_holdout: Option<Arc<dyn EvalSource>>,
    /// Where the model is: batches go there.
    pub device: candle_core::Device,
}

/// The whole evaluation of `anytime eval` on `images` (in order, no
/// augmentation): the anytime pass, then what `request` asks for, with the
/// saving ratios filled in.
pub fn evaluate_model(model: &dyn MultiExit, images: Arc<Dataset>, request: &Request) -> Result<EvalReport> {
    let loader = Loader::new(
        images,
        BatchConfig {
            batch_size: request.batch_size,
            shuffle: false,
            seed: 0,
            augment: Augment::default(),
            drop_last: false,
        },
    )?
    .on_device(request.device.clone());
    evaluate_source(model, &loader, request)
}

/// [`evaluate_model`] on any [`EvalSource`] (an image folder streamed from
/// disk): its batch size is the source's; unreadable images are left out
/// and listed in the report.
pub fn evaluate_source(model: &dyn MultiExit, source: &dyn EvalSource, request: &Request) -> Result<EvalReport> {
    let mflops = exit_mflops(model, source)?;
    let exits = anytime_exits(model, source, &mflops)?;
    let skipped: Vec<crate::report::SkippedImage> = source.skipped().into_iter().map(Into::into).collect();
    let mut report = EvalReport {
        model: request.model.clone(),
        split: request.split,
        images: source.len() - skipped.len(),
        batch_size: request.batch_size,
        exits,
        calibrated: None,
        budgeted: None,
        methods: None,
        plots: None,
        full_ms_per_image: None,
        patch_hits: None,
        skipped,
        measured: None,
    };
    if let Some((file, th)) = &request.calibration {
        if th.per_exit.len() != mflops.len() {
            return Err(Error::Invalid(format!(
                "{file} has {} thresholds, {} has {} exits",
                th.per_exit.len(),
                request.model,
                mflops.len()
            )));
        }
        report.calibrated = Some(CalibratedRun { file: file.clone(), run: early_exit(model, source, th, &mflops)? });
    }
    let collect =
        |h: &Option<Arc<dyn EvalSource>>| h.as_ref().map(|h| collect_logits_from(model, h.as_ref())).transpose();
    let sweep_logits = collect(&request.sweep_holdout)?;
    // The sweep and the comparison usually share one held-out split: run it
    // once.
    let methods_logits = match (&request.sweep_holdout, &request.methods_holdout) {
        (Some(s), Some(m)) if Arc::ptr_eq(s, m) => sweep_logits.clone(),
        _ => collect(&request.methods_holdout)?,
    };
    if let Some((logits, labels)) = &sweep_logits {
        report.budgeted = Some(q_sweep(model, source, (logits, labels), &mflops, &sweep_qs())?);
    }
    if let Some((logits, labels)) = &methods_logits {
        report.methods = Some(method_comparison(
            model,
            source,
            (logits, labels),
            &mflops,
            &method_budgets(&mflops),
            &ThresholdMethod::ALL,
        )?);
    }
    report.fill_saving_ratios()?;
    Ok(report)
}

impl EvalReport {
    /// Sets `full_ms_per_image` and every early-exit run's saving ratio
    /// against the last exit, where the report has early-exit runs.
    pub fn fill_saving_ratios(&mut self) -> Result<()> {
        if self.calibrated.is_none() && self.budgeted.is_none() && self.methods.is_none() {
            return Ok(());
        }
        let full = *self.full()?;
        let runs = self.calibrated.iter_mut().map(|c| &mut c.run);
        let runs = runs.chain(self.budgeted.iter_mut().flatten().map(|b| &mut b.run));
        for r in runs.chain(self.methods.iter_mut().flatten().map(|m| &mut m.run)) {
            r.saving_ratio = saving_ratio(r.mflops, r.ms_per_image, full.mflops, full.ms_per_image);
        }
        self.full_ms_per_image = Some(full.ms_per_image);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anytime_data::dataset::Normalization;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    /// Blank 28×28 images with these labels.
    fn blank(labels: Vec<u32>) -> Arc<Dataset> {
        let norm = Normalization { mean: vec![0.5], std: vec![0.5] };
        let classes = (0..10).map(|c| c.to_string()).collect();
        let n = labels.len();
        Arc::new(Dataset::new("blank", vec![0; n * 28 * 28], labels, (1, 28, 28), classes, norm).unwrap())
    }

    #[test]
    fn calibrated_run_and_sweep_on_an_untrained_model() {
        // Zero weights: every exit's logits are zero, so class 0 everywhere.
        let model =
            anytime_models::registry::create_model("resnet-mc-fmnist", VarBuilder::zeros(DType::F32, &Device::Cpu))
                .unwrap();
        let stop_at_0 = Thresholds::first_exit(Confidence::MaxSoftmax, 6);
        let request = Request {
            model: "m".into(),
            split: Split::Test,
            batch_size: 3,
            calibration: Some(("c.json".into(), stop_at_0)),
            sweep_holdout: Some(Arc::new(Loader::in_order(blank(vec![0, 1, 2, 0, 0]), 2).unwrap())),
            methods_holdout: Some(Arc::new(Loader::in_order(blank(vec![0, 1, 2, 0, 0]), 3).unwrap())),
            device: Device::Cpu,
        };
        let r = evaluate_model(model.as_ref(), blank(vec![0, 0, 0, 1]), &request).unwrap();
        assert_eq!((r.images, r.batch_size, r.exits.len()), (4, 3, 6));
        let c = &r.calibrated.as_ref().unwrap().run;
        assert_eq!((c.exit_counts.clone(), c.accuracy, c.mflops), (vec![4, 0, 0, 0, 0, 0], 0.75, r.exits[0].mflops));
        let full = r.exits[5];
        assert_eq!(r.full_ms_per_image, Some(full.ms_per_image));
        assert_eq!(c.saving_ratio, saving_ratio(c.mflops, c.ms_per_image, full.mflops, full.ms_per_image));
        let sweep = r.budgeted.as_ref().unwrap();
        assert_eq!(sweep.iter().map(|p| p.q).collect::<Vec<_>>(), sweep_qs());
        for p in sweep {
            assert_eq!((p.run.exit_counts.iter().sum::<usize>(), p.run.accuracy, p.holdout_accuracy), (4, 0.75, 0.6));
        }
        // Every method at every budget the first exit allows, each within
        // its budget on the held-out split (the genetic search's fitness may
        // trade a little over it only when no setting fits; here one does).
        let methods = r.methods.as_ref().unwrap();
        for m in ThresholdMethod::ALL {
            let of: Vec<&MethodPoint> = methods.iter().filter(|p| p.method == m).collect();
            assert!(!of.is_empty(), "{m:?} found nothing");
            for p in of {
                assert_eq!(p.run.exit_counts.iter().sum::<usize>(), 4);
                assert!(
                    p.holdout_mflops <= p.budget_mflops + 1e-9,
                    "{m:?}: {} > {}",
                    p.holdout_mflops,
                    p.budget_mflops
                );
            }
        }
        // Thresholds for another model are refused, naming both.
        let wrong = Request {
            calibration: Some(("c.json".into(), Thresholds::first_exit(Confidence::MaxSoftmax, 3))),
            sweep_holdout: None,
            methods_holdout: None,
            ..request
        };
        let e = evaluate_model(model.as_ref(), blank(vec![0]), &wrong).unwrap_err().to_string();
        assert_eq!(e, "c.json has 3 thresholds, m has 6 exits");
    }
}
