//! A sweep's report, rebuilt from the runs' cards every time: `report.md`
//! ([`report_markdown`]), `results.csv` ([`results_csv`]) and the two plots
//! ([`super::plot`]), written by [`write_report`]; [`report_sweep`] gathers
//! what they state besides the runs.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::config::SweepConfig;
use super::plan::{PlannedRun, RunKind, RUNS_DIR};
use super::results::{by_student, collect_results, RunResult, StudentRow};
use super::run::OpenInputs;
use super::teacher::{teacher_forward_timing, teacher_summary, Savings, TeacherSummary};
use crate::cache::CacheViews;
use crate::error::{Error, Result};
use crate::model::{Backend, Network};

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
    let mut s = String::new();
    intro(&mut s, results, ctx);
    let rows = by_student(results);
    summary(&mut s, &rows);
    for row in &rows {
        student_section(&mut s, row);
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
}

/// The summary table, one row per student, and the two plots.
fn summary(s: &mut String, rows: &[StudentRow<'_>]) {
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(
        s,
        "| student | parameters | FLOPs/sample | baseline | best distilled | gain | best T | best alpha | train time |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
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
}

/// A student's section: every run against its baseline.
fn student_section(s: &mut String, row: &StudentRow<'_>) {
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

/// What the cache saved, when the teacher's forward pass was timed.
fn savings(s: &mut String, savings: Option<&Savings>) {
    let _ = writeln!(s, "## What the cache saved\n");
    match savings {
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
    super::plot::accuracy_vs_parameters(&pareto, results, ctx.teacher)?;
    let temps = out.join(TEMPERATURE_PNG);
    super::plot::accuracy_vs_temperature(&temps, results)?;
    Ok(vec![md, csv, pareto, temps])
}

/// Reads the cards of `runs` and writes the report: with the teacher
/// (its directory and network), its forward pass over the training split is
/// timed on `device_name` (once; a rerun reuses the timing) for what the
/// cache saved.
pub fn report_sweep<D: Backend>(
    cfg: &SweepConfig,
    runs: &[PlannedRun],
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
    let ctx = ReportContext {
        cfg,
        teacher: teacher_summary.as_ref(),
        savings: savings.as_ref(),
        cache_description: cache_description(&open.cache),
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
            .starts_with("a_kd-T4-a0.5,a,100,200,distilled,4,0.5,3,0,0.82,"));
        assert_eq!(group_digits(1234567), "1,234,567");
        assert_eq!(group_digits(12), "12");
    }
}
