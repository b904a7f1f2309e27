//! PNG plots drawn with plotters. The DejaVu Sans font is compiled in and
//! registered with plotters' `ab_glyph` renderer, so text renders on machines
//! without any system fonts.

use std::fs;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};

/// One epoch's point on the training curves (the trainer's per-epoch
/// metrics, as far as the plot needs them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// On the run's validation split (held out of the training split).
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
}

static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

pub(crate) fn ensure_font() {
    REGISTER.call_once(|| {
        // The embedded font is a valid TrueType file; registration only fails
        // on invalid bytes, in which case text is simply not drawn.
        let _ = register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

pub(crate) fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Model {
        path: path.to_path_buf(),
        message: format!("cannot draw the plot: {e}"),
    }
}

type Chart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws each named series as a line with point markers and a legend entry;
/// empty series are skipped.
fn draw_lines(chart: &mut Chart<'_>, series: Vec<Series<'_>>, path: &Path) -> Result<()> {
    for (name, pts, color) in series {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

/// Training curves: loss (train, validation, test) and accuracy
/// (validation, test) per epoch, with an optional hard-label baseline's
/// curves and the teacher's accuracy as a horizontal line. Written whole or
/// not at all ([`write_atomically`]).
pub fn training_curves(
    path: &Path,
    metrics: &[CurvePoint],
    baseline: Option<&[CurvePoint]>,
    teacher_accuracy: Option<f64>,
) -> Result<()> {
    write_atomically(path, |tmp| {
        draw_training_curves(tmp, metrics, baseline, teacher_accuracy)
    })
}

/// Draws a plot into a temporary file beside `path` (named `.NAME.PID.png`,
/// so the encoder still sees a PNG), syncs it and renames it onto `path`: a
/// crash leaves the old plot or the new one, never a torn file. A plot with
/// nothing to draw writes no file. A drawing error names `path`.
pub fn write_atomically(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.png", std::process::id()));
    let note = "while drawing it in a temporary copy, removed again; any earlier plot is as it was";
    let result = draw(&tmp)
        .map_err(|e| e.told_by(&tmp, path, note))
        .and_then(|()| {
            if !tmp.exists() {
                return Ok(());
            }
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .and_then(|()| fs::rename(&tmp, path))
                .map_err(|e| Error::io(path, e))?;
            Ok(crate::fsutil::sync_after_replacing(path)?)
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn draw_training_curves(
    path: &Path,
    metrics: &[CurvePoint],
    baseline: Option<&[CurvePoint]>,
    teacher_accuracy: Option<f64>,
) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    ensure_font();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(600);
    let epochs = metrics.len().max(baseline.map_or(0, |b| b.len())) as f64;
    loss_panel(&left, path, metrics, baseline, epochs)?;
    accuracy_panel(&right, path, metrics, baseline, teacher_accuracy, epochs)?;
    root.present().map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// A named line: its legend label, its points and its colour.
type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// The left panel: train and test loss per epoch, and the baseline's test loss.
fn loss_panel(
    area: &Area<'_>,
    path: &Path,
    metrics: &[CurvePoint],
    baseline: Option<&[CurvePoint]>,
    epochs: f64,
) -> Result<()> {
    let losses: Vec<f64> = metrics
        .iter()
        .flat_map(|m| [Some(m.train_loss), m.test_loss, m.val_loss])
        .flatten()
        .chain(
            baseline
                .into_iter()
                .flatten()
                .flat_map(|m| [Some(m.train_loss), m.test_loss])
                .flatten(),
        )
        .collect();
    let max_loss = losses.iter().cloned().fold(0.0, f64::max).max(1e-6) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("Loss per epoch", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5..epochs + 0.5, 0.0..max_loss)
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc("loss (nats per sample)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| plot_err(path, e))?;
    let series: Vec<Series<'_>> = vec![
        (
            "student train loss",
            metrics
                .iter()
                .map(|m| (m.epoch as f64, m.train_loss))
                .collect(),
            BLUE,
        ),
        (
            "student test loss (CE)",
            metrics
                .iter()
                .filter_map(|m| m.test_loss.map(|l| (m.epoch as f64, l)))
                .collect(),
            RGBColor(0, 150, 0),
        ),
        (
            "student validation loss (CE)",
            metrics
                .iter()
                .filter_map(|m| m.val_loss.map(|l| (m.epoch as f64, l)))
                .collect(),
            RGBColor(0, 170, 170),
        ),
        (
            "baseline test loss (CE)",
            baseline
                .into_iter()
                .flatten()
                .filter_map(|m| m.test_loss.map(|l| (m.epoch as f64, l)))
                .collect(),
            RGBColor(200, 100, 0),
        ),
    ];
    draw_lines(&mut chart, series, path)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| plot_err(path, e))?;
    Ok(())
}

/// The right panel: test (and validation) accuracy per epoch of the
/// student and the baseline, and the teacher's as a horizontal line.
fn accuracy_panel(
    area: &Area<'_>,
    path: &Path,
    metrics: &[CurvePoint],
    baseline: Option<&[CurvePoint]>,
    teacher_accuracy: Option<f64>,
    epochs: f64,
) -> Result<()> {
    let accs: Vec<f64> = metrics
        .iter()
        .flat_map(|m| [m.test_accuracy, m.val_accuracy])
        .flatten()
        .chain(
            baseline
                .into_iter()
                .flatten()
                .flat_map(|m| [m.test_accuracy, m.val_accuracy])
                .flatten(),
        )
        .chain(teacher_accuracy)
        .map(|a| 100.0 * a)
        .collect();
    if !accs.is_empty() {
        let lo = accs.iter().cloned().fold(100.0, f64::min);
        let hi = accs.iter().cloned().fold(0.0, f64::max);
        let pad = ((hi - lo) * 0.15).max(0.5);
        let mut chart = ChartBuilder::on(area)
            .caption("Accuracy per epoch", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                0.5..epochs + 0.5,
                (lo - pad).max(0.0)..(hi + pad).min(100.0),
            )
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy (%)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        let val = |points: Option<&[CurvePoint]>| -> Vec<(f64, f64)> {
            points
                .into_iter()
                .flatten()
                .filter_map(|m| m.val_accuracy.map(|a| (m.epoch as f64, 100.0 * a)))
                .collect()
        };
        let series: Vec<Series<'_>> = vec![
            (
                "student validation",
                val(Some(metrics)),
                RGBColor(0, 170, 170),
            ),
            (
                "hard-label baseline validation",
                val(baseline),
                RGBColor(230, 170, 60),
            ),
            (
                "student test",
                metrics
                    .iter()
                    .filter_map(|m| m.test_accuracy.map(|a| (m.epoch as f64, 100.0 * a)))
                    .collect(),
                BLUE,
            ),
            (
                "hard-label baseline test",
                baseline
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.test_accuracy.map(|a| (m.epoch as f64, 100.0 * a)))
                    .collect(),
                RGBColor(200, 100, 0),
            ),
        ];
        draw_lines(&mut chart, series, path)?;
        if let Some(t) = teacher_accuracy {
            let color = RGBColor(150, 0, 150);
            chart
                .draw_series(LineSeries::new(
                    vec![(0.5, 100.0 * t), (epochs + 0.5, 100.0 * t)],
                    color.stroke_width(2),
                ))
                .map_err(|e| plot_err(path, e))?
                .label(format!("teacher ({:.2}%)", 100.0 * t))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(epoch: usize) -> CurvePoint {
        CurvePoint {
            epoch,
            train_loss: 1.0 / epoch as f64,
            val_loss: None,
            val_accuracy: None,
            test_loss: None,
            test_accuracy: Some(0.5 + 0.01 * epoch as f64),
        }
    }

    /// The curves replace the old plot whole, leave no temporary file, and a
    /// failed drawing leaves the old plot as it was.
    #[test]
    fn a_plot_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        training_curves(&path, &[point(1), point(2)], None, Some(0.9)).unwrap();
        let first = fs::read(&path).unwrap();
        assert!(first.starts_with(b"\x89PNG"));
        let failed = write_atomically(&path, |tmp| {
            fs::write(tmp, b"half a plot").unwrap();
            Err(Error::io(tmp, std::io::Error::other("disk full")))
        });
        // Told by the plot asked for, not by its temporary copy.
        let text = failed.unwrap_err().to_string();
        assert!(
            text.starts_with(&format!("{}: disk full (while drawing it", path.display())),
            "{text}"
        );
        assert_eq!(fs::read(&path).unwrap(), first);
        training_curves(&path, &[point(1), point(2), point(3)], None, None).unwrap();
        assert_ne!(fs::read(&path).unwrap(), first);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("curves.png")]);
    }
}
