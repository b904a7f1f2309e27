//! Content fingerprints of datasets: xxh3-128 over a small header, the input
//! values and the labels, so that the same content read from an IDX file, its
//! gzip-compressed copy, a `.npy` or a safetensors file fingerprints the same.
//!
//! Hashed, in order (integers little-endian):
//! `b"distill-dataset-v1\0"`, input kind (`0` = u8, `1` = f32), the sample
//! shape `[C, H, W]` as 3 x u64, the sample count N as u64, the inputs (u8 as
//! is, f32 as little-endian bytes), then `0` for unlabelled data or `1`
//! followed by every label as u32.

use xxhash_rust::xxh3::Xxh3;

use super::{Fingerprint, Inputs};

const DOMAIN: &[u8] = b"distill-dataset-v1\0";

/// Fingerprints a dataset's content.
pub(super) fn compute(
    inputs: &Inputs,
    shape: [usize; 3],
    n: usize,
    labels: Option<&[u32]>,
) -> Fingerprint {
    let mut h = Xxh3::new();
    h.update(DOMAIN);
    h.update(&[match inputs {
        Inputs::U8(_) => 0,
        Inputs::F32(_) => 1,
    }]);
    for d in shape {
        h.update(&(d as u64).to_le_bytes());
    }
    h.update(&(n as u64).to_le_bytes());
    match inputs {
        Inputs::U8(v) => h.update(v),
        Inputs::F32(v) => update_le(&mut h, v.iter().map(|x| x.to_le_bytes())),
    }
    match labels {
        None => h.update(&[0]),
        Some(l) => {
            h.update(&[1]);
            update_le(&mut h, l.iter().map(|x| x.to_le_bytes()));
        }
    }
    Fingerprint(format!("{:032x}", h.digest128()))
}

/// Feeds 4-byte words to the hasher through a stack buffer, so the hash does
/// not depend on the machine's byte order and needs no allocation.
fn update_le(h: &mut Xxh3, words: impl Iterator<Item = [u8; 4]>) {
    let mut buf = [0u8; 16 * 1024];
    let mut used = 0;
    for w in words {
        buf[used..used + 4].copy_from_slice(&w);
        used += 4;
        if used == buf.len() {
            h.update(&buf);
            used = 0;
        }
    }
    h.update(&buf[..used]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_every_part() {
        let base = compute(&Inputs::U8(vec![1, 2, 3, 4]), [1, 2, 2], 1, Some(&[3]));
        assert_eq!(base.0.len(), 32);
        let others = [
            compute(&Inputs::U8(vec![1, 2, 3, 5]), [1, 2, 2], 1, Some(&[3])),
            compute(&Inputs::U8(vec![1, 2, 3, 4]), [1, 1, 4], 1, Some(&[3])),
            compute(&Inputs::U8(vec![1, 2, 3, 4]), [1, 2, 2], 1, Some(&[2])),
            compute(&Inputs::U8(vec![1, 2, 3, 4]), [1, 2, 2], 1, None),
            compute(
                &Inputs::F32(vec![1.0, 2.0, 3.0, 4.0]),
                [1, 2, 2],
                1,
                Some(&[3]),
            ),
        ];
        for o in &others {
            assert_ne!(&base, o);
        }
        assert_eq!(
            base,
            compute(&Inputs::U8(vec![1, 2, 3, 4]), [1, 2, 2], 1, Some(&[3]))
        );
    }

    #[test]
    fn f32_hash_spans_buffer_boundaries() {
        // More words than one stack buffer holds, and not a multiple of it.
        let v: Vec<f32> = (0..5000).map(|i| i as f32).collect();
        let a = compute(&Inputs::F32(v.clone()), [1, 1, 5000], 1, None);
        let mut w = v;
        w[4999] = 0.5;
        assert_ne!(a, compute(&Inputs::F32(w), [1, 1, 5000], 1, None));
    }
}
