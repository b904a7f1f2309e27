//! Comparing models: the numbers of one model (accuracy, loss, size,
//! sparsity, FLOPs, throughput and latency) as `distill eval --model A
//! --model B` tabulates them (on a whole split, or on the validation images
//! a run held out: [`measure_samples`]; the predictions it keeps pair the
//! models image by image, [`super::paired`]), and the test accuracy
//! `distill prune` reports before and after pruning ([`test_accuracy`],
//! passed to [`prune_model`](crate::prune::prune_model)).
//!
//! ```no_run
//! use distill::data::{Dataset, Split};
//! use distill::train::compare::measure;
//! # fn main() -> distill::Result<()> {
//! let test = Dataset::open("data/fashion-mnist-small".as_ref(), Split::Test)?;
//! let row = measure("data/teachers/fashion-cnn".as_ref(), dfdx::prelude::Cpu::default(), &test, 1000)?;
//! println!("{:?} at {} parameters", row.accuracy, row.params);
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::Path;
use std::time::Instant;

use super::eval::{evaluate, evaluate_samples};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Backend, ModelDir, Network};
use crate::prune::count_nonzero_params;

/// The batch size of [`test_accuracy`].
const ACCURACY_BATCH: usize = 1000;

/// Top-1 accuracy of `net` on `data` (None for unlabelled data).
pub fn test_accuracy<D: Backend>(net: &Network<D>, data: &Dataset) -> Result<Option<f64>> {
    Ok(evaluate(net, data, ACCURACY_BATCH)?.accuracy)
}

/// One model's row of the comparison table.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    /// Top-1 accuracy against the labels (None for unlabelled data).
    pub accuracy: Option<f64>,
    /// Mean cross-entropy against the labels.
    pub loss: Option<f64>,
    /// Parameters of the spec.
    pub params: u64,
    /// Parameters that are not zero (pruned weights are exactly zero).
    pub nonzero: u64,
    /// Size of the weights file.
    pub bytes: u64,
    /// Forward FLOPs per sample.
    pub flops: u64,
    /// Samples per second over the evaluation pass.
    pub samples_per_sec: f64,
    /// Seconds per sample at batch size 1.
    pub latency_1: f64,
    /// Seconds per sample at batch size 256.
    pub latency_256: f64,
    /// Predicted class per evaluated sample, in evaluation order.
    pub predictions: Vec<u32>,
}

/// Measures the model in `model` (a model directory or weights file) on
/// `data`, evaluated at batch size `batch` on `device`.
pub fn measure<D: Backend>(
    model: &Path,
    device: D,
    data: &Dataset,
    batch: usize,
) -> Result<ModelRow> {
    let dir = ModelDir::new(model);
    let net = dir.load(device)?;
    measure_loaded(&dir, &net, data, batch)
}

/// [`measure`] for a network already loaded from `dir`.
pub fn measure_loaded<D: Backend>(
    dir: &ModelDir,
    net: &Network<D>,
    data: &Dataset,
    batch: usize,
) -> Result<ModelRow> {
    let all: Vec<usize> = (0..data.len()).collect();
    measure_samples(dir, net, data, &all, batch)
}

/// [`measure_loaded`] with accuracy and loss over the samples `indices` of
/// `data` only (e.g. a run's validation split); latency is timed on the
/// first samples of `data` as always.
pub fn measure_samples<D: Backend>(
    dir: &ModelDir,
    net: &Network<D>,
    data: &Dataset,
    indices: &[usize],
    batch: usize,
) -> Result<ModelRow> {
    let r = evaluate_samples(net, data, indices, batch)?;
    let file = dir.weights();
    Ok(ModelRow {
        accuracy: r.accuracy,
        loss: r.loss,
        params: net.spec().param_count(),
        nonzero: count_nonzero_params(net.spec(), &net.to_host()),
        bytes: fs::metadata(file).map_err(|e| Error::io(file, e))?.len(),
        flops: net.spec().flops(),
        samples_per_sec: r.samples_per_sec,
        latency_1: latency(net, data, 1, 200),
        latency_256: latency(net, data, 256, 4),
        predictions: r.predictions,
    })
}

/// Seconds per sample of `net` at batch size `batch` (`reps` timed passes
/// after one warm-up), on the first samples of `data`.
pub fn latency<D: Backend>(net: &Network<D>, data: &Dataset, batch: usize, reps: usize) -> f64 {
    let b = batch.min(data.len()).max(1);
    let idx: Vec<usize> = (0..b).map(|i| i % data.len().max(1)).collect();
    let mut buf = vec![0f32; b * data.sample_len()];
    if !data.is_empty() {
        data.fill_inputs(&idx, &mut buf);
    }
    let _ = net.predict(buf.clone(), b).as_vec();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = net.predict(buf.clone(), b).as_vec();
    }
    start.elapsed().as_secs_f64() / (reps * b) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;
    use crate::model::io::save_weights;
    use crate::model::ModelSpec;
    use dfdx::prelude::Cpu;

    #[test]
    fn a_row_measures_the_saved_model() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:4-3-2").unwrap();
        let net = Network::new(spec.clone(), Cpu::default(), 3);
        let file = tmp.path().join("model.safetensors");
        save_weights(&net, &file).unwrap();
        let inputs: Vec<f32> = (0..20).map(|i| (i % 7) as f32 / 7.0).collect();
        let data =
            Dataset::from_f32([1, 2, 2], inputs, Some(vec![0, 1, 1, 0, 1]), Split::Test).unwrap();
        let row = measure(tmp.path(), Cpu::default(), &data, 2).unwrap();
        let direct = evaluate(&net, &data, 2).unwrap();
        assert_eq!(row.accuracy, direct.accuracy);
        assert_eq!(row.predictions, direct.predictions);
        assert_eq!(row.loss, direct.loss);
        assert_eq!(test_accuracy(&net, &data).unwrap(), direct.accuracy);
        assert_eq!(row.params, spec.param_count());
        assert_eq!(row.nonzero, count_nonzero_params(&spec, &net.to_host()));
        assert_eq!(row.bytes, fs::metadata(&file).unwrap().len());
        assert_eq!(row.flops, spec.flops());
        assert!(row.latency_1 > 0.0 && row.latency_256 > 0.0);
        // The same row from the weights file named directly.
        let again = measure(&file, Cpu::default(), &data, 2).unwrap();
        assert_eq!((again.params, again.bytes), (row.params, row.bytes));
        // Some samples only: the accuracy and predictions of those.
        let dir = ModelDir::new(tmp.path());
        let some = measure_samples(&dir, &net, &data, &[4, 1], 2).unwrap();
        let direct = evaluate_samples(&net, &data, &[4, 1], 2).unwrap();
        assert_eq!(some.predictions.len(), 2);
        assert_eq!(
            (some.accuracy, some.predictions),
            (direct.accuracy, direct.predictions)
        );
    }
}
