//! What defines a sweep: [`SweepConfig`], its defaults and its validation.
//!
//! A config names the caches, the data, the students, the temperatures and
//! loss weights, and the training settings every run shares; [`super::plan`]
//! expands it into runs.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::train::loss::LossKind;
use crate::train::optim::{OptimizerConfig, OptimizerKind, Schedule};

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
    pub loss: LossKind,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub window_blocks: usize,
    /// Runs trained at the same time.
    pub jobs: usize,
    /// Checkpoint every this many steps (and at each epoch's end).
    pub checkpoint_every: u64,
    /// Output folder: `runs/NAME/` per run, the report at the top.
    pub out: PathBuf,
}

impl SweepConfig {
    /// The defaults of `distill sweep` (the same as `distill train`'s), with
    /// no students yet.
    pub fn new(cache: PathBuf, data: PathBuf, out: PathBuf) -> Self {
        SweepConfig {
            cache,
            test_cache: None,
            data,
            teacher: None,
            students: Vec::new(),
            temperatures: vec![4.0],
            alphas: vec![0.5],
            baseline: false,
            loss: LossKind::Kd,
            epochs: 10,
            batch_size: 128,
            seed: 0,
            optimizer: OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 1e-3,
                weight_decay: 0.0,
                momentum: 0.9,
                schedule: Schedule::Cosine,
            },
            window_blocks: 8,
            jobs: 1,
            checkpoint_every: 200,
            out,
        }
    }

    /// Checks every field; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        let cfg_err = |flag: &str, message: String| Error::Config {
            field: flag.into(),
            message,
        };
        if self.students.is_empty() {
            return Err(cfg_err("--students", "name at least one model spec".into()));
        }
        for s in &self.students {
            ModelSpec::parse(s)?;
        }
        if self.temperatures.is_empty() {
            return Err(cfg_err("--temperatures", "name at least one".into()));
        }
        if self.alphas.is_empty() {
            return Err(cfg_err("--alphas", "name at least one".into()));
        }
        for &t in &self.temperatures {
            if !(t.is_finite() && t > 0.0 && t <= 1000.0) {
                return Err(cfg_err(
                    "--temperatures",
                    format!("{t} must be a number in (0, 1000]"),
                ));
            }
        }
        for &a in &self.alphas {
            if !(a.is_finite() && (0.0..=1.0).contains(&a)) {
                return Err(cfg_err("--alphas", format!("{a} must be in [0, 1]")));
            }
        }
        if self.jobs == 0 || self.jobs > 256 {
            return Err(cfg_err(
                "--jobs",
                format!("{} must be between 1 and 256", self.jobs),
            ));
        }
        if self.checkpoint_every == 0 {
            return Err(cfg_err("--checkpoint-every", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::plan;
    use super::super::plan::tests::cfg;

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        let mut c = cfg();
        c.alphas = vec![1.5];
        assert!(plan(&c).unwrap_err().to_string().contains("--alphas"));
        let mut c = cfg();
        c.students.clear();
        assert!(plan(&c).unwrap_err().to_string().contains("--students"));
        let mut c = cfg();
        c.jobs = 0;
        assert!(plan(&c).unwrap_err().to_string().contains("--jobs"));
    }
}
