//! A sweep's plan: one [`PlannedRun`] per (student, T, alpha), plus each
//! student's hard-label baselines (plain and augmented), each at every
//! batch size of the grid and with every seed, and with its own directory
//! under `OUT/runs/`.

use std::path::{Path, PathBuf};

use super::config::SweepConfig;
use crate::data::augment::Augment;
use crate::error::Result;
use crate::model::ModelSpec;
use crate::train::loss::{LossConfig, LossKind};
use crate::train::trainer::TrainConfig;

/// Subdirectory of the sweep's output folder that holds one folder per run.
pub const RUNS_DIR: &str = "runs";

/// What a run trains on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunKind {
    /// Hard labels only, with this augmentation, if any.
    Baseline { augment: Option<Augment> },
    /// Distilled from the cache at temperature T with hard-label weight alpha.
    Distilled { temperature: f32, alpha: f32 },
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Directory name under `OUT/runs/`.
    pub name: String,
    /// The name of its setting: `name` without the seed (`-sS`), which a
    /// sweep of several seeds appends; the report pools a setting's seeds.
    pub setting: String,
    pub student: String,
    pub kind: RunKind,
    pub config: TrainConfig,
}

impl RunKind {
    /// The plain hard-label baseline.
    pub const BASELINE: RunKind = RunKind::Baseline { augment: None };

    pub fn is_baseline(&self) -> bool {
        matches!(self, RunKind::Baseline { .. })
    }
}

/// The directory name of a run: the spec with `:` as `-`, then
/// `baseline`, `baseline-AUGMENT` (`baseline-shift1-mixup0.2` for
/// `shift=1,mixup=0.2`) or `LOSS-T{T}-a{alpha}`, then `-b{B}` where the
/// sweep's grid names several batch sizes (`batch`), e.g.
/// `mlp-784-32-10_kd-T4-a0.5` or `mlp-784-32-10_baseline-shift1-b32`. This
/// is the setting's name; [`plan`] appends `-s{S}` where the sweep names
/// several seeds.
pub fn run_name(student: &str, kind: RunKind, loss: LossKind, batch: Option<usize>) -> String {
    let tag = |text: &str, comma: char| -> String {
        text.chars()
            .filter(|&c| c != '=')
            .map(|c| match c {
                c if c.is_ascii_alphanumeric() || c == '-' || c == '.' => c,
                ',' => comma,
                _ => '-',
            })
            .collect()
    };
    let setting = match kind {
        RunKind::Baseline { augment: None } => "baseline".to_string(),
        RunKind::Baseline { augment: Some(a) } => format!("baseline-{}", tag(&a.to_string(), '-')),
        RunKind::Distilled { temperature, alpha } => format!("{loss}-T{temperature}-a{alpha}"),
    };
    let batch = batch.map_or(String::new(), |b| format!("-b{b}"));
    // `:` as `-` (and `=` as `-` too: a spec keeps its separators).
    let student: String = student
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{student}_{setting}{batch}")
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

impl Distinct for usize {
    type Key = usize;
    fn key(&self) -> usize {
        *self
    }
}

impl Distinct for u64 {
    type Key = u64;
    fn key(&self) -> u64 {
        *self
    }
}

impl Distinct for crate::data::augment::Augment {
    type Key = String;
    /// Its canonical spelling (`shift=1,flip` and `flip,shift=1` are one).
    fn key(&self) -> String {
        self.to_string()
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
/// baselines first (plain, then each augmentation), then every (T, alpha),
/// each setting at every batch size in the grid's order, and at each of
/// those with every seed. Repeated values count once.
pub fn plan(cfg: &SweepConfig) -> Result<Vec<PlannedRun>> {
    cfg.validate()?;
    let mut runs = Vec::new();
    let mut names = std::collections::HashSet::new();
    let batches = dedup(&cfg.batch_sizes);
    let seeds = dedup(&cfg.seeds);
    for student in dedup(&cfg.students) {
        // The canonical spelling, so `mlp:784-32-10` and a spaced variant
        // name the same run.
        let student = ModelSpec::parse(&student)?.to_string();
        let base = cfg.train_config(&student);
        let mut kinds = Vec::new();
        if cfg.baseline {
            kinds.push(RunKind::BASELINE);
        }
        for augment in dedup(&cfg.baseline_augments) {
            kinds.push(RunKind::Baseline {
                augment: Some(augment),
            });
        }
        for &temperature in &dedup(&cfg.temperatures) {
            for &alpha in &dedup(&cfg.alphas) {
                kinds.push(RunKind::Distilled { temperature, alpha });
            }
        }
        for kind in kinds {
            for (&batch, &seed) in batches
                .iter()
                .flat_map(|b| seeds.iter().map(move |s| (b, s)))
            {
                let mut config = base.clone();
                config.batch_size = batch;
                config.seed = seed;
                match kind {
                    RunKind::Distilled { temperature, alpha } => {
                        config.loss = LossConfig::new(cfg.loss, alpha, temperature);
                    }
                    RunKind::Baseline { augment } => config.augment = augment,
                }
                config.validate()?;
                let tag = (batches.len() > 1).then_some(batch);
                let setting = run_name(&student, kind, cfg.loss, tag);
                let name = match seeds.len() {
                    1 => setting.clone(),
                    _ => format!("{setting}-s{seed}"),
                };
                if !names.insert(name.clone()) {
                    continue;
                }
                runs.push(PlannedRun {
                    name,
                    setting,
                    student: student.clone(),
                    kind,
                    config,
                });
            }
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
        assert_eq!(runs[0].kind, RunKind::BASELINE);
        assert_eq!(runs[4].config.loss.temperature, 4.0);
        assert_eq!(runs[4].config.loss.alpha, 0.5);
        let mut c = cfg();
        c.baseline = false;
        c.alphas = vec![0.5, 0.5];
        assert_eq!(plan(&c).unwrap().len(), 4);
    }

    #[test]
    fn a_batch_grid_and_augmented_baselines_name_every_run_apart() {
        let mut c = cfg();
        c.students.truncate(1);
        c.temperatures = vec![1.0];
        c.alphas = vec![0.1];
        c.batch_sizes = vec![32, 128, 32];
        c.baseline_augments = vec![
            Augment::parse("shift=1").unwrap(),
            Augment::parse("mixup=0.2,shift=1").unwrap(),
            Augment::parse("shift=1").unwrap(),
        ];
        let runs = plan(&c).unwrap();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mlp-784-32-10_baseline-b32",
                "mlp-784-32-10_baseline-b128",
                "mlp-784-32-10_baseline-shift1-b32",
                "mlp-784-32-10_baseline-shift1-b128",
                "mlp-784-32-10_baseline-shift1-mixup0.2-b32",
                "mlp-784-32-10_baseline-shift1-mixup0.2-b128",
                "mlp-784-32-10_kd-T1-a0.1-b32",
                "mlp-784-32-10_kd-T1-a0.1-b128",
            ]
        );
        assert_eq!(runs[1].config.batch_size, 128);
        assert_eq!(runs[0].config.augment, None);
        assert_eq!(
            runs[3].config.augment,
            Some(Augment::parse("shift=1").unwrap())
        );
        assert_eq!(runs[3].config.loss, LossConfig::hard_labels());
        assert_eq!(runs[7].config.augment, None);
        assert_eq!(runs[7].config.loss.alpha, 0.1);
        // Several seeds: each setting's runs in a row, named apart.
        c.seeds = vec![3, 1];
        let runs = plan(&c).unwrap();
        assert_eq!(runs.len(), 16);
        assert_eq!(runs[0].name, "mlp-784-32-10_baseline-b32-s3");
        assert_eq!(runs[1].name, "mlp-784-32-10_baseline-b32-s1");
        assert_eq!(runs[1].setting, "mlp-784-32-10_baseline-b32");
        assert_eq!((runs[1].config.seed, runs[1].config.batch_size), (1, 32));
        assert_eq!(runs[2].config.seed, 3);
        c.seeds = vec![0];
        // One batch size: the names of a sweep without a grid.
        c.batch_sizes = vec![64];
        let runs = plan(&c).unwrap();
        assert_eq!(runs[1].name, "mlp-784-32-10_baseline-shift1");
        assert!(runs.iter().all(|r| r.config.batch_size == 64));
    }
}
