//! `cargo xtask results`: measures every trained Fashion-MNIST model (and
//! GFNet's cluttered Fashion-MNIST models) with the `anytime` binary, keeps the reports under `docs/data/<model>/`, and
//! regenerates `docs/results.md` and every plot of `docs/plots/` from them
//! ([`crate::page`]); `--reuse` measures only what is missing, so with every
//! report committed it regenerates the page without measuring anything.

use anyhow::{Context, Result, bail};
use anytime_eval::{EvalReport, Provenance};
use std::path::Path;
use std::process::{Command, Stdio};

/// The shipped Fashion-MNIST models, MSDNet first (the comparison's reference).
pub const FMNIST_MODELS: &[&str] =
    &["msdnet-fmnist", "ranet-fmnist", "resnet-mc-fmnist", "densenet-mc-fmnist", "scan-resnet18-fmnist"];

/// Models of cluttered Fashion-MNIST (GFNet's benchmark): measured as the
/// others, plus the centre- and random-patch baselines of their policy.
pub const CLUTTERED_MODELS: &[&str] = &["gfnet-mnv3-cluttered-fmnist"];

/// GFNet's full-image comparison: one exit, measured per exit only.
pub const FULL_IMAGE_MODEL: &str = "mnv3-full-cluttered-fmnist";

/// The patch policies GFNet's learned one is compared with, and the files
/// of their reports in `docs/data/<model>/`.
pub const BASELINE_POLICIES: &[(&str, &str)] = &[("centre", "policy-centre.json"), ("random:0", "policy-random.json")];

/// Every model `cargo xtask results` knows.
pub fn known_models() -> Vec<&'static str> {
    FMNIST_MODELS.iter().chain(CLUTTERED_MODELS).copied().chain([FULL_IMAGE_MODEL]).collect()
}

/// Test images used for the batch-1 measurements (batch 1 is slow).
pub const BATCH1_IMAGES: usize = 2000;

/// Arguments of `cargo xtask results`.
#[derive(clap::Args, Default)]
pub struct ResultsArgs {
    /// Keep measurements already in `docs/data/<model>/` and only run the
    /// missing ones (with all of them there: regenerate the page and plots
    /// from the committed reports, measuring nothing).
    #[arg(long)]
    reuse: bool,
    /// Only measure these models (comma-separated); default: every model with weights (plain and cluttered
    /// Fashion-MNIST).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
}

/// Runs the release `anytime` binary with `args` and returns what it printed on stdout.
fn anytime_stdout(args: &[&str]) -> Result<String> {
    let out = crate::train::anytime_command(args).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("anytime {} failed", args.join(" "));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The output of `cmd args`, trimmed; empty when it cannot run.
fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(crate::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Today's UTC date, `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
fn utc_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// When, with which commit and on what this process measures.
pub fn provenance() -> Provenance {
    let mut commit = output("git", &["rev-parse", "--short", "HEAD"]);
    if !output("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    Provenance { date: utc_date(), commit, machine: format!("{cores} cores of {cpu}{}", vector_extensions()) }
}

/// The CPU's widest vector extensions, for the machine's description (the
/// same CPU name covers machines with and without AVX-512).
fn vector_extensions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return " (AVX-512, AVX2/FMA)";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return " (AVX2/FMA, no AVX-512)";
        }
    }
    ""
}

/// Runs one measurement unless `reuse` and its file exists; the file then
/// holds the report, stamped with `stamp`.
fn measure(path: &Path, reuse: bool, stamp: &Provenance, args: &[&str]) -> Result<()> {
    if reuse && path.exists() {
        return Ok(());
    }
    let text = anytime_stdout(args)?;
    let mut report: EvalReport =
        serde_json::from_str(&text).with_context(|| format!("anytime {} printed no report", args.join(" ")))?;
    report.measured = Some(stamp.clone());
    report.save(path)?;
    Ok(())
}

fn measure_model(name: &str, reuse: bool, stamp: &Provenance) -> Result<()> {
    let root = crate::root();
    // Paths handed to `anytime` are relative to the repository root (its
    // working directory), so the JSON it writes names no machine path.
    let rel = format!("docs/data/{name}");
    std::fs::create_dir_all(root.join(&rel))?;
    let file = |f: &str| format!("{rel}/{f}");
    let n1 = BATCH1_IMAGES.to_string();
    if name == FULL_IMAGE_MODEL {
        // Trained and measured, not shipped: its weights have no registry
        // entry (`anytime export --out`).
        let w = format!("weights/{name}.safetensors");
        measure(
            &root.join(file("eval-b64.json")),
            reuse,
            stamp,
            &["eval", "--model", name, "--weights", &w, "--json"],
        )?;
        return measure(
            &root.join(file("eval-b1.json")),
            reuse,
            stamp,
            &["eval", "--model", name, "--weights", &w, "--batch-size", "1", "--limit", &n1, "--json"],
        );
    }
    if CLUTTERED_MODELS.contains(&name) {
        for (policy, f) in BASELINE_POLICIES {
            measure(&root.join(file(f)), reuse, stamp, &["eval", "--model", name, "--patch-policy", policy, "--json"])?;
        }
    }
    let plots64 = format!("docs/plots/{name}");
    let plots1 = format!("docs/plots/{name}-batch1");
    measure(
        &root.join(file("budgeted-b64.json")),
        reuse,
        stamp,
        &["eval", "--model", name, "--budgeted", "--methods", "--json", "--plots", &plots64],
    )?;
    measure(
        &root.join(file("budgeted-b1.json")),
        reuse,
        stamp,
        &[
            "eval",
            "--model",
            name,
            "--budgeted",
            "--methods",
            "--batch-size",
            "1",
            "--limit",
            &n1,
            "--json",
            "--plots",
            &plots1,
        ],
    )?;
    let cal_rel = file("calibration-50.json");
    if !(reuse && root.join(&cal_rel).exists()) {
        anytime_stdout(&["calibrate", "--model", name, "--budget-fraction", "0.5", "--output", &cal_rel])?;
    }
    measure(
        &root.join(file("calibrated-b64.json")),
        reuse,
        stamp,
        &["eval", "--model", name, "--calibration", &cal_rel, "--json"],
    )?;
    measure(
        &root.join(file("calibrated-b1.json")),
        reuse,
        stamp,
        &["eval", "--model", name, "--calibration", &cal_rel, "--batch-size", "1", "--limit", &n1, "--json"],
    )
}

/// Runs the task.
pub fn run(a: &ResultsArgs) -> Result<()> {
    let root = crate::root();
    let known = known_models();
    let names: Vec<String> =
        if a.models.is_empty() { known.iter().map(|s| s.to_string()).collect() } else { a.models.clone() };
    let stamp = provenance();
    for name in &names {
        if !known.contains(&name.as_str()) {
            bail!("unknown model '{name}' (known: {})", known.join(", "));
        }
        if !root.join("weights").join(format!("{name}.safetensors")).exists() {
            eprintln!("{name}: no weights/{name}.safetensors, skipped");
            continue;
        }
        measure_model(name, a.reuse, &stamp)?;
    }
    let models = crate::page::load_models(&root)?;
    if models.is_empty() {
        bail!("no measured model in docs/data/ (and no trained model to measure in weights/)");
    }
    crate::page::write_plots(&root, &models)?;
    let doc_path = root.join("docs/results.md");
    anytime_io::atomic_write(&doc_path, crate::page::render(&root, &models)?.as_bytes())?;
    std::fs::create_dir_all(root.join("docs/results"))?;
    for (name, page) in crate::page::render_details(&root, &models)? {
        anytime_io::atomic_write(root.join("docs/results").join(format!("{name}.md")), page.as_bytes())?;
    }
    eprintln!("rewrote {} ({} models) and the plots in docs/plots/", doc_path.display(), models.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_names_a_date_and_a_machine() {
        let p = provenance();
        let d: Vec<&str> = p.date.split('-').collect();
        assert_eq!((d.len(), d[0].len(), d[1].len(), d[2].len()), (3, 4, 2, 2), "{}", p.date);
        assert!(d[0] >= "2026" && d[1] >= "01" && d[1] <= "12" && d[2] >= "01" && d[2] <= "31", "{}", p.date);
        assert!(p.machine.contains("cores"), "{}", p.machine);
    }
}
