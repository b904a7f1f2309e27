//! Cache throughput: decode (read_all, epoch_batches) and write, per encoding,
//! for 10 and 1,000 classes, against a plain memcpy of the same number of f32
//! bytes in the same run. Fixed synthetic teacher-like inputs.
//!
//! Beside it, what the loader spends recreating a view's images: a batch of
//! 128 28x28 images shifted, shifted and warped, shifted and cut out,
//! against copying the batch (group `augment_128`).
//!
//! Run: `cargo bench --bench cache`. Bytes per sample are printed at setup.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use distill::cache::*;
use rand::{Rng, SeedableRng};

fn teacher_lp(n: usize, c: usize, t: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut x = vec![0.0f32; n * c];
    for row in x.chunks_exact_mut(c) {
        for v in row.iter_mut() {
            *v = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 3.5;
        }
        let top = rng.gen_range(0..c);
        row[top] += rng.gen_range(4.0..12.0);
    }
    let mut lp = vec![0.0f32; n * c];
    log_softmax_tempered(&x, c, t, &mut lp).expect("finite synthetic logits");
    lp
}

fn meta(n: u64, c: usize, enc: Encoding) -> CacheMeta {
    CacheMeta {
        teacher: TeacherInfo {
            spec: "bench".into(),
            fingerprint: "t".into(),
            source: "synthetic".into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "d".into(),
            split: "train".into(),
            num_samples: n,
            view: None,
        },
        num_classes: c,
        has_labels: true,
        temperature: 4.0,
        encoding: enc,
    }
}

fn write(dir: &Path, lp: &[f32], labels: &[u32], c: usize, enc: Encoding) -> Manifest {
    let n = labels.len();
    let mut w =
        CacheWriter::create_or_resume(dir, meta(n as u64, c, enc), WriterOptions::default())
            .expect("create");
    let batch = 8192;
    let mut s = 0;
    while s < n {
        let e = (s + batch).min(n);
        w.push_batch(s as u64, Some(&labels[s..e]), &lp[s * c..e * c])
            .expect("push");
        s = e;
    }
    w.finish().expect("finish")
}

fn encodings(c: usize) -> [Encoding; 4] {
    [
        Encoding::F32,
        Encoding::F16,
        Encoding::Q8,
        Encoding::top_k(if c == 10 { 3 } else { 20 }),
    ]
}

fn bench_classes(cr: &mut Criterion, c: usize, n: usize, n_write: usize) {
    let lp = teacher_lp(n, c, 4.0);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % c as u32).collect();
    let root = tempfile::tempdir().expect("tempdir");
    let mut readers = Vec::new();
    for enc in encodings(c) {
        let dir = root.path().join(enc.to_string().replace(':', "_"));
        let m = write(&dir, &lp, &labels, c, enc);
        println!(
            "C={c} {enc}: {:.2} bytes/sample ({:.2}x smaller than f32 logits), mean KL {:.2e}, top-1 agreement {:.5}",
            m.fidelity.bytes_per_sample,
            (4 * c) as f64 / m.fidelity.bytes_per_sample,
            m.fidelity.mean_kl,
            m.fidelity.top1_agreement
        );
        // SAFETY: the bench does not modify the cache files while readers are alive.
        readers.push((enc, unsafe { CacheReader::open(&dir) }.expect("open")));
    }

    let mut g = cr.benchmark_group(format!("decode_c{c}"));
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut dst = vec![0.0f32; n * c];
    g.bench_function("memcpy_f32", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&lp));
            black_box(&dst);
        })
    });
    for (enc, r) in &readers {
        g.bench_function(format!("read_all/{enc}"), |b| {
            b.iter(|| black_box(r.read_all(4.0, false).expect("read")))
        });
        g.bench_function(format!("epoch_batches/{enc}"), |b| {
            b.iter(|| {
                let plan = EpochPlan {
                    seed: 1,
                    epoch: 0,
                    start: 0,
                    batch_size: 256,
                    window_blocks: 8,
                    temperature: 4.0,
                    allow_topk_retemper: false,
                    drop_last: false,
                };
                let mut rows = 0;
                for batch in r.epoch_batches(plan).expect("plan") {
                    rows += black_box(batch.expect("batch")).len();
                }
                assert_eq!(rows, n);
            })
        });
    }
    if let Some((_, r)) = readers.iter().find(|(e, _)| *e == Encoding::F32) {
        g.bench_function("read_all/f32 retemper T=2", |b| {
            b.iter(|| black_box(r.read_all(2.0, false).expect("read")))
        });
    }
    g.finish();

    let mut g = cr.benchmark_group(format!("write_c{c}"));
    g.throughput(Throughput::Elements(n_write as u64));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for enc in encodings(c) {
        g.bench_function(format!("push+finish/{enc}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().expect("tempdir"),
                |d| {
                    black_box(write(
                        d.path(),
                        &lp[..n_write * c],
                        &labels[..n_write],
                        c,
                        enc,
                    ))
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

/// A view's images as the loader recreates them, per batch of 128 items.
fn bench_augment(cr: &mut Criterion) {
    use distill::data::augment::Augment;
    let (n, shape) = (128usize, [1usize, 28, 28]);
    let len = shape.iter().product::<usize>();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let images: Vec<f32> = (0..n * len).map(|_| rng.gen::<f32>()).collect();
    let indices: Vec<usize> = (0..n).map(|i| i * 37).collect();
    let mut g = cr.benchmark_group("augment_128");
    g.throughput(Throughput::Elements(n as u64));
    let mut out = images.clone();
    g.bench_function("copy", |b| {
        b.iter(|| {
            out.copy_from_slice(&images);
            black_box(&out);
        })
    });
    for spec in ["shift=1", "shift=1,warp=1", "shift=1,cutout=8"] {
        let a = Augment::parse(spec).expect("augmentation");
        g.bench_function(spec, |b| {
            b.iter(|| {
                out.copy_from_slice(&images);
                a.apply_batch(0, 3, &indices, shape, &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn benches(cr: &mut Criterion) {
    bench_classes(cr, 10, 1_000_000, 200_000);
    bench_classes(cr, 1000, 20_000, 5_000);
    bench_augment(cr);
}

criterion_group!(cache, benches);
criterion_main!(cache);
