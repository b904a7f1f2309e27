//! What distillation costs end to end, side by side in one run:
//! - an epoch of hard-label training, an epoch of KD from the cache at its
//!   stored temperature, an epoch of KD re-tempered from the cache's T = 4
//!   to the student's T = 1 (the default path: `make train-student` uses
//!   `CACHE_T=4`, `T=1`), an epoch of KD with the teacher run online on
//!   every batch, and an epoch of KD from a view set of augmented images
//!   beside an epoch of hard labels with the same augmentation (its
//!   yardstick); same student, optimizer, batch and data;
//! - a cache build against the teacher's forward pass alone.
//!
//! Uses `data/fashion-mnist` when present (`make data`), else the committed
//! subset, and the committed teacher. `cargo bench --bench distill`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dfdx::prelude::*;
use distill::cache::views::view_dir;
use distill::cache::{CacheReader, CacheViews, Encoding, ViewInfo, WriterOptions};
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::model::io::load_weights;
use distill::teacher::{build_cache, forward_only, BuildOptions};
use distill::train::loss::{LossConfig, LossKind};
use distill::train::optim::{OptimizerConfig, Schedule};
use distill::train::trainer::{train, RunOptions, TrainConfig, TrainSources};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dataset(limit: usize) -> Dataset {
    let full = root().join("data/fashion-mnist");
    let dir = if full.join("train-images-idx3-ubyte.gz").exists() {
        full
    } else {
        root().join("data/fashion-mnist-small")
    };
    let ds = Dataset::open(&dir, Split::Train).expect("dataset");
    eprintln!(
        "bench data: {} ({} samples, using {})",
        dir.display(),
        ds.len(),
        limit.min(ds.len())
    );
    ds.head(limit)
}

fn build_opts(t: f32, overwrite: bool) -> BuildOptions {
    BuildOptions {
        temperature: t,
        encoding: Encoding::F16,
        writer: WriterOptions {
            overwrite,
            ..WriterOptions::default()
        },
        batch_size: 500,
        teacher_source: "data/teachers/fashion-cnn".into(),
        progress: false,
        view: None,
    }
}

fn config(loss: LossConfig) -> TrainConfig {
    TrainConfig {
        spec: "mlp:784-128-10".into(),
        epochs: 1,
        optimizer: OptimizerConfig {
            schedule: Schedule::Constant,
            ..OptimizerConfig::default()
        },
        loss,
        // Every sample trains, as before the validation split existed.
        val_fraction: 0.0,
        ..TrainConfig::default()
    }
}

fn epochs(c: &mut Criterion) {
    let dev = Cpu::default();
    let data = dataset(20_000);
    let teacher = load_weights(
        &root().join("data/teachers/fashion-cnn/model.safetensors"),
        None,
        dev.clone(),
    )
    .expect("committed teacher");
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = tmp.path().join("cache");
    build_cache(&teacher, &data, &cache_dir, &build_opts(4.0, false)).expect("cache build");
    // SAFETY: the cache was just written by this process and nothing modifies it.
    let cache = CacheViews::from(unsafe { CacheReader::open(&cache_dir) }.expect("open cache"));
    // A set of two augmented views (flip, shift 2): the loader also augments
    // each batch's images with the view's parameters.
    let views_dir = tmp.path().join("views");
    for v in 0..2 {
        let opts = BuildOptions {
            view: Some(ViewInfo {
                augment: "flip,shift=2".into(),
                seed: 0,
                view: v,
                views: 2,
            }),
            ..build_opts(4.0, false)
        };
        build_cache(&teacher, &data, &view_dir(&views_dir, v), &opts).expect("view build");
    }
    // SAFETY: as above.
    let views = unsafe { CacheViews::open(&views_dir) }.expect("open view set");
    // Every variant trains into one scratch directory.
    let opts = RunOptions {
        quiet: true,
        overwrite: true,
        ..RunOptions::default()
    };
    let out = tmp.path().join("run");
    let kd = LossConfig::new(LossKind::Kd, 0.5, 4.0);
    // The default: the cache stores T = 4, the student distils at T = 1, so
    // every decoded row is re-tempered.
    let kd_t1 = LossConfig::new(LossKind::Kd, 0.5, 1.0);

    // Interleaved A/B rounds first: on a shared machine, load drifts over the
    // seconds criterion spends on one variant; alternating epochs makes the
    // ratio robust to that drift.
    {
        let none = none_like(&data);
        let cached = TrainSources {
            cache: Some(&cache),
            cache_dir: Some(cache_dir.clone()),
            ..none_like(&data)
        };
        let viewed = TrainSources {
            cache: Some(&views),
            cache_dir: Some(views_dir.clone()),
            ..none_like(&data)
        };
        let (mut hard, mut soft, mut aug) = (Vec::new(), Vec::new(), Vec::new());
        let (mut retemper, mut hard_aug) = (Vec::new(), Vec::new());
        // The view set's yardstick: hard labels with the same augmentation
        // (the loader draws and applies the same flips and shifts).
        let hard_augmented = TrainConfig {
            augment: Some(Augment::parse("flip,shift=2").expect("augmentation")),
            ..config(LossConfig::hard_labels())
        };
        for _ in 0..7 {
            let t = Instant::now();
            train(
                dev.clone(),
                &config(LossConfig::hard_labels()),
                &none,
                &out,
                &opts,
            )
            .expect("train");
            hard.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            train(dev.clone(), &config(kd), &cached, &out, &opts).expect("train");
            soft.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            train(dev.clone(), &config(kd_t1), &cached, &out, &opts).expect("train");
            retemper.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            train(dev.clone(), &config(kd), &viewed, &out, &opts).expect("train");
            aug.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            train(dev.clone(), &hard_augmented, &none, &out, &opts).expect("train");
            hard_aug.push(t.elapsed().as_secs_f64());
        }
        hard_aug.sort_by(f64::total_cmp);
        hard.sort_by(f64::total_cmp);
        soft.sort_by(f64::total_cmp);
        aug.sort_by(f64::total_cmp);
        retemper.sort_by(f64::total_cmp);
        eprintln!(
            "interleaved epochs (7 rounds, median): hard labels {:.3} s, KD from cache {:.3} s (ratio {:.3}), KD re-tempered from the cache's T=4 to T=1 {:.3} s (ratio {:.3}), KD from a view set of augmented images {:.3} s (ratio {:.3}; against hard labels with the same flip,shift=2 augmentation, {:.3} s: ratio {:.3})",
            hard[3],
            soft[3],
            soft[3] / hard[3],
            retemper[3],
            retemper[3] / hard[3],
            aug[3],
            aug[3] / hard[3],
            hard_aug[3],
            aug[3] / hard_aug[3]
        );
    }

    let mut group = c.benchmark_group("epoch_mlp_784_128_10");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let run = |cfg: &TrainConfig, sources: &TrainSources<'_, Cpu>| {
        train(dev.clone(), cfg, sources, &out, &opts).expect("train");
    };
    let none = TrainSources {
        train: &data,
        test: None,
        cache: None,
        cache_dir: None,
        teacher_test_predictions: None,
        online_teacher: None,
    };
    group.bench_function("hard_labels", |b| {
        b.iter(|| run(&config(LossConfig::hard_labels()), &none))
    });
    let cached = TrainSources {
        cache: Some(&cache),
        cache_dir: Some(cache_dir.clone()),
        ..none_like(&data)
    };
    group.bench_function("kd_from_cache", |b| b.iter(|| run(&config(kd), &cached)));
    group.bench_function("kd_from_cache_retemper_t4_to_t1", |b| {
        b.iter(|| run(&config(kd_t1), &cached))
    });
    let online = TrainSources {
        online_teacher: Some(&teacher),
        ..none_like(&data)
    };
    group.bench_function("kd_online_teacher", |b| {
        b.iter(|| run(&config(kd), &online))
    });
    group.finish();

    // Cache build against the teacher's forward pass alone.
    let small = data.head(5_000);
    let mut group = c.benchmark_group("cache_build_5000");
    group.throughput(Throughput::Elements(small.len() as u64));
    group.sample_size(10);
    group.bench_function("teacher_forward_only", |b| {
        b.iter(|| forward_only(&teacher, &small, 500).unwrap())
    });
    let dir = tmp.path().join("build");
    group.bench_function("cache_build_f16", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_dir_all(&dir);
                let start = Instant::now();
                build_cache(&teacher, &small, Path::new(&dir), &build_opts(4.0, true)).unwrap();
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

fn none_like(data: &Dataset) -> TrainSources<'_, Cpu> {
    TrainSources {
        train: data,
        test: None,
        cache: None,
        cache_dir: None,
        teacher_test_predictions: None,
        online_teacher: None,
    }
}

criterion_group!(benches, epochs);
criterion_main!(benches);
