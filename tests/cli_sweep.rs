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
    // one killed after 10 of its 32 steps.
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
        // ... and so does the report, row by row.
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("report has no row for {name}:\n{report}"));
        assert!(
            line.contains(&format!("{:.2}%", 100.0 * acc)),
            "{line} vs {acc}"
        );
    }
    // The summary row of each student carries its baseline and best run.
    for student in ["mlp:784-16-10", "mlp:784-32-10"] {
        let mine: Vec<&HashMap<&str, &str>> =
            rows.iter().filter(|r| r["student"] == student).collect();
        let base: f64 = mine.iter().find(|r| r["kind"] == "baseline").unwrap()["test_accuracy"]
            .parse()
            .unwrap();
        let best = mine
            .iter()
            .filter(|r| r["kind"] == "distilled")
            .map(|r| r["test_accuracy"].parse::<f64>().unwrap())
            .fold(0.0, f64::max);
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
        &["holds a finished run with other settings", "--out"],
    );
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
    let finished = |out: &str| -> HashMap<String, SystemTime> {
        let mut m = HashMap::new();
        if let Ok(entries) = fs::read_dir(cwd.join(out).join("runs")) {
            for e in entries.flatten() {
                if let Ok(meta) = fs::metadata(e.path().join("model.safetensors")) {
                    if e.path().join("model.json").exists() {
                        m.insert(
                            e.file_name().to_string_lossy().into_owned(),
                            meta.modified().unwrap(),
                        );
                    }
                }
            }
        }
        m
    };
    // Runs finished before an attempt are not rewritten by it.
    let untouched = |before: &HashMap<String, SystemTime>, after: &HashMap<String, SystemTime>| {
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
    for name in after.keys() {
        let a = fs::read(
            cwd.join("reference/runs")
                .join(name)
                .join("model.safetensors"),
        )
        .unwrap();
        let b = fs::read(cwd.join("killed/runs").join(name).join("model.safetensors")).unwrap();
        assert!(a == b, "run {name} differs from the uninterrupted sweep");
    }
    eprintln!(
        "sweep killed {kills} times; {} runs were already finished at the last rerun",
        before.len()
    );
}
