//! The latency-over-time plot of a run: p50 and p99 of each endpoint, per second, as SVG.
//!
//! plotters' SVG backend writes text as SVG `<text>` for the viewer to render, so no font is
//! needed on the machine that draws the plot.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::report::{EndpointReport, Report, Second};

/// Write `report` as an SVG plot to `path`: two panels (p50 above, p99 below), one line per
/// endpoint in each, seconds of the run across, milliseconds up.
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 900)).into_drawing_area();
        draw(report, &root).map_err(|error| anyhow::anyhow!("cannot draw the plot: {error}"))?;
        root.present()
            .map_err(|error| anyhow::anyhow!("cannot draw the plot: {error}"))?;
    }
    std::fs::write(path, svg).with_context(|| format!("cannot write the plot to {}", path.display()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(report: &Report, root: &Area<'_>) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "dozen load: {} at {} req/s, {} requests, {} errors",
            report.url, report.rate, report.requests, report.errors
        ),
        ("sans-serif", 22),
    )?;
    let panels = root.split_evenly((2, 1));
    let plotted: Vec<&EndpointReport> = report
        .endpoints
        .iter()
        .filter(|endpoint| !endpoint.per_second.is_empty())
        .collect();
    let seconds = plotted
        .iter()
        .flat_map(|endpoint| endpoint.per_second.iter().map(|second| second.second + 1))
        .max()
        .unwrap_or(1);
    let p50 = |second: &Second| second.p50_ms;
    let p99 = |second: &Second| second.p99_ms;
    for (panel, (name, value)) in panels.iter().zip([
        ("p50", &p50 as &dyn Fn(&Second) -> f64),
        ("p99", &p99 as &dyn Fn(&Second) -> f64),
    ]) {
        let highest = plotted
            .iter()
            .flat_map(|endpoint| endpoint.per_second.iter().map(value))
            .fold(1.0_f64, f64::max);
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{name} latency per second (ms)"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..seconds as f64, 0.0..highest * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("second of the run")
            .y_desc("ms")
            .draw()?;
        for (index, endpoint) in plotted.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let points = endpoint
                .per_second
                .iter()
                .map(|second| (second.second as f64 + 0.5, value(second)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{} {name}", endpoint.endpoint))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}
