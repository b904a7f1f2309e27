//! The IDX format of (Fashion-)MNIST: reading an images + labels pair into a
//! [`Dataset`], and [`write_idx`] for writing one back.
//!
//! An IDX file is a 4-byte magic (`0x00 0x00 type ndim`; type `0x08` = u8),
//! `ndim` big-endian u32 dimensions, then the elements in C order. Images are
//! `0x00000803` (`[N, H, W]`), labels `0x00000801` (`[N]`). Files may be gzip
//! compressed; that is detected from the magic bytes `1f 8b`, not the name.
//!
//! Headers are hostile input: no buffer is sized by a header field before the
//! size it implies is checked against the real file size (raw files) or
//! against what the compressed file could possibly expand to, capped at
//! [`MAX_IDX_BYTES`] (gzip files), and the payload must match the header
//! exactly: truncated files and trailing bytes are both refused.

use std::fs::{self, File};
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{
    check_label_count, first_file, DataError, Dataset, DatasetFormat, Found, Inputs, Split,
};

/// Magic of u8 image files (`[N, H, W]`).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of u8 label files (`[N]`).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// The largest payload accepted from a gzip-compressed IDX file.
pub const MAX_IDX_BYTES: u64 = 4 << 30;
/// Deflate cannot expand data by more than about 1032:1; a header claiming
/// more than that from a small file is corrupt, whatever the cap.
const DEFLATE_MAX_RATIO: u64 = 1032;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A parsed IDX array: dimensions and u8 payload.
#[derive(Debug)]
pub(super) struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads into `buf` until it is full or the reader ends; returns the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads an IDX file holding u8 elements in `ndim` dimensions.
pub(super) fn read_idx_file(path: &Path, field: &str, ndim: u8) -> Result<IdxArray, DataError> {
    let read_err = |source| DataError::Read {
        path: path.to_path_buf(),
        field: field.to_string(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    read_idx(file, len, path, field, ndim)
}

/// Reads an IDX array of u8 elements in `ndim` dimensions from `r`, which
/// holds `total_len` bytes (raw or gzip-compressed).
pub(super) fn read_idx<R: Read>(
    mut r: R,
    total_len: u64,
    path: &Path,
    field: &str,
    ndim: u8,
) -> Result<IdxArray, DataError> {
    let mut head = [0u8; 2];
    let got = read_full(&mut r, &mut head).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        field: field.to_string(),
        source,
    })?;
    let stream = Cursor::new(head[..got].to_vec()).chain(r);
    if got == 2 && head == GZIP_MAGIC {
        let cap = MAX_IDX_BYTES.min(total_len.saturating_mul(DEFLATE_MAX_RATIO));
        let gz_field = format!("{field} (gzip)");
        parse(
            MultiGzDecoder::new(stream),
            None,
            cap,
            total_len,
            path,
            &gz_field,
            ndim,
        )
    } else {
        parse(
            stream,
            Some(total_len),
            total_len,
            total_len,
            path,
            field,
            ndim,
        )
    }
}

/// Parses header and payload. `raw_len` is the exact stream length when it is
/// known (uncompressed files); `cap` bounds the payload otherwise.
fn parse<R: Read>(
    mut r: R,
    raw_len: Option<u64>,
    cap: u64,
    file_len: u64,
    path: &Path,
    field: &str,
    ndim: u8,
) -> Result<IdxArray, DataError> {
    let src = Source { path, field };
    let dims = read_dims(&mut r, src, ndim)?;
    let header_len = (4 + 4 * usize::from(ndim)) as u64;
    let expected = payload_len(&dims, header_len, raw_len, cap, file_len, src)?;
    let data = read_payload(r, expected, raw_len, cap, src)?;
    Ok(IdxArray { dims, data })
}

/// The file and field an IDX stream is read for, named by its errors.
#[derive(Clone, Copy)]
struct Source<'a> {
    path: &'a Path,
    field: &'a str,
}

impl Source<'_> {
    fn read_err(self, source: io::Error) -> DataError {
        DataError::Read {
            path: self.path.to_path_buf(),
            field: self.field.to_string(),
            source,
        }
    }

    fn format(self, what: &str, message: String) -> DataError {
        DataError::Format {
            path: self.path.to_path_buf(),
            field: format!("{}: {what}", self.field),
            message,
        }
    }

    fn length(self, expected: u64, actual: u64) -> DataError {
        DataError::Length {
            path: self.path.to_path_buf(),
            field: self.field.to_string(),
            expected,
            actual,
        }
    }
}

/// Reads the header (magic, then `ndim` big-endian dimensions) and returns
/// the dimensions, all non-zero.
fn read_dims(r: &mut impl Read, src: Source, ndim: u8) -> Result<Vec<usize>, DataError> {
    let header_len = 4 + 4 * usize::from(ndim);
    let mut header = vec![0u8; header_len];
    let got = read_full(r, &mut header).map_err(|e| src.read_err(e))?;
    let want_magic = 0x0800 | u32::from(ndim);
    if got >= 4 {
        let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        if magic != want_magic {
            let kind = if ndim == 3 { "images" } else { "labels" };
            return Err(src.format(
                "magic",
                format!(
                    "found 0x{magic:08x}, expected 0x{want_magic:08x} (u8 {kind}, {ndim} dimensions); \
                     this is not an idx {kind} file (were images and labels swapped?)"
                ),
            ));
        }
    }
    if got < header_len {
        return Err(src.format(
            "header",
            format!(
                "holds {got} bytes, an idx header with {ndim} dimensions needs {header_len}; the file is truncated"
            ),
        ));
    }
    let dims: Vec<usize> = header[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    if dims[0] == 0 {
        return Err(DataError::Empty {
            path: src.path.to_path_buf(),
            field: src.field.to_string(),
        });
    }
    if dims.contains(&0) {
        return Err(src.format(
            "dims",
            format!("dimensions {dims:?} contain a zero; the header is corrupt"),
        ));
    }
    Ok(dims)
}

/// The payload size `dims` imply, checked against the exact stream length
/// (`raw_len`, uncompressed files) or against `cap` (gzip files).
fn payload_len(
    dims: &[usize],
    header_len: u64,
    raw_len: Option<u64>,
    cap: u64,
    file_len: u64,
    src: Source,
) -> Result<u64, DataError> {
    // Each dim is below 2^32 and there are at most 3: the product fits u128,
    // and anything above u64 is corrupt.
    let expected = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| {
            src.format(
                "dims",
                format!("dimensions {dims:?} overflow; the header is corrupt"),
            )
        })?;
    match raw_len {
        Some(total) => {
            let actual = total.saturating_sub(header_len);
            if actual != expected {
                return Err(src.length(expected, actual));
            }
        }
        None if expected > cap => {
            return Err(src.format(
                "dims",
                format!(
                    "dimensions {dims:?} imply {expected} bytes, more than a {file_len}-byte gzip file can hold \
                     (at most {cap}); the header is corrupt or the file is too large"
                ),
            ));
        }
        None => {}
    }
    Ok(expected)
}

/// Reads exactly `expected` payload bytes; a gzip stream (no `raw_len`) must
/// also end right there.
fn read_payload<R: Read>(
    mut r: R,
    expected: u64,
    raw_len: Option<u64>,
    cap: u64,
    src: Source,
) -> Result<Vec<u8>, DataError> {
    let expected_usize = usize::try_from(expected)
        .map_err(|_| src.format("dims", format!("{expected} bytes do not fit in memory")))?;
    // Bounded: by the real file size (raw) or by what the compressed size allows (gzip).
    let mut data = super::reserved(expected_usize).map_err(|m| src.format("dims", m))?;
    (&mut r)
        .take(expected)
        .read_to_end(&mut data)
        .map_err(|e| src.read_err(e))?;
    if (data.len() as u64) < expected {
        return Err(src.length(expected, data.len() as u64));
    }
    if raw_len.is_none() {
        let extra = io::copy(&mut r.take(cap.saturating_add(1)), &mut io::sink())
            .map_err(|e| src.read_err(e))?;
        if extra > 0 {
            return Err(src.length(expected, expected + extra));
        }
    }
    Ok(data)
}

/// IDX files with Fashion-MNIST/MNIST names: `train-images-idx3-ubyte[.gz]` +
/// `train-labels-idx1-ubyte[.gz]` (`t10k-` for test); the uncompressed file
/// wins when both exist.
pub(super) const FORMAT: DatasetFormat = DatasetFormat {
    name: "idx",
    find: |dir, split| {
        let [images, images_gz, labels, labels_gz] = candidates(dir, split);
        let images = first_file(&[&images, &images_gz])?;
        Some(Found {
            images,
            labels: first_file(&[&labels, &labels_gz]),
        })
    },
    looked_for: |dir, split| {
        let [images, images_gz, ..] = candidates(dir, split);
        vec![images, images_gz]
    },
    open: |found, split, _| open(&found.images, found.labels.as_deref(), split),
    reads_layout: false,
    reads_labels: false,
};

fn candidates(dir: &Path, split: Split) -> [PathBuf; 4] {
    let (img, lab) = split.idx_file_names();
    [
        dir.join(&img),
        dir.join(format!("{img}.gz")),
        dir.join(&lab),
        dir.join(format!("{lab}.gz")),
    ]
}

/// Opens an IDX images file and, when given, its labels file.
pub(super) fn open(
    images: &Path,
    labels: Option<&Path>,
    split: Split,
) -> Result<Dataset, DataError> {
    let labels_path = labels;
    let (img, lab) = rayon::join(
        || read_idx_file(images, "images", 3),
        || labels.map(|l| read_idx_file(l, "labels", 1)),
    );
    let img = img?;
    let (n, h, w) = (img.dims[0], img.dims[1], img.dims[2]);
    let labels = match (labels, lab) {
        (Some(lpath), Some(lab)) => {
            let l: Vec<u32> = lab?.data.iter().map(|&x| u32::from(x)).collect();
            check_label_count(images, lpath, n, &l)?;
            Some(l)
        }
        _ => None,
    };
    let data = Dataset::assemble(
        Inputs::U8(img.data),
        labels,
        [1, h, w],
        n,
        split,
        images.to_path_buf(),
    );
    Ok(match labels_path {
        Some(l) => data.with_labels_source(l),
        None => data,
    })
}

/// Writes the split in IDX format (gzip-compressed when `gzip`), with the
/// standard Fashion-MNIST file names (`train-*` / `t10k-*`, plus `.gz`), into
/// `dir`, creating it if needed. The labels file is written only for labelled
/// data. Each file is written to a `.tmp` sibling, then renamed into place.
///
/// Needs u8 inputs of one channel and labels below 256.
pub fn write_idx(ds: &Dataset, dir: &Path, gzip: bool) -> Result<(), DataError> {
    let (img_name, lab_name) = ds.split().idx_file_names();
    let ext = if gzip { ".gz" } else { "" };
    let img_path = dir.join(format!("{img_name}{ext}"));
    let lab_path = dir.join(format!("{lab_name}{ext}"));
    let format = |path: &Path, field: &str, message: String| DataError::Format {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let data = ds.inputs_u8().ok_or_else(|| {
        format(
            &img_path,
            "images",
            "idx stores u8 pixels but this dataset holds f32 inputs; convert it to u8 first".into(),
        )
    })?;
    if ds.is_empty() {
        return Err(DataError::Empty {
            path: img_path,
            field: "images".into(),
        });
    }
    let [c, h, w] = ds.sample_shape();
    if c != 1 {
        return Err(format(
            &img_path,
            "images",
            format!("sample shape [{c}, {h}, {w}] has {c} channels; idx images hold one channel"),
        ));
    }
    let to_u32 = |v: usize, what: &str| {
        u32::try_from(v).map_err(|_| {
            format(
                &img_path,
                "images",
                format!("{what} {v} does not fit in an idx u32 dimension"),
            )
        })
    };
    let (n32, h32, w32) = (
        to_u32(ds.len(), "sample count")?,
        to_u32(h, "height")?,
        to_u32(w, "width")?,
    );

    fs::create_dir_all(dir).map_err(|source| DataError::Write {
        path: dir.to_path_buf(),
        field: "directory".into(),
        source,
    })?;
    let mut header = Vec::with_capacity(16);
    header.extend_from_slice(&IMAGES_MAGIC.to_be_bytes());
    for d in [n32, h32, w32] {
        header.extend_from_slice(&d.to_be_bytes());
    }
    write_file(&img_path, "images", gzip, &header, data)?;

    if let Some(labels) = ds.labels() {
        let bytes = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                u8::try_from(l).map_err(|_| {
                    format(
                        &lab_path,
                        "labels",
                        format!("label {l} at index {i} does not fit in an idx u8 label"),
                    )
                })
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let mut header = Vec::with_capacity(8);
        header.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        header.extend_from_slice(&n32.to_be_bytes());
        write_file(&lab_path, "labels", gzip, &header, &bytes)?;
    }
    Ok(())
}

/// Writes `header` + `payload` to `path` through a `.tmp` sibling, synced,
/// renamed into place, and the directory synced.
fn write_file(
    path: &Path,
    field: &str,
    gzip: bool,
    header: &[u8],
    payload: &[u8],
) -> Result<(), DataError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write_err = |p: &Path| {
        let p = p.to_path_buf();
        let field = field.to_string();
        move |source| DataError::Write {
            path: p,
            field,
            source,
        }
    };
    let result = (|| -> io::Result<()> {
        let file = BufWriter::new(File::create(&tmp)?);
        let file = if gzip {
            // mtime 0 (flate2's default) keeps the output reproducible.
            let mut enc = GzEncoder::new(file, Compression::best());
            enc.write_all(header)?;
            enc.write_all(payload)?;
            enc.finish()?
        } else {
            let mut file = file;
            file.write_all(header)?;
            file.write_all(payload)?;
            file
        };
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        // Named by the file asked for; its `.tmp` copy is gone again.
        return Err(write_err(path)(e));
    }
    fs::rename(&tmp, path).map_err(write_err(path))?;
    // The rename survives a crash once the directory is synced.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::fsutil::fsync_dir(dir).map_err(|e| write_err(dir)(e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;

    fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn read_mem(bytes: &[u8], ndim: u8) -> Result<IdxArray, DataError> {
        read_idx(
            Cursor::new(bytes),
            bytes.len() as u64,
            Path::new("mem.idx"),
            "images",
            ndim,
        )
    }

    fn sample(n: usize, h: usize, w: usize, labelled: bool) -> Dataset {
        let inputs: Vec<u8> = (0..n * h * w).map(|i| (i * 7 % 256) as u8).collect();
        let labels = labelled.then(|| (0..n).map(|i| (i % 10) as u32).collect());
        Dataset::from_u8([1, h, w], inputs, labels, Split::Train).unwrap()
    }

    #[test]
    fn round_trip_raw_and_gz_same_fingerprint() {
        let ds = sample(7, 5, 3, true);
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_idx(&ds, dir.path(), gzip).unwrap();
            let name = if gzip {
                "train-images-idx3-ubyte.gz"
            } else {
                "train-images-idx3-ubyte"
            };
            assert!(dir.path().join(name).is_file());
            let back = Dataset::open(dir.path(), Split::Train).unwrap();
            assert_eq!(back.len(), 7);
            assert_eq!(back.sample_shape(), [1, 5, 3]);
            assert_eq!(back.labels(), ds.labels());
            assert_eq!(back.fingerprint(), ds.fingerprint());
            assert_eq!(back.source(), dir.path().join(name));
        }
    }

    #[test]
    fn a_failed_write_names_the_file_asked_for_and_leaves_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("train-images-idx3-ubyte");
        let e = write_file(&path, "images", false, b"hdr", b"data").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}: cannot write images", path.display())),
            "{text}"
        );
        assert!(!text.contains("ubyte.tmp"), "{text}");
    }

    #[test]
    fn test_split_uses_t10k_names_and_unlabelled_has_no_labels_file() {
        let inputs = vec![3u8; 2 * 4];
        let ds = Dataset::from_u8([1, 2, 2], inputs, None, Split::Test).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_idx(&ds, dir.path(), false).unwrap();
        assert!(dir.path().join("t10k-images-idx3-ubyte").is_file());
        assert!(!dir.path().join("t10k-labels-idx1-ubyte").exists());
        let back = Dataset::open(dir.path(), Split::Test).unwrap();
        assert!(back.labels().is_none());
        assert_eq!(back.num_classes(), None);
        assert_eq!(back.fingerprint(), ds.fingerprint());
    }

    #[test]
    fn write_refuses_f32_and_multichannel() {
        let dir = tempfile::tempdir().unwrap();
        let f = Dataset::from_f32([1, 1, 2], vec![0.5, 0.25], None, Split::Train).unwrap();
        assert!(matches!(
            write_idx(&f, dir.path(), false),
            Err(DataError::Format { .. })
        ));
        let c = Dataset::from_u8([3, 1, 1], vec![1, 2, 3], None, Split::Train).unwrap();
        let e = write_idx(&c, dir.path(), false).unwrap_err().to_string();
        assert!(e.contains("3 channels"), "{e}");
    }

    #[test]
    fn truncated_payload_names_byte_counts() {
        let bytes = idx_bytes(IMAGES_MAGIC, &[2, 3, 3], &[0; 17]);
        for b in [bytes.clone(), gz(&bytes)] {
            match read_mem(&b, 3) {
                Err(DataError::Length {
                    expected: 18,
                    actual: 17,
                    ..
                }) => {}
                other => panic!("{other:?}"),
            }
        }
        let e = read_mem(&bytes, 3).unwrap_err().to_string();
        assert!(e.contains("mem.idx") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let bytes = idx_bytes(IMAGES_MAGIC, &[2, 3, 3], &[0; 21]);
        for b in [bytes.clone(), gz(&bytes)] {
            match read_mem(&b, 3) {
                Err(DataError::Length {
                    expected: 18,
                    actual: 21,
                    ..
                }) => {}
                other => panic!("{other:?}"),
            }
        }
        let e = read_mem(&bytes, 3).unwrap_err().to_string();
        assert!(e.contains("trailing"), "{e}");
    }

    #[test]
    fn wrong_magic_is_refused() {
        let labels = idx_bytes(LABELS_MAGIC, &[4], &[0; 4]);
        let e = read_mem(&labels, 3).unwrap_err();
        assert!(
            matches!(e, DataError::Format { ref field, .. } if field.ends_with("magic")),
            "{e}"
        );
        assert!(e.to_string().contains("0x00000801"), "{e}");
        let junk = b"PK\x03\x04 not idx at all".to_vec();
        assert!(matches!(read_mem(&junk, 1), Err(DataError::Format { .. })));
    }

    #[test]
    fn wrong_dims_are_refused() {
        // Header claims far more than the file holds: refused before allocating.
        let huge = idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, 1], &[0; 8]);
        assert!(matches!(
            read_mem(&huge, 3),
            Err(DataError::Length { actual: 8, .. })
        ));
        let overflow = idx_bytes(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX], &[0; 8]);
        let e = read_mem(&overflow, 3).unwrap_err().to_string();
        assert!(e.contains("overflow"), "{e}");
        let e = read_mem(&gz(&huge), 3).unwrap_err();
        assert!(
            matches!(e, DataError::Format { ref field, .. } if field.ends_with("dims")),
            "{e}"
        );
        let zero_h = idx_bytes(IMAGES_MAGIC, &[1, 0, 3], &[]);
        assert!(matches!(
            read_mem(&zero_h, 3),
            Err(DataError::Format { .. })
        ));
        let zero_n = idx_bytes(IMAGES_MAGIC, &[0, 2, 2], &[]);
        assert!(matches!(read_mem(&zero_n, 3), Err(DataError::Empty { .. })));
        let short = IMAGES_MAGIC.to_be_bytes().to_vec();
        let e = read_mem(&short, 3).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn label_count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("train-images-idx3-ubyte");
        let labels = dir.path().join("train-labels-idx1-ubyte.gz");
        fs::write(&images, idx_bytes(IMAGES_MAGIC, &[3, 1, 2], &[1; 6])).unwrap();
        fs::write(&labels, gz(&idx_bytes(LABELS_MAGIC, &[2], &[0, 1]))).unwrap();
        let e = Dataset::open(dir.path(), Split::Train).unwrap_err();
        assert!(matches!(
            e,
            DataError::LabelCount {
                images_count: 3,
                labels_count: 2,
                ..
            }
        ));
        let msg = e.to_string();
        assert!(
            msg.contains("train-images-idx3-ubyte") && msg.contains("train-labels-idx1-ubyte.gz"),
            "{msg}"
        );
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut b = gz(&idx_bytes(IMAGES_MAGIC, &[2, 2, 2], &[9; 8]));
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        b.truncate(b.len() - 3);
        assert!(read_mem(&b, 3).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_round_trip(n in 1usize..12, h in 1usize..9, w in 1usize..9, gzip: bool, labelled: bool, seed: u64) {
            let inputs: Vec<u8> = (0..n * h * w).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 7) as u8).collect();
            let labels = labelled.then(|| (0..n).map(|i| ((seed >> (i % 60)) % 256) as u32).collect::<Vec<_>>());
            let ds = Dataset::from_u8([1, h, w], inputs.clone(), labels.clone(), Split::Test).unwrap();
            let dir = tempfile::tempdir().unwrap();
            write_idx(&ds, dir.path(), gzip).unwrap();
            let back = Dataset::open(dir.path(), Split::Test).unwrap();
            prop_assert_eq!(back.len(), n);
            prop_assert_eq!(back.sample_shape(), [1, h, w]);
            prop_assert_eq!(back.inputs_u8(), Some(&inputs[..]));
            prop_assert_eq!(back.labels(), labels.as_deref());
            prop_assert_eq!(back.fingerprint(), ds.fingerprint());
        }

        #[test]
        fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), ndim in prop_oneof![Just(1u8), Just(3u8)]) {
            let _ = read_mem(&bytes, ndim);
            let _ = read_mem(&gz(&bytes), ndim);
        }

        #[test]
        fn prop_mutated_files_never_panic(
            pos in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
            gzip: bool,
        ) {
            let good = idx_bytes(IMAGES_MAGIC, &[3, 4, 2], &[7; 24]);
            let mut b = if gzip { gz(&good) } else { good };
            for (p, v) in pos {
                let len = b.len();
                b[p % len] = v;
            }
            let _ = read_mem(&b, 3);
            b.truncate(cut % (b.len() + 1));
            let _ = read_mem(&b, 3);
        }

        #[test]
        fn prop_truncation_is_an_error(cut in 0usize..40, gzip: bool) {
            let good = idx_bytes(IMAGES_MAGIC, &[3, 4, 2], &[7; 24]);
            let b = if gzip { gz(&good) } else { good };
            let cut = cut.min(b.len() - 1);
            prop_assert!(read_mem(&b[..cut], 3).is_err());
        }
    }
}
