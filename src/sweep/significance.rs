//! Is the sweep's choice more than chance? Per student, the distilled run
//! chosen on validation is scored again, image by image, on the validation
//! images every run held out, against the chosen baseline and against the
//! runner-up (the best of the other distilled settings): the images only one
//! of the two gets right, the difference's 95% interval and McNemar's exact
//! p-value ([`crate::train::paired::PairedComparison`]).
//!
//! A run keeps its last epoch's weights only, so a pair is scored only where
//! both sides were chosen at their last epoch; otherwise the report says why
//! it is not. Each run's predictions are computed once and shared by the
//! pairs that use it.

use std::collections::HashMap;
use std::path::Path;

use super::plan::RUNS_DIR;
use super::results::{by_student, choose, Choice, RunResult};
use crate::data::Dataset;
use crate::error::Result;
use crate::model::{Backend, ModelDir};
use crate::train::eval::evaluate_samples;
use crate::train::paired::PairedComparison;
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
    /// The comparison (A the other run, B the chosen one), or why there is
    /// none.
    pub outcome: std::result::Result<PairedComparison, String>,
}

/// For each student with a chosen distilled run, its pairs (by student
/// spec). Students without validation figures have none.
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
                .filter(|r| r.name != chosen.run.name),
        );
        let mut mine = Vec::new();
        for (role, other) in [
            ("the baseline", row.chosen_baseline()),
            ("the runner-up", runner_up),
        ] {
            let Some(other) = other.filter(|o| !o.on_test) else {
                continue;
            };
            let outcome = match not_comparable(&chosen, &other) {
                Some(reason) => Err(reason),
                None => {
                    let mut scored = |run: &RunResult| -> Result<Vec<u32>> {
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
                        let net = ModelDir::new(&dir).load(device.clone())?;
                        let p = evaluate_samples(&net, train, &idx, batch)?.predictions;
                        predictions.insert(run.name.clone(), p.clone());
                        Ok(p)
                    };
                    let b = scored(chosen.run)?;
                    let a = scored(other.run)?;
                    let idx = indices.as_deref().unwrap_or_default();
                    let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
                    Ok(PairedComparison::of(&a, &b, &y)?)
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

/// Why two choices cannot be scored image by image from the saved weights.
fn not_comparable(chosen: &Choice<'_>, other: &Choice<'_>) -> Option<String> {
    let late = |c: &Choice<'_>| {
        (!c.is_last_epoch()).then(|| {
            format!(
                "`{}` was chosen at epoch {} of {}, and a run keeps only its last epoch's weights",
                c.run.name, c.epoch, c.run.epochs
            )
        })
    };
    late(chosen).or_else(|| late(other))
}

/// The report's line for one pair.
pub fn pair_line(p: &ChoicePair) -> String {
    match &p.outcome {
        Ok(c) => {
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
        Err(reason) => format!(
            "Against {} (`{}`): not scored image by image: {reason}.",
            p.role, p.other
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::results::tests::result;
    use crate::sweep::RunKind;

    #[test]
    fn pairs_need_both_sides_at_their_last_epoch() {
        let mut a = result("mlp:784-8-10", 100, RunKind::BASELINE, 0.8);
        a.epochs = 3;
        let b = a.clone();
        let at = |run, epoch| Choice {
            run,
            epoch,
            val_accuracy: Some(0.8),
            test_accuracy: Some(0.8),
            on_test: false,
        };
        assert_eq!(not_comparable(&at(&a, 3), &at(&b, 3)), None);
        let why = not_comparable(&at(&a, 2), &at(&b, 3)).unwrap();
        assert!(
            why.contains("epoch 2 of 3") && why.contains("last epoch"),
            "{why}"
        );
        assert!(not_comparable(&at(&a, 3), &at(&b, 1)).is_some());
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
            outcome: Ok(c),
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
            outcome: Err("why".into()),
        });
        assert_eq!(
            skipped,
            "Against the runner-up (`kd2`): not scored image by image: why."
        );
    }
}
