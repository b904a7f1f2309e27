//! distill: offline knowledge distillation.
//!
//! The teacher runs **once** (phase one, [`cache`]): its temperature-softened
//! log-probabilities are written to compressed, checksummed, memory-mapped
//! shards. Students are then trained (phase two, [`train`]) by streaming those
//! shards, mixing hard labels and soft labels, as many times, for as many
//! student architectures, temperatures and loss weights as wanted.
//!
//! Modules, one per concept:
//! - [`data`]: datasets (IDX, `.npy`, safetensors, CIFAR), fingerprints,
//!   normalisation, augmentation, batching.
//! - [`cache`]: the teacher-output cache: encodings, shard format, writer, reader.
//! - [`model`]: run-time model specs, the dfdx network and its parameter store,
//!   safetensors I/O with PyTorch names.
//! - [`train`]: the training loop, its loader, optimizers, losses,
//!   evaluation, checkpoints, metrics and model cards.
//! - [`prune`]: parameter transfer from a teacher, structured and
//!   unstructured pruning, masks.
//! - [`numeric`]: log-softmax at a temperature, logsumexp, argmax (one tie rule).
//! - [`fsutil`]: atomic file replacement and directory syncs.
//! - [`simd`]: hot loops run with the widest vector instructions the CPU has.
//! - [`report`]: training-curve plots.
//! - [`error`]: the library's error type, in the library's own terms.
//! - [`teacher`]: running a teacher over a dataset into a cache.
//! - [`sweep`]: many students against one cache, skipping finished runs, and
//!   the report (table, CSV, plots) rebuilt from their cards.
//!
//! Imports point down the layers written in ARCHITECTURE.md (checked by
//! `tests/layers.rs`). The `distill` binary (`src/main.rs`, `src/cli/`) only
//! parses arguments, calls these, and names flags in their errors.

pub mod cache;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod model;
pub mod numeric;
pub mod prune;
pub mod report;
pub mod simd;
pub mod sweep;
pub mod teacher;
pub mod train;

pub use error::{Error, Result};
