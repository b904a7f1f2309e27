//! The training loop: hard-label training (the baseline, and the way to train
//! a teacher) and distillation that streams a teacher-output cache.
//!
//! [`train`] checks the sources against the config, builds the network
//! (random, or from given weights and masks), resumes from a checkpoint if
//! asked, then runs epoch after epoch: the [`loader`](super::loader) thread
//! produces host batches, this thread uploads each one and takes one
//! optimizer step, and the [`pruning`](super::pruning) hook keeps the masks.
//! The run's [validation split](super::validation) (a fraction of the
//! training split drawn from the seed) is never trained on. After each
//! epoch it evaluates on the validation and test splits and appends to
//! `metrics.jsonl`; a finished run writes the weights, masks, card and
//! curves into the run's [`ModelDir`].
//!
//! Every run is deterministic on the CPU for a given seed, and a
//! [`checkpoint`] (weights, optimizer state, epoch,
//! position in the epoch order, partial epoch sums) lets a resumed run
//! finish with the same weights as an uninterrupted one.

use crate::teacher::teacher_targets;
use std::collections::HashMap;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{Error, Result};
use crate::model::io::{save_weights, write_safetensors, SPEC_KEY};
use crate::model::{Backend, ModelDir, ModelSpec, Network};
use crate::report::plot::training_curves;

use super::average::WeightAverage;
use super::best;
use super::card::{CacheRef, ModelCard, OnlineTeacherRef};
use super::checkpoint::{self, Progress, RunIdentity, RunState};
use super::config::{RunOptions, TrainConfig};
use super::eval::{evaluate, evaluate_samples};
use super::loader::{Batch, Loader};
use super::loss::{loss_mixed, Targets};
use super::metrics::{curve_points, read_metrics, write_metrics, EpochMetrics};
use super::optim::Optimizer;
use super::outdir::{claim_run_dir, drop_earlier_model, Claimed, RunInputs};
use super::pruning::Pruning;
use super::sources::TrainSources;
use super::validation::ValidationSplit;

/// Batch size of the evaluation after each epoch.
pub(crate) const EVAL_BATCH: usize = 1000;

/// The outcome of a run.
pub struct TrainOutcome<D: Backend> {
    pub network: Network<D>,
    pub card: ModelCard,
    pub metrics: Vec<EpochMetrics>,
    /// False when stopped early by `stop_after_steps` or
    /// `stop_after_epoch`.
    pub finished: bool,
    /// False when `resume` found the run finished by another process
    /// while this one prepared (the model is the one it wrote).
    pub trained: bool,
}

/// Trains a network into `out_dir`. With `sources.cache` the teacher's
/// outputs come from the cache; without it only labels are used (the loss
/// must then be plain cross-entropy, `alpha = 1`), unless a teacher runs
/// online.
pub fn train<D: Backend>(
    device: D,
    cfg: &TrainConfig,
    sources: &TrainSources<'_, D>,
    out_dir: &Path,
    opts: &RunOptions,
) -> Result<TrainOutcome<D>> {
    cfg.validate()?;
    if let Some(&e) = opts
        .snapshot_epochs
        .iter()
        .find(|&&e| e == 0 || e > cfg.epochs)
    {
        return Err(Error::Config {
            field: "snapshot_epochs".into(),
            message: format!(
                "epoch {e} is not one of the run's epochs 1..={}",
                cfg.epochs
            ),
        });
    }
    if let Some(e) = opts.stop_after_epoch.filter(|&e| e == 0 || e > cfg.epochs) {
        return Err(Error::Config {
            field: "stop_after_epoch".into(),
            message: format!(
                "epoch {e} is not one of the run's epochs 1..={}",
                cfg.epochs
            ),
        });
    }
    if opts.keep_best {
        best::check_split(cfg, sources.train.len())?;
    }
    let spec = ModelSpec::parse_for_input(&cfg.spec, sources.train.sample_shape())?;
    sources.check(cfg, &spec, &device)?;
    let mut run = match Run::start(device, cfg, spec, sources, out_dir, opts)? {
        Started::Run(run) => run,
        Started::Finished(outcome) => return Ok(*outcome),
    };
    let finished = run.epochs()?;
    run.finish(finished)
}

/// What [`Run::start`] found.
enum Started<'a, D: Backend> {
    Run(Box<Run<'a, D>>),
    /// A finished run of the same settings and inputs (`resume`).
    Finished(Box<TrainOutcome<D>>),
}

/// The state of a run between steps.
struct Run<'a, D: Backend> {
    device: D,
    cfg: &'a TrainConfig,
    spec: ModelSpec,
    sources: &'a TrainSources<'a, D>,
    opts: &'a RunOptions,
    dir: ModelDir,
    net: Network<D>,
    opt: Optimizer<D>,
    pruning: Pruning,
    /// The moving average of the weights (`ema`), which the run evaluates
    /// and writes in place of the live weights.
    average: Option<WeightAverage<D>>,
    /// The samples held out of training, evaluated after each epoch.
    validation: Arc<ValidationSplit>,
    /// The samples it does not train on: the validation split and those
    /// outside its training subset.
    skipped: Arc<ValidationSplit>,
    total_steps: u64,
    /// The cache's content id: a checkpoint resumes only on the same
    /// teacher outputs.
    cache_id: String,
    /// The online teacher's weights fingerprint (empty without one): a
    /// checkpoint resumes only with the same teacher.
    online_teacher_fingerprint: String,
    /// Where the run stands at the start of the next epoch (or, right after
    /// a resume, within it).
    progress: Progress,
    metrics: Vec<EpochMetrics>,
    show_progress: bool,
    /// The run directory's lock, held while the run writes there.
    _lock: fs::File,
}

/// What one pass over (the rest of) an epoch did.
struct Pass {
    position: usize,
    loss_sum: f64,
    loss_count: usize,
    /// Stopped by `stop_after_steps`.
    stopped: bool,
}

impl<'a, D: Backend> Run<'a, D> {
    /// Builds the network and optimizer, creates the run's directory, and
    /// resumes from its checkpoint if asked and present.
    fn start(
        device: D,
        cfg: &'a TrainConfig,
        spec: ModelSpec,
        sources: &'a TrainSources<'a, D>,
        out_dir: &Path,
        opts: &'a RunOptions,
    ) -> Result<Started<'a, D>> {
        let mut net = Network::new(spec.clone(), device.clone(), cfg.seed);
        let init_dir = opts.init_source.as_ref().map(ModelDir::new);
        if let Some(init) = &opts.init {
            let source = init_dir.as_ref().map_or_else(
                || PathBuf::from("the initial weights"),
                |d| d.weights().to_path_buf(),
            );
            net.load_host(init, &source)?;
        }
        let start = opts.init.as_ref().map(|_| opts.init_normalization.as_ref());
        let validation = cfg.validation_split(sources.train.len())?;
        let skipped = cfg.not_training(&validation)?;
        // A view set's mixed views, as the config's own (`validate`).
        if let Some((augment, _, _)) = super::loader::epoch_augmentation(cfg, sources.cache, 0)? {
            super::config::check_subset_mixing(cfg.train_fraction, &augment)?;
        }
        let normalization =
            cfg.normalize
                .resolve(sources.train, |i| skipped.holds_out(i), start)?;
        net.set_normalization(normalization)
            .map_err(|message| Error::Config {
                field: "normalize".into(),
                message,
            })?;
        let total_steps = {
            let loader = Loader::new(sources.train, sources.cache, cfg).holding_out(&skipped);
            let mut steps = 0u64;
            for epoch in 0..cfg.epochs as u64 {
                steps += loader.epoch_len(epoch)?.div_ceil(cfg.batch_size) as u64;
            }
            steps
        };
        let mask_source = init_dir
            .as_ref()
            .map_or_else(|| PathBuf::from("the starting masks"), ModelDir::masks);
        let pruning = Pruning::new(
            &net,
            cfg.prune_schedule,
            total_steps,
            opts.masks.clone(),
            &mask_source,
        )?;
        pruning.apply(&mut net);
        let average = cfg.ema.map(|decay| WeightAverage::new(decay, &net));
        let fingerprint = &sources.train.fingerprint().0;
        let cache_id = sources.cache.map(|c| c.id());
        let online_teacher = sources.online_teacher.map(|t| t.fingerprint());
        let inputs = RunInputs {
            train_fingerprint: fingerprint,
            cache_id: cache_id.as_deref(),
            online_teacher: online_teacher.as_deref(),
        };
        let lock = match claim_run_dir(out_dir, cfg, inputs, opts.resume, opts.overwrite)? {
            Claimed::Locked(lock) => lock,
            Claimed::Finished(card) => {
                let dir = ModelDir::new(out_dir);
                return Ok(Started::Finished(Box::new(TrainOutcome {
                    network: dir.load(device)?,
                    card: *card,
                    metrics: read_metrics(&dir.metrics())?,
                    finished: true,
                    trained: false,
                })));
            }
        };
        let mut run = Run {
            device,
            cfg,
            spec,
            sources,
            opts,
            dir: ModelDir::new(out_dir),
            net,
            opt: Optimizer::new(cfg.optimizer, total_steps),
            pruning,
            average,
            validation: Arc::new(validation),
            skipped: Arc::new(skipped),
            total_steps,
            cache_id: sources.cache.map_or(String::new(), |c| c.id()),
            online_teacher_fingerprint: online_teacher.unwrap_or_default(),
            progress: Progress::default(),
            metrics: Vec::new(),
            show_progress: !opts.quiet && std::io::stderr().is_terminal(),
            _lock: lock,
        };
        // What a run killed while replacing `best/` left (under the lock).
        best::clear_leftovers(&run.dir)?;
        let resumed = run.resume()?;
        write_metrics(&run.dir.metrics(), &run.metrics)?;
        if !resumed {
            let masks = run.dir.masks();
            run.pruning.after_step(0, &mut run.net, &masks)?;
        }
        Ok(Started::Run(Box::new(run)))
    }

    /// Continues from the checkpoint if asked and present; whether it did.
    fn resume(&mut self) -> Result<bool> {
        let path = self.dir.checkpoint();
        if !(self.opts.resume && path.exists()) {
            return Ok(false);
        }
        let identity = RunIdentity {
            cfg: self.cfg,
            cache_id: &self.cache_id,
            train_fingerprint: &self.sources.train.fingerprint().0,
            online_teacher: &self.online_teacher_fingerprint,
        };
        let ck = checkpoint::load(
            &path,
            identity,
            &mut self.net,
            &mut self.opt,
            self.average.as_mut(),
        )?;
        if let Some(m) = ck.masks {
            self.pruning.restore(&self.net, m, &path)?;
        }
        self.pruning.apply(&mut self.net);
        self.progress = ck.progress;
        self.metrics = ck.metrics;
        Ok(true)
    }

    /// How many samples epoch `epoch` trains ([`Loader::epoch_len`]).
    fn epoch_len(&self, epoch: usize) -> Result<usize> {
        Loader::new(self.sources.train, self.sources.cache, self.cfg)
            .holding_out(&self.skipped)
            .epoch_len(epoch as u64)
    }

    /// Runs the remaining epochs (to `stop_after_epoch` where given);
    /// false when stopped before the last one ended.
    fn epochs(&mut self) -> Result<bool> {
        let start = self.progress;
        // Resumed at or past the epoch to stop after: nothing to train.
        if self
            .opts
            .stop_after_epoch
            .is_some_and(|e| start.epoch >= e && e < self.cfg.epochs)
        {
            return Ok(false);
        }
        for epoch in start.epoch..self.cfg.epochs {
            let epoch_start = Instant::now();
            let (first, partial) = if epoch == start.epoch {
                (start.position, (start.loss_sum, start.loss_count))
            } else {
                (0, (0.0, 0))
            };
            let pass = self.pass(epoch, first, partial, epoch_start)?;
            if pass.stopped && pass.position < self.epoch_len(epoch)? {
                return Ok(false);
            }
            self.end_epoch(epoch, first, &pass, epoch_start)?;
            if pass.stopped || self.opts.stop_after_epoch == Some(epoch + 1) {
                return Ok(epoch + 1 == self.cfg.epochs);
            }
        }
        Ok(true)
    }

    /// Trains on epoch `epoch` from position `first` (with the loss sums of
    /// the samples before it) to its end or to `stop_after_steps`, writing
    /// checkpoints when due.
    fn pass(
        &mut self,
        epoch: usize,
        first: usize,
        partial: (f64, usize),
        epoch_start: Instant,
    ) -> Result<Pass> {
        let n = self.epoch_len(epoch)?;
        let bar = progress_bar(
            self.show_progress,
            (n - first) as u64,
            epoch,
            self.cfg.epochs,
        );
        let mut pass = Pass {
            position: first,
            loss_sum: partial.0,
            loss_count: partial.1,
            stopped: false,
        };
        let skipped = Arc::clone(&self.skipped);
        let loader =
            Loader::new(self.sources.train, self.sources.cache, self.cfg).holding_out(&skipped);
        let result = std::thread::scope(|scope| -> Result<()> {
            for batch in loader.spawn(scope, epoch as u64, first) {
                let batch = batch?;
                let b = batch.indices.len();
                let value = self.step(batch, epoch)?;
                pass.loss_sum += value as f64 * b as f64;
                pass.loss_count += b;
                pass.position += b;
                bar.inc(b as u64);
                let step = self.opt.step();
                pass.stopped = self.opts.stop_after_steps == Some(step);
                let due = self
                    .opts
                    .checkpoint_every
                    .is_some_and(|k| k > 0 && step.is_multiple_of(k));
                if due || pass.stopped {
                    let progress = Progress {
                        epoch,
                        position: pass.position,
                        loss_sum: pass.loss_sum,
                        loss_count: pass.loss_count,
                        train_seconds: self.progress.train_seconds
                            + epoch_start.elapsed().as_secs_f64(),
                    };
                    self.save_checkpoint(progress)?;
                }
                if pass.stopped {
                    break;
                }
            }
            Ok(())
        });
        bar.finish_and_clear();
        result?;
        Ok(pass)
    }

    /// One optimizer step on one batch; returns the batch's mean loss.
    fn step(&mut self, batch: Batch, epoch: usize) -> Result<f32> {
        let b = batch.indices.len();
        // The online teacher's targets come from the function the cache
        // writer uses, so online and cached distillation see the same numbers.
        let online = match self.sources.online_teacher {
            Some(t) => {
                let mut lp = vec![0f32; b * self.spec.num_classes()];
                teacher_targets(t, &batch.inputs, b, self.cfg.loss.temperature, &mut lp).map_err(
                    |e| Error::Training {
                        context: format!(
                            "online teacher, epoch {} step {}",
                            epoch + 1,
                            self.opt.step() + 1
                        ),
                        message: e.to_string(),
                    },
                )?;
                Some(lp)
            }
            None => None,
        };
        let x = self
            .device
            .tensor_from_vec(batch.inputs, (b, self.spec.input_len()));
        self.net.set_step(self.opt.step());
        let logits = self.net.forward(x.traced(Gradients::leaky()));
        let targets = Targets {
            classes: self.spec.num_classes(),
            labels: batch.labels.as_deref(),
            teacher_logprobs: batch.logprobs.as_deref().or(online.as_deref()),
        };
        let l = loss_mixed(&self.cfg.loss, logits, &targets, batch.mix.as_ref())?;
        let value = l.as_vec().first().copied().unwrap_or(f32::NAN);
        if !value.is_finite() {
            return Err(Error::Training {
                context: format!("epoch {} step {}", epoch + 1, self.opt.step() + 1),
                message: format!(
                    "the loss became {value}; lower `optimizer.lr` or check the cache"
                ),
            });
        }
        let mut grads = l.backward();
        self.opt.update(&mut self.net, &mut grads)?;
        self.pruning.apply(&mut self.net);
        let masks = self.dir.masks();
        self.pruning
            .after_step(self.opt.step(), &mut self.net, &masks)?;
        if let Some(a) = &mut self.average {
            a.update(&self.net)?;
        }
        Ok(value)
    }

    /// After a whole epoch: evaluates, records and prints its metrics, and
    /// writes a checkpoint at the epoch boundary when checkpoints are on.
    fn end_epoch(
        &mut self,
        epoch: usize,
        first: usize,
        pass: &Pass,
        epoch_start: Instant,
    ) -> Result<()> {
        let epoch_secs = epoch_start.elapsed().as_secs_f64();
        self.progress.train_seconds += epoch_secs;
        check_weights_finite(&self.net, epoch)?;
        let averaged = self.averaged();
        let net = averaged.as_ref().unwrap_or(&self.net);
        let eval = match self.sources.test {
            Some(test) => Some(evaluate(net, test, EVAL_BATCH)?),
            None => None,
        };
        let val = match self.validation.is_empty() {
            true => None,
            false => Some(evaluate_samples(
                net,
                self.sources.train,
                self.validation.indices(),
                EVAL_BATCH,
            )?),
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: pass.loss_sum / pass.loss_count.max(1) as f64,
            test_loss: eval.as_ref().and_then(|e| e.loss),
            test_accuracy: eval.as_ref().and_then(|e| e.accuracy),
            val_loss: val.as_ref().and_then(|e| e.loss),
            val_accuracy: val.as_ref().and_then(|e| e.accuracy),
            teacher_agreement: match (&eval, &self.sources.teacher_test_predictions) {
                (Some(e), Some(t)) => e.agreement(t),
                _ => None,
            },
            lr: self.cfg.optimizer.lr_at(self.opt.step(), self.total_steps),
            epoch_seconds: epoch_secs,
            train_samples_per_sec: pass.position.saturating_sub(first) as f64
                / epoch_secs.max(1e-9),
            weight_sparsity: self.pruning.sparsity(),
        };
        if !self.opts.quiet {
            eprintln!("{}", m.summary_line(self.cfg.epochs));
        }
        self.metrics.push(m);
        write_metrics(&self.dir.metrics(), &self.metrics)?;
        if self.opts.snapshot_epochs.contains(&(epoch + 1)) {
            let net = averaged.as_ref().unwrap_or(&self.net);
            self.write_snapshot(epoch + 1, net)?;
        }
        if self.opts.keep_best && best::is_new_best(&self.metrics) {
            let net = averaged.as_ref().unwrap_or(&self.net);
            best::replace(&self.dir, |dir| {
                self.write_snapshot_into(dir, epoch + 1, net)
            })?;
        }
        self.progress = Progress {
            epoch: epoch + 1,
            position: 0,
            loss_sum: 0.0,
            loss_count: 0,
            train_seconds: self.progress.train_seconds,
        };
        if self.opts.checkpoint_every.is_some() || self.opts.resume {
            self.save_checkpoint(self.progress)?;
        }
        Ok(())
    }

    fn save_checkpoint(&self, progress: Progress) -> Result<()> {
        let identity = self.identity();
        let state = RunState {
            progress,
            metrics: &self.metrics,
            masks: self.pruning.masks(),
            average: self.average.as_ref(),
        };
        checkpoint::save(
            &self.dir.checkpoint(),
            identity,
            &self.net,
            &self.opt,
            state,
        )
    }

    /// The network of the averaged weights, when the run averages them
    /// (`ema`): what it evaluates and writes.
    fn averaged(&self) -> Option<Network<D>> {
        self.average
            .as_ref()
            .map(|a| a.network(&self.net, &self.pruning))
    }

    /// Which run this is, for its checkpoint.
    fn identity(&self) -> RunIdentity<'_> {
        RunIdentity {
            cfg: self.cfg,
            cache_id: &self.cache_id,
            train_fingerprint: &self.sources.train.fingerprint().0,
            online_teacher: &self.online_teacher_fingerprint,
        }
    }

    /// The run's card as of now: after its last finished epoch. `net` is
    /// the network the run writes: the live one, or the averaged one
    /// ([`Self::averaged`]).
    fn card(&self, net: &Network<D>) -> ModelCard {
        let cache_ref = match (self.sources.cache, &self.sources.cache_dir) {
            (Some(c), Some(dir)) => Some(CacheRef::from_views(c, dir)),
            _ => None,
        };
        let mut card = ModelCard::new(
            net,
            self.cfg,
            self.opts,
            self.sources.train,
            self.sources.test,
            cache_ref,
            self.metrics.last(),
            self.progress.train_seconds,
        );
        card.online_teacher = self.sources.online_teacher.map(|t| OnlineTeacherRef {
            spec: t.spec().to_string(),
            weights_fingerprint: self.online_teacher_fingerprint.clone(),
        });
        if let (Some(d), true) = (card.data.as_mut(), self.cfg.train_fraction < 1.0) {
            d.trained_samples = Some(self.skipped.train_len());
        }
        card.with_validation(
            self.validation.len(),
            self.opts.val_teacher_trained,
            &self.metrics,
        )
    }

    /// The card of the run; a finished run's files.
    fn finish(self, finished: bool) -> Result<TrainOutcome<D>> {
        let averaged = self.averaged();
        let net = averaged.as_ref().unwrap_or(&self.net);
        let card = self.card(net);
        if finished {
            // A plot that could not be drawn is reported once the run has
            // finished as a whole: the model and its card are written.
            let plot_failed = self.write_model(&self.dir, &card, net)?;
            // Before the checkpoint: stopped between the two, `resume`
            // continues the checkpoint and comes here again.
            drop_earlier_model(&self.dir)?;
            // A checkpoint left beside the card would make every rerun
            // continue it and write the model again.
            let checkpoint = self.dir.checkpoint();
            if checkpoint.exists() {
                crate::fsutil::remove_if_present(&checkpoint)?;
                crate::fsutil::fsync_dir(self.dir.path())?;
            }
            if self.opts.keep_best {
                if let Some(why) = best::mismatch(&self.dir, &self.metrics) {
                    eprintln!("warning: the best epoch's model was not kept: {why}");
                }
            }
            if let Some(e) = plot_failed {
                return Err(e);
            }
        }
        let network = averaged.unwrap_or(self.net);
        Ok(TrainOutcome {
            network,
            card,
            metrics: self.metrics,
            finished,
            trained: true,
        })
    }

    /// Writes the model as it stands after epoch `epoch` (1-based) into
    /// `OUT/epoch-NNN/` ([`snapshot_dir`]): a complete model directory with
    /// the metrics up to that epoch, which every command that reads a model
    /// takes (an early-stopped teacher, for one).
    /// `net` is the network the run writes (the live or the averaged one).
    fn write_snapshot(&self, epoch: usize, net: &Network<D>) -> Result<()> {
        let dir = ModelDir::new(snapshot_dir(self.dir.path(), epoch));
        fs::create_dir_all(dir.path()).map_err(|e| Error::io(dir.path(), e))?;
        self.write_snapshot_into(&dir, epoch, net)
    }

    /// Writes the model as it stands after epoch `epoch` into `dir`, which
    /// exists: card with `snapshot_epoch`, metrics up to that epoch.
    fn write_snapshot_into(&self, dir: &ModelDir, epoch: usize, net: &Network<D>) -> Result<()> {
        let mut card = self.card(net);
        card.snapshot_epoch = Some(epoch);
        write_metrics(&dir.metrics(), &self.metrics)?;
        match self.write_model(dir, &card, net)? {
            Some(plot_failed) => Err(plot_failed),
            None => Ok(()),
        }
    }

    /// Writes `net`'s weights (and `model.py`), the masks, the curves and,
    /// last, the card into `dir`. A plot that could not be drawn does not
    /// take the model with it: the card is still written, and the plot's
    /// error returned as `Ok(Some(..))`.
    fn write_model(
        &self,
        dir: &ModelDir,
        card: &ModelCard,
        net: &Network<D>,
    ) -> Result<Option<Error>> {
        save_weights(net, dir.weights())?;
        if let Some(m) = self.pruning.masks() {
            let mut meta = HashMap::new();
            meta.insert(SPEC_KEY.to_string(), self.net.spec().as_str().to_string());
            write_safetensors(&dir.masks(), m, meta)?;
        } else if dir.masks().exists() {
            // A stale mask from an earlier run would be picked up with these weights.
            let _ = fs::remove_file(dir.masks());
        }
        let baseline = self.opts.baseline_metrics.as_deref().map(curve_points);
        let curves = training_curves(
            &dir.curves(),
            &curve_points(&self.metrics),
            baseline.as_deref(),
            self.opts.teacher_accuracy,
        );
        // Last: a card says the model beside it is whole.
        card.save(&dir.card())?;
        Ok(curves.err())
    }
}

/// Where a run in `out` keeps its snapshot after epoch `epoch` (1-based):
/// `out/epoch-NNN`.
pub fn snapshot_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join(format!("epoch-{epoch:03}"))
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

/// Refuses weights that are no longer finite after `epoch` (0-based). A
/// NaN can pass through a finite loss (a ReLU maps it to 0), and a model
/// of NaN weights must not be written as finished.
fn check_weights_finite<D: Backend>(net: &Network<D>, epoch: usize) -> Result<()> {
    match net
        .params()
        .iter()
        .find(|p| p.value.to_vec().iter().any(|v| !v.is_finite()))
    {
        None => Ok(()),
        Some(p) => Err(Error::Training {
            context: format!("epoch {}", epoch + 1),
            message: format!(
                "weight {} is no longer finite (NaN or inf); lower `optimizer.lr`, or check \
                 `normalize` and the cache",
                p.name
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_weight_gone_non_finite_stops_the_run_by_name() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::parse("mlp:4-3-2").unwrap();
        let mut net = Network::new(spec, dev, 1);
        check_weights_finite(&net, 0).unwrap();
        let name = net.params()[2].name.clone();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let p = &mut net.params_mut()[2];
            let mut v = p.value.to_vec();
            v[1] = bad;
            p.value.copy_from(&v);
            let e = check_weights_finite(&net, 4).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("epoch 5: weight {name} is no longer finite")),
                "{e}"
            );
        }
    }
}
