//! `distill sweep` on the committed subset: a tiny sweep whose report, CSV
//! and plots agree with the runs' cards; finished runs are skipped, a killed
//! run resumes, and a run directory holding other settings is refused.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use crate::util::*;

/// A directory holding the caches `cache-train` and `cache-test` and a
/// `sweep.toml` of one alpha with a baseline at batch 64, seed 0 and a
/// checkpoint every 5 steps into `sweep`, plus `settings`.
fn sweep_dir(settings: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    for split in ["train", "test"] {
        let out = format!("cache-{split}");
        ok(
            tmp.path(),
            &cache_build_args(&teacher, &data, &out, &["--split", split, "-q"]),
        );
    }
    fs::write(
        tmp.path().join("sweep.toml"),
        format!(
            "cache = \"cache-train\"\ndata = {data:?}\n{settings}\
             alphas = [0.5]\nbaseline = true\nbatch = 64\nseed = 0\n\
             checkpoint-every = 5\nout = \"sweep\"\n"
        ),
    )
    .unwrap();
    tmp
}

/// Runs the sweep; returns (stdout, stderr).
fn sweep(cwd: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["sweep", "--config", "sweep.toml"];
    args.extend_from_slice(extra);
    let out = distill(cwd, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "sweep failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

#[test]
fn tiny_sweep_report_agrees_with_cards_and_reruns_skip_finished_runs() {
    let tmp = sweep_dir(
        "test-cache = \"cache-test\"\nstudents = [\"mlp:784-16-10\", \"mlp:784-32-10\"]\n\
         temperatures = [1, 4]\nepochs = 1\n",
    );
    let cwd = tmp.path();
    let data = s(&small_data());
    let runs = cwd.join("sweep/runs");

    // One run finished beforehand by `distill train` with the same settings,
    // one killed after 10 of its 29 steps (1,800 of the 2,000 samples train;
    // 200 are the validation split).
    let settings = ["--epochs", "1", "--batch", "64", "--seed", "0", "-q"];
    ok(
        cwd,
        &train_args(
            &data,
            "mlp:784-16-10",
            "sweep/runs/mlp-784-16-10_baseline",
            &settings,
        ),
    );
    let before = fs::read(runs.join("mlp-784-16-10_baseline/model.json")).unwrap();
    let kd = [
        "--cache",
        "cache-train",
        "-T",
        "4",
        "--alpha",
        "0.5",
        "--checkpoint-every",
        "5",
        "--stop-after-steps",
        "10",
    ];
    let stopped = ok(
        cwd,
        &train_args(
            &data,
            "mlp:784-32-10",
            "sweep/runs/mlp-784-32-10_kd-T4-a0.5",
            &[&settings[..], &kd].concat(),
        ),
    );
    assert!(stopped.contains("stopped after 10 steps"), "{stopped}");

    let (out, err) = sweep(cwd, &[]);
    assert!(
        out.contains("6 runs, 5 trained, 1 already finished"),
        "{out}"
    );
    assert!(
        err.contains("mlp-784-16-10_baseline: finished earlier, skipped"),
        "{err}"
    );
    assert!(
        err.contains("mlp-784-32-10_kd-T4-a0.5: trained in") && err.contains("(resumed)"),
        "{err}"
    );
    assert_eq!(
        fs::read(runs.join("mlp-784-16-10_baseline/model.json")).unwrap(),
        before,
        "a finished run was retrained"
    );

    // The CSV agrees with every card.
    let out_dir = cwd.join("sweep");
    let csv = fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<HashMap<&str, &str>> = lines
        .map(|l| header.iter().copied().zip(l.split(',')).collect())
        .collect();
    assert_eq!(rows.len(), 6, "{csv}");
    let report = fs::read_to_string(out_dir.join("report.md")).unwrap();
    // The split, and whether the teacher trained on it: the committed
    // teacher trained on the full dataset, so its card cannot tell.
    assert!(
        report.contains("(val-fraction 0.1, drawn from seed 0)"),
        "{report}"
    );
    assert!(
        report.contains("Whether the teacher trained on the validation samples is unknown: ")
            && report.contains("the model trained on data"),
        "{report}"
    );
    for row in &rows {
        let name = row["run"];
        let dir = runs.join(name);
        for f in ["model.safetensors", "metrics.jsonl", "curves.png"] {
            assert!(dir.join(f).exists(), "{name}/{f} missing");
        }
        assert!(!dir.join("checkpoint.safetensors").exists());
        let c = model_card(&dir);
        let acc = c["test_accuracy"].as_f64().unwrap();
        assert_eq!(row["test_accuracy"].parse::<f64>().unwrap(), acc, "{name}");
        assert_eq!(row["student"], c["spec"].as_str().unwrap());
        assert_eq!(row["parameters"], c["parameters"].to_string());
        assert_eq!(
            row["train_seconds"].parse::<f64>().unwrap(),
            c["train_seconds"].as_f64().unwrap()
        );
        // Empty where the card has none (the run trained by `distill train`
        // without a test cache).
        assert_eq!(
            row["teacher_agreement"].parse::<f64>().ok(),
            c["teacher_agreement"].as_f64(),
            "{name}"
        );
        let distilled = !c["cache"].is_null();
        assert_eq!(
            row["kind"],
            if distilled { "distilled" } else { "baseline" }
        );
        if distilled {
            let loss = &c["config"]["loss"];
            assert_eq!(
                row["temperature"].parse::<f64>().unwrap(),
                loss["temperature"].as_f64().unwrap()
            );
            assert_eq!(
                row["alpha"].parse::<f64>().unwrap(),
                loss["alpha"].as_f64().unwrap()
            );
        }
        // Every run holds out the same 200 samples and records its
        // validation accuracy, in the card and the CSV.
        let val = c["val_accuracy"].as_f64().unwrap();
        assert_eq!(row["val_accuracy"].parse::<f64>().unwrap(), val, "{name}");
        assert_eq!(c["data"]["val_samples"], 200, "{name}");
        assert_eq!(row["val_samples"], "200");
        // ... and so does the report, row by row: validation figures for
        // every run, test accuracy for the chosen ones only.
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("report has no row for {name}:\n{report}"));
        assert!(
            line.contains(&format!("{:.2}%", 100.0 * val)),
            "{line} vs {val}"
        );
        assert_eq!(
            line.contains(&format!("{:.2}%** (chosen", 100.0 * acc)),
            row["chosen"] == "yes",
            "{line}"
        );
    }
    // The summary row of each student carries its baseline and the
    // distilled run chosen on validation (the first of the best), with
    // their test accuracy.
    for student in ["mlp:784-16-10", "mlp:784-32-10"] {
        let mine: Vec<&HashMap<&str, &str>> =
            rows.iter().filter(|r| r["student"] == student).collect();
        let base: f64 = mine.iter().find(|r| r["kind"] == "baseline").unwrap()["test_accuracy"]
            .parse()
            .unwrap();
        let mut chosen: Option<&HashMap<&str, &str>> = None;
        for r in mine.iter().filter(|r| r["kind"] == "distilled") {
            let v: f64 = r["val_accuracy"].parse().unwrap();
            if chosen.is_none_or(|c| v > c["val_accuracy"].parse::<f64>().unwrap()) {
                chosen = Some(r);
            }
        }
        let chosen = chosen.unwrap();
        assert_eq!(chosen["chosen"], "yes");
        let best: f64 = chosen["test_accuracy"].parse().unwrap();
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| `{student}` |")))
            .unwrap();
        assert!(line.contains(&format!("{:.2}%", 100.0 * base)), "{line}");
        assert!(line.contains(&format!("{:.2}%", 100.0 * best)), "{line}");
        assert!(
            line.contains(&format!("{:+.2} pt", 100.0 * (best - base))),
            "{line}"
        );
        let t = chosen["temperature"];
        assert!(
            report.contains(&format!("- `{student}`: distilled at **T {t}, alpha 0.5, epoch 1 of 1** (selected on validation")),
            "{report}"
        );
    }
    assert!(
        report.contains("Settings are chosen on validation"),
        "{report}"
    );
    assert!(
        report.contains("standard error of") && report.contains("distill eval --split val"),
        "{report}"
    );
    // Each student's chosen run against the baseline and the runner-up,
    // image by image on the validation images.
    for role in ["the baseline", "the runner-up"] {
        let n = report
            .lines()
            .filter(|l| l.starts_with(&format!("Against {role} (`")))
            .inspect(|l| {
                assert!(
                    l.contains("image by image on the") && l.contains("McNemar's exact p"),
                    "{l}"
                )
            })
            .count();
        assert_eq!(n, 2, "{report}");
    }
    assert!(report.contains("What the cache saved"), "{report}");
    assert!(report.contains("4 epochs in all"), "{report}");
    for png in ["accuracy-vs-parameters.png", "accuracy-vs-temperature.png"] {
        let bytes = fs::read(out_dir.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png}");
    }

    // A rerun of the finished sweep trains nothing and writes the same report.
    let stamp = fs::read(runs.join("mlp-784-32-10_kd-T1-a0.5/model.safetensors")).unwrap();
    let (out, _) = sweep(cwd, &["-q"]);
    assert!(
        out.contains("6 runs, 0 trained, 6 already finished"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("results.csv")).unwrap(),
        csv
    );
    assert_eq!(
        fs::read(runs.join("mlp-784-32-10_kd-T1-a0.5/model.safetensors")).unwrap(),
        stamp
    );

    // Other settings over a finished run are refused before any training.
    fails(
        cwd,
        &["sweep", "--config", "sweep.toml", "--epochs", "2"],
        &[
            "holds a finished run with other settings",
            "(epochs: 1 there, 2 here)",
            "--out",
        ],
    );
}

/// The report's first line that starts with `start`.
fn line_starting<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starts with {start:?}:\n{report}"))
}

/// The CSV's rows as maps from its header's names (no quoted fields).
fn csv_rows(csv: &str) -> Vec<HashMap<&str, &str>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| header.iter().copied().zip(l.split(',')).collect())
        .collect()
}

#[test]
fn a_sweep_over_batch_sizes_measures_against_the_strongest_baseline() {
    // The file's one batch size gives way to the flag's list.
    let tmp = sweep_dir(
        "students = [\"mlp:784-16-10\"]\ntemperatures = [2]\nepochs = 1\n\
         baseline-augments = [\"shift=1\"]\n",
    );
    let cwd = tmp.path();
    let plan = ok(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--batches",
            "16,64",
            "--plan",
        ],
    );
    let names = [
        "mlp-784-16-10_baseline-b16",
        "mlp-784-16-10_baseline-b64",
        "mlp-784-16-10_baseline-shift1-b16",
        "mlp-784-16-10_baseline-shift1-b64",
        "mlp-784-16-10_kd-T2-a0.5-b16",
        "mlp-784-16-10_kd-T2-a0.5-b64",
    ];
    let listed: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{i}\t{n}"))
        .collect();
    assert_eq!(plan.lines().collect::<Vec<_>>(), listed, "{plan}");
    sweep(cwd, &["--batches", "16,64", "-q"]);
    let out_dir = cwd.join("sweep");
    let csv = fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let rows = csv_rows(&csv);
    assert_eq!(
        rows.iter().map(|r| r["run"]).collect::<Vec<_>>(),
        names,
        "{csv}"
    );
    // Each run trained at its batch size, with its augmentation, and the
    // CSV says so.
    for row in &rows {
        let c = model_card(&out_dir.join("runs").join(row["run"]));
        let config = &c["config"];
        assert_eq!(row["batch"], config["batch_size"].to_string(), "{csv}");
        let shifted = row["run"].contains("shift1");
        assert_eq!(
            row["augment"],
            if shifted { "shift=1" } else { "" },
            "{csv}"
        );
        assert_eq!(config["augment"].is_null(), !shifted, "{}", row["run"]);
    }
    // The chosen baseline is the best of the four on validation (the
    // first of the best: one epoch each), and the gain is over it.
    let val = |r: &HashMap<&str, &str>| r["val_accuracy"].parse::<f64>().unwrap();
    let baselines: Vec<_> = rows.iter().filter(|r| r["kind"] == "baseline").collect();
    assert_eq!(baselines.len(), 4);
    let top = baselines.iter().map(|r| val(r)).fold(f64::MIN, f64::max);
    let strongest = baselines.iter().find(|r| val(r) == top).unwrap();
    for r in &baselines {
        assert_eq!(r["chosen"] == "yes", r["run"] == strongest["run"], "{csv}");
    }
    let report = fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains("every setting at batch 16, 64 (validation chooses the batch size too)"),
        "{report}"
    );
    let test = strongest["test_accuracy"].parse::<f64>().unwrap();
    let setting = match strongest["augment"] {
        "" => format!("plain, batch {}, epoch 1 of 1", strongest["batch"]),
        a => format!("`{a}`, batch {}, epoch 1 of 1", strongest["batch"]),
    };
    assert!(
        report.contains(&format!(
            "against the strongest baseline's {:.2}% ({setting})",
            100.0 * test
        )),
        "{report}"
    );
    assert!(
        report.contains("| 1 (labels only, `shift=1`) |"),
        "{report}"
    );

    // Bad grids are refused, naming the flag.
    fails(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--batch",
            "32",
            "--batches",
            "16,32",
        ],
        &["--batch", "--batches", "cannot be used with"],
    );
    fails(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--batches",
            "16,0",
            "--plan",
        ],
        &["--batches", "0 must be between"],
    );
    fails(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--baseline-augments",
            "shift=1;spin",
            "--plan",
        ],
        &["--baseline-augments", "unknown item 'spin'"],
    );
    // An augmentation the images cannot take, or a student they do not
    // fit, is refused before any run trains (the plain baselines, and the
    // students listed before it, come first in the plan).
    for (flag, value, needles) in [
        (
            "--baseline-augments",
            "cutout=30",
            ["--baseline-augments", "cutout=30"],
        ),
        (
            "--students",
            "mlp:784-16-10,mlp:100-10",
            ["mlp:100-10", "takes 100 inputs per sample"],
        ),
    ] {
        let err = fails(
            cwd,
            &[
                "sweep",
                "--config",
                "sweep.toml",
                "--out",
                "other",
                flag,
                value,
            ],
            &needles,
        );
        assert!(!cwd.join("other/runs").exists(), "{err}");
    }
}

/// A sweep keeps each run's best validation epoch (`best/`), so the chosen
/// runs are scored image by image at the epochs validation chose, and the
/// report says where the chosen run's weights are.
#[test]
fn a_sweep_scores_and_keeps_the_chosen_epochs_weights() {
    // Constant lr 0.01 over 4 epochs: on these images the runs peak on
    // validation before their last epoch.
    let tmp = sweep_dir(
        "test-cache = \"cache-test\"\nstudents = [\"mlp:784-32-10\"]\n\
         temperatures = [1, 4]\nepochs = 4\nlr = 0.01\nschedule = \"constant\"\n",
    );
    let cwd = tmp.path();
    sweep(cwd, &["--seed", "3", "-q"]);
    let out_dir = cwd.join("sweep");
    let csv = fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), 3, "{csv}");
    // Every run's best/ holds its best validation epoch.
    for row in &rows {
        let best = out_dir.join("runs").join(row["run"]).join("best");
        assert_eq!(
            model_card(&best)["snapshot_epoch"].to_string(),
            row["best_val_epoch"],
            "{}",
            row["run"]
        );
    }
    let chosen: Vec<_> = rows.iter().filter(|r| r["chosen"] == "yes").collect();
    assert_eq!(chosen.len(), 2, "{csv}");
    // These settings choose both sides before their last epoch.
    assert!(
        chosen.iter().all(|r| r["best_val_epoch"] != r["epochs"]),
        "{csv}"
    );
    let distilled = chosen.iter().find(|r| r["kind"] == "distilled").unwrap();
    let baseline = chosen.iter().find(|r| r["kind"] == "baseline").unwrap();
    let report = fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains(&format!(
            "Weights of the chosen run after epoch {}: `runs/{}/best/`.",
            distilled["best_val_epoch"], distilled["run"]
        )),
        "{report}"
    );
    // Scored from those weights on the validation images: the difference
    // is the one between the two chosen epochs' validation accuracies.
    let val = |r: &HashMap<&str, &str>| r["best_val_accuracy"].parse::<f64>().unwrap();
    let line = line_starting(&report, "Against the baseline (`");
    assert!(
        line.contains("image by image on the 200 validation images")
            && line.contains(&format!(
                ": {:+.2} points,",
                100.0 * (val(distilled) - val(baseline))
            )),
        "{line}"
    );
    assert!(
        !report.contains("kept only its last epoch's weights"),
        "{report}"
    );
    // On the test images, from the same weights: the chosen epochs' test
    // accuracies, as the CSV records them.
    let test = |r: &HashMap<&str, &str>| r["best_val_epoch_test_accuracy"].parse::<f64>().unwrap();
    let line = line_starting(&report, "On the 1000 test images");
    assert!(
        line.contains(&format!(
            "`{}` against the strongest baseline `{}`: {:+.2} points, 95% interval over images [",
            distilled["run"],
            baseline["run"],
            100.0 * (test(distilled) - test(baseline))
        )),
        "{line}"
    );
    // A run from before sweeps kept best/: that side is not scored, and
    // the report says why.
    fs::remove_dir_all(out_dir.join("runs").join(baseline["run"]).join("best")).unwrap();
    sweep(cwd, &["--seed", "3", "-q", "--report"]);
    let report = fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains(&format!(
            "`{}` was chosen at epoch {} of 4, and the run kept only its last epoch's weights",
            baseline["run"], baseline["best_val_epoch"]
        )),
        "{report}"
    );
    assert!(!report.contains("On the 1000 test images"), "{report}");
}

#[test]
fn a_sweep_of_several_seeds_chooses_and_reports_the_means() {
    let tmp = sweep_dir("students = [\"mlp:784-16-10\"]\ntemperatures = [2, 4]\nepochs = 2\n");
    let cwd = tmp.path();
    // The file's one seed gives way to the flag's list.
    sweep(cwd, &["--seeds", "0,1", "-q"]);
    let out_dir = cwd.join("sweep");
    let csv = fs::read_to_string(out_dir.join("results.csv")).unwrap();
    let rows = csv_rows(&csv);
    let names: Vec<&str> = rows.iter().map(|r| r["run"]).collect();
    assert_eq!(
        names,
        [
            "mlp-784-16-10_baseline-s0",
            "mlp-784-16-10_baseline-s1",
            "mlp-784-16-10_kd-T2-a0.5-s0",
            "mlp-784-16-10_kd-T2-a0.5-s1",
            "mlp-784-16-10_kd-T4-a0.5-s0",
            "mlp-784-16-10_kd-T4-a0.5-s1",
        ]
    );
    for row in &rows {
        let c = model_card(&out_dir.join("runs").join(row["run"]));
        assert_eq!(
            format!("{}-s{}", row["setting"], c["config"]["seed"]),
            row["run"]
        );
    }
    // Validation chooses the setting and epoch on the mean over seeds, read
    // from each run's curve; both seeds of a chosen setting are marked.
    let curve = |run: &str| -> Vec<(f64, f64)> {
        fs::read_to_string(out_dir.join("runs").join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let m: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    m["val_accuracy"].as_f64().unwrap(),
                    m["test_accuracy"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let mut best: Option<(f64, &str, usize, f64)> = None;
    for setting in ["mlp-784-16-10_kd-T2-a0.5", "mlp-784-16-10_kd-T4-a0.5"] {
        let (a, b) = (
            curve(&format!("{setting}-s0")),
            curve(&format!("{setting}-s1")),
        );
        for e in 0..2 {
            let val = (a[e].0 + b[e].0) / 2.0;
            // As the report chooses: the best mean, then the earlier epoch,
            // then the earlier setting.
            if best.is_none_or(|(v, _, ep, _)| val > v || (val == v && e + 1 < ep)) {
                best = Some((val, setting, e + 1, (a[e].1 + b[e].1) / 2.0));
            }
        }
    }
    let (_, setting, epoch, test) = best.unwrap();
    for row in rows.iter().filter(|r| r["kind"] == "distilled") {
        assert_eq!(row["chosen"] == "yes", row["setting"] == setting, "{csv}");
    }
    let report = fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(
        report.contains(
            "every setting with seeds 0, 1 (each setting's figures are the means over its seeds)"
        ),
        "{report}"
    );
    assert!(
        report.contains(&format!("epoch {epoch} of 2** (selected on validation")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "**{:.2}%** test (the mean of 2 seeds)",
            100.0 * test
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!("| `{setting}` (2 seeds) |")),
        "{report}"
    );
    assert!(
        report.contains("on the test images over seeds 0, 1: ")
            && report.contains("Student's t 95% interval over seeds"),
        "{report}"
    );
    // Each seed's weights after the chosen epoch: its own at the last
    // epoch, its best/ where its own best validation epoch is the chosen
    // one; the others are named as not kept.
    let (mut kept, mut lost) = (Vec::new(), Vec::new());
    for seed in 0..2 {
        let run = format!("{setting}-s{seed}");
        let c = curve(&run);
        let own_best = if c[1].0 > c[0].0 { 2 } else { 1 };
        match (epoch == 2, own_best == epoch) {
            (true, _) => kept.push(format!("`runs/{run}/`")),
            (false, true) => kept.push(format!("`runs/{run}/best/`")),
            (false, false) => lost.push(format!("`{run}`")),
        }
    }
    let line = line_starting(&report, "Weights of the chosen run after epoch");
    assert!(
        line.starts_with(&format!(
            "Weights of the chosen run after epoch {epoch}: {}",
            kept.join(", ")
        )),
        "{line}"
    );
    assert!(lost.iter().all(|r| line.contains(r.as_str())), "{line}");
    // The chosen setting against the baseline on the test images, from
    // the weights after each side's chosen epoch, where every seed kept
    // them: the baseline's epoch chosen on its mean curve as the report does.
    let base = |seed: u64| curve(&format!("mlp-784-16-10_baseline-s{seed}"));
    let (b0, b1) = (base(0), base(1));
    let mean_val = |e: usize| (b0[e].0 + b1[e].0) / 2.0;
    let base_epoch = if mean_val(1) > mean_val(0) { 2 } else { 1 };
    let base_kept = base_epoch == 2
        || [&b0, &b1]
            .iter()
            .all(|c| (if c[1].0 > c[0].0 { 2 } else { 1 }) == base_epoch);
    let base_test = (b0[base_epoch - 1].1 + b1[base_epoch - 1].1) / 2.0;
    let test_line = report
        .lines()
        .find(|l| l.starts_with("On the 1000 test images"));
    match (lost.is_empty() && base_kept, test_line) {
        (true, Some(l)) => assert!(
            l.contains(&format!(
                "`{setting}` against the strongest baseline `mlp-784-16-10_baseline` over seeds 0, 1: {:+.2} points, 95% interval over images [",
                100.0 * (test - base_test)
            )) && l.contains("over seeds ["),
            "{l}"
        ),
        (false, None) => {}
        (kept, l) => panic!("weights kept: {kept}, line: {l:?}"),
    }
    fails(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--seed",
            "1",
            "--seeds",
            "0,1",
        ],
        &["--seed", "--seeds", "cannot be used with"],
    );
}

/// `--out` of another command (a cache, a model's directory), or one with
/// a report of someone else's and no runs, is refused before anything is
/// written.
#[test]
fn a_sweep_refuses_an_out_that_is_not_a_sweeps() {
    let tmp = sweep_dir("students = [\"mlp:784-16-10\"]\ntemperatures = [2]\nepochs = 1\n");
    let cwd = tmp.path();
    let args = |out: &str| -> Vec<String> {
        ["sweep", "--config", "sweep.toml", "-q", "--out", out]
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    fails(
        cwd,
        &strs(&args("cache-train")),
        &["--out", "cache-train is a teacher cache"],
    );
    assert!(!cwd.join("cache-train/runs").exists());
    let teacher = s(&teacher_dir());
    fails(
        cwd,
        &strs(&args(&teacher)),
        &["--out", "is a model's directory"],
    );
    fs::create_dir(cwd.join("notes")).unwrap();
    fs::write(cwd.join("notes/report.md"), "# mine").unwrap();
    fails(
        cwd,
        &strs(&args("notes")),
        &["notes holds report.md but no runs/"],
    );
    assert_eq!(
        fs::read_to_string(cwd.join("notes/report.md")).unwrap(),
        "# mine"
    );
    assert!(!cwd.join("notes/runs").exists());
    // A sweep's own folder is its to write again, its runs removed too.
    sweep(cwd, &[]);
    sweep(cwd, &[]);
    fs::remove_dir_all(cwd.join("sweep/runs")).unwrap();
    sweep(cwd, &[]);
}

/// `--chosen-weights`: a seed whose own best epoch is not the one chosen on
/// the mean over seeds is trained again to the chosen epoch, and its model
/// after it is kept as `epoch-NNN/`, the run's own bits: the report then
/// compares the two sides on the test images.
#[test]
fn chosen_weights_trains_a_seed_again_to_the_chosen_epoch() {
    let tmp = sweep_dir(
        "test-cache = \"cache-test\"\nstudents = [\"mlp:784-16-10\"]\ntemperatures = [2]\n\
         epochs = 4\nlr = 0.01\nschedule = \"constant\"\n",
    );
    let cwd = tmp.path();
    sweep(cwd, &["--seeds", "0,1", "-q"]);
    let runs = cwd.join("sweep/runs");
    let report = || fs::read_to_string(cwd.join("sweep/report.md")).unwrap();
    let val = |run: &str| -> Vec<f64> {
        epoch_metrics(&runs.join(run))
            .iter()
            .map(|m| m["val_accuracy"].as_f64().unwrap())
            .collect()
    };
    // The baseline's validation by epoch: seed 0 75.0, 81.0, 81.5, 83.5%,
    // seed 1 77.5, 81.0, 83.5, 77.0%: the mean chooses epoch 3, which is
    // seed 1's own best (its best/) and not seed 0's (4).
    let (b0, b1) = (
        val("mlp-784-16-10_baseline-s0"),
        val("mlp-784-16-10_baseline-s1"),
    );
    let mean: Vec<f64> = b0.iter().zip(&b1).map(|(a, b)| (a + b) / 2.0).collect();
    let top = mean.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(
        1 + mean.iter().position(|&v| v == top).unwrap(),
        3,
        "{b0:?} {b1:?}"
    );
    assert_eq!(
        model_card(&runs.join("mlp-784-16-10_baseline-s0/best"))["snapshot_epoch"],
        4
    );
    assert_eq!(
        model_card(&runs.join("mlp-784-16-10_baseline-s1/best"))["snapshot_epoch"],
        3
    );
    assert!(
        !report().contains("On the 1000 test images"),
        "{}",
        report()
    );

    let (_, stderr) = sweep(cwd, &["--seeds", "0,1", "--report", "--chosen-weights"]);
    assert!(
        stderr.contains("[replay 1/1] mlp-784-16-10_baseline-s0: training again to epoch 3 of 4"),
        "{stderr}"
    );
    let run = runs.join("mlp-784-16-10_baseline-s0");
    let kept = run.join("epoch-003");
    let card = model_card(&kept);
    assert_eq!(card["snapshot_epoch"], 3);
    assert_eq!(card["config"], model_card(&run)["config"]);
    // The run's own epochs, figure for figure.
    let (ran, again) = (epoch_metrics(&run), epoch_metrics(&kept));
    assert_eq!(again.len(), 3);
    for (a, b) in ran.iter().zip(&again) {
        for key in [
            "train_loss",
            "val_accuracy",
            "val_loss",
            "test_accuracy",
            "test_loss",
        ] {
            assert_eq!(a[key], b[key], "{key}");
        }
    }
    let left: Vec<_> = fs::read_dir(&run)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".replay"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Its test accuracy is the curve's after epoch 3.
    let data = s(&small_data());
    let eval = ok(
        cwd,
        &[
            "eval",
            "--data",
            &data,
            "--split",
            "test",
            "--model",
            &s(&kept),
        ],
    );
    let want = format!("{:.2}%", 100.0 * ran[2]["test_accuracy"].as_f64().unwrap());
    assert!(eval.contains(&want), "{eval} {want}");
    let text = report();
    let line = line_starting(&text, "On the 1000 test images");
    assert!(
        line.contains("against the strongest baseline `mlp-784-16-10_baseline` over seeds 0, 1: "),
        "{line}"
    );
    // Once kept, nothing is trained again.
    let (_, stderr) = sweep(cwd, &["--seeds", "0,1", "--report", "--chosen-weights"]);
    assert!(!stderr.contains("[replay"), "{stderr}");
    // Replays beside each other (`--jobs`) keep the same bits.
    let weights = fs::read(kept.join("model.safetensors")).unwrap();
    fs::remove_dir_all(&kept).unwrap();
    let (_, stderr) = sweep(
        cwd,
        &[
            "--seeds",
            "0,1",
            "--report",
            "--chosen-weights",
            "--jobs",
            "2",
        ],
    );
    assert!(stderr.contains("[replay 1/1]"), "{stderr}");
    assert_eq!(fs::read(kept.join("model.safetensors")).unwrap(), weights);
    // Something else where the snapshot goes is named, not replaced.
    fs::remove_dir_all(&kept).unwrap();
    fs::write(&kept, "notes").unwrap();
    fails(
        cwd,
        &[
            "sweep",
            "--config",
            "sweep.toml",
            "--seeds",
            "0,1",
            "--report",
            "--chosen-weights",
            "-q",
        ],
        &["epoch-003", "move it away"],
    );
    assert_eq!(fs::read_to_string(&kept).unwrap(), "notes");
}

/// Widening a finished sweep with seeds, then batch sizes, renames its
/// runs (`-sS`, `-bB`): the runs it holds are found under their earlier
/// names and moved into place, not trained again.
#[test]
fn a_widened_sweep_keeps_the_runs_it_already_has() {
    let tmp = sweep_dir("students = [\"mlp:784-16-10\"]\ntemperatures = [2]\nepochs = 1\n");
    let cwd = tmp.path();
    let runs = cwd.join("sweep/runs");
    let weights = |name: &str| fs::read(runs.join(name).join("model.safetensors")).unwrap();
    let (out, _) = sweep(cwd, &[]);
    assert!(out.contains("2 runs, 2 trained"), "{out}");
    let kd = weights("mlp-784-16-10_kd-T2-a0.5");
    let (out, err) = sweep(cwd, &["--seeds", "0,1"]);
    assert!(
        out.contains("4 runs, 2 trained, 2 already finished"),
        "{out}"
    );
    assert!(
        err.contains("mlp-784-16-10_kd-T2-a0.5: the same run as mlp-784-16-10_kd-T2-a0.5-s0")
            && err.contains("moved to mlp-784-16-10_kd-T2-a0.5-s0"),
        "{err}"
    );
    assert!(!runs.join("mlp-784-16-10_kd-T2-a0.5").exists());
    assert_eq!(weights("mlp-784-16-10_kd-T2-a0.5-s0"), kd);
    // The file's batch (64) is one of the new sizes; 32 trains.
    let (out, _) = sweep(cwd, &["--seeds", "0,1", "--batches", "32,64", "-q"]);
    assert!(
        out.contains("8 runs, 4 trained, 4 already finished"),
        "{out}"
    );
    assert_eq!(weights("mlp-784-16-10_kd-T2-a0.5-b64-s0"), kd);
    let mut names: Vec<String> = fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names
            .iter()
            .all(|n| n.contains("-b32-s") || n.contains("-b64-s")),
        "{names:?}"
    );
    // A run of other settings under an earlier name stays where it is:
    // runs of 2 epochs are not this 1-epoch sweep's.
    let two = ["--seeds", "0,1", "-q", "--out", "sweep2"];
    sweep(cwd, &[&two[..], &["--epochs", "2"]].concat());
    let (out, _) = sweep(cwd, &[&two[..], &["--batches", "32,64"]].concat());
    assert!(out.contains("8 runs, 8 trained"), "{out}");
    assert!(cwd
        .join("sweep2/runs/mlp-784-16-10_kd-T2-a0.5-s0/model.json")
        .exists());
}

#[test]
fn sweep_flags_are_validated_before_work() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let run = ["--data", &data, "--out", "o", "--students", "mlp:784-16-10"];
    fails(
        tmp.path(),
        &[&["sweep"][..], &run].concat(),
        &["--cache", "required"],
    );
    fails(
        tmp.path(),
        &[&["sweep", "--cache", "c"][..], &run, &["--alphas", "0.5,2"]].concat(),
        &["--alphas", "2 must be in [0, 1]"],
    );
    fs::write(
        tmp.path().join("bad.toml"),
        "studentz = [\"mlp:784-16-10\"]\n",
    )
    .unwrap();
    // A sweep.toml error names the file and the key, not a flag.
    fails(
        tmp.path(),
        &["sweep", "--config", "bad.toml"],
        &["bad.toml: key `studentz`"],
    );
    fs::write(
        tmp.path().join("sweep.toml"),
        format!("cache = \"c\"\ndata = {data:?}\nout = \"o\"\nstudents = [\"mlp:784-16-10\"]\nalphas = [1.5]\n"),
    )
    .unwrap();
    fails(
        tmp.path(),
        &["sweep", "--config", "sweep.toml"],
        &["sweep.toml: key `alphas`: 1.5 must be in [0, 1]"],
    );
}

/// `kill -9` a sweep at random points; every rerun retrains no finished run
/// (their files are untouched) and the final runs equal an uninterrupted
/// sweep's byte for byte.
#[test]
fn killed_sweep_reruns_only_missing_runs() {
    use std::time::{Duration, Instant, SystemTime};
    let tmp = sweep_dir(
        "students = [\"mlp:784-16-10\", \"mlp:784-24-10\"]\ntemperatures = [2]\nepochs = 2\n",
    );
    let cwd = tmp.path();
    let start = Instant::now();
    sweep(cwd, &["--out", "reference", "-q"]);
    let full = start.elapsed();
    // Each finished run's files, with their modification times. A run
    // killed after its card but before it removed its checkpoint is not
    // finished: the rerun continues the checkpoint and writes the model
    // again.
    type Stamps = Vec<(String, SystemTime)>;
    let finished = |out: &str| -> HashMap<String, Stamps> {
        let mut m = HashMap::new();
        if let Ok(entries) = fs::read_dir(cwd.join(out).join("runs")) {
            for e in entries.flatten() {
                if !(e.path().join("model.safetensors").exists()
                    && e.path().join("model.json").exists())
                    || e.path().join("checkpoint.safetensors").exists()
                {
                    continue;
                }
                let mut files: Stamps = fs::read_dir(e.path())
                    .unwrap()
                    .flatten()
                    .map(|f| {
                        let t = f.metadata().unwrap().modified().unwrap();
                        (f.file_name().to_string_lossy().into_owned(), t)
                    })
                    .collect();
                files.sort();
                m.insert(e.file_name().to_string_lossy().into_owned(), files);
            }
        }
        m
    };
    // Runs finished before an attempt are not rewritten by it: not one of
    // their files.
    let untouched = |before: &HashMap<String, Stamps>, after: &HashMap<String, Stamps>| {
        for (name, t) in before {
            assert_eq!(
                after.get(name),
                Some(t),
                "finished run {name} was retrained"
            );
        }
    };
    let mut seed = 0x5eed_u64;
    let mut kills = 0;
    for _ in 0..12 {
        let before = finished("killed");
        if before.len() == 4 {
            break;
        }
        let mut child = spawn(
            cwd,
            &["sweep", "--config", "sweep.toml", "--out", "killed", "-q"],
        );
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frac = (seed >> 33) as f64 / (1u64 << 31) as f64;
        std::thread::sleep(
            full.mul_f64(0.05 + 0.25 * frac)
                .min(Duration::from_secs(20)),
        );
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
        untouched(&before, &finished("killed"));
    }
    assert!(kills >= 1, "no kill landed mid-sweep");
    let before = finished("killed");
    sweep(cwd, &["--out", "killed", "-q"]);
    let after = finished("killed");
    untouched(&before, &after);
    assert_eq!(after.len(), 4);
    // The same files as the uninterrupted sweep's: the weights and the
    // module byte for byte, the card and the curves but for their timings
    // (and the card's command line, which names the other --out).
    let timeless = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            for k in [
                "train_seconds",
                "epoch_seconds",
                "train_samples_per_sec",
                "command",
            ] {
                o.remove(k);
            }
        }
        v
    };
    for (name, files) in &after {
        let run = |root: &str| cwd.join(root).join("runs").join(name);
        let names = |v: &Stamps| v.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(files),
            names(&finished("reference")[name]),
            "run {name}: files"
        );
        for f in ["model.safetensors", "model.py"] {
            let a = fs::read(run("reference").join(f)).unwrap();
            let b = fs::read(run("killed").join(f)).unwrap();
            assert!(
                a == b,
                "run {name}: {f} differs from the uninterrupted sweep"
            );
        }
        let card = |root: &str| {
            timeless(
                serde_json::from_slice(&fs::read(run(root).join("model.json")).unwrap()).unwrap(),
            )
        };
        assert_eq!(card("reference"), card("killed"), "run {name}: model.json");
        let metrics = |root: &str| -> Vec<serde_json::Value> {
            fs::read_to_string(run(root).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| timeless(serde_json::from_str(l).unwrap()))
                .collect()
        };
        assert_eq!(
            metrics("reference"),
            metrics("killed"),
            "run {name}: metrics.jsonl"
        );
    }
    eprintln!(
        "sweep killed {kills} times; {} runs were already finished at the last rerun",
        before.len()
    );
}

/// `text` with every timing (a number followed by ` s`, `s` or ` min`)
/// replaced by `#`: what differs between two runs of the same sweep.
fn mask_timings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_number =
            chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_alphanumeric());
        if starts_number {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let rest: String = chars[j..chars.len().min(j + 5)].iter().collect();
            let unit = ["s ", "s)", "s,", "s.", " s ", " s)", " s,", " s.", " min"]
                .iter()
                .any(|u| rest.starts_with(u));
            if unit {
                out.push('#');
                i = j;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `results.csv` without its `train_seconds` column.
fn csv_without_timings(text: &str) -> String {
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "train_seconds").unwrap();
    text.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(col);
            f.join(",")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The body of each `- |` block scalar of a YAML file (the containers'
/// scripts), dedented.
fn yaml_scripts(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut scripts = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "- |" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            .map(|l| l.trim())
            .collect();
        scripts.push(body.join("\n"));
    }
    scripts
}

/// A sweep run as a scheduler array: `--plan` lists stable indices, every
/// index runs as its own process, all at once, through the bodies of
/// examples/slurm/sweep.sbatch (SLURM_ARRAY_TASK_ID) and
/// examples/kubernetes/sweep-job.yaml (JOB_COMPLETION_INDEX), and
/// `--report` then writes the report a plain `distill sweep` writes (timings
/// aside); before the last index has run, the report names it as missing.
#[test]
fn a_sweep_runs_as_a_scheduler_array_and_reports_like_a_plain_sweep() {
    use std::process::{Command, Stdio};
    let settings = "test-cache = \"cache-test\"\nstudents = [\"mlp:784-16-10\"]\n\
                    temperatures = [1, 4]\nepochs = 2\n";
    let tmp = sweep_dir(settings);
    let cwd = tmp.path();
    let toml = fs::read_to_string(cwd.join("sweep.toml")).unwrap();
    for out in ["slurm", "k8s"] {
        fs::write(
            cwd.join(format!("{out}.toml")),
            toml.replace("out = \"sweep\"", &format!("out = \"{out}\"")),
        )
        .unwrap();
    }
    sweep(cwd, &["-q"]);

    let plan = ok(cwd, &["sweep", "--config", "sweep.toml", "--plan"]);
    let names: Vec<&str> = plan
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let (index, name) = l.split_once('\t').unwrap();
            assert_eq!(index, i.to_string(), "{plan}");
            name
        })
        .collect();
    assert_eq!(
        names,
        [
            "mlp-784-16-10_baseline",
            "mlp-784-16-10_kd-T1-a0.5",
            "mlp-784-16-10_kd-T4-a0.5"
        ]
    );
    assert_eq!(
        ok(cwd, &["sweep", "--config", "slurm.toml", "--plan", "-q"]),
        plan,
        "the same settings, the same indices"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sbatch = root.join("examples/slurm/sweep.sbatch");
    let yaml = fs::read_to_string(root.join("examples/kubernetes/sweep-job.yaml")).unwrap();
    assert!(yaml.contains("completionMode: Indexed"), "{yaml}");
    let scripts = yaml_scripts(&yaml);
    assert_eq!(scripts.len(), 2, "{scripts:?}");
    assert!(scripts[0].contains("--only auto") && scripts[1].contains("--report"));
    // One array task of either scheduler, as a process.
    let task = |out: &str, index: usize| {
        let mut c = Command::new("bash");
        if out == "slurm" {
            c.arg(&sbatch)
                .arg("task")
                .env_remove("JOB_COMPLETION_INDEX")
                .env("SLURM_ARRAY_TASK_ID", index.to_string());
        } else {
            c.args(["-c", &scripts[0]])
                .env_remove("SLURM_ARRAY_TASK_ID")
                .env("JOB_COMPLETION_INDEX", index.to_string());
        }
        c.current_dir(cwd)
            .env("DISTILL", env!("CARGO_BIN_EXE_distill"))
            .env("SWEEP_CONFIG", format!("{out}.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let report = |out: &str| {
        let mut c = if out == "slurm" {
            let mut c = Command::new("bash");
            c.arg(&sbatch).arg("report");
            c
        } else {
            let mut c = Command::new("bash");
            c.args(["-c", &scripts[1]]);
            c
        };
        let o = c
            .current_dir(cwd)
            .env("DISTILL", env!("CARGO_BIN_EXE_distill"))
            .env("SWEEP_CONFIG", format!("{out}.toml"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out} report: {stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    for out in ["slurm", "k8s"] {
        // Kubernetes: every index but the last first, then the report.
        let last = if out == "k8s" {
            names.len() - 1
        } else {
            names.len()
        };
        let children: Vec<_> = (0..last).map(|i| task(out, i).spawn().unwrap()).collect();
        for (i, child) in children.into_iter().enumerate() {
            let o = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && stdout.contains(&format!("sweep run {i} ({})", names[i])),
                "{out} task {i}: {stdout}{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if last < names.len() {
            let printed = report(out);
            assert!(
                printed.contains("2 of 3 runs finished, 1 missing")
                    && printed.contains(&format!("missing: {last}\t{}", names[last])),
                "{printed}"
            );
            let md = fs::read_to_string(cwd.join(out).join("report.md")).unwrap();
            assert!(
                md.contains("## Missing runs")
                    && md.contains(&format!("| {last} | `{}` |", names[last])),
                "{md}"
            );
            assert!(
                !md.lines()
                    .any(|l| l.starts_with(&format!("| `{}` |", names[last]))),
                "{md}"
            );
            // The missing index writes its run's directory and nothing else.
            let before = file_times(&cwd.join(out));
            let again = task(out, last).output().unwrap();
            assert!(again.status.success());
            let after = file_times(&cwd.join(out));
            let own = format!("runs/{}/", names[last]);
            for (f, t) in &after {
                assert!(
                    f.starts_with(&own) || before.get(f) == Some(t),
                    "{out}: task {last} wrote {f}"
                );
            }
            assert!(
                before.keys().all(|f| after.contains_key(f)),
                "{out}: a file went"
            );
            // A rerun of a finished index trains nothing.
            let rerun = task(out, last).output().unwrap();
            assert!(String::from_utf8_lossy(&rerun.stdout).contains("finished earlier"));
        }
        let printed = report(out);
        assert!(
            printed.contains("3 of 3 runs finished, 0 missing"),
            "{printed}"
        );
        for f in ["report.md", "results.csv"] {
            let plain = fs::read_to_string(cwd.join("sweep").join(f)).unwrap();
            let array = fs::read_to_string(cwd.join(out).join(f)).unwrap();
            if f == "report.md" {
                assert_eq!(mask_timings(&array), mask_timings(&plain), "{out} {f}");
            } else {
                assert_eq!(
                    csv_without_timings(&array),
                    csv_without_timings(&plain),
                    "{out} {f}"
                );
            }
        }
        for png in ["accuracy-vs-parameters.png", "accuracy-vs-temperature.png"] {
            assert_eq!(
                fs::read(cwd.join(out).join(png)).unwrap(),
                fs::read(cwd.join("sweep").join(png)).unwrap(),
                "{out} {png}"
            );
        }
    }

    // Bad indices are refused naming the flag, before any work.
    fails(
        cwd,
        &["sweep", "--config", "sweep.toml", "--only", "3"],
        &["--only", "index 3 is outside the plan, which has 3 runs"],
    );
    let unset = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["sweep", "--config", "sweep.toml", "--only", "auto"])
        .current_dir(cwd)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&unset.stderr);
    assert_eq!(unset.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--only") && err.contains("neither is set"),
        "{err}"
    );
}

/// `sweep.sbatch submit` submits an array over exactly the plan's indices
/// and a report job that waits for it (afterok), here with a stand-in
/// `sbatch` that records its arguments.
#[test]
fn the_slurm_script_submits_an_array_over_the_plan_and_a_dependent_report() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    fs::write(
        cwd.join("sweep.toml"),
        format!(
            "cache = \"c\"\ndata = {data:?}\nout = \"o\"\n\
             students = [\"mlp:784-16-10\", \"mlp:784-24-10\"]\ntemperatures = [1, 2]\nbaseline = true\n"
        ),
    )
    .unwrap();
    let bin = cwd.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("sbatch");
    fs::write(
        &fake,
        "#!/bin/sh\necho \"$@\" >> \"$SBATCH_LOG\"\nn=$(wc -l < \"$SBATCH_LOG\")\necho \"100$n;cluster\"\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = std::process::Command::new("bash")
        .arg(root.join("examples/slurm/sweep.sbatch"))
        .arg("submit")
        .current_dir(cwd)
        .env("PATH", path)
        .env("DISTILL", env!("CARGO_BIN_EXE_distill"))
        .env("SBATCH_LOG", cwd.join("sbatch.log"))
        .env("MAX_PARALLEL", "3")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // 2 students x (baseline + 2 temperatures x 1 alpha) = 6 runs.
    assert!(
        stdout.contains("submitted 6 runs as job array 1001"),
        "{stdout}"
    );
    let log = fs::read_to_string(cwd.join("sbatch.log")).unwrap();
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls.len(), 2, "{log}");
    assert!(
        calls[0].starts_with("--parsable --array=0-5%3 ") && calls[0].ends_with(" task"),
        "{log}"
    );
    assert!(
        calls[1].contains("--dependency=afterok:1001 ") && calls[1].ends_with(" report"),
        "{log}"
    );
}

/// The committed example sweep file is `make sweep`'s sweep: its 20 runs in
/// the Makefile's order, and its paths read relative to the file.
#[test]
fn the_example_sweep_file_plans_make_sweeps_runs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = s(&root.join("examples/sweep.toml"));
    let plan = ok(root, &["sweep", "--config", &file, "--plan", "-q"]);
    let names: Vec<&str> = plan.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(names.len(), 20, "{plan}");
    assert_eq!(names[0], "mlp-784-32-10_baseline", "{plan}");
    assert_eq!(names[19], "cnn-c8-p-c16-p-10_kd-T4-a0.5", "{plan}");
    // `make sweep` with the Makefile's defaults plans the same names.
    let make = std::fs::read_to_string(root.join("Makefile")).unwrap();
    let default = |var: &str| {
        make.lines()
            .find_map(|l| {
                l.strip_prefix(var)?
                    .trim_start()
                    .strip_prefix("?=")
                    .map(str::trim)
            })
            .unwrap_or_else(|| panic!("Makefile sets {var}"))
            .to_string()
    };
    let flags = ok(
        root,
        &[
            "sweep",
            "--cache",
            "c",
            "--data",
            "d",
            "--students",
            &default("SWEEP_STUDENTS"),
            "--temperatures",
            &default("SWEEP_TEMPS"),
            "--alphas",
            &default("SWEEP_ALPHAS"),
            "--baseline",
            "--epochs",
            &default("SWEEP_EPOCHS"),
            "--out",
            "o",
            "--plan",
            "-q",
        ],
    );
    assert_eq!(plan, flags);
}

/// A sweep's `teacher` must be the model its cache was built from: the
/// report states that model's accuracy and forward pass as the teacher's.
#[test]
fn a_sweep_refuses_a_teacher_that_is_not_the_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    ok(tmp.path(), &cache_build_args(&teacher, &data, "c", &["-q"]));
    let other = s(&teacher_dir().with_file_name("fashion-cnn-long"));
    let sweep = |t: &str| {
        let mut a = vec!["sweep", "--cache", "c", "--data", &data, "--teacher"];
        a.extend([
            t,
            "--students",
            "mlp:784-16-10",
            "--temperatures",
            "1",
            "--alphas",
            "0.5",
        ]);
        a.extend(["--epochs", "1", "--out", "s", "--report", "-q"]);
        a.into_iter().map(str::to_string).collect::<Vec<String>>()
    };
    let refused = sweep(&other);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    fails(
        tmp.path(),
        &refused,
        &["--teacher", "fashion-cnn-long", "is not the teacher of c"],
    );
    // The cache's own teacher passes; with no run finished there is
    // nothing to report, which is said rather than written as an empty report.
    let fine = sweep(&teacher);
    let fine: Vec<&str> = fine.iter().map(String::as_str).collect();
    fails(
        tmp.path(),
        &fine,
        &[
            "--report",
            "the planned run has not finished",
            "nothing to report",
        ],
    );
    // After the sweep, a report of another plan (a mistyped student) is
    // refused naming the runs there, and the sweep's report is kept.
    let run: Vec<&str> = fine.iter().copied().filter(|a| *a != "--report").collect();
    ok(tmp.path(), &run);
    let report = fs::read(tmp.path().join("s/report.md")).unwrap();
    let typo: Vec<&str> = fine
        .iter()
        .map(|a| {
            if *a == "mlp:784-16-10" {
                "mlp:784-8-10"
            } else {
                a
            }
        })
        .collect();
    fails(
        tmp.path(),
        &typo,
        &[
            "nothing to report",
            "1 run of another plan",
            "mlp-784-16-10_kd-T1-a0.5",
        ],
    );
    assert_eq!(fs::read(tmp.path().join("s/report.md")).unwrap(), report);
}

/// An unfinished run of other settings in a run's directory is refused as
/// a finished one is, in the sweep's terms (no flags it does not have).
#[test]
fn a_sweep_refuses_an_unfinished_run_of_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    ok(tmp.path(), &cache_build_args(&teacher, &data, "c", &["-q"]));
    let run = "s/runs/mlp-784-16-10_kd-T4-a0.5";
    let partial = [
        "--cache",
        "c",
        "-T",
        "4",
        "--alpha",
        "0.5",
        "--lr",
        "0.01",
        "--epochs",
        "1",
        "--checkpoint-every",
        "1",
        "--stop-after-steps",
        "3",
        "-q",
    ];
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-16-10", run, &partial),
    );
    let err = fails(
        tmp.path(),
        &[
            "sweep",
            "--cache",
            "c",
            "--data",
            &data,
            "--students",
            "mlp:784-16-10",
            "--temperatures",
            "4",
            "--alphas",
            "0.5",
            "--epochs",
            "1",
            "--out",
            "s",
            "-q",
        ],
        &[
            run,
            "holds an unfinished run with other settings",
            "optimizer.lr",
            "remove that directory",
        ],
    );
    assert!(
        !err.contains("--overwrite") && !err.contains("--resume"),
        "{err}"
    );
}

/// `--train-fraction`: every run trains on its seed's part of the samples
/// not held out; the report says so, and its estimate of the teacher time
/// an online run would spend counts only the samples trained on.
#[test]
fn a_sweep_with_few_labels_says_so_and_counts_what_trained() {
    let tmp = sweep_dir("students = [\"mlp:784-16-10\"]\ntemperatures = [2]\nepochs = 1\n");
    let cwd = tmp.path();
    sweep(cwd, &["--train-fraction", "0.5", "-q"]);
    let report = fs::read_to_string(cwd.join("sweep/report.md")).unwrap();
    assert!(
        report.contains(
            "each trains on 0.5 of the rest (train-fraction), drawn from the run's own seed"
        ),
        "{report}"
    );
    assert!(report.contains("(900 trained samples each)"), "{report}");
    assert!(report.contains(": 1 epoch each, batch 64"), "{report}");
    for run in ["mlp-784-16-10_baseline", "mlp-784-16-10_kd-T2-a0.5"] {
        let card = model_card(&cwd.join("sweep/runs").join(run));
        assert_eq!(card["data"]["trained_samples"], 900, "{run}");
        assert_eq!(card["config"]["train_fraction"], 0.5, "{run}");
    }
}
