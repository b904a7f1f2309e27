//! `f16`: the gap below the row maximum in f16 plus an f32 offset.
//!
//! Payload per record: `4 + 2C` bytes: the offset (f32), then `hi - lp` per
//! class as f16 bits. Relative precision is 2^-11 where the mass is, and the
//! offset makes every decoded row sum to one exactly.

use half::f16;

use super::{EncodeScratch, RecordCodec};

/// The `f16` encoding (on-disk tag 1).
pub(super) struct F16Codec;

impl RecordCodec for F16Codec {
    fn tag(&self) -> u16 {
        1
    }

    fn name(&self) -> &'static str {
        "f16"
    }

    fn payload_bytes(&self, _param: u16, classes: usize) -> usize {
        4 + 2 * classes
    }

    fn encode_row(&self, _param: u16, lp: &[f32], out: &mut Vec<u8>, _scratch: &mut EncodeScratch) {
        // Gaps below the row maximum in f16 (relative precision is best
        // near the maximum, where the mass is) plus an f32 offset that
        // makes the decoded row sum to one exactly, so rounding costs
        // second-order, not first-order, KL.
        let hi = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        let mut sum = 0.0f32;
        for &v in lp {
            let h = f16::from_f32((hi - v).min(f16::MAX.to_f32()));
            out.extend_from_slice(&h.to_bits().to_le_bytes());
            sum += (-h.to_f32()).exp();
        }
        let offset = -sum.ln();
        out[start..start + 4].copy_from_slice(&offset.to_le_bytes());
    }

    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (c, record) = (classes, self.payload_bytes(param, classes));
        use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
        for (o, rec) in out.chunks_exact_mut(c).zip(payload.chunks_exact(record)) {
            let offset = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let gaps = &rec[4..];
            // SAFETY: any bit pattern is a valid u16; alignment is checked by align_to.
            let (pre, mid, post) = unsafe { gaps.align_to::<u16>() };
            if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
                let halves: &[f16] = mid.reinterpret_cast();
                halves.convert_to_f32_slice(o);
            } else {
                for (o, b) in o.iter_mut().zip(gaps.chunks_exact(2)) {
                    *o = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
                }
            }
            for v in o.iter_mut() {
                *v = offset - *v;
            }
        }

        Ok(())
    }
}
