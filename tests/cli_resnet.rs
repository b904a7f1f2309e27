//! Residual networks end to end: a narrow ResNet-8 (three stages of one
//! basic block, batch norm, a stride-2 block per later stage) trains on the
//! committed subset, saves its running statistics and `model.py`, and
//! `distill eval` reads them back to the training run's own test accuracy;
//! a run killed and resumed ends with the same bytes (dropout masks and
//! running statistics included); the trained network prunes 50% structured
//! and fine-tunes from its own cache; `model info` lists each block with its
//! parameters and FLOPs.

use std::fs;

use distill::model::io::read_safetensors;

use crate::util::*;

const RESNET8: &str = "resnet:4x1-8x1-16x1-d0.2-10";

#[test]
fn a_resnet_trains_saves_its_running_statistics_and_evaluates_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let settings = ["--epochs", "2", "--batch", "64", "--seed", "3", "-q"];
    let out = ok(tmp.path(), &train_args(&data, RESNET8, "r8", &settings));
    assert!(out.contains("final test accuracy"), "{out}");
    let run = tmp.path().join("r8");
    let card = model_card(&run);
    let acc = card["test_accuracy"].as_f64().unwrap();
    // Two epochs on 1,800 images: above chance (10%).
    assert!(acc > 0.2, "accuracy {acc}");
    // The running statistics moved (one update per step) and are saved
    // under PyTorch's names.
    let (_, tensors) = read_safetensors(&run.join("model.safetensors")).unwrap();
    let steps = tensors
        .iter()
        .find(|t| t.name == "layers.1.num_batches_tracked")
        .unwrap();
    assert_eq!(steps.data, vec![58.0], "2 epochs of ceil(1800 / 64) steps");
    let var = tensors
        .iter()
        .find(|t| t.name == "layers.4.bn2.running_var")
        .unwrap();
    assert!(var.data.iter().any(|v| *v != 1.0), "{var:?}");
    // eval uses them: the same accuracy as the run measured.
    let eval = ok(tmp.path(), &["eval", "--model", "r8", "--data", &data]);
    assert!(
        eval.contains(&format!("{:.2}%", 100.0 * acc)),
        "{eval} vs {acc}"
    );
    let py = fs::read_to_string(run.join("model.py")).unwrap();
    assert!(py.contains("class BasicBlock(nn.Module):"), "{py}");
    assert!(py.contains("nn.Dropout(0.2)"), "{py}");
    // Structured pruning halves every stage, blocks and shortcuts together;
    // the pruned model is fine-tuned from the resnet teacher's cache
    // (hybrid: labels and teacher targets).
    let pruned = ok(
        tmp.path(),
        &[
            "prune",
            "--model",
            "r8",
            "--method",
            "l1-structured",
            "--sparsity",
            "0.5",
            "--out",
            "small",
            "-q",
        ],
    );
    assert!(pruned.contains("resnet:2x1-4x1-8x1-d0.2-10"), "{pruned}");
    assert!(tmp.path().join("small/model.py").exists());
    ok(tmp.path(), &cache_build_args("r8", &data, "cache", &["-q"]));
    let tuned = ok(
        tmp.path(),
        &train_args(
            &data,
            "resnet:2x1-4x1-8x1-d0.2-10",
            "tuned",
            &[
                "--cache",
                "cache",
                "--init-from",
                "small",
                "--alpha",
                "0.5",
                "--epochs",
                "1",
                "--batch",
                "64",
                "--seed",
                "3",
                "-q",
            ],
        ),
    );
    assert!(tuned.contains("final test accuracy"), "{tuned}");
    // Killed after 40 of 58 steps and resumed: the same bytes as the
    // uninterrupted run (dropout masks come from the seed and the step; the
    // checkpoint holds the running statistics).
    let stopped = ok(
        tmp.path(),
        &train_args(
            &data,
            RESNET8,
            "again",
            &[
                &settings[..],
                &["--checkpoint-every", "7", "--stop-after-steps", "40"],
            ]
            .concat(),
        ),
    );
    assert!(stopped.contains("stopped after 40 steps"), "{stopped}");
    ok(
        tmp.path(),
        &train_args(
            &data,
            RESNET8,
            "again",
            &[&settings[..], &["--checkpoint-every", "7", "--resume"]].concat(),
        ),
    );
    assert_eq!(
        fs::read(run.join("model.safetensors")).unwrap(),
        fs::read(tmp.path().join("again/model.safetensors")).unwrap(),
        "resumed run differs"
    );
}

#[test]
fn model_info_lists_blocks_with_parameters_and_flops() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(
        tmp.path(),
        &["model", "info", "resnet:i3x32x32-16x3-32x3-64x3-10"],
    );
    // ResNet-20 with projection shortcuts: 9 blocks.
    assert_eq!(out.matches("block ").count(), 9, "{out}");
    assert!(
        out.contains("block 16->32 @32x32 s2 ->16x16 +proj"),
        "{out}"
    );
    assert!(out.contains("total parameters 272474"), "{out}");
    fails(
        tmp.path(),
        &["model", "info", "resnet:16-10"],
        &["unknown stage '16'", "WxN"],
    );
}
