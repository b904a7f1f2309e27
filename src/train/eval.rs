//! Evaluation: accuracy, loss, agreement with a teacher, and throughput of a
//! network on a dataset ([`evaluate`]) or on some of its samples
//! ([`evaluate_samples`], a run's validation split).

use std::time::Instant;

use dfdx::prelude::*;

use crate::data::Dataset;
use crate::error::Result;
use crate::model::compat::check_compatible;
use crate::model::{Backend, Network};

use super::loss::argmax_rows;

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalResult {
    pub samples: usize,
    /// Top-1 accuracy against the labels (None for unlabelled data).
    pub accuracy: Option<f64>,
    /// Mean cross-entropy against the labels.
    pub loss: Option<f64>,
    /// Inference throughput over the whole pass.
    pub samples_per_sec: f64,
    /// Predicted class per sample.
    #[serde(skip)]
    pub predictions: Vec<u32>,
}

impl EvalResult {
    /// Fraction of samples where the prediction equals `other`'s (e.g. the
    /// teacher's argmax).
    pub fn agreement(&self, other: &[u32]) -> Option<f64> {
        if other.len() != self.predictions.len() || other.is_empty() {
            return None;
        }
        let same = self
            .predictions
            .iter()
            .zip(other)
            .filter(|(a, b)| a == b)
            .count();
        Some(same as f64 / other.len() as f64)
    }
}

/// Runs the network over every sample (in order, batches of `batch`).
pub fn evaluate<D: Backend>(net: &Network<D>, data: &Dataset, batch: usize) -> Result<EvalResult> {
    let all: Vec<usize> = (0..data.len()).collect();
    evaluate_samples(net, data, &all, batch)
}

/// Runs the network over the samples `indices` of `data` (in that order,
/// batches of `batch`), e.g. a run's validation split; `predictions` follow
/// `indices`.
pub fn evaluate_samples<D: Backend>(
    net: &Network<D>,
    data: &Dataset,
    indices: &[usize],
    batch: usize,
) -> Result<EvalResult> {
    check_compatible(net, data)?;
    let n = indices.len();
    let classes = net.spec().num_classes();
    // No larger than the samples: a batch is held whole in memory.
    let batch = batch.clamp(1, n.max(1));
    let mut predictions = Vec::with_capacity(n);
    let mut loss_sum = 0f64;
    let mut correct = 0usize;
    let mut buf = vec![0f32; batch * data.sample_len()];
    let labels = data.labels();
    let start = Instant::now();
    for idx in indices.chunks(batch) {
        let b = idx.len();
        data.fill_inputs(idx, &mut buf[..b * data.sample_len()]);
        let logits = net.predict(buf[..b * data.sample_len()].to_vec(), b);
        let lsm = logits.log_softmax::<Axis<1>>().as_vec();
        let pred = argmax_rows(&lsm, classes);
        if let Some(y) = labels {
            for (i, &p) in pred.iter().enumerate() {
                let yi = y[idx[i]] as usize;
                loss_sum -= lsm[i * classes + yi] as f64;
                if p as usize == yi {
                    correct += 1;
                }
            }
        }
        predictions.extend(pred);
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(EvalResult {
        samples: n,
        accuracy: labels.map(|_| correct as f64 / n.max(1) as f64),
        loss: labels.map(|_| loss_sum / n.max(1) as f64),
        samples_per_sec: n as f64 / secs,
        predictions,
    })
}
