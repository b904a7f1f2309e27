//! Record encodings: how one sample's `C` log-probabilities are stored.
//!
//! | encoding | payload bytes per record | decoded error |
//! |---|---|---|
//! | `f32` | `4C` | none (bit-exact) |
//! | `f16` | `4 + 2C` | gap to the row maximum in f16 (relative 2^-11) + an f32 offset; rows sum to one exactly |
//! | `q8` | `8 + C` | gap to the row maximum in 8 bits (square-root or linear scale per record, clamped 16 + ln C nats down); rows sum to one exactly |
//! | `topk:K` | `4 + 4K + wK` (w = 2 when C <= 65536, else 4) | the other C-K classes share the remaining mass uniformly |
//!
//! Every record also carries its sample index (u64) and label (u32) in the
//! block's columns; see `FORMAT.md`. Decoding always produces dense
//! log-probabilities for all `C` classes, written straight into the caller's
//! buffer, optionally re-tempered to another temperature.
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

use std::fmt;
use std::str::FromStr;

use half::f16;

use super::{CacheError, Result};

/// How log-probabilities are stored; see the module docs for sizes and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 32-bit floats, exact.
    F32,
    /// 16-bit floats.
    F16,
    /// 8-bit square-root-domain quantisation with a per-record scale and offset.
    Q8,
    /// The `K` most probable classes exactly (f32) plus the remaining mass.
    TopK(u16),
}

/// Largest number of classes a cache may hold (a hostile-header bound).
pub const MAX_CLASSES: usize = 1 << 24;

impl Encoding {
    /// The on-disk tag (FORMAT.md, header field `encoding`).
    pub fn tag(self) -> u16 {
        match self {
            Encoding::F32 => 0,
            Encoding::F16 => 1,
            Encoding::Q8 => 2,
            Encoding::TopK(_) => 3,
        }
    }

    /// The value of the header field `topk_k` (0 for dense encodings).
    pub fn k(self) -> u16 {
        match self {
            Encoding::TopK(k) => k,
            _ => 0,
        }
    }

    /// Inverse of [`tag`](Self::tag) / [`k`](Self::k); `None` for unknown combinations.
    pub fn from_tag(tag: u16, k: u16) -> Option<Encoding> {
        match (tag, k) {
            (0, 0) => Some(Encoding::F32),
            (1, 0) => Some(Encoding::F16),
            (2, 0) => Some(Encoding::Q8),
            (3, k) if k > 0 => Some(Encoding::TopK(k)),
            _ => None,
        }
    }

    /// True when every class is stored, so re-tempering is exact.
    pub fn is_dense(self) -> bool {
        !matches!(self, Encoding::TopK(_))
    }

    /// Checks that this encoding can store `classes` classes; the message says what to change.
    pub fn check_classes(self, classes: usize) -> std::result::Result<(), String> {
        if classes == 0 || classes > MAX_CLASSES {
            return Err(format!(
                "number of classes {classes} is outside 1..={MAX_CLASSES}"
            ));
        }
        if let Encoding::TopK(k) = self {
            if k == 0 || k as usize >= classes {
                return Err(format!(
                    "topk:{k} needs 1 <= K < classes ({classes}); use a smaller K or a dense encoding (f32, f16, q8)"
                ));
            }
        }
        Ok(())
    }

    /// Payload bytes per record for `classes` classes (excluding index and label).
    pub fn payload_bytes(self, classes: usize) -> usize {
        match self {
            Encoding::F32 => 4 * classes,
            Encoding::F16 => 4 + 2 * classes,
            Encoding::Q8 => 8 + classes,
            Encoding::TopK(k) => 4 + k as usize * (4 + id_width(classes)),
        }
    }
}

/// Bytes per stored class id in a top-k record.
pub fn id_width(classes: usize) -> usize {
    if classes <= 1 << 16 {
        2
    } else {
        4
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encoding::F32 => f.write_str("f32"),
            Encoding::F16 => f.write_str("f16"),
            Encoding::Q8 => f.write_str("q8"),
            Encoding::TopK(k) => write!(f, "topk:{k}"),
        }
    }
}

impl FromStr for Encoding {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            CacheError::input(
                "encoding",
                format!("'{s}' is not an encoding; use one of f32, f16, q8, topk:K (K between 1 and 65535)"),
            )
        };
        match s {
            "f32" => Ok(Encoding::F32),
            "f16" => Ok(Encoding::F16),
            "q8" => Ok(Encoding::Q8),
            _ => {
                let k = s.strip_prefix("topk:").ok_or_else(bad)?;
                match k.parse::<u16>() {
                    Ok(k) if k > 0 => Ok(Encoding::TopK(k)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl serde::Serialize for Encoding {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Encoding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The q8 clamp window in nats below the record's maximum.
pub fn q8_window(classes: usize) -> f32 {
    16.0 + (classes as f32).ln()
}

/// Reusable buffers for [`Codec::encode_row`].
#[derive(Default)]
pub(crate) struct EncodeScratch {
    order: Vec<u32>,
    q: Vec<u8>,
}

/// Encodes and decodes records of one (encoding, classes) pair.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    pub enc: Encoding,
    pub classes: usize,
    pub payload: usize,
    ln_tail_classes: f32,
}

impl Codec {
    pub fn new(enc: Encoding, classes: usize) -> Codec {
        let ln_tail_classes = match enc {
            Encoding::TopK(k) => (classes.saturating_sub(k as usize).max(1) as f32).ln(),
            _ => 0.0,
        };
        Codec {
            enc,
            classes,
            payload: enc.payload_bytes(classes),
            ln_tail_classes,
        }
    }

    /// Appends the payload of one record (`lp` = `classes` finite log-probs).
    pub fn encode_row(&self, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        debug_assert_eq!(lp.len(), self.classes);
        match self.enc {
            Encoding::F32 => {
                for v in lp {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Encoding::F16 => {
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
            Encoding::Q8 => {
                // Two candidate 8-bit codes for the gap d = hi - lp (clamped to the
                // window): square-root domain (fine near the maximum, where the mass
                // is) and linear (better for flat, high-temperature rows). Keep the
                // one with the smaller KL(exact || decoded); the scale's sign says which.
                let c = self.classes;
                let hi = lp.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let lo = lp.iter().copied().fold(f32::INFINITY, f32::min);
                let range = (hi - lo).min(q8_window(c));
                let start = out.len();
                out.extend_from_slice(&[0u8; 8]);
                if range <= 0.0 {
                    // Uniform row: every class decodes to -ln C.
                    out.extend(std::iter::repeat(0u8).take(c));
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
            Encoding::TopK(k) => {
                let k = k as usize;
                let order = &mut scratch.order;
                order.clear();
                order.extend(0..self.classes as u32);
                let cmp =
                    |a: &u32, b: &u32| lp[*b as usize].total_cmp(&lp[*a as usize]).then(a.cmp(b));
                order.select_nth_unstable_by(k - 1, cmp);
                order[..k].sort_unstable_by(cmp);
                // The remaining mass, computed from the tail itself (no 1 - sum cancellation).
                let tail_max = order[k..]
                    .iter()
                    .map(|&i| lp[i as usize])
                    .fold(f32::NEG_INFINITY, f32::max);
                let tail_sum: f32 = order[k..]
                    .iter()
                    .map(|&i| (lp[i as usize] - tail_max).exp())
                    .sum();
                let log_rest = tail_max + tail_sum.ln();
                out.extend_from_slice(&log_rest.to_le_bytes());
                for &i in &order[..k] {
                    out.extend_from_slice(&lp[i as usize].to_le_bytes());
                }
                let wide = id_width(self.classes) == 4;
                for &i in &order[..k] {
                    if wide {
                        out.extend_from_slice(&i.to_le_bytes());
                    } else {
                        out.extend_from_slice(&(i as u16).to_le_bytes());
                    }
                }
            }
        }
    }

    /// Decodes `rows` records' payloads into `out` (`rows * classes` values)
    /// at the stored temperature. The error message describes bad content
    /// (the caller adds file and block).
    pub fn decode_rows(&self, payload: &[u8], out: &mut [f32]) -> std::result::Result<(), String> {
        let c = self.classes;
        let rows = out.len() / c;
        if payload.len() != rows * self.payload || out.len() != rows * c {
            return Err(format!(
                "payload holds {} bytes, expected {} for {rows} records",
                payload.len(),
                rows * self.payload
            ));
        }
        match self.enc {
            Encoding::F32 => {
                // SAFETY: any bit pattern is a valid f32; alignment is checked by align_to.
                let (pre, mid, post) = unsafe { payload.align_to::<f32>() };
                if cfg!(target_endian = "little") && pre.is_empty() && post.is_empty() {
                    out.copy_from_slice(mid);
                } else {
                    for (o, b) in out.iter_mut().zip(payload.chunks_exact(4)) {
                        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
            Encoding::F16 => {
                use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
                for (o, rec) in out
                    .chunks_exact_mut(c)
                    .zip(payload.chunks_exact(self.payload))
                {
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
            }
            Encoding::Q8 => {
                for (o, rec) in out
                    .chunks_exact_mut(c)
                    .zip(payload.chunks_exact(self.payload))
                {
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
            }
            Encoding::TopK(k) => {
                let k = k as usize;
                let wide = id_width(c) == 4;
                for (row, (o, rec)) in out
                    .chunks_exact_mut(c)
                    .zip(payload.chunks_exact(self.payload))
                    .enumerate()
                {
                    let log_rest = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
                    o.fill(log_rest - self.ln_tail_classes);
                    let vals = &rec[4..4 + 4 * k];
                    let ids = &rec[4 + 4 * k..];
                    for j in 0..k {
                        let id = if wide {
                            u32::from_le_bytes([
                                ids[4 * j],
                                ids[4 * j + 1],
                                ids[4 * j + 2],
                                ids[4 * j + 3],
                            ]) as usize
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
            }
        }
        Ok(())
    }
}

/// Re-tempers dense rows in place from `stored` to `wanted` temperature:
/// `lp' = lp·T/T' - logsumexp(lp·T/T')`, exact for dense log-probabilities
/// (the stored normaliser becomes a constant shift).
pub(crate) fn retemper_rows(out: &mut [f32], classes: usize, stored: f32, wanted: f32) {
    let ratio = stored / wanted;
    for row in out.chunks_exact_mut(classes) {
        let mut max = f32::NEG_INFINITY;
        for v in row.iter_mut() {
            *v *= ratio;
            max = max.max(*v);
        }
        let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
        let lse = max + sum.ln();
        for v in row.iter_mut() {
            *v -= lse;
        }
    }
}

pub(crate) use crate::numeric::argmax;

/// Per-record fidelity of a decoded row against the exact one:
/// (KL(exact || decoded) in nats, same top-1 class, entropy of exact in nats).
pub(crate) fn row_fidelity(exact: &[f32], decoded: &[f32]) -> (f64, bool, f64) {
    let mut kl = 0.0f64;
    let mut ent = 0.0f64;
    for (&p_lp, &q_lp) in exact.iter().zip(decoded) {
        let p = (p_lp as f64).exp();
        kl += p * (p_lp as f64 - q_lp as f64);
        ent -= p * p_lp as f64;
    }
    (kl.max(0.0), argmax(exact) == argmax(decoded), ent)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// Teacher-like logits: one confident class, a few plausible ones, a long tail.
    pub fn teacher_logits(n: usize, c: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut x = vec![0.0f32; n * c];
        for row in x.chunks_exact_mut(c) {
            for v in row.iter_mut() {
                // sum of uniforms ~ gaussian-ish, scale 2
                let g: f32 = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 3.5;
                *v = g;
            }
            let top = rng.gen_range(0..c);
            row[top] += rng.gen_range(4.0..12.0);
            for _ in 0..3.min(c) {
                let j = rng.gen_range(0..c);
                row[j] += rng.gen_range(0.0..4.0);
            }
        }
        x
    }

    pub fn lp_of(logits: &[f32], c: usize, t: f32) -> Vec<f32> {
        let mut out = vec![0.0; logits.len()];
        crate::cache::log_softmax_tempered(logits, c, t, &mut out).unwrap();
        out
    }

    fn roundtrip(enc: Encoding, lp: &[f32], c: usize) -> Vec<f32> {
        let codec = Codec::new(enc, c);
        let mut bytes = Vec::new();
        let mut scratch = EncodeScratch::default();
        for row in lp.chunks_exact(c) {
            codec.encode_row(row, &mut bytes, &mut scratch);
        }
        assert_eq!(bytes.len(), codec.payload * lp.len() / c);
        let mut out = vec![0.0; lp.len()];
        codec.decode_rows(&bytes, &mut out).unwrap();
        out
    }

    /// Mean KL, max KL, top-1 agreement over rows.
    pub fn fidelity(exact: &[f32], dec: &[f32], c: usize) -> (f64, f64, f64) {
        let (mut sum, mut max, mut agree) = (0.0, 0.0f64, 0usize);
        let n = exact.len() / c;
        for (e, d) in exact.chunks_exact(c).zip(dec.chunks_exact(c)) {
            let (kl, same, _) = row_fidelity(e, d);
            sum += kl;
            max = max.max(kl);
            agree += same as usize;
        }
        (sum / n as f64, max, agree as f64 / n as f64)
    }

    #[test]
    fn parse_and_display() {
        for s in ["f32", "f16", "q8", "topk:5", "topk:65535"] {
            assert_eq!(s.parse::<Encoding>().unwrap().to_string(), s);
        }
        for s in ["", "f64", "topk:", "topk:0", "topk:70000", "topk:-1", "Q8"] {
            let e = s.parse::<Encoding>().unwrap_err().to_string();
            assert!(e.contains("encoding"), "{e}");
        }
        assert!(Encoding::TopK(10).check_classes(10).is_err());
        assert!(Encoding::TopK(9).check_classes(10).is_ok());
        assert!(Encoding::F32.check_classes(0).is_err());
    }

    fn rows_strategy() -> impl Strategy<Value = (usize, Vec<f32>)> {
        (2usize..40).prop_flat_map(|c| {
            (
                Just(c),
                prop::collection::vec(-30.0f32..30.0, c..=c * 6).prop_map(move |mut v| {
                    v.truncate(v.len() / c * c);
                    v
                }),
            )
        })
    }

    proptest! {
        #[test]
        fn f32_roundtrip_bit_exact((c, logits) in rows_strategy(), t in 0.5f32..8.0) {
            let lp = lp_of(&logits, c, t);
            let dec = roundtrip(Encoding::F32, &lp, c);
            prop_assert!(lp.iter().zip(&dec).all(|(a, b)| a.to_bits() == b.to_bits()));
        }

        #[test]
        fn f16_roundtrip_within_bound((c, logits) in rows_strategy(), t in 0.5f32..8.0) {
            let lp = lp_of(&logits, c, t);
            let dec = roundtrip(Encoding::F16, &lp, c);
            for (e, d) in lp.chunks_exact(c).zip(dec.chunks_exact(c)) {
                let s: f32 = d.iter().map(|v| v.exp()).sum();
                prop_assert!((s - 1.0).abs() < 1e-4, "sum {s}");
                let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let dhi = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (&a, &b) in e.iter().zip(d) {
                    // The gap to the maximum is stored with an 11-bit significand: relative error <= 2^-11.
                    let gap = hi - a;
                    prop_assert!((gap - (dhi - b)).abs() <= gap * 4.9e-4 + 1e-6, "{a} vs {b}");
                }
            }
        }

        #[test]
        fn q8_roundtrip_within_bound((c, logits) in rows_strategy(), t in 0.5f32..8.0) {
            let lp = lp_of(&logits, c, t);
            let dec = roundtrip(Encoding::Q8, &lp, c);
            for (e, d) in lp.chunks_exact(c).zip(dec.chunks_exact(c)) {
                // Exactly normalised.
                let s: f32 = d.iter().map(|v| v.exp()).sum();
                prop_assert!((s - 1.0).abs() < 1e-4, "sum {s}");
                let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let w = q8_window(c);
                let step = w.sqrt() / 255.0;
                let dhi = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for (&a, &b) in e.iter().zip(d) {
                    let gap = hi - a;
                    if gap < w {
                        // sqrt-domain rounding error <= step/2 -> gap error <= step*sqrt(gap) + step^2/4,
                        // Linear rows: |error| <= (W/255)/2.
                        let bound = (step * gap.sqrt() + step * step / 4.0).max(w / 510.0);
                        prop_assert!(((hi - a) - (dhi - b)).abs() <= bound + 1e-4 * (1.0 + gap), "gap {gap} {a} {b}");
                    } else {
                        prop_assert!(dhi - b <= w + 1e-3);
                    }
                }
            }
        }

        #[test]
        fn topk_roundtrip_within_bound((c, logits) in rows_strategy(), t in 0.5f32..8.0, kf in 0.0f64..1.0) {
            let k = 1 + ((c - 1) as f64 * kf) as usize;
            let k = k.min(c - 1) as u16;
            let lp = lp_of(&logits, c, t);
            let dec = roundtrip(Encoding::TopK(k), &lp, c);
            for (e, d) in lp.chunks_exact(c).zip(dec.chunks_exact(c)) {
                let mut idx: Vec<usize> = (0..c).collect();
                idx.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
                // The K largest are exact.
                for &i in &idx[..k as usize] {
                    prop_assert_eq!(e[i].to_bits(), d[i].to_bits());
                }
                // The tail holds the remaining mass, uniformly.
                let rest_e: f64 = idx[k as usize..].iter().map(|&i| (e[i] as f64).exp()).sum();
                let rest_d: f64 = idx[k as usize..].iter().map(|&i| (d[i] as f64).exp()).sum();
                prop_assert!((rest_e - rest_d).abs() <= 1e-5 + rest_e * 1e-4, "{rest_e} {rest_d}");
                let t0 = d[idx[k as usize]];
                prop_assert!(idx[k as usize..].iter().all(|&i| d[i] == t0));
            }
        }

        #[test]
        fn dense_retemper_is_exact((c, logits) in rows_strategy(), t in 0.5f32..8.0, t2 in 0.5f32..8.0) {
            for enc in [Encoding::F32] {
                let lp = lp_of(&logits, c, t);
                let mut dec = roundtrip(enc, &lp, c);
                retemper_rows(&mut dec, c, t, t2);
                let want = lp_of(&logits, c, t2);
                for (a, b) in dec.iter().zip(&want) {
                    prop_assert!((a - b).abs() <= 2e-5 * (1.0 + b.abs()) * (1.0 + t / t2), "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn topk_rejects_out_of_range_class_id() {
        let codec = Codec::new(Encoding::TopK(1), 3);
        let mut b = Vec::new();
        b.extend_from_slice(&(-3.0f32).to_le_bytes());
        b.extend_from_slice(&(-0.1f32).to_le_bytes());
        b.extend_from_slice(&7u16.to_le_bytes());
        let mut out = [0.0f32; 3];
        let e = codec.decode_rows(&b, &mut out).unwrap_err();
        assert!(e.contains("class 7"), "{e}");
    }

    /// Reference q8 variants (f64 normalisation), for measuring the scheme choice.
    fn q8_reference(lp: &[f32], c: usize, variant: &str) -> Vec<f32> {
        let mut out = vec![0.0f32; lp.len()];
        for (e, d) in lp.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let full = hi - e.iter().copied().fold(f32::INFINITY, f32::min);
            let r = if variant == "naive" {
                full
            } else {
                full.min(q8_window(c))
            };
            for (o, &v) in d.iter_mut().zip(e) {
                let g = (hi - v).min(r);
                *o = match variant {
                    "sqrt" => {
                        let s = r.sqrt() / 255.0;
                        let u = (g.sqrt() / s).round() * s;
                        -u * u
                    }
                    _ => {
                        let s = r / 255.0;
                        -(g / s).round() * s
                    }
                };
            }
            let l = crate::numeric::logsumexp(d.iter().copied());
            d.iter_mut().for_each(|v| *v -= l);
        }
        out
    }

    /// The q8 scheme choice, measured: adaptive (per record, what the codec
    /// does) vs square-root-only, linear-only (same clamped window) and a
    /// naive linear scale over the full min..max range.
    #[test]
    fn q8_scheme_choice() {
        for c in [10usize, 1000] {
            for t in [1.0f32, 4.0] {
                let n = if c == 10 { 20_000 } else { 1_000 };
                let lp = lp_of(&teacher_logits(n, c, 7), c, t);
                let (adaptive, _, top1) = fidelity(&lp, &roundtrip(Encoding::Q8, &lp, c), c);
                let (sqrt, _, _) = fidelity(&lp, &q8_reference(&lp, c, "sqrt"), c);
                let (lin, _, _) = fidelity(&lp, &q8_reference(&lp, c, "linear"), c);
                let (naive, _, _) = fidelity(&lp, &q8_reference(&lp, c, "naive"), c);
                eprintln!(
                    "q8 C={c} T={t}: mean KL adaptive {adaptive:.3e} (top1 {top1:.4}), sqrt-only {sqrt:.3e}, linear-only {lin:.3e}, naive full-range linear {naive:.3e}"
                );
                assert!(
                    adaptive <= sqrt.min(lin) * 1.02,
                    "adaptive {adaptive} sqrt {sqrt} linear {lin}"
                );
                assert!(adaptive <= naive, "adaptive {adaptive} naive {naive}");
            }
        }
    }

    /// Fidelity of each encoding on teacher-like logits (numbers recorded in FORMAT.md).
    #[test]
    fn fidelity_table() {
        for c in [10usize, 1000] {
            let n = if c == 10 { 20_000 } else { 2_000 };
            let lp = lp_of(&teacher_logits(n, c, 11), c, 4.0);
            for enc in [
                Encoding::F32,
                Encoding::F16,
                Encoding::Q8,
                Encoding::TopK(if c == 10 { 3 } else { 20 }),
            ] {
                let dec = roundtrip(enc, &lp, c);
                let (mean, max, top1) = fidelity(&lp, &dec, c);
                eprintln!("fidelity C={c} {enc}: mean KL {mean:.3e} max KL {max:.3e} top1 {top1:.4} payload {} B", enc.payload_bytes(c));
                if enc == Encoding::F32 {
                    assert_eq!(max, 0.0);
                }
                assert!(top1 > 0.99, "{enc} top1 {top1}");
            }
        }
    }
}
