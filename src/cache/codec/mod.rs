//! Record codecs: how one sample's `C` log-probabilities are stored.
//!
//! | encoding | payload bytes per record | decoded error | file |
//! |---|---|---|---|
//! | `f32` | `4C` | none (bit-exact) | `f32.rs` |
//! | `f16` | `4 + 2C` | gap to the row maximum in f16 (relative 2^-11) + an f32 offset; rows sum to one exactly | `f16.rs` |
//! | `q8` | `8 + C` | gap to the row maximum in 8 bits (square-root or linear scale per record, clamped 16 + ln C nats down); rows sum to one exactly | `q8.rs` |
//! | `topk:K` | `4 + 4K + wK` (w = 2 when C <= 65536, else 4) | the other C-K classes share the remaining mass uniformly | `topk.rs` |
//! | `hq:N` (v2) | `C` | `sqrt(p/p_max)` in N uniform steps, one byte per class, entropy-coded by zstd; rows sum to one | `hq.rs` |
//! | `topkp:K` (v2) | `8 + 2(K-1) + ceil(K·b/8)`, b = ceil(log2 C) | as `topk`, with f16 gaps and ids packed in b bits | `topkp.rs` |
//! | `sampled:K+S` (v2) | `4K + ceil((K+S)·b/8)` | top K exact, the rest as S systematic draws: an unbiased estimate of the row; unsampled classes have zero mass | `sampled.rs` |
//!
//! Every record also carries its sample index (u64) and label (u32) in the
//! block's columns; see `FORMAT.md`. Decoding always produces dense
//! log-probabilities for all `C` classes, written straight into the caller's
//! buffer, optionally re-tempered to another temperature. A sparse codec
//! (`sampled`) writes [`ABSENT_LOGPROB`] for a class with no mass.
//! `bits.rs` packs class ids for the codecs that store them.
//!
//! **Adding an encoding**: a new file here implementing `RecordCodec` with
//! an unused tag, one line in `CODECS`, its byte layout in FORMAT.md, and a
//! golden cache under `tests/golden/`. [`Encoding`] (what manifests, headers
//! and the command line name) finds the codec through that table.

use std::fmt;
use std::str::FromStr;

use super::{CacheError, Result};

pub mod bits;
pub mod f16;
pub mod f32;
pub mod hq;
pub mod q8;
pub mod sampled;
#[cfg(test)]
pub(crate) mod tests;
pub mod topk;
pub mod topkp;

pub use q8::q8_window;
pub use topk::id_width;

/// One record encoding. Implementations are stateless; `param` is the
/// encoding's parameter (`K` of `topk:K`; 0 for codecs without one).
pub(crate) trait RecordCodec: Sync {
    /// The on-disk tag (FORMAT.md, shard header field `encoding`); unique.
    fn tag(&self) -> u16;
    /// The name in manifests and on the command line (`f16`, `topk`).
    fn name(&self) -> &'static str;
    /// The first format version that has this codec (FORMAT.md, "Version policy").
    fn since_version(&self) -> u32 {
        1
    }
    /// Whether the name carries a parameter (`topk:K`).
    fn takes_param(&self) -> bool {
        false
    }
    /// The parameter written after the colon, if valid (default: 1..=65535).
    fn parse_param(&self, text: &str) -> Option<u16> {
        text.parse::<u16>().ok().filter(|&k| k > 0)
    }
    /// How the parameter is written after the colon.
    fn format_param(&self, param: u16) -> String {
        param.to_string()
    }
    /// The name with its parameter, as messages list it.
    fn param_syntax(&self) -> String {
        format!("{}:K (K between 1 and 65535)", self.name())
    }
    /// True when every class is stored, so re-tempering is exact.
    fn is_dense(&self) -> bool {
        true
    }
    /// True when decoded rows may give classes no mass ([`ABSENT_LOGPROB`]).
    fn is_sparse(&self) -> bool {
        false
    }
    /// How messages describe what is stored (`top-5`).
    fn describe(&self, param: u16) -> String {
        let _ = param;
        self.name().to_string()
    }
    /// Checks `classes` beyond the common bounds; the message says what to change.
    fn check_classes(&self, param: u16, classes: usize) -> std::result::Result<(), String> {
        let _ = (param, classes);
        Ok(())
    }
    /// Payload bytes per record for `classes` classes.
    fn payload_bytes(&self, param: u16, classes: usize) -> usize;
    /// Appends the payload of one record (`lp`: one row of finite log-probabilities).
    fn encode_row(&self, param: u16, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch);
    /// Decodes whole records (`payload` holds exactly `out.len() / classes`
    /// of them) into `out`. The message describes bad content.
    fn decode_rows(
        &self,
        param: u16,
        classes: usize,
        payload: &[u8],
        out: &mut [f32],
    ) -> std::result::Result<(), String>;
}

/// The registered codecs: the one place an encoding is added.
const CODECS: &[&dyn RecordCodec] = &[
    &f32::F32Codec,
    &f16::F16Codec,
    &q8::Q8Codec,
    &topk::TopKCodec,
    &hq::HqCodec,
    &topkp::TopKPackedCodec,
    &sampled::SampledCodec,
];

/// The log-probability a sparse codec decodes a class with no mass to: finite
/// (readers refuse non-finite values) and far enough down that `exp` is
/// exactly 0, so the KD loss's `p · log q` terms for it vanish, even after
/// re-tempering by a factor of up to 10^8.
pub const ABSENT_LOGPROB: f32 = -1e30;

fn codec_by_tag(tag: u16) -> Option<&'static dyn RecordCodec> {
    CODECS.iter().copied().find(|c| c.tag() == tag)
}

/// How log-probabilities are stored: a registered codec and its parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encoding {
    tag: u16,
    param: u16,
}

/// Largest number of classes a cache may hold (a hostile-header bound).
pub const MAX_CLASSES: usize = 1 << 24;

impl Encoding {
    /// 32-bit floats, exact.
    pub const F32: Encoding = Encoding { tag: 0, param: 0 };
    /// 16-bit gaps below the row maximum.
    pub const F16: Encoding = Encoding { tag: 1, param: 0 };
    /// 8-bit gaps with a per-record scale and offset.
    pub const Q8: Encoding = Encoding { tag: 2, param: 0 };

    /// The `k` most probable classes exactly plus the remaining mass.
    pub const fn top_k(k: u16) -> Encoding {
        Encoding { tag: 3, param: k }
    }

    /// `sqrt(p/p_max)` in `levels` steps, one byte per class (`hq:N`, `levels` in 1..=255).
    pub const fn hq(levels: u16) -> Encoding {
        Encoding {
            tag: 4,
            param: levels,
        }
    }

    /// `topk:K` with ids packed in `ceil(log2 C)` bits and f16 gaps (`topkp:K`).
    pub const fn top_k_packed(k: u16) -> Encoding {
        Encoding { tag: 5, param: k }
    }

    /// The top `top` classes exactly plus `draws` (>= 1) systematic draws
    /// from the rest (`sampled:K+S`; both at most 255).
    pub const fn sampled(top: u8, draws: u8) -> Encoding {
        Encoding {
            tag: 6,
            param: ((top as u16) << 8) | draws as u16,
        }
    }

    fn codec(self) -> &'static dyn RecordCodec {
        // Every Encoding is built from a registered tag (constants above,
        // from_tag, parse), so the lookup cannot fail.
        codec_by_tag(self.tag).unwrap_or(CODECS[0])
    }

    /// The on-disk tag (FORMAT.md, header field `encoding`).
    pub fn tag(self) -> u16 {
        self.tag
    }

    /// The encoding's parameter (header field `topk_k`; 0 when it has none).
    pub fn param(self) -> u16 {
        self.param
    }

    /// Inverse of [`tag`](Self::tag) / [`param`](Self::param); `None` for
    /// unknown tags and parameters a codec does not take.
    pub fn from_tag(tag: u16, param: u16) -> Option<Encoding> {
        let codec = codec_by_tag(tag)?;
        (codec.takes_param() == (param > 0)).then_some(Encoding { tag, param })
    }

    /// True when every class is stored, so re-tempering is exact.
    pub fn is_dense(self) -> bool {
        self.codec().is_dense()
    }

    /// True when decoded rows may give classes no mass ([`ABSENT_LOGPROB`]),
    /// so the writer's KL is the reverse one (`sampled`).
    pub fn is_sparse(self) -> bool {
        self.codec().is_sparse()
    }

    /// The first format version that can hold this encoding.
    pub fn since_version(self) -> u32 {
        self.codec().since_version()
    }

    /// What messages call the stored values (`f16`, `top-5`).
    pub fn describe(self) -> String {
        self.codec().describe(self.param)
    }

    /// Checks that this encoding can store `classes` classes; the message says what to change.
    pub fn check_classes(self, classes: usize) -> std::result::Result<(), String> {
        if classes == 0 || classes > MAX_CLASSES {
            return Err(format!(
                "number of classes {classes} is outside 1..={MAX_CLASSES}"
            ));
        }
        self.codec().check_classes(self.param, classes)
    }

    /// Payload bytes per record for `classes` classes (excluding index and label).
    pub fn payload_bytes(self, classes: usize) -> usize {
        self.codec().payload_bytes(self.param, classes)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codec = self.codec();
        if codec.takes_param() {
            write!(f, "{}:{}", codec.name(), codec.format_param(self.param))
        } else {
            f.write_str(codec.name())
        }
    }
}

impl FromStr for Encoding {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            let names: Vec<String> = CODECS
                .iter()
                .map(|c| {
                    if c.takes_param() {
                        c.param_syntax()
                    } else {
                        c.name().to_string()
                    }
                })
                .collect();
            CacheError::input(
                "encoding",
                format!("'{s}' is not an encoding; use one of {}", names.join(", ")),
            )
        };
        let (name, param) = match s.split_once(':') {
            Some((name, p)) => (name, Some(p)),
            None => (s, None),
        };
        let codec = CODECS.iter().find(|c| c.name() == name).ok_or_else(bad)?;
        let param = match (codec.takes_param(), param) {
            (false, None) => 0,
            (true, Some(p)) => codec.parse_param(p).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        Ok(Encoding {
            tag: codec.tag(),
            param,
        })
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

/// Reusable buffers for [`Codec::encode_row`].
#[derive(Default)]
pub(crate) struct EncodeScratch {
    order: Vec<u32>,
    q: Vec<u8>,
}

/// Encodes and decodes records of one (encoding, classes) pair.
#[derive(Clone, Copy)]
pub(crate) struct Codec {
    pub enc: Encoding,
    pub classes: usize,
    pub payload: usize,
    imp: &'static dyn RecordCodec,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("enc", &self.enc)
            .field("classes", &self.classes)
            .finish()
    }
}

impl Codec {
    pub fn new(enc: Encoding, classes: usize) -> Codec {
        Codec {
            enc,
            classes,
            payload: enc.payload_bytes(classes),
            imp: enc.codec(),
        }
    }

    /// Appends the payload of one record (`lp` = `classes` finite log-probs).
    pub fn encode_row(&self, lp: &[f32], out: &mut Vec<u8>, scratch: &mut EncodeScratch) {
        debug_assert_eq!(lp.len(), self.classes);
        self.imp.encode_row(self.enc.param, lp, out, scratch)
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
        self.imp.decode_rows(self.enc.param, c, payload, out)
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
/// (KL in nats, same top-1 class, entropy of exact in nats).
///
/// The KL is KL(exact || decoded), except for a sparse row (a `sampled`
/// record, which gives some classes of the exact row no mass): that KL is
/// infinite, so it is KL(decoded || exact) there, the KD loss such a target
/// gives a student equal to the teacher, less the target's entropy.
///
/// Both rows are normalised to sum to one (in f64) first: f32 log-probs sum
/// to one only to within about 1e-7, which at f16's KL of a few 1e-8 would
/// be most of the figure (and make it negative on many rows).
pub(crate) fn row_fidelity(exact: &[f32], decoded: &[f32]) -> (f64, bool, f64) {
    let log_total = |row: &[f32]| -> f64 {
        let top = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        if !top.is_finite() {
            return 0.0;
        }
        top + row
            .iter()
            .map(|&v| (v as f64 - top).exp())
            .sum::<f64>()
            .ln()
    };
    let (zp, zq) = (log_total(exact), log_total(decoded));
    let mut kl = 0.0f64;
    let mut reverse = 0.0f64;
    let mut ent = 0.0f64;
    let mut sparse = false;
    for (&p_lp, &q_lp) in exact.iter().zip(decoded) {
        let (p_lp, q_lp) = (p_lp as f64 - zp, q_lp as f64 - zq);
        let p = p_lp.exp();
        let q = q_lp.exp();
        sparse |= q == 0.0 && p > 0.0;
        if p > 0.0 {
            kl += p * (p_lp - q_lp);
            ent -= p * p_lp;
        }
        if q > 0.0 {
            reverse += q * (q_lp - p_lp);
        }
    }
    let kl = if sparse { reverse } else { kl };
    // Non-negative for rows that sum to one; a rounding error can go below.
    (kl.max(0.0), argmax(exact) == argmax(decoded), ent)
}
