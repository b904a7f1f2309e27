//! The plots of a sweep report, drawn from the runs' cards
//! ([`super::RunResult`]): test accuracy of the settings chosen on
//! validation against parameter count (log scale, with the Pareto front and
//! the teacher as a reference line), and validation accuracy against the
//! distillation temperature, one panel per alpha.

use std::path::Path;

use plotters::coord::combinators::LogCoord;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::plan::RunKind;
use super::report::group_digits;
use super::results::{pareto_front, RunResult};
use super::teacher::TeacherSummary;
use crate::error::Result;
use crate::report::plot::{ensure_font, plot_err};

/// The chart of accuracy against parameters.
type ParamChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<LogCoord<f64>, RangedCoordf64>>;

const BASELINE_COLOR: RGBColor = RGBColor(214, 110, 0);
const DISTILLED_COLOR: RGBColor = RGBColor(31, 90, 200);
const FRONT_COLOR: RGBColor = RGBColor(0, 150, 70);
const TEACHER_COLOR: RGBColor = RGBColor(150, 0, 150);

/// One colour per student, distinguishable on white.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 90, 200),
    RGBColor(214, 110, 0),
    RGBColor(0, 150, 70),
    RGBColor(200, 30, 40),
    RGBColor(130, 70, 190),
    RGBColor(120, 80, 40),
    RGBColor(220, 60, 160),
    RGBColor(90, 90, 90),
];

/// 25,450 -> "25k", 1,200,000 -> "1.2M".
fn short_count(x: f64) -> String {
    if x >= 1e6 {
        let v = x / 1e6;
        if (v - v.round()).abs() < 0.05 {
            format!("{:.0}M", v)
        } else {
            format!("{v:.1}M")
        }
    } else if x >= 1e3 {
        let v = x / 1e3;
        if v >= 10.0 || (v - v.round()).abs() < 0.05 {
            format!("{:.0}k", v)
        } else {
            format!("{v:.1}k")
        }
    } else {
        format!("{x:.0}")
    }
}

/// Accuracy range in percent covering `values`, with `headroom` (a fraction
/// of the span) left free at the top for the legend.
fn acc_range(values: &[f64], headroom: f64) -> (f64, f64) {
    let lo = values.iter().cloned().fold(100.0, f64::min);
    let hi = values.iter().cloned().fold(0.0, f64::max);
    let span = (hi - lo).max(1.0);
    let bottom = (lo - 0.1 * span).max(0.0);
    let top = (hi + headroom * span).min(100.0);
    (bottom, top.max(bottom + 1.0))
}

/// Test accuracy against parameters: each student's baseline and distilled
/// runs, the Pareto front through the best run per size, and the teacher as a
/// horizontal line.
pub fn accuracy_vs_parameters(
    path: &Path,
    results: &[RunResult],
    teacher: Option<&TeacherSummary>,
) -> Result<()> {
    let pts: Vec<(f64, f64, &RunResult)> = results
        .iter()
        .filter_map(|r| r.test_accuracy.map(|a| (r.parameters as f64, 100.0 * a, r)))
        .collect();
    if pts.is_empty() {
        return Ok(());
    }
    ensure_font();
    let e = |err| plot_err(path, err);
    let root = BitMapBackend::new(path, (1100, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let teacher_acc = teacher.and_then(|t| t.accuracy.map(|a| 100.0 * a));
    let mut accs: Vec<f64> = pts.iter().map(|p| p.1).collect();
    accs.extend(teacher_acc);
    let (y0, y1) = acc_range(&accs, 0.55);
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    if let Some(t) = teacher {
        xs.push(t.parameters as f64);
    }
    let x0 = xs.iter().cloned().fold(f64::MAX, f64::min).max(1.0) / 2.0;
    let x1 = xs.iter().cloned().fold(0.0, f64::max) * 2.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test accuracy against student size", ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_labels(12)
        .x_desc("parameters (count, log scale)")
        .y_desc("test accuracy (%)")
        .x_label_formatter(&|x| short_count(*x))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    if let (Some(t), Some(acc)) = (teacher, teacher_acc) {
        draw_teacher(&mut chart, path, t, acc, (x0, x1))?;
    }
    draw_front(&mut chart, path, results)?;
    draw_runs(&mut chart, path, &pts)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// The teacher: a dashed line at its accuracy across the chart and a
/// triangle at its size.
fn draw_teacher<'a, 'b: 'a>(
    chart: &mut ParamChart<'a, 'b>,
    path: &Path,
    t: &TeacherSummary,
    acc: f64,
    (x0, x1): (f64, f64),
) -> Result<()> {
    let e = |err| plot_err(path, err);
    chart
        .draw_series(DashedLineSeries::new(
            vec![(x0, acc), (x1, acc)],
            10,
            6,
            TEACHER_COLOR.stroke_width(2),
        ))
        .map_err(e)?
        .label(format!(
            "teacher {} ({:.2}%, {} parameters)",
            t.spec,
            acc,
            group_digits(t.parameters)
        ))
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 24, y)], TEACHER_COLOR.stroke_width(2))
        });
    chart
        .draw_series(std::iter::once(TriangleMarker::new(
            (t.parameters as f64, acc),
            8,
            TEACHER_COLOR.filled(),
        )))
        .map_err(e)?;
    Ok(())
}

/// The Pareto front through the best run of each size.
fn draw_front<'a, 'b: 'a>(
    chart: &mut ParamChart<'a, 'b>,
    path: &Path,
    results: &[RunResult],
) -> Result<()> {
    let front: Vec<(f64, f64)> = pareto_front(results)
        .into_iter()
        .map(|(p, a)| (p as f64, 100.0 * a))
        .collect();
    chart
        .draw_series(LineSeries::new(
            front.clone(),
            FRONT_COLOR.mix(0.7).stroke_width(3),
        ))
        .map_err(|err| plot_err(path, err))?
        .label("Pareto front (best run of each size)")
        .legend(|(x, y)| {
            PathElement::new(
                vec![(x, y), (x + 24, y)],
                FRONT_COLOR.mix(0.7).stroke_width(3),
            )
        });
    Ok(())
}

/// Every run as a point (circles distilled, squares baselines), and each
/// student's spec under its lowest point.
fn draw_runs<'a, 'b: 'a>(
    chart: &mut ParamChart<'a, 'b>,
    path: &Path,
    pts: &[(f64, f64, &RunResult)],
) -> Result<()> {
    let e = |err| plot_err(path, err);
    let distilled: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| matches!(p.2.kind, RunKind::Distilled { .. }))
        .map(|p| (p.0, p.1))
        .collect();
    if !distilled.is_empty() {
        chart
            .draw_series(
                distilled
                    .iter()
                    .map(|&p| Circle::new(p, 5, DISTILLED_COLOR.mix(0.75).filled())),
            )
            .map_err(e)?
            .label("distilled from the cache (setting chosen on validation)")
            .legend(|(x, y)| Circle::new((x + 12, y), 5, DISTILLED_COLOR.filled()));
    }
    let baselines: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| p.2.kind.is_baseline())
        .map(|p| (p.0, p.1))
        .collect();
    if !baselines.is_empty() {
        chart
            .draw_series(baselines.iter().map(|&(x, y)| {
                EmptyElement::at((x, y))
                    + Rectangle::new([(-6, -6), (6, 6)], BASELINE_COLOR.stroke_width(2))
            }))
            .map_err(e)?
            .label("hard-label baseline")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x + 6, y - 6), (x + 18, y + 6)],
                    BASELINE_COLOR.stroke_width(2),
                )
            });
    }
    let mut students: Vec<(&str, f64, f64)> = Vec::new();
    for &(x, y, r) in pts {
        match students.iter_mut().find(|s| s.0 == r.student) {
            Some(s) => s.2 = s.2.min(y),
            None => students.push((&r.student, x, y)),
        }
    }
    let font = ("sans-serif", 15).into_font().color(&BLACK);
    chart
        .draw_series(students.iter().map(|&(name, x, y)| {
            EmptyElement::at((x, y))
                + Text::new(
                    name.to_string(),
                    (-(name.len() as i32) * 4, 12),
                    font.clone(),
                )
        }))
        .map_err(e)?;
    Ok(())
}

/// The accuracy the temperature plot shows for a run: the validation
/// accuracy of its best epoch, or its test accuracy where no run has a
/// validation split.
fn plotted(r: &RunResult, on_val: bool) -> Option<f64> {
    match on_val {
        true => r.best_epoch().and_then(|b| b.val_accuracy),
        false => r.test_accuracy,
    }
}

/// Validation accuracy (each run's best epoch) against the distillation
/// temperature T, one panel per alpha, one line per student (each T at its
/// best batch size), with each student's strongest hard-label baseline
/// dashed in the same colour: the figures
/// the settings are chosen on. Without validation splits, test accuracy.
pub fn accuracy_vs_temperature(path: &Path, results: &[RunResult]) -> Result<()> {
    let on_val = results.iter().any(|r| r.val_accuracy.is_some());
    let mut alphas: Vec<f32> = Vec::new();
    let mut temps: Vec<f32> = Vec::new();
    let mut students: Vec<&str> = Vec::new();
    for r in results {
        if !students.contains(&r.student.as_str()) {
            students.push(&r.student);
        }
        if let RunKind::Distilled { temperature, alpha } = r.kind {
            if !alphas.contains(&alpha) {
                alphas.push(alpha);
            }
            if !temps.contains(&temperature) {
                temps.push(temperature);
            }
        }
    }
    if alphas.is_empty() {
        return Ok(());
    }
    alphas.sort_by(|a, b| a.total_cmp(b));
    ensure_font();
    let e = |err| plot_err(path, err);
    // Wide enough for the title over a single panel.
    let width = (560 * alphas.len() as u32).clamp(900, 2400);
    let root = BitMapBackend::new(path, (width, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root
        .titled(
            if on_val {
                "Validation accuracy (best epoch) against distillation temperature"
            } else {
                "Test accuracy against distillation temperature"
            },
            ("sans-serif", 26),
        )
        .map_err(e)?;
    let panels = root.split_evenly((1, alphas.len()));
    // The points drawn: per student, each (alpha, T) at its best batch size
    // and the strongest baseline; the runs left out do not stretch the axis.
    let mut shown: std::collections::HashMap<(&str, Option<AlphaT>), f64> =
        std::collections::HashMap::new();
    for r in results {
        let Some(acc) = plotted(r, on_val) else {
            continue;
        };
        let setting = match r.kind {
            RunKind::Distilled { temperature, alpha } => {
                Some((alpha.to_bits(), temperature.to_bits()))
            }
            RunKind::Baseline { .. } => None,
        };
        let best = shown.entry((&r.student, setting)).or_insert(acc);
        *best = best.max(acc);
    }
    let accs: Vec<f64> = shown.values().map(|a| 100.0 * a).collect();
    let (y0, y1) = acc_range(&accs, 0.25 + 0.12 * students.len() as f64);
    let tmin = temps.iter().cloned().fold(f32::MAX, f32::min) as f64;
    let tmax = temps.iter().cloned().fold(0.0, f32::max) as f64;
    let pad = ((tmax - tmin) * 0.1).max(0.5);
    let (x0, x1) = ((tmin - pad).max(0.0), tmax + pad);
    let panel = Panel {
        path,
        results,
        students: &students,
        x: (x0, x1),
        y: (y0, y1),
        on_val,
    };
    for (area, &alpha) in panels.iter().zip(&alphas) {
        panel.draw(area, alpha)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

/// A distilled setting's (alpha, T), as bits: a key two equal settings share.
type AlphaT = (u32, u32);

/// What every panel of the temperature plot shares.
struct Panel<'a> {
    path: &'a Path,
    results: &'a [RunResult],
    students: &'a [&'a str],
    x: (f64, f64),
    y: (f64, f64),
    /// Validation accuracy (else test accuracy) on the y axis.
    on_val: bool,
}

impl Panel<'_> {
    /// The panel of one alpha: a line per student, its baseline dashed.
    fn draw(&self, area: &DrawingArea<BitMapBackend<'_>, Shift>, alpha: f32) -> Result<()> {
        let e = |err| plot_err(self.path, err);
        let ((x0, x1), (y0, y1)) = (self.x, self.y);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("alpha = {alpha} (weight of the hard-label loss)"),
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(55)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("temperature T (dimensionless)")
            .y_desc(if self.on_val {
                "validation accuracy (%)"
            } else {
                "test accuracy (%)"
            })
            .y_label_formatter(&|y| format!("{y:.1}"))
            .x_label_formatter(&|x| format!("{x}"))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e)?;
        for (i, student) in self.students.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            self.student(&mut chart, student, alpha, color)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e)?;
        Ok(())
    }

    /// One student's distilled runs at `alpha` against T, and its baseline.
    fn student<'a, 'b: 'a>(
        &self,
        chart: &mut ChartContext<
            'a,
            BitMapBackend<'b>,
            Cartesian2d<RangedCoordf64, RangedCoordf64>,
        >,
        student: &str,
        alpha: f32,
        color: RGBColor,
    ) -> Result<()> {
        let e = |err| plot_err(self.path, err);
        let (x0, x1) = self.x;
        let mut line: Vec<(f64, f64)> = self
            .results
            .iter()
            .filter(|r| r.student == *student)
            .filter_map(|r| match (r.kind, plotted(r, self.on_val)) {
                (
                    RunKind::Distilled {
                        temperature,
                        alpha: a,
                    },
                    Some(acc),
                ) if a == alpha => Some((temperature as f64, 100.0 * acc)),
                _ => None,
            })
            .collect();
        // Several batch sizes: each T's best, as validation would choose.
        line.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
        line.dedup_by(|later, first| later.0 == first.0);
        if !line.is_empty() {
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{student} distilled"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(e)?;
        }
        // The strongest of the student's baselines (plain, augmented, at
        // each batch size).
        let base = self
            .results
            .iter()
            .filter(|r| r.student == *student && r.kind.is_baseline())
            .filter_map(|r| plotted(r, self.on_val))
            .reduce(f64::max);
        if let Some(b) = base {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(x0, 100.0 * b), (x1, 100.0 * b)],
                    8,
                    6,
                    color.stroke_width(1),
                ))
                .map_err(e)?
                .label(format!("{student} best baseline (dashed)"))
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (8, 0)], color.stroke_width(1))
                        + PathElement::new(vec![(14, 0), (24, 0)], color.stroke_width(1))
                });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::short_count;

    #[test]
    fn counts_are_short() {
        assert_eq!(short_count(25_450.0), "25k");
        assert_eq!(short_count(9_098.0), "9.1k");
        assert_eq!(short_count(1_000_000.0), "1M");
        assert_eq!(short_count(500.0), "500");
    }
}
