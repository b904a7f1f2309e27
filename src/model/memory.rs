//! A lower bound on the memory a training run takes, checked before the run
//! starts against what its device has free (`Backend::memory_free`: the
//! host's available memory for the CPU, the GPU's free memory for CUDA):
//! a model or batch far too large is refused naming the flags to change,
//! instead of aborting part-way through an allocation.
//!
//! The bound counts only what must exist at once: four values a parameter
//! (the weights, their gradients and the optimizer's two slots), every
//! layer's output for one training batch (kept for the backward pass), and
//! the largest layer output of one evaluation batch. Real use is higher
//! (patch matrices, the gradients of the activations, the loader's
//! batches), so a run under the bound may still not fit; a run over it
//! cannot.

use crate::error::{Error, Result};

use super::spec::ModelSpec;

/// Bytes of one value.
const F32: u128 = 4;

/// The lower bound, in bytes, for `spec` trained at batch `batch` and
/// evaluated at batch `eval_batch` (the larger of the two phases).
pub fn lower_bound(spec: &ModelSpec, batch: usize, eval_batch: usize) -> u128 {
    let outputs: Vec<u128> = spec
        .layers()
        .iter()
        .map(|l| l.output().len() as u128)
        .collect();
    let params = 4 * spec.param_count() as u128;
    let training = params + batch as u128 * outputs.iter().sum::<u128>();
    let largest = outputs.iter().copied().max().unwrap_or(0);
    let evaluation = spec.param_count() as u128 + eval_batch as u128 * largest;
    F32 * training.max(evaluation)
}

/// The memory the kernel says is available (`MemAvailable` in
/// `/proc/meminfo`), in bytes; `None` where it cannot be read.
pub fn available() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses a run whose [`lower_bound`] exceeds `available` bytes (nothing
/// is refused when that is unknown). The error names `batch_size` and the
/// spec, the two things to change.
pub fn check_fits(
    spec: &ModelSpec,
    batch: usize,
    eval_batch: usize,
    available: Option<u128>,
    device: &str,
) -> Result<()> {
    let need = lower_bound(spec, batch, eval_batch);
    match available {
        Some(have) if need > have => {
            let gib = |b: u128| b as f64 / (1u64 << 30) as f64;
            Err(Error::Config {
                field: "batch_size".into(),
                message: format!(
                    "{spec} at batch {batch} needs at least {:.1} GiB of memory (its weights, \
                     gradients, optimizer state and one batch's activations; evaluation runs \
                     {eval_batch} samples at a time), and {:.1} GiB is free on {device}; use a \
                     smaller `batch_size` or a smaller model (`spec`)",
                    gib(need),
                    gib(have)
                ),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_counts_parameters_and_activations() {
        let spec = ModelSpec::parse("mlp:784-100-10").unwrap();
        let params = spec.param_count() as u128;
        // Layers write 100 and 10 values a sample.
        assert_eq!(
            lower_bound(&spec, 64, 1),
            4 * (4 * params + 64 * (100 + 10))
        );
        // A large evaluation batch can be the larger phase.
        assert_eq!(lower_bound(&spec, 1, 100_000), 4 * (params + 100_000 * 100));
    }

    #[test]
    fn a_model_past_the_memory_is_refused_naming_batch_and_spec() {
        let spec = ModelSpec::parse("cnn:c4096-gap-10").unwrap();
        // 4096 channels of 28x28 a sample: 12.8 MB a sample, 1.6 GB at 128.
        let err = check_fits(&spec, 128, 1000, Some(1 << 30), "cuda:0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch_size")
                && err.contains("`spec`")
                && err.contains("1.0 GiB is free on cuda:0"),
            "{err}"
        );
        check_fits(&spec, 128, 1000, None, "cpu").unwrap();
        let small = ModelSpec::parse("mlp:784-32-10").unwrap();
        check_fits(&small, 128, 1000, Some(1 << 30), "cpu").unwrap();
    }
}
