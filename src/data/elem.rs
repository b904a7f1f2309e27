//! Element types shared by the `.npy` and safetensors readers, and their
//! conversion from raw bytes (any alignment, either byte order) to the `f32`
//! inputs and `u32` labels a [`Dataset`](super::Dataset) stores.

use std::path::Path;

use half::{bf16, f16};

use super::{DataError, MAX_CLASSES};

/// A numeric element type found in an array file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl Elem {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 | Elem::F16 | Elem::BF16 => 2,
            Elem::U32 | Elem::I32 | Elem::F32 => 4,
            Elem::U64 | Elem::I64 | Elem::F64 => 8,
        }
    }

    pub(crate) fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::BF16 | Elem::F32 | Elem::F64)
    }

    pub(crate) fn is_int(self) -> bool {
        !self.is_float()
    }
}

/// Reads one `N`-byte value in the given byte order.
#[inline]
fn word<const N: usize>(b: &[u8], big_endian: bool) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    if big_endian {
        a.reverse();
    }
    a
}

/// Appends the float elements in `bytes` (whole elements only) to `out` as f32.
pub(crate) fn extend_f32(elem: Elem, big_endian: bool, bytes: &[u8], out: &mut Vec<f32>) {
    let size = elem.size();
    let chunks = bytes.chunks_exact(size);
    match elem {
        Elem::F32 => out.extend(chunks.map(|c| f32::from_le_bytes(word(c, big_endian)))),
        Elem::F64 => out.extend(chunks.map(|c| f64::from_le_bytes(word(c, big_endian)) as f32)),
        Elem::F16 => out.extend(chunks.map(|c| f16::from_le_bytes(word(c, big_endian)).to_f32())),
        Elem::BF16 => out.extend(chunks.map(|c| bf16::from_le_bytes(word(c, big_endian)).to_f32())),
        // Integer elements are never passed here; callers check `is_float`.
        _ => out.extend(chunks.map(|_| f32::NAN)),
    }
}

/// Converts integer label elements to `u32`, refusing negative values and
/// values of `MAX_CLASSES` or more.
pub(crate) fn labels_to_u32(
    path: &Path,
    field: &str,
    elem: Elem,
    big_endian: bool,
    bytes: &[u8],
) -> Result<Vec<u32>, DataError> {
    let size = elem.size();
    let mut out = Vec::with_capacity(bytes.len() / size);
    for (index, c) in bytes.chunks_exact(size).enumerate() {
        let value: i128 = match elem {
            Elem::U8 => i128::from(c[0]),
            Elem::I8 => i128::from(c[0] as i8),
            Elem::U16 => i128::from(u16::from_le_bytes(word(c, big_endian))),
            Elem::I16 => i128::from(i16::from_le_bytes(word(c, big_endian))),
            Elem::U32 => i128::from(u32::from_le_bytes(word(c, big_endian))),
            Elem::I32 => i128::from(i32::from_le_bytes(word(c, big_endian))),
            Elem::U64 => i128::from(u64::from_le_bytes(word(c, big_endian))),
            Elem::I64 => i128::from(i64::from_le_bytes(word(c, big_endian))),
            // Float elements are never passed here; callers check `is_int`.
            _ => -1,
        };
        if value < 0 || value >= MAX_CLASSES as i128 {
            return Err(DataError::Label {
                path: path.to_path_buf(),
                field: field.to_string(),
                index,
                value,
            });
        }
        out.push(value as u32);
    }
    Ok(out)
}
