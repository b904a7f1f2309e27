//! The teacher-output cache (phase one): encodings, shard format, writer, reader.

/// Errors from building, opening, verifying or reading a cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {message}")]
    Invalid { path: std::path::PathBuf, message: String },
}
