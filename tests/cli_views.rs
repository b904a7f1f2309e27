//! An external teacher's round trip: `distill views export` writes the
//! images of a view set, the teacher's logits come back through `distill
//! cache import --view-set`, and the view set equals the one `distill cache
//! build --augment` writes with distill's own teacher, within the encoding's
//! error. distill's teacher stands in for the external one here (its logits
//! computed through the library on the exported files); the PyTorch version
//! (`examples/pytorch_teacher.py`) runs when PyTorch is installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use distill::cache::CacheViews;
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};

use crate::util::*;

const AUG: [&str; 4] = ["--augment", "flip,shift=2", "--augment-seed", "5"];
/// The round trips run on the committed test split (1,000 images) to stay quick.
const SPLIT: [&str; 2] = ["--split", "test"];

/// An f32 `.npy` as `views export` writes it: (shape, values).
fn read_f32_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", path.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let dims = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = dims
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let values = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// The names in `dir`, sorted.
fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn export(cwd: &Path, views: &str, out: &str, split: &[&str]) -> String {
    let data = s(&small_data());
    let mut args = vec![
        "views", "export", "--data", &data, "--views", views, "--out", out,
    ];
    args.extend(AUG);
    args.extend(split);
    ok(cwd, &args)
}

/// Each exported file holds, in sample order, the dataset's images drawn
/// through the view's augmentation: what `cache build --augment` shows the teacher.
#[test]
fn exported_views_are_the_images_of_the_view_set() {
    let tmp = tempfile::tempdir().unwrap();
    let printed = export(tmp.path(), "2", "views", &[]);
    assert!(printed.contains("view-1-images.npy"), "{printed}");
    let train = Dataset::open(&small_data(), Split::Train).unwrap();
    let a = Augment::parse("flip,shift=2").unwrap();
    let n = train.len();
    let all: Vec<usize> = (0..n).collect();
    let mut differ = 0;
    let mut plain = vec![0f32; n * train.sample_len()];
    train.fill_inputs(&all, &mut plain);
    for v in 0..2u64 {
        let (shape, got) = read_f32_npy(&tmp.path().join(format!("views/view-{v}-images.npy")));
        assert_eq!(shape, [n, 1, 28, 28]);
        let mut want = plain.clone();
        a.apply_batch(5, v, &all, train.sample_shape(), &mut want);
        assert!(
            got == want,
            "view {v} differs from fill_inputs + Augment::apply_batch"
        );
        differ += (got != plain) as usize;
    }
    assert_eq!(differ, 2, "the views must be augmented");
    // Nothing but the K files and the record (no temporary left behind).
    assert_eq!(
        sorted_names(&tmp.path().join("views")),
        ["export.json", "view-0-images.npy", "view-1-images.npy"]
    );
}

/// Writes `[N, C]` f32 logits as `.npy`.
fn write_logits(path: &Path, n: usize, c: usize, logits: &[f32]) {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", &[n, c], &bytes);
}

/// Decoded view sets, view by view, agree within `tol(exact)` per value.
fn assert_same_views(a: &Path, b: &Path, t: f32, tol: impl Fn(f32, f32) -> f32) {
    // SAFETY: both sets were written by this test and are only read.
    let (a, b) = unsafe { (CacheViews::open(a).unwrap(), CacheViews::open(b).unwrap()) };
    assert_eq!(a.views().len(), b.views().len());
    assert_eq!(a.view_info(), b.view_info());
    for (v, (ra, rb)) in a.views().iter().zip(b.views()).enumerate() {
        let (da, db) = (
            ra.read_all(t, false).unwrap(),
            rb.read_all(t, false).unwrap(),
        );
        assert_eq!(da.labels, db.labels);
        let c = ra.num_classes();
        for (row, (x, y)) in da
            .logprobs
            .chunks_exact(c)
            .zip(db.logprobs.chunks_exact(c))
            .enumerate()
        {
            let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (&p, &q) in x.iter().zip(y) {
                assert!(
                    (p - q).abs() <= tol(hi, p),
                    "view {v} row {row}: {p} vs {q}"
                );
            }
        }
    }
}

/// One hq:32 step at log-probability `p` below the top `hi`, in log space:
/// `sqrt(p/p_max)` may move by 1/32 (plus the zero code's floor).
fn hq_step(hi: f32, p: f32) -> f32 {
    let u = ((p - hi) * 0.5).exp();
    let lower = (u - 1.0 / 32.0).max(1.0 / (32.0 * 12f32.sqrt()));
    2.0 * (u / lower).ln() + 1e-3
}

/// Export, distill's teacher on the exported files as an external teacher,
/// import: the view set equals the one distill builds itself (f32: to the
/// float rounding of a different batch size; hq:32: within one of its steps).
#[test]
fn view_set_round_trip_equals_the_one_distill_builds() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    export(tmp.path(), "2", "views", &SPLIT);
    let model = distill::model::io::load_weights(
        &teacher_dir().join("model.safetensors"),
        None,
        dfdx::prelude::Cpu::default(),
    )
    .unwrap();
    let mut logit_args: Vec<String> = Vec::new();
    for v in 0..2 {
        let (shape, images) = read_f32_npy(&tmp.path().join(format!("views/view-{v}-images.npy")));
        let logits = model.predict(images, shape[0]).as_vec();
        let file = tmp.path().join(format!("view-{v}-logits.npy"));
        write_logits(&file, shape[0], 10, &logits);
        logit_args.extend(["--logits".into(), s(&file)]);
    }
    for enc in ["f32", "hq:32"] {
        let built = format!("built-{}", enc.replace(':', "-"));
        let mut args = vec![
            "cache",
            "build",
            "--teacher",
            &teacher,
            "--data",
            &data,
            "-T",
            "4",
            "--encoding",
            enc,
            "--out",
            &built,
            "--views",
            "2",
            "-q",
        ];
        args.extend(AUG);
        args.extend(SPLIT);
        ok(tmp.path(), &args);
        let imported = format!("imported-{}", enc.replace(':', "-"));
        let mut args = vec![
            "cache",
            "import",
            "--view-set",
            "--data",
            &data,
            "-T",
            "4",
            "--encoding",
            enc,
            "--out",
            &imported,
            "-q",
        ];
        args.extend(AUG);
        args.extend(SPLIT);
        args.extend(logit_args.iter().map(String::as_str));
        let printed = ok(tmp.path(), &args);
        assert!(printed.contains("view-1"), "{printed}");
        // hq:32 rounds sqrt(p/p_max) to 1/32 steps: two logits that differ
        // in the last bits may round to neighbouring codes, so compare in
        // that domain (one step) rather than in log space.
        let tol: &dyn Fn(f32, f32) -> f32 = if enc == "f32" { &|_, _| 2e-4 } else { &hq_step };
        assert_same_views(
            &tmp.path().join(&built),
            &tmp.path().join(&imported),
            4.0,
            tol,
        );
    }
}

/// Bad imports are refused with the flag or file named, nothing written.
#[test]
fn view_set_import_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let good = tmp.path().join("good.npy");
    write_logits(&good, 2000, 10, &vec![0.5; 2000 * 10]);
    let short = tmp.path().join("short.npy");
    write_logits(&short, 1999, 10, &vec![0.5; 1999 * 10]);
    let (g, sh) = (s(&good), s(&short));
    let base = [
        "cache", "import", "--data", &data, "-T", "4", "--out", "set",
    ];
    // Several files without --view-set.
    let mut a = base.to_vec();
    a.extend(["--logits", &g, "--logits", &g]);
    fails(tmp.path(), &a, &["--logits", "--view-set"]);
    // --view-set needs --augment (clap's usage error).
    let mut a = base.to_vec();
    a.extend(["--view-set", "--logits", &g]);
    fails(tmp.path(), &a, &["--augment"]);
    // A view's file with the wrong number of rows is named.
    let mut a = base.to_vec();
    a.extend(["--view-set", "--logits", &g, "--logits", &sh]);
    a.extend(AUG);
    fails(tmp.path(), &a, &["short.npy", "1999 rows"]);
    assert!(
        !tmp.path().join("set/view-0").exists(),
        "nothing is written before every file is checked"
    );
    // views export: no views, or an augmentation the data cannot take.
    let out = s(&tmp.path().join("v"));
    let mut a = vec![
        "views", "export", "--data", &data, "--views", "0", "--out", &out,
    ];
    a.extend(AUG);
    fails(tmp.path(), &a, &["--views"]);
    fails(
        tmp.path(),
        &[
            "views",
            "export",
            "--data",
            &data,
            "--augment",
            "shift=40",
            "--out",
            &out,
        ],
        &["--augment"],
    );
    // Nor into a model's directory: the teacher's files stay alone.
    let model = tmp.path().join("model");
    fs::create_dir(&model).unwrap();
    fs::write(model.join("model.json"), b"{}").unwrap();
    let mut a = vec![
        "views", "export", "--data", &data, "--views", "1", "--out", "model",
    ];
    a.extend(AUG);
    fails(
        tmp.path(),
        &a,
        &["--out", "model.json", "directory of their own"],
    );
    assert_eq!(fs::read_dir(&model).unwrap().count(), 1, "nothing is added");
}

/// A Python with PyTorch: `DISTILL_TORCH_PYTHON`, else the venv the
/// reference scripts use, else `python3`; `None` when none imports torch.
fn torch_python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("DISTILL_TORCH_PYTHON").map(PathBuf::from),
        Some(PathBuf::from("/work/venv-torch/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import torch, numpy, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// `examples/pytorch_teacher.py`: PyTorch runs the teacher on the exported
/// views; the view set it imports equals distill's own within f16's error
/// (PyTorch's and distill's float arithmetic differ in the last bits).
#[test]
fn pytorch_teacher_example_round_trip() {
    let Some(python) = torch_python() else {
        eprintln!(
            "skipped: no python with torch, numpy and safetensors (set DISTILL_TORCH_PYTHON)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pytorch_teacher.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([
            "--distill",
            env!("CARGO_BIN_EXE_distill"),
            "--data",
            &data,
            "--teacher",
            &teacher,
        ])
        .args([
            "--augment",
            "flip,shift=2",
            "--augment-seed",
            "5",
            "--views",
            "2",
            "--encoding",
            "f16",
        ])
        .args(["--split", "test", "--out", &s(&tmp.path().join("pt"))])
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec![
        "cache",
        "build",
        "--teacher",
        &teacher,
        "--data",
        &data,
        "-T",
        "4",
        "--encoding",
        "f16",
        "--out",
        "built",
        "--views",
        "2",
        "-q",
    ];
    args.extend(AUG);
    args.extend(SPLIT);
    ok(tmp.path(), &args);
    assert_same_views(
        &tmp.path().join("built"),
        &tmp.path().join("pt/cache"),
        4.0,
        |hi, p| 2.0 * (hi - p) / 2048.0 + 1e-3,
    );
}

/// An export records what it wrote (`export.json`); exporting other views
/// into the same directory is refused without --overwrite (it would leave
/// two exports' files mixed), and with it the stale views go.
#[test]
fn an_export_replaces_another_only_with_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let args = |augment: &'static str, views: &'static str, overwrite: bool| {
        let mut a = vec!["views", "export", "--data", &data, "--augment", augment];
        a.extend(["--views", views, "--out", "v"]);
        if overwrite {
            a.push("--overwrite");
        }
        a
    };
    ok(tmp.path(), &args("shift=1", "3", false));
    let three = fs::read(tmp.path().join("v/view-2-images.npy")).unwrap();
    // The same export again is a rerun: allowed, the same bytes.
    ok(tmp.path(), &args("shift=1", "3", false));
    assert_eq!(
        fs::read(tmp.path().join("v/view-2-images.npy")).unwrap(),
        three
    );
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("v/export.json")).unwrap()).unwrap();
    assert_eq!(record["augment"], "shift=1", "{record}");
    assert_eq!(record["views"], 3, "{record}");
    assert_eq!(record["complete"], true, "{record}");
    // An export stopped part-way (its record written first, unfinished) is
    // the same export: a rerun completes it.
    let v = tmp.path().join("v");
    let mut unfinished = record.clone();
    unfinished["complete"] = serde_json::Value::Bool(false);
    fs::write(v.join("export.json"), unfinished.to_string()).unwrap();
    fs::remove_file(v.join("view-2-images.npy")).unwrap();
    ok(tmp.path(), &args("shift=1", "3", false));
    assert_eq!(fs::read(v.join("view-2-images.npy")).unwrap(), three);
    let again: serde_json::Value =
        serde_json::from_slice(&fs::read(v.join("export.json")).unwrap()).unwrap();
    assert_eq!(again, record);
    fails(
        tmp.path(),
        &args("flip", "2", false),
        &[
            "--out",
            "another export",
            "3 views of shift=1",
            "--overwrite",
        ],
    );
    assert_eq!(
        fs::read(tmp.path().join("v/view-2-images.npy")).unwrap(),
        three
    );
    ok(tmp.path(), &args("flip", "2", true));
    assert_eq!(
        sorted_names(&tmp.path().join("v")),
        ["export.json", "view-0-images.npy", "view-1-images.npy"]
    );
}

/// A view count past the cap is refused before anything is written, in
/// `views export` and in `cache build`; so is a block size past the
/// format's, naming its flag.
#[test]
fn counts_past_the_caps_are_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    for views in ["1025", "18446744073709551615"] {
        let mut args = vec![
            "views", "export", "--data", &data, "--views", views, "--out", "vx",
        ];
        args.extend(AUG);
        fails(tmp.path(), &args, &["--views", "1 to 1024"]);
        assert!(!tmp.path().join("vx").exists());
        let mut args = vec![
            "cache",
            "build",
            "--teacher",
            &teacher,
            "--data",
            &data,
            "-T",
            "4",
            "--views",
            views,
            "--out",
            "cv",
        ];
        args.extend(AUG);
        fails(tmp.path(), &args, &["--views", "1 to 1024"]);
        assert!(!tmp.path().join("cv").exists());
    }
    fails(
        tmp.path(),
        &[
            "cache",
            "build",
            "--teacher",
            &teacher,
            "--data",
            &data,
            "-T",
            "4",
            "--block-records",
            "1000000000",
            "--out",
            "cb",
        ],
        &["--block-records", "outside"],
    );
}
