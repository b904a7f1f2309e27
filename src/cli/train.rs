//! `distill train`: train a model on hard labels or distil it from a cache.

use std::path::PathBuf;

use clap::Args;
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::{Backend, ModelSpec};
use distill::prune::schedule::GradualSchedule;
use distill::train::loss::{DkdWeights, LossConfig, LossKind, TeacherErrors};
use distill::train::optim::{OptimizerConfig, OptimizerKind, Schedule};
use distill::train::trainer::{self, RunOptions, TrainConfig, TrainSources};

use super::device::DeviceArgs;
use super::{cache as cli_cache, command_line, load_model, prune as cli_prune};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[
    ("loss.kind", "--loss"),
    ("optimizer.kind", "--optimizer"),
];

#[derive(Args)]
pub struct TrainArgs {
    /// Dataset directory (train and test splits).
    #[arg(long)]
    data: PathBuf,
    /// Model spec of the student, e.g. mlp:784-128-10 (default with
    /// --init-from: the spec of that model).
    #[arg(long, alias = "model-spec", required_unless_present = "init_from")]
    student: Option<String>,
    /// Start from this model's weights (a teacher or a pruned model): equal
    /// tensors are copied, narrower layers keep the highest-L1 units; its
    /// mask.safetensors, if any, stays in force during training (only
    /// --prune-schedule grows it).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Gradual magnitude pruning while training (Zhu and Gupta 2017):
    /// final=S[,start=F][,end=F][,every=N][,global]. Sparsity rises along a
    /// cubic from the start mask's (0 without one) to S between fractions F
    /// of the run, masks updated every N steps (defaults start=0, end=0.75,
    /// every=100, per-layer thresholds; global: one threshold).
    #[arg(long)]
    prune_schedule: Option<String>,
    /// Augment the training images: flip, shift=N or flip,shift=N (random
    /// mirror and translation by up to N pixels, drawn per seed, epoch and
    /// sample). With distillation the teacher must see the same images:
    /// use --online-teacher.
    #[arg(long)]
    augment: Option<String>,
    /// Teacher-output cache of the training split (distillation).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Run this teacher model on every batch instead of reading a cache
    /// (online distillation; slower, kept for comparison).
    #[arg(long, conflicts_with = "cache")]
    online_teacher: Option<PathBuf>,
    /// A finished hard-label run of the same student, drawn in curves.png.
    #[arg(long)]
    baseline_run: Option<PathBuf>,
    /// Teacher-output cache of the test split, for student-teacher agreement.
    #[arg(long)]
    test_cache: Option<PathBuf>,
    /// Distillation temperature (the cache is re-tempered to it).
    #[arg(long, alias = "temperature", short = 'T', default_value_t = 4.0)]
    t: f32,
    /// Weight of the hard-label loss; 1 - alpha goes to the soft loss.
    #[arg(long, default_value_t = 1.0)]
    alpha: f32,
    /// Soft loss: kd (KL at temperature T), dkd (decoupled KD), mse (logit
    /// matching), pseudo (teacher argmax as label).
    #[arg(long, default_value = "kd")]
    loss: String,
    /// Weights TCKD,NCKD of --loss dkd.
    #[arg(long, default_value = "1,8")]
    dkd_weights: String,
    /// Where the teacher's top class is not the label: keep its outputs, or
    /// swap the two classes' probabilities.
    #[arg(long, default_value = "keep")]
    teacher_errors: String,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// sgd, adam or adamw.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// constant or cosine.
    #[arg(long, default_value = "cosine")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (model.safetensors, model.json, metrics.jsonl, curves.png).
    #[arg(long)]
    out: PathBuf,
    /// Write a checkpoint every N steps (and at each epoch's end).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    /// Stop after N steps, leaving a checkpoint (to test --resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<u64>,
    /// Blocks per shuffle window when streaming the cache.
    #[arg(long, default_value_t = 8)]
    window_blocks: usize,
    /// Allow approximate re-tempering of a top-k cache.
    #[arg(long)]
    allow_topk_retemper: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn train<D: Backend>(dev: D, a: TrainArgs) -> Result<()> {
    let init = match &a.init_from {
        Some(dir) => Some(cli_prune::init_from(
            dir,
            a.student.as_deref(),
            a.seed,
            a.quiet,
        )?),
        None => None,
    };
    let student = match (&a.student, &init) {
        (Some(s), _) => s.clone(),
        (None, Some(i)) => i.spec.clone(),
        (None, None) => {
            return Err(Error::Config {
                field: "--student".into(),
                message: "a model spec is required (or --init-from DIR)".into(),
            })
        }
    };
    let cfg = TrainConfig {
        spec: student,
        epochs: a.epochs,
        batch_size: a.batch,
        seed: a.seed,
        optimizer: OptimizerConfig {
            kind: a.optimizer.parse::<OptimizerKind>()?,
            lr: a.lr,
            weight_decay: a.weight_decay,
            momentum: a.momentum,
            schedule: a.schedule.parse::<Schedule>()?,
        },
        loss: {
            let l = LossConfig {
                teacher_errors: a.teacher_errors.parse::<TeacherErrors>()?,
                dkd_weights: a.dkd_weights.parse::<DkdWeights>()?,
                ..LossConfig::new(a.loss.parse::<LossKind>()?, a.alpha, a.t)
            };
            if a.cache.is_some() || a.online_teacher.is_some() {
                l
            } else {
                l.validate()?;
                if l.needs_teacher() {
                    return Err(Error::Config {
                        field: "--cache".into(),
                        message: format!(
                            "--alpha {} / --loss {} need the teacher's outputs: pass --cache DIR (built by `distill cache build`)",
                            a.alpha, a.loss
                        ),
                    });
                }
                LossConfig::hard_labels()
            }
        },
        window_blocks: a.window_blocks.max(1),
        allow_topk_retemper: a.allow_topk_retemper,
        augment: match &a.augment {
            Some(text) => Some(Augment::parse(text)?),
            None => None,
        },
        prune_schedule: match &a.prune_schedule {
            Some(text) => Some(GradualSchedule::parse(text)?),
            None => None,
        },
    };
    cfg.validate()?;
    let train_ds = Dataset::open(&a.data, Split::Train)?;
    let test_ds = Dataset::open(&a.data, Split::Test).ok();
    let cache = match &a.cache {
        Some(dir) => Some(cli_cache::open_views(dir)?),
        None => None,
    };
    let mut teacher_accuracy = None;
    let teacher_test_predictions = match (&a.test_cache, &test_ds) {
        (Some(dir), Some(test)) => {
            let tc = cli_cache::open_cache(dir)?;
            teacher_accuracy = tc.manifest().teacher_stats.accuracy;
            Some(cli_cache::teacher_predictions(&tc, test)?)
        }
        (Some(_), None) => {
            return Err(Error::Config {
                field: "--test-cache".into(),
                message: format!("{} has no test split to pair it with", a.data.display()),
            })
        }
        _ => None,
    };
    let online = match &a.online_teacher {
        Some(dir) => Some(load_model(dir, dev.clone())?),
        None => None,
    };
    let sources = TrainSources {
        train: &train_ds,
        test: test_ds.as_ref(),
        cache: cache.as_ref(),
        cache_dir: a.cache.clone(),
        teacher_test_predictions,
        online_teacher: online.as_ref(),
    };
    let opts = RunOptions {
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
        command: command_line(),
        data_dir: a.data.clone(),
        init: init.as_ref().map(|i| i.tensors.clone()),
        masks: init.and_then(|i| i.masks),
        baseline_metrics: match &a.baseline_run {
            Some(dir) => Some(distill::report::card::read_metrics(
                &dir.join("metrics.jsonl"),
            )?),
            None => None,
        },
        teacher_accuracy,
    };
    if !a.quiet {
        eprintln!(
            "training {} ({} parameters) on {} with {} samples, {}",
            cfg.spec,
            ModelSpec::parse(&cfg.spec)?.param_count(),
            dev.describe(),
            train_ds.len(),
            match &a.cache {
                Some(c) => format!(
                    "distilling from {} (loss {}{}, T {}, alpha {}{})",
                    c.display(),
                    cfg.loss.kind,
                    if cfg.loss.kind == LossKind::Dkd {
                        format!(
                            " {},{}",
                            cfg.loss.dkd_weights.target, cfg.loss.dkd_weights.non_target
                        )
                    } else {
                        String::new()
                    },
                    cfg.loss.temperature,
                    cfg.loss.alpha,
                    if cfg.loss.teacher_errors == TeacherErrors::Swap {
                        ", teacher errors swapped"
                    } else {
                        ""
                    }
                ),
                None => "hard labels only".to_string(),
            }
        );
    }
    let outcome = trainer::train(dev, &cfg, &sources, &a.out, &opts)?;
    if !outcome.finished {
        println!(
            "stopped after {} steps; checkpoint in {}",
            a.stop_after_steps.unwrap_or(0),
            a.out.display()
        );
        return Ok(());
    }
    match outcome.card.test_accuracy {
        Some(acc) => println!(
            "final test accuracy {:.2}% ({})",
            100.0 * acc,
            a.out.display()
        ),
        None => println!(
            "trained; no labelled test split to evaluate ({})",
            a.out.display()
        ),
    }
    Ok(())
}
