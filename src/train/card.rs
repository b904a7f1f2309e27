//! Model cards (`model.json`).
//!
//! The card records what a person needs to trust and reproduce a model: the
//! spec, its size and cost, the data (with fingerprints and the size of the
//! validation split held out of training), the cache it was distilled
//! from, every hyperparameter, the result (test and validation figures, and
//! the epoch validation would have chosen) and the command. The
//! training loop writes it when a run finishes; the sweep and `distill eval`
//! read it back.

use std::path::{Path, PathBuf};

use crate::cache::{CacheReader, CacheViews};
use crate::data::{Dataset, Normalization};
use crate::error::{Error, Result};
use crate::model::input_norm;
use crate::model::{Backend, Network};

use super::config::{RunOptions, TrainConfig};
use super::metrics::{best_val_epoch, EpochMetrics};

/// Which cache a model was distilled from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheRef {
    pub path: PathBuf,
    pub id: String,
    pub teacher_spec: String,
    pub teacher_fingerprint: String,
    pub temperature: f32,
    pub encoding: String,
    /// For a set of augmented views: how many, and the augmentation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
}

impl CacheRef {
    /// Describes an open cache or view set (`id` is the set's).
    pub fn from_views(set: &CacheViews, dir: &Path) -> Self {
        let mut r = Self::from_reader(set.first(), dir);
        r.id = set.id();
        if let Some(v) = set.view_info() {
            r.views = Some(v.views);
            r.augment = Some(format!("{} (seed {})", v.augment, v.seed));
        }
        r
    }

    /// Describes an open cache.
    pub fn from_reader(reader: &CacheReader, dir: &Path) -> Self {
        let m = reader.manifest();
        CacheRef {
            path: dir.to_path_buf(),
            id: m.id.clone(),
            teacher_spec: m.teacher.spec.clone(),
            teacher_fingerprint: m.teacher.fingerprint.clone(),
            temperature: reader.temperature(),
            encoding: reader.encoding().to_string(),
            views: None,
            augment: None,
        }
    }
}

/// The teacher an online run ran on every batch (`train --online-teacher`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OnlineTeacherRef {
    pub spec: String,
    pub weights_fingerprint: String,
}

/// The data a model was trained and tested on.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataRef {
    pub dir: PathBuf,
    pub train_fingerprint: String,
    pub train_samples: usize,
    pub test_fingerprint: Option<String>,
    pub test_samples: Option<usize>,
    /// Training samples held out for validation (never trained on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_samples: Option<usize>,
    /// How many of them the teacher trained on (absent: no teacher, or its
    /// card could not tell). Above 0, validation flatters distillation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_teacher_trained: Option<usize>,
    /// The samples the run trained on, where it trained on part of those
    /// not held out (`train_fraction` below 1); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_samples: Option<usize>,
}

/// `model.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    pub spec: String,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub weights_fingerprint: String,
    /// The input normalisation the model applies (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    pub data: Option<DataRef>,
    pub config: Option<TrainConfig>,
    pub cache: Option<CacheRef>,
    /// The teacher of an online run (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online_teacher: Option<OnlineTeacherRef>,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// The last epoch's accuracy and loss on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// The epoch with the best validation accuracy (1-based), and the
    /// test accuracy measured after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_epoch: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_epoch_test_accuracy: Option<f64>,
    /// Set in a snapshot (`train --snapshot-epochs`): the epoch (1-based)
    /// after which these weights were written, short of `config.epochs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_epoch: Option<usize>,
    pub teacher_agreement: Option<f64>,
    pub train_seconds: f64,
    pub command: String,
    pub pytorch: String,
    pub distill_version: String,
}

impl ModelCard {
    /// Builds the card of a finished run.
    #[allow(clippy::too_many_arguments)]
    pub fn new<D: Backend>(
        net: &Network<D>,
        cfg: &TrainConfig,
        opts: &RunOptions,
        train: &Dataset,
        test: Option<&Dataset>,
        cache: Option<CacheRef>,
        last_epoch: Option<&EpochMetrics>,
        train_seconds: f64,
    ) -> Self {
        let spec = net.spec();
        ModelCard {
            spec: spec.to_string(),
            parameters: spec.param_count(),
            flops_per_sample: spec.flops(),
            weights_fingerprint: net.fingerprint(),
            normalization: net.normalization().cloned(),
            data: Some(DataRef {
                dir: opts.data_dir.clone(),
                train_fingerprint: train.fingerprint().0.clone(),
                train_samples: train.len(),
                test_fingerprint: test.map(|t| t.fingerprint().0.clone()),
                test_samples: test.map(Dataset::len),
                val_samples: None,
                val_teacher_trained: None,
                trained_samples: None,
            }),
            config: Some(cfg.clone()),
            cache,
            online_teacher: None,
            test_accuracy: last_epoch.and_then(|m| m.test_accuracy),
            test_loss: last_epoch.and_then(|m| m.test_loss),
            val_accuracy: None,
            val_loss: None,
            best_val_epoch: None,
            best_val_epoch_test_accuracy: None,
            snapshot_epoch: None,
            teacher_agreement: last_epoch.and_then(|m| m.teacher_agreement),
            train_seconds,
            command: opts.command.clone(),
            pytorch: input_norm::torch_code(spec, net.normalization()),
            distill_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Records the validation split's size (none when 0) and its figures
    /// from the run's per-epoch metrics: the last epoch's and the best one.
    pub fn with_validation(
        mut self,
        samples: usize,
        teacher_trained: Option<usize>,
        metrics: &[EpochMetrics],
    ) -> Self {
        if samples == 0 {
            return self;
        }
        if let Some(d) = self.data.as_mut() {
            d.val_samples = Some(samples);
            d.val_teacher_trained = teacher_trained;
        }
        let last = metrics.last();
        self.val_accuracy = last.and_then(|m| m.val_accuracy);
        self.val_loss = last.and_then(|m| m.val_loss);
        let best = best_val_epoch(metrics);
        self.best_val_epoch = best.map(|m| m.epoch);
        self.best_val_epoch_test_accuracy = best.and_then(|m| m.test_accuracy);
        self
    }

    /// Writes the card as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!("cannot serialise the card: {e}"),
        })?;
        crate::model::io::atomic_write(path, text.as_bytes())
    }

    /// Reads a card.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!(
                "not a distill model card: {}",
                crate::error::parser_message(&e)
            ),
        })
    }
}
