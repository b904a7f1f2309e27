//! Malformed datasets reach the user as clear errors naming the file, with
//! exit code 2 and no panic.

use std::fs;
use std::io::Write;

use crate::util::*;

fn idx_images(n: u32, rows: u32, cols: u32, payload: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend(std::iter::repeat_n(7u8, payload));
    v
}

fn idx_labels(n: u32, payload: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&n.to_be_bytes());
    v.extend(std::iter::repeat_n(1u8, payload));
    v
}

fn write(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    fs::File::create(dir.join(name))
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[test]
fn data_info_on_the_committed_subset() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["data", "info", "--data", &s(&small_data())]);
    assert!(
        out.contains(
            "train: 2000 samples of 1x28x28, 10 classes (186 of class 4 to 216 of class 1)"
        ),
        "{out}"
    );
    assert!(
        out.contains("test: 1000 samples of 1x28x28, 10 classes"),
        "{out}"
    );
}

#[test]
fn a_data_directory_that_does_not_exist_is_said_to_be_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let absent = s(&tmp.path().join("absent"));
    for verb in ["configure", "info"] {
        let err = fails(
            tmp.path(),
            &["data", verb, "--data", &absent],
            &[&format!(
                "invalid value for --data: {absent} does not exist; --data is the directory holding the dataset's files"
            )],
        );
        assert!(!err.contains("split found"), "{err}");
    }
    // Nothing was written in its place.
    assert!(!tmp.path().join("absent").exists());
    write(tmp.path(), "file", b"x");
    fails(
        tmp.path(),
        &["data", "info", "--data", "file"],
        &["--data: file is a file, not a directory"],
    );
}

#[test]
fn malformed_idx_files_are_named_in_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    fs::create_dir(&data).unwrap();
    let d = s(&data);
    let train = train_args(&d, "mlp:16-4-3", "o", &["--epochs", "1", "-q"]);
    // Truncated images.
    write(&data, "train-images-idx3-ubyte", &idx_images(10, 4, 4, 100));
    write(&data, "train-labels-idx1-ubyte", &idx_labels(10, 10));
    fails(tmp.path(), &train, &["train-images-idx3-ubyte"]);
    // Wrong magic.
    let mut bad = idx_images(10, 4, 4, 160);
    bad[3] = 9;
    write(&data, "train-images-idx3-ubyte", &bad);
    fails(tmp.path(), &train, &["train-images-idx3-ubyte", "magic"]);
    // Label count mismatch.
    write(&data, "train-images-idx3-ubyte", &idx_images(10, 4, 4, 160));
    write(&data, "train-labels-idx1-ubyte", &idx_labels(9, 9));
    fails(tmp.path(), &train, &["train-labels-idx1-ubyte"]);
    // A valid set trains.
    write(&data, "train-labels-idx1-ubyte", &idx_labels(10, 10));
    ok(tmp.path(), &train);
    // Garbled .npy.
    let npy = tmp.path().join("n");
    fs::create_dir(&npy).unwrap();
    write(&npy, "train-images.npy", b"\x93NUMPY\x01\x00garbage");
    let n = s(&npy);
    fails(
        tmp.path(),
        &train_args(&n, "mlp:16-3", "o", &["-q"]),
        &["train-images.npy"],
    );
    // `data info` fails on a split that does not read, and on a directory
    // with no split at all; a missing test split is only said.
    fails(
        tmp.path(),
        &["data", "info", "--data", &n],
        &["train-images.npy"],
    );
    let none = s(&tmp.path().join("none"));
    fs::create_dir(&none).unwrap();
    fails(
        tmp.path(),
        &["data", "info", "--data", &none],
        &["no train split"],
    );
    let out = ok(tmp.path(), &["data", "info", "--data", &d]);
    assert!(
        out.contains("train: 10 samples") && out.contains("test: no test split"),
        "{out}"
    );
}

/// A test split that does not read, or whose samples are not the training
/// split's shape, is refused naming its file, never silently dropped or
/// read as flat vectors of the same length (an MLP would take 2x8 for 4x4).
#[test]
fn a_test_split_must_read_and_match_the_training_split() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    fs::create_dir(&data).unwrap();
    write(&data, "train-images-idx3-ubyte", &idx_images(10, 4, 4, 160));
    write(&data, "train-labels-idx1-ubyte", &idx_labels(10, 10));
    write(&data, "t10k-labels-idx1-ubyte", &idx_labels(5, 5));
    let d = s(&data);
    let train = train_args(&d, "mlp:16-4-3", "o", &["--epochs", "1", "-q"]);
    write(&data, "t10k-images-idx3-ubyte", &idx_images(5, 2, 8, 80));
    fails(
        tmp.path(),
        &train,
        &["t10k-images-idx3-ubyte", "sample shape", "1x2x8", "1x4x4"],
    );
    write(&data, "t10k-images-idx3-ubyte", &idx_images(5, 4, 4, 70));
    fails(tmp.path(), &train, &["t10k-images-idx3-ubyte"]);
    assert!(!tmp.path().join("o").exists());
    write(&data, "t10k-images-idx3-ubyte", &idx_images(5, 4, 4, 80));
    let out = ok(tmp.path(), &train);
    assert!(out.contains("final test accuracy"), "{out}");
}

#[test]
fn a_cache_or_a_model_named_as_data_is_said_to_be_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    ok(
        tmp.path(),
        &cache_build_args(&teacher, &data, "cache", &["--split", "test", "-q"]),
    );
    for verb in ["info", "configure"] {
        let err = fails(
            tmp.path(),
            &["data", verb, "--data", "cache"],
            &["invalid value for --data: cache holds a teacher cache (manifest.json or views.json), not a dataset"],
        );
        assert!(!err.contains("fetch-fashion-mnist.sh cache"), "{err}");
        fails(
            tmp.path(),
            &["data", verb, "--data", &teacher],
            &["holds a model (model.safetensors or model.json), not a dataset"],
        );
    }
    fails(
        tmp.path(),
        &["eval", "--model", &teacher, "--data", "cache"],
        &["--data: cache holds a teacher cache"],
    );
    // Nothing was written into either.
    assert!(!tmp.path().join("cache/distill-data.toml").exists());
    assert!(!teacher_dir().join("distill-data.toml").exists());
}
