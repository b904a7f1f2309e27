//! The training loop: hard-label training (the baseline, and the way to train
//! a teacher) and distillation that streams a teacher-output cache.
//!
//! Data flow of one epoch:
//!
//! ```text
//!  loader thread                                      training thread
//!  epoch order (seed, epoch) ──► batch indices
//!  cache reader: decode targets ─┐                    upload ─► forward ─► loss
//!  dataset: fill inputs ─────────┴─► bounded channel ─► backward ─► optimizer update
//! ```
//!
//! The loader runs ahead by a few batches, so the step does not wait on
//! decoding. Every run is deterministic on the CPU for a given seed, and a
//! checkpoint (weights, optimizer state, epoch, position in the epoch order,
//! partial epoch sums) lets `--resume` finish with the same weights as an
//! uninterrupted run.

use std::collections::HashMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cache::{CacheReader, CacheViews, EpochPlan};
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::compat::check_compatible;
use crate::model::io::{read_safetensors, write_safetensors, HostTensor, SPEC_KEY};
use crate::model::{Backend, ModelSpec, Network, ParamKind};
use crate::prune::schedule::GradualSchedule;
use crate::prune::{grow_masks, LayerSelection, StoreMasks, MASK_FILE};
use crate::report::card::{CacheRef, EpochMetrics, ModelCard};

use super::eval::{evaluate, EvalResult};
use super::loss::{loss, LossConfig, LossKind, Targets};
use super::optim::{Optimizer, OptimizerConfig};

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub spec: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub loss: LossConfig,
    /// Blocks per shuffle window when streaming a cache.
    pub window_blocks: usize,
    /// Approximate re-tempering of a top-k cache (see FORMAT.md).
    pub allow_topk_retemper: bool,
    /// Random flips/shifts of the training inputs, drawn from (seed, epoch,
    /// sample) (`--augment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Gradual magnitude pruning during the run (`--prune-schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<GradualSchedule>,
}

impl TrainConfig {
    /// Checks every field; errors name the flag.
    pub fn validate(&self) -> Result<ModelSpec> {
        let spec = ModelSpec::parse(&self.spec)?;
        if self.epochs == 0 {
            return Err(Error::Config {
                field: "--epochs".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return Err(Error::Config {
                field: "--batch".into(),
                message: format!("{} must be between 1 and {}", self.batch_size, 1 << 20),
            });
        }
        self.optimizer.validate()?;
        self.loss.validate()?;
        if let Some(s) = &self.prune_schedule {
            s.validate()?;
        }
        Ok(spec)
    }
}

/// Options of a run that do not change its result.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write a checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: Option<u64>,
    /// Continue from `out/checkpoint.safetensors` if present.
    pub resume: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Stop after this many steps (for tests that simulate a crash).
    pub stop_after_steps: Option<u64>,
    /// The command line, recorded in the card.
    pub command: String,
    /// Data directory, recorded in the card.
    pub data_dir: PathBuf,
    /// Start from these weights instead of random ones.
    pub init: Option<Vec<HostTensor>>,
    /// A hard-label baseline's per-epoch metrics, drawn in `curves.png`.
    pub baseline_metrics: Option<Vec<EpochMetrics>>,
    /// The teacher's test accuracy, drawn in `curves.png`.
    pub teacher_accuracy: Option<f64>,
    /// Pruning masks (PyTorch layout, named after their weights): masked
    /// weights are zeroed at the start and after every step, and the masks
    /// are saved as `mask.safetensors` beside the model. With a
    /// [`TrainConfig::prune_schedule`] they are the starting masks, which
    /// the schedule only grows.
    pub masks: Option<Vec<HostTensor>>,
}

/// What the loop reads.
pub struct TrainSources<'a, D: Backend> {
    pub train: &'a Dataset,
    pub test: Option<&'a Dataset>,
    /// Teacher outputs for the training split (distillation): one cache, or
    /// a set of augmented views read in turn (view `epoch % K`).
    pub cache: Option<&'a CacheViews>,
    pub cache_dir: Option<PathBuf>,
    /// Teacher argmax on the test split, for agreement figures.
    pub teacher_test_predictions: Option<Vec<u32>>,
    /// A teacher run on every batch instead of a cache ("online"
    /// distillation, what distill exists to avoid; kept for comparison).
    pub online_teacher: Option<&'a Network<D>>,
}

/// The outcome of a run.
pub struct TrainOutcome<D: Backend> {
    pub network: Network<D>,
    pub card: ModelCard,
    pub metrics: Vec<EpochMetrics>,
    /// False when stopped early by `stop_after_steps`.
    pub finished: bool,
}

struct Batch {
    indices: Vec<usize>,
    inputs: Vec<f32>,
    labels: Option<Vec<u32>>,
    logprobs: Option<Vec<f32>>,
}

/// The hard-label epoch order: a permutation of all samples from (seed, epoch).
pub fn shuffled_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

const CHECKPOINT: &str = "checkpoint.safetensors";

/// Checks that a cache and a dataset belong together and fit the loss.
pub fn check_cache(
    cache: &CacheReader,
    train: &Dataset,
    spec: &ModelSpec,
    loss_cfg: &LossConfig,
) -> Result<()> {
    cache.check_pairing(
        &train.fingerprint().0,
        train.len() as u64,
        train.num_classes(),
    )?;
    if cache.num_classes() != spec.num_classes() {
        return Err(Error::Config {
            field: "--student".into(),
            message: format!(
                "the student {} has {} outputs but the cache holds {} classes",
                spec,
                spec.num_classes(),
                cache.num_classes()
            ),
        });
    }
    if loss_cfg.needs_labels() && !cache.has_labels() && train.labels().is_none() {
        return Err(if loss_cfg.alpha > 0.0 {
            Error::Config {
                field: "--alpha".into(),
                message: format!(
                    "alpha {} mixes in hard labels, but the data is unlabelled: use --alpha 0 or --loss pseudo",
                    loss_cfg.alpha
                ),
            }
        } else if loss_cfg.kind == LossKind::Dkd {
            Error::Config {
                field: "--loss".into(),
                message: "dkd splits the teacher's outputs at the label's class, but the data is unlabelled: use --loss kd or pseudo".into(),
            }
        } else {
            Error::Config {
                field: "--teacher-errors".into(),
                message: "swap corrects the teacher with the labels, but the data is unlabelled: use --teacher-errors keep".into(),
            }
        });
    }
    if loss_cfg.kind == LossKind::Mse && cache.encoding().to_string().starts_with("topk") {
        return Err(Error::Config {
            field: "--loss".into(),
            message: "logit matching (mse) needs a dense cache (f32, f16 or q8); this one is top-k"
                .into(),
        });
    }
    Ok(())
}

/// Trains a network. With `sources.cache` the teacher's outputs come from the
/// cache; without it only labels are used (the loss must then be plain
/// cross-entropy, `alpha = 1`).
pub fn train<D: Backend>(
    device: D,
    cfg: &TrainConfig,
    sources: &TrainSources<'_, D>,
    out_dir: &Path,
    opts: &RunOptions,
) -> Result<TrainOutcome<D>> {
    let spec = cfg.validate()?;
    let train = sources.train;
    if train.is_empty() {
        return Err(Error::Config {
            field: "--data".into(),
            message: format!("{} holds no training samples", train.source().display()),
        });
    }
    let mut net = Network::new(spec.clone(), device.clone(), cfg.seed);
    check_compatible(&net, train)?;
    if let Some(a) = &cfg.augment {
        a.check_shape(train.sample_shape())?;
        if let Some(c) = sources.cache {
            let cached = c.view_info().map(|v| v.augment.as_str());
            if cached != Some(a.to_string().as_str()) {
                return Err(Error::Config {
                    field: "--augment".into(),
                    message: match cached {
                        None => format!(
                            "{} holds the teacher's outputs for the unaugmented images, which are not valid targets for flipped or shifted ones; build a view set (cache build --augment {a} --views K) or distil from --online-teacher",
                            c.dir().display()
                        ),
                        Some(other) => format!(
                            "{a} differs from the augmentation {other} of the view set {}; omit --augment to use the cache's",
                            c.dir().display()
                        ),
                    },
                });
            }
        }
    }
    if let Some(init) = &opts.init {
        net.load_host(init, Path::new("--init-from"))?;
    }
    let mut current_masks: Option<Vec<HostTensor>> = opts.masks.clone();
    let mut masks = match &current_masks {
        Some(m) => Some(StoreMasks::new(&net, m, Path::new(MASK_FILE))?),
        None => None,
    };
    if let Some(m) = &masks {
        m.apply(&mut net);
    }
    // The sparsity a schedule starts from: the starting masks' zeros among
    // all weights.
    let weight_count: usize = net
        .params()
        .iter()
        .filter(|p| p.kind == ParamKind::Weight)
        .map(|p| p.value.len())
        .sum();
    let sparsity_of = |m: &Option<Vec<HostTensor>>| -> Option<f64> {
        m.as_ref().map(|m| {
            let zeros: usize = m
                .iter()
                .map(|t| t.data.iter().filter(|v| **v == 0.0).count())
                .sum();
            zeros as f64 / weight_count.max(1) as f64
        })
    };
    let initial_sparsity = sparsity_of(&opts.masks).unwrap_or(0.0);
    if let Some(t) = sources.online_teacher {
        if t.spec().num_classes() != spec.num_classes() || t.spec().input_len() != spec.input_len()
        {
            return Err(Error::Config {
                field: "--teacher".into(),
                message: format!(
                    "teacher {} and student {} disagree on inputs or classes",
                    t.spec(),
                    spec
                ),
            });
        }
    }
    match sources.cache {
        Some(cache) => check_cache(cache.first(), train, &spec, &cfg.loss)?,
        None if sources.online_teacher.is_some() => {}
        None => {
            if cfg.loss.needs_teacher() {
                return Err(Error::Config {
                    field: "--cache".into(),
                    message: format!(
                        "the {} loss with alpha {} needs the teacher's outputs: pass --cache",
                        cfg.loss.kind, cfg.loss.alpha
                    ),
                });
            }
            if train.labels().is_none() {
                return Err(Error::Config {
                    field: "--data".into(),
                    message: format!(
                        "{} has no labels; train from a teacher cache with --alpha 0 or --loss pseudo",
                        train.source().display()
                    ),
                });
            }
        }
    }
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let n = train.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    let mut opt = Optimizer::new(cfg.optimizer, total_steps);

    // Resume.
    let mut start_epoch = 0usize;
    let mut start_pos = 0usize;
    let mut partial = (0f64, 0usize);
    let mut metrics: Vec<EpochMetrics> = Vec::new();
    let mut train_seconds = 0f64;
    let ckpt_path = out_dir.join(CHECKPOINT);
    // The cache's content id: a checkpoint resumes only on the same teacher outputs.
    let cache_id = sources.cache.map_or(String::new(), |c| c.id());
    let cache_id = cache_id.as_str();
    let mut resumed = false;
    if opts.resume && ckpt_path.exists() {
        let ck = load_checkpoint(&ckpt_path, cfg, cache_id, &mut net, &mut opt)?;
        if ck.masks.is_some() {
            masks = match &ck.masks {
                Some(m) => Some(StoreMasks::new(&net, m, &ckpt_path)?),
                None => None,
            };
            current_masks = ck.masks;
        }
        if let Some(m) = &masks {
            m.apply(&mut net);
        }
        resumed = true;
        start_epoch = ck.epoch;
        start_pos = ck.position;
        partial = (ck.loss_sum, ck.loss_count);
        metrics = ck.metrics;
        train_seconds = ck.train_seconds;
    }
    let metrics_path = out_dir.join("metrics.jsonl");
    write_metrics(&metrics_path, &metrics)?;
    // Gradual pruning: after `step` optimizer steps, raise the masks to the
    // schedule's sparsity if an update is due.
    // The starting sparsity of each layer with weights (index into the
    // spec's layers, fraction of its weights masked at the start).
    let layer_start: Vec<(usize, f64)> = {
        let idx = spec.torch_indices();
        spec.layers()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.has_params())
            .map(|(li, _)| {
                let name = format!("layers.{}.weight", idx[li]);
                let start = opts
                    .masks
                    .iter()
                    .flatten()
                    .find(|m| m.name == name)
                    .map_or(0.0, |m| {
                        let zeros = m.data.iter().filter(|v| **v == 0.0).count();
                        zeros as f64 / m.data.len().max(1) as f64
                    });
                (li, start)
            })
            .collect()
    };
    // Gradual pruning: after `step` optimizer steps, raise the masks to the
    // schedule's sparsity if an update is due: one ramp over all weights
    // (global), or one per layer from that layer's own starting sparsity.
    let schedule_update = |step: u64,
                           net: &mut Network<D>,
                           current: &mut Option<Vec<HostTensor>>,
                           store: &mut Option<StoreMasks>|
     -> Result<()> {
        let Some(s) = &cfg.prune_schedule else {
            return Ok(());
        };
        if !s.is_update_step(step, total_steps) {
            return Ok(());
        }
        let mut host = net.to_host();
        let mut new = current.clone();
        if s.global {
            let target = s.sparsity_at(step, total_steps, initial_sparsity);
            new = Some(grow_masks(
                &spec,
                &mut host,
                new.as_deref(),
                target,
                &LayerSelection::All,
                true,
            )?);
        } else {
            for &(li, start) in &layer_start {
                let target = s.sparsity_at(step, total_steps, start);
                new = Some(grow_masks(
                    &spec,
                    &mut host,
                    new.as_deref(),
                    target,
                    &LayerSelection::Some(vec![li]),
                    false,
                )?);
            }
        }
        let Some(new) = new else {
            return Ok(());
        };
        let m = StoreMasks::new(net, &new, Path::new("--prune-schedule"))?;
        m.apply(net);
        *store = Some(m);
        *current = Some(new);
        Ok(())
    };
    if !resumed {
        schedule_update(0, &mut net, &mut current_masks, &mut masks)?;
    }

    let show = !opts.quiet && std::io::stderr().is_terminal();
    let classes = spec.num_classes();
    let mut finished = true;
    let mut last_eval: Option<EvalResult> = None;
    'epochs: for epoch in start_epoch..cfg.epochs {
        let epoch_start = Instant::now();
        let first = if epoch == start_epoch { start_pos } else { 0 };
        let (mut loss_sum, mut loss_count) = if epoch == start_epoch {
            partial
        } else {
            (0.0, 0)
        };
        let bar = progress_bar(show, (n - first) as u64, epoch, cfg.epochs);
        let mut position = first;
        let mut stop = false;
        let result: Result<()> = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(4);
            scope.spawn(move || produce_batches(tx, cfg, sources, epoch as u64, first));
            for batch in rx {
                let batch = batch?;
                let b = batch.indices.len();
                let x = device.tensor_from_vec(batch.inputs, (b, spec.input_len()));
                let online: Option<Vec<f32>> = sources.online_teacher.map(|t| {
                    let z = t.forward(x.clone()) * (1.0 / cfg.loss.temperature);
                    z.log_softmax::<Axis<1>>().as_vec()
                });
                let logits = net.forward(x.traced(Gradients::leaky()));
                let targets = Targets {
                    classes,
                    labels: batch.labels.as_deref(),
                    teacher_logprobs: batch.logprobs.as_deref().or(online.as_deref()),
                };
                let l = loss(&cfg.loss, logits, &targets)?;
                let value = l.as_vec().first().copied().unwrap_or(f32::NAN);
                if !value.is_finite() {
                    return Err(Error::Training {
                        context: format!("epoch {} step {}", epoch + 1, opt.step() + 1),
                        message: format!("the loss became {value}; lower --lr or check the cache"),
                    });
                }
                let mut grads = l.backward();
                opt.update(&mut net, &mut grads)?;
                if let Some(m) = &masks {
                    m.apply(&mut net);
                }
                schedule_update(opt.step(), &mut net, &mut current_masks, &mut masks)?;
                loss_sum += value as f64 * b as f64;
                loss_count += b;
                position += b;
                bar.inc(b as u64);
                let step = opt.step();
                if opts.stop_after_steps == Some(step) {
                    stop = true;
                }
                let due = opts
                    .checkpoint_every
                    .is_some_and(|k| k > 0 && step % k == 0);
                if due || stop {
                    let elapsed = train_seconds + epoch_start.elapsed().as_secs_f64();
                    save_checkpoint(
                        &ckpt_path,
                        cfg,
                        cache_id,
                        &net,
                        &opt,
                        epoch,
                        position,
                        (loss_sum, loss_count),
                        &metrics,
                        elapsed,
                        current_masks.as_deref(),
                    )?;
                }
                if stop {
                    break;
                }
            }
            Ok(())
        });
        bar.finish_and_clear();
        result?;
        if stop && position < n {
            finished = false;
            break 'epochs;
        }
        let epoch_secs = epoch_start.elapsed().as_secs_f64();
        train_seconds += epoch_secs;
        let eval = match sources.test {
            Some(test) => Some(evaluate(&net, test, 1000)?),
            None => None,
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / loss_count.max(1) as f64,
            test_loss: eval.as_ref().and_then(|e| e.loss),
            test_accuracy: eval.as_ref().and_then(|e| e.accuracy),
            teacher_agreement: match (&eval, &sources.teacher_test_predictions) {
                (Some(e), Some(t)) => e.agreement(t),
                _ => None,
            },
            lr: cfg.optimizer.lr_at(opt.step(), total_steps),
            epoch_seconds: epoch_secs,
            train_samples_per_sec: (n - first) as f64 / epoch_secs.max(1e-9),
            weight_sparsity: sparsity_of(&current_masks),
        };
        if !opts.quiet {
            eprintln!("{}", m.summary_line(cfg.epochs));
        }
        metrics.push(m);
        write_metrics(&metrics_path, &metrics)?;
        last_eval = eval;
        if opts.checkpoint_every.is_some() || opts.resume {
            save_checkpoint(
                &ckpt_path,
                cfg,
                cache_id,
                &net,
                &opt,
                epoch + 1,
                0,
                (0.0, 0),
                &metrics,
                train_seconds,
                current_masks.as_deref(),
            )?;
        }
        if stop {
            finished = epoch + 1 == cfg.epochs;
            break;
        }
    }

    let cache_ref = match (sources.cache, &sources.cache_dir) {
        (Some(c), Some(dir)) => Some(CacheRef::from_views(c, dir)),
        _ => None,
    };
    let card = ModelCard::new(
        &net,
        cfg,
        opts,
        train,
        sources.test,
        cache_ref,
        last_eval.as_ref(),
        metrics.last().and_then(|m| m.teacher_agreement),
        train_seconds,
    );
    if finished {
        crate::model::io::save_weights(&net, &out_dir.join("model.safetensors"))?;
        if let Some(m) = &current_masks {
            let mut meta = HashMap::new();
            meta.insert(SPEC_KEY.to_string(), net.spec().as_str().to_string());
            write_safetensors(&out_dir.join(MASK_FILE), m, meta)?;
        } else if out_dir.join(MASK_FILE).exists() {
            // A stale mask from an earlier run would be picked up with these weights.
            let _ = fs::remove_file(out_dir.join(MASK_FILE));
        }
        card.save(&out_dir.join("model.json"))?;
        crate::report::plot::training_curves(
            &out_dir.join("curves.png"),
            &metrics,
            opts.baseline_metrics.as_deref(),
            opts.teacher_accuracy,
        )?;
        if ckpt_path.exists() {
            let _ = fs::remove_file(&ckpt_path);
        }
    }
    Ok(TrainOutcome {
        network: net,
        card,
        metrics,
        finished,
    })
}

fn progress_bar(show: bool, len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} samples  {per_sec}  eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("epoch {}/{}", epoch + 1, epochs));
    bar
}

/// How the training inputs of `epoch` are augmented, as (augmentation,
/// seed, view) for [`Augment::apply_batch`]: with a set of augmented views,
/// the view the teacher saw (`epoch % K`, the set's seed); else with
/// `--augment`, a fresh view per epoch under the run's seed; else none.
pub fn epoch_augmentation(
    cfg: &TrainConfig,
    cache: Option<&CacheViews>,
    epoch: u64,
) -> Result<Option<(Augment, u64, u64)>> {
    let view = cache.and_then(|c| c.for_epoch(epoch).manifest().dataset.view.as_ref());
    Ok(match view {
        Some(v) => Some((Augment::parse(&v.augment)?, v.seed, v.view)),
        None => cfg.augment.map(|a| (a, cfg.seed, epoch)),
    })
}

/// The loader: walks the epoch order from `first`, decodes targets from the
/// cache (if any), fills inputs, and sends batches until the receiver hangs up.
fn produce_batches<D: Backend>(
    tx: mpsc::SyncSender<Result<Batch>>,
    cfg: &TrainConfig,
    sources: &TrainSources<'_, D>,
    epoch: u64,
    first: usize,
) {
    let train = sources.train;
    let len = train.sample_len();
    let labels = train.labels();
    let reader = sources.cache.map(|c| c.for_epoch(epoch));
    let augment = match epoch_augmentation(cfg, sources.cache, epoch) {
        Ok(a) => a,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let make = |indices: Vec<usize>, cache_labels: Option<Vec<u32>>, logprobs: Option<Vec<f32>>| {
        let mut inputs = vec![0f32; indices.len() * len];
        train.fill_inputs(&indices, &mut inputs);
        if let Some((a, seed, view)) = &augment {
            a.apply_batch(*seed, *view, &indices, train.sample_shape(), &mut inputs);
        }
        let labels = labels
            .map(|y| indices.iter().map(|&i| y[i]).collect())
            .or(cache_labels);
        Batch {
            indices,
            inputs,
            labels,
            logprobs,
        }
    };
    match reader {
        None => {
            let order = shuffled_order(train.len(), cfg.seed, epoch);
            for chunk in order[first.min(order.len())..].chunks(cfg.batch_size) {
                if tx.send(Ok(make(chunk.to_vec(), None, None))).is_err() {
                    return;
                }
            }
        }
        Some(cache) => {
            let plan = EpochPlan {
                seed: cfg.seed,
                epoch,
                start: first as u64,
                batch_size: cfg.batch_size,
                window_blocks: cfg.window_blocks,
                temperature: cfg.loss.temperature,
                allow_topk_retemper: cfg.allow_topk_retemper,
                drop_last: false,
            };
            let batches = match cache.epoch_batches(plan) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            for tb in batches {
                let msg = tb.map_err(Error::from).map(|tb| {
                    let idx: Vec<usize> = tb.indices.iter().map(|&i| i as usize).collect();
                    make(idx, tb.labels, Some(tb.logprobs))
                });
                let failed = msg.is_err();
                if tx.send(msg).is_err() || failed {
                    return;
                }
            }
        }
    }
}

fn write_metrics(path: &Path, metrics: &[EpochMetrics]) -> Result<()> {
    let mut s = String::new();
    for m in metrics {
        s.push_str(&serde_json::to_string(m).unwrap_or_default());
        s.push('\n');
    }
    crate::model::io::atomic_write(path, s.as_bytes())
}

/// Prefix of the pruning masks' tensors in a checkpoint.
const MASK_PREFIX: &str = "mask.";

struct Checkpoint {
    /// The masks in force when it was written (PyTorch layout), if any.
    masks: Option<Vec<HostTensor>>,
    epoch: usize,
    position: usize,
    loss_sum: f64,
    loss_count: usize,
    metrics: Vec<EpochMetrics>,
    train_seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint<D: Backend>(
    path: &Path,
    cfg: &TrainConfig,
    cache_id: &str,
    net: &Network<D>,
    opt: &Optimizer<D>,
    epoch: usize,
    position: usize,
    partial: (f64, usize),
    metrics: &[EpochMetrics],
    train_seconds: f64,
    masks: Option<&[HostTensor]>,
) -> Result<()> {
    let mut tensors: Vec<HostTensor> = net
        .params()
        .iter()
        .map(|p| HostTensor {
            name: p.name.clone(),
            shape: p.value.dims(),
            data: p.value.to_vec(),
        })
        .collect();
    for (p, (s1, s2)) in net.params().iter().zip(opt.state_to_host(net)) {
        for (slot, data) in [("slot1", s1), ("slot2", s2)] {
            if !data.is_empty() {
                tensors.push(HostTensor {
                    name: format!("optimizer.{slot}.{}", p.name),
                    shape: vec![data.len()],
                    data,
                });
            }
        }
    }
    for m in masks.unwrap_or_default() {
        tensors.push(HostTensor {
            name: format!("{MASK_PREFIX}{}", m.name),
            shape: m.shape.clone(),
            data: m.data.clone(),
        });
    }
    let mut meta = HashMap::new();
    meta.insert(SPEC_KEY.into(), net.spec().to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(cfg).unwrap_or_default(),
    );
    meta.insert("cache_id".into(), cache_id.to_string());
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert("position".into(), position.to_string());
    meta.insert("step".into(), opt.step().to_string());
    meta.insert("loss_sum".into(), format!("{:e}", partial.0));
    meta.insert("loss_count".into(), partial.1.to_string());
    meta.insert("train_seconds".into(), train_seconds.to_string());
    meta.insert(
        "metrics".into(),
        serde_json::to_string(metrics).unwrap_or_default(),
    );
    write_safetensors(path, &tensors, meta)
}

fn load_checkpoint<D: Backend>(
    path: &Path,
    cfg: &TrainConfig,
    cache_id: &str,
    net: &mut Network<D>,
    opt: &mut Optimizer<D>,
) -> Result<Checkpoint> {
    let (meta, tensors) = read_safetensors(path)?;
    let bad = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    let saved_cfg = meta
        .get("config")
        .ok_or_else(|| bad("no 'config' metadata: not a distill checkpoint".into()))?;
    let ours = serde_json::to_string(cfg).unwrap_or_default();
    if saved_cfg != &ours {
        return Err(bad(format!(
            "was written by a run with other settings ({saved_cfg}); resume with the same flags or choose another --out"
        )));
    }
    let saved_cache = meta.get("cache_id").map_or("", |s| s.as_str());
    if saved_cache != cache_id {
        return Err(bad(format!(
            "was written while training from cache '{saved_cache}', but the cache given now is '{cache_id}' (replaced or rebuilt); resume with the same cache or choose another --out"
        )));
    }
    let field = |k: &str| -> Result<&String> {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata '{k}' is missing")))
    };
    let num = |k: &str| -> Result<u64> {
        field(k)?
            .parse::<u64>()
            .map_err(|_| bad(format!("metadata '{k}' is not a number")))
    };
    let by_name: HashMap<&str, &HostTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    // Weights are stored in the network's own layout.
    for p in net.params_mut() {
        let t = by_name
            .get(p.name.as_str())
            .ok_or_else(|| bad(format!("tensor '{}' is missing", p.name)))?;
        if t.data.len() != p.value.len() {
            return Err(bad(format!(
                "tensor '{}' has {} values, expected {}",
                p.name,
                t.data.len(),
                p.value.len()
            )));
        }
        p.value.copy_from(&t.data);
    }
    let state: Vec<(Vec<f32>, Vec<f32>)> = net
        .params()
        .iter()
        .map(|p| {
            let get = |slot: &str| {
                by_name
                    .get(format!("optimizer.{slot}.{}", p.name).as_str())
                    .map(|t| t.data.clone())
                    .unwrap_or_default()
            };
            (get("slot1"), get("slot2"))
        })
        .collect();
    opt.restore_state(net, &state, num("step")?)?;
    let metrics: Vec<EpochMetrics> = serde_json::from_str(field("metrics")?)
        .map_err(|e| bad(format!("metadata 'metrics': {e}")))?;
    let masks: Vec<HostTensor> = tensors
        .iter()
        .filter_map(|t| {
            t.name.strip_prefix(MASK_PREFIX).map(|name| HostTensor {
                name: name.to_string(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
        })
        .collect();
    Ok(Checkpoint {
        masks: (!masks.is_empty()).then_some(masks),
        epoch: num("epoch")? as usize,
        position: num("position")? as usize,
        loss_sum: field("loss_sum")?
            .parse()
            .map_err(|_| bad("metadata 'loss_sum' is not a number".into()))?,
        loss_count: num("loss_count")? as usize,
        metrics,
        train_seconds: field("train_seconds")?.parse().unwrap_or(0.0),
    })
}

/// Appends one line to a writer, ignoring a closed pipe.
pub fn print_line(mut w: impl Write, line: &str) {
    let _ = writeln!(w, "{line}");
}
