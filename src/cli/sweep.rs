//! `distill sweep`: many students against one teacher cache, then a report.
//!
//! Flags and a TOML file (`--config sweep.toml`, the same keys as the flags,
//! e.g. `students = ["mlp:784-32-10"]`, `test-cache = "..."`) are merged by
//! the library ([`SweepConfig::resolve`]), flags winning, and validated
//! before any work starts; the device dispatch then runs
//! [`distill::sweep::run_and_report`], and [`print`] shows what it did.

use std::path::PathBuf;

use clap::Args;
use distill::error::Result;
use distill::sweep::{SweepConfig, SweepDone, SweepSettings};

use super::device::{with_device, DeviceArgs, Dispatch};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[
    ("batch_size", "--batch"),
    ("optimizer.kind", "--optimizer"),
    ("loss.kind", "--loss"),
    ("loss.alpha", "--alphas"),
    ("loss.temperature", "--temperatures"),
];

#[derive(Args)]
pub struct SweepArgs {
    /// A TOML file with the same keys as these flags (flags given here win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Teacher-output cache of the training split.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Teacher-output cache of the test split (student-teacher agreement,
    /// teacher accuracy).
    #[arg(long)]
    test_cache: Option<PathBuf>,
    /// Dataset directory (train and test splits).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Teacher model directory, for its forward-pass timing and accuracy
    /// (default: the one the cache was built from, if it is still there).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Student model specs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    students: Vec<String>,
    /// Distillation temperatures, comma-separated (default: `distill
    /// train`'s with a cache, chosen on validation).
    #[arg(long, value_delimiter = ',')]
    temperatures: Vec<f32>,
    /// Hard-label loss weights, comma-separated (default: `distill train`'s
    /// with a cache, chosen on validation; 1 is the baseline's, see --baseline).
    #[arg(long, value_delimiter = ',')]
    alphas: Vec<f32>,
    /// Also train each student on hard labels alone, once.
    #[arg(long)]
    baseline: bool,
    /// Soft loss: kd, mse or pseudo (default kd).
    #[arg(long)]
    loss: Option<String>,
    /// Epochs per run (default 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (default 128).
    #[arg(long)]
    batch: Option<usize>,
    /// sgd, adam or adamw (default adam).
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate (default 1e-3).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// SGD momentum (default 0.9).
    #[arg(long)]
    momentum: Option<f64>,
    /// constant or cosine (default cosine).
    #[arg(long)]
    schedule: Option<String>,
    /// Seed of every run (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Runs trained at the same time (default 1: training already uses every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Checkpoint every N steps, so a killed run continues (default 200).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Blocks per shuffle window when streaming the cache (default 8).
    #[arg(long)]
    window_blocks: Option<usize>,
    /// Fraction of the training split every run holds out for validation,
    /// on which the report chooses T, alpha and the epoch (default 0.1).
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Output folder: runs/NAME/ per run, report.md, results.csv, plots.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// A validated sweep, ready for a device.
pub(crate) struct SweepJob {
    pub config: SweepConfig,
    pub quiet: bool,
}

/// `distill sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    let config = SweepConfig::resolve(settings(&a), a.config.as_deref())?;
    let job = SweepJob {
        config,
        quiet: a.quiet,
    };
    with_device(&a.device.device, Dispatch::Sweep(Box::new(job)))
}

/// The settings the flags give (a flag not given is `None`).
fn settings(a: &SweepArgs) -> SweepSettings {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let nums = |v: &Vec<f32>| (!v.is_empty()).then(|| v.clone());
    SweepSettings {
        cache: a.cache.clone(),
        test_cache: a.test_cache.clone(),
        data: a.data.clone(),
        teacher: a.teacher.clone(),
        students: list(&a.students),
        temperatures: nums(&a.temperatures),
        alphas: nums(&a.alphas),
        baseline: a.baseline.then_some(true),
        loss: a.loss.clone(),
        epochs: a.epochs,
        batch: a.batch,
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        weight_decay: a.weight_decay,
        momentum: a.momentum,
        schedule: a.schedule.clone(),
        seed: a.seed,
        jobs: a.jobs,
        checkpoint_every: a.checkpoint_every,
        window_blocks: a.window_blocks,
        val_fraction: a.val_fraction,
        out: a.out.clone(),
    }
}

/// What a finished sweep prints: the counts, then the report's files.
pub(crate) fn print(done: &SweepDone) {
    println!(
        "sweep: {} runs, {} trained, {} already finished, in {:.1}s",
        done.runs,
        done.trained,
        done.runs - done.trained,
        done.seconds
    );
    for f in &done.files {
        println!("{}", f.display());
    }
}
