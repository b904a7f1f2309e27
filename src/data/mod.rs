//! Datasets: reading Fashion-MNIST style IDX files, `.npy` and safetensors arrays,
//! content fingerprints, and filling input batches.

/// Errors from reading or validating a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    Invalid { path: std::path::PathBuf, message: String },
}
