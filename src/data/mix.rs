//! Mixed views: mixup (Zhang et al. 2018) and cutmix (Yun et al. 2019) as
//! pure functions of `(seed, view, sample)`, so that a view-set cache can
//! hold the teacher's output on exactly the mixed image the loader later
//! recreates (Beyer et al. 2022 distil with aggressive mixup; FKD stores
//! crops but sends mixup elsewhere).
//!
//! For sample `i` of a dataset of `n` samples in view `v` under `seed`:
//! - the partner `j != i` is drawn uniformly from the other `n - 1` samples;
//! - the mixing weight `lambda` is drawn from `Beta(a, a)`;
//! - mixup shows `lambda * x_i + (1 - lambda) * x_j`;
//! - cutmix pastes a box of `x_j` into `x_i`: a box of `sqrt(1 - lambda)`
//!   of the width and height, centred at a uniform pixel and clipped to the
//!   image; `lambda` then becomes the fraction of `x_i` kept, as in the
//!   paper's reference code.
//!
//! Both images are first given their own view (flip, shift, crop, warp,
//! cutout) from `(seed, view, i)` and `(seed, view, j)`
//! ([`super::augment`]). The hard-label target of a mixed image is
//! `lambda * onehot(y_i) + (1 - lambda) * onehot(y_j)`; its dominant label
//! is `y_i` when `lambda >= 1/2`.
//!
//! Every number is derived from xxh3 hashes of `(seed, view, sample, draw)`
//! (never from a running random generator): the Beta draw is the ratio of
//! two Gamma draws (Marsaglia and Tsang 2000, in log space so that small
//! `a` cannot underflow), fed by uniforms and normals from numbered hashes.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

/// Which images are mixed, with the Beta(a, a) parameter of the weight.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// Blend the whole images.
    Mixup { alpha: f32 },
    /// Paste a box of the partner into the image.
    Cutmix { alpha: f32 },
}

/// Largest Beta parameter accepted (the weight is then all but always 1/2).
pub const MAX_MIX_ALPHA: f32 = 100.0;

/// The box of a cutmix view: partner pixels at rows `y0..y1`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl CutBox {
    /// Pixels in the box.
    pub fn area(&self) -> usize {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }
}

/// The mixing drawn for one sample of one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixParams {
    /// The other sample mixed in.
    pub partner: usize,
    /// Weight of the sample's own image (and label), in `[0, 1]`.
    pub lambda: f32,
    /// Cutmix's box (`None` for mixup).
    pub cut: Option<CutBox>,
}

impl MixParams {
    /// Whether the sample's own label dominates the mixed image.
    pub fn own_label_dominates(&self) -> bool {
        self.lambda >= 0.5
    }
}

/// Domain of the mixing hashes: keeps them apart from the geometric draw
/// (which hashes 24 bytes, these 40).
const MIX_DOMAIN: u64 = 0x6d69_7875_7063_7574; // "mixupcut"

/// Numbered uniform and normal draws for one `(seed, view, sample)`, in
/// a domain of their own (the mix's, or [`super::warp`]'s).
pub(super) struct Draws {
    key: [u8; 40],
    next: u64,
}

impl Draws {
    fn new(seed: u64, view: u64, sample: u64) -> Self {
        Self::in_domain(seed, view, sample, MIX_DOMAIN)
    }

    /// Draws for `(seed, view, sample)` that no other domain's draws repeat.
    pub(super) fn in_domain(seed: u64, view: u64, sample: u64, domain: u64) -> Self {
        let mut key = [0u8; 40];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&view.to_le_bytes());
        key[16..24].copy_from_slice(&sample.to_le_bytes());
        key[24..32].copy_from_slice(&domain.to_le_bytes());
        Draws { key, next: 0 }
    }

    fn bits(&mut self) -> u64 {
        self.key[32..].copy_from_slice(&self.next.to_le_bytes());
        self.next += 1;
        xxh3_64(&self.key)
    }

    /// Uniform in the open interval (0, 1).
    pub(super) fn uniform(&mut self) -> f64 {
        ((self.bits() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub(super) fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// The log of a Gamma(a, 1) draw.
    fn ln_gamma_draw(&mut self, a: f64) -> f64 {
        if a < 1.0 {
            // Gamma(a) = Gamma(a + 1) * U^(1/a).
            let u = self.uniform();
            return self.ln_gamma_draw(a + 1.0) + u.ln() / a;
        }
        let d = a - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        // Accepts with probability > 0.95 per try; the bound keeps the draw
        // a total function.
        for _ in 0..64 {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return (d * v).ln();
            }
        }
        d.ln()
    }

    /// A Beta(a, a) draw.
    fn beta(&mut self, a: f64) -> f64 {
        let (gx, gy) = (self.ln_gamma_draw(a), self.ln_gamma_draw(a));
        // X / (X + Y) = 1 / (1 + exp(ln Y - ln X)).
        1.0 / (1.0 + (gy - gx).exp())
    }
}

impl Mix {
    /// The Beta parameter.
    pub fn alpha(&self) -> f32 {
        match self {
            Mix::Mixup { alpha } | Mix::Cutmix { alpha } => *alpha,
        }
    }

    /// The grammar's name of the mix (`mixup`, `cutmix`).
    pub fn name(&self) -> &'static str {
        match self {
            Mix::Mixup { .. } => "mixup",
            Mix::Cutmix { .. } => "cutmix",
        }
    }

    /// Whether it needs images (cutmix cuts boxes; mixup blends any features).
    pub fn needs_images(&self) -> bool {
        matches!(self, Mix::Cutmix { .. })
    }

    /// The partner, weight and box of `sample` (of `n`) in `view` under
    /// `seed`, for images of `shape` (C, H, W): a pure function of its
    /// arguments. With `n < 2` the partner is the sample itself.
    pub fn params(
        &self,
        seed: u64,
        view: u64,
        sample: u64,
        n: usize,
        shape: [usize; 3],
    ) -> MixParams {
        let mut draws = Draws::new(seed, view, sample);
        let s = sample as usize;
        let partner = if n < 2 {
            s
        } else {
            let j = (draws.bits() % (n as u64 - 1)) as usize;
            j + (j >= s) as usize
        };
        let lambda = draws.beta(self.alpha() as f64);
        match self {
            Mix::Mixup { .. } => MixParams {
                partner,
                lambda: lambda as f32,
                cut: None,
            },
            Mix::Cutmix { .. } => {
                let [_, h, w] = shape;
                let ratio = (1.0 - lambda).max(0.0).sqrt();
                let (cut_w, cut_h) = ((w as f64 * ratio) as usize, (h as f64 * ratio) as usize);
                let cx = ((draws.uniform() * w as f64) as usize).min(w.saturating_sub(1));
                let cy = ((draws.uniform() * h as f64) as usize).min(h.saturating_sub(1));
                let cut = CutBox {
                    x0: cx.saturating_sub(cut_w / 2),
                    y0: cy.saturating_sub(cut_h / 2),
                    x1: (cx + cut_w / 2).min(w),
                    y1: (cy + cut_h / 2).min(h),
                };
                let kept = 1.0 - cut.area() as f64 / (w * h).max(1) as f64;
                MixParams {
                    partner,
                    lambda: kept as f32,
                    cut: Some(cut),
                }
            }
        }
    }

    /// Writes the mix `p` of `own` with `partner` (both one sample of
    /// `shape`, already in their geometric views) into `own`.
    pub fn blend(p: &MixParams, shape: [usize; 3], own: &mut [f32], partner: &[f32]) {
        let [c, h, w] = shape;
        debug_assert_eq!(own.len(), c * h * w);
        debug_assert_eq!(partner.len(), c * h * w);
        match p.cut {
            None => {
                let (a, b) = (p.lambda, 1.0 - p.lambda);
                for (x, y) in own.iter_mut().zip(partner) {
                    *x = a * *x + b * y;
                }
            }
            Some(cut) => {
                for ch in 0..c {
                    for y in cut.y0..cut.y1 {
                        let row = ch * h * w + y * w;
                        own[row + cut.x0..row + cut.x1]
                            .copy_from_slice(&partner[row + cut.x0..row + cut.x1]);
                    }
                }
            }
        }
    }
}

impl fmt::Display for Mix {
    /// `mixup=A` or `cutmix=A`, the form the augmentation grammar reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name(), self.alpha())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: [usize; 3] = [1, 28, 28];

    #[test]
    fn draws_are_pure_functions_and_partners_are_others() {
        let m = Mix::Mixup { alpha: 0.2 };
        for s in 0..500u64 {
            let p = m.params(3, 7, s, 1000, SHAPE);
            assert_eq!(p, m.params(3, 7, s, 1000, SHAPE), "sample {s}");
            assert_ne!(p.partner, s as usize);
            assert!(p.partner < 1000);
            assert!((0.0..=1.0).contains(&p.lambda), "{}", p.lambda);
        }
        // Views, seeds and samples draw other partners.
        let differ = |f: &dyn Fn(u64) -> (MixParams, MixParams)| {
            (0..200u64)
                .filter(|&s| {
                    let (a, b) = f(s);
                    a.partner != b.partner && a.lambda != b.lambda
                })
                .count()
        };
        assert!(
            differ(&|s| (
                m.params(3, 0, s, 1000, SHAPE),
                m.params(3, 1, s, 1000, SHAPE)
            )) > 190
        );
        assert!(
            differ(&|s| (
                m.params(3, 0, s, 1000, SHAPE),
                m.params(4, 0, s, 1000, SHAPE)
            )) > 190
        );
        // Every other sample can be a partner: the last one too.
        let partners: std::collections::HashSet<usize> = (0..2000)
            .map(|v| m.params(0, v, 0, 5, SHAPE).partner)
            .collect();
        assert_eq!(partners, [1, 2, 3, 4].into_iter().collect());
        let two: std::collections::HashSet<usize> = (0..50)
            .map(|v| m.params(0, v, 1, 2, SHAPE).partner)
            .collect();
        assert_eq!(two, [0].into_iter().collect());
        assert_eq!(m.params(0, 0, 0, 1, SHAPE).partner, 0);
    }

    /// The weights follow Beta(a, a): mean 1/2 and variance 1 / (4 (2a + 1)),
    /// for a below 1 (the log-space branch), at 1 (uniform) and above.
    #[test]
    fn weights_follow_beta() {
        for a in [0.2f32, 1.0, 4.0] {
            let m = Mix::Mixup { alpha: a };
            let n = 20_000;
            let l: Vec<f64> = (0..n)
                .map(|s| m.params(1, 2, s, 100, SHAPE).lambda as f64)
                .collect();
            let mean = l.iter().sum::<f64>() / n as f64;
            let var = l.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * a as f64 + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "a {a}: mean {mean}");
            assert!(
                (var - want).abs() < 0.05 * want,
                "a {a}: var {var}, want {want}"
            );
            assert!(l.iter().all(|x| (0.0..=1.0).contains(x)));
        }
        // A tiny a puts the weight at the ends without a NaN.
        let m = Mix::Mixup { alpha: 0.01 };
        for s in 0..1000 {
            let l = m.params(0, 0, s, 10, SHAPE).lambda;
            assert!(l.is_finite() && (0.0..=1.0).contains(&l));
        }
    }

    #[test]
    fn cutmix_box_area_is_the_weight() {
        let m = Mix::Cutmix { alpha: 1.0 };
        let mut boxed = 0;
        for s in 0..2000u64 {
            for shape in [[1, 28, 28], [3, 32, 24]] {
                let p = m.params(5, 1, s, 50, shape);
                let cut = p.cut.unwrap();
                let [_, h, w] = shape;
                assert!(cut.x0 <= cut.x1 && cut.x1 <= w && cut.y0 <= cut.y1 && cut.y1 <= h);
                let kept = 1.0 - cut.area() as f32 / (h * w) as f32;
                assert!((p.lambda - kept).abs() < 1e-6, "{p:?}");
                boxed += (cut.area() > 0) as u32;
            }
        }
        assert!(boxed > 3500, "{boxed} of 4000 boxes are not empty");
        // The blend pastes exactly the box, in every channel.
        let shape = [2, 6, 5];
        let p = MixParams {
            partner: 1,
            lambda: 1.0 - 6.0 / 30.0,
            cut: Some(CutBox {
                x0: 1,
                y0: 2,
                x1: 4,
                y1: 4,
            }),
        };
        let mut own = vec![1.0f32; 60];
        let partner = vec![2.0f32; 60];
        Mix::blend(&p, shape, &mut own, &partner);
        for ch in 0..2 {
            for y in 0..6 {
                for x in 0..5 {
                    let inside = (1..4).contains(&x) && (2..4).contains(&y);
                    assert_eq!(own[ch * 30 + y * 5 + x], if inside { 2.0 } else { 1.0 });
                }
            }
        }
        let pasted = own.iter().filter(|&&v| v == 2.0).count();
        assert!((pasted as f32 / 60.0 - (1.0 - p.lambda)).abs() < 1e-6);
    }

    #[test]
    fn mixup_blends_by_the_weight() {
        let p = MixParams {
            partner: 3,
            lambda: 0.25,
            cut: None,
        };
        let mut own = vec![0.0f32, 1.0, 0.5];
        Mix::blend(&p, [1, 1, 3], &mut own, &[1.0, 1.0, 0.0]);
        assert_eq!(own, vec![0.75, 1.0, 0.125]);
        assert!(!p.own_label_dominates());
        assert_eq!(Mix::Mixup { alpha: 0.2 }.to_string(), "mixup=0.2");
        assert_eq!(Mix::Cutmix { alpha: 1.0 }.to_string(), "cutmix=1");
    }
}
