//! `topkp:K`: the K most probable classes with their ids packed in
//! `ceil(log2 C)` bits and their log-probabilities as f16 gaps below the
//! top class; the rest share the remaining mass uniformly (as `topk`).
//!
//! Payload per record: `8 + 2(K−1) + ceil(K·b/8)` bytes, `b =`
//! [`id_bits`]`(C)`: `log_rest` (f32, log of the mass outside the K), `top`
//! (f32, the top class's log-probability), `K−1` f16 gaps `top − lp_j` of
//! the next classes in decreasing probability, then the K ids packed
//! ([`super::bits`]), most probable first. Decoding gives class `j` of the
//! K `top − gap_j`, every other class `log_rest − ln(C − K)`, and subtracts
//! the row's log-sum so it sums to one (the f16 gaps round). At 32,000
//! classes an id takes 15 bits instead of `topk`'s 16, at 128,000 17
//! instead of 32; with the f16 gaps a `topkp:20` record is 82 bytes at 32k
//! classes where `topk:20` takes 124. Not dense and biased like `topk`: for
//! an unbiased sparse target see `sampled`.

use half::f16;

use super::bits::{id_bits, pack, packed_len, unpack};
use super::topk::{check_k, select_top_k};
use super::{EncodeScratch, RecordCodec};

/// The `topkp` encoding (on-disk tag 5, format version 2).
pub(super) struct TopKPackedCodec;

impl RecordCodec for TopKPackedCodec {
    fn tag(&self) -> u16 {
        5
    }

    fn name(&self) -> &'static str {
        "topkp"
    }

    fn since_version(&self) -> u32 {
        2
    }

    fn takes_param(&self) -> bool {
        true
    }

    fn is_dense(&self) -> bool {
        false
    }

    fn describe(&self, param: u16) -> String {
        format!("top-{param} (packed ids)")
    }

    fn check_classes(&self, param: u16, classes: usize) -> Result<(), String> {
        check_k(self.name(), param, classes)
    }

    fn payload_bytes(&self, param: u16, classes: usize) -> usize {
        let k = param as usize;
        8 + 2 * k.saturating_sub(1) + packed_len(k, id_bits(classes))
    }

    fn encode_row(&self, param: u16, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        let k = param as usize;
        let log_rest = select_top_k(lp, k, &mut scratch.order);
        let order = &scratch.order[..k];
        let top = lp[order[0] as usize];
        out.extend_from_slice(&log_rest.to_le_bytes());
        out.extend_from_slice(&top.to_le_bytes());
        for &i in &order[1..] {
            let gap = f16::from_f32((top - lp[i as usize]).min(f16::MAX.to_f32()));
            out.extend_from_slice(&gap.to_bits().to_le_bytes());
        }
        pack(order.iter().copied(), id_bits(lp.len()), out);
    }

    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        let k = param as usize;
        let record = self.payload_bytes(param, classes);
        let bits = id_bits(classes);
        let ln_tail_classes = ((classes - k) as f64).ln();
        let mut seen = vec![false; classes];
        let mut value = Vec::with_capacity(k);
        let mut ids = Vec::with_capacity(k);
        for (row, (o, rec)) in out
            .chunks_exact_mut(classes)
            .zip(payload.chunks_exact(record))
            .enumerate()
        {
            let f32_at =
                |at: usize| f32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
            let (log_rest, top) = (f32_at(0), f32_at(4));
            if !(log_rest <= 0.0 && top <= 0.0 && top.is_finite()) || log_rest.is_nan() {
                return Err(format!(
                    "record {row}: log_rest {log_rest} and top {top} are not log-probabilities"
                ));
            }
            let gaps = &rec[8..8 + 2 * (k - 1)];
            value.clear();
            ids.clear();
            value.push(top as f64);
            for (j, g) in gaps.chunks_exact(2).enumerate() {
                let gap = f16::from_bits(u16::from_le_bytes([g[0], g[1]])).to_f32();
                if !(gap >= 0.0 && gap.is_finite()) {
                    return Err(format!("record {row}: gap {} is {gap}", j + 1));
                }
                value.push(top as f64 - gap as f64);
            }
            // log of the row's total: the K values plus the stored rest.
            let mut sum = value.iter().map(|v| v.exp()).sum::<f64>();
            sum += (log_rest as f64).exp();
            let log_sum = sum.ln();
            if !log_sum.is_finite() {
                return Err(format!("record {row}: the stored values hold no mass"));
            }
            let tail = (log_rest as f64 - ln_tail_classes - log_sum) as f32;
            o.fill(if log_rest == f32::NEG_INFINITY {
                super::ABSENT_LOGPROB
            } else {
                tail
            });
            unpack(&rec[8 + 2 * (k - 1)..], k, bits, classes, |j, id| {
                if std::mem::replace(&mut seen[id as usize], true) {
                    return Err(format!("id {j} repeats class {id}"));
                }
                o[id as usize] = (value[j] - log_sum) as f32;
                ids.push(id);
                Ok(())
            })
            .map_err(|m| format!("record {row}: {m}"))?;
            for &id in &ids {
                seen[id as usize] = false;
            }
        }
        Ok(())
    }
}
