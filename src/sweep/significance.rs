//! Is the sweep's choice more than chance? Per student, the distilled run
//! chosen on validation is scored again, image by image, on the validation
//! images the runs held out, against the strongest baseline and against the
//! runner-up (the best of the other distilled settings): the images only one
//! of the two gets right, the difference's 95% interval and McNemar's exact
//! p-value ([`crate::train::paired::PairedComparison`]).
//!
//! A side is scored with its weights after its chosen epoch: the run's own
//! at its last epoch, else those its best validation epoch left in
//! `best/` (`train --keep-best`, which a sweep's runs use), which is the
//! epoch validation chooses for a single run. A run without them (trained
//! before sweeps kept them) is not scored, and the report says why. Each
//! run's predictions are computed once and shared by the pairs that use it.
//!
//! The chosen setting is also compared with the strongest baseline on the
//! test images ([`test_comparisons`]): the chosen settings' own test
//! figures, from each run's weights after its side's chosen epoch.
//!
//! A sweep of several seeds compares settings over seeds instead: each
//! seed's test accuracy after each side's chosen epoch (from the curves,
//! so any epoch serves), the difference seed by seed and Student's t
//! interval of its mean ([`PooledComparison`]); `distill eval --arm` adds
//! the comparison over images from the runs' weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::plan::RUNS_DIR;
use super::results::{by_student, choose, Choice, RunResult};
use crate::data::Dataset;
use crate::error::Result;
use crate::model::{Backend, ModelDir};
use crate::train::best;
use crate::train::eval::{evaluate, evaluate_samples};
use crate::train::paired::{PairedComparison, PooledComparison};
use crate::train::validation::held_out_by_model;

/// The chosen distilled run against one other run of its student.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoicePair {
    /// What the other run is to the choice: "the baseline" or "the runner-up".
    pub role: &'static str,
    /// The chosen distilled run's name.
    pub chosen: String,
    /// The other run's name.
    pub other: String,
    pub outcome: PairOutcome,
}

/// How a pair was compared (A the other side, B the chosen one).
#[derive(Debug, Clone, PartialEq)]
pub enum PairOutcome {
    /// Image by image on the validation images.
    Images(PairedComparison),
    /// Settings of several seeds: each seed's test accuracy after the
    /// chosen epochs, paired by seed where both ran the same seeds.
    Seeds {
        /// The chosen side's seeds.
        seeds: Vec<u64>,
        /// The other side's, where they differ.
        other_seeds: Option<Vec<u64>>,
        comparison: PooledComparison,
    },
    /// Not compared, and why.
    NotScored(String),
}

/// For each student with a chosen distilled run, its pairs (by student
/// spec). Students without validation figures have none. A sweep of
/// several seeds passes its results pooled ([`super::pool_seeds`]); its
/// pairs are compared over seeds.
pub fn choice_pairs<D: Backend>(
    device: D,
    out: &Path,
    results: &[RunResult],
    train: &Dataset,
    batch: usize,
) -> Result<HashMap<String, Vec<ChoicePair>>> {
    let mut predictions: HashMap<String, Vec<u32>> = HashMap::new();
    let mut indices: Option<Vec<usize>> = None;
    let Some(labels) = train.labels() else {
        return Ok(HashMap::new());
    };
    let mut pairs = HashMap::new();
    for row in by_student(results) {
        let Some(chosen) = row.chosen().filter(|c| !c.on_test) else {
            continue;
        };
        let runner_up = choose(
            row.distilled
                .iter()
                .copied()
                .filter(|r| r.name != chosen.run.name && r.missing_seeds == 0),
        );
        let mut mine = Vec::new();
        for (role, other) in [
            ("the baseline", row.chosen_baseline()),
            ("the runner-up", runner_up),
        ] {
            let Some(other) = other.filter(|o| !o.on_test) else {
                continue;
            };
            if !chosen.run.seed_runs.is_empty() {
                mine.push(ChoicePair {
                    role,
                    chosen: chosen.run.name.clone(),
                    other: other.run.name.clone(),
                    outcome: over_seeds(&chosen, &other),
                });
                continue;
            }
            let outcome = match weights_of(out, &chosen)
                .and_then(|b| Ok((weights_of(out, &other)?, b)))
            {
                Err(reason) => PairOutcome::NotScored(reason),
                Ok((other_weights, chosen_weights)) => {
                    let mut scored = |run: &RunResult, weights: &Path| -> Result<Vec<u32>> {
                        if let Some(p) = predictions.get(&run.name) {
                            return Ok(p.clone());
                        }
                        let dir = out.join(RUNS_DIR).join(&run.name);
                        let idx = match &indices {
                            Some(i) => i.clone(),
                            None => {
                                let split =
                                    held_out_by_model(&dir, &train.fingerprint().0, train.len())?;
                                let i = split.indices().to_vec();
                                indices = Some(i.clone());
                                i
                            }
                        };
                        let net = ModelDir::new(weights).load(device.clone())?;
                        let p = evaluate_samples(&net, train, &idx, batch)?.predictions;
                        predictions.insert(run.name.clone(), p.clone());
                        Ok(p)
                    };
                    let b = scored(chosen.run, &chosen_weights)?;
                    let a = scored(other.run, &other_weights)?;
                    let idx = indices.as_deref().unwrap_or_default();
                    let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
                    PairOutcome::Images(PairedComparison::of(&a, &b, &y)?)
                }
            };
            mine.push(ChoicePair {
                role,
                chosen: chosen.run.name.clone(),
                other: other.run.name.clone(),
                outcome,
            });
        }
        pairs.insert(row.student.to_string(), mine);
    }
    Ok(pairs)
}

/// Two settings of several seeds compared over seeds, on each seed's test
/// accuracy after the chosen epochs.
fn over_seeds(chosen: &Choice<'_>, other: &Choice<'_>) -> PairOutcome {
    let (b, a) = (chosen.run, other.run);
    let (Some(tb), Some(ta)) = (
        b.seed_test_accuracies(chosen.epoch),
        a.seed_test_accuracies(other.epoch),
    ) else {
        return PairOutcome::NotScored("a seed's run records no test accuracy".into());
    };
    let paired = a.seeds() == b.seeds();
    match PooledComparison::of_accuracies(ta, tb, paired) {
        Ok(comparison) => PairOutcome::Seeds {
            seeds: b.seeds(),
            other_seeds: (!paired).then(|| a.seeds()),
            comparison,
        },
        Err(e) => PairOutcome::NotScored(e.to_string()),
    }
}

/// The chosen distilled setting against the strongest baseline on the test
/// images, each run scored with its weights after its side's chosen epoch:
/// test figures of the chosen settings only, as the report states them.
#[derive(Debug, Clone, PartialEq)]
pub struct TestComparison {
    /// The chosen distilled setting's name, and the baseline's.
    pub chosen: String,
    pub baseline: String,
    /// The seeds of the chosen setting (one for a single run).
    pub seeds: Vec<u64>,
    /// Over the test images, and over seeds where both sides ran the same
    /// seeds (A the baseline, B the chosen setting).
    pub comparison: PooledComparison,
}

/// Per student (by spec), the chosen distilled setting against the
/// strongest baseline on `test` ([`TestComparison`]), where every run of
/// both sides kept its weights after the chosen epoch (a sweep's runs keep
/// their best validation epoch's, [`best::weights_after`]). Students chosen
/// on the test split itself have none.
pub fn test_comparisons<D: Backend>(
    device: D,
    out: &Path,
    results: &[RunResult],
    test: &Dataset,
    batch: usize,
) -> Result<HashMap<String, TestComparison>> {
    let Some(labels) = test.labels() else {
        return Ok(HashMap::new());
    };
    let mut found = HashMap::new();
    for row in by_student(results) {
        let (Some(chosen), Some(base)) = (row.chosen(), row.chosen_baseline()) else {
            continue;
        };
        if chosen.on_test || base.on_test {
            continue;
        }
        // Each side's runs (seed, weights after its chosen epoch), by seed.
        let kept = |c: &Choice<'_>| -> Option<Vec<(u64, PathBuf)>> {
            let mut w = weights_after_choice(out, c)
                .into_iter()
                .map(|(r, p)| Some((r.seed, p?)))
                .collect::<Option<Vec<_>>>()?;
            w.sort_by_key(|(seed, _)| *seed);
            Some(w)
        };
        let (Some(b), Some(a)) = (kept(&chosen), kept(&base)) else {
            continue;
        };
        let predict = |runs: &[(u64, PathBuf)]| -> Result<Vec<Vec<u32>>> {
            runs.iter()
                .map(|(_, w)| {
                    let net = ModelDir::new(w).load(device.clone())?;
                    Ok(evaluate(&net, test, batch)?.predictions)
                })
                .collect()
        };
        let seeds = |runs: &[(u64, PathBuf)]| runs.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        let paired = seeds(&a) == seeds(&b);
        let comparison = PooledComparison::of(&predict(&a)?, &predict(&b)?, labels, paired)?;
        found.insert(
            row.student.to_string(),
            TestComparison {
                chosen: chosen.run.setting.clone(),
                baseline: base.run.setting.clone(),
                seeds: seeds(&b),
                comparison,
            },
        );
    }
    Ok(found)
}

/// The report's line for a [`TestComparison`].
pub fn test_line(t: &TestComparison) -> String {
    let c = &t.comparison;
    let over_images = match (c.ci95_over_images(), c.p_over_images()) {
        (Some((lo, hi)), Some(p)) => format!(
            ", 95% interval over images [{:+.2}, {:+.2}], p {:.4}",
            100.0 * lo,
            100.0 * hi,
            p
        ),
        _ => String::new(),
    };
    let over_seeds = match c.ci95_over_seeds() {
        Some((lo, hi)) => format!(
            "; over seeds [{:+.2}, {:+.2}] (Student's t)",
            100.0 * lo,
            100.0 * hi
        ),
        None => String::new(),
    };
    format!(
        "On the {} test images, each run with its weights after its chosen epoch: `{}` against the strongest baseline `{}`{}: {:+.2} points{over_images}{over_seeds}.",
        c.n,
        t.chosen,
        t.baseline,
        match t.seeds.len() {
            1 => String::new(),
            _ => format!(
                " over seeds {}",
                t.seeds
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        100.0 * c.difference()
    )
}

/// Each run of a choice (its seeds' runs when pooled) with its weights
/// after the chosen epoch, where it kept them ([`best::weights_after`]).
pub fn weights_after_choice<'a>(
    out: &Path,
    c: &Choice<'a>,
) -> Vec<(&'a RunResult, Option<PathBuf>)> {
    c.run
        .runs()
        .into_iter()
        .map(|r| {
            let dir = out.join(RUNS_DIR).join(&r.name);
            (r, best::weights_after(&dir, c.epoch, r.epochs))
        })
        .collect()
}

/// The weights of a chosen run after its chosen epoch
/// ([`best::weights_after`]), or why the run kept none.
fn weights_of(out: &Path, c: &Choice<'_>) -> std::result::Result<PathBuf, String> {
    let dir = out.join(RUNS_DIR).join(&c.run.name);
    best::weights_after(&dir, c.epoch, c.run.epochs).ok_or_else(|| {
        format!(
            "`{}` was chosen at epoch {} of {}, and the run kept only its last epoch's weights",
            c.run.name, c.epoch, c.run.epochs
        )
    })
}

/// The report's line for one pair.
pub fn pair_line(p: &ChoicePair) -> String {
    match &p.outcome {
        PairOutcome::Images(c) => {
            let (lo, hi) = c.ci95();
            format!(
                "Against {} (`{}`), image by image on the {} validation images: {:+.2} points, {} {} only the chosen run gets right and {} only `{}`, 95% interval [{:+.2}, {:+.2}], McNemar's exact p {:.4}.",
                p.role,
                p.other,
                c.n,
                100.0 * c.difference(),
                c.only_b,
                if c.only_b == 1 { "image" } else { "images" },
                c.only_a,
                p.other,
                100.0 * lo,
                100.0 * hi,
                c.mcnemar_p()
            )
        }
        PairOutcome::NotScored(reason) => format!(
            "Against {} (`{}`): not compared: {reason}.",
            p.role, p.other
        ),
        PairOutcome::Seeds {
            seeds,
            other_seeds,
            comparison,
        } => {
            let list = |s: &[u64]| {
                s.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let c = comparison;
            let points = |d: &[f64]| {
                d.iter()
                    .map(|x| format!("{:+.2}", 100.0 * x))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let interval = match (c.ci95_over_seeds(), c.ci95_over_seeds_unpaired()) {
                (Some((lo, hi)), _) => format!(
                    "Student's t 95% interval over seeds [{:+.2}, {:+.2}]",
                    100.0 * lo,
                    100.0 * hi
                ),
                (None, Some((lo, hi))) => format!(
                    "Welch's 95% interval over seeds [{:+.2}, {:+.2}]",
                    100.0 * lo,
                    100.0 * hi
                ),
                (None, None) => "no interval from a single seed".to_string(),
            };
            format!(
                "Against {} (`{}`), on the test images over {} {}: {:+.2} points{}, {interval}; `distill eval --arm` compares the runs image by image too.",
                p.role,
                p.other,
                match seeds.len() {
                    1 => "seed".to_string(),
                    _ => "seeds".to_string(),
                },
                list(seeds),
                100.0 * c.difference(),
                match (c.seed_differences(), other_seeds) {
                    (Some(d), _) => format!(" (seed by seed {})", points(d)),
                    (None, Some(o)) => format!(" (`{}` ran seeds {})", p.other, list(o)),
                    (None, None) => String::new(),
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::results::tests::result;
    use crate::sweep::RunKind;

    #[test]
    fn a_side_is_scored_with_its_weights_after_the_chosen_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = result("mlp:784-8-10", 100, RunKind::BASELINE, 0.8);
        a.epochs = 3;
        let at = |run, epoch| Choice {
            run,
            epoch,
            val_accuracy: Some(0.8),
            test_accuracy: Some(0.8),
            on_test: false,
        };
        let dir = tmp.path().join(RUNS_DIR).join(&a.name);
        // The last epoch: the run's own weights.
        assert_eq!(weights_of(tmp.path(), &at(&a, 3)), Ok(dir.clone()));
        // An earlier one, and no best/ that holds it: not scored.
        let why = weights_of(tmp.path(), &at(&a, 2)).unwrap_err();
        assert!(
            why.contains("epoch 2 of 3") && why.contains("last epoch"),
            "{why}"
        );
    }

    #[test]
    fn settings_of_several_seeds_are_compared_seed_by_seed() {
        let with = |seeds: &[(u64, f64)]| {
            let mut r = result("mlp:784-8-10", 100, RunKind::BASELINE, 0.8);
            r.seed_runs = seeds
                .iter()
                .map(|&(seed, acc)| {
                    let mut s = result("mlp:784-8-10", 100, RunKind::BASELINE, acc);
                    s.seed = seed;
                    s
                })
                .collect();
            r
        };
        let at = |run| Choice {
            run,
            epoch: 3,
            val_accuracy: Some(0.8),
            test_accuracy: Some(0.8),
            on_test: false,
        };
        let base = with(&[(0, 0.80), (1, 0.81), (2, 0.79)]);
        let kd = with(&[(0, 0.81), (1, 0.83), (2, 0.80)]);
        let outcome = over_seeds(&at(&kd), &at(&base));
        let PairOutcome::Seeds {
            seeds, comparison, ..
        } = &outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(seeds, &vec![0, 1, 2]);
        let d = comparison.seed_differences().unwrap();
        assert!((d[1] - 0.02).abs() < 1e-12);
        let line = pair_line(&ChoicePair {
            role: "the baseline",
            chosen: "kd".into(),
            other: "base".into(),
            outcome,
        });
        assert!(
            line.starts_with("Against the baseline (`base`), on the test images over seeds 0, 1, 2: +1.33 points (seed by seed +1.00, +2.00, +1.00), Student's t 95% interval over seeds ["),
            "{line}"
        );
        // Other seeds: Welch's interval, unpaired.
        let other = with(&[(3, 0.80), (4, 0.82)]);
        let line = pair_line(&ChoicePair {
            role: "the baseline",
            chosen: "kd".into(),
            other: "base".into(),
            outcome: over_seeds(&at(&kd), &at(&other)),
        });
        assert!(line.contains("(`base` ran seeds 3, 4), Welch's"), "{line}");
    }

    #[test]
    fn the_line_states_the_counts_interval_and_p() {
        let c = PairedComparison {
            n: 1000,
            both: 900,
            only_a: 36,
            only_b: 41,
        };
        let line = pair_line(&ChoicePair {
            role: "the baseline",
            chosen: "kd".into(),
            other: "base".into(),
            outcome: PairOutcome::Images(c),
        });
        assert!(line.starts_with("Against the baseline (`base`)"), "{line}");
        assert!(
            line.contains(
                "+0.50 points, 41 images only the chosen run gets right and 36 only `base`"
            ),
            "{line}"
        );
        assert!(line.contains(&format!("p {:.4}", c.mcnemar_p())), "{line}");
        let skipped = pair_line(&ChoicePair {
            role: "the runner-up",
            chosen: "kd".into(),
            other: "kd2".into(),
            outcome: PairOutcome::NotScored("why".into()),
        });
        assert_eq!(skipped, "Against the runner-up (`kd2`): not compared: why.");
    }
}
