//! `sampled:S` and `sampled:K+S`: an unbiased sparse target. The K most
//! probable classes are stored exactly; the rest of the mass is represented
//! by S classes drawn from the teacher's own distribution over the rest, each
//! carrying `1/S` of it (Sparse Logit Sampling, Anshumann et al., ACL 2025:
//! a top-k target is biased, an importance-sampled one is not).
//!
//! Payload per record: `4K + ceil((K+S)·b/8)` bytes, `b =`
//! [`id_bits`]`(C)`: the K top log-probabilities (f32, exact, most probable
//! first), then K + S class ids packed in b bits ([`super::bits`]): the K
//! top classes in that order, then the S drawn classes in ascending id order
//! (repeats allowed). With `r = 1 − Σ_top p_j`, decoding gives a top class
//! its stored value, a drawn class `ln(r · n_c / S)` where `n_c` is how often
//! it was drawn, and every other class zero mass ([`ABSENT_LOGPROB`]).
//!
//! **Unbiased.** The draw is systematic: one uniform `U`, points
//! `(U + i)/S` for `i = 0..S`, read through the cumulative distribution of
//! the rest in class-id order. Each class's count `n_c` is then
//! `floor(S·w_c)` or `ceil(S·w_c)` with `E[n_c] = S·w_c`, `w_c = p_c / r`, so
//! `E[decoded p_c] = p_c` for every class: the decoded row is an unbiased
//! estimate of the teacher's distribution, and so is the KD gradient
//! `T·(softmax(s/T) − p)`, which is linear in it. Systematic draws have a
//! lower variance than independent ones (a class with `S·w_c >= 1` is never
//! missed). `U` is `(h >> 11) · 2^-53` for `h` the xxh3-64 of the row's f32
//! little-endian bytes, so a rebuild is byte-identical; the test
//! `sampled_kd_gradient_is_unbiased` (tests/) averages the gradient through
//! the trainer's loss over many `U` and reports its variance.
//!
//! The KD loss reads the decoded row as `p = exp(lp)`, so the absent classes
//! add nothing (`0 · log q`); losses that are not linear in `p` (mse, dkd, dist)
//! lose the unbiasedness, and mse is refused on any sparse cache. Like
//! `topk`, the row cannot be re-tempered exactly.

use xxhash_rust::xxh3::xxh3_64;

use super::bits::{id_bits, pack, packed_len, unpack};
use super::topk::select_top_k;
use super::{EncodeScratch, RecordCodec, ABSENT_LOGPROB};

/// Most draws and most top classes per record (each fits a byte of the parameter).
pub const MAX_DRAWS: usize = 255;

/// The `sampled` encoding (on-disk tag 6, format version 2); its parameter
/// is `K·256 + S`.
pub(super) struct SampledCodec;

/// (K, S) of a parameter.
fn split(param: u16) -> (usize, usize) {
    ((param >> 8) as usize, (param & 0xFF) as usize)
}

/// The uniform of a row: from the hash of its bytes, so rebuilds repeat it.
fn row_uniform(lp: &[f32]) -> f64 {
    let bytes: Vec<u8> = lp.iter().flat_map(|v| v.to_le_bytes()).collect();
    (xxh3_64(&bytes) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Appends one record of `top` exact classes and `draws` systematic draws
/// at offset `u` in `[0, 1)`.
fn encode_with(
    lp: &[f32],
    top: usize,
    draws: usize,
    u: f64,
    out: &mut Vec<u8>,
    scratch: &mut EncodeScratch,
) {
    let classes = lp.len();
    select_top_k(lp, top, &mut scratch.order);
    let mask = &mut scratch.q;
    mask.clear();
    mask.resize(classes, 0);
    for &i in &scratch.order[..top] {
        out.extend_from_slice(&lp[i as usize].to_le_bytes());
        mask[i as usize] = 1;
    }
    // The rest's weights in class-id order, relative to its largest.
    let rest_max = (0..classes)
        .filter(|&c| mask[c] == 0)
        .map(|c| lp[c])
        .fold(f32::NEG_INFINITY, f32::max);
    let weight = |c: usize| ((lp[c] - rest_max) as f64).exp();
    let total: f64 = (0..classes).filter(|&c| mask[c] == 0).map(weight).sum();
    let mut drawn = Vec::with_capacity(draws);
    let mut cum = 0.0f64;
    let mut last = None;
    for c in (0..classes).filter(|&c| mask[c] == 0) {
        let w = weight(c);
        if w <= 0.0 {
            continue;
        }
        cum += w;
        last = Some(c as u32);
        while drawn.len() < draws && (u + drawn.len() as f64) / draws as f64 * total < cum {
            drawn.push(c as u32);
        }
    }
    // Rounding can leave the last points just past the final sum.
    while drawn.len() < draws {
        drawn.push(last.unwrap_or(0));
    }
    let ids = scratch.order[..top].iter().copied().chain(drawn);
    pack(ids, id_bits(classes), out);
}

/// The decoded row of `lp` under `sampled:K+S` drawn at offset `u` in
/// `[0, 1)` instead of the row's own: for measuring the estimator over many
/// draws (its bias and variance), which the stored records cannot show.
pub fn sampled_row(
    lp: &[f32],
    top: usize,
    draws: usize,
    u: f64,
    out: &mut [f32],
) -> Result<(), String> {
    let classes = lp.len();
    if draws == 0 || draws > MAX_DRAWS || top > MAX_DRAWS || top >= classes.max(1) {
        return Err(format!(
            "sampled:{top}+{draws} does not fit {classes} classes (1 <= S <= {MAX_DRAWS}, K < C)"
        ));
    }
    let param = ((top as u16) << 8) | draws as u16;
    let mut bytes = Vec::new();
    encode_with(
        lp,
        top,
        draws,
        u.clamp(0.0, 1.0 - f64::EPSILON),
        &mut bytes,
        &mut EncodeScratch::default(),
    );
    SampledCodec.decode_rows(param, classes, &bytes, out)
}

impl RecordCodec for SampledCodec {
    fn tag(&self) -> u16 {
        6
    }

    fn name(&self) -> &'static str {
        "sampled"
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

    fn is_sparse(&self) -> bool {
        true
    }

    fn parse_param(&self, text: &str) -> Option<u16> {
        let (top, draws) = match text.split_once('+') {
            Some((k, s)) => (k.parse::<usize>().ok()?, s.parse::<usize>().ok()?),
            None => (0, text.parse::<usize>().ok()?),
        };
        ((1..=MAX_DRAWS).contains(&draws) && top <= MAX_DRAWS)
            .then_some(((top as u16) << 8) | draws as u16)
    }

    fn format_param(&self, param: u16) -> String {
        match split(param) {
            (0, s) => s.to_string(),
            (k, s) => format!("{k}+{s}"),
        }
    }

    fn param_syntax(&self) -> String {
        format!("sampled:S or sampled:K+S (S draws, 1 to {MAX_DRAWS}; K exact top classes, 0 to {MAX_DRAWS})")
    }

    fn describe(&self, param: u16) -> String {
        match split(param) {
            (0, s) => format!("sampled ({s} draws)"),
            (k, s) => format!("sampled (top-{k} and {s} draws)"),
        }
    }

    fn check_classes(&self, param: u16, classes: usize) -> Result<(), String> {
        let (k, s) = split(param);
        if s == 0 || k >= classes {
            return Err(format!(
                "sampled:{}: needs 1 <= S draws and K top classes < classes ({classes})",
                self.format_param(param)
            ));
        }
        Ok(())
    }

    fn payload_bytes(&self, param: u16, classes: usize) -> usize {
        let (k, s) = split(param);
        4 * k + packed_len(k + s, id_bits(classes))
    }

    fn encode_row(&self, param: u16, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        let (k, s) = split(param);
        encode_with(lp, k, s, row_uniform(lp), out, scratch);
    }

    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> Result<(), String> {
        let (k, s) = split(param);
        let record = self.payload_bytes(param, classes);
        let bits = id_bits(classes);
        let mut top_values = Vec::with_capacity(k);
        let mut is_top = vec![false; classes];
        for (row, (o, rec)) in out
            .chunks_exact_mut(classes)
            .zip(payload.chunks_exact(record))
            .enumerate()
        {
            top_values.clear();
            let mut top_mass = 0.0f64;
            for (j, b) in rec[..4 * k].chunks_exact(4).enumerate() {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !(v.is_finite() && v <= 0.0) {
                    return Err(format!(
                        "record {row}: top value {j} is {v}, not a log-probability"
                    ));
                }
                top_mass += (v as f64).exp();
                top_values.push(v);
            }
            if top_mass > 1.0 + 1e-4 {
                return Err(format!(
                    "record {row}: the top classes hold mass {top_mass}, more than 1"
                ));
            }
            let each = (1.0 - top_mass).max(0.0) / s as f64;
            o.fill(ABSENT_LOGPROB);
            let mut previous: Option<u32> = None;
            let mut run = 0usize;
            let mut tops = Vec::with_capacity(k);
            let result = unpack(&rec[4 * k..], k + s, bits, classes, |j, id| {
                let c = id as usize;
                if j < k {
                    if std::mem::replace(&mut is_top[c], true) {
                        return Err(format!("top class {id} repeats"));
                    }
                    o[c] = top_values[j];
                    tops.push(c);
                    return Ok(());
                }
                if is_top[c] {
                    return Err(format!("drawn class {id} is one of the top classes"));
                }
                match previous {
                    Some(p) if p > id => {
                        return Err(format!(
                            "drawn classes are not in ascending order ({p} before {id})"
                        ))
                    }
                    Some(p) if p == id => run += 1,
                    _ => run = 1,
                }
                previous = Some(id);
                let mass = each * run as f64;
                o[c] = if mass > 0.0 {
                    mass.ln() as f32
                } else {
                    ABSENT_LOGPROB
                };
                Ok(())
            });
            for &c in &tops {
                is_top[c] = false;
            }
            result.map_err(|m| format!("record {row}: {m}"))?;
        }
        Ok(())
    }
}
