//! The teacher as a sweep's report shows it: where its weights are
//! ([`teacher_dir`]), its size and accuracy ([`TeacherSummary`],
//! [`teacher_summary`]), the time of its forward pass over the training split
//! ([`teacher_forward_timing`], measured once and kept in the output folder),
//! and what the cache saved against online distillation ([`Savings`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::SweepConfig;
use super::plan::RunKind;
use super::results::RunResult;
use crate::cache::CacheReader;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Backend, ModelDir, ModelSpec, Network};
use crate::train::card::ModelCard;
use crate::train::sources::recorded_teacher_dir;

/// The teacher forward-pass timing, kept so a rerun need not measure it again.
pub const TEACHER_TIMING_FILE: &str = "teacher-forward.json";

/// The teacher, as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherSummary {
    pub spec: String,
    pub parameters: u64,
    pub flops_per_sample: u64,
    /// Test accuracy, where known.
    pub accuracy: Option<f64>,
    /// Where the accuracy comes from (the test cache, the teacher's card).
    pub accuracy_source: String,
}

/// A teacher forward pass over the training split, timed once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TeacherTiming {
    pub teacher_fingerprint: String,
    pub train_fingerprint: String,
    pub samples: usize,
    pub batch: usize,
    pub seconds: f64,
    pub device: String,
}

/// Times the teacher's forward pass over `train` (the cost a cache pays once
/// and online distillation pays every epoch), reusing `OUT/teacher-forward.json`
/// when it was measured for the same teacher and data.
pub fn teacher_forward_timing<D: Backend>(
    teacher: &Network<D>,
    train: &Dataset,
    out: &Path,
    device_name: &str,
) -> Result<TeacherTiming> {
    let path = out.join(TEACHER_TIMING_FILE);
    let fp = teacher.fingerprint();
    if let Ok(text) = fs::read_to_string(&path) {
        if let Ok(t) = serde_json::from_str::<TeacherTiming>(&text) {
            if t.teacher_fingerprint == fp
                && t.train_fingerprint == train.fingerprint().0
                && t.samples == train.len()
            {
                return Ok(t);
            }
        }
    }
    let batch = 500;
    let start = Instant::now();
    crate::teacher::forward_only(teacher, train, batch)?;
    let t = TeacherTiming {
        teacher_fingerprint: fp,
        train_fingerprint: train.fingerprint().0.clone(),
        samples: train.len(),
        batch,
        seconds: start.elapsed().as_secs_f64(),
        device: device_name.to_string(),
    };
    let text = serde_json::to_string_pretty(&t).map_err(|e| Error::Model {
        path: path.clone(),
        message: format!("cannot serialise: {e}"),
    })?;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::model::io::atomic_write(&path, text.as_bytes())?;
    Ok(t)
}

/// What the cache saved: the teacher forward pass once, against once per
/// epoch of every distilled run.
#[derive(Debug, Clone, PartialEq)]
pub struct Savings {
    pub forward_seconds: f64,
    pub samples: usize,
    pub distilled_runs: usize,
    /// Epochs summed over the distilled runs.
    pub distilled_epochs: usize,
    /// Samples an epoch trains on: the training split less the validation
    /// split, or the run's training subset (online distillation never runs
    /// the teacher on the others).
    pub trained_samples: usize,
}

impl Savings {
    /// From the timing and the distilled runs' cards.
    pub fn new(timing: &TeacherTiming, results: &[RunResult]) -> Self {
        let distilled: Vec<&RunResult> = results
            .iter()
            .filter(|r| matches!(r.kind, RunKind::Distilled { .. }))
            .collect();
        Savings {
            forward_seconds: timing.seconds,
            samples: timing.samples,
            distilled_runs: distilled.len(),
            distilled_epochs: distilled.iter().map(|r| r.epochs).sum(),
            trained_samples: distilled
                .first()
                .map_or(timing.samples, |r| {
                    r.trained_samples.unwrap_or_else(|| {
                        timing.samples.saturating_sub(r.val_samples.unwrap_or(0))
                    })
                })
                .min(timing.samples),
        }
    }

    /// The teacher forward time online distillation would have spent.
    pub fn online_seconds(&self) -> f64 {
        let per_epoch = self.trained_samples as f64 / self.samples.max(1) as f64;
        self.forward_seconds * per_epoch * self.distilled_epochs as f64
    }
}

/// The teacher's model directory: the config's `teacher`, else the cache's
/// recorded source ([`recorded_teacher_dir`]) if that is a directory that
/// still holds weights.
pub fn teacher_dir(cfg: &SweepConfig, cache: &CacheReader) -> Option<PathBuf> {
    match &cfg.teacher {
        Some(t) => Some(t.clone()),
        None => {
            let t = &cache.manifest().teacher;
            let p = recorded_teacher_dir(cache.dir(), &t.source, &t.fingerprint);
            (p.is_dir() && ModelDir::new(&p).has_weights()).then_some(p)
        }
    }
}

/// The teacher's spec (from the cache), size, and test accuracy: from the
/// test cache, else from the teacher's card (saying whether that was
/// measured on this test split). `None` if the cache's teacher spec does
/// not parse (a cache imported from logits).
pub fn teacher_summary(
    cache: &CacheReader,
    test_cache: Option<&CacheReader>,
    test: Option<&Dataset>,
    teacher_path: Option<&Path>,
) -> Option<TeacherSummary> {
    let spec = ModelSpec::parse(&cache.manifest().teacher.spec).ok()?;
    let card = teacher_path.and_then(|p| ModelCard::load(&ModelDir::new(p).card()).ok());
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
