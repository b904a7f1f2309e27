//! Same seed and thread count, same bytes: two training runs of the real
//! binary, for a convolutional student (the fused convolution op, several
//! image chunks per batch) and for a student distilled from a cache, write
//! byte-identical weights and the same losses; on one rayon thread as on
//! two, a cache build and a cached run finish.

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

/// Runs `distill` on `threads` rayon threads; fails if it does not succeed
/// within `limit`.
fn run_within(cwd: &Path, threads: usize, args: &[&str], limit: std::time::Duration) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the distill binary runs");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for distill") {
            assert!(
                status.success(),
                "distill {args:?} failed on {threads} thread(s)"
            );
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("distill {args:?} on {threads} thread(s) did not finish in {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// On the CPU a command runs on one of rayon's threads when the pool has
/// two or more. A cache build waits for compression tasks on the pool and a
/// cached run's loader decodes on it, so with a one-thread pool the command
/// must stay off it: both finish on 1 thread as on 2.
#[test]
fn cache_build_and_cached_training_finish_on_one_thread_and_on_two() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let limit = std::time::Duration::from_secs(300);
    for threads in [1, 2] {
        let cache = format!("cache-{threads}");
        let build = cache_build_args(&teacher, &data, &cache, &["--split", "train", "-q"]);
        run_within(tmp.path(), threads, &build, limit);
        let kd = ["--cache", cache.as_str(), "--alpha", "0.5", "-T", "4"];
        let settings = ["--epochs", "1", "--batch", "100", "--seed", "3", "-q"];
        let out = format!("kd-{threads}");
        let args = train_args(&data, "mlp:784-32-10", &out, &[&settings[..], &kd].concat());
        run_within(tmp.path(), threads, &args, limit);
        assert!(tmp.path().join(&out).join("model.safetensors").is_file());
    }
}
