//! SVG plots of training curves (plotters, SVG backend only).

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;
use plotters::prelude::*;
use std::path::Path;

/// Writes `path` (atomically): training loss, and held-out accuracy per exit,
/// against epochs.
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
        let lo = history.iter().flat_map(|m| m.val_acc.iter().copied()).fold(1.0f64, f64::min).min(0.9) * 100.0;
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
        c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    anytime_io::atomic_write(path, svg.as_bytes())
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}
