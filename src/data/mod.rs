//! Datasets: the inputs and labels a teacher or a student is run on.
//!
//! This module owns reading datasets from disk (Fashion-MNIST style IDX files,
//! NumPy `.npy` arrays, safetensors files and CIFAR-10/100 binary files, read
//! as the directory's options say: [`options`]), validating them as hostile input,
//! fingerprinting their content, and filling `f32` input batches on the training
//! hot path. Everything here is CPU-only and independent of the model code.
//!
//! - [`Dataset::open`] detects the format of one split in a directory (see its
//!   docs for the file names it looks for) and validates it completely.
//! - [`Dataset::fill_inputs`] copies a batch of samples into a caller-owned
//!   `f32` buffer (`u8` pixels scaled to `[0, 1]`), allocating nothing.
//! - [`Dataset::fingerprint`] identifies the content (not the file), so a cache
//!   built from `train-images-idx3-ubyte.gz` matches the same data unpacked.
//! - [`write_idx`] writes a split back as IDX; [`read_float_matrix`] reads a
//!   `[N, C]` float matrix (teacher logits exported from another framework).
//!
//! Getting Fashion-MNIST: `data/fetch-fashion-mnist.sh DEST_DIR` copies the four
//! IDX `.gz` files from the Debian package `dataset-fashion-mnist`; a hermetic
//! subset (2,000 train / 1,000 test samples) is committed in
//! `data/fashion-mnist-small/`. See `data/README.md`.
//!
//! ```no_run
//! use distill::data::{Dataset, Split};
//! # fn main() -> Result<(), distill::data::DataError> {
//! let train = Dataset::open("data/fashion-mnist".as_ref(), Split::Train)?;
//! let mut batch = vec![0.0f32; 2 * train.sample_len()];
//! train.fill_inputs(&[0, 17], &mut batch);
//! println!("{} samples of {:?}, {}", train.len(), train.sample_shape(), train.fingerprint());
//! # Ok(())
//! # }
//! ```

mod arrays;
pub mod augment;
mod cifar;
pub mod cutout;
mod elem;
mod fingerprint;
mod idx;
pub mod mix;
pub mod noise;
pub mod normalize;
mod npy;
pub mod options;
pub mod warp;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use arrays::{read_float_matrix, MatrixFile};
pub use idx::write_idx;
pub use normalize::{Normalization, NormalizeSetting};
pub use npy::{matrix_layout, MatrixLayout};
pub use options::{DataOptions, LabelSet, Layout, OPTIONS_FILE};

/// The largest number of classes a labels file may imply (largest label + 1).
/// A larger label is almost certainly corrupt data, and would size the model's
/// output layer by it.
pub const MAX_CLASSES: usize = 1 << 16;

/// The path shown in errors and returned by [`Dataset::source`] for datasets
/// built in memory.
pub const MEMORY_SOURCE: &str = "<memory>";

/// Errors from reading or validating a dataset. Every variant names the file
/// and the field it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file could not be opened, read or decompressed.
    #[error("{}: cannot read {field}: {source}; check the file exists, is readable and is not corrupt", path.display())]
    Read {
        path: PathBuf,
        field: String,
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write {field}: {source}; check the directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        field: String,
        #[source]
        source: std::io::Error,
    },
    /// No supported dataset files were found for a split.
    #[error(
        "no {split} split found in {}: looked for {}; for Fashion-MNIST run `data/fetch-fashion-mnist.sh {}`, for CIFAR unpack its binary version there (README.md)",
        dir.display(), join_paths(.looked_for), dir.display()
    )]
    NotFound {
        dir: PathBuf,
        split: Split,
        looked_for: Vec<PathBuf>,
    },
    /// A header or field holds a value this reader does not accept.
    #[error("{}: {field}: {message}", path.display())]
    Format {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The data section is shorter or longer than the header says.
    #[error(
        "{}: {field}: expected {expected} bytes of data but found {actual}; {}",
        path.display(), length_problem(*.expected, *.actual)
    )]
    Length {
        path: PathBuf,
        field: String,
        expected: u64,
        actual: u64,
    },
    /// Labels and images disagree on the number of samples.
    #[error(
        "{}: labels: holds {labels_count} labels but {} holds {images_count} images; use the labels file that belongs to these images",
        labels.display(), images.display()
    )]
    LabelCount {
        images: PathBuf,
        labels: PathBuf,
        images_count: usize,
        labels_count: usize,
    },
    /// An element type this reader does not accept for this field.
    #[error("{}: {field}: unsupported dtype '{dtype}'; expected {expected}", path.display())]
    Dtype {
        path: PathBuf,
        field: String,
        dtype: String,
        expected: &'static str,
    },
    /// A NaN or infinite value in float data.
    #[error(
        "{}: {field}: non-finite value {value} at element {index} (row {row}); replace NaN/inf values before use",
        path.display()
    )]
    NonFinite {
        path: PathBuf,
        field: String,
        /// Flat index of the first bad element.
        index: usize,
        /// The sample (or matrix row) it belongs to.
        row: usize,
        value: f32,
    },
    /// A label outside `0..MAX_CLASSES` (negative, or implausibly large).
    #[error(
        "{}: {field}: label {value} at index {index} is out of range 0..{max}; labels must be class ids counted from 0",
        path.display(), max = MAX_CLASSES
    )]
    Label {
        path: PathBuf,
        field: String,
        index: usize,
        value: i128,
    },
    /// The dataset holds no samples.
    #[error("{}: {field}: holds no samples (N = 0); a dataset needs at least one sample", path.display())]
    Empty { path: PathBuf, field: String },
    /// A setting of a data transform (augmentation) that cannot be used,
    /// or a dataset directory (`data`) that is not there; `field` is the
    /// config field it came from.
    #[error("invalid value for {field}: {message}")]
    Setting { field: String, message: String },
    /// A split name that is neither `train` nor `test`.
    #[error("unknown split '{0}': expected 'train' or 'test'")]
    UnknownSplit(String),
}

/// An empty vector with room for `n` elements, or a message saying that the
/// memory for them cannot be had (a header may claim more than the machine
/// holds; the allocation must fail as an error, not abort).
fn reserved<T>(n: usize) -> Result<Vec<T>, String> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        format!(
            "{n} elements ({} bytes) do not fit in this machine's memory",
            (n as u128) * std::mem::size_of::<T>() as u128
        )
    })?;
    Ok(v)
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn length_problem(expected: u64, actual: u64) -> &'static str {
    if actual < expected {
        "the file is truncated, re-download or re-export it"
    } else {
        "the file has trailing bytes after the data, re-download or re-export it"
    }
}

/// Which part of a dataset: the training or the test split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// Both splits, train first.
    pub const ALL: [Split; 2] = [Split::Train, Split::Test];

    /// The prefix of the standard (Fashion-)MNIST IDX file names.
    fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }

    /// The standard IDX file names of this split: `(images, labels)`, without `.gz`.
    pub fn idx_file_names(self) -> (String, String) {
        let p = self.idx_prefix();
        (
            format!("{p}-images-idx3-ubyte"),
            format!("{p}-labels-idx1-ubyte"),
        )
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "test" => Ok(Split::Test),
            _ => Err(DataError::UnknownSplit(s.to_string())),
        }
    }
}

/// A content fingerprint: hex xxh3-128 over the sample shape, the sample count,
/// the input values and the labels. Equal content gives equal fingerprints
/// whatever the file format or compression.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub String);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The element type inputs are stored as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Bytes, scaled to `[0, 1]` by [`Dataset::fill_inputs`].
    U8,
    /// Floats, copied as is (f16/f64 files are converted to f32 on open).
    F32,
}

#[derive(Clone, Debug)]
enum Inputs {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

impl Inputs {
    fn elements(&self) -> usize {
        match self {
            Inputs::U8(v) => v.len(),
            Inputs::F32(v) => v.len(),
        }
    }
}

/// One split of a dataset, fully loaded and validated: `len()` samples of
/// `sample_shape()` each, with optional class labels.
///
/// Invariants: inputs hold exactly `len() * sample_len()` elements, float inputs
/// are finite, labels (when present) number `len()` and are below [`MAX_CLASSES`].
#[derive(Clone)]
pub struct Dataset {
    inputs: Inputs,
    labels: Option<Vec<u32>>,
    shape: [usize; 3],
    sample_len: usize,
    len: usize,
    num_classes: Option<usize>,
    split: Split,
    source: PathBuf,
    /// The file the labels came from (`source` where they share a file).
    labels_source: PathBuf,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("split", &self.split)
            .field("source", &self.source)
            .field("len", &self.len)
            .field("sample_shape", &self.shape)
            .field("input_kind", &self.input_kind())
            .field("num_classes", &self.num_classes)
            .field("fingerprint", &self.fingerprint.0)
            .finish()
    }
}

/// A dataset file format: how to find a split's files in a directory and
/// how to open them. Adding a format is a new file that defines one of these
/// and one line in [`FORMATS`].
pub(crate) struct DatasetFormat {
    /// The format's name, for docs and messages.
    pub name: &'static str,
    /// The split's files in `dir` when they exist (images first).
    pub find: fn(dir: &Path, split: Split) -> Option<Found>,
    /// The files it looks for, named in the error when no format matches.
    pub looked_for: fn(dir: &Path, split: Split) -> Vec<PathBuf>,
    /// Opens and validates the files `find` returned, as `options` say.
    pub open: fn(found: &Found, split: Split, options: &DataOptions) -> Result<Dataset, DataError>,
    /// Whether it reads [`DataOptions::layout`] (image arrays).
    pub reads_layout: bool,
    /// Whether it reads [`DataOptions::labels`] (CIFAR-100).
    pub reads_labels: bool,
}

/// The files of one split that a [`DatasetFormat`] found.
pub(crate) struct Found {
    pub images: PathBuf,
    pub labels: Option<PathBuf>,
}

/// The registered formats, tried in this order by [`Dataset::open`].
const FORMATS: &[DatasetFormat] = &[
    idx::FORMAT,
    npy::FORMAT,
    arrays::FORMAT,
    cifar::FORMAT_10,
    cifar::FORMAT_100,
];

/// Returns the first of `candidates` that is a regular file.
pub(crate) fn first_file(candidates: &[&PathBuf]) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|p| p.is_file())
        .map(|p| (*p).clone())
}

impl Dataset {
    /// Opens split `split` of the dataset in directory `dir`, read as the
    /// directory's options file says ([`DataOptions::load`]; defaults
    /// without one). Auto-detects, in this order:
    /// 1. IDX (Fashion-MNIST/MNIST names): `train-images-idx3-ubyte[.gz]` +
    ///    `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]` +
    ///    `t10k-labels-idx1-ubyte[.gz]` for test (the uncompressed file wins when
    ///    both exist; gzip is detected by content, not name). A missing labels
    ///    file means unlabelled data.
    /// 2. NumPy: `{split}-images.npy` (+ optional `{split}-labels.npy`).
    /// 3. safetensors: `{split}.safetensors` with tensor `images` (+ optional `labels`).
    /// 4. CIFAR-10 binary: `data_batch_1.bin` .. `data_batch_5.bin` (train),
    ///    `test_batch.bin` (test).
    /// 5. CIFAR-100 binary: `train.bin`, `test.bin`.
    ///
    /// Image arrays of rank 4 are `[N, C, H, W]`, or `[N, H, W, C]` with the
    /// option `layout = "nhwc"` (converted on read). If none is found, the
    /// error lists exactly which files were looked for.
    pub fn open(dir: &Path, split: Split) -> Result<Dataset, DataError> {
        Dataset::check_dir(dir)?;
        Dataset::open_with(dir, split, &DataOptions::load(dir)?)
    }

    /// The test split beside `train` (opened from `dir`, as [`Dataset::open`]
    /// does): `None` when the directory has none, an error when it has one
    /// that does not read or whose samples are not of `train`'s shape.
    pub fn open_test_beside(dir: &Path, train: &Dataset) -> Result<Option<Dataset>, DataError> {
        let test = match Dataset::open(dir, Split::Test) {
            Ok(test) => test,
            Err(DataError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if test.sample_shape() != train.sample_shape() {
            let [c, h, w] = train.sample_shape();
            let [tc, th, tw] = test.sample_shape();
            return Err(DataError::Format {
                path: test.source().to_path_buf(),
                field: "sample shape".into(),
                message: format!(
                    "the test split's samples are {tc}x{th}x{tw} but the training split's \
                     ({}) are {c}x{h}x{w}; both splits must hold the same kind of sample",
                    train.source().display()
                ),
            });
        }
        Ok(Some(test))
    }

    /// Refuses a dataset directory (the setting `data`) that does not
    /// exist, is a file, or is a teacher cache's or a model's directory,
    /// before its splits are looked for: "no train split found" would send
    /// the user looking for files in a directory that is not there, or
    /// fetching a dataset into a cache. [`Dataset::open`] checks this first.
    pub fn check_dir(dir: &Path) -> Result<(), DataError> {
        let problem = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => match Dataset::other_kind(dir) {
                None => return Ok(()),
                Some(what) => what,
            },
            Ok(_) => "is a file, not a directory",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
            // Unreadable: the split's files are looked for, and their errors said.
            Err(_) => return Ok(()),
        };
        Err(DataError::Setting {
            field: "data".into(),
            message: format!(
                "{} {problem}; `data` is the directory holding the dataset's files (for Fashion-MNIST, run `data/fetch-fashion-mnist.sh DIR` to fill one)",
                dir.display()
            ),
        })
    }

    /// What `dir` holds instead of a dataset, when it holds none and is
    /// another of distill's directories (a teacher cache, a model): told
    /// as such rather than as a dataset with no split.
    fn other_kind(dir: &Path) -> Option<&'static str> {
        if Dataset::is_in(dir) {
            return None;
        }
        let holds = |name: &str| dir.join(name).exists();
        if holds("manifest.json") || holds("views.json") {
            Some("holds a teacher cache (manifest.json or views.json), not a dataset")
        } else if holds("model.safetensors") || holds("model.json") {
            Some("holds a model (model.safetensors or model.json), not a dataset")
        } else {
            None
        }
    }

    /// Whether `dir` holds a split of a dataset in a format distill reads
    /// (by its files' names; nothing is opened).
    pub fn is_in(dir: &Path) -> bool {
        FORMATS.iter().any(|format| {
            [Split::Train, Split::Test]
                .into_iter()
                .any(|split| (format.find)(dir, split).is_some())
        })
    }

    /// [`Dataset::open`] with the given options instead of the directory's
    /// options file. An option set that the detected format does not read
    /// is refused.
    pub fn open_with(
        dir: &Path,
        split: Split,
        options: &DataOptions,
    ) -> Result<Dataset, DataError> {
        Dataset::check_dir(dir)?;
        for format in FORMATS {
            if let Some(found) = (format.find)(dir, split) {
                check_options(dir, format, options)?;
                return (format.open)(&found, split, options);
            }
        }
        Err(DataError::NotFound {
            dir: dir.to_path_buf(),
            split,
            looked_for: FORMATS
                .iter()
                .flat_map(|f| (f.looked_for)(dir, split))
                .collect(),
        })
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the dataset holds no samples (only possible through [`Dataset::head`]`(0)`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The shape of one sample as (channels, height, width). A flat `[N, F]`
    /// array gives `[1, 1, F]`, `[N, H, W]` gives `[1, H, W]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// The number of input values per sample (C*H*W).
    pub fn sample_len(&self) -> usize {
        self.sample_len
    }

    /// The class label of each sample, if the dataset is labelled.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The number of classes, largest label + 1 (`None` if unlabelled or empty).
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    /// How many samples carry each label, 0 to `num_classes() - 1` (`None` if
    /// unlabelled); a label below the largest that no sample carries counts 0.
    pub fn class_counts(&self) -> Option<Vec<usize>> {
        let labels = self.labels.as_deref()?;
        let mut counts = vec![0; self.num_classes.unwrap_or(0)];
        for &label in labels {
            counts[label as usize] += 1;
        }
        Some(counts)
    }

    /// The content fingerprint, computed once when the dataset was built.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Which split this is.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The main file the inputs were read from ([`MEMORY_SOURCE`] if built in memory).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The file the labels were read from: [`Dataset::source`] where
    /// inputs and labels share a file.
    pub fn labels_source(&self) -> &Path {
        &self.labels_source
    }

    /// How the inputs are stored.
    pub fn input_kind(&self) -> InputKind {
        match self.inputs {
            Inputs::U8(_) => InputKind::U8,
            Inputs::F32(_) => InputKind::F32,
        }
    }

    /// Writes the inputs of samples `indices` into `out` as f32, sample after
    /// sample: u8 data is scaled to `[0, 1]` (x / 255), float data is copied as is.
    /// Allocates nothing.
    ///
    /// # Panics
    /// If `out.len() != indices.len() * self.sample_len()` or an index is
    /// `>= self.len()`; both are caller bugs, not data errors.
    pub fn fill_inputs(&self, indices: &[usize], out: &mut [f32]) {
        let f = self.sample_len;
        assert_eq!(
            out.len(),
            indices.len() * f,
            "fill_inputs: out holds {} floats but {} samples of {} need {}",
            out.len(),
            indices.len(),
            f,
            indices.len() * f
        );
        for (&i, dst) in indices.iter().zip(out.chunks_exact_mut(f.max(1))) {
            assert!(
                i < self.len,
                "fill_inputs: index {i} out of range for a dataset of {} samples",
                self.len
            );
            let start = i * f;
            match &self.inputs {
                Inputs::U8(data) => {
                    for (d, &s) in dst.iter_mut().zip(&data[start..start + f]) {
                        *d = f32::from(s) / 255.0;
                    }
                }
                Inputs::F32(data) => dst.copy_from_slice(&data[start..start + f]),
            }
        }
    }

    /// A new dataset holding the first `n` samples (all of them if `n >= len()`),
    /// with its own fingerprint. `head(0)` gives an empty dataset.
    pub fn head(&self, n: usize) -> Dataset {
        let n = n.min(self.len);
        let end = n * self.sample_len;
        let inputs = match &self.inputs {
            Inputs::U8(v) => Inputs::U8(v[..end].to_vec()),
            Inputs::F32(v) => Inputs::F32(v[..end].to_vec()),
        };
        let labels = self.labels.as_ref().map(|l| l[..n].to_vec());
        Dataset::assemble(
            inputs,
            labels,
            self.shape,
            n,
            self.split,
            self.source.clone(),
        )
        .with_labels_source(&self.labels_source)
    }

    /// Builds a dataset from `u8` inputs in memory (`len * C*H*W` bytes, sample
    /// after sample). Validates the shape, the lengths and the labels.
    pub fn from_u8(
        shape: [usize; 3],
        inputs: Vec<u8>,
        labels: Option<Vec<u32>>,
        split: Split,
    ) -> Result<Dataset, DataError> {
        Dataset::from_memory(shape, Inputs::U8(inputs), labels, split)
    }

    /// Builds a dataset from `f32` inputs in memory. Validates the shape, the
    /// lengths, the labels, and that every input is finite.
    pub fn from_f32(
        shape: [usize; 3],
        inputs: Vec<f32>,
        labels: Option<Vec<u32>>,
        split: Split,
    ) -> Result<Dataset, DataError> {
        Dataset::from_memory(shape, Inputs::F32(inputs), labels, split)
    }

    fn from_memory(
        shape: [usize; 3],
        inputs: Inputs,
        labels: Option<Vec<u32>>,
        split: Split,
    ) -> Result<Dataset, DataError> {
        let path = PathBuf::from(MEMORY_SOURCE);
        let format = |field: &str, message: String| DataError::Format {
            path: path.clone(),
            field: field.to_string(),
            message,
        };
        let sample_len = checked_sample_len(&shape).ok_or_else(|| {
            format(
                "shape",
                format!("sample shape {shape:?} must have no zero dimension and fit in memory"),
            )
        })?;
        let elements = inputs.elements();
        if !elements.is_multiple_of(sample_len) {
            return Err(format(
                "inputs",
                format!(
                    "holds {elements} values, not a multiple of the sample size {sample_len} (shape {shape:?})"
                ),
            ));
        }
        let n = elements / sample_len;
        if n == 0 {
            return Err(DataError::Empty {
                path,
                field: "inputs".into(),
            });
        }
        if let Inputs::F32(v) = &inputs {
            check_finite(&path, "inputs", v, sample_len)?;
        }
        if let Some(l) = &labels {
            if l.len() != n {
                return Err(format(
                    "labels",
                    format!("holds {} labels but the inputs hold {n} samples", l.len()),
                ));
            }
            if let Some(i) = l.iter().position(|&x| x as usize >= MAX_CLASSES) {
                return Err(DataError::Label {
                    path,
                    field: "labels".into(),
                    index: i,
                    value: i128::from(l[i]),
                });
            }
        }
        Ok(Dataset::assemble(inputs, labels, shape, n, split, path))
    }

    /// Builds a dataset from parts already validated by a reader.
    fn assemble(
        inputs: Inputs,
        labels: Option<Vec<u32>>,
        shape: [usize; 3],
        len: usize,
        split: Split,
        source: PathBuf,
    ) -> Dataset {
        let sample_len = shape.iter().product();
        debug_assert_eq!(inputs.elements(), len * sample_len);
        let num_classes = labels
            .as_ref()
            .and_then(|l| l.iter().max())
            .map(|&m| m as usize + 1);
        let fingerprint = fingerprint::compute(&inputs, shape, len, labels.as_deref());
        Dataset {
            inputs,
            labels,
            shape,
            sample_len,
            len,
            num_classes,
            split,
            labels_source: source.clone(),
            source,
            fingerprint,
        }
    }

    /// The same dataset, its labels read from `path` (a file of their own).
    fn with_labels_source(mut self, path: &Path) -> Dataset {
        self.labels_source = path.to_path_buf();
        self
    }

    /// The raw `u8` inputs, if stored as bytes (for writers in this module).
    fn inputs_u8(&self) -> Option<&[u8]> {
        match &self.inputs {
            Inputs::U8(v) => Some(v),
            Inputs::F32(_) => None,
        }
    }
}

/// Refuses an option that `format` would not read: it would silently do nothing.
fn check_options(
    dir: &Path,
    format: &DatasetFormat,
    options: &DataOptions,
) -> Result<(), DataError> {
    let file = DataOptions::path(dir);
    let refuse = |field: &str, value: String, reader: &str| {
        let why = format!(
            "the dataset in {} is {} files, which {reader}",
            dir.display(),
            format.name
        );
        // Without an options file the option can only have come from a flag.
        match file.exists() {
            true => DataError::Format {
                path: file.clone(),
                field: field.to_string(),
                message: format!(
                    "'{value}' is set (in this file, or by a flag over it), but {why}; remove the option"
                ),
            },
            false => DataError::Setting {
                field: field.to_string(),
                message: format!("'{value}' is given, but {why}; leave it out"),
            },
        }
    };
    match (options.layout, options.labels) {
        (Some(l), _) if !format.reads_layout => Err(refuse(
            "layout",
            l.to_string(),
            "have no axis order to choose (only .npy and safetensors image arrays do)",
        )),
        (_, Some(l)) if !format.reads_labels => Err(refuse(
            "labels",
            l.to_string(),
            "hold one label per sample (only CIFAR-100 has fine and coarse ones)",
        )),
        _ => Ok(()),
    }
}

/// C*H*W, or `None` if a dimension is zero or the product overflows.
fn checked_sample_len(shape: &[usize; 3]) -> Option<usize> {
    if shape.contains(&0) {
        return None;
    }
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Maps an array shape `[N, ...]` of rank 2..=4 to `(N, [C, H, W])`; a
/// rank-4 shape is `[N, C, H, W]`, or `[N, H, W, C]` under [`Layout::Nhwc`]
/// (which needs rank 4).
fn sample_shape_of(
    path: &Path,
    field: &str,
    dims: &[usize],
    layout: Layout,
) -> Result<(usize, [usize; 3]), DataError> {
    let shape = match (dims, layout) {
        (&[n, c, h, w], Layout::Nchw) => (n, [c, h, w]),
        (&[n, h, w, c], Layout::Nhwc) => (n, [c, h, w]),
        (&[n, f], Layout::Nchw) => (n, [1, 1, f]),
        (&[n, h, w], Layout::Nchw) => (n, [1, h, w]),
        (_, Layout::Nhwc) => {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                field: field.to_string(),
                message: format!(
                    "shape {dims:?} has rank {}, but the layout nhwc (the directory's {OPTIONS_FILE}) needs 4-D images [N, H, W, C]",
                    dims.len()
                ),
            })
        }
        _ => {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                field: field.to_string(),
                message: format!(
                    "shape {dims:?} has rank {}; expected [N, F], [N, H, W] or [N, C, H, W] ([N, H, W, C] with layout nhwc)",
                    dims.len()
                ),
            })
        }
    };
    if shape.0 == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            field: field.to_string(),
        });
    }
    if checked_sample_len(&shape.1).is_none() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            field: field.to_string(),
            message: format!("shape {dims:?} has a zero or oversized sample dimension"),
        });
    }
    Ok(shape)
}

/// Reorders `n` images from (height, width, channel) to (channel, height,
/// width) order: the conversion of an NHWC array on read.
fn nhwc_to_nchw<T: Copy + Default>(data: &[T], n: usize, [c, h, w]: [usize; 3]) -> Vec<T> {
    let len = c * h * w;
    let mut out = vec![T::default(); data.len()];
    for (src, dst) in data
        .chunks_exact(len)
        .zip(out.chunks_exact_mut(len))
        .take(n)
    {
        for (p, pixel) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in pixel.iter().enumerate() {
                dst[ch * h * w + p] = v;
            }
        }
    }
    out
}

impl Inputs {
    /// [`nhwc_to_nchw`] of these inputs when `layout` is NHWC.
    fn in_layout(self, layout: Layout, n: usize, shape: [usize; 3]) -> Inputs {
        match (layout, self) {
            (Layout::Nchw, inputs) => inputs,
            (Layout::Nhwc, Inputs::U8(v)) => Inputs::U8(nhwc_to_nchw(&v, n, shape)),
            (Layout::Nhwc, Inputs::F32(v)) => Inputs::F32(nhwc_to_nchw(&v, n, shape)),
        }
    }
}

/// Fails on the first NaN or infinite value, naming its index and row.
fn check_finite(path: &Path, field: &str, values: &[f32], row_len: usize) -> Result<(), DataError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(DataError::NonFinite {
            path: path.to_path_buf(),
            field: field.to_string(),
            index,
            row: index / row_len.max(1),
            value: values[index],
        }),
    }
}

/// Checks that `labels` holds `n` entries (the count check names both files).
fn check_label_count(
    images: &Path,
    labels_path: &Path,
    n: usize,
    labels: &[u32],
) -> Result<(), DataError> {
    if labels.len() != n {
        return Err(DataError::LabelCount {
            images: images.to_path_buf(),
            labels: labels_path.to_path_buf(),
            images_count: n,
            labels_count: labels.len(),
        });
    }
    Ok(())
}
