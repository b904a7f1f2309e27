//! Training-step throughput of run-time-spec networks against dfdx's
//! const-generic layers, and against a plain large matrix multiply (the
//! machine's practical limit for this kind of work).
//!
//! `cargo bench --bench model` (or `make bench`). Each group measures its
//! variants side by side in one run; BENCHMARKS.md records the ratios.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dfdx::nn::builders::{Linear, ReLU};
use dfdx::optim::{Adam, AdamConfig, Optimizer as _};
use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use distill::model::{ModelSpec, Network};
use distill::train::loss::{loss, LossConfig, Targets};
use distill::train::optim::{Optimizer, OptimizerConfig, OptimizerKind, Schedule};
use rand::{Rng, SeedableRng};

const BATCH: usize = 128;

fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0.0..1.0)).collect()
}

fn labels(seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..BATCH).map(|_| rng.gen_range(0..10)).collect()
}

type ConstMlp = (
    Linear<784, 800>,
    ReLU,
    Linear<800, 800>,
    ReLU,
    Linear<800, 10>,
);

fn train_step(c: &mut Criterion) {
    let dev = Cpu::seed_from_u64(0);
    let x_host = inputs(BATCH * 784, 1);
    let y_host = labels(2);
    let spec = ModelSpec::parse("mlp:784-800-800-10").unwrap();
    let flops_per_step = 3 * spec.flops() * BATCH as u64;
    let mut group = c.benchmark_group("train_step_mlp_784_800_800_10_b128");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(30);

    // distill: run-time spec, own parameter store, dfdx's fused Adam kernel.
    let mut net = Network::new(spec.clone(), dev.clone(), 0);
    let cfg = OptimizerConfig {
        kind: OptimizerKind::Adam,
        lr: 1e-3,
        weight_decay: 0.0,
        momentum: 0.0,
        schedule: Schedule::Constant,
    };
    let mut opt = Optimizer::new(cfg, 1 << 40);
    let hard = LossConfig::hard_labels();
    group.bench_function("runtime_spec", |b| {
        b.iter(|| {
            let x = dev.tensor_from_vec(x_host.clone(), (BATCH, 784));
            let logits = net.forward(x.traced(Gradients::leaky()));
            let t = Targets {
                classes: 10,
                labels: Some(&y_host),
                teacher_logprobs: None,
            };
            let l = loss(&hard, logits, &t).unwrap();
            let mut grads = l.backward();
            opt.update(&mut net, &mut grads).unwrap();
        })
    });

    // dfdx: const-generic Linear layers, its Adam and cross-entropy.
    let mut model = dev.build_module::<ConstMlp, f32>();
    let mut adam = Adam::new(&model, AdamConfig::default());
    let mut grads = model.alloc_grads();
    let y_onehot = distill::train::loss::one_hot(&y_host, 10);
    group.bench_function("const_generic", |b| {
        b.iter(|| {
            let x: Tensor<Rank2<BATCH, 784>, f32, Cpu> =
                dev.tensor_from_vec(x_host.clone(), (Const, Const));
            let y: Tensor<Rank2<BATCH, 10>, f32, Cpu> =
                dev.tensor_from_vec(y_onehot.clone(), (Const, Const));
            let g = std::mem::replace(&mut grads, Gradients::leaky());
            let logits = model.forward_mut(x.traced(g));
            let l = cross_entropy_with_logits_loss(logits, y);
            grads = l.backward();
            adam.update(&mut model, &grads).unwrap();
            model.zero_grads(&mut grads);
        })
    });
    group.finish();

    // Interleaved rounds (robust to load drift on a shared machine): 10 steps
    // of each variant and one 1024^3 matmul per round, medians printed.
    let n = 1024;
    let a = dev.tensor_from_vec(inputs(n * n, 3), (n, n));
    let bm = dev.tensor_from_vec(inputs(n * n, 4), (n, n));
    let (mut t_rt, mut t_cg, mut t_mm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..9 {
        let t = std::time::Instant::now();
        for _ in 0..10 {
            let x = dev.tensor_from_vec(x_host.clone(), (BATCH, 784));
            let logits = net.forward(x.traced(Gradients::leaky()));
            let tg = Targets {
                classes: 10,
                labels: Some(&y_host),
                teacher_logprobs: None,
            };
            let mut grads = loss(&hard, logits, &tg).unwrap().backward();
            opt.update(&mut net, &mut grads).unwrap();
        }
        t_rt.push(t.elapsed().as_secs_f64() / 10.0);
        let t = std::time::Instant::now();
        for _ in 0..10 {
            let x: Tensor<Rank2<BATCH, 784>, f32, Cpu> =
                dev.tensor_from_vec(x_host.clone(), (Const, Const));
            let y: Tensor<Rank2<BATCH, 10>, f32, Cpu> =
                dev.tensor_from_vec(y_onehot.clone(), (Const, Const));
            let g = std::mem::replace(&mut grads, Gradients::leaky());
            let l = cross_entropy_with_logits_loss(model.forward_mut(x.traced(g)), y);
            grads = l.backward();
            adam.update(&mut model, &grads).unwrap();
            model.zero_grads(&mut grads);
        }
        t_cg.push(t.elapsed().as_secs_f64() / 10.0);
        let t = std::time::Instant::now();
        let c = a.clone().matmul(bm.clone());
        std::hint::black_box(&c);
        t_mm.push(t.elapsed().as_secs_f64());
    }
    for v in [&mut t_rt, &mut t_cg, &mut t_mm] {
        v.sort_by(f64::total_cmp);
    }
    let (rt, cg, mm) = (t_rt[4], t_cg[4], t_mm[4]);
    eprintln!(
        "interleaved medians: run-time spec {:.2} ms/step ({:.0} samples/s, {:.1} GFLOP/s), const-generic {:.2} ms/step ({:.0} samples/s, {:.1} GFLOP/s), ratio {:.3}; matmul 1024^3 {:.1} GFLOP/s",
        rt * 1e3,
        BATCH as f64 / rt,
        flops_per_step as f64 / rt / 1e9,
        cg * 1e3,
        BATCH as f64 / cg,
        flops_per_step as f64 / cg / 1e9,
        rt / cg,
        2.0 * (n * n * n) as f64 / mm / 1e9
    );

    // The limit: one large matmul on the same device, in the same run.
    let mut group = c.benchmark_group("matmul_limit");
    group.throughput(Throughput::Elements((2 * n * n * n) as u64));
    group.sample_size(20);
    group.bench_function("matmul_1024_f32", |b| {
        b.iter(|| a.clone().matmul(bm.clone()))
    });
    group.finish();
    eprintln!("train step FLOPs (fwd+bwd = 3x forward): {flops_per_step}");
}

criterion_group!(benches, train_step);
criterion_main!(benches);
