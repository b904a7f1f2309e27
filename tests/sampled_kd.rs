//! The sampled encoding's KD target is unbiased, through the trainer's own
//! loss: over many draws of the systematic offset `U`, the mean gradient of
//! `T^2 KL(p̂ || softmax(s/T))` with respect to the student's logits equals
//! the gradient with the exact `p` (the loss is linear in the target, and
//! `E[p̂] = p`). The test prints the gradient's variance beside what
//! independent draws would give (`r^2 (1 - Σ w^2) / S` per row), the figures
//! FORMAT.md records.

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use distill::cache::codec::sampled::sampled_row;
use distill::cache::log_softmax_tempered;
use distill::train::loss::{loss, LossConfig, LossKind, Targets};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Teacher-like logits: a confident class, a few plausible ones, a long tail
/// (the generator of the codec tests).
fn teacher_logits(n: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = vec![0f32; n * c];
    for row in x.chunks_exact_mut(c) {
        for v in row.iter_mut() {
            *v = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 3.5;
        }
        let top = rng.gen_range(0..c);
        row[top] += rng.gen_range(4.0..12.0);
        for _ in 0..3.min(c) {
            let j = rng.gen_range(0..c);
            row[j] += rng.gen_range(0.0..4.0);
        }
    }
    x
}

/// The gradient of the KD loss (alpha 0, temperature `t`) at student logits `s`.
fn kd_gradient(s: &[f32], target: &[f32], classes: usize, t: f32) -> Vec<f32> {
    let dev = Cpu::seed_from_u64(0);
    let batch = s.len() / classes;
    let x = dev.tensor_from_vec(s.to_vec(), (batch, classes));
    let targets = Targets {
        classes,
        labels: None,
        teacher_logprobs: Some(target),
    };
    let cfg = LossConfig::new(LossKind::Kd, 0.0, t);
    let l = loss(&cfg, x.clone().traced(Gradients::leaky()), &targets).unwrap();
    assert!(l.array().is_finite());
    l.backward().get(&x).as_vec()
}

struct Case {
    classes: usize,
    rows: usize,
    t: f32,
    top: usize,
    draws: usize,
    runs: usize,
}

#[test]
fn sampled_kd_gradient_is_unbiased() {
    let cases = [
        Case {
            classes: 10,
            rows: 16,
            t: 4.0,
            top: 0,
            draws: 3,
            runs: 3000,
        },
        Case {
            classes: 10,
            rows: 16,
            t: 4.0,
            top: 1,
            draws: 3,
            runs: 3000,
        },
        Case {
            classes: 10,
            rows: 16,
            t: 1.0,
            top: 0,
            draws: 3,
            runs: 3000,
        },
        Case {
            classes: 1000,
            rows: 4,
            t: 4.0,
            top: 0,
            draws: 24,
            runs: 600,
        },
        Case {
            classes: 1000,
            rows: 4,
            t: 1.0,
            top: 2,
            draws: 12,
            runs: 600,
        },
    ];
    for (i, k) in cases.iter().enumerate() {
        let c = k.classes;
        let mut lp = vec![0f32; k.rows * c];
        log_softmax_tempered(&teacher_logits(k.rows, c, 40 + i as u64), c, k.t, &mut lp).unwrap();
        let s = teacher_logits(k.rows, c, 90 + i as u64);
        let dense = kd_gradient(&s, &lp, c, k.t);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut sum, mut sq) = (vec![0f64; dense.len()], vec![0f64; dense.len()]);
        let mut target = vec![0f32; lp.len()];
        for _ in 0..k.runs {
            for (row, out) in lp.chunks_exact(c).zip(target.chunks_exact_mut(c)) {
                sampled_row(row, k.top, k.draws, rng.gen::<f64>(), out).unwrap();
            }
            let g = kd_gradient(&s, &target, c, k.t);
            for (j, &v) in g.iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += (v as f64).powi(2);
            }
        }
        let m = k.runs as f64;
        // Systematic draws put floor(S·w) or ceil(S·w) draws on a class
        // (w: its share of the rest r), so its decoded mass has variance
        // (r/S)^2 f(1-f), f the fractional part of S·w; the gradient
        // T/B (softmax(s/T) - p̂) scales that by (T/B)^2. Top classes are exact.
        let scale = (k.t as f64 / k.rows as f64).powi(2);
        let (mut theory, mut iid) = (vec![0f64; dense.len()], 0.0f64);
        // One draw's effect on a component, (T/B) r/S: rare classes are hit
        // a few times or not at all, so their check allows a few hits' worth.
        let mut unit = vec![0f64; dense.len()];
        for (b, row) in lp.chunks_exact(c).enumerate() {
            let p: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&x, &y| p[y].total_cmp(&p[x]).then(x.cmp(&y)));
            let r: f64 = order[k.top..].iter().map(|&j| p[j]).sum();
            let sd = k.draws as f64;
            let mut w2 = 0.0;
            for &j in &order[k.top..] {
                let sw = sd * p[j] / r;
                let f = sw - sw.floor();
                theory[b * c + j] = scale * (r / sd).powi(2) * f * (1.0 - f);
                unit[b * c + j] = scale.sqrt() * r / sd;
                w2 += (p[j] / r).powi(2);
            }
            // Independent draws: the multinomial's r^2 (1 - Σ w^2) / S.
            iid += scale * r * r * (1.0 - w2) / sd;
        }
        let (mut chi, mut total_var, mut worst, mut random) = (0.0f64, 0.0f64, 0.0f64, 0usize);
        for j in 0..dense.len() {
            let mean = sum[j] / m;
            total_var += (sq[j] / m - mean * mean).max(0.0);
            let se = (theory[j] / m).sqrt();
            let err = (mean - dense[j] as f64).abs();
            assert!(
                err <= 6.0 * se + 4.0 * unit[j] / m + 1e-6,
                "case {i}, component {j}: mean {mean} vs dense {} (se {se})",
                dense[j]
            );
            worst = worst.max(err);
            if theory[j] > 0.0 {
                chi += err * err / (theory[j] / m);
                random += 1;
            }
        }
        // Summed over components, the squared errors in units of their
        // standard errors average to about 1 when the mean is unbiased.
        let chi = chi / random.max(1) as f64;
        assert!(
            chi < 1.5,
            "case {i}: mean squared error {chi} standard errors^2"
        );
        let expected: f64 = theory.iter().sum();
        assert!(
            (total_var - expected).abs() <= 0.15 * expected,
            "case {i}: variance {total_var}, systematic draws give {expected}"
        );
        let dense_sq: f64 = dense.iter().map(|&v| (v as f64).powi(2)).sum();
        eprintln!(
            "C={c} T={} sampled:{}+{}: gradient variance {total_var:.3e} (theory {expected:.3e}; independent draws {iid:.3e}), |dense gradient|^2 {dense_sq:.3e}, worst |mean - dense| {worst:.1e} over {} draws, mean squared error {chi:.2} standard errors^2",
            k.t, k.top, k.draws, k.runs
        );
        assert!(
            total_var <= iid * 1.05,
            "case {i}: systematic draws {total_var} above independent {iid}"
        );
    }
}
