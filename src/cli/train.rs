//! `distill train`: train a model on hard labels or distil it from a cache.

use std::path::{Path, PathBuf};

use clap::Args;
use distill::data::augment::Augment;
use distill::data::Dataset;
use distill::error::{Error, Result};
use distill::model::{Backend, ModelDir, ModelSpec};
use distill::prune::schedule::GradualSchedule;
use distill::train::card::ModelCard;
use distill::train::config::{DISTILL_ALPHA, DISTILL_TEMPERATURE};
use distill::train::loss::{DkdWeights, LossConfig, LossKind, TeacherErrors};
use distill::train::metrics::read_metrics;
use distill::train::optim::{OptimizerConfig, OptimizerKind, Schedule};
use distill::train::outdir::{finished_run, RunInputs};
use distill::train::validation::{TeacherOverlap, TeacherSplit, ValFold};
use distill::train::{RunOptions, SourcePaths, TrainConfig};

use super::device::DeviceArgs;
use super::{command_line, prune as cli_prune};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[
    ("spec", "--student"),
    ("batch_size", "--batch"),
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
    #[arg(long, alias = "model-spec", required_unless_present = "init_from", value_parser = trimmed)]
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
    /// every=100, per-layer thresholds; global: one threshold). Masks only
    /// grow: an S below the start mask's sparsity is refused.
    #[arg(long)]
    prune_schedule: Option<String>,
    /// Augment the training images: flip, shift=N, crop=N, warp=A,
    /// cutout=S, noise=S, mixup=A, cutmix=A, comma-separated (random mirror,
    /// translation by up to N pixels, padded crop, smooth warp of A pixels'
    /// deviation, an S by S square set to 0, Gaussian noise of standard
    /// deviation S, mixing
    /// with a partner sample at a Beta(A, A) weight; drawn per seed, epoch
    /// and sample). With distillation the
    /// teacher must see the same images: a view set built with the same
    /// augmentation (the cache's is used when this is left out), or
    /// --online-teacher.
    #[arg(long)]
    augment: Option<String>,
    /// Input normalisation, stored with the model and applied at the start
    /// of its forward pass: auto (per-channel mean and std of the training
    /// split; with --init-from, the starting model's own), none, or
    /// MEANS/STDS per channel, e.g. 0.4914,0.4822,0.4465/0.247,0.2435,0.2616.
    #[arg(long, default_value_t = TrainConfig::default().normalize.to_string())]
    normalize: String,
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
    /// Distillation temperature (the cache is re-tempered to it). Default
    /// with --cache or --online-teacher: the one chosen on validation
    /// (README, "Validation, and defaults that distil").
    #[arg(long, short = 'T', alias = "t", allow_negative_numbers = true, value_parser = super::parse_temperature)]
    temperature: Option<f32>,
    /// Weight of the hard-label loss; 1 - alpha goes to the soft loss.
    /// Default with --cache or --online-teacher: the one chosen on
    /// validation; 1 (labels only, which leaves the teacher unread) is
    /// refused there. Without a teacher only 1 is allowed. The pseudo loss
    /// has no hard-label term: 0, its default, is the only value it takes.
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f32>,
    /// Soft loss: kd (KL at temperature T), dkd (decoupled KD), dist
    /// (correlation of probabilities per image and per class), mse (logit
    /// matching), pseudo (teacher argmax as label).
    #[arg(long, default_value_t = TrainConfig::default().loss.kind.to_string())]
    loss: String,
    /// Weights TCKD,NCKD of --loss dkd.
    #[arg(long, default_value_t = TrainConfig::default().loss.dkd_weights.to_string())]
    dkd_weights: String,
    /// Where the teacher's top class is not the label: keep its outputs, or
    /// swap the two classes' probabilities.
    #[arg(long, default_value_t = TrainConfig::default().loss.teacher_errors.to_string())]
    teacher_errors: String,
    /// Logit standardisation (Sun et al., CVPR 2024): z-score the student's
    /// and the teacher's logits per row before the kd loss's softmax at T,
    /// so the student matches the teacher's logit relations, not their
    /// scale. T then sets the softness of standardised logits (about 1-4).
    #[arg(long)]
    logit_standardize: bool,
    /// Multiplies the soft loss: alpha * CE + (1 - alpha) * SCALE * soft.
    /// The standardised logits' gradient shrinks by the student's logit
    /// spread, which the paper's recipes make up with a weight of about 9.
    #[arg(long, default_value_t = TrainConfig::default().loss.soft_scale, allow_negative_numbers = true)]
    soft_scale: f32,
    #[arg(long, default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainConfig::default().batch_size)]
    batch: usize,
    /// sgd, adam or adamw.
    #[arg(long, default_value_t = TrainConfig::default().optimizer.kind.to_string())]
    optimizer: String,
    #[arg(long, default_value_t = TrainConfig::default().optimizer.lr, allow_negative_numbers = true)]
    lr: f64,
    #[arg(long, default_value_t = TrainConfig::default().optimizer.weight_decay, allow_negative_numbers = true)]
    weight_decay: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = TrainConfig::default().optimizer.momentum, allow_negative_numbers = true)]
    momentum: f64,
    /// constant or cosine.
    #[arg(long, default_value_t = TrainConfig::default().optimizer.schedule.to_string())]
    schedule: String,
    /// Average the weights over training: an exponential moving average
    /// with this decay per step (e.g. 0.999, about the last 1,000 steps).
    /// The run evaluates, snapshots and writes the average, not the last
    /// step's weights.
    #[arg(long, value_name = "DECAY", allow_negative_numbers = true)]
    ema: Option<f64>,
    #[arg(long, default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Fraction of the training split held out for validation: drawn from
    /// --seed, never trained on, evaluated after every epoch (metrics,
    /// card, curves). 0 trains on every sample.
    #[arg(long, default_value_t = TrainConfig::default().val_fraction, allow_negative_numbers = true)]
    val_fraction: f64,
    /// Hold out fold K of N of the training split instead of
    /// --val-fraction: the N folds of one --seed partition the split, so N
    /// runs (K = 0..N-1) each leave out a different part (teachers for
    /// `cache ensemble --out-of-fold`).
    #[arg(long, value_name = "K/N", conflicts_with = "val_fraction")]
    val_fold: Option<String>,
    /// Draw the validation split (--val-fraction or --val-fold) from this
    /// seed instead of --seed. When distilling, give the teacher's: a
    /// validation image the teacher trained on flatters the distilled
    /// student (the run warns when it finds one).
    #[arg(long)]
    val_seed: Option<u64>,
    /// Train on this fraction of the samples not held out (a run with few
    /// labels): the first of a permutation drawn from --seed (not
    /// --val-seed), so the runs of one seed share the subset, each seed
    /// draws its own, and a smaller fraction's samples are in a larger
    /// one's. The others are never trained on.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    train_fraction: f64,
    /// Output directory (model.safetensors, model.json, model.py,
    /// metrics.jsonl, curves.png; FORMAT.md, "A model directory").
    #[arg(long)]
    out: PathBuf,
    /// Write a checkpoint every N steps and at each epoch's end (0: at each epoch's end only).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Continue from OUT/checkpoint.safetensors.
    #[arg(long)]
    resume: bool,
    /// Write over what OUT holds: a model trained with other settings, or
    /// the checkpoint of an unfinished run (without --resume). A model of
    /// the same settings is replaced without it. A run that starts over
    /// moves the earlier model into OUT/previous/ before it writes and
    /// removes it once it has written its own.
    #[arg(long)]
    overwrite: bool,
    /// After each of these epochs (e.g. 10,20), also write the model as it
    /// stands into OUT/epoch-NNN/: a complete model directory (weights,
    /// card with that epoch's accuracy, metrics so far) that eval, cache
    /// build --teacher and --init-from read like any other, for an
    /// early-stopped teacher.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    snapshot_epochs: Vec<usize>,
    /// Also keep the model of the best validation epoch (the earlier one
    /// on a tie) in OUT/best/: a complete model directory whose card names
    /// the epoch, rewritten whenever validation accuracy rises. Needs a
    /// validation split (--val-fraction above 0, or --val-fold).
    #[arg(long)]
    keep_best: bool,
    /// Stop after N steps, leaving a checkpoint (to test --resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<u64>,
    /// Blocks per shuffle window when streaming the cache.
    #[arg(long, default_value_t = TrainConfig::default().window_blocks)]
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

/// Runs `distill train` (errors name flags: [`super::name_flags`]).
/// A spec as written, without the spaces around it (a quoted list's, say),
/// as the sweep reads its students: the card records what trains.
fn trimmed(text: &str) -> std::result::Result<String, String> {
    Ok(text.trim().to_string())
}

pub fn train<D: Backend>(dev: D, a: TrainArgs) -> Result<()> {
    // A model or run the run reads must be there, and must not be one it
    // writes over.
    for (flag, dir, what) in [
        ("--init-from", &a.init_from, "the model it starts from"),
        ("--online-teacher", &a.online_teacher, "its teacher"),
        (
            "--baseline-run",
            &a.baseline_run,
            "the run it is compared with",
        ),
    ] {
        let Some(dir) = dir else { continue };
        if inside_directory(dir, &a.out) {
            return Err(Error::Config {
                field: flag.into(),
                message: format!(
                    "{} is in --out ({}): the run would replace {what}, and a rerun or \
                     --resume would read another; write to another directory",
                    dir.display(),
                    a.out.display()
                ),
            });
        }
        let model = ModelDir::new(dir);
        let (needed, kind) = match flag {
            "--baseline-run" => (model.metrics(), "a training run's directory"),
            _ => (
                model.weights().to_path_buf(),
                "a model directory or its .safetensors file",
            ),
        };
        if !needed.is_file() {
            return Err(Error::Config {
                field: flag.into(),
                message: format!(
                    "{} holds no {}: name {kind}",
                    dir.display(),
                    needed
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                ),
            });
        }
    }
    let init = match &a.init_from {
        Some(dir) => Some(cli_prune::init_from(
            dir,
            a.student.as_deref(),
            a.seed,
            a.quiet,
        )?),
        None => None,
    };
    let cfg = config(&a, init.as_ref().map(|i| i.spec.as_str()))?;
    let paths = SourcePaths {
        data: a.data.clone(),
        cache: a.cache.clone(),
        test_cache: a.test_cache.clone(),
        online_teacher: a.online_teacher.clone(),
    };
    let opened = paths.open(dev.clone())?;
    if a.resume && !a.overwrite {
        let cache_id = opened.cache.as_ref().map(|c| c.id());
        let online = opened.online_teacher.as_ref().map(|t| t.fingerprint());
        let inputs = RunInputs {
            train_fingerprint: &opened.train.fingerprint().0,
            cache_id: cache_id.as_deref(),
            online_teacher: online.as_deref(),
        };
        let done = finished_run(&ModelDir::new(&a.out), &cfg, inputs);
        if let Some(card) = done {
            print_already_finished(&card, &a.out, "");
            return Ok(());
        }
    }
    let overlap = opened.teacher_overlap(&cfg)?;
    let opts = RunOptions {
        checkpoint_every: a.checkpoint_every,
        resume: a.resume,
        overwrite: a.overwrite,
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
        stop_after_epoch: None,
        snapshot_epochs: a.snapshot_epochs.clone(),
        keep_best: a.keep_best,
        command: command_line(),
        data_dir: a.data.clone(),
        init: init.as_ref().map(|i| i.tensors.clone()),
        init_normalization: init.as_ref().and_then(|i| i.normalization.clone()),
        init_source: a.init_from.clone(),
        masks: init.and_then(|i| i.masks),
        baseline_metrics: match &a.baseline_run {
            Some(dir) => Some(read_metrics(&ModelDir::new(dir).metrics())?),
            None => None,
        },
        teacher_accuracy: opened.teacher_accuracy,
        val_teacher_trained: overlap.as_ref().and_then(TeacherOverlap::trained),
    };
    // What the run would refuse is refused before the line that says what it does.
    if a.keep_best {
        distill::train::best::check_split(&cfg, opened.train.len())?;
    }
    let spec = ModelSpec::parse_for_input(&cfg.spec, opened.train.sample_shape())?;
    opened.sources().check(&cfg, &spec, &dev)?;
    if !a.quiet {
        eprintln!("{}", start_line(&a, &cfg, &opened.train, &dev.describe())?);
    }
    match &overlap {
        Some(TeacherOverlap::Unknown(reason)) if !a.quiet => eprintln!(
            "note: cannot tell whether the teacher trained on the validation images: {reason}"
        ),
        Some(known) => {
            if let Some(w) = overlap_warning(known) {
                eprintln!("warning: {w}");
            }
        }
        None => {}
    }
    let summary = opened.cache.as_ref().and_then(|c| c.summary());
    if let Some(w) = summary.and_then(|s| s.agreement_warning()) {
        eprintln!("warning: {w}");
    }
    let outcome = distill::train::train(dev, &cfg, &opened.sources(), &a.out, &opts)?;
    if !outcome.trained {
        print_already_finished(
            &outcome.card,
            &a.out,
            " (another run finished it while this one started)",
        );
        return Ok(());
    }
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

/// The warning of a distilled run whose teacher trained on some of its
/// validation images, with the flags that hold out images it never saw;
/// `None` when none did or the teacher's card cannot tell.
fn overlap_warning(o: &TeacherOverlap) -> Option<String> {
    let TeacherOverlap::Known {
        teacher,
        trained,
        held_out,
        teacher_split,
    } = o
    else {
        return None;
    };
    if *trained == 0 {
        return None;
    }
    let remedy = match teacher_split {
        Some((seed, TeacherSplit::Fraction(f))) => format!(
            "Hold out images the teacher never saw: --val-seed {seed} with --val-fraction {f} or less."
        ),
        Some((seed, TeacherSplit::Fold(fold))) => {
            format!("Hold out images the teacher never saw: --val-seed {seed} --val-fold {fold}.")
        }
        None => "The teacher held nothing out: to validate without it, train the teacher \
                 with --val-fraction and give its --seed as --val-seed here."
            .to_string(),
    };
    Some(format!(
        "{trained} of the {held_out} validation images trained the teacher ({}): \
         a distilled student's validation accuracy on them flatters it against hard labels, \
         so settings chosen on it lean towards distillation. {remedy}",
        teacher.display()
    ))
}

/// The run's first line: the student, the device, the samples trained (and
/// held out), and what it learns from, with the loss weights.
fn start_line(a: &TrainArgs, cfg: &TrainConfig, train: &Dataset, device: &str) -> Result<String> {
    let n = train.len();
    let validation = cfg.validation_split(n)?;
    let held_out = validation.len();
    let trained = cfg.not_training(&validation)?.train_len();
    let defaults =
        if a.alpha.is_none() && a.temperature.is_none() && cfg.loss.kind != LossKind::Pseudo {
            ", the defaults chosen on validation"
        } else {
            ""
        };
    Ok(format!(
        "training {} ({} parameters) on {device} with {} samples{}, {}",
        cfg.spec,
        ModelSpec::parse_for_input(&cfg.spec, train.sample_shape())?.param_count(),
        trained,
        match (held_out, n - held_out.min(n) - trained) {
            (0, 0) => String::new(),
            (v, 0) => format!(" ({v} more held out for validation)"),
            (0, u) => format!(" ({u} more left out by --train-fraction)"),
            (v, u) =>
                format!(" ({v} more held out for validation, {u} left out by --train-fraction)"),
        },
        match (&a.cache, &a.online_teacher) {
            (Some(c), _) => format!(
                "distilling from {} ({}{defaults})",
                c.display(),
                describe_loss(&cfg.loss)
            ),
            (None, Some(t)) => format!(
                "distilling from the teacher {} run on every batch ({}{defaults})",
                t.display(),
                describe_loss(&cfg.loss)
            ),
            (None, None) => "hard labels only".to_string(),
        }
    ))
}

/// The run's config from the flags; `init_spec` is the spec of the
/// `--init-from` model, the default student.
fn config(a: &TrainArgs, init_spec: Option<&str>) -> Result<TrainConfig> {
    let spec = match (&a.student, init_spec) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.to_string(),
        (None, None) => {
            return Err(Error::Config {
                field: "--student".into(),
                message: "a model spec is required (or --init-from DIR)".into(),
            })
        }
    };
    if a.cache.is_none() && a.window_blocks != TrainConfig::default().window_blocks {
        return Err(Error::Config {
            field: "--window-blocks".into(),
            message: "it sets how the cache is streamed, and there is no --cache".into(),
        });
    }
    let val_fold = a
        .val_fold
        .as_deref()
        .map(str::parse::<ValFold>)
        .transpose()?;
    let cfg = TrainConfig {
        spec,
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
        loss: loss_config(a)?,
        window_blocks: a.window_blocks,
        allow_topk_retemper: a.allow_topk_retemper,
        augment: match &a.augment {
            Some(text) => Some(Augment::parse(text)?),
            None => None,
        },
        prune_schedule: match &a.prune_schedule {
            Some(text) => Some(GradualSchedule::parse(text)?),
            None => None,
        },
        normalize: a.normalize.parse()?,
        val_fraction: match val_fold {
            Some(_) => 0.0,
            None => a.val_fraction,
        },
        val_fold,
        val_seed: a.val_seed,
        train_fraction: a.train_fraction,
        ema: a.ema,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// The loss flags. With a teacher (--cache or --online-teacher) an alpha or
/// T not given takes the distillation default ([`DISTILL_ALPHA`],
/// [`DISTILL_TEMPERATURE`]); without one they must ask for hard labels
/// only, and a flag that shapes only the soft loss (-T, --loss, ...) is
/// refused rather than dropped.
fn loss_config(a: &TrainArgs) -> Result<LossConfig> {
    let teacher = a.cache.is_some() || a.online_teacher.is_some();
    let plain = TrainConfig::default().loss;
    let (alpha, temperature) = match teacher {
        true => (DISTILL_ALPHA, DISTILL_TEMPERATURE),
        false => (plain.alpha, plain.temperature),
    };
    let kind = a.loss.parse::<LossKind>()?;
    // Pseudo-labels have no hard-label term: alpha 0 unless told otherwise
    // (and then refused by the loss's own check).
    let alpha = match kind {
        LossKind::Pseudo => a.alpha.unwrap_or(0.0),
        _ => a.alpha.unwrap_or(alpha),
    };
    let l = LossConfig {
        teacher_errors: a.teacher_errors.parse::<TeacherErrors>()?,
        dkd_weights: a.dkd_weights.parse::<DkdWeights>()?,
        logit_standardize: a.logit_standardize,
        soft_scale: a.soft_scale,
        ..LossConfig::new(kind, alpha, a.temperature.unwrap_or(temperature))
    };
    if teacher {
        return Ok(l);
    }
    l.validate()?;
    // A flag that only shapes the loss on the teacher's outputs, given
    // without a teacher, would be dropped while the card records plain
    // hard-label training.
    let teacher_only = [
        (a.temperature.is_some(), "-T/--temperature"),
        (l.kind != plain.kind, "--loss"),
        (l.teacher_errors != plain.teacher_errors, "--teacher-errors"),
        (l.dkd_weights != plain.dkd_weights, "--dkd-weights"),
        (l.logit_standardize, "--logit-standardize"),
        (l.soft_scale != plain.soft_scale, "--soft-scale"),
        (a.allow_topk_retemper, "--allow-topk-retemper"),
    ];
    if let Some((_, flag)) = teacher_only.iter().find(|(given, _)| *given) {
        return Err(Error::Config {
            field: flag.to_string(),
            message: "it shapes the loss on the teacher's outputs, and there is no teacher: pass --cache DIR (built by `distill cache build`) or --online-teacher, or leave it out to train on hard labels".into(),
        });
    }
    if l.needs_teacher() {
        return Err(Error::Config {
            field: "--cache".into(),
            message: format!(
                "--alpha {} / --loss {} need the teacher's outputs: pass --cache DIR (built by `distill cache build`)",
                alpha, a.loss
            ),
        });
    }
    Ok(LossConfig::hard_labels())
}

/// The loss in the start line, e.g. `loss kd, T 4, alpha 0.5`.
fn describe_loss(l: &LossConfig) -> String {
    if l.kind == LossKind::Pseudo {
        return format!(
            "loss pseudo: the teacher's argmax as the label, read at T {}",
            l.temperature
        );
    }
    format!(
        "loss {}{}{}, T {}, alpha {}{}{}",
        l.kind,
        if l.logit_standardize {
            " (logit-standardised)"
        } else {
            ""
        },
        if l.kind == LossKind::Dkd {
            format!(" {},{}", l.dkd_weights.target, l.dkd_weights.non_target)
        } else {
            String::new()
        },
        l.temperature,
        l.alpha,
        if l.soft_scale != 1.0 {
            format!(", soft scale {}", l.soft_scale)
        } else {
            String::new()
        },
        if l.teacher_errors == TeacherErrors::Swap {
            ", teacher errors swapped"
        } else {
            ""
        }
    )
}

/// The line of a `--resume` that found the run finished: its accuracy.
fn print_already_finished(card: &ModelCard, out: &Path, how: &str) {
    let acc = card
        .test_accuracy
        .map_or("no test split".into(), |a| format!("{:.2}%", 100.0 * a));
    println!(
        "already finished, nothing to resume{how}: final test accuracy {acc} ({})",
        out.display()
    );
}

/// Whether the model at `init` (a directory or a weights file, after
/// links and `..`) lies in the existing directory `out` or is it.
fn inside_directory(init: &Path, out: &Path) -> bool {
    let (Ok(init), Ok(out)) = (init.canonicalize(), out.canonicalize()) else {
        return false;
    };
    ModelDir::new(&init).path().starts_with(out)
}

#[cfg(test)]
mod tests {
    use super::overlap_warning;
    use distill::train::validation::{TeacherOverlap, TeacherSplit, ValFold};

    /// The remedy follows how the teacher held its split out; a clean split
    /// or an unknown one gets no warning.
    #[test]
    fn the_overlap_warning_names_the_flags_that_avoid_it() {
        let known = |trained, teacher_split| TeacherOverlap::Known {
            teacher: "t".into(),
            trained,
            held_out: 200,
            teacher_split,
        };
        let w = overlap_warning(&known(150, Some((7, TeacherSplit::Fraction(0.2))))).unwrap();
        assert!(
            w.starts_with("150 of the 200 validation images trained the teacher (t)"),
            "{w}"
        );
        assert!(
            w.ends_with("--val-seed 7 with --val-fraction 0.2 or less."),
            "{w}"
        );
        let fold = ValFold { index: 1, folds: 2 };
        let w = overlap_warning(&known(90, Some((3, TeacherSplit::Fold(fold))))).unwrap();
        assert!(w.ends_with("--val-seed 3 --val-fold 1/2."), "{w}");
        let w = overlap_warning(&known(200, None)).unwrap();
        assert!(w.contains("The teacher held nothing out"), "{w}");
        assert_eq!(overlap_warning(&known(0, None)), None);
        assert_eq!(overlap_warning(&TeacherOverlap::Unknown("x".into())), None);
    }
}
