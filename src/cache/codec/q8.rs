//! `q8`: the gap below the row maximum in 8 bits, per-record scale and offset.
//!
//! Payload per record: `8 + C` bytes: offset (f32), scale (f32), one code per class.
//!
//! **q8 scheme.** Each record stores the gap below its maximum,
//! `d = min(hi - lp, R)` with the window `R = min(hi - min(lp), 16 + ln C)`
//! nats (classes further below are clamped: their probability is < e^-16/C of
//! the top class), as 8-bit codes `q` under one of two scales, chosen per
//! record by which gives the smaller KL(exact || decoded):
//! - square-root domain (`scale >= 0`): `q = round(sqrt(d) / s)`,
//!   `s = sqrt(R)/255`, decodes to `offset - (s·q)^2`. It spends resolution
//!   near the maximum, where a peaked row's mass (and so its KL) is.
//! - linear (`scale < 0`): `q = round(d / s)`, `s = R/255`, decodes to
//!   `offset - s·q`. Better for flat, high-temperature rows.
//!
//! `offset = -ln Σ exp(decoded gap)` makes every decoded row sum to one.
//! The `q8_scheme_choice` test measures all three (sqrt, linear, adaptive).

use super::{EncodeScratch, RecordCodec};

/// The `q8` encoding (on-disk tag 2).
pub(super) struct Q8Codec;

impl RecordCodec for Q8Codec {
    fn tag(&self) -> u16 {
        2
    }

    fn name(&self) -> &'static str {
        "q8"
    }

    fn payload_bytes(&self, _param: u16, classes: usize) -> usize {
        8 + classes
    }

    fn encode_row(&self, _param: u16, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        let classes = lp.len();
        // Two candidate 8-bit codes for the gap d = hi - lp (clamped to the
        // window): square-root domain (fine near the maximum, where the mass
        // is) and linear (better for flat, high-temperature rows). Keep the
        // one with the smaller KL(exact || decoded); the scale's sign says which.
        let c = classes;
        let hi = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lo = lp.iter().copied().fold(f32::INFINITY, f32::min);
        let range = (hi - lo).min(q8_window(c));
        let start = out.len();
        out.extend_from_slice(&[0u8; 8]);
        if range <= 0.0 {
            // Uniform row: every class decodes to -ln C.
            out.extend(std::iter::repeat_n(0u8, c));
            let offset = -(c as f32).ln();
            out[start..start + 4].copy_from_slice(&offset.to_le_bytes());
            return;
        }
        let s_sqrt = range.sqrt() / 255.0;
        let s_lin = range / 255.0;
        scratch.q.clear();
        let (mut sum_a, mut sum_b, mut pg_a, mut pg_b) = (0.0f32, 0.0f32, 0.0f64, 0.0f64);
        for &v in lp {
            let d = (hi - v).min(range).max(0.0);
            let qa = (d.sqrt() / s_sqrt).round().min(255.0) as u8;
            let qb = (d / s_lin).round().min(255.0) as u8;
            out.push(qa);
            scratch.q.push(qb);
            // Same expressions as the decoder, so the offsets normalise exactly what is decoded.
            let u = s_sqrt * qa as f32;
            let ga = -(u * u);
            let gb = -s_lin * qb as f32;
            sum_a += ga.exp();
            sum_b += gb.exp();
            let p = (v as f64).exp();
            pg_a += p * ga as f64;
            pg_b += p * gb as f64;
        }
        let (off_a, off_b) = (-sum_a.ln(), -sum_b.ln());
        // KL(p || q) = sum p lp - offset - sum p g; the first term is shared.
        let (offset, scale) = if -(off_a as f64) - pg_a <= -(off_b as f64) - pg_b {
            (off_a, s_sqrt)
        } else {
            out[start + 8..].copy_from_slice(&scratch.q);
            (off_b, -s_lin)
        };
        out[start..start + 4].copy_from_slice(&offset.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&scale.to_le_bytes());
    }

    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (c, record) = (classes, self.payload_bytes(param, classes));
        for (o, rec) in out.chunks_exact_mut(c).zip(payload.chunks_exact(record)) {
            let offset = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let scale = f32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if scale < 0.0 {
                for (o, &q) in o.iter_mut().zip(&rec[8..]) {
                    *o = offset + scale * q as f32;
                }
            } else {
                for (o, &q) in o.iter_mut().zip(&rec[8..]) {
                    let u = scale * q as f32;
                    *o = offset - u * u;
                }
            }
        }

        Ok(())
    }
}

/// The q8 clamp window in nats below the record's maximum.
pub fn q8_window(classes: usize) -> f32 {
    16.0 + (classes as f32).ln()
}
