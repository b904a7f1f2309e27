//! Round-trip, fidelity and parsing tests of every codec, and helpers
//! (teacher-like logits, fidelity) that other cache tests share.

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
    assert!(Encoding::top_k(10).check_classes(10).is_err());
    assert!(Encoding::top_k(9).check_classes(10).is_ok());
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
        let dec = roundtrip(Encoding::top_k(k), &lp, c);
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
    let codec = Codec::new(Encoding::top_k(1), 3);
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
            Encoding::top_k(if c == 10 { 3 } else { 20 }),
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
