//! Paired comparison of two models on the same images: is the difference
//! in accuracy more than chance?
//!
//! Choosing settings on a validation split of a few thousand images means
//! comparing accuracies that differ by a handful of images. Two models
//! scored on the *same* images are compared image by image: only the images
//! one gets right and the other wrong (the discordant pairs) carry the
//! difference. [`PairedComparison`] counts them and reports
//! - the difference in accuracy, `(only_b - only_a) / n`;
//! - its 95% confidence interval (the normal approximation for paired
//!   proportions, Wald: variance `((only_a + only_b) - (only_b - only_a)^2 / n) / n^2`);
//! - McNemar's exact two-sided p-value: under "neither model is better",
//!   each discordant image is a fair coin, so `min(only_a, only_b)` is
//!   binomial with `only_a + only_b` draws and probability 1/2.
//!
//! `distill eval --model A --model B [--split val]` prints these for every
//! model against the first.

use crate::error::{Error, Result};

/// Two models' correctness on the same images, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairedComparison {
    /// Images compared.
    pub n: usize,
    /// Images both models get right.
    pub both: usize,
    /// Images only the first model (A) gets right.
    pub only_a: usize,
    /// Images only the second model (B) gets right.
    pub only_b: usize,
}

impl PairedComparison {
    /// Counts from the two models' predictions and the labels, all in the
    /// same image order. Lengths must agree.
    pub fn of(a: &[u32], b: &[u32], labels: &[u32]) -> Result<Self> {
        if a.len() != labels.len() || b.len() != labels.len() {
            return Err(Error::Config {
                field: "predictions".into(),
                message: format!(
                    "a paired comparison needs both models' predictions on the same images: {} and {} predictions for {} labels",
                    a.len(),
                    b.len(),
                    labels.len()
                ),
            });
        }
        let mut c = PairedComparison {
            n: labels.len(),
            both: 0,
            only_a: 0,
            only_b: 0,
        };
        for ((&pa, &pb), &y) in a.iter().zip(b).zip(labels) {
            match (pa == y, pb == y) {
                (true, true) => c.both += 1,
                (true, false) => c.only_a += 1,
                (false, true) => c.only_b += 1,
                (false, false) => {}
            }
        }
        Ok(c)
    }

    /// Accuracy of B minus accuracy of A (a fraction; 0 with no images).
    pub fn difference(&self) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        (self.only_b as f64 - self.only_a as f64) / self.n as f64
    }

    /// The 95% confidence interval of [`difference`](Self::difference),
    /// normal approximation for paired proportions. With no discordant
    /// images it is the single point 0.
    pub fn ci95(&self) -> (f64, f64) {
        let d = self.difference();
        if self.n == 0 {
            return (0.0, 0.0);
        }
        let n = self.n as f64;
        let diff = self.only_b as f64 - self.only_a as f64;
        let var = (((self.only_a + self.only_b) as f64 - diff * diff / n) / (n * n)).max(0.0);
        let half = 1.959_963_984_540_054 * var.sqrt();
        (d - half, d + half)
    }

    /// McNemar's exact two-sided p-value: twice the binomial tail
    /// P(X <= min(only_a, only_b)) for X ~ Bin(only_a + only_b, 1/2),
    /// capped at 1. Computed in log space, so it holds for any count.
    pub fn mcnemar_p(&self) -> f64 {
        let m = self.only_a + self.only_b;
        let k = self.only_a.min(self.only_b);
        if m == 0 {
            return 1.0;
        }
        // ln C(m, i) - m ln 2 for i = 0..=k, summed with log-sum-exp.
        let ln2m = m as f64 * std::f64::consts::LN_2;
        let mut ln_c = 0.0f64;
        let mut terms = Vec::with_capacity(k + 1);
        for i in 0..=k {
            if i > 0 {
                ln_c += ((m - i + 1) as f64).ln() - (i as f64).ln();
            }
            terms.push(ln_c - ln2m);
        }
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let tail = top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln();
        (2.0 * tail.exp()).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(only_a: usize, only_b: usize, both: usize, neither: usize) -> PairedComparison {
        PairedComparison {
            n: only_a + only_b + both + neither,
            both,
            only_a,
            only_b,
        }
    }

    #[test]
    fn counts_follow_the_labels() {
        let labels = [0, 1, 2, 3, 4];
        let a = [0, 1, 9, 9, 4];
        let b = [0, 9, 2, 3, 9];
        let c = PairedComparison::of(&a, &b, &labels).unwrap();
        assert_eq!((c.n, c.both, c.only_a, c.only_b), (5, 1, 2, 2));
        assert_eq!(c.difference(), 0.0);
        assert!(PairedComparison::of(&a[..4], &b, &labels).is_err());
    }

    #[test]
    fn mcnemar_matches_the_exact_binomial() {
        // Reference values: 2 * sum_{i<=k} C(m, i) / 2^m, in exact
        // integer arithmetic (Python's math.comb), rounded.
        let cases = [
            (10, 2, 0.03857421875),
            (2, 10, 0.03857421875),
            (41, 36, 0.6487911623106449),
            (5, 0, 0.0625),
            (300, 240, 0.011050481081930009),
            (1000, 1100, 0.030720707864242296),
        ];
        for (a, b, want) in cases {
            let got = counts(a, b, 100, 10).mcnemar_p();
            assert!(
                (got - want).abs() < 1e-12 * want.max(1e-3) + 1e-15,
                "({a}, {b}): {got} against {want}"
            );
        }
        assert_eq!(counts(0, 0, 50, 5).mcnemar_p(), 1.0);
        assert_eq!(counts(7, 7, 50, 5).mcnemar_p(), 1.0);
    }

    #[test]
    fn the_interval_is_centred_on_the_difference_and_shrinks_with_n() {
        let small = counts(36, 41, 900, 23);
        let (lo, hi) = small.ci95();
        let d = small.difference();
        assert!((d - 0.005).abs() < 1e-12);
        assert!(lo < d && d < hi && ((hi - d) - (d - lo)).abs() < 1e-12);
        // Var = ((77) - 25/1000) / 1000^2: half width 1.96 * sqrt(76.975) / 1000.
        assert!(((hi - d) - 1.959_963_984_540_054 * 76.975f64.sqrt() / 1000.0).abs() < 1e-12);
        let large = counts(360, 410, 9000, 230);
        let (lo2, hi2) = large.ci95();
        assert!((hi2 - lo2) < (hi - lo));
        assert_eq!(counts(0, 0, 10, 0).ci95(), (0.0, 0.0));
        assert_eq!(counts(0, 0, 0, 0).ci95(), (0.0, 0.0));
    }
}
