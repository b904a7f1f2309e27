//! Helpers shared by the end-to-end tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The committed 2,000/1,000-image Fashion-MNIST subset.
pub fn small_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-small")
}

/// The committed teacher.
pub fn teacher_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/teachers/fashion-cnn")
}

/// Runs `distill` with `args` in `cwd`.
pub fn distill(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the distill binary runs")
}

/// Runs `distill` and asserts success; returns stdout.
pub fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = distill(cwd, args);
    assert!(
        out.status.success(),
        "distill {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `distill`, asserts exit code 2 and that stderr mentions every needle;
/// returns stderr.
pub fn fails(cwd: &Path, args: &[&str], needles: &[&str]) -> String {
    let out = distill(cwd, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "distill {args:?} should fail with 2; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "distill {args:?} panicked: {stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "distill {args:?}: stderr lacks '{n}':\n{stderr}"
        );
    }
    stderr
}

/// Starts `distill` with `args` in `cwd`, its output discarded.
pub fn spawn(cwd: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn distill")
}

/// The model card (`model.json`) of a run directory.
pub fn model_card(run: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(run.join("model.json")).unwrap()).unwrap()
}

/// The run's `metrics.jsonl`, one JSON value per epoch.
pub fn epoch_metrics(run: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cache build` of `teacher` on `data` at T = 4 into `out`, then `extra`
/// (the split, the encoding, `-q`, ...).
pub fn cache_build_args<'a>(
    teacher: &'a str,
    data: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "cache",
        "build",
        "--teacher",
        teacher,
        "--data",
        data,
        "-T",
        "4",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// `cache import` of the `logits` file for `split` of `data` at temperature
/// `t` into `out`, then `extra` (the encoding, `-q`, ...).
pub fn cache_import_args<'a>(
    logits: &'a str,
    data: &'a str,
    split: &'a str,
    t: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "cache", "import", "--logits", logits, "--data", data, "--split", split, "-T", t, "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// `train` of `student` on `data` into `out`, then `extra` (epochs, cache,
/// `-q`, ...).
pub fn train_args<'a>(
    data: &'a str,
    student: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec!["train", "--data", data, "--student", student, "--out", out];
    a.extend_from_slice(extra);
    a
}

/// A string path.
pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes a C-order `.npy` file (version 1.0) with the given dtype descr
/// (e.g. `|u1`, `<f4`) and shape.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Every file of a directory (recursively) by relative path, with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A directory that is not there holds no files.
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every file of a directory (recursively) by relative path, with its
/// modification time: what a command wrote, in place or renamed over.
pub fn file_times(dir: &Path) -> BTreeMap<String, std::time::SystemTime> {
    snapshot(dir)
        .into_keys()
        .map(|rel| {
            let t = fs::metadata(dir.join(&rel)).unwrap().modified().unwrap();
            (rel, t)
        })
        .collect()
}

/// Owned arguments as the `&str`s [`ok`] and [`fails`] take.
pub fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// Builds the committed teacher's cache of `data`'s train split (T = 4)
/// into `out`, under `cwd`.
pub fn build_train_cache(cwd: &Path, data: &str, out: &str) {
    let teacher = s(&teacher_dir());
    ok(
        cwd,
        &cache_build_args(&teacher, data, out, &["--split", "train", "-q"]),
    );
}
