//! What a run reads ([`TrainSources`]): the training and test splits, the
//! teacher's outputs (a cache, a set of augmented views, or a teacher run
//! online), and the teacher's test predictions; how they are opened from
//! their paths ([`SourcePaths::open`]); and the checks that they fit each
//! other and the run's config before any work starts.
//!
//! A teacher given to a loss that never reads it (alpha 1) is refused, so
//! that no run that looks like distillation trains on labels alone.
//!
//! Errors name the config's fields (`spec`, `loss.alpha`, `augment`) or the
//! sources' (`data`, `cache`, `test_cache`, `online_teacher`). A message
//! that points at another field to change writes its name in backticks.

use std::path::{Path, PathBuf};

use crate::cache::{CacheReader, CacheViews};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::model::compat::check_spec_compatible;
use crate::model::{Backend, ModelDir, ModelSpec, Network};

use super::card::ModelCard;
use super::config::{TrainConfig, DISTILL_ALPHA};
use super::loss::{LossConfig, LossKind};
use super::validation::{run_overlap, TeacherOverlap};

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

/// Where a run's sources are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourcePaths {
    /// Dataset directory: the train split, and the test split if present.
    pub data: PathBuf,
    /// Teacher-output cache (or view set) of the training split.
    pub cache: Option<PathBuf>,
    /// Teacher-output cache of the test split (agreement, teacher accuracy).
    pub test_cache: Option<PathBuf>,
    /// A model directory to run as the teacher on every batch.
    pub online_teacher: Option<PathBuf>,
}

/// The sources of a run, opened; [`OpenSources::sources`] lends them to
/// [`train`](super::fit::train).
pub struct OpenSources<D: Backend> {
    pub train: Dataset,
    pub test: Option<Dataset>,
    pub cache: Option<CacheViews>,
    pub cache_dir: Option<PathBuf>,
    pub teacher_test_predictions: Option<Vec<u32>>,
    /// The teacher's test accuracy, from the test cache's manifest.
    pub teacher_accuracy: Option<f64>,
    pub online_teacher: Option<Network<D>>,
    /// The teacher's model directory and, for a cache, the fingerprint of
    /// the weights it was built with (the manifest's record; the directory
    /// may be gone or retrained since).
    pub teacher_dir: Option<(PathBuf, Option<String>)>,
}

impl SourcePaths {
    /// Opens the datasets and caches and loads the online teacher on
    /// `device`. A missing test split is no error (there is then nothing to
    /// evaluate on), unless a test cache is given.
    pub fn open<D: Backend>(&self, device: D) -> Result<OpenSources<D>> {
        let train = Dataset::open(&self.data, Split::Train)?;
        let test = Dataset::open_test_beside(&self.data, &train)?;
        let cache = match &self.cache {
            Some(dir) => Some(open_views(dir)?),
            None => None,
        };
        let online_teacher = match &self.online_teacher {
            Some(dir) => Some(ModelDir::new(dir).load(device)?),
            None => None,
        };
        let (teacher_test_predictions, teacher_accuracy) = match (&self.test_cache, &test) {
            (Some(dir), Some(test)) => {
                let tc = open_test_cache(dir)?;
                match (&online_teacher, &cache, &self.online_teacher) {
                    (Some(net), _, Some(path)) => check_test_cache_teacher(
                        &tc,
                        &path.display().to_string(),
                        &net.fingerprint(),
                    )?,
                    (None, Some(c), _) if built_by_model(c.first()) => check_test_cache_teacher(
                        &tc,
                        &format!(
                            "{}'s teacher {}",
                            c.first().dir().display(),
                            c.first().manifest().teacher.source
                        ),
                        &c.first().manifest().teacher.fingerprint,
                    )?,
                    _ => {}
                }
                let accuracy = tc.manifest().teacher_stats.accuracy;
                (Some(test_predictions(&tc, test)?), accuracy)
            }
            (Some(_), None) => {
                return Err(Error::Config {
                    field: "test_cache".into(),
                    message: format!("{} has no test split to pair it with", self.data.display()),
                })
            }
            (None, _) => (None, None),
        };
        let teacher_dir = match (&self.online_teacher, &cache) {
            (Some(dir), _) => Some((dir.clone(), None)),
            (None, Some(c)) => {
                let first = c.first();
                let t = &first.manifest().teacher;
                let dir = recorded_teacher_dir(first.dir(), &t.source, &t.fingerprint);
                Some((dir, Some(t.fingerprint.clone())))
            }
            (None, None) => None,
        };
        Ok(OpenSources {
            train,
            test,
            cache,
            teacher_dir,
            cache_dir: self.cache.clone(),
            teacher_test_predictions,
            teacher_accuracy,
            online_teacher,
        })
    }
}

impl<D: Backend> OpenSources<D> {
    /// How many of the run's validation images its teacher trained on
    /// ([`TeacherOverlap`]); `None` without a teacher or a validation split.
    pub fn teacher_overlap(&self, cfg: &TrainConfig) -> Result<Option<TeacherOverlap>> {
        let Some((dir, fingerprint)) = &self.teacher_dir else {
            return Ok(None);
        };
        run_overlap(
            cfg,
            dir,
            fingerprint.as_deref(),
            &self.train.fingerprint().0,
            self.train.len(),
        )
    }

    /// The sources, borrowed for a run.
    pub fn sources(&self) -> TrainSources<'_, D> {
        TrainSources {
            train: &self.train,
            test: self.test.as_ref(),
            cache: self.cache.as_ref(),
            cache_dir: self.cache_dir.clone(),
            teacher_test_predictions: self.teacher_test_predictions.clone(),
            online_teacher: self.online_teacher.as_ref(),
        }
    }
}

/// Refuses a test cache built by running another model than the run's
/// teacher (`teacher`, described as `what`, with weights `fingerprint`): the
/// run's teacher agreement and the teacher's test accuracy would be that
/// other model's. Only a test cache shown to come from a model
/// ([`built_by_model`]) is compared: caches of imported logits or of an
/// ensemble record no model's weights, and pass.
pub fn check_test_cache_teacher(
    test_cache: &CacheReader,
    what: &str,
    fingerprint: &str,
) -> Result<()> {
    let t = &test_cache.manifest().teacher;
    if t.fingerprint == fingerprint || !built_by_model(test_cache) {
        return Ok(());
    }
    Err(Error::Config {
        field: "test_cache".into(),
        message: format!(
            "{} was built from another teacher ({}, weights {}) than the run's ({what}, weights {fingerprint}): \
             its teacher agreement and test accuracy would be that model's; build the test cache with the run's teacher",
            test_cache.dir().display(),
            t.source,
            t.fingerprint
        ),
    })
}

/// Whether `cache` was built by running a model that is still where its
/// manifest says ([`recorded_teacher_dir`]), with the weights it records:
/// then its `teacher.fingerprint` is that model's weights'. Imported logits
/// (the fingerprint is the file's), ensembles and teachers moved away are
/// not shown to be, and are not compared.
pub fn built_by_model(cache: &CacheReader) -> bool {
    let t = &cache.manifest().teacher;
    if t.spec.starts_with("ensemble:") {
        return false;
    }
    let dir = recorded_teacher_dir(cache.dir(), &t.source, &t.fingerprint);
    ModelCard::load(&ModelDir::new(&dir).card())
        .is_ok_and(|c| c.weights_fingerprint == t.fingerprint)
}

/// The teacher's model directory as a cache recorded it (`teacher.source`
/// in its manifest). A relative source is relative to where the build ran,
/// so when it does not lead to the cache's teacher from here, the same
/// relative path is tried under each of the cache directory's ancestors: a
/// cache built at a project's root finds its teacher from any working
/// directory. A candidate counts only if its card records the weights the
/// cache was built with; when none does, the source is returned as written
/// (and the caller's checks say what is wrong with it).
pub fn recorded_teacher_dir(cache_dir: &Path, source: &str, weights_fingerprint: &str) -> PathBuf {
    let recorded = PathBuf::from(source);
    let is_teacher = |dir: &Path| {
        ModelCard::load(&ModelDir::new(dir).card())
            .is_ok_and(|card| card.weights_fingerprint == weights_fingerprint)
    };
    if recorded.is_absolute() || is_teacher(&recorded) {
        return recorded;
    }
    let base = cache_dir
        .canonicalize()
        .unwrap_or_else(|_| cache_dir.to_path_buf());
    base.ancestors()
        .map(|a| a.join(&recorded))
        .find(|dir| is_teacher(dir))
        .unwrap_or(recorded)
}

/// Opens a cache or a set of augmented views for reading.
pub fn open_views(dir: &Path) -> Result<CacheViews> {
    // SAFETY: as in `open_cache`.
    Ok(unsafe { CacheViews::open(dir) }?)
}

/// Opens a cache for reading.
pub fn open_cache(dir: &Path) -> Result<CacheReader> {
    // SAFETY: shards are immutable once written (written to a temporary name,
    // synced, renamed) and distill never modifies or truncates them; the
    // contract that no other program does so while distill runs is stated in
    // FORMAT.md. Every block's checksum is checked before it is decoded.
    Ok(unsafe { CacheReader::open(dir) }?)
}

/// Opens the test split's cache (`test_cache`). A set of augmented views
/// is refused by name: it holds the teacher's outputs on augmented
/// images, not on the test split's.
pub fn open_test_cache(dir: &Path) -> Result<CacheReader> {
    if crate::cache::views::is_view_set(dir) {
        return Err(Error::Config {
            field: "test_cache".into(),
            message: format!(
                "{} is a set of augmented views ({} and view-N/ caches: the teacher's outputs on \
                 augmented images); `test_cache` needs a plain cache of the test split \
                 (`distill cache build --split test`, without --augment)",
                dir.display(),
                crate::cache::views::SUMMARY_FILE
            ),
        });
    }
    open_cache(dir)
}

/// The teacher's top class on every test image, from the test cache
/// (`test_cache`), checked to be the test split's.
pub fn test_predictions(test_cache: &CacheReader, test: &Dataset) -> Result<Vec<u32>> {
    check_cache_split(test_cache, test, "test_cache")?;
    Ok(test_cache.teacher_predictions(test)?)
}

/// Refuses a cache (given as the setting `field`) built on another split
/// than `data`'s: the teacher's outputs on the test split given as the
/// training cache, or the other way round, are named as such rather than
/// as a fingerprint that differs. A cache of `data` itself passes (its
/// split's name aside).
pub fn check_cache_split(cache: &CacheReader, data: &Dataset, field: &str) -> Result<()> {
    let built = &cache.manifest().dataset;
    let split = data.split().to_string();
    if built.split == split || built.fingerprint == data.fingerprint().0 {
        return Ok(());
    }
    Err(Error::Config {
        field: field.into(),
        message: format!(
            "{} holds the teacher's outputs on the {} split; `{field}` needs the {split} split's \
             (build it with `distill cache build --split {split}`)",
            cache.dir().display(),
            built.split
        ),
    })
}

/// Checks that a cache and a dataset belong together and fit the loss.
pub fn check_cache(
    cache: &CacheReader,
    train: &Dataset,
    spec: &ModelSpec,
    loss_cfg: &LossConfig,
) -> Result<()> {
    check_cache_split(cache, train, "cache")?;
    cache.check_pairing(
        &train.fingerprint().0,
        train.len() as u64,
        train.num_classes(),
    )?;
    if cache.num_classes() != spec.num_classes() {
        return Err(Error::Config {
            field: "spec".into(),
            message: format!(
                "the student {} has {} outputs but the cache holds {} classes",
                spec,
                spec.num_classes(),
                cache.num_classes()
            ),
        });
    }
    if loss_cfg.needs_labels() && !cache.has_labels() && train.labels().is_none() {
        return Err(unlabelled(loss_cfg));
    }
    if loss_cfg.kind == LossKind::Mse && !cache.encoding().is_dense() {
        return Err(Error::Config {
            field: "loss.kind".into(),
            message: format!(
                "logit matching (mse) needs a dense cache (f32, f16, q8 or hq:N); this one is {}",
                cache.encoding().describe()
            ),
        });
    }
    Ok(())
}

/// The error for a loss that reads labels the data does not have.
fn unlabelled(loss_cfg: &LossConfig) -> Error {
    let (field, message) = if loss_cfg.alpha > 0.0 {
        (
            "loss.alpha",
            format!(
                "alpha {} mixes in hard labels, but the data is unlabelled: use `loss.alpha` 0 or `loss.kind` pseudo",
                loss_cfg.alpha
            ),
        )
    } else if loss_cfg.kind == LossKind::Dkd {
        (
            "loss.kind",
            "dkd splits the teacher's outputs at the label's class, but the data is unlabelled: use `loss.kind` kd or pseudo".into(),
        )
    } else {
        (
            "loss.teacher_errors",
            "swap corrects the teacher with the labels, but the data is unlabelled: use `loss.teacher_errors` keep".into(),
        )
    };
    Error::Config {
        field: field.into(),
        message,
    }
}

impl<D: Backend> TrainSources<'_, D> {
    /// Checks the sources against the run's config and the student's
    /// `spec` (to be trained on `device`) before anything is trained or
    /// written.
    pub fn check(&self, cfg: &TrainConfig, spec: &ModelSpec, device: &D) -> Result<()> {
        crate::model::memory::check_fits(
            spec,
            cfg.batch_size,
            super::fit::EVAL_BATCH,
            device.memory_free(),
            &device.describe(),
        )?;
        let train = self.train;
        if train.is_empty() {
            return Err(Error::Config {
                field: "data".into(),
                message: format!("{} holds no training samples", train.source().display()),
            });
        }
        check_spec_compatible(spec, train)?;
        self.check_augment(cfg, train)?;
        if let Some(t) = self.online_teacher {
            if t.spec().num_classes() != spec.num_classes()
                || t.spec().input_len() != spec.input_len()
            {
                return Err(Error::Config {
                    field: "online_teacher".into(),
                    message: format!(
                        "teacher {} and student {} disagree on inputs or classes",
                        t.spec(),
                        spec
                    ),
                });
            }
        }
        if (self.cache.is_some() || self.online_teacher.is_some()) && !cfg.loss.needs_teacher() {
            return Err(teacher_unused(self, cfg));
        }
        match self.cache {
            Some(cache) => check_cache(cache.first(), train, spec, &cfg.loss),
            None if self.online_teacher.is_some() => Ok(()),
            None => check_hard_labels(cfg, train),
        }
    }

    /// An augmented run reads targets for the augmented images: from a view
    /// set built with the same augmentation, or from an online teacher.
    fn check_augment(&self, cfg: &TrainConfig, train: &Dataset) -> Result<()> {
        let Some(a) = &cfg.augment else {
            return Ok(());
        };
        a.check_shape(train.sample_shape())?;
        let Some(c) = self.cache else {
            return Ok(());
        };
        let cached = c.view_info().map(|v| v.augment.as_str());
        if cached == Some(a.to_string().as_str()) {
            return Ok(());
        }
        Err(Error::Config {
            field: "augment".into(),
            message: match cached {
                None => format!(
                    "{} holds the teacher's outputs for the unaugmented images, which are not valid targets for flipped or shifted ones; build a view set of the cache with augmentation {a} (several views) or distil from a teacher run on every batch (`online_teacher`)",
                    c.dir().display()
                ),
                Some(other) => format!(
                    "{a} differs from the augmentation {other} of the view set {}; leave `augment` unset to use the cache's",
                    c.dir().display()
                ),
            },
        })
    }
}

/// The error for a teacher given to a loss that never reads it (alpha 1 of
/// kd, dkd, dist or mse): such a run would train on hard labels alone while
/// looking like distillation.
fn teacher_unused<D: Backend>(sources: &TrainSources<'_, D>, cfg: &TrainConfig) -> Error {
    let (what, field) = match &sources.cache_dir {
        Some(dir) => (format!("the cache {}", dir.display()), "cache"),
        None => ("the online teacher".to_string(), "online_teacher"),
    };
    Error::Config {
        field: "loss.alpha".into(),
        message: format!(
            "{} puts all the weight on the hard labels, so {what} would never be read; lower `loss.alpha` to distil (the default with a teacher is {DISTILL_ALPHA}), or leave out `{field}` to train on hard labels",
            cfg.loss.alpha
        ),
    }
}

/// Without any teacher the loss must be plain cross-entropy on labels.
fn check_hard_labels(cfg: &TrainConfig, train: &Dataset) -> Result<()> {
    if cfg.loss.needs_teacher() {
        return Err(Error::Config {
            field: "cache".into(),
            message: format!(
                "the {} loss with alpha {} needs the teacher's outputs: give a cache of them",
                cfg.loss.kind, cfg.loss.alpha
            ),
        });
    }
    if train.labels().is_none() {
        return Err(Error::Config {
            field: "data".into(),
            message: format!(
                "{} has no labels; train from a teacher cache with `loss.alpha` 0 or `loss.kind` pseudo",
                train.source().display()
            ),
        });
    }
    Ok(())
}
