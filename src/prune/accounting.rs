//! Size and cost accounting of a (pruned) model: non-zero parameters,
//! forward FLOPs counting only non-zero weights, size on disk. The numbers
//! of `distill prune`'s before/after table and of `prune.json`.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::ModelSpec;

/// Non-zero values among all tensors.
pub fn count_nonzero(tensors: &[HostTensor]) -> u64 {
    tensors
        .iter()
        .map(|t| t.data.iter().filter(|v| **v != 0.0).count() as u64)
        .sum()
}

/// Non-zero parameters of a model of `spec`: [`count_nonzero`] over its
/// tensors less the buffers (batch norm's running statistics and step
/// counter are state, not parameters, and would otherwise count).
pub fn count_nonzero_params(spec: &ModelSpec, tensors: &[HostTensor]) -> u64 {
    let buffers = spec.buffer_names();
    tensors
        .iter()
        .filter(|t| !buffers.contains(&t.name))
        .map(|t| t.data.iter().filter(|v| **v != 0.0).count() as u64)
        .sum()
}

/// Forward FLOPs per sample counting only non-zero weights (what a sparse
/// kernel would do); equals [`ModelSpec::flops`] for a dense model. A
/// layer's FLOPs scale with the non-zero fraction of its prunable weights
/// (a residual block's: all its convolutions' together).
pub fn effective_flops(spec: &ModelSpec, tensors: &[HostTensor]) -> u64 {
    spec.layers()
        .iter()
        .enumerate()
        .map(|(li, l)| {
            let (mut nz, mut len) = (0u128, 0u128);
            for name in spec.prunable_weights(li) {
                if let Some(t) = tensors.iter().find(|t| t.name == name) {
                    nz += t.data.iter().filter(|v| **v != 0.0).count() as u128;
                    len += t.data.len() as u128;
                }
            }
            match len {
                0 => l.flops(),
                _ => (l.flops() as u128 * nz / len) as u64,
            }
        })
        .sum()
}

/// One model's numbers, as `distill prune` reports them before and after.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Parameters of the spec.
    pub params: u64,
    /// Parameters that are not zero.
    pub nonzero: u64,
    /// Size of the weights file.
    pub bytes: u64,
    /// Forward FLOPs per sample.
    pub flops: u64,
    /// Forward FLOPs per sample counting only non-zero weights.
    pub nz_flops: u64,
    /// Test accuracy, when measured.
    pub accuracy: Option<f64>,
}

impl Summary {
    /// The numbers of `tensors` (of `spec`), saved as `file`.
    pub fn of(
        spec: &ModelSpec,
        tensors: &[HostTensor],
        file: &Path,
        accuracy: Option<f64>,
    ) -> Result<Summary> {
        Ok(Summary {
            params: spec.param_count(),
            nonzero: count_nonzero_params(spec, tensors),
            bytes: fs::metadata(file).map_err(|e| Error::io(file, e))?.len(),
            flops: spec.flops(),
            nz_flops: effective_flops(spec, tensors),
            accuracy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::host;
    use super::*;

    #[test]
    fn zeros_cost_no_flops() {
        let spec = ModelSpec::parse("mlp:4-2-2").unwrap();
        let mut w = host(&spec, |_, _| 1.0);
        assert_eq!(effective_flops(&spec, &w), spec.flops());
        assert_eq!(count_nonzero(&w), spec.param_count());
        // Half of the first layer's weights: half its FLOPs.
        for x in w[0].data.iter_mut().take(4) {
            *x = 0.0;
        }
        let first = spec.layers()[0].flops();
        assert_eq!(effective_flops(&spec, &w), spec.flops() - first / 2);
        assert_eq!(count_nonzero(&w), spec.param_count() - 4);
    }

    /// Batch norm's running statistics and counter are not parameters: a
    /// dense residual network's non-zeros equal its parameter count.
    #[test]
    fn running_statistics_are_not_counted_as_parameters() {
        let spec = ModelSpec::parse("resnet:4x1-8x1-10").unwrap();
        let w = host(&spec, |_, _| 1.0);
        assert!(!spec.buffer_names().is_empty());
        assert!(spec
            .buffer_names()
            .iter()
            .all(|n| w.iter().any(|t| &t.name == n)));
        assert_eq!(count_nonzero_params(&spec, &w), spec.param_count());
        assert!(count_nonzero(&w) > spec.param_count());
    }
}
