//! `--report DIR`: one self-contained HTML page per run, with the report's table and its
//! plots (latency histogram, throughput over time) drawn as inline SVG by plotters, so a
//! user can look instead of read. No JavaScript, nothing fetched.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Lines on one chart: a name and its (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub enum Plot {
    /// How many samples fall in each latency bucket, one colour per named sample set.
    Histogram(Vec<(String, Vec<f64>)>),
    Lines(Vec<Series>),
}

pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub plot: Plot,
}

const WIDTH: u32 = 900;
const HEIGHT: u32 = 380;
const BUCKETS: usize = 60;

/// Writes `<dir>/<name>.html` and returns its path.
pub fn write(dir: &Path, name: &str, table: &str, figures: &[Figure]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>issuer-bench {name}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f6f6f6;padding:1em}}</style>\
         </head><body><h1>issuer-bench {name}</h1><pre>{}</pre>",
        escape(table)
    );
    for figure in figures {
        page.push_str(&format!("<h2>{}</h2>", escape(&figure.title)));
        page.push_str(&svg(figure)?);
    }
    page.push_str("</body></html>\n");
    let path = dir.join(format!("{name}.html"));
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg(figure: &Figure) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        match &figure.plot {
            Plot::Histogram(sets) => histogram(&root, figure, sets)?,
            Plot::Lines(series) => lines(&root, figure, series)?,
        }
        root.present().map_err(plot_error)?;
    }
    Ok(out)
}

fn plot_error(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {err}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Axes from zero to the largest value (with headroom above), labelled as the figure says.
fn axes<'a, 'b>(
    root: &'a Area<'b>,
    figure: &Figure,
    x_max: f64,
    y_max: f64,
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max * 1.05)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(&figure.x_label)
        .y_desc(&figure.y_label)
        .draw()
        .map_err(plot_error)?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

fn histogram(root: &Area<'_>, figure: &Figure, sets: &[(String, Vec<f64>)]) -> anyhow::Result<()> {
    let max = sets
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let width = max / BUCKETS as f64;
    let counts: Vec<Vec<u64>> = sets
        .iter()
        .map(|(_, values)| {
            let mut counts = vec![0u64; BUCKETS];
            for v in values {
                counts[((v / width) as usize).min(BUCKETS - 1)] += 1;
            }
            counts
        })
        .collect();
    let top = counts.iter().flatten().copied().max().unwrap_or(1) as f64;
    let mut chart = axes(root, figure, max, top)?;
    for (i, ((name, _), counts)) in sets.iter().zip(&counts).enumerate() {
        let colour = Palette99::pick(i).mix(0.55);
        chart
            .draw_series(counts.iter().enumerate().map(|(b, &n)| {
                let x0 = b as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width, n as f64)], colour.filled())
            }))
            .map_err(plot_error)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    legend(&mut chart)
}

fn lines(root: &Area<'_>, figure: &Figure, series: &[Series]) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(0.0_f64, f64::max).max(1.0);
    let y_max = points().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0);
    let mut chart = axes(root, figure, x_max, y_max)?;
    for (i, s) in series.iter().enumerate() {
        let colour = Palette99::pick(i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label(&s.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    legend(&mut chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_with_a_histogram_and_a_line_chart() {
        let dir = std::env::temp_dir().join(format!("html-{}", uuid::Uuid::new_v4()));
        let figures = [
            Figure {
                title: "latency".into(),
                x_label: "ms".into(),
                y_label: "answers".into(),
                plot: Plot::Histogram(vec![("kafka".into(), vec![1.0, 2.0, 2.5, 40.0])]),
            },
            Figure {
                title: "throughput".into(),
                x_label: "s".into(),
                y_label: "req/s".into(),
                plot: Plot::Lines(vec![Series {
                    name: "answered".into(),
                    points: vec![(0.0, 10.0), (1.0, 30.0)],
                }]),
            },
        ];
        let path = write(&dir, "seed", "| a < b |", &figures).unwrap();
        let page = std::fs::read_to_string(path).unwrap();
        assert!(page.contains("| a &lt; b |"), "the table is escaped");
        assert_eq!(page.matches("<svg").count(), 2, "one SVG per figure");
        assert!(
            page.contains("kafka") && page.contains("answered"),
            "legends drawn"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
