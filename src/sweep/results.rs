//! A sweep's results, read back from the runs' own `model.json` cards and
//! `metrics.jsonl` curves: [`RunResult`] per run, grouped per student
//! ([`by_student`]), the setting chosen on validation ([`choose`]), and the
//! Pareto front of size against accuracy.
//!
//! **Choosing on validation.** Every epoch of every run is a candidate
//! (T, alpha, epoch) with the validation accuracy measured after it; the
//! chosen one has the highest, the earliest epoch and then the first run in
//! plan order winning ties. Its test accuracy, measured after that same
//! epoch, is the figure the report states. The strongest baseline (its
//! augmentation, batch size and epoch) is chosen the same way among the
//! hard-label runs. Runs without a validation split (`val-fraction` 0) are
//! chosen on the test split instead, and [`Choice::on_test`] says so.
//!
//! **Several seeds.** A sweep of several seeds trains every setting once
//! per seed; [`pool_seeds`] makes each setting one result whose curve is the
//! mean over its seeds, epoch by epoch, so the choice above is made on the
//! mean validation accuracy and states the mean test accuracy. A setting
//! some of whose seeds have not finished is shown with the seeds it has but
//! is not chosen: a mean of fewer seeds is not comparable with the others'.

use std::path::Path;

use super::plan::{run_dir, PlannedRun, RunKind};
use crate::error::{Error, Result};
use crate::model::ModelDir;
use crate::train::card::ModelCard;
use crate::train::metrics::read_metrics;

/// One epoch of a run's curve: the accuracies measured after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurveEpoch {
    pub epoch: usize,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
}

/// One run's figures, read from its `model.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub name: String,
    /// The setting it trains: `name` without the seed a sweep of several
    /// seeds appends (a pooled result's name).
    pub setting: String,
    pub student: String,
    pub kind: RunKind,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub teacher_agreement: Option<f64>,
    pub train_seconds: f64,
    pub cache_id: Option<String>,
    /// Validation samples, and the last epoch's validation figures.
    pub val_samples: Option<usize>,
    /// The samples the run trained on, where it trained on part of the
    /// rest (`train_fraction`): the card's `data.trained_samples`.
    pub trained_samples: Option<usize>,
    pub val_accuracy: Option<f64>,
    pub val_loss: Option<f64>,
    /// Per epoch (from `metrics.jsonl`; the last epoch only where that
    /// file is missing).
    pub curve: Vec<CurveEpoch>,
    /// A setting pooled over seeds ([`pool_seeds`]): each seed's run, in
    /// plan order; empty for a single run.
    pub seed_runs: Vec<RunResult>,
    /// Pooled over fewer seeds than the sweep's others (some unfinished):
    /// listed, never chosen.
    pub missing_seeds: usize,
}

impl RunResult {
    /// Reads the figures of a card; the kind comes from the card itself (a
    /// cache means distilled, at the config's T and alpha; no cache, a
    /// baseline with the config's augmentation).
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
            None => RunKind::Baseline {
                augment: config.augment,
            },
        };
        Ok(RunResult {
            name: name.to_string(),
            setting: name.to_string(),
            student: card.spec.clone(),
            kind,
            parameters: card.parameters,
            flops_per_sample: card.flops_per_sample,
            epochs: config.epochs,
            batch_size: config.batch_size,
            seed: config.seed,
            test_accuracy: card.test_accuracy,
            test_loss: card.test_loss,
            teacher_agreement: card.teacher_agreement,
            train_seconds: card.train_seconds,
            cache_id: card.cache.as_ref().map(|c| c.id.clone()),
            val_samples: card.data.as_ref().and_then(|d| d.val_samples),
            trained_samples: card.data.as_ref().and_then(|d| d.trained_samples),
            val_accuracy: card.val_accuracy,
            val_loss: card.val_loss,
            curve: vec![CurveEpoch {
                epoch: config.epochs,
                val_accuracy: card.val_accuracy,
                test_accuracy: card.test_accuracy,
            }],
            seed_runs: Vec::new(),
            missing_seeds: 0,
        })
    }

    /// The runs a result stands for: its seeds' runs when pooled, else
    /// itself.
    pub fn runs(&self) -> Vec<&RunResult> {
        match self.seed_runs.is_empty() {
            true => vec![self],
            false => self.seed_runs.iter().collect(),
        }
    }

    /// The seeds of a pooled result (its own seed for a single run).
    pub fn seeds(&self) -> Vec<u64> {
        self.runs().iter().map(|r| r.seed).collect()
    }

    /// Each seed's test accuracy after `epoch` (one figure for a single
    /// run); `None` where a seed has none.
    pub fn seed_test_accuracies(&self, epoch: usize) -> Option<Vec<f64>> {
        let at = |r: &RunResult| r.curve.iter().find(|p| p.epoch == epoch)?.test_accuracy;
        self.runs().into_iter().map(at).collect()
    }

    /// The epoch validation chooses in this run, with its figures.
    pub fn best_epoch(&self) -> Option<CurveEpoch> {
        choose_point(std::iter::once(self)).map(|(_, p, _)| p)
    }
}

/// The setting chosen among some runs: the run, the epoch, and the figures
/// measured after that epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice<'a> {
    pub run: &'a RunResult,
    pub epoch: usize,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// No candidate had a validation figure: chosen on the test split.
    pub on_test: bool,
}

/// The best (run, epoch) of `runs` on validation (see the module doc), and
/// whether it had to be chosen on the test split.
fn choose_point<'a>(
    runs: impl Iterator<Item = &'a RunResult> + Clone,
) -> Option<(&'a RunResult, CurveEpoch, bool)> {
    let any_val = runs
        .clone()
        .any(|r| r.curve.iter().any(|p| p.val_accuracy.is_some()));
    let score = |p: &CurveEpoch| match any_val {
        true => p.val_accuracy,
        false => p.test_accuracy,
    };
    let mut best: Option<(&RunResult, CurveEpoch, f64)> = None;
    for r in runs {
        for p in &r.curve {
            let Some(acc) = score(p) else { continue };
            let better = match &best {
                None => true,
                Some((_, b, top)) => acc > *top || (acc == *top && p.epoch < b.epoch),
            };
            if better {
                best = Some((r, *p, acc));
            }
        }
    }
    best.map(|(r, p, _)| (r, p, !any_val))
}

/// The setting validation chooses among `runs` (see the module doc).
pub fn choose<'a>(runs: impl Iterator<Item = &'a RunResult> + Clone) -> Option<Choice<'a>> {
    choose_point(runs).map(|(run, p, on_test)| Choice {
        run,
        epoch: p.epoch,
        val_accuracy: p.val_accuracy,
        test_accuracy: p.test_accuracy,
        on_test,
    })
}

/// Reads the card and curve of every finished run of the plan, in plan
/// order; runs without a card (missing or unfinished) are left out.
pub fn collect_results(out: &Path, runs: &[PlannedRun]) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for r in runs {
        let dir = ModelDir::new(run_dir(out, r));
        let path = dir.card();
        if !path.exists() {
            continue;
        }
        let card = ModelCard::load(&path)?;
        let mut result = RunResult::from_card(&r.name, &card, &path)?;
        result.setting = r.setting.clone();
        if dir.metrics().exists() {
            let curve: Vec<CurveEpoch> = read_metrics(&dir.metrics())?
                .iter()
                .map(|m| CurveEpoch {
                    epoch: m.epoch,
                    val_accuracy: m.val_accuracy,
                    test_accuracy: m.test_accuracy,
                })
                .collect();
            if !curve.is_empty() {
                result.curve = curve;
            }
        }
        results.push(result);
    }
    Ok(results)
}

/// The mean of figures that every run has (`None` if one lacks it).
fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.collect::<Option<_>>()?;
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The results of a sweep of several seeds as one result per setting, in
/// plan order: its figures are the means over the setting's finished runs
/// (the curve over the epochs every one of them reached), its train time
/// their sum, and `seed_runs` keeps the runs. Results of a sweep of one
/// seed come back as they are.
pub fn pool_seeds(results: &[RunResult]) -> Vec<RunResult> {
    if results.iter().all(|r| r.name == r.setting) {
        return results.to_vec();
    }
    let mut groups: Vec<Vec<&RunResult>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in results {
        match index.get(r.setting.as_str()) {
            Some(&i) => groups[i].push(r),
            None => {
                index.insert(&r.setting, groups.len());
                groups.push(vec![r]);
            }
        }
    }
    let seeds = groups.iter().map(Vec::len).max().unwrap_or(0);
    groups
        .into_iter()
        .map(|g| {
            let first = g[0];
            let curve = first
                .curve
                .iter()
                .filter_map(|p| {
                    let at: Vec<&CurveEpoch> = g
                        .iter()
                        .map(|r| r.curve.iter().find(|q| q.epoch == p.epoch))
                        .collect::<Option<_>>()?;
                    Some(CurveEpoch {
                        epoch: p.epoch,
                        val_accuracy: mean_of(at.iter().map(|q| q.val_accuracy)),
                        test_accuracy: mean_of(at.iter().map(|q| q.test_accuracy)),
                    })
                })
                .collect();
            RunResult {
                name: first.setting.clone(),
                test_accuracy: mean_of(g.iter().map(|r| r.test_accuracy)),
                test_loss: mean_of(g.iter().map(|r| r.test_loss)),
                teacher_agreement: mean_of(g.iter().map(|r| r.teacher_agreement)),
                train_seconds: g.iter().map(|r| r.train_seconds).sum(),
                val_accuracy: mean_of(g.iter().map(|r| r.val_accuracy)),
                val_loss: mean_of(g.iter().map(|r| r.val_loss)),
                curve,
                seed_runs: g.iter().map(|&r| r.clone()).collect(),
                missing_seeds: seeds - g.len(),
                ..first.clone()
            }
        })
        .collect()
}

/// Per student: the baselines and the distilled runs, in plan order.
pub struct StudentRow<'a> {
    pub student: &'a str,
    pub parameters: u64,
    pub flops_per_sample: u64,
    /// Hard-label runs: plain and augmented, at each batch size.
    pub baselines: Vec<&'a RunResult>,
    pub distilled: Vec<&'a RunResult>,
}

impl<'a> StudentRow<'a> {
    /// The distilled setting (T, alpha, batch size, epoch) chosen on
    /// validation, among the settings with every seed.
    pub fn chosen(&self) -> Option<Choice<'a>> {
        choose(
            self.distilled
                .iter()
                .copied()
                .filter(|r| r.missing_seeds == 0),
        )
    }

    /// The strongest baseline on validation (its augmentation, batch size
    /// and epoch): what the distilled run is measured against.
    pub fn chosen_baseline(&self) -> Option<Choice<'a>> {
        choose(
            self.baselines
                .iter()
                .copied()
                .filter(|r| r.missing_seeds == 0),
        )
    }

    /// Total training time of all the student's runs.
    pub fn train_seconds(&self) -> f64 {
        self.baselines
            .iter()
            .chain(&self.distilled)
            .map(|r| r.train_seconds)
            .sum()
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
                    baselines: Vec::new(),
                    distilled: Vec::new(),
                });
                rows.len() - 1
            }
        };
        match r.kind {
            RunKind::Baseline { .. } => rows[i].baselines.push(r),
            RunKind::Distilled { .. } => rows[i].distilled.push(r),
        }
    }
    rows
}

/// Per student, the chosen baseline and the chosen distilled run, each as
/// its result with the test accuracy of the chosen epoch: what the report's
/// headline and size plot show.
pub fn chosen_results(results: &[RunResult]) -> Vec<RunResult> {
    let mut out = Vec::new();
    for row in by_student(results) {
        for c in [row.chosen_baseline(), row.chosen()].into_iter().flatten() {
            out.push(RunResult {
                test_accuracy: c.test_accuracy,
                ..c.run.clone()
            });
        }
    }
    out
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
        let name = run_name(student, kind, LossKind::Kd, None);
        RunResult {
            setting: name.clone(),
            name,
            student: student.into(),
            kind,
            parameters: params,
            flops_per_sample: 2 * params,
            epochs: 3,
            batch_size: 128,
            seed: 0,
            test_accuracy: Some(acc),
            test_loss: Some(0.5),
            teacher_agreement: None,
            train_seconds: 1.0,
            cache_id: None,
            val_samples: None,
            trained_samples: None,
            val_accuracy: None,
            val_loss: None,
            curve: vec![CurveEpoch {
                epoch: 3,
                val_accuracy: None,
                test_accuracy: Some(acc),
            }],
            seed_runs: Vec::new(),
            missing_seeds: 0,
        }
    }

    /// Five runs of four students; `a` has a baseline.
    pub(crate) fn results() -> Vec<RunResult> {
        let d = RunKind::Distilled {
            temperature: 4.0,
            alpha: 0.5,
        };
        vec![
            result("a", 100, RunKind::BASELINE, 0.80),
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
        // No validation figures: chosen on the test split, and said so.
        let c = rows[0].chosen().unwrap();
        assert_eq!((c.test_accuracy, c.on_test), (Some(0.82), true));
    }

    /// A distilled run of `a` at `t` with per-epoch (validation, test)
    /// accuracies.
    fn curved(t: f32, points: &[(f64, f64)]) -> RunResult {
        let kind = RunKind::Distilled {
            temperature: t,
            alpha: 0.5,
        };
        with_curve(kind, points)
    }

    /// A run of `a` of `kind` with per-epoch (validation, test) accuracies.
    fn with_curve(kind: RunKind, points: &[(f64, f64)]) -> RunResult {
        let mut r = result("a", 100, kind, points.last().unwrap().1);
        r.epochs = points.len();
        r.curve = points
            .iter()
            .enumerate()
            .map(|(i, &(v, t))| CurveEpoch {
                epoch: i + 1,
                val_accuracy: Some(v),
                test_accuracy: Some(t),
            })
            .collect();
        r
    }

    #[test]
    fn seeds_pool_into_one_result_per_setting() {
        // One seed: as they are.
        assert_eq!(pool_seeds(&results()), results());
        let seeded = |seed: u64, kind: RunKind, points: &[(f64, f64)]| {
            let mut r = with_curve(kind, points);
            r.seed = seed;
            r.name = format!("{}-s{seed}", r.setting);
            r
        };
        let kd = RunKind::Distilled {
            temperature: 2.0,
            alpha: 0.1,
        };
        let runs = [
            seeded(0, RunKind::BASELINE, &[(0.80, 0.79), (0.84, 0.82)]),
            seeded(1, RunKind::BASELINE, &[(0.82, 0.81), (0.82, 0.80)]),
            seeded(0, kd, &[(0.83, 0.80), (0.86, 0.85)]),
            // Seed 1 of the distilled setting stopped after one epoch.
            seeded(1, kd, &[(0.85, 0.84)]),
        ];
        let pooled = pool_seeds(&runs);
        assert_eq!(pooled.len(), 2);
        let base = &pooled[0];
        assert_eq!(base.name, "a_baseline");
        assert_eq!(base.seeds(), vec![0, 1]);
        assert_eq!(base.train_seconds, 2.0);
        assert_eq!(base.curve.len(), 2);
        assert!((base.curve[1].val_accuracy.unwrap() - 0.83).abs() < 1e-12);
        assert!((base.test_accuracy.unwrap() - 0.81).abs() < 1e-12);
        assert_eq!(base.seed_test_accuracies(1), Some(vec![0.79, 0.81]));
        // The curve covers the epochs every seed reached.
        let kd_pooled = &pooled[1];
        assert_eq!(kd_pooled.curve.len(), 1);
        assert!((kd_pooled.curve[0].val_accuracy.unwrap() - 0.84).abs() < 1e-12);
        // The choice is made on the means: the baseline's second epoch.
        let row = &by_student(&pooled)[0];
        let c = row.chosen_baseline().unwrap();
        assert_eq!(c.epoch, 2);
        assert!((c.test_accuracy.unwrap() - 0.81).abs() < 1e-12);
        // A setting with a seed missing is listed but not chosen.
        let pooled = pool_seeds(&runs[..3]);
        assert_eq!((pooled[0].missing_seeds, pooled[1].missing_seeds), (0, 1));
        let row = &by_student(&pooled)[0];
        assert_eq!(row.distilled.len(), 1);
        assert_eq!(row.chosen(), None);
    }

    #[test]
    fn the_strongest_baseline_on_validation_is_chosen() {
        let shift = crate::data::augment::Augment::parse("shift=1").unwrap();
        let with = |kind: RunKind, batch: usize, val: f64, test: f64| {
            let mut r = result("a", 100, kind, test);
            r.batch_size = batch;
            r.curve[0].val_accuracy = Some(val);
            r
        };
        let augmented = RunKind::Baseline {
            augment: Some(shift),
        };
        let runs = [
            with(RunKind::BASELINE, 128, 0.88, 0.90),
            with(augmented, 128, 0.89, 0.87),
            with(augmented, 32, 0.91, 0.89),
        ];
        let rows = by_student(&runs);
        assert_eq!(rows[0].baselines.len(), 3);
        let c = rows[0].chosen_baseline().unwrap();
        assert_eq!((c.run.kind, c.run.batch_size), (augmented, 32));
        assert_eq!(c.test_accuracy, Some(0.89));
        assert_eq!(rows[0].train_seconds(), 3.0);
    }

    #[test]
    fn validation_chooses_the_setting_and_epoch_and_test_is_read_there() {
        // T 1 has the best test accuracy, T 4 the best validation accuracy
        // (at its second epoch, tied with its third).
        let runs = [
            curved(1.0, &[(0.70, 0.75), (0.80, 0.90)]),
            curved(4.0, &[(0.75, 0.70), (0.85, 0.78), (0.85, 0.79)]),
            curved(2.0, &[(0.85, 0.60)]),
        ];
        let c = choose(runs.iter()).unwrap();
        assert_eq!(c.run.kind, runs[2].kind, "earliest epoch wins a tie");
        let c = choose(runs[..2].iter()).unwrap();
        assert_eq!(c.run.name, runs[1].name);
        assert_eq!(
            (c.epoch, c.val_accuracy, c.test_accuracy),
            (2, Some(0.85), Some(0.78))
        );
        assert!(!c.on_test && c.epoch != c.run.epochs);
        assert_eq!(runs[0].best_epoch().map(|p| p.epoch), Some(2));
        // The chosen results carry the chosen epoch's test accuracy.
        let chosen = chosen_results(&runs[..2]);
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].test_accuracy, Some(0.78));
    }
}
