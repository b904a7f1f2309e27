//! Running a sweep: which runs are finished, partial or new on disk
//! ([`run_state`]), training the rest `jobs` at a time from one open cache
//! ([`run_sweep`]), and the whole sweep on a device, from opening its inputs
//! to writing its report ([`run_and_report`]).
//!
//! On a scheduler the same sweep is an array: [`plan`]'s order gives every
//! run a stable index, [`run_only`] trains the run of one index (one array
//! task, writing only its own `runs/NAME/` directory, so any number of them
//! may share one output folder), and [`report_only`] writes the report from
//! whatever has finished, naming the runs still missing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::config::SweepConfig;
use super::plan::{plan, run_dir, PlannedRun, RunKind, RUNS_DIR};
use super::replay::{clear_replays, replay, replays_needed, ReplayOutcome};
use super::report::report_sweep;
use super::results::collect_results;
use super::teacher::teacher_dir;
use crate::cache::{CacheReader, CacheViews};
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::model::{Backend, ModelDir, ModelSpec};
use crate::train::card::ModelCard;
use crate::train::config::TrainConfig;
use crate::train::outdir::{first_difference, other_commands_directory};
use crate::train::sources::{
    built_by_model, check_test_cache_teacher, open_test_cache, open_views, test_predictions,
};
use crate::train::trainer::{self, RunOptions, TrainSources};
use crate::train::validation::{run_overlap, TeacherOverlap};

/// Where a run stands on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// `model.json` and `model.safetensors` exist, no checkpoint does, and
    /// the card matches the run.
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
    let model = ModelDir::new(dir);
    let card_path = model.card();
    if card_path.exists() {
        let card = ModelCard::load(&card_path)?;
        let mismatch = if card.config.as_ref() != Some(&run.config) {
            Some(match &card.config {
                Some(there) => first_difference(there, &run.config),
                None => "its card records no config".into(),
            })
        } else if card.data.as_ref().map(|d| d.train_fingerprint.as_str())
            != Some(expect.train_fingerprint)
        {
            Some("it was trained on other data".into())
        } else {
            let want = match run.kind {
                RunKind::Baseline { .. } => None,
                RunKind::Distilled { .. } => Some(expect.cache_id),
            };
            (card.cache.as_ref().map(|c| c.id.as_str()) != want)
                .then(|| "it was distilled from another cache (or none)".to_string())
        };
        if let Some(why) = mismatch {
            return Err(other_settings(dir, "a finished", &why));
        }
        // A checkpoint beside them: the run stopped before it finished
        // (after its card, before removing the checkpoint); it continues.
        if model.weights().exists() && !model.checkpoint().exists() {
            return Ok(RunState::Finished(Box::new(card)));
        }
    }
    if model.checkpoint().exists() {
        // Checked here as a finished run's card is: the trainer's own
        // refusal would advise flags a sweep does not have.
        let why = match crate::train::checkpoint::recorded_config(&model.checkpoint())? {
            Some(there) if there == run.config => None,
            Some(there) => Some(first_difference(&there, &run.config)),
            None => Some("its checkpoint records no config that reads".into()),
        };
        if let Some(why) = why {
            return Err(other_settings(dir, "an unfinished", &why));
        }
        return Ok(RunState::Partial);
    }
    Ok(RunState::New)
}

/// The refusal of a run directory holding `what` run ("a finished", "an
/// unfinished") of other settings: a sweep never writes over it.
fn other_settings(dir: &Path, what: &str, why: &str) -> Error {
    Error::Config {
        field: "out".into(),
        message: format!(
            "{} holds {what} run with other settings ({why}); remove that directory or choose another output folder",
            dir.display()
        ),
    }
}

/// Refuses an output folder that is another command's directory (a
/// cache, a model's, a dataset's), or that holds a report or results
/// without the runs a sweep writes beside them: a sweep's files would land
/// among that directory's own, or replace a user's files of those names.
fn check_out(out: &Path) -> Result<()> {
    let refuse = |message: String| Error::Config {
        field: "out".into(),
        message,
    };
    if out.exists() && !out.is_dir() {
        return Err(refuse(format!(
            "{} is a file; a sweep writes into a folder of its own",
            out.display()
        )));
    }
    let model = ModelDir::new(out);
    let what = other_commands_directory(out)
        .filter(|w| !w.starts_with("a sweep's"))
        .or_else(|| {
            (model.card().exists() || model.has_weights()).then_some("a model's directory")
        });
    if let Some(what) = what {
        return Err(refuse(format!(
            "{} is {what}; a sweep writes its runs and report into a folder of its own",
            out.display()
        )));
    }
    let stray: Vec<&str> = [super::report::REPORT_MD, super::report::RESULTS_CSV]
        .into_iter()
        .filter(|name| out.join(name).exists())
        .collect();
    // A sweep's own report, its runs removed to start over, is its to write.
    let first_line = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
    };
    let sweeps_own = first_line(super::report::REPORT_MD).as_deref()
        == Some("# Distillation sweep")
        || first_line(super::report::RESULTS_CSV).as_deref() == Some(super::report::CSV_HEADER);
    if !stray.is_empty() && !out.join(RUNS_DIR).is_dir() && !sweeps_own {
        return Err(refuse(format!(
            "{} holds {} but no {RUNS_DIR}/: not a sweep's folder, and its report would write over them; choose another output folder",
            out.display(),
            stray.join(" and ")
        )));
    }
    Ok(())
}

/// What [`run_and_report`] or [`report_only`] did.
#[derive(Debug, Clone)]
pub struct SweepDone {
    /// Runs in the plan.
    pub runs: usize,
    /// Runs trained now (the others had finished earlier).
    pub trained: usize,
    pub seconds: f64,
    /// The report's files.
    pub files: Vec<PathBuf>,
    /// Runs of the plan not finished when the report was written: (index,
    /// name).
    pub missing: Vec<(usize, String)>,
}

/// A whole sweep on `device`: plans it, opens the data, the caches and the
/// teacher, trains every run not finished yet, and writes the report from
/// the runs' cards. `command` is recorded in each card; progress lines go to
/// stderr unless `quiet`.
pub fn run_and_report<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    command: &str,
    quiet: bool,
) -> Result<SweepDone> {
    let start = Instant::now();
    let runs = plan(cfg)?;
    check_out(&cfg.out)?;
    let open = OpenInputs::open(cfg)?;
    if !quiet {
        eprintln!(
            "sweep: {} runs ({} students) from {} on {} into {}",
            runs.len(),
            cfg.students.len(),
            cfg.cache.display(),
            device.describe(),
            cfg.out.display()
        );
    }
    let summary = run_sweep::<D>(cfg, &runs, &open.inputs(cfg), command, quiet)?;
    if cfg.chosen_weights {
        replay_chosen::<D>(cfg, &runs, &open, command, quiet)?;
    }
    let mut done = write_sweep_report(device, cfg, &runs, &open)?;
    done.trained = summary.trained();
    done.seconds = start.elapsed().as_secs_f64();
    Ok(done)
}

/// The run of plan index `index` alone (one task of a scheduler array):
/// trained unless finished, resumed from its checkpoint if partial. Writes
/// only the run's own directory; the report is [`report_only`]'s. An index
/// outside the plan is an error naming the field `only`.
pub fn run_only<D: Backend>(
    cfg: &SweepConfig,
    index: usize,
    command: &str,
    quiet: bool,
) -> Result<(PlannedRun, RunOutcome)> {
    let runs = plan(cfg)?;
    check_out(&cfg.out)?;
    let run = runs.get(index).ok_or_else(|| Error::Config {
        field: "only".into(),
        message: format!(
            "index {index} is outside the plan, which has {} runs (indices 0 to {}); `distill sweep --plan` lists them",
            runs.len(),
            runs.len().saturating_sub(1)
        ),
    })?;
    let open = OpenInputs::open(cfg)?;
    let one = [run.clone()];
    let single = SweepConfig {
        jobs: 1,
        ..cfg.clone()
    };
    let summary = run_sweep::<D>(&single, &one, &open.inputs(&single), command, quiet)?;
    let outcome = summary
        .runs
        .into_iter()
        .next()
        .map(|(_, o)| o)
        .unwrap_or(RunOutcome::Skipped);
    Ok((run.clone(), outcome))
}

/// The report of whatever runs of the plan have finished (the array's last
/// job): the same `report.md`, `results.csv` and plots as [`run_and_report`]
/// writes, with the runs still missing named in the report and returned.
/// Trains nothing. A run directory holding another run's card is an error,
/// as for a sweep.
pub fn report_only<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    command: &str,
    quiet: bool,
) -> Result<SweepDone> {
    let start = Instant::now();
    let runs = plan(cfg)?;
    check_out(&cfg.out)?;
    let open = OpenInputs::open(cfg)?;
    refuse_empty_report(cfg, &runs, &open)?;
    if cfg.chosen_weights {
        replay_chosen::<D>(cfg, &runs, &open, command, quiet)?;
    }
    let mut done = write_sweep_report(device, cfg, &runs, &open)?;
    done.seconds = start.elapsed().as_secs_f64();
    Ok(done)
}

/// Refuses a report of a plan none of whose runs has finished: it would
/// replace an earlier report with an empty one (a mistyped student list, or
/// another `out`). Names the run directories found there that the plan does
/// not hold.
fn refuse_empty_report(cfg: &SweepConfig, runs: &[PlannedRun], open: &OpenInputs) -> Result<()> {
    let cache_id = open.cache.id();
    let expect = Expect {
        train_fingerprint: &open.train.fingerprint().0,
        cache_id: &cache_id,
    };
    for r in runs {
        if let RunState::Finished(_) = run_state(r, &run_dir(&cfg.out, r), &expect)? {
            return Ok(());
        }
    }
    let dir = cfg.out.join(super::plan::RUNS_DIR);
    let mut others: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !runs.iter().any(|r| &r.name == name))
        .collect();
    others.sort();
    let found = match others.len() {
        0 => String::new(),
        n => format!(
            "; {} holds {n} run{} of another plan ({}): check the students, losses, \
             temperatures, alphas, baselines, batch sizes and seeds (a sweep of several \
             batch sizes or seeds names its runs `-bB` or `-sS`)",
            dir.display(),
            if n == 1 { "" } else { "s" },
            others.join(", ")
        ),
    };
    Err(Error::Config {
        field: "report".into(),
        message: format!(
            "{} in {}, so there is nothing to report; any earlier report there is left as \
             it is{found}",
            match runs.len() {
                1 => "the planned run has not finished".to_string(),
                n => format!("none of the {n} planned runs has finished"),
            },
            dir.display()
        ),
    })
}

/// Writes the report of the finished runs among `runs`; the others are
/// missing.
fn write_sweep_report<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    open: &OpenInputs,
) -> Result<SweepDone> {
    let (finished, missing) = finished_runs(cfg, runs, open)?;
    let teacher_path = teacher_dir(cfg, open.cache.first());
    let teacher = match &teacher_path {
        Some(p) => Some(ModelDir::new(p).load(device.clone())?),
        None => None,
    };
    let files = report_sweep(
        device.clone(),
        cfg,
        &finished,
        &missing,
        open,
        teacher_path.as_deref().zip(teacher.as_ref()),
        &device.describe(),
    )?;
    Ok(SweepDone {
        runs: runs.len(),
        trained: 0,
        seconds: 0.0,
        files,
        missing,
    })
}

/// Runs of a plan not finished: (plan index, name).
type Missing = Vec<(usize, String)>;

/// The runs of `runs` finished in the sweep's folder, and the others as
/// (plan index, name). A run directory holding another run's card is an
/// error.
fn finished_runs(
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    open: &OpenInputs,
) -> Result<(Vec<PlannedRun>, Missing)> {
    let cache_id = open.cache.id();
    let expect = Expect {
        train_fingerprint: &open.train.fingerprint().0,
        cache_id: &cache_id,
    };
    let mut finished = Vec::new();
    let mut missing = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        match run_state(r, &run_dir(&cfg.out, r), &expect)? {
            RunState::Finished(_) => finished.push(r.clone()),
            _ => missing.push((i, r.name.clone())),
        }
    }
    Ok((finished, missing))
}

/// `chosen_weights`: each finished run of a chosen setting (and of the
/// strongest baseline) that kept no weights after its side's chosen epoch
/// is trained again to that epoch ([`super::replay`]), `cfg.jobs` at a
/// time, each on a device of its own. Returns how many replays kept their
/// epoch's model.
fn replay_chosen<D: Backend>(
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    open: &OpenInputs,
    command: &str,
    quiet: bool,
) -> Result<usize> {
    let (finished, _) = finished_runs(cfg, runs, open)?;
    let results = collect_results(&cfg.out, &finished)?;
    let needed = replays_needed(&cfg.out, &finished, &results);
    let inputs = open.inputs(cfg);
    let total = needed.len();
    let jobs = cfg.jobs.min(total.max(1));
    let slots = in_jobs(
        jobs,
        total,
        |i| {
            let r = &needed[i];
            if !quiet {
                eprintln!(
                    "[replay {}/{total}] {}: training again to epoch {} of {} for its weights after the chosen epoch",
                    i + 1,
                    r.run.name,
                    r.epoch,
                    r.run.config.epochs
                );
            }
            let device = D::open_default().map_err(Error::Device)?;
            replay(device, cfg, r, &inputs, command, quiet || jobs > 1)
        },
        |i, _, result| {
            let r = &needed[i];
            match result {
                Ok(ReplayOutcome::Kept { path, seconds }) if !quiet => eprintln!(
                    "[replay {}/{total}] {}: kept in {} ({seconds:.1}s)",
                    i + 1,
                    r.run.name,
                    path.display()
                ),
                Ok(ReplayOutcome::Differs(why)) => eprintln!(
                    "warning: {} trained again to epoch {} is not the same run, so its weights were not kept: {why}",
                    r.run.name, r.epoch
                ),
                _ => {}
            }
        },
    )?;
    let mut kept = 0;
    for slot in slots.into_iter().flatten() {
        if let ReplayOutcome::Kept { .. } = slot? {
            kept += 1;
        }
    }
    clear_replays(&cfg.out, &finished)?;
    Ok(kept)
}

/// Refuses a `teacher` that is not the model the cache was built from: its
/// card's accuracy and its timed forward pass would be reported as the
/// cache's teacher's.
fn check_cache_teacher(teacher: &Path, cache: &CacheReader) -> Result<()> {
    let recorded = &cache.manifest().teacher;
    let fingerprint = ModelDir::new(teacher)
        .load(dfdx::prelude::Cpu::default())?
        .fingerprint();
    if fingerprint != recorded.fingerprint {
        return Err(Error::Config {
            field: "teacher".into(),
            message: format!(
                "{} is not the teacher of {} (its weights {fingerprint}; the cache was built \
                 from {} with weights {}); name the cache's teacher, or leave `teacher` out and \
                 the cache's record is used",
                teacher.display(),
                cache.dir().display(),
                recorded.source,
                recorded.fingerprint
            ),
        });
    }
    Ok(())
}

/// A sweep's data and caches, open.
pub struct OpenInputs {
    pub train: Dataset,
    /// The test split, where the data has one.
    pub test: Option<Dataset>,
    /// The training cache (one cache, or a set of augmented views).
    pub cache: CacheViews,
    pub test_cache: Option<CacheReader>,
    /// Teacher argmax on the test split (from the test cache), for agreement.
    pub teacher_test_predictions: Option<Vec<u32>>,
}

impl OpenInputs {
    /// Opens the data, the training cache and the test cache of `cfg`.
    pub fn open(cfg: &SweepConfig) -> Result<OpenInputs> {
        let train = Dataset::open(&cfg.data, Split::Train)?;
        let test = Dataset::open_test_beside(&cfg.data, &train)?;
        let cache = open_views(&cfg.cache)?;
        if let Some(teacher) = &cfg.teacher {
            check_cache_teacher(teacher, cache.first())?;
        }
        let test_cache = cfg.test_cache.as_deref().map(open_test_cache).transpose()?;
        let t = &cache.first().manifest().teacher;
        if let Some(tc) = test_cache
            .as_ref()
            .filter(|_| built_by_model(cache.first()))
        {
            check_test_cache_teacher(
                tc,
                &format!("{}'s teacher {}", cache.first().dir().display(), t.source),
                &t.fingerprint,
            )?;
        }
        let teacher_test_predictions = match (&test_cache, &test) {
            (Some(tc), Some(t)) => Some(test_predictions(tc, t)?),
            (Some(_), None) => {
                return Err(Error::Config {
                    field: "test_cache".into(),
                    message: format!("{} has no test split to pair it with", cfg.data.display()),
                })
            }
            _ => None,
        };
        Ok(OpenInputs {
            train,
            test,
            cache,
            test_cache,
            teacher_test_predictions,
        })
    }

    /// What every run of `cfg` reads.
    pub fn inputs(&self, cfg: &SweepConfig) -> SweepInputs<'_> {
        SweepInputs {
            train: &self.train,
            test: self.test.as_ref(),
            cache: &self.cache,
            teacher_test_predictions: self.teacher_test_predictions.clone(),
            teacher: teacher_dir(cfg, self.cache.first()),
        }
    }
}

/// The open inputs a sweep reads, shared by every run.
pub struct SweepInputs<'a> {
    pub train: &'a Dataset,
    pub test: Option<&'a Dataset>,
    /// The training cache (one cache, or a set of augmented views).
    pub cache: &'a CacheViews,
    /// Teacher argmax on the test split (from the test cache), for agreement.
    pub teacher_test_predictions: Option<Vec<u32>>,
    /// The teacher's directory (the sweep's `teacher`, else the cache's
    /// recorded source), against whose card each distilled run counts its
    /// validation images the teacher trained on.
    pub teacher: Option<PathBuf>,
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
/// Each worker thread opens its own device ([`Backend::open_default`]): only
/// host data is shared between them.
pub fn run_sweep<D: Backend>(
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
    // Runs a sweep of fewer batch sizes or seeds made under other names.
    for (old, new) in super::adopt::adopt_earlier_runs(&cfg.out, runs, cfg.loss)? {
        if !quiet {
            eprintln!("{old}: the same run as {new} (a sweep of fewer batch sizes or seeds named it so), moved to {new}");
        }
    }
    // Check every run's directory before training anything.
    let states: Vec<RunState> = runs
        .iter()
        .map(|r| run_state(r, &run_dir(&cfg.out, r), &expect))
        .collect::<Result<_>>()?;
    for r in runs {
        // A student the images do not fit would fail only when its turn
        // came, after the students before it trained.
        let spec = ModelSpec::parse_for_input(&r.student, inputs.train.sample_shape())?;
        crate::model::compat::check_spec_compatible(&spec, inputs.train)?;
        trainer::check_cache(inputs.cache.first(), inputs.train, &spec, &r.config.loss)?;
        // An augmentation the images cannot take would fail only when its
        // baseline's turn came.
        if let RunKind::Baseline { augment: Some(a) } = r.kind {
            a.check_shape(inputs.train.sample_shape())
                .map_err(|e| super::config::augment_error(e, &a.to_string()))?;
        }
    }
    let total = runs.len();
    let jobs = cfg.jobs.min(total.max(1));
    let slots = in_jobs(
        jobs,
        total,
        |i| {
            let run = &runs[i];
            match &states[i] {
                RunState::Finished(_) => Ok(RunOutcome::Skipped),
                state => D::open_default().map_err(Error::Device).and_then(|device| {
                    train_one(
                        device,
                        cfg,
                        run,
                        inputs,
                        command,
                        quiet || jobs > 1,
                        *state == RunState::Partial,
                    )
                }),
            }
        },
        |i, k, result| {
            if !quiet {
                eprintln!("[{k}/{total}] {}", progress_line(&runs[i], result));
            }
        },
    )?;
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

/// Calls `work(i)` for every index below `total`, `jobs` at a time on
/// threads of their own, in index order of starting; `done(i, k, result)`
/// follows each, `k` counting the finished ones from 1. The first error
/// stops new work (work already started finishes). The slots hold each
/// index's result, `None` for those never started.
fn in_jobs<R: Send>(
    jobs: usize,
    total: usize,
    work: impl Fn(usize) -> Result<R> + Sync,
    done: impl Fn(usize, usize, &Result<R>) + Sync,
) -> Result<Vec<Option<Result<R>>>> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Mutex<Vec<Option<Result<R>>>> = Mutex::new((0..total).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, total.max(1)) {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return;
                }
                let result = work(i);
                let k = finished.fetch_add(1, Ordering::SeqCst) + 1;
                done(i, k, &result);
                if result.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                if let Ok(mut slots) = slots.lock() {
                    slots[i] = Some(result);
                }
            });
        }
    });
    slots.into_inner().map_err(|_| Error::Training {
        context: "sweep".into(),
        message: "a run panicked".into(),
    })
}

/// How many of `config`'s validation images the teacher in `dir` trained
/// on, for the run's card: `None` without a validation split, or when the
/// teacher's card cannot say (the report names the reason).
fn val_teacher_trained(
    config: &TrainConfig,
    dir: &Path,
    inputs: &SweepInputs<'_>,
) -> Result<Option<usize>> {
    let fingerprint = &inputs.cache.first().manifest().teacher.fingerprint;
    let overlap = run_overlap(
        config,
        dir,
        Some(fingerprint),
        &inputs.train.fingerprint().0,
        inputs.train.len(),
    )?;
    Ok(overlap.as_ref().and_then(TeacherOverlap::trained))
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

/// What run `run` of the sweep reads: the cache for a distilled run.
pub(super) fn run_sources<'a, D: Backend>(
    cfg: &SweepConfig,
    run: &PlannedRun,
    inputs: &SweepInputs<'a>,
) -> TrainSources<'a, D> {
    let distilled = matches!(run.kind, RunKind::Distilled { .. });
    TrainSources::<D> {
        train: inputs.train,
        test: inputs.test,
        cache: distilled.then_some(inputs.cache),
        cache_dir: distilled.then(|| cfg.cache.clone()),
        teacher_test_predictions: inputs.teacher_test_predictions.clone(),
        online_teacher: None,
    }
}

/// How the sweep trains run `run`: resumed from its checkpoint, keeping
/// its best validation epoch, its card naming the sweep's command.
pub(super) fn run_options(
    cfg: &SweepConfig,
    run: &PlannedRun,
    inputs: &SweepInputs<'_>,
    command: &str,
    quiet: bool,
) -> Result<RunOptions> {
    let distilled = matches!(run.kind, RunKind::Distilled { .. });
    let val_teacher_trained = match (&inputs.teacher, distilled) {
        (Some(dir), true) => val_teacher_trained(&run.config, dir, inputs)?,
        _ => None,
    };
    // Validation chooses the run's epoch: its weights are kept (`best/`).
    let keep_best = !run.config.validation_split(inputs.train.len())?.is_empty();
    Ok(RunOptions {
        checkpoint_every: Some(cfg.checkpoint_every),
        keep_best,
        val_teacher_trained,
        resume: true,
        quiet,
        stop_after_steps: None,
        command: format!("{command} (run {})", run.name),
        data_dir: cfg.data.clone(),
        ..RunOptions::default()
    })
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
    let sources = run_sources::<D>(cfg, run, inputs);
    let opts = run_options(cfg, run, inputs, command, quiet)?;
    let outcome = trainer::train(
        device,
        &run.config,
        &sources,
        &run_dir(&cfg.out, run),
        &opts,
    )?;
    if !outcome.trained {
        // Finished by a twin of this job while it started (`train`'s
        // check under the directory's lock).
        return Ok(RunOutcome::Skipped);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_every_index_once_and_report_each() {
        for jobs in [1, 2, 5] {
            let seen = Mutex::new(Vec::new());
            let slots = in_jobs(
                jobs,
                7,
                |i| Ok(i * 10),
                |i, k, r| seen.lock().unwrap().push((i, k, *r.as_ref().unwrap())),
            )
            .unwrap();
            let got: Vec<usize> = slots.into_iter().map(|s| s.unwrap().unwrap()).collect();
            assert_eq!(got, (0..7).map(|i| i * 10).collect::<Vec<_>>());
            let mut seen = seen.into_inner().unwrap();
            let mut ks: Vec<usize> = seen.iter().map(|s| s.1).collect();
            ks.sort();
            assert_eq!(ks, (1..=7).collect::<Vec<_>>());
            seen.sort();
            assert!(seen
                .iter()
                .enumerate()
                .all(|(i, s)| s.0 == i && s.2 == i * 10));
        }
        assert!(in_jobs(3, 0, Ok, |_, _, _| {}).unwrap().is_empty());
    }

    #[test]
    fn the_first_error_stops_new_work() {
        let slots = in_jobs(
            1,
            5,
            |i| {
                if i == 1 {
                    Err(Error::Training {
                        context: "run 1".into(),
                        message: "diverged".into(),
                    })
                } else {
                    Ok(i)
                }
            },
            |_, _, _| {},
        )
        .unwrap();
        assert!(matches!(slots[0], Some(Ok(0))));
        assert!(matches!(slots[1], Some(Err(_))));
        assert!(slots[2..].iter().all(Option::is_none));
    }
}
