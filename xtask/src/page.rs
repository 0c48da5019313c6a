//! `docs/results.md`, generated from the committed reports: the JSON of
//! `docs/data/<model>/` (measurements), `docs/data/bench.json` (the latest
//! full `cargo xtask bench`), and the short hand-written readings beside them
//! (`docs/data/parity.md`; `docs/data/<model>/reading.md`, whose first
//! paragraph describes the model and goes under its heading, the rest after
//! its tables; `docs/data/comparison.md`; `docs/data/speed.md`). Nothing here measures:
//! [`render`] is a function of those files, and a test checks that the
//! committed page equals it.

use crate::bench::BenchReport;
use crate::results::{BASELINE_POLICIES, CLUTTERED_MODELS, FMNIST_MODELS, FULL_IMAGE_MODEL};
use anyhow::{Context, Result, bail};
use anytime_calibrate::{Calibration, Method};
use anytime_eval::plot::{Series, curves, report_plots};
use anytime_eval::{EarlyExitRun, EvalReport, MethodPoint, ThresholdMethod};
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::Path;

/// The reports of one model.
pub struct Model {
    name: String,
    b64: EvalReport,
    b1: EvalReport,
    cal: Calibration,
    cal_b64: EvalReport,
    cal_b1: EvalReport,
    reading: String,
    /// On cluttered Fashion-MNIST (GFNet's benchmark), not comparable with
    /// the plain Fashion-MNIST models.
    cluttered: bool,
    /// GFNet: the baseline patch policies' reports, by policy.
    policies: Vec<(String, EvalReport)>,
    /// GFNet: the full-image model's reports at batch 64 and 1.
    full_image: Option<(EvalReport, EvalReport)>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every model with reports in `docs/data/<model>/`: the Fashion-MNIST ones,
/// MSDNet first, then the cluttered ones.
pub fn load_models(root: &Path) -> Result<Vec<Model>> {
    let mut out = Vec::new();
    for name in FMNIST_MODELS.iter().chain(CLUTTERED_MODELS) {
        let dir = root.join("docs/data").join(name);
        if !dir.join("budgeted-b64.json").exists() {
            continue;
        }
        let report = |f: &str| EvalReport::load(&dir.join(f));
        let cal_path = dir.join("calibration-50.json");
        let cluttered = CLUTTERED_MODELS.contains(name);
        let mut policies = Vec::new();
        for (policy, file) in BASELINE_POLICIES.iter().filter(|_| cluttered) {
            policies.push((policy.to_string(), report(file)?));
        }
        let full_dir = root.join("docs/data").join(FULL_IMAGE_MODEL);
        let full_image = match cluttered && full_dir.join("eval-b64.json").exists() {
            true => Some((
                EvalReport::load(&full_dir.join("eval-b64.json"))?,
                EvalReport::load(&full_dir.join("eval-b1.json"))?,
            )),
            false => None,
        };
        out.push(Model {
            cluttered,
            policies,
            full_image,
            name: name.to_string(),
            b64: report("budgeted-b64.json")?,
            b1: report("budgeted-b1.json")?,
            cal: serde_json::from_str(&read(&cal_path)?)
                .with_context(|| format!("{} is not a calibration", cal_path.display()))?,
            cal_b64: report("calibrated-b64.json")?,
            cal_b1: report("calibrated-b1.json")?,
            reading: read(&dir.join("reading.md"))?,
        });
    }
    Ok(out)
}

/// The q sweep's (x, accuracy %) points, sorted by x.
fn sorted_curve(r: &EvalReport, x: impl Fn(&EarlyExitRun) -> f64) -> Vec<(f64, f64)> {
    let mut p = r.budgeted_curve(x);
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    p
}

/// Rewrites every plot the page shows: per model, the q-sweep plots at batch
/// 64 and 1; for several models, the comparison plots in `docs/plots/fmnist/`.
pub fn write_plots(root: &Path, models: &[Model]) -> Result<()> {
    for m in models {
        for (r, dir) in [(&m.b64, m.name.clone()), (&m.b1, format!("{}-batch1", m.name))] {
            let dir = root.join("docs/plots").join(dir);
            std::fs::create_dir_all(&dir)?;
            report_plots(r, &dir)?;
        }
    }
    for m in models {
        let (Some(p64), Some(p1)) = (&m.b64.methods, &m.b1.methods) else { continue };
        let dir = root.join("docs/plots").join(&m.name);
        let by_method = |points: &[MethodPoint], x: &dyn Fn(&MethodPoint) -> f64| -> Vec<Series> {
            let mut series: Vec<Series> = ThresholdMethod::ALL
                .iter()
                .map(|&k| {
                    let mut c: Vec<(f64, f64)> =
                        points.iter().filter(|p| p.method == k).map(|p| (x(p), 100.0 * p.run.accuracy)).collect();
                    c.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (k.label().to_string(), c)
                })
                .filter(|s| !s.1.is_empty())
                .collect();
            series.push(("each exit alone".into(), m.b64.anytime_curve()));
            series
        };
        let (acc, name) = ("test top-1 accuracy (%)", &m.name);
        curves(
            &dir.join("methods_vs_mflops.svg"),
            &format!("{name}: threshold searches, MFLOPs"),
            "MFLOPs per image",
            acc,
            &by_method(p64, &|p| p.run.mflops),
        )?;
        for (points, file, batch) in [(p64, "methods_vs_ms.svg", 64), (p1, "methods_vs_ms_batch1.svg", 1)] {
            let mut series = by_method(points, &|p| p.run.ms_per_image);
            // The per-exit line in wall-clock at this batch size.
            let exits = if batch == 1 { &m.b1 } else { &m.b64 };
            if let Some(last) = series.last_mut() {
                last.1 = exits.exits.iter().map(|e| (e.ms_per_image, 100.0 * e.accuracy)).collect();
            }
            curves(
                &dir.join(file),
                &format!("{name}: threshold searches, batch {batch} wall-clock"),
                "ms per image",
                acc,
                &series,
            )?;
        }
    }
    let models: Vec<&Model> = models.iter().filter(|m| !m.cluttered).collect();
    if models.len() < 2 {
        return Ok(());
    }
    let dir = root.join("docs/plots/fmnist");
    std::fs::create_dir_all(&dir)?;
    let series = |f: &dyn Fn(&Model) -> Vec<(f64, f64)>| -> Vec<Series> {
        models.iter().map(|m| (m.name.clone(), f(m))).collect()
    };
    let (acc, mf) = ("top-1 accuracy (%)", "MFLOPs per image");
    curves(
        &dir.join("anytime_vs_mflops.svg"),
        "Fashion-MNIST test: anytime prediction (per exit)",
        mf,
        acc,
        &series(&|m| m.b64.anytime_curve()),
    )?;
    curves(
        &dir.join("budgeted_vs_mflops.svg"),
        "Fashion-MNIST test: budgeted (real early exit, q sweep)",
        mf,
        acc,
        &series(&|m| sorted_curve(&m.b64, |r| r.mflops)),
    )?;
    curves(
        &dir.join("budgeted_vs_ms.svg"),
        "Fashion-MNIST test: budgeted, batch 64 wall-clock",
        "ms per image",
        acc,
        &series(&|m| sorted_curve(&m.b64, |r| r.ms_per_image)),
    )?;
    Ok(())
}

fn ratio(r: &EarlyExitRun) -> String {
    r.saving_ratio.map_or("—".into(), |r| format!("{r:.2}"))
}

fn counts(c: &[usize]) -> String {
    format!("[{}]", c.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

fn pct(x: f64) -> String {
    format!("{:.2} %", 100.0 * x)
}

fn provenance(r: &EvalReport) -> String {
    r.measured.as_ref().map_or("where and when is not recorded".into(), |p| {
        format!("measured {} with the binary of commit {} on {}", p.date, p.commit, p.machine)
    })
}

fn model_section(out: &mut String, details: &mut String, root: &Path, m: &Model) -> Result<()> {
    let name = &m.name;
    let full = m.b64.full()?;
    let mflops: Vec<String> = m.b64.exits.iter().map(|e| format!("{:.2}", e.mflops)).collect();
    let (about, reading) = m.reading.trim().split_once("\n\n").unwrap_or(("", m.reading.trim()));
    writeln!(out, "### {name}\n")?;
    writeln!(
        out,
        "{} exits, {} MFLOPs per image; {} (`cargo xtask results`). {}\n",
        m.b64.exits.len(),
        mflops.join(" / "),
        provenance(&m.b64),
        about.trim()
    )?;
    // GFNet: the baseline policies' accuracy beside the learned one's.
    let mut head = String::from("| exit | MFLOPs | test top-1 |");
    for (policy, _) in &m.policies {
        write!(head, " {} patches |", policy.split(':').next().unwrap_or(policy))?;
    }
    writeln!(out, "{head} ms/image, batch 64 | ms/image, batch 1 |")?;
    writeln!(out, "{}", "|---".repeat(5 + m.policies.len()) + "|")?;
    for (k, (e, e1)) in m.b64.exits.iter().zip(&m.b1.exits).enumerate() {
        let mut row = format!("| {} | {:.2} | {} |", e.exit, e.mflops, pct(e.accuracy));
        for (policy, r) in &m.policies {
            let other = r.exits.get(k).with_context(|| format!("{name}: the {policy} report has no exit {k}"))?;
            write!(row, " {} |", pct(other.accuracy))?;
        }
        writeln!(out, "{row} {:.3} | {:.3} |", e.ms_per_image, e1.ms_per_image)?;
    }
    if let Some(hits) = &m.b64.patch_hits {
        let steps = |h: &[Option<f64>]| -> String {
            h.iter().flatten().map(|x| format!("{:.1}", 100.0 * x)).collect::<Vec<_>>().join(" / ")
        };
        let mut parts = vec![format!("learned {} %", steps(hits))];
        for (policy, r) in &m.policies {
            if let Some(h) = &r.patch_hits {
                parts.push(format!("{} {} %", policy.split(':').next().unwrap_or(policy), steps(h)));
            }
        }
        writeln!(out, "\nFocus patches that hold the whole item, step by step from step 1: {}.", parts.join("; "))?;
    }
    if let Some((f64_, f1)) = &m.full_image {
        let (e, e1) = (f64_.full()?, f1.full()?);
        writeln!(
            out,
            "\nThe full-image comparison `{FULL_IMAGE_MODEL}` (the same MobileNetV3 on the whole canvas, one exit): {} \
             at {:.2} MFLOPs, {:.3} ms/image at batch 64, {:.3} at batch 1 ({}).",
            pct(e.accuracy),
            e.mflops,
            e.ms_per_image,
            e1.ms_per_image,
            provenance(f64_)
        )?;
    }
    let (s64, s1) = (m.b64.budgeted.as_deref().unwrap_or(&[]), m.b1.budgeted.as_deref().unwrap_or(&[]));
    if s64.len() != s1.len() || s64.iter().zip(s1).any(|(a, b)| a.q != b.q) {
        bail!("{name}: the batch-64 and batch-1 q sweeps differ");
    }
    writeln!(
        details,
        "# {name}: budgeted classification, point by point\n\n<!-- Generated by `cargo xtask results` with \
         docs/results.md, from docs/data/{name}/. -->\n\n[Back to the results](../results.md#{name}).\n"
    )?;
    writeln!(
        details,
        "Budgeted classification over the q sweep: thresholds from the held-out split, real early exit on the \
         {} test images at batch 64 (batch 1: times on the first {}).\n",
        m.b64.images, m.b1.images
    )?;
    writeln!(
        details,
        "| q | held-out top-1 | test top-1 | MFLOPs | % of full | ms/image, batch 64 | time / FLOP saving | ms/image, batch 1 | time / FLOP saving | images per exit |"
    )?;
    writeln!(details, "|---|---|---|---|---|---|---|---|---|---|")?;
    for (b, b1) in s64.iter().zip(s1) {
        writeln!(
            details,
            "| {:.1} | {} | {} | {:.2} | {:.0} % | {:.3} | {} | {:.3} | {} | {} |",
            b.q,
            pct(b.holdout_accuracy),
            pct(b.run.accuracy),
            b.run.mflops,
            100.0 * b.run.mflops / full.mflops,
            b.run.ms_per_image,
            ratio(&b.run),
            b1.run.ms_per_image,
            ratio(&b1.run),
            counts(&b.run.exit_counts)
        )?;
    }
    let method = match &m.cal.method {
        Method::Solver { budget_mflops } => format!("The budget solver for {budget_mflops:.2} MFLOPs"),
        Method::Q { q } => format!("MSDNet's rule with q = {q}"),
        Method::Genetic { lambda, .. } => format!("The genetic search (λ = {lambda})"),
    };
    let (c64, c1) = (
        m.cal_b64.calibrated.as_ref().context("calibrated-b64.json without 'calibrated'")?,
        m.cal_b1.calibrated.as_ref().context("calibrated-b1.json without 'calibrated'")?,
    );
    let full_ms = |r: &EvalReport| r.full_ms_per_image.map_or("—".into(), |x| format!("{x:.3}"));
    writeln!(
        out,
        "\n{method} (`anytime calibrate --budget-fraction 0.5`; held-out {} at {:.2} MFLOPs): test {} at {:.2} MFLOPs \
         ({:.0} % of full), images per exit {}; {:.3} ms/image at batch 64 against {} through every exit (time / FLOP \
         saving {}), {:.3} against {} at batch 1 ({}).\n",
        pct(m.cal.holdout_accuracy),
        m.cal.holdout_mflops,
        pct(c64.run.accuracy),
        c64.run.mflops,
        100.0 * c64.run.mflops / full.mflops,
        counts(&c64.run.exit_counts),
        c64.run.ms_per_image,
        full_ms(&m.cal_b64),
        ratio(&c64.run),
        c1.run.ms_per_image,
        full_ms(&m.cal_b1),
        ratio(&c1.run)
    )?;
    let mut plots = format!(
        "![{name}: accuracy vs MFLOPs](plots/{name}/accuracy_vs_mflops.svg) ![{name}: accuracy vs ms at batch 64](plots/{name}/accuracy_vs_ms.svg)"
    );
    if let (Some(p64), Some(p1)) = (&m.b64.methods, &m.b1.methods) {
        methods_section(out, details, m, p64, p1)?;
        write!(
            plots,
            " ![{name}: threshold searches, MFLOPs](plots/{name}/methods_vs_mflops.svg) ![{name}: threshold searches, batch 64](plots/{name}/methods_vs_ms.svg) ![{name}: threshold searches, batch 1](plots/{name}/methods_vs_ms_batch1.svg)"
        )?;
    }
    writeln!(out, "{plots}\n")?;
    let mut links = vec![
        format!("batch 1: [accuracy vs MFLOPs](plots/{name}-batch1/accuracy_vs_mflops.svg)"),
        format!("[accuracy vs ms](plots/{name}-batch1/accuracy_vs_ms.svg)"),
    ];
    for (file, label) in [
        ("training.svg", "training curves"),
        ("restart-training.svg", "second cosine cycle curves"),
        ("swa-training.svg", "weight-averaging curves"),
    ] {
        if root.join("docs/plots").join(name).join(file).exists() {
            links.push(format!("[{label}](plots/{name}/{file})"));
        }
    }
    writeln!(
        out,
        "Plots: {}; budgeted classification point by point (the q sweep, {} points{}) and the reading: [its own page](results/{name}.md); \
         reports: `docs/data/{name}/`.\n",
        links.join(", "),
        s64.len(),
        if m.b64.methods.is_some() { ", and the threshold searches at equal budgets" } else { "" }
    )?;
    // The reading goes with the point-by-point tables, keeping this page
    // one a user reads in minutes.
    writeln!(details, "\n## Reading\n\n{}", reading.trim())?;
    Ok(())
}

/// The threshold searches compared at the same budgets (`anytime eval
/// --methods`), and the speed-up at the last exit's accuracy.
fn methods_section(
    out: &mut String,
    details: &mut String,
    m: &Model,
    p64: &[MethodPoint],
    p1: &[MethodPoint],
) -> Result<()> {
    let name = &m.name;
    if p64.len() != p1.len()
        || p64.iter().zip(p1).any(|(a, b)| a.method != b.method || (a.budget_mflops - b.budget_mflops).abs() > 1e-9)
    {
        bail!("{name}: the batch-64 and batch-1 method comparisons differ");
    }
    writeln!(
        details,
        "\nThreshold searches at the same budgets (`anytime eval --methods`: thresholds searched on the held-out \
         split for each budget, real early exit on the {} test images at batch 64; batch 1 on the first {}):\n",
        m.b64.images, m.b1.images
    )?;
    writeln!(
        details,
        "| budget (MFLOPs) | method | held-out top-1 | test top-1 | MFLOPs | ms/image, batch 64 | time / FLOP saving | ms/image, batch 1 | images per exit |"
    )?;
    writeln!(details, "|---|---|---|---|---|---|---|---|---|")?;
    for (p, q) in p64.iter().zip(p1) {
        writeln!(
            details,
            "| {:.2} | {} | {} | {} | {:.2} | {:.3} | {} | {:.3} | {} |",
            p.budget_mflops,
            p.method.label(),
            pct(p.holdout_accuracy),
            pct(p.run.accuracy),
            p.run.mflops,
            p.run.ms_per_image,
            ratio(&p.run),
            q.run.ms_per_image,
            counts(&p.run.exit_counts)
        )?;
    }
    // Speed-up at equal accuracy: the fastest run (any method at any budget,
    // or any q of the sweep) whose test accuracy reaches the last exit's.
    let (last64, last1) = (m.b64.full()?, m.b1.full()?);
    let runs = |points: &[MethodPoint], report: &EvalReport| -> Vec<(String, EarlyExitRun)> {
        let mut v: Vec<(String, EarlyExitRun)> = points
            .iter()
            .map(|p| (format!("{} at {:.2} MFLOPs", p.method.label(), p.budget_mflops), p.run.clone()))
            .collect();
        v.extend(report.budgeted.iter().flatten().map(|b| (format!("q = {:.1}", b.q), b.run.clone())));
        v
    };
    let mut line = format!(
        "At the last exit's accuracy ({} at batch 64, {} on the batch-1 images), the fastest measured run \
         (any method and budget above, or any q of the sweep): ",
        pct(last64.accuracy),
        pct(last1.accuracy)
    );
    for (all, last, batch) in [(runs(p64, &m.b64), last64, 64), (runs(p1, &m.b1), last1, 1)] {
        let best = all
            .iter()
            .filter(|(_, r)| r.accuracy >= last.accuracy)
            .min_by(|a, b| a.1.ms_per_image.total_cmp(&b.1.ms_per_image));
        match best {
            Some((what, r)) => write!(
                line,
                "batch {batch}: {what} reaches {} in {:.3} ms/image against {:.3} through every exit, \
                 **{:.2}× faster** ({:.2}× fewer MFLOPs). ",
                pct(r.accuracy),
                r.ms_per_image,
                last.ms_per_image,
                last.ms_per_image / r.ms_per_image,
                last.mflops / r.mflops
            )?,
            None => write!(line, "batch {batch}: no measured run reaches it. ")?,
        }
    }
    writeln!(out, "{}\n", line.trim_end())?;
    Ok(())
}

/// Linear interpolation of a curve sorted by x; `None` outside its x range.
fn interp(c: &[(f64, f64)], x: f64) -> Option<f64> {
    let (first, last) = (c.first()?, c.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    for w in c.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x >= x0 && x <= x1 {
            return Some(if x1 > x0 { y0 + (y1 - y0) * (x - x0) / (x1 - x0) } else { y0.max(y1) });
        }
    }
    Some(first.1)
}

/// How curve `a` compares with curve `b` over their shared x range.
#[derive(Debug, PartialEq)]
struct Comparison {
    lo: f64,
    hi: f64,
    /// Share of the range (sampled evenly) where `a` is strictly higher.
    a_higher: f64,
    /// Largest lead of `a` and of `b`, in accuracy points.
    max_a: f64,
    max_b: f64,
    /// Contiguous stretches `(from, to, how a compares with b)`; differences
    /// below 0.005 points count as equal.
    stretches: Vec<(f64, f64, Ordering)>,
}

fn compare(a: &[(f64, f64)], b: &[(f64, f64)]) -> Option<Comparison> {
    let lo = a.first()?.0.max(b.first()?.0);
    let hi = a.last()?.0.min(b.last()?.0);
    if hi <= lo {
        return None;
    }
    const N: usize = 200;
    let (mut higher, mut max_a, mut max_b) = (0usize, 0f64, 0f64);
    let mut stretches: Vec<(f64, f64, Ordering)> = Vec::new();
    for i in 0..=N {
        let x = lo + (hi - lo) * i as f64 / N as f64;
        let d = interp(a, x)? - interp(b, x)?;
        let up = if d.abs() < 0.005 {
            Ordering::Equal
        } else if d > 0.0 {
            Ordering::Greater
        } else {
            Ordering::Less
        };
        higher += usize::from(up == Ordering::Greater);
        max_a = max_a.max(d);
        max_b = max_b.max(-d);
        match stretches.last_mut() {
            Some(s) if s.2 == up => s.1 = x,
            _ => stretches.push((x, x, up)),
        }
    }
    Some(Comparison { lo, hi, a_higher: higher as f64 / (N + 1) as f64, max_a, max_b, stretches })
}

fn describe(a: &str, b: &str, c: &Comparison) -> String {
    let parts: Vec<String> = c
        .stretches
        .iter()
        .map(|&(x0, x1, up)| {
            let who = match up {
                Ordering::Greater => a,
                Ordering::Less => b,
                Ordering::Equal => "equal",
            };
            format!("{x0:.1}–{x1:.1}: {who}")
        })
        .collect();
    format!(
        "shared range {:.1}–{:.1} MFLOPs; {a} higher on {:.0} % of it (by up to {:.2} points), {b} higher by up to {:.2} points; higher curve by stretch: {}",
        c.lo,
        c.hi,
        100.0 * c.a_higher,
        c.max_a,
        c.max_b,
        parts.join("; ")
    )
}

fn compare_section(out: &mut String, details: &mut String, root: &Path, ms: &[&Model]) -> Result<()> {
    writeln!(out, "### Comparison\n")?;
    writeln!(
        out,
        "| model | exits | MFLOPs (first … last) | first exit | best exit | last exit | budgeted, best within 50 % of own MFLOPs | solver 50 %: top-1 at MFLOPs |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for m in ms {
        let any = m.b64.anytime_curve();
        let (first, last) = (any[0], any[any.len() - 1]);
        let best = any.iter().copied().fold(first, |a, p| if p.1 > a.1 { p } else { a });
        let half = sorted_curve(&m.b64, |r| r.mflops).into_iter().filter(|p| p.0 <= 0.5 * last.0).fold(
            None,
            |a: Option<(f64, f64)>, p| match a {
                Some(q) if q.1 >= p.1 => Some(q),
                _ => Some(p),
            },
        );
        let c = &m.cal_b64.calibrated.as_ref().context("calibrated-b64.json without 'calibrated'")?.run;
        writeln!(
            out,
            "| {} | {} | {:.2} … {:.2} | {:.2} % | {:.2} % (at {:.2}) | {:.2} % | {} | {} at {:.2} |",
            m.name,
            any.len(),
            first.0,
            last.0,
            first.1,
            best.1,
            best.0,
            last.1,
            half.map_or("—".into(), |p| format!("{:.2} % at {:.2}", p.1, p.0)),
            pct(c.accuracy),
            c.mflops
        )?;
    }
    let reference = ms[0];
    writeln!(
        out,
        "\nWhere {0}'s curves lie above the others' at equal MFLOPs: [the comparison, curve by curve](results/comparison.md).",
        reference.name
    )?;
    writeln!(
        details,
        "# Fashion-MNIST models: where {0}'s curves lie above the others'\n\n<!-- Generated by `cargo xtask results` \
         with docs/results.md, from docs/data/. -->\n\n[Back to the results](../results.md#comparison).\n\n\
         At equal MFLOPs, by linear interpolation between measured points (201 samples of the shared range):\n",
        reference.name
    )?;
    for m in &ms[1..] {
        for (kind, a, b) in [
            ("anytime (per exit)", reference.b64.anytime_curve(), m.b64.anytime_curve()),
            (
                "budgeted (q sweep, batch 64)",
                sorted_curve(&reference.b64, |r| r.mflops),
                sorted_curve(&m.b64, |r| r.mflops),
            ),
        ] {
            let text =
                compare(&a, &b).map_or("no shared MFLOPs range".into(), |c| describe(&reference.name, &m.name, &c));
            writeln!(details, "- {} vs {}, {kind}: {text}.", reference.name, m.name)?;
        }
    }
    writeln!(
        out,
        "\n![anytime, MFLOPs](plots/fmnist/anytime_vs_mflops.svg) ![budgeted, MFLOPs](plots/fmnist/budgeted_vs_mflops.svg) ![budgeted, ms at batch 64](plots/fmnist/budgeted_vs_ms.svg)\n"
    )?;
    writeln!(out, "{}\n", read(&root.join("docs/data/comparison.md"))?.trim())?;
    Ok(())
}

fn speed_section(out: &mut String, root: &Path) -> Result<()> {
    let path = root.join("docs/data/bench.json");
    let b: BenchReport =
        serde_json::from_str(&read(&path)?).with_context(|| format!("{} is not a bench report", path.display()))?;
    writeln!(out, "## Speed\n")?;
    writeln!(
        out,
        "The latest full `cargo xtask bench` ({}, commit {}, {}; {} threads for ours, stock Candle and torch {}; \
         our kernels: {}; peak = {:.1} GFLOP/s, a 2048³ f32 matmul with the gemm crate in the same run). Times are \
         medians; model cases on the torch side run the reference implementations. Single runs on a shared 2-core \
         machine move by up to 2× on the torch side; [the log](log/README.md) has the A/B runs and repeated full \
         runs.\n",
        b.measured.date,
        b.measured.commit,
        b.measured.machine,
        b.threads,
        b.torch,
        b.kernels.as_deref().unwrap_or("not recorded"),
        b.peak_gflops
    )?;
    if let Some(note) = &b.note {
        writeln!(out, "{note}\n")?;
    }
    out.push_str(&b.table());
    writeln!(out, "\n{}", read(&root.join("docs/data/speed.md"))?.trim())?;
    Ok(())
}

/// The page, from the reports of `models` and the committed readings.
pub fn render(root: &Path, models: &[Model]) -> Result<String> {
    Ok(render_all(root, models)?.0)
}

/// Each model's page of budgeted points (`docs/results/<model>.md`), by
/// model name.
pub fn render_details(root: &Path, models: &[Model]) -> Result<Vec<(String, String)>> {
    Ok(render_all(root, models)?.1)
}

/// The page and the per-model pages.
fn render_all(root: &Path, models: &[Model]) -> Result<(String, Vec<(String, String)>)> {
    if models.is_empty() {
        bail!("no measured model in docs/data/");
    }
    let mut out = String::new();
    writeln!(
        out,
        "# Results\n\n<!-- Generated by `cargo xtask results` from docs/data/; edit the readings there \
         (docs/data/*.md, docs/data/<model>/reading.md) and run `cargo xtask results --reuse`. -->\n"
    )?;
    writeln!(
        out,
        "What the shipped code and weights measure, each number from a command of this repository. The tables are \
         generated from the reports in `docs/data/` (`cargo xtask results` measures them; `--reuse` regenerates this \
         page from the committed ones). The dated experiments behind them — training runs, kernel changes and their \
         A/B runs, earlier measurements — are in [the log](log/README.md).\n"
    )?;
    writeln!(
        out,
        "## Parity with the reference PyTorch code\n\n{}\n",
        read(&root.join("docs/data/parity.md"))?.trim()
    )?;
    writeln!(out, "## Fashion-MNIST models\n")?;
    writeln!(
        out,
        "Top-1 accuracy on the 10,000 test images; thresholds always come from the held-out split (5,000 training \
         images, seed 2024, never augmented, never trained on). ms/image at an exit includes every stage before it. \
         \"Time / FLOP saving\" is (1 − ms/ms_full) / (1 − MFLOPs/MFLOPs_full), both against running every exit at \
         the same batch size: 1.0 means the FLOPs saved turn fully into time saved; times compare across models \
         only when measured on the same machine (each section says where).\n"
    )?;
    let (plain, cluttered): (Vec<&Model>, Vec<&Model>) = models.iter().partition(|m| !m.cluttered);
    let mut details = Vec::new();
    if plain.len() > 1 {
        let mut d = String::new();
        compare_section(&mut out, &mut d, root, &plain)?;
        details.push(("comparison".to_string(), d));
    }
    for m in &plain {
        let mut d = String::new();
        model_section(&mut out, &mut d, root, m)?;
        details.push((m.name.clone(), d));
    }
    if !cluttered.is_empty() {
        writeln!(out, "## Cluttered Fashion-MNIST: GFNet\n")?;
        writeln!(out, "{}\n", read(&root.join("docs/data/cluttered.md"))?.trim())?;
    }
    for m in &cluttered {
        let mut d = String::new();
        model_section(&mut out, &mut d, root, m)?;
        details.push((m.name.clone(), d));
    }
    ablation_section(&mut out, &mut details, root)?;
    speed_section(&mut out, root)?;
    Ok((out, details))
}

/// SCAN's ablation (`cargo xtask scan-ablation`): per-exit test accuracy of
/// the four variants, trained with one equal short schedule; absent until a
/// variant is measured.
fn ablation_section(out: &mut String, details: &mut Vec<(String, String)>, root: &Path) -> Result<()> {
    use anytime_train::recipes::{SCAN_ABLATION, recipe};
    let dir = root.join("docs/data/scan-ablation");
    let mut rows = Vec::new();
    for variant in SCAN_ABLATION {
        let path = dir.join(format!("{variant}.json"));
        if path.exists() {
            rows.push((variant, EvalReport::load(&path)?));
        }
    }
    let Some((first, _)) = rows.first() else { return Ok(()) };
    let r = recipe(first)?;
    let spec = &r.stages[0].spec;
    writeln!(out, "## SCAN ablation: attention and self-distillation\n")?;
    writeln!(
        out,
        "SCAN's ResNet-18 layout at width 16 on Fashion-MNIST, the four variants trained from the same seed with one \
         equal short schedule ({} epochs; `cargo xtask scan-ablation`): [per-exit test accuracy](results/scan-ablation.md).\n",
        spec.epochs
    )?;
    let mut d = String::new();
    writeln!(
        d,
        "# SCAN ablation: attention and self-distillation\n\n<!-- Generated by `cargo xtask results` with \
         docs/results.md, from docs/data/scan-ablation/. -->\n\n[Back to the results](../results.md#scan-ablation-attention-and-self-distillation).\n"
    )?;
    writeln!(
        d,
        "SCAN's ResNet-18 layout at width 16 on Fashion-MNIST (as `scan-resnet18-fmnist`), each variant trained from \
         the same seed with one equal short schedule: {} epochs, batch {}, SGD momentum 0.9, weight decay 5e-4, lr \
         {} with {} warm-up epoch and cosine decay, pad-2 crops and flips (`cargo xtask scan-ablation`, recipes \
         `scan-ablation-*`). \"Distillation\" is SCAN's whole loss (shallow exits 0.5·CE + 0.5·T²·KL to the deepest \
         exit at T = 3, and the feature hint); without it every exit is trained with plain cross-entropy, the \
         reference's `lambda_KD = 0`. Test top-1 per exit (10,000 images), the weights with the best held-out last \
         exit.\n",
        spec.epochs, r.batch_size, spec.schedule.lr, spec.schedule.warmup_epochs
    )?;
    writeln!(d, "| variant | attention | distillation | exit 0 | exit 1 | exit 2 | exit 3 | MFLOPs per exit |")?;
    writeln!(d, "|---|---|---|---|---|---|---|---|")?;
    for (variant, rep) in &rows {
        let attention = !variant.contains("no-attention") && !variant.contains("neither");
        let distill = !variant.contains("no-distill") && !variant.contains("neither");
        let yes = |b: bool| if b { "yes" } else { "no" };
        let acc: Vec<String> = rep.exits.iter().map(|e| pct(e.accuracy)).collect();
        let mf: Vec<String> = rep.exits.iter().map(|e| format!("{:.2}", e.mflops)).collect();
        writeln!(
            d,
            "| {variant} | {} | {} | {} | {} |",
            yes(attention),
            yes(distill),
            acc.join(" | "),
            mf.join(" / ")
        )?;
    }
    details.push(("scan-ablation".to_string(), d));
    let reading = dir.join("reading.md");
    if reading.exists() {
        writeln!(out, "{}", read(&reading)?.trim())?;
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_and_comparison() {
        let a = [(1.0, 90.0), (3.0, 92.0)];
        assert_eq!(interp(&a, 2.0), Some(91.0));
        assert_eq!(interp(&a, 0.5), None);
        assert_eq!(interp(&a, 3.5), None);
        // b crosses a at x = 2.
        let b = [(1.0, 89.0), (3.0, 93.0)];
        let c = compare(&a, &b).unwrap();
        assert_eq!((c.lo, c.hi), (1.0, 3.0));
        assert!((c.max_a - 1.0).abs() < 1e-9 && (c.max_b - 1.0).abs() < 1e-9);
        assert_eq!(c.stretches.len(), 3);
        let order: Vec<Ordering> = c.stretches.iter().map(|s| s.2).collect();
        assert_eq!(order, [Ordering::Greater, Ordering::Equal, Ordering::Less]);
        assert!((c.stretches[1].0 - 2.0).abs() < 1e-9, "{:?}", c.stretches);
        // A curve against itself is equal everywhere.
        let same = compare(&a, &a).unwrap();
        assert_eq!((same.a_higher, same.stretches.len(), same.stretches[0].2), (0.0, 1, Ordering::Equal));
        assert!((c.a_higher - 100.0 / 201.0).abs() < 1e-9);
        // Disjoint ranges cannot be compared.
        assert_eq!(compare(&a, &[(4.0, 1.0), (5.0, 2.0)]), None);
    }

    /// The committed page is what the committed reports and readings give
    /// (rust-analyzer's "codegen" check): edit the sources, not the page.
    #[test]
    fn committed_results_page_is_up_to_date() {
        let root = crate::root();
        let models = load_models(&root).unwrap();
        let want = render(&root, &models).unwrap();
        let have = std::fs::read_to_string(root.join("docs/results.md")).unwrap();
        assert!(
            have == want,
            "docs/results.md is not what docs/data/ gives: run `cargo xtask results --reuse` and commit"
        );
        assert!(want.lines().count() < 300, "docs/results.md has {} lines (at most 299)", want.lines().count());
        for (name, page) in render_details(&root, &models).unwrap() {
            let path = root.join("docs/results").join(format!("{name}.md"));
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(have == page, "{} is not what docs/data/ gives: run `cargo xtask results --reuse`", path.display());
        }
    }
}
