//! The chart of the RPC benchmark: calls/s against callers, one line per
//! contender, as SVG (plotters' SVG backend needs no font or image libraries).

use super::contenders::Contender;
use super::{Key, Summary};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const COLORS: [RGBColor; 8] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 114, 178),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(213, 94, 0),
    RGBColor(140, 140, 140),
];

/// Draws calls/s against callers (log scale) for every contender at `payload`.
pub(super) fn draw(
    path: &Path,
    payload: usize,
    contenders: &[Contender],
    callers: &[usize],
    summary: &BTreeMap<Key, Summary>,
) -> anyhow::Result<()> {
    let max = summary.iter().filter(|(k, _)| k.1 == payload).map(|(_, s)| s.rate).fold(1.0, f64::max) * 1.1;
    let (lo, hi) = (callers.iter().copied().min().unwrap_or(1), callers.iter().copied().max().unwrap_or(1));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Unary echo, {payload}-byte payload: calls/s by concurrent callers"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((lo as f64..(hi as f64).max(lo as f64 + 1.0)).log_scale(), 0.0..max)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .configure_mesh()
        .x_desc("concurrent callers")
        .y_desc("calls/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    for (i, &c) in contenders.iter().enumerate() {
        let points: Vec<(f64, f64)> =
            callers.iter().filter_map(|&n| summary.get(&(c, payload, n)).map(|s| (n as f64, s.rate))).collect();
        if points.is_empty() {
            continue;
        }
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?
            .label(c.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}
