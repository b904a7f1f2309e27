//! safetensors datasets (`{split}.safetensors` with tensors `images` and
//! optional `labels`), and [`read_float_matrix`], which reads a `[N, C]` float
//! matrix from a `.npy` or safetensors file (teacher logits exported from
//! another framework, for `cache import`).
//!
//! Parsing uses the `safetensors` crate, after a pre-check of the header's
//! data offsets against the file size: the crate adds those offsets without
//! overflow checks, which would panic on hostile input in debug builds.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::elem::{extend_f32, labels_to_u32, Elem};
use super::{
    check_finite, check_label_count, npy, sample_shape_of, DataError, Dataset, DatasetFormat,
    Found, Inputs, Layout, Split,
};

/// The largest safetensors header accepted (the crate's own limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

fn format_err(path: &Path, field: &str, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
}

fn elem_of(dtype: Dtype) -> Option<Elem> {
    Some(match dtype {
        Dtype::U8 => Elem::U8,
        Dtype::I8 => Elem::I8,
        Dtype::U16 => Elem::U16,
        Dtype::I16 => Elem::I16,
        Dtype::U32 => Elem::U32,
        Dtype::I32 => Elem::I32,
        Dtype::U64 => Elem::U64,
        Dtype::I64 => Elem::I64,
        Dtype::F16 => Elem::F16,
        Dtype::BF16 => Elem::BF16,
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        _ => return None,
    })
}

/// Checks the parts of the header the crate trusts: its length, and that
/// every tensor's data offsets lie inside the file.
fn precheck(bytes: &[u8], path: &Path) -> Result<(), DataError> {
    let fmt = |m: String| format_err(path, "header", m);
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(fmt(format!(
            "the file holds {} bytes, too short for a safetensors header; the file is truncated",
            bytes.len()
        )));
    };
    let mut lb = [0u8; 8];
    lb.copy_from_slice(len_bytes);
    let n = u64::from_le_bytes(lb);
    let available = bytes.len() as u64 - 8;
    if n > MAX_HEADER_LEN || n > available {
        return Err(fmt(format!(
            "header length {n} exceeds the file ({available} bytes after the length field) or the maximum {MAX_HEADER_LEN}; \
             the file is truncated or not a safetensors file"
        )));
    }
    let data_len = available - n;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n as usize]).map_err(|e| {
            fmt(format!(
                "is not a valid JSON object ({e}); this is not a safetensors file"
            ))
        })?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let ok = offsets.is_some_and(|o| {
            o.len() == 2 && o.iter().all(|x| x.as_u64().is_some_and(|x| x <= data_len))
        });
        if !ok {
            return Err(format_err(
                path,
                name,
                format!("data_offsets are missing or outside the {data_len}-byte data section; the file is corrupt"),
            ));
        }
    }
    Ok(())
}

/// Parses a whole safetensors file held in memory.
pub(super) fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, DataError> {
    precheck(bytes, path)?;
    SafeTensors::deserialize(bytes).map_err(|e| {
        format_err(
            path,
            "header",
            format!("invalid safetensors file: {e:?}; re-export it"),
        )
    })
}

fn tensor<'a>(
    st: &SafeTensors<'a>,
    name: &str,
    path: &Path,
) -> Result<Option<TensorView<'a>>, DataError> {
    if !st.names().iter().any(|n| n.as_str() == name) {
        return Ok(None);
    }
    st.tensor(name)
        .map(Some)
        .map_err(|e| format_err(path, name, format!("cannot read tensor: {e:?}")))
}

/// Converts a float tensor to f32, checking every value is finite.
fn float_data(
    view: &TensorView<'_>,
    path: &Path,
    field: &str,
    row_len: usize,
    expected: &'static str,
) -> Result<Vec<f32>, DataError> {
    let elem = elem_of(view.dtype())
        .filter(|e| e.is_float())
        .ok_or_else(|| DataError::Dtype {
            path: path.to_path_buf(),
            field: field.to_string(),
            dtype: format!("{:?}", view.dtype()),
            expected,
        })?;
    let mut out = Vec::with_capacity(view.data().len() / elem.size());
    extend_f32(elem, false, view.data(), &mut out);
    check_finite(path, field, &out, row_len)?;
    Ok(out)
}

/// Builds a dataset from parsed safetensors bytes.
pub(super) fn from_bytes(
    bytes: &[u8],
    path: &Path,
    split: Split,
    layout: Layout,
) -> Result<Dataset, DataError> {
    let st = parse(bytes, path)?;
    let Some(images) = tensor(&st, "images", path)? else {
        let mut names: Vec<_> = st.names().into_iter().cloned().collect();
        names.sort();
        return Err(format_err(
            path,
            "images",
            format!(
                "no tensor named 'images' (found: {}); name the inputs tensor 'images'",
                names.join(", ")
            ),
        ));
    };
    let (n, shape) = sample_shape_of(path, "images", images.shape(), layout)?;
    let inputs = match images.dtype() {
        Dtype::U8 => Inputs::U8(images.data().to_vec()),
        _ => Inputs::F32(float_data(
            &images,
            path,
            "images",
            shape.iter().product(),
            "U8, F16, BF16, F32 or F64",
        )?),
    }
    .in_layout(layout, n, shape);
    let labels = match tensor(&st, "labels", path)? {
        None => None,
        Some(view) => {
            let elem = elem_of(view.dtype())
                .filter(|e| e.is_int())
                .ok_or_else(|| DataError::Dtype {
                    path: path.to_path_buf(),
                    field: "labels".into(),
                    dtype: format!("{:?}", view.dtype()),
                    expected: "an integer dtype: U8, I8, U16, I16, U32, I32, U64 or I64",
                })?;
            if view.shape().len() != 1 {
                return Err(format_err(
                    path,
                    "labels",
                    format!(
                        "shape {:?} is not 1-D; expected [N], one class id per sample",
                        view.shape()
                    ),
                ));
            }
            let l = labels_to_u32(path, "labels", elem, false, view.data())?;
            check_label_count(path, path, n, &l)?;
            Some(l)
        }
    };
    Ok(Dataset::assemble(
        inputs,
        labels,
        shape,
        n,
        split,
        path.to_path_buf(),
    ))
}

/// safetensors: `{split}.safetensors` with tensor `images` (+ optional `labels`).
pub(super) const FORMAT: DatasetFormat = DatasetFormat {
    name: "safetensors",
    find: |dir, split| {
        let images = dir.join(format!("{split}.safetensors"));
        images.is_file().then_some(Found {
            images,
            labels: None,
        })
    },
    looked_for: |dir, split| vec![dir.join(format!("{split}.safetensors"))],
    open: |found, split, options| open(&found.images, split, options.layout()),
    reads_layout: true,
    reads_labels: false,
};

/// Opens `{split}.safetensors`, its images stored in `layout`.
pub(super) fn open(path: &Path, split: Split, layout: Layout) -> Result<Dataset, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Read {
        path: path.to_path_buf(),
        field: "safetensors file".into(),
        source,
    })?;
    from_bytes(&bytes, path, split, layout)
}

/// Reads a `[N, C]` float matrix from safetensors bytes: the tensor `name`, or
/// the only tensor when `name` is `None`.
fn matrix_from_safetensors(
    bytes: &[u8],
    path: &Path,
    name: Option<&str>,
) -> Result<(usize, usize, Vec<f32>), DataError> {
    let st = parse(bytes, path)?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    if names.is_empty() {
        return Err(format_err(
            path,
            "tensors",
            "the file holds no tensors (its header lists none); write the matrix into it as one [N, C] tensor"
                .into(),
        ));
    }
    let name = match name {
        Some(n) => n.to_string(),
        None if names.len() == 1 => names[0].clone(),
        None => {
            return Err(format_err(
                path,
                "tensor",
                format!(
                    "holds {} tensors ({}); name the one to read (`distill cache import --tensor NAME`)",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
    };
    let Some(view) = tensor(&st, &name, path)? else {
        return Err(format_err(
            path,
            &name,
            format!("no such tensor (found: {})", names.join(", ")),
        ));
    };
    let (rows, cols) = match *view.shape() {
        [rows, cols] => (rows, cols),
        _ => {
            return Err(format_err(
                path,
                &name,
                format!(
                    "shape {:?} is not 2-D; expected [N, C] (one row of logits per sample)",
                    view.shape()
                ),
            ))
        }
    };
    if rows > 0 && cols == 0 {
        return Err(format_err(
            path,
            &name,
            format!("shape [{rows}, 0] holds no classes (C = 0); expected [N, C] with C >= 1"),
        ));
    }
    if rows == 0 || cols == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            field: format!("{name} of shape [{rows}, {cols}]"),
        });
    }
    let data = float_data(&view, path, &name, cols, "F16, BF16, F32 or F64")?;
    Ok((rows, cols, data))
}

/// What a file given as a float matrix is: by its first bytes (the `.npy`
/// magic, or a safetensors header length that fits the file followed by
/// its JSON object), else by its name's extension, else neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatrixFile {
    Npy,
    Safetensors,
    /// Neither by content nor by name (a script, a CSV, a pickle).
    Neither,
}

impl MatrixFile {
    /// Looks at the first bytes of `path` (and its name).
    pub fn of(path: &Path) -> Result<MatrixFile, DataError> {
        let read_err = |source| DataError::Read {
            path: path.to_path_buf(),
            field: "matrix".into(),
            source,
        };
        let mut head = [0u8; 9];
        let (got, len) = File::open(path)
            .and_then(|mut f| {
                let len = f.metadata()?.len();
                let mut got = 0;
                while got < head.len() {
                    match f.read(&mut head[got..])? {
                        0 => break,
                        k => got += k,
                    }
                }
                Ok((got, len))
            })
            .map_err(read_err)?;
        if got >= 6 && &head[..6] == b"\x93NUMPY" {
            return Ok(MatrixFile::Npy);
        }
        if got == head.len() && head[8] == b'{' {
            let mut lb = [0u8; 8];
            lb.copy_from_slice(&head[..8]);
            if u64::from_le_bytes(lb) <= len.saturating_sub(8) {
                return Ok(MatrixFile::Safetensors);
            }
        }
        let named = |ext: &str| {
            path.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case(ext))
        };
        Ok(if named("npy") {
            MatrixFile::Npy
        } else if named("safetensors") {
            MatrixFile::Safetensors
        } else {
            MatrixFile::Neither
        })
    }
}

/// Reads a float matrix `[N, C]` (f32/f64/f16/bf16 accepted, converted to f32)
/// from a `.npy` or `.safetensors` file, told apart by content, not name. For
/// safetensors it reads the tensor named `name`, or the only tensor when `name`
/// is `None` (`name` is ignored for `.npy`). Every value must be finite: export
/// raw logits, or clamp `-inf` log-probabilities to a large negative number.
/// Returns `(rows, cols, data)` with `data` row-major.
pub fn read_float_matrix(
    path: &Path,
    name: Option<&str>,
) -> Result<(usize, usize, Vec<f32>), DataError> {
    let read_err = |source| DataError::Read {
        path: path.to_path_buf(),
        field: "matrix".into(),
        source,
    };
    let mut magic = [0u8; 6];
    let got = File::open(path)
        .and_then(|mut f| {
            let mut got = 0;
            while got < magic.len() {
                match f.read(&mut magic[got..])? {
                    0 => break,
                    k => got += k,
                }
            }
            Ok(got)
        })
        .map_err(read_err)?;
    if got == 6 && &magic == b"\x93NUMPY" {
        return npy::read_matrix(path);
    }
    if MatrixFile::of(path)? == MatrixFile::Neither {
        return Err(format_err(
            path,
            "file type",
            "neither a .npy file (it does not begin with the \\x93NUMPY magic) nor a safetensors \
             file (it does not begin with a header length and a JSON header), and its name ends in \
             neither .npy nor .safetensors; a float matrix is read from a .npy or .safetensors file"
                .into(),
        ));
    }
    let bytes = fs::read(path).map_err(read_err)?;
    matrix_from_safetensors(&bytes, path, name).map_err(|e| {
        // A file named .npy that is not one: say that, not what safetensors
        // made of its first bytes.
        let named_npy = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("npy"));
        match named_npy {
            true => npy::read_matrix(path).err().unwrap_or(e),
            false => e,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn st_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap()
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn open_mem(b: &[u8]) -> Result<Dataset, DataError> {
        from_bytes(b, Path::new("d.safetensors"), Split::Train, Layout::Nchw)
    }

    #[test]
    fn round_trip_u8_and_f32() {
        let b = st_bytes(&[
            ("images", Dtype::U8, vec![3, 2, 2], (0..12).collect()),
            (
                "labels",
                Dtype::I64,
                vec![3],
                [1i64, 0, 4].iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        ]);
        let ds = open_mem(&b).unwrap();
        assert_eq!((ds.len(), ds.sample_shape()), (3, [1, 2, 2]));
        assert_eq!(ds.labels(), Some(&[1, 0, 4][..]));
        assert_eq!(ds.num_classes(), Some(5));
        let same = Dataset::from_u8(
            [1, 2, 2],
            (0..12).collect(),
            Some(vec![1, 0, 4]),
            Split::Train,
        )
        .unwrap();
        assert_eq!(ds.fingerprint(), same.fingerprint());

        let v: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
        let b = st_bytes(&[("images", Dtype::F32, vec![2, 2, 2, 2], f32_bytes(&v))]);
        let ds = open_mem(&b).unwrap();
        assert_eq!(ds.sample_shape(), [2, 2, 2]);
        let mut out = vec![0.0; 8];
        ds.fill_inputs(&[1], &mut out);
        assert_eq!(out, &v[8..]);
    }

    #[test]
    fn bad_tensors_are_refused() {
        let b = st_bytes(&[("pixels", Dtype::U8, vec![1, 1], vec![0])]);
        assert!(open_mem(&b).unwrap_err().to_string().contains("pixels"));
        let b = st_bytes(&[("images", Dtype::I32, vec![1, 1], vec![0; 4])]);
        assert!(matches!(open_mem(&b), Err(DataError::Dtype { .. })));
        let b = st_bytes(&[("images", Dtype::U8, vec![4], vec![0; 4])]);
        assert!(matches!(open_mem(&b), Err(DataError::Format { .. })));
        let b = st_bytes(&[
            ("images", Dtype::U8, vec![2, 1], vec![0; 2]),
            ("labels", Dtype::U8, vec![3], vec![0; 3]),
        ]);
        assert!(matches!(open_mem(&b), Err(DataError::LabelCount { .. })));
        let b = st_bytes(&[
            ("images", Dtype::U8, vec![1, 1], vec![0]),
            ("labels", Dtype::F32, vec![1], vec![0; 4]),
        ]);
        assert!(matches!(open_mem(&b), Err(DataError::Dtype { .. })));
        let b = st_bytes(&[(
            "images",
            Dtype::F32,
            vec![2, 2],
            f32_bytes(&[0.0, 1.0, 2.0, f32::NAN]),
        )]);
        assert!(matches!(
            open_mem(&b),
            Err(DataError::NonFinite {
                index: 3,
                row: 1,
                ..
            })
        ));
        let b = st_bytes(&[("images", Dtype::U8, vec![0, 3], vec![])]);
        assert!(matches!(open_mem(&b), Err(DataError::Empty { .. })));
    }

    #[test]
    fn overflowing_offsets_are_refused_without_panic() {
        let header = format!(
            "{{\"images\":{{\"dtype\":\"U8\",\"shape\":[{m}],\"data_offsets\":[0,{m}]}}}}",
            m = usize::MAX
        );
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        assert!(matches!(open_mem(&b), Err(DataError::Format { .. })));
    }

    #[test]
    fn float_matrix_from_npy_and_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let v = [1.0f32, -2.0, 3.5, 0.0, 5.0, 6.0];
        let st = dir.path().join("logits.safetensors");
        let f16: Vec<u8> = v
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        fs::write(&st, st_bytes(&[("logits", Dtype::F16, vec![2, 3], f16)])).unwrap();
        assert_eq!(read_float_matrix(&st, None).unwrap(), (2, 3, v.to_vec()));
        assert_eq!(
            read_float_matrix(&st, Some("logits")).unwrap(),
            (2, 3, v.to_vec())
        );
        assert!(read_float_matrix(&st, Some("nope")).is_err());
        // Two tensors and no name: the message lists them and the flag.
        let two = dir.path().join("two.safetensors");
        let f = f32_bytes(&v);
        fs::write(
            &two,
            st_bytes(&[
                ("logits", Dtype::F32, vec![2, 3], f.clone()),
                ("probs", Dtype::F32, vec![2, 3], f),
            ]),
        )
        .unwrap();
        let e = read_float_matrix(&two, None).unwrap_err().to_string();
        assert!(
            e.contains("holds 2 tensors (logits, probs)") && e.contains("--tensor NAME"),
            "{e}"
        );

        let npy_path = dir.path().join("logits.npy");
        let f64b: Vec<u8> = v.iter().flat_map(|&x| f64::from(x).to_le_bytes()).collect();
        fs::write(
            &npy_path,
            npy::tests::npy_bytes(1, "<f8", false, &[3, 2], &f64b),
        )
        .unwrap();
        assert_eq!(
            read_float_matrix(&npy_path, None).unwrap(),
            (3, 2, v.to_vec())
        );

        // No classes ([N, 0]) is said as such, not as no samples; no rows is
        // no samples. The streamed reader's header check says the same.
        let no_classes = dir.path().join("c0.npy");
        fs::write(
            &no_classes,
            npy::tests::npy_bytes(1, "<f4", false, &[3, 0], &[]),
        )
        .unwrap();
        let st0 = dir.path().join("c0.safetensors");
        fs::write(
            &st0,
            st_bytes(&[("logits", Dtype::F32, vec![3, 0], vec![])]),
        )
        .unwrap();
        for path in [&no_classes, &st0] {
            let err = read_float_matrix(path, None).unwrap_err().to_string();
            assert!(
                err.contains("shape [3, 0] holds no classes (C = 0)") && !err.contains("N = 0"),
                "{err}"
            );
        }
        let err = npy::matrix_layout(&no_classes).unwrap_err().to_string();
        assert!(err.contains("holds no classes (C = 0)"), "{err}");
        let no_rows = dir.path().join("n0.npy");
        fs::write(
            &no_rows,
            npy::tests::npy_bytes(1, "<f4", false, &[0, 3], &[]),
        )
        .unwrap();
        let err = read_float_matrix(&no_rows, None).unwrap_err().to_string();
        assert!(err.contains("holds no samples (N = 0)"), "{err}");

        // Neither format, by content or name: said so, not what the first
        // bytes read as a safetensors header length make of it.
        let script = dir.path().join("x.py");
        fs::write(&script, b"import numpy as np\nnp.save('x.npy', logits)\n").unwrap();
        assert_eq!(MatrixFile::of(&script).unwrap(), MatrixFile::Neither);
        let err = read_float_matrix(&script, None).unwrap_err().to_string();
        assert!(
            err.contains("x.py: file type: neither a .npy file")
                && err.contains("nor a safetensors file")
                && !err.contains("exceeds"),
            "{err}"
        );
        assert_eq!(MatrixFile::of(&st).unwrap(), MatrixFile::Safetensors);
        // A safetensors file under another name is told by its content.
        let renamed = dir.path().join("logits.bin");
        fs::copy(&st, &renamed).unwrap();
        assert_eq!(MatrixFile::of(&renamed).unwrap(), MatrixFile::Safetensors);
        assert_eq!(read_float_matrix(&renamed, None).unwrap().0, 2);
        // Named .safetensors but cut short: its own reader says what is wrong.
        let cut = dir.path().join("cut.safetensors");
        fs::write(&cut, &fs::read(&st).unwrap()[..4]).unwrap();
        assert_eq!(MatrixFile::of(&cut).unwrap(), MatrixFile::Safetensors);
        let err = read_float_matrix(&cut, None).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        // A safetensors file with no tensor at all: said so.
        let empty = dir.path().join("empty.safetensors");
        fs::write(&empty, st_bytes(&[])).unwrap();
        for name in [None, Some("logits")] {
            let err = read_float_matrix(&empty, name).unwrap_err().to_string();
            assert!(
                err.contains("empty.safetensors: tensors: the file holds no tensors")
                    && !err.contains("name the one"),
                "{err}"
            );
        }

        // Named .npy but neither format: the error speaks of .npy.
        let fake = dir.path().join("fake.npy");
        fs::write(&fake, b"not a matrix at all").unwrap();
        let err = read_float_matrix(&fake, None).unwrap_err().to_string();
        assert!(
            err.contains("fake.npy") && err.contains(".npy magic"),
            "{err}"
        );

        let two = dir.path().join("two.safetensors");
        fs::write(
            &two,
            st_bytes(&[
                ("a", Dtype::F32, vec![1, 1], f32_bytes(&[1.0])),
                ("b", Dtype::F32, vec![1, 1], f32_bytes(&[2.0])),
            ]),
        )
        .unwrap();
        assert!(read_float_matrix(&two, None)
            .unwrap_err()
            .to_string()
            .contains("name the one"));
        assert_eq!(
            read_float_matrix(&two, Some("b")).unwrap(),
            (1, 1, vec![2.0])
        );

        let bad = dir.path().join("bad.npy");
        fs::write(
            &bad,
            npy::tests::npy_bytes(
                1,
                "<f4",
                false,
                &[1, 2],
                &f32_bytes(&[0.0, f32::NEG_INFINITY]),
            ),
        )
        .unwrap();
        assert!(matches!(
            read_float_matrix(&bad, None),
            Err(DataError::NonFinite {
                index: 1,
                row: 0,
                ..
            })
        ));
        let u8m = dir.path().join("u8.npy");
        fs::write(
            &u8m,
            npy::tests::npy_bytes(1, "|u1", false, &[1, 2], &[1, 2]),
        )
        .unwrap();
        assert!(matches!(
            read_float_matrix(&u8m, None),
            Err(DataError::Dtype { .. })
        ));
        let rank3 = dir.path().join("r3.npy");
        fs::write(
            &rank3,
            npy::tests::npy_bytes(1, "<f4", false, &[1, 1, 1], &f32_bytes(&[1.0])),
        )
        .unwrap();
        assert!(read_float_matrix(&rank3, None)
            .unwrap_err()
            .to_string()
            .contains("2-D"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = open_mem(&bytes);
            let _ = matrix_from_safetensors(&bytes, Path::new("m.safetensors"), None);
        }

        #[test]
        fn prop_mutated_files_never_panic(
            muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut b = st_bytes(&[
                ("images", Dtype::F32, vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
                ("labels", Dtype::U8, vec![2], vec![0, 1]),
            ]);
            for (p, v) in muts {
                let len = b.len();
                b[p % len] = v;
            }
            let _ = open_mem(&b);
            let _ = matrix_from_safetensors(&b, Path::new("m.safetensors"), Some("images"));
            b.truncate(cut % (b.len() + 1));
            let _ = open_mem(&b);
        }
    }
}
