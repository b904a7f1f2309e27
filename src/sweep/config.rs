//! What defines a sweep: [`SweepConfig`], its defaults and its validation,
//! and the [`SweepSettings`] it is resolved from.
//!
//! A config names the caches, the data, the students, the temperatures and
//! loss weights, and the training settings every run shares; [`super::plan`]
//! expands it into runs. Its errors name its fields (`alphas`,
//! `checkpoint_every`, `optimizer.lr`).
//!
//! Settings come from a TOML file (`sweep.toml`) and from the command line,
//! with the same names: every key is optional, `students = ["mlp:784-32-10"]`,
//! `test-cache = "..."`, `batch = 64` (or a grid: `batches = [32, 64]`),
//! `seed = 0` (or several: `seeds = [0, 1, 2]`). [`SweepConfig::resolve`] lays the
//! command line's settings over the file's over the defaults. A bad value
//! that came from the file is reported with the file and its key
//! (`sweep.toml: key `alphas`: 1.5 must be in [0, 1]`); relative paths in the
//! file are relative to the file.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::data::augment::Augment;
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::train::config::{DISTILL_ALPHA, DISTILL_TEMPERATURE};
use crate::train::loss::{LossConfig, LossKind};
use crate::train::optim::OptimizerConfig;
use crate::train::trainer::TrainConfig;

/// The most runs a sweep may plan.
pub const MAX_RUNS: usize = 10_000;

/// Everything that defines a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepConfig {
    /// Teacher-output cache of the training split.
    pub cache: PathBuf,
    /// Teacher-output cache of the test split (student-teacher agreement).
    pub test_cache: Option<PathBuf>,
    /// Dataset directory.
    pub data: PathBuf,
    /// Teacher model directory, for its accuracy and forward-pass timing
    /// (default: the cache manifest's teacher source, if that directory exists).
    pub teacher: Option<PathBuf>,
    pub students: Vec<String>,
    pub temperatures: Vec<f32>,
    pub alphas: Vec<f32>,
    /// Also train each student on hard labels alone.
    pub baseline: bool,
    /// Also train each student on hard labels with each of these
    /// augmentations: the report compares the distilled runs with the
    /// strongest baseline on validation, plain or augmented.
    pub baseline_augments: Vec<Augment>,
    pub loss: LossKind,
    pub epochs: usize,
    /// Every setting (each baseline and each T and alpha) trains once at
    /// each of these batch sizes, and validation chooses among them too.
    pub batch_sizes: Vec<usize>,
    /// Every setting trains once per seed; the report chooses on, and
    /// states, the mean over the seeds.
    pub seeds: Vec<u64>,
    pub optimizer: OptimizerConfig,
    pub window_blocks: usize,
    /// Runs trained at the same time.
    pub jobs: usize,
    /// Checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: u64,
    /// Fraction of the training split every run holds out for validation
    /// (the same samples in every run of a seed); settings are chosen on it.
    pub val_fraction: f64,
    /// The seed the validation split is drawn from, when not each run's own
    /// (e.g. the teacher's, so that no validation image trained the
    /// teacher, and every run of every seed holds out the same images).
    pub val_seed: Option<u64>,
    /// Fraction of the samples not held out that every run trains on (the
    /// same subset in every run of a seed; `train --train-fraction`).
    pub train_fraction: f64,
    /// The decay of the moving average of the weights every run evaluates
    /// and writes (`train --ema`), if any.
    pub ema: Option<f64>,
    /// Before the report, train each run of a chosen setting (and of the
    /// strongest baseline) again to the chosen epoch where it kept no
    /// weights after it (`replay.rs`).
    pub chosen_weights: bool,
    /// Output folder: `runs/NAME/` per run, the report at the top.
    pub out: PathBuf,
}

impl SweepConfig {
    /// The defaults of `distill sweep` (the same as `distill train`'s), with
    /// no students yet.
    pub fn new(cache: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        let train = TrainConfig::default();
        SweepConfig {
            cache,
            test_cache: None,
            data,
            teacher: None,
            students: Vec::new(),
            // A sweep distils: the defaults of `distill train --cache`,
            // chosen on validation, unless told.
            temperatures: vec![DISTILL_TEMPERATURE],
            alphas: vec![DISTILL_ALPHA],
            baseline: false,
            baseline_augments: Vec::new(),
            loss: train.loss.kind,
            epochs: train.epochs,
            batch_sizes: vec![train.batch_size],
            seeds: vec![train.seed],
            optimizer: train.optimizer,
            window_blocks: train.window_blocks,
            jobs: 1,
            checkpoint_every: 200,
            val_fraction: train.val_fraction,
            val_seed: None,
            train_fraction: train.train_fraction,
            ema: None,
            chosen_weights: false,
            out,
        }
    }

    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let cfg_err = |field: &str, message: String| Error::Config {
            field: field.into(),
            message,
        };
        if self.out.exists() && !self.out.is_dir() {
            return Err(cfg_err(
                "out",
                format!(
                    "{} is a file; a sweep writes its runs and report into a directory",
                    self.out.display()
                ),
            ));
        }
        if self.students.is_empty() {
            return Err(cfg_err("students", "name at least one model spec".into()));
        }
        for s in &self.students {
            ModelSpec::parse(s)?;
        }
        if self.temperatures.is_empty() {
            return Err(cfg_err("temperatures", "name at least one".into()));
        }
        if self.alphas.is_empty() {
            return Err(cfg_err("alphas", "name at least one".into()));
        }
        for &t in &self.temperatures {
            if let Err(message) = crate::numeric::check_temperature(t) {
                return Err(cfg_err("temperatures", message));
            }
        }
        // Pseudo-labels are the teacher's argmax, the same at every
        // temperature, with no hard-label term: more settings would train
        // the same run again.
        if self.loss == LossKind::Pseudo {
            if self.alphas.iter().any(|&a| a != 0.0) {
                return Err(cfg_err(
                    "alphas",
                    "the pseudo loss has no hard-label term to weigh: name 0 alone".into(),
                ));
            }
            if self.temperatures.iter().any(|&t| t != self.temperatures[0]) {
                return Err(cfg_err(
                    "temperatures",
                    "the pseudo loss reads the teacher's argmax, the same at every temperature: name one".into(),
                ));
            }
        }
        for &a in &self.alphas {
            if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
                return Err(cfg_err("alphas", format!("{a} must be in [0, 1]")));
            }
            if a == 1.0 {
                return Err(cfg_err(
                    "alphas",
                    "1 trains on hard labels only and never reads the cache; the hard-label run is `baseline`".into(),
                ));
            }
        }
        if self.window_blocks == 0 {
            return Err(cfg_err(
                "window_blocks",
                "0 blocks per shuffle window: a window holds at least 1".into(),
            ));
        }
        if self.jobs == 0 || self.jobs > 256 {
            return Err(cfg_err(
                "jobs",
                format!("{} must be between 1 and 256", self.jobs),
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(cfg_err("checkpoint_every", "must be at least 1".into()));
        }
        if self.seeds.is_empty() {
            return Err(cfg_err("seeds", "name at least one".into()));
        }
        if self.batch_sizes.is_empty() {
            return Err(cfg_err("batch_sizes", "name at least one".into()));
        }
        for &b in &self.batch_sizes {
            crate::model::compat::check_batch_size("batch_sizes", b)?;
        }
        let (students, temperatures, alphas, batches, seeds) = (
            super::plan::dedup(&self.students).len() as u128,
            super::plan::dedup(&self.temperatures).len() as u128,
            super::plan::dedup(&self.alphas).len() as u128,
            super::plan::dedup(&self.batch_sizes).len() as u128,
            super::plan::dedup(&self.seeds).len() as u128,
        );
        let augmented = super::plan::dedup(&self.baseline_augments).len() as u128;
        let baselines = u128::from(self.baseline) + augmented;
        let runs = students * seeds * batches * (temperatures * alphas + baselines);
        if runs > MAX_RUNS as u128 {
            // Blamed on the longest list (the first of the longest).
            let lists = [
                ("students", students),
                ("seeds", seeds),
                ("batch_sizes", batches),
                ("temperatures", temperatures),
                ("alphas", alphas),
                ("baseline_augments", augmented),
            ];
            let longest = lists
                .iter()
                .fold(lists[0], |best, &l| if l.1 > best.1 { l } else { best })
                .0;
            return Err(cfg_err(
                longest,
                format!(
                    "{students} students x {}{}({temperatures} temperatures x {alphas} alphas{}) \
                     is {runs} runs; a sweep has at most {MAX_RUNS}: split it into several \
                     sweeps or narrow the grid",
                    match seeds {
                        1 => String::new(),
                        n => format!("{n} seeds x "),
                    },
                    match batches {
                        1 => String::new(),
                        n => format!("{n} batch sizes x "),
                    },
                    match baselines {
                        0 => String::new(),
                        1 => " + baseline".to_string(),
                        n => format!(" + {n} baselines"),
                    }
                ),
            ));
        }
        // The settings every run shares (epochs, optimizer).
        for s in &self.students {
            self.train_config(s).validate()?;
        }
        Ok(())
    }

    /// The training config of `student`'s plain hard-label baseline at the
    /// first batch size and seed; the other runs differ in their loss, batch
    /// size, seed or augmentation.
    pub fn train_config(&self, student: &str) -> TrainConfig {
        TrainConfig {
            spec: student.to_string(),
            epochs: self.epochs,
            batch_size: self.batch_sizes.first().copied().unwrap_or(0),
            seed: self.seeds.first().copied().unwrap_or(0),
            optimizer: self.optimizer,
            loss: LossConfig::hard_labels(),
            window_blocks: self.window_blocks,
            allow_topk_retemper: false,
            augment: None,
            prune_schedule: None,
            normalize: TrainConfig::default().normalize,
            val_fraction: self.val_fraction,
            val_fold: None,
            val_seed: self.val_seed,
            train_fraction: self.train_fraction,
            ema: self.ema,
        }
    }

    /// The config of `flags` (the command line's settings) laid over those
    /// of the TOML file at `file`, over the defaults; validated.
    ///
    /// An error about a value the file set (and the flags did not) names
    /// the file and its key ([`Error::ConfigFile`]); any other names the
    /// config field ([`Error::Config`]).
    pub fn resolve(flags: SweepSettings, file: Option<&Path>) -> Result<SweepConfig> {
        let Some(path) = file else {
            return flags.into_config();
        };
        let from_file = SweepSettings::read(path)?;
        flags
            .clone()
            .over(from_file.clone())
            .into_config()
            .map_err(|e| blame(e, &flags, path, &from_file))
    }
}

/// A sweep's settings as a TOML file or the command line gives them, every
/// one optional. The TOML keys are the field names in kebab case, which are
/// also the flags' names.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SweepSettings {
    pub cache: Option<PathBuf>,
    pub test_cache: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub teacher: Option<PathBuf>,
    pub students: Option<Vec<String>>,
    pub temperatures: Option<Vec<f64>>,
    pub alphas: Option<Vec<f32>>,
    pub baseline: Option<bool>,
    /// Augmentations of further hard-label baselines (`"shift=1"`).
    pub baseline_augments: Option<Vec<String>>,
    /// kd, dkd, dist, mse or pseudo.
    pub loss: Option<String>,
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    /// Batch sizes, every setting trained at each (not with `batch`).
    pub batches: Option<Vec<usize>>,
    /// sgd, adam or adamw.
    pub optimizer: Option<String>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub momentum: Option<f64>,
    /// constant or cosine.
    pub schedule: Option<String>,
    pub seed: Option<u64>,
    /// Seeds, every setting trained with each (not with `seed`).
    pub seeds: Option<Vec<u64>>,
    pub jobs: Option<usize>,
    pub checkpoint_every: Option<u64>,
    pub window_blocks: Option<usize>,
    pub val_fraction: Option<f64>,
    pub val_seed: Option<u64>,
    pub train_fraction: Option<f64>,
    pub ema: Option<f64>,
    pub chosen_weights: Option<bool>,
    pub out: Option<PathBuf>,
}

/// Config fields whose TOML key is not their last segment with `_` as `-`.
const KEY_RENAMES: &[(&str, &str)] = &[
    ("batch_size", "batch"),
    ("batch_sizes", "batches"),
    ("optimizer.kind", "optimizer"),
    ("loss.kind", "loss"),
    ("loss.alpha", "alphas"),
    ("loss.temperature", "temperatures"),
];

/// The TOML key that sets a config field (`checkpoint_every` ->
/// `checkpoint-every`, `optimizer.lr` -> `lr`, `batch_size` -> `batch`).
pub fn key_of(field: &str) -> String {
    if let Some((_, key)) = KEY_RENAMES.iter().find(|(f, _)| *f == field) {
        return key.to_string();
    }
    let field = field.trim_start_matches('-');
    field.rsplit('.').next().unwrap_or(field).replace('_', "-")
}

impl SweepSettings {
    /// Reads a TOML file of settings. Relative paths in it are made relative
    /// to the file's directory. Errors name the file and, where one is at
    /// fault, the key.
    pub fn read(path: &Path) -> Result<SweepSettings> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let err = |key: Option<&str>, message: &str| Error::ConfigFile {
            path: path.to_path_buf(),
            key: key.map(str::to_string),
            message: message.trim_end().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| err(None, &e.to_string()))?;
        // One key at a time first, so that an unknown key or a value of the
        // wrong type is reported with its key.
        for (key, value) in &table {
            let one: toml::Table = [(key.clone(), value.clone())].into_iter().collect();
            SweepSettings::deserialize(one).map_err(|e| err(Some(key), e.message()))?;
        }
        let mut s = SweepSettings::deserialize(table).map_err(|e| err(None, e.message()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut s.cache,
            &mut s.test_cache,
            &mut s.data,
            &mut s.teacher,
            &mut s.out,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(s)
    }

    /// These settings, with `lower`'s filling the ones these leave unset.
    pub fn over(self, lower: SweepSettings) -> SweepSettings {
        SweepSettings {
            cache: self.cache.or(lower.cache),
            test_cache: self.test_cache.or(lower.test_cache),
            data: self.data.or(lower.data),
            teacher: self.teacher.or(lower.teacher),
            students: self.students.or(lower.students),
            temperatures: self.temperatures.or(lower.temperatures),
            alphas: self.alphas.or(lower.alphas),
            baseline: self.baseline.or(lower.baseline),
            baseline_augments: self.baseline_augments.or(lower.baseline_augments),
            loss: self.loss.or(lower.loss),
            epochs: self.epochs.or(lower.epochs),
            // One batch size and a list are one setting: the higher layer's
            // (the flags over the file) replaces the lower's either way.
            batch: match self.batches.is_some() {
                true => self.batch,
                false => self.batch.or(lower.batch),
            },
            batches: match self.batch.is_some() {
                true => self.batches,
                false => self.batches.or(lower.batches),
            },
            optimizer: self.optimizer.or(lower.optimizer),
            lr: self.lr.or(lower.lr),
            weight_decay: self.weight_decay.or(lower.weight_decay),
            momentum: self.momentum.or(lower.momentum),
            schedule: self.schedule.or(lower.schedule),
            seed: match self.seeds.is_some() {
                true => self.seed,
                false => self.seed.or(lower.seed),
            },
            seeds: match self.seed.is_some() {
                true => self.seeds,
                false => self.seeds.or(lower.seeds),
            },
            jobs: self.jobs.or(lower.jobs),
            checkpoint_every: self.checkpoint_every.or(lower.checkpoint_every),
            window_blocks: self.window_blocks.or(lower.window_blocks),
            val_fraction: self.val_fraction.or(lower.val_fraction),
            val_seed: self.val_seed.or(lower.val_seed),
            train_fraction: self.train_fraction.or(lower.train_fraction),
            ema: self.ema.or(lower.ema),
            chosen_weights: self.chosen_weights.or(lower.chosen_weights),
            out: self.out.or(lower.out),
        }
    }

    /// Whether the setting of TOML key `key` is given.
    pub fn sets(&self, key: &str) -> bool {
        let given = [
            ("cache", self.cache.is_some()),
            ("test-cache", self.test_cache.is_some()),
            ("data", self.data.is_some()),
            ("teacher", self.teacher.is_some()),
            ("students", self.students.is_some()),
            ("temperatures", self.temperatures.is_some()),
            ("alphas", self.alphas.is_some()),
            ("baseline", self.baseline.is_some()),
            ("baseline-augments", self.baseline_augments.is_some()),
            ("loss", self.loss.is_some()),
            ("epochs", self.epochs.is_some()),
            ("batch", self.batch.is_some()),
            ("batches", self.batches.is_some()),
            ("optimizer", self.optimizer.is_some()),
            ("lr", self.lr.is_some()),
            ("weight-decay", self.weight_decay.is_some()),
            ("momentum", self.momentum.is_some()),
            ("schedule", self.schedule.is_some()),
            ("seed", self.seed.is_some()),
            ("seeds", self.seeds.is_some()),
            ("jobs", self.jobs.is_some()),
            ("checkpoint-every", self.checkpoint_every.is_some()),
            ("window-blocks", self.window_blocks.is_some()),
            ("val-fraction", self.val_fraction.is_some()),
            ("val-seed", self.val_seed.is_some()),
            ("train-fraction", self.train_fraction.is_some()),
            ("ema", self.ema.is_some()),
            ("chosen-weights", self.chosen_weights.is_some()),
            ("out", self.out.is_some()),
        ];
        given.iter().any(|&(k, set)| k == key && set)
    }

    /// The config these settings give over the defaults, validated.
    fn into_config(self) -> Result<SweepConfig> {
        let required = |v: Option<PathBuf>, field: &str| {
            v.ok_or_else(|| Error::Config {
                field: field.into(),
                message: "is required (on the command line or in the sweep's TOML file)".into(),
            })
        };
        let mut cfg = SweepConfig::new(
            required(self.cache, "cache")?,
            required(self.data, "data")?,
            required(self.out, "out")?,
        );
        cfg.test_cache = self.test_cache;
        cfg.teacher = self.teacher;
        cfg.students = self
            .students
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(l) = self.loss {
            cfg.loss = l.parse::<LossKind>().map_err(|e| for_field(e, "loss"))?;
        }
        if let Some(ts) = self.temperatures {
            // Checked as read: 1e-50 as an f32 is 0.
            cfg.temperatures = ts
                .into_iter()
                .map(crate::numeric::temperature_from_f64)
                .collect::<std::result::Result<_, _>>()
                .map_err(|message| Error::Config {
                    field: "temperatures".into(),
                    message,
                })?;
        }
        // Pseudo-labels have no hard-label term: alpha 0 unless told, as
        // with `distill train --loss pseudo`.
        cfg.alphas = match self.alphas {
            Some(a) => a,
            None if cfg.loss == LossKind::Pseudo => vec![0.0],
            None => cfg.alphas,
        };
        cfg.baseline = self.baseline.unwrap_or(false);
        cfg.epochs = self.epochs.unwrap_or(cfg.epochs);
        if let Some(a) = self.baseline_augments {
            cfg.baseline_augments = a
                .iter()
                .map(|text| text.trim())
                .filter(|text| !text.is_empty())
                .map(|text| Augment::parse(text).map_err(|e| augment_error(e, text)))
                .collect::<Result<_>>()?;
        }
        // Checked here, where the error can name the setting given.
        cfg.batch_sizes = match (self.batch, self.batches) {
            (Some(_), Some(_)) => {
                return Err(Error::Config {
                    field: "batch_sizes".into(),
                    message: "both `batch` and `batches` are given: name one batch size or a list"
                        .into(),
                })
            }
            (Some(b), None) => {
                crate::model::compat::check_batch_size("batch_size", b)?;
                vec![b]
            }
            (None, Some(list)) => list,
            (None, None) => cfg.batch_sizes,
        };
        let o = &mut cfg.optimizer;
        if let Some(k) = self.optimizer {
            o.kind = k.parse().map_err(|e| for_field(e, "optimizer.kind"))?;
        }
        if let Some(s) = self.schedule {
            o.schedule = s.parse().map_err(|e| for_field(e, "optimizer.schedule"))?;
        }
        o.lr = self.lr.unwrap_or(o.lr);
        o.weight_decay = self.weight_decay.unwrap_or(o.weight_decay);
        o.momentum = self.momentum.unwrap_or(o.momentum);
        cfg.seeds = match (self.seed, self.seeds) {
            (Some(_), Some(_)) => {
                return Err(Error::Config {
                    field: "seeds".into(),
                    message: "both `seed` and `seeds` are given: name one seed or a list".into(),
                })
            }
            (Some(s), None) => vec![s],
            (None, Some(list)) => list,
            (None, None) => cfg.seeds,
        };
        cfg.jobs = self.jobs.unwrap_or(cfg.jobs);
        cfg.checkpoint_every = self.checkpoint_every.unwrap_or(cfg.checkpoint_every);
        cfg.window_blocks = self.window_blocks.unwrap_or(cfg.window_blocks);
        cfg.val_fraction = self.val_fraction.unwrap_or(cfg.val_fraction);
        cfg.val_seed = self.val_seed.or(cfg.val_seed);
        cfg.train_fraction = self.train_fraction.unwrap_or(cfg.train_fraction);
        cfg.ema = self.ema.or(cfg.ema);
        cfg.chosen_weights = self.chosen_weights.unwrap_or(cfg.chosen_weights);
        cfg.validate()?;
        Ok(cfg)
    }
}

/// An error about the baseline augmentation `text` (its parse, or its fit
/// to the images), in the sweep's terms: field `baseline_augments`, the
/// augmentation named.
pub(crate) fn augment_error(e: crate::data::DataError, text: &str) -> Error {
    let message = match e {
        crate::data::DataError::Setting { message, .. } => message,
        other => other.to_string(),
    };
    Error::Config {
        field: "baseline_augments".into(),
        message: match message.contains(text) {
            true => message,
            false => format!("'{text}': {message}"),
        },
    }
}

/// A config error about `field` (a value parsed for it).
fn for_field(e: Error, field: &str) -> Error {
    match e {
        Error::Config { message, .. } => Error::Config {
            field: field.into(),
            message,
        },
        other => other,
    }
}

/// Puts an error about a value the file set, and the flags did not, in the
/// file's terms: its path and key.
fn blame(e: Error, flags: &SweepSettings, path: &Path, from_file: &SweepSettings) -> Error {
    let key = match &e {
        Error::Config { field, .. } => key_of(field),
        Error::Spec { .. } => "students".to_string(),
        _ => return e,
    };
    if !from_file.sets(&key) || flags.sets(&key) {
        return e;
    }
    let message = match e {
        Error::Config { message, .. } => message,
        other => other.to_string(),
    };
    Error::ConfigFile {
        path: path.to_path_buf(),
        key: Some(key),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::plan;
    use super::super::plan::tests::cfg;
    use super::*;
    use crate::train::optim::{OptimizerKind, Schedule};

    fn field(e: Error) -> String {
        match e {
            Error::Config { field, .. } => field,
            other => panic!("not a config error: {other}"),
        }
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        let mut c = cfg();
        c.alphas = vec![1.5];
        assert_eq!(field(plan(&c).unwrap_err()), "alphas");
        let mut c = cfg();
        c.students.clear();
        assert_eq!(field(plan(&c).unwrap_err()), "students");
        let mut c = cfg();
        c.jobs = 0;
        assert_eq!(field(plan(&c).unwrap_err()), "jobs");
        let mut c = cfg();
        c.checkpoint_every = 0;
        assert_eq!(field(c.validate().unwrap_err()), "checkpoint_every");
        // Pseudo-labels: alpha 0 alone, one temperature.
        let mut c = cfg();
        c.loss = LossKind::Pseudo;
        c.alphas = vec![0.0, 0.5];
        assert_eq!(field(c.validate().unwrap_err()), "alphas");
        c.alphas = vec![0.0];
        c.temperatures = vec![1.0, 4.0];
        assert_eq!(field(c.validate().unwrap_err()), "temperatures");
        c.temperatures = vec![4.0];
        c.validate().unwrap();
        // Temperatures below 0.01 (a subnormal one among them) and grids
        // past MAX_RUNS; repeats count once.
        for t in [1e-40, 0.005] {
            let mut c = cfg();
            c.temperatures = vec![t];
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("temperatures") && e.contains("[0.01, 1000]"),
                "{e}"
            );
        }
        let mut c = cfg();
        c.students = vec!["mlp:784-16-10".into()];
        c.baseline = false;
        c.temperatures = (1..=101).map(|t| t as f32).collect();
        c.alphas = (0..100).map(|a| a as f32 / 100.0).collect();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("10100 runs") && e.contains("at most 10000"),
            "{e}"
        );
        c.temperatures.truncate(100);
        c.temperatures.extend([1.0; 50]);
        c.validate().unwrap();
        let mut c = cfg();
        c.ema = Some(1.0);
        assert_eq!(field(c.validate().unwrap_err()), "ema");
        assert_eq!(key_of("checkpoint_every"), "checkpoint-every");
        assert_eq!(key_of("optimizer.weight_decay"), "weight-decay");
        assert_eq!(key_of("batch_size"), "batch");
    }

    /// A sweep file in a temporary directory with `extra` lines.
    fn file(extra: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.toml");
        let text = format!("cache = \"c\"\ndata = \"d\"\nout = \"o\"\n{extra}");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn the_file_lies_under_the_flags_and_its_paths_under_its_directory() {
        let (dir, path) =
            file("students = [\"mlp:784-16-10\"]\nalphas = [0.25]\nbatch = 32\nema = 0.99\n");
        let flags = SweepSettings {
            batch: Some(64),
            ..SweepSettings::default()
        };
        let c = SweepConfig::resolve(flags, Some(&path)).unwrap();
        assert_eq!(c.alphas, vec![0.25]);
        assert_eq!(c.batch_sizes, vec![64]);
        assert_eq!(c.ema, Some(0.99));
        assert_eq!(plan(&c).unwrap()[0].config.ema, Some(0.99));
        assert_eq!(c.students, vec!["mlp:784-16-10".to_string()]);
        assert_eq!(c.cache, dir.path().join("c"));
    }

    #[test]
    fn a_pseudo_sweep_takes_alpha_0_unless_told() {
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\nloss = \"pseudo\"\n");
        let c = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap();
        assert_eq!(c.alphas, vec![0.0]);
        let flags = SweepSettings {
            alphas: Some(vec![0.1]),
            ..SweepSettings::default()
        };
        assert_eq!(
            field(SweepConfig::resolve(flags, Some(&path)).unwrap_err()),
            "alphas"
        );
    }

    #[test]
    fn errors_from_the_file_name_the_file_and_key() {
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\nalphas = [1.5]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: key `alphas`: 1.5 must be in [0, 1]", path.display())
        );
        // The same value given as a flag is the flag's error: the field.
        let flags = SweepSettings {
            alphas: Some(vec![2.0]),
            ..SweepSettings::default()
        };
        let e = SweepConfig::resolve(flags, Some(&path)).unwrap_err();
        assert_eq!(field(e), "alphas");
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\nepochs = 0\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap_err();
        assert!(e.to_string().contains("key `epochs`"), "{e}");
        let (_dir, path) = file("studentz = [\"mlp:784-16-10\"]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap_err();
        assert!(
            e.to_string()
                .contains("sweep.toml: key `studentz`: unknown field"),
            "{e}"
        );
        // A temperature an f32 cannot hold is reported as written, not as 0.
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\ntemperatures = [4, 1e-50]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap_err();
        assert!(
            e.to_string().contains("key `temperatures`: 1e-50 must be"),
            "{e}"
        );
        let (_dir, path) = file("alphas = \"x\"\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap_err();
        assert!(e.to_string().contains("key `alphas`: invalid type"), "{e}");
    }

    #[test]
    fn every_key_is_read_and_known() {
        let (_dir, path) = file(
            "test-cache = \"t\"\nteacher = \"m\"\nstudents = [\"mlp:784-16-10\"]\n\
             temperatures = [2]\nalphas = [0.5]\nbaseline = true\nbaseline-augments = [\"flip\"]\nloss = \"mse\"\nepochs = 2\n\
             batch = 8\noptimizer = \"sgd\"\nlr = 0.1\nweight-decay = 0.01\nmomentum = 0.5\n\
             schedule = \"constant\"\nseed = 3\njobs = 2\ncheckpoint-every = 7\n\
             window-blocks = 4\nval-fraction = 0.2\nval-seed = 9\ntrain-fraction = 0.5\n",
        );
        let s = SweepSettings::read(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let key = line.split(" = ").next().unwrap();
            assert!(s.sets(key), "{key}");
        }
        assert!(!s.sets("studentz"));
        let c = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap();
        assert_eq!(c.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(c.optimizer.schedule, Schedule::Constant);
        assert_eq!((c.jobs, c.checkpoint_every, c.window_blocks), (2, 7, 4));
        // Every run's split is drawn from val-seed, not seed.
        let run = c.train_config("mlp:784-16-10");
        assert_eq!((run.seed, run.val_seed, run.split_seed()), (3, Some(9), 9));
        assert_eq!(run.train_fraction, 0.5);
        assert_eq!(
            run.validation_split(100).unwrap(),
            crate::train::validation::ValidationSplit::new(0.2, 9, 100).unwrap()
        );
    }

    #[test]
    fn a_batch_grid_is_a_list_that_one_batch_size_replaces() {
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\nbatches = [32, 128, 32]\n");
        let c = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap();
        assert_eq!(c.batch_sizes, vec![32, 128, 32]);
        // students x 2 batch sizes x (1 setting + no baseline).
        assert_eq!(plan(&c).unwrap().len(), 2);
        // A flag's one batch size replaces the file's list, and the other
        // way round.
        let flags = SweepSettings {
            batch: Some(16),
            ..SweepSettings::default()
        };
        let c = SweepConfig::resolve(flags, Some(&path)).unwrap();
        assert_eq!(c.batch_sizes, vec![16]);
        let (_dir, one) = file("students = [\"mlp:784-16-10\"]\nbatch = 8\n");
        let flags = SweepSettings {
            batches: Some(vec![64, 256]),
            ..SweepSettings::default()
        };
        let c = SweepConfig::resolve(flags, Some(&one)).unwrap();
        assert_eq!(c.batch_sizes, vec![64, 256]);
        // A grid past MAX_RUNS is blamed on its longest list.
        let flags = SweepSettings {
            seeds: Some((0..100).collect()),
            batches: Some((1..=101).collect()),
            ..SweepSettings::default()
        };
        let e = SweepConfig::resolve(flags, Some(&path)).unwrap_err();
        assert_eq!(field(e), "batch_sizes");
        // Both in one file, a bad size in a list, an empty list.
        let (_dir, both) = file("students = [\"mlp:784-16-10\"]\nbatch = 8\nbatches = [8]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&both)).unwrap_err();
        assert!(
            e.to_string()
                .contains("key `batches`: both `batch` and `batches`"),
            "{e}"
        );
        for (text, what) in [
            ("batches = [32, 0]", "0 must be between"),
            ("batches = []", "name at least one"),
        ] {
            let (_dir, bad) = file(&format!("students = [\"mlp:784-16-10\"]\n{text}\n"));
            let e = SweepConfig::resolve(SweepSettings::default(), Some(&bad)).unwrap_err();
            assert!(
                e.to_string().contains("key `batches`") && e.to_string().contains(what),
                "{e}"
            );
        }
        let (_dir, bad) = file("students = [\"mlp:784-16-10\"]\nbatch = 0\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&bad)).unwrap_err();
        assert!(
            e.to_string().contains("key `batch`: 0 must be between"),
            "{e}"
        );
    }

    #[test]
    fn seeds_are_a_list_that_one_seed_replaces() {
        let (_dir, path) = file("students = [\"mlp:784-16-10\"]\nseeds = [2, 0, 2]\n");
        let c = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap();
        assert_eq!(c.seeds, vec![2, 0, 2]);
        assert_eq!(plan(&c).unwrap().len(), 2);
        let flags = SweepSettings {
            seed: Some(5),
            ..SweepSettings::default()
        };
        assert_eq!(
            SweepConfig::resolve(flags, Some(&path)).unwrap().seeds,
            vec![5]
        );
        let (_dir, both) = file("students = [\"mlp:784-16-10\"]\nseed = 1\nseeds = [1]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&both)).unwrap_err();
        assert!(
            e.to_string()
                .contains("key `seeds`: both `seed` and `seeds`"),
            "{e}"
        );
        let (_dir, none) = file("students = [\"mlp:784-16-10\"]\nseeds = []\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&none)).unwrap_err();
        assert!(
            e.to_string().contains("key `seeds`: name at least one"),
            "{e}"
        );
        // Empty items of a list of augmentations are dropped.
        let flags = SweepSettings {
            baseline_augments: Some(vec!["flip".into(), " ".into()]),
            ..SweepSettings::default()
        };
        let c = SweepConfig::resolve(flags, Some(&path)).unwrap();
        assert_eq!(c.baseline_augments.len(), 1);
    }

    #[test]
    fn augmented_baselines_are_parsed_and_counted() {
        let (_dir, path) = file(
            "students = [\"mlp:784-16-10\"]\nbaseline = true\nbaseline-augments = [\"shift=1\", \"flip,shift=1\"]\nbatches = [32, 64]\n",
        );
        let c = SweepConfig::resolve(SweepSettings::default(), Some(&path)).unwrap();
        assert_eq!(
            c.baseline_augments[1],
            Augment::parse("shift=1,flip").unwrap()
        );
        // 2 batch sizes x (plain + 2 augmented + 1 distilled).
        assert_eq!(plan(&c).unwrap().len(), 8);
        let (_dir, bad) =
            file("students = [\"mlp:784-16-10\"]\nbaseline-augments = [\"shift=1\", \"spin\"]\n");
        let e = SweepConfig::resolve(SweepSettings::default(), Some(&bad)).unwrap_err();
        assert!(
            e.to_string().contains("key `baseline-augments`")
                && e.to_string().contains("unknown item 'spin'"),
            "{e}"
        );
        let flags = SweepSettings {
            baseline_augments: Some(vec!["shift=99".into()]),
            ..SweepSettings::default()
        };
        let e = SweepConfig::resolve(flags, Some(&path)).unwrap_err();
        assert_eq!(field(e), "baseline_augments");
        // The grid's size counts batch sizes and baselines.
        let mut c = cfg();
        c.students = vec!["mlp:784-16-10".into()];
        c.temperatures = (1..=50).map(|t| t as f32).collect();
        c.alphas = (0..50).map(|a| a as f32 / 100.0).collect();
        c.batch_sizes = vec![32, 64, 128, 256];
        c.baseline_augments = vec![Augment::parse("flip").unwrap()];
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("4 batch sizes") && e.contains("+ 2 baselines") && e.contains("10008 runs"),
            "{e}"
        );
    }
}
