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
//!   unlabelled data is used. It has no hard-label term (alpha must be 0)
//!   and no soft one; the temperature only re-tempers the cache, which
//!   leaves the argmax as it was.
//! - [`LossKind::Dkd`]: decoupled KD (Zhao et al., CVPR 2022),
//!   `alpha * CE(y, s) + (1 - alpha) * T^2 * (a * TCKD + b * NCKD)`. Hinton's
//!   KL splits exactly into `TCKD + (1 - p_t) * NCKD`, where TCKD is the binary
//!   KL between teacher and student on "target class or not" and NCKD the KL
//!   between their distributions over the non-target classes. A confident
//!   teacher (`p_t` near 1) thus silences the non-target "dark knowledge" in
//!   plain KD; DKD weighs the two parts freely (`a`, `b` from
//!   [`DkdWeights`], 1 and 8 by default as in the paper). It needs labels.
//! - [`LossKind::Dist`]: DIST (Huang et al., NeurIPS 2022),
//!   `alpha * CE(y, s) + (1 - alpha) * T^2 * (inter + intra)`, one minus the
//!   mean Pearson correlation of student and teacher probabilities per image
//!   (inter) and per class across the batch (intra): the student matches
//!   the teacher's relations, not its confidence ([`super::dist`]).
//!
//! Two modifiers: [`LossConfig::soft_scale`] multiplies the soft term
//! (`alpha * CE + (1 - alpha) * soft_scale * soft`), and
//! [`LossConfig::logit_standardize`] (KD only; Sun et al., CVPR 2024)
//! z-scores each row of the student's and the teacher's logits before the
//! softmax at `T` ([`standardized_logprobs`] on the teacher's side), so the
//! student matches the teacher's logit relations rather than their range.
//!
//! [`TeacherErrors::Swap`] corrects the teacher where its top class is not the
//! label by swapping the probabilities of the two classes (the "knowledge
//! adjustment" of Wen et al. 2019), so the soft targets never point at a wrong
//! class while keeping the teacher's ranking of the rest.
//!
//! Mixed images (mixup, cutmix: [`crate::data::mix`]) come with a
//! [`LabelMix`]: the hard-label term's target is then the mixed row
//! `lambda * onehot(y_i) + (1 - lambda) * onehot(y_partner)`
//! ([`loss_mixed`]); the soft terms read the teacher's output on the mixed
//! image, as they read it on any other.
//!
//! `alpha = 1` is plain training (the soft branch is not even computed) and
//! `alpha = 0` pure distillation (the hard branch is skipped).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use dfdx::prelude::*;

use crate::error::{Error, Result};
use crate::model::kd::{HardTerm, KdTerms, SoftTerm, STANDARDIZE_EPSILON};
use crate::model::ops::Matrix;
use crate::model::Backend;

/// Which distillation objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    Kd,
    Mse,
    Pseudo,
    Dkd,
    Dist,
}

impl FromStr for LossKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kd" => Ok(Self::Kd),
            "mse" => Ok(Self::Mse),
            "pseudo" => Ok(Self::Pseudo),
            "dkd" => Ok(Self::Dkd),
            "dist" => Ok(Self::Dist),
            other => Err(Error::Config {
                field: "loss.kind".into(),
                message: format!("'{other}' is not one of kd, dkd, dist, mse, pseudo"),
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
            Self::Dkd => "dkd",
            Self::Dist => "dist",
        })
    }
}

/// What the soft targets do where the teacher's top class is not the label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherErrors {
    /// Use the teacher's outputs as they are.
    #[default]
    Keep,
    /// Swap the probabilities of the teacher's top class and the label.
    Swap,
}

impl FromStr for TeacherErrors {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "keep" => Ok(Self::Keep),
            "swap" => Ok(Self::Swap),
            other => Err(Error::Config {
                field: "loss.teacher_errors".into(),
                message: format!("'{other}' is not one of keep, swap"),
            }),
        }
    }
}

impl fmt::Display for TeacherErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Keep => "keep",
            Self::Swap => "swap",
        })
    }
}

/// Weights of decoupled KD's two parts: `target` (TCKD) and `non_target` (NCKD).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DkdWeights {
    pub target: f32,
    pub non_target: f32,
}

impl Default for DkdWeights {
    /// The paper's setting: TCKD 1, NCKD 8.
    fn default() -> Self {
        DkdWeights {
            target: 1.0,
            non_target: 8.0,
        }
    }
}

impl FromStr for DkdWeights {
    type Err = Error;
    /// `A,B`: the TCKD and NCKD weights, both finite and >= 0.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |message: String| Error::Config {
            field: "loss.dkd_weights".into(),
            message,
        };
        let (a, b) = s
            .split_once(',')
            .ok_or_else(|| bad(format!("'{s}' is not of the form TCKD,NCKD (e.g. 1,8)")))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<f32>()
                .ok()
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| bad(format!("'{v}' in '{s}' is not a finite weight >= 0")))
        };
        Ok(DkdWeights {
            target: parse(a)?,
            non_target: parse(b)?,
        })
    }
}

impl fmt::Display for DkdWeights {
    /// `A,B`, the form [`FromStr`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.target, self.non_target)
    }
}

/// The objective of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "RecordedLoss")]
pub struct LossConfig {
    pub kind: LossKind,
    /// Weight of the hard-label term.
    pub alpha: f32,
    /// Distillation temperature T (the student's; the cache is re-tempered to it).
    pub temperature: f32,
    /// Correction of the teacher's wrong answers (needs labels).
    #[serde(default)]
    pub teacher_errors: TeacherErrors,
    /// Weights of [`LossKind::Dkd`]'s two parts (unused by the other losses).
    #[serde(default)]
    pub dkd_weights: DkdWeights,
    /// Z-score both sides' logits per row before the soft term of
    /// [`LossKind::Kd`] (logit standardisation, Sun et al., CVPR 2024).
    #[serde(default)]
    pub logit_standardize: bool,
    /// Multiplies the soft term: `alpha * CE + (1 - alpha) * soft_scale * soft`.
    #[serde(default = "unit_scale")]
    pub soft_scale: f32,
}

fn unit_scale() -> f32 {
    1.0
}

/// A [`LossConfig`] as cards, checkpoints and sweeps recorded it. A run of
/// the pseudo loss recorded before that loss refused an alpha or a soft
/// scale trained with neither, so it reads back as alpha 0 and scale 1:
/// what it ran, and what a resume of it now asks for.
#[derive(serde::Deserialize)]
struct RecordedLoss {
    kind: LossKind,
    alpha: f32,
    temperature: f32,
    #[serde(default)]
    teacher_errors: TeacherErrors,
    #[serde(default)]
    dkd_weights: DkdWeights,
    #[serde(default)]
    logit_standardize: bool,
    #[serde(default = "unit_scale")]
    soft_scale: f32,
}

impl From<RecordedLoss> for LossConfig {
    fn from(r: RecordedLoss) -> Self {
        let pseudo = r.kind == LossKind::Pseudo;
        LossConfig {
            kind: r.kind,
            alpha: if pseudo { 0.0 } else { r.alpha },
            temperature: r.temperature,
            teacher_errors: r.teacher_errors,
            dkd_weights: r.dkd_weights,
            logit_standardize: r.logit_standardize,
            soft_scale: if pseudo { 1.0 } else { r.soft_scale },
        }
    }
}

impl Default for LossConfig {
    /// Hard labels only (`alpha` 1) at the usual distillation temperature
    /// 4, so that lowering `alpha` is all a distillation run needs.
    fn default() -> Self {
        Self::new(LossKind::Kd, 1.0, 4.0)
    }
}

impl LossConfig {
    /// Plain hard-label training.
    pub fn hard_labels() -> Self {
        Self::new(LossKind::Kd, 1.0, 1.0)
    }

    /// A loss with the default teacher handling and DKD weights.
    pub fn new(kind: LossKind, alpha: f32, temperature: f32) -> Self {
        LossConfig {
            kind,
            alpha,
            temperature,
            teacher_errors: TeacherErrors::Keep,
            dkd_weights: DkdWeights::default(),
            logit_standardize: false,
            soft_scale: 1.0,
        }
    }

    /// The weight of the soft term: `(1 - alpha) * soft_scale`.
    pub fn soft_weight(&self) -> f32 {
        (1.0 - self.alpha) * self.soft_scale
    }

    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(Error::Config {
                field: "loss.alpha".into(),
                message: format!("{} must be in [0, 1]", self.alpha),
            });
        }
        if let Err(message) = crate::numeric::check_temperature(self.temperature) {
            return Err(Error::Config {
                field: "loss.temperature".into(),
                message,
            });
        }
        if !(self.soft_scale.is_finite() && self.soft_scale > 0.0 && self.soft_scale <= 1000.0) {
            return Err(Error::Config {
                field: "loss.soft_scale".into(),
                message: format!("{} must be a number in (0, 1000]", self.soft_scale),
            });
        }
        if self.logit_standardize && self.kind != LossKind::Kd {
            return Err(Error::Config {
                field: "loss.logit_standardize".into(),
                message: format!(
                    "standardises the logits of the kd loss; the {} loss does not take it",
                    self.kind
                ),
            });
        }
        let w = self.dkd_weights;
        if !(w.target.is_finite()
            && w.non_target.is_finite()
            && w.target >= 0.0
            && w.non_target >= 0.0)
        {
            return Err(Error::Config {
                field: "loss.dkd_weights".into(),
                message: format!("{},{} must be finite weights >= 0", w.target, w.non_target),
            });
        }
        if self.kind != LossKind::Dkd && w != DkdWeights::default() {
            return Err(Error::Config {
                field: "loss.dkd_weights".into(),
                message: format!(
                    "{},{} weigh the parts of the dkd loss; the {} loss does not take them (set `loss.kind` dkd)",
                    w.target, w.non_target, self.kind
                ),
            });
        }
        if self.kind == LossKind::Pseudo && self.alpha != 0.0 {
            return Err(Error::Config {
                field: "loss.alpha".into(),
                message: format!(
                    "{}: the pseudo loss is cross-entropy against the teacher's argmax alone, with no hard-label term to weigh; use 0 (--alpha 0, or leave --alpha out)",
                    self.alpha
                ),
            });
        }
        if self.kind == LossKind::Pseudo && self.soft_scale != 1.0 {
            return Err(Error::Config {
                field: "loss.soft_scale".into(),
                message: format!(
                    "{}: the pseudo loss has no soft term to scale",
                    self.soft_scale
                ),
            });
        }
        if self.teacher_errors == TeacherErrors::Swap && self.kind == LossKind::Pseudo {
            return Err(Error::Config {
                field: "loss.teacher_errors".into(),
                message: "swap corrects soft targets with the labels; pseudo-labels replace the labels, so the two do not combine".into(),
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
        if self.kind == LossKind::Pseudo {
            return false;
        }
        let soft_term_reads_labels =
            self.kind == LossKind::Dkd || self.teacher_errors == TeacherErrors::Swap;
        self.alpha > 0.0 || (self.alpha < 1.0 && soft_term_reads_labels)
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

/// The label mixing of a batch of mixed images (mixup, cutmix): row `r`'s
/// hard-label target is `lambdas[r] * onehot(y_r) + (1 - lambdas[r]) *
/// onehot(partner_labels[r])`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMix {
    pub partner_labels: Vec<u32>,
    pub lambdas: Vec<f32>,
}

impl LabelMix {
    /// The mixed one-hot rows for `labels` (the rows' own labels).
    pub fn target_rows(&self, labels: &[u32], classes: usize) -> Vec<f32> {
        let mut v = vec![0f32; labels.len() * classes];
        for (r, ((&y, &z), &l)) in labels
            .iter()
            .zip(&self.partner_labels)
            .zip(&self.lambdas)
            .enumerate()
        {
            let row = &mut v[r * classes..(r + 1) * classes];
            if (y as usize) < classes {
                row[y as usize] += l;
            }
            if (z as usize) < classes {
                row[z as usize] += 1.0 - l;
            }
        }
        v
    }

    /// Each row's dominant label: its own where `lambda >= 1/2`, else the
    /// partner's (the class a teacher should see in the mixed image).
    pub fn dominant(&self, labels: &[u32]) -> Vec<u32> {
        labels
            .iter()
            .zip(&self.partner_labels)
            .zip(&self.lambdas)
            .map(|((&y, &z), &l)| if l >= 0.5 { y } else { z })
            .collect()
    }
}

pub use crate::numeric::argmax_rows;

/// Builds the loss for a batch of student logits. Returns the scalar loss
/// tensor (with the tape) for the backward pass.
pub fn loss<D: Backend, T: Tape<f32, D>>(
    cfg: &LossConfig,
    logits: Matrix<D, T>,
    targets: &Targets<'_>,
) -> Result<Tensor<Rank0, f32, D, T>> {
    loss_mixed(cfg, logits, targets, None)
}

/// [`loss`] for a batch of mixed images: the hard-label term's targets are
/// `mix`'s mixed one-hot rows, and the soft terms that read a label (DKD's
/// target class, `swap`) read each row's dominant label. With `mix` `None`
/// it is [`loss`], the same operations.
pub fn loss_mixed<D: Backend, T: Tape<f32, D>>(
    cfg: &LossConfig,
    logits: Matrix<D, T>,
    targets: &Targets<'_>,
    mix: Option<&LabelMix>,
) -> Result<Tensor<Rank0, f32, D, T>> {
    let dominant = match (mix, targets.labels) {
        (Some(m), Some(y)) if m.lambdas.len() == y.len() && m.partner_labels.len() == y.len() => {
            Some(m.dominant(y))
        }
        (Some(m), Some(y)) => {
            return Err(Error::Training {
                context: "loss".into(),
                message: format!(
                    "a batch of {} labels has {} mixing weights and {} partner labels; a mixed image needs its own label and its partner's",
                    y.len(),
                    m.lambdas.len(),
                    m.partner_labels.len()
                ),
            })
        }
        // Without labels only the soft terms run, and they need none.
        (_, None) | (None, _) => None,
    };
    let soft_labels = dominant.as_deref().or(targets.labels);
    let dev = logits.device().clone();
    let (batch, classes) = *logits.shape();
    let missing = |what: &str| Error::Training {
        context: "loss".into(),
        message: format!("the {} loss needs {what}, which this batch lacks", cfg.kind),
    };
    let inv_b = 1.0 / batch as f32;
    let cross_entropy_rows = |logits: Matrix<D, T>, rows: Vec<f32>| {
        let y = dev.tensor_from_vec(rows, (batch, classes));
        (logits.log_softmax::<Axis<1>>() * y).sum::<Rank0, _>() * (-inv_b)
    };
    let cross_entropy =
        |logits: Matrix<D, T>, labels: &[u32]| cross_entropy_rows(logits, one_hot(labels, classes));
    if cfg.kind == LossKind::Pseudo {
        let lp = targets
            .teacher_logprobs
            .ok_or_else(|| missing("teacher outputs"))?;
        return Ok(cross_entropy(logits, &argmax_rows(lp, classes)));
    }
    let hard_w = cfg.alpha;
    let soft_w = cfg.soft_weight();
    if cfg.kind == LossKind::Kd {
        // One device op, which CUDA fuses (model::kd).
        let terms = kd_terms(cfg, targets, mix, soft_labels, classes)?;
        return Ok(dev.kd_loss(logits, terms));
    }
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
            let rows = hard_rows(targets, mix, classes, &missing)?;
            Some(cross_entropy_rows(l, rows) * hard_w)
        }
        None => None,
    };
    let soft = match soft_branch {
        Some(l) => {
            let lp = soft_logprobs(cfg, targets, soft_labels, classes, &missing)?;
            let lp = &lp[..];
            let t = cfg.temperature;
            Some(match cfg.kind {
                LossKind::Mse => {
                    let mut z: Vec<f32> = lp.iter().map(|v| v * t).collect();
                    for row in z.chunks_exact_mut(classes) {
                        let mean = row.iter().sum::<f32>() / classes as f32;
                        row.iter_mut().for_each(|v| *v -= mean);
                    }
                    let z = dev.tensor_from_vec(z, (batch, classes));
                    (l - z).square().mean::<Rank0, _>() * soft_w
                }
                LossKind::Dkd => {
                    let labels = soft_labels.ok_or_else(|| missing("labels"))?;
                    let w = dkd_host_weights(lp, labels, classes, cfg.dkd_weights);
                    let scaled = l * (1.0 / t);
                    let masked = scaled.with_empty_tape()
                        + dev.tensor_from_vec(w.target_mask, (batch, classes));
                    let ls = scaled.log_softmax::<Axis<1>>()
                        * dev.tensor_from_vec(w.on_logprobs, (batch, classes));
                    let ls_nt = masked.log_softmax::<Axis<1>>()
                        * dev.tensor_from_vec(w.on_non_target_logprobs, (batch, classes));
                    let cross = ls.sum::<Rank0, _>() + ls_nt.sum::<Rank0, _>();
                    (cross * (-inv_b) + w.constant * inv_b) * (soft_w * t * t)
                }
                LossKind::Dist => {
                    let probs: Vec<f32> = lp.iter().map(|v| v.exp()).collect();
                    super::dist::relation_loss(l, &probs, t) * soft_w
                }
                LossKind::Kd | LossKind::Pseudo => unreachable!("handled above"),
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

/// The host side of [`LossKind::Kd`]: the hard-label rows (one-hot, or
/// mixed under `mix`) and the teacher's probabilities with their entropy
/// term, for the terms `cfg.alpha` keeps.
fn kd_terms(
    cfg: &LossConfig,
    targets: &Targets<'_>,
    mix: Option<&LabelMix>,
    soft_labels: Option<&[u32]>,
    classes: usize,
) -> Result<KdTerms> {
    let missing = |what: &str| Error::Training {
        context: "loss".into(),
        message: format!("the {} loss needs {what}, which this batch lacks", cfg.kind),
    };
    let hard = if cfg.alpha > 0.0 {
        let rows = hard_rows(targets, mix, classes, &missing)?;
        Some(HardTerm {
            rows,
            weight: cfg.alpha,
        })
    } else {
        None
    };
    let soft = if cfg.alpha < 1.0 {
        let lp = soft_logprobs(cfg, targets, soft_labels, classes, &missing)?;
        let lp = match cfg.logit_standardize {
            true => Cow::Owned(standardized_logprobs(&lp, classes, cfg.temperature)?),
            false => lp,
        };
        let lp = &lp[..];
        // KL(p || q) = sum p log p - sum p log q; the first term is a
        // constant of the batch, added so the reported loss is the true KL.
        let probs: Vec<f32> = lp.iter().map(|v| v.exp()).collect();
        let entropy = probs
            .iter()
            .zip(lp)
            .map(|(p, l)| if *p > 0.0 { p * l } else { 0.0 })
            .sum();
        Some(SoftTerm {
            probs,
            entropy,
            weight: cfg.soft_weight(),
            temperature: cfg.temperature,
            standardize: cfg.logit_standardize,
        })
    } else {
        None
    };
    Ok(KdTerms { hard, soft })
}

/// The smallest log-probability [`standardized_logprobs`] reads: a class the
/// cache stores as probability 0 (`-inf`) counts as `exp(-87)`, the smallest
/// normal f32, so one absent class cannot turn its row into NaN.
const LOGPROB_FLOOR: f32 = -87.0;

/// The teacher's targets under logit standardisation: each row of
/// log-probabilities (at any temperature: it is the teacher's logits up to a
/// positive scale and a per-row constant, which standardising removes)
/// z-scored with the population standard deviation, then
/// [`crate::numeric::log_softmax_tempered`] at `temperature`.
pub fn standardized_logprobs(
    logprobs: &[f32],
    classes: usize,
    temperature: f32,
) -> Result<Vec<f32>> {
    let mut z = Vec::with_capacity(logprobs.len());
    for row in logprobs.chunks_exact(classes) {
        let floored = row.iter().map(|&v| v.max(LOGPROB_FLOOR) as f64);
        let n = classes as f64;
        let mean = floored.clone().sum::<f64>() / n;
        let var = floored.clone().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let inv_std = 1.0 / (var + STANDARDIZE_EPSILON as f64).sqrt();
        z.extend(floored.map(|v| ((v - mean) * inv_std) as f32));
    }
    let mut out = vec![0.0; z.len()];
    crate::numeric::log_softmax_tempered(&z, classes, temperature, &mut out).map_err(|e| {
        Error::Training {
            context: "loss".into(),
            message: format!("standardising the teacher's logits: {e}"),
        }
    })?;
    Ok(out)
}

/// The hard-label rows of a batch: one-hot, or mixed under `mix`.
fn hard_rows(
    targets: &Targets<'_>,
    mix: Option<&LabelMix>,
    classes: usize,
    missing: &dyn Fn(&str) -> Error,
) -> Result<Vec<f32>> {
    let labels = targets.labels.ok_or_else(|| missing("labels"))?;
    Ok(match mix {
        Some(m) => m.target_rows(labels, classes),
        None => one_hot(labels, classes),
    })
}

/// The teacher's log-probabilities a soft term reads: as given, or with its
/// errors swapped ([`TeacherErrors::Swap`], which needs `soft_labels`).
fn soft_logprobs<'t>(
    cfg: &LossConfig,
    targets: &Targets<'t>,
    soft_labels: Option<&[u32]>,
    classes: usize,
    missing: &dyn Fn(&str) -> Error,
) -> Result<Cow<'t, [f32]>> {
    let lp = targets
        .teacher_logprobs
        .ok_or_else(|| missing("teacher outputs"))?;
    Ok(match cfg.teacher_errors {
        TeacherErrors::Swap => {
            let labels = soft_labels.ok_or_else(|| missing("labels"))?;
            Cow::Owned(swap_teacher_errors(lp, labels, classes))
        }
        _ => Cow::Borrowed(lp),
    })
}

/// The teacher's log-probabilities with, in every row whose top class is not
/// the label, the values of the top class and the label swapped.
pub fn swap_teacher_errors(logprobs: &[f32], labels: &[u32], classes: usize) -> Vec<f32> {
    let mut out = logprobs.to_vec();
    let top = argmax_rows(logprobs, classes);
    for ((row, &y), &k) in out.chunks_exact_mut(classes).zip(labels).zip(&top) {
        if (y as usize) < classes && y != k {
            row.swap(y as usize, k as usize);
        }
    }
    out
}

/// Host-side constants of one DKD batch. With `ls = log_softmax(s / T)` and
/// `ls_nt = log_softmax(s / T + target_mask)` (the student's log-distribution
/// over the non-target classes; the mask pushes the target's logit to -1e4),
/// the loss is `-(sum(ls * on_logprobs) + sum(ls_nt * on_non_target_logprobs))
/// / batch + constant / batch`, times `T^2`.
///
/// The student's `log(1 - q_t)` is `ls_j - ls_nt_j` for any non-target `j`;
/// spreading it evenly over the non-target columns keeps every term a plain
/// weighted sum of the two log-softmaxes, stable even when `q_t` rounds to 1.
struct DkdHostWeights {
    target_mask: Vec<f32>,
    on_logprobs: Vec<f32>,
    on_non_target_logprobs: Vec<f32>,
    constant: f32,
}

fn dkd_host_weights(
    logprobs: &[f32],
    labels: &[u32],
    classes: usize,
    w: DkdWeights,
) -> DkdHostWeights {
    let n = logprobs.len();
    let mut target_mask = vec![0f32; n];
    let mut on_logprobs = vec![0f32; n];
    let mut on_non_target_logprobs = vec![0f32; n];
    let mut constant = 0f32;
    let spread = 1.0 / (classes.saturating_sub(1).max(1)) as f32;
    let xlogx = |p: f32, logp: f32| if p > 0.0 { p * logp } else { 0.0 };
    for (r, (row, &y)) in logprobs.chunks_exact(classes).zip(labels).enumerate() {
        let y = y as usize;
        if y >= classes {
            continue;
        }
        let base = r * classes;
        let log_pt = row[y];
        let pt = log_pt.exp();
        // log(1 - p_t) from the non-target log-probabilities, stable near p_t = 1.
        let log_rest = crate::numeric::logsumexp(
            row.iter()
                .enumerate()
                .filter(|(j, _)| *j != y)
                .map(|(_, v)| *v),
        );
        let rest = log_rest.exp();
        // TCKD: KL([p_t, 1 - p_t] || [q_t, 1 - q_t]).
        on_logprobs[base + y] = w.target * pt;
        constant += w.target * (xlogx(pt, log_pt) + xlogx(rest, log_rest));
        target_mask[base + y] = -1e4;
        for j in (0..classes).filter(|j| *j != y) {
            on_logprobs[base + j] = w.target * rest * spread;
            on_non_target_logprobs[base + j] = -w.target * rest * spread;
            // NCKD: KL(p_hat || q_hat) over the non-target classes.
            if log_rest > f32::NEG_INFINITY {
                let log_hat = row[j] - log_rest;
                let hat = log_hat.exp();
                on_non_target_logprobs[base + j] += w.non_target * hat;
                constant += w.non_target * xlogx(hat, log_hat);
            }
        }
    }
    DkdHostWeights {
        target_mask,
        on_logprobs,
        on_non_target_logprobs,
        constant,
    }
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
        let cfg = LossConfig::new(LossKind::Kd, alpha, t);
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
    fn standardised_soft_loss_ignores_the_logits_scale_and_offset() {
        // Student logits 3s + 1 and a teacher at any temperature give the
        // same standardised soft loss; without standardising they do not.
        let dev = Cpu::seed_from_u64(0);
        let s = [1.0f32, 2.0, 0.5, 0.1, -1.0, 2.0];
        let moved: Vec<f32> = s.iter().map(|v| 3.0 * v + 1.0).collect();
        let z = [0.5f32, 3.0, 0.0, 0.0, 0.0, 4.0];
        let lp_at = |t: f32| -> Vec<f32> { z.chunks(3).flat_map(|r| log_softmax(r, t)).collect() };
        let soft = |cfg: &LossConfig, logits: &[f32], lp: &[f32]| {
            let targets = Targets {
                classes: 3,
                labels: None,
                teacher_logprobs: Some(lp),
            };
            let x = dev.tensor_from_vec(logits.to_vec(), (2, 3));
            loss(cfg, x, &targets).unwrap().array()
        };
        let std_cfg = LossConfig {
            logit_standardize: true,
            ..LossConfig::new(LossKind::Kd, 0.0, 2.0)
        };
        let (lp1, lp4) = (lp_at(1.0), lp_at(4.0));
        let base = soft(&std_cfg, &s, &lp1);
        assert!(base > 0.0);
        for (logits, lp) in [(&moved[..], &lp1), (&s[..], &lp4), (&moved[..], &lp4)] {
            let got = soft(&std_cfg, logits, lp);
            assert!((got - base).abs() < 1e-5, "{got} vs {base}");
        }
        let plain = LossConfig::new(LossKind::Kd, 0.0, 2.0);
        assert!((soft(&plain, &moved, &lp1) - soft(&plain, &s, &lp1)).abs() > 0.1);
        // The soft scale multiplies the soft term only.
        let scaled = LossConfig {
            soft_scale: 9.0,
            ..std_cfg
        };
        assert!((soft(&scaled, &s, &lp1) - 9.0 * base).abs() < 1e-4);
        // A constant row standardises to uniform probabilities.
        let flat = standardized_logprobs(&[-1.0; 4], 4, 0.5).unwrap();
        assert!(
            flat.iter().all(|v| (v - 0.25f32.ln()).abs() < 1e-6),
            "{flat:?}"
        );
        // A class stored as probability 0 is floored, not NaN: it stays the
        // least likely class and the row stays a distribution.
        let gap = standardized_logprobs(&[-0.1, -2.5, f32::NEG_INFINITY], 3, 1.0).unwrap();
        assert!(
            gap.iter().all(|v| v.is_finite()) && gap[2] < gap[1],
            "{gap:?}"
        );
        let total: f32 = gap.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{gap:?}");
    }

    #[test]
    fn kd_gradient_is_softmax_difference() {
        // d/ds [T^2 KL(p || softmax(s/T))] / batch = T (softmax(s/T) - p) / batch.
        let dev = Cpu::seed_from_u64(0);
        let s = vec![0.3f32, -0.2, 1.1];
        let lp = log_softmax(&[2.0, 0.0, -1.0], 4.0);
        let t = 4.0;
        let logits = dev.tensor_from_vec(s.clone(), (1, 3));
        let cfg = LossConfig::new(LossKind::Kd, 0.0, t);
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

    /// A pseudo run recorded with an alpha (which it never used) reads back
    /// as what it ran; the other losses read back as written.
    #[test]
    fn a_recorded_pseudo_loss_reads_back_as_what_it_ran() {
        let read = |json: &str| serde_json::from_str::<LossConfig>(json).unwrap();
        let old = read(r#"{"kind":"pseudo","alpha":0.1,"temperature":4.0,"soft_scale":2.0}"#);
        assert_eq!(old, LossConfig::new(LossKind::Pseudo, 0.0, 4.0));
        old.validate().unwrap();
        let kd = LossConfig {
            soft_scale: 2.0,
            ..LossConfig::new(LossKind::Kd, 0.1, 4.0)
        };
        assert_eq!(read(&serde_json::to_string(&kd).unwrap()), kd);
    }

    #[test]
    fn mse_and_pseudo_losses() {
        let dev = Cpu::seed_from_u64(0);
        let s = vec![1.0f32, -1.0, 0.0, 2.0];
        let z = [3.0f32, 1.0, 0.0, 2.0];
        let t = 2.0;
        let lp: Vec<f32> = z.chunks(2).flat_map(|r| log_softmax(r, t)).collect();
        // Centred teacher logits: [1, -1], [-1, 1]; mse = mean((s - zc)^2) = (0+0+1+1)/4.
        let cfg = LossConfig::new(LossKind::Mse, 0.0, t);
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
        let cfg = LossConfig::new(LossKind::Pseudo, 0.0, t);
        cfg.validate().unwrap();
        let got = loss(&cfg, dev.tensor_from_vec(s.clone(), (2, 2)), &targets)
            .unwrap()
            .array();
        let expected = -(log_softmax(&s[0..2], 1.0)[0] + log_softmax(&s[2..4], 1.0)[1]) / 2.0;
        assert!((got - expected).abs() < 1e-5);
    }

    #[test]
    fn missing_targets_and_bad_settings_are_clear() {
        let dev = Cpu::seed_from_u64(0);
        let cfg = LossConfig::new(LossKind::Kd, 0.5, 2.0);
        let targets = Targets {
            classes: 2,
            labels: None,
            teacher_logprobs: Some(&[-0.1, -2.0]),
        };
        let err = loss(&cfg, dev.tensor_from_vec(vec![0.0, 1.0], (1, 2)), &targets)
            .err()
            .unwrap();
        assert!(err.to_string().contains("labels"), "{err}");
        for (alpha, t, field) in [
            (1.5, 2.0, "loss.alpha"),
            (-0.1, 2.0, "loss.alpha"),
            (0.5, 0.0, "loss.temperature"),
            (0.5, -1.0, "loss.temperature"),
            (0.5, f32::NAN, "loss.temperature"),
        ] {
            let e = LossConfig::new(LossKind::Kd, alpha, t)
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
        for (cfg, field) in [
            (
                LossConfig {
                    soft_scale: 0.0,
                    ..cfg
                },
                "loss.soft_scale",
            ),
            (
                LossConfig {
                    soft_scale: f32::INFINITY,
                    ..cfg
                },
                "loss.soft_scale",
            ),
            (
                LossConfig {
                    logit_standardize: true,
                    ..LossConfig::new(LossKind::Dkd, 0.5, 2.0)
                },
                "loss.logit_standardize",
            ),
            // Pseudo-labels have neither a hard-label term nor a soft one.
            (LossConfig::new(LossKind::Pseudo, 0.5, 1.0), "loss.alpha"),
            (
                LossConfig {
                    soft_scale: 2.0,
                    ..LossConfig::new(LossKind::Pseudo, 0.0, 1.0)
                },
                "loss.soft_scale",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    /// DKD from its definition: binary KL on "target or not" plus KL over the
    /// renormalised non-target classes, computed naively in f64.
    fn dkd_reference(s: &[f32], lp: &[f32], y: usize, t: f32, a: f32, b: f32) -> f64 {
        let q: Vec<f64> = log_softmax(s, t)
            .iter()
            .map(|v| (*v as f64).exp())
            .collect();
        let p: Vec<f64> = lp.iter().map(|v| (*v as f64).exp()).collect();
        let (pt, qt) = (p[y], q[y]);
        let tckd = pt * (pt / qt).ln() + (1.0 - pt) * ((1.0 - pt) / (1.0 - qt)).ln();
        let mut nckd = 0.0;
        for j in (0..s.len()).filter(|j| *j != y) {
            let (ph, qh) = (p[j] / (1.0 - pt), q[j] / (1.0 - qt));
            nckd += ph * (ph / qh).ln();
        }
        (t * t) as f64 * (a as f64 * tckd + b as f64 * nckd)
    }

    #[test]
    fn dkd_matches_its_definition_and_splits_kd() {
        let dev = Cpu::seed_from_u64(0);
        let s = [1.0f32, 2.0, 0.5, -0.3, 0.1, -1.0, 2.0, 0.7];
        let z = [0.5f32, 3.0, 0.0, 1.0, 0.0, 0.2, 4.0, -1.0];
        let labels = [1u32, 3];
        let t = 2.0;
        let lp: Vec<f32> = z.chunks(4).flat_map(|r| log_softmax(r, t)).collect();
        let targets = Targets {
            classes: 4,
            labels: Some(&labels),
            teacher_logprobs: Some(&lp),
        };
        let (a, b) = (1.5f32, 8.0f32);
        let cfg = LossConfig {
            dkd_weights: DkdWeights {
                target: a,
                non_target: b,
            },
            ..LossConfig::new(LossKind::Dkd, 0.0, t)
        };
        let got = loss(&cfg, dev.tensor_from_vec(s.to_vec(), (2, 4)), &targets)
            .unwrap()
            .array();
        let expected = (dkd_reference(&s[..4], &lp[..4], 1, t, a, b)
            + dkd_reference(&s[4..], &lp[4..], 3, t, a, b))
            / 2.0;
        assert!((got as f64 - expected).abs() < 1e-4, "{got} vs {expected}");
        // Plain KD is TCKD + (1 - p_t) NCKD: for one row, DKD with those
        // weights gives the KD loss, value and gradient.
        let row = &lp[4..];
        let pt = row[3].exp();
        let one = Targets {
            classes: 4,
            labels: Some(&labels[1..]),
            teacher_logprobs: Some(row),
        };
        let dkd_cfg = LossConfig {
            dkd_weights: DkdWeights {
                target: 1.0,
                non_target: 1.0 - pt,
            },
            ..cfg
        };
        let x = dev.tensor_from_vec(s[4..].to_vec(), (1, 4));
        let d = loss(&dkd_cfg, x.clone().traced(Gradients::leaky()), &one).unwrap();
        let k = loss(
            &LossConfig::new(LossKind::Kd, 0.0, t),
            x.clone().traced(Gradients::leaky()),
            &one,
        )
        .unwrap();
        assert!(
            (d.array() - k.array()).abs() < 1e-5,
            "{} vs {}",
            d.array(),
            k.array()
        );
        let (gd, gk) = (d.backward().get(&x).as_vec(), k.backward().get(&x).as_vec());
        for (u, v) in gd.iter().zip(&gk) {
            assert!((u - v).abs() < 1e-5, "{gd:?} vs {gk:?}");
        }
    }

    #[test]
    fn dkd_gradient_matches_finite_differences_and_stays_finite() {
        let dev = Cpu::seed_from_u64(0);
        let lp = log_softmax(&[0.2, 2.5, -1.0, 0.4], 4.0);
        let labels = [1u32];
        let targets = Targets {
            classes: 4,
            labels: Some(&labels),
            teacher_logprobs: Some(&lp),
        };
        let cfg = LossConfig::new(LossKind::Dkd, 0.3, 4.0);
        let s = vec![0.3f32, -0.2, 1.1, 0.0];
        let value = |s: &[f32]| {
            loss(&cfg, dev.tensor_from_vec(s.to_vec(), (1, 4)), &targets)
                .unwrap()
                .array()
        };
        let x = dev.tensor_from_vec(s.clone(), (1, 4));
        let g = loss(&cfg, x.clone().traced(Gradients::leaky()), &targets)
            .unwrap()
            .backward()
            .get(&x)
            .as_vec();
        for c in 0..4 {
            let h = 1e-2;
            let (mut up, mut down) = (s.clone(), s.clone());
            up[c] += h;
            down[c] -= h;
            let numeric = (value(&up) - value(&down)) / (2.0 * h);
            assert!(
                (g[c] - numeric).abs() < 2e-3,
                "class {c}: {} vs {numeric}",
                g[c]
            );
        }
        // A student certain of the target (q_t rounds to 1 in f32) and a
        // teacher certain of it (p_t = 1) still give finite values.
        let sure = [-200.0f32, 200.0, -200.0, -200.0];
        let teacher_sure = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        for lp in [&lp[..], &teacher_sure[..]] {
            let targets = Targets {
                classes: 4,
                labels: Some(&labels),
                teacher_logprobs: Some(lp),
            };
            let x = dev.tensor_from_vec(sure.to_vec(), (1, 4));
            let l = loss(&cfg, x.clone().traced(Gradients::leaky()), &targets).unwrap();
            assert!(l.array().is_finite(), "{}", l.array());
            assert!(l.backward().get(&x).as_vec().iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn swap_moves_the_teacher_mass_to_the_label_only_where_it_is_wrong() {
        let lp = [-0.1f32, -2.0, -3.0, -2.5, -0.2, -1.9];
        // Row 0: top class 0, label 2 -> swap classes 0 and 2. Row 1: right.
        let out = swap_teacher_errors(&lp, &[2, 1], 3);
        assert_eq!(out, vec![-3.0, -2.0, -0.1, -2.5, -0.2, -1.9]);
        // The KD loss with swap equals the KD loss against the swapped rows.
        let dev = Cpu::seed_from_u64(0);
        let s = dev.tensor_from_vec(vec![0.5f32, 0.1, -0.4, 0.0, 1.0, 0.3], (2, 3));
        let cfg = LossConfig {
            teacher_errors: TeacherErrors::Swap,
            ..LossConfig::new(LossKind::Kd, 0.0, 2.0)
        };
        let labels = [2u32, 1];
        let with_swap = loss(
            &cfg,
            s.clone(),
            &Targets {
                classes: 3,
                labels: Some(&labels),
                teacher_logprobs: Some(&lp),
            },
        )
        .unwrap()
        .array();
        let by_hand = loss(
            &LossConfig::new(LossKind::Kd, 0.0, 2.0),
            s,
            &Targets {
                classes: 3,
                labels: None,
                teacher_logprobs: Some(&out),
            },
        )
        .unwrap()
        .array();
        assert_eq!(with_swap, by_hand);
        assert!(cfg.needs_labels());
        assert!(!LossConfig::new(LossKind::Kd, 0.0, 2.0).needs_labels());
        assert!(LossConfig::new(LossKind::Dkd, 0.0, 2.0).needs_labels());
    }

    #[test]
    fn dkd_and_swap_settings_are_checked() {
        for (text, ok) in [
            ("1,8", true),
            (" 0.5 , 2", true),
            ("1", false),
            ("1,x", false),
            ("-1,8", false),
            ("1,inf", false),
        ] {
            let r = text.parse::<DkdWeights>();
            assert_eq!(r.is_ok(), ok, "{text}");
            if let Err(e) = r {
                assert!(e.to_string().contains("loss.dkd_weights"), "{e}");
            }
        }
        let e = "fix".parse::<TeacherErrors>().unwrap_err();
        assert!(e.to_string().contains("loss.teacher_errors"), "{e}");
        let e = "dkdx".parse::<LossKind>().unwrap_err();
        assert!(e.to_string().contains("dkd"), "{e}");
        let e = LossConfig {
            teacher_errors: TeacherErrors::Swap,
            ..LossConfig::new(LossKind::Pseudo, 0.0, 1.0)
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("loss.teacher_errors"), "{e}");
        // Old model cards and checkpoints, written before these fields, still load.
        let old: LossConfig =
            serde_json::from_str(r#"{"kind":"kd","alpha":0.5,"temperature":4.0}"#).unwrap();
        assert_eq!(old, LossConfig::new(LossKind::Kd, 0.5, 4.0));
    }

    // Reference for label mixing (mixup's loss, Zhang et al. 2018):
    //   ce_mix = lam * F.cross_entropy(s, y, reduction="none")
    //          + (1 - lam) * F.cross_entropy(s, y_partner, reduction="none")
    //   loss = alpha * ce_mix.mean() + (1 - alpha) * T*T * kl_batchmean
    #[test]
    fn mixed_labels_match_the_reference_and_leave_pure_kd_alone() {
        let dev = Cpu::seed_from_u64(0);
        let s = [1.0f32, 2.0, 0.5, 0.1, -1.0, 2.0];
        let z = [0.5f32, 3.0, 0.0, 0.0, 0.0, 4.0];
        let (t, alpha) = (2.0f32, 0.3f32);
        let lp: Vec<f32> = z.chunks(3).flat_map(|r| log_softmax(r, t)).collect();
        let labels = [1u32, 2];
        let mix = LabelMix {
            partner_labels: vec![0, 1],
            lambdas: vec![0.7, 0.2],
        };
        let (mut ce, mut kl) = (0.0f32, 0.0f32);
        for r in 0..2 {
            let ls = log_softmax(&s[r * 3..r * 3 + 3], 1.0);
            let l = mix.lambdas[r];
            ce -= l * ls[labels[r] as usize] + (1.0 - l) * ls[mix.partner_labels[r] as usize];
            let lst = log_softmax(&s[r * 3..r * 3 + 3], t);
            for c in 0..3 {
                let p = lp[r * 3 + c].exp();
                kl += p * (lp[r * 3 + c] - lst[c]);
            }
        }
        let expected = alpha * ce / 2.0 + (1.0 - alpha) * t * t * kl / 2.0;
        let targets = Targets {
            classes: 3,
            labels: Some(&labels),
            teacher_logprobs: Some(&lp),
        };
        let logits = dev.tensor_from_vec(s.to_vec(), (2, 3));
        let cfg = LossConfig::new(LossKind::Kd, alpha, t);
        let got = loss_mixed(&cfg, logits.clone(), &targets, Some(&mix))
            .unwrap()
            .array();
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
        // Hard labels alone: the mixed cross-entropy; its gradient is
        // softmax(s) - the mixed target, per row, over the batch.
        let hard = LossConfig { alpha: 1.0, ..cfg };
        let l = loss_mixed(
            &hard,
            logits.clone().traced(Gradients::leaky()),
            &targets,
            Some(&mix),
        )
        .unwrap();
        assert!((l.array() - ce / 2.0).abs() < 1e-5);
        let g = l.backward().get(&logits).as_vec();
        let rows = mix.target_rows(&labels, 3);
        assert_eq!(rows, vec![0.3, 0.7, 0.0, 0.0, 0.8, 0.2]);
        for r in 0..2 {
            let q = log_softmax(&s[r * 3..r * 3 + 3], 1.0);
            for c in 0..3 {
                let want = (q[c].exp() - rows[r * 3 + c]) / 2.0;
                assert!((g[r * 3 + c] - want).abs() < 1e-5, "{g:?}");
            }
        }
        // lambda 1 is the unmixed loss; pure distillation (alpha 0) reads
        // no label, mixed or not.
        let ones = LabelMix {
            partner_labels: vec![0, 0],
            lambdas: vec![1.0, 1.0],
        };
        let plain = loss(&cfg, logits.clone(), &targets).unwrap().array();
        let one = loss_mixed(&cfg, logits.clone(), &targets, Some(&ones))
            .unwrap()
            .array();
        assert!((plain - one).abs() < 1e-6);
        let pure = LossConfig { alpha: 0.0, ..cfg };
        let unlabelled = Targets {
            labels: None,
            ..targets
        };
        let a = loss_mixed(&pure, logits.clone(), &unlabelled, Some(&mix))
            .unwrap()
            .array();
        let b = loss(&pure, logits.clone(), &unlabelled).unwrap().array();
        assert_eq!(a, b);
        // DKD's target class is the dominant label: row 1's partner (1).
        assert_eq!(mix.dominant(&labels), vec![1, 1]);
        let dkd = LossConfig::new(LossKind::Dkd, 0.0, t);
        let dominant = [1u32, 1];
        let by_hand = loss(
            &dkd,
            logits.clone(),
            &Targets {
                labels: Some(&dominant),
                ..targets
            },
        )
        .unwrap()
        .array();
        let mixed = loss_mixed(&dkd, logits.clone(), &targets, Some(&mix))
            .unwrap()
            .array();
        assert_eq!(mixed, by_hand);
        // A mix of the wrong length is refused.
        let short = LabelMix {
            partner_labels: vec![0],
            lambdas: vec![0.5],
        };
        let e = loss_mixed(&cfg, logits, &targets, Some(&short))
            .err()
            .unwrap();
        assert!(e.to_string().contains("mixing weights"), "{e}");
    }
}
