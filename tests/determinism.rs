//! Same seed and thread count, same bytes: two training runs of the real
//! binary, for a convolutional student (the fused convolution op, several
//! image chunks per batch) and for a student distilled from a cache, write
//! byte-identical weights and the same losses.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{cache_build_args, s, small_data, teacher_dir, train_args};

/// Runs `distill` with a fixed rayon thread count and asserts success.
fn run(cwd: &Path, threads: usize, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .current_dir(cwd)
        .output()
        .expect("the distill binary runs");
    assert!(
        out.status.success(),
        "distill {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The training losses of a run, one per epoch, from its metrics.
fn losses(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string(dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let start = l.find("\"train_loss\":").expect("train_loss");
            l[start..].split(',').next().unwrap_or_default().to_string()
        })
        .collect()
}

fn assert_same_run(tmp: &Path, a: &str, b: &str) {
    let weights = |d: &str| fs::read(tmp.join(d).join("model.safetensors")).expect("weights");
    assert!(
        weights(a) == weights(b),
        "{a} and {b}: same seed and threads, different weights"
    );
    assert_eq!(losses(&tmp.join(a)), losses(&tmp.join(b)));
}

#[test]
fn same_seed_and_threads_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let settings = ["--epochs", "2", "--batch", "100", "--seed", "3", "-q"];
    for dir in ["cnn-a", "cnn-b"] {
        run(
            tmp.path(),
            2,
            &train_args(&data, "cnn:c6-p-c8-p-10", dir, &settings),
        );
    }
    assert_same_run(tmp.path(), "cnn-a", "cnn-b");

    let build = cache_build_args(&teacher, &data, "cache", &["--split", "train", "-q"]);
    run(tmp.path(), 2, &build);
    let kd = ["--cache", "cache", "--alpha", "0.5", "-T", "4"];
    for dir in ["kd-a", "kd-b"] {
        let args = train_args(&data, "mlp:784-32-10", dir, &[&settings[..], &kd].concat());
        run(tmp.path(), 2, &args);
    }
    assert_same_run(tmp.path(), "kd-a", "kd-b");
}
