//! `cargo xtask results`: measures every trained Fashion-MNIST model with the
//! `anytime` binary, keeps the raw JSON under `docs/data/<model>/`, and rewrites
//! the generated parts of `docs/results.md` (per-model tables and the comparison
//! of the models' curves) and the combined plots in `docs/plots/fmnist/`.
//!
//! Generated text sits between `<!-- results:NAME:begin -->` and
//! `<!-- results:NAME:end -->` markers; everything outside them is left alone.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The shipped Fashion-MNIST models, MSDNet first (the comparison's reference).
pub const FMNIST_MODELS: &[&str] = &["msdnet-fmnist", "ranet-fmnist", "resnet-mc-fmnist", "densenet-mc-fmnist"];

/// Test images used for the batch-1 measurements (batch 1 is slow).
const BATCH1_IMAGES: usize = 2000;

/// Arguments of `cargo xtask results`.
#[derive(clap::Args, Default)]
pub struct ResultsArgs {
    /// Keep measurements already in `docs/data/<model>/` and only run the missing ones.
    #[arg(long)]
    reuse: bool,
    /// Only these models (comma-separated); default: every Fashion-MNIST model with weights.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
}

/// The measurements of one model, as the `anytime` binary printed them.
struct Measured {
    name: String,
    b64: Value,
    b1: Value,
    cal: Value,
    cal_b64: Value,
    cal_b1: Value,
}

/// Runs the release `anytime` binary with `args` and returns what it printed on stdout.
fn anytime_stdout(args: &[&str]) -> Result<String> {
    let out = crate::train::anytime_command(args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("anytime {} failed", args.join(" "));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs one measurement unless `--reuse` and its file exists; returns the JSON.
fn measure(path: &Path, reuse: bool, args: &[&str]) -> Result<Value> {
    if !(reuse && path.exists()) {
        let text = anytime_stdout(args)?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("anytime {} printed no JSON", args.join(" ")))?;
        anytime_io::atomic_write(path, format!("{}\n", serde_json::to_string_pretty(&v)?).as_bytes())?;
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn measure_model(name: &str, reuse: bool) -> Result<Measured> {
    let root = crate::root();
    // Paths handed to `anytime` are relative to the repository root (its
    // working directory), so the JSON it writes names no machine path.
    let rel = format!("docs/data/{name}");
    std::fs::create_dir_all(root.join(&rel))?;
    let file = |f: &str| format!("{rel}/{f}");
    let n1 = BATCH1_IMAGES.to_string();
    let plots64 = format!("docs/plots/{name}");
    let plots1 = format!("docs/plots/{name}-batch1");
    let b64 = measure(
        &root.join(file("budgeted-b64.json")),
        reuse,
        &["eval", "--model", name, "--budgeted", "--json", "--plots", &plots64],
    )?;
    let b1 = measure(
        &root.join(file("budgeted-b1.json")),
        reuse,
        &["eval", "--model", name, "--budgeted", "--batch-size", "1", "--limit", &n1, "--json", "--plots", &plots1],
    )?;
    let cal_rel = file("calibration-50.json");
    let cal_path = root.join(&cal_rel);
    if !(reuse && cal_path.exists()) {
        anytime_stdout(&["calibrate", "--model", name, "--budget-fraction", "0.5", "--output", &cal_rel])?;
    }
    let cal: Value = serde_json::from_str(&std::fs::read_to_string(&cal_path)?)
        .with_context(|| format!("{} is not JSON", cal_path.display()))?;
    let cal_b64 = measure(
        &root.join(file("calibrated-b64.json")),
        reuse,
        &["eval", "--model", name, "--calibration", &cal_rel, "--json"],
    )?;
    let cal_b1 = measure(
        &root.join(file("calibrated-b1.json")),
        reuse,
        &["eval", "--model", name, "--calibration", &cal_rel, "--batch-size", "1", "--limit", &n1, "--json"],
    )?;
    Ok(Measured { name: name.into(), b64, b1, cal, cal_b64, cal_b1 })
}

/// Runs the task.
pub fn run(a: &ResultsArgs) -> Result<()> {
    let root = crate::root();
    let names: Vec<String> =
        if a.models.is_empty() { FMNIST_MODELS.iter().map(|s| s.to_string()).collect() } else { a.models.clone() };
    let mut measured = Vec::new();
    for name in &names {
        if !FMNIST_MODELS.contains(&name.as_str()) {
            bail!("unknown model '{name}' (known: {})", FMNIST_MODELS.join(", "));
        }
        if !root.join("weights").join(format!("{name}.safetensors")).exists() {
            eprintln!("{name}: no weights/{name}.safetensors, skipped");
            continue;
        }
        measured.push(measure_model(name, a.reuse)?);
    }
    if measured.is_empty() {
        bail!("no trained model to measure (weights/*.safetensors)");
    }
    let doc_path = root.join("docs/results.md");
    let mut doc = std::fs::read_to_string(&doc_path).with_context(|| format!("cannot read {}", doc_path.display()))?;
    for m in &measured {
        doc = replace_section(&doc, &m.name, &model_section(m)?);
    }
    if measured.len() > 1 {
        let plot_dir = root.join("docs/plots/fmnist");
        std::fs::create_dir_all(&plot_dir)?;
        combined_plots(&plot_dir, &measured)?;
        doc = replace_section(&doc, "compare", &compare_section(&measured)?);
    }
    anytime_io::atomic_write(&doc_path, doc.as_bytes())?;
    eprintln!("rewrote {} ({} models)", doc_path.display(), measured.len());
    Ok(())
}

/// Replaces the text between the markers of `name`, or appends a marked section.
fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let (b, e) = (format!("<!-- results:{name}:begin -->"), format!("<!-- results:{name}:end -->"));
    let block = format!("{b}\n{}\n{e}", body.trim_end());
    match (doc.find(&b), doc.find(&e)) {
        (Some(i), Some(j)) if j > i => format!("{}{block}{}", &doc[..i], &doc[j + e.len()..]),
        _ => format!("{}\n\n{block}\n", doc.trim_end()),
    }
}

fn f(v: &Value, key: &str) -> Result<f64> {
    v[key].as_f64().with_context(|| format!("measurement without a number '{key}'"))
}

fn list<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v[key].as_array().with_context(|| format!("measurement without a list '{key}'"))
}

fn counts(v: &Value) -> String {
    let c: Vec<String> =
        v["exit_counts"].as_array().map(|a| a.iter().map(|x| x.to_string()).collect()).unwrap_or_default();
    format!("[{}]", c.join(", "))
}

fn ratio(v: &Value) -> String {
    v["saving_ratio"].as_f64().map_or("—".into(), |r| format!("{r:.2}"))
}

/// The (MFLOPs, accuracy %) points of the anytime curve (one per exit).
fn anytime_curve(r: &Value) -> Result<Vec<(f64, f64)>> {
    list(r, "exits")?.iter().map(|e| Ok((f(e, "mflops")?, 100.0 * f(e, "accuracy")?))).collect()
}

/// The (x, accuracy %) points of the budgeted q sweep, sorted by x.
fn budgeted_curve(r: &Value, x: &str) -> Result<Vec<(f64, f64)>> {
    let mut p: Vec<(f64, f64)> =
        list(r, "budgeted")?.iter().map(|b| Ok((f(b, x)?, 100.0 * f(b, "accuracy")?))).collect::<Result<_>>()?;
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(p)
}

fn sweep_table(out: &mut String, r: &Value, title: &str) -> Result<()> {
    let full = list(r, "exits")?.last().context("no exits")?;
    let full_mflops = f(full, "mflops")?;
    writeln!(
        out,
        "\n{title} (full model: {:.2} % at {full_mflops:.2} MFLOPs, {:.3} ms/image through every exit; {} test images)\n",
        100.0 * f(full, "accuracy")?,
        f(r, "full_ms_per_image")?,
        r["images"]
    )?;
    writeln!(
        out,
        "| q | held-out top-1 | held-out MFLOPs | test top-1 | test MFLOPs | % of full | ms/image | wall-clock / FLOP saving | images per exit |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for b in list(r, "budgeted")? {
        writeln!(
            out,
            "| {:.1} | {:.2} % | {:.2} | {:.2} % | {:.2} | {:.0} % | {:.3} | {} | {} |",
            f(b, "q")?,
            100.0 * f(b, "holdout_accuracy")?,
            f(b, "holdout_mflops")?,
            100.0 * f(b, "accuracy")?,
            f(b, "mflops")?,
            100.0 * f(b, "mflops")? / full_mflops,
            f(b, "ms_per_image")?,
            ratio(b),
            counts(b)
        )?;
    }
    Ok(())
}

fn model_section(m: &Measured) -> Result<String> {
    let name = &m.name;
    let mut out = String::new();
    writeln!(out, "Anytime prediction (`anytime eval --model {name} --budgeted --json`, batch 64):\n")?;
    writeln!(out, "| exit | MFLOPs | test top-1 | ms/image (batch 64, all exits up to here) |\n|---|---|---|---|")?;
    for e in list(&m.b64, "exits")? {
        writeln!(
            out,
            "| {} | {:.2} | {:.2} % | {:.3} |",
            e["exit"],
            f(e, "mflops")?,
            100.0 * f(e, "accuracy")?,
            f(e, "ms_per_image")?
        )?;
    }
    sweep_table(&mut out, &m.b64, "Budgeted, q sweep, real early exit at batch 64")?;
    sweep_table(&mut out, &m.b1, "Budgeted, q sweep, real early exit at batch 1")?;
    let full_mflops = f(list(&m.cal_b64, "exits")?.last().context("no exits")?, "mflops")?;
    writeln!(
        out,
        "\nCalibrated by the budget solver for 50 % of the full model's MFLOPs ({:.2}) on the held-out split: held-out {:.2} % at {:.2} MFLOPs.\n",
        f(&m.cal["method"], "budget_mflops")?,
        100.0 * f(&m.cal, "holdout_accuracy")?,
        f(&m.cal, "holdout_mflops")?
    )?;
    writeln!(
        out,
        "| batch | test top-1 | MFLOPs | % of full | ms/image | full model ms/image | wall-clock / FLOP saving | images per exit |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for (bs, r) in [(64, &m.cal_b64), (1, &m.cal_b1)] {
        let c = &r["calibrated"];
        writeln!(
            out,
            "| {bs} ({} images) | {:.2} % | {:.2} | {:.0} % | {:.3} | {:.3} | {} | {} |",
            r["images"],
            100.0 * f(c, "accuracy")?,
            f(c, "mflops")?,
            100.0 * f(c, "mflops")? / full_mflops,
            f(c, "ms_per_image")?,
            f(r, "full_ms_per_image")?,
            ratio(c),
            counts(c)
        )?;
    }
    writeln!(
        out,
        "\nRaw measurements: `docs/data/{name}/`. Plots: \
         [batch 64, MFLOPs](plots/{name}/accuracy_vs_mflops.svg), [batch 64, ms](plots/{name}/accuracy_vs_ms.svg), \
         [batch 1, MFLOPs](plots/{name}-batch1/accuracy_vs_mflops.svg), [batch 1, ms](plots/{name}-batch1/accuracy_vs_ms.svg)."
    )?;
    Ok(out)
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

fn compare_section(ms: &[Measured]) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "Generated by `cargo xtask results` from `docs/data/*/` (test set, thresholds from the held-out split).\n"
    )?;
    writeln!(
        out,
        "| model | exits | MFLOPs (first … last) | first exit | best exit | last exit | budgeted, best within 50 % of own MFLOPs | solver 50 %: top-1 at MFLOPs |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for m in ms {
        let any = anytime_curve(&m.b64)?;
        let (first, last) = (any[0], any[any.len() - 1]);
        let best = any.iter().copied().fold(first, |a, p| if p.1 > a.1 { p } else { a });
        let half = budgeted_curve(&m.b64, "mflops")?.into_iter().filter(|p| p.0 <= 0.5 * last.0).fold(
            None,
            |a: Option<(f64, f64)>, p| match a {
                Some(q) if q.1 >= p.1 => Some(q),
                _ => Some(p),
            },
        );
        let c = &m.cal_b64["calibrated"];
        writeln!(
            out,
            "| {} | {} | {:.2} … {:.2} | {:.2} % | {:.2} % (at {:.2}) | {:.2} % | {} | {:.2} % at {:.2} |",
            m.name,
            any.len(),
            first.0,
            last.0,
            first.1,
            best.1,
            best.0,
            last.1,
            half.map_or("—".into(), |p| format!("{:.2} % at {:.2}", p.1, p.0)),
            100.0 * f(c, "accuracy")?,
            f(c, "mflops")?
        )?;
    }
    let reference = &ms[0];
    writeln!(
        out,
        "\nWhere {}'s curves lie above the others at equal MFLOPs (linear interpolation between measured points, 201 samples of the shared range):\n",
        reference.name
    )?;
    for m in &ms[1..] {
        for (kind, a, b) in [
            ("anytime (per exit)", anytime_curve(&reference.b64)?, anytime_curve(&m.b64)?),
            (
                "budgeted (q sweep, batch 64)",
                budgeted_curve(&reference.b64, "mflops")?,
                budgeted_curve(&m.b64, "mflops")?,
            ),
        ] {
            let text =
                compare(&a, &b).map_or("no shared MFLOPs range".into(), |c| describe(&reference.name, &m.name, &c));
            writeln!(out, "- {} vs {}, {kind}: {text}.", reference.name, m.name)?;
        }
    }
    writeln!(
        out,
        "\nPlots: [anytime, MFLOPs](plots/fmnist/anytime_vs_mflops.svg), [budgeted, MFLOPs](plots/fmnist/budgeted_vs_mflops.svg), [budgeted, ms at batch 64](plots/fmnist/budgeted_vs_ms.svg)."
    )?;
    Ok(out)
}

fn combined_plots(dir: &Path, ms: &[Measured]) -> Result<()> {
    use anytime_train::plot::{Series, curves};
    let mut any: Vec<Series> = Vec::new();
    let mut bud: Vec<Series> = Vec::new();
    let mut bud_ms: Vec<Series> = Vec::new();
    for m in ms {
        any.push((m.name.clone(), anytime_curve(&m.b64)?));
        bud.push((m.name.clone(), budgeted_curve(&m.b64, "mflops")?));
        bud_ms.push((m.name.clone(), budgeted_curve(&m.b64, "ms_per_image")?));
    }
    let p = |f: &str| -> PathBuf { dir.join(f) };
    let (acc, mf) = ("top-1 accuracy (%)", "MFLOPs per image");
    curves(&p("anytime_vs_mflops.svg"), "Fashion-MNIST test: anytime prediction (per exit)", mf, acc, &any)?;
    curves(&p("budgeted_vs_mflops.svg"), "Fashion-MNIST test: budgeted (real early exit, q sweep)", mf, acc, &bud)?;
    curves(
        &p("budgeted_vs_ms.svg"),
        "Fashion-MNIST test: budgeted, batch 64 wall-clock",
        "ms per image",
        acc,
        &bud_ms,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_between_markers_or_appended() {
        let doc = "a\n<!-- results:m:begin -->\nold\n<!-- results:m:end -->\nb\n";
        assert_eq!(replace_section(doc, "m", "new\n"), "a\n<!-- results:m:begin -->\nnew\n<!-- results:m:end -->\nb\n");
        let appended = replace_section("a\n", "x", "y");
        assert_eq!(appended, "a\n\n<!-- results:x:begin -->\ny\n<!-- results:x:end -->\n");
        // Running twice is stable.
        assert_eq!(replace_section(&appended, "x", "y"), appended);
    }

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
}
