//! Training (phase two): a student learns from hard labels, from a
//! teacher-output cache, or from a teacher run online.
//!
//! One file per concept:
//! - [`config`]: what defines a run ([`TrainConfig`], with the defaults)
//!   and the options that do not change its result ([`RunOptions`]);
//! - [`sources`]: what a run reads ([`TrainSources`]), opened from paths,
//!   and checked against the config;
//! - [`fit`]: the loop ([`train`]);
//! - [`loader`]: the loader thread that produces host batches in the
//!   run's deterministic order;
//! - [`validation`]: the samples a run holds out of training to choose
//!   settings on;
//! - [`checkpoint`]: the state a killed run resumes from; [`outdir`]: what
//!   a run may write over in its output directory;
//! - [`pruning`]: masks in force and the gradual-pruning hook;
//! - [`loss`], [`optim`]: the objectives and the optimizers; [`dist`]: the
//!   correlation loss of DIST, one of the objectives;
//! - [`eval`]: accuracy, loss and agreement on a dataset;
//! - [`device_check`]: a compute device checked against the CPU, op by op;
//! - [`compare`]: one row per model for `distill eval` and `distill prune`
//!   (accuracy, size, FLOPs, throughput, latency); [`paired`]: two models
//!   on the same images, image by image (McNemar's test); [`recipes`]:
//!   recipes of several seeds each, scored and compared (`eval --arm`);
//! - [`best`]: the model of a run's best validation epoch (`keep_best`);
//! - [`average`]: the moving average of the weights a run may evaluate
//!   and write instead of its last step's (`ema`);
//! - [`metrics`], [`card`]: `metrics.jsonl` and `model.json`.
//!
//! [`trainer`] keeps the paths of the types from before the split.

pub mod average;
pub mod best;
pub mod card;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod device_check;
pub mod dist;
pub mod eval;
pub mod fit;
pub mod loader;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod outdir;
pub mod paired;
pub mod pruning;
pub mod recipes;
pub mod sources;
pub mod trainer;
pub mod validation;

pub use config::{RunOptions, TrainConfig};
pub use fit::{snapshot_dir, train, TrainOutcome};
pub use sources::{SourcePaths, TrainSources};
