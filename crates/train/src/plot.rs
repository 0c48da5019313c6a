//! SVG plots of training curves (plotters, SVG backend only).

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use plotters::prelude::*;
use std::path::Path;

/// Writes `path` (atomically): training loss, and held-out accuracy per exit
/// (and of the weight average's last exit, where there is one), against
/// epochs.
pub fn training_curves(path: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 400)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| Error::Io { path: path.to_path_buf(), msg: format!("plot: {e}") };
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
        let swa = |m: &EpochMetrics| m.swa_val_acc.as_ref().and_then(|v| v.last().copied());
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
    anytime_io::atomic_write(path, svg.as_bytes())
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}

/// One named curve of (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

/// Writes `path` (atomically): the given curves on one chart.
pub fn curves(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Io { path: path.to_path_buf(), msg: format!("plot: {e}") };
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
    anytime_io::atomic_write(path, svg.as_bytes())
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}
