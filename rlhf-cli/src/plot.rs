//! Line charts as SVG (plotters, no font files): the learning curves of `rlhf plot` and the
//! study's report plots.

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::{
    BLACK, Cartesian2d, ChartBuilder, ChartContext, Circle, Color, DrawingArea, IntoDrawingArea,
    IntoFont, LineSeries, PathElement, RGBColor, Rectangle, SVGBackend, Text, WHITE,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use rlhf_core::{Error, Result};

/// A named series of `(x, y, error bar)` points.
pub type Series = (String, Vec<(f64, f64, f64)>);

/// A line chart as SVG, drawn with plotters: one series per entry of `series` (`name`, points
/// `(x, y, err)`, error bars where `err` is finite), with axes, tick labels (`x_ticks` at their
/// x, or plotters' own), axis titles and a legend; with `log_x` the x axis is log2.
pub fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    x_ticks: Option<&[(f64, String)]>,
    log_x: bool,
) -> Result<String> {
    let mut svg = String::new();
    let draw = |svg: &mut String| -> DrawResult {
        let tx = |x: f64| if log_x { x.max(1e-12).log2() } else { x };
        let (x0, x1, y0, y1) = padded_extent(series, tx);

        let root = SVGBackend::with_string(svg, (680, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        // the plot on the left, its legend in a column of its own on the right
        let (plot, legend) = root.split_horizontally(530);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let fmt_x = |v: &f64| short(if log_x { v.exp2() } else { *v });
        let fmt_y = |v: &f64| short(*v);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(if x_ticks.is_some() { 0 } else { 6 })
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()?;
        // the given ticks at their own x (categories, log-spaced values)
        for (x, label) in x_ticks.unwrap_or_default() {
            let (px, py) = chart.backend_coord(&(tx(*x), y0));
            plot.draw(&PathElement::new(vec![(px, py), (px, py + 5)], BLACK))?;
            plot.draw(&Text::new(
                label.clone(),
                (px, py + 8),
                ("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        for (i, (name, pts)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64, f64)> = pts
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|p| (tx(p.0), p.1, p.2))
                .collect();
            draw_series(&mut chart, &legend, i, name, &pts)?;
        }
        root.present()?;
        Ok(())
    };
    draw(&mut svg).map_err(|e| Error::Config(format!("plot {title:?}: {e}")))?;
    Ok(svg)
}

/// What drawing with plotters returns.
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// The series' colours in turn (matplotlib's tab10).
const COLOURS: [RGBColor; 9] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// The axes' ranges `(x0, x1, y0, y1)`: the extent of the points with a finite y (x through
/// `tx`, y with its error bar), or the unit square without any, padded by 5% in x and 8% in y
/// (by 0.5 where the extent is a single value).
fn padded_extent(series: &[Series], tx: impl Fn(f64) -> f64) -> (f64, f64, f64, f64) {
    let all: Vec<(f64, f64, f64)> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|p| p.1.is_finite())
        .collect();
    let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        (a.0.min(tx(p.0)), a.1.max(tx(p.0)))
    });
    let (mut y0, mut y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
        let e = if p.2.is_finite() { p.2 } else { 0.0 };
        (a.0.min(p.1 - e), a.1.max(p.1 + e))
    });
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let xpad = if x1 - x0 < 1e-12 {
        0.5
    } else {
        0.05 * (x1 - x0)
    };
    let ypad = if y1 - y0 < 1e-12 {
        0.5
    } else {
        0.08 * (y1 - y0)
    };
    (x0 - xpad, x1 + xpad, y0 - ypad, y1 + ypad)
}

/// The `i`th series, its points `pts` in the chart's coordinates: its line, its legend entry,
/// markers on each point when there are few, and its error bars.
fn draw_series(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    legend: &DrawingArea<SVGBackend<'_>, Shift>,
    i: usize,
    name: &str,
    pts: &[(f64, f64, f64)],
) -> DrawResult {
    let c = COLOURS[i % COLOURS.len()];
    chart.draw_series(LineSeries::new(
        pts.iter().map(|p| (p.0, p.1)),
        c.stroke_width(2),
    ))?;
    let y = 50 + 20 * i as i32;
    legend.draw(&Rectangle::new([(8, y - 6), (20, y + 6)], c.filled()))?;
    legend.draw(&Text::new(
        name.to_string(),
        (26, y),
        ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center)),
    ))?;
    // markers on the study's few points, a plain line on a learning curve's many
    if pts.len() <= 40 {
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))?;
    }
    chart.draw_series(
        pts.iter()
            .filter(|p| p.2.is_finite() && p.2 > 0.0)
            .map(|p| PathElement::new(vec![(p.0, p.1 - p.2), (p.0, p.1 + p.2)], c)),
    )?;
    Ok(())
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-2 {
        format!("{v:.1e}")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// One SVG per metric of a run's `metrics.jsonl` (each metric against `step`), in `out`:
/// returns the files written. Names like `rewards/chosen` become `rewards_chosen.svg`.
pub fn learning_curves(
    metrics: &std::path::Path,
    out: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>> {
    let lines = rlhf_core::train::metrics::read_metrics(metrics)?;
    let mut series: std::collections::BTreeMap<String, Vec<(f64, f64, f64)>> = Default::default();
    for line in &lines {
        let Some(step) = line.get("step").and_then(serde_json::Value::as_f64) else {
            continue;
        };
        for (k, v) in line {
            if let (false, Some(v)) = (k == "step", v.as_f64()) {
                series
                    .entry(k.clone())
                    .or_default()
                    .push((step, v, f64::NAN));
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut written = Vec::new();
    for (name, points) in series {
        let svg = svg_chart(&name, "step", &name, &[(name.clone(), points)], None, false)?;
        let path = out.join(format!("{}.svg", name.replace(['/', ' '], "_")));
        rlhf_core::train::fs::write_atomic(&path, svg.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
