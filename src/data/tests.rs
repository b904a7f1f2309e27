//! Dataset-level tests: format detection, in-memory construction, batching,
//! and the committed Fashion-MNIST subset (plus the full data when fetched).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::npy::tests::npy_bytes;
use super::*;

fn repo_data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(dir)
}

#[test]
fn split_parses_and_displays() {
    for s in Split::ALL {
        assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
    }
    let e = "valid".parse::<Split>().unwrap_err().to_string();
    assert!(
        e.contains("'valid'") && e.contains("'train' or 'test'"),
        "{e}"
    );
}

#[test]
fn not_found_lists_every_file_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let e = Dataset::open(dir.path(), Split::Test)
        .unwrap_err()
        .to_string();
    for name in [
        "t10k-images-idx3-ubyte",
        "t10k-images-idx3-ubyte.gz",
        "test-images.npy",
        "test.safetensors",
    ] {
        assert!(
            e.contains(&dir.path().join(name).display().to_string()),
            "{e}"
        );
    }
    assert!(e.contains("fetch-fashion-mnist.sh"), "{e}");
}

#[test]
fn a_directory_that_is_not_there_is_said_to_be_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let absent = tmp.path().join("absent");
    for e in [
        Dataset::open(&absent, Split::Train).unwrap_err(),
        Dataset::open_with(&absent, Split::Test, &DataOptions::default()).unwrap_err(),
    ] {
        let DataError::Setting { field, message } = &e else {
            panic!("not a setting error: {e}")
        };
        assert_eq!(field, "data");
        assert!(
            message.starts_with(&format!(
                "{} does not exist; `data` is the directory",
                absent.display()
            )),
            "{message}"
        );
        assert!(!message.contains("split found"), "{message}");
    }
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let e = Dataset::open(&file, Split::Train).unwrap_err().to_string();
    assert!(e.contains("is a file, not a directory"), "{e}");
}

#[test]
fn opens_npy_dataset_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    fs::write(
        dir.path().join("train-images.npy"),
        npy_bytes(1, "|u1", false, &[2, 3, 4], &pixels),
    )
    .unwrap();
    let labels: Vec<u8> = [7i32, 2].iter().flat_map(|x| x.to_le_bytes()).collect();
    fs::write(
        dir.path().join("train-labels.npy"),
        npy_bytes(1, "<i4", false, &[2], &labels),
    )
    .unwrap();
    let ds = Dataset::open(dir.path(), Split::Train).unwrap();
    assert_eq!(
        (ds.len(), ds.sample_shape(), ds.sample_len()),
        (2, [1, 3, 4], 12)
    );
    assert_eq!(ds.labels(), Some(&[7, 2][..]));
    assert_eq!(ds.num_classes(), Some(8));
    assert_eq!(ds.source(), dir.path().join("train-images.npy"));
    let mem = Dataset::from_u8([1, 3, 4], pixels, Some(vec![7, 2]), Split::Train).unwrap();
    assert_eq!(ds.fingerprint(), mem.fingerprint());

    // A labels file of the wrong length names both files.
    fs::write(
        dir.path().join("train-labels.npy"),
        npy_bytes(1, "|u1", false, &[3], &[0, 1, 2]),
    )
    .unwrap();
    let e = Dataset::open(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-labels.npy") && e.contains("train-images.npy"),
        "{e}"
    );
}

#[test]
fn idx_takes_precedence_over_npy() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Dataset::from_u8([1, 1, 2], vec![1, 2], None, Split::Train).unwrap();
    write_idx(&ds, dir.path(), true).unwrap();
    fs::write(dir.path().join("train-images.npy"), b"garbage").unwrap();
    let back = Dataset::open(dir.path(), Split::Train).unwrap();
    assert!(back.source().ends_with("train-images-idx3-ubyte.gz"));
}

#[test]
fn from_memory_validates() {
    assert!(matches!(
        Dataset::from_u8([1, 2, 2], vec![0; 7], None, Split::Train),
        Err(DataError::Format { .. })
    ));
    assert!(matches!(
        Dataset::from_u8([1, 2, 2], vec![], None, Split::Train),
        Err(DataError::Empty { .. })
    ));
    assert!(matches!(
        Dataset::from_u8([0, 2, 2], vec![0; 4], None, Split::Train),
        Err(DataError::Format { .. })
    ));
    assert!(matches!(
        Dataset::from_u8([1, 1, 2], vec![0; 4], Some(vec![1]), Split::Train),
        Err(DataError::Format { .. })
    ));
    assert!(matches!(
        Dataset::from_u8(
            [1, 1, 1],
            vec![0],
            Some(vec![MAX_CLASSES as u32]),
            Split::Train
        ),
        Err(DataError::Label { .. })
    ));
    let e = Dataset::from_f32([1, 1, 2], vec![0.0, 1.0, f32::NAN, 2.0], None, Split::Train)
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::NonFinite {
                index: 2,
                row: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().starts_with(MEMORY_SOURCE), "{e}");
}

#[test]
fn fill_inputs_scales_u8_and_copies_f32() {
    let ds = Dataset::from_u8(
        [1, 1, 3],
        vec![0, 51, 255, 1, 2, 3],
        Some(vec![0, 1]),
        Split::Train,
    )
    .unwrap();
    let mut out = [9.0f32; 9];
    ds.fill_inputs(&[1, 0, 1], &mut out);
    assert_eq!(
        out,
        [
            1.0 / 255.0,
            2.0 / 255.0,
            3.0 / 255.0,
            0.0,
            0.2,
            1.0,
            1.0 / 255.0,
            2.0 / 255.0,
            3.0 / 255.0
        ]
    );
    let f = Dataset::from_f32([1, 1, 2], vec![-1.5, 2.0, 3.0, 4.0], None, Split::Test).unwrap();
    let mut out = [0.0f32; 2];
    f.fill_inputs(&[1], &mut out);
    assert_eq!(out, [3.0, 4.0]);
    assert_eq!(f.input_kind(), InputKind::F32);
}

#[test]
#[should_panic(expected = "out of range")]
fn fill_inputs_panics_on_bad_index() {
    let ds = Dataset::from_u8([1, 1, 1], vec![0, 1], None, Split::Train).unwrap();
    let mut out = [0.0f32; 1];
    ds.fill_inputs(&[2], &mut out);
}

#[test]
fn head_takes_a_prefix_with_its_own_fingerprint() {
    let ds = Dataset::from_u8(
        [1, 1, 2],
        vec![1, 2, 3, 4, 5, 6],
        Some(vec![0, 1, 2]),
        Split::Train,
    )
    .unwrap();
    let h = ds.head(2);
    assert_eq!((h.len(), h.labels()), (2, Some(&[0, 1][..])));
    assert_eq!(h.num_classes(), Some(2));
    let direct =
        Dataset::from_u8([1, 1, 2], vec![1, 2, 3, 4], Some(vec![0, 1]), Split::Train).unwrap();
    assert_eq!(h.fingerprint(), direct.fingerprint());
    assert_ne!(h.fingerprint(), ds.fingerprint());
    assert_eq!(ds.head(10).fingerprint(), ds.fingerprint());
    assert!(ds.head(0).is_empty());
}

/// Checks a Fashion-MNIST split: shape, label range, and that every class is
/// present in a plausible proportion (the real splits are exactly balanced).
fn check_fashion(ds: &Dataset, n: usize) {
    assert_eq!(ds.len(), n);
    assert_eq!(ds.sample_shape(), [1, 28, 28]);
    assert_eq!(ds.input_kind(), InputKind::U8);
    assert_eq!(ds.num_classes(), Some(10));
    let mut counts = [0usize; 10];
    for &l in ds.labels().expect("fashion-mnist is labelled") {
        counts[l as usize] += 1;
    }
    for (class, &c) in counts.iter().enumerate() {
        assert!(c * 20 > n && c * 5 < n, "class {class}: {c} of {n} samples");
    }
}

#[test]
fn committed_subset_opens() {
    let dir = repo_data("fashion-mnist-small");
    let train = Dataset::open(&dir, Split::Train).unwrap();
    let test = Dataset::open(&dir, Split::Test).unwrap();
    check_fashion(&train, 2000);
    check_fashion(&test, 1000);
    assert!(train.source().ends_with("train-images-idx3-ubyte.gz"));
    assert_ne!(train.fingerprint(), test.fingerprint());
}

#[test]
fn full_fashion_mnist_opens_when_fetched() {
    let dir = repo_data("fashion-mnist");
    if !dir.join("train-images-idx3-ubyte.gz").is_file()
        && !dir.join("train-images-idx3-ubyte").is_file()
    {
        eprintln!(
            "skipping: {} not present; run data/fetch-fashion-mnist.sh {}",
            dir.display(),
            dir.display()
        );
        return;
    }
    let t = Instant::now();
    let train = Dataset::open(&dir, Split::Train).unwrap();
    let open_time = t.elapsed();
    let test = Dataset::open(&dir, Split::Test).unwrap();
    check_fashion(&train, 60000);
    check_fashion(&test, 10000);

    // The committed subset is exactly the head of the full data.
    let small = repo_data("fashion-mnist-small");
    assert_eq!(
        train.head(2000).fingerprint(),
        Dataset::open(&small, Split::Train).unwrap().fingerprint()
    );
    assert_eq!(
        test.head(1000).fingerprint(),
        Dataset::open(&small, Split::Test).unwrap().fingerprint()
    );

    // Timing of the hot path, printed for the record (`--nocapture`).
    let mut out = vec![0.0f32; 128 * train.sample_len()];
    let indices: Vec<usize> = (0..128).map(|i| (i * 7919 + 13) % train.len()).collect();
    let reps = 1000;
    let t = Instant::now();
    for _ in 0..reps {
        train.fill_inputs(&indices, &mut out);
    }
    let fill = t.elapsed() / reps;
    eprintln!("open(train): {open_time:?}; fill_inputs(128 samples): {fill:?}");
    assert!(out.iter().all(|&x| (0.0..=1.0).contains(&x)));
}

/// A header claiming more elements than memory holds is an error naming the
/// size, not an aborted allocation.
#[test]
fn an_allocation_too_large_is_an_error() {
    let err = super::reserved::<f32>(usize::MAX / 8).unwrap_err();
    assert!(err.contains("do not fit in this machine's memory"), "{err}");
    assert_eq!(super::reserved::<u8>(16).unwrap().capacity(), 16);
}
