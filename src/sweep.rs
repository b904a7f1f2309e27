//! Sweeps: many students trained against **one** teacher cache, and the
//! report that compares them.
//!
//! A sweep is the reason to cache a teacher. [`SweepConfig`] names the
//! students, temperatures and loss weights; [`plan`] expands it into one
//! [`PlannedRun`] per (student, T, alpha), plus each student's hard-label
//! baseline, each with its own directory under `OUT/runs/`. [`run_sweep`]
//! trains them one after another or several at once, all streaming the same
//! open [`CacheReader`]. A run whose `model.json` exists and records the same
//! config, data and cache is finished and is skipped, and an interrupted run
//! continues from its checkpoint, so rerunning a killed sweep only does the
//! work that is left.
//!
//! The report ([`collect_results`], [`write_report`]) is rebuilt from the
//! runs' own `model.json` cards every time, so `report.md`, `results.csv` and
//! the plots always agree with them:
//!
//! ```text
//!  SweepConfig ─► plan ─► [PlannedRun] ─► run_sweep (skip finished, resume partial)
//!                                             │ OUT/runs/NAME/model.json
//!                                             ▼
//!        collect_results ─► [RunResult] ─► write_report: report.md, results.csv, *.png
//! ```
//!
//! ```no_run
//! # fn main() -> distill::Result<()> {
//! use distill::sweep::{plan, SweepConfig};
//! let mut cfg = SweepConfig::new("caches/train".into(), "data/fashion-mnist".into(), "runs/sweep".into());
//! cfg.students = vec!["mlp:784-32-10".into(), "mlp:784-128-10".into()];
//! cfg.temperatures = vec![1.0, 4.0];
//! cfg.alphas = vec![0.1, 0.5];
//! cfg.baseline = true;
//! let runs = plan(&cfg)?;
//! assert_eq!(runs.len(), 2 * (1 + 2 * 2));
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::cache::CacheViews;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Backend, ModelSpec, Network};
use crate::train::card::ModelCard;
use crate::train::loss::{LossConfig, LossKind};
use crate::train::optim::{OptimizerConfig, OptimizerKind, Schedule};
use crate::train::trainer::{self, RunOptions, TrainConfig, TrainSources};

/// Subdirectory of the sweep's output folder that holds one folder per run.
pub const RUNS_DIR: &str = "runs";
/// The teacher forward-pass timing, kept so a rerun need not measure it again.
pub const TEACHER_TIMING_FILE: &str = "teacher-forward.json";

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

fn dedup<T: PartialEq + Clone>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// Expands a sweep into its runs: per student (in the given order) the
/// baseline first, then every (T, alpha). Repeated values count once.
pub fn plan(cfg: &SweepConfig) -> Result<Vec<PlannedRun>> {
    cfg.validate()?;
    let mut runs = Vec::new();
    for student in dedup(&cfg.students) {
        // The canonical spelling, so `mlp:784-32-10` and a spaced variant
        // name the same run.
        let student = ModelSpec::parse(&student)?.to_string();
        let base = TrainConfig {
            spec: student.clone(),
            epochs: cfg.epochs,
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            optimizer: cfg.optimizer,
            loss: LossConfig::hard_labels(),
            window_blocks: cfg.window_blocks.max(1),
            allow_topk_retemper: false,
            augment: None,
            prune_schedule: None,
        };
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
            if runs.iter().any(|r: &PlannedRun| r.name == name) {
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

/// Where a run stands on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// `model.json` and `model.safetensors` exist and the card matches the run.
    Finished(Box<ModelCard>),
    /// A checkpoint is there: training continues from it.
    Partial,
    /// Nothing yet.
    New,
}

/// What a finished run must have been trained on to count as this run.
pub struct Expect<'a> {
    pub train_fingerprint: &'a str,
    /// The cache id, for distilled runs.
    pub cache_id: &'a str,
}

/// Decides whether `run` is finished, partial or new in `dir`. A card that
/// belongs to another run (other settings, data or cache) is an error: the
/// sweep never overwrites a result it did not make.
pub fn run_state(run: &PlannedRun, dir: &Path, expect: &Expect<'_>) -> Result<RunState> {
    let card_path = dir.join("model.json");
    if card_path.exists() {
        let card = ModelCard::load(&card_path)?;
        let mismatch = if card.config.as_ref() != Some(&run.config) {
            Some(format!(
                "its config is {}, this sweep's is {}",
                card.config
                    .as_ref()
                    .and_then(|c| serde_json::to_string(c).ok())
                    .unwrap_or_else(|| "missing".into()),
                serde_json::to_string(&run.config).unwrap_or_default()
            ))
        } else if card.data.as_ref().map(|d| d.train_fingerprint.as_str())
            != Some(expect.train_fingerprint)
        {
            Some("it was trained on other data".into())
        } else {
            let want = match run.kind {
                RunKind::Baseline => None,
                RunKind::Distilled { .. } => Some(expect.cache_id),
            };
            (card.cache.as_ref().map(|c| c.id.as_str()) != want)
                .then(|| "it was distilled from another cache (or none)".to_string())
        };
        if let Some(why) = mismatch {
            return Err(Error::Config {
                field: "--out".into(),
                message: format!(
                    "{} holds a finished run with other settings ({why}); remove that directory or choose another --out",
                    dir.display()
                ),
            });
        }
        if dir.join("model.safetensors").exists() {
            return Ok(RunState::Finished(Box::new(card)));
        }
    }
    if dir.join("checkpoint.safetensors").exists() {
        return Ok(RunState::Partial);
    }
    Ok(RunState::New)
}

/// The open inputs a sweep reads, shared by every run.
pub struct SweepInputs<'a> {
    pub train: &'a Dataset,
    pub test: Option<&'a Dataset>,
    /// The training cache (one cache, or a set of augmented views).
    pub cache: &'a CacheViews,
    /// Teacher argmax on the test split (from the test cache), for agreement.
    pub teacher_test_predictions: Option<Vec<u32>>,
}

/// What happened to one run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Skipped,
    Trained { seconds: f64, resumed: bool },
}

/// What [`run_sweep`] did.
#[derive(Debug, Clone)]
pub struct SweepSummary {
    pub runs: Vec<(PlannedRun, RunOutcome)>,
    pub seconds: f64,
}

impl SweepSummary {
    /// How many runs were trained (not skipped).
    pub fn trained(&self) -> usize {
        self.runs
            .iter()
            .filter(|(_, o)| matches!(o, RunOutcome::Trained { .. }))
            .count()
    }
}

/// Trains every run of the plan that is not finished, `cfg.jobs` at a time,
/// all from the one open cache. Progress lines go to stderr unless `quiet`.
/// The first failing run stops the sweep (runs already started finish).
pub fn run_sweep<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    inputs: &SweepInputs<'_>,
    command: &str,
    quiet: bool,
) -> Result<SweepSummary> {
    let start = Instant::now();
    let cache_id = inputs.cache.id();
    let expect = Expect {
        train_fingerprint: &inputs.train.fingerprint().0,
        cache_id: &cache_id,
    };
    // Check every run's directory before training anything.
    let states: Vec<RunState> = runs
        .iter()
        .map(|r| run_state(r, &run_dir(&cfg.out, r), &expect))
        .collect::<Result<_>>()?;
    for r in runs {
        trainer::check_cache(
            inputs.cache.first(),
            inputs.train,
            &ModelSpec::parse(&r.student)?,
            &r.config.loss,
        )?;
    }
    let total = runs.len();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let outcomes: Mutex<Vec<Option<Result<RunOutcome>>>> =
        Mutex::new((0..total).map(|_| None).collect());
    let jobs = cfg.jobs.min(total.max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let run = &runs[i];
                let result = match &states[i] {
                    RunState::Finished(_) => Ok(RunOutcome::Skipped),
                    state => train_one(
                        device.clone(),
                        cfg,
                        run,
                        inputs,
                        command,
                        quiet || jobs > 1,
                        *state == RunState::Partial,
                    ),
                };
                let k = done.fetch_add(1, Ordering::SeqCst) + 1;
                if !quiet {
                    eprintln!("[{k}/{total}] {}", progress_line(run, &result));
                }
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                if let Ok(mut slots) = outcomes.lock() {
                    slots[i] = Some(result);
                }
            });
        }
    });
    let slots = outcomes.into_inner().map_err(|_| Error::Training {
        context: "sweep".into(),
        message: "a run panicked".into(),
    })?;
    let mut done_runs = Vec::new();
    for (run, slot) in runs.iter().zip(slots) {
        match slot {
            Some(Ok(o)) => done_runs.push((run.clone(), o)),
            Some(Err(e)) => {
                return Err(Error::Training {
                    context: format!("sweep run {}", run.name),
                    message: format!("{e}"),
                })
            }
            None => {}
        }
    }
    Ok(SweepSummary {
        runs: done_runs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn progress_line(run: &PlannedRun, result: &Result<RunOutcome>) -> String {
    match result {
        Ok(RunOutcome::Skipped) => format!("{}: finished earlier, skipped", run.name),
        Ok(RunOutcome::Trained { seconds, resumed }) => format!(
            "{}: trained in {seconds:.1}s{}",
            run.name,
            if *resumed { " (resumed)" } else { "" }
        ),
        Err(e) => format!("{}: failed: {e}", run.name),
    }
}

fn train_one<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    run: &PlannedRun,
    inputs: &SweepInputs<'_>,
    command: &str,
    quiet: bool,
    resumed: bool,
) -> Result<RunOutcome> {
    let start = Instant::now();
    let distilled = matches!(run.kind, RunKind::Distilled { .. });
    let sources = TrainSources::<D> {
        train: inputs.train,
        test: inputs.test,
        cache: distilled.then_some(inputs.cache),
        cache_dir: distilled.then(|| cfg.cache.clone()),
        teacher_test_predictions: inputs.teacher_test_predictions.clone(),
        online_teacher: None,
    };
    let opts = RunOptions {
        checkpoint_every: Some(cfg.checkpoint_every),
        resume: true,
        quiet,
        stop_after_steps: None,
        command: format!("{command} (run {})", run.name),
        data_dir: cfg.data.clone(),
        ..RunOptions::default()
    };
    let outcome = trainer::train(
        device,
        &run.config,
        &sources,
        &run_dir(&cfg.out, run),
        &opts,
    )?;
    if !outcome.finished {
        return Err(Error::Training {
            context: run.name.clone(),
            message: "stopped before the last epoch".into(),
        });
    }
    Ok(RunOutcome::Trained {
        seconds: start.elapsed().as_secs_f64(),
        resumed,
    })
}

/// One run's figures, read from its `model.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub name: String,
    pub student: String,
    pub kind: RunKind,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub epochs: usize,
    pub seed: u64,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    pub teacher_agreement: Option<f64>,
    pub train_seconds: f64,
    pub cache_id: Option<String>,
}

impl RunResult {
    /// Reads the figures of a card; the kind comes from the card itself (a
    /// cache means distilled, at the config's T and alpha).
    pub fn from_card(name: &str, card: &ModelCard, path: &Path) -> Result<Self> {
        let config = card.config.as_ref().ok_or_else(|| Error::Model {
            path: path.to_path_buf(),
            message: "the card records no training config".into(),
        })?;
        let kind = match &card.cache {
            Some(_) => RunKind::Distilled {
                temperature: config.loss.temperature,
                alpha: config.loss.alpha,
            },
            None => RunKind::Baseline,
        };
        Ok(RunResult {
            name: name.to_string(),
            student: card.spec.clone(),
            kind,
            parameters: card.parameters,
            flops_per_sample: card.flops_per_sample,
            epochs: config.epochs,
            seed: config.seed,
            test_accuracy: card.test_accuracy,
            test_loss: card.test_loss,
            teacher_agreement: card.teacher_agreement,
            train_seconds: card.train_seconds,
            cache_id: card.cache.as_ref().map(|c| c.id.clone()),
        })
    }
}

/// Reads the card of every finished run of the plan, in plan order; runs
/// without a card are left out.
pub fn collect_results(out: &Path, runs: &[PlannedRun]) -> Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for r in runs {
        let path = run_dir(out, r).join("model.json");
        if !path.exists() {
            continue;
        }
        let card = ModelCard::load(&path)?;
        results.push(RunResult::from_card(&r.name, &card, &path)?);
    }
    Ok(results)
}

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
        }
    }

    /// The teacher forward time online distillation would have spent.
    pub fn online_seconds(&self) -> f64 {
        self.forward_seconds * self.distilled_epochs as f64
    }
}

/// Per student: the baseline and the distilled runs, in plan order.
pub struct StudentRow<'a> {
    pub student: &'a str,
    pub parameters: u64,
    pub flops_per_sample: u64,
    pub baseline: Option<&'a RunResult>,
    pub distilled: Vec<&'a RunResult>,
}

impl StudentRow<'_> {
    /// The distilled run with the best test accuracy.
    pub fn best(&self) -> Option<&RunResult> {
        self.distilled
            .iter()
            .copied()
            .filter(|r| r.test_accuracy.is_some())
            .max_by(|a, b| {
                let (x, y) = (a.test_accuracy, b.test_accuracy);
                x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
            })
    }

    /// Total training time of all the student's runs.
    pub fn train_seconds(&self) -> f64 {
        self.baseline.map_or(0.0, |b| b.train_seconds)
            + self.distilled.iter().map(|r| r.train_seconds).sum::<f64>()
    }
}

/// Groups results by student, in order of first appearance.
pub fn by_student(results: &[RunResult]) -> Vec<StudentRow<'_>> {
    let mut rows: Vec<StudentRow<'_>> = Vec::new();
    for r in results {
        let i = match rows.iter().position(|s| s.student == r.student) {
            Some(i) => i,
            None => {
                rows.push(StudentRow {
                    student: &r.student,
                    parameters: r.parameters,
                    flops_per_sample: r.flops_per_sample,
                    baseline: None,
                    distilled: Vec::new(),
                });
                rows.len() - 1
            }
        };
        match r.kind {
            RunKind::Baseline => rows[i].baseline = Some(r),
            RunKind::Distilled { .. } => rows[i].distilled.push(r),
        }
    }
    rows
}

/// Accuracy as the report prints it: a percentage with two decimals.
pub fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a))
}

fn gain(best: Option<f64>, base: Option<f64>) -> String {
    match (best, base) {
        (Some(b), Some(a)) => format!("{:+.2} pt", 100.0 * (b - a)),
        _ => "-".into(),
    }
}

/// Thousands separators: 101,770.
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The header of `results.csv`.
pub const CSV_HEADER: &str = "run,student,parameters,flops_per_sample,kind,temperature,alpha,epochs,seed,test_accuracy,test_loss,teacher_agreement,train_seconds,cache_id";

/// `results.csv`: one row per run; numbers as the cards hold them, empty
/// fields where a card has none.
pub fn results_csv(results: &[RunResult]) -> String {
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in results {
        let (kind, t, a) = match r.kind {
            RunKind::Baseline => ("baseline", String::new(), String::new()),
            RunKind::Distilled { temperature, alpha } => {
                ("distilled", temperature.to_string(), alpha.to_string())
            }
        };
        let fields = [
            csv_field(&r.name),
            csv_field(&r.student),
            r.parameters.to_string(),
            r.flops_per_sample.to_string(),
            kind.to_string(),
            t,
            a,
            r.epochs.to_string(),
            r.seed.to_string(),
            opt(r.test_accuracy),
            opt(r.test_loss),
            opt(r.teacher_agreement),
            r.train_seconds.to_string(),
            csv_field(r.cache_id.as_deref().unwrap_or("")),
        ];
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

/// Names of the report's files inside the sweep's output folder.
pub const REPORT_MD: &str = "report.md";
pub const RESULTS_CSV: &str = "results.csv";
pub const PARETO_PNG: &str = "accuracy-vs-parameters.png";
pub const TEMPERATURE_PNG: &str = "accuracy-vs-temperature.png";

/// The context the report states besides the runs.
pub struct ReportContext<'a> {
    pub cfg: &'a SweepConfig,
    pub teacher: Option<&'a TeacherSummary>,
    pub savings: Option<&'a Savings>,
    /// The cache id and encoding, e.g. "f16, T 4".
    pub cache_description: String,
}

/// `report.md`.
pub fn report_markdown(results: &[RunResult], ctx: &ReportContext<'_>) -> String {
    let cfg = ctx.cfg;
    let mut s = String::new();
    let _ = writeln!(s, "# Distillation sweep\n");
    let _ = writeln!(
        s,
        "{} runs from one teacher cache (`{}`, {}) on `{}`: {} epochs each, batch {}, {} lr {}, seed {}, loss {}.\n",
        results.len(),
        cfg.cache.display(),
        ctx.cache_description,
        cfg.data.display(),
        cfg.epochs,
        cfg.batch_size,
        cfg.optimizer.kind,
        cfg.optimizer.lr,
        cfg.seed,
        cfg.loss
    );
    if let Some(t) = ctx.teacher {
        let _ = writeln!(
            s,
            "Teacher: `{}`, {} parameters, {} FLOPs per sample, test accuracy {} ({}).\n",
            t.spec,
            group_digits(t.parameters),
            group_digits(t.flops_per_sample),
            pct(t.accuracy),
            t.accuracy_source
        );
    }
    let _ = writeln!(
        s,
        "Accuracies are on the test split; gain is the best distilled run minus the hard-label baseline, in percentage points. Train time sums all of a student's runs.\n"
    );
    let rows = by_student(results);
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(
        s,
        "| student | parameters | FLOPs/sample | baseline | best distilled | gain | best T | best alpha | train time |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let best = row.best();
        let (bt, ba) = match best.map(|b| b.kind) {
            Some(RunKind::Distilled { temperature, alpha }) => {
                (temperature.to_string(), alpha.to_string())
            }
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            row.student,
            group_digits(row.parameters),
            group_digits(row.flops_per_sample),
            pct(row.baseline.and_then(|b| b.test_accuracy)),
            pct(best.and_then(|b| b.test_accuracy)),
            gain(
                best.and_then(|b| b.test_accuracy),
                row.baseline.and_then(|b| b.test_accuracy)
            ),
            bt,
            ba,
            row.train_seconds()
        );
    }
    let _ = writeln!(s, "\n![accuracy against parameters]({PARETO_PNG})\n");
    let _ = writeln!(s, "![accuracy against temperature]({TEMPERATURE_PNG})\n");
    for row in &rows {
        let base = row.baseline.and_then(|b| b.test_accuracy);
        let _ = writeln!(
            s,
            "## `{}`\n\n{} parameters, {} FLOPs per sample.\n",
            row.student,
            group_digits(row.parameters),
            group_digits(row.flops_per_sample)
        );
        let _ = writeln!(
            s,
            "| run | T | alpha | test accuracy | gain over baseline | teacher agreement | train time |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for r in row
            .baseline
            .into_iter()
            .chain(row.distilled.iter().copied())
        {
            let (t, a) = match r.kind {
                RunKind::Baseline => ("-".to_string(), "1 (labels only)".to_string()),
                RunKind::Distilled { temperature, alpha } => {
                    (temperature.to_string(), alpha.to_string())
                }
            };
            let g = match r.kind {
                RunKind::Baseline => "-".to_string(),
                RunKind::Distilled { .. } => gain(r.test_accuracy, base),
            };
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} | {} | {} | {:.1} s |",
                r.name,
                t,
                a,
                pct(r.test_accuracy),
                g,
                pct(r.teacher_agreement),
                r.train_seconds
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## What the cache saved\n");
    match ctx.savings {
        Some(sv) => {
            let _ = writeln!(
                s,
                "The teacher's forward pass over the {} training samples takes {:.1} s on this machine; the cache pays it once. \
                 Online distillation runs the teacher on every batch of every epoch: over these {} distilled runs ({} epochs in all) \
                 that is {:.1} s ({:.1} min) of teacher forward time, {:.0}x the one pass. \
                 (Baselines need no teacher. Building the cache also compresses and writes the shards; `distill cache build` reports its own time.)\n",
                sv.samples,
                sv.forward_seconds,
                sv.distilled_runs,
                sv.distilled_epochs,
                sv.online_seconds(),
                sv.online_seconds() / 60.0,
                sv.distilled_epochs as f64
            );
        }
        None => {
            let _ = writeln!(
                s,
                "The teacher's weights were not found (pass `--teacher DIR`), so its forward time was not measured.\n"
            );
        }
    }
    let _ = writeln!(
        s,
        "Per-run figures: [{RESULTS_CSV}]({RESULTS_CSV}); each run's card, metrics and curves are in `{RUNS_DIR}/NAME/`."
    );
    s
}

/// Writes `report.md`, `results.csv` and the two plots into `cfg.out`.
pub fn write_report(results: &[RunResult], ctx: &ReportContext<'_>) -> Result<Vec<PathBuf>> {
    let out = &ctx.cfg.out;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let md = out.join(REPORT_MD);
    crate::model::io::atomic_write(&md, report_markdown(results, ctx).as_bytes())?;
    let csv = out.join(RESULTS_CSV);
    crate::model::io::atomic_write(&csv, results_csv(results).as_bytes())?;
    let pareto = out.join(PARETO_PNG);
    crate::report::sweep_plot::accuracy_vs_parameters(&pareto, results, ctx.teacher)?;
    let temps = out.join(TEMPERATURE_PNG);
    crate::report::sweep_plot::accuracy_vs_temperature(&temps, results)?;
    Ok(vec![md, csv, pareto, temps])
}

/// The students on the Pareto front of (parameters, accuracy): each is more
/// accurate than every smaller student. Returns (parameters, accuracy) pairs
/// in order of size, one per student (its best run).
pub fn pareto_front(results: &[RunResult]) -> Vec<(u64, f64)> {
    let mut best: Vec<(u64, f64)> = Vec::new();
    for r in results {
        let Some(acc) = r.test_accuracy else { continue };
        match best.iter_mut().find(|(p, _)| *p == r.parameters) {
            Some(b) => b.1 = b.1.max(acc),
            None => best.push((r.parameters, acc)),
        }
    }
    best.sort_by_key(|b| b.0);
    let mut front: Vec<(u64, f64)> = Vec::new();
    for (p, a) in best {
        let better = match front.last() {
            Some(&(_, top)) => a > top,
            None => true,
        };
        if better {
            front.push((p, a));
        }
    }
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SweepConfig {
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

    fn result(student: &str, params: u64, kind: RunKind, acc: f64) -> RunResult {
        RunResult {
            name: run_name(student, kind, LossKind::Kd),
            student: student.into(),
            kind,
            parameters: params,
            flops_per_sample: 2 * params,
            epochs: 3,
            seed: 0,
            test_accuracy: Some(acc),
            test_loss: Some(0.5),
            teacher_agreement: None,
            train_seconds: 1.0,
            cache_id: None,
        }
    }

    #[test]
    fn pareto_front_keeps_students_better_than_every_smaller_one() {
        let d = RunKind::Distilled {
            temperature: 4.0,
            alpha: 0.5,
        };
        let r = vec![
            result("a", 100, RunKind::Baseline, 0.80),
            result("a", 100, d, 0.82),
            result("b", 1000, d, 0.81),
            result("c", 50, d, 0.70),
            result("e", 5000, d, 0.90),
        ];
        assert_eq!(
            pareto_front(&r),
            vec![(50, 0.70), (100, 0.82), (5000, 0.90)]
        );
        let rows = by_student(&r);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].best().and_then(|b| b.test_accuracy), Some(0.82));
        let csv = results_csv(&r);
        assert_eq!(csv.lines().count(), 6);
        assert!(csv
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("a_kd-T4-a0.5,a,100,200,distilled,4,0.5,3,0,0.82,"));
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(group_digits(12), "12");
    }
}
