//! `topk:K`: the K most probable classes exactly, the rest share the
//! remaining mass uniformly.
//!
//! Payload per record: `4 + 4K + wK` bytes: `log(remaining mass)` (f32), the
//! K log-probabilities (f32, most probable first), then their class ids in
//! `w` bytes each (2 when C <= 65536, else 4). Not dense: re-tempering it is
//! an approximation the reader refuses unless allowed.

use super::{EncodeScratch, RecordCodec};

/// The `topk` encoding (on-disk tag 3).
pub(super) struct TopKCodec;

impl RecordCodec for TopKCodec {
    fn tag(&self) -> u16 {
        3
    }

    fn name(&self) -> &'static str {
        "topk"
    }

    fn takes_param(&self) -> bool {
        true
    }

    fn is_dense(&self) -> bool {
        false
    }

    fn describe(&self, param: u16) -> String {
        format!("top-{param}")
    }

    fn check_classes(&self, param: u16, classes: usize) -> Result<(), String> {
        check_k(self.name(), param, classes)
    }

    fn payload_bytes(&self, param: u16, classes: usize) -> usize {
        4 + param as usize * (4 + id_width(classes))
    }

    fn encode_row(&self, param: u16, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        let classes = lp.len();
        let k = param as usize;
        let log_rest = select_top_k(lp, k, &mut scratch.order);
        let order = &scratch.order;
        out.extend_from_slice(&log_rest.to_le_bytes());
        for &i in &order[..k] {
            out.extend_from_slice(&lp[i as usize].to_le_bytes());
        }
        let wide = id_width(classes) == 4;
        for &i in &order[..k] {
            if wide {
                out.extend_from_slice(&i.to_le_bytes());
            } else {
                out.extend_from_slice(&(i as u16).to_le_bytes());
            }
        }
    }

    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (c, record) = (classes, self.payload_bytes(param, classes));
        let k = param;
        let ln_tail_classes = (classes.saturating_sub(k as usize).max(1) as f32).ln();
        let k = k as usize;
        let wide = id_width(c) == 4;
        for (row, (o, rec)) in out
            .chunks_exact_mut(c)
            .zip(payload.chunks_exact(record))
            .enumerate()
        {
            let log_rest = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            o.fill(log_rest - ln_tail_classes);
            let vals = &rec[4..4 + 4 * k];
            let ids = &rec[4 + 4 * k..];
            for j in 0..k {
                let id = if wide {
                    u32::from_le_bytes([ids[4 * j], ids[4 * j + 1], ids[4 * j + 2], ids[4 * j + 3]])
                        as usize
                } else {
                    u16::from_le_bytes([ids[2 * j], ids[2 * j + 1]]) as usize
                };
                let v = &vals[4 * j..4 * j + 4];
                match o.get_mut(id) {
                    Some(slot) => *slot = f32::from_le_bytes([v[0], v[1], v[2], v[3]]),
                    None => {
                        return Err(format!(
                            "record {row} names class {id}, but the cache has {c} classes"
                        ))
                    }
                }
            }
        }
        Ok(())
    }
}

/// The K of a top-K encoding (`name:K`) must keep at least one class out.
pub(super) fn check_k(name: &str, param: u16, classes: usize) -> Result<(), String> {
    if param == 0 || param as usize >= classes {
        return Err(format!(
            "{name}:{param} needs 1 <= K < classes ({classes}); use a smaller K or a dense encoding (f32, f16, q8, hq:N)"
        ));
    }
    Ok(())
}

/// Puts the `k` most probable classes of `lp` (ties: lower id first) in
/// decreasing probability at the front of `order` (which then holds every
/// class id) and returns `log Σ p` over the others, computed from the tail
/// itself (no `1 − Σ` cancellation); `-inf` when `k` covers every class.
/// Shared by the codecs that keep the top classes (`topk`, `topkp`, `sampled`).
pub(super) fn select_top_k(lp: &[f32], k: usize, order: &mut Vec<u32>) -> f32 {
    order.clear();
    order.extend(0..lp.len() as u32);
    let cmp = |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
    if k > 0 && k < lp.len() {
        order.select_nth_unstable_by(k - 1, cmp);
    }
    let k = k.min(lp.len());
    order[..k].sort_unstable_by(cmp);
    let tail_max = order[k..]
        .iter()
        .map(|&i| lp[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    if tail_max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let tail_sum: f32 = order[k..]
        .iter()
        .map(|&i| (lp[i as usize] - tail_max).exp())
        .sum();
    tail_max + tail_sum.ln()
}

/// Bytes per stored class id in a top-k record.
pub fn id_width(classes: usize) -> usize {
    if classes <= 1 << 16 {
        2
    } else {
        4
    }
}
