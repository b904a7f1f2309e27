//! RGB data end to end: CIFAR-10 and CIFAR-100 binary directories and NHWC
//! arrays written by the tests in the exact formats (no copy of CIFAR can
//! be fetched here), hostile variants of them, the input normalisation a
//! model stores and every command applies, and a view set of padded crops
//! whose images the loader reproduces exactly.

use std::fs;
use std::path::Path;

use crate::util::*;

/// CIFAR-10's training batch files.
const BATCHES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

/// A 3x32x32 image of class `class` (its colour) with a texture that
/// depends on `i`, channel planes red, green, blue.
fn image(class: u32, i: u32) -> Vec<u8> {
    (0..3072u32)
        .map(|p| {
            let (c, y, x) = (p / 1024, (p / 32) % 32, p % 32);
            let colour = [class * 25, 250 - class * 25, (class * 77) % 200][c as usize];
            let texture = (x * 7 + y * 13 + i * 31) % 40;
            (colour + texture).min(255) as u8
        })
        .collect()
}

/// CIFAR-10 records: one label byte, then the image.
fn cifar10_records(first: u32, n: u32) -> Vec<u8> {
    (first..first + n)
        .flat_map(|i| {
            let class = i % 10;
            let mut r = vec![class as u8];
            r.extend(image(class, i));
            r
        })
        .collect()
}

/// A CIFAR-10 directory: five batches of `per_batch` records, a test batch
/// of `test` records.
fn cifar10_dir(dir: &Path, per_batch: u32, test: u32) {
    fs::create_dir_all(dir).unwrap();
    for (b, name) in BATCHES.iter().enumerate() {
        fs::write(
            dir.join(name),
            cifar10_records(b as u32 * per_batch, per_batch),
        )
        .unwrap();
    }
    fs::write(dir.join("test_batch.bin"), cifar10_records(1000, test)).unwrap();
}

/// CIFAR-100 records: coarse label, fine label, image.
fn cifar100_records(first: u32, n: u32) -> Vec<u8> {
    (first..first + n)
        .flat_map(|i| {
            let (coarse, fine) = (i % 20, (i * 7) % 100);
            let mut r = vec![coarse as u8, fine as u8];
            r.extend(image(coarse % 10, i));
            r
        })
        .collect()
}

/// The per-channel mean and std (population) of the training images, as
/// `Normalization::of_dataset` measures them, from the generator.
fn expected_stats(per_batch: u32) -> ([f64; 3], [f64; 3]) {
    let mut sum = [0f64; 3];
    let mut sq = [0f64; 3];
    let n = 5 * per_batch;
    for i in 0..n {
        for (p, &v) in image(i % 10, i).iter().enumerate() {
            let x = f64::from(v) / 255.0;
            sum[p / 1024] += x;
            sq[p / 1024] += x * x;
        }
    }
    let count = f64::from(n) * 1024.0;
    let mean = sum.map(|s| s / count);
    let std = [0, 1, 2].map(|c| (sq[c] / count - mean[c] * mean[c]).sqrt());
    (mean, std)
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// The accuracy `distill eval` prints for the one model, as a fraction.
fn eval_accuracy(cwd: &Path, model: &str, data: &str, split: &str) -> f64 {
    let out = ok(
        cwd,
        &["eval", "--model", model, "--data", data, "--split", split],
    );
    let row = out.lines().nth(1).unwrap_or_else(|| panic!("{out}"));
    row.split_whitespace()
        .find_map(|w| w.strip_suffix('%').and_then(|v| v.parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{row}"))
        / 100.0
}

#[test]
fn a_cifar10_directory_trains_normalised_caches_evaluates_and_prunes() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    cifar10_dir(&cwd.join("cifar"), 40, 100);
    let d = s(&cwd.join("cifar"));
    let info = ok(cwd, &["data", "info", "--data", &d]);
    assert!(
        info.contains("train: 200 samples of 3x32x32, 10 classes"),
        "{info}"
    );
    assert!(
        info.contains("test: 100 samples of 3x32x32, 10 classes"),
        "{info}"
    );

    // A cnn spec without an input reads the data's 3x32x32 images; the
    // default normalisation is that of the images the run trains on,
    // stored with it: with nothing held out, the training split's.
    let quick = ["--epochs", "4", "--batch", "16", "--lr", "0.01", "-q"];
    let all = [&quick[..], &["--val-fraction", "0"]].concat();
    ok(cwd, &train_args(&d, "cnn:c4-p-p-p-10", "all", &all));
    let stats = |run: &str| {
        let card = model_card(&cwd.join(run));
        (
            floats(&card["normalization"]["mean"]),
            floats(&card["normalization"]["std"]),
        )
    };
    let (mean, std) = expected_stats(40);
    let (m, sd) = stats("all");
    for c in 0..3 {
        assert!((m[c] - mean[c]).abs() < 1e-5, "mean {c}: {m:?} vs {mean:?}");
        assert!((sd[c] - std[c]).abs() < 1e-5, "std {c}: {sd:?} vs {std:?}");
    }
    // The validation images a run holds out are not measured.
    ok(cwd, &train_args(&d, "cnn:c4-p-p-p-10", "t", &quick));
    let card = model_card(&cwd.join("t"));
    assert_eq!(card["spec"], "cnn:i3x32x32-c4-p-p-p-10");
    assert_eq!(card["config"]["normalize"], "auto");
    let (m, _) = stats("t");
    assert!(
        (0..3).any(|c| (m[c] - mean[c]).abs() > 1e-4),
        "held-out images measured: {m:?} vs {mean:?}"
    );
    assert!(card["pytorch"]
        .as_str()
        .unwrap()
        .contains("normalize=Normalize(["));
    let acc = card["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.3, "the teacher learns the colours: {acc}");
    let info = ok(cwd, &["model", "info", "t"]);
    for needle in [
        "input normalisation: mean [",
        "class Normalize",
        "nn.Conv2d(3, 4, 3",
    ] {
        assert!(info.contains(needle), "{needle}: {info}");
    }

    // Evaluation applies the model's normalisation: the card's accuracy.
    assert!((eval_accuracy(cwd, "t", &d, "test") - acc).abs() < 0.006);

    // Phase one applies it too: the cache's teacher accuracy on the train
    // split is evaluation's, and the manifest records the normalisation.
    ok(
        cwd,
        &cache_build_args("t", &d, "c", &["--encoding", "f32", "-q"]),
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(cwd.join("c/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["teacher"]["normalization"], card["normalization"]);
    let cached = manifest["teacher_stats"]["accuracy"].as_f64().unwrap();
    assert!((eval_accuracy(cwd, "t", &d, "train") - cached).abs() < 0.006);
    let inspect = ok(cwd, &["cache", "inspect", "c"]);
    assert!(
        inspect.contains("teacher input normalisation: mean ["),
        "{inspect}"
    );

    // Phase two from the cache, a student with its own (equal) statistics.
    let distil = ["--cache", "c", "--alpha", "0.5", "--epochs", "1", "-q"];
    ok(cwd, &train_args(&d, "cnn:c2-p-p-p-10", "s", &distil));
    let student = model_card(&cwd.join("s"));
    assert_eq!(student["normalization"], card["normalization"]);
    assert_eq!(student["cache"]["teacher_spec"], "cnn:i3x32x32-c4-p-p-p-10");

    // Pruning keeps the normalisation and measures with it.
    let pruned = ok(
        cwd,
        &[
            "prune",
            "--model",
            "t",
            "--method",
            "l1-structured",
            "--sparsity",
            "0.5",
            "--out",
            "p",
            "--data",
            &d,
        ],
    );
    let row = pruned
        .lines()
        .find(|l| l.starts_with("test accuracy"))
        .unwrap();
    let before: f64 = row
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((before / 100.0 - acc).abs() < 0.006, "{pruned}");
    let info_p = ok(cwd, &["model", "info", "p"]);
    let norm_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("input normalisation"))
            .map(String::from)
    };
    assert_eq!(norm_line(&info_p), norm_line(&info));

    // --init-from keeps the starting model's normalisation under auto.
    ok(
        cwd,
        &[
            "train",
            "--data",
            &d,
            "--init-from",
            "t",
            "--out",
            "f",
            "--epochs",
            "1",
            "-q",
        ],
    );
    assert_eq!(
        model_card(&cwd.join("f"))["normalization"],
        card["normalization"]
    );

    // none, given values, and values of the wrong channel count.
    ok(
        cwd,
        &train_args(
            &d,
            "cnn:c2-p-p-p-10",
            "n",
            &["--epochs", "1", "--normalize", "none", "-q"],
        ),
    );
    let none = model_card(&cwd.join("n"));
    assert!(none.get("normalization").is_none(), "{none}");
    assert_eq!(none["config"]["normalize"], "none");
    let given = [
        "--epochs",
        "1",
        "--normalize",
        "0.5,0.5,0.5/0.25,0.25,0.25",
        "-q",
    ];
    ok(cwd, &train_args(&d, "cnn:c2-p-p-p-10", "g", &given));
    assert_eq!(
        floats(&model_card(&cwd.join("g"))["normalization"]["std"]),
        vec![0.25; 3]
    );
    fails(
        cwd,
        &train_args(
            &d,
            "cnn:c2-p-p-p-10",
            "w",
            &["--normalize", "0.5/0.25", "-q"],
        ),
        &["--normalize", "1 channels", "3x32x32"],
    );
    fails(
        cwd,
        &train_args(&d, "cnn:c2-p-p-p-10", "w", &["--normalize", "mean", "-q"]),
        &["--normalize", "MEANS/STDS"],
    );
    // A spec that names another input is refused, naming both shapes.
    fails(
        cwd,
        &train_args(&d, "cnn:i12x16x16-c2-10", "w", &["-q"]),
        &["reads 12x16x16 images", "3x32x32"],
    );
}

#[test]
fn cifar100_reads_fine_or_coarse_labels_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("c100");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("train.bin"), cifar100_records(0, 60)).unwrap();
    fs::write(dir.join("test.bin"), cifar100_records(100, 20)).unwrap();
    let d = s(&dir);
    let info = ok(cwd, &["data", "info", "--data", &d]);
    assert!(
        info.contains("train: 60 samples of 3x32x32, 100 classes"),
        "{info}"
    );
    let peek = ok(cwd, &["data", "info", "--data", &d, "--labels", "coarse"]);
    assert!(
        peek.contains("train: 60 samples of 3x32x32, 20 classes"),
        "{peek}"
    );
    assert!(
        !dir.join("distill-data.toml").exists(),
        "info writes nothing"
    );

    let set = ok(
        cwd,
        &["data", "configure", "--data", &d, "--labels", "coarse"],
    );
    assert!(
        set.contains("distill-data.toml") && set.contains("labels: coarse"),
        "{set}"
    );
    assert!(
        set.contains("train: 60 samples of 3x32x32, 20 classes"),
        "{set}"
    );
    // Every command reads the directory so now: a 20-class student trains.
    ok(
        cwd,
        &train_args(&d, "mlp:3072-20", "m", &["--epochs", "1", "-q"]),
    );
    // An option CIFAR does not read is refused, and the file stays as it was.
    fails(
        cwd,
        &["data", "configure", "--data", &d, "--layout", "nhwc"],
        &["distill-data.toml", "layout", "cifar-100"],
    );
    fails(
        cwd,
        &["data", "configure", "--data", &d, "--labels", "all"],
        &["--labels", "'all'"],
    );
    let info = ok(cwd, &["data", "info", "--data", &d]);
    assert!(info.contains("20 classes"), "{info}");
    // No options: back to the defaults, the file removed.
    ok(cwd, &["data", "configure", "--data", &d]);
    assert!(!dir.join("distill-data.toml").exists());
    // A hand-written options file with a typo names the file and key.
    fs::write(dir.join("distill-data.toml"), "lables = \"coarse\"\n").unwrap();
    fails(
        cwd,
        &train_args(&d, "mlp:3072-100", "m2", &["-q"]),
        &["distill-data.toml", "lables", "unknown option"],
    );
}

#[test]
fn hostile_cifar_files_fail_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let dir = cwd.join("cifar");
    cifar10_dir(&dir, 4, 4);
    let d = s(&dir);
    let train = train_args(&d, "mlp:3072-10", "o", &["--epochs", "1", "-q"]);
    let test_eval = ["eval", "--model", "o", "--data", d.as_str()];
    ok(cwd, &train);
    let batch2 = dir.join("data_batch_2.bin");
    // Truncated.
    let mut short = cifar10_records(0, 4);
    short.truncate(short.len() - 100);
    fs::write(&batch2, &short).unwrap();
    fails(
        cwd,
        &train,
        &["data_batch_2.bin", "truncated", "3073-byte records"],
    );
    // The wrong record size: CIFAR-100 records under a CIFAR-10 name.
    fs::write(&batch2, cifar100_records(0, 4)).unwrap();
    fails(
        cwd,
        &train,
        &["data_batch_2.bin", "3074-byte CIFAR-100 records"],
    );
    // A label out of range.
    let mut bad = cifar10_records(0, 4);
    bad[2 * 3073] = 10;
    fs::write(&batch2, &bad).unwrap();
    fails(
        cwd,
        &train,
        &["data_batch_2.bin", "label: 10 of record 2", "0..10"],
    );
    fs::write(&batch2, cifar10_records(0, 4)).unwrap();
    let mut bad_test = cifar10_records(0, 4);
    bad_test[0] = 200;
    fs::write(dir.join("test_batch.bin"), &bad_test).unwrap();
    fails(
        cwd,
        &test_eval,
        &["test_batch.bin", "label: 200 of record 0"],
    );
    // A missing batch file.
    fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
    fails(cwd, &train, &["data_batch_4.bin", "is missing"]);
    // CIFAR-100: a fine label out of range, an empty file.
    let c100 = cwd.join("c100");
    fs::create_dir(&c100).unwrap();
    let mut recs = cifar100_records(0, 3);
    recs[3074 + 1] = 100;
    fs::write(c100.join("train.bin"), &recs).unwrap();
    let d100 = s(&c100);
    let t100 = train_args(&d100, "mlp:3072-100", "o2", &["-q"]);
    fails(cwd, &t100, &["train.bin", "fine label: 100 of record 1"]);
    fs::write(c100.join("train.bin"), b"").unwrap();
    fails(cwd, &t100, &["train.bin", "no samples"]);
}

#[test]
fn nhwc_arrays_convert_on_read_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (n, c, h, w) = (4usize, 3usize, 2usize, 5usize);
    let nchw: Vec<u8> = (0..n * c * h * w).map(|i| (i * 3 % 251) as u8).collect();
    // The same images, channels last.
    let mut nhwc = vec![0u8; nchw.len()];
    for k in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                nhwc[k * c * h * w + p * c + ch] = nchw[k * c * h * w + ch * h * w + p];
            }
        }
    }
    let labels: Vec<u8> = vec![0, 1, 2, 1];
    let write = |dir: &str, images: &[u8], shape: &[usize]| {
        let p = cwd.join(dir);
        fs::create_dir_all(&p).unwrap();
        write_npy(&p.join("train-images.npy"), "|u1", shape, images);
        write_npy(&p.join("train-labels.npy"), "|u1", &[n], &labels);
    };
    write("a", &nchw, &[n, c, h, w]);
    write("b", &nhwc, &[n, h, w, c]);
    let fingerprint = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("train:"))
            .and_then(|l| l.split("fingerprint ").nth(1))
            .map(|f| f.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("{out}"))
    };
    let a = ok(cwd, &["data", "info", "--data", "a"]);
    assert!(a.contains("4 samples of 3x2x5"), "{a}");
    let b = ok(cwd, &["data", "info", "--data", "b"]);
    assert!(
        b.contains("4 samples of 2x5x3"),
        "read as NCHW without the option: {b}"
    );
    let b = ok(
        cwd,
        &["data", "configure", "--data", "b", "--layout", "nhwc"],
    );
    assert!(b.contains("4 samples of 3x2x5"), "{b}");
    assert_eq!(fingerprint(&a), fingerprint(&b), "the same images");

    // safetensors, float images stored NHWC.
    let floats: Vec<u8> = nhwc
        .iter()
        .flat_map(|&v| (f32::from(v) / 255.0).to_le_bytes())
        .collect();
    let st = safetensors::tensor::serialize(
        [
            (
                "images",
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    vec![n, h, w, c],
                    &floats,
                )
                .unwrap(),
            ),
            (
                "labels",
                safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![n], &labels)
                    .unwrap(),
            ),
        ],
        &None,
    )
    .unwrap();
    fs::create_dir(cwd.join("s")).unwrap();
    fs::write(cwd.join("s/train.safetensors"), st).unwrap();
    let st_info = ok(
        cwd,
        &["data", "configure", "--data", "s", "--layout", "nhwc"],
    );
    assert!(st_info.contains("4 samples of 3x2x5"), "{st_info}");
    // The float inputs equal the bytes' scaled values, channel-first.
    let ds = distill::data::Dataset::open(&cwd.join("s"), distill::data::Split::Train).unwrap();
    let mut x = vec![0f32; n * c * h * w];
    ds.fill_inputs(&[0, 1, 2, 3], &mut x);
    let want: Vec<f32> = nchw.iter().map(|&v| f32::from(v) / 255.0).collect();
    assert_eq!(x, want);

    // NHWC needs 4-D images.
    let flat = cwd.join("flat");
    fs::create_dir(&flat).unwrap();
    write_npy(
        &flat.join("train-images.npy"),
        "|u1",
        &[n, h * w * c],
        &nchw,
    );
    fails(
        cwd,
        &["data", "configure", "--data", "flat", "--layout", "nhwc"],
        &["train-images.npy", "needs 4-D images"],
    );
    // IDX files have no layout to choose.
    let idx = fails(
        cwd,
        &[
            "data",
            "info",
            "--data",
            &s(&small_data()),
            "--layout",
            "nhwc",
        ],
        &["--layout", "'nhwc' is given", "idx files"],
    );
    assert!(idx.contains("error:"), "{idx}");
}

#[test]
fn a_crop_view_set_on_rgb_images_serves_exactly_what_the_teacher_saw() {
    use dfdx::prelude::*;
    use distill::cache::{log_softmax_tempered, CacheViews};
    use distill::data::augment::Augment;
    use distill::data::{Dataset, Split};
    use distill::train::loader::Loader;
    use distill::train::loss::{LossConfig, LossKind};
    use distill::train::TrainConfig;

    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    cifar10_dir(&cwd.join("cifar"), 12, 10);
    let d = s(&cwd.join("cifar"));
    ok(
        cwd,
        &train_args(&d, "cnn:c4-p-p-p-10", "t", &["--epochs", "1", "-q"]),
    );
    let aug = [
        "--augment",
        "crop=4,flip",
        "--views",
        "2",
        "--augment-seed",
        "3",
    ];
    ok(
        cwd,
        &cache_build_args(
            "t",
            &d,
            "set",
            &[&["--encoding", "f32", "-q"][..], &aug].concat(),
        ),
    );
    let inspect = ok(cwd, &["cache", "inspect", "set"]);
    assert!(
        inspect.contains("2 views of augment crop=4,flip (seed 3)"),
        "{inspect}"
    );

    let teacher = distill::model::ModelDir::new(cwd.join("t"))
        .load(Cpu::default())
        .unwrap();
    assert!(teacher.normalization().is_some());
    let train = Dataset::open(&cwd.join("cifar"), Split::Train).unwrap();
    // SAFETY: written above by this test; nothing modifies it.
    let set = unsafe { CacheViews::open(&cwd.join("set")) }.unwrap();
    let cfg = TrainConfig {
        spec: "cnn:c2-10".into(),
        batch_size: 16,
        seed: 1,
        loss: LossConfig::new(LossKind::Kd, 0.5, 4.0),
        ..TrainConfig::default()
    };
    let crop = Augment::parse("crop=4,flip").unwrap();
    let loader = Loader::new(&train, Some(&set), &cfg);
    let mut padded = 0;
    for epoch in 0..3u64 {
        let mut seen = Vec::new();
        for batch in loader.batches(epoch, 0).unwrap() {
            let b = batch.unwrap();
            let k = b.indices.len();
            // The images are the dataset's, cropped and flipped as view
            // epoch % 2 under the set's seed.
            let mut want = vec![0f32; k * 3072];
            train.fill_inputs(&b.indices, &mut want);
            let plain = want.clone();
            crop.apply_batch(3, epoch % 2, &b.indices, [3, 32, 32], &mut want);
            assert_eq!(b.inputs, want, "epoch {epoch}");
            assert_ne!(b.inputs, plain, "epoch {epoch}: augmented");
            padded += b.inputs.iter().filter(|&&v| v == 0.0).count();
            // Its targets are the teacher's outputs on exactly these images.
            let logits = teacher.predict(b.inputs.clone(), k).as_vec();
            let mut lp = vec![0f32; logits.len()];
            log_softmax_tempered(&logits, 10, 4.0, &mut lp).unwrap();
            let got = b.logprobs.as_ref().unwrap();
            for (j, (g, w)) in got.iter().zip(&lp).enumerate() {
                assert!((g - w).abs() < 1e-4, "epoch {epoch} value {j}: {g} vs {w}");
            }
            seen.extend(b.indices);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..60).collect::<Vec<_>>());
    }
    assert!(padded > 0, "the crops bring in zero padding");
    // The CLI trains on the set; the card names it.
    ok(
        cwd,
        &train_args(
            &d,
            "cnn:c2-p-p-p-10",
            "s",
            &["--cache", "set", "--alpha", "0.5", "--epochs", "1", "-q"],
        ),
    );
    let card = model_card(&cwd.join("s"));
    assert_eq!(card["cache"]["augment"], "crop=4,flip (seed 3)");
}
