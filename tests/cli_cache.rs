//! Phase one and phase two end to end on the committed subset and teacher:
//! build, inspect, verify, import, distil, and the errors users meet.

use std::fs;

use crate::util::*;

fn build(cwd: &std::path::Path, split: &str, enc: &str, out: &str, extra: &[&str]) -> String {
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let flags = [&["--split", split, "--encoding", enc, "-q"][..], extra].concat();
    ok(cwd, &cache_build_args(&teacher, &data, out, &flags))
}

#[test]
fn build_inspect_verify_and_detect_a_flipped_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build(
        tmp.path(),
        "train",
        "f32",
        "c32",
        &["--block-records", "256", "--shard-kib", "32"],
    );
    assert!(out.contains("2000 samples"), "{out}");
    let inspect = ok(tmp.path(), &["cache", "inspect", "c32"]);
    assert!(inspect.contains("2000"), "{inspect}");
    ok(tmp.path(), &["cache", "verify", "c32"]);
    // Several shards: flip one bit in the middle of the second shard.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("c32/manifest.json")).unwrap())
            .unwrap();
    let shards = manifest["shards"].as_array().unwrap();
    assert!(shards.len() >= 2, "expected several shards: {manifest}");
    let name = shards[1]["file"].as_str().unwrap().to_string();
    let path = tmp.path().join("c32").join(&name);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0x10;
    fs::write(&path, bytes).unwrap();
    fails(tmp.path(), &["cache", "verify", "c32"], &[&name]);
    // A missing shard is named too.
    fs::remove_file(&path).unwrap();
    fails(tmp.path(), &["cache", "verify", "c32"], &[&name]);
}

#[test]
fn encodings_report_fidelity_and_rebuild_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    for enc in ["f32", "f16", "q8", "topk:3"] {
        let out = build(tmp.path(), "test", enc, enc, &[]);
        assert!(
            out.contains("bytes/sample") && out.contains("top-1 agreement"),
            "{out}"
        );
    }
    build(tmp.path(), "test", "f16", "again", &[]);
    assert_eq!(
        fs::read(tmp.path().join("f16/manifest.json")).unwrap(),
        fs::read(tmp.path().join("again/manifest.json")).unwrap()
    );
}

/// One quiet epoch of the small MLP distilled from `cache` into `out`.
fn distil_args<'a>(data: &'a str, cache: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let flags = [
        // The tests train into one directory with changing settings.
        &[
            "--cache",
            cache,
            "--epochs",
            "1",
            "--batch",
            "64",
            "-q",
            "--overwrite",
        ][..],
        extra,
    ]
    .concat();
    train_args(data, "mlp:784-32-10", out, &flags)
}

/// The loss of one batch in f64, written from the formulas in the docs of
/// `src/train/loss.rs` (not from its code):
/// `alpha * CE(y, s) + (1 - alpha) * soft`, soft being KD's
/// `T^2 KL(p_T || softmax(s / T))`, MSE's `mean((s - z)^2)` with
/// `z = T lp_T` centred per row, or DKD's `T^2 (TCKD + 8 NCKD)`; pseudo is
/// CE against the teacher's argmax. `swap` exchanges the teacher's top
/// class and the label where they differ. Means over the batch.
#[allow(clippy::too_many_arguments)]
fn reference_loss(
    kind: &str,
    alpha: f64,
    swap: bool,
    t: f64,
    student: &[f32],
    teacher: &[f32],
    labels: &[u32],
    c: usize,
) -> f64 {
    let log_softmax = |x: &[f64]| -> Vec<f64> {
        let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        x.iter().map(|v| v - lse).collect()
    };
    let argmax = |x: &[f64]| {
        let mut best = 0;
        for (j, v) in x.iter().enumerate() {
            if *v > x[best] {
                best = j;
            }
        }
        best
    };
    let rows = labels.len();
    let mut total = 0.0;
    for i in 0..rows {
        let s: Vec<f64> = student[i * c..][..c].iter().map(|&v| v as f64).collect();
        let mut lp: Vec<f64> = teacher[i * c..][..c].iter().map(|&v| v as f64).collect();
        let y = labels[i] as usize;
        let ls = log_softmax(&s);
        if kind == "pseudo" {
            total += -ls[argmax(&lp)];
            continue;
        }
        if swap && argmax(&lp) != y {
            let k = argmax(&lp);
            lp.swap(y, k);
        }
        let ce = -ls[y];
        let st: Vec<f64> = s.iter().map(|v| v / t).collect();
        let lq = log_softmax(&st);
        let soft = match kind {
            "kd" => t * t * (0..c).map(|j| lp[j].exp() * (lp[j] - lq[j])).sum::<f64>(),
            "mse" => {
                let z: Vec<f64> = lp.iter().map(|v| v * t).collect();
                let mean = z.iter().sum::<f64>() / c as f64;
                (0..c).map(|j| (s[j] - (z[j] - mean)).powi(2)).sum::<f64>() / c as f64
            }
            "dkd" => {
                let (pt, qt) = (lp[y].exp(), lq[y].exp());
                let tckd = pt * (pt / qt).ln() + (1.0 - pt) * ((1.0 - pt) / (1.0 - qt)).ln();
                let nckd: f64 = (0..c)
                    .filter(|&j| j != y)
                    .map(|j| {
                        let p = lp[j].exp() / (1.0 - pt);
                        let q = lq[j].exp() / (1.0 - qt);
                        p * (p / q).ln()
                    })
                    .sum();
                t * t * (tckd + 8.0 * nckd)
            }
            other => panic!("no reference for {other}"),
        };
        total += match alpha {
            a if a >= 1.0 => ce,
            a if a <= 0.0 => soft,
            a => a * ce + (1.0 - a) * soft,
        };
    }
    total / rows as f64
}

/// DIST's loss of one batch in f64, from the formula in the docs of
/// `src/train/dist.rs`: `alpha * CE(y, s) + (1 - alpha) * T^2 * (inter +
/// intra)`, one minus the mean Pearson correlation of `softmax(s / T)` and
/// the teacher's `p_T`, per row (inter) and per column across the batch
/// (intra). Not a mean of per-image losses: the intra term reads the batch.
fn reference_dist_loss(
    alpha: f64,
    t: f64,
    student: &[f32],
    teacher: &[f32],
    labels: &[u32],
    c: usize,
) -> f64 {
    let rows = labels.len();
    let mut q = vec![0f64; rows * c];
    let mut ce = 0.0;
    for i in 0..rows {
        let s: Vec<f64> = student[i * c..][..c].iter().map(|&v| v as f64).collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        ce += lse - s[labels[i] as usize];
        let z: f64 = s.iter().map(|v| ((v - m) / t).exp()).sum();
        for j in 0..c {
            q[i * c + j] = ((s[j] - m) / t).exp() / z;
        }
    }
    let p: Vec<f64> = teacher.iter().map(|&v| (v as f64).exp()).collect();
    let pearson = |a: &[f64], b: &[f64]| {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let na = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>().sqrt();
        let nb = b.iter().map(|y| (y - mb).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb + 1e-8)
    };
    let inter = 1.0
        - (0..rows)
            .map(|i| pearson(&q[i * c..][..c], &p[i * c..][..c]))
            .sum::<f64>()
            / rows as f64;
    let column = |v: &[f64], j: usize| (0..rows).map(|i| v[i * c + j]).collect::<Vec<_>>();
    let intra = 1.0
        - (0..c)
            .map(|j| pearson(&column(&q, j), &column(&p, j)))
            .sum::<f64>()
            / c as f64;
    alpha * ce / rows as f64 + (1.0 - alpha) * t * t * (inter + intra)
}

/// Every loss combination trains, and the loss it reports is the loss of
/// its formula: one epoch from known initial weights at a learning rate so
/// small (1e-12) that the weights do not move, so the epoch's train loss is
/// the mean loss of those weights over every batch of the cache's shuffled
/// epoch, with targets re-tempered from T = 4 to T = 2, computed here from
/// the formulas over the whole training set. A wrong formula, weight,
/// temperature or swap, or targets paired with other images, changes it.
#[test]
fn distillation_runs_and_pairing_is_checked() {
    use distill::cache::CacheReader;
    use distill::data::{Dataset, Split};
    use distill::model::io::{load_weights, save_weights};
    use distill::model::{ModelSpec, Network};

    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    build(tmp.path(), "train", "f16", "train-cache", &[]);
    build(tmp.path(), "test", "f16", "test-cache", &[]);
    let spec = ModelSpec::parse("mlp:784-32-10").unwrap();
    let dev = dfdx::prelude::Cpu::default();
    let init = tmp.path().join("init");
    fs::create_dir_all(&init).unwrap();
    save_weights(
        &Network::new(spec, dev.clone(), 42),
        &init.join("model.safetensors"),
    )
    .unwrap();
    let student = load_weights(&init.join("model.safetensors"), None, dev).unwrap();
    let train = Dataset::open(&small_data(), Split::Train).unwrap();
    let n = train.len();
    let all: Vec<usize> = (0..n).collect();
    let mut x = vec![0f32; n * train.sample_len()];
    train.fill_inputs(&all, &mut x);
    let logits = student.predict(x, n).as_vec();
    let labels = train.labels().unwrap().to_vec();
    // SAFETY: the cache was built above and nothing modifies it.
    let cache = unsafe { CacheReader::open(&tmp.path().join("train-cache")) }.unwrap();
    let teacher = cache.read_all(2.0, false).unwrap().logprobs;
    // One epoch at a negligible learning rate from `init`, over the whole
    // training set (no validation split); the first epoch's training loss
    // and the card's loss settings.
    let first_loss = |batch: &str, loss: &str, alpha: &str, errors: &str| -> f64 {
        let flags = [
            "--cache",
            "train-cache",
            "--init-from",
            "init",
            "--epochs",
            "1",
            "--batch",
            batch,
            "--lr",
            "1e-12",
            "-q",
            "--loss",
            loss,
            "--alpha",
            alpha,
            "--teacher-errors",
            errors,
            "-T",
            "2",
            "--test-cache",
            "test-cache",
            "--val-fraction",
            "0",
            "--overwrite",
        ];
        let out = ok(
            tmp.path(),
            &train_args(&data, "mlp:784-32-10", "run", &flags),
        );
        assert!(out.contains("final test accuracy"), "{out}");
        let card = model_card(&tmp.path().join("run"));
        assert_eq!(card["config"]["loss"]["kind"], loss, "{card}");
        assert_eq!(card["config"]["loss"]["teacher_errors"], errors, "{card}");
        let metrics = fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
        let first: serde_json::Value =
            serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        first["train_loss"].as_f64().unwrap()
    };
    let mut seen = Vec::new();
    for (loss, alpha, errors) in [
        ("kd", "0.5", "keep"),
        ("kd", "0", "keep"),
        ("kd", "0.5", "swap"),
        ("dkd", "0", "swap"),
        ("mse", "0.5", "keep"),
        ("dkd", "0.5", "keep"),
        ("pseudo", "0", "keep"),
    ] {
        let got = first_loss("100", loss, alpha, errors);
        let want = reference_loss(
            loss,
            alpha.parse().unwrap(),
            errors == "swap",
            2.0,
            &logits,
            &teacher,
            &labels,
            10,
        );
        // f32 arithmetic over batches of 100 (DKD sums its host constant in
        // f32 over cancelling terms); swapping the few wrong rows of KD
        // moves the loss by 2.6e-5 of itself.
        let tol = if loss == "dkd" { 3e-5 } else { 2e-6 };
        assert!(
            (got - want).abs() <= tol * want.abs(),
            "{loss} alpha {alpha} {errors}: train loss {got}, formula {want}"
        );
        seen.push(got);
    }
    // The combinations are not one loss under seven names.
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert!((a - b).abs() > 1e-5, "{seen:?}");
        }
    }
    // DIST's intra-class term reads the whole batch, so its formula is
    // checked on one batch of the whole training set.
    let got = first_loss(&n.to_string(), "dist", "0.5", "keep");
    let want = reference_dist_loss(0.5, 2.0, &logits, &teacher, &labels, 10);
    assert!(
        (got - want).abs() <= 2e-6 * want.abs(),
        "dist: train loss {got}, formula {want}"
    );
    assert!(
        seen.iter().all(|a| (a - got).abs() > 1e-5),
        "{seen:?} {got}"
    );
    for (extra, needles) in [
        (
            &["--loss", "dkd", "--alpha", "0.5", "--dkd-weights", "1"][..],
            ["--dkd-weights", "TCKD,NCKD"],
        ),
        (
            &["--alpha", "0.5", "--teacher-errors", "fix"][..],
            ["--teacher-errors", "fix"],
        ),
    ] {
        fails(
            tmp.path(),
            &distil_args(&data, "train-cache", "run", extra),
            &needles,
        );
    }
    let card = model_card(&tmp.path().join("run"));
    assert!(
        card["cache"]["id"].as_str().is_some_and(|s| !s.is_empty()),
        "{card}"
    );
    assert!(card["teacher_agreement"].as_f64().is_some(), "{card}");
    // A cache of the test split paired with the training data.
    fails(
        tmp.path(),
        &distil_args(&data, "test-cache", "run", &["--alpha", "0.5"]),
        &[
            "--cache: test-cache holds the teacher's outputs on the test split",
            "--split train",
        ],
    );
    // A student whose outputs differ from the cache's classes.
    let mut a = distil_args(&data, "train-cache", "run", &["--alpha", "0.5"]);
    a[4] = "mlp:784-32-12"; // the student
    fails(tmp.path(), &a, &["12", "10 classes"]);
}

#[test]
fn unlabelled_data_trains_only_on_teacher_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 300;
    let dir = tmp.path().join("unlabelled");
    fs::create_dir(&dir).unwrap();
    let pixels: Vec<u8> = (0..n * 784).map(|i| ((i * 31) % 251) as u8).collect();
    write_npy(&dir.join("train-images.npy"), "|u1", &[n, 784], &pixels);
    let d = s(&dir);
    let teacher = s(&teacher_dir());
    ok(
        tmp.path(),
        &cache_build_args(&teacher, &d, "u-cache", &["-q"]),
    );
    fails(
        tmp.path(),
        &distil_args(&d, "u-cache", "run", &["--alpha", "0.5"]),
        &["--alpha", "unlabelled"],
    );
    for (extra, names) in [
        (["--loss", "dkd"], ["--loss", "unlabelled"]),
        (
            ["--teacher-errors", "swap"],
            ["--teacher-errors", "unlabelled"],
        ),
    ] {
        let mut a = distil_args(&d, "u-cache", "run", &["--alpha", "0"]);
        a.extend_from_slice(&extra);
        fails(tmp.path(), &a, &names);
    }
    ok(
        tmp.path(),
        &distil_args(&d, "u-cache", "run", &["--alpha", "0"]),
    );
    // Pseudo-labels alone, with no hard-label weight to give: the first
    // line says so, the card records alpha 0, and an alpha is refused by
    // name before anything is written.
    let mut args = distil_args(&d, "u-cache", "pseudo", &["--loss", "pseudo"]);
    args.retain(|&a| a != "-q");
    let out = distill(tmp.path(), &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.lines().next().is_some_and(
            |l| l.ends_with("(loss pseudo: the teacher's argmax as the label, read at T 1)")
        ),
        "{stderr}"
    );
    let loss = &model_card(&tmp.path().join("pseudo"))["config"]["loss"];
    assert_eq!(loss["alpha"], 0.0, "{loss}");
    let mut args = distil_args(
        &d,
        "u-cache",
        "pseudo-a",
        &["--loss", "pseudo", "--alpha", "0.5"],
    );
    args.retain(|&a| a != "-q");
    let err = fails(tmp.path(), &args, &["--alpha", "pseudo", "argmax"]);
    assert!(!err.contains("distilling"), "{err}");
    assert!(!tmp.path().join("pseudo-a").exists());
}

#[test]
fn import_of_logits_and_bad_values() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let n = 1000;
    let logits: Vec<f32> = (0..n * 10)
        .map(|i| ((i * 7) % 13) as f32 * 0.5 - 3.0)
        .collect();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&tmp.path().join("logits.npy"), "<f4", &[n, 10], &bytes);
    let out = ok(
        tmp.path(),
        &cache_import_args(
            "logits.npy",
            &data,
            "test",
            "2",
            "imp",
            &["--encoding", "f32"],
        ),
    );
    assert!(out.contains("1000 samples"), "{out}");
    ok(tmp.path(), &["cache", "verify", "imp"]);
    // Wrong row count for the training split.
    fails(
        tmp.path(),
        &cache_import_args("logits.npy", &data, "train", "2", "imp2", &[]),
        &["logits.npy", "1000 rows"],
    );
    // NaN logits are refused, naming the file.
    let mut bad = logits.clone();
    bad[55] = f32::NAN;
    let bytes: Vec<u8> = bad.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&tmp.path().join("nan.npy"), "<f4", &[n, 10], &bytes);
    fails(
        tmp.path(),
        &cache_import_args("nan.npy", &data, "test", "2", "imp3", &[]),
        &["nan.npy"],
    );
    assert!(!tmp.path().join("imp3/manifest.json").exists());
    // Bad flags.
    fails(
        tmp.path(),
        &cache_import_args("logits.npy", &data, "test", "0", "x", &[]),
        &["--temperature"],
    );
    fails(
        tmp.path(),
        &cache_import_args("logits.npy", &data, "test", "2", "x", &["--encoding", "q4"]),
        &["--encoding"],
    );
    // A teacher of more classes than the labels reach (here 11 for labels
    // 0-9: a split without the last class, or a teacher of a superset)
    // pairs with the data; its students have its 11 outputs.
    let rows = 2000;
    let wide: Vec<u8> = (0..rows * 11)
        .flat_map(|i| (((i * 5) % 11) as f32 * 0.3).to_le_bytes())
        .collect();
    write_npy(&tmp.path().join("wide.npy"), "<f4", &[rows, 11], &wide);
    ok(
        tmp.path(),
        &cache_import_args("wide.npy", &data, "train", "2", "wide", &["-q"]),
    );
    let distil = |student| {
        let extra = ["--cache", "wide", "--epochs", "1", "-q"];
        train_args(&data, student, "w", &extra)
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let ten = distil("mlp:784-16-10");
    fails(
        tmp.path(),
        &ten.iter().map(String::as_str).collect::<Vec<_>>(),
        &["--student", "10 outputs but the cache holds 11 classes"],
    );
    let eleven = distil("mlp:784-16-11");
    ok(
        tmp.path(),
        &eleven.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn an_ensemble_of_two_teachers_is_one_cache_a_student_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    build(tmp.path(), "train", "f16", "a", &[]);
    build(tmp.path(), "test", "f16", "a-test", &[]);
    // A second teacher, external, with logits that favour class 0.
    let n = 2000;
    let logits: Vec<f32> = (0..n * 10)
        .map(|i| {
            if i % 10 == 0 {
                2.0
            } else {
                ((i * 7) % 13) as f32 * 0.2
            }
        })
        .collect();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&tmp.path().join("b.npy"), "<f4", &[n, 10], &bytes);
    ok(
        tmp.path(),
        &cache_import_args(
            "b.npy",
            &data,
            "train",
            "2",
            "b",
            &["-q", "--teacher-spec", "external"],
        ),
    );
    let out = ok(
        tmp.path(),
        &ensemble_args(&["a", "b", "-T", "4", "--weights", "3,1"], "ens"),
    );
    assert!(
        out.contains("cache ens (2000 samples, 10 classes, T 4, f16)"),
        "{out}"
    );
    assert!(out.contains("ensemble agrees with the labels on"), "{out}");
    assert!(out.contains("members: a "), "{out}");
    let inspect = ok(tmp.path(), &["cache", "inspect", "ens"]);
    assert!(inspect.contains("2000"), "{inspect}");
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("ens/manifest.json")).unwrap())
            .unwrap();
    let spec = manifest["teacher"]["spec"].as_str().unwrap();
    assert!(spec.starts_with("ensemble:prob(0.7500 cnn:"), "{spec}");
    assert!(spec.ends_with("0.2500 external)"), "{spec}");
    assert_eq!(manifest["teacher"]["source"], "a, b");
    ok(tmp.path(), &["cache", "verify", "ens"]);
    // A student distils from it like from any cache.
    ok(
        tmp.path(),
        &distil_args(&data, "ens", "run", &["--alpha", "0.5", "-T", "2"]),
    );
    assert!(tmp.path().join("run/model.safetensors").exists());
    // Refusals name what is wrong and write nothing.
    fails(
        tmp.path(),
        &ensemble_args(&["a", "a-test", "-T", "4"], "bad"),
        &["a-test", "dataset.split is test here but train in a"],
    );
    fails(
        tmp.path(),
        &ensemble_args(&["a", "b", "-T", "4", "--weights", "1"], "bad"),
        &["--weights", "1 weights given for 2 member caches"],
    );
    // The same member twice points to the flag that weighs one more.
    let err = fails(
        tmp.path(),
        &ensemble_args(&["a", "a", "-T", "4"], "bad"),
        &[
            "is the same cache as member 1",
            "give --weights to weigh one more",
        ],
    );
    assert!(!err.contains('`'), "{err}");
    fails(
        tmp.path(),
        &ensemble_args(&["a", "b", "-T", "4", "--combine", "median"], "bad"),
        &["--combine", "'median' is not a combining rule"],
    );
    fails(
        tmp.path(),
        &ensemble_args(&["a", "missing", "-T", "4"], "bad"),
        &["missing"],
    );
    assert!(!tmp.path().join("bad").exists());
}

/// `cache ensemble` with `args` (members and flags) into `out`.
fn ensemble_args<'a>(args: &[&'a str], out: &'a str) -> Vec<&'a str> {
    [&["cache", "ensemble"][..], args, &["--out", out]].concat()
}

#[test]
fn out_of_fold_targets_come_from_teachers_trained_on_the_other_folds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // Two teachers, each holding out one fold of two (seed 5).
    for k in 0..2 {
        let fold = format!("{k}/2");
        ok(
            tmp.path(),
            &train_args(
                &data,
                "mlp:784-32-10",
                &format!("t{k}"),
                &["--epochs", "1", "--seed", "5", "--val-fold", &fold, "-q"],
            ),
        );
        let card = model_card(&tmp.path().join(format!("t{k}")));
        assert_eq!(card["data"]["val_samples"], 1000);
        assert_eq!(card["config"]["val_fold"]["index"], k);
        assert_eq!(card["config"]["val_fraction"], 0.0);
        let teacher = format!("t{k}");
        ok(
            tmp.path(),
            &cache_build_args(&teacher, &data, &format!("c{k}"), &["-q"]),
        );
    }
    let out = ok(
        tmp.path(),
        &ensemble_args(&["c0", "c1", "-T", "4", "--out-of-fold"], "oof"),
    );
    assert!(
        out.contains("samples held out by each member's teacher: c0 1000, c1 1000; by none (combined from all): 0"),
        "{out}"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("oof/manifest.json")).unwrap())
            .unwrap();
    assert!(manifest["teacher"]["spec"]
        .as_str()
        .unwrap()
        .starts_with("ensemble:prob-oof("));
    ok(
        tmp.path(),
        &distil_args(&data, "oof", "run", &["--alpha", "0.1", "-T", "2"]),
    );
    // The teacher directories can be given; in the wrong number they are refused.
    let with_dirs = |dirs: &'static str, out: &'static str| {
        let args = [
            "c0",
            "c1",
            "-T",
            "4",
            "--out-of-fold",
            "--teacher-dirs",
            dirs,
        ];
        ensemble_args(&args, out)
    };
    ok(tmp.path(), &with_dirs("t0,t1", "oof2"));
    fails(
        tmp.path(),
        &with_dirs("t0", "bad"),
        &["--teacher-dirs", "1 directories given for 2 member caches"],
    );
    // Nor in the wrong order: each must be its member cache's teacher.
    fails(
        tmp.path(),
        &with_dirs("t1,t0", "bad"),
        &["t1/model.json", "is not the cache's teacher"],
    );
    // A teacher that trained on every sample has no out-of-fold outputs.
    ok(
        tmp.path(),
        &train_args(
            &data,
            "mlp:784-32-10",
            "t-all",
            &["--epochs", "1", "--val-fraction", "0", "-q"],
        ),
    );
    ok(
        tmp.path(),
        &cache_build_args("t-all", &data, "all", &["-q"]),
    );
    fails(
        tmp.path(),
        &ensemble_args(&["c0", "all", "-T", "4", "--out-of-fold"], "bad"),
        &["t-all/model.json", "held nothing out"],
    );
    // One trained on other data (the committed teacher: all 60,000 images).
    let committed = s(&teacher_dir());
    ok(
        tmp.path(),
        &cache_build_args(&committed, &data, "full", &["-q"]),
    );
    fails(
        tmp.path(),
        &ensemble_args(&["c0", "full", "-T", "4", "--out-of-fold"], "bad"),
        &["model.json", "the model trained on data", "(2000 samples)"],
    );
    // A fold and a fraction together are refused, as is a bad fold.
    fails(
        tmp.path(),
        &train_args(
            &data,
            "mlp:784-32-10",
            "x",
            &["--val-fold", "0/2", "--val-fraction", "0.2"],
        ),
        &["--val-fold"],
    );
    fails(
        tmp.path(),
        &train_args(&data, "mlp:784-32-10", "x", &["--val-fold", "2/2"]),
        &["--val-fold", "0 <= K < N"],
    );
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn online_teacher_matches_cached_distillation_closely() {
    // The same KD run with the teacher run on every batch ("online") and
    // read from an exact f32 cache: the targets agree to float rounding, so
    // the accuracies agree closely.
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    build(tmp.path(), "train", "f32", "exact", &[]);
    let acc = |dir: &str| {
        model_card(&tmp.path().join(dir))["test_accuracy"]
            .as_f64()
            .unwrap()
    };
    let run = |out, extra: &[&str]| {
        // Without input normalisation: two epochs of 16 steps are so short
        // that the normalised student, which learns faster, lands 2 points
        // apart between the two runs' batch orders.
        let base = [
            "--epochs",
            "2",
            "--alpha",
            "0.5",
            "-T",
            "4",
            "--normalize",
            "none",
            "-q",
        ];
        ok(
            tmp.path(),
            &train_args(&data, "mlp:784-32-10", out, &[&base[..], extra].concat()),
        )
    };
    run("cached", &["--cache", "exact"]);
    run("online", &["--online-teacher", teacher.as_str()]);
    assert!(
        (acc("cached") - acc("online")).abs() < 0.02,
        "{} vs {}",
        acc("cached"),
        acc("online")
    );
    // A baseline run's curves can be drawn beside a student's.
    run("cached2", &["--cache", "exact", "--baseline-run", "online"]);
    assert!(tmp.path().join("cached2/curves.png").exists());
}

#[test]
fn augmented_view_sets_hold_the_teachers_outputs_on_the_views_the_student_sees() {
    use dfdx::prelude::*;
    use distill::cache::{log_softmax_tempered, CacheViews};
    use distill::data::augment::Augment;
    use distill::data::{Dataset, Split};
    use distill::train::trainer::{epoch_augmentation, TrainConfig};

    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let aug = [
        "--augment",
        "flip,shift=2",
        "--views",
        "2",
        "--augment-seed",
        "5",
    ];
    build(tmp.path(), "train", "f32", "set", &aug);
    build(tmp.path(), "train", "f32", "plain", &[]);
    for v in 0..2 {
        assert!(tmp
            .path()
            .join(format!("set/view-{v}/manifest.json"))
            .exists());
    }
    // The stored outputs are the teacher's on the augmented images.
    let teacher = distill::model::io::load_weights(
        &teacher_dir().join("model.safetensors"),
        None,
        Cpu::default(),
    )
    .unwrap();
    let train = Dataset::open(&small_data(), Split::Train).unwrap();
    let set = unsafe { CacheViews::open(&tmp.path().join("set")) }.unwrap();
    let plain = unsafe { CacheViews::open(&tmp.path().join("plain")) }.unwrap();
    assert_eq!(set.views().len(), 2);
    assert_ne!(set.id(), plain.id());
    let a = Augment::parse("flip,shift=2").unwrap();
    let idx = [0usize, 7, 1999];
    let mut changed = 0;
    for v in 0..2u64 {
        let mut x = vec![0f32; idx.len() * train.sample_len()];
        train.fill_inputs(&idx, &mut x);
        a.apply_batch(5, v, &idx, train.sample_shape(), &mut x);
        let logits = teacher.predict(x, idx.len()).as_vec();
        let mut want = vec![0f32; logits.len()];
        log_softmax_tempered(&logits, 10, 4.0, &mut want).unwrap();
        let ids: Vec<u64> = idx.iter().map(|&i| i as u64).collect();
        let got = set.views()[v as usize]
            .read_samples(&ids, 4.0, false)
            .unwrap();
        let base = plain.first().read_samples(&ids, 4.0, false).unwrap();
        for (k, (g, w)) in got.logprobs.iter().zip(&want).enumerate() {
            assert!((g - w).abs() < 1e-4, "view {v} value {k}: {g} vs {w}");
            if (base.logprobs[k] - w).abs() > 1e-3 {
                changed += 1;
            }
        }
    }
    assert!(changed > 10, "the views look like the plain images");
    // The trainer shows epoch e the view e % 2, under the set's seed.
    let cfg: TrainConfig = serde_json::from_value(serde_json::json!({
        "spec": "mlp:784-32-10", "epochs": 3, "batch_size": 64, "seed": 1,
        "optimizer": {"kind": "adam", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9, "schedule": "cosine"},
        "loss": {"kind": "kd", "alpha": 0.5, "temperature": 4.0},
        "window_blocks": 8, "allow_topk_retemper": false
    }))
    .unwrap();
    for e in 0..4u64 {
        let (got, seed, view) = epoch_augmentation(&cfg, Some(&set), e).unwrap().unwrap();
        assert_eq!((got, seed, view), (a, 5, e % 2));
    }
    assert!(epoch_augmentation(&cfg, Some(&plain), 0).unwrap().is_none());

    // End to end: inspect, verify, train; the card names the set.
    let t = |cache: &'static str, out: &'static str, extra: &[&'static str]| {
        distil_args(
            &data,
            cache,
            out,
            &[&["--alpha", "0.5"][..], extra].concat(),
        )
    };
    let inspect = ok(tmp.path(), &["cache", "inspect", "set"]);
    assert!(
        inspect.contains("2 views of augment flip,shift=2 (seed 5)"),
        "{inspect}"
    );
    let verify = ok(tmp.path(), &["cache", "verify", "set"]);
    assert_eq!(verify.matches("ok:").count(), 2, "{verify}");
    ok(tmp.path(), &t("set", "s", &[]));
    let card = model_card(&tmp.path().join("s"));
    assert_eq!(card["cache"]["views"], 2);
    assert_eq!(card["cache"]["id"], set.id());
    // Errors: another augmentation, one view of a set, a missing view,
    // views without augmentation.
    fails(
        tmp.path(),
        &t("set", "x", &["--augment", "shift=1"]),
        &["--augment", "differs", "flip,shift=2"],
    );
    fails(
        tmp.path(),
        &t("set/view-1", "x", &[]),
        &["view-1", "the set's directory"],
    );
    fs::rename(tmp.path().join("set/view-1"), tmp.path().join("set/old")).unwrap();
    fails(
        tmp.path(),
        &t("set", "x", &[]),
        &["view-1", "missing", "rerun the build"],
    );
    let e = distill(
        tmp.path(),
        &cache_build_args(&s(&teacher_dir()), &data, "y", &["--views", "3"]),
    );
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("--views") && err.contains("--augment"),
        "{err}"
    );
    assert!(!tmp.path().join("x").exists() && !tmp.path().join("y").exists());
    // An edited view record is caught by the manifest's content id.
    fs::rename(tmp.path().join("set/old"), tmp.path().join("set/view-1")).unwrap();
    let m = tmp.path().join("set/view-1/manifest.json");
    let text = fs::read_to_string(&m).unwrap();
    assert!(text.contains("\"view\": 1"), "{text}");
    fs::write(&m, text.replace("\"view\": 1", "\"view\": 0")).unwrap();
    fails(
        tmp.path(),
        &t("set", "x", &[]),
        &["view-1/manifest.json", "id"],
    );
}

#[test]
fn a_cache_is_not_built_into_a_model_directory() {
    // `--out` pointing at the teacher's own directory (or any directory of
    // other files) is refused before anything is written there, for a cache
    // of the plain images and for a view set alike; the model is untouched.
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("teacher");
    fs::create_dir(&model).unwrap();
    let mut before = Vec::new();
    for entry in fs::read_dir(teacher_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_owned();
            fs::copy(&path, model.join(&name)).unwrap();
            before.push((name, fs::read(&path).unwrap()));
        }
    }
    assert!(model.join("model.json").exists());
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let plain = cache_build_args(&teacher, &data, "teacher", &["--split", "test", "-q"]);
    fails(
        tmp.path(),
        &plain,
        &["teacher", "not a cache directory", "model.json"],
    );
    let views = cache_build_args(
        &teacher,
        &data,
        "teacher",
        &[
            "--split",
            "test",
            "--augment",
            "shift=1",
            "--views",
            "2",
            "-q",
        ],
    );
    fails(
        tmp.path(),
        &views,
        &["teacher", "not a cache directory", "model.json"],
    );
    let mut after: Vec<_> = fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.sort();
    let mut names: Vec<_> = before.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(after, names, "nothing is added to the model's directory");
    for (name, bytes) in before {
        assert_eq!(
            fs::read(model.join(&name)).unwrap(),
            bytes,
            "{name:?} changed"
        );
    }
}

/// A batch is held whole in memory: every command that takes `--batch`
/// refuses one beyond the limit (the trainer's) by name, before it writes
/// anything, instead of failing to allocate it.
#[test]
fn batch_sizes_out_of_range_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let huge = "10000000";
    for args in [
        vec![
            "eval", "--model", &teacher, "--data", &data, "--batch", huge,
        ],
        vec!["eval", "--model", &teacher, "--data", &data, "--batch", "0"],
        cache_build_args(&teacher, &data, "c", &["--batch", huge]),
        vec![
            "views",
            "export",
            "--data",
            &data,
            "--augment",
            "flip",
            "--out",
            "v",
            "--batch",
            huge,
        ],
    ] {
        fails(
            dir.path(),
            &args,
            &["--batch", "must be between 1 and 1048576"],
        );
    }
    assert!(!dir.path().join("c").exists() && !dir.path().join("v").exists());
    // A batch larger than the data is the data's size.
    let out = ok(
        dir.path(),
        &[
            "eval", "--model", &teacher, "--data", &data, "--batch", "1048576",
        ],
    );
    assert!(out.contains("fashion-cnn"), "{out}");
}

/// A directory holds a plain cache or a view set, never both: a view set
/// built with --overwrite over a plain cache replaces it (whose manifest
/// would otherwise be read instead of the views), a smaller set leaves no
/// stale views, and a plain build over a view set needs --overwrite.
#[test]
fn a_plain_cache_and_a_view_set_replace_each_other_only_with_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    let build = |extra: &[&str]| {
        let quiet = [&["-q"][..], extra].concat();
        distill(tmp.path(), &cache_build_args(&teacher, &data, "c", &quiet))
    };
    let entries = || {
        let mut names: Vec<String> = fs::read_dir(tmp.path().join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        names.join(" ")
    };
    assert!(build(&[]).status.success());
    let views3 = ["--augment", "flip", "--views", "3"];
    fails(
        tmp.path(),
        &cache_build_args(&teacher, &data, "c", &views3),
        &["--out", "plain images", "--overwrite"],
    );
    assert!(build(&[&views3[..], &["--overwrite"]].concat())
        .status
        .success());
    assert_eq!(entries(), "view-0 view-1 view-2 views.json");
    let info = ok(tmp.path(), &["cache", "inspect", "c"]);
    assert!(info.contains("3 views of augment flip"), "{info}");
    // A smaller set over it, or a plain cache, without --overwrite: refused,
    // the 3 views byte for byte as they were.
    let c = tmp.path().join("c");
    let three = snapshot(&c);
    for extra in [&["--augment", "flip", "--views", "2"][..], &[]] {
        let refused = build(extra);
        assert_eq!(refused.status.code(), Some(2), "{extra:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("--overwrite"), "{extra:?}: {stderr}");
        assert_eq!(snapshot(&c), three, "{extra:?}: the view set changed");
    }
    assert!(build(&["--augment", "flip", "--views", "2", "--overwrite"])
        .status
        .success());
    assert_eq!(entries(), "view-0 view-1 views.json");
    let refused = build(&[]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("holds a view set") && stderr.contains("--overwrite"),
        "{stderr}"
    );
    assert_eq!(entries(), "view-0 view-1 views.json");
    // A set without its view 0 is called incomplete, not "not a cache".
    fs::rename(c.join("view-0"), c.join("view-0-moved")).unwrap();
    fails(
        tmp.path(),
        &["cache", "inspect", "c"],
        &["c/view-0", "is missing from this view set"],
    );
    fs::rename(c.join("view-0-moved"), c.join("view-0")).unwrap();
    assert!(build(&["--overwrite"]).status.success());
    let after = entries();
    assert!(
        after.starts_with("manifest.json shard-") && !after.contains("view"),
        "{after}"
    );
    // Views a removal stopped part-way left behind (view 0 gone first) are
    // still a view set's, and go with the next --overwrite.
    fs::create_dir(c.join("view-1")).unwrap();
    fs::create_dir(c.join("view-2")).unwrap();
    assert_eq!(build(&[]).status.code(), Some(2));
    assert!(build(&["--overwrite"]).status.success());
    assert_eq!(entries(), after);
}

/// The cache's storage settings are refused by their flags' names.
#[test]
fn cache_settings_out_of_range_are_refused_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    for (extra, needles) in [
        (["--zstd-level", "100"], ["--zstd-level", "-7..=22"]),
        (
            ["--encoding", "topk:10"],
            ["--encoding", "topk:10 needs 1 <= K < classes"],
        ),
    ] {
        fails(
            dir.path(),
            &cache_build_args(&teacher, &data, "c", &extra),
            &needles,
        );
    }
    assert!(!dir.path().join("c/manifest.json").exists());
}

/// What a directory given as a cache is, when it is not the cache asked
/// for, is said in its own terms with what to do: the other split's cache
/// (to train, as the test cache, or to build into), a set of augmented
/// views as the test cache, the parent of a build's parts, a directory that
/// is not there, a shard replaced by a directory; and logits files that
/// hold no tensor or are of no format distill reads.
#[test]
fn a_directory_that_is_not_the_cache_asked_for_is_named_for_what_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = s(&small_data());
    build(t, "train", "f16", "c-train", &[]);
    build(t, "test", "f16", "c-test", &[]);
    let train = |cache: &str, extra: &[&str]| -> Vec<String> {
        let flags = [&["--cache", cache, "--epochs", "1", "-q"][..], extra].concat();
        train_args(&data, "mlp:784-16-10", "run", &flags)
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let run = |args: &[String], needles: &[&str]| {
        let err = fails(t, &strs(args), needles);
        assert!(!err.contains("fingerprint"), "{err}");
        assert!(!t.join("run").exists());
    };
    // The test split's cache as the training cache, and the other way round.
    run(
        &train("c-test", &[]),
        &["invalid value for --cache: c-test holds the teacher's outputs on the test split; --cache needs the train split's (build it with `distill cache build --split train`)"],
    );
    run(
        &train("c-train", &["--test-cache", "c-train"]),
        &["invalid value for --test-cache: c-train holds the teacher's outputs on the train split; --test-cache needs the test split's (build it with `distill cache build --split test`)"],
    );
    // A build of the other split into a cache's directory.
    let before = snapshot(&t.join("c-train"));
    let err = fails(
        t,
        &cache_build_args(
            &s(&teacher_dir()),
            &data,
            "c-train",
            &["--split", "test", "--encoding", "f16", "-q"],
        ),
        &["c-train: this directory holds a cache built with a different dataset split (train there, test requested); use another directory"],
    );
    assert!(!err.contains("fingerprint"), "{err}");
    assert_eq!(snapshot(&t.join("c-train")), before);

    // A set of augmented views as the test cache.
    build(
        t,
        "train",
        "f16",
        "views-dir",
        &["--augment", "flip", "--views", "2"],
    );
    run(
        &train("c-train", &["--test-cache", "views-dir"]),
        &["invalid value for --test-cache: views-dir is a set of augmented views (views.json and view-N/ caches", "--test-cache needs a plain cache of the test split"],
    );

    // The parent of a build's parts.
    for k in ["0/2", "1/2"] {
        build(
            t,
            "train",
            "f16",
            "parts",
            &["--part", k, "--shard-kib", "8", "--block-records", "64"],
        );
    }
    for verb in ["inspect", "verify"] {
        let err = fails(
            t,
            &["cache", verb, "parts"],
            &[
                "parts: holds the parts of a build (part-0-of-2, part-1-of-2), not a cache",
                "distill cache merge parts/part-*-of-2 --out CACHE",
            ],
        );
        assert!(!err.contains("never finished"), "{err}");
        // A directory that is not there.
        let err = fails(
            t,
            &["cache", verb, "absent"],
            &["absent: no such directory"],
        );
        assert!(!err.contains("manifest.json"), "{err}");
    }

    // A shard replaced by a directory.
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(t.join("c-test/manifest.json")).unwrap()).unwrap();
    let shard = manifest["shards"][0]["file"].as_str().unwrap().to_string();
    fs::remove_file(t.join("c-test").join(&shard)).unwrap();
    fs::create_dir(t.join("c-test").join(&shard)).unwrap();
    let err = fails(
        t,
        &["cache", "verify", "c-test"],
        &[&shard, "shard 0: is a directory, not the"],
    );
    assert!(!err.contains("truncated"), "{err}");

    // Logits in a safetensors file that holds no tensor, and in a file of
    // neither format.
    let header = b"{}";
    let empty = [&(header.len() as u64).to_le_bytes()[..], header].concat();
    fs::write(t.join("empty.safetensors"), empty).unwrap();
    let err = fails(
        t,
        &cache_import_args("empty.safetensors", &data, "test", "2", "imp", &[]),
        &["empty.safetensors: tensors: the file holds no tensors"],
    );
    assert!(!err.contains("name the one"), "{err}");
    fs::write(
        t.join("x.py"),
        "import numpy as np\nnp.save('logits.npy', logits)\n",
    )
    .unwrap();
    let err = fails(
        t,
        &cache_import_args("x.py", &data, "test", "2", "imp", &[]),
        &[
            "invalid value for --logits: x.py is neither a .npy nor a .safetensors file",
            "logits are read from a .npy or .safetensors file",
        ],
    );
    assert!(!err.contains("exceeds"), "{err}");
    assert!(!t.join("imp/manifest.json").exists());
}

/// One view of a view set is never replaced by a cache of the plain images
/// (built, imported or an ensemble), not even with --overwrite: the set's
/// other views and views.json would stay beside it, and the set would not
/// open again.
#[test]
fn a_view_of_a_set_is_not_replaced_by_a_plain_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    let views = ["--augment", "flip", "--views", "2", "--split", "test", "-q"];
    ok(
        tmp.path(),
        &cache_build_args(&teacher, &data, "set", &views),
    );
    let before = snapshot(&tmp.path().join("set"));
    let plain = ["--split", "test", "-q", "--overwrite"];
    fails(
        tmp.path(),
        &cache_build_args(&teacher, &data, "set/view-1", &plain),
        &[
            "set/view-1: holds view 1 of 2 of flip (seed 0) of a view set (committed)",
            "would break the set, with or without `--overwrite`",
        ],
    );
    let logits: Vec<u8> = (0..1000 * 10)
        .flat_map(|i| ((i % 7) as f32).to_le_bytes())
        .collect();
    write_npy(&tmp.path().join("l.npy"), "<f4", &[1000, 10], &logits);
    fails(
        tmp.path(),
        &cache_import_args(
            "l.npy",
            &data,
            "test",
            "4",
            "set/view-0",
            &["-q", "--overwrite"],
        ),
        &["set/view-0: holds view 0 of 2 of flip"],
    );
    assert_eq!(snapshot(&tmp.path().join("set")), before);
    ok(tmp.path(), &["cache", "verify", "set"]);
}
