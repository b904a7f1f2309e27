//! The loss family: hard-label cross-entropy, Hinton's soft-target KD, logit
//! matching, and hard pseudo-labels.
//!
//! With student logits `s`, labels `y`, the teacher's log-probabilities
//! `lp_T` at temperature `T` and `alpha` in [0, 1]:
//! - [`LossKind::Kd`]: `alpha * CE(y, s) + (1 - alpha) * T^2 * KL(p_T || softmax(s / T))`,
//!   the KL averaged over the batch (PyTorch `kl_div(..., reduction="batchmean")`).
//!   The `T^2` keeps the soft-target gradients on the scale of the hard ones
//!   (they shrink as `1/T^2`, Hinton et al. 2015).
//! - [`LossKind::Mse`]: `alpha * CE(y, s) + (1 - alpha) * mean((s - z)^2)` where
//!   `z = T * lp_T - mean_c(T * lp_T)` is the teacher's logits up to the
//!   per-row constant a softmax forgets; centring `z` fixes that constant, so
//!   the student learns zero-mean logits (which changes no probability).
//! - [`LossKind::Pseudo`]: cross-entropy against the teacher's argmax, the way
//!   unlabelled data is used.
//!
//! `alpha = 1` is plain training (the soft branch is not even computed) and
//! `alpha = 0` pure distillation (the hard branch is skipped).

use std::fmt;
use std::str::FromStr;

use dfdx::prelude::*;

use crate::error::{Error, Result};
use crate::model::ops::Matrix;
use crate::model::Backend;

/// Which distillation objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    Kd,
    Mse,
    Pseudo,
}

impl FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kd" => Ok(Self::Kd),
            "mse" => Ok(Self::Mse),
            "pseudo" => Ok(Self::Pseudo),
            other => Err(Error::Config {
                flag: "--loss".into(),
                message: format!("'{other}' is not one of kd, mse, pseudo"),
            }),
        }
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Kd => "kd",
            Self::Mse => "mse",
            Self::Pseudo => "pseudo",
        })
    }
}

/// The objective of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Weight of the hard-label term.
    pub alpha: f32,
    /// Distillation temperature T (the student's; the cache is re-tempered to it).
    pub temperature: f32,
}

impl LossConfig {
    /// Plain hard-label training.
    pub fn hard_labels() -> Self {
        LossConfig {
            kind: LossKind::Kd,
            alpha: 1.0,
            temperature: 1.0,
        }
    }

    /// Checks ranges; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(Error::Config {
                flag: "--alpha".into(),
                message: format!("{} must be in [0, 1]", self.alpha),
            });
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0 && self.temperature <= 1000.0) {
            return Err(Error::Config {
                flag: "--temperature".into(),
                message: format!("{} must be a number in (0, 1000]", self.temperature),
            });
        }
        Ok(())
    }

    /// Whether the loss reads the teacher's outputs.
    pub fn needs_teacher(&self) -> bool {
        self.kind == LossKind::Pseudo || self.alpha < 1.0
    }

    /// Whether the loss reads the dataset's labels.
    pub fn needs_labels(&self) -> bool {
        self.kind != LossKind::Pseudo && self.alpha > 0.0
    }
}

/// Host-side targets of one batch.
pub struct Targets<'a> {
    pub classes: usize,
    /// Labels (or the teacher's argmax for pseudo-labels).
    pub labels: Option<&'a [u32]>,
    /// Teacher log-probabilities at the loss temperature, `batch * classes`.
    pub teacher_logprobs: Option<&'a [f32]>,
}

/// One-hot rows for `labels`.
pub fn one_hot(labels: &[u32], classes: usize) -> Vec<f32> {
    let mut v = vec![0f32; labels.len() * classes];
    for (i, &y) in labels.iter().enumerate() {
        if (y as usize) < classes {
            v[i * classes + y as usize] = 1.0;
        }
    }
    v
}

/// Row-wise argmax.
pub fn argmax_rows(values: &[f32], classes: usize) -> Vec<u32> {
    values
        .chunks_exact(classes)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect()
}

/// Builds the loss for a batch of student logits. Returns the scalar loss
/// tensor (with the tape) for the backward pass.
pub fn loss<D: Backend, T: Tape<f32, D>>(
    cfg: &LossConfig,
    logits: Matrix<D, T>,
    targets: &Targets<'_>,
) -> Result<Tensor<Rank0, f32, D, T>> {
    let dev = logits.device().clone();
    let (batch, classes) = *logits.shape();
    let missing = |what: &str| Error::Training {
        context: "loss".into(),
        message: format!("the {} loss needs {what}, which this batch lacks", cfg.kind),
    };
    let inv_b = 1.0 / batch as f32;
    let cross_entropy = |logits: Matrix<D, T>, labels: &[u32]| {
        let y = dev.tensor_from_vec(one_hot(labels, classes), (batch, classes));
        (logits.log_softmax::<Axis<1>>() * y).sum::<Rank0, _>() * (-inv_b)
    };
    if cfg.kind == LossKind::Pseudo {
        let lp = targets
            .teacher_logprobs
            .ok_or_else(|| missing("teacher outputs"))?;
        return Ok(cross_entropy(logits, &argmax_rows(lp, classes)));
    }
    let hard_w = cfg.alpha;
    let soft_w = 1.0 - cfg.alpha;
    let (hard_branch, soft_branch) = if hard_w > 0.0 && soft_w > 0.0 {
        let soft = logits.with_empty_tape();
        (Some(logits), Some(soft))
    } else if hard_w > 0.0 {
        (Some(logits), None)
    } else {
        (None, Some(logits))
    };
    let hard = match hard_branch {
        Some(l) => {
            let labels = targets.labels.ok_or_else(|| missing("labels"))?;
            Some(cross_entropy(l, labels) * hard_w)
        }
        None => None,
    };
    let soft = match soft_branch {
        Some(l) => {
            let lp = targets
                .teacher_logprobs
                .ok_or_else(|| missing("teacher outputs"))?;
            let t = cfg.temperature;
            Some(match cfg.kind {
                LossKind::Kd => {
                    // KL(p || q) = sum p log p - sum p log q; the first term is a
                    // constant of the batch, added on the host so the reported loss
                    // is the true KL.
                    let p: Vec<f32> = lp.iter().map(|v| v.exp()).collect();
                    let entropy_term: f32 = p
                        .iter()
                        .zip(lp)
                        .map(|(p, l)| if *p > 0.0 { p * l } else { 0.0 })
                        .sum();
                    let p = dev.tensor_from_vec(p, (batch, classes));
                    let cross = (l * (1.0 / t)).log_softmax::<Axis<1>>() * p;
                    let kl = (cross.sum::<Rank0, _>() * (-inv_b)) + entropy_term * inv_b;
                    kl * (soft_w * t * t)
                }
                LossKind::Mse => {
                    let mut z: Vec<f32> = lp.iter().map(|v| v * t).collect();
                    for row in z.chunks_exact_mut(classes) {
                        let mean = row.iter().sum::<f32>() / classes as f32;
                        row.iter_mut().for_each(|v| *v -= mean);
                    }
                    let z = dev.tensor_from_vec(z, (batch, classes));
                    (l - z).square().mean::<Rank0, _>() * soft_w
                }
                LossKind::Pseudo => unreachable!("handled above"),
            })
        }
        None => None,
    };
    Ok(match (hard, soft) {
        (Some(h), Some(s)) => h + s,
        (Some(h), None) => h,
        (None, Some(s)) => s,
        (None, None) => unreachable!("alpha in [0, 1] leaves one branch"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::tensor::Gradients;

    fn log_softmax(row: &[f32], t: f32) -> Vec<f32> {
        let m = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b)) / t;
        let lse = row.iter().map(|v| (v / t - m).exp()).sum::<f32>().ln() + m;
        row.iter().map(|v| v / t - lse).collect()
    }

    // Reference values computed by the formulas in the module doc:
    //   s = [[1, 2, 0.5], [0.1, -1, 2]], y = [1, 2],
    //   teacher logits z = [[0.5, 3, 0], [0, 0, 4]], T = 2, alpha = 0.3
    // PyTorch equivalent:
    //   ce = F.cross_entropy(s, y)
    //   kl = F.kl_div(F.log_softmax(s/T,1), F.log_softmax(z/T,1), log_target=True, reduction="batchmean")
    //   loss = 0.3*ce + 0.7*T*T*kl
    #[test]
    fn kd_loss_matches_reference() {
        let dev = Cpu::seed_from_u64(0);
        let s = [1.0f32, 2.0, 0.5, 0.1, -1.0, 2.0];
        let z = [0.5f32, 3.0, 0.0, 0.0, 0.0, 4.0];
        let (t, alpha) = (2.0f32, 0.3f32);
        let lp: Vec<f32> = z.chunks(3).flat_map(|r| log_softmax(r, t)).collect();
        let labels = [1u32, 2];
        let mut ce = 0.0;
        let mut kl = 0.0;
        for r in 0..2 {
            let ls = log_softmax(&s[r * 3..r * 3 + 3], 1.0);
            ce -= ls[labels[r] as usize];
            let lst = log_softmax(&s[r * 3..r * 3 + 3], t);
            for c in 0..3 {
                let p = lp[r * 3 + c].exp();
                kl += p * (lp[r * 3 + c] - lst[c]);
            }
        }
        let expected = alpha * ce / 2.0 + (1.0 - alpha) * t * t * kl / 2.0;
        let cfg = LossConfig {
            kind: LossKind::Kd,
            alpha,
            temperature: t,
        };
        let logits = dev.tensor_from_vec(s.to_vec(), (2, 3));
        let targets = Targets {
            classes: 3,
            labels: Some(&labels),
            teacher_logprobs: Some(&lp),
        };
        let got = loss(&cfg, logits.clone(), &targets).unwrap().array();
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // alpha = 1 is plain cross-entropy; alpha = 0 pure KD.
        let hard = loss(&LossConfig { alpha: 1.0, ..cfg }, logits.clone(), &targets)
            .unwrap()
            .array();
        assert!((hard - ce / 2.0).abs() < 1e-5);
        let soft = loss(
            &LossConfig { alpha: 0.0, ..cfg },
            logits.clone(),
            &Targets {
                labels: None,
                ..targets
            },
        )
        .unwrap()
        .array();
        assert!((soft - t * t * kl / 2.0).abs() < 1e-5);
    }

    #[test]
    fn kd_gradient_is_softmax_difference() {
        // d/ds [T^2 KL(p || softmax(s/T))] / batch = T (softmax(s/T) - p) / batch.
        let dev = Cpu::seed_from_u64(0);
        let s = vec![0.3f32, -0.2, 1.1];
        let lp = log_softmax(&[2.0, 0.0, -1.0], 4.0);
        let t = 4.0;
        let logits = dev.tensor_from_vec(s.clone(), (1, 3));
        let cfg = LossConfig {
            kind: LossKind::Kd,
            alpha: 0.0,
            temperature: t,
        };
        let targets = Targets {
            classes: 3,
            labels: None,
            teacher_logprobs: Some(&lp),
        };
        let g = loss(&cfg, logits.clone().traced(Gradients::leaky()), &targets)
            .unwrap()
            .backward();
        let got = g.get(&logits).as_vec();
        let q = log_softmax(&s, t);
        for c in 0..3 {
            let expected = t * (q[c].exp() - lp[c].exp());
            assert!((got[c] - expected).abs() < 1e-5, "{got:?}");
        }
    }

    #[test]
    fn mse_and_pseudo_losses() {
        let dev = Cpu::seed_from_u64(0);
        let s = vec![1.0f32, -1.0, 0.0, 2.0];
        let z = [3.0f32, 1.0, 0.0, 2.0];
        let t = 2.0;
        let lp: Vec<f32> = z.chunks(2).flat_map(|r| log_softmax(r, t)).collect();
        // Centred teacher logits: [1, -1], [-1, 1]; mse = mean((s - zc)^2) = (0+0+1+1)/4.
        let cfg = LossConfig {
            kind: LossKind::Mse,
            alpha: 0.0,
            temperature: t,
        };
        let targets = Targets {
            classes: 2,
            labels: None,
            teacher_logprobs: Some(&lp),
        };
        let got = loss(&cfg, dev.tensor_from_vec(s.clone(), (2, 2)), &targets)
            .unwrap()
            .array();
        assert!((got - 0.5).abs() < 1e-5, "{got}");
        // Pseudo-labels: teacher argmax [0, 1]; CE of s against them.
        let cfg = LossConfig {
            kind: LossKind::Pseudo,
            alpha: 0.0,
            temperature: t,
        };
        let got = loss(&cfg, dev.tensor_from_vec(s.clone(), (2, 2)), &targets)
            .unwrap()
            .array();
        let expected = -(log_softmax(&s[0..2], 1.0)[0] + log_softmax(&s[2..4], 1.0)[1]) / 2.0;
        assert!((got - expected).abs() < 1e-5);
    }

    #[test]
    fn missing_targets_and_bad_flags_are_clear() {
        let dev = Cpu::seed_from_u64(0);
        let cfg = LossConfig {
            kind: LossKind::Kd,
            alpha: 0.5,
            temperature: 2.0,
        };
        let targets = Targets {
            classes: 2,
            labels: None,
            teacher_logprobs: Some(&[-0.1, -2.0]),
        };
        let err = loss(&cfg, dev.tensor_from_vec(vec![0.0, 1.0], (1, 2)), &targets)
            .err()
            .unwrap();
        assert!(err.to_string().contains("labels"), "{err}");
        for (alpha, t, flag) in [
            (1.5, 2.0, "--alpha"),
            (-0.1, 2.0, "--alpha"),
            (0.5, 0.0, "--temperature"),
            (0.5, -1.0, "--temperature"),
            (0.5, f32::NAN, "--temperature"),
        ] {
            let e = LossConfig {
                kind: LossKind::Kd,
                alpha,
                temperature: t,
            }
            .validate()
            .unwrap_err();
            assert!(e.to_string().contains(flag), "{e}");
        }
    }
}
