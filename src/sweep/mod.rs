//! Sweeps: many students trained against **one** teacher cache, and the
//! report that compares them.
//!
//! A sweep is the reason to cache a teacher. [`SweepConfig`] names the
//! students, temperatures, loss weights, batch sizes and seeds; [`plan`]
//! expands it into one [`PlannedRun`] per (student, T, alpha, batch size,
//! seed), plus each student's hard-label baselines (plain, and with each
//! augmentation the config names) at each batch size and seed, each with
//! its own directory under `OUT/runs/`. [`run_sweep`]
//! trains them one after another or several at once, all streaming the same
//! open [`CacheReader`](crate::cache::CacheReader). A run whose `model.json` exists and records the same
//! config, data and cache is finished and is skipped, and an interrupted run
//! continues from its checkpoint, so rerunning a killed sweep only does the
//! work that is left. Widening a finished sweep (more batch sizes or seeds, which
//! add `-bB` and `-sS` to the runs' names) finds its runs under their
//! earlier names and moves them into place.
//!
//! The report ([`collect_results`], [`write_report`]) is rebuilt from the
//! runs' own `model.json` cards and curves every time, so `report.md`,
//! `results.csv` and the plots always agree with them. Every run of a seed
//! holds out the same validation split (every run, with `val-seed`); the
//! report chooses T, alpha, the batch size and the epoch per student on it
//! ([`choose`]), and the strongest baseline likewise, and states test
//! accuracy for the chosen settings only. With several seeds each setting
//! is pooled over them first ([`pool_seeds`]): the choice is made on the
//! mean validation accuracy and the figures are means.
//!
//! On a scheduler a sweep is a job array: the plan's order gives each run a
//! stable index, [`run_only`] trains one index (writing only that run's
//! directory) and [`report_only`] writes the report of whatever has
//! finished, naming the missing runs (`examples/slurm/sweep.sbatch`,
//! `examples/kubernetes/sweep-job.yaml`). [`run_and_report`] does all of it on a
//! device, from a config that [`SweepConfig::resolve`] builds from a
//! `sweep.toml` file and the command line's settings:
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
//!
//! A whole sweep from a `sweep.toml` file, with one setting overridden:
//!
//! ```no_run
//! # fn main() -> distill::Result<()> {
//! use distill::sweep::{run_and_report, SweepConfig, SweepSettings};
//! let overrides = SweepSettings { epochs: Some(3), ..SweepSettings::default() };
//! let cfg = SweepConfig::resolve(overrides, Some("sweep.toml".as_ref()))?;
//! let done = run_and_report(dfdx::prelude::Cpu::default(), &cfg, "example", false)?;
//! println!("{} runs, {} trained: {:?}", done.runs, done.trained, done.files);
//! # Ok(())
//! # }
//! ```
//!
//! One file per concept: [`SweepConfig`] (`config.rs`), the plan
//! (`plan.rs`), the runs a narrower sweep of the folder made under other
//! names (`adopt.rs`), running it (`run.rs`), the results read from the cards
//! (`results.rs`), the teacher's figures (`teacher.rs`), the chosen run
//! against the strongest baseline and the runner-up, image by image or
//! seed by seed (`significance.rs`), the report (`report.rs`) and its
//! plots ([`plot`]).

mod adopt;
mod config;
mod plan;
pub mod plot;
mod replay;
mod report;
mod results;
mod run;
mod significance;
mod teacher;

pub use config::{key_of, SweepConfig, SweepSettings};
pub use plan::{plan, run_dir, run_name, PlannedRun, RunKind, RUNS_DIR};
pub use report::{
    cache_description, group_digits, pct, report_markdown, report_sweep, results_csv, write_report,
    ReportContext, CSV_HEADER, PARETO_PNG, REPORT_MD, RESULTS_CSV, TEMPERATURE_PNG,
};
pub use results::{
    by_student, choose, chosen_results, collect_results, pareto_front, pool_seeds, Choice,
    CurveEpoch, RunResult, StudentRow,
};
pub use run::{
    report_only, run_and_report, run_only, run_state, run_sweep, Expect, OpenInputs, RunOutcome,
    RunState, SweepDone, SweepInputs, SweepSummary,
};
pub use significance::{choice_pairs, pair_line, ChoicePair, PairOutcome};
pub use teacher::{
    teacher_dir, teacher_forward_timing, teacher_summary, Savings, TeacherSummary, TeacherTiming,
    TEACHER_TIMING_FILE,
};
