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
use distill::sweep::{
    collect_results, plan, run_sweep, teacher_forward_timing, write_report, ReportContext, Savings,
    SweepConfig, SweepInputs, TeacherSummary,
};
use distill::train::card::ModelCard;
use distill::train::loss::LossKind;
use distill::train::optim::{OptimizerKind, Schedule};

use super::device::DeviceArgs;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

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

/// The TOML file: every key optional, the flags' names.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SweepFile {
    cache: Option<PathBuf>,
    test_cache: Option<PathBuf>,
    data: Option<PathBuf>,
    teacher: Option<PathBuf>,
    students: Option<Vec<String>>,
    temperatures: Option<Vec<f32>>,
    alphas: Option<Vec<f32>>,
    baseline: Option<bool>,
    loss: Option<String>,
    epochs: Option<usize>,
    batch: Option<usize>,
    optimizer: Option<String>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    momentum: Option<f64>,
    schedule: Option<String>,
    seed: Option<u64>,
    jobs: Option<usize>,
    checkpoint_every: Option<u64>,
    window_blocks: Option<usize>,
    out: Option<PathBuf>,
}

fn read_file(path: &Path) -> Result<SweepFile> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut f: SweepFile = toml::from_str(&text).map_err(|e| Error::Config {
        field: "--config".into(),
        message: format!("{}: {e}", path.display()),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    for p in [
        &mut f.cache,
        &mut f.test_cache,
        &mut f.data,
        &mut f.teacher,
        &mut f.out,
    ]
    .into_iter()
    .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    Ok(f)
}

fn required(v: Option<PathBuf>, flag: &str) -> Result<PathBuf> {
    v.ok_or_else(|| Error::Config {
        field: flag.into(),
        message: "is required (on the command line or in --config)".into(),
    })
}

/// Merges the flags over the file over the defaults.
fn config(a: &SweepArgs) -> Result<SweepConfig> {
    let f = match &a.config {
        Some(p) => read_file(p)?,
        None => SweepFile::default(),
    };
    let mut cfg = SweepConfig::new(
        required(a.cache.clone().or(f.cache), "--cache")?,
        required(a.data.clone().or(f.data), "--data")?,
        required(a.out.clone().or(f.out), "--out")?,
    );
    cfg.test_cache = a.test_cache.clone().or(f.test_cache);
    cfg.teacher = a.teacher.clone().or(f.teacher);
    let list = |flag: &Vec<String>, file: Option<Vec<String>>| {
        if flag.is_empty() {
            file.unwrap_or_default()
        } else {
            flag.clone()
        }
    };
    cfg.students = list(&a.students, f.students)
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !a.temperatures.is_empty() {
        cfg.temperatures = a.temperatures.clone();
    } else if let Some(t) = f.temperatures {
        cfg.temperatures = t;
    }
    if !a.alphas.is_empty() {
        cfg.alphas = a.alphas.clone();
    } else if let Some(x) = f.alphas {
        cfg.alphas = x;
    }
    cfg.baseline = a.baseline || f.baseline.unwrap_or(false);
    if let Some(l) = a.loss.clone().or(f.loss) {
        cfg.loss = l.parse::<LossKind>()?;
    }
    cfg.epochs = a.epochs.or(f.epochs).unwrap_or(cfg.epochs);
    cfg.batch_size = a.batch.or(f.batch).unwrap_or(cfg.batch_size);
    if let Some(o) = a.optimizer.clone().or(f.optimizer) {
        cfg.optimizer.kind = o.parse::<OptimizerKind>()?;
    }
    if let Some(s) = a.schedule.clone().or(f.schedule) {
        cfg.optimizer.schedule = s.parse::<Schedule>()?;
    }
    cfg.optimizer.lr = a.lr.or(f.lr).unwrap_or(cfg.optimizer.lr);
    cfg.optimizer.weight_decay = a
        .weight_decay
        .or(f.weight_decay)
        .unwrap_or(cfg.optimizer.weight_decay);
    cfg.optimizer.momentum = a.momentum.or(f.momentum).unwrap_or(cfg.optimizer.momentum);
    cfg.seed = a.seed.or(f.seed).unwrap_or(cfg.seed);
    cfg.jobs = a.jobs.or(f.jobs).unwrap_or(cfg.jobs);
    cfg.checkpoint_every = a
        .checkpoint_every
        .or(f.checkpoint_every)
        .unwrap_or(cfg.checkpoint_every);
    cfg.window_blocks = a
        .window_blocks
        .or(f.window_blocks)
        .unwrap_or(cfg.window_blocks);
    cfg.validate()?;
    Ok(cfg)
}

/// `distill sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    let cfg = config(&a)?;
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
                field: "--test-cache".into(),
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
