//! `f32`: each log-probability as a 32-bit float, bit-exact.
//!
//! Payload per record: `4C` bytes, the row in class order, little-endian.

use super::{EncodeScratch, RecordCodec};

/// The `f32` encoding (on-disk tag 0).
pub(super) struct F32Codec;

impl RecordCodec for F32Codec {
    fn tag(&self) -> u16 {
        0
    }

    fn name(&self) -> &'static str {
        "f32"
    }

    fn payload_bytes(&self, _param: u16, classes: usize) -> usize {
        4 * classes
    }

    fn encode_row(&self, _param: u16, lp: &[f32], out: &mut Vec<u8>, _scratch: &mut EncodeScratch) {
        for v in lp {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode_rows(
        &self,
        _param: u16,
        _classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        // SAFETY: any bit pattern is a valid f32; alignment is checked by align_to.
        let (pre, mid, post) = unsafe { payload.align_to::<f32>() };
        if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
            out.copy_from_slice(mid);
        } else {
            for (o, b) in out.iter_mut().zip(payload.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }

        Ok(())
    }
}
