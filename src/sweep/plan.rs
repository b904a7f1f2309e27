//! A sweep's plan: one [`PlannedRun`] per (student, T, alpha), plus each
//! student's hard-label baseline, each with its own directory under
//! `OUT/runs/`.

use std::path::{Path, PathBuf};

use super::config::SweepConfig;
use crate::error::Result;
use crate::model::ModelSpec;
use crate::train::loss::{LossConfig, LossKind};
use crate::train::trainer::TrainConfig;

/// Subdirectory of the sweep's output folder that holds one folder per run.
pub const RUNS_DIR: &str = "runs";

/// What a run trains on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunKind {
    /// Hard labels only.
    Baseline,
    /// Distilled from the cache at temperature T with hard-label weight alpha.
    Distilled { temperature: f32, alpha: f32 },
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Directory name under `OUT/runs/`.
    pub name: String,
    pub student: String,
    pub kind: RunKind,
    pub config: TrainConfig,
}

/// The directory name of a run: the spec with `:` as `-`, then
/// `baseline` or `LOSS-T{T}-a{alpha}`, e.g. `mlp-784-32-10_kd-T4-a0.5`.
pub fn run_name(student: &str, kind: RunKind, loss: LossKind) -> String {
    let tag: String = student
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    match kind {
        RunKind::Baseline => format!("{tag}_baseline"),
        RunKind::Distilled { temperature, alpha } => {
            format!("{tag}_{loss}-T{temperature}-a{alpha}")
        }
    }
}

/// `v` without repeats, in first-seen order (linear: a grid may be long).
pub(crate) fn dedup<T: Distinct + Clone>(v: &[T]) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    v.iter().filter(|x| seen.insert(x.key())).cloned().collect()
}

/// A value a grid lists, with the key two equal values share.
pub(crate) trait Distinct {
    type Key: std::hash::Hash + Eq;
    fn key(&self) -> Self::Key;
}

impl Distinct for String {
    type Key = String;
    fn key(&self) -> String {
        self.clone()
    }
}

impl Distinct for f32 {
    type Key = u32;
    /// The bits, with -0 as +0 (equal as numbers).
    fn key(&self) -> u32 {
        (self + 0.0).to_bits()
    }
}

/// Expands a sweep into its runs: per student (in the given order) the
/// baseline first, then every (T, alpha). Repeated values count once.
pub fn plan(cfg: &SweepConfig) -> Result<Vec<PlannedRun>> {
    cfg.validate()?;
    let mut runs = Vec::new();
    let mut names = std::collections::HashSet::new();
    for student in dedup(&cfg.students) {
        // The canonical spelling, so `mlp:784-32-10` and a spaced variant
        // name the same run.
        let student = ModelSpec::parse(&student)?.to_string();
        let base = cfg.train_config(&student);
        let mut kinds = Vec::new();
        if cfg.baseline {
            kinds.push(RunKind::Baseline);
        }
        for &temperature in &dedup(&cfg.temperatures) {
            for &alpha in &dedup(&cfg.alphas) {
                kinds.push(RunKind::Distilled { temperature, alpha });
            }
        }
        for kind in kinds {
            let mut config = base.clone();
            if let RunKind::Distilled { temperature, alpha } = kind {
                config.loss = LossConfig::new(cfg.loss, alpha, temperature);
            }
            config.validate()?;
            let name = run_name(&student, kind, cfg.loss);
            if !names.insert(name.clone()) {
                continue;
            }
            runs.push(PlannedRun {
                name,
                student: student.clone(),
                kind,
                config,
            });
        }
    }
    Ok(runs)
}

/// The directory of a run.
pub fn run_dir(out: &Path, run: &PlannedRun) -> PathBuf {
    out.join(RUNS_DIR).join(&run.name)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Two students, two temperatures, two alphas, with baselines.
    pub(crate) fn cfg() -> SweepConfig {
        let mut c = SweepConfig::new("c".into(), "d".into(), "o".into());
        c.students = vec!["mlp:784-32-10".into(), "cnn:c8-p-c16-p-10".into()];
        c.temperatures = vec![1.0, 4.0];
        c.alphas = vec![0.1, 0.5];
        c.baseline = true;
        c
    }

    #[test]
    fn plan_expands_every_combination_with_one_baseline_per_student() {
        let runs = plan(&cfg()).unwrap();
        assert_eq!(runs.len(), 10);
        assert_eq!(runs[0].name, "mlp-784-32-10_baseline");
        assert_eq!(runs[1].name, "mlp-784-32-10_kd-T1-a0.1");
        assert_eq!(runs[4].name, "mlp-784-32-10_kd-T4-a0.5");
        assert_eq!(runs[5].name, "cnn-c8-p-c16-p-10_baseline");
        assert_eq!(runs[0].config.loss, LossConfig::hard_labels());
        assert_eq!(runs[4].config.loss.temperature, 4.0);
        assert_eq!(runs[4].config.loss.alpha, 0.5);
        let mut c = cfg();
        c.baseline = false;
        c.alphas = vec![0.5, 0.5];
        assert_eq!(plan(&c).unwrap().len(), 4);
    }
}
