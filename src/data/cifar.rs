//! CIFAR-10 and CIFAR-100 in their binary format ("CIFAR-10 binary version",
//! <https://www.cs.toronto.edu/~kriz/cifar.html>): files of fixed-size
//! records with no header.
//!
//! - CIFAR-10 (`cifar-10-batches-bin/`): the training split is
//!   `data_batch_1.bin` .. `data_batch_5.bin`, read in that order, the test
//!   split `test_batch.bin`. A record is 1 label byte (0..10) and 3,072
//!   pixel bytes.
//! - CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`. A record
//!   is 2 label bytes, the coarse label (0..20) then the fine one (0..100),
//!   and 3,072 pixel bytes. The fine labels are used unless the directory's
//!   options say `labels = "coarse"` ([`super::options`]).
//!
//! The pixels are a 32x32 image as three planes, red, green then blue, each
//! row-major: exactly the (channel, height, width) order a [`Dataset`]
//! stores, so a sample is its record's last 3,072 bytes. Each file must be
//! a whole number of records; every label byte is checked against its
//! range. Errors name the file, and the record for a bad label.

use std::fs;
use std::path::{Path, PathBuf};

use super::options::LabelSet;
use super::{DataError, DataOptions, Dataset, DatasetFormat, Found, Inputs, Split};

/// The shape of one image.
pub const SHAPE: [usize; 3] = [3, 32, 32];
/// Pixel bytes per record.
const PIXELS: usize = 3 * 32 * 32;
/// CIFAR-10's training batch files, in reading order.
const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
const CIFAR10_TEST: &str = "test_batch.bin";
/// The largest file read: the real ones hold 30.7 MB (CIFAR-10) and
/// 154 MB (CIFAR-100 `train.bin`).
const MAX_FILE_BYTES: u64 = 4 << 30;

/// One of the two variants' record layout.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    /// Label bytes before the pixels, and each one's class count.
    labels: &'static [(&'static str, u8)],
    /// The other variant's record size, named when a file fits it.
    other: (&'static str, usize),
}

const CIFAR10: Variant = Variant {
    name: "CIFAR-10",
    labels: &[("label", 10)],
    other: ("CIFAR-100", 2 + PIXELS),
};

const CIFAR100: Variant = Variant {
    name: "CIFAR-100",
    labels: &[("coarse label", 20), ("fine label", 100)],
    other: ("CIFAR-10", 1 + PIXELS),
};

impl Variant {
    fn record_len(&self) -> usize {
        self.labels.len() + PIXELS
    }
}

/// CIFAR-10: `data_batch_{1..5}.bin` (train) and `test_batch.bin` (test).
pub(super) const FORMAT_10: DatasetFormat = DatasetFormat {
    name: "cifar-10",
    find: |dir, split| {
        let found = match split {
            Split::Train => CIFAR10_TRAIN
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())?,
            Split::Test => Some(dir.join(CIFAR10_TEST)).filter(|p| p.is_file())?,
        };
        Some(Found {
            images: found,
            labels: None,
        })
    },
    looked_for: |dir, split| match split {
        Split::Train => vec![dir.join(CIFAR10_TRAIN[0])],
        Split::Test => vec![dir.join(CIFAR10_TEST)],
    },
    open: |found, split, _| open_cifar10(found, split),
    reads_layout: false,
    reads_labels: false,
};

/// CIFAR-100: `train.bin` and `test.bin`.
pub(super) const FORMAT_100: DatasetFormat = DatasetFormat {
    name: "cifar-100",
    find: |dir, split| {
        let images = dir.join(cifar100_file(split));
        images.is_file().then_some(Found {
            images,
            labels: None,
        })
    },
    looked_for: |dir, split| vec![dir.join(cifar100_file(split))],
    open: |found, split, options| open_cifar100(&found.images, split, options),
    reads_layout: false,
    reads_labels: true,
};

fn cifar100_file(split: Split) -> &'static str {
    match split {
        Split::Train => "train.bin",
        Split::Test => "test.bin",
    }
}

/// Opens CIFAR-10's training batches (all five must be there) or its test batch.
fn open_cifar10(found: &Found, split: Split) -> Result<Dataset, DataError> {
    let files: Vec<PathBuf> = match split {
        Split::Train => {
            let dir = found.images.parent().unwrap_or(Path::new("."));
            let files: Vec<PathBuf> = CIFAR10_TRAIN.iter().map(|f| dir.join(f)).collect();
            if let Some(missing) = files.iter().find(|p| !p.is_file()) {
                let present: Vec<&str> = CIFAR10_TRAIN
                    .iter()
                    .zip(&files)
                    .filter(|(_, p)| p.is_file())
                    .map(|(f, _)| *f)
                    .collect();
                return Err(DataError::Format {
                    path: missing.clone(),
                    field: "batch file".into(),
                    message: format!(
                        "is missing: CIFAR-10's training split is the five files data_batch_1.bin .. data_batch_5.bin, \
                         and only {} are there; copy the whole cifar-10-batches-bin directory",
                        present.join(", ")
                    ),
                });
            }
            files
        }
        Split::Test => vec![found.images.clone()],
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        read_records(file, CIFAR10, 0, &mut pixels, &mut labels)?;
    }
    Ok(assemble(pixels, labels, split, &files[0]))
}

/// Opens CIFAR-100's `train.bin` or `test.bin`, with the label the options pick.
fn open_cifar100(path: &Path, split: Split, options: &DataOptions) -> Result<Dataset, DataError> {
    let which = match options.label_set() {
        LabelSet::Coarse => 0,
        LabelSet::Fine => 1,
    };
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    read_records(path, CIFAR100, which, &mut pixels, &mut labels)?;
    Ok(assemble(pixels, labels, split, path))
}

fn assemble(pixels: Vec<u8>, labels: Vec<u32>, split: Split, source: &Path) -> Dataset {
    let n = labels.len();
    Dataset::assemble(
        Inputs::U8(pixels),
        Some(labels),
        SHAPE,
        n,
        split,
        source.to_path_buf(),
    )
}

/// Appends the records of `path` to `pixels` and label number `which` of
/// each to `labels`, after checking the file's length and every label byte.
fn read_records(
    path: &Path,
    variant: Variant,
    which: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let read_err = |source| DataError::Read {
        path: path.to_path_buf(),
        field: "records".into(),
        source,
    };
    let len = fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            field: "records".into(),
            message: format!(
                "{len} bytes is larger than any {} file (at most {MAX_FILE_BYTES} accepted)",
                variant.name
            ),
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    check_length(path, variant, bytes.len())?;
    let rec = variant.record_len();
    let n_labels = variant.labels.len();
    pixels.reserve(bytes.len() / rec * PIXELS);
    labels.reserve(bytes.len() / rec);
    for (i, record) in bytes.chunks_exact(rec).enumerate() {
        for (k, &(what, classes)) in variant.labels.iter().enumerate() {
            if record[k] >= classes {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    field: what.into(),
                    message: format!(
                        "{} of record {i} (byte offset {}) is out of range 0..{classes}; \
                         the file is corrupt or not a {} file",
                        record[k],
                        i * rec + k,
                        variant.name
                    ),
                });
            }
        }
        labels.push(u32::from(record[which]));
        pixels.extend_from_slice(&record[n_labels..]);
    }
    Ok(())
}

/// A file must hold a positive whole number of records.
fn check_length(path: &Path, variant: Variant, len: usize) -> Result<(), DataError> {
    let rec = variant.record_len();
    if len == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            field: "records".into(),
        });
    }
    if len.is_multiple_of(rec) {
        return Ok(());
    }
    let (other, other_rec) = variant.other;
    let hint = if len.is_multiple_of(other_rec) {
        format!(
            "; its length is a whole number of {other_rec}-byte {other} records: is this a {other} file under a {} name?",
            variant.name
        )
    } else {
        String::new()
    };
    Err(DataError::Format {
        path: path.to_path_buf(),
        field: "records".into(),
        message: format!(
            "holds {len} bytes, which is {} whole {rec}-byte records and {} bytes over; a {} record is {} label byte{} \
             and {PIXELS} pixel bytes (3x32x32), so the file is truncated or has the wrong record size{hint}",
            len / rec,
            len % rec,
            variant.name,
            variant.labels.len(),
            if variant.labels.len() == 1 { "" } else { "s" },
        ),
    })
}

/// Files in the exact formats, for the tests of this crate.
#[cfg(test)]
pub(crate) mod testdata {
    /// One CIFAR record per `(labels, seed)`: the label bytes, then 3,072
    /// pixels that depend on the seed, the channel and the position.
    pub(crate) fn records(items: &[(&[u8], u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(labels, seed) in items {
            out.extend_from_slice(labels);
            out.extend((0..super::PIXELS).map(|p| pixel(seed, p)));
        }
        out
    }

    /// The pixel at flat (channel, y, x) position `p` of the image `seed`.
    pub(crate) fn pixel(seed: u8, p: usize) -> u8 {
        (p as u32 * 7 + u32::from(seed) * 31 + (p / 1024) as u32 * 50) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::{pixel, records};
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        fs::write(dir.join(name), bytes).unwrap();
    }

    fn cifar10(dir: &Path) {
        for (b, name) in CIFAR10_TRAIN.iter().enumerate() {
            let b = b as u8;
            write(
                dir,
                name,
                &records(&[(&[b], 10 * b), (&[9 - b], 10 * b + 1)]),
            );
        }
        write(dir, CIFAR10_TEST, &records(&[(&[3], 200)]));
    }

    fn open(dir: &Path, split: Split) -> Result<Dataset, DataError> {
        Dataset::open(dir, split)
    }

    #[test]
    fn cifar10_reads_five_batches_in_order_and_the_test_batch() {
        let tmp = tempfile::tempdir().unwrap();
        cifar10(tmp.path());
        let train = open(tmp.path(), Split::Train).unwrap();
        assert_eq!((train.len(), train.sample_shape()), (10, [3, 32, 32]));
        assert_eq!(train.labels().unwrap(), &[0, 9, 1, 8, 2, 7, 3, 6, 4, 5][..]);
        assert_eq!(train.num_classes(), Some(10));
        assert_eq!(train.source(), tmp.path().join("data_batch_1.bin"));
        // Sample 3 is batch 2's second record: seed 11; red, green, blue planes.
        let mut x = vec![0f32; PIXELS];
        train.fill_inputs(&[3], &mut x);
        for p in [0, 5, 1023, 1024, 2048 + 40, 3071] {
            assert_eq!(x[p], f32::from(pixel(11, p)) / 255.0, "pixel {p}");
        }
        let test = open(tmp.path(), Split::Test).unwrap();
        assert_eq!((test.len(), test.labels()), (1, Some(&[3u32][..])));
        // The same images from memory fingerprint the same.
        let mem = Dataset::from_u8(SHAPE, records(&[(&[], 200)]), Some(vec![3]), Split::Test);
        assert_eq!(mem.unwrap().fingerprint(), test.fingerprint());
    }

    #[test]
    fn cifar100_reads_fine_labels_or_coarse_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let recs = records(&[(&[19, 99], 1), (&[0, 42], 2), (&[7, 0], 3)]);
        write(tmp.path(), "train.bin", &recs);
        write(tmp.path(), "test.bin", &records(&[(&[1, 2], 4)]));
        let fine = open(tmp.path(), Split::Train).unwrap();
        assert_eq!(fine.labels(), Some(&[99, 42, 0][..]));
        assert_eq!(fine.num_classes(), Some(100));
        assert_eq!(fine.sample_shape(), SHAPE);
        let coarse = DataOptions {
            labels: Some(LabelSet::Coarse),
            ..DataOptions::default()
        };
        coarse.save(tmp.path()).unwrap();
        let c = open(tmp.path(), Split::Train).unwrap();
        assert_eq!(c.labels(), Some(&[19, 0, 7][..]));
        assert_ne!(c.fingerprint(), fine.fingerprint());
        let mut a = vec![0f32; 2 * PIXELS];
        let mut b = a.clone();
        c.fill_inputs(&[0, 2], &mut a);
        fine.fill_inputs(&[0, 2], &mut b);
        assert_eq!(a, b, "the same images either way");
        assert_eq!(
            open(tmp.path(), Split::Test).unwrap().labels(),
            Some(&[1][..])
        );
    }

    #[test]
    fn hostile_files_are_refused_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let err = |split| open(d, split).unwrap_err().to_string();
        cifar10(d);
        // Truncated: the last record lost its last byte.
        let mut short = records(&[(&[1], 1), (&[2], 2)]);
        short.pop();
        write(d, "data_batch_3.bin", &short);
        let e = err(Split::Train);
        assert!(
            e.contains("data_batch_3.bin")
                && e.contains("truncated")
                && e.contains("3072 bytes over"),
            "{e}"
        );
        // A CIFAR-100 file under a CIFAR-10 name: the wrong record size.
        write(
            d,
            "data_batch_3.bin",
            &records(&[(&[1, 2], 1), (&[3, 4], 2)]),
        );
        let e = err(Split::Train);
        assert!(
            e.contains("data_batch_3.bin") && e.contains("3074-byte CIFAR-100 records"),
            "{e}"
        );
        // A label out of range, named with its record.
        write(d, "data_batch_3.bin", &records(&[(&[1], 1), (&[10], 2)]));
        let e = err(Split::Train);
        assert!(
            e.contains("data_batch_3.bin") && e.contains("10 of record 1") && e.contains("0..10"),
            "{e}"
        );
        // A missing batch file is named.
        fs::remove_file(d.join("data_batch_3.bin")).unwrap();
        let e = err(Split::Train);
        assert!(
            e.contains("data_batch_3.bin")
                && e.contains("is missing")
                && e.contains("data_batch_4.bin"),
            "{e}"
        );
        // Empty.
        write(d, "test_batch.bin", b"");
        let e = err(Split::Test);
        assert!(
            e.contains("test_batch.bin") && e.contains("no samples"),
            "{e}"
        );

        let d100 = tempfile::tempdir().unwrap();
        let d = d100.path();
        let err = |split| open(d, split).unwrap_err().to_string();
        write(d, "train.bin", &records(&[(&[20, 5], 1)]));
        let e = err(Split::Train);
        assert!(
            e.contains("train.bin") && e.contains("coarse label: 20 of record 0"),
            "{e}"
        );
        write(d, "train.bin", &records(&[(&[2, 100], 1)]));
        let e = err(Split::Train);
        assert!(
            e.contains("train.bin") && e.contains("fine label: 100 of record 0"),
            "{e}"
        );
        write(d, "train.bin", &records(&[(&[2], 1)]));
        let e = err(Split::Train);
        assert!(
            e.contains("train.bin") && e.contains("3074-byte") && e.contains("CIFAR-10 records"),
            "{e}"
        );
    }

    #[test]
    fn random_mutated_and_truncated_files_never_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut cases = 0;
        // Random files of lengths around one and two records of either variant.
        for len in [1usize, 2, 3073, 3074, 6146, 6147, 6148, 9219] {
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for name in ["test.bin", CIFAR10_TEST] {
                write(d, name, &bytes);
                let _ = open(d, Split::Test);
                cases += 1;
            }
            fs::remove_file(d.join(CIFAR10_TEST)).unwrap();
        }
        // Valid two-record files with random bytes changed, cut or appended.
        for variant in [&[3u8][..], &[3u8, 42][..]] {
            let name = if variant.len() == 1 {
                CIFAR10_TEST
            } else {
                "test.bin"
            };
            let valid = records(&[(variant, 1), (variant, 2)]);
            for _ in 0..150 {
                let mut bytes = valid.clone();
                match next() % 3 {
                    0 => {
                        for _ in 0..1 + next() % 4 {
                            let i = (next() as usize) % bytes.len();
                            bytes[i] = next() as u8;
                        }
                    }
                    1 => bytes.truncate((next() as usize) % bytes.len()),
                    _ => bytes.extend((0..1 + next() % 5000).map(|_| next() as u8)),
                }
                write(d, name, &bytes);
                // CIFAR-10's labels are 0..10, CIFAR-100's fine labels 0..100.
                let classes = if variant.len() == 1 { 10 } else { 100 };
                if let Ok(ds) = open(d, Split::Test) {
                    assert_eq!(ds.sample_shape(), SHAPE);
                    assert!(ds.labels().unwrap().iter().all(|&l| l < classes));
                }
                cases += 1;
            }
            fs::remove_file(d.join(name)).unwrap();
        }
        assert_eq!(cases, 316);
    }
}
