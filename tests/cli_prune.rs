//! `distill prune`, `distill train --init-from` (parameter and hybrid
//! distillation, fine-tuning with masks) and the `distill eval` comparison,
//! on the committed teacher and subset.

use std::fs;

use distill::model::io::read_safetensors;

use crate::util::*;

fn tensors(path: &std::path::Path) -> Vec<distill::model::io::HostTensor> {
    read_safetensors(path).unwrap().1
}

#[test]
fn structured_pruning_gives_a_smaller_model_that_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let out = ok(
        tmp.path(),
        &[
            "prune",
            "--model",
            &teacher,
            "--method",
            "l1-structured",
            "--sparsity",
            "0.5",
            "--data",
            &data,
            "--out",
            "p50",
            "-q",
        ],
    );
    assert!(out.contains("cnn:c16-p-c32-p-f64-10"), "{out}");
    assert!(out.contains("test accuracy"), "{out}");
    let small = tmp.path().join("p50/model.safetensors");
    let big = teacher_dir().join("model.safetensors");
    assert!(fs::metadata(&small).unwrap().len() * 3 < fs::metadata(&big).unwrap().len());
    assert!(!tmp.path().join("p50/mask.safetensors").exists());
    let t = tensors(&small);
    let w0 = t.iter().find(|t| t.name == "layers.0.weight").unwrap();
    assert_eq!(w0.shape, vec![16, 1, 3, 3]);
    let fc = t.iter().find(|t| t.name == "layers.7.weight").unwrap();
    assert_eq!(fc.shape, vec![64, 32 * 7 * 7]);
    // An ordinary model: eval loads it beside the teacher.
    let table = ok(
        tmp.path(),
        &[
            "eval", "--model", &teacher, "--model", "p50", "--data", &data,
        ],
    );
    assert!(
        table.contains("non-zeros") && table.contains("ms/smp@256"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn unstructured_masks_stay_exactly_zero_through_fine_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let out = ok(
        tmp.path(),
        &[
            "prune",
            "--model",
            &teacher,
            "--method",
            "l1-unstructured",
            "--sparsity",
            "0.9",
            "--out",
            "u90",
            "-q",
        ],
    );
    assert!(out.contains("non-zero parameters"), "{out}");
    let masks = tensors(&tmp.path().join("u90/mask.safetensors"));
    assert_eq!(masks.len(), 4);
    // AdamW with decoupled weight decay: the case that would revive weights
    // if masks were not applied.
    let run = distill(
        tmp.path(),
        &[
            "train",
            "--data",
            &data,
            "--init-from",
            "u90",
            "--epochs",
            "1",
            "--batch",
            "64",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.05",
            "--lr",
            "1e-3",
            "--out",
            "ft",
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("kept at zero"), "{stderr}");
    let before = tensors(&tmp.path().join("u90/model.safetensors"));
    let after = tensors(&tmp.path().join("ft/model.safetensors"));
    assert!(tmp.path().join("ft/mask.safetensors").exists());
    let mut moved = 0;
    for m in &masks {
        let a = after.iter().find(|t| t.name == m.name).unwrap();
        let b = before.iter().find(|t| t.name == m.name).unwrap();
        for ((mv, av), bv) in m.data.iter().zip(&a.data).zip(&b.data) {
            if *mv == 0.0 {
                assert_eq!(av.to_bits(), 0.0f32.to_bits(), "{} revived", m.name);
            } else if av != bv {
                moved += 1;
            }
        }
    }
    assert!(moved > 1000, "training changed only {moved} kept weights");
}

#[test]
fn hybrid_distillation_starts_from_sliced_teacher_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    ok(
        tmp.path(),
        &[
            "cache",
            "build",
            "--teacher",
            &teacher,
            "--data",
            &data,
            "--split",
            "train",
            "-T",
            "4",
            "--encoding",
            "f16",
            "--out",
            "cache",
            "-q",
        ],
    );
    let args = |out: &'static str, init: bool| {
        let mut a = vec![
            "train",
            "--data",
            &data,
            "--student",
            "cnn:c8-p-c16-p-f32-10",
            "--cache",
            "cache",
            "--alpha",
            "0.5",
            "-T",
            "4",
            "--epochs",
            "1",
            "--batch",
            "64",
            "--lr",
            "3e-4",
            "--out",
            out,
        ];
        if init {
            a.extend_from_slice(&["--init-from", &teacher]);
        }
        a
    };
    let run = distill(tmp.path(), &args("hybrid", true));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("kept 8 of 32 units") && stderr.contains("kept 32 of 128 units"),
        "{stderr}"
    );
    assert!(
        stderr.contains("layers.9.weight") && stderr.contains("sliced"),
        "{stderr}"
    );
    let card = |dir: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(tmp.path().join(dir).join("model.json")).unwrap(),
        )
        .unwrap();
        v["test_accuracy"].as_f64().unwrap()
    };
    ok(tmp.path(), &args("plain", false));
    // One epoch at a small learning rate: the teacher's filters are a far
    // better start than random ones.
    assert!(
        card("hybrid") > card("plain"),
        "{} vs {}",
        card("hybrid"),
        card("plain")
    );
}

#[test]
fn bad_prune_and_init_flags_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = s(&teacher_dir());
    let data = s(&small_data());
    let base = ["prune", "--model", &teacher, "--out", "x"];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = base.to_vec();
        v.extend_from_slice(extra);
        v
    };
    fails(
        tmp.path(),
        &with(&["--method", "l1-structured", "--sparsity", "1.0"]),
        &["--sparsity", "[0, 1)"],
    );
    fails(
        tmp.path(),
        &with(&["--method", "l1-unstructured", "--sparsity=-0.2"]),
        &["--sparsity"],
    );
    fails(
        tmp.path(),
        &with(&["--method", "l2", "--sparsity", "0.5"]),
        &["--method", "l1-unstructured"],
    );
    fails(
        tmp.path(),
        &with(&[
            "--method",
            "l1-unstructured",
            "--sparsity",
            "0.5",
            "--layers",
            "layers.2",
        ]),
        &[
            "--layers",
            "layers.2",
            "layers.0, layers.3, layers.7, layers.9",
        ],
    );
    fails(
        tmp.path(),
        &with(&[
            "--method",
            "l1-structured",
            "--sparsity",
            "0.5",
            "--layers",
            "layers.9",
        ]),
        &["--layers", "output layer"],
    );
    fails(
        tmp.path(),
        &with(&["--method", "l1-structured", "--sparsity", "0.5", "--global"]),
        &["--global"],
    );
    // A student of another depth / layer types.
    fails(
        tmp.path(),
        &[
            "train",
            "--data",
            &data,
            "--init-from",
            &teacher,
            "--student",
            "cnn:c32-p-f128-10",
            "--out",
            "y",
        ],
        &["--init-from", "layers.4", "linear", "convolution"],
    );
    // A masked model initialises only its own spec.
    ok(
        tmp.path(),
        &with(&["--method", "l1-unstructured", "--sparsity", "0.5"]),
    );
    fails(
        tmp.path(),
        &[
            "train",
            "--data",
            &data,
            "--init-from",
            "x",
            "--student",
            "cnn:c16-p-c64-p-f128-10",
            "--out",
            "z",
        ],
        &["--init-from", "mask"],
    );
    assert!(!tmp.path().join("y").exists() && !tmp.path().join("z").exists());
}
