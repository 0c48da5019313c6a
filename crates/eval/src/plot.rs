//! SVG plots (plotters, SVG backend only): accuracy/cost curves of evaluation
//! reports and training curves.

use crate::error::{Error, Result};
use crate::report::EvalReport;
use plotters::prelude::*;
use std::path::Path;

/// One named curve of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

fn plot_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Io { path: path.to_path_buf(), msg: format!("plot: {e}") }
}

fn write_svg(path: &Path, svg: &str) -> Result<()> {
    anytime_io::atomic_write(path, svg.as_bytes())
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}

/// Writes `path` (atomically): the given curves on one chart.
pub fn curves(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let err = plot_err(path);
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(Error::Io { path: path.to_path_buf(), msg: "plot: no points".into() });
    }
    let (dx, dy) = (((x1 - x0) * 0.05).max(1e-6), ((y1 - y0) * 0.05).max(1e-6));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d((x0 - dx)..(x1 + dx), (y0 - dy)..(y1 + dy))
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| err(&e))?;
        for (k, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            c.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_svg(path, &svg)
}

/// The two plots of a report with a q sweep, in `dir`:
/// `accuracy_vs_mflops.svg` and `accuracy_vs_ms.svg`, each with the anytime
/// curve (one point per exit) and the q sweep's real early exit.
pub fn report_plots(report: &EvalReport, dir: &Path) -> Result<()> {
    let anytime = |x: &dyn Fn(usize) -> f64| -> Vec<(f64, f64)> {
        report.exits.iter().enumerate().map(|(k, e)| (x(k), 100.0 * e.accuracy)).collect()
    };
    let (any, bud) = ("anytime (per exit)".to_string(), "budgeted (real early exit)".to_string());
    curves(
        &dir.join("accuracy_vs_mflops.svg"),
        &format!("{}: accuracy vs MFLOPs ({} split)", report.model, report.split.as_str()),
        "MFLOPs per image",
        "top-1 accuracy (%)",
        &[(any.clone(), anytime(&|k| report.exits[k].mflops)), (bud.clone(), report.budgeted_curve(|r| r.mflops))],
    )?;
    curves(
        &dir.join("accuracy_vs_ms.svg"),
        &format!("{}: accuracy vs wall-clock (batch {})", report.model, report.batch_size),
        "ms per image",
        "top-1 accuracy (%)",
        &[(any, anytime(&|k| report.exits[k].ms_per_image)), (bud, report.budgeted_curve(|r| r.ms_per_image))],
    )
}

/// One epoch of a training run, as the training plot needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Held-out accuracy per exit, fractions.
    pub val_acc: Vec<f64>,
    /// Held-out accuracy per exit of the weight average, where there is one.
    pub swa_val_acc: Option<Vec<f64>>,
}

/// Writes `path` (atomically): training loss, and held-out accuracy per exit
/// (and of the weight average's last exit, where there is one), against
/// epochs.
pub fn training_curves(path: &Path, history: &[EpochPoint]) -> Result<()> {
    let err = plot_err(path);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(480);
        let n = history.len().max(1) as f64;
        let max_loss = history.iter().map(|m| m.train_loss).fold(0.0f64, f64::max).max(1e-6);
        let mut c = ChartBuilder::on(&left)
            .caption("training loss", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..n, 0f64..max_loss * 1.05)
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("epoch").draw().map_err(|e| err(&e))?;
        c.draw_series(LineSeries::new(history.iter().map(|m| (m.epoch as f64 + 1.0, m.train_loss)), &BLACK))
            .map_err(|e| err(&e))?;
        let exits = history.iter().map(|m| m.val_acc.len()).max().unwrap_or(0);
        let swa = |m: &EpochPoint| m.swa_val_acc.as_ref().and_then(|v| v.last().copied());
        let lo = history.iter().flat_map(|m| m.val_acc.iter().copied().chain(swa(m))).fold(1.0f64, f64::min).min(0.9)
            * 100.0;
        let mut c = ChartBuilder::on(&right)
            .caption("held-out accuracy per exit (%)", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..n, lo.floor()..100f64)
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("epoch").draw().map_err(|e| err(&e))?;
        for k in 0..exits {
            let color = Palette99::pick(k).to_rgba();
            c.draw_series(LineSeries::new(
                history.iter().filter_map(|m| m.val_acc.get(k).map(|a| (m.epoch as f64 + 1.0, a * 100.0))),
                color,
            ))
            .map_err(|e| err(&e))?
            .label(format!("exit {k}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        }
        if history.iter().any(|m| swa(m).is_some()) {
            c.draw_series(LineSeries::new(
                history.iter().filter_map(|m| swa(m).map(|a| (m.epoch as f64 + 1.0, a * 100.0))),
                BLACK.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(format!("weight average, exit {}", exits.saturating_sub(1)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.stroke_width(2)));
        }
        c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_svg(path, &svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_written_and_empty_ones_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.svg");
        curves(&p, "the title", "x", "y", &[("series one".into(), vec![(1.0, 90.0), (2.0, 91.0)])]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("the title") && svg.contains("series one"));
        let e = curves(&dir.path().join("e.svg"), "t", "x", "y", &[("a".into(), vec![])]).unwrap_err();
        assert!(e.to_string().contains("e.svg: plot: no points"), "{e}");
        assert!(!dir.path().join("e.svg").exists());
    }

    #[test]
    fn training_curves_draw_every_exit_and_the_average() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.svg");
        let pt = |epoch, swa: Option<Vec<f64>>| EpochPoint {
            epoch,
            train_loss: 2.0 - epoch as f64,
            val_acc: vec![0.8, 0.85],
            swa_val_acc: swa,
        };
        training_curves(&p, &[pt(0, None), pt(1, Some(vec![0.86, 0.87]))]).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.contains("exit 1") && svg.contains("weight average, exit 1"));
    }
}
