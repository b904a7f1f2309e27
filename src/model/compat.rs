//! Whether a network can read a dataset: the same input size per sample, and
//! labels within its classes.
//!
//! Both phases ask this before they run a network over data: the teacher
//! before it fills a cache (phase one), the trainer and evaluation before
//! they train or measure a student (phase two).

use crate::data::Dataset;
use crate::error::{Error, Result};

use super::network::Network;
use super::ops::Backend;
use super::spec::ModelSpec;

/// Checks that a network can read a dataset: same input size, and labels
/// within its classes.
pub fn check_compatible<D: Backend>(net: &Network<D>, data: &Dataset) -> Result<()> {
    check_spec_compatible(net.spec(), data)
}

/// [`check_compatible`] for a network yet to be built from `spec`.
pub fn check_spec_compatible(spec: &ModelSpec, data: &Dataset) -> Result<()> {
    if data.sample_len() != spec.input_len() {
        let [c, h, w] = data.sample_shape();
        return Err(Error::Spec {
            spec: spec.to_string(),
            message: format!(
                "takes {} inputs per sample, but {} has {c}x{h}x{w} = {} (split {})",
                spec.input_len(),
                data.source().display(),
                data.sample_len(),
                data.split()
            ),
        });
    }
    if let Some(k) = data.num_classes() {
        if k > spec.num_classes() {
            return Err(Error::Spec {
                spec: spec.to_string(),
                message: format!(
                    "has {} outputs, but {} holds labels up to {}",
                    spec.num_classes(),
                    data.source().display(),
                    k - 1
                ),
            });
        }
    }
    Ok(())
}
