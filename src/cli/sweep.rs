//! `distill sweep`: many students against one teacher cache, then a report.
//!
//! Flags and a TOML file (`--config sweep.toml`, the same keys as the flags,
//! e.g. `students = ["mlp:784-32-10"]`, `test-cache = "..."`) are merged by
//! the library ([`SweepConfig::resolve`]), flags winning, and validated
//! before any work starts; the device dispatch then runs [`run_job`]: the
//! whole sweep ([`distill::sweep::run_and_report`]), or, on a scheduler,
//! one run of the plan (`--only I`, or `--only auto` reading the array
//! index from `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX`) or the
//! report of what has finished (`--report`). `--plan` lists the runs with
//! their indices and needs no device.

use std::path::PathBuf;

use clap::Args;
use distill::error::{Error, Result};
use distill::model::Backend;
use distill::sweep::{plan, RunOutcome, SweepConfig, SweepDone, SweepSettings};

use super::device::{with_device, DeviceArgs, Dispatch};

/// The environment variables `--only auto` reads, in order: a Slurm job
/// array's task index, a Kubernetes Indexed Job's completion index.
pub const INDEX_VARIABLES: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[
    ("spec", "--students"),
    ("batch_size", "--batch"),
    ("batch_sizes", "--batches"),
    ("optimizer.kind", "--optimizer"),
    ("loss.kind", "--loss"),
    ("loss.alpha", "--alphas"),
    ("loss.temperature", "--temperatures"),
];

#[cfg(test)]
mod tests {
    use super::parse_only;

    #[test]
    fn only_reads_a_number_or_the_schedulers_index() {
        let none = |_: &str| None;
        assert_eq!(parse_only("3", none).unwrap(), 3);
        let slurm = |k: &str| (k == "SLURM_ARRAY_TASK_ID").then(|| "7".to_string());
        assert_eq!(parse_only("auto", slurm).unwrap(), 7);
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "2".to_string());
        assert_eq!(parse_only("auto", k8s).unwrap(), 2);
        let e = parse_only("auto", none).unwrap_err().to_string();
        assert!(
            e.contains("--only") && e.contains("SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX"),
            "{e}"
        );
        let bad = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "x1".to_string());
        let e = parse_only("auto", bad).unwrap_err().to_string();
        assert!(e.contains("JOB_COMPLETION_INDEX=x1"), "{e}");
        assert!(parse_only("-1", none).is_err());
    }
}

#[derive(Args)]
pub struct SweepArgs {
    /// A TOML file whose keys are these flags' names (`val-seed = 0`), lists
    /// as TOML arrays (`temperatures = [1, 4]`), paths relative to the file;
    /// flags given here win. examples/sweep.toml is the sweep `make sweep`
    /// runs with its default variables.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Teacher-output cache of the training split.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Teacher-output cache of the test split (student-teacher agreement,
    /// teacher accuracy).
    #[arg(long)]
    test_cache: Option<PathBuf>,
    /// Dataset directory (train and test splits).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Teacher model directory, for its forward-pass timing and accuracy
    /// (default: the one the cache was built from, if it is still there).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Student model specs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    students: Vec<String>,
    /// Distillation temperatures, comma-separated (default: `distill
    /// train`'s with a cache, chosen on validation).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true, value_parser = super::parse_temperature)]
    temperatures: Vec<f32>,
    /// Hard-label loss weights, comma-separated (default: `distill train`'s
    /// with a cache, chosen on validation; 1 is the baseline's, see --baseline).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    alphas: Vec<f32>,
    /// Also train each student on hard labels alone (at each batch size and
    /// with each seed).
    #[arg(long)]
    baseline: bool,
    /// Also train each student on hard labels with each of these
    /// augmentations, separated by `;` (`train --augment`'s syntax:
    /// `shift=1;flip,mixup=0.2`, or the flag repeated). The report measures
    /// the distilled runs against the strongest baseline on validation,
    /// plain or augmented.
    #[arg(long, value_delimiter = ';', value_name = "AUGMENT;AUGMENT")]
    baseline_augments: Vec<String>,
    /// Soft loss: kd, dkd, dist, mse or pseudo (default kd).
    #[arg(long)]
    loss: Option<String>,
    /// Epochs per run (default 10).
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (default 128).
    #[arg(long)]
    batch: Option<usize>,
    /// Batch sizes, comma-separated: every setting (each baseline and each
    /// T and alpha) trains at each, and validation chooses among them, so
    /// each arm is measured at its own best batch size.
    #[arg(long, value_delimiter = ',', conflicts_with = "batch")]
    batches: Vec<usize>,
    /// sgd, adam or adamw (default adam).
    #[arg(long)]
    optimizer: Option<String>,
    /// Learning rate (default 1e-3).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Weight decay (default 0): L2 for sgd and adam, decoupled for adamw.
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// SGD momentum (default 0.9).
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// constant or cosine (default cosine).
    #[arg(long)]
    schedule: Option<String>,
    /// Seed of every run (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Seeds, comma-separated: every setting trains once with each, and the
    /// report chooses on, and states, the mean over the seeds (with each
    /// chosen run's gain seed by seed and its interval over seeds).
    #[arg(long, value_delimiter = ',', conflicts_with = "seed")]
    seeds: Vec<u64>,
    /// Runs trained at the same time (default 1: training already uses every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Checkpoint every N steps, so a killed run continues (default 200).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Blocks per shuffle window when streaming the cache (default 8).
    #[arg(long)]
    window_blocks: Option<usize>,
    /// Fraction of the training split every run holds out for validation,
    /// on which the report chooses T, alpha, the batch size and the epoch
    /// (default 0.1).
    #[arg(long, allow_negative_numbers = true)]
    val_fraction: Option<f64>,
    /// Draw the validation split from this seed instead of each run's own: the
    /// teacher's, so that no validation image trained the teacher (its
    /// accuracy there would flatter the distilled runs).
    #[arg(long)]
    val_seed: Option<u64>,
    /// Every run trains on this fraction of the samples not held out (the
    /// same subset in every run of a seed, another for each seed); default
    /// 1.
    #[arg(long, value_name = "F", allow_negative_numbers = true)]
    train_fraction: Option<f64>,
    /// Every run averages its weights (`distill train --ema DECAY`) and
    /// is evaluated and written as the average.
    #[arg(long, value_name = "DECAY", allow_negative_numbers = true)]
    ema: Option<f64>,
    /// Before the report, train each run of the chosen setting and of the
    /// strongest baseline again, to the chosen epoch, where it kept no
    /// weights after it (a seed whose own best epoch is not the one chosen
    /// on the mean over seeds): a run repeats itself bit for bit, so its
    /// model after that epoch lands in runs/NAME/epoch-NNN/, and the report
    /// compares the two on the test images. With `--report`, these are the
    /// only runs it trains; `--jobs` trains that many at a time.
    #[arg(long, conflicts_with_all = ["only", "plan"])]
    chosen_weights: bool,
    /// Output folder: runs/NAME/ per run, report.md, results.csv, plots.
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the runs of the plan, one per line as INDEX<TAB>NAME (the
    /// same settings always give the same indices), and exit.
    #[arg(long, conflicts_with_all = ["only", "report"])]
    plan: bool,
    /// Train only the run of this plan index (one task of a scheduler
    /// array), or `auto`: the index in SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX. Writes only that run's directory; no report.
    #[arg(long, conflicts_with = "report")]
    only: Option<String>,
    /// Write report.md, results.csv and the plots from the runs that have
    /// finished, naming the missing ones; trains nothing (but the replays
    /// of `--chosen-weights`).
    #[arg(long)]
    report: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// What a sweep command does.
pub(crate) enum SweepMode {
    /// Every run, then the report.
    All,
    /// The run of one plan index.
    Only(usize),
    /// The report of the finished runs.
    Report,
}

/// A validated sweep, ready for a device.
pub(crate) struct SweepJob {
    pub config: SweepConfig,
    pub mode: SweepMode,
    pub quiet: bool,
}

/// `distill sweep`.
pub fn run(a: SweepArgs) -> Result<()> {
    let config = SweepConfig::resolve(settings(&a), a.config.as_deref())?;
    if a.plan {
        return print_plan(&config, a.quiet);
    }
    let mode = match (&a.only, a.report) {
        (Some(only), _) => SweepMode::Only(parse_only(only, |k| std::env::var(k).ok())?),
        (None, true) => SweepMode::Report,
        (None, false) => SweepMode::All,
    };
    let job = SweepJob {
        config,
        mode,
        quiet: a.quiet,
    };
    with_device(&a.device.device, Dispatch::Sweep(Box::new(job)))
}

/// `--plan`: one line per run, INDEX<TAB>NAME, on stdout.
fn print_plan(config: &SweepConfig, quiet: bool) -> Result<()> {
    let runs = plan(config)?;
    if !quiet {
        eprintln!(
            "sweep plan: {} runs, indices 0 to {} (`--only INDEX` runs one; `--report` writes the report)",
            runs.len(),
            runs.len().saturating_sub(1)
        );
    }
    for (i, r) in runs.iter().enumerate() {
        println!("{i}\t{}", r.name);
    }
    Ok(())
}

/// The index `--only` names: a number, or `auto` for the first of
/// [`INDEX_VARIABLES`] that `var` finds set.
fn parse_only(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<usize> {
    let bad = |message: String| Error::Config {
        field: "--only".into(),
        message,
    };
    let (value, source) = match text.trim() {
        "auto" => {
            let found = INDEX_VARIABLES
                .iter()
                .find_map(|k| var(k).map(|v| (v, format!("{k}={}", var(k).unwrap_or_default()))));
            found.ok_or_else(|| {
                bad(format!(
                    "auto reads the array index from {}, and neither is set; give the index itself (`distill sweep --plan` lists them)",
                    INDEX_VARIABLES.join(" or ")
                ))
            })?
        }
        other => (other.to_string(), format!("'{other}'")),
    };
    value.trim().parse::<usize>().map_err(|_| {
        bad(format!(
            "{source} is not a run index (a whole number from 0; `distill sweep --plan` lists them)"
        ))
    })
}

/// Runs a sweep job on `dev`: the whole sweep, one run, or the report.
pub(crate) fn run_job<D: Backend>(dev: D, job: SweepJob) -> Result<()> {
    let command = super::command_line();
    match job.mode {
        SweepMode::All => distill::sweep::run_and_report(dev, &job.config, &command, job.quiet)
            .map(|done| print(&done)),
        SweepMode::Only(index) => {
            let (run, outcome) =
                distill::sweep::run_only::<D>(&job.config, index, &command, job.quiet)?;
            match outcome {
                RunOutcome::Skipped => {
                    println!("sweep run {index} ({}): finished earlier", run.name)
                }
                RunOutcome::Trained { seconds, resumed } => println!(
                    "sweep run {index} ({}): trained in {seconds:.1}s{}",
                    run.name,
                    if resumed { " (resumed)" } else { "" }
                ),
            }
            Ok(())
        }
        SweepMode::Report => distill::sweep::report_only(dev, &job.config, &command, job.quiet)
            .map(|done| print_report(&done)),
    }
}

/// The settings the flags give (a flag not given is `None`).
fn settings(a: &SweepArgs) -> SweepSettings {
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let nums = |v: &Vec<f32>| (!v.is_empty()).then(|| v.clone());
    SweepSettings {
        cache: a.cache.clone(),
        test_cache: a.test_cache.clone(),
        data: a.data.clone(),
        teacher: a.teacher.clone(),
        students: list(&a.students),
        temperatures: nums(&a.temperatures).map(|t| t.into_iter().map(f64::from).collect()),
        alphas: nums(&a.alphas),
        baseline: a.baseline.then_some(true),
        baseline_augments: list(&a.baseline_augments),
        loss: a.loss.clone(),
        epochs: a.epochs,
        batch: a.batch,
        batches: (!a.batches.is_empty()).then(|| a.batches.clone()),
        optimizer: a.optimizer.clone(),
        lr: a.lr,
        weight_decay: a.weight_decay,
        momentum: a.momentum,
        schedule: a.schedule.clone(),
        seed: a.seed,
        seeds: (!a.seeds.is_empty()).then(|| a.seeds.clone()),
        jobs: a.jobs,
        checkpoint_every: a.checkpoint_every,
        window_blocks: a.window_blocks,
        val_fraction: a.val_fraction,
        val_seed: a.val_seed,
        train_fraction: a.train_fraction,
        ema: a.ema,
        chosen_weights: a.chosen_weights.then_some(true),
        out: a.out.clone(),
    }
}

/// What `--report` prints: the finished and missing runs, then the
/// report's files.
fn print_report(done: &SweepDone) {
    println!(
        "sweep report: {} of {} runs finished, {} missing",
        done.runs - done.missing.len(),
        done.runs,
        done.missing.len()
    );
    for (i, name) in &done.missing {
        println!("missing: {i}\t{name}");
    }
    for f in &done.files {
        println!("{}", f.display());
    }
}

/// What a finished sweep prints: the counts, then the report's files.
pub(crate) fn print(done: &SweepDone) {
    println!(
        "sweep: {} runs, {} trained, {} already finished, in {:.1}s",
        done.runs,
        done.trained,
        done.runs - done.trained,
        done.seconds
    );
    for f in &done.files {
        println!("{}", f.display());
    }
}
