//! Recipes trained with several seeds, scored run by run and compared
//! recipe against recipe: the bookkeeping behind `distill eval --arm`.
//!
//! A recipe is a list of runs (one per seed). [`RunScores`] holds what
//! each run got right, either on images every run shares (a test split,
//! or validation images every run held out) or, when each seed held out
//! its own validation images, as each run's accuracy on its own images.
//! [`RunScores::compare`] turns two recipes into a
//! [`PooledComparison`]: over images where the images are shared, and
//! over seeds paired by [`seed_order`] (the seeds the runs' cards name, in
//! any order), or by Welch's interval where the seeds differ.

use super::paired::{self, PooledComparison};
use crate::error::Result;

/// The recipes' runs, scored.
pub enum RunScores {
    /// Every run on the same images: each recipe's runs' predictions, and
    /// the images' labels.
    SameImages {
        predictions: Vec<Vec<Vec<u32>>>,
        labels: Vec<u32>,
    },
    /// Each run on its own images: each recipe's runs' accuracies, and the
    /// images each run was scored on.
    OwnImages {
        accuracy: Vec<Vec<f64>>,
        images: Vec<Vec<Vec<usize>>>,
    },
}

impl RunScores {
    /// Recipe `arm`'s runs' accuracies.
    pub fn accuracy(&self, arm: usize) -> Vec<f64> {
        match self {
            RunScores::SameImages {
                predictions,
                labels,
            } => predictions[arm]
                .iter()
                .map(|p| paired::accuracy(p, labels))
                .collect(),
            RunScores::OwnImages { accuracy, .. } => accuracy[arm].clone(),
        }
    }

    /// Recipe `b` against recipe `a`; `order[k]` is the run of `b` with the
    /// seed of `a`'s run `k`, where both ran the same seeds.
    pub fn compare(&self, a: usize, b: usize, order: Option<&[usize]>) -> Result<PooledComparison> {
        // `b`'s runs in the order of `a`'s seeds, borrowed.
        fn reorder<'a>(runs: &'a [Vec<u32>], order: Option<&[usize]>) -> Vec<&'a [u32]> {
            match order {
                Some(o) => o.iter().map(|&k| runs[k].as_slice()).collect(),
                None => runs.iter().map(Vec::as_slice).collect(),
            }
        }
        match self {
            RunScores::SameImages {
                predictions,
                labels,
            } => PooledComparison::of(
                &predictions[a],
                &reorder(&predictions[b], order),
                labels,
                order.is_some(),
            ),
            RunScores::OwnImages { accuracy, images } => {
                // Paired only where each seed's two runs held out the same images.
                let order = order.filter(|o| {
                    o.iter()
                        .enumerate()
                        .all(|(k, &m)| images[a][k] == images[b][m])
                });
                let acc_b = match order {
                    Some(o) => o.iter().map(|&k| accuracy[b][k]).collect(),
                    None => accuracy[b].clone(),
                };
                PooledComparison::of_accuracies(accuracy[a].clone(), acc_b, order.is_some())
            }
        }
    }
}

/// For each of `first`'s seeds, the index of the run in `other` with that
/// seed: `Some` only when both recipes ran exactly the same distinct seeds.
pub fn seed_order(first: &[Option<u64>], other: &[Option<u64>]) -> Option<Vec<usize>> {
    if first.len() != other.len() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    if !first.iter().all(|s| s.is_some_and(|s| seen.insert(s))) {
        return None;
    }
    // `first`'s seeds are distinct and as many as `other`'s, so finding
    // each of them in `other` makes the order a permutation.
    first
        .iter()
        .map(|s| other.iter().position(|o| o == s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pair_in_any_order_and_only_when_they_are_the_same() {
        let s = |xs: &[u64]| xs.iter().map(|&x| Some(x)).collect::<Vec<_>>();
        assert_eq!(
            seed_order(&s(&[0, 1, 2]), &s(&[2, 0, 1])),
            Some(vec![1, 2, 0])
        );
        assert_eq!(seed_order(&s(&[0, 1]), &s(&[0, 1, 2])), None);
        assert_eq!(seed_order(&s(&[0, 1]), &s(&[0, 2])), None);
        assert_eq!(seed_order(&s(&[0, 0]), &s(&[0, 0])), None, "repeated seeds");
        assert_eq!(
            seed_order(&[None, Some(1)], &[None, Some(1)]),
            None,
            "unknown seeds"
        );
    }

    #[test]
    fn shared_images_compare_both_ways_and_own_images_pair_only_on_the_same_images() {
        // Two recipes of two runs on four images (labels all 0; 1 is wrong).
        let same = RunScores::SameImages {
            predictions: vec![
                vec![vec![0, 0, 1, 1], vec![0, 1, 1, 1]],
                vec![vec![0, 0, 0, 1], vec![0, 0, 0, 0]],
            ],
            labels: vec![0; 4],
        };
        assert_eq!(same.accuracy(0), vec![0.5, 0.25]);
        // B's runs listed in the other seed order: order [1, 0].
        let c = same.compare(0, 1, Some(&[1, 0])).unwrap();
        assert_eq!(c.seed_differences(), Some(&[0.5, 0.5][..]));
        let d = same.compare(0, 1, Some(&[0, 1])).unwrap();
        assert_eq!(d.seed_differences(), Some(&[0.25, 0.75][..]));
        assert!(c.ci95_over_images().is_some());
        let u = same.compare(0, 1, None).unwrap();
        assert_eq!(u.seed_differences(), None);
        assert!((u.difference() - 0.5).abs() < 1e-12);
        // Each run on its own images: seed 0's runs share theirs, seed 1's
        // do not, so the recipes are not paired, and not compared over images.
        let own = RunScores::OwnImages {
            accuracy: vec![vec![0.5, 0.6], vec![0.7, 0.9]],
            images: vec![vec![vec![1, 2], vec![3, 4]], vec![vec![1, 2], vec![3, 5]]],
        };
        let c = own.compare(0, 1, Some(&[0, 1])).unwrap();
        assert_eq!(c.seed_differences(), None);
        assert_eq!(c.ci95_over_images(), None);
        assert!(c.ci95_over_seeds_unpaired().is_some());
        let shared = RunScores::OwnImages {
            accuracy: vec![vec![0.5, 0.6], vec![0.7, 0.9]],
            images: vec![vec![vec![1, 2], vec![3, 4]], vec![vec![3, 4], vec![1, 2]]],
        };
        let c = shared.compare(0, 1, Some(&[1, 0])).unwrap();
        let d = c.seed_differences().unwrap();
        assert!(
            (d[0] - 0.4).abs() < 1e-12 && (d[1] - 0.1).abs() < 1e-12,
            "{d:?}"
        );
    }
}
