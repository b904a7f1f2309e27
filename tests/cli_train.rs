//! `distill train` and `distill eval` on the committed subset: outputs,
//! determinism, resume, and errors for bad flags.

use std::fs;

use crate::util::*;

/// Two quiet, seeded epochs of the small MLP into `out`, then `extra`.
fn mlp_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let settings = ["--epochs", "2", "--batch", "64", "--seed", "3", "-q"];
    train_args(data, "mlp:784-32-10", out, &[&settings[..], extra].concat())
}

#[test]
fn hard_label_training_writes_model_card_metrics_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let out = ok(tmp.path(), &mlp_args(&data, "run", &[]));
    assert!(out.contains("final test accuracy"), "{out}");
    let run = tmp.path().join("run");
    for f in [
        "model.safetensors",
        "model.json",
        "metrics.jsonl",
        "curves.png",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let card = model_card(&run);
    assert_eq!(card["spec"], "mlp:784-32-10");
    assert_eq!(card["parameters"], 784 * 32 + 32 + 32 * 10 + 10);
    let acc = card["test_accuracy"].as_f64().unwrap();
    // 2,000 training images, 2 epochs: well above chance (10%).
    assert!(acc > 0.6, "accuracy {acc}");
    assert_eq!(
        fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    // eval reports the same accuracy as the card.
    let eval = ok(tmp.path(), &["eval", "--model", "run", "--data", &data]);
    assert!(
        eval.contains(&format!("{:.2}%", 100.0 * acc)),
        "{eval} vs {acc}"
    );
}

#[test]
fn averaged_weights_are_what_the_run_evaluates_writes_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let ema = ["--ema", "0.99"];
    ok(tmp.path(), &mlp_args(&data, "live", &[]));
    ok(tmp.path(), &mlp_args(&data, "avg", &ema));
    let live = fs::read(tmp.path().join("live/model.safetensors")).unwrap();
    let avg = fs::read(tmp.path().join("avg/model.safetensors")).unwrap();
    assert_ne!(live, avg, "--ema wrote the last step's weights");
    let card = model_card(&tmp.path().join("avg"));
    assert_eq!(card["config"]["ema"], 0.99, "{card}");
    // The card's accuracy is the written (averaged) model's: eval agrees.
    let acc = card["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.6, "accuracy {acc}");
    let eval = ok(tmp.path(), &["eval", "--model", "avg", "--data", &data]);
    assert!(
        eval.contains(&format!("{:.2}%", 100.0 * acc)),
        "{eval} vs {acc}"
    );
    // Stopped mid-epoch and resumed: the same averaged weights.
    let stop = ["--checkpoint-every", "7", "--stop-after-steps", "40"];
    ok(
        tmp.path(),
        &mlp_args(&data, "cut", &[&ema[..], &stop].concat()),
    );
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "cut",
            &[&ema[..], &["--checkpoint-every", "7", "--resume"]].concat(),
        ),
    );
    assert_eq!(
        fs::read(tmp.path().join("cut/model.safetensors")).unwrap(),
        avg,
        "resumed averaged weights differ"
    );
    // Another decay is another run; a decay outside (0, 1) names the flag.
    fails(
        tmp.path(),
        &mlp_args(&data, "avg", &["--ema", "0.9"]),
        &["--out", "ema: 0.99 there, 0.9 here"],
    );
    for bad in ["1", "0", "-0.5", "nan"] {
        fails(
            tmp.path(),
            &mlp_args(&data, "bad", &["--ema", bad]),
            &["--ema", "strictly between 0 and 1"],
        );
    }
}

#[test]
fn same_seed_same_weights_and_resume_matches_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(tmp.path(), &mlp_args(&data, "a", &[]));
    ok(tmp.path(), &mlp_args(&data, "b", &[]));
    let a = fs::read(tmp.path().join("a/model.safetensors")).unwrap();
    assert_eq!(
        a,
        fs::read(tmp.path().join("b/model.safetensors")).unwrap(),
        "same seed, different weights"
    );
    // Killed mid-epoch (after 40 of the 64 steps), then resumed.
    let out = ok(
        tmp.path(),
        &mlp_args(
            &data,
            "c",
            &["--checkpoint-every", "7", "--stop-after-steps", "40"],
        ),
    );
    assert!(out.contains("stopped after 40 steps"), "{out}");
    assert!(tmp.path().join("c/checkpoint.safetensors").exists());
    assert!(!tmp.path().join("c/model.safetensors").exists());
    ok(
        tmp.path(),
        &mlp_args(&data, "c", &["--checkpoint-every", "7", "--resume"]),
    );
    assert_eq!(
        a,
        fs::read(tmp.path().join("c/model.safetensors")).unwrap(),
        "resumed run differs"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("a/metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        fs::read_to_string(tmp.path().join("c/metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    );
    // Resuming a finished run has nothing to do: its files stay as they are
    // (a scheduler that requeues a finished job costs nothing). Other
    // settings are not the finished run: refused without --overwrite.
    let metrics = fs::read(tmp.path().join("c/metrics.jsonl")).unwrap();
    let again = ok(
        tmp.path(),
        &mlp_args(&data, "c", &["--checkpoint-every", "7", "--resume"]),
    );
    assert!(
        again.contains("already finished, nothing to resume"),
        "{again}"
    );
    assert_eq!(
        fs::read(tmp.path().join("c/metrics.jsonl")).unwrap(),
        metrics
    );
    assert_eq!(fs::read(tmp.path().join("c/model.safetensors")).unwrap(), a);
    fails(
        tmp.path(),
        &mlp_args(&data, "c", &["--resume", "--lr", "0.01"]),
        &["--out", "optimizer.lr: 0.001 there, 0.01 here"],
    );
    // Resuming with other settings is refused.
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "d",
            &["--checkpoint-every", "7", "--stop-after-steps", "5"],
        ),
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "d", &["--resume", "--lr", "0.01"]),
        &[
            "checkpoint.safetensors",
            "other settings (optimizer.lr: 0.001 there, 0.01 here)",
        ],
    );
    // A damaged checkpoint is called damaged, not other settings: a flipped
    // bit in a weight, or settings that no longer read.
    let ck = tmp.path().join("d/checkpoint.safetensors");
    let intact = fs::read(&ck).unwrap();
    let mut flipped = intact.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10;
    let mut renamed = intact.clone();
    let at = renamed
        .windows(10)
        .position(|w| w == b"batch_size")
        .expect("the checkpoint records its config");
    renamed[at..at + 10].copy_from_slice(b"xxxxxxxxxx");
    for damaged in [flipped, renamed] {
        fs::write(&ck, damaged).unwrap();
        fails(
            tmp.path(),
            &mlp_args(&data, "d", &["--resume"]),
            &[
                "checkpoint.safetensors",
                "is damaged",
                "checksum",
                "without --resume, with --overwrite",
            ],
        );
    }
    fs::write(&ck, intact).unwrap();
    ok(tmp.path(), &mlp_args(&data, "d", &["--resume"]));
}

#[test]
fn a_rerun_stopped_early_leaves_an_unfinished_run_not_the_earlier_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(tmp.path(), &mlp_args(&data, "run", &[]));
    let run = tmp.path().join("run");
    let finished = fs::read(run.join("model.safetensors")).unwrap();
    // The same settings again, stopped after 5 of its 64 steps: the earlier
    // model's files moved into run/previous/, so nothing reads the new
    // run's metrics as theirs, the earlier model stays whole there, and
    // --resume continues the rerun instead of calling it finished.
    let out = ok(
        tmp.path(),
        &mlp_args(
            &data,
            "run",
            &["--checkpoint-every", "7", "--stop-after-steps", "5"],
        ),
    );
    assert!(out.contains("stopped after 5 steps"), "{out}");
    for f in ["model.safetensors", "model.json", "curves.png", "model.py"] {
        assert!(!run.join(f).exists(), "{f} of the earlier model survived");
    }
    assert!(run.join("checkpoint.safetensors").exists());
    assert_eq!(
        fs::read(run.join("previous/model.safetensors")).unwrap(),
        finished
    );
    let eval = ok(
        tmp.path(),
        &["eval", "--model", "run/previous", "--data", &data],
    );
    assert!(eval.contains('%'), "{eval}");
    let out = ok(
        tmp.path(),
        &mlp_args(&data, "run", &["--checkpoint-every", "7", "--resume"]),
    );
    assert!(out.contains("final test accuracy"), "{out}");
    assert_eq!(
        fs::read(run.join("model.safetensors")).unwrap(),
        finished,
        "the resumed rerun differs from the first run"
    );
    assert!(
        !run.join("previous").exists(),
        "finished, the rerun keeps no copy"
    );
    assert_eq!(
        fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn a_resumed_run_finds_a_twin_that_finished_while_it_started() {
    // The CLI's "already finished" check runs before the directory's lock;
    // the library looks again under it, so a job requeued beside its twin
    // (which finished in between) trains nothing and moves nothing.
    use distill::data::{Dataset, Split};
    use distill::train::{RunOptions, TrainConfig, TrainSources};
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(tmp.path(), &mlp_args(&data, "run", &[]));
    let run = tmp.path().join("run");
    let weights = fs::read(run.join("model.safetensors")).unwrap();
    let cfg: TrainConfig = serde_json::from_value(model_card(&run)["config"].clone()).unwrap();
    let train = Dataset::open(&small_data(), Split::Train).unwrap();
    let sources = TrainSources {
        train: &train,
        test: None,
        cache: None,
        cache_dir: None,
        teacher_test_predictions: None,
        online_teacher: None,
    };
    let opts = RunOptions {
        resume: true,
        quiet: true,
        ..RunOptions::default()
    };
    let outcome =
        distill::train::train(dfdx::prelude::Cpu::default(), &cfg, &sources, &run, &opts).unwrap();
    assert!(!outcome.trained && outcome.finished);
    assert_eq!(outcome.card.spec, "mlp:784-32-10");
    assert_eq!(fs::read(run.join("model.safetensors")).unwrap(), weights);
    assert!(!run.join("previous").exists());
}

#[test]
fn a_model_is_not_fine_tuned_into_its_own_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(tmp.path(), &mlp_args(&data, "run", &[]));
    let weights = fs::read(tmp.path().join("run/model.safetensors")).unwrap();
    fs::create_dir(tmp.path().join("run/sub")).unwrap();
    for init in ["run", "run/model.safetensors", "./run/../run/sub"] {
        fails(
            tmp.path(),
            &mlp_args(&data, "./run/", &["--init-from", init]),
            &["--init-from", "is in --out", "another directory"],
        );
    }
    // A directory without the model or run a flag reads is refused by flag.
    for flag in ["--init-from", "--online-teacher", "--baseline-run"] {
        fails(
            tmp.path(),
            &mlp_args(&data, "other", &[flag, "run/sub"]),
            &[flag, "run/sub holds no", "name a"],
        );
    }
    // Nor taught by, or compared with, the model it would replace.
    for flag in ["--online-teacher", "--baseline-run"] {
        fails(
            tmp.path(),
            &mlp_args(&data, "run", &[flag, "run", "--overwrite"]),
            &[flag, "is in --out", "another directory"],
        );
    }
    assert_eq!(
        fs::read(tmp.path().join("run/model.safetensors")).unwrap(),
        weights
    );
    assert!(!tmp.path().join("run/previous").exists());
}

#[test]
fn snapshots_are_models_of_their_epoch_and_survive_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let args = |out: &'static str, extra: &[&'static str]| -> Vec<String> {
        let settings = ["--epochs", "3", "--batch", "64", "--seed", "3", "-q"];
        train_args(
            &data,
            "mlp:784-32-10",
            out,
            &[&settings[..], extra].concat(),
        )
        .into_iter()
        .map(String::from)
        .collect()
    };
    let run = |out: &'static str, extra: &[&'static str]| {
        let a = args(out, extra);
        ok(
            tmp.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    run("a", &["--snapshot-epochs", "1,2"]);
    let a = tmp.path().join("a");
    let metrics = epoch_metrics(&a);
    assert_eq!(metrics.len(), 3);
    for epoch in [1usize, 2] {
        let snap = a.join(format!("epoch-{epoch:03}"));
        for f in [
            "model.safetensors",
            "model.json",
            "model.py",
            "metrics.jsonl",
        ] {
            assert!(snap.join(f).exists(), "{f} missing in {}", snap.display());
        }
        let lines = fs::read_to_string(snap.join("metrics.jsonl")).unwrap();
        assert_eq!(lines.lines().count(), epoch, "{lines}");
        let card = model_card(&snap);
        assert_eq!(card["snapshot_epoch"], epoch);
        let acc = card["test_accuracy"].as_f64().unwrap();
        assert_eq!(acc, metrics[epoch - 1]["test_accuracy"].as_f64().unwrap());
        // The weights are that epoch's: evaluating them gives its accuracy.
        let snap_arg = s(&snap);
        let eval = ok(tmp.path(), &["eval", "--model", &snap_arg, "--data", &data]);
        assert!(
            eval.contains(&format!("{:.2}%", 100.0 * acc)),
            "{eval} vs {acc}"
        );
    }
    assert!(!a.join("epoch-003").exists());
    assert!(model_card(&a).get("snapshot_epoch").is_none());
    let weights = |p: &str| fs::read(tmp.path().join(p).join("model.safetensors")).unwrap();
    assert_ne!(weights("a/epoch-002"), weights("a"));
    // 1,800 training images at 64 a batch: 29 steps an epoch, so step 40 is
    // inside epoch 2. The resumed run writes the same snapshot.
    let snapshot_2 = ["--snapshot-epochs", "2", "--checkpoint-every", "7"];
    run(
        "b",
        &[&snapshot_2[..], &["--stop-after-steps", "40"]].concat(),
    );
    assert!(!tmp.path().join("b/epoch-002").exists());
    run("b", &[&snapshot_2[..], &["--resume"]].concat());
    assert_eq!(weights("b/epoch-002"), weights("a/epoch-002"));
    assert_eq!(weights("b"), weights("a"));
    // An epoch the run does not have is refused before anything is written.
    for bad in ["4", "0", "2,x"] {
        let a = args("c", &["--snapshot-epochs", bad]);
        fails(
            tmp.path(),
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &["--snapshot-epochs"],
        );
    }
    assert!(!tmp.path().join("c").exists());
}

/// `--keep-best` keeps the model of the epoch validation chooses (the
/// earlier on a tie) in OUT/best/, whose card names the epoch; a resumed
/// run keeps the same one; a run with nothing held out is refused.
#[test]
fn keep_best_keeps_the_model_of_the_best_validation_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // Constant lr 0.01: validation 77.5, 82.5, 82.5, 81.5% on these
    // images, so the best is epoch 2, tied at 3, and the last is worse.
    let settings = [
        "--epochs",
        "4",
        "--batch",
        "64",
        "--seed",
        "3",
        "-q",
        "--lr",
        "0.01",
        "--schedule",
        "constant",
        "--keep-best",
    ];
    let run = |out: &str, extra: &[&str]| {
        let a = train_args(
            &data,
            "mlp:784-32-10",
            out,
            &[&settings[..], extra].concat(),
        );
        ok(tmp.path(), &a)
    };
    run("a", &[]);
    let a = tmp.path().join("a");
    let metrics = epoch_metrics(&a);
    let val: Vec<f64> = metrics
        .iter()
        .map(|m| m["val_accuracy"].as_f64().unwrap())
        .collect();
    // The earliest epoch of the highest validation accuracy.
    let top = val.iter().cloned().fold(f64::MIN, f64::max);
    let want = 1 + val.iter().position(|&v| v == top).unwrap();
    assert_eq!(want, 2, "validation by epoch: {val:?}");
    assert!(val[2] == top && val[3] < top, "{val:?}");
    let best = a.join("best");
    let card = model_card(&best);
    assert_eq!(card["snapshot_epoch"], want);
    assert_eq!(model_card(&a)["best_val_epoch"], want);
    assert_eq!(
        fs::read_to_string(best.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        want
    );
    // Its weights are that epoch's: they score its validation accuracy.
    let eval = ok(
        tmp.path(),
        &[
            "eval",
            "--model",
            &s(&best),
            "--data",
            &data,
            "--split",
            "val",
        ],
    );
    assert!(
        eval.contains(&format!("{:.2}%", 100.0 * top)),
        "{eval} vs {top}"
    );
    let weights = |p: &str| fs::read(tmp.path().join(p).join("model.safetensors")).unwrap();
    assert_ne!(weights("a/best"), weights("a"));
    let names: Vec<String> = fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("best"))
        .collect();
    assert_eq!(names, ["best"]);
    // Stopped inside epoch 3 (29 steps an epoch) and resumed: the same best.
    let stop = ["--checkpoint-every", "7", "--stop-after-steps", "70"];
    run("b", &stop);
    assert_eq!(model_card(&tmp.path().join("b/best"))["snapshot_epoch"], 2);
    run("b", &["--resume"]);
    assert_eq!(weights("b/best"), weights("a/best"));
    assert_eq!(weights("b"), weights("a"));
    // What a run killed while replacing best/ left is cleared by the next:
    // the earlier best/ set aside comes back where best/ is missing.
    fs::rename(a.join("best"), a.join(".best.old")).unwrap();
    fs::create_dir(a.join(".best.partial")).unwrap();
    run("a", &["--overwrite", "--stop-after-steps", "1"]);
    assert_eq!(model_card(&best)["snapshot_epoch"], 2);
    assert!(!a.join(".best.old").exists() && !a.join(".best.partial").exists());
    // Nothing held out: refused before anything is written.
    fails(
        tmp.path(),
        &mlp_args(&data, "c", &["--keep-best", "--val-fraction", "0"]),
        &["--keep-best", "--val-fraction"],
    );
    assert!(!tmp.path().join("c").exists());
}

/// Two trainers into one directory (a job launched twice): the second is
/// refused while the first holds the directory's lock, and writes nothing.
#[test]
fn a_second_trainer_into_the_same_directory_is_refused() {
    use fs2::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    fs::create_dir(tmp.path().join("o")).unwrap();
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(tmp.path().join("o/.train.lock"))
        .unwrap();
    lock.try_lock_exclusive().unwrap();
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &[]),
        &["--out", "another run is writing this directory"],
    );
    assert!(!tmp.path().join("o/model.safetensors").exists());
    assert!(!tmp.path().join("o/metrics.jsonl").exists());
    drop(lock);
    ok(tmp.path(), &mlp_args(&data, "o", &[]));
}

#[test]
fn bad_flags_name_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    fails(tmp.path(), &mlp_args(&data, "o", &["--lr=-1"]), &["--lr"]);
    // A negative number after a space is the flag's value, not a flag.
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--lr", "-1"]),
        &["--lr", "-1 must be a positive number"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--val-fraction", "-0.1"]),
        &["--val-fraction", "-0.1"],
    );
    // Loss flags are checked without a cache too.
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--teacher-errors", "fix"]),
        &["--teacher-errors", "fix"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--dkd-weights", "8"]),
        &["--dkd-weights"],
    );
    // Flags that only shape the soft loss need a teacher.
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--logit-standardize"]),
        &["--logit-standardize", "--cache"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--soft-scale", "9"]),
        &["--soft-scale", "--cache"],
    );
    // As do the temperature, the loss and its settings: without a teacher
    // they would be dropped while the card records hard-label training.
    for (flags, named) in [
        (&["-T", "4"][..], "-T/--temperature"),
        (&["--loss", "dkd"], "--loss"),
        (&["--teacher-errors", "swap"], "--teacher-errors"),
        (&["--allow-topk-retemper"], "--allow-topk-retemper"),
    ] {
        fails(
            tmp.path(),
            &mlp_args(&data, "o", flags),
            &[named, "--cache", "hard labels"],
        );
    }
    // The weights of DKD's parts need its loss, with a teacher or without.
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--dkd-weights", "1,4"]),
        &[
            "--dkd-weights",
            "the kd loss does not take them",
            "--loss dkd",
        ],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--window-blocks", "3"]),
        &["--window-blocks", "no --cache"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--soft-scale", "0"]),
        &["--soft-scale", "(0, 1000]"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--optimizer", "lion"]),
        &["--optimizer", "lion"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--epochs", "0"]),
        &["--epochs"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--alpha", "0.5"]),
        &["--cache"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--device", "tpu"]),
        &["--device", "tpu"],
    );
    #[cfg(not(feature = "cuda"))]
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &["--device", "cuda"]),
        &["--device", "cuda", "the cuda feature", "make build-cuda"],
    );
    fails(
        tmp.path(),
        &train_args(&data, "mlp:100-10", "o", &["-q"]),
        &["mlp:100-10", "784"],
    );
    fails(
        tmp.path(),
        &train_args(&data, "mlp:784-5", "o", &["-q"]),
        &[
            "mlp:784-5",
            "the train split's labels in",
            "train-labels-idx1-ubyte.gz go up to 9",
        ],
    );
    fails(
        tmp.path(),
        &train_args("nowhere", "mlp:784-10", "o", &[]),
        &["nowhere"],
    );
}

#[test]
fn augmentation_is_deterministic_recorded_and_refused_with_a_plain_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let aug = ["--augment", "flip,shift=2"];
    ok(tmp.path(), &mlp_args(&data, "a", &aug));
    ok(tmp.path(), &mlp_args(&data, "b", &aug));
    ok(tmp.path(), &mlp_args(&data, "plain", &[]));
    let w = |d: &str| fs::read(tmp.path().join(d).join("model.safetensors")).unwrap();
    assert_eq!(w("a"), w("b"), "same seed and augmentation, other weights");
    assert_ne!(w("a"), w("plain"), "the augmentation changed nothing");
    let cfg = model_card(&tmp.path().join("a")).to_string();
    assert!(
        cfg.contains("\"augment\"") && cfg.contains("\"shift\":2"),
        "{cfg}"
    );
    // Resumed mid-epoch: the same images, the same weights.
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "c",
            &[
                &aug[..],
                &["--checkpoint-every", "9", "--stop-after-steps", "41"],
            ]
            .concat(),
        ),
    );
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "c",
            &[&aug[..], &["--checkpoint-every", "9", "--resume"]].concat(),
        ),
    );
    assert_eq!(w("a"), w("c"), "resumed augmented run differs");
    // Online distillation sees the augmented batch, teacher and student alike.
    let teacher = s(&teacher_dir());
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "online",
            &[
                &aug[..],
                &["--online-teacher", &teacher, "--alpha", "0.5", "-T", "4"],
            ]
            .concat(),
        ),
    );
    // A cache of unaugmented images holds no targets for augmented ones.
    ok(
        tmp.path(),
        &cache_build_args(&teacher, &data, "cache", &["--split", "train", "-q"]),
    );
    fails(
        tmp.path(),
        &mlp_args(
            &data,
            "x",
            &[&aug[..], &["--cache", "cache", "--alpha", "0.5"]].concat(),
        ),
        &["--augment", "unaugmented", "--online-teacher"],
    );
    fails(
        tmp.path(),
        &mlp_args(&data, "x", &["--augment", "rotate"]),
        &["--augment", "rotate"],
    );
    assert!(!tmp.path().join("x").exists());
}

/// The validation split: the card and every epoch's metrics carry its
/// figures, its size follows --val-fraction, the same seed holds out the
/// same samples (so a distilled run resumed mid-epoch from a cache ends
/// with the same weights), and 0 trains on every sample.
#[test]
fn a_validation_split_is_held_out_recorded_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    build_train_cache(tmp.path(), &data, "cache");
    let kd = ["--cache", "cache", "--alpha", "0.5", "-T", "2"];
    ok(tmp.path(), &mlp_args(&data, "a", &kd));
    let card = model_card(&tmp.path().join("a"));
    assert_eq!(card["config"]["val_fraction"], 0.1);
    assert_eq!(card["data"]["val_samples"], 200);
    assert_eq!(card["data"]["train_samples"], 2000);
    let val = card["val_accuracy"].as_f64().unwrap();
    assert!(val > 0.5, "{card}");
    assert!(card["val_loss"].as_f64().unwrap() > 0.0);
    let best = card["best_val_epoch"].as_u64().unwrap();
    assert!((1..=2).contains(&best), "{card}");
    let metrics = fs::read_to_string(tmp.path().join("a/metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(epochs.len(), 2);
    for m in &epochs {
        assert!(m["val_accuracy"].as_f64().is_some() && m["val_loss"].as_f64().is_some());
    }
    assert_eq!(epochs[1]["val_accuracy"].as_f64(), Some(val));
    assert_eq!(
        card["best_val_epoch_test_accuracy"],
        epochs[best as usize - 1]["test_accuracy"]
    );

    // Killed mid-epoch after 20 of the 2 x 29 steps (1,800 trained samples
    // in batches of 64), then resumed: the same weights.
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "b",
            &[
                &kd[..],
                &["--checkpoint-every", "3", "--stop-after-steps", "20"],
            ]
            .concat(),
        ),
    );
    ok(
        tmp.path(),
        &mlp_args(
            &data,
            "b",
            &[&kd[..], &["--checkpoint-every", "3", "--resume"]].concat(),
        ),
    );
    let w = |d: &str| fs::read(tmp.path().join(d).join("model.safetensors")).unwrap();
    assert_eq!(
        w("a"),
        w("b"),
        "resumed run with a validation split differs"
    );

    // Another fraction: another split, other weights; 0: no split, no
    // validation figures, every sample trained.
    ok(
        tmp.path(),
        &mlp_args(&data, "c", &[&kd[..], &["--val-fraction", "0.25"]].concat()),
    );
    assert_eq!(
        model_card(&tmp.path().join("c"))["data"]["val_samples"],
        500
    );
    ok(
        tmp.path(),
        &mlp_args(&data, "d", &[&kd[..], &["--val-fraction", "0"]].concat()),
    );
    let d = model_card(&tmp.path().join("d"));
    assert!(d["data"].get("val_samples").is_none(), "{d}");
    assert!(d.get("val_accuracy").is_none(), "{d}");
    assert_ne!(w("a"), w("d"));
    let first: serde_json::Value = serde_json::from_str(
        fs::read_to_string(tmp.path().join("d/metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(first.get("val_accuracy").is_none(), "{first}");
    fails(
        tmp.path(),
        &mlp_args(&data, "x", &["--val-fraction", "1.5"]),
        &["--val-fraction", "1.5"],
    );
    assert!(!tmp.path().join("x").exists());
}

/// With a teacher, alpha and T default to the distillation defaults (the
/// run distils, and says so); alpha 1 with a teacher is refused, since it
/// would never read it; `--temperature` is the long flag, `-T` and the old
/// `--t` still work.
#[test]
fn defaults_distil_and_a_teacher_left_unread_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    build_train_cache(tmp.path(), &data, "cache");
    let one_epoch = |out: &'static str, extra: &[&'static str]| {
        let settings = ["--epochs", "1", "--batch", "64", "--seed", "3"];
        let args = train_args(
            &data,
            "mlp:784-32-10",
            out,
            &[&settings[..], &["--cache", "cache"], extra].concat(),
        );
        let run = distill(tmp.path(), &args);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let err = one_epoch("default", &[]);
    let first = err.lines().next().unwrap();
    let loss = &model_card(&tmp.path().join("default"))["config"]["loss"];
    let (alpha, t) = (
        loss["alpha"].as_f64().unwrap(),
        loss["temperature"].as_f64().unwrap(),
    );
    assert!(alpha < 1.0, "the default with a cache distils: {loss}");
    assert!(
        first.contains("distilling from cache")
            && first.contains(&format!("T {t}, alpha {alpha}"))
            && first.contains("the defaults chosen on validation")
            && first.contains("1800 samples (200 more held out for validation)"),
        "{first}"
    );
    // The three spellings of the temperature set the same field.
    for (out, flag) in [("long", "--temperature"), ("short", "-T"), ("old", "--t")] {
        one_epoch(out, &[flag, "3", "-q"]);
        let card = model_card(&tmp.path().join(out));
        assert_eq!(card["config"]["loss"]["temperature"], 3.0, "{flag}");
        assert_eq!(
            card["config"]["loss"]["alpha"].as_f64(),
            Some(alpha),
            "{flag}"
        );
    }
    let help = ok(tmp.path(), &["train", "--help"]);
    assert!(
        help.contains("--temperature") && !help.contains("--t "),
        "{help}"
    );
    // Logit standardisation: recorded, announced, and refused for a loss
    // it does not shape.
    let err = one_epoch(
        "lskd",
        &[
            "--logit-standardize",
            "--soft-scale",
            "9",
            "--alpha",
            "0.1",
            "-T",
            "2",
        ],
    );
    let first = err.lines().next().unwrap();
    assert!(
        first.contains("loss kd (logit-standardised), T 2, alpha 0.1, soft scale 9"),
        "{first}"
    );
    let loss = &model_card(&tmp.path().join("lskd"))["config"]["loss"];
    assert_eq!(loss["logit_standardize"], true, "{loss}");
    assert_eq!(loss["soft_scale"], 9.0, "{loss}");
    let metrics = fs::read_to_string(tmp.path().join("lskd/metrics.jsonl")).unwrap();
    let epoch: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    let train_loss = epoch["train_loss"].as_f64().unwrap();
    assert!(train_loss.is_finite() && train_loss > 0.0, "{epoch}");
    fails(
        tmp.path(),
        &mlp_args(
            &data,
            "x",
            &["--cache", "cache", "--loss", "dkd", "--logit-standardize"],
        ),
        &["--logit-standardize", "dkd"],
    );
    // Alpha 1 with a teacher trains on labels alone: refused, naming the
    // flags, before anything is written.
    let mut args = mlp_args(&data, "x", &["--cache", "cache", "--alpha", "1"]);
    args.retain(|&a| a != "-q");
    let err = fails(tmp.path(), &args, &["--alpha", "never be read", "--cache"]);
    assert!(!err.contains("distilling"), "{err}");
    let teacher = s(&teacher_dir());
    fails(
        tmp.path(),
        &mlp_args(&data, "x", &["--online-teacher", &teacher, "--alpha", "1"]),
        &["--alpha", "online teacher", "--online-teacher"],
    );
    assert!(!tmp.path().join("x").exists());
}

/// A distilled run counts the validation images its teacher trained on
/// (from the teacher's card), warns when there are any with the flags that
/// hold out images the teacher never saw, and records the count in its
/// card; `--val-seed` draws the split from the teacher's seed, and a
/// smaller fraction of it is clean. A hard-label run has nothing to count;
/// a teacher whose card cannot tell (trained on other data) gets a note.
#[test]
fn validation_images_the_teacher_trained_on_are_counted_and_named() {
    use distill::train::validation::ValidationSplit;
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let stderr = |args: &[&str]| {
        let out = distill(tmp.path(), args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // A teacher of seed 7 holding out 0.2 of the 2,000 images; another
    // holding out nothing.
    let teacher = [
        "--epochs",
        "1",
        "--seed",
        "7",
        "--val-fraction",
        "0.2",
        "-q",
    ];
    ok(
        tmp.path(),
        &train_args(&data, "mlp:784-32-10", "t", &teacher),
    );
    let all = ["--epochs", "1", "--seed", "7", "--val-fraction", "0", "-q"];
    ok(tmp.path(), &train_args(&data, "mlp:784-32-10", "t0", &all));
    for (t, c) in [("t", "c"), ("t0", "c0")] {
        ok(
            tmp.path(),
            &cache_build_args(t, &data, c, &["--split", "train", "-q"]),
        );
    }
    let held = ValidationSplit::new(0.2, 7, 2000).unwrap();
    let trained_of = |seed: u64, fraction: f64| {
        let split = ValidationSplit::new(fraction, seed, 2000).unwrap();
        split
            .indices()
            .iter()
            .filter(|&&i| !held.holds_out(i))
            .count()
    };

    // The student's own seed (3): most of its 200 images trained the teacher.
    let expect = trained_of(3, 0.1);
    assert!(expect > 100 && expect < 200, "{expect}");
    let kd = ["--cache", "c", "--alpha", "0", "-T", "2"];
    let err = stderr(&mlp_args(&data, "a", &kd));
    assert!(
        err.contains(&format!(
            "warning: {expect} of the 200 validation images trained the teacher (t)"
        )),
        "{err}"
    );
    assert!(
        err.contains("--val-seed 7 with --val-fraction 0.2 or less"),
        "{err}"
    );
    let card = model_card(&tmp.path().join("a"));
    assert_eq!(card["data"]["val_teacher_trained"], expect);
    assert!(card["config"].get("val_seed").is_none(), "{card}");

    // The teacher's seed: 0.1 is a subset of its 0.2, so nothing to warn of;
    // 0.3 holds out 200 images more than the teacher did.
    let clean = [&kd[..], &["--val-seed", "7"]].concat();
    let err = stderr(&mlp_args(&data, "b", &clean));
    assert!(!err.contains("warning"), "{err}");
    let card = model_card(&tmp.path().join("b"));
    assert_eq!(card["data"]["val_teacher_trained"], 0);
    assert_eq!(card["config"]["val_seed"], 7);
    assert_eq!(card["data"]["val_samples"], 200);
    let wide = [&clean[..], &["--val-fraction", "0.3"]].concat();
    let err = stderr(&mlp_args(&data, "b3", &wide));
    assert!(
        err.contains("warning: 200 of the 600 validation images"),
        "{err}"
    );
    // The split follows --val-seed, not --seed: other weights than run a.
    let w = |d: &str| fs::read(tmp.path().join(d).join("model.safetensors")).unwrap();
    assert_ne!(w("a"), w("b"));

    // A teacher that held nothing out trained on every validation image.
    let err = stderr(&mlp_args(&data, "d", &["--cache", "c0", "--alpha", "0"]));
    assert!(
        err.contains("warning: 200 of the 200 validation images trained the teacher (t0)"),
        "{err}"
    );
    assert!(err.contains("The teacher held nothing out"), "{err}");

    // From another working directory the cache's recorded source ("t",
    // relative to where it was built) is found under the cache's ancestors;
    // a different model at "t" relative to here is passed over, because its
    // weights are not the ones the cache was built with.
    let sub = tmp.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::create_dir(sub.join("t")).unwrap();
    for f in ["model.json", "model.safetensors"] {
        fs::copy(tmp.path().join("t0").join(f), sub.join("t").join(f)).unwrap();
    }
    let args = mlp_args(
        &data,
        "../e",
        &["--cache", "../c", "--alpha", "0", "-T", "2"],
    );
    let out = distill(&sub, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {expect} of the 200 validation images trained the teacher ("
        )),
        "{err}"
    );
    assert!(!err.contains("cannot tell"), "{err}");
    assert_eq!(
        model_card(&tmp.path().join("e"))["data"]["val_teacher_trained"],
        expect
    );

    // Hard labels: no teacher, nothing counted.
    let err = stderr(&mlp_args(&data, "h", &[]));
    assert!(!err.contains("teacher"), "{err}");
    assert!(model_card(&tmp.path().join("h"))["data"]
        .get("val_teacher_trained")
        .is_none());

    // The committed teacher trained on the full dataset, not this subset:
    // its card cannot tell, and the run says so (unless quiet).
    let committed = s(&teacher_dir());
    ok(
        tmp.path(),
        &cache_build_args(&committed, &data, "cf", &["--split", "train", "-q"]),
    );
    let args = train_args(
        &data,
        "mlp:784-32-10",
        "f",
        &["--epochs", "1", "--cache", "cf", "--alpha", "0"],
    );
    let err = stderr(&args);
    assert!(
        err.contains("note: cannot tell whether the teacher trained on the validation images"),
        "{err}"
    );
    assert!(model_card(&tmp.path().join("f"))["data"]
        .get("val_teacher_trained")
        .is_none());

    // A sweep's distilled runs count the same images into their cards (the
    // teacher from the cache's recorded source); its baseline counts none.
    fs::write(
        tmp.path().join("sweep.toml"),
        format!(
            "cache = \"c\"\ndata = {data:?}\nstudents = [\"mlp:784-16-10\"]\n\
             temperatures = [2]\nalphas = [0]\nepochs = 1\nbaseline = true\n\
             seed = 3\nout = \"sw\"\n"
        ),
    )
    .unwrap();
    ok(tmp.path(), &["sweep", "--config", "sweep.toml", "-q"]);
    let runs = tmp.path().join("sw/runs");
    let card = model_card(&runs.join("mlp-784-16-10_kd-T2-a0"));
    assert_eq!(card["data"]["val_teacher_trained"], expect);
    assert!(model_card(&runs.join("mlp-784-16-10_baseline"))["data"]
        .get("val_teacher_trained")
        .is_none());

    // A teacher directory retrained since the cache was built is not the
    // cache's teacher: its card says nothing about the cache's targets.
    let again = [
        "--epochs",
        "1",
        "--seed",
        "8",
        "--val-fraction",
        "0.2",
        "-q",
    ];
    // Retraining into a model's directory with other settings is refused
    // and leaves the model as it was; --overwrite replaces it.
    let before = fs::read(tmp.path().join("t").join("model.safetensors")).unwrap();
    fails(
        tmp.path(),
        &train_args(&data, "mlp:784-32-10", "t", &again),
        &["--out", "seed: 7 there, 8 here", "--overwrite"],
    );
    assert_eq!(
        fs::read(tmp.path().join("t").join("model.safetensors")).unwrap(),
        before
    );
    let again = [&again[..], &["--overwrite"]].concat();
    ok(tmp.path(), &train_args(&data, "mlp:784-32-10", "t", &again));
    let args = train_args(
        &data,
        "mlp:784-32-10",
        "g",
        &["--epochs", "1", "--cache", "c", "--alpha", "0"],
    );
    let err = stderr(&args);
    assert!(err.contains("t is not the cache's teacher"), "{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn eval_on_the_held_out_images_pairs_the_models_image_by_image() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let train = |out: &str, seed: &str, val: &[&str]| {
        let settings = ["--epochs", "2", "--batch", "64", "--seed", seed, "-q"];
        ok(
            tmp.path(),
            &train_args(&data, "mlp:784-32-10", out, &[&settings[..], val].concat()),
        )
    };
    train("a", "3", &["--val-seed", "0"]);
    train("b", "4", &["--val-seed", "0"]);
    let out = ok(
        tmp.path(),
        &[
            "eval", "--model", "a", "--model", "b", "--data", &data, "--split", "val",
        ],
    );
    // Each row is the card's validation accuracy: the same images.
    let card_a = model_card(&tmp.path().join("a"));
    let card_b = model_card(&tmp.path().join("b"));
    let n = card_a["data"]["val_samples"].as_u64().unwrap();
    assert_eq!(n, 200, "{card_a}");
    let (va, vb) = (
        card_a["val_accuracy"].as_f64().unwrap(),
        card_b["val_accuracy"].as_f64().unwrap(),
    );
    for v in [va, vb] {
        assert!(out.contains(&format!("{:.2}%", 100.0 * v)), "{out} vs {v}");
    }
    assert!(out.contains(&format!("the same {n} images")), "{out}");
    // The paired row: difference, only b right, only a right, interval, p.
    let row: Vec<&str> = out.lines().last().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row.len()), ("b", 7), "{out}");
    let diff: f64 = row[1].parse().unwrap();
    let only_b: i64 = row[2].parse().unwrap();
    let only_a: i64 = row[3].parse().unwrap();
    let lo: f64 = row[4].trim_matches(['[', ',']).parse().unwrap();
    let hi: f64 = row[5].trim_end_matches(']').parse().unwrap();
    let p: f64 = row[6].parse().unwrap();
    assert!((diff - 100.0 * (vb - va)).abs() < 0.006, "{out}");
    assert!(
        ((only_b - only_a) as f64 - (vb - va) * n as f64).abs() < 1e-6,
        "{out}"
    );
    assert!(
        lo <= diff && diff <= hi && (0.0..=1.0).contains(&p),
        "{out}"
    );
    // A model that held out other images is refused by name, with the flag.
    train("c", "3", &["--val-seed", "1"]);
    fails(
        tmp.path(),
        &[
            "eval", "--model", "a", "--model", "c", "--data", &data, "--split", "val",
        ],
        &[
            "model.json",
            "held out other validation images",
            "--val-seed",
        ],
    );
    // One that held out nothing has no validation images to score.
    train("d", "3", &["--val-fraction", "0"]);
    fails(
        tmp.path(),
        &["eval", "--model", "d", "--data", &data, "--split", "val"],
        &["model.json", "held nothing out"],
    );
    fails(
        tmp.path(),
        &["eval", "--model", "a", "--data", &data, "--split", "valid"],
        &["'valid' is not one of train, test, val"],
    );
}

#[test]
fn eval_compares_recipes_over_images_and_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // Every run of the first recipes holds out seed 0's split; `own` runs
    // hold out their own seed's.
    let train = |out: &str, seed: &str, epochs: &str, own: bool| {
        let shared = ["--val-seed", "0"];
        let settings = [
            &["--epochs", epochs, "--batch", "64", "--seed", seed, "-q"][..],
            if own { &[] } else { &shared[..] },
        ]
        .concat();
        ok(
            tmp.path(),
            &train_args(&data, "mlp:784-32-10", out, &settings),
        )
    };
    for (out, seed, epochs) in [
        ("a3", "3", "1"),
        ("a4", "4", "1"),
        ("b3", "3", "2"),
        ("b4", "4", "2"),
        ("c5", "5", "2"),
        ("c6", "6", "2"),
    ] {
        train(out, seed, epochs, false);
    }
    let val = |run: &str| {
        model_card(&tmp.path().join(run))["val_accuracy"]
            .as_f64()
            .unwrap()
    };
    // B's runs listed in the other seed order: they are paired by the cards' seeds.
    let out = ok(
        tmp.path(),
        &[
            "eval", "--arm", "a=a3,a4", "--arm", "b=b4,b3", "--arm", "c=c5,c6", "--data", &data,
            "--split", "val",
        ],
    );
    let row = |name: &str| -> Vec<String> {
        let words: Vec<&str> = name.split(' ').collect();
        out.lines()
            .find(|l| {
                l.split_whitespace()
                    .take(words.len())
                    .eq(words.iter().copied())
            })
            .unwrap_or_else(|| panic!("no row {name}: {out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // Every run is scored; each recipe's row is the mean of its runs.
    for run in ["a3", "a4", "b4", "b3", "c5", "c6"] {
        assert!(row(run)[1].ends_with('%'), "{out}");
    }
    let recipe_a = row("a");
    assert_eq!(&recipe_a[1..2], ["2"], "{out}");
    let mean_a = (val("a3") + val("a4")) / 2.0;
    let got: f64 = recipe_a[2].trim_end_matches('%').parse().unwrap();
    assert!((got - 100.0 * mean_a).abs() < 0.006, "{out}");
    assert_eq!(&recipe_a[4..], ["3", "4"], "{out}");
    // B against A: the difference of the means, and seed by seed in A's order.
    let b = row("b a");
    let b = &b[1..];
    let diff: f64 = b[1].parse().unwrap();
    let mean_b = (val("b3") + val("b4")) / 2.0;
    assert!((diff - 100.0 * (mean_b - mean_a)).abs() < 0.006, "{out}");
    let lo: f64 = b[2].trim_matches(['[', ',']).parse().unwrap();
    let hi: f64 = b[3].trim_end_matches(']').parse().unwrap();
    let p: f64 = b[4].parse().unwrap();
    assert!(
        lo <= diff && diff <= hi && (0.0..=1.0).contains(&p),
        "{out}"
    );
    for (i, seed) in ["3", "4"].iter().enumerate() {
        let d: f64 = b[5 + i].parse().unwrap();
        let want = 100.0 * (val(&format!("b{seed}")) - val(&format!("a{seed}")));
        assert!((d - want).abs() < 0.006, "seed {seed}: {out}");
    }
    let slo: f64 = b[7].trim_matches(['[', ',']).parse().unwrap();
    let shi: f64 = b[8].trim_end_matches(']').parse().unwrap();
    assert!(slo <= diff && diff <= shi, "{out}");
    // Other seeds: not paired, and said so; over seeds, Welch's interval
    // around the difference of the means; every pair once.
    for against in ["a", "b"] {
        let c = row(&format!("c {against}"));
        let text = c.join(" ");
        assert!(text.contains("not paired by seed: Welch"), "{out}");
        let diff: f64 = c[2].parse().unwrap();
        let n = c.len();
        let lo: f64 = c[n - 2].trim_matches(['[', ',']).parse().unwrap();
        let hi: f64 = c[n - 1].trim_end_matches(']').parse().unwrap();
        assert!(lo <= diff && diff <= hi, "{out}");
    }
    assert!(
        out.lines().all(|l| !l.starts_with("a ") || l.contains('%')),
        "{out}"
    );
    // Runs whose seeds each held out their own images: each run scored on
    // its own, the recipes compared over seeds only.
    for (out, seed, epochs) in [
        ("p3", "3", "1"),
        ("p4", "4", "1"),
        ("q3", "3", "2"),
        ("q4", "4", "2"),
    ] {
        train(out, seed, epochs, true);
    }
    let out = ok(
        tmp.path(),
        &[
            "eval", "--arm", "p=p3,p4", "--arm", "q=q4,q3", "--data", &data, "--split", "val",
        ],
    );
    assert!(out.contains("each run on its own held-out images"), "{out}");
    let q: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("q ") && l.contains(" p "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(&q[3..5], ["-", "-"], "{out}");
    for (i, seed) in ["3", "4"].iter().enumerate() {
        let d: f64 = q[5 + i].parse().unwrap();
        let want = 100.0 * (val(&format!("q{seed}")) - val(&format!("p{seed}")));
        assert!((d - want).abs() < 0.006, "seed {seed}: {out}");
    }
    assert!(q[7].starts_with('['), "{out}");
    // Bad input names the flag or the recipe.
    for (arm, message) in [
        ("a", "no '='"),
        ("=a3", "no recipe name"),
        ("a=", "lists no runs"),
    ] {
        fails(
            tmp.path(),
            &["eval", "--arm", arm, "--data", &data],
            &["--arm", message],
        );
    }
    fails(
        tmp.path(),
        &["eval", "--arm", "a=a3", "--arm", "a=b3", "--data", &data],
        &["--arm", "'a' is named twice"],
    );
    for arms in [["a=a3,a3", "b=b3,b4"], ["a=a3,a4", "b=b3,./a4"]] {
        fails(
            tmp.path(),
            &["eval", "--arm", arms[0], "--arm", arms[1], "--data", &data],
            &["--arm", "is listed twice", "one seed of one recipe"],
        );
    }
    fails(
        tmp.path(),
        &["eval", "--arm", "a=a3", "--model", "b3", "--data", &data],
        &["--model", "--arm"],
    );
}

/// `eval --arm` takes a run without a card (a bare weights file: its seed
/// is unknown, as for an imported model), and refuses a damaged card before
/// it scores any model.
#[test]
fn eval_arms_take_runs_without_a_card_and_refuse_a_damaged_one_first() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    ok(
        tmp.path(),
        &train_args(
            &data,
            "mlp:784-32-10",
            "r3",
            &["--epochs", "1", "--seed", "3", "-q"],
        ),
    );
    for dir in ["bare", "damaged"] {
        fs::create_dir(tmp.path().join(dir)).unwrap();
        fs::copy(
            tmp.path().join("r3/model.safetensors"),
            tmp.path().join(dir).join("model.safetensors"),
        )
        .unwrap();
    }
    let out = ok(
        tmp.path(),
        &["eval", "--arm", "a=r3", "--arm", "b=bare", "--data", &data],
    );
    let seeds = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name) && l.contains('%'))
            .and_then(|l| l.split_whitespace().last().map(String::from))
            .unwrap_or_else(|| panic!("no row {name}: {out}"))
    };
    assert_eq!(seeds("a "), "3", "{out}");
    assert_eq!(seeds("b "), "?", "{out}");
    assert!(out.contains("not paired by seed"), "{out}");
    let card = fs::read_to_string(tmp.path().join("r3/model.json")).unwrap();
    assert!(card.contains("\"seed\": 3"), "{card}");
    fs::write(
        tmp.path().join("damaged/model.json"),
        card.replace("\"seed\": 3", "\"seed\": \"three\""),
    )
    .unwrap();
    let run = distill(
        tmp.path(),
        &[
            "eval",
            "--arm",
            "a=r3",
            "--arm",
            "b=damaged",
            "--data",
            &data,
        ],
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("damaged/model.json: not a distill model card"),
        "{stderr}"
    );
    // Refused before any model was scored: no table was printed.
    assert!(
        run.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
}

/// A checkpoint continues only the run that wrote it: on the same data and
/// with the same online teacher (a resume on other data, or taught by
/// another model, would mix two runs in one model). A finished online run
/// counts as finished only for its own teacher.
#[test]
fn a_checkpoint_resumes_only_on_its_data_and_with_its_teacher() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // Other data of the same shape: the subset's test split as a training split.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    for (from, to) in [
        ("t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"),
        ("t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    ] {
        fs::copy(small_data().join(from), other.join(to)).unwrap();
    }
    let other = s(&other);
    let stop = ["--checkpoint-every", "7", "--stop-after-steps", "5"];
    ok(tmp.path(), &mlp_args(&data, "d", &stop));
    fails(
        tmp.path(),
        &mlp_args(&other, "d", &["--resume"]),
        &[
            "checkpoint.safetensors",
            "training on data with fingerprint",
            "--data",
        ],
    );
    // Taught online by the committed teacher, then resumed with another.
    let teacher = s(&teacher_dir());
    ok(tmp.path(), &mlp_args(&data, "student", &[]));
    fn with<'a>(teacher: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        [&["--online-teacher", teacher, "--alpha", "0.5"][..], extra].concat()
    }
    ok(tmp.path(), &mlp_args(&data, "o", &with(&teacher, &stop)));
    fails(
        tmp.path(),
        &mlp_args(&data, "o", &with("student", &["--resume"])),
        &[
            "checkpoint.safetensors",
            "another directory",
            "--online-teacher",
        ],
    );
    ok(
        tmp.path(),
        &mlp_args(&data, "o", &with(&teacher, &["--resume"])),
    );
    let card = model_card(&tmp.path().join("o"));
    assert_eq!(
        card["online_teacher"]["spec"], "cnn:c32-p-c64-p-f128-10",
        "{card}"
    );
    let again = ok(
        tmp.path(),
        &mlp_args(&data, "o", &with(&teacher, &["--resume"])),
    );
    assert!(again.contains("already finished"), "{again}");
    let other_teacher = ok(
        tmp.path(),
        &mlp_args(&data, "o", &with("student", &["--resume"])),
    );
    assert!(
        !other_teacher.contains("already finished"),
        "{other_teacher}"
    );
}

/// A model whose activations cannot fit in memory is refused before the
/// run starts, naming the flags to change, and writes nothing.
#[test]
fn a_run_past_the_machines_memory_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    // 1M channels of 28x28 a sample: hundreds of terabytes at batch 128.
    fails(
        tmp.path(),
        &train_args(&data, "cnn:c1000000-gap-10", "huge", &["--epochs", "1"]),
        &["--batch", "--student", "GiB of memory"],
    );
    assert!(!tmp.path().join("huge").exists());
}

/// `make distill-best` gives each arm its own flags (`BEST_PLAIN_FLAGS`,
/// `BEST_BASE_FLAGS`, `BEST_KD_FLAGS`: the batch size validation picks for
/// it, say), each in a directory named by them, so a run of other flags is
/// never taken for it; without them the runs keep their earlier names.
/// Read from `make -n`, which runs nothing.
#[test]
fn make_distill_best_gives_each_arm_its_own_flags() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dry_run = |vars: &[&str]| -> String {
        let out = std::process::Command::new("make")
            .arg("-n")
            .arg("--no-print-directory")
            .arg("-C")
            .arg(root)
            .arg("distill-best")
            .args(["STUDENT=mlp:784-32-10", "BEST_SEEDS=0"])
            .args(vars)
            .output()
            .expect("make runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One line per shell command: continuation lines joined, the
        // seed loop's commands apart.
        String::from_utf8_lossy(&out.stdout)
            .replace("\\\n", " ")
            .replace(';', "\n")
    };
    let arm = |text: &str, marker: &str| -> String {
        text.lines()
            .find(|l| l.contains("distill train") && l.contains(marker))
            .unwrap_or_else(|| panic!("no train line with {marker}:\n{text}"))
            .to_string()
    };
    let plain = dry_run(&[]);
    let lines = [
        arm(&plain, "-baseline-s$s/model.json"),
        arm(&plain, "-baseline-aug-flip-shift2-s$s/model.json"),
        arm(&plain, "-kd-T1-a0.1-s$s/model.json"),
    ];
    for l in &lines {
        assert!(!l.contains("--batch"), "{l}");
    }
    let text = dry_run(&[
        "BEST_PLAIN_FLAGS=--batch 128",
        "BEST_BASE_FLAGS=--batch 32",
        "BEST_KD_FLAGS=--batch 64",
    ]);
    let plain_arm = arm(&text, "--augment");
    assert!(plain_arm.contains(" --batch 32 "), "{plain_arm}");
    let kd = arm(&text, "--cache");
    assert!(kd.contains(" --batch 64 "), "{kd}");
    let base = text
        .lines()
        .find(|l| l.contains("distill train") && !l.contains("--augment") && !l.contains("--cache"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(base.contains(" --batch 128 "), "{base}");
    // Each arm's directory is named by its own flags, apart from the
    // earlier names and from each other.
    let dir = |l: &str| {
        l.split_whitespace()
            .skip_while(|w| *w != "--out")
            .nth(1)
            .unwrap_or_else(|| panic!("{l}"))
            .to_string()
    };
    for (l, earlier) in [base, &plain_arm, &kd].iter().zip(&lines) {
        assert_ne!(dir(l), dir(earlier), "{l}");
    }
    let dirs: std::collections::HashSet<_> =
        [base, &plain_arm, &kd].iter().map(|l| dir(l)).collect();
    assert_eq!(dirs.len(), 3, "{text}");
}

/// A test cache of another teacher would make the run's teacher agreement
/// and the teacher's accuracy that model's: refused, for a cache's teacher,
/// an online teacher and a sweep, before anything is written.
#[test]
fn a_test_cache_of_another_teacher_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    let other = s(&teacher_dir().with_file_name("fashion-cnn-long-val"));
    ok(cwd, &cache_build_args(&teacher, &data, "train", &["-q"]));
    for (t, out) in [(&teacher, "test"), (&other, "test-other")] {
        ok(
            cwd,
            &cache_build_args(t, &data, out, &["--split", "test", "-q"]),
        );
    }
    let run = |test_cache: &str, source: &[&str]| {
        let mut a = train_args(&data, "mlp:784-16-10", "run", &["--epochs", "1", "-q"]);
        a.extend_from_slice(source);
        a.extend_from_slice(&["--test-cache", test_cache]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let refused = [
        "--test-cache",
        "test-other",
        "another teacher",
        "fashion-cnn-long-val",
    ];
    for source in [
        &["--cache", "train"][..],
        &["--online-teacher", &teacher][..],
    ] {
        let a = run("test-other", source);
        fails(
            cwd,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &refused,
        );
        assert!(!cwd.join("run").exists());
    }
    let a = run("test", &["--cache", "train"]);
    ok(cwd, &strs(&a));
    // Imported logits (under any file name) record no model's weights: a
    // pair of them is not compared.
    for (split, n, out) in [
        ("train", 2000usize, "imp-train"),
        ("test", 1000, "imp-test"),
    ] {
        let logits: Vec<u8> = (0..n * 10)
            .flat_map(|i| ((i % 7) as f32 - 3.0).to_le_bytes())
            .collect();
        let file = format!("{split}-logits.bin");
        write_npy(&cwd.join(&file), "<f4", &[n, 10], &logits);
        ok(
            cwd,
            &cache_import_args(&file, &data, split, "4", out, &["-q"]),
        );
    }
    let mut a = train_args(&data, "mlp:784-16-10", "imp", &["--epochs", "1", "-q"]);
    a.extend_from_slice(&["--cache", "imp-train", "--test-cache", "imp-test"]);
    ok(cwd, &a);
    fails(
        cwd,
        &[
            "sweep",
            "--cache",
            "train",
            "--test-cache",
            "test-other",
            "--data",
            &data,
            "--students",
            "mlp:784-16-10",
            "--epochs",
            "1",
            "--out",
            "sweep",
            "-q",
        ],
        &refused,
    );
    assert!(!cwd.join("sweep").exists());
}

/// `--out` of another command (a cache, a dataset) is refused even with
/// `--overwrite`; files a run writes that no run wrote (a user's
/// `model.py`) are not replaced without it; weights left without their
/// card are named as a run stopped while writing its model.
#[test]
fn out_is_refused_where_a_run_would_write_over_what_is_not_a_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    let teacher = s(&teacher_dir());
    ok(cwd, &cache_build_args(&teacher, &data, "cache", &["-q"]));
    let manifest = fs::read(cwd.join("cache/manifest.json")).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut a = mlp_args(&data, out, &[]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for extra in [&[][..], &["--overwrite"][..]] {
        fails(
            cwd,
            &strs(&run("cache", extra)),
            &["--out", "cache is a teacher cache"],
        );
    }
    assert_eq!(fs::read(cwd.join("cache/manifest.json")).unwrap(), manifest);
    assert!(!cwd.join("cache/model.safetensors").exists());
    // A dataset's directory.
    let copy = cwd.join("data");
    fs::create_dir(&copy).unwrap();
    for f in fs::read_dir(small_data()).unwrap().flatten() {
        fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    fails(
        cwd,
        &strs(&run("data", &[])),
        &["--out", "is a dataset's directory"],
    );
    // A user's own files of a run's names.
    fs::create_dir(cwd.join("mine")).unwrap();
    fs::write(cwd.join("mine/model.py"), "print('mine')").unwrap();
    fails(
        cwd,
        &strs(&run("mine", &[])),
        &[
            "--out",
            "mine holds model.py but no run's model",
            "--overwrite",
        ],
    );
    assert_eq!(
        fs::read_to_string(cwd.join("mine/model.py")).unwrap(),
        "print('mine')"
    );
    ok(cwd, &strs(&run("mine", &["--overwrite"])));
    // A run's metrics alone (a run killed before its first checkpoint, by
    // a version that left no lock) are a run's: it starts over.
    fs::create_dir(cwd.join("killed")).unwrap();
    fs::copy(
        cwd.join("mine/metrics.jsonl"),
        cwd.join("killed/metrics.jsonl"),
    )
    .unwrap();
    ok(cwd, &strs(&run("killed", &[])));
    // Weights without their card.
    fs::remove_file(cwd.join("mine/model.json")).unwrap();
    fails(
        cwd,
        &strs(&run("mine", &[])),
        &["mine holds weights without their card", "--overwrite"],
    );
}

/// A spec with spaces around it trains and is recorded as the sweep reads
/// it; a seed for augmentation draws without an augmentation is refused.
#[test]
fn a_spaced_spec_is_recorded_trimmed_and_a_lone_augment_seed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let args = train_args(&data, " mlp:784-16-10 ", "run", &["--epochs", "1", "-q"]);
    ok(tmp.path(), &args);
    assert_eq!(
        model_card(&tmp.path().join("run"))["config"]["spec"],
        "mlp:784-16-10"
    );
    let teacher = s(&teacher_dir());
    fails(
        tmp.path(),
        &cache_build_args(&teacher, &data, "c", &["--augment-seed", "5"]),
        &["--augment-seed", "--augment"],
    );
    assert!(!tmp.path().join("c").exists());
}

/// A plot that cannot be drawn fails the run (exit 2, naming the file)
/// only once the run is finished as a whole: model and card written and
/// the checkpoint removed, so `--resume` has nothing left to do.
#[test]
fn a_plot_that_cannot_be_drawn_leaves_a_finished_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let run = |extra: &[&str]| {
        let mut a = train_args(&data, "mlp:784-16-10", "run", &["--epochs", "2", "-q"]);
        a.extend_from_slice(&["--checkpoint-every", "5"]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    // A directory where the plot goes: no run's file, so --overwrite.
    let dir = tmp.path().join("run");
    fs::create_dir_all(dir.join("curves.png")).unwrap();
    fails(
        tmp.path(),
        &strs(&run(&["--overwrite"])),
        &["curves.png", "Is a directory"],
    );
    assert_eq!(model_card(&dir)["config"]["epochs"], 2);
    let left: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("checkpoint"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = ok(tmp.path(), &strs(&run(&["--resume"])));
    assert!(out.contains("already finished"), "{out}");
}

/// `--train-fraction`: a run with few labels trains on part of the samples
/// not held out, recorded in its card; with a cache too; a fraction outside
/// (0, 1] is refused naming the flag.
#[test]
fn a_train_fraction_trains_on_part_of_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    build_train_cache(tmp.path(), &data, "cache");
    let settings = ["--epochs", "1", "--batch", "64", "--seed", "3"];
    let run = |out: &'static str, extra: &[&'static str]| {
        let args = train_args(
            &data,
            "mlp:784-16-10",
            out,
            &[&settings[..], extra].concat(),
        );
        let run = distill(tmp.path(), &args);
        let err = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{err}");
        err
    };
    let err = run("few", &["--train-fraction", "0.1"]);
    let first = err.lines().next().unwrap();
    assert!(
        first.contains(
            "180 samples (200 more held out for validation, 1620 left out by --train-fraction)"
        ),
        "{first}"
    );
    let card = model_card(&tmp.path().join("few"));
    assert_eq!(card["config"]["train_fraction"], 0.1);
    assert_eq!(card["data"]["trained_samples"], 180);
    assert_eq!(card["data"]["val_samples"], 200);
    // Every sample: nothing new in the card.
    run("all", &["-q"]);
    let card = model_card(&tmp.path().join("all"));
    assert!(card["config"].get("train_fraction").is_none(), "{card}");
    assert!(card["data"].get("trained_samples").is_none(), "{card}");
    // From a cache, without a validation split.
    let err = run(
        "few-kd",
        &[
            "--cache",
            "cache",
            "--val-fraction",
            "0",
            "--train-fraction",
            "0.25",
        ],
    );
    assert!(
        err.lines()
            .next()
            .unwrap()
            .contains("500 samples (1500 more left out by --train-fraction)"),
        "{err}"
    );
    assert_eq!(
        model_card(&tmp.path().join("few-kd"))["data"]["trained_samples"],
        500
    );
    // Fewer samples, fewer steps: the one-epoch runs differ.
    assert_ne!(
        fs::read(tmp.path().join("few/model.safetensors")).unwrap(),
        fs::read(tmp.path().join("all/model.safetensors")).unwrap()
    );
    let refused = |extra: &[&str], needles: &[&str]| {
        let args = train_args(
            &data,
            "mlp:784-16-10",
            "bad",
            &[&settings[..], extra].concat(),
        );
        fails(tmp.path(), &args, needles);
        assert!(!tmp.path().join("bad/model.safetensors").exists());
    };
    for bad in ["0", "1.5", "-0.1", "nan"] {
        refused(
            &["--train-fraction", bad],
            &["--train-fraction", "must be above 0"],
        );
    }
    // Mixed images draw partners from the whole split: refused, from the
    // flag and from a view set of mixed views.
    let mixed = ["--train-fraction", "mixup", "partner"];
    refused(&["--train-fraction", "0.1", "--augment", "mixup=1"], &mixed);
    let views = [
        "--split",
        "train",
        "--augment",
        "mixup=1",
        "--views",
        "2",
        "-q",
    ];
    let teacher = s(&teacher_dir());
    ok(
        tmp.path(),
        &cache_build_args(&teacher, &data, "mixed-views", &views),
    );
    refused(
        &["--train-fraction", "0.1", "--cache", "mixed-views"],
        &mixed,
    );
}
