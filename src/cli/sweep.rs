//! `distill sweep`: many students against one teacher cache, then a report.
//!
//! Flags and a TOML file (`--config sweep.toml`, the same keys as the flags,
//! e.g. `students = ["mlp:784-32-10"]`, `test-cache = "..."`) are merged,
//! flags winning, and validated into a [`SweepConfig`] before any work
//! starts. Relative paths in the TOML file are relative to the file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use distill::cache::CacheReader;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::{Backend, ModelSpec};
use distill::report::card::ModelCard;
use distill::sweep::{
    collect_results, plan, run_sweep, teacher_forward_timing, write_report, ReportContext, Savings,
    SweepConfig, SweepInputs, SweepSettings, TeacherSummary,
};

use super::device::DeviceArgs;

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
    /// Distillation temperatures, comma-separated (default 4).
    #[arg(long, value_delimiter = ',')]
    temperatures: Vec<f32>,
    /// Hard-label loss weights, comma-separated (default 0.5).
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
    /// Output folder: runs/NAME/ per run, report.md, results.csv, plots.
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceArgs,
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
        out: a.out.clone(),
    }
}

/// `distill sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    let cfg = SweepConfig::resolve(settings(&a), a.config.as_deref())?;
    match a.device.device.as_str() {
        "cpu" => sweep_on(dfdx::prelude::Cpu::default(), &cfg, a.quiet),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let dev = dfdx::prelude::Cuda::try_build(0, 0)
                    .map_err(|e| Error::Device(format!("cannot open cuda:0: {e:?}")))?;
                sweep_on(dev, &cfg, a.quiet)
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(Error::Config {
                    field: "--device".into(),
                    message: "cuda: this binary was built without the `cuda` feature; rebuild \
                              with `cargo build --release --features cuda` (see README.md)"
                        .into(),
                })
            }
        }
        other => Err(Error::Config {
            field: "--device".into(),
            message: format!("'{other}' is not one of cpu, cuda"),
        }),
    }
}

/// The teacher directory: `--teacher`, else the cache's recorded source if
/// it still holds weights.
fn teacher_dir(cfg: &SweepConfig, cache: &CacheReader) -> Option<PathBuf> {
    match &cfg.teacher {
        Some(t) => Some(t.clone()),
        None => {
            let p = PathBuf::from(&cache.manifest().teacher.source);
            p.join("model.safetensors").exists().then_some(p)
        }
    }
}

fn sweep_on<D: Backend>(dev: D, cfg: &SweepConfig, quiet: bool) -> Result<()> {
    let start = Instant::now();
    let runs = plan(cfg)?;
    let train = Dataset::open(&cfg.data, Split::Train)?;
    let test = Dataset::open(&cfg.data, Split::Test).ok();
    let cache = super::cache::open_views(&cfg.cache)?;
    let test_cache = match &cfg.test_cache {
        Some(dir) => Some(super::cache::open_cache(dir)?),
        None => None,
    };
    let teacher_test_predictions = match (&test_cache, &test) {
        (Some(tc), Some(t)) => Some(super::cache::teacher_predictions(tc, t)?),
        (Some(_), None) => {
            return Err(Error::Config {
                field: "test_cache".into(),
                message: format!("{} has no test split to pair it with", cfg.data.display()),
            })
        }
        _ => None,
    };
    let teacher_path = teacher_dir(cfg, cache.first());
    let teacher = match &teacher_path {
        Some(p) => Some(super::load_model(p, dev.clone())?),
        None => None,
    };
    if !quiet {
        eprintln!(
            "sweep: {} runs ({} students) from {} on {} into {}",
            runs.len(),
            cfg.students.len(),
            cfg.cache.display(),
            dev.describe(),
            cfg.out.display()
        );
    }
    let inputs = SweepInputs {
        train: &train,
        test: test.as_ref(),
        cache: &cache,
        teacher_test_predictions,
    };
    let summary = run_sweep(
        dev.clone(),
        cfg,
        &runs,
        &inputs,
        &super::command_line(),
        quiet,
    )?;

    // The report, from the cards.
    let results = collect_results(&cfg.out, &runs)?;
    let timing = match &teacher {
        Some(t) => Some(teacher_forward_timing(
            t,
            &train,
            &cfg.out,
            &dev.describe(),
        )?),
        None => None,
    };
    let savings = timing.as_ref().map(|t| Savings::new(t, &results));
    let teacher_summary = teacher_summary(
        cache.first(),
        test_cache.as_ref(),
        test.as_ref(),
        teacher_path.as_deref(),
    );
    let m = cache.first().manifest();
    let ctx = ReportContext {
        cfg,
        teacher: teacher_summary.as_ref(),
        savings: savings.as_ref(),
        cache_description: format!(
            "{} teacher outputs at T {}, {} encoding{}",
            m.teacher.spec,
            m.temperature,
            m.encoding,
            match cache.view_info() {
                Some(v) => format!(", {} augmented views ({})", v.views, v.augment),
                None => String::new(),
            }
        ),
    };
    let files = write_report(&results, &ctx)?;
    println!(
        "sweep: {} runs, {} trained, {} already finished, in {:.1}s",
        runs.len(),
        summary.trained(),
        runs.len() - summary.trained(),
        start.elapsed().as_secs_f64()
    );
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

fn teacher_summary(
    cache: &CacheReader,
    test_cache: Option<&CacheReader>,
    test: Option<&Dataset>,
    teacher_path: Option<&Path>,
) -> Option<TeacherSummary> {
    let spec = ModelSpec::parse(&cache.manifest().teacher.spec).ok()?;
    let card = teacher_path.and_then(|p| ModelCard::load(&p.join("model.json")).ok());
    let from_test_cache = test_cache.and_then(|tc| {
        tc.manifest().teacher_stats.accuracy.map(|a| {
            (
                a,
                format!("on this test split, from {}", tc.dir().display()),
            )
        })
    });
    let from_card = card.as_ref().and_then(|c| {
        let same_test = match (c.data.as_ref(), test) {
            (Some(d), Some(t)) => d.test_fingerprint.as_deref() == Some(t.fingerprint().0.as_str()),
            _ => false,
        };
        c.test_accuracy.map(|a| {
            let on = if same_test {
                "on this test split"
            } else {
                "on its own test data, not this test split"
            };
            (a, format!("{on}, from the teacher's card"))
        })
    });
    let (accuracy, accuracy_source) = match from_test_cache.or(from_card) {
        Some((a, s)) => (Some(a), s),
        None => (None, "accuracy unknown: pass --test-cache".to_string()),
    };
    Some(TeacherSummary {
        spec: spec.to_string(),
        parameters: spec.param_count(),
        flops_per_sample: spec.flops(),
        accuracy,
        accuracy_source,
    })
}
