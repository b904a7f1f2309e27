//! The writer's own fidelity figures (manifest `fidelity`: bytes per sample
//! on disk, mean KL, top-1 agreement) for the compact encodings on
//! synthetic, deterministic, teacher-like logits. `sampled_fits_40_bytes_at_1000_classes`
//! checks the 1,000-class target; `fidelity_table_synthetic` (ignored, run by
//! hand with `--ignored --nocapture`) prints the table FORMAT.md records at
//! 1,000, 32,000 and 128,000 classes.

use distill::cache::{
    import_logits, log_softmax_tempered, CacheMeta, DatasetInfo, Encoding, Manifest, TeacherInfo,
    WriterOptions,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Teacher-like logits for `n` samples of `c` classes and their labels: a
/// near-gaussian tail (sum of four uniforms, scale 3.5), one true class
/// raised by 4..12 and three plausible ones by 0..4 (the generator of the
/// codec unit tests, one random word per value so 128,000 classes stay quick).
fn synthetic(n: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = vec![0f32; n * c];
    let mut labels = Vec::with_capacity(n);
    for row in x.chunks_exact_mut(c) {
        for v in row.iter_mut() {
            let w: u64 = rng.gen();
            let u: f32 = (0..4)
                .map(|k| ((w >> (16 * k)) & 0xffff) as f32 / 65536.0 - 0.5)
                .sum();
            *v = u * 3.5;
        }
        let top = rng.gen_range(0..c);
        row[top] += rng.gen_range(4.0..12.0);
        for _ in 0..3 {
            let j = rng.gen_range(0..c);
            row[j] += rng.gen_range(0.0..4.0);
        }
        labels.push(top as u32);
    }
    (x, labels)
}

/// Builds a cache of the synthetic rows with default writer options; its manifest.
fn build(n: usize, c: usize, t: f32, enc: Encoding) -> Manifest {
    let (logits, labels) = synthetic(n, c, 11);
    let dir = tempfile::tempdir().unwrap();
    let meta = CacheMeta {
        teacher: TeacherInfo {
            spec: "synthetic".into(),
            fingerprint: format!("seed-11-{c}"),
            source: "tests/codec_fidelity.rs".into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "synthetic".into(),
            split: "train".into(),
            num_samples: n as u64,
            view: None,
        },
        num_classes: c,
        has_labels: true,
        temperature: t,
        encoding: enc,
    };
    import_logits(
        dir.path(),
        meta,
        WriterOptions::default(),
        &logits,
        Some(&labels),
    )
    .unwrap()
}

/// `E‖p̂ − p‖²` per record of `sampled:K+S` (systematic draws: a class with
/// share `w` of the rest `r` has variance `(r/S)^2 f(1-f)`, `f = frac(S·w)`).
fn sampled_variance(n: usize, c: usize, t: f32, top: usize, draws: usize) -> f64 {
    let (logits, _) = synthetic(n, c, 11);
    let mut lp = vec![0f32; logits.len()];
    log_softmax_tempered(&logits, c, t, &mut lp).unwrap();
    let mut total = 0.0;
    for row in lp.chunks_exact(c) {
        let mut p: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        p.sort_by(|a, b| b.total_cmp(a));
        let r: f64 = p[top..].iter().sum();
        let s = draws as f64;
        total += p[top..]
            .iter()
            .map(|&q| {
                let sw = s * q / r;
                let f = sw - sw.floor();
                (r / s).powi(2) * f * (1.0 - f)
            })
            .sum::<f64>();
    }
    total / n as f64
}

#[test]
fn sampled_fits_40_bytes_at_1000_classes() {
    // T = 1: a peaked teacher (at T = 4 these 1,000-class rows are nearly flat).
    let m = build(1000, 1000, 1.0, Encoding::sampled(0, 24));
    let f = &m.fidelity;
    assert!(
        f.bytes_per_sample <= 40.0,
        "{} bytes/sample",
        f.bytes_per_sample
    );
    // Classes are drawn from the teacher, so its top class leads most records.
    assert!(f.top1_agreement > 0.7, "top-1 {}", f.top1_agreement);
    // KL(decoded || exact) of a sparse record: finite, and what the table says.
    assert!(f.mean_kl > 0.5 && f.mean_kl < 3.0, "mean KL {}", f.mean_kl);
    // 24 draws of 10-bit ids: 30 bytes per record before zstd.
    assert_eq!(Encoding::sampled(0, 24).payload_bytes(1000), 30);
}

#[test]
#[ignore = "prints FORMAT.md's synthetic table; run by hand"]
fn fidelity_table_synthetic() {
    let large = vec![
        Encoding::top_k(20),
        Encoding::top_k_packed(20),
        Encoding::sampled(0, 12),
        Encoding::sampled(0, 24),
        Encoding::sampled(4, 20),
    ];
    let runs: [(usize, usize, f32, Vec<Encoding>); 6] = [
        (
            1000,
            2000,
            4.0,
            vec![
                Encoding::F16,
                Encoding::Q8,
                Encoding::hq(32),
                Encoding::top_k(20),
                Encoding::top_k_packed(20),
                Encoding::sampled(0, 12),
                Encoding::sampled(0, 24),
                Encoding::sampled(1, 24),
            ],
        ),
        (
            1000,
            2000,
            1.0,
            vec![
                Encoding::top_k_packed(20),
                Encoding::sampled(0, 24),
                Encoding::sampled(2, 20),
            ],
        ),
        (32_000, 300, 4.0, large.clone()),
        (32_000, 300, 1.0, large.clone()),
        (128_000, 150, 4.0, large.clone()),
        (128_000, 150, 1.0, large),
    ];
    for (c, n, t, encodings) in runs {
        for enc in encodings {
            let f = build(n, c, t, enc).fidelity;
            let name = enc.to_string();
            let variance = match name.strip_prefix("sampled:") {
                Some(p) => {
                    let (k, s) = p.split_once('+').unwrap_or(("0", p));
                    format!(
                        "{:.3e}",
                        sampled_variance(n, c, t, k.parse().unwrap(), s.parse().unwrap())
                    )
                }
                None => "-".into(),
            };
            println!(
                "| {c} | {t} | {name} | {} | {:.3} | {:.2e} | {:.5} | {variance} | {} |",
                enc.payload_bytes(c),
                f.bytes_per_sample,
                f.mean_kl,
                f.top1_agreement,
                n
            );
        }
    }
}

/// End to end on the command line: a `sampled` cache imported from logits
/// trains a student at its stored temperature; at another temperature, or
/// with logit matching, the run is refused before it starts, naming the flag.
#[test]
fn sampled_cache_trains_and_refuses_what_it_cannot_do() {
    use crate::util::*;
    let tmp = tempfile::tempdir().unwrap();
    let (logits, _) = synthetic(2000, 10, 3);
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = tmp.path().join("logits.npy");
    write_npy(&file, "<f4", &[2000, 10], &bytes);
    let (f, data) = (s(&file), s(&small_data()));
    let printed = ok(
        tmp.path(),
        &cache_import_args(
            &f,
            &data,
            "train",
            "1",
            "c",
            &["--encoding", "sampled:1+3", "-q"],
        ),
    );
    assert!(printed.contains("KL(decoded || exact)"), "{printed}");
    ok(tmp.path(), &["cache", "verify", "c"]);
    let run = |t: &'static str, loss: &'static str, out: &'static str| {
        train_args(
            &data,
            "mlp:784-16-10",
            out,
            &[
                "--cache", "c", "-T", t, "--alpha", "0.5", "--loss", loss, "--epochs", "1", "-q",
            ],
        )
    };
    ok(tmp.path(), &run("1", "kd", "kd"));
    let card = model_card(&tmp.path().join("kd"));
    assert_eq!(card["cache"]["encoding"], "sampled:1+3", "{card}");
    fails(tmp.path(), &run("4", "kd", "t4"), &["re-tempered", "T=1"]);
    fails(
        tmp.path(),
        &run("1", "mse", "mse"),
        &["--loss", "dense cache"],
    );
}
