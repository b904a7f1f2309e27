//! Per-epoch metrics: the record of one epoch ([`EpochMetrics`]), its
//! one-line summary, the epoch a run would stop at when epochs are chosen
//! on validation ([`best_val_epoch`]), and the `metrics.jsonl` file a run
//! writes after every epoch and a plot or a later run reads back
//! ([`read_metrics`]).

use std::path::Path;

use crate::error::{Error, Result};
use crate::report::plot::CurvePoint;

/// One epoch's figures, one JSON line each in `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub test_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Cross-entropy and accuracy on the run's validation split (samples
    /// held out of the training split); absent without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// Fraction of test samples where student and teacher agree on the class.
    pub teacher_agreement: Option<f64>,
    pub lr: f64,
    pub epoch_seconds: f64,
    pub train_samples_per_sec: f64,
    /// Fraction of the weights held at zero by pruning masks (runs with masks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_sparsity: Option<f64>,
}

impl EpochMetrics {
    /// A one-line human summary.
    pub fn summary_line(&self, epochs: usize) -> String {
        let mut s = format!(
            "epoch {}/{}  train loss {:.4}",
            self.epoch, epochs, self.train_loss
        );
        if let Some(a) = self.val_accuracy {
            s.push_str(&format!("  val acc {:.2}%", 100.0 * a));
        }
        if let Some(l) = self.test_loss {
            s.push_str(&format!("  test loss {l:.4}"));
        }
        if let Some(a) = self.test_accuracy {
            s.push_str(&format!("  test acc {:.2}%", 100.0 * a));
        }
        if let Some(a) = self.teacher_agreement {
            s.push_str(&format!("  teacher agreement {:.2}%", 100.0 * a));
        }
        if let Some(z) = self.weight_sparsity {
            s.push_str(&format!("  sparsity {:.1}%", 100.0 * z));
        }
        s.push_str(&format!(
            "  {:.1}s  {:.0} samples/s",
            self.epoch_seconds, self.train_samples_per_sec
        ));
        s
    }
}

/// The epoch with the best validation accuracy (the earliest of equals),
/// if any epoch has one: the epoch a run would be stopped at when epochs
/// are chosen on validation.
pub fn best_val_epoch(metrics: &[EpochMetrics]) -> Option<&EpochMetrics> {
    let mut best: Option<&EpochMetrics> = None;
    for m in metrics {
        let Some(a) = m.val_accuracy else { continue };
        if best.and_then(|b| b.val_accuracy).is_none_or(|b| a > b) {
            best = Some(m);
        }
    }
    best
}

/// Reads a run's `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Model {
                path: path.to_path_buf(),
                message: format!(
                    "line {}: not an epoch metrics record: {}",
                    i + 1,
                    crate::error::parser_message(&e)
                ),
            })
        })
        .collect()
}

/// Writes a run's `metrics.jsonl` (one JSON line per epoch), atomically.
pub fn write_metrics(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut s = String::new();
    for m in metrics {
        s.push_str(&serde_json::to_string(m).unwrap_or_default());
        s.push('\n');
    }
    crate::model::io::atomic_write(path, s.as_bytes())
}

/// The points of the training-curves plot, one per epoch.
pub fn curve_points(metrics: &[EpochMetrics]) -> Vec<CurvePoint> {
    metrics
        .iter()
        .map(|m| CurvePoint {
            epoch: m.epoch,
            train_loss: m.train_loss,
            test_loss: m.test_loss,
            test_accuracy: m.test_accuracy,
            val_loss: m.val_loss,
            val_accuracy: m.val_accuracy,
        })
        .collect()
}
