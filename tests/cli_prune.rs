//! `distill prune`, `distill train --init-from` (parameter and hybrid
//! distillation, fine-tuning with masks) and the `distill eval` comparison,
//! on the committed teacher and subset.

use std::fs;

use distill::model::io::read_safetensors;

use crate::util::*;

fn tensors(path: &std::path::Path) -> Vec<distill::model::io::HostTensor> {
    read_safetensors(path).unwrap().1
}

/// `prune` of `model` by `method` to `sparsity` into `out`, then `extra`.
fn prune_args<'a>(
    model: &'a str,
    method: &'a str,
    sparsity: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "prune",
        "--model",
        model,
        "--method",
        method,
        "--sparsity",
        sparsity,
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// One epoch at batch 64 continuing from the model in `init` (no
/// `--student`: its spec comes from `init`) into `out`, then `extra`.
fn fine_tune_args<'a>(
    data: &'a str,
    init: &'a str,
    out: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        "--data",
        data,
        "--init-from",
        init,
        "--epochs",
        "1",
        "--batch",
        "64",
        "--out",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

#[test]
fn structured_pruning_gives_a_smaller_model_that_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let out = ok(
        tmp.path(),
        &prune_args(
            &teacher,
            "l1-structured",
            "0.5",
            "p50",
            &["--data", &data, "-q"],
        ),
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
    // The table (a header and a row per model), then the pruned model
    // against the teacher on the same images.
    let rows: Vec<&str> = table.lines().take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{table}");
    let paired = table.lines().last().unwrap();
    assert!(
        paired.starts_with("p50") && table.contains("McNemar"),
        "{table}"
    );
}

#[test]
fn structured_pruning_meets_a_parameter_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = s(&teacher_dir());
    let budget = |n: &'static str, out: &'static str| {
        vec![
            "prune",
            "--model",
            &teacher,
            "--method",
            "l1-structured",
            "--max-params",
            n,
            "--out",
            out,
        ]
    };
    // 421,642 parameters to at most 50,000: the least sparsity that gets
    // there, 0.661 (at 0.660 the first dense layer keeps 44 units).
    let out = ok(tmp.path(), &budget("50000", "b50k"));
    assert!(out.contains("cnn:c11-p-c22-p-f43-10"), "{out}");
    assert!(out.contains("49147"), "{out}");
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("b50k/prune.json")).unwrap()).unwrap();
    assert_eq!(record["max_params"], 50000);
    assert_eq!(record["sparsity"], 0.661);
    assert_eq!(record["parameters"], 49147);
    let t = tensors(&tmp.path().join("b50k/model.safetensors"));
    let n: usize = t.iter().map(|t| t.data.len()).sum();
    assert_eq!(n, 49147);
    // The same sparsity by hand gives the same model.
    ok(
        tmp.path(),
        &prune_args(&teacher, "l1-structured", "0.661", "s661", &["-q"]),
    );
    assert_eq!(
        fs::read(tmp.path().join("b50k/model.safetensors")).unwrap(),
        fs::read(tmp.path().join("s661/model.safetensors")).unwrap()
    );
    // A budget no pruning reaches, a budget for unstructured pruning, both
    // amounts or neither: refused, naming the flags, writing nothing.
    fails(
        tmp.path(),
        &budget("50", "x"),
        &["--max-params", "cnn:c1-p-c1-p-f1-10", "has 90 parameters"],
    );
    let mut unstructured = budget("50000", "x");
    unstructured[4] = "l1-unstructured";
    fails(
        tmp.path(),
        &unstructured,
        &["--max-params", "l1-structured only"],
    );
    let mut both = budget("50000", "x");
    both.extend(["--sparsity", "0.5"]);
    fails(tmp.path(), &both, &["--max-params", "--sparsity"]);
    let neither = &budget("50000", "x")[..5];
    fails(
        tmp.path(),
        &[neither, &["--out", "x"]].concat(),
        &["--sparsity", "--max-params"],
    );
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn unstructured_masks_stay_exactly_zero_through_fine_tuning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let out = ok(
        tmp.path(),
        &prune_args(&teacher, "l1-unstructured", "0.9", "u90", &["-q"]),
    );
    assert!(out.contains("non-zero parameters"), "{out}");
    let masks = tensors(&tmp.path().join("u90/mask.safetensors"));
    assert_eq!(masks.len(), 4);
    // AdamW with decoupled weight decay: the case that would revive weights
    // if masks were not applied.
    let run = distill(
        tmp.path(),
        &fine_tune_args(
            &data,
            "u90",
            "ft",
            &[
                "--optimizer",
                "adamw",
                "--weight-decay",
                "0.05",
                "--lr",
                "1e-3",
            ],
        ),
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
        &cache_build_args(
            &teacher,
            &data,
            "cache",
            &["--split", "train", "--encoding", "f16", "-q"],
        ),
    );
    let args = |out: &'static str, init: bool| {
        let mut a = train_args(
            &data,
            "cnn:c8-p-c16-p-f32-10",
            out,
            &[
                "--cache", "cache", "--alpha", "0.5", "-T", "4", "--epochs", "1", "--batch", "64",
                "--lr", "3e-4",
            ],
        );
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
    let card = |dir: &str| {
        model_card(&tmp.path().join(dir))["test_accuracy"]
            .as_f64()
            .unwrap()
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
    // The output is never the model being pruned, nor a trained model.
    let model = ["--method", "l1-unstructured", "--sparsity", "0.5"];
    let into = |out: &'static str| [&["prune", "--model", "m", "--out", out][..], &model].concat();
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-16-10", "m", &["--epochs", "1", "-q"]),
    );
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-16-10", "m2", &["--epochs", "1", "-q"]),
    );
    let weights = || fs::read(tmp.path().join("m/model.safetensors")).unwrap();
    let before = weights();
    fails(tmp.path(), &into("m"), &["--out", "being pruned"]);
    fails(tmp.path(), &into("m2"), &["--out", "did not write"]);
    for here in [".", "./", ".."] {
        fails(
            tmp.path(),
            &into(here),
            &[
                "--out",
                "is the current or a parent directory",
                "name a new directory",
            ],
        );
    }
    assert_eq!(weights(), before);
    assert!(!tmp.path().join("m/mask.safetensors").exists());
    // An earlier pruned model of other settings is replaced only with
    // --overwrite; a rerun of the same settings replaces its own.
    ok(tmp.path(), &into("p"));
    ok(tmp.path(), &into("p"));
    // A pruned model records no split of its own to validate on.
    fails(
        tmp.path(),
        &["eval", "--data", &data, "--model", "p", "--split", "val"],
        &[
            "p: is a pruned model without a card",
            "evaluate its source model",
        ],
    );
    let structured = [
        "prune",
        "--model",
        "m",
        "--out",
        "p",
        "--method",
        "l1-structured",
    ];
    let half = [&structured[..], &["--sparsity", "0.5"]].concat();
    fails(
        tmp.path(),
        &half,
        &["--out", "other settings", "its method is", "--overwrite"],
    );
    assert!(tmp.path().join("p/mask.safetensors").exists());
    ok(tmp.path(), &[&half[..], &["--overwrite"]].concat());
    assert!(!tmp.path().join("p/mask.safetensors").exists());
    fails(tmp.path(), &into("m2/model.json"), &["--out", "is a file"]);
    // A sparsity that removes every weight of a layer (160 in layers.2 of
    // mlp:784-16-10) is refused, by prune and by a training schedule.
    let emptying = [
        "prune",
        "--model",
        "m",
        "--out",
        "e",
        "--method",
        "l1-unstructured",
    ];
    fails(
        tmp.path(),
        &[&emptying[..], &["--sparsity", "0.999"]].concat(),
        &["--sparsity", "removes all 160 weights of layers.2.weight"],
    );
    assert!(!tmp.path().join("e").exists());
    fails(
        tmp.path(),
        &train_args(
            &data,
            "mlp:784-16-10",
            "t",
            &["--epochs", "1", "--prune-schedule", "final=0.999", "-q"],
        ),
        &[
            "--prune-schedule",
            "removes all 160 weights of layers.2.weight",
        ],
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
        &train_args(&data, "cnn:c32-p-f128-10", "y", &["--init-from", &teacher]),
        &["--init-from", "layers.4", "linear", "convolution"],
    );
    // A masked model initialises only its own spec.
    ok(
        tmp.path(),
        &with(&["--method", "l1-unstructured", "--sparsity", "0.5"]),
    );
    fails(
        tmp.path(),
        &train_args(&data, "cnn:c16-p-c64-p-f128-10", "z", &["--init-from", "x"]),
        &["--init-from", "mask"],
    );
    assert!(!tmp.path().join("y").exists() && !tmp.path().join("z").exists());
}

/// Names in `dir`, sorted.
fn names(dir: &std::path::Path) -> Vec<String> {
    let mut n: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// `prune` refuses bad arguments before it takes the lock beside `--out`,
/// leaves no lock file when it ends, refuses a second run while one holds
/// the lock, and does not take lock files for foreign content.
#[test]
fn prune_leaves_no_lock_file_and_refuses_before_taking_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-16-10", "m", &["--epochs", "1", "-q"]),
    );
    let prune = |out: &'static str, sparsity: &'static str| {
        prune_args("m", "l1-unstructured", sparsity, out, &["-q"])
    };
    fails(tmp.path(), &prune("m", "0.5"), &["--out", "being pruned"]);
    assert_eq!(names(tmp.path()), ["m"]);
    fails(
        tmp.path(),
        &prune("sub/e", "0.999"),
        &["--sparsity", "removes all 160 weights"],
    );
    assert_eq!(names(tmp.path()), ["m"]);
    ok(tmp.path(), &prune("sub/p", "0.5"));
    assert_eq!(names(&tmp.path().join("sub")), ["p"]);
    // While another run holds the lock: refused, naming it; its file stays.
    let lock = tmp.path().join("sub/.p.lock");
    let held = fs::File::create(&lock).unwrap();
    fs2::FileExt::try_lock_exclusive(&held).unwrap();
    fails(
        tmp.path(),
        &prune("sub/p", "0.5"),
        &["--out", "another `distill prune` is writing", ".p.lock"],
    );
    drop(held);
    assert_eq!(names(&tmp.path().join("sub")), [".p.lock", "p"]);
    // A lock file a killed run left is taken over and removed.
    ok(tmp.path(), &prune("sub/p", "0.5"));
    assert_eq!(names(&tmp.path().join("sub")), ["p"]);
    // The parent as the output: lock files in it are not foreign content.
    fs::write(&lock, b"").unwrap();
    let e = fails(
        tmp.path(),
        &prune("sub", "0.5"),
        &["--out", "holds files `distill prune` does not write (p)"],
    );
    assert!(!e.contains(".p.lock"), "{e}");
    fs::remove_file(&lock).unwrap();
    assert_eq!(names(tmp.path()), ["m", "sub"]);
}

/// A schedule whose final sparsity is below the starting masks' would
/// mask nothing (masks only grow): refused naming the flag and both
/// sparsities, before the run writes anything.
#[test]
fn a_schedule_below_the_starting_masks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-16-10", "m", &["--epochs", "1", "-q"]),
    );
    ok(
        tmp.path(),
        &prune_args("m", "l1-unstructured", "0.5", "p50", &["-q"]),
    );
    for schedule in ["final=0.2", "final=0.2,global"] {
        fails(
            tmp.path(),
            &fine_tune_args(&data, "p50", "f", &["--prune-schedule", schedule, "-q"]),
            &[
                "--prune-schedule",
                "final=0.2 is below the 50.0% of the masks the run starts from",
                "6352 of 12704 weights masked",
                "masks only grow",
            ],
        );
        assert!(!tmp.path().join("f").exists());
    }
    // The masks' own sparsity is accepted, and keeps them as they were.
    ok(
        tmp.path(),
        &fine_tune_args(&data, "p50", "f", &["--prune-schedule", "final=0.5", "-q"]),
    );
    assert_eq!(
        zeros(&tensors(&tmp.path().join("f/mask.safetensors"))),
        zeros(&tensors(&tmp.path().join("p50/mask.safetensors")))
    );
}

/// Structured pruning of a model with no hidden units or channels would
/// remove nothing: refused naming `--method`, with nothing written.
#[test]
fn structured_pruning_of_a_model_without_hidden_units_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    for (student, dir) in [
        ("mlp:784-10", "lin"),
        ("cnn:gap-10", "gap"),
        ("cnn:bn-10", "bn"),
    ] {
        ok(
            tmp.path(),
            &train_args(&data, student, dir, &["--epochs", "1", "-q"]),
        );
        let refusal = format!("{student} has none it can remove");
        fails(
            tmp.path(),
            &prune_args(dir, "l1-structured", "0.9", "out", &["-q"]),
            &[
                "--method",
                "no hidden dense layer",
                &refusal,
                "l1-unstructured",
            ],
        );
        fails(
            tmp.path(),
            &[
                "prune",
                "--model",
                dir,
                "--method",
                "l1-structured",
                "--max-params",
                "100",
                "--out",
                "out",
            ],
            &["--method", &refusal],
        );
    }
    assert_eq!(names(tmp.path()), ["bn", "gap", "lin"]);
    // A normalisation chosen alone has no channels of its own.
    ok(
        tmp.path(),
        &train_args(&data, "cnn:c4-bn-p-10", "c", &["--epochs", "1", "-q"]),
    );
    fails(
        tmp.path(),
        &prune_args(
            "c",
            "l1-structured",
            "0.5",
            "out",
            &["--layers", "layers.2"],
        ),
        &["--layers", "layers.2 (batchnorm", "use some of layers.0"],
    );
    assert!(!tmp.path().join("out").exists());
}

/// Zeros per mask tensor, by name.
fn zeros(masks: &[distill::model::io::HostTensor]) -> Vec<(String, usize, usize)> {
    masks
        .iter()
        .map(|m| {
            let z = m.data.iter().filter(|v| **v == 0.0).count();
            (m.name.clone(), z, m.data.len())
        })
        .collect()
}

#[test]
fn gradual_pruning_reaches_its_sparsity_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // 2,000 samples at batch 64: 32 steps per epoch, 64 in all; the ramp
    // ends at step 48, in the second epoch.
    let args = |out: &'static str, extra: &[&'static str]| {
        let settings = [
            "--epochs",
            "2",
            "--batch",
            "64",
            "--prune-schedule",
            "final=0.75,end=0.75,every=4",
        ];
        train_args(
            &data,
            "mlp:784-64-10",
            out,
            &[&settings[..], extra].concat(),
        )
    };
    ok(tmp.path(), &args("a", &[]));
    let masks = tensors(&tmp.path().join("a/mask.safetensors"));
    let weights = tensors(&tmp.path().join("a/model.safetensors"));
    // Per-layer thresholds: round(0.75 * n) zeros in each weight.
    assert_eq!(
        zeros(&masks),
        vec![
            ("layers.0.weight".to_string(), 37_632, 50_176),
            ("layers.2.weight".to_string(), 480, 640),
        ]
    );
    for m in &masks {
        let w = weights.iter().find(|t| t.name == m.name).unwrap();
        for (keep, x) in m.data.iter().zip(&w.data) {
            assert_eq!(*keep == 0.0, x.to_bits() == 0.0f32.to_bits(), "{}", m.name);
        }
    }
    // The sparsity rises during the first epoch and is final in the second.
    let metrics: Vec<serde_json::Value> = fs::read_to_string(tmp.path().join("a/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sparsity: Vec<f64> = metrics
        .iter()
        .map(|m| m["weight_sparsity"].as_f64().unwrap())
        .collect();
    assert!(sparsity[0] > 0.3 && sparsity[0] < 0.74, "{sparsity:?}");
    assert!((sparsity[1] - 0.75).abs() < 1e-3, "{sparsity:?}");
    let card = fs::read_to_string(tmp.path().join("a/model.json")).unwrap();
    assert!(card.contains("prune_schedule"), "{card}");
    // Killed between mask updates, then resumed: the same weights and mask.
    ok(
        tmp.path(),
        &args(
            "b",
            &["--checkpoint-every", "5", "--stop-after-steps", "23"],
        ),
    );
    ok(
        tmp.path(),
        &args("b", &["--checkpoint-every", "5", "--resume"]),
    );
    for f in ["model.safetensors", "mask.safetensors"] {
        assert_eq!(
            fs::read(tmp.path().join("a").join(f)).unwrap(),
            fs::read(tmp.path().join("b").join(f)).unwrap(),
            "{f} of the resumed run differs"
        );
    }
    // Continuing from a pruned model: its mask is the start and stays in force.
    ok(
        tmp.path(),
        &fine_tune_args(
            &data,
            "a",
            "c",
            &["--prune-schedule", "final=0.9,global,every=8"],
        ),
    );
    let more = tensors(&tmp.path().join("c/mask.safetensors"));
    for (a, b) in masks.iter().zip(&more) {
        for (x, y) in a.data.iter().zip(&b.data) {
            assert!(*y <= *x, "{}: a pruned weight came back", a.name);
        }
    }
    let total: usize = more.iter().map(|m| m.data.len()).sum();
    let z: usize = zeros(&more).iter().map(|(_, z, _)| z).sum();
    assert_eq!(z, (0.9 * total as f64).round() as usize);
    // Per layer, each layer ramps from its own starting sparsity: from c's
    // mask (layer 0 above 90%, layer 2 below), final=0.8 raises layer 2 to
    // 80% and leaves layer 0 as it was.
    let by_name = |m: &[distill::model::io::HostTensor], n: &str| {
        zeros(m)
            .into_iter()
            .find(|(name, _, _)| name == n)
            .unwrap()
            .1
    };
    assert!(by_name(&more, "layers.0.weight") > 45_158);
    assert!(by_name(&more, "layers.2.weight") < 512);
    ok(
        tmp.path(),
        &fine_tune_args(&data, "c", "d", &["--prune-schedule", "final=0.8,every=8"]),
    );
    let last = tensors(&tmp.path().join("d/mask.safetensors"));
    assert_eq!(
        by_name(&last, "layers.0.weight"),
        by_name(&more, "layers.0.weight")
    );
    assert_eq!(by_name(&last, "layers.2.weight"), 512);
    // Bad schedules name the flag.
    for (schedule, needles) in [
        (
            "final=1.2",
            &["--prune-schedule", "final=1.2", "[0, 1)"][..],
        ),
        ("end=0.5", &["--prune-schedule", "final=S"][..]),
    ] {
        fails(
            tmp.path(),
            &train_args(
                &data,
                "mlp:784-64-10",
                "bad",
                &["--prune-schedule", schedule],
            ),
            needles,
        );
    }
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn structured_pruning_of_a_masked_model_keeps_its_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let teacher = s(&teacher_dir());
    let prune = |model: &str, method: &str, out: &str| {
        ok(tmp.path(), &prune_args(model, method, "0.5", out, &["-q"]))
    };
    prune(&teacher, "l1-unstructured", "u50");
    prune("u50", "l1-structured", "u50s50");
    let masks = tensors(&tmp.path().join("u50s50/mask.safetensors"));
    let weights = tensors(&tmp.path().join("u50s50/model.safetensors"));
    assert_eq!(masks.len(), 4);
    let mut masked = 0;
    for m in &masks {
        let w = weights.iter().find(|t| t.name == m.name).unwrap();
        assert_eq!(m.shape, w.shape, "{}", m.name);
        for (keep, x) in m.data.iter().zip(&w.data) {
            if *keep == 0.0 {
                assert_eq!(x.to_bits(), 0.0f32.to_bits(), "{}", m.name);
                masked += 1;
            }
        }
    }
    // The kept units are the largest ones, whose weights survived the first
    // pruning more often than not: some, but fewer than half, are masked.
    let total: usize = masks.iter().map(|m| m.data.len()).sum();
    assert!(masked > 0 && masked * 2 < total, "{masked} of {total}");
}

/// Gradual pruning per layer trains a model with batch norm (whose scale
/// and shift are not pruned), and a global schedule that would empty a
/// layer stops naming the schedule, not flags `train` does not have.
#[test]
fn gradual_pruning_skips_normalisations_and_names_its_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let schedule = |student: &'static str, plan: &'static str, out: &'static str| {
        let extra = [
            "--epochs",
            "2",
            "--batch",
            "256",
            "--prune-schedule",
            plan,
            "-q",
        ];
        train_args(&data, student, out, &extra)
    };
    ok(
        tmp.path(),
        &schedule("cnn:c4-bn-p-10", "final=0.5,every=2", "bn"),
    );
    let masks = tensors(&tmp.path().join("bn/mask.safetensors"));
    assert!(!masks.is_empty());
    assert!(
        masks.iter().all(|m| m.shape.len() > 1),
        "only kernels and matrices are masked"
    );
    let err = fails(
        tmp.path(),
        &schedule("mlp:784-16-10", "final=0.999,global,every=2", "g"),
        &[
            "--prune-schedule",
            "final=0.999,global empties a layer by step",
        ],
    );
    assert!(
        !err.contains("--layers") && !err.contains("--sparsity"),
        "{err}"
    );
}
