//! The KD loss as a device op: [`crate::model::Backend::kd_loss`].
//!
//! Hinton's distillation loss over student logits `s: (batch, classes)`:
//!
//! `hard.weight * CE(y, s) + soft.weight * T^2 * (H(p) - sum p log_softmax(s / T)) / batch`
//!
//! with `CE(y, s) = -sum(y * log_softmax(s)) / batch` against target rows
//! `y` (one-hot or mixed labels) and `p` the teacher's probabilities at `T`,
//! whose negative entropy `sum p log p` arrives precomputed (a constant of the
//! batch, so the reported loss is the true KL). Either term may be absent.
//! Under logit standardisation ([`SoftTerm::standardize`]) the soft term
//! reads `z(s) = (s - mean(s)) / sqrt(var(s) + eps)` per row in place of `s`,
//! and `p` comes from the teacher's logits standardised the same way.
//! `crate::train::loss` builds the [`KdTerms`] on the host; the device runs
//! them: [`kd_loss_generic`] composes dfdx's ops (every device; the CPU's
//! path), the CUDA build fuses loss and gradient into one pass over the logits
//! (`cuda/ops.rs`).

use dfdx::prelude::*;

use super::ops::{Backend, Matrix};

/// The epsilon under the square root of a row's variance when logits are
/// standardised (teacher and student alike, so a constant row gives uniform
/// probabilities).
pub const STANDARDIZE_EPSILON: f32 = 1e-7;

/// The hard-label term: `weight * CE(rows, s)`.
#[derive(Debug, Clone, PartialEq)]
pub struct HardTerm {
    /// Target rows, `batch * classes` (each sums to 1, or 0 for an unknown label).
    pub rows: Vec<f32>,
    pub weight: f32,
}

/// The soft term: `weight * T^2 * KL(p || softmax(s / T))`, the KL averaged
/// over the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftTerm {
    /// The teacher's probabilities at `temperature`, `batch * classes`.
    pub probs: Vec<f32>,
    /// `sum p log p` over the whole batch (0 where `p` is 0).
    pub entropy: f32,
    pub weight: f32,
    pub temperature: f32,
    /// Z-score each row of the logits before `/ T` (logit standardisation;
    /// `probs` are then the standardised teacher's).
    pub standardize: bool,
}

/// What [`crate::model::Backend::kd_loss`] computes: at least one term.
#[derive(Debug, Clone, PartialEq)]
pub struct KdTerms {
    pub hard: Option<HardTerm>,
    pub soft: Option<SoftTerm>,
}

/// The KD loss from dfdx's `log_softmax`, multiply and sum, in the order the
/// CPU has always computed it (so its results stay bit-identical).
///
/// # Panics
/// When `terms` has neither term (the loss config never builds that).
pub fn kd_loss_generic<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    logits: Matrix<D, T>,
    terms: KdTerms,
) -> Tensor<Rank0, f32, D, T> {
    let (batch, classes) = *logits.shape();
    let inv_b = 1.0 / batch as f32;
    let (hard_logits, soft_logits) = match (&terms.hard, &terms.soft) {
        (Some(_), Some(_)) => {
            let soft = logits.with_empty_tape();
            (Some(logits), Some(soft))
        }
        (Some(_), None) => (Some(logits), None),
        (None, Some(_)) => (None, Some(logits)),
        (None, None) => panic!("kd_loss: neither a hard nor a soft term"),
    };
    let hard = hard_logits.zip(terms.hard).map(|(l, h)| {
        let y = dev.tensor_from_vec(h.rows, (batch, classes));
        ((l.log_softmax::<Axis<1>>() * y).sum::<Rank0, _>() * (-inv_b)) * h.weight
    });
    let soft = soft_logits.zip(terms.soft).map(|(l, s)| {
        let t = s.temperature;
        let p = dev.tensor_from_vec(s.probs, (batch, classes));
        let l = match s.standardize {
            true => l.normalize::<Axis<1>>(STANDARDIZE_EPSILON),
            false => l,
        };
        let cross = (l * (1.0 / t)).log_softmax::<Axis<1>>() * p;
        let kl = (cross.sum::<Rank0, _>() * (-inv_b)) + s.entropy * inv_b;
        kl * (s.weight * t * t)
    });
    match (hard, soft) {
        (Some(h), Some(s)) => h + s,
        (Some(h), None) => h,
        (None, Some(s)) => s,
        (None, None) => unreachable!("checked above"),
    }
}
