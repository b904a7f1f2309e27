//! Mixed view sets on the command line: `cache build --augment
//! flip,shift=2,mixup=0.2 --views K` writes the views and their summary
//! (cost, the teacher's agreement per view and on the plain images, and a
//! warning when the teacher cannot read the views), `cache inspect` prints
//! it, `train --cache SET` trains from it (mixed labels, or pure function
//! matching with `--alpha 0`) and repeats the warning, and `views export`
//! writes the very mixed images the build showed the teacher.

use std::fs;

use distill::data::augment::Augment;
use distill::data::{Dataset, Split};

use crate::util::*;

const MIXED: &str = "flip,shift=2,mixup=0.2";

/// `cache build` of the committed teacher on the small data into `t/set`.
fn build_set(t: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    distill(t, &cache_build_args(&teacher, &data, "set", extra))
}

#[test]
fn a_mixed_view_set_reports_its_cost_and_agreement_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = s(&small_data());
    let out = build_set(
        t,
        &[
            "--augment",
            MIXED,
            "--views",
            "2",
            "--augment-seed",
            "3",
            "-q",
        ],
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("bytes/sample/view") && stdout.contains("on the plain images"),
        "{stdout}"
    );
    // The committed teacher never saw flips or shifts: it cannot read
    // these views, and the build says so with both numbers.
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("set/views.json")).unwrap()).unwrap();
    let clean = summary["clean_agreement"].as_f64().unwrap();
    let stats = summary["view_stats"].as_array().unwrap();
    assert_eq!(stats.len(), 2);
    let mean = stats
        .iter()
        .map(|v| v["agreement"].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!(clean > 0.9 && mean < clean - 0.05, "{summary}");
    for v in stats {
        assert!(v["bytes_per_sample"].as_f64().unwrap() > 0.0, "{summary}");
        assert!(v["build_seconds"].as_f64().unwrap() > 0.0, "{summary}");
    }
    let clean_pct = format!("{:.1}%", 100.0 * clean);
    assert!(
        stderr.contains("warning:")
            && stderr.contains(&clean_pct)
            && stderr.contains("points lower"),
        "{stderr}"
    );
    let inspect = ok(t, &["cache", "inspect", "set"]);
    for needle in [
        "view set set: 2 views of augment flip,shift=2,mixup=0.2 (seed 3)",
        "bytes/sample/view",
        "view 1: agreement",
        "warning:",
    ] {
        assert!(inspect.contains(needle), "{needle}: {inspect}");
    }

    // Pure function matching, then mixed labels beside the soft targets.
    for (run, alpha) in [("pure", "0"), ("mixed", "0.5")] {
        let args = train_args(
            &data,
            "mlp:784-16-10",
            run,
            &[
                "--cache", "set", "--epochs", "2", "--alpha", alpha, "--batch", "100",
            ],
        );
        let out = distill(t, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("warning:") && stderr.contains(&clean_pct),
            "{stderr}"
        );
        let card = model_card(&t.join(run));
        assert!(card["test_accuracy"].as_f64().unwrap() > 0.3, "{card}");
        // Samples whose partner is held out sit the epoch out; the cosine
        // schedule counts the steps actually taken, so it ends at zero.
        let metrics = fs::read_to_string(t.join(run).join("metrics.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
        assert!(last["lr"].as_f64().unwrap() < 1e-9, "{last}");
    }
    // The set's augmentation is the run's; another is refused.
    let args = train_args(
        &data,
        "mlp:784-16-10",
        "other",
        &[
            "--cache",
            "set",
            "--augment",
            "flip,mixup=0.2",
            "--epochs",
            "1",
        ],
    );
    fails(t, &args, &["--augment", "differs"]);

    // A damaged or foreign summary is refused, naming the file.
    let good = fs::read(t.join("set/views.json")).unwrap();
    fs::write(t.join("set/views.json"), b"{ not json").unwrap();
    fails(t, &["cache", "inspect", "set"], &["views.json", "invalid"]);
    let foreign = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"seed\": 3", "\"seed\": 4");
    fs::write(t.join("set/views.json"), foreign).unwrap();
    fails(t, &["cache", "inspect", "set"], &["views.json", "seed 4"]);
    // Without it the set opens as one built before summaries.
    fs::remove_file(t.join("set/views.json")).unwrap();
    let inspect = ok(t, &["cache", "inspect", "set"]);
    assert!(!inspect.contains("bytes/sample/view"), "{inspect}");
}

/// `views export` of a mixed augmentation writes, row for row, the inputs
/// `Augment::fill_batch` makes: each image in its view, mixed with its
/// partner's view.
#[test]
fn exported_mixed_views_are_the_images_the_teacher_is_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let spec = "flip,cutmix=1";
    ok(
        tmp.path(),
        &[
            "views",
            "export",
            "--data",
            &data,
            "--split",
            "test",
            "--augment",
            spec,
            "--views",
            "2",
            "--augment-seed",
            "7",
            "--out",
            "v",
        ],
    );
    let test = Dataset::open(&small_data(), Split::Test).unwrap();
    let a = Augment::parse(spec).unwrap();
    let all: Vec<usize> = (0..test.len()).collect();
    for v in 0..2u64 {
        let bytes = fs::read(tmp.path().join(format!("v/view-{v}-images.npy"))).unwrap();
        let header = 10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let got: Vec<f32> = bytes[header..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut want = vec![0f32; all.len() * test.sample_len()];
        let mix = a.fill_batch(&test, 7, v, &all, &mut want).unwrap();
        assert!(got == want, "view {v} differs from Augment::fill_batch");
        assert!(mix.iter().any(|p| p.lambda < 1.0));
    }
}

/// Each finished view of a mixed set reports the teacher's agreement as
/// the set's summary counts it (either image's label of a mixed image),
/// not the accuracy against each image's own label, which calls a teacher
/// that names the partner wrong and, at mixup=1, sits near half.
#[test]
fn a_mixed_views_progress_line_counts_either_label() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let out = build_set(t, &["--augment", "mixup=1", "--views", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(t.join("set/views.json")).unwrap()).unwrap();
    for (v, stats) in summary["view_stats"].as_array().unwrap().iter().enumerate() {
        let line = format!(
            "teacher agreement with the labels on view {v}: {:.2}%",
            100.0 * stats["agreement"].as_f64().unwrap()
        );
        assert!(stderr.contains(&line), "{line}\n{stderr}");
    }
    assert!(!stderr.contains("against the stored labels"), "{stderr}");
}
