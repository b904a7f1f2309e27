//! `distill model info`.

use crate::util::*;

#[test]
fn model_info_reports_pytorch_parameter_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["model", "info", "mlp:784-128-10"]);
    assert!(out.contains("total parameters 101770"), "{out}");
    assert!(out.contains("forward FLOPs per sample 203264"), "{out}");
    let out = ok(dir.path(), &["model", "info", "cnn:c32-p-c64-p-f128-10"]);
    assert!(out.contains("total parameters 421642"), "{out}");
    assert!(out.contains("nn.Conv2d(1, 32, 3, padding=1)"), "{out}");
    fails(
        dir.path(),
        &["model", "info", "cnn:c32-x-10"],
        &["cnn:c32-x-10", "unknown layer 'x'"],
    );
    // A spec missing its family's colon is not taken for a missing file.
    fails(
        dir.path(),
        &["model", "info", "mlp784-16-10"],
        &["mlp784-16-10", "neither a spec", "nor a model directory"],
    );
}

#[test]
fn the_committed_cnn_teachers_load_and_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let long = teacher_dir().with_file_name("fashion-cnn-long");
    let held_out = teacher_dir().with_file_name("fashion-cnn-long-val");
    // The held-out teacher's card records its split, so runs can count the
    // validation images it trained on: seed 0's 10%, none of them.
    let card = model_card(&held_out);
    assert_eq!(card["config"]["seed"], 0, "{card}");
    assert_eq!(card["config"]["val_fraction"], 0.1, "{card}");
    assert_eq!(card["data"]["val_samples"], 6000, "{card}");
    for teacher in [teacher_dir(), long, held_out] {
        let card = model_card(&teacher);
        assert_eq!(card["spec"], "cnn:c32-p-c64-p-f128-10", "{card}");
        let recorded = card["test_accuracy"].as_f64().unwrap();
        assert!(recorded > 0.92, "{}: {recorded}", teacher.display());
        // On the committed 1,000-image test subset each stays close to its
        // full-test accuracy.
        let out = ok(
            dir.path(),
            &["eval", "--model", &s(&teacher), "--data", &data],
        );
        let row = out
            .lines()
            .find(|l| l.contains(teacher.file_name().unwrap().to_str().unwrap()))
            .unwrap_or_else(|| panic!("{out}"));
        let pct: f64 = row
            .split_whitespace()
            .find_map(|w| w.strip_suffix('%').and_then(|v| v.parse().ok()))
            .unwrap_or_else(|| panic!("{row}"));
        assert!(
            (pct / 100.0 - recorded).abs() < 0.03,
            "{row} vs card {recorded}"
        );
    }
}

#[test]
fn eval_checks_every_model_before_printing_a_table() {
    // The second model is missing: the error names it, and no half table
    // (a header and the first model's row) is printed before it.
    let dir = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let args = [
        "eval", "--model", &teacher, "--model", "nowhere", "--data", &data,
    ];
    let out = distill(dir.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A reader that stops early (`distill model info SPEC | head -1`) closes the
/// pipe: the process ends as other command-line tools do, by SIGPIPE, and
/// never panics on the failed write.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_process_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    // The read end is closed before the process starts, so its first write
    // fails whatever the timing.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["model", "info", "cnn:c32-p-c64-p-f128-10"])
        .current_dir(dir.path())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[test]
fn a_cache_named_as_a_model_is_said_to_be_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    ok(
        dir.path(),
        &cache_build_args(&teacher, &data, "cache", &["--split", "test", "-q"]),
    );
    let said = [
        "cache: holds a teacher cache",
        "not a model; name a model directory or its .safetensors file",
    ];
    fails(
        dir.path(),
        &["eval", "--model", "cache", "--data", &data],
        &said,
    );
    fails(dir.path(), &["model", "info", "cache"], &said);
    fails(
        dir.path(),
        &cache_build_args("cache", &data, "out", &["-q"]),
        &said,
    );
    // A directory that is not there is said to be missing, not its weights file.
    let err = fails(
        dir.path(),
        &["eval", "--model", "absent", "--data", &data],
        &["absent: does not exist; name a model directory"],
    );
    assert!(!err.contains("os error"), "{err}");
    assert!(!dir.path().join("out").exists());
}
