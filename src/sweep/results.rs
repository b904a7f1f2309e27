//! A sweep's results, read back from the runs' own `model.json` cards:
//! [`RunResult`] per run, grouped per student ([`by_student`]), and the
//! Pareto front of size against accuracy.

use std::path::Path;

use super::plan::{run_dir, PlannedRun, RunKind};
use crate::error::{Error, Result};
use crate::model::ModelDir;
use crate::train::card::ModelCard;

/// One run's figures, read from its `model.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub name: String,
    pub student: String,
    pub kind: RunKind,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub epochs: usize,
    pub seed: u64,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub teacher_agreement: Option<f64>,
    pub train_seconds: f64,
    pub cache_id: Option<String>,
}

impl RunResult {
    /// Reads the figures of a card; the kind comes from the card itself (a
    /// cache means distilled, at the config's T and alpha).
    pub fn from_card(name: &str, card: &ModelCard, path: &Path) -> Result<Self> {
        let config = card.config.as_ref().ok_or_else(|| Error::Model {
            path: path.to_path_buf(),
            message: "the card records no training config".into(),
        })?;
        let kind = match &card.cache {
            Some(_) => RunKind::Distilled {
                temperature: config.loss.temperature,
                alpha: config.loss.alpha,
            },
            None => RunKind::Baseline,
        };
        Ok(RunResult {
            name: name.to_string(),
            student: card.spec.clone(),
            kind,
            parameters: card.parameters,
            flops_per_sample: card.flops_per_sample,
            epochs: config.epochs,
            seed: config.seed,
            test_accuracy: card.test_accuracy,
            test_loss: card.test_loss,
            teacher_agreement: card.teacher_agreement,
            train_seconds: card.train_seconds,
            cache_id: card.cache.as_ref().map(|c| c.id.clone()),
        })
    }
}

/// Reads the card of every finished run of the plan, in plan order; runs
/// without a card are left out.
pub fn collect_results(out: &Path, runs: &[PlannedRun]) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for r in runs {
        let path = ModelDir::new(run_dir(out, r)).card();
        if !path.exists() {
            continue;
        }
        let card = ModelCard::load(&path)?;
        results.push(RunResult::from_card(&r.name, &card, &path)?);
    }
    Ok(results)
}

/// Per student: the baseline and the distilled runs, in plan order.
pub struct StudentRow<'a> {
    pub student: &'a str,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub baseline: Option<&'a RunResult>,
    pub distilled: Vec<&'a RunResult>,
}

impl StudentRow<'_> {
    /// The distilled run with the best test accuracy.
    pub fn best(&self) -> Option<&RunResult> {
        self.distilled
            .iter()
            .copied()
            .filter(|r| r.test_accuracy.is_some())
            .max_by(|a, b| {
                let (x, y) = (a.test_accuracy, b.test_accuracy);
                x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
            })
    }

    /// Total training time of all the student's runs.
    pub fn train_seconds(&self) -> f64 {
        self.baseline.map_or(0.0, |b| b.train_seconds)
            + self.distilled.iter().map(|r| r.train_seconds).sum::<f64>()
    }
}

/// Groups results by student, in order of first appearance.
pub fn by_student(results: &[RunResult]) -> Vec<StudentRow<'_>> {
    let mut rows: Vec<StudentRow<'_>> = Vec::new();
    for r in results {
        let i = match rows.iter().position(|s| s.student == r.student) {
            Some(i) => i,
            None => {
                rows.push(StudentRow {
                    student: &r.student,
                    parameters: r.parameters,
                    flops_per_sample: r.flops_per_sample,
                    baseline: None,
                    distilled: Vec::new(),
                });
                rows.len() - 1
            }
        };
        match r.kind {
            RunKind::Baseline => rows[i].baseline = Some(r),
            RunKind::Distilled { .. } => rows[i].distilled.push(r),
        }
    }
    rows
}

/// The students on the Pareto front of (parameters, accuracy): each is more
/// accurate than every smaller student. Returns (parameters, accuracy) pairs
/// in order of size, one per student (its best run).
pub fn pareto_front(results: &[RunResult]) -> Vec<(u64, f64)> {
    let mut best: Vec<(u64, f64)> = Vec::new();
    for r in results {
        let Some(acc) = r.test_accuracy else { continue };
        match best.iter_mut().find(|(p, _)| *p == r.parameters) {
            Some(b) => b.1 = b.1.max(acc),
            None => best.push((r.parameters, acc)),
        }
    }
    best.sort_by_key(|b| b.0);
    let mut front: Vec<(u64, f64)> = Vec::new();
    for (p, a) in best {
        let better = match front.last() {
            Some(&(_, top)) => a > top,
            None => true,
        };
        if better {
            front.push((p, a));
        }
    }
    front
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::plan::run_name;
    use super::*;
    use crate::train::loss::LossKind;

    /// A result of `student` with `params` parameters and accuracy `acc`.
    pub(crate) fn result(student: &str, params: u64, kind: RunKind, acc: f64) -> RunResult {
        RunResult {
            name: run_name(student, kind, LossKind::Kd),
            student: student.into(),
            kind,
            parameters: params,
            flops_per_sample: 2 * params,
            epochs: 3,
            seed: 0,
            test_accuracy: Some(acc),
            test_loss: Some(0.5),
            teacher_agreement: None,
            train_seconds: 1.0,
            cache_id: None,
        }
    }

    /// Five runs of four students; `a` has a baseline.
    pub(crate) fn results() -> Vec<RunResult> {
        let d = RunKind::Distilled {
            temperature: 4.0,
            alpha: 0.5,
        };
        vec![
            result("a", 100, RunKind::Baseline, 0.80),
            result("a", 100, d, 0.82),
            result("b", 1000, d, 0.81),
            result("c", 50, d, 0.70),
            result("e", 5000, d, 0.90),
        ]
    }

    #[test]
    fn pareto_front_keeps_students_better_than_every_smaller_one() {
        let r = results();
        assert_eq!(
            pareto_front(&r),
            vec![(50, 0.70), (100, 0.82), (5000, 0.90)]
        );
        let rows = by_student(&r);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].best().and_then(|b| b.test_accuracy), Some(0.82));
    }
}
