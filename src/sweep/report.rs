//! A sweep's report, rebuilt from the runs' cards and curves every time:
//! `report.md` ([`report_markdown`]), `results.csv` ([`results_csv`]) and
//! the two plots ([`super::plot`]), written by [`write_report`];
//! [`report_sweep`] gathers what they state besides the runs.
//!
//! The report names, per student, the setting chosen on validation
//! ([`super::choose`]) and states test accuracy for the chosen settings
//! only; every run's validation figures are in its tables and in
//! `results.csv` (which, as the raw record of the cards, also keeps each
//! run's last-epoch test accuracy). A sweep of several seeds is reported
//! per setting, each figure the mean over its seeds ([`pool_seeds`]).
//! Below each student's table the chosen run is compared with the strongest
//! baseline and the runner-up, image by image or, with several seeds, seed
//! by seed, and on the test images with the strongest baseline
//! ([`super::significance`]); a line says where the chosen epoch's weights
//! are. Runs of the plan that have not finished are listed as missing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::config::SweepConfig;
use super::plan::{PlannedRun, RunKind, RUNS_DIR};
use super::results::{
    by_student, chosen_results, collect_results, pool_seeds, Choice, RunResult, StudentRow,
};
use super::run::OpenInputs;
use super::significance::{
    choice_pairs, pair_line, test_comparisons, test_line, weights_after_choice, ChoicePair,
    TestComparison,
};
use super::teacher::{teacher_forward_timing, teacher_summary, Savings, TeacherSummary};
use crate::cache::CacheViews;
use crate::error::{Error, Result};
use crate::model::{Backend, Network};
use crate::report::plot::write_atomically;
use crate::train::validation::{run_overlap, TeacherOverlap};

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
        if i > 0 && (s.len() - i).is_multiple_of(3) {
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
pub const CSV_HEADER: &str = "run,student,parameters,flops_per_sample,kind,temperature,alpha,augment,batch,epochs,seed,test_accuracy,test_loss,teacher_agreement,train_seconds,cache_id,val_samples,val_accuracy,val_loss,best_val_epoch,best_val_accuracy,best_val_epoch_test_accuracy,chosen,setting";

/// `results.csv`: one row per run; numbers as the cards and curves hold
/// them, empty fields where they have none. The `val_*` columns are the
/// last epoch's validation figures, `best_val_*` those of the epoch
/// validation chooses within the run, and `chosen` is `yes` on the runs the
/// report states for their student: the chosen distilled run and the
/// strongest baseline (with several seeds, every seed's run of the chosen
/// settings). `augment` is a baseline's augmentation, `setting` the run's
/// name without its seed.
pub fn results_csv(results: &[RunResult]) -> String {
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
    let pooled = pool_seeds(results);
    let rows = by_student(&pooled);
    let chosen: Vec<&str> = rows
        .iter()
        .flat_map(|r| [r.chosen(), r.chosen_baseline()])
        .flatten()
        .map(|c| c.run.setting.as_str())
        .collect();
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    for r in results {
        let (kind, t, a, aug) = match r.kind {
            RunKind::Baseline { augment } => (
                "baseline",
                String::new(),
                String::new(),
                augment.map_or(String::new(), |a| csv_field(&a.to_string())),
            ),
            RunKind::Distilled { temperature, alpha } => (
                "distilled",
                temperature.to_string(),
                alpha.to_string(),
                String::new(),
            ),
        };
        let best = r.best_epoch();
        let fields = [
            csv_field(&r.name),
            csv_field(&r.student),
            r.parameters.to_string(),
            r.flops_per_sample.to_string(),
            kind.to_string(),
            t,
            a,
            aug,
            r.batch_size.to_string(),
            r.epochs.to_string(),
            r.seed.to_string(),
            opt(r.test_accuracy),
            opt(r.test_loss),
            opt(r.teacher_agreement),
            r.train_seconds.to_string(),
            csv_field(r.cache_id.as_deref().unwrap_or("")),
            r.val_samples.map_or(String::new(), |v| v.to_string()),
            opt(r.val_accuracy),
            opt(r.val_loss),
            best.map_or(String::new(), |b| b.epoch.to_string()),
            opt(best.and_then(|b| b.val_accuracy)),
            opt(best.and_then(|b| b.test_accuracy)),
            if chosen.contains(&r.setting.as_str()) {
                "yes".to_string()
            } else {
                String::new()
            },
            csv_field(&r.setting),
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
    /// Runs of the plan not finished: (plan index, name).
    pub missing: &'a [(usize, String)],
    /// How many of the validation images the teacher trained on: for the
    /// one split every run holds out, or, where the seeds draw their own,
    /// the split with the most (and its seed).
    pub val_overlap: Option<TeacherOverlap>,
    pub val_overlap_seed: Option<u64>,
    /// Per student, the chosen distilled run against the strongest baseline
    /// and the runner-up (`significance.rs`).
    pub choice_pairs: HashMap<String, Vec<ChoicePair>>,
    /// Per student, where the chosen distilled run's weights after its
    /// chosen epoch are (`chosen_weights`).
    pub chosen_weights: HashMap<String, String>,
    /// Per student, the chosen setting against the strongest baseline on
    /// the test images (`significance.rs`).
    pub test_comparisons: HashMap<String, TestComparison>,
}

/// Images per forward pass when the report scores runs on validation
/// (predictions do not depend on it).
const PAIR_EVAL_BATCH: usize = 1000;

/// `report.md`, from every finished run's result (a sweep of several seeds
/// is reported per setting, [`pool_seeds`]).
pub fn report_markdown(results: &[RunResult], ctx: &ReportContext<'_>) -> String {
    let mut s = String::new();
    intro(&mut s, results, ctx);
    missing(&mut s, ctx.missing);
    let pooled = pool_seeds(results);
    let rows = by_student(&pooled);
    summary(&mut s, &rows, batches_vary(results));
    for row in &rows {
        student_section(&mut s, row, ctx);
    }
    savings(&mut s, ctx.savings);
    let _ = writeln!(
        s,
        "Per-run figures: [{RESULTS_CSV}]({RESULTS_CSV}); each run's card, metrics and curves are in `{RUNS_DIR}/NAME/`."
    );
    s
}

/// The title, the settings, the teacher and how to read the tables.
fn intro(s: &mut String, results: &[RunResult], ctx: &ReportContext<'_>) {
    let cfg = ctx.cfg;
    let seeds = super::plan::dedup(&cfg.seeds);
    let _ = writeln!(s, "# Distillation sweep\n");
    let _ = writeln!(
        s,
        "{} runs from one teacher cache (`{}`, {}) on `{}`: {} epoch{} each, {}, {} lr {}, {}, loss {}.\n",
        results.len(),
        cfg.cache.display(),
        ctx.cache_description,
        cfg.data.display(),
        cfg.epochs,
        if cfg.epochs == 1 { "" } else { "s" },
        match super::plan::dedup(&cfg.batch_sizes).as_slice() {
            [one] => format!("batch {one}"),
            many => format!(
                "every setting at batch {} (validation chooses the batch size too)",
                many.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
        cfg.optimizer.kind,
        cfg.optimizer.lr,
        match seeds.as_slice() {
            [one] => format!("seed {one}"),
            many => format!(
                "every setting with seeds {} (each setting's figures are the means over its seeds)",
                many.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
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
    let val_samples = results.iter().find_map(|r| r.val_samples);
    match val_samples {
        Some(v) => {
            let _ = writeln!(
                s,
                "Settings are chosen on validation: every run holds out {} {} training samples (val-fraction {}, drawn from {}) and never trains on them{}. \
                 For each student the distilled setting (T, alpha, batch size and the epoch) with the best validation accuracy is chosen, and the strongest baseline likewise (its augmentation, batch size and epoch); \
                 test accuracy is stated for the chosen settings only, measured after the chosen epoch. \
                 Gain is the chosen distilled run's test accuracy minus the chosen baseline's, in percentage points. Train time sums all of a student's runs.\n",
                match (cfg.val_seed, seeds.len()) {
                    (None, n) if n > 1 => "its seed's",
                    _ => "the same",
                },
                v,
                cfg.val_fraction,
                match (cfg.val_seed, seeds.as_slice()) {
                    (Some(s), _) => format!("seed {s}"),
                    (None, [one]) => format!("seed {one}"),
                    (None, _) => "the run's own seed".to_string(),
                },
                match cfg.train_fraction {
                    f if f < 1.0 => format!(
                        "; each trains on {f} of the rest (train-fraction), drawn from the run's own seed"
                    ),
                    _ => String::new(),
                }
            );
            let whose = match ctx.val_overlap_seed {
                Some(seed) => format!(" (seed {seed}'s split, the most among the seeds' splits)"),
                None => String::new(),
            };
            if let Some(noise) = validation_noise(results, v) {
                let _ = writeln!(s, "{noise}\n");
            }
            match &ctx.val_overlap {
                Some(TeacherOverlap::Known { trained: 0, .. }) => {
                    let _ = match ctx.val_overlap_seed {
                        Some(_) => writeln!(s, "None of the validation samples of any seed's split trained the teacher.\n"),
                        None => writeln!(s, "None of the validation samples trained the teacher.\n"),
                    };
                }
                Some(TeacherOverlap::Known {
                    teacher,
                    trained,
                    teacher_split,
                    ..
                }) => {
                    let _ = writeln!(
                        s,
                        "**{trained} of the {v} validation samples trained the teacher**{whose} (`{}`): a distilled student's accuracy on them flatters it against hard labels, so the choice leans towards distillation. {}\n",
                        teacher.display(),
                        match teacher_split {
                            Some((seed, _)) => format!("`--val-seed {seed}` draws the split the teacher held out."),
                            None => "The teacher held nothing out; one trained with a validation split, and its seed as `--val-seed`, avoids this.".to_string(),
                        }
                    );
                }
                Some(TeacherOverlap::Unknown(reason)) => {
                    let _ = writeln!(s, "Whether the teacher trained on the validation samples is unknown: {reason}.\n");
                }
                None => {}
            }
        }
        None => {
            let _ = writeln!(
                s,
                "No run holds out a validation split (val-fraction 0), so the settings below are chosen on the **test** split, which flatters them; rerun with a validation split to choose honestly. \
                 Gain is the chosen distilled run's test accuracy minus the baseline's, in percentage points. Train time sums all of a student's runs.\n"
            );
        }
    }
}

/// How far apart two validation accuracies must be before the choice
/// between them means anything: one run's binomial standard error on the
/// `v` held-out samples, at the best validation accuracy of `results`, and
/// the command that tests two runs image by image.
fn validation_noise(results: &[RunResult], v: usize) -> Option<String> {
    if v == 0 {
        return None;
    }
    let best = results
        .iter()
        .filter_map(|r| r.best_epoch().and_then(|b| b.val_accuracy))
        .reduce(f64::max)?;
    let se = (best * (1.0 - best) / v as f64).sqrt();
    let seeds = results.iter().any(|r| r.name != r.setting);
    Some(format!(
        "At {} on {v} samples one run's validation accuracy has a standard error of {:.2} points (binomial), so settings within a few tenths of a point of each other are not told apart by this split. {}",
        pct(Some(best)),
        100.0 * se,
        match seeds {
            false => "Each student's section scores the chosen run against the baseline and the runner-up image by image (McNemar's test); \
                      `distill eval --split val --model A --model B` does the same for any two runs.",
            true => "Each student's section compares the chosen setting with the baseline and the runner-up seed by seed on the test images (Student's t interval over seeds); \
                     `distill eval --arm NAME=RUN,RUN,... --arm ...` compares settings over images and over seeds.",
        }
    ))
}

/// The runs of the plan that have not finished, if any.
fn missing(s: &mut String, missing: &[(usize, String)]) {
    if missing.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "## Missing runs\n\nNot finished when this report was written, and left out of every table below: {} of the plan's runs. `distill sweep --only INDEX` runs one; `distill sweep --report` rewrites this report.\n",
        missing.len()
    );
    let _ = writeln!(s, "| index | run |\n|---:|---|");
    for (i, name) in missing {
        let _ = writeln!(s, "| {i} | `{name}` |");
    }
    let _ = writeln!(s);
}

/// Whether a student's baselines include augmented ones.
fn augmented(row: &StudentRow<'_>) -> bool {
    row.baselines
        .iter()
        .any(|r| matches!(r.kind, RunKind::Baseline { augment: Some(_) }))
}

/// Whether the runs were trained at more than one batch size.
fn batches_vary(results: &[RunResult]) -> bool {
    results
        .windows(2)
        .any(|w| w[0].batch_size != w[1].batch_size)
}

/// "T 4, alpha 0.5, epoch 3 of 3" for a chosen distilled run, "shift=1,
/// epoch 3 of 3" for an augmented baseline ("plain, ..." for a plain one
/// where `plain` says there were augmented ones); with the batch size
/// where `batch` says the sweep varies it.
fn setting(c: &Choice<'_>, batch: bool, plain: bool) -> String {
    let mut items = match c.run.kind {
        RunKind::Distilled { temperature, alpha } => {
            vec![format!("T {temperature}"), format!("alpha {alpha}")]
        }
        RunKind::Baseline { augment: Some(a) } => vec![format!("`{a}`")],
        RunKind::Baseline { augment: None } if plain => vec!["plain".to_string()],
        RunKind::Baseline { augment: None } => Vec::new(),
    };
    if batch {
        items.push(format!("batch {}", c.run.batch_size));
    }
    items.push(format!("epoch {} of {}", c.epoch, c.run.epochs));
    items.join(", ")
}

/// The headline per student (the chosen setting, named) and the summary
/// table, one row per student, and the two plots.
fn summary(s: &mut String, rows: &[StudentRow<'_>], batch: bool) {
    let _ = writeln!(s, "## Summary\n");
    for row in rows {
        let (chosen, base) = (row.chosen(), row.chosen_baseline());
        let Some(c) = chosen else { continue };
        let how = if c.on_test {
            "selected on the test split".to_string()
        } else {
            format!("selected on validation, {}", pct(c.val_accuracy))
        };
        let _ = writeln!(
            s,
            "- `{}`: distilled at **{}** ({how}): **{}** test{}{}.",
            row.student,
            setting(&c, batch, false),
            pct(c.test_accuracy),
            match c.run.seed_runs.len() {
                0 => String::new(),
                n => format!(" (the mean of {n} seeds)"),
            },
            match base {
                Some(b) => format!(
                    " against the {}baseline's {} ({}), {}",
                    match row.baselines.len() {
                        1 => "",
                        _ => "strongest ",
                    },
                    pct(b.test_accuracy),
                    setting(&b, batch, augmented(row)),
                    gain(c.test_accuracy, b.test_accuracy)
                ),
                None => String::new(),
            }
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| student | parameters | FLOPs/sample | baseline | chosen distilled | gain | chosen T | chosen alpha | chosen epoch | validation (baseline / distilled) | train time |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let (chosen, base) = (row.chosen(), row.chosen_baseline());
        let (bt, ba) = match chosen.map(|c| c.run.kind) {
            Some(RunKind::Distilled { temperature, alpha }) => {
                (temperature.to_string(), alpha.to_string())
            }
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {:.0} s |",
            row.student,
            group_digits(row.parameters),
            group_digits(row.flops_per_sample),
            pct(base.and_then(|b| b.test_accuracy)),
            pct(chosen.and_then(|c| c.test_accuracy)),
            gain(
                chosen.and_then(|c| c.test_accuracy),
                base.and_then(|b| b.test_accuracy)
            ),
            bt,
            ba,
            chosen.map_or("-".into(), |c| c.epoch.to_string()),
            pct(base.and_then(|b| b.val_accuracy)),
            pct(chosen.and_then(|c| c.val_accuracy)),
            row.train_seconds()
        );
    }
    let _ = writeln!(s, "\n![accuracy against parameters]({PARETO_PNG})\n");
    let _ = writeln!(s, "![accuracy against temperature]({TEMPERATURE_PNG})\n");
}

/// A student's section: every run's validation figures, the test accuracy
/// of the chosen ones, and the chosen run's `pairs` (against the baseline
/// and the runner-up, image by image).
fn student_section(s: &mut String, row: &StudentRow<'_>, ctx: &ReportContext<'_>) {
    let pairs = ctx
        .choice_pairs
        .get(row.student)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let weights = ctx.chosen_weights.get(row.student);
    let chosen: Vec<Choice<'_>> = [row.chosen_baseline(), row.chosen()]
        .into_iter()
        .flatten()
        .collect();
    let base_val = row.chosen_baseline().and_then(|b| b.val_accuracy);
    let _ = writeln!(
        s,
        "## `{}`\n\n{} parameters, {} FLOPs per sample.\n",
        row.student,
        group_digits(row.parameters),
        group_digits(row.flops_per_sample)
    );
    let _ = writeln!(
        s,
        "| run | T | alpha | best validation epoch | validation accuracy | over the {}baseline's | last-epoch validation | test accuracy (chosen only) | teacher agreement | train time |",
        match row.baselines.len() {
            0 | 1 => "",
            _ => "strongest ",
        }
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in row.baselines.iter().chain(&row.distilled).copied() {
        let (t, a) = match r.kind {
            RunKind::Baseline { augment: None } => ("-".to_string(), "1 (labels only)".to_string()),
            RunKind::Baseline { augment: Some(aug) } => {
                ("-".to_string(), format!("1 (labels only, `{aug}`)"))
            }
            RunKind::Distilled { temperature, alpha } => {
                (temperature.to_string(), alpha.to_string())
            }
        };
        let best = r.best_epoch();
        let g = match r.kind {
            RunKind::Baseline { .. } => "-".to_string(),
            RunKind::Distilled { .. } => gain(best.and_then(|b| b.val_accuracy), base_val),
        };
        let pick = chosen.iter().find(|c| c.run.name == r.name);
        let _ = writeln!(
            s,
            "| `{}`{} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
            r.name,
            match (r.seed_runs.len(), r.missing_seeds) {
                (0, _) => String::new(),
                (n, 0) => format!(" ({n} seeds)"),
                (n, m) => format!(" ({n} of {} seeds: not chosen)", n + m),
            },
            t,
            a,
            best.filter(|b| b.val_accuracy.is_some())
                .map_or("-".into(), |b| b.epoch.to_string()),
            pct(best.and_then(|b| b.val_accuracy)),
            g,
            pct(r.val_accuracy),
            match pick {
                Some(c) => format!("**{}** (chosen, epoch {})", pct(c.test_accuracy), c.epoch),
                None => "-".to_string(),
            },
            pct(r.teacher_agreement),
            r.train_seconds
        );
    }
    let _ = writeln!(s);
    if let Some(w) = weights {
        let _ = writeln!(s, "{w}\n");
    }
    for p in pairs {
        let _ = writeln!(s, "{}\n", pair_line(p));
    }
    if let Some(t) = ctx.test_comparisons.get(row.student) {
        let _ = writeln!(s, "{}\n", test_line(t));
    }
}

/// Per student (by spec), a line that says where the chosen distilled
/// run's weights after its chosen epoch are, relative to the sweep's
/// folder: the run's own at its last epoch, its `best/` where validation
/// chose an earlier one ([`weights_after_choice`]). A setting
/// of several seeds is chosen on the mean curve, so a seed's `best/` (its
/// own best epoch) holds the chosen epoch only where the two agree; the
/// line names the seeds whose weights after it were not kept, and how to
/// train them again.
pub fn chosen_weights(out: &Path, pooled: &[RunResult]) -> HashMap<String, String> {
    let mut lines = HashMap::new();
    for row in by_student(pooled) {
        let Some(c) = row.chosen() else { continue };
        let (mut kept, mut lost) = (Vec::new(), Vec::new());
        for (r, weights) in weights_after_choice(out, &c) {
            match weights {
                Some(p) => kept.push(format!(
                    "`{}/`",
                    p.strip_prefix(out).unwrap_or(&p).display()
                )),
                None => lost.push(format!("`{}`", r.name)),
            }
        }
        let mut line = format!("Weights of the chosen run after epoch {}: ", c.epoch);
        if !kept.is_empty() {
            line.push_str(&kept.join(", "));
        }
        if !lost.is_empty() {
            let _ = write!(
                line,
                "{}not kept for {} (a run keeps its last epoch's weights, and in `best/` its own best validation epoch's); \
                 the same sweep with `--report --chosen-weights` trains them again to epoch {} into `runs/NAME/epoch-{:03}/`, kept where the replay repeats the run's figures.",
                if kept.is_empty() { "" } else { "; " },
                lost.join(", "),
                c.epoch,
                c.epoch
            );
        } else {
            line.push('.');
        }
        lines.insert(row.student.to_string(), line);
    }
    lines
}

/// What the cache saved, when the teacher's forward pass was timed.
fn savings(s: &mut String, savings: Option<&Savings>) {
    let _ = writeln!(s, "## What the cache saved\n");
    match savings {
        Some(sv) => {
            let _ = writeln!(
                s,
                "The teacher's forward pass over the {} training samples takes {:.1} s on this machine; the cache pays it once. \
                 Online distillation runs the teacher on every batch of every epoch ({} trained samples each): over these {} distilled runs ({} epochs in all) \
                 that is {:.1} s ({:.1} min) of teacher forward time, {:.0}x the one pass. \
                 (Baselines need no teacher. Building the cache also compresses and writes the shards; `distill cache build` reports its own time.)\n",
                sv.samples,
                sv.forward_seconds,
                sv.trained_samples,
                sv.distilled_runs,
                sv.distilled_epochs,
                sv.online_seconds(),
                sv.online_seconds() / 60.0,
                sv.online_seconds() / sv.forward_seconds.max(1e-9)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "The teacher's weights were not found (pass `--teacher DIR`), so its forward time was not measured.\n"
            );
        }
    }
}

/// Writes `report.md`, `results.csv` and the two plots into `cfg.out`,
/// each atomically (drawn or written under a temporary name, then renamed),
/// so a reader never sees half a file.
pub fn write_report(results: &[RunResult], ctx: &ReportContext<'_>) -> Result<Vec<PathBuf>> {
    let out = &ctx.cfg.out;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let md = out.join(REPORT_MD);
    crate::model::io::atomic_write(&md, report_markdown(results, ctx).as_bytes())?;
    let csv = out.join(RESULTS_CSV);
    crate::model::io::atomic_write(&csv, results_csv(results).as_bytes())?;
    let pareto = out.join(PARETO_PNG);
    let pooled = pool_seeds(results);
    let chosen = chosen_results(&pooled);
    write_atomically(&pareto, |tmp| {
        super::plot::accuracy_vs_parameters(tmp, &chosen, ctx.teacher)
    })?;
    let temps = out.join(TEMPERATURE_PNG);
    write_atomically(&temps, |tmp| {
        super::plot::accuracy_vs_temperature(tmp, &pooled)
    })?;
    Ok(vec![md, csv, pareto, temps])
}

/// Reads the cards of `runs` (the finished ones; `missing` names the others)
/// and writes the report: with the teacher
/// (its directory and network), its forward pass over the training split is
/// timed on `device_name` (once; a rerun reuses the timing) for what the
/// cache saved. The chosen runs, their baselines and runners-up are loaded
/// on `device` and scored on the validation images.
pub fn report_sweep<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    runs: &[PlannedRun],
    missing: &[(usize, String)],
    open: &OpenInputs,
    teacher: Option<(&Path, &Network<D>)>,
    device_name: &str,
) -> Result<Vec<PathBuf>> {
    let results = collect_results(&cfg.out, runs)?;
    let timing = match teacher {
        Some((_, net)) => Some(teacher_forward_timing(
            net,
            &open.train,
            &cfg.out,
            device_name,
        )?),
        None => None,
    };
    let savings = timing.as_ref().map(|t| Savings::new(t, &results));
    let teacher_summary = teacher_summary(
        open.cache.first(),
        open.test_cache.as_ref(),
        open.test.as_ref(),
        teacher.map(|(dir, _)| dir),
    );
    // Each seed draws its own split unless `val-seed` names one: the
    // split the teacher trained most of is the one to warn about.
    let split_seeds = match cfg.val_seed {
        Some(_) => vec![None],
        None => super::plan::dedup(&cfg.seeds)
            .into_iter()
            .map(Some)
            .collect(),
    };
    let mut val_overlap = None;
    let mut val_overlap_seed = None;
    if let (Some((dir, _)), Some(student)) = (teacher, cfg.students.first()) {
        for seed in &split_seeds {
            let mut config = cfg.train_config(student);
            config.seed = seed.unwrap_or(config.seed);
            let overlap = run_overlap(
                &config,
                dir,
                Some(&open.cache.first().manifest().teacher.fingerprint),
                &open.train.fingerprint().0,
                open.train.len(),
            )?;
            let worse = match (&val_overlap, &overlap) {
                (None, _) => true,
                (
                    Some(TeacherOverlap::Known { trained: a, .. }),
                    Some(TeacherOverlap::Known { trained: b, .. }),
                ) => b > a,
                _ => false,
            };
            if worse {
                val_overlap = overlap;
                val_overlap_seed = seed.filter(|_| split_seeds.len() > 1);
            }
        }
    }
    let pooled = pool_seeds(&results);
    let test_comparisons = match open.test.as_ref() {
        Some(test) => test_comparisons(device.clone(), &cfg.out, &pooled, test, PAIR_EVAL_BATCH)?,
        None => HashMap::new(),
    };
    let ctx = ReportContext {
        cfg,
        teacher: teacher_summary.as_ref(),
        savings: savings.as_ref(),
        cache_description: cache_description(&open.cache),
        missing,
        val_overlap,
        val_overlap_seed,
        choice_pairs: choice_pairs(device, &cfg.out, &pooled, &open.train, PAIR_EVAL_BATCH)?,
        chosen_weights: chosen_weights(&cfg.out, &pooled),
        test_comparisons,
    };
    write_report(&results, &ctx)
}

/// The cache as the report describes it: the teacher, T, the encoding and
/// any augmented views.
pub fn cache_description(cache: &CacheViews) -> String {
    let m = cache.first().manifest();
    format!(
        "{} teacher outputs at T {}, {} encoding{}",
        m.teacher.spec,
        m.temperature,
        m.encoding,
        match cache.view_info() {
            Some(v) => format!(", {} augmented views ({})", v.views, v.augment),
            None => String::new(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::super::results::tests::results;
    use super::*;

    #[test]
    fn csv_rows_and_grouped_digits() {
        let r = results();
        let csv = results_csv(&r);
        assert_eq!(csv.lines().count(), 6);
        assert!(csv
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("a_kd-T4-a0.5,a,100,200,distilled,4,0.5,,128,3,0,0.82,"));
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(group_digits(12), "12");
    }

    #[test]
    fn the_noise_line_states_the_standard_error_at_the_best_validation() {
        let mut r = results();
        // No validation figures: nothing to say.
        assert_eq!(validation_noise(&r, 900), None);
        r[0].curve[0].val_accuracy = Some(0.85);
        r[1].curve[0].val_accuracy = Some(0.9);
        // sqrt(0.9 * 0.1 / 900) = 0.01: one point.
        let line = validation_noise(&r, 900).unwrap();
        assert!(line.starts_with("At 90.00% on 900 samples"), "{line}");
        assert!(line.contains("standard error of 1.00 points"), "{line}");
        assert!(line.contains("distill eval --split val"), "{line}");
        assert_eq!(validation_noise(&r, 0), None);
    }
}
