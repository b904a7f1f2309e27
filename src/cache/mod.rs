//! The teacher-output cache (phase one): encodings, shard format, writer, reader.
//!
//! The teacher runs once over a dataset; its log-probabilities at temperature
//! `T` are written by [`CacheWriter`] into immutable, zstd-compressed,
//! checksummed shard files plus a `manifest.json` that is written last and is
//! the commit point. Students are then trained by streaming the cache with
//! [`CacheReader`] (memory-mapped, decoded in parallel, deterministic shuffled
//! epochs resumable mid-epoch). The byte layout is specified in `FORMAT.md`.
//!
//! Submodules, one per concept:
//! - [`codec`]: how one record's log-probabilities are stored (`f32`, `f16`,
//!   `q8`, `topk:K`), decoding and re-tempering.
//! - [`format`](mod@format): the shard byte layout, header, block index, limits.
//! - [`manifest`]: `manifest.json` (serde) and its validation.
//! - [`writer`]: building (and resuming) a cache.
//! - [`reader`]: opening, verifying, decoding and streaming a cache.
//! - [`order`]: the deterministic epoch order.
//! - [`settings`]: a build's settings, its build key and shard names.
//! - [`part`]: one part of a build cut into shard-aligned ranges, `part.json`.
//! - [`merge`]: joining the parts of a build into one cache.
//! - [`ensemble`]: several teachers' caches combined into one.
//!
//! ```no_run
//! use distill::cache::*;
//! # fn main() -> Result<(), CacheError> {
//! let dir = std::path::Path::new("cache/mnist-t4");
//! let meta = CacheMeta {
//!     teacher: TeacherInfo { spec: "mlp:784-1200-1200-10".into(), fingerprint: "ab12".into(), source: "teacher.safetensors".into(), normalization: None },
//!     dataset: DatasetInfo { fingerprint: "cd34".into(), split: "train".into(), num_samples: 2, view: None },
//!     num_classes: 3, has_labels: true, temperature: 4.0, encoding: Encoding::Q8,
//! };
//! let mut w = CacheWriter::create_or_resume(dir, meta, WriterOptions::default())?;
//! let logits = [1.0f32, 2.0, 3.0, 0.5, 0.1, -1.0];
//! let mut lp = vec![0.0; 6];
//! log_softmax_tempered(&logits, 3, 4.0, &mut lp)?;
//! let start = w.resume_from() as usize; // > 0 when resuming an interrupted build
//! let labels = [2u32, 0];
//! w.push_batch(start as u64, Some(&labels[start..]), &lp[start * 3..])?;
//! let manifest = w.finish()?;
//! println!("mean KL {:.2e}", manifest.fidelity.mean_kl);
//! // SAFETY: nothing modifies the cache files while `reader` is alive.
//! let reader = unsafe { CacheReader::open(dir)? };
//! reader.check_pairing("cd34", 2, Some(3))?;
//! let all = reader.read_all(4.0, false)?;
//! # Ok(()) }
//! ```

pub mod codec;
pub mod ensemble;
pub mod format;
pub mod manifest;
pub mod merge;
pub mod order;
pub mod part;
pub mod reader;
pub mod settings;
pub mod views;
pub mod writer;

use std::path::PathBuf;

pub use codec::Encoding;
pub use manifest::{
    DatasetInfo, Fidelity, Manifest, ShardEntry, TeacherInfo, TeacherStats, ViewInfo,
};
pub use part::{PartManifest, PartRange, PartSpec};
pub use reader::{
    CacheReader, CacheStats, DecodedTargets, EpochBatches, EpochPlan, TargetBatch, VerifyReport,
};
pub use settings::BuildSpec;
pub use views::CacheViews;
pub(crate) use writer::refuse_foreign_dir;
pub use writer::{import_logits, CacheMeta, CacheWriter, WriterOptions};

/// Errors from building, opening, verifying or reading a cache.
///
/// Every message names the file (and shard, block or field where there is
/// one), says what is wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An operating-system error on a file or directory.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk that do not follow FORMAT.md (damaged or not a cache file).
    #[error("{path}: {location}: {message}; the cache is damaged: rebuild it (distill cache build) or restore it from a copy")]
    Corrupt {
        path: PathBuf,
        location: String,
        message: String,
    },
    /// A shard or manifest written by a format version this build cannot read.
    #[error("{path}: format version {found} is not supported (this build reads versions {oldest} to {current}); {advice}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        oldest: u32,
        current: u32,
        advice: &'static str,
    },
    /// The cache was built for other data than the caller's.
    #[error("{path}: cache does not match the data: {field} is {cached} in the cache but {given} here; rebuild the cache for this dataset or pass the dataset it was built from")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        cached: String,
        given: String,
    },
    /// An existing (finished or unfinished) cache in the directory was built with other settings.
    #[error("{path}: this directory holds {what} with a different {field} ({existing} there, {requested} requested); use another directory, rerun with the same settings, or replace it (`--overwrite`)")]
    SettingsDiffer {
        path: PathBuf,
        /// "a cache built", or "an unfinished build (stopped before it
        /// committed)".
        what: &'static str,
        field: &'static str,
        existing: String,
        requested: String,
    },
    /// Parts that cannot be merged (missing, duplicated, overlapping,
    /// foreign, unfinished or damaged), or an output that must not be
    /// touched; `what` names the part (its directory) or the output.
    #[error("{what}: cannot merge: {message}")]
    Merge { what: String, message: String },
    /// An output directory that already holds files of something else
    /// (a model, a dataset): a cache is written into a directory of its own.
    #[error("{path}: not a cache directory: it holds {found}; write the cache into a new or empty directory")]
    NotACacheDir { path: PathBuf, found: String },
    /// A second writer tried to build into a directory that is being written.
    #[error("{path}: another process is writing this cache (the lock is held); wait for it to finish or use another directory")]
    Locked { path: PathBuf },
    /// A non-finite input value.
    #[error("{what} {row}, class {class}: value is {value}; teacher outputs must be finite (check the teacher for overflow or a too-small temperature)")]
    NonFinite {
        what: &'static str,
        row: u64,
        class: usize,
        value: f32,
    },
    /// Caller input that breaks an API contract (lengths, order, ranges).
    #[error("{what}: {message}")]
    InvalidInput { what: String, message: String },
    /// Top-k caches hold the teacher at one temperature only.
    #[error("{path}: cache stores {stored_values} log-probabilities at T={stored}, which cannot be re-tempered exactly to T={requested}; use T={stored}, rebuild the cache with a dense encoding (f32, f16, q8 or hq:N), or allow the approximation (`distill train --allow-topk-retemper`; a sweep cannot, so it takes such a cache only at its own T)")]
    TopKRetemper {
        path: PathBuf,
        /// What the records hold (`top-5`).
        stored_values: String,
        stored: f32,
        requested: f32,
    },
}

impl CacheError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        CacheError::Io {
            path: path.into(),
            action,
            source,
        }
    }
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        CacheError::Corrupt {
            path: path.into(),
            location: location.into(),
            message: message.into(),
        }
    }
    pub(crate) fn input(what: impl Into<String>, message: impl Into<String>) -> Self {
        CacheError::InvalidInput {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for results carrying [`CacheError`].
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

impl From<crate::fsutil::FsError> for CacheError {
    fn from(e: crate::fsutil::FsError) -> Self {
        CacheError::Io {
            path: e.path,
            action: e.action,
            source: e.source,
        }
    }
}

impl From<crate::numeric::NumericError> for CacheError {
    fn from(e: crate::numeric::NumericError) -> Self {
        use crate::numeric::NumericError;
        match e {
            NumericError::NonFinite { row, class, value } => CacheError::NonFinite {
                what: "logits row",
                row,
                class,
                value,
            },
            NumericError::Invalid { what, message } => CacheError::input(what, message),
        }
    }
}

/// Row-wise `log_softmax(logits / temperature)`: what a cache record holds,
/// and what the online teacher computes (one function serves both phases).
pub fn log_softmax_tempered(
    logits: &[f32],
    classes: usize,
    temperature: f32,
    out: &mut [f32],
) -> Result<()> {
    Ok(crate::numeric::log_softmax_tempered(
        logits,
        classes,
        temperature,
        out,
    )?)
}
