//! The `distill` command line: parses arguments, validates them into the
//! library's typed configs, and calls the library. Exit code 0 on success,
//! 2 on any error (printed with its chain to stderr).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::{Backend, ModelSpec, Network};
use distill::prune::schedule::GradualSchedule;
use distill::train::loss::{DkdWeights, LossConfig, LossKind, TeacherErrors};
use distill::train::optim::{OptimizerConfig, OptimizerKind, Schedule};
use distill::train::trainer::{self, RunOptions, TrainConfig, TrainSources};

mod cli_cache;
mod cli_prune;
mod cli_sweep;

/// Training allocates and frees the same large buffers (image patches, their
/// gradients) every step. glibc serves those with fresh `mmap`s and returns
/// them at once, so every step pays page faults on tens of megabytes; keeping
/// them on the heap made a CNN epoch 22% faster here.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once at start,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Offline knowledge distillation: run the teacher once, cache its soft
/// labels, train many students from the cache.
#[derive(Parser)]
#[command(name = "distill", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on hard labels, or distil it from a teacher cache.
    Train(TrainArgs),
    /// Evaluate one or more models on a dataset split.
    Eval(EvalArgs),
    /// Model specs: `distill model info SPEC`.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Datasets: `distill data info --data DIR`.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The teacher-output cache: build, import, inspect, verify.
    Cache {
        #[command(subcommand)]
        command: cli_cache::CacheCommand,
    },
    /// Train many students from one cache (every T and alpha, with
    /// baselines) and write a report comparing them.
    Sweep(Box<cli_sweep::SweepArgs>),
    /// Prune a model: l1-unstructured (masks) or l1-structured (a smaller spec).
    Prune(cli_prune::PruneArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print the layers, parameter count and forward FLOPs of a spec.
    Info {
        /// e.g. mlp:784-128-10 or cnn:c32-p-c64-p-f128-10
        spec: String,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Print each split's size, shape, classes and fingerprint.
    Info {
        /// Dataset directory (IDX, .npy or safetensors files).
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Compute device: cpu, or cuda (needs a binary built with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
struct TrainArgs {
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
    device: DeviceArgs,
}

#[derive(Args)]
struct EvalArgs {
    /// Model directory (model.safetensors + model.json); repeat to compare.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// train or test.
    #[arg(long, default_value = "test")]
    split: String,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Model {
            command: ModelCommand::Info { spec },
        } => {
            let spec = ModelSpec::parse(&spec)?;
            print!("{}", spec.describe());
            println!("pytorch: {}", spec.torch_code());
        }
        Command::Data {
            command: DataCommand::Info { data },
        } => {
            for split in [Split::Train, Split::Test] {
                match Dataset::open(&data, split) {
                    Ok(ds) => {
                        let [c, h, w] = ds.sample_shape();
                        println!(
                            "{split}: {} samples of {c}x{h}x{w}, {} classes, fingerprint {} ({})",
                            ds.len(),
                            ds.num_classes()
                                .map_or("no labels".to_string(), |k| k.to_string()),
                            ds.fingerprint(),
                            ds.source().display()
                        );
                    }
                    Err(e) => println!("{split}: {e}"),
                }
            }
        }
        Command::Train(args) => with_device(&args.device.device.clone(), Dispatch::Train(args))?,
        Command::Eval(args) => with_device(&args.device.device.clone(), Dispatch::Eval(args))?,
        Command::Cache { command } => cli_cache::run(command)?,
        Command::Sweep(args) => cli_sweep::run(*args)?,
        Command::Prune(args) => cli_prune::run(args)?,
    }
    Ok(())
}

pub(crate) enum Dispatch {
    Train(TrainArgs),
    Eval(EvalArgs),
    CacheBuild(cli_cache::BuildArgs),
}

/// Runs a command on the device named by `--device`.
pub(crate) fn with_device(name: &str, what: Dispatch) -> Result<()> {
    match name {
        "cpu" => dispatch(dfdx::prelude::Cpu::default(), what),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let dev = dfdx::prelude::Cuda::try_build(0, 0)
                    .map_err(|e| Error::Device(format!("cannot open cuda:0: {e:?}")))?;
                dispatch(dev, what)
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(Error::Config {
                    flag: "--device".into(),
                    message:
                        "cuda: this binary was built without the `cuda` feature; rebuild with \
                              `cargo build --release --features cuda` (see README.md)"
                            .into(),
                })
            }
        }
        other => Err(Error::Config {
            flag: "--device".into(),
            message: format!("'{other}' is not one of cpu, cuda"),
        }),
    }
}

fn dispatch<D: Backend>(dev: D, what: Dispatch) -> Result<()> {
    match what {
        Dispatch::Train(args) => train(dev, args),
        Dispatch::Eval(args) => eval(dev, args),
        Dispatch::CacheBuild(args) => cli_cache::build(dev, args),
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn train<D: Backend>(dev: D, a: TrainArgs) -> Result<()> {
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
                flag: "--student".into(),
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
                        flag: "--cache".into(),
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
                flag: "--test-cache".into(),
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

/// Loads a model directory (or a .safetensors file).
pub fn load_model<D: Backend>(path: &Path, dev: D) -> Result<Network<D>> {
    let file = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    distill::model::io::load_weights(&file, None, dev)
}

fn eval<D: Backend>(dev: D, a: EvalArgs) -> Result<()> {
    let split: Split = a.split.parse().map_err(|_| Error::Config {
        flag: "--split".into(),
        message: format!("'{}' is not one of train, test", a.split),
    })?;
    let data = Dataset::open(&a.data, split)?;
    cli_prune::eval_table(dev, &a.model, &data, a.batch)
}
