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
//!
//! One run per recipe is one draw of the training noise. [`PooledComparison`]
//! compares two recipes each trained with several seeds (`distill eval --arm
//! NAME=RUN,RUN,...`), in two ways that answer two questions:
//! - **over images**: each image's share of runs that get it right, B's
//!   minus A's, averaged over the images; its 95% interval and two-sided
//!   p-value (normal approximation) treat the images as the sample, so the
//!   runs on the same image are not counted as independent. Would the mean
//!   difference of *these* runs hold on new images?
//! - **over seeds**: with the runs paired by seed, each seed's difference in
//!   accuracy, and Student's t interval of their mean (k - 1 degrees of
//!   freedom). Would it hold for new seeds on *these* images? Recipes that
//!   ran other seeds (or a different number of them) are compared with
//!   Welch's interval instead: each recipe's runs as an independent sample,
//!   the degrees of freedom Welch-Satterthwaite's, rounded down.
//!
//! A recipe can pass the first and fail the second (a few lucky seeds), or
//! the reverse (a small, steady gain on few images); a claim needs both.

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

/// Two recipes, each trained one or more times (seeds), scored on the same
/// images: see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledComparison {
    /// Images compared (0 when the runs were scored on different images).
    pub n: usize,
    /// Each run's accuracy (a fraction), recipe A's runs in the given order.
    pub accuracy_a: Vec<f64>,
    /// The same for recipe B.
    pub accuracy_b: Vec<f64>,
    /// Sample variance (n - 1) of the per-image differences in the share of
    /// runs right; `None` when the runs were not scored on the same images.
    image_variance: Option<f64>,
    /// B's accuracy minus A's, seed by seed, when the runs are paired.
    seed_differences: Option<Vec<f64>>,
}

impl PooledComparison {
    /// From each run's predictions (`a[j]`, `b[j]`: one run's predictions,
    /// in the order of `labels`). With `paired_by_seed`, `a[j]` and `b[j]`
    /// are the same seed, and the two recipes must have as many runs.
    pub fn of<A: AsRef<[u32]>, B: AsRef<[u32]>>(
        a: &[A],
        b: &[B],
        labels: &[u32],
        paired_by_seed: bool,
    ) -> Result<Self> {
        let refuse = |message: String| Error::Config {
            field: "predictions".into(),
            message,
        };
        if a.is_empty() || b.is_empty() {
            return Err(refuse(format!(
                "a pooled comparison needs at least one run of each recipe: {} and {}",
                a.len(),
                b.len()
            )));
        }
        let lengths = a.iter().map(|r| r.as_ref().len());
        if let Some(len) = lengths
            .chain(b.iter().map(|r| r.as_ref().len()))
            .find(|&len| len != labels.len())
        {
            return Err(refuse(format!(
                "a pooled comparison needs every run's predictions on the same images: a run has {} predictions for {} labels",
                len,
                labels.len()
            )));
        }
        if paired_by_seed && a.len() != b.len() {
            return Err(refuse(format!(
                "runs paired by seed need as many runs of each recipe: {} and {}",
                a.len(),
                b.len()
            )));
        }
        let n = labels.len();
        fn correct<R: AsRef<[u32]>>(runs: &[R], labels: &[u32]) -> (Vec<f64>, Vec<f64>) {
            let n = labels.len();
            let mut share = vec![0.0f64; n];
            let mut accuracy = Vec::with_capacity(runs.len());
            for r in runs {
                let mut right = 0usize;
                for ((s, &p), &y) in share.iter_mut().zip(r.as_ref()).zip(labels) {
                    if p == y {
                        *s += 1.0;
                        right += 1;
                    }
                }
                accuracy.push(if n == 0 { 0.0 } else { right as f64 / n as f64 });
            }
            share.iter_mut().for_each(|s| *s /= runs.len() as f64);
            (share, accuracy)
        }
        let (share_a, accuracy_a) = correct(a, labels);
        let (share_b, accuracy_b) = correct(b, labels);
        let d: Vec<f64> = share_b.iter().zip(&share_a).map(|(b, a)| b - a).collect();
        let image_variance = Some(sample_variance(&d).unwrap_or(0.0));
        let seed_differences = paired_by_seed.then(|| {
            accuracy_b
                .iter()
                .zip(&accuracy_a)
                .map(|(b, a)| b - a)
                .collect()
        });
        Ok(PooledComparison {
            n,
            accuracy_a,
            accuracy_b,
            image_variance,
            seed_differences,
        })
    }

    /// From each run's accuracy alone, for runs scored on different images
    /// (each seed on the validation images it held out): no comparison over
    /// images, only over seeds. With `paired_by_seed`, `a[j]` and `b[j]` are
    /// the same seed, scored on the same images.
    pub fn of_accuracies(a: Vec<f64>, b: Vec<f64>, paired_by_seed: bool) -> Result<Self> {
        if a.is_empty() || b.is_empty() || (paired_by_seed && a.len() != b.len()) {
            return Err(Error::Config {
                field: "accuracies".into(),
                message: format!(
                    "a comparison over seeds needs at least one run of each recipe, and as many of each when paired: {} and {}",
                    a.len(),
                    b.len()
                ),
            });
        }
        let seed_differences =
            paired_by_seed.then(|| b.iter().zip(&a).map(|(b, a)| b - a).collect());
        Ok(PooledComparison {
            n: 0,
            accuracy_a: a,
            accuracy_b: b,
            image_variance: None,
            seed_differences,
        })
    }

    /// Mean accuracy of B's runs minus mean accuracy of A's (a fraction).
    pub fn difference(&self) -> f64 {
        mean(&self.accuracy_b) - mean(&self.accuracy_a)
    }

    /// Standard error of [`difference`](Self::difference) over images
    /// (`None`: the runs were not scored on the same images).
    fn image_standard_error(&self) -> Option<f64> {
        let v = self.image_variance?;
        Some(if self.n == 0 {
            0.0
        } else {
            (v / self.n as f64).sqrt()
        })
    }

    /// The 95% interval of the difference over images (normal
    /// approximation); `None` for runs scored on different images.
    pub fn ci95_over_images(&self) -> Option<(f64, f64)> {
        let d = self.difference();
        let half = Z_975 * self.image_standard_error()?;
        Some((d - half, d + half))
    }

    /// The two-sided p-value of "no difference" over images (normal
    /// approximation); `None` for runs scored on different images. With no
    /// spread between images it is 1 for a zero difference and 0 otherwise.
    pub fn p_over_images(&self) -> Option<f64> {
        let d = self.difference();
        let se = self.image_standard_error()?;
        if se == 0.0 {
            return Some(if d == 0.0 { 1.0 } else { 0.0 });
        }
        Some(libm::erfc((d / se).abs() / std::f64::consts::SQRT_2))
    }

    /// B's accuracy minus A's, seed by seed (runs paired by seed only).
    pub fn seed_differences(&self) -> Option<&[f64]> {
        self.seed_differences.as_deref()
    }

    /// Student's t 95% interval of the mean seed difference (runs paired by
    /// seed, at least two pairs).
    pub fn ci95_over_seeds(&self) -> Option<(f64, f64)> {
        let d = self.seed_differences.as_deref()?;
        let var = sample_variance(d)?;
        let m = mean(d);
        let half = student_t_975(d.len() - 1) * (var / d.len() as f64).sqrt();
        Some((m - half, m + half))
    }
}

impl PooledComparison {
    /// Welch's 95% interval of the difference in mean accuracy, each
    /// recipe's runs taken as an independent sample: for recipes not paired
    /// by seed with at least two runs each (`None` otherwise). The degrees of
    /// freedom are Welch-Satterthwaite's, rounded down, which widens the
    /// interval a little.
    pub fn ci95_over_seeds_unpaired(&self) -> Option<(f64, f64)> {
        if self.seed_differences.is_some() {
            return None;
        }
        let (na, nb) = (self.accuracy_a.len() as f64, self.accuracy_b.len() as f64);
        let qa = sample_variance(&self.accuracy_a)? / na;
        let qb = sample_variance(&self.accuracy_b)? / nb;
        let d = self.difference();
        let se2 = qa + qb;
        if se2 == 0.0 {
            return Some((d, d));
        }
        let df = se2 * se2 / (qa * qa / (na - 1.0) + qb * qb / (nb - 1.0));
        let half = student_t_975((df.floor() as usize).max(1)) * se2.sqrt();
        Some((d - half, d + half))
    }
}

/// The standard normal's 97.5% quantile.
const Z_975: f64 = 1.959_963_984_540_054;

/// Student's t 97.5% quantile (the half-width factor of a two-sided 95%
/// interval) for `df` degrees of freedom (`df >= 1`): tabulated to four
/// decimals up to 30, the Cornish-Fisher expansion in `1/df` above (within
/// 1e-4 of the exact value from 30 on).
pub fn student_t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => cornish_fisher_t_975(df as f64),
    }
}

/// The t quantile from the normal one, three terms in `1/df`.
fn cornish_fisher_t_975(df: f64) -> f64 {
    let z = Z_975;
    let (z3, z5, z7) = (z.powi(3), z.powi(5), z.powi(7));
    z + (z3 + z) / (4.0 * df)
        + (5.0 * z5 + 16.0 * z3 + 3.0 * z) / (96.0 * df * df)
        + (3.0 * z7 + 19.0 * z5 + 17.0 * z3 - 15.0 * z) / (384.0 * df * df * df)
}

/// The share of `labels` that `predictions` (in the same order) get right;
/// 0 for no images.
pub fn accuracy(predictions: &[u32], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let right = predictions
        .iter()
        .zip(labels)
        .filter(|(p, y)| p == y)
        .count();
    right as f64 / labels.len() as f64
}

/// Mean (0 for no values).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Sample variance (n - 1); `None` below two values.
pub fn sample_variance(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs);
    Some(xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64)
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
    #[test]
    fn pooled_comparison_by_hand() {
        let labels = [0, 0, 0, 0];
        // A's runs get images right: T F T F and T T F F; B's: T T T F and all.
        let a = vec![vec![0, 1, 0, 1], vec![0, 0, 1, 1]];
        let b = vec![vec![0, 0, 0, 1], vec![0, 0, 0, 0]];
        let c = PooledComparison::of(&a, &b, &labels, true).unwrap();
        assert_eq!(c.accuracy_a, vec![0.5, 0.5]);
        assert_eq!(c.accuracy_b, vec![0.75, 1.0]);
        assert!((c.difference() - 0.375).abs() < 1e-15);
        // Per image: shares A 1, .5, .5, 0 and B 1, 1, 1, .5; differences
        // 0, .5, .5, .5 with sample variance 0.0625: standard error 0.125.
        let (lo, hi) = c.ci95_over_images().unwrap();
        assert!(
            (hi - 0.375 - Z_975 * 0.125).abs() < 1e-12
                && (0.375 - lo - Z_975 * 0.125).abs() < 1e-12
        );
        // erfc(3 / sqrt 2) = 2 (1 - Phi(3)).
        assert!(
            (c.p_over_images().unwrap() - 0.002_699_796_063_260_2).abs() < 1e-12,
            "{:?}",
            c.p_over_images()
        );
        // Seeds: .25 and .5; standard error 0.125, t(1) 12.7062.
        assert_eq!(c.seed_differences(), Some(&[0.25, 0.5][..]));
        let (lo, hi) = c.ci95_over_seeds().unwrap();
        assert!(
            (hi - 0.375 - 12.7062 * 0.125).abs() < 1e-12
                && (0.375 - lo - 12.7062 * 0.125).abs() < 1e-12
        );
        // Unpaired: no seed interval; one pair: none either.
        let u = PooledComparison::of(&a, &b[..1], &labels, false).unwrap();
        assert_eq!((u.seed_differences(), u.ci95_over_seeds()), (None, None));
        let one = PooledComparison::of(&a[..1], &b[..1], &labels, true).unwrap();
        assert_eq!(one.seed_differences(), Some(&[0.25][..]));
        assert_eq!(one.ci95_over_seeds(), None);
    }

    #[test]
    fn one_run_each_is_the_paired_comparison() {
        // 1000 images: 36 only A right, 41 only B, 900 both.
        let n = 1000;
        let labels = vec![0u32; n];
        let a: Vec<u32> = (0..n)
            .map(|i| u32::from(!(i < 36 || (77..977).contains(&i))))
            .collect();
        let b: Vec<u32> = (0..n)
            .map(|i| u32::from(!((36..977).contains(&i))))
            .collect();
        let paired = PairedComparison::of(&a, &b, &labels).unwrap();
        assert_eq!((paired.only_a, paired.only_b, paired.both), (36, 41, 900));
        let pooled = PooledComparison::of(&[a], &[b], &labels, true).unwrap();
        assert!((pooled.difference() - paired.difference()).abs() < 1e-15);
        // The same interval but for the sample variance's n / (n - 1).
        let (lo, hi) = pooled.ci95_over_images().unwrap();
        let (plo, phi) = paired.ci95();
        let scale = (n as f64 / (n - 1) as f64).sqrt();
        assert!(((hi - lo) - scale * (phi - plo)).abs() < 1e-12);
        assert!((0.5..1.0).contains(&pooled.p_over_images().unwrap()));
    }

    /// Worked by hand: a = 0.90 0.91 0.92, b = 0.93 0.95: means 0.91 and
    /// 0.94, variances 1e-4 and 2e-4, standard error sqrt(1e-4/3 + 2e-4/2)
    /// = 0.011547, Welch's df 1.68, rounded down to 1 (t 12.7062): half
    /// width 0.14672. a = 0.90..0.93 (4 runs), b = 0.93 0.95 0.94 0.92 0.96:
    /// difference 0.025, standard error 0.0095743, df 6.98, so 6 (t 2.4469):
    /// half width 0.023427.
    #[test]
    fn recipes_of_other_seeds_get_welchs_interval() {
        let close = |(lo, hi): (f64, f64), d: f64, half: f64| {
            assert!(
                (lo - (d - half)).abs() < 1e-5 && (hi - (d + half)).abs() < 1e-5,
                "{lo} {hi}"
            );
        };
        let u = PooledComparison::of_accuracies(vec![0.90, 0.91, 0.92], vec![0.93, 0.95], false)
            .unwrap();
        close(u.ci95_over_seeds_unpaired().unwrap(), 0.03, 0.146_72);
        assert_eq!(u.ci95_over_seeds(), None);
        let u = PooledComparison::of_accuracies(
            vec![0.90, 0.91, 0.92, 0.93],
            vec![0.93, 0.95, 0.94, 0.92, 0.96],
            false,
        )
        .unwrap();
        close(u.ci95_over_seeds_unpaired().unwrap(), 0.025, 0.023_427);
        // Paired recipes get the paired interval, not Welch's; one run of a
        // recipe gives no spread to compare; no spread at all, no width.
        let p = PooledComparison::of_accuracies(vec![0.9, 0.8], vec![0.95, 0.9], true).unwrap();
        assert_eq!(p.ci95_over_seeds_unpaired(), None);
        let one = PooledComparison::of_accuracies(vec![0.9], vec![0.95, 0.9], false).unwrap();
        assert_eq!(one.ci95_over_seeds_unpaired(), None);
        let flat =
            PooledComparison::of_accuracies(vec![0.9, 0.9], vec![0.95, 0.95], false).unwrap();
        close(flat.ci95_over_seeds_unpaired().unwrap(), 0.05, 0.0);
    }

    #[test]
    fn accuracies_alone_compare_over_seeds_only() {
        let c = PooledComparison::of_accuracies(vec![0.5, 0.5], vec![0.75, 1.0], true).unwrap();
        assert!((c.difference() - 0.375).abs() < 1e-15);
        assert_eq!((c.ci95_over_images(), c.p_over_images()), (None, None));
        assert_eq!(c.seed_differences(), Some(&[0.25, 0.5][..]));
        let (lo, hi) = c.ci95_over_seeds().unwrap();
        assert!((hi - 0.375 - 12.7062 * 0.125).abs() < 1e-12 && lo < 0.0);
        let u = PooledComparison::of_accuracies(vec![0.5], vec![0.75, 1.0], false).unwrap();
        assert_eq!(u.ci95_over_seeds(), None);
        assert!(PooledComparison::of_accuracies(vec![0.5], vec![0.75, 1.0], true).is_err());
        assert!(PooledComparison::of_accuracies(vec![], vec![0.75], false).is_err());
    }

    #[test]
    fn pooled_comparison_refuses_runs_that_do_not_line_up() {
        let labels = [0, 1, 2];
        let good = vec![vec![0, 1, 2]];
        let short = vec![vec![0, 1]];
        let two = vec![vec![0, 1, 2], vec![0, 1, 1]];
        assert!(PooledComparison::of(&good, &short, &labels, false).is_err());
        assert!(PooledComparison::of(&[] as &[Vec<u32>], &good, &labels, false).is_err());
        let e = PooledComparison::of(&good, &two, &labels, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("paired by seed") && e.contains("1 and 2"), "{e}");
        assert!(PooledComparison::of(&good, &two, &labels, false).is_ok());
    }

    #[test]
    fn t_quantiles_meet_the_normal_one() {
        // The expansion continues the table: within 1e-4 at 30 degrees.
        assert!((cornish_fisher_t_975(30.0) - student_t_975(30)).abs() < 1e-4);
        // Exact: t(0.975; 100) = 1.98397, t(0.975; 1000) = 1.96234.
        assert!((student_t_975(100) - 1.98397).abs() < 1e-4);
        assert!((student_t_975(1000) - 1.96234).abs() < 1e-4);
        for df in 1..200 {
            assert!(student_t_975(df) > student_t_975(df + 1) && student_t_975(df + 1) > Z_975);
        }
        assert_eq!(student_t_975(0), f64::INFINITY);
    }
}
