//! Whether a network can read a dataset: the same input size per sample
//! (and, for a convolutional network on images, the same channels, height
//! and width), and labels within its classes; and the batch sizes any
//! command runs a network with.
//!
//! Both phases ask this before they run a network over data: the teacher
//! before it fills a cache (phase one), the trainer and evaluation before
//! they train or measure a student (phase two).

use crate::data::Dataset;
use crate::error::{Error, Result};

use super::network::Network;
use super::ops::Backend;
use super::spec::ModelSpec;

/// The largest batch any command runs a network with (`--batch`).
pub const MAX_BATCH_SIZE: usize = 1 << 20;

/// Checks a batch size against 1..=[`MAX_BATCH_SIZE`]; `field` names the
/// setting in the error.
pub fn check_batch_size(field: &str, batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH_SIZE {
        return Err(Error::Config {
            field: field.into(),
            message: format!("{batch} must be between 1 and {MAX_BATCH_SIZE}"),
        });
    }
    Ok(())
}

/// Checks that a network can read a dataset: same input size, and labels
/// within its classes.
pub fn check_compatible<D: Backend>(net: &Network<D>, data: &Dataset) -> Result<()> {
    check_spec_compatible(net.spec(), data)
}

/// [`check_compatible`] for a network yet to be built from `spec`.
pub fn check_spec_compatible(spec: &ModelSpec, data: &Dataset) -> Result<()> {
    check_len(spec, data)?;
    check_shape_and_classes(spec, data)
}

fn check_len(spec: &ModelSpec, data: &Dataset) -> Result<()> {
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
    Ok(())
}

fn check_shape_and_classes(spec: &ModelSpec, data: &Dataset) -> Result<()> {
    let (c, h, w) = spec.input_shape();
    let [dc, dh, dw] = data.sample_shape();
    // Flat samples of the right length are read as the spec's images.
    let flat = dc == 1 && dh == 1;
    if spec.is_convolutional() && !flat && (c, h, w) != (dc, dh, dw) {
        return Err(Error::Spec {
            spec: spec.to_string(),
            message: format!(
                "reads {c}x{h}x{w} images, but {} holds {dc}x{dh}x{dw} images (split {}); \
                 start the spec with i{dc}x{dh}x{dw}, or name no input and it follows the data",
                data.source().display(),
                data.split()
            ),
        });
    }
    if let Some(k) = data.num_classes() {
        if k > spec.num_classes() {
            return Err(Error::Spec {
                spec: spec.to_string(),
                message: format!(
                    "has {} outputs, but the {} split's labels in {} go up to {}",
                    spec.num_classes(),
                    data.split(),
                    data.labels_source().display(),
                    k - 1
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

    fn images(shape: [usize; 3]) -> Dataset {
        let len: usize = shape.iter().product();
        Dataset::from_u8(shape, vec![1; 2 * len], Some(vec![0, 1]), Split::Train).unwrap()
    }

    #[test]
    fn a_convolutional_spec_must_match_the_images_channels_and_size() {
        let ok = |spec: &str, shape| {
            check_spec_compatible(&ModelSpec::parse(spec).unwrap(), &images(shape))
        };
        assert!(ok("cnn:i3x8x8-c4-p-2", [3, 8, 8]).is_ok());
        assert!(
            ok("cnn:c4-p-2", [1, 1, 784]).is_ok(),
            "flat data of the right length"
        );
        assert!(
            ok("mlp:192-2", [3, 8, 8]).is_ok(),
            "a dense network reads any shape"
        );
        // Same length, other channels: 3x8x8 = 12x4x4.
        let e = ok("cnn:i3x8x8-c4-p-2", [12, 4, 4]).unwrap_err().to_string();
        assert!(
            e.contains("reads 3x8x8 images") && e.contains("12x4x4"),
            "{e}"
        );
        let e = ok("cnn:c4-p-2", [3, 32, 32]).unwrap_err().to_string();
        assert!(e.contains("inputs per sample"), "{e}");
        assert!(
            ok("cnn:i3x8x8-c4-p-1", [3, 8, 8]).is_err(),
            "labels up to 1"
        );
    }
}
