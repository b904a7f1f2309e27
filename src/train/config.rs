//! What defines a training run ([`TrainConfig`], recorded in the model card
//! and the checkpoint) and the options that do not change its result
//! ([`RunOptions`]).
//!
//! The defaults of every hyperparameter live here, in the `Default` impls
//! (with those of [`OptimizerConfig`] and [`LossConfig`]); the command line
//! shows and uses the same numbers. Errors name the config's fields
//! (`epochs`, `batch_size`, `loss.alpha`, ...), never a command-line flag.

use std::path::PathBuf;

use crate::data::augment::Augment;
use crate::data::{Normalization, NormalizeSetting};
use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::ModelSpec;
use crate::prune::schedule::GradualSchedule;

use super::loss::LossConfig;
use super::metrics::EpochMetrics;
use super::optim::OptimizerConfig;
use super::validation::ValidationSplit;
use super::validation::{check_fraction, check_train_fraction, ValFold};

pub use crate::model::compat::MAX_BATCH_SIZE;

/// The hard-label weight of a distillation run that names none (`distill
/// train --cache` without `--alpha`), chosen on validation: README.md,
/// "Defaults that distil", has the grid and its figures. ([`LossConfig`]'s
/// own default, alpha 1, is hard labels only: the loss of a run without a
/// teacher.)
pub const DISTILL_ALPHA: f32 = 0.1;

/// The temperature of a distillation run that names none, chosen on
/// validation with [`DISTILL_ALPHA`].
pub const DISTILL_TEMPERATURE: f32 = 1.0;

/// The fraction of the training split a run holds out for validation
/// unless told otherwise.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// The most epochs a run may have (a run plans every epoch's length
/// before it starts).
pub const MAX_EPOCHS: usize = 100_000;

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
    /// sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Gradual magnitude pruning during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_schedule: Option<GradualSchedule>,
    /// The model's input normalisation: `auto` (measured on the training
    /// split, or the starting model's with `init`), `none`, or given
    /// values. A config recorded before the field existed had none.
    #[serde(default = "no_normalization")]
    pub normalize: NormalizeSetting,
    /// Fraction of the training split held out for validation, drawn from
    /// the seed ([`ValidationSplit`]); 0 trains on every sample. Cards
    /// written before the split existed read as 0, which they were.
    #[serde(default)]
    pub val_fraction: f64,
    /// A fold of the training split held out instead of `val_fraction`
    /// ([`ValFold`]; `val_fraction` is then 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fold: Option<ValFold>,
    /// The seed the validation split is drawn from, when not the run's own
    /// `seed`: runs of several seeds can then share one split, e.g. the one
    /// their teacher held out ([`super::validation::TeacherOverlap`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_seed: Option<u64>,
    /// Fraction of the samples not held out that the run trains on, drawn
    /// from `seed` ([`ValidationSplit::not_training`]): a
    /// run with few labels. 1 (every sample) is not written, so a config
    /// recorded before the field existed reads as what it was.
    #[serde(default = "every_sample", skip_serializing_if = "is_every_sample")]
    pub train_fraction: f64,
    /// The decay of a moving average of the weights ([`super::average`]):
    /// with one, the run evaluates and writes the average, not the last
    /// step's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
}

/// Refuses mixed images (mixup, cutmix) in a run on part of the training
/// split: a mixed image's partner is a pure function of (seed, view,
/// sample) over the whole split (so a view set's teacher saw the same
/// image), and a sample whose partner the run does not train on is left
/// out, so a run on a fraction F would keep only about F of its subset.
pub fn check_subset_mixing(train_fraction: f64, augment: &Augment) -> Result<()> {
    if train_fraction >= 1.0 || augment.mix.is_none() {
        return Ok(());
    }
    Err(Error::Config {
        field: "train_fraction".into(),
        message: format!(
            "{train_fraction} with mixed images ({augment}): a mixed image's partner is drawn from the whole \
             training split, and a sample whose partner is outside the run's subset is left out, so it would \
             train on about {train_fraction} of its subset; use augmentation without mixup or cutmix, or train \
             on every sample"
        ),
    })
}

fn every_sample() -> f64 {
    1.0
}

fn is_every_sample(f: &f64) -> bool {
    *f == 1.0
}

fn no_normalization() -> NormalizeSetting {
    NormalizeSetting::Off
}

impl Default for TrainConfig {
    /// The defaults of a run. `spec` is empty: every run names its model.
    fn default() -> Self {
        TrainConfig {
            spec: String::new(),
            epochs: 10,
            batch_size: 128,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            loss: LossConfig::default(),
            window_blocks: 8,
            allow_topk_retemper: false,
            augment: None,
            prune_schedule: None,
            normalize: NormalizeSetting::Auto,
            val_fraction: DEFAULT_VAL_FRACTION,
            val_fold: None,
            val_seed: None,
            train_fraction: 1.0,
            ema: None,
        }
    }
}

impl TrainConfig {
    /// The seed the validation split is drawn from: `val_seed`, or the
    /// run's `seed`.
    pub fn split_seed(&self) -> u64 {
        self.val_seed.unwrap_or(self.seed)
    }

    /// The run's validation split of a training split of `n` samples: its
    /// fold or its fraction, drawn from [`Self::split_seed`].
    pub fn validation_split(&self, n: usize) -> Result<ValidationSplit> {
        ValidationSplit::of(self.val_fraction, self.val_fold, self.split_seed(), n)
    }

    /// The samples the run does not train on: its `validation` split
    /// ([`Self::validation_split`]) and, with a `train_fraction` below 1,
    /// those outside its subset, drawn from the run's `seed`.
    pub fn not_training(&self, validation: &ValidationSplit) -> Result<ValidationSplit> {
        validation.not_training(self.train_fraction, self.seed)
    }

    /// Checks every field; errors name the field. Returns the parsed spec.
    pub fn validate(&self) -> Result<ModelSpec> {
        let spec = ModelSpec::parse(&self.spec)?;
        if self.epochs == 0 || self.epochs > MAX_EPOCHS {
            return Err(Error::Config {
                field: "epochs".into(),
                message: format!("{} must be between 1 and {MAX_EPOCHS}", self.epochs),
            });
        }
        crate::model::compat::check_batch_size("batch_size", self.batch_size)?;
        if self.window_blocks == 0 {
            return Err(Error::Config {
                field: "window_blocks".into(),
                message: "0 blocks per shuffle window: a window holds at least 1".into(),
            });
        }
        self.optimizer.validate()?;
        self.loss.validate()?;
        check_fraction(self.val_fraction)?;
        check_train_fraction(self.train_fraction)?;
        if let Some(a) = &self.augment {
            check_subset_mixing(self.train_fraction, a)?;
        }
        if let (Some(seed), None, 0.0) = (self.val_seed, self.val_fold, self.val_fraction) {
            return Err(Error::Config {
                field: "val_seed".into(),
                message: format!(
                    "{seed} draws the validation split, and `val_fraction` 0 holds none out: \
                     leave one of the two out"
                ),
            });
        }
        if let Some(fold) = self.val_fold {
            if self.val_fraction != 0.0 {
                return Err(Error::Config {
                    field: "val_fold".into(),
                    message: format!(
                        "fold {fold} and val_fraction {} both given: a run holds out one or the other",
                        self.val_fraction
                    ),
                });
            }
            ValidationSplit::fold(fold, self.seed, 2 * fold.folds as usize)?;
        }
        if let Some(s) = &self.prune_schedule {
            s.validate()?;
        }
        if let Some(d) = self.ema {
            super::average::check_decay(d)?;
        }
        Ok(spec)
    }
}

/// Options of a run that do not change its result.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Write a checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: Option<u64>,
    /// Continue from the output directory's checkpoint if present.
    pub resume: bool,
    /// Write over a model or checkpoint of other settings in the output
    /// directory ([`super::outdir::claim_run_dir`]).
    pub overwrite: bool,
    /// No progress bar.
    pub quiet: bool,
    /// Stop after this many steps (for tests that simulate a crash).
    pub stop_after_steps: Option<u64>,
    /// Stop at the end of this epoch (1-based) of the schedule's
    /// `epochs`, as a run of the whole schedule stands there: with
    /// `snapshot_epochs` naming it, that epoch's model of the run, trained
    /// again (a sweep's chosen epoch, [`crate::sweep`]).
    pub stop_after_epoch: Option<usize>,
    /// After each of these epochs (1-based), write the model as it stands
    /// into `OUT/epoch-NNN/`, a complete model directory.
    pub snapshot_epochs: Vec<usize>,
    /// Keep the model of the best validation epoch in `OUT/best/`
    /// ([`super::best`]); needs a validation split.
    pub keep_best: bool,
    /// The command line, recorded in the card.
    pub command: String,
    /// Data directory, recorded in the card.
    pub data_dir: PathBuf,
    /// Start from these weights instead of random ones.
    pub init: Option<Vec<HostTensor>>,
    /// The input normalisation of the model `init` came from (`None`: it
    /// had none), which [`NormalizeSetting::Auto`] keeps.
    pub init_normalization: Option<Normalization>,
    /// The model directory `init` and `masks` were read from, named in
    /// errors about them.
    pub init_source: Option<PathBuf>,
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
    /// How many of the validation images the teacher trained on, when
    /// known ([`super::validation::TeacherOverlap`]), recorded in the card.
    pub val_teacher_trained: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shuffle_window_of_no_blocks_is_refused() {
        let cfg = TrainConfig {
            spec: "mlp:784-16-10".into(),
            window_blocks: 0,
            ..TrainConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("window_blocks") && e.contains("at least 1"),
            "{e}"
        );
        // A seed for a split that holds nothing out has nothing to draw.
        let cfg = TrainConfig {
            spec: "mlp:784-16-10".into(),
            val_seed: Some(5),
            val_fraction: 0.0,
            ..TrainConfig::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("val_seed") && e.contains("holds none out"),
            "{e}"
        );
    }

    #[test]
    fn the_training_subset_follows_the_seed_and_the_split_the_val_seed() {
        let run = |seed, val_seed| TrainConfig {
            spec: "mlp:784-16-10".into(),
            seed,
            val_seed,
            train_fraction: 0.2,
            ..TrainConfig::default()
        };
        let n = 500;
        let (a, b) = (run(1, Some(0)), run(2, Some(0)));
        // One validation split, two subsets.
        assert_eq!(
            a.validation_split(n).unwrap(),
            b.validation_split(n).unwrap()
        );
        let not_training =
            |c: &TrainConfig| c.not_training(&c.validation_split(n).unwrap()).unwrap();
        let (sa, sb) = (not_training(&a), not_training(&b));
        assert_ne!(sa, sb);
        assert_eq!((sa.train_len(), sb.train_len()), (90, 90));
        // The subset is the run seed's whatever the split's seed.
        let want = a.validation_split(n).unwrap().not_training(0.2, 1).unwrap();
        assert_eq!(sa, want);
        // A fraction of 1 trains on everything not held out.
        let all = TrainConfig {
            train_fraction: 1.0,
            ..a.clone()
        };
        assert_eq!(not_training(&all), a.validation_split(n).unwrap());
    }

    #[test]
    fn the_defaults_are_valid_once_a_spec_is_named() {
        let cfg = TrainConfig {
            spec: "mlp:784-32-10".into(),
            ..TrainConfig::default()
        };
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let base = TrainConfig {
            spec: "mlp:784-32-10".into(),
            ..TrainConfig::default()
        };
        let field = |cfg: TrainConfig| match cfg.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(
            field(TrainConfig {
                epochs: 0,
                ..base.clone()
            }),
            "epochs"
        );
        assert_eq!(
            field(TrainConfig {
                batch_size: 0,
                ..base.clone()
            }),
            "batch_size"
        );
        let mut c = base.clone();
        c.loss.alpha = 2.0;
        assert_eq!(field(c), "loss.alpha");
        let mut c = base;
        c.optimizer.lr = 0.0;
        assert_eq!(field(c), "optimizer.lr");
    }
}
