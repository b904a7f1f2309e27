//! NumPy `.npy` arrays: the header parser (format versions 1.0, 2.0 and 3.0)
//! and the readers for `{split}-images.npy` / `{split}-labels.npy` and for
//! float matrices.
//!
//! Accepted: C-order arrays of u1 (images), f2/f4/f8 (images, matrices) and
//! any integer dtype (labels), in either byte order. The header is bounded to
//! [`MAX_HEADER_LEN`] bytes and the data section must hold exactly
//! `prod(shape) * itemsize` bytes, checked against the file size before any
//! buffer is allocated.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::elem::{extend_f32, labels_to_u32, Elem};
use super::{
    check_finite, check_label_count, first_file, sample_shape_of, DataError, Dataset,
    DatasetFormat, Found, Inputs, Layout, Split,
};

/// The largest `.npy` header accepted (numpy itself writes well under 1 KiB).
pub const MAX_HEADER_LEN: usize = 64 * 1024;
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Header {
    pub descr: String,
    pub elem: Elem,
    pub big_endian: bool,
    pub shape: Vec<usize>,
    /// Bytes before the data (magic, version, length field, header text).
    pub data_offset: u64,
    /// `prod(shape)`.
    pub count: usize,
}

/// An array read from a `.npy` file, converted to what the dataset stores.
pub(super) enum Array {
    U8(Vec<u8>),
    F32(Vec<f32>),
}

fn format_err(path: &Path, field: &str, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    }
}

fn read_err(path: &Path, field: &str) -> impl Fn(io::Error) -> DataError {
    let path = path.to_path_buf();
    let field = field.to_string();
    move |source| DataError::Read {
        path: path.clone(),
        field: field.clone(),
        source,
    }
}

/// Reads and validates the header from `r`, a stream of `total_len` bytes,
/// leaving `r` at the start of the data, whose length is checked.
pub(super) fn read_header<R: Read>(
    r: &mut R,
    total_len: u64,
    path: &Path,
    field: &str,
) -> Result<Header, DataError> {
    let fmt = |m: String| format_err(path, field, m);
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            fmt(format!(
                "holds {total_len} bytes, too short for a .npy header; the file is truncated"
            ))
        } else {
            read_err(path, field)(e)
        }
    })?;
    if &pre[..6] != MAGIC {
        return Err(fmt(
            "does not start with the .npy magic \\x93NUMPY; this is not a .npy file".into(),
        ));
    }
    let (major, minor) = (pre[6], pre[7]);
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(fmt(format!(
                "format version {major}.{minor} is not supported; expected 1.0, 2.0 or 3.0"
            )))
        }
    };
    let mut lb = [0u8; 4];
    r.read_exact(&mut lb[..len_bytes])
        .map_err(|_| fmt("the header length field is truncated".into()))?;
    let header_len = u32::from_le_bytes(lb) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(fmt(format!(
            "header length {header_len} exceeds the maximum {MAX_HEADER_LEN}; the file is corrupt"
        )));
    }
    let data_offset = (8 + len_bytes + header_len) as u64;
    if data_offset > total_len {
        return Err(fmt(format!(
            "header needs {data_offset} bytes but the file holds {total_len}; the file is truncated"
        )));
    }
    let mut text = vec![0u8; header_len];
    r.read_exact(&mut text).map_err(read_err(path, field))?;
    // Versions 1 and 2 are latin-1, version 3 utf-8; a valid header is ASCII.
    let text = std::str::from_utf8(&text)
        .map_err(|_| fmt("header is not valid text; the file is corrupt".into()))?;
    let dict = parse_dict(text)
        .map_err(|m| fmt(format!("cannot parse header {:?}: {m}", text.trim_end())))?;

    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in dict {
        match (key.as_str(), value) {
            ("descr", Value::Str(s)) => descr = Some(s),
            ("descr", _) => {
                return Err(format_err(
                    path,
                    &format!("{field}: descr"),
                    "structured dtypes are not supported; save a plain numeric array".into(),
                ))
            }
            ("fortran_order", Value::Bool(b)) => fortran = Some(b),
            ("shape", Value::Tuple(t)) => shape = Some(t),
            (k, _) => return Err(fmt(format!("unexpected header key or value for '{k}'"))),
        }
    }
    let (Some(descr), Some(fortran), Some(shape)) = (descr, fortran, shape) else {
        return Err(fmt(
            "header lacks one of 'descr', 'fortran_order', 'shape'".into()
        ));
    };
    if fortran {
        return Err(format_err(
            path,
            &format!("{field}: fortran_order"),
            "is True (column-major); save a C-ordered array, e.g. np.save(f, np.ascontiguousarray(a))".into(),
        ));
    }
    let (elem, big_endian) = parse_descr(&descr).ok_or_else(|| DataError::Dtype {
        path: path.to_path_buf(),
        field: field.to_string(),
        dtype: descr.clone(),
        expected: "a numeric dtype: u1, i1, u2, i2, u4, i4, u8, i8, f2, f4 or f8",
    })?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| fmt(format!("shape {shape:?} overflows")))?;
    let expected = (count as u64)
        .checked_mul(elem.size() as u64)
        .ok_or_else(|| fmt(format!("shape {shape:?} overflows")))?;
    let actual = total_len - data_offset;
    if expected != actual {
        return Err(DataError::Length {
            path: path.to_path_buf(),
            field: field.to_string(),
            expected,
            actual,
        });
    }
    Ok(Header {
        descr,
        elem,
        big_endian,
        shape,
        data_offset,
        count,
    })
}

/// Maps a numpy dtype string (`'<f4'`, `'|u1'`, ...) to an element type and byte order.
fn parse_descr(descr: &str) -> Option<(Elem, bool)> {
    let (order, code) = descr.split_at_checked(1)?;
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return None,
    };
    let elem = match code {
        "u1" | "B" => Elem::U8,
        "i1" | "b" => Elem::I8,
        "u2" => Elem::U16,
        "i2" => Elem::I16,
        "u4" => Elem::U32,
        "i4" => Elem::I32,
        "u8" => Elem::U64,
        "i8" => Elem::I64,
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        _ => return None,
    };
    // '=' means native order; numpy never writes it, and this reader assumes
    // little-endian for it like every machine this runs on.
    Some((elem, big_endian && elem.size() > 1))
}

/// A value in the header dict.
#[derive(Debug)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// Anything else (lists of fields for structured dtypes, numbers, None).
    Other,
}

/// Parses the Python dict literal of a `.npy` header. Small and strict: keys
/// are strings; values are strings, True/False, tuples of integers, or
/// (for structured dtypes) a list, which is skipped.
fn parse_dict(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut p = DictParser { text, i: 0 };
    p.ws();
    p.expect(b'{')?;
    let mut out = Vec::new();
    loop {
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
            break;
        }
        let key = p.string()?;
        p.ws();
        p.expect(b':')?;
        p.ws();
        let value = p.value()?;
        out.push((key, value));
        p.ws();
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {}
            _ => return Err(format!("expected ',' or '}}' at offset {}", p.i)),
        }
    }
    p.ws();
    if p.i != text.len() {
        return Err(format!("unexpected text after the dict at offset {}", p.i));
    }
    Ok(out)
}

/// A cursor over the header dict's text; errors name the byte offset.
struct DictParser<'a> {
    text: &'a str,
    i: usize,
}

impl DictParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at offset {}", c as char, self.i))
        }
    }

    /// A quoted string, either quote, no escapes.
    fn string(&mut self) -> Result<String, String> {
        let b = self.text.as_bytes();
        let q = self.peek().ok_or("unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!("expected a string at offset {}", self.i));
        }
        let start = self.i + 1;
        let len = b[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("unterminated string")?;
        self.i = start + len + 1;
        Ok(self.text[start..start + len].to_string())
    }

    fn value(&mut self) -> Result<Value, String> {
        Ok(match self.peek() {
            Some(b'\'') | Some(b'"') => Value::Str(self.string()?),
            Some(b'T') if self.text[self.i..].starts_with("True") => {
                self.i += 4;
                Value::Bool(true)
            }
            Some(b'F') if self.text[self.i..].starts_with("False") => {
                self.i += 5;
                Value::Bool(false)
            }
            Some(b'(') => {
                self.i += 1;
                Value::Tuple(self.tuple_rest()?)
            }
            Some(b'[') => {
                self.skip_list()?;
                Value::Other
            }
            _ => return Err(format!("unsupported value at offset {}", self.i)),
        })
    }

    /// The dimensions of a shape tuple, after its '('.
    fn tuple_rest(&mut self) -> Result<Vec<usize>, String> {
        let b = self.text.as_bytes();
        let mut dims = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                Some(b')') => {
                    self.i += 1;
                    return Ok(dims);
                }
                Some(c) if c.is_ascii_digit() => {
                    let start = self.i;
                    while self.i < b.len() && b[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                    let digits = &self.text[start..self.i];
                    let d: usize = digits
                        .parse()
                        .map_err(|_| format!("dimension {digits} too large"))?;
                    // Python 2 era writers appended 'L' to longs.
                    if self.peek() == Some(b'L') {
                        self.i += 1;
                    }
                    dims.push(d);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b')') => {}
                        _ => {
                            return Err(format!(
                                "expected ',' or ')' in shape at offset {}",
                                self.i
                            ))
                        }
                    }
                }
                _ => return Err(format!("expected a dimension at offset {}", self.i)),
            }
        }
    }

    /// Skips a (possibly nested) list: structured dtype descriptions.
    fn skip_list(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                None => return Err("unterminated list".into()),
                Some(b'[') | Some(b'(') => depth += 1,
                Some(b']') | Some(b')') => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }
}

/// Reads the data of an image or matrix array: u8 kept as bytes, floats
/// converted to f32 and checked finite. `row_len` is the number of elements
/// per row, for error messages.
pub(super) fn read_data<R: Read>(
    r: &mut R,
    header: &Header,
    path: &Path,
    field: &str,
    row_len: usize,
    allow_u8: bool,
) -> Result<Array, DataError> {
    let read = read_err(path, field);
    if header.elem == Elem::U8 && allow_u8 {
        let mut data = super::reserved(header.count).map_err(|m| format_err(path, field, m))?;
        data.resize(header.count, 0u8);
        r.read_exact(&mut data).map_err(read)?;
        return Ok(Array::U8(data));
    }
    if !header.elem.is_float() {
        return Err(DataError::Dtype {
            path: path.to_path_buf(),
            field: field.to_string(),
            dtype: header.descr.clone(),
            expected: if allow_u8 {
                "u1 (uint8) or f2/f4/f8 (float16/32/64)"
            } else {
                "f2, f4 or f8 (float16/32/64)"
            },
        });
    }
    let size = header.elem.size();
    let mut out = super::reserved(header.count).map_err(|m| format_err(path, field, m))?;
    // Convert in chunks so only the f32 output is ever allocated in full.
    let mut buf = vec![0u8; (64 * 1024 / size) * size];
    let mut left = header.count * size;
    while left > 0 {
        let k = left.min(buf.len());
        r.read_exact(&mut buf[..k]).map_err(&read)?;
        extend_f32(header.elem, header.big_endian, &buf[..k], &mut out);
        left -= k;
    }
    check_finite(path, field, &out, row_len)?;
    Ok(Array::F32(out))
}

fn open_file(path: &Path, field: &str) -> Result<(io::BufReader<File>, u64), DataError> {
    let file = File::open(path).map_err(read_err(path, field))?;
    let len = file.metadata().map_err(read_err(path, field))?.len();
    Ok((io::BufReader::with_capacity(256 * 1024, file), len))
}

/// Reads a labels array: integer dtype, 1-D, non-negative, below `MAX_CLASSES`.
pub(super) fn read_labels<R: Read>(
    r: &mut R,
    total_len: u64,
    path: &Path,
) -> Result<Vec<u32>, DataError> {
    let field = "labels";
    let header = read_header(r, total_len, path, field)?;
    if !header.elem.is_int() {
        return Err(DataError::Dtype {
            path: path.to_path_buf(),
            field: field.into(),
            dtype: header.descr,
            expected: "an integer dtype: u1, i1, u2, i2, u4, i4, u8 or i8",
        });
    }
    if header.shape.len() != 1 {
        return Err(format_err(
            path,
            field,
            format!(
                "shape {:?} is not 1-D; expected [N], one class id per sample",
                header.shape
            ),
        ));
    }
    let n = header.count * header.elem.size();
    let mut bytes = super::reserved(n).map_err(|m| format_err(path, field, m))?;
    bytes.resize(n, 0u8);
    r.read_exact(&mut bytes).map_err(read_err(path, field))?;
    labels_to_u32(path, field, header.elem, header.big_endian, &bytes)
}

/// Reads an images array stored in `layout` into `(N, sample shape,
/// inputs)`, the inputs in (channel, height, width) order.
pub(super) fn read_images<R: Read>(
    r: &mut R,
    total_len: u64,
    path: &Path,
    layout: Layout,
) -> Result<(usize, [usize; 3], Inputs), DataError> {
    let field = "images";
    let header = read_header(r, total_len, path, field)?;
    let (n, shape) = sample_shape_of(path, field, &header.shape, layout)?;
    let row_len = header.count / n;
    let inputs = match read_data(r, &header, path, field, row_len, true)? {
        Array::U8(v) => Inputs::U8(v),
        Array::F32(v) => Inputs::F32(v),
    };
    Ok((n, shape, inputs.in_layout(layout, n, shape)))
}

/// NumPy arrays: `{split}-images.npy` (+ optional `{split}-labels.npy`).
pub(super) const FORMAT: DatasetFormat = DatasetFormat {
    name: "npy",
    find: |dir, split| {
        let images = dir.join(format!("{split}-images.npy"));
        images.is_file().then(|| Found {
            images,
            labels: first_file(&[&dir.join(format!("{split}-labels.npy"))]),
        })
    },
    looked_for: |dir, split| vec![dir.join(format!("{split}-images.npy"))],
    open: |found, split, options| {
        open(
            &found.images,
            found.labels.as_deref(),
            split,
            options.layout(),
        )
    },
    reads_layout: true,
    reads_labels: false,
};

/// Opens `{split}-images.npy` (stored in `layout`) and, when given,
/// `{split}-labels.npy`.
pub(super) fn open(
    images: &Path,
    labels: Option<&Path>,
    split: Split,
    layout: Layout,
) -> Result<Dataset, DataError> {
    let (mut r, len) = open_file(images, "images")?;
    let (n, shape, inputs) = read_images(&mut r, len, images, layout)?;
    let labels_path = labels;
    let labels = match labels {
        Some(lpath) => {
            let (mut r, len) = open_file(lpath, "labels")?;
            let l = read_labels(&mut r, len, lpath)?;
            check_label_count(images, lpath, n, &l)?;
            Some(l)
        }
        None => None,
    };
    let data = Dataset::assemble(inputs, labels, shape, n, split, images.to_path_buf());
    Ok(match labels_path {
        Some(l) => data.with_labels_source(l),
        None => data,
    })
}

/// Reads a 2-D float matrix `[rows, cols]` as f32.
pub(super) fn read_matrix(path: &Path) -> Result<(usize, usize, Vec<f32>), DataError> {
    let field = "matrix";
    let (mut r, len) = open_file(path, field)?;
    let header = read_header(&mut r, len, path, field)?;
    let (rows, cols) = matrix_dims(path, field, &header)?;
    match read_data(&mut r, &header, path, field, cols, false)? {
        Array::F32(v) => Ok((rows, cols, v)),
        // read_data refuses u8 when allow_u8 is false.
        Array::U8(_) => Err(DataError::Dtype {
            path: path.to_path_buf(),
            field: field.into(),
            dtype: header.descr,
            expected: "f2, f4 or f8 (float16/32/64)",
        }),
    }
}

/// The `[rows, cols]` of a matrix header: 2-D and not empty.
fn matrix_dims(path: &Path, field: &str, header: &Header) -> Result<(usize, usize), DataError> {
    let (rows, cols) = match *header.shape {
        [rows, cols] => (rows, cols),
        _ => {
            return Err(format_err(
                path,
                field,
                format!(
                    "shape {:?} is not 2-D; expected [N, C] (one row of logits per sample)",
                    header.shape
                ),
            ))
        }
    };
    if rows > 0 && cols == 0 {
        return Err(format_err(
            path,
            field,
            format!("shape [{rows}, 0] holds no classes (C = 0); expected [N, C] with C >= 1"),
        ));
    }
    if rows == 0 || cols == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            field: format!("{field} of shape [{rows}, {cols}]"),
        });
    }
    Ok((rows, cols))
}

/// Where a 2-D float `.npy` matrix's values are, for a reader that streams
/// its rows (memory-mapped windows of the data section) instead of loading
/// it: the header is checked as [`read_float_matrix`](super::read_float_matrix)
/// checks it, and nothing past the header is read here.
#[derive(Debug, Clone)]
pub struct MatrixLayout {
    pub rows: usize,
    pub cols: usize,
    /// Byte offset of the data section (row-major, `rows * cols` elements).
    pub data_offset: u64,
    elem: Elem,
    big_endian: bool,
}

impl MatrixLayout {
    /// Bytes per element.
    pub fn elem_size(&self) -> usize {
        self.elem.size()
    }

    /// Appends the values of the whole elements in `bytes` (a slice of the
    /// data section) to `out` as f32.
    pub fn extend_f32(&self, bytes: &[u8], out: &mut Vec<f32>) {
        extend_f32(self.elem, self.big_endian, bytes, out)
    }

    /// Whether the data section is little-endian f32: its bytes are the values.
    pub fn is_f32_le(&self) -> bool {
        self.elem == Elem::F32 && !self.big_endian
    }
}

/// Reads and checks the header of the 2-D float `.npy` matrix at `path`.
pub fn matrix_layout(path: &Path) -> Result<MatrixLayout, DataError> {
    let field = "matrix";
    let (mut r, len) = open_file(path, field)?;
    let header = read_header(&mut r, len, path, field)?;
    let (rows, cols) = matrix_dims(path, field, &header)?;
    if !header.elem.is_float() {
        return Err(DataError::Dtype {
            path: path.to_path_buf(),
            field: field.into(),
            dtype: header.descr,
            expected: "f2, f4 or f8 (float16/32/64)",
        });
    }
    Ok(MatrixLayout {
        rows,
        cols,
        data_offset: header.data_offset,
        elem: header.elem,
        big_endian: header.big_endian,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    /// Writes a `.npy` image of `data` (already in the dtype's bytes) the way numpy does.
    pub(crate) fn npy_bytes(
        version: u8,
        descr: &str,
        fortran: bool,
        shape: &[usize],
        data: &[u8],
    ) -> Vec<u8> {
        let shape_s = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let fo = if fortran { "True" } else { "False" };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape_s}, }}");
        let pre = if version == 1 { 10 } else { 12 };
        while (pre + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut v = b"\x93NUMPY".to_vec();
        v.extend_from_slice(&[version, 0]);
        if version == 1 {
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        v.extend_from_slice(dict.as_bytes());
        v.extend_from_slice(data);
        v
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn images_mem(b: &[u8]) -> Result<(usize, [usize; 3], Inputs), DataError> {
        read_images(
            &mut Cursor::new(b),
            b.len() as u64,
            Path::new("x.npy"),
            Layout::Nchw,
        )
    }

    fn labels_mem(b: &[u8]) -> Result<Vec<u32>, DataError> {
        read_labels(&mut Cursor::new(b), b.len() as u64, Path::new("y.npy"))
    }

    #[test]
    fn parses_every_version_and_dtype() {
        for version in [1, 2, 3] {
            let b = npy_bytes(version, "|u1", false, &[2, 3], &[1, 2, 3, 4, 5, 6]);
            let (n, shape, inputs) = images_mem(&b).unwrap();
            assert_eq!((n, shape), (2, [1, 1, 3]));
            assert!(matches!(inputs, Inputs::U8(ref v) if v == &[1, 2, 3, 4, 5, 6]));
        }
        let vals = [0.5f32, -1.0, 2.25, 3.0];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("<f4", f32_bytes(&vals)),
            (">f4", vals.iter().flat_map(|x| x.to_be_bytes()).collect()),
            (
                "<f8",
                vals.iter()
                    .flat_map(|&x| f64::from(x).to_le_bytes())
                    .collect(),
            ),
            (
                "<f2",
                vals.iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect(),
            ),
        ];
        for (descr, data) in cases {
            let b = npy_bytes(1, descr, false, &[1, 2, 2], &data);
            let (_, shape, inputs) = images_mem(&b).unwrap();
            assert_eq!(shape, [1, 2, 2]);
            assert!(
                matches!(inputs, Inputs::F32(ref v) if v == &vals),
                "{descr}"
            );
        }
        let b = npy_bytes(
            1,
            "<i8",
            false,
            &[3],
            &[2i64, 0, 9]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        );
        assert_eq!(labels_mem(&b).unwrap(), vec![2, 0, 9]);
        let b = npy_bytes(1, "|i1", false, &[2], &[1, 4]);
        assert_eq!(labels_mem(&b).unwrap(), vec![1, 4]);
    }

    #[test]
    fn fortran_order_is_refused() {
        let b = npy_bytes(1, "|u1", true, &[2, 2], &[0; 4]);
        let e = images_mem(&b).unwrap_err().to_string();
        assert!(e.contains("fortran_order") && e.contains("x.npy"), "{e}");
    }

    #[test]
    fn bad_dtypes_are_refused() {
        let b = npy_bytes(1, "<c8", false, &[1, 1], &[0; 8]);
        assert!(matches!(images_mem(&b), Err(DataError::Dtype { .. })));
        let b = npy_bytes(1, "<i4", false, &[1, 1], &[0; 4]);
        assert!(matches!(images_mem(&b), Err(DataError::Dtype { .. })));
        let b = npy_bytes(1, "<f4", false, &[1], &[0; 4]);
        assert!(matches!(labels_mem(&b), Err(DataError::Dtype { .. })));
        let b = npy_bytes(1, "<i4", false, &[1], &(-3i32).to_le_bytes());
        assert!(matches!(
            labels_mem(&b),
            Err(DataError::Label { value: -3, .. })
        ));
        let b = npy_bytes(1, "|u1", false, &[1, 1], &[0]);
        assert!(labels_mem(&b).unwrap_err().to_string().contains("1-D"));
    }

    #[test]
    fn nan_names_the_first_bad_index() {
        let b = npy_bytes(
            1,
            "<f4",
            false,
            &[2, 3],
            &f32_bytes(&[0.0, 1.0, 2.0, 3.0, f32::NAN, f32::INFINITY]),
        );
        match images_mem(&b) {
            Err(DataError::NonFinite {
                index: 4,
                row: 1,
                ref path,
                ..
            }) => assert_eq!(path, Path::new("x.npy")),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn truncated_trailing_and_shape_mismatch_are_refused() {
        let b = npy_bytes(1, "|u1", false, &[2, 2], &[0; 3]);
        assert!(matches!(
            images_mem(&b),
            Err(DataError::Length {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        let b = npy_bytes(1, "|u1", false, &[2, 2], &[0; 5]);
        assert!(matches!(
            images_mem(&b),
            Err(DataError::Length {
                expected: 4,
                actual: 5,
                ..
            })
        ));
        let b = npy_bytes(1, "|u1", false, &[4], &[0; 4]);
        assert!(images_mem(&b).unwrap_err().to_string().contains("rank 1"));
        let b = npy_bytes(1, "|u1", false, &[0, 4], &[]);
        assert!(matches!(images_mem(&b), Err(DataError::Empty { .. })));
        let b = npy_bytes(1, "|u1", false, &[2, 2], &[0; 4]);
        assert!(images_mem(&b[..20]).is_err());
        let mut huge = npy_bytes(2, "|u1", false, &[1], &[0]);
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(images_mem(&huge)
            .unwrap_err()
            .to_string()
            .contains("maximum"));
        let mut v9 = npy_bytes(1, "|u1", false, &[1, 1], &[0]);
        v9[6] = 9;
        assert!(images_mem(&v9)
            .unwrap_err()
            .to_string()
            .contains("version 9.0"));
    }

    #[test]
    fn header_parser_accepts_numpy_variants() {
        let d =
            parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L), }          \n")
                .unwrap();
        assert!(matches!(d[2].1, Value::Tuple(ref t) if t == &[3, 4]));
        let d = parse_dict("{\"shape\":(),\"descr\":\"|u1\",\"fortran_order\":False}").unwrap();
        assert!(matches!(d[0].1, Value::Tuple(ref t) if t.is_empty()));
        assert!(
            parse_dict("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}").is_ok()
        );
        assert!(parse_dict("{'descr': '<f4'").is_err());
        assert!(parse_dict("{'shape': (1,,)}").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_round_trip(
            dims in proptest::collection::vec(1usize..6, 2..=4),
            version in 1u8..=3,
            float: bool,
            seed: u32,
        ) {
            let count: usize = dims.iter().product();
            let (b, want_u8, want_f32) = if float {
                let v: Vec<f32> = (0..count).map(|i| (seed as f32) * 0.001 - i as f32).collect();
                (npy_bytes(version, "<f4", false, &dims, &f32_bytes(&v)), vec![], v)
            } else {
                let v: Vec<u8> = (0..count).map(|i| (seed as usize + i * 31) as u8).collect();
                (npy_bytes(version, "|u1", false, &dims, &v), v, vec![])
            };
            let (n, shape, inputs) = images_mem(&b).unwrap();
            prop_assert_eq!(n, dims[0]);
            prop_assert_eq!(shape.iter().product::<usize>() * n, count);
            match inputs {
                Inputs::U8(v) => prop_assert_eq!(v, want_u8),
                Inputs::F32(v) => prop_assert_eq!(v, want_f32),
            }
        }

        #[test]
        fn prop_random_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200), with_magic: bool) {
            let mut b = if with_magic { b"\x93NUMPY\x01\x00".to_vec() } else { vec![] };
            b.extend_from_slice(&tail);
            let _ = images_mem(&b);
            let _ = labels_mem(&b);
        }

        #[test]
        fn prop_mutated_headers_never_panic(
            muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut b = npy_bytes(1, "<f4", false, &[2, 3], &f32_bytes(&[1.0; 6]));
            for (p, v) in muts {
                // Mostly hit the header text, where parsing happens.
                let len = b.len();
                b[p % len.min(80)] = v;
            }
            let _ = images_mem(&b);
            let _ = labels_mem(&b);
            b.truncate(cut % (b.len() + 1));
            let _ = images_mem(&b);
        }
    }
}
