//! Re-tempering of the default encoding: an f16 cache stored at T = 4 read
//! at other temperatures (T' = 1 is the default student's) through every
//! read path (`read_all`, `read_samples`, `epoch_batches`) gives
//! `log_softmax(z / T')` of the teacher's logits `z`, within the error f16
//! storage carries through re-tempering (derived below), and the stored T
//! is returned as stored.

use distill::cache::{
    log_softmax_tempered, CacheMeta, CacheReader, CacheWriter, DatasetInfo, Encoding, EpochPlan,
    TeacherInfo, WriterOptions,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const C: usize = 10;
const N: usize = 300;
const STORED_T: f32 = 4.0;

/// Teacher-like logits: one confident class per row, the rest spread over
/// about ten nats, some rows much flatter.
fn logits() -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let mut z = Vec::with_capacity(N * C);
    for i in 0..N {
        let top = rng.gen_range(0..C);
        let scale = if i % 5 == 0 { 0.3 } else { 3.0 };
        for c in 0..C {
            let v: f32 = rng.gen_range(-1.0f32..1.0) * scale;
            z.push(if c == top { v + 12.0 } else { v });
        }
    }
    z
}

fn lp(z: &[f32], t: f32) -> Vec<f32> {
    let mut out = vec![0f32; z.len()];
    log_softmax_tempered(z, C, t, &mut out).unwrap();
    out
}

fn f16_cache(dir: &std::path::Path, z: &[f32]) -> CacheReader {
    let meta = CacheMeta {
        teacher: TeacherInfo {
            spec: "mlp:10-10".into(),
            fingerprint: "t".into(),
            source: "t".into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "d".into(),
            split: "train".into(),
            num_samples: N as u64,
            view: None,
        },
        num_classes: C,
        has_labels: false,
        temperature: STORED_T,
        encoding: Encoding::F16,
    };
    let opts = WriterOptions {
        records_per_block: 32,
        ..WriterOptions::default()
    };
    let mut w = CacheWriter::create_or_resume(dir, meta, opts).unwrap();
    w.push_batch(0, None, &lp(z, STORED_T)).unwrap();
    w.finish().unwrap();
    // SAFETY: written just above; nothing modifies it while mapped.
    unsafe { CacheReader::open(dir) }.unwrap()
}

/// The largest error f16 storage leaves in row `exact_t` (log-probs at the
/// stored T) after re-tempering to `t2`, per class.
///
/// f16 stores the gaps `g_c = max lp - lp_c` rounded (relative error at
/// most 2^-11) and an offset that renormalises the rounded gaps, so the
/// decoded value is off by at most `d_c = e_c + sum_j p_j e_j` with
/// `e_c = 2^-11 g_c`. Re-tempering multiplies by `s = T / T'` and subtracts
/// the new log-sum-exp, which moves by at most `sum_j p'_j s d_j`. Doubled
/// for second-order terms, plus f32 rounding of the arithmetic itself.
fn bound(exact_t: &[f32], want: &[f32], t2: f32) -> Vec<f32> {
    let s = STORED_T / t2;
    let hi = exact_t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = exact_t.iter().map(|&v| (hi - v) / 2048.0).collect();
    let off: f32 = exact_t.iter().zip(&e).map(|(&v, &e)| v.exp() * e).sum();
    let d: Vec<f32> = e.iter().map(|&e| e + off).collect();
    let shift: f32 = want.iter().zip(&d).map(|(&w, &d)| w.exp() * s * d).sum();
    d.iter()
        .zip(want)
        .map(|(&d, &w)| 2.0 * (s * d + shift) + 2e-5 * (1.0 + w.abs()) * (1.0 + s))
        .collect()
}

fn check(got: &[f32], rows: &[u64], z: &[f32], t2: f32, what: &str) {
    let exact_t = lp(z, STORED_T);
    let want = lp(z, t2);
    let mut worst = 0f32;
    for (k, &i) in rows.iter().enumerate() {
        let i = i as usize;
        let (e, w) = (&exact_t[i * C..][..C], &want[i * C..][..C]);
        let g = &got[k * C..][..C];
        let tol = bound(e, w, t2);
        for c in 0..C {
            let err = (g[c] - w[c]).abs();
            assert!(
                err <= tol[c],
                "{what}, T'={t2}: sample {i} class {c}: {} vs exact {} (error {err:e} > bound {:e})",
                g[c],
                w[c],
                tol[c]
            );
            worst = worst.max(err);
        }
        let mass: f64 = g.iter().map(|&v| (v as f64).exp()).sum();
        assert!(
            (mass - 1.0).abs() < 1e-4,
            "{what}, T'={t2}: sample {i} sums to {mass}"
        );
    }
    assert!(worst > 0.0 || t2 == STORED_T, "{what}: suspiciously exact");
}

#[test]
fn f16_cache_retempers_within_its_storage_error_on_every_read_path() {
    let tmp = tempfile::tempdir().unwrap();
    let z = logits();
    let r = f16_cache(tmp.path(), &z);
    assert_eq!(r.encoding(), Encoding::F16);
    let all_rows: Vec<u64> = (0..N as u64).collect();
    for t2 in [1.0f32, 2.0, 4.0, 8.0] {
        let all = r.read_all(t2, false).unwrap();
        assert_eq!(all.indices, all_rows);
        check(&all.logprobs, &all.indices, &z, t2, "read_all");
        let pick = [299u64, 0, 17, 17, 150];
        let some = r.read_samples(&pick, t2, false).unwrap();
        assert_eq!(some.indices, pick);
        check(&some.logprobs, &some.indices, &z, t2, "read_samples");
        let plan = EpochPlan {
            seed: 3,
            epoch: 1,
            start: 0,
            batch_size: 64,
            window_blocks: 2,
            temperature: t2,
            allow_topk_retemper: false,
            drop_last: false,
        };
        let mut seen = 0;
        for b in r.epoch_batches(plan).unwrap() {
            let b = b.unwrap();
            check(&b.logprobs, &b.indices, &z, t2, "epoch_batches");
            seen += b.len();
        }
        assert_eq!(seen, N);
    }
    // At the stored T nothing is re-tempered: the stored values come back.
    let stored = r.read_all(STORED_T, false).unwrap().logprobs;
    let again = r.read_all(STORED_T, true).unwrap().logprobs;
    assert_eq!(stored, again);
}
