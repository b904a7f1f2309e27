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

// ---- Format version 2 codecs: hq, topkp, sampled ----

#[test]
fn parse_and_display_v2_codecs() {
    for s in [
        "hq:1",
        "hq:32",
        "hq:255",
        "topkp:20",
        "sampled:3",
        "sampled:1+3",
        "sampled:255+255",
        "sampled:0+12",
    ] {
        let e: Encoding = s.parse().unwrap();
        let shown = e.to_string();
        assert_eq!(shown, s.replace("sampled:0+", "sampled:"), "{s}");
        assert_eq!(shown.parse::<Encoding>().unwrap(), e);
        assert_eq!(e.since_version(), 2, "{s}");
        assert_eq!(Encoding::from_tag(e.tag(), e.param()), Some(e));
    }
    for s in [
        "hq:0",
        "hq:256",
        "hq",
        "topkp:0",
        "sampled:0",
        "sampled:1+0",
        "sampled:256",
        "sampled:+3",
        "sampled:1+",
        "sampled:300+3",
        "sampled:-1+3",
    ] {
        let e = s.parse::<Encoding>().unwrap_err().to_string();
        assert!(
            e.contains("not an encoding") && e.contains("sampled:K+S"),
            "{s}: {e}"
        );
    }
    assert_eq!(Encoding::sampled(1, 3).to_string(), "sampled:1+3");
    assert_eq!(Encoding::hq(32).to_string(), "hq:32");
    assert!(Encoding::hq(300).check_classes(10).is_err());
    assert!(Encoding::sampled(10, 3).check_classes(10).is_err());
    assert!(Encoding::sampled(9, 3).check_classes(10).is_ok());
    assert!(Encoding::top_k_packed(10).check_classes(10).is_err());
    assert!(Encoding::hq(32).is_dense());
    assert!(!Encoding::sampled(0, 3).is_dense() && !Encoding::top_k_packed(3).is_dense());
    assert!(Encoding::sampled(0, 3).is_sparse());
    assert!(!Encoding::top_k_packed(3).is_sparse() && !Encoding::hq(8).is_sparse());
    assert_eq!(Encoding::Q8.since_version(), 1);
}

#[test]
fn payload_sizes_pack_ids() {
    assert_eq!(Encoding::hq(32).payload_bytes(10), 10);
    // sampled:3 at 10 classes: three 4-bit ids.
    assert_eq!(Encoding::sampled(0, 3).payload_bytes(10), 2);
    assert_eq!(Encoding::sampled(1, 3).payload_bytes(10), 4 + 2);
    assert_eq!(Encoding::sampled(0, 24).payload_bytes(1000), 30);
    assert_eq!(Encoding::sampled(0, 24).payload_bytes(128_000), 51);
    assert_eq!(
        Encoding::top_k_packed(20).payload_bytes(32_000),
        8 + 38 + 38
    );
    assert_eq!(
        Encoding::top_k_packed(20).payload_bytes(128_000),
        8 + 38 + 43
    );
}

proptest! {
    #[test]
    fn hq_roundtrip_within_bound((c, logits) in rows_strategy(), t in 0.5f32..8.0, levels in 1u16..=255) {
        let lp = lp_of(&logits, c, t);
        let dec = roundtrip(Encoding::hq(levels), &lp, c);
        let n = levels as f32;
        for (e, d) in lp.chunks_exact(c).zip(dec.chunks_exact(c)) {
            let s: f64 = d.iter().map(|&v| (v as f64).exp()).sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "sum {s}");
            let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let dhi = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (&a, &b) in e.iter().zip(d) {
                // sqrt(p/p_max) is stored within half a step, plus the
                // reconstruction's sqrt(1/12)/N lift of small codes.
                let u = ((a - hi) * 0.5).exp();
                let z = ((b - dhi) * 0.5).exp();
                prop_assert!((u - z).abs() <= (0.5 + 0.2887) / n + 1e-5, "u {u} decoded {z} at N {n}");
            }
            let (kl, _, _) = row_fidelity(e, d);
            prop_assert!(kl <= 2.0 * (c as f64 - 1.0) / (n as f64 * n as f64) + 1e-6, "KL {kl} at N {n}, C {c}");
        }
    }

    #[test]
    fn topkp_roundtrip_within_bound((c, logits) in rows_strategy(), t in 0.5f32..8.0, kf in 0.0f64..1.0) {
        let k = (1 + ((c - 1) as f64 * kf) as usize).min(c - 1) as u16;
        let lp = lp_of(&logits, c, t);
        let dec = roundtrip(Encoding::top_k_packed(k), &lp, c);
        let exact_topk = roundtrip(Encoding::top_k(k), &lp, c);
        for (e, (d, x)) in lp.chunks_exact(c).zip(dec.chunks_exact(c).zip(exact_topk.chunks_exact(c))) {
            let s: f64 = d.iter().map(|&v| (v as f64).exp()).sum();
            prop_assert!((s - 1.0).abs() < 1e-5, "sum {s}");
            let hi = e.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            // The same classes as topk, each within the f16 gap's rounding,
            // plus what that rounding does to the shared terms: the row's
            // normaliser moves by the probability-weighted rounding of the
            // top k, and a class outside the top k shares the tail mass
            // 1 - sum(top k), which moves by that amount over the mass.
            let rounding = |j: usize| (hi - e[j]) * 4.9e-4 + 2e-4;
            let mut order: Vec<usize> = (0..c).collect();
            order.sort_by(|&i, &j| e[j].total_cmp(&e[i]));
            let top = &order[..k as usize];
            let weighted: f64 = top.iter().map(|&i| (e[i] as f64).exp() * rounding(i) as f64).sum();
            let tail_mass = 1.0 - top.iter().map(|&i| (e[i] as f64).exp()).sum::<f64>();
            let tail_shift = weighted / tail_mass.max(1e-12);
            for (j, (&a, &b)) in x.iter().zip(d).enumerate() {
                // (Ties at the cut may fall either way: only a class strictly
                // above it is surely stored.)
                let in_top = e[j] > e[order[k as usize]];
                let shared = weighted + if in_top { 0.0 } else { tail_shift };
                let bound = rounding(j) + shared as f32;
                prop_assert!((a - b).abs() <= bound, "class {j}: topk {a} topkp {b}, bound {bound}");
            }
        }
    }

    #[test]
    fn sampled_decodes_to_floor_or_ceil_counts((c, logits) in rows_strategy(), t in 0.5f32..8.0, kf in 0.0f64..1.0, s in 1u8..40) {
        let k = ((c - 1) as f64 * kf) as u8;
        let lp = lp_of(&logits, c, t);
        let dec = roundtrip(Encoding::sampled(k, s), &lp, c);
        for (e, d) in lp.chunks_exact(c).zip(dec.chunks_exact(c)) {
            let mass: f64 = d.iter().map(|&v| (v as f64).exp()).sum();
            prop_assert!((mass - 1.0).abs() < 1e-5, "mass {mass}");
            let mut order = Vec::new();
            let log_rest = topk::select_top_k(e, k as usize, &mut order);
            for &i in &order[..k as usize] {
                prop_assert_eq!(e[i as usize].to_bits(), d[i as usize].to_bits());
            }
            // Each other class holds n/S of the rest, n the floor or the ceiling of S·w.
            let rest = (log_rest as f64).exp();
            let top_mass: f64 = order[..k as usize].iter().map(|&i| (e[i as usize] as f64).exp()).sum();
            let r = 1.0 - top_mass;
            if r < 1e-9 {
                // The rest is below what 1 − Σ top resolves: it decodes to (next to) no mass.
                continue;
            }
            let mut draws = 0.0;
            for &i in &order[k as usize..] {
                let w = (e[i as usize] as f64).exp() / rest;
                let n = if d[i as usize] == ABSENT_LOGPROB { 0.0 } else { (d[i as usize] as f64).exp() / r * s as f64 };
                prop_assert!((n - n.round()).abs() < 1e-3 * s as f64, "count {n}");
                let sw = s as f64 * w;
                prop_assert!(n.round() >= (sw - 1e-6).floor(), "count {n} below the floor of {sw}");
                prop_assert!(n.round() <= (sw + 1e-6).ceil(), "count {n} above the ceiling of {sw}");
                draws += n.round();
            }
            prop_assert_eq!(draws, s as f64);
        }
    }

    /// Random payload bytes: every codec's decoder errs or decodes, never panics.
    #[test]
    fn hostile_payloads_never_panic(
        which in 0usize..7, c in 1usize..300, param in any::<u16>(),
        bytes in prop::collection::vec(any::<u8>(), 0..2000), rows in 1usize..4,
    ) {
        let enc = [
            Encoding::F32, Encoding::F16, Encoding::Q8, Encoding::top_k(param % 50 + 1),
            Encoding::hq(param % 255 + 1), Encoding::top_k_packed(param % 50 + 1),
            Encoding::sampled((param >> 8) as u8 % 40, (param as u8).max(1)),
        ][which];
        if enc.check_classes(c).is_ok() {
            let codec = Codec::new(enc, c);
            let mut payload = bytes;
            payload.resize(rows * codec.payload, 0x5A);
            let mut out = vec![0.0f32; rows * c];
            let _ = codec.decode_rows(&payload, &mut out);
        }
    }
}

#[test]
fn hostile_v2_records_are_refused_with_reasons() {
    let err = |enc: Encoding, c: usize, bytes: &[u8]| {
        let mut out = vec![0.0; c];
        Codec::new(enc, c).decode_rows(bytes, &mut out).unwrap_err()
    };
    // hq: a code above N.
    let mut b = vec![0u8; 10];
    b[3] = 33;
    let e = err(Encoding::hq(32), 10, &b);
    assert!(
        e.contains("code 33") && e.contains("record 0, class 3"),
        "{e}"
    );
    // sampled:1+2 at 10 classes: value, then ids 4 bits each.
    let rec = |v: f32, ids: [u32; 3]| {
        let mut b = v.to_le_bytes().to_vec();
        bits::pack(ids, 4, &mut b);
        b
    };
    for (bytes, reason) in [
        (rec(0.5, [1, 2, 3]), "not a log-probability"),
        (rec(-0.5, [1, 1, 3]), "top classes"),
        (rec(-0.5, [1, 4, 3]), "ascending"),
        (rec(-0.5, [1, 4, 12]), "class 12"),
    ] {
        // The second record is the bad one: the message names it.
        let mut two = rec(-0.5, [1, 3, 4]);
        two.extend_from_slice(&bytes);
        let mut out = vec![0.0; 20];
        let e = Codec::new(Encoding::sampled(1, 2), 10)
            .decode_rows(&two, &mut out)
            .unwrap_err();
        assert!(e.contains(reason) && e.contains("record 1"), "{e}");
    }
    // sampled:2+1: two top values whose probabilities sum past 1.
    let mut b = (-0.1f32).to_le_bytes().to_vec();
    b.extend_from_slice(&(-0.2f32).to_le_bytes());
    bits::pack([1, 2, 3], 4, &mut b);
    let e = err(Encoding::sampled(2, 1), 10, &b);
    assert!(
        e.contains("record 0: the top classes hold mass") && e.contains("more than 1"),
        "{e}"
    );
    let ok = rec(-0.5, [1, 3, 4]);
    let mut out = vec![0.0; 10];
    Codec::new(Encoding::sampled(1, 2), 10)
        .decode_rows(&ok, &mut out)
        .unwrap();
    let r = 1.0 - (-0.5f64).exp();
    assert_eq!(out[1], -0.5);
    assert!((out[3] as f64 - (r / 2.0).ln()).abs() < 1e-6);
    assert_eq!(out[0], ABSENT_LOGPROB);
    // topkp: a repeated id.
    let mut b = (-2.0f32).to_le_bytes().to_vec();
    b.extend_from_slice(&(-0.2f32).to_le_bytes());
    b.extend_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
    bits::pack([5, 5], 4, &mut b);
    assert!(err(Encoding::top_k_packed(2), 10, &b).contains("repeats class 5"));
}

/// The sampled estimate averaged over a fine grid of the draw's offset `U`
/// is the teacher's row: systematic draws are unbiased class by class.
#[test]
fn sampled_average_over_offsets_is_the_row() {
    for (c, k, s) in [
        (10usize, 0usize, 3usize),
        (10, 1, 3),
        (1000, 0, 24),
        (1000, 2, 12),
    ] {
        let lp = lp_of(&teacher_logits(3, c, 5), c, 2.0);
        for row in lp.chunks_exact(c) {
            let grid = 4000;
            let mut mean = vec![0.0f64; c];
            let mut out = vec![0.0f32; c];
            for j in 0..grid {
                sampled::sampled_row(row, k, s, (j as f64 + 0.5) / grid as f64, &mut out).unwrap();
                for (m, &v) in mean.iter_mut().zip(&out) {
                    *m += (v as f64).exp() / grid as f64;
                }
            }
            let worst = mean
                .iter()
                .zip(row)
                .map(|(m, &e)| (m - (e as f64).exp()).abs())
                .fold(0.0, f64::max);
            // A grid of M offsets pins each class's mean within 1/M of its share.
            assert!(
                worst <= 1.0 / grid as f64 + 1e-6,
                "C={c} K={k} S={s}: worst {worst}"
            );
        }
    }
}

#[test]
fn sparse_rows_report_the_reverse_kl() {
    let exact = [(0.5f32).ln(), (0.3f32).ln(), (0.2f32).ln()];
    let decoded = [0.0f32, ABSENT_LOGPROB, ABSENT_LOGPROB];
    let (kl, agree, _) = row_fidelity(&exact, &decoded);
    assert!((kl - (1.0f64 / 0.5).ln()).abs() < 1e-6, "{kl}");
    assert!(agree);
}
